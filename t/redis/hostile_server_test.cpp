// The Redis client against a server that misbehaves (fake_server.hpp): it answers the handshake
// (PING, AUTH, ROLE, INFO, SCRIPT LOAD) as Redis does, then answers EVALSHA with a reply too many,
// an aggregate header announcing 2^31 elements, a bulk string of 2 GB, 10000 nested arrays,
// garbage, half a reply before closing, NOSCRIPT forever or an error nobody expects. Always:
// the process survives (hiredis would abort on a reply nobody asked for), every command's
// callback is called once with a failure (or the error reply), no reply reaches a command it
// does not answer, the connection is dropped and made again, the circuit opens after
// failure_threshold failed commands -- PING working on every new connection does not keep it
// closed -- and each incident is logged once.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>

#include "fake_server.hpp"
#include "redis/subscriber.hpp"
#include "support.hpp"

namespace throttle::redis::test {
namespace {

std::string bulk(const std::string& s) {
    return "$" + std::to_string(s.size()) + "\r\n" + s + "\r\n";
}

std::string repeat(const std::string& s, size_t n) {
    std::string out;
    out.reserve(s.size() * n);
    for (size_t i = 0; i < n; i++) {
        out += s;
    }
    return out;
}

class HostileServerTest : public ::testing::Test {
   protected:
    // threshold 3, a cool-down longer than any test: once open, the circuit stays open.
    Config config(const FakeServer& server) {
        Config c;
        c.address = server.address();
        c.connect_timeout_ms = 1000;
        c.command_timeout_ms = 3000;  // a failure by deadline is a Timeout, told apart below
        c.backoff_initial_ms = 10;
        c.backoff_max_ms = 100;
        c.failure_threshold = 3;
        c.cooldown_initial_ms = 60000;
        return c;
    }

    Logger logger() {
        return [this](LogLevel level, std::string_view msg) {
            logs.emplace_back(level, std::string(msg));
        };
    }
    int logged(LogLevel level) const {
        return int(std::count_if(logs.begin(), logs.end(),
                                 [level](const auto& l) { return l.first == level; }));
    }
    bool logged_text(const std::string& text) const {
        return std::any_of(logs.begin(), logs.end(),
                           [&](const auto& l) { return l.second.find(text) != std::string::npos; });
    }
    std::string all_logs() const {
        std::string out;
        for (const auto& l : logs) {
            out += std::to_string(int(l.first)) + " " + l.second + "\n";
        }
        return out;
    }

    void eval(Client& c, const std::string& tag, Outcome& o) {
        std::vector<std::string_view> args = {tag};
        inside_call() = true;
        c.evalsha(script, {}, args, track(o));
        inside_call() = false;
    }

    // Waits until the client would touch the network again (backoff over) or its circuit is
    // open, so that each command meets the server, not a backoff.
    void settle(Client& c) {
        ev.run_until([&] { return c.available() || c.circuit_open(); }, 5000);
    }

