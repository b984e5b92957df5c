// The Redis client against a real redis-server on a free loopback port, driven by libevent:
// commands and binary-safe arguments, pipelining, EVALSHA and NOSCRIPT, timeouts (server paused
// with SIGSTOP), loss and reconnection (server killed and restarted), descriptors, the circuit
// breaker, AUTH and SELECT, close(). Every callback is checked to be called exactly once and
// never from inside the call that issued it.
#include <gtest/gtest.h>

#include <random>

#include "redis/cache_scripts.hpp"
#include "redis/permissions.hpp"
#include "redis/scripts.hpp"
#include "support.hpp"

namespace throttle::redis::test {
namespace {

// A Loop that counts the sockets the client hands it: connection attempts that reached the
// network.
// Wall-clock upper bounds are hang guards, not speed claims: a loaded 2-core machine can delay
// a loop turn by hundreds of ms. The exact schedule is checked on a virtual clock
// (fake_loop_test.cpp); the lower bounds (never before a deadline) hold under any load.
constexpr uint64_t slack_ms = 1000;

class CountingLoop final : public Loop {
   public:
    explicit CountingLoop(Loop& inner) : inner_(inner) {}
    uint64_t now_ms() noexcept override { return inner_.now_ms(); }
    std::unique_ptr<Timer> create_timer(std::function<void()> h) override {
        return inner_.create_timer(std::move(h));
    }
    std::unique_ptr<Deferred> create_deferred(std::function<void()> h) override {
        return inner_.create_deferred(std::move(h));
    }
    std::unique_ptr<IoWatch> watch(int fd, std::function<void(int)> handler) override {
        watches++;
        return inner_.watch(fd, std::move(handler));
    }
    int watches = 0;

   private:
    Loop& inner_;
};

class RedisClientTest : public ::testing::Test {
   protected:
    void SetUp() override {
        if (!have_redis_server()) {
            GTEST_SKIP() << "redis-server not found (set THROTTLE_REDIS_SERVER)";
        }
    }

    Config config(const RedisServer& server) {
        Config c;
        c.address = server.address();
        c.connect_timeout_ms = 1000;
        c.command_timeout_ms = 1000;
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

    // Issues `argv` and runs the loop until its callback.
    Outcome call(Client& c, std::initializer_list<std::string_view> argv,
                 uint64_t timeout_ms = 5000) {
        Outcome o;
        issue(c, argv, o);
        EXPECT_TRUE(ev.run_until([&] { return o.calls > 0; }, timeout_ms));
        EXPECT_FALSE(o.synchronous);
        return o;
    }

    // Sends PING until one succeeds (failures that come fast are retried after a turn).
    bool eventually_ok(Client& c, uint64_t timeout_ms) {
        uint64_t deadline = mono_ms() + timeout_ms;
        while (mono_ms() < deadline) {
            Outcome o;
            issue(c, {"PING"}, o);
            if (!ev.run_until([&] { return o.calls > 0; }, timeout_ms + 1000)) {
                return false;
            }
            EXPECT_EQ(o.calls, 1);
            EXPECT_FALSE(o.synchronous);
            if (o.result.ok() && o.result.reply.str == "PONG") {
                return true;
            }
            ev.run_once(5);
        }
        return false;
    }

    // Runs the loop a little longer and checks that no callback was called again.
    void expect_once(const std::vector<const Outcome*>& outs) {
        ev.run_for(30);
        for (const Outcome* o : outs) {
            EXPECT_EQ(o->calls, 1);
            EXPECT_FALSE(o->synchronous);
        }
    }

    EventLoop ev;
    std::vector<std::pair<LogLevel, std::string>> logs;
};

TEST_F(RedisClientTest, CommandsRepliesAndBinarySafeArguments) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    Client client(ev.loop(), config(server), logger());

    const std::string key("k\0ey\r\n", 6);
    const std::string value("v\0al\r\n$3\r\n*1", 13);
    Outcome set, get, incr, missing, err, mget, ping;
    // All issued in one turn, before the connection exists: they wait for it, in order.
    issue(client, {"SET", key, value}, set);
    issue(client, {"GET", key}, get);
    issue(client, {"INCR", "counter"}, incr);
    issue(client, {"GET", "missing"}, missing);
    issue(client, {"NOSUCHCOMMAND", "x"}, err);
    issue(client, {"MGET", key, "missing"}, mget);
    issue(client, {"PING"}, ping);
    ASSERT_TRUE(ev.run_until([&] { return ping.calls > 0; }, 5000));
    expect_once({&set, &get, &incr, &missing, &err, &mget, &ping});

    ASSERT_TRUE(set.result.ok());
    EXPECT_EQ(set.result.reply.type, Reply::Type::Status);
    EXPECT_EQ(set.result.reply.str, "OK");
    EXPECT_EQ(get.result.reply.type, Reply::Type::String);
    EXPECT_EQ(get.result.reply.str, value);
    EXPECT_EQ(incr.result.reply.type, Reply::Type::Integer);
    EXPECT_EQ(incr.result.reply.integer, 1);
    EXPECT_TRUE(missing.result.ok());
    EXPECT_TRUE(missing.result.reply.is_nil());
    EXPECT_TRUE(err.result.ok());
    EXPECT_TRUE(err.result.reply.is_error("ERR"));
    EXPECT_NE(err.result.reply.str.find("unknown command"), std::string::npos);
    ASSERT_EQ(mget.result.reply.type, Reply::Type::Array);
    ASSERT_EQ(mget.result.reply.elements.size(), 2u);
    EXPECT_EQ(mget.result.reply.elements[0].str, value);
    EXPECT_TRUE(mget.result.reply.elements[1].is_nil());
    EXPECT_EQ(ping.result.reply.str, "PONG");

