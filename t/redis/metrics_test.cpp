// The Redis client's metrics (issue 11; client.hpp, "Metrics"): what it counts into a
// core::metrics::RedisMetrics and one WorkerGauge, against a real redis-server (commands,
// error replies, NOSCRIPT, the server killed and restarted, the circuit breaker) and the fake
// server (commands that get no answer, protocol violations, handshakes of the wrong shape).
// Every test ends with the pending gauge back at 0 and, where replies came, as many
// command_duration observations as replies handed to callers.
#include "core/metrics.hpp"

#include <gtest/gtest.h>

#include <memory>

#include "fake_server.hpp"
#include "support.hpp"

namespace throttle::redis::test {
namespace {

using core::metrics::Histogram;
using core::metrics::RedisError;
using core::metrics::RedisMetrics;
using core::metrics::WorkerGauge;

class RedisMetricsTest : public ::testing::Test {
   protected:
    // Counters and gauges as the nginx side hands them over: value-initialised (zeros).
    std::unique_ptr<RedisMetrics> m = std::make_unique<RedisMetrics>();
    std::unique_ptr<WorkerGauge> g = std::make_unique<WorkerGauge>();
    EventLoop ev;

    uint64_t counter(const core::metrics::Counter& c) const { return core::metrics::read(c); }
    uint64_t errors(RedisError e) const { return counter(m->errors[size_t(e)]); }
    uint64_t all_errors() const {
        uint64_t n = 0;
        for (const auto& e : m->errors) {
            n += counter(e);
        }
        return n;
    }
    static int64_t connected(const WorkerGauge& w) { return w.connected.load(); }
    static int64_t breaker(const WorkerGauge& w) { return w.breaker_open.load(); }
    static int64_t pending(const WorkerGauge& w) { return w.pending.load(); }
    uint64_t durations() const { return counter(m->command_duration.count); }
    // The buckets of a histogram add up to its count.
    static uint64_t bucket_total(const Histogram& h) {
        uint64_t n = 0;
        for (const auto& b : h.buckets) {
            n += core::metrics::read(b);
        }
        return n;
    }

    static int replies(const std::vector<Outcome>& outs) {
        int n = 0;
        for (const Outcome& o : outs) {
            n += o.calls == 1 && o.result.ok();
        }
        return n;
    }
    bool all_called(const std::vector<Outcome>& outs, uint64_t timeout_ms) {
        return ev.run_until(
            [&] {
                return std::all_of(outs.begin(), outs.end(),
                                   [](const Outcome& o) { return o.calls > 0; });
            },
            timeout_ms);
    }
    bool called(const Outcome& o, uint64_t timeout_ms) {
        return ev.run_until([&] { return o.calls > 0; }, timeout_ms);
    }
    // Runs the loop a little longer: no callback is called twice.
    void expect_once(const std::vector<Outcome>& outs) {
        ev.run_for(30);
        for (const Outcome& o : outs) {
            EXPECT_EQ(o.calls, 1);
            EXPECT_FALSE(o.synchronous);
        }
    }
    // PING until one is answered.
    bool eventually_ok(Client& c, uint64_t timeout_ms) {
        uint64_t deadline = mono_ms() + timeout_ms;
        while (mono_ms() < deadline) {
            Outcome o;
            issue(c, {"PING"}, o);
            if (!ev.run_until([&] { return o.calls > 0; }, timeout_ms + 1000)) {
                return false;
            }
            if (o.result.ok() && o.result.reply.str == "PONG") {
                return true;
            }
            ev.run_once(5);
        }
        return false;
    }
    void eval(Client& c, const Script& s, std::string_view arg, Outcome& o) {
        std::vector<std::string_view> args = {arg};
        inside_call() = true;
        c.evalsha(s, {}, args, track(o));
        inside_call() = false;
    }
};

class RedisMetricsRealTest : public RedisMetricsTest {
   protected:
    void SetUp() override {
        if (!have_redis_server()) {
            GTEST_SKIP() << "redis-server not found (set THROTTLE_REDIS_SERVER)";
        }
    }
    Config config(const RedisServer& server) {
        Config c;
        c.address = server.address();
        c.connect_timeout_ms = 2000;
        c.command_timeout_ms = 5000;  // no timeout under any load: those are tested apart
        return c;
    }
};

// N commands, an error reply, an EVALSHA error, an EVALSHA reloaded after NOSCRIPT: commands
// and durations count the caller's commands once each (not the handshake, not the reload),
// script errors the error replies, pending is N while N are in flight and 0 after.
TEST_F(RedisMetricsRealTest, CommandsRepliesScriptErrorsAndNoscript) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    Client client(ev.loop(), config(server));
    client.set_metrics(m.get(), g.get());
    client.start();
    ASSERT_TRUE(ev.run_until([&] { return connected(*g) == 1; }, 5000));
    EXPECT_EQ(counter(m->connects), 1u);
    EXPECT_EQ(counter(m->reconnects), 0u);
    EXPECT_EQ(counter(m->commands), 0u);  // PING of the handshake: not a command
    EXPECT_EQ(pending(*g), 0);

