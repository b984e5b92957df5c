// The pub/sub subscriber (src/redis/subscriber.hpp) against a real redis-server on a free
// loopback port, driven by libevent: messages arrive in order, binary safe, only from its
// channel, never from inside start(); subscribed() follows Redis' confirmation; a restarted
// server (same port) is subscribed to again; AUTH with a password and with a user; a wrong
// port, a wrong password and a paused server fail without a crash, are logged once per incident
// and retried with backoff; close() from outside or from the callback stops delivery; destroying
// it while connecting, subscribed or waiting to retry leaks no descriptor. Last, the response
// cache's wake-up end to end: LOOKUP, LOOKUP, STORE through a Client, "1" E heard here.
#include "redis/subscriber.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <stdexcept>

#include "core/cache_key.hpp"
#include "redis/cache_scripts.hpp"
#include "support.hpp"

namespace throttle::redis::test {
namespace {

class RedisSubscriberTest : public ::testing::Test {
   protected:
    void SetUp() override {
        if (!have_redis_server()) {
            GTEST_SKIP() << "redis-server not found (set THROTTLE_REDIS_SERVER)";
        }
    }

    static Config config(const Address& address) {
        Config c;
        c.address = address;
        c.connect_timeout_ms = 1000;
        c.command_timeout_ms = 1000;
        c.backoff_initial_ms = 10;
        c.backoff_max_ms = 80;
        return c;
    }

    // A subscriber recording what it receives (and whether inside start()) and what it logs.
    std::unique_ptr<Subscriber> make(const Config& c, const std::string& channel = "ch") {
        return std::make_unique<Subscriber>(
            ev.loop(), c, channel,
            [this](std::string_view payload) {
                received.emplace_back(payload);
                synchronous = synchronous || inside_call();
            },
            [this](LogLevel level, std::string_view msg) {
                logs.emplace_back(level, std::string(msg));
            });
    }

    void start(Subscriber& s) {
        inside_call() = true;
        s.start();
        inside_call() = false;
    }

    int logged(LogLevel level) const {
        return int(std::count_if(logs.begin(), logs.end(),
                                 [level](const auto& l) { return l.first == level; }));
    }
    bool logged_text(const std::string& text) const {
        return std::any_of(logs.begin(), logs.end(),
                           [&](const auto& l) { return l.second.find(text) != std::string::npos; });
    }

    EventLoop ev;
    std::vector<std::string> received;
    bool synchronous = false;
    std::vector<std::pair<LogLevel, std::string>> logs;
};

TEST_F(RedisSubscriberTest, ReceivesMessagesOfItsChannelInOrder) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    Control ctl(server.port());
    const std::string channel("ch\0\xff:", 5);  // binary safe
    auto sub = make(config(server.address()), channel);
    EXPECT_FALSE(sub->subscribed());
    start(*sub);
    EXPECT_FALSE(sub->subscribed());  // only once Redis confirmed it
    ASSERT_TRUE(ev.run_until([&] { return sub->subscribed(); }, 5000));
    EXPECT_EQ(ctl.run({"PUBSUB", "NUMSUB", channel}), "[" + channel + ",1]");
    EXPECT_EQ(logged(LogLevel::Error), 0);

    const std::string big(1 << 20, 'b');
    const std::vector<std::string> payloads = {"hello", std::string("a\0b\r\n", 5), "", big,
                                               "last"};
    for (const std::string& p : payloads) {
        EXPECT_EQ(ctl.run({"PUBLISH", channel, p}), "1");
        EXPECT_EQ(ctl.run({"PUBLISH", "ch", "another channel"}), "0");
    }
    ASSERT_TRUE(ev.run_until([&] { return received.size() >= payloads.size(); }, 5000));
    ev.run_for(20);
    EXPECT_EQ(received, payloads);
    EXPECT_EQ(sub->messages(), payloads.size());
    EXPECT_FALSE(synchronous);
    EXPECT_TRUE(sub->subscribed());
    EXPECT_EQ(sub->channel(), channel);