    // The server holds exactly those bytes under exactly that key.
    Control ctl(server.port());
    EXPECT_EQ(ctl.run({"GET", key}), value);
    EXPECT_EQ(ctl.run({"STRLEN", key}), "13");
    EXPECT_EQ(ctl.run({"EXISTS", "k"}), "0");

    // A value far larger than one socket read (hiredis reads 16 KB at a time).
    std::string big(3 << 20, '\0');
    std::mt19937 rng(7);
    for (char& ch : big) {
        ch = char(rng());
    }
    Outcome setbig = call(client, {"SET", "big", big});
    EXPECT_TRUE(setbig.result.ok());
    Outcome getbig = call(client, {"GET", "big"});
    EXPECT_EQ(getbig.result.reply.str, big);

    EXPECT_EQ(client.stats().failed, 0u);
    EXPECT_EQ(logged(LogLevel::Error), 0);
}

TEST_F(RedisClientTest, UnixSocket) {
    char tmpl[] = "/tmp/throttle-sock-XXXXXX";
    std::string dir = mkdtemp(tmpl);
    std::string path = dir + "/redis.sock";
    RedisServer server({"--unixsocket", path, "--unixsocketperm", "700"});
    ASSERT_TRUE(server.start());
    Config cfg;
    cfg.address.unix_path = path;
    Client client(ev.loop(), cfg, logger());
    Outcome o = call(client, {"ECHO", std::string_view("a\0b", 3)});
    EXPECT_EQ(o.result.reply.str, std::string("a\0b", 3));
    server.stop();
    rmdir(dir.c_str());
}

TEST_F(RedisClientTest, Ipv6Loopback) {
    int probe = socket(AF_INET6, SOCK_STREAM, 0);
    sockaddr_in6 sin6{};
    sin6.sin6_family = AF_INET6;
    sin6.sin6_addr = in6addr_loopback;
    bool have_ipv6 =
        probe >= 0 && bind(probe, reinterpret_cast<sockaddr*>(&sin6), sizeof(sin6)) == 0;
    if (probe >= 0) {
        close(probe);
    }
    if (!have_ipv6) {
        GTEST_SKIP() << "no IPv6 loopback here";
    }
    RedisServer server({"--bind", "127.0.0.1", "::1"});
    ASSERT_TRUE(server.start());
    Config cfg = config(server);
    ASSERT_TRUE(Address::parse("[::1]:" + std::to_string(server.port()), cfg.address));
    Client client(ev.loop(), cfg, logger());
    EXPECT_EQ(call(client, {"PING"}).result.reply.str, "PONG");
}

// Commands issued in one loop turn leave in one write: the server sees them in one read
// (INFO stats total_reads_processed), where the same commands issued one per turn take one
// read each.
TEST_F(RedisClientTest, CommandsOfOneTurnLeaveInOneWrite) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    Client client(ev.loop(), config(server), logger());
    ASSERT_TRUE(eventually_ok(client, 5000));
    Control ctl(server.port());

    long long before = ctl.info("stats", "total_reads_processed");
    std::vector<Outcome> outs(200);
    for (Outcome& o : outs) {
        issue(client, {"INCR", "pipelined"}, o);
    }
    ASSERT_TRUE(ev.run_until([&] { return outs.back().calls > 0; }, 5000));
    long long after = ctl.info("stats", "total_reads_processed");
    // One read for the batch, one for the second INFO (the first INFO counted itself).
    EXPECT_EQ(after - before, 2);
    for (size_t i = 0; i < outs.size(); i++) {
        ASSERT_EQ(outs[i].calls, 1);
        EXPECT_EQ(outs[i].result.reply.integer, static_cast<long long>(i + 1));  // in order
    }

    // The control: one command per turn is one read per command.
    before = ctl.info("stats", "total_reads_processed");
    for (int i = 0; i < 20; i++) {
        call(client, {"INCR", "unpipelined"});
    }
    after = ctl.info("stats", "total_reads_processed");
    EXPECT_GE(after - before, 21);

    // A long pipeline (beyond one socket buffer) completes, in order.
    std::vector<Outcome> many(20000);
    for (Outcome& o : many) {
        issue(client, {"INCR", "many"}, o);
    }
    ASSERT_TRUE(ev.run_until([&] { return many.back().calls > 0; }, 10000));
    for (size_t i = 0; i < many.size(); i += 997) {
        EXPECT_EQ(many[i].result.reply.integer, static_cast<long long>(i + 1));
    }
}

// The keys and arguments written once in RESP (EvalResp, what the strict path sends): the same
// command as with views, sent while connecting, on an open connection, and again after NOSCRIPT.
TEST_F(RedisClientTest, EvalshaInRespIsTheSameCommand) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    Control ctl(server.port());
    Client client(ev.loop(), config(server), logger());

    Script script(
        "redis.call('SET', KEYS[1], ARGV[1])\n"
        "return {#KEYS, #ARGV, KEYS[1], redis.call('INCR', KEYS[2]), ARGV[1], ARGV[2], ARGV[3], "
        "ARGV[4], ARGV[5]}");
    const std::string key("s\0k", 3);
    const std::string arg("a\r\n\0z", 5);
    const std::string big(70000, 'b');  // a length of five digits
    EvalResp call;
    call.add_arg(arg);  // arguments and keys in any order
    call.add_key(key);
    call.add_arg(int64_t(-1234567890123456789));
    call.add_key("evals");
    call.add_arg(std::string_view());
    call.add_arg(uint64_t(18446744073709551615u));
    call.add_arg(big);
    ASSERT_EQ(call.nkeys(), 2u);
    ASSERT_EQ(call.nargs(), 5u);