    constexpr int n = 25;
    std::vector<Outcome> outs(n);
    for (Outcome& o : outs) {
        issue(client, {"INCR", "counter"}, o);
    }
    EXPECT_EQ(pending(*g), n);  // sent at once on a ready connection, none answered yet
    EXPECT_EQ(counter(m->commands), uint64_t(n));
    ASSERT_TRUE(all_called(outs, 10000));
    expect_once(outs);
    EXPECT_EQ(replies(outs), n);
    EXPECT_EQ(outs.back().result.reply.integer, n);
    EXPECT_EQ(pending(*g), 0);
    EXPECT_EQ(durations(), uint64_t(n));
    EXPECT_EQ(bucket_total(m->command_duration), uint64_t(n));
    EXPECT_EQ(all_errors(), 0u);

    // An error reply to a command.
    std::vector<Outcome> more(4);
    issue(client, {"NOSUCHCOMMAND", "x"}, more[0]);
    ASSERT_TRUE(called(more[0], 5000));
    ASSERT_TRUE(more[0].result.ok());
    EXPECT_TRUE(more[0].result.reply.is_error());
    EXPECT_EQ(errors(RedisError::script), 1u);

    // An error reply to EVALSHA (the script is loaded first: SCRIPT LOAD is not a command).
    Script boom("return redis.error_reply('boom')");
    eval(client, boom, "x", more[1]);
    ASSERT_TRUE(called(more[1], 5000));
    ASSERT_TRUE(more[1].result.reply.is_error());
    EXPECT_EQ(errors(RedisError::script), 2u);

    // NOSCRIPT, reloaded transparently: one command, one duration, no error.
    Script echo("return ARGV[1]");
    eval(client, echo, "one", more[2]);
    ASSERT_TRUE(called(more[2], 5000));
    ASSERT_EQ(more[2].result.reply.str, "one");
    Control ctl(server.port());
    ASSERT_EQ(ctl.run({"SCRIPT", "FLUSH"}), "OK");
    eval(client, echo, "two", more[3]);
    ASSERT_TRUE(all_called(more, 5000));
    expect_once(more);
    ASSERT_TRUE(more[3].result.ok());
    EXPECT_EQ(more[3].result.reply.str, "two");
    EXPECT_EQ(client.stats().noscript_reloads, 1u);

    EXPECT_EQ(counter(m->commands), uint64_t(n + 4));
    EXPECT_EQ(durations(), uint64_t(n + 4));  // error replies are replies
    EXPECT_EQ(bucket_total(m->command_duration), uint64_t(n + 4));
    EXPECT_EQ(errors(RedisError::script), 2u);
    EXPECT_EQ(errors(RedisError::timeout), 0u);
    EXPECT_EQ(errors(RedisError::connection), 0u);
    EXPECT_EQ(errors(RedisError::protocol), 0u);
    EXPECT_EQ(pending(*g), 0);
    EXPECT_EQ(connected(*g), 1);
    EXPECT_EQ(breaker(*g), 0);
    EXPECT_EQ(counter(m->connects), 1u);
    EXPECT_EQ(counter(m->breaker_openings), 0u);

    client.close();
    EXPECT_EQ(connected(*g), 0);
    EXPECT_EQ(pending(*g), 0);
}

// Killed with commands in flight: they fail, pending drops to 0, connected to 0; restarted:
// one reconnect, connected 1 again.
TEST_F(RedisMetricsRealTest, ServerKilledThenRestarted) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    Config cfg = config(server);
    cfg.failure_threshold = 0;  // never open: keeps reconnecting
    cfg.backoff_initial_ms = 10;
    cfg.backoff_max_ms = 100;
    Client client(ev.loop(), cfg);
    client.set_metrics(m.get(), g.get());
    ASSERT_TRUE(eventually_ok(client, 5000));
    EXPECT_EQ(connected(*g), 1);
    EXPECT_EQ(counter(m->connects), 1u);

    server.pause();  // the commands reach the socket, no answer comes
    std::vector<Outcome> outs(5);
    for (Outcome& o : outs) {
        issue(client, {"GET", "x"}, o);
    }
    EXPECT_EQ(pending(*g), 5);
    server.kill9();
    ASSERT_TRUE(all_called(outs, 10000));
    expect_once(outs);
    for (const Outcome& o : outs) {
        EXPECT_FALSE(o.result.ok());
    }
    EXPECT_EQ(pending(*g), 0);
    EXPECT_EQ(connected(*g), 0);
    EXPECT_GE(errors(RedisError::connection), 1u);
    EXPECT_EQ(durations(), 1u);  // the PING of eventually_ok only

