// Sentinel discovery (issue 12): with Config::sentinels the client asks them, in order, SENTINEL
// get-master-addr-by-name before each connect and connects to the first valid answer. Real
// redis-server processes: a primary and a Sentinel (redis-server CONF --sentinel).
#include <gtest/gtest.h>

#include <cstdio>

#include "redis/sentinel_watch.hpp"
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

    // Runs the loop until `ctl` answers `argv` with `want`, asked every 100 ms (true), or
    // `timeout_ms` passes (false).
    bool run_until_answer(Control& ctl, const std::vector<std::string>& argv,
                          const std::string& want, uint64_t timeout_ms,
                          std::string* last = nullptr) {
        uint64_t next = 0;
        std::string got;
        bool ok = ev.run_until(
            [&] {
                if (mono_ms() < next) {
                    return false;
                }
                next = mono_ms() + 100;
                got = ctl.run(argv);
                return got == want;
            },
            timeout_ms);
        if (last != nullptr) {
            *last = got;
        }
        return ok;
    }

    static std::vector<std::string> sentinel_lines() {
        return {"sentinel down-after-milliseconds mymaster 1000",
                "sentinel failover-timeout mymaster 5000"};
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

// +switch-master payloads: five fields, two valid numeric addresses; anything else is refused.
TEST(SentinelSwitchMaster, Parse) {
    std::string name;
    Address from, to;
    ASSERT_TRUE(parse_switch_master("mymaster 127.0.0.1 6379 10.0.0.2 6380", name, from, to));
    EXPECT_EQ(name, "mymaster");
    EXPECT_EQ(from.to_string(), "127.0.0.1:6379");
    EXPECT_EQ(to.to_string(), "10.0.0.2:6380");
    ASSERT_TRUE(parse_switch_master("m ::1 1 ::2 2", name, from, to));
    EXPECT_EQ(to.to_string(), "[::2]:2");
    for (const char* bad :
         {"", "mymaster", "mymaster 127.0.0.1 6379 10.0.0.2", "mymaster 127.0.0.1 6379 10.0.0.2 x",
          "mymaster 127.0.0.1 6379 10.0.0.2 0", "mymaster 127.0.0.1 6379 10.0.0.2 65536",
          "mymaster 127.0.0.1 6379 host 6380", "mymaster 127.0.0.1 6379 10.0.0.2 6380 extra",
          "mymaster  127.0.0.1 6379 10.0.0.2 6380", "mymaster 127.0.0.1 6379 10.0.0.2 6380 "}) {
        EXPECT_FALSE(parse_switch_master(bad, name, from, to)) << bad;
    }
}

// SENTINEL FAILOVER: the +switch-master message moves the client to the new primary at once,
// before the old one, demoted later by the Sentinel, answers a write with READONLY. One write
// (and a CONFIG GET port saying who answered) at a time, from the failover on; the time from
// the failover command to the first command the new primary answers is printed, not asserted.
TEST_F(RedisSentinelTest, SwitchMasterMovesTheClientBeforeTheOldPrimaryFails) {
    RedisServer primary;
    ASSERT_TRUE(primary.start());
    RedisServer replica({"--replicaof", "127.0.0.1", std::to_string(primary.port())});
    ASSERT_TRUE(replica.start());
    RedisServer sentinel;
    sentinel.make_sentinel(primary.port(), "mymaster", sentinel_lines());
    ASSERT_TRUE(sentinel.start());

    Config cfg = config({sentinel.address()});
    Client client(ev.loop(), cfg, logger());
    std::vector<std::string> named;
    SentinelWatch watch(
        ev.loop(), cfg,
        [&](const Address& a, std::string_view why) {
            named.push_back(a.to_string());
            client.reconnect_to(a, why);
        },
        logger());
    watch.start();
    Outcome first = call(client, {"SET", "k", "v"});
    ASSERT_TRUE(first.result.ok()) << all_logs();
    ASSERT_TRUE(ev.run_until([&] { return watch.subscribed() && watch.primary().valid(); }, 10000))
        << all_logs();
    EXPECT_EQ(watch.primary().port, primary.port());
    EXPECT_EQ(client.config().address.port, primary.port());

    // The Sentinel answers NOGOODSLAVE until it has seen the replica in sync: poll.
    Control rctl(replica.port());
    ASSERT_TRUE(run_until_answer(rctl, {"GET", "k"}, "v", 20000));
    Control sctl(sentinel.port());
    std::string answer;
    ASSERT_TRUE(run_until_answer(sctl, {"SENTINEL", "FAILOVER", "mymaster"}, "OK", 30000, &answer))
        << answer;
    uint64_t t0 = mono_ms();

    std::string new_port = std::to_string(replica.port());
    int errors = 0, failed = 0, pairs = 0;
    uint64_t first_new_ms = 0;
    std::string error_text;
    while (first_new_ms == 0 && mono_ms() - t0 < 30000) {
        Outcome write, who;
        issue(client, {"INCR", "writes"}, write);
        issue(client, {"CONFIG", "GET", "port"}, who);
        ASSERT_TRUE(ev.run_until([&] { return write.calls > 0 && who.calls > 0; }, 5000));
        pairs++;
        if (!write.result.ok()) {
            failed++;  // in flight when the connection to the old primary was dropped
        } else if (write.result.reply.is_error()) {
            errors++;
            error_text = write.result.reply.str;
        }
        const Reply& r = who.result.reply;
        if (who.result.ok() && r.type == Reply::Type::Array && r.elements.size() == 2 &&
            r.elements[1].str == new_port && write.result.ok() && !write.result.reply.is_error()) {
            first_new_ms = write.at_ms;
        }
        ev.run_for(2);
    }
    ASSERT_GT(first_new_ms, 0u) << all_logs();
    std::printf(
        "[ measured ] SENTINEL FAILOVER -> first write answered by the new primary: %llu ms "
        "(%d writes, %d failed in flight at the switch)\n",
        (unsigned long long)(first_new_ms - t0), pairs, failed);
    EXPECT_EQ(errors, 0) << "a write was refused (" << error_text << ")\n" << all_logs();
    EXPECT_LE(failed, 1) << all_logs();
    EXPECT_GE(watch.switches(), 1u);
    EXPECT_EQ(
        logged(LogLevel::Info, "watch \"mymaster\": master mymaster moved from 127.0.0.1:" +
                                   std::to_string(primary.port()) + " to 127.0.0.1:" + new_port),
        1)
        << all_logs();
    EXPECT_EQ(client.stats().failures, 0u) << all_logs();  // a move, not a failure
    EXPECT_EQ(client.config().address.port, replica.port());
    EXPECT_EQ(logged(LogLevel::Error), 0) << all_logs();
}

// Two Sentinels with a password (sentinel_password): the first one killed, the watch moves to
// the second (one error line for the incident, one line when it watches again), and a failover
// it announces is followed.
TEST_F(RedisSentinelTest, WatchSurvivesASentinelKilled) {
    RedisServer primary;
    ASSERT_TRUE(primary.start());
    RedisServer replica({"--replicaof", "127.0.0.1", std::to_string(primary.port())});
    ASSERT_TRUE(replica.start());
    std::vector<std::string> lines = sentinel_lines();
    lines.push_back("requirepass sentinel-secret");
    RedisServer s1, s2;
    for (RedisServer* s : {&s1, &s2}) {
        s->make_sentinel(primary.port(), "mymaster", lines);
        s->set_password("sentinel-secret");
        ASSERT_TRUE(s->start());
    }
    Config cfg = config({s1.address(), s2.address()});
    cfg.sentinel_password = "sentinel-secret";
    std::vector<std::string> named;
    SentinelWatch watch(
        ev.loop(), cfg, [&](const Address& a, std::string_view) { named.push_back(a.to_string()); },
        logger());
    watch.start();
    ASSERT_TRUE(ev.run_until([&] { return watch.subscribed() && watch.primary().valid(); }, 10000))
        << all_logs();
    EXPECT_EQ(watch.sentinel().port, s1.port());
    EXPECT_EQ(watch.primary().port, primary.port());

    s1.kill9();
    ASSERT_TRUE(ev.run_until(
        [&] { return watch.subscribed() && watch.sentinel().port == s2.port(); }, 10000))
        << all_logs();
    EXPECT_EQ(logged(LogLevel::Error), 1) << all_logs();
    EXPECT_EQ(logged(LogLevel::Info, "watching Sentinel " + s2.address().to_string() + " again"), 1)
        << all_logs();

    Control sctl(s2.port(), "sentinel-secret");
    std::string answer;
    ASSERT_TRUE(run_until_answer(sctl, {"SENTINEL", "FAILOVER", "mymaster"}, "OK", 30000, &answer))
        << answer;
    ASSERT_TRUE(ev.run_until([&] { return watch.primary().port == replica.port(); }, 30000))
        << all_logs();
    EXPECT_GE(watch.switches(), 1u);
    ASSERT_EQ(named.size(), 2u);
    EXPECT_EQ(named[1], replica.address().to_string());
}

// A wrong Sentinel password: no subscription, one error line for the incident (however many
// rounds), nothing reported.
TEST_F(RedisSentinelTest, WatchWithAWrongPassword) {
    RedisServer primary;
    ASSERT_TRUE(primary.start());
    RedisServer s;
    s.make_sentinel(primary.port(), "mymaster", {"requirepass sentinel-secret"});
    s.set_password("sentinel-secret");
    ASSERT_TRUE(s.start());
    Config cfg = config({s.address(), dead()});
    cfg.sentinel_password = "wrong";
    int reports = 0;
    SentinelWatch watch(
        ev.loop(), cfg, [&](const Address&, std::string_view) { reports++; }, logger());
    watch.start();
    ev.run_for(500);
    EXPECT_FALSE(watch.subscribed());
    EXPECT_EQ(reports, 0);
    EXPECT_EQ(logged(LogLevel::Error), 1) << all_logs();
    EXPECT_GE(logged(LogLevel::Debug, "cannot connect"), 1) << all_logs();  // the dead one, tried
}

// reconnect_to() on an idle client only remembers the address: the next command goes there
// without asking a Sentinel (the only one is dead).
TEST_F(RedisSentinelTest, ReconnectToAnIdleClientRemembersTheAddress) {
    RedisServer primary;
    ASSERT_TRUE(primary.start());
    Client client(ev.loop(), config({dead()}), logger());
    EXPECT_FALSE(client.reconnect_to(primary.address(), "test"));
    EXPECT_FALSE(client.connected());
    Outcome o = call(client, {"SET", "idle-key", "v"});
    ASSERT_TRUE(o.result.ok()) << to_string(o.result.failure) << "\n" << all_logs();
    Control ctl(primary.port());
    EXPECT_EQ(ctl.run({"GET", "idle-key"}), "v");
    EXPECT_EQ(logged(LogLevel::Error), 0) << all_logs();
    // Without Sentinels, or with an invalid address: ignored.
    Config plain;
    plain.address = primary.address();
    Client single(ev.loop(), plain, logger());
    EXPECT_FALSE(single.reconnect_to(dead(), "test"));
    EXPECT_EQ(single.config().address.port, primary.port());
    EXPECT_FALSE(client.reconnect_to(Address(), "test"));
}

// The circuit open (no Sentinel answered; a cool-down of a minute): reconnect_to() probes the
// announced primary at once, and commands reach it long before the cool-down would have ended.
TEST_F(RedisSentinelTest, ReconnectToProbesAnOpenCircuitAtOnce) {
    RedisServer primary;
    ASSERT_TRUE(primary.start());
    Config cfg = config({dead()});
    cfg.cooldown_initial_ms = 60000;
    cfg.cooldown_max_ms = 60000;
    Client client(ev.loop(), cfg, logger());
    ASSERT_TRUE(ev.run_until(
        [&] {
            Outcome o;
            issue(client, {"GET", "k"}, o);
            ev.run_until([&] { return o.calls > 0; }, 5000);
            return client.circuit_open();
        },
        10000))
        << all_logs();
    uint64_t failures = client.stats().failures;
    EXPECT_TRUE(client.reconnect_to(primary.address(), "a test moved it"));
    EXPECT_EQ(logged(LogLevel::Info,
                     "reconnecting to " + primary.address().to_string() + " now: a test moved it"),
              1)
        << all_logs();
    ASSERT_TRUE(ev.run_until([&] { return client.connected() && !client.circuit_open(); }, 5000))
        << all_logs();
    Outcome o = call(client, {"PING"});
    EXPECT_TRUE(o.result.ok()) << to_string(o.result.failure) << "\n" << all_logs();
    EXPECT_EQ(client.stats().failures, failures);  // the move is no failure
}

}  // namespace
}  // namespace throttle::redis::test