    const auto check = [&](const Outcome& o, long long incr) {
        ASSERT_TRUE(o.result.ok()) << to_string(o.result.failure);
        const Reply& r = o.result.reply;
        ASSERT_EQ(r.type, Reply::Type::Array) << r.str;
        ASSERT_EQ(r.elements.size(), 9u);
        EXPECT_EQ(r.elements[0].integer, 2);
        EXPECT_EQ(r.elements[1].integer, 5);
        EXPECT_EQ(r.elements[2].str, key);
        EXPECT_EQ(r.elements[3].integer, incr);
        EXPECT_EQ(r.elements[4].str, arg);
        EXPECT_EQ(r.elements[5].str, "-1234567890123456789");
        EXPECT_EQ(r.elements[6].str, "");
        EXPECT_EQ(r.elements[7].str, "18446744073709551615");
        EXPECT_EQ(r.elements[8].str, big);
    };
    // First use: issued before the connection exists (kept until connected).
    Outcome first;
    inside_call() = true;
    client.evalsha(script, call, track(first));
    inside_call() = false;
    ASSERT_TRUE(ev.run_until([&] { return first.calls > 0; }, 5000));
    check(first, 1);
    EXPECT_EQ(ctl.run({"GET", key}), arg);

    // On the open connection; then after SCRIPT FLUSH: NOSCRIPT, reloaded, the kept command
    // sent again.
    Outcome second;
    client.evalsha(script, call, track(second));
    ASSERT_TRUE(ev.run_until([&] { return second.calls > 0; }, 5000));
    check(second, 2);
    EXPECT_EQ(ctl.run({"SCRIPT", "FLUSH"}), "OK");
    Outcome third;
    client.evalsha(script, call, track(third));
    ASSERT_TRUE(ev.run_until([&] { return third.calls > 0; }, 5000));
    check(third, 3);
    EXPECT_EQ(client.stats().noscript_reloads, 1u);

    // With the caller's deadline (evalsha_until, as a queued strict batch sends it): one ahead
    // is answered as any; one already past is not sent and fails with Timeout, from the loop.
    Outcome ahead, past;
    client.evalsha_until(ev.loop().now_ms() + 5000, script, call, track(ahead));
    ASSERT_TRUE(ev.run_until([&] { return ahead.calls > 0; }, 5000));
    check(ahead, 4);
    inside_call() = true;
    client.evalsha_until(std::max<uint64_t>(ev.loop().now_ms(), 1), script, call, track(past));
    inside_call() = false;
    ASSERT_TRUE(ev.run_until([&] { return past.calls > 0; }, 5000));
    EXPECT_EQ(past.result.failure, Failure::Timeout);
    EXPECT_TRUE(past.result.unsent);
    EXPECT_FALSE(past.synchronous);
    Outcome after;
    client.evalsha(script, call, track(after));
    ASSERT_TRUE(ev.run_until([&] { return after.calls > 0; }, 5000));
    check(after, 5);  // the one past its deadline never ran

    // Read back one by one, the views are what was added.
    std::vector<std::string_view> keys, args;
    call.views(keys, args);
    EXPECT_EQ(keys, (std::vector<std::string_view>{key, "evals"}));
    EXPECT_EQ(args, (std::vector<std::string_view>{arg, "-1234567890123456789", "",
                                                   "18446744073709551615", big}));
    call.clear();
    EXPECT_EQ(call.nkeys() + call.nargs(), 0u);
    EXPECT_TRUE(call.keys_resp().empty() && call.args_resp().empty());
    expect_once({&first, &second, &third, &ahead, &past, &after});
}

TEST_F(RedisClientTest, EvalshaLoadsScriptsAndReloadsOnNoscript) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    Control ctl(server.port());
    Client client(ev.loop(), config(server), logger());

    Script script(
        "redis.call('SET', KEYS[1], ARGV[1])\n"
        "return {KEYS[1], redis.call('INCR', KEYS[2]), ARGV[1], {7, 'x', false}}");
    const std::string key("s\0k", 3);
    const std::string arg("a\r\n\0z", 5);

    // First use: issued before the connection exists; the client loads it on connect.
    Outcome first;
    inside_call() = true;
    client.evalsha(script, {key, "evals"}, {arg}, track(first));
    inside_call() = false;
    ASSERT_TRUE(ev.run_until([&] { return first.calls > 0; }, 5000));
    ASSERT_TRUE(first.result.ok());
    const Reply& r = first.result.reply;
    ASSERT_EQ(r.type, Reply::Type::Array) << r.str;
    ASSERT_EQ(r.elements.size(), 4u);
    EXPECT_EQ(r.elements[0].str, key);
    EXPECT_EQ(r.elements[1].integer, 1);
    EXPECT_EQ(r.elements[2].str, arg);
    ASSERT_EQ(r.elements[3].type, Reply::Type::Array);
    ASSERT_EQ(r.elements[3].elements.size(), 3u);
    EXPECT_EQ(r.elements[3].elements[0].integer, 7);
    EXPECT_EQ(r.elements[3].elements[1].str, "x");
    EXPECT_TRUE(r.elements[3].elements[2].is_nil());
    EXPECT_EQ(ctl.run({"GET", key}), arg);
    EXPECT_EQ(ctl.run({"SCRIPT", "EXISTS", script.sha()}), "[1]");
    EXPECT_EQ(client.stats().noscript_reloads, 0u);

    // The server forgets its scripts: the next EVALSHA meets NOSCRIPT, reloads, retries.
    EXPECT_EQ(ctl.run({"SCRIPT", "FLUSH"}), "OK");
    EXPECT_EQ(ctl.run({"SCRIPT", "EXISTS", script.sha()}), "[0]");
    Outcome second;
    inside_call() = true;
    client.evalsha(script, {key, "evals"}, {arg}, track(second));
    inside_call() = false;
    ASSERT_TRUE(ev.run_until([&] { return second.calls > 0; }, 5000));
    ASSERT_TRUE(second.result.ok());
    ASSERT_EQ(second.result.reply.type, Reply::Type::Array) << second.result.reply.str;
    EXPECT_EQ(second.result.reply.elements[1].integer, 2);
    EXPECT_EQ(client.stats().noscript_reloads, 1u);
    EXPECT_EQ(ctl.run({"SCRIPT", "EXISTS", script.sha()}), "[1]");

    // A script that fails is an error reply, delivered once, not retried.
    Script failing("return redis.call('NOSUCHCOMMAND')");
    Outcome bad;
    client.evalsha(failing, {}, {}, track(bad));
    ASSERT_TRUE(ev.run_until([&] { return bad.calls > 0; }, 5000));
    EXPECT_TRUE(bad.result.ok());
    EXPECT_TRUE(bad.result.reply.is_error()) << bad.result.reply.str;
    EXPECT_EQ(client.stats().noscript_reloads, 1u);
    expect_once({&first, &second, &bad});

    // Our SHA-1 is the name Redis gives the script.
    EXPECT_EQ(ctl.run({"SCRIPT", "LOAD", script.source()}), script.sha());
    EXPECT_EQ(ctl.run({"SCRIPT", "LOAD", failing.source()}), failing.sha());
}

