// mode=lease scripts (src/redis/lease_scripts.hpp) in a real redis-server: a lease grants at
// most 1/8 of what the window still admits (at least 1), never more than want, and the units
// granted over successive calls add up to exactly what strict would admit one by one (a
// cross-check against core::evaluate() over random states and clocks); a refusal answers
// strict's retry time and writes nothing; the window gets its expiry when the call creates it.
// RETURN takes units off (never below 0) and never creates a window.
#include "redis/lease_scripts.hpp"

#include <gtest/gtest.h>

#include <random>

#include "core/limiter.hpp"
#include "core/sliding_window.hpp"
#include "support.hpp"

namespace throttle::redis::test {
namespace {

constexpr int64_t day_ms = 86400000;
constexpr int64_t t0 = 1700006400000;  // a whole day (UTC midnight)

class RedisLeaseScriptsTest : public ::testing::Test {
   protected:
    void SetUp() override {
        if (!have_redis_server()) {
            GTEST_SKIP() << "redis-server not found (set THROTTLE_REDIS_SERVER)";
        }
        server = std::make_unique<RedisServer>(std::vector<std::string>{}, 0);
        ASSERT_TRUE(server->start());
        ctl = std::make_unique<Control>(server->port());
        ASSERT_TRUE(ctl->ok());
        Config c;
        c.address = server->address();
        c.command_timeout_ms = 5000;
        client = std::make_unique<Client>(ev.loop(), c);
    }

    Reply eval(const Script& s, const EvalArgs& a) {
        Outcome o;
        inside_call() = true;
        client->evalsha(s, a.keys(), a.args(), track(o));
        inside_call() = false;
        EXPECT_TRUE(ev.run_until([&] { return o.calls > 0; }, 30000));
        EXPECT_FALSE(o.synchronous);
        EXPECT_TRUE(o.result.ok());
        return std::move(o.result.reply);
    }

    std::vector<LeaseGrant> leases(const std::vector<LeaseAsk>& asks, int64_t now) {
        EvalArgs a;
        EXPECT_TRUE(build_lease_args(asks.data(), asks.size(), now, a));
        Reply r = eval(lease_script(), a);
        std::vector<LeaseGrant> g;
        EXPECT_TRUE(parse_lease_reply(r, asks.size(), g)) << to_string(r.type) << " " << r.str;
        return g;
    }

    LeaseGrant lease(const std::string& base, uint64_t L, int64_t P, uint64_t want, int64_t now) {
        std::vector<LeaseGrant> g = leases({LeaseAsk{base, L, P, want, ""}}, now);
        return g.empty() ? LeaseGrant{} : g[0];
    }

    uint64_t give_back(const std::string& base, int64_t window, uint64_t units) {
        EvalArgs a;
        EXPECT_TRUE(build_lease_return_args(base, window, units, a));
        Reply r = eval(lease_return_script(), a);
        uint64_t n = 0;
        EXPECT_TRUE(parse_lease_return_reply(r, n)) << to_string(r.type) << " " << r.str;
        return n;
    }

    std::string key(const std::string& base, int64_t w) { return base + ":" + std::to_string(w); }