    // While it is down: commands fail without being sent (not counted), attempts fail.
    uint64_t commands_down = counter(m->commands);
    Outcome down;
    issue(client, {"GET", "x"}, down);
    ASSERT_TRUE(ev.run_until([&] { return down.calls > 0; }, 5000));
    EXPECT_FALSE(down.result.ok());
    EXPECT_EQ(pending(*g), 0);
    EXPECT_EQ(connected(*g), 0);

    ASSERT_TRUE(server.start());
    ASSERT_TRUE(eventually_ok(client, 10000));
    EXPECT_EQ(connected(*g), 1);
    EXPECT_EQ(counter(m->connects), 2u);
    EXPECT_EQ(counter(m->reconnects), 1u);
    EXPECT_EQ(pending(*g), 0);
    EXPECT_EQ(breaker(*g), 0);
    EXPECT_EQ(counter(m->breaker_openings), 0u);
    EXPECT_EQ(errors(RedisError::protocol), 0u);
    EXPECT_EQ(errors(RedisError::script), 0u);
    // Sent: 1 PING, 5 GETs, then the PINGs of eventually_ok that reached the server (the
    // failed ones before it came back were not sent, or were sent and failed).
    EXPECT_GE(counter(m->commands), commands_down + 1);
    EXPECT_EQ(durations(), 2u);  // one PING answered before, one after
    EXPECT_EQ(bucket_total(m->command_duration), 2u);
}

// Nothing listens: connection attempts fail until the circuit opens (breaker_open 1, one
// opening); commands then fail at once, not counted. The server comes: the probe connects,
// the circuit closes (breaker_open 0), and that first connection is a reconnect.
TEST_F(RedisMetricsRealTest, BreakerOpensOnRefusedConnectionsThenCloses) {
    RedisServer server;  // not started yet: its port refuses
    Config cfg = config(server);
    cfg.failure_threshold = 2;
    cfg.backoff_initial_ms = 10;
    cfg.cooldown_initial_ms = 300;
    cfg.cooldown_max_ms = 300;
    Client client(ev.loop(), cfg);
    client.set_metrics(m.get(), g.get());
    client.start();
    ASSERT_TRUE(ev.run_until([&] { return breaker(*g) == 1; }, 5000));
    EXPECT_TRUE(client.circuit_open());
    EXPECT_GE(counter(m->breaker_openings), 1u);
    EXPECT_EQ(counter(m->breaker_openings), client.stats().circuit_opens);
    EXPECT_GE(errors(RedisError::connection), 2u);
    EXPECT_EQ(counter(m->connects), 0u);
    EXPECT_EQ(connected(*g), 0);

    Outcome refused;
    issue(client, {"GET", "x"}, refused);
    ASSERT_TRUE(ev.run_until([&] { return refused.calls > 0; }, 5000));
    EXPECT_FALSE(refused.result.ok());
    EXPECT_TRUE(refused.result.unsent);
    EXPECT_EQ(counter(m->commands), 0u);
    EXPECT_EQ(pending(*g), 0);

    ASSERT_TRUE(server.start());
    ASSERT_TRUE(ev.run_until([&] { return connected(*g) == 1; }, 10000));
    EXPECT_EQ(breaker(*g), 0);  // the probe's PING closed it
    ASSERT_TRUE(eventually_ok(client, 5000));
    EXPECT_EQ(breaker(*g), 0);
    EXPECT_EQ(counter(m->connects), 1u);
    EXPECT_EQ(counter(m->reconnects), 1u);
    EXPECT_EQ(counter(m->breaker_openings), client.stats().circuit_opens);
    EXPECT_EQ(errors(RedisError::timeout), 0u);
    EXPECT_EQ(pending(*g), 0);
}

// Error replies to EVALSHA open the circuit on a live connection: it is dropped (connected 0,
// no connection error: script errors), breaker_open 1; the probe after the cool-down closes it.
TEST_F(RedisMetricsRealTest, BreakerOpensOnScriptErrors) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    Config cfg = config(server);
    cfg.failure_threshold = 3;
    cfg.cooldown_initial_ms = 300;
    cfg.cooldown_max_ms = 300;
    Client client(ev.loop(), cfg);
    client.set_metrics(m.get(), g.get());
    Script boom("return redis.error_reply('boom')");
    std::vector<Outcome> outs(3);
    for (Outcome& o : outs) {
        eval(client, boom, "x", o);
        ASSERT_TRUE(called(o, 5000));
        ASSERT_TRUE(o.result.reply.is_error());
    }
    // The third opened the circuit before its callback: the connection is gone.
    EXPECT_EQ(breaker(*g), 1);
    EXPECT_EQ(connected(*g), 0);
    expect_once(outs);
    EXPECT_EQ(errors(RedisError::script), 3u);
    EXPECT_EQ(counter(m->breaker_openings), 1u);
    EXPECT_EQ(errors(RedisError::connection), 0u);
    EXPECT_EQ(pending(*g), 0);
    EXPECT_EQ(durations(), 3u);

    ASSERT_TRUE(ev.run_until([&] { return connected(*g) == 1; }, 10000));  // the probe
    EXPECT_EQ(breaker(*g), 0);
    EXPECT_EQ(counter(m->connects), 2u);
    EXPECT_EQ(counter(m->reconnects), 1u);
    ASSERT_TRUE(eventually_ok(client, 5000));
    EXPECT_EQ(durations(), 4u);
    EXPECT_EQ(pending(*g), 0);
}