// SIGSTOP: the server accepts nothing and answers nothing (a hang, not a refusal). Commands
// fail at their deadline, each alone, none waits longer; the connection is dropped as stuck
// once nothing was read for stuck_timeout_ms; after SIGCONT the client recovers by itself.
TEST_F(RedisClientTest, CommandTimeoutWhenServerHangsThenRecovery) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    Config cfg = config(server);
    cfg.command_timeout_ms = 200;
    cfg.connect_timeout_ms = 200;
    cfg.backoff_initial_ms = 20;
    cfg.cooldown_initial_ms = 300;
    cfg.stuck_timeout_ms = 600;
    Client client(ev.loop(), cfg, logger());
    ASSERT_TRUE(eventually_ok(client, 5000));
    uint64_t connects = client.stats().connects;

    server.pause();
    uint64_t t0 = mono_ms();
    Outcome a, b, c;
    issue(client, {"GET", "x"}, a);
    issue(client, {"INCR", "y"}, b);
    issue(client, {"SET", "z", "1"}, c);
    ASSERT_TRUE(ev.run_until([&] { return a.calls && b.calls && c.calls; }, 5000));
    // Each command times out at its own deadline; the connection is kept for now (a slow
    // server would answer late, and the replies would be read and dropped).
    for (const Outcome* o : {&a, &b, &c}) {
        EXPECT_EQ(o->result.failure, Failure::Timeout) << to_string(o->result.failure);
        EXPECT_GE(o->at_ms - t0, 199u);             // not before the deadline
        EXPECT_LE(o->at_ms - t0, 200u + slack_ms);  // and not stuck (a loaded machine is slow)
    }
    EXPECT_EQ(client.stats().timeouts, 3u);
    EXPECT_EQ(client.stats().connects, connects);
    // Nothing read for 600 ms: the connection is stuck, dropped, and made again.
    ASSERT_TRUE(ev.run_until([&] { return client.stats().stuck > 0; }, 600 + 5000));
    EXPECT_GE(mono_ms() - t0, 599u);

    // While it hangs, nothing waits longer than the timeout (plus a margin).
    for (int i = 0; i < 8; i++) {
        Outcome o;
        uint64_t t = mono_ms();
        issue(client, {"GET", "x"}, o);
        ASSERT_TRUE(ev.run_until([&] { return o.calls > 0; }, 5000));
        EXPECT_FALSE(o.result.ok());
        EXPECT_LE(o.at_ms - t, 200u + slack_ms);
        ev.run_once(20);
    }
    EXPECT_TRUE(client.circuit_open() || client.stats().failures >= 3);

    server.resume();
    EXPECT_TRUE(eventually_ok(client, 5000));
    EXPECT_FALSE(client.circuit_open());
    EXPECT_TRUE(client.available());
    // Reported once per incident, not once per command.
    EXPECT_LE(logged(LogLevel::Error), 3);
    EXPECT_TRUE(logged_text("no reply within 200 ms"));
    EXPECT_TRUE(logged_text("connection stuck, dropped: nothing read for"));
    EXPECT_TRUE(logged_text("connection restored"));
    expect_once({&a, &b, &c});
}

// A command that reaches its deadline fails alone: the connection is kept, the commands
// pipelined behind it get their own replies, and its late reply is read and dropped (never
// handed to another command). The server is kept busy by a script that spins for 2.5 s.
TEST_F(RedisClientTest, TimedOutCommandLeavesTheOthersTheirReplies) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    Config cfg = config(server);
    cfg.command_timeout_ms = 2000;
    Client client(ev.loop(), cfg, logger());
    ASSERT_TRUE(eventually_ok(client, 5000));
    uint64_t connects = client.stats().connects;

    const char* spin =
        "local t = redis.call('TIME') local t0 = t[1] * 1000000 + t[2] "
        "repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - t0 >= ARGV[1] * 1000 "
        "return 'slept'";
    uint64_t t0 = mono_ms();
    Outcome slow, other, after;
    issue(client, {"EVAL", spin, "0", "2500"}, slow);  // times out at 2000 ms, answered at 2500
    ev.run_for(1000);
    issue(client, {"ECHO", "other"}, other);  // deadline 3000 ms: answered after the script
    ASSERT_TRUE(ev.run_until([&] { return slow.calls > 0; }, 5000));
    EXPECT_EQ(slow.result.failure, Failure::Timeout);
    EXPECT_FALSE(slow.result.unsent);  // it was sent: the server may run it (and does)
    EXPECT_GE(slow.at_ms - t0, 1999u);
    EXPECT_LE(slow.at_ms - t0, 2000u + slack_ms);
    EXPECT_EQ(other.calls, 0);  // still waiting, on the same connection
    issue(client, {"ECHO", "after"}, after);
    ASSERT_TRUE(ev.run_until([&] { return other.calls > 0 && after.calls > 0; }, 5000));
    ASSERT_TRUE(other.result.ok()) << to_string(other.result.failure);
    EXPECT_EQ(other.result.reply.str, "other");
    ASSERT_TRUE(after.result.ok()) << to_string(after.result.failure);
    EXPECT_EQ(after.result.reply.str, "after");
    EXPECT_EQ(client.stats().late_replies, 1u);  // "slept", read and dropped
    EXPECT_EQ(client.stats().timeouts, 1u);
    EXPECT_EQ(client.stats().connects, connects);  // never reconnected
    EXPECT_EQ(client.stats().failures, 0u);
    EXPECT_EQ(client.pending(), 0u);
    EXPECT_TRUE(logged_text("no reply within 2000 ms: 1 command(s) failed with a timeout"));
    expect_once({&slow, &other, &after});
}