    // start() again changes nothing.
    start(*sub);
    EXPECT_TRUE(sub->subscribed());
    EXPECT_EQ(ctl.run({"PUBSUB", "NUMSUB", channel}), "[" + channel + ",1]");
}

TEST_F(RedisSubscriberTest, ResubscribesAfterServerRestart) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    auto sub = make(config(server.address()));
    start(*sub);
    ASSERT_TRUE(ev.run_until([&] { return sub->subscribed(); }, 5000));
    {
        Control ctl(server.port());
        ctl.run({"PUBLISH", "ch", "before"});
    }
    ASSERT_TRUE(ev.run_until([&] { return received.size() == 1; }, 5000));

    server.stop();
    ASSERT_TRUE(ev.run_until([&] { return !sub->subscribed(); }, 5000));
    EXPECT_EQ(logged(LogLevel::Error), 1);
    EXPECT_TRUE(logged_text("connection lost"));
    ev.run_for(200);  // a few refused attempts: Debug, not Error
    EXPECT_EQ(logged(LogLevel::Error), 1);
    EXPECT_GE(logged(LogLevel::Debug), 1);

    ASSERT_TRUE(server.start());  // the same port
    ASSERT_TRUE(ev.run_until([&] { return sub->subscribed(); }, 5000));
    EXPECT_EQ(logged(LogLevel::Info), 1);
    EXPECT_TRUE(logged_text("subscribed again"));
    Control ctl(server.port());
    EXPECT_EQ(ctl.run({"PUBLISH", "ch", "after"}), "1");
    ASSERT_TRUE(ev.run_until([&] { return received.size() == 2; }, 5000));
    EXPECT_EQ(received, (std::vector<std::string>{"before", "after"}));

    // A second incident is logged again (once).
    server.kill9();
    ASSERT_TRUE(ev.run_until([&] { return !sub->subscribed(); }, 5000));
    EXPECT_EQ(logged(LogLevel::Error), 2);
    ASSERT_TRUE(server.start());
    ASSERT_TRUE(ev.run_until([&] { return sub->subscribed(); }, 5000));
    EXPECT_EQ(logged(LogLevel::Error), 2);
    EXPECT_FALSE(synchronous);
}

TEST_F(RedisSubscriberTest, AuthWithPasswordAndUser) {
    RedisServer server(
        {"--requirepass", "s3cret", "--user", "alice", "on", ">alice-pw", "~*", "&*", "+@all"});
    server.set_password("s3cret");
    ASSERT_TRUE(server.start());
    Control ctl(server.port(), "s3cret");

    Config c = config(server.address());
    c.password = "s3cret";
    auto by_password = make(c);
    start(*by_password);
    c.username = "alice";
    c.password = "alice-pw";
    auto by_user = make(c);
    start(*by_user);
    ASSERT_TRUE(
        ev.run_until([&] { return by_password->subscribed() && by_user->subscribed(); }, 5000));
    EXPECT_EQ(ctl.run({"PUBLISH", "ch", "m"}), "2");
    ASSERT_TRUE(ev.run_until([&] { return received.size() == 2; }, 5000));
    EXPECT_EQ(logged(LogLevel::Error), 0);

    // A wrong password, or none: refused, logged once, retried, never subscribed.
    logs.clear();
    c.username.clear();
    c.password = "wrong";
    auto wrong = make(c);
    start(*wrong);
    ASSERT_TRUE(ev.run_until([&] { return logged(LogLevel::Debug) >= 2; }, 5000));
    EXPECT_FALSE(wrong->subscribed());
    EXPECT_EQ(logged(LogLevel::Error), 1);
    EXPECT_TRUE(logged_text("AUTH failed"));
    wrong.reset();
    logs.clear();
    c.password.clear();
    auto none = make(c);
    start(*none);
    ASSERT_TRUE(ev.run_until([&] { return logged(LogLevel::Debug) >= 2; }, 5000));
    EXPECT_FALSE(none->subscribed());
    EXPECT_EQ(logged(LogLevel::Error), 1);
    EXPECT_TRUE(logged_text("NOAUTH")) << logs.front().second;
    EXPECT_EQ(received.size(), 2u);
}