class RedisMetricsFakeTest : public RedisMetricsTest {
   protected:
    Config config(const FakeServer& server) {
        Config c;
        c.address = server.address();
        c.connect_timeout_ms = 2000;
        c.command_timeout_ms = 5000;
        c.backoff_initial_ms = 10;
        c.backoff_max_ms = 100;
        c.failure_threshold = 0;  // never open: reconnects after each failure
        return c;
    }
    // HANG gets no answer, SURPLUS a reply too many, GARBAGE a protocol error; the rest +OK.
    static FakeServer::Answer answer(const std::vector<std::string>& argv) {
        if (argv[0] == "HANG") {
            return {""};
        }
        if (argv[0] == "SURPLUS") {
            return {"+OK\r\n+OK\r\n"};
        }
        if (argv[0] == "GARBAGE") {
            return {"?what\r\n"};
        }
        return {"+OK\r\n"};
    }
};

// Commands that get no answer: each times out (timeout 3, pending back to 0 while their
// replies are still owed), then the connection is stuck and dropped (one connection error,
// connected 0), and made again (a reconnect, connected 1). No reply: no duration.
TEST_F(RedisMetricsFakeTest, TimeoutsThenStuckConnection) {
    FakeServer server(&answer);
    Config cfg = config(server);
    cfg.command_timeout_ms = 200;
    cfg.stuck_timeout_ms = 3000;
    Client client(ev.loop(), cfg);
    client.set_metrics(m.get(), g.get());
    client.start();
    ASSERT_TRUE(ev.run_until([&] { return connected(*g) == 1; }, 5000));

    std::vector<Outcome> outs(3);
    for (Outcome& o : outs) {
        issue(client, {"HANG"}, o);
    }
    EXPECT_EQ(pending(*g), 3);
    ASSERT_TRUE(all_called(outs, 10000));
    for (const Outcome& o : outs) {
        EXPECT_EQ(o.result.failure, Failure::Timeout);
    }
    EXPECT_EQ(pending(*g), 0);  // abandoned: their replies are still owed
    EXPECT_EQ(client.abandoned(), 3u);
    EXPECT_EQ(errors(RedisError::timeout), 3u);

    ASSERT_TRUE(ev.run_until([&] { return client.stats().stuck == 1; }, 10000));
    ASSERT_TRUE(ev.run_until([&] { return counter(m->reconnects) == 1; }, 10000));
    EXPECT_EQ(connected(*g), 1);
    EXPECT_EQ(counter(m->connects), 2u);
    EXPECT_EQ(errors(RedisError::connection), 1u);  // the stuck connection
    EXPECT_EQ(errors(RedisError::timeout), 3u);
    EXPECT_EQ(errors(RedisError::protocol), 0u);
    EXPECT_EQ(counter(m->commands), 3u);
    EXPECT_EQ(durations(), 0u);

    Outcome ok;
    issue(client, {"SET", "k", "v"}, ok);
    ASSERT_TRUE(ev.run_until([&] { return ok.calls > 0; }, 5000));
    ASSERT_TRUE(ok.result.ok());
    EXPECT_EQ(durations(), 1u);
    EXPECT_EQ(counter(m->commands), 4u);
    EXPECT_EQ(pending(*g), 0);
    expect_once(outs);
}

// command_duration is in microseconds on the Loop's clock, from send to reply: a reply the
// server holds back until the loop's clock moved 50 ms past the send is observed as at least
// 50000 (a lower bound: it cannot come sooner, however loaded the machine).
TEST_F(RedisMetricsFakeTest, DurationFromSendToReplyInMicroseconds) {
    std::atomic<bool> release{false};
    FakeServer server([&](const std::vector<std::string>& argv) {
        if (argv[0] == "SLOW") {
            wait_for([&] { return release.load(); }, 10000);
        }
        return FakeServer::Answer{"+OK\r\n"};
    });
    Client client(ev.loop(), config(server));
    client.set_metrics(m.get(), g.get());
    client.start();
    ASSERT_TRUE(ev.run_until([&] { return connected(*g) == 1; }, 5000));
    Outcome o;
    issue(client, {"SLOW"}, o);
    uint64_t sent = ev.loop().now_ms();  // not before the client's own send time
    EXPECT_EQ(pending(*g), 1);
    ev.run_until([&] { return ev.loop().now_ms() >= sent + 50; }, 5000);
    EXPECT_EQ(o.calls, 0);
    release = true;
    ASSERT_TRUE(called(o, 5000));
    ASSERT_TRUE(o.result.ok());
    EXPECT_EQ(durations(), 1u);
    EXPECT_GE(counter(m->command_duration.sum), 50000u);
    EXPECT_EQ(core::metrics::read(m->command_duration.buckets[0]), 0u);  // not <= 100 us
    EXPECT_EQ(bucket_total(m->command_duration), 1u);
    EXPECT_EQ(pending(*g), 0);
}