// Connecting to a server that never completes the handshake of TCP (its accept queue is full):
// connect_timeout_ms bounds the attempt.
TEST_F(RedisClientTest, ConnectTimeout) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(bind(l, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)), 0);
    socklen_t len = sizeof(sin);
    getsockname(l, reinterpret_cast<sockaddr*>(&sin), &len);
    ASSERT_EQ(listen(l, 0), 0);
    std::vector<int> fillers;
    for (int i = 0; i < 2; i++) {
        int f = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        connect(f, reinterpret_cast<sockaddr*>(&sin), sizeof(sin));
        fillers.push_back(f);
    }

    Config cfg;
    cfg.address.host = "127.0.0.1";
    cfg.address.port = ntohs(sin.sin_port);
    cfg.connect_timeout_ms = 150;
    cfg.command_timeout_ms = 1000;
    cfg.failure_threshold = 0;
    cfg.backoff_initial_ms = 5000;
    {
        Client client(ev.loop(), cfg, logger());
        uint64_t t0 = mono_ms();
        Outcome o;
        issue(client, {"PING"}, o);  // waits for the connection, which never comes
        ASSERT_TRUE(ev.run_until([&] { return o.calls > 0; }, 5000));
        EXPECT_EQ(o.result.failure, Failure::Disconnected);
        EXPECT_GE(o.at_ms - t0, 149u);
        EXPECT_LE(o.at_ms - t0, 150u + slack_ms);
        EXPECT_TRUE(logged_text("no connection within 150 ms"));
        expect_once({&o});
    }
    {
        // A command whose own deadline comes first fails at its deadline, unsent.
        cfg.command_timeout_ms = 50;
        Client client(ev.loop(), cfg, logger());
        uint64_t t0 = mono_ms();
        Outcome o;
        issue(client, {"PING"}, o);
        ASSERT_TRUE(ev.run_until([&] { return o.calls > 0; }, 5000));
        EXPECT_EQ(o.result.failure, Failure::Timeout);
        EXPECT_GE(o.at_ms - t0, 49u);
        EXPECT_LE(o.at_ms - t0, 50u + slack_ms);
        EXPECT_EQ(client.stats().sent, 0u);
        expect_once({&o});
    }
    for (int f : fillers) {
        close(f);
    }
    close(l);
}

// Killed: pending and new commands fail; reconnect attempts back off exponentially; the
// server restarted on the same port is found again.
TEST_F(RedisClientTest, ServerKilledThenRestartedWithBackoff) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    Config cfg = config(server);
    cfg.failure_threshold = 0;  // backoff alone
    cfg.backoff_initial_ms = 50;
    cfg.backoff_max_ms = 5000;
    Client client(ev.loop(), cfg, logger());
    ASSERT_TRUE(eventually_ok(client, 5000));
    int fds_connected = count_open_fds();

    server.kill9();
    ASSERT_TRUE(ev.run_until([&] { return !client.connected(); }, 2000));
    uint64_t lost = mono_ms();
    uint64_t connects0 = client.stats().connects;

    // While it is down every command fails, quickly.
    Outcome o = call(client, {"GET", "x"}, 1000);
    EXPECT_EQ(o.result.failure, Failure::Disconnected);
    EXPECT_FALSE(client.available());

    // Attempts at +50, +150, +350, +750, +1550 ms: five in 1.6 s (a fixed 50 ms retry: 32).
    ev.run_until([&] { return mono_ms() >= lost + 1650; }, 3000);
    uint64_t attempts = client.stats().connects - connects0;
    EXPECT_GE(attempts, 4u);
    EXPECT_LE(attempts, 6u);

    ASSERT_TRUE(server.start());
    EXPECT_TRUE(eventually_ok(client, 8000));
    EXPECT_GE(client.stats().reconnects, attempts);
    EXPECT_EQ(count_open_fds(), fds_connected);
    EXPECT_EQ(logged(LogLevel::Error), 1);  // one incident
    EXPECT_TRUE(logged_text("connection restored"));
}

// Many reconnect cycles -- connection killed by the server, server killed, connection refused,
// clients destroyed mid-connect -- leave no descriptor behind.
TEST_F(RedisClientTest, NoDescriptorLeakAcrossReconnects) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    Control ctl(server.port());
    int fds_before = count_open_fds();
    {
        Config cfg = config(server);
        cfg.failure_threshold = 0;
        cfg.backoff_initial_ms = 1;
        cfg.backoff_max_ms = 2;
        Client client(ev.loop(), cfg, logger());
        for (int i = 0; i < 40; i++) {
            ASSERT_TRUE(eventually_ok(client, 5000)) << "cycle " << i;
            uint64_t reconnects = client.stats().reconnects;
            EXPECT_EQ(ctl.run({"CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"}), "1");
            ASSERT_TRUE(ev.run_until([&] { return client.stats().reconnects > reconnects; }, 5000));
            EXPECT_LE(count_open_fds(), fds_before + 2);
        }
        // Refused: every attempt opens and closes a socket.
        server.kill9();
        uint64_t connects = client.stats().connects;
        ev.run_until([&] { return client.stats().connects > connects + 100; }, 5000);
        EXPECT_LE(count_open_fds(), fds_before + 1);
        ASSERT_TRUE(server.start());
        ASSERT_TRUE(eventually_ok(client, 5000));
    }
    Control ctl2(server.port());
    for (int i = 0; i < 50; i++) {
        Config cfg = config(server);
        Outcome o;  // outlives the client, whose destructor may call back
        Client client(ev.loop(), cfg, logger());
        client.command({"PING"}, track(o));
        ev.run_once(0);
        if (i % 2 == 0) {
            ev.run_once(1);
        }
    }
    ev.run_for(20);
    EXPECT_EQ(count_open_fds(), fds_before + 1);  // + ctl2
}