    EventLoop ev;
    Script script{"return ARGV[1]"};
    std::vector<std::pair<LogLevel, std::string>> logs;
};

struct Hostile {
    const char* name;
    std::string reply;   // the answer to every EVALSHA
    bool close;          // then the server closes the connection
    bool error_reply;    // the command gets an error reply (not a failure)
    const char* logged;  // what the log says
};

void PrintTo(const Hostile& h, std::ostream* os) {
    *os << h.name;
}

class HostileReplyTest : public HostileServerTest, public ::testing::WithParamInterface<Hostile> {};

// Three commands in flight together, then one at a time: every one fails, the circuit opens
// after three failures, and from then on commands fail without touching the network.
TEST_P(HostileReplyTest, FailsCommandsReconnectsOpensCircuitLogsOnce) {
    const Hostile& h = GetParam();
    FakeServer server([&](const std::vector<std::string>& argv) {
        if (argv[0] == "EVALSHA") {
            return FakeServer::Answer{h.reply, h.close};
        }
        return FakeServer::Answer{"-ERR unknown command\r\n"};
    });
    std::vector<Outcome> outs(12);  // outlive the client, whose destructor may call back
    Client client(ev.loop(), config(server), logger());
    for (int i = 0; i < 3; i++) {
        eval(client, "t" + std::to_string(i), outs[i]);
    }
    ASSERT_TRUE(
        ev.run_until([&] { return outs[0].calls && outs[1].calls && outs[2].calls; }, 20000))
        << all_logs();
    for (int i = 0; i < 3; i++) {
        if (h.error_reply) {
            EXPECT_TRUE(outs[i].result.ok() && outs[i].result.reply.is_error()) << i;
        } else {
            // Dropped at once, not left to the command's deadline.
            EXPECT_EQ(outs[i].result.failure, Failure::Disconnected) << i;
        }
    }
    for (size_t i = 3; i < outs.size(); i++) {
        settle(client);
        eval(client, "t" + std::to_string(i), outs[i]);
        ASSERT_TRUE(ev.run_until([&] { return outs[i].calls > 0; }, 20000)) << i;
    }
    ev.run_for(30);
    for (size_t i = 0; i < outs.size(); i++) {
        EXPECT_EQ(outs[i].calls, 1) << i;
        EXPECT_FALSE(outs[i].synchronous) << i;
        EXPECT_TRUE(!outs[i].result.ok() || outs[i].result.reply.is_error())
            << i << ": " << outs[i].result.reply.str;
    }
    EXPECT_TRUE(client.circuit_open()) << all_logs();
    EXPECT_EQ(client.stats().circuit_opens, 1u);
    EXPECT_EQ(outs.back().result.failure, Failure::CircuitOpen);
    EXPECT_LE(server.connections(), 3) << all_logs();  // not one per command
    EXPECT_GE(logged(LogLevel::Error), 1);
    EXPECT_LE(logged(LogLevel::Error), 2) << all_logs();  // the first failure, the opening
    EXPECT_LE(logged(LogLevel::Info) + logged(LogLevel::Warn), 1) << all_logs();
    EXPECT_TRUE(logged_text(h.logged)) << all_logs();
}

INSTANTIATE_TEST_SUITE_P(
    Replies, HostileReplyTest,
    ::testing::Values(
        Hostile{"HugeArray", "*2147483647\r\n", false, false, "array of 2147483647 elements"},
        Hostile{"Array300M", "*300000000\r\n", false, false, "array of 300000000 elements"},
        Hostile{"HugeBulk", "$2000000000\r\n", false, false, "string of 2000000000 bytes"},
        Hostile{"DeepNesting", repeat("*1\r\n", 10000), false, false, "nested multi bulk"},
        Hostile{"Garbage", "!garbage\r\n", false, false, "Protocol error"},
        Hostile{"CloseMidReply", "*3\r\n$3\r\nfoo\r\n$3\r\nba", true, false, "connection lost"},
        Hostile{"NoscriptForever", "-NOSCRIPT No matching script. Please use EVAL.\r\n", false,
                true, "NOSCRIPT"},
        Hostile{"UnexpectedError", "-ERR nobody expects this\r\n", false, true,
                "nobody expects this"}),
    [](const ::testing::TestParamInfo<Hostile>& info) { return std::string(info.param.name); });

// The server answers every EVALSHA twice. hiredis, meeting a reply with no command waiting for
// it, aborts the process; the client must instead drop that connection, and never hand the
// second copy to the next command.
TEST_F(HostileServerTest, SurplusReplyClosesTheConnectionWithoutAbort) {
    FakeServer server([](const std::vector<std::string>& argv) {
        if (argv[0] == "EVALSHA" && argv.size() == 4) {
            return FakeServer::Answer{bulk(argv[3]) + bulk(argv[3])};
        }
        return FakeServer::Answer{"-ERR unknown command\r\n"};
    });
    std::vector<Outcome> outs(8);
    Client client(ev.loop(), config(server), logger());
    for (size_t i = 0; i < outs.size(); i++) {
        settle(client);
        eval(client, "tag" + std::to_string(i), outs[i]);
        ASSERT_TRUE(ev.run_until([&] { return outs[i].calls > 0; }, 20000)) << i;
    }
    ev.run_for(30);
    int answered = 0;
    for (size_t i = 0; i < outs.size(); i++) {
        EXPECT_EQ(outs[i].calls, 1) << i;
        EXPECT_FALSE(outs[i].synchronous) << i;
        if (outs[i].result.ok()) {
            answered++;
            EXPECT_EQ(outs[i].result.reply.str, "tag" + std::to_string(i));  // its own reply
        }
    }
    EXPECT_GE(answered, 1);
    EXPECT_TRUE(client.circuit_open()) << all_logs();
    EXPECT_LE(server.connections(), 3) << all_logs();
    EXPECT_LE(logged(LogLevel::Error), 2) << all_logs();
    EXPECT_TRUE(logged_text("unexpected reply")) << all_logs();
}

// A status reply after the answer, when no command waits: the connection is dropped, the next
// one serves the next command (failure_threshold 0: the circuit never opens).
TEST_F(HostileServerTest, SurplusStatusReplyThenRecovery) {
    std::atomic<int> evals{0};
    FakeServer server([&](const std::vector<std::string>& argv) {
        evals++;
        return FakeServer::Answer{bulk(argv.back())};
    });
    Config cfg = config(server);
    cfg.failure_threshold = 0;  // never open: reconnects after each drop
    Outcome first, second, third;
    Client client(ev.loop(), cfg, logger());
    eval(client, "one", first);
    ASSERT_TRUE(ev.run_until([&] { return first.calls > 0; }, 20000));
    ASSERT_TRUE(first.result.ok());
    EXPECT_EQ(first.result.reply.str, "one");
    EXPECT_TRUE(client.connected());

    // From now on the server adds a reply nobody asked for.
    server.set_handler([&](const std::vector<std::string>& argv) {
        evals++;
        return FakeServer::Answer{bulk(argv.back()) + "+SURPRISE\r\n"};
    });
    eval(client, "two", second);
    ASSERT_TRUE(ev.run_until([&] { return second.calls > 0; }, 20000));
    ASSERT_TRUE(ev.run_until([&] { return client.stats().reconnects > 0; }, 20000)) << all_logs();
    server.set_handler([&](const std::vector<std::string>& argv) {
        evals++;
        return FakeServer::Answer{bulk(argv.back())};
    });
    settle(client);
    eval(client, "three", third);
    ASSERT_TRUE(ev.run_until([&] { return third.calls > 0; }, 20000));
    ASSERT_TRUE(third.result.ok()) << all_logs();
    EXPECT_EQ(third.result.reply.str, "three");
    EXPECT_EQ(server.connections(), 2);
    EXPECT_TRUE(logged_text("unexpected reply")) << all_logs();
    EXPECT_EQ(logged(LogLevel::Error), 1) << all_logs();
}

// After the cool-down the probe connects (PING works) and its first command fails: the circuit
// opens again at once, for twice as long, logged at Info. Once commands are answered again the
// incident ends ("connection restored").
TEST_F(HostileServerTest, ProbeThatConnectsButFailsReopensTheCircuit) {
    std::atomic<bool> broken{true};
    FakeServer server([&](const std::vector<std::string>& argv) {
        return FakeServer::Answer{broken ? "-ERR broken\r\n" : bulk(argv.back())};
    });
    Config cfg = config(server);
    cfg.cooldown_initial_ms = 200;
    std::vector<Outcome> outs(5);
    Client client(ev.loop(), cfg, logger());
    for (int i = 0; i < 3; i++) {
        settle(client);
        eval(client, "x", outs[i]);
        ASSERT_TRUE(ev.run_until([&] { return outs[i].calls > 0; }, 20000));
        EXPECT_TRUE(outs[i].result.reply.is_error());
    }
    EXPECT_TRUE(client.circuit_open());
    EXPECT_EQ(client.stats().circuit_opens, 1u);
    EXPECT_EQ(server.connections(), 1);
    EXPECT_EQ(logged(LogLevel::Error), 2) << all_logs();

    ASSERT_TRUE(ev.run_until([&] { return client.available(); }, 5000)) << all_logs();
    EXPECT_EQ(server.connections(), 2);  // the probe
    eval(client, "x", outs[3]);
    ASSERT_TRUE(ev.run_until([&] { return outs[3].calls > 0; }, 20000));
    EXPECT_TRUE(outs[3].result.reply.is_error());
    EXPECT_TRUE(client.circuit_open());
    EXPECT_EQ(client.stats().circuit_opens, 2u);
    EXPECT_TRUE(logged_text("probe failed: EVALSHA")) << all_logs();
    EXPECT_TRUE(logged_text("circuit open for 400 ms")) << all_logs();

    broken = false;
    ASSERT_TRUE(ev.run_until([&] { return client.available(); }, 5000)) << all_logs();
    eval(client, "back", outs[4]);
    ASSERT_TRUE(ev.run_until([&] { return outs[4].calls > 0; }, 20000));
    ASSERT_TRUE(outs[4].result.ok());
    EXPECT_EQ(outs[4].result.reply.str, "back");
    ev.run_for(30);
    EXPECT_FALSE(client.circuit_open());
    EXPECT_TRUE(logged_text("connection restored after 4 failure(s)")) << all_logs();
    EXPECT_EQ(logged(LogLevel::Error), 2) << all_logs();  // one incident
    EXPECT_EQ(server.connections(), 3);
}

// A reply of the wrong shape the caller cannot use (reply_unusable()) counts like a failed
// command: the circuit opens, the connection is not made again and again.
TEST_F(HostileServerTest, UnusableRepliesOpenTheCircuit) {
    FakeServer server([](const std::vector<std::string>&) { return FakeServer::Answer{":1\r\n"}; });
    std::vector<Outcome> outs(8);
    Client client(ev.loop(), config(server), logger());
    for (size_t i = 0; i < outs.size(); i++) {
        settle(client);
        Outcome& o = outs[i];
        client.evalsha(script, {}, {}, [&](Result&& r) {
            if (r.ok() && r.reply.type != Reply::Type::String) {
                client.reply_unusable(r, "not a string");
            }
            track(o)(std::move(r));
        });
        ASSERT_TRUE(ev.run_until([&] { return o.calls > 0; }, 20000)) << i;
    }
    EXPECT_TRUE(client.circuit_open());
    EXPECT_EQ(outs.back().result.failure, Failure::CircuitOpen);
    EXPECT_EQ(server.connections(), 1);
    EXPECT_EQ(server.received("EVALSHA"), 3);
    EXPECT_EQ(logged(LogLevel::Error), 2) << all_logs();
    EXPECT_TRUE(logged_text("unusable reply: not a string")) << all_logs();

    // Failures and error replies were counted by the client already.
    uint64_t failures = client.stats().failures;
    Result failed;
    failed.failure = Failure::Timeout;
    client.reply_unusable(failed, "late");
    Result error;
    error.reply.type = Reply::Type::Error;
    client.reply_unusable(error, "error");
    EXPECT_EQ(client.stats().failures, failures);
}

// What one reply may announce, with small limits (100 elements, 1 MB): replies within them
// pass whole; over them, the connection is dropped at once -- a bulk string when its header
// arrives, not after its bytes -- and made again.
TEST_F(HostileServerTest, ReplyLimits) {
    const std::string big(900 * 1000, 'b');
    const std::string part(400 * 1000, 'p');
    std::string nested = "*2\r\n*60\r\n" + repeat(":1\r\n", 60) + "*60\r\n" + repeat(":1\r\n", 60);
    std::map<std::string, std::string> answers = {
        {"big-ok", bulk(big)},
        {"array-ok", "*100\r\n" + repeat(":1\r\n", 100)},
        {"array-over", "*101\r\n" + repeat(":1\r\n", 101)},
        {"nested-over", nested},
        {"bulk-over", "$2000000\r\n" + std::string(2000000, 'x') + "\r\n"},
        {"bytes-over", "*3\r\n" + bulk(part) + bulk(part) + bulk(part)},
        {"line-over", "+" + std::string(2000000, 'a')},
    };
    FakeServer server([&](const std::vector<std::string>& argv) {
        return FakeServer::Answer{answers.at(argv.back())};
    });
    Config cfg = config(server);
    cfg.failure_threshold = 0;
    cfg.reply_limits.max_elements = 100;
    cfg.reply_limits.max_bytes = 1000 * 1000;
    std::map<std::string, Outcome> outs;
    for (const auto& a : answers) {
        outs[a.first];
    }
    Client client(ev.loop(), cfg, logger());
    auto run = [&](const std::string& tag) {
        settle(client);
        eval(client, tag, outs[tag]);
        EXPECT_TRUE(ev.run_until([&] { return outs[tag].calls > 0; }, 20000)) << tag;
        return outs[tag].result;
    };
    Result r = run("big-ok");
    ASSERT_TRUE(r.ok()) << all_logs();
    EXPECT_EQ(r.reply.str, big);
    r = run("array-ok");
    ASSERT_TRUE(r.ok()) << all_logs();
    EXPECT_EQ(r.reply.elements.size(), 100u);

    const std::vector<std::pair<std::string, std::string>> refused = {
        {"array-over", "an array of 101 elements (101 in this reply, at most 100)"},
        {"nested-over", "an array of 60 elements (122 in this reply, at most 100)"},
        {"bulk-over", "a bulk string of 2000000 bytes announced"},
        {"bytes-over", "string of 400000 bytes"},  // the third: 200000 left
        {"line-over", "bytes buffered and the reply not complete"},
    };
    for (const auto& [tag, text] : refused) {
        EXPECT_EQ(run(tag).failure, Failure::Disconnected) << tag;
        EXPECT_TRUE(logged_text(text)) << tag << "\n" << all_logs();
    }
    EXPECT_EQ(client.stats().refused, refused.size());
    EXPECT_GE(server.connections(), int(refused.size()));  // one each (then backoff)
    EXPECT_EQ(client.stats().timeouts, 0u);
}

// The replies the guard parses itself (flat arrays of integers, bulk strings and nils, written
// canonically: ReplyGuard::quick_reply) and those it leaves to hiredis' reader, alone and
// pipelined into one read in any order: each command gets its own reply, the same either way.
TEST_F(HostileServerTest, QuickAndReaderRepliesAgree) {
    using T = Reply::Type;
    const std::map<std::string, std::string> answers = {
        {"flat", "*6\r\n:1\r\n$3\r\nabc\r\n$-1\r\n$0\r\n\r\n:-5\r\n$4\r\na\r\nb\r\n"},
        {"int-18", ":-999999999999999999\r\n"},
        {"int-19", ":9223372036854775807\r\n"},  // more digits than the guard takes
        {"int-zero", ":0\r\n"},
        {"nested", "*2\r\n*1\r\n:1\r\n$1\r\nx\r\n"},
        {"empty", "*0\r\n"},
        {"nil", "$-1\r\n"},
        {"nil-array", "*-1\r\n"},
        {"status", "+OK\r\n"},
        {"error", "-ERR no\r\n"},
    };
    const auto check = [&](const std::string& tag, const Reply& r) {
        SCOPED_TRACE(tag);
        if (tag == "flat") {
            ASSERT_EQ(r.type, T::Array);
            ASSERT_EQ(r.elements.size(), 6u);
            EXPECT_EQ(r.elements[0].type, T::Integer);
            EXPECT_EQ(r.elements[0].integer, 1);
            EXPECT_EQ(r.elements[1].type, T::String);
            EXPECT_EQ(r.elements[1].str, "abc");
            EXPECT_TRUE(r.elements[2].is_nil());
            EXPECT_EQ(r.elements[3].type, T::String);
            EXPECT_EQ(r.elements[3].str, "");
            EXPECT_EQ(r.elements[4].integer, -5);
            EXPECT_EQ(r.elements[5].str, "a\r\nb");
        } else if (tag == "int-18") {
            EXPECT_EQ(r.type, T::Integer);
            EXPECT_EQ(r.integer, -999999999999999999LL);
        } else if (tag == "int-19") {
            EXPECT_EQ(r.type, T::Integer);
            EXPECT_EQ(r.integer, 9223372036854775807LL);
        } else if (tag == "int-zero") {
            EXPECT_EQ(r.type, T::Integer);
            EXPECT_EQ(r.integer, 0);
        } else if (tag == "nested") {
            ASSERT_EQ(r.type, T::Array);
            ASSERT_EQ(r.elements.size(), 2u);
            ASSERT_EQ(r.elements[0].type, T::Array);
            ASSERT_EQ(r.elements[0].elements.size(), 1u);
            EXPECT_EQ(r.elements[0].elements[0].integer, 1);
            EXPECT_EQ(r.elements[1].str, "x");
        } else if (tag == "empty") {
            EXPECT_EQ(r.type, T::Array);
            EXPECT_TRUE(r.elements.empty());
        } else if (tag == "nil" || tag == "nil-array") {
            EXPECT_TRUE(r.is_nil());
        } else if (tag == "status") {
            EXPECT_EQ(r.type, T::Status);
            EXPECT_EQ(r.str, "OK");
        } else {
            EXPECT_TRUE(r.is_error());
            EXPECT_EQ(r.str, "ERR no");
        }
    };
    FakeServer server([&](const std::vector<std::string>& argv) {
        return FakeServer::Answer{answers.at(argv.back())};
    });
    Config cfg = config(server);
    cfg.failure_threshold = 0;
    Client client(ev.loop(), cfg, logger());
    std::vector<std::string> tags;
    for (const auto& a : answers) {
        tags.push_back(a.first);
    }
    for (int round = 0; round < 4; round++) {
        // One by one, then all at once (one turn: pipelined), in turn forwards and backwards.
        std::vector<std::string> order = tags;
        if (round % 2 == 1) {
            std::reverse(order.begin(), order.end());
        }
        std::vector<Outcome> outs(order.size());
        settle(client);
        for (size_t i = 0; i < order.size(); i++) {
            eval(client, order[i], outs[i]);
            if (round < 2) {
                ASSERT_TRUE(ev.run_until([&] { return outs[i].calls > 0; }, 5000)) << order[i];
            }
        }
        ASSERT_TRUE(ev.run_until(
            [&] {
                return std::all_of(outs.begin(), outs.end(),
                                   [](const Outcome& o) { return o.calls > 0; });
            },
            5000));
        for (size_t i = 0; i < order.size(); i++) {
            EXPECT_EQ(outs[i].calls, 1) << order[i];
            ASSERT_TRUE(outs[i].result.ok()) << order[i] << "\n" << all_logs();
            check(order[i], outs[i].result.reply);
        }
    }
    EXPECT_EQ(client.stats().refused, 0u);
    EXPECT_EQ(server.connections(), 1) << all_logs();
}

// Handshake replies are known: one that is not what the command answers means the replies are
// off by one (a greeting the server sent unasked, say), and the command waiting must not get
// the reply meant for another.
TEST_F(HostileServerTest, HandshakeRepliesOfTheWrongShape) {
    FakeServer server(
        [](const std::vector<std::string>& argv) { return FakeServer::Answer{bulk(argv.back())}; });
    server.set_greeting("+OK\r\n");
    {
        Outcome o;
        Client client(ev.loop(), config(server), logger());
        inside_call() = true;
        client.command({"GET", "x"}, track(o));
        inside_call() = false;
        ASSERT_TRUE(ev.run_until([&] { return o.calls > 0; }, 20000));
        EXPECT_EQ(o.result.failure, Failure::Disconnected);
        // The first handshake reply read is ROLE's (no AUTH, no SELECT).
        EXPECT_TRUE(logged_text("ROLE answered a status \"OK\", not an array naming a role"))
            << all_logs();
    }
    server.set_greeting("");
    server.set_handshake([](const std::vector<std::string>& argv) {
        if (argv[0] == "PING") {
            return FakeServer::Answer{"+PONG\r\n"};
        }
        if (argv[0] == "ROLE" || argv[0] == "INFO") {
            return FakeServer::as_primary(argv);
        }
        return FakeServer::Answer{bulk(std::string(40, 'a'))};  // SCRIPT LOAD: not its SHA-1
    });
    {
        Outcome o;
        Client client(ev.loop(), config(server), logger());
        eval(client, "x", o);
        ASSERT_TRUE(ev.run_until([&] { return o.calls > 0; }, 20000));
        EXPECT_EQ(o.result.failure, Failure::Disconnected);
        EXPECT_TRUE(logged_text("not the script's SHA-1 " + script.sha())) << all_logs();
    }
}

// The subscriber's connection is in pub/sub mode, where hiredis dispatches replies no command
// waits for as messages: an array shorter than 2, a first element that is not a bulk string, an
// unsubscribe whose count is not an integer abort() the process there; a huge array header costs
// what it costs the client. Each one drops the connection, the next subscribes again; a message of
// another channel is not handed over as one of ours.
TEST_F(HostileServerTest, SubscriberSurvivesMalformedMessages) {
    const std::string confirm = "*3\r\n" + bulk("subscribe") + bulk("ch") + ":1\r\n";
    const std::vector<std::string> hostile = {
        "*1\r\n:1\r\n",
        "*3\r\n" + bulk("unsubscribe") + bulk("ch") + bulk("0"),
        "*3\r\n:1\r\n" + bulk("ch") + bulk("x"),
        "*2147483647\r\n",
        "*3\r\n" + bulk("message") + bulk("other") + bulk("not ours") + "*3\r\n" + bulk("message") +
            bulk("ch") + bulk("hello"),
    };
    std::atomic<size_t> subscribes{0};
    FakeServer server([&](const std::vector<std::string>& argv) {
        if (argv[0] != "SUBSCRIBE") {
            return FakeServer::Answer{"-ERR unknown command\r\n"};
        }
        size_t i = subscribes++;
        return FakeServer::Answer{confirm + hostile[std::min(i, hostile.size() - 1)]};
    });
    Config cfg = config(server);
    std::vector<std::string> got;
    Subscriber sub(
        ev.loop(), cfg, "ch", [&](std::string_view m) { got.emplace_back(m); }, logger());
    sub.start();
    ASSERT_TRUE(ev.run_until([&] { return !got.empty(); }, 20000)) << all_logs();
    ev.run_for(50);
    EXPECT_EQ(got, std::vector<std::string>{"hello"});
    EXPECT_TRUE(sub.subscribed());
    EXPECT_EQ(server.connections(), int(hostile.size()));
    EXPECT_TRUE(logged_text("not a pub/sub message")) << all_logs();
    EXPECT_TRUE(logged_text("the count of an unsubscribe (bulk string) is not")) << all_logs();
    EXPECT_TRUE(logged_text("element 0 (integer) is not a bulk string")) << all_logs();
    EXPECT_TRUE(logged_text("(array of 2147483647)")) << all_logs();
    EXPECT_EQ(logged(LogLevel::Error), 1) << all_logs();  // one incident
}

}  // namespace
}  // namespace throttle::redis::test
