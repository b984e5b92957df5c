// Sentinel discovery (issue 12): with Config::sentinels the client asks them, in order, SENTINEL
// get-master-addr-by-name before each connect and connects to the first valid answer. Real
// redis-server processes: a primary and a Sentinel (redis-server CONF --sentinel).
#include <gtest/gtest.h>

#include "support.hpp"

namespace throttle::redis::test {
namespace {

class RedisSentinelTest : public ::testing::Test, public LogCapture {
   protected:
    void SetUp() override {
        if (!have_redis_server()) {
            GTEST_SKIP() << "redis-server not found (set THROTTLE_REDIS_SERVER)";
        }
    }

    Config config(std::vector<Address> sentinels, const std::string& name = "mymaster") {
        Config c;
        c.sentinels = std::move(sentinels);
        c.sentinel_master = name;
        c.connect_timeout_ms = 1000;
        c.command_timeout_ms = 2000;
        c.backoff_initial_ms = 10;
        c.backoff_max_ms = 100;
        c.failure_threshold = 3;
        c.cooldown_initial_ms = 200;
        c.cooldown_max_ms = 400;
        return c;
    }
    static Address dead() {
        Address a;
        a.host = "127.0.0.1";
        a.port = free_port();  // nothing listens there
        return a;
    }

    Outcome call(Client& c, std::initializer_list<std::string_view> argv) {
        return test::call(ev, c, argv);
    }

    EventLoop ev;
};

// A dead Sentinel first, a live one second: the command reaches the primary it names.
TEST_F(RedisSentinelTest, ConnectsToThePrimaryASentinelNames) {
    RedisServer primary;
    ASSERT_TRUE(primary.start());
    RedisServer sentinel;
    sentinel.make_sentinel(primary.port());
    ASSERT_TRUE(sentinel.start());
    Client client(ev.loop(), config({dead(), sentinel.address()}), logger());
    Outcome o = call(client, {"SET", "sentinel-key", "v"});
    ASSERT_TRUE(o.result.ok()) << to_string(o.result.failure) << "\n" << all_logs();
    EXPECT_FALSE(o.result.reply.is_error()) << o.result.reply.str;
    EXPECT_FALSE(o.synchronous);
    Control ctl(primary.port());
    EXPECT_EQ(ctl.run({"GET", "sentinel-key"}), "v");
    EXPECT_EQ(client.config().address.port, primary.port());
    EXPECT_EQ(logged(LogLevel::Error), 0) << all_logs();
}

// No Sentinel answers: the commands fail, the attempt counts for the breaker, and the error
// log says so once per incident, naming each Sentinel's failure.
TEST_F(RedisSentinelTest, NoSentinelFailsTheConnectionLoggedOnce) {
    Address a = dead();
    Client client(ev.loop(), config({a}), logger());
    for (int i = 0; i < 8; i++) {
        Outcome o = call(client, {"GET", "k"});
        EXPECT_FALSE(o.result.ok());
        EXPECT_EQ(o.calls, 1);
        ev.run_for(20);
    }
    EXPECT_GT(client.stats().failures, 0u);
    EXPECT_EQ(logged(LogLevel::Error,
                     "no Sentinel named the primary of \"mymaster\" (" + a.to_string() + ": "),
              1)
        << all_logs();
    EXPECT_LE(logged(LogLevel::Error), 2) << all_logs();  // and the circuit opening
}

// A Sentinel that does not know the name answers nil: a failure that says so.
TEST_F(RedisSentinelTest, UnknownMasterName) {
    RedisServer primary;
    ASSERT_TRUE(primary.start());
    RedisServer sentinel;
    sentinel.make_sentinel(primary.port());
    ASSERT_TRUE(sentinel.start());
    Client client(ev.loop(), config({sentinel.address()}, "other"), logger());
    Outcome o = call(client, {"GET", "k"});
    EXPECT_FALSE(o.result.ok());
    EXPECT_EQ(logged(LogLevel::Error, "no master named \"other\""), 1) << all_logs();
}

// disconnect_idle() while a Sentinel is asked for nobody: dropped; the next command asks again.
TEST_F(RedisSentinelTest, DisconnectIdleWhileAsking) {
    RedisServer primary;
    ASSERT_TRUE(primary.start());
    RedisServer sentinel;
    sentinel.make_sentinel(primary.port());
    ASSERT_TRUE(sentinel.start());
    Control ctl(sentinel.port());
    Client client(ev.loop(), config({sentinel.address()}), logger());
    client.start();
    EXPECT_TRUE(client.disconnect_idle());
    EXPECT_FALSE(client.connected());
    ev.run_for(50);
    EXPECT_FALSE(client.connected());
    Outcome o = call(client, {"PING"});
    EXPECT_TRUE(o.result.ok()) << to_string(o.result.failure) << "\n" << all_logs();
    EXPECT_EQ(logged(LogLevel::Error), 0) << all_logs();
}

// Destroyed while a Sentinel is being asked: every callback is called once, no crash.
TEST_F(RedisSentinelTest, DestroyedWhileAsking) {
    RedisServer primary;
    ASSERT_TRUE(primary.start());
    RedisServer sentinel;
    sentinel.make_sentinel(primary.port());
    ASSERT_TRUE(sentinel.start());
    Outcome o;
    {
        Client client(ev.loop(), config({sentinel.address()}), logger());
        issue(client, {"GET", "k"}, o);
    }
    EXPECT_EQ(o.calls, 1);
    EXPECT_EQ(o.result.failure, Failure::Shutdown);
    ev.run_for(50);
    EXPECT_EQ(o.calls, 1);
}

}  // namespace
}  // namespace throttle::redis::test