// disconnect_idle(), for a worker's graceful exit: an idle connection is closed (the server
// sees it go), quietly -- no failure, no log line, no backoff -- and the next command connects
// again; a connection with a command pending is left alone.
TEST_F(RedisClientTest, DisconnectIdleClosesOnlyAnIdleConnection) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    Control ctl(server.port());
    auto connections = [&] { return ctl.info("clients", "connected_clients") - 1; };  // less ctl
    Client client(ev.loop(), config(server), logger());
    EXPECT_TRUE(client.disconnect_idle());  // never connected: nothing to close
    ASSERT_TRUE(eventually_ok(client, 5000));
    ASSERT_TRUE(wait_for([&] { return connections() == 1; }, 5000));

    Outcome pending;
    issue(client, {"PING"}, pending);
    EXPECT_FALSE(client.disconnect_idle());  // a command waits for its reply
    ASSERT_TRUE(ev.run_until([&] { return pending.calls > 0; }, 5000));
    ASSERT_TRUE(pending.result.ok());

    uint64_t connects = client.stats().connects;
    EXPECT_TRUE(client.disconnect_idle());
    EXPECT_FALSE(client.connected());
    ASSERT_TRUE(wait_for([&] { return connections() == 0; }, 5000));

    Outcome again = call(client, {"PING"});
    ASSERT_TRUE(again.result.ok());
    EXPECT_EQ(again.result.reply.str, "PONG");
    EXPECT_EQ(client.stats().connects, connects + 1);
    EXPECT_EQ(client.stats().failures, 0u);
    EXPECT_EQ(client.stats().reconnects, 0u);
    EXPECT_EQ(logged(LogLevel::Error), 0);
    EXPECT_EQ(logged(LogLevel::Warn), 0);
}

// After failure_threshold consecutive failures the circuit opens: commands fail at once
// without touching the network (no socket, no connection on the server); after the cool-down
// one probe connection closes it again.
TEST_F(RedisClientTest, CircuitBreakerFailsFastWithoutNetworkThenCloses) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    CountingLoop counting(ev.loop());
    Config cfg = config(server);
    cfg.failure_threshold = 3;
    cfg.backoff_initial_ms = 20;
    cfg.cooldown_initial_ms = 1500;
    Client client(counting, cfg, logger());
    ASSERT_TRUE(eventually_ok(client, 5000));

    server.kill9();
    ASSERT_TRUE(ev.run_until([&] { return client.circuit_open(); }, 3000));
    uint64_t opened = mono_ms();
    EXPECT_EQ(client.stats().circuit_opens, 1u);
    EXPECT_FALSE(client.available());

    ASSERT_TRUE(server.start());  // back, but the circuit stays open until the cool-down ends
    Control ctl(server.port());
    long long conns0 = ctl.info("stats", "total_connections_received");
    int watches0 = counting.watches;
    uint64_t connects0 = client.stats().connects;
    int fast = 0;
    while (mono_ms() < opened + 1000) {
        Outcome o;
        uint64_t t = mono_ms();
        issue(client, {"GET", "x"}, o);
        ASSERT_TRUE(ev.run_until([&] { return o.calls > 0; }, 500));
        EXPECT_EQ(o.result.failure, Failure::CircuitOpen);  // no network: connects stay (below)
        EXPECT_TRUE(o.result.unsent);
        EXPECT_LE(o.at_ms - t, slack_ms);
        EXPECT_FALSE(o.synchronous);
        fast++;
        ev.run_once(5);
    }
    EXPECT_GT(fast, 20);
    EXPECT_EQ(counting.watches, watches0);
    EXPECT_EQ(client.stats().connects, connects0);
    EXPECT_EQ(ctl.info("stats", "total_connections_received"), conns0);

    ASSERT_TRUE(eventually_ok(client, 3000));
    EXPECT_FALSE(client.circuit_open());
    EXPECT_EQ(client.stats().connects, connects0 + 1);  // one probe
    EXPECT_EQ(ctl.info("stats", "total_connections_received"), conns0 + 1);
    EXPECT_EQ(logged(LogLevel::Error), 2);  // the first failure, the circuit opening
    EXPECT_TRUE(logged_text("circuit open for 1500 ms"));
}