    EventLoop ev;
    std::unique_ptr<RedisServer> server;
    std::unique_ptr<Control> ctl;
    std::unique_ptr<Client> client;
};

TEST(RedisLeaseScriptsUnit, ArgumentsAndReplies) {
    EvalArgs a;
    LeaseAsk asks[] = {{"b", 10, 1000, 0, ""}, {"c", 5, 60000, 7, ""}};
    ASSERT_TRUE(build_lease_args(asks, 2, -1, a));
    ASSERT_EQ(a.keys().size(), 2u);
    ASSERT_EQ(a.args().size(), 9u);
    EXPECT_EQ(std::string(a.args()[0]), "");   // Redis' clock
    EXPECT_EQ(std::string(a.args()[3]), "1");  // want 0 is sent as 1
    EXPECT_EQ(std::string(a.args()[4]), "");   // no host id
    EXPECT_EQ(std::string(a.args()[7]), "7");
    EXPECT_FALSE(build_lease_args(asks, 0, -1, a));
    Reply r;
    r.type = Reply::Type::Array;
    for (long long v : {3, 1000, 500, 7, 0, 60000, 20, 9}) {
        Reply e;
        e.type = Reply::Type::Integer;
        e.integer = v;
        r.elements.push_back(e);
    }
    std::vector<LeaseGrant> g;
    ASSERT_TRUE(parse_lease_reply(r, 2, g));
    EXPECT_EQ(g[0].units, 3u);
    EXPECT_EQ(g[0].window, 1000);
    EXPECT_EQ(g[0].left_ms, 500);
    EXPECT_EQ(g[0].remaining, 7u);
    EXPECT_EQ(g[1].units, 0u);
    EXPECT_EQ(g[1].retry_after_ms, 9);
    EXPECT_FALSE(parse_lease_reply(r, 1, g));  // 8 integers are not one key's 4
    r.elements[7].integer = 0;                 // a refusal with no retry time
    EXPECT_FALSE(parse_lease_reply(r, 2, g));
    r.elements[7].integer = 9;
    r.elements[2].integer = 0;  // no time left in the window
    EXPECT_FALSE(parse_lease_reply(r, 2, g));
    uint64_t n = 0;
    Reply i;
    i.type = Reply::Type::Integer;
    i.integer = -1;
    EXPECT_FALSE(parse_lease_return_reply(i, n));
}

// One call for several keys (the module's end-of-turn batch): each decided as alone, in order;
// the same key twice sees the first grant.
TEST_F(RedisLeaseScriptsTest, ABatchDecidesEachKeyInOrder) {
    const std::string a = base_key("t:", "q", "a"), b = base_key("t:", "q", "b");
    std::vector<LeaseGrant> g = leases(
        {{a, 100, day_ms, 50, ""}, {b, 10, day_ms, 50, ""}, {a, 100, day_ms, 50, ""}}, t0 + 7);
    ASSERT_EQ(g.size(), 3u);
    EXPECT_EQ(g[0].units, 12u);  // 100 / 8
    EXPECT_EQ(g[1].units, 1u);   // 10 / 8
    EXPECT_EQ(g[2].units, 11u);  // 88 / 8
    EXPECT_EQ(g[2].remaining, 77u);
    EXPECT_EQ(ctl->run({"GET", key(a, t0)}), "23");
    EXPECT_EQ(ctl->run({"GET", key(b, t0)}), "1");
}

// 100 a day: grants of 1/8 of what is left (12, 11, 9, ...), then one at a time, exactly 100.
TEST_F(RedisLeaseScriptsTest, GrantsAddUpToExactlyTheLimit) {
    const std::string base = base_key("t:", "q", "k");
    const int64_t now = t0 + 1000;
    uint64_t total = 0, calls = 0, left = 100;
    for (;;) {
        LeaseGrant g = lease(base, 100, day_ms, 1000, now);
        EXPECT_EQ(g.window, t0);
        EXPECT_EQ(g.left_ms, day_ms - 1000);
        if (g.units == 0) {
            EXPECT_EQ(g.retry_after_ms, day_ms - 1000 + day_ms / 100);  // strict's
            break;
        }
        uint64_t share = left / 8 > 0 ? left / 8 : 1;
        EXPECT_EQ(g.units, share) << "left " << left;
        left -= g.units;
        EXPECT_EQ(g.remaining, left);
        total += g.units;
        calls++;
    }
    EXPECT_EQ(total, 100u);
    EXPECT_EQ(ctl->run({"GET", key(base, t0)}), "100");
    long long pttl = std::atoll(ctl->run({"PTTL", key(base, t0)}).c_str());
    EXPECT_GT(pttl, 2 * day_ms);
    EXPECT_LE(pttl, 2 * day_ms + 1000);
    EXPECT_EQ(ctl->run({"DBSIZE"}), "1");  // the refusals wrote nothing
    EXPECT_GT(calls, 16u);                 // the last 15 one by one
    LeaseGrant small = lease(base_key("t:", "q", "other"), 100, day_ms, 3, now);
    EXPECT_EQ(small.units, 3u);  // want caps the grant
}

// Over random previous and current counts and clocks: the units granted one call after the
// other add up to exactly what core's sliding window admits request by request at that now.
TEST_F(RedisLeaseScriptsTest, MatchesStrictAdmissionsOverRandomStates) {
    std::mt19937_64 rng(2024);
    const core::Policy policy{core::Algorithm::sliding, core::Rate{50, 60000}, 0};
    for (int round = 0; round < 60; round++) {
        const std::string base = base_key("t:", "r", std::to_string(round));
        const int64_t w = t0 + 60000 * static_cast<int64_t>(rng() % 1000);
        const int64_t now = w + static_cast<int64_t>(rng() % 60000);
        uint32_t prev = static_cast<uint32_t>(rng() % 70), cur = static_cast<uint32_t>(rng() % 55);
        if (prev > 0) {
            ctl->run({"SET", key(base, w - 60000), std::to_string(prev)});
        }
        if (cur > 0) {
            ctl->run({"SET", key(base, w), std::to_string(cur)});
        }
        core::State s;
        s.stamp = w;
        s.prev = prev;
        s.cur = cur;
        uint64_t admitted = 0;
        core::Decision first = core::evaluate(policy, s, now);
        while (core::evaluate(policy, s, now).allowed) {
            core::record(policy, s, now);
            admitted++;
        }
        uint64_t granted = 0;
        for (;;) {
            LeaseGrant g = lease(base, 50, 60000, 1 + rng() % 20, now);
            if (g.units == 0) {
                if (granted == 0) {
                    EXPECT_EQ(g.retry_after_ms, first.retry_after_ms) << round;
                }
                break;
            }
            granted += g.units;
        }
        EXPECT_EQ(granted, admitted)
            << "round " << round << " prev " << prev << " cur " << cur << " e " << now - w;
    }
}

TEST_F(RedisLeaseScriptsTest, ReturnTakesUnitsOffNeverBelowZeroNeverCreates) {
    const std::string base = base_key("t:", "q", "r");
    LeaseGrant g = lease(base, 100, day_ms, 10, t0 + 5);
    ASSERT_EQ(g.units, 10u);
    EXPECT_EQ(give_back(base, t0, 4), 4u);
    EXPECT_EQ(ctl->run({"GET", key(base, t0)}), "6");
    long long pttl = std::atoll(ctl->run({"PTTL", key(base, t0)}).c_str());
    EXPECT_GT(pttl, 0);  // its expiry kept
    EXPECT_EQ(give_back(base, t0, 100), 6u);
    EXPECT_EQ(ctl->run({"GET", key(base, t0)}), "0");
    EXPECT_EQ(give_back(base, t0, 1), 0u);
    EXPECT_EQ(give_back(base, t0 - day_ms, 5), 0u);  // a window that is gone
    EXPECT_EQ(ctl->run({"EXISTS", key(base, t0 - day_ms)}), "0");
}

// Near the limit (the eighth of what is left is below want), the hosts that ask there are
// counted: up to 4 the share stays an eighth, with 6 it is a twelfth (1 / (2 x hosts)). Far
// from the limit nothing is written for it.
TEST_F(RedisLeaseScriptsTest, NearTheLimitTheShareFollowsTheHostsAsking) {
    const std::string base = base_key("t:", "q", "hosts");
    auto ask = [&](const char* host, uint64_t want, int64_t now) {
        std::vector<LeaseGrant> g = leases({LeaseAsk{base, 1000, day_ms, want, host}}, now);
        return g.empty() ? uint64_t(0) : g[0].units;
    };
    EXPECT_EQ(ask("h1", 10, t0), 10u);  // 1000 / 8 >= 10: the share does not bite
    EXPECT_EQ(ctl->run({"EXISTS", base + ":h"}), "0");
    ctl->run({"SET", key(base, t0), "904"});  // 96 left
    EXPECT_EQ(ask("h1", 50, t0 + 1), 12u);    // 96 / 8, one host known
    EXPECT_EQ(ctl->run({"ZCARD", base + ":h"}), "1");
    for (const char* h : {"h2", "h3", "h4"}) {
        ask(h, 1, t0 + 2);  // want 1 <= the share: not counted
    }
    EXPECT_EQ(ctl->run({"ZCARD", base + ":h"}), "1");
    ctl->run({"SET", key(base, t0), "904"});
    for (const char* h : {"h2", "h3", "h4", "h5"}) {
        ask(h, 1000, t0 + 3);
        ctl->run({"SET", key(base, t0), "904"});
    }
    EXPECT_EQ(ctl->run({"ZCARD", base + ":h"}), "5");
    EXPECT_EQ(ask("h6", 1000, t0 + 4), 8u);  // 6 hosts: 96 / 12
    ctl->run({"SET", key(base, t0), "904"});
    EXPECT_EQ(ask("h6", 1000, t0 + 20000), 12u);  // the others silent for 10 s: 96 / 8
    EXPECT_EQ(ctl->run({"ZCARD", base + ":h"}), "1");
    long long pttl = std::atoll(ctl->run({"PTTL", base + ":h"}).c_str());
    EXPECT_GT(pttl, 0);
    EXPECT_LE(pttl, 10000);
}

TEST_F(RedisLeaseScriptsTest, ReturnOfSeveralKeysInOneCall) {
    const std::string a = base_key("t:", "q", "ra"), b = base_key("t:", "q", "rb");
    ASSERT_EQ(lease(a, 1000, day_ms, 20, t0).units, 20u);
    ASSERT_EQ(lease(b, 1000, day_ms, 30, t0).units, 30u);
    LeaseReturn r[] = {{a, t0, 5}, {b, t0, 50}, {a, t0 - day_ms, 3}};
    EvalArgs args;
    ASSERT_TRUE(build_lease_return_args(r, 3, args));
    uint64_t n = 0;
    ASSERT_TRUE(parse_lease_return_reply(eval(lease_return_script(), args), n));
    EXPECT_EQ(n, 35u);  // 5 of a, all 30 of b, nothing of a window that is gone
    EXPECT_EQ(ctl->run({"GET", key(a, t0)}), "15");
    EXPECT_EQ(ctl->run({"GET", key(b, t0)}), "0");
    EXPECT_EQ(ctl->run({"EXISTS", key(a, t0 - day_ms)}), "0");
}

}  // namespace
}  // namespace throttle::redis::test