TEST_F(RedisSubscriberTest, BadAddressesAndChannelsAreRefused) {
    Config c;
    c.address.host = "localhost";  // not numeric
    EXPECT_THROW(Subscriber(ev.loop(), c, "ch", nullptr), std::invalid_argument);
    c.address.host = "127.0.0.1";
    c.address.port = 0;
    EXPECT_THROW(Subscriber(ev.loop(), c, "ch", nullptr), std::invalid_argument);
    c.address.port = 6379;
    EXPECT_THROW(Subscriber(ev.loop(), c, "", nullptr), std::invalid_argument);
    EXPECT_NO_THROW(Subscriber(ev.loop(), c, "ch", nullptr));
}

// Nothing listens on the port: every attempt is refused, the first is logged at Error and the
// rest at Debug, with a growing backoff; once a server appears there, it subscribes.
TEST_F(RedisSubscriberTest, WrongPortFailsAndRetriesWithBackoff) {
    const int fds = count_open_fds();
    RedisServer server;  // not started yet
    auto sub = make(config(server.address()));
    start(*sub);
    ASSERT_TRUE(ev.run_until([&] { return logged(LogLevel::Debug) >= 3; }, 5000));
    EXPECT_FALSE(sub->subscribed());
    EXPECT_EQ(logged(LogLevel::Error), 1);
    EXPECT_TRUE(logged_text("cannot connect"));
    // 10, 20, 40, 80, 80, ... ms: about a dozen attempts in a second, not hundreds.
    logs.clear();
    ev.run_for(1000);
    EXPECT_GE(logs.size(), 5u);
    EXPECT_LE(logs.size(), 20u);
    EXPECT_EQ(logged(LogLevel::Error), 0);

    ASSERT_TRUE(server.start());
    ASSERT_TRUE(ev.run_until([&] { return sub->subscribed(); }, 5000));
    EXPECT_TRUE(logged_text("subscribed again after"));
    {
        Control ctl(server.port());
        ctl.run({"PUBLISH", "ch", "finally"});
    }
    ASSERT_TRUE(ev.run_until([&] { return received.size() == 1; }, 5000));
    sub.reset();
    server.stop();
    EXPECT_EQ(count_open_fds(), fds);
}

// set_on_state(): false after each failure, true on the confirmation; close() from inside it
// stops the subscriber (no retry, no callback after).
TEST_F(RedisSubscriberTest, StateCallback) {
    RedisServer server;  // not started yet
    auto sub = make(config(server.address()));
    std::vector<bool> states;
    sub->set_on_state([&](bool subscribed) { states.push_back(subscribed); });
    start(*sub);
    ASSERT_TRUE(ev.run_until([&] { return states.size() >= 2; }, 5000));
    EXPECT_EQ(states[0], false);
    EXPECT_EQ(states[1], false);
    ASSERT_TRUE(server.start());
    ASSERT_TRUE(ev.run_until([&] { return sub->subscribed(); }, 5000));
    ev.run_for(20);
    ASSERT_FALSE(states.empty());
    EXPECT_EQ(states.back(), true);
    EXPECT_EQ(std::count(states.begin(), states.end(), true), 1);

    // A failure whose callback closes the subscriber: no retry.
    auto other = make(config(RedisServer().address()));
    int calls = 0;
    other->set_on_state([&](bool) {
        calls++;
        other->close();
    });
    start(*other);
    ASSERT_TRUE(ev.run_until([&] { return calls > 0; }, 5000));
    ev.run_for(200);
    EXPECT_EQ(calls, 1);
    EXPECT_FALSE(other->subscribed());
}