TEST_F(RedisClientTest, AuthWithPasswordAndAclUser) {
    RedisServer server(
        {"--requirepass", "s3cret", "--user", "alice", "on", ">alice-pw", "~*", "&*", "+@all"});
    server.set_password("s3cret");
    ASSERT_TRUE(server.start());

    {
        Config cfg = config(server);
        cfg.password = "s3cret";
        Client client(ev.loop(), cfg, logger());
        EXPECT_TRUE(call(client, {"SET", "a", "1"}).result.ok());
        EXPECT_EQ(call(client, {"ACL", "WHOAMI"}).result.reply.str, "default");
    }
    {
        Config cfg = config(server);
        cfg.username = "alice";
        cfg.password = "alice-pw";
        Client client(ev.loop(), cfg, logger());
        EXPECT_EQ(call(client, {"ACL", "WHOAMI"}).result.reply.str, "alice");
        EXPECT_EQ(call(client, {"GET", "a"}).result.reply.str, "1");
    }
    EXPECT_EQ(logged(LogLevel::Error), 0);
    {
        Config cfg = config(server);
        cfg.password = "wrong";
        cfg.backoff_initial_ms = 10;
        Client client(ev.loop(), cfg, logger());
        std::vector<Outcome> outs(20);
        for (Outcome& o : outs) {
            issue(client, {"GET", "a"}, o);
            ASSERT_TRUE(ev.run_until([&] { return o.calls > 0; }, 2000));
            EXPECT_FALSE(o.result.ok());
            ev.run_once(5);
        }
        EXPECT_TRUE(logged_text("AUTH failed: WRONGPASS"));
        EXPECT_LE(logged(LogLevel::Error), 2);  // once per incident, not per command
    }
    logs.clear();
    {
        Config cfg = config(server);  // no password
        Client client(ev.loop(), cfg, logger());
        Outcome o = call(client, {"GET", "a"});
        EXPECT_EQ(o.result.failure, Failure::Disconnected);
        EXPECT_TRUE(logged_text("PING failed: NOAUTH"));
    }
}

// The handshake asks Redis whether the user may run what the scripts call, on the keys and
// channels they call it on (redis.acl_check_cmd): a refusal fails the connection with a
// message naming each refused command line, before any command; a user with every
// permission, or a client without checks, is not held up.
TEST_F(RedisClientTest, AclPermissionsCheckedOnConnect) {
    RedisServer server({"--user", "full",     "on",       ">pw",    "~t:*",   "&t:*",
                        "+@all",  "--user",   "noincrby", "on",     ">pw",    "~t:*",
                        "&*",     "+@all",    "-incrby",  "--user", "nokeys", "on",
                        ">pw",    "~other:*", "&*",       "+@all",  "--user", "noevalsha",
                        "on",     ">pw",      "~*",       "&*",     "+@all",  "-evalsha"});
    ASSERT_TRUE(server.start());
    Script script(
        "redis.call('INCRBY', KEYS[1], 1) redis.call('PUBLISH', ARGV[1], 'x') "
        "return redis.call('GET', KEYS[1])");
    auto run = [&](const std::string& user, bool checked) {
        Config cfg = config(server);
        cfg.username = user;
        cfg.password = "pw";
        cfg.failure_threshold = 0;
        cfg.backoff_initial_ms = 10;
        Client client(ev.loop(), cfg, logger());
        if (checked) {
            client.add_script(script, "t:{probe}:0", "t:channel");
        } else {
            client.add_script(script);
        }
        Outcome o;
        std::string_view key = "t:{k}:1", channel = "t:channel";
        client.evalsha(script, {key}, {channel}, track(o));
        EXPECT_TRUE(ev.run_until([&] { return o.calls > 0; }, 5000));
        return o;
    };

    Outcome full = run("full", true);
    EXPECT_TRUE(full.result.ok() && !full.result.reply.is_error()) << full.result.reply.str;
    EXPECT_EQ(full.result.reply.str, "1");
    EXPECT_EQ(logged(LogLevel::Error), 0);

    logs.clear();
    Outcome noincrby = run("noincrby", true);
    EXPECT_EQ(noincrby.result.failure, Failure::Disconnected);
    EXPECT_TRUE(logged_text("user \"noincrby\" may not run \"INCRBY t:{probe}:0 1\""));
    EXPECT_FALSE(logged_text("\"GET t:{probe}:0\""));  // what is allowed is not listed

    logs.clear();
    Outcome nokeys = run("nokeys", true);
    EXPECT_EQ(nokeys.result.failure, Failure::Disconnected);
    EXPECT_TRUE(
        logged_text("user \"nokeys\" may not run \"INCRBY t:{probe}:0 1\", "
                    "\"GET t:{probe}:0\""));

    logs.clear();
    Outcome noevalsha = run("noevalsha", true);
    EXPECT_EQ(noevalsha.result.failure, Failure::Disconnected);
    EXPECT_TRUE(logged_text("user \"noevalsha\" may not run EVALSHA"));
    EXPECT_TRUE(logged_text("NOPERM"));

    // Without the check, the same user reaches the script, which fails in Redis.
    logs.clear();
    Outcome unchecked = run("noincrby", false);
    EXPECT_TRUE(unchecked.result.ok());
    EXPECT_TRUE(unchecked.result.reply.is_error()) << unchecked.result.reply.str;
}

// The commands that wait for the connection wait for the permission check too: a refused user's
// script never reaches Redis, even one whose path this time avoids the refused command (the
// strict script calls INCRBY only for a key decided twice in one batch; INCR otherwise).
TEST_F(RedisClientTest, NothingRunsBeforeThePermissionCheckAnswers) {
    RedisServer server({"--user", "noincrby", "on", ">pw", "~*", "&*", "+@all", "-incrby"});
    ASSERT_TRUE(server.start());
    Script script(
        "if ARGV[1] == 'many' then redis.call('INCRBY', KEYS[1], 5) "
        "else redis.call('INCR', KEYS[1]) end return 1");
    Config cfg = config(server);
    cfg.username = "noincrby";
    cfg.password = "pw";
    cfg.failure_threshold = 0;
    Client client(ev.loop(), cfg, logger());
    client.add_script(script, "t:{probe}:0", "t:channel");
    std::vector<Outcome> outs(5);
    std::string_view key = "t:{k}:1", one = "one";
    for (Outcome& o : outs) {  // sent while connecting: they wait for the handshake
        client.evalsha(script, {key}, {one}, track(o));
    }
    ASSERT_TRUE(ev.run_until(
        [&] { return std::all_of(outs.begin(), outs.end(), [](auto& o) { return o.calls > 0; }); },
        5000));
    for (const Outcome& o : outs) {
        EXPECT_EQ(o.result.failure, Failure::Disconnected);
    }
    EXPECT_TRUE(logged_text("user \"noincrby\" may not run \"INCRBY t:{probe}:0 1\""));
    Control ctl(server.port());
    EXPECT_EQ(ctl.run({"GET", "t:{k}:1"}), "(nil)");
}