// Commands that wait for a connection whose permission check is never answered: they time out
// without being sent (timeout, not commands nor pending); the handshake's deadline then drops
// the connection (a connection error; it never counted as connected).
TEST_F(RedisMetricsFakeTest, WaitingCommandsTimeOutUnsent) {
    FakeServer server(&answer);
    server.set_handshake([](const std::vector<std::string>& argv) {
        if (argv[0] == "SCRIPT") {
            return FakeServer::Answer{"$40\r\n" + Script(argv[2]).sha() + "\r\n"};
        }
        if (argv[0] == "ROLE" || argv[0] == "INFO") {
            return FakeServer::as_primary(argv);
        }
        return FakeServer::Answer{""};  // PING: no answer
    });
    server.set_handler([](const std::vector<std::string>& argv) {
        return FakeServer::Answer{argv[0] == "EVALSHA" ? "" : "+OK\r\n"};  // the probe: none
    });
    Config cfg = config(server);
    cfg.command_timeout_ms = 200;
    Client client(ev.loop(), cfg);
    client.set_metrics(m.get(), g.get());
    client.require({Argv{"GET", "k"}});
    std::vector<Outcome> outs(2);
    for (Outcome& o : outs) {
        issue(client, {"GET", "k"}, o);
    }
    ASSERT_TRUE(all_called(outs, 10000));
    expect_once(outs);
    for (const Outcome& o : outs) {
        EXPECT_EQ(o.result.failure, Failure::Timeout);
        EXPECT_TRUE(o.result.unsent);
    }
    EXPECT_EQ(errors(RedisError::timeout), 2u);
    EXPECT_EQ(counter(m->commands), 0u);
    EXPECT_EQ(pending(*g), 0);
    ASSERT_TRUE(ev.run_until([&] { return errors(RedisError::connection) >= 1; }, 10000));
    EXPECT_EQ(counter(m->connects), 0u);
    EXPECT_EQ(connected(*g), 0);
    EXPECT_EQ(errors(RedisError::timeout), 2u);  // the handshake's own: a connection error
    EXPECT_EQ(errors(RedisError::protocol), 0u);
    EXPECT_EQ(durations(), 0u);
}

// Config::cluster_node_ok (issue 12, for ClusterClient): MOVED, ASK, TRYAGAIN and CLUSTERDOWN
// replies to command() and evalsha() are the caller's plain error replies: the connection is
// kept, the breaker (failure_threshold 1) counts nothing, no error is counted; a script's
// other error reply still counts for the breaker and errors{script}.
TEST_F(RedisMetricsFakeTest, ClusterRepliesAreNoFailureWithClusterNodeOk) {
    FakeServer server([](const std::vector<std::string>& argv) {
        const std::string& last = argv.back();
        if (last == "moved") {
            return FakeServer::Answer{"-MOVED 9 127.0.0.1:7000\r\n"};
        }
        if (last == "ask") {
            return FakeServer::Answer{"-ASK 9 127.0.0.1:7000\r\n"};
        }
        if (last == "tryagain") {
            return FakeServer::Answer{"-TRYAGAIN Multiple keys request during rehashing\r\n"};
        }
        if (last == "down") {
            return FakeServer::Answer{"-CLUSTERDOWN The cluster is down\r\n"};
        }
        if (last == "boom") {
            return FakeServer::Answer{"-ERR boom\r\n"};
        }
        return FakeServer::Answer{"+OK\r\n"};
    });
    Config cfg = config(server);
    cfg.cluster_node_ok = true;
    cfg.failure_threshold = 1;
    cfg.cooldown_initial_ms = 60000;
    cfg.cooldown_max_ms = 60000;
    Client client(ev.loop(), cfg);
    client.set_metrics(m.get(), g.get());
    Script s("return 1");
    std::vector<Outcome> outs(8);
    const char* answers[] = {"moved", "ask", "tryagain", "down"};
    for (size_t i = 0; i < 4; i++) {
        issue(client, {"GET", answers[i]}, outs[2 * i]);
        eval(client, s, answers[i], outs[2 * i + 1]);
    }
    ASSERT_TRUE(all_called(outs, 10000));
    expect_once(outs);
    for (size_t i = 0; i < outs.size(); i++) {
        ASSERT_TRUE(outs[i].result.ok()) << i;
        EXPECT_TRUE(outs[i].result.reply.is_error()) << i;
    }
    EXPECT_TRUE(outs[0].result.reply.is_error("MOVED"));
    EXPECT_TRUE(outs[7].result.reply.is_error("CLUSTERDOWN"));
    EXPECT_FALSE(client.circuit_open());
    EXPECT_TRUE(client.connected());
    EXPECT_EQ(client.stats().failures, 0u);
    EXPECT_EQ(all_errors(), 0u);
    EXPECT_EQ(counter(m->breaker_openings), 0u);
    EXPECT_EQ(counter(m->commands), 8u);
    EXPECT_EQ(durations(), 8u);
    EXPECT_EQ(counter(m->connects), 1u);
    EXPECT_EQ(pending(*g), 0);

    // A script's own error: a failure (threshold 1: the circuit opens), errors{script}.
    Outcome boom;
    eval(client, s, "boom", boom);
    ASSERT_TRUE(called(boom, 5000));
    ASSERT_TRUE(boom.result.ok());
    EXPECT_TRUE(boom.result.reply.is_error("ERR"));
    EXPECT_TRUE(client.circuit_open());
    EXPECT_EQ(errors(RedisError::script), 1u);
    EXPECT_EQ(counter(m->breaker_openings), 1u);
}