// A paused server accepts the connection (the kernel does) but never confirms the SUBSCRIBE:
// the confirmation times out, the subscriber retries, and subscribes once the server resumes.
TEST_F(RedisSubscriberTest, UnconfirmedSubscribeTimesOut) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    server.pause();
    Config c = config(server.address());
    c.command_timeout_ms = 100;
    auto sub = make(c);
    start(*sub);
    ASSERT_TRUE(ev.run_until([&] { return logged(LogLevel::Error) == 1; }, 5000));
    EXPECT_TRUE(logged_text("no SUBSCRIBE confirmation within 100 ms")) << logs.front().second;
    EXPECT_FALSE(sub->subscribed());
    server.resume();
    ASSERT_TRUE(ev.run_until([&] { return sub->subscribed(); }, 10000));
    Control ctl(server.port());
    EXPECT_EQ(ctl.run({"PUBLISH", "ch", "m"}), "1");  // the timed-out connections are gone
    ASSERT_TRUE(ev.run_until([&] { return received.size() == 1; }, 5000));
}

// The heartbeat (the cache's local tier): while subscribed, a PING every interval; its pong
// (a reply of 2 elements, not a message) is read without dropping the connection, messages in
// between are delivered; a paused server leaves the PING unanswered: current() turns false
// after max_lag_ms and true again once the pong arrives after the resume.
TEST_F(RedisSubscriberTest, HeartbeatTellsALaggingConnection) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    Control ctl(server.port());
    auto sub = make(config(server.address()));
    sub->set_heartbeat(20);
    EXPECT_FALSE(sub->current(100));
    start(*sub);
    ASSERT_TRUE(ev.run_until([&] { return sub->subscribed(); }, 5000));
    EXPECT_TRUE(sub->current(100));
    ctl.run({"CONFIG", "RESETSTAT"});
    ev.run_for(300);
    // INFO commandstats: the PINGs reached the server; the connection stood.
    const std::string stats = ctl.run({"INFO", "commandstats"});
    const size_t at = stats.find("cmdstat_ping:calls=");
    ASSERT_NE(at, std::string::npos) << stats;
    EXPECT_GE(std::stoi(stats.substr(at + 19)), 5);
    EXPECT_TRUE(sub->subscribed());
    EXPECT_TRUE(sub->current(100));
    EXPECT_EQ(ctl.run({"PUBLISH", "ch", "between pings"}), "1");
    ASSERT_TRUE(ev.run_until([&] { return received.size() == 1; }, 5000));
    EXPECT_EQ(received[0], "between pings");
    EXPECT_EQ(logged(LogLevel::Error), 0);

    server.pause();
    ASSERT_TRUE(ev.run_until([&] { return !sub->current(100); }, 5000));
    EXPECT_TRUE(sub->subscribed());  // lagging, not lost
    EXPECT_TRUE(sub->current(60000));
    server.resume();
    ASSERT_TRUE(ev.run_until([&] { return sub->current(100); }, 5000));
    EXPECT_EQ(logged(LogLevel::Error), 0);

    // No heartbeat set: nothing is sent, current() is subscribed().
    auto quiet = make(config(server.address()), "other");
    start(*quiet);
    ASSERT_TRUE(ev.run_until([&] { return quiet->subscribed(); }, 5000));
    EXPECT_TRUE(quiet->current(0));
}

TEST_F(RedisSubscriberTest, CloseStopsDelivery) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    Control ctl(server.port());
    auto sub = make(config(server.address()));
    start(*sub);
    ASSERT_TRUE(ev.run_until([&] { return sub->subscribed(); }, 5000));
    ctl.run({"PUBLISH", "ch", "1"});
    ASSERT_TRUE(ev.run_until([&] { return received.size() == 1; }, 5000));

    sub->close();
    EXPECT_FALSE(sub->subscribed());
    ctl.run({"PUBLISH", "ch", "2"});
    ev.run_for(100);
    EXPECT_EQ(received.size(), 1u);
    EXPECT_EQ(sub->messages(), 1u);
    sub->close();  // idempotent
    start(*sub);   // closed for good
    ev.run_for(100);
    EXPECT_FALSE(sub->subscribed());
    ASSERT_TRUE(ev.run_until(
        [&] {
            return ctl.run({"PUBSUB", "NUMSUB", "ch"}) == "[ch,0]";
        },
        5000));
    EXPECT_EQ(logged(LogLevel::Error), 0);
}