// Every command our scripts call has a known shape for the check (arity, where the key goes):
// a new redis.call in a script without one here fails this test.
TEST(RedisPermissions, EveryScriptCommandHasAShape) {
    for (const Script* s : {&strict_batch_script(), &flush_script(), &cache_lookup_batch_script(),
                            &cache_store_script(), &cache_release_script(), &cache_renew_script(),
                            &cache_abandon_script(), &cache_invalidate_script()}) {
        std::vector<std::string> names = script_commands(s->source());
        EXPECT_FALSE(names.empty());
        for (const Argv& argv : permission_checks(s->source(), "k", "c")) {
            EXPECT_TRUE(argv.size() > 1 || argv[0] == "TIME") << argv[0] << " in " << s->sha();
        }
    }
    EXPECT_EQ(script_commands("redis.call('get', k) redis.pcall(\"SET\", k, 1) "
                              "redis.call('GET', x) redis.call(name)"),
              (std::vector<std::string>{"GET", "SET"}));
}

TEST_F(RedisClientTest, SelectDatabase) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    Config cfg = config(server);
    cfg.db = 5;
    Client client(ev.loop(), cfg, logger());
    EXPECT_TRUE(call(client, {"SET", "where", "db5"}).result.ok());
    Control ctl(server.port());
    EXPECT_EQ(ctl.run({"GET", "where"}), "(nil)");
    EXPECT_EQ(ctl.run({"SELECT", "5"}), "OK");
    EXPECT_EQ(ctl.run({"GET", "where"}), "db5");

    // Still db 5 after a reconnect.
    EXPECT_EQ(ctl.run({"CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes"}), "1");
    ASSERT_TRUE(eventually_ok(client, 5000));
    EXPECT_EQ(call(client, {"GET", "where"}).result.reply.str, "db5");
}

TEST_F(RedisClientTest, RefusedCommandsFailWithoutNetwork) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    Client client(ev.loop(), config(server), logger());
    ASSERT_TRUE(eventually_ok(client, 5000));
    uint64_t sent = client.stats().sent;
    for (auto argv : std::vector<std::vector<std::string_view>>{
             {"SUBSCRIBE", "c"}, {"monitor"}, {"select", "1"}, {"CLIENT", "REPLY", "OFF"}, {}}) {
        Outcome o;
        inside_call() = true;
        client.command(argv, track(o));
        inside_call() = false;
        EXPECT_EQ(o.calls, 0);
        ASSERT_TRUE(ev.run_until([&] { return o.calls > 0; }, 1000));
        EXPECT_EQ(o.result.failure, Failure::Invalid);
        expect_once({&o});
    }
    EXPECT_EQ(client.stats().sent, sent);
}

TEST_F(RedisClientTest, CloseAndDestroyFailPendingCommandsExactlyOnce) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    {
        // close() with commands in flight (the server hangs so they stay pending).
        Client client(ev.loop(), config(server), logger());
        ASSERT_TRUE(eventually_ok(client, 5000));
        server.pause();
        Outcome a, b;
        issue(client, {"GET", "a"}, a);
        issue(client, {"GET", "b"}, b);
        ev.run_once(5);
        client.close();
        EXPECT_EQ(a.calls + b.calls, 0);  // from the loop, not from close()
        ASSERT_TRUE(ev.run_until([&] { return a.calls && b.calls; }, 1000));
        EXPECT_EQ(a.result.failure, Failure::Shutdown);
        EXPECT_EQ(b.result.failure, Failure::Shutdown);
        Outcome after;
        issue(client, {"PING"}, after);
        ASSERT_TRUE(ev.run_until([&] { return after.calls > 0; }, 1000));
        EXPECT_EQ(after.result.failure, Failure::Shutdown);
        expect_once({&a, &b, &after});
        server.resume();
    }
    {
        // Destroyed with commands pending: their callbacks run during destruction.
        Outcome a, b;
        {
            Client client(ev.loop(), config(server), logger());
            issue(client, {"GET", "a"}, a);
            issue(client, {"GET", "b"}, b);
        }
        EXPECT_EQ(a.calls, 1);
        EXPECT_EQ(b.calls, 1);
        EXPECT_EQ(a.result.failure, Failure::Shutdown);
        expect_once({&a, &b});
    }
    {
        // close() from inside a reply callback.
        Client client(ev.loop(), config(server), logger());
        Outcome first, second, third;
        client.command({"PING"}, [&](Result&& r) {
            track(first)(std::move(r));
            client.close();
        });
        issue(client, {"GET", "x"}, second);
        issue(client, {"GET", "y"}, third);
        ASSERT_TRUE(ev.run_until([&] { return first.calls && second.calls && third.calls; }, 3000));
        EXPECT_TRUE(first.result.ok());
        EXPECT_EQ(second.result.failure, Failure::Shutdown);
        EXPECT_EQ(third.result.failure, Failure::Shutdown);
        expect_once({&first, &second, &third});
    }
}

// Commands issued from inside callbacks (the way a caller chains work) are fine.
TEST_F(RedisClientTest, CommandsFromCallbacks) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    Client client(ev.loop(), config(server), logger());
    int chain = 0;
    std::function<void(Result &&)> next = [&](Result&& r) {
        ASSERT_TRUE(r.ok());
        if (++chain < 50) {
            client.command({"INCR", "chain"}, next);
        }
    };
    client.command({"INCR", "chain"}, next);
    ASSERT_TRUE(ev.run_until([&] { return chain == 50; }, 5000));
    EXPECT_EQ(call(client, {"GET", "chain"}).result.reply.str, "50");
}

}  // namespace
}  // namespace throttle::redis::test