// SendOptions: an explicit deadline is the command's (a command with an earlier one times out
// while one issued before it, with the default, still waits; one already past fails unsent);
// internal commands are counted nowhere in the metrics; a resend is not counted in commands
// again but is pending and observed like any.
TEST_F(RedisMetricsFakeTest, SendOptionsDeadlineInternalResend) {
    std::atomic<bool> release{false};
    FakeServer server([&](const std::vector<std::string>& argv) {
        if (argv[0] == "SLOW") {
            wait_for([&] { return release.load(); }, 10000);
        }
        return FakeServer::Answer{"+OK\r\n"};
    });
    Config cfg = config(server);
    cfg.command_timeout_ms = 60000;
    cfg.stuck_timeout_ms = 120000;
    Client client(ev.loop(), cfg);
    client.set_metrics(m.get(), g.get());
    client.start();
    ASSERT_TRUE(ev.run_until([&] { return connected(*g) == 1; }, 5000));

    Outcome long_wait, short_wait, past;
    issue(client, {"SLOW"}, long_wait);
    SendOptions soon;
    soon.deadline = ev.loop().now_ms() + 100;
    SendOptions gone;
    gone.deadline = std::max<uint64_t>(ev.loop().now_ms(), 1);
    inside_call() = true;
    client.command({"SLOW"}, track(short_wait), soon);
    client.command({"SET", "k", "v"}, track(past), gone);
    inside_call() = false;
    ASSERT_TRUE(called(short_wait, 10000));
    ASSERT_TRUE(called(past, 10000));
    EXPECT_EQ(short_wait.result.failure, Failure::Timeout);
    EXPECT_FALSE(short_wait.result.unsent);
    EXPECT_EQ(past.result.failure, Failure::Timeout);
    EXPECT_TRUE(past.result.unsent);
    EXPECT_FALSE(short_wait.synchronous);
    EXPECT_FALSE(past.synchronous);
    EXPECT_EQ(long_wait.calls, 0);  // its own deadline is the default, far away
    EXPECT_EQ(client.pending(), 1u);
    EXPECT_EQ(errors(RedisError::timeout), 2u);
    EXPECT_EQ(counter(m->commands), 2u);  // the two SLOWs; the SET never left
    release = true;
    ASSERT_TRUE(called(long_wait, 10000));
    ASSERT_TRUE(long_wait.result.ok());
    ASSERT_TRUE(ev.run_until([&] { return client.stats().late_replies == 1; }, 10000));
    EXPECT_EQ(server.received("SET"), 0);
    EXPECT_EQ(durations(), 1u);
    EXPECT_EQ(pending(*g), 0);

    // Internal: answered, counted nowhere.
    Outcome internal_ok;
    SendOptions internal;
    internal.internal = true;
    inside_call() = true;
    client.command({"SET", "i", "1"}, track(internal_ok), internal);
    inside_call() = false;
    EXPECT_EQ(pending(*g), 0);
    ASSERT_TRUE(called(internal_ok, 5000));
    ASSERT_TRUE(internal_ok.result.ok());
    EXPECT_EQ(counter(m->commands), 2u);
    EXPECT_EQ(durations(), 1u);

    // Resend: not counted in commands again; pending while in flight, observed.
    Outcome resent;
    SendOptions again;
    again.resend = true;
    inside_call() = true;
    client.command({"SET", "r", "1"}, track(resent), again);
    inside_call() = false;
    EXPECT_EQ(pending(*g), 1);
    ASSERT_TRUE(called(resent, 5000));
    ASSERT_TRUE(resent.result.ok());
    EXPECT_EQ(counter(m->commands), 2u);
    EXPECT_EQ(durations(), 2u);
    EXPECT_EQ(pending(*g), 0);
    EXPECT_EQ(errors(RedisError::timeout), 2u);
    expect_once({long_wait, short_wait, past, internal_ok, resent});
}