// close() from the callback: the messages already read with it are not delivered.
TEST_F(RedisSubscriberTest, CloseFromTheCallback) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    Control ctl(server.port());
    Subscriber* self = nullptr;
    int calls = 0;
    Subscriber sub(ev.loop(), config(server.address()), "ch", [&](std::string_view) {
        calls++;
        self->close();
    });
    self = &sub;
    sub.start();
    ASSERT_TRUE(ev.run_until([&] { return sub.subscribed(); }, 5000));
    // Three messages in one write.
    EXPECT_EQ(ctl.run({"EVAL", "for i = 1, 3 do redis.call('PUBLISH', 'ch', i) end return 1", "0"}),
              "1");
    ASSERT_TRUE(ev.run_until([&] { return calls > 0; }, 5000));
    ev.run_for(100);
    EXPECT_EQ(calls, 1);
    EXPECT_FALSE(sub.subscribed());
}

// A throwing callback is logged and the subscriber goes on.
TEST_F(RedisSubscriberTest, ThrowingCallbackIsLogged) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    Control ctl(server.port());
    int calls = 0;
    Subscriber sub(
        ev.loop(), config(server.address()), "ch",
        [&](std::string_view) {
            calls++;
            throw std::runtime_error("x");
        },
        [this](LogLevel level, std::string_view msg) {
            logs.emplace_back(level, std::string(msg));
        });
    sub.start();
    ASSERT_TRUE(ev.run_until([&] { return sub.subscribed(); }, 5000));
    ctl.run({"PUBLISH", "ch", "a"});
    ctl.run({"PUBLISH", "ch", "b"});
    ASSERT_TRUE(ev.run_until([&] { return calls == 2; }, 5000));
    EXPECT_TRUE(sub.subscribed());
    EXPECT_EQ(logged(LogLevel::Error), 2);
    EXPECT_TRUE(logged_text("threw"));
}

// Destroyed while connecting, while the handshake is in flight, while subscribed with unread
// messages, or while waiting to retry: no callback, no leak (ASan), no descriptor left.
TEST_F(RedisSubscriberTest, DestroyInEveryStateIsClean) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    const int fds = count_open_fds();

    auto sub = make(config(server.address()));
    start(*sub);
    sub.reset();  // connecting
    ev.run_for(20);

    server.pause();  // the connection completes; the confirmation never comes
    sub = make(config(server.address()));
    start(*sub);
    ev.run_for(50);
    EXPECT_FALSE(sub->subscribed());
    sub.reset();
    server.resume();

    sub = make(config(server.address()));
    start(*sub);
    ASSERT_TRUE(ev.run_until([&] { return sub->subscribed(); }, 5000));
    {
        Control ctl(server.port());
        ctl.run({"PUBLISH", "ch", "unread"});
    }
    sub.reset();  // subscribed, a message on its way
    ev.run_for(50);
    EXPECT_TRUE(received.empty());

    RedisServer nobody;  // never started: refused, then waiting to retry
    sub = make(config(nobody.address()));
    start(*sub);
    ASSERT_TRUE(ev.run_until([&] { return logged(LogLevel::Error) >= 1; }, 5000));
    sub.reset();
    ev.run_for(50);
    EXPECT_EQ(count_open_fds(), fds);
}