// An explicit deadline holds while the command waits for a connection: the handshake's
// permission check is never answered; the command with an early deadline times out unsent while the
// one issued before it (default deadline) still waits; close() then fails that one with Shutdown.
TEST_F(RedisMetricsFakeTest, SendOptionsDeadlineWhileConnecting) {
    FakeServer server(&answer);
    server.set_handshake([](const std::vector<std::string>& argv) {
        if (argv[0] == "SCRIPT") {
            return FakeServer::Answer{"$40\r\n" + Script(argv[2]).sha() + "\r\n"};
        }
        if (argv[0] == "ROLE" || argv[0] == "INFO") {
            return FakeServer::as_primary(argv);
        }
        return FakeServer::Answer{""};  // PING: no answer
    });
    server.set_handler([](const std::vector<std::string>& argv) {
        return FakeServer::Answer{argv[0] == "EVALSHA" ? "" : "+OK\r\n"};  // the probe: none
    });
    Config cfg = config(server);
    cfg.command_timeout_ms = 60000;
    Client client(ev.loop(), cfg);
    client.set_metrics(m.get(), g.get());
    client.require({Argv{"GET", "k"}});
    Outcome waits, early;
    issue(client, {"GET", "a"}, waits);
    SendOptions soon;
    soon.deadline = ev.loop().now_ms() + 100;
    inside_call() = true;
    client.command({"GET", "b"}, track(early), soon);
    inside_call() = false;
    EXPECT_EQ(client.pending(), 2u);
    ASSERT_TRUE(called(early, 10000));
    EXPECT_EQ(early.result.failure, Failure::Timeout);
    EXPECT_TRUE(early.result.unsent);
    EXPECT_EQ(waits.calls, 0);
    EXPECT_EQ(client.pending(), 1u);
    EXPECT_EQ(errors(RedisError::timeout), 1u);
    EXPECT_EQ(counter(m->commands), 0u);
    EXPECT_EQ(server.received("GET"), 0);
    client.close();
    ASSERT_TRUE(called(waits, 5000));
    EXPECT_EQ(waits.result.failure, Failure::Shutdown);
    expect_once({waits, early});
    EXPECT_EQ(pending(*g), 0);
}

// A reply nobody asked for, garbage, an unusable reply: protocol errors, not connection ones;
// the connection is made again each time.
TEST_F(RedisMetricsFakeTest, ProtocolViolations) {
    FakeServer server(&answer);
    Client client(ev.loop(), config(server));
    client.set_metrics(m.get(), g.get());
    std::vector<Outcome> outs(4);

    issue(client, {"SURPLUS"}, outs[0]);
    ASSERT_TRUE(ev.run_until([&] { return outs[0].calls > 0; }, 5000));
    ASSERT_TRUE(ev.run_until([&] { return errors(RedisError::protocol) == 1; }, 5000));
    EXPECT_EQ(pending(*g), 0);
    ASSERT_TRUE(ev.run_until([&] { return connected(*g) == 1; }, 5000));
    EXPECT_EQ(counter(m->reconnects), 1u);

    issue(client, {"GARBAGE"}, outs[1]);
    ASSERT_TRUE(ev.run_until([&] { return outs[1].calls > 0; }, 5000));
    EXPECT_EQ(outs[1].result.failure, Failure::Disconnected);
    EXPECT_EQ(errors(RedisError::protocol), 2u);
    EXPECT_EQ(pending(*g), 0);

    ASSERT_TRUE(ev.run_until([&] { return connected(*g) == 1; }, 5000));
    issue(client, {"SET", "k", "v"}, outs[2]);
    ASSERT_TRUE(ev.run_until([&] { return outs[2].calls > 0; }, 5000));
    ASSERT_TRUE(outs[2].result.ok());
    client.reply_unusable(outs[2].result, "not what the caller wanted");
    EXPECT_EQ(errors(RedisError::protocol), 3u);
    client.reply_unusable(outs[1].result, "a failure: counted already");
    EXPECT_EQ(errors(RedisError::protocol), 3u);

    issue(client, {"SET", "k", "v"}, outs[3]);
    ASSERT_TRUE(all_called(outs, 5000));
    expect_once(outs);
    EXPECT_EQ(errors(RedisError::connection), 0u);
    EXPECT_EQ(errors(RedisError::timeout), 0u);
    EXPECT_EQ(errors(RedisError::script), 0u);
    EXPECT_EQ(counter(m->commands), 4u);
    EXPECT_EQ(durations(), uint64_t(replies(outs)));
    EXPECT_EQ(counter(m->connects), 3u);
    EXPECT_EQ(counter(m->reconnects), 2u);
    EXPECT_EQ(connected(*g), 1);
    EXPECT_EQ(pending(*g), 0);
}