// A unix socket works the same (no TCP keepalive there).
TEST_F(RedisSubscriberTest, UnixSocket) {
    char tmpl[] = "/tmp/throttle-sub-XXXXXX";
    const std::string dir = mkdtemp(tmpl);
    const std::string path = dir + "/redis.sock";
    {
        RedisServer server({"--unixsocket", path, "--unixsocketperm", "700"});
        ASSERT_TRUE(server.start());
        Address a;
        a.unix_path = path;
        auto sub = make(config(a));
        start(*sub);
        ASSERT_TRUE(ev.run_until([&] { return sub->subscribed(); }, 5000));
        Control ctl(server.port());
        EXPECT_EQ(ctl.run({"PUBLISH", "ch", "via unix"}), "1");
        ASSERT_TRUE(ev.run_until([&] { return received.size() == 1; }, 5000));
        EXPECT_EQ(received[0], "via unix");
    }
    rmdir(dir.c_str());
}

// The response cache's stampede wake-up across processes: a waiter's LOOKUP marks the entry, the
// filler's STORE publishes "1" E on the prefix's fill channel, and a subscriber hears it.
TEST_F(RedisSubscriberTest, CacheFillWakeUpEndToEnd) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    auto sub = make(config(server.address()), cache_fill_channel("tc:"));
    start(*sub);
    ASSERT_TRUE(ev.run_until([&] { return sub->subscribed(); }, 5000));

    Client client(ev.loop(), config(server.address()));
    CacheTarget t;
    t.prefix = "tc:";
    t.ns = "review";
    t.id = "anon";
    core::cache::CacheKeyInput in;
    in.ns = "review";
    in.identity_digest = "anon";
    in.method = "GET";
    in.path = "/today/";
    t.key = core::cache::cache_key(in);
    auto eval = [&](const Script& s, const EvalArgs& a) {
        Outcome o;
        client.evalsha(s, a.keys(), a.args(), track(o));
        EXPECT_TRUE(ev.run_until([&] { return o.calls > 0; }, 5000));
        EXPECT_TRUE(o.result.ok());
        return o.result.reply;
    };
    auto lookup = [&] {
        EvalArgs a;
        EXPECT_TRUE(build_cache_lookup_args(t, 5000, true, "filler.1.1", a));
        CacheLookup l;
        EXPECT_TRUE(parse_cache_lookup_reply(eval(cache_lookup_script(), a), l));
        return l;
    };
    CacheLookup filler = lookup();
    ASSERT_TRUE(filler.lock_taken);
    CacheLookup waiter = lookup();
    ASSERT_FALSE(waiter.lock_taken);
    EvalArgs a;
    ASSERT_TRUE(build_cache_store_args(t, filler.generation(), "filler.1.1", "entry", 60000,
                                       sub->channel(), a));
    bool stored = false;
    ASSERT_TRUE(parse_cache_store_reply(eval(cache_store_script(), a), stored));
    EXPECT_TRUE(stored);

    ASSERT_TRUE(ev.run_until([&] { return received.size() == 1; }, 5000));
    std::string_view key;
    bool flag = false;
    ASSERT_TRUE(parse_cache_fill_message(received[0], flag, key));
    EXPECT_TRUE(flag);
    EXPECT_EQ(key, cache_entry_key(t, waiter.generation()));

    // A filler that gives up wakes the next waiter with "0" E.
    Control ctl(server.port());
    ctl.run({"DEL", std::string(key)});
    filler = lookup();
    ASSERT_TRUE(filler.lock_taken);
    ASSERT_FALSE(lookup().lock_taken);
    ASSERT_TRUE(build_cache_release_args(t, filler.generation(), "filler.1.1", sub->channel(), a));
    bool had = false;
    ASSERT_TRUE(parse_cache_release_reply(eval(cache_release_script(), a), had));
    EXPECT_TRUE(had);
    ASSERT_TRUE(ev.run_until([&] { return received.size() == 2; }, 5000));
    EXPECT_EQ(received[1], "0" + cache_entry_key(t, filler.generation()));
}

}  // namespace
}  // namespace throttle::redis::test