// A handshake answered with the wrong reply is a protocol error, and no connection; once the
// server answers PING, the connection counts (a reconnect: attempts failed before it).
TEST_F(RedisMetricsFakeTest, HandshakeOfTheWrongShape) {
    FakeServer server(&answer);
    server.set_handshake(
        [](const std::vector<std::string>&) { return FakeServer::Answer{"+NO\r\n"}; });
    Client client(ev.loop(), config(server));
    client.set_metrics(m.get(), g.get());
    client.start();
    ASSERT_TRUE(ev.run_until([&] { return errors(RedisError::protocol) >= 2; }, 5000));
    EXPECT_EQ(counter(m->connects), 0u);
    EXPECT_EQ(connected(*g), 0);
    EXPECT_EQ(errors(RedisError::connection), 0u);
    EXPECT_EQ(counter(m->commands), 0u);

    server.set_handshake(nullptr);
    ASSERT_TRUE(ev.run_until([&] { return connected(*g) == 1; }, 5000));
    EXPECT_EQ(counter(m->connects), 1u);
    EXPECT_EQ(counter(m->reconnects), 1u);
    EXPECT_EQ(pending(*g), 0);
}

// Without metrics nothing is counted; set_metrics() moves this client's part of the gauges;
// close() and the destructor leave 0. (HANG gets no reply: nothing else is sent behind it,
// whose reply would be taken for HANG's.)
TEST_F(RedisMetricsFakeTest, GaugesMoveWithSetMetricsAndEndAtZero) {
    FakeServer server(&answer);
    {
        // Without set_metrics(): nothing is counted.
        Client client(ev.loop(), config(server));
        Outcome o;
        issue(client, {"SET", "k", "v"}, o);
        ASSERT_TRUE(called(o, 5000));
        ASSERT_TRUE(o.result.ok());
    }
    EXPECT_EQ(counter(m->commands), 0u);
    EXPECT_EQ(counter(m->connects), 0u);
    EXPECT_EQ(durations(), 0u);

    auto other = std::make_unique<WorkerGauge>();
    std::vector<Outcome> outs(4);
    {
        Client client(ev.loop(), config(server));
        client.set_metrics(m.get(), g.get());
        client.start();
        ASSERT_TRUE(ev.run_until([&] { return connected(*g) == 1; }, 5000));
        for (Outcome& o : outs) {
            issue(client, {"HANG"}, o);
        }
        EXPECT_EQ(pending(*g), 4);

        client.set_metrics(m.get(), other.get());
        EXPECT_EQ(pending(*g), 0);
        EXPECT_EQ(connected(*g), 0);
        EXPECT_EQ(pending(*other), 4);
        EXPECT_EQ(connected(*other), 1);

        client.set_metrics(nullptr, nullptr);
        EXPECT_EQ(pending(*other), 0);
        EXPECT_EQ(connected(*other), 0);

        client.set_metrics(m.get(), g.get());
        EXPECT_EQ(pending(*g), 4);
        EXPECT_EQ(connected(*g), 1);
        client.close();
        EXPECT_EQ(pending(*g), 0);
        EXPECT_EQ(connected(*g), 0);
        ASSERT_TRUE(all_called(outs, 5000));
        for (const Outcome& o : outs) {
            EXPECT_EQ(o.result.failure, Failure::Shutdown);
        }
    }

    // Destroyed with commands in flight.
    std::vector<Outcome> more(3);
    {
        Client client(ev.loop(), config(server));
        client.set_metrics(m.get(), g.get());
        client.start();
        ASSERT_TRUE(ev.run_until([&] { return connected(*g) == 1; }, 5000));
        for (Outcome& o : more) {
            issue(client, {"HANG"}, o);
        }
        EXPECT_EQ(pending(*g), 3);
    }
    EXPECT_EQ(pending(*g), 0);
    EXPECT_EQ(connected(*g), 0);
    EXPECT_EQ(breaker(*g), 0);
    for (const Outcome& o : more) {
        EXPECT_EQ(o.calls, 1);
        EXPECT_EQ(o.result.failure, Failure::Shutdown);
    }
    EXPECT_EQ(counter(m->commands), 7u);
    EXPECT_EQ(all_errors(), 0u);
}

}  // namespace
}  // namespace throttle::redis::test
