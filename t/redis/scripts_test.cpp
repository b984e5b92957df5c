// The strict and flush scripts (src/redis/scripts.hpp): argument builders and reply parsers on
// their own, then the scripts in a real redis-server driven through the Client and libevent:
// admission, all-or-nothing, GCRA spacing, expiry set once, binary keys, the same key layout
// for both scripts, a one-node Redis Cluster (derived keys share their slot), and a cross-check
// of the strict script's decisions against core::evaluate() over a few thousand random states
// (the script takes an optional trailing clock argument for this; the module never sends it).
#include "redis/scripts.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <deque>
#include <random>
#include <sstream>

#include "support.hpp"

#include "core/limiter.hpp"
#include "core/gcra.hpp"
#include "core/sliding_window.hpp"

namespace throttle::redis::test {
namespace {

constexpr int64_t day_ms = 86400000;
constexpr int64_t hour_ms = 3600000;

Reply integer(long long v) {
    Reply r;
    r.type = Reply::Type::Integer;
    r.integer = v;
    return r;
}

Reply array_of(std::initializer_list<long long> values) {
    Reply r;
    r.type = Reply::Type::Array;
    for (long long v : values) {
        r.elements.push_back(integer(v));
    }
    return r;
}

std::vector<std::string> strings(const std::vector<std::string_view>& v) {
    return std::vector<std::string>(v.begin(), v.end());
}

StrictZone sliding(std::string base, uint64_t limit, int64_t period_ms) {
    StrictZone z;
    z.algorithm = 0;
    z.limit = limit;
    z.period_ms = period_ms;
    z.base = std::move(base);
    return z;
}

StrictZone gcra(std::string base, uint64_t limit, int64_t period_ms, uint64_t burst) {
    StrictZone z;
    z.algorithm = 1;
    z.limit = limit;
    z.period_ms = period_ms;
    z.burst = burst;
    z.base = std::move(base);
    return z;
}

std::string window_key(const std::string& base, int64_t window) {
    return base + ":" + std::to_string(window);
}

int64_t window_of(int64_t now, int64_t period) {
    return now - now % period;
}

int64_t wall_ms() {
    timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return int64_t(ts.tv_sec) * 1000 + ts.tv_nsec / 1000000;
}

// ---- without Redis ----

TEST(RedisScriptsUnit, BaseKeyLayout) {
    EXPECT_EQ(base_key("throttle:", "login", "1.2.3.4"), "throttle:{login:1.2.3.4}");
    EXPECT_EQ(base_key("", "z", ""), "{z:}");
    const std::string key("a\0{b}:c", 7);
    EXPECT_EQ(base_key("p:", "z", key), std::string("p:{z:a\0{b}:c}", 13));
}

TEST(RedisScriptsUnit, EvalArgsViewsSurviveGrowthAndMove) {
    EvalArgs a;
    a.add_key(std::string_view("k\0", 2));
    for (int64_t i = 0; i < 1000; i++) {  // short strings live inside their std::string (SSO)
        a.add_arg(i);
    }
    a.add_arg(std::string(100, 'x'));
    a.add_arg(uint64_t(18446744073709551615u));
    a.add_arg(int64_t(-5));
    EvalArgs b(std::move(a));
    ASSERT_EQ(b.keys().size(), 1u);
    EXPECT_EQ(b.keys()[0], std::string_view("k\0", 2));
    ASSERT_EQ(b.args().size(), 1003u);
    for (int64_t i = 0; i < 1000; i++) {
        ASSERT_EQ(b.args()[size_t(i)], std::to_string(i));
    }
    EXPECT_EQ(b.args()[1000], std::string(100, 'x'));
    EXPECT_EQ(b.args()[1001], "18446744073709551615");
    EXPECT_EQ(b.args()[1002], "-5");
    EvalArgs c;
    c = std::move(b);
    EXPECT_EQ(c.args()[999], "999");
    c.clear();
    EXPECT_TRUE(c.keys().empty());
    EXPECT_TRUE(c.args().empty());
}

TEST(RedisScriptsUnit, StrictArguments) {
    std::vector<StrictZone> zones = {sliding("b1", 100, hour_ms), gcra("b2", 5, 1000, 2),
                                     sliding("b3", 0, 0), gcra("b4", 7, 60000, 0)};
    zones[2].algorithm = 9;  // unknown: sliding, as in core
    EvalArgs a;
    ASSERT_TRUE(build_strict_args(zones, a));
    EXPECT_EQ(strings(a.keys()), (std::vector<std::string>{"b1", "b2", "b3", "b4"}));
    EXPECT_EQ(strings(a.args()),
              (std::vector<std::string>{"0", "100", "3600000", "0", "1", "5", "1000", "2", "0", "1",
                                        "1", "0", "1", "7", "60000", "0"}));
    // Filling again starts over; nothing is an error.
    ASSERT_TRUE(build_strict_args(zones.data(), 1, a));
    EXPECT_EQ(a.keys().size(), 1u);
    EXPECT_EQ(a.args().size(), 4u);
    EXPECT_FALSE(build_strict_args(zones.data(), 0, a));
    EXPECT_TRUE(a.keys().empty());
}

TEST(RedisScriptsUnit, FlushArguments) {
    std::vector<FlushEntry> entries(2);
    entries[0].base = std::string("a\0b", 3);
    entries[0].window = 1700000000000;
    entries[0].delta_cur = 3;
    entries[0].delta_prev = 0;
    entries[1].base = "c";
    entries[1].window = 1700000060000;
    entries[1].delta_cur = 4294967295u;
    entries[1].delta_prev = 2;
    EvalArgs a;
    ASSERT_TRUE(build_flush_args(60000, entries, a));
    EXPECT_EQ(strings(a.keys()), (std::vector<std::string>{std::string("a\0b", 3), "c"}));
    EXPECT_EQ(strings(a.args()), (std::vector<std::string>{"60000", "1700000000000", "3", "0",
                                                           "1700000060000", "4294967295", "2"}));
    ASSERT_TRUE(build_flush_args(0, entries.data(), 1, a));
    EXPECT_EQ(a.args()[0], "1");
    EXPECT_FALSE(build_flush_args(1000, entries.data(), 0, a));
}

TEST(RedisScriptsUnit, ParseStrictReply) {
    int64_t now = -1;
    std::vector<StrictDecision> d;
    ASSERT_TRUE(
        parse_strict_reply(array_of({1700000000123, 1, 4, 7000, 0, 0, 0, 500, 250}), 2, now, d));
    EXPECT_EQ(now, 1700000000123);
    ASSERT_EQ(d.size(), 2u);
    EXPECT_TRUE(d[0].allowed);
    EXPECT_EQ(d[0].remaining, 4u);
    EXPECT_EQ(d[0].reset_ms, 7000);
    EXPECT_EQ(d[0].retry_after_ms, 0);
    EXPECT_FALSE(d[1].allowed);
    EXPECT_EQ(d[1].remaining, 0u);
    EXPECT_EQ(d[1].reset_ms, 500);
    EXPECT_EQ(d[1].retry_after_ms, 250);

    const Reply good = array_of({5, 1, 4, 7000, 0});
    ASSERT_TRUE(parse_strict_reply(good, 1, now, d));
    EXPECT_FALSE(parse_strict_reply(good, 2, now, d));  // length
    EXPECT_FALSE(parse_strict_reply(good, 0, now, d));
    EXPECT_FALSE(parse_strict_reply(array_of({5, 1, 4, 7000}), 1, now, d));
    EXPECT_FALSE(parse_strict_reply(array_of({5, 1, 4, 7000, 0, 0}), 1, now, d));
    EXPECT_FALSE(parse_strict_reply(array_of({-1, 1, 4, 7000, 0}), 1, now, d));  // negative
    EXPECT_FALSE(parse_strict_reply(array_of({5, 1, -4, 7000, 0}), 1, now, d));
    EXPECT_FALSE(parse_strict_reply(array_of({5, 1, 4, -1, 0}), 1, now, d));
    EXPECT_FALSE(parse_strict_reply(array_of({5, 0, 0, 10, -3}), 1, now, d));
    EXPECT_FALSE(parse_strict_reply(array_of({5, 2, 4, 7000, 0}), 1, now, d));  // allowed 0/1
    EXPECT_FALSE(parse_strict_reply(array_of({5, 1, 4, 7000, 9}), 1, now, d));  // retry if allowed
    EXPECT_FALSE(parse_strict_reply(array_of({5, 0, 3, 7000, 9}), 1, now, d));  // remaining if not
    EXPECT_FALSE(parse_strict_reply(array_of({5, 0, 0, 7000, 0}), 1, now, d));  // no retry if not

    Reply r = good;
    r.elements[2].type = Reply::Type::String;  // "4" as a bulk string is not an integer
    r.elements[2].str = "4";
    EXPECT_FALSE(parse_strict_reply(r, 1, now, d));
    r = good;
    r.elements[3] = Reply();  // nil
    EXPECT_FALSE(parse_strict_reply(r, 1, now, d));
    r = good;
    r.elements[1] = array_of({1});  // nested
    EXPECT_FALSE(parse_strict_reply(r, 1, now, d));

    Reply err;
    err.type = Reply::Type::Error;
    err.str = "ERR throttle strict: bad arguments for key 1";
    EXPECT_FALSE(parse_strict_reply(err, 1, now, d));
    EXPECT_FALSE(parse_strict_reply(Reply(), 1, now, d));
    EXPECT_FALSE(parse_strict_reply(integer(1), 1, now, d));
    Reply status;
    status.type = Reply::Type::Status;
    status.str = "OK";
    EXPECT_FALSE(parse_strict_reply(status, 1, now, d));
}

TEST(RedisScriptsUnit, ParseFlushReply) {
    std::vector<std::pair<uint64_t, uint64_t>> t;
    ASSERT_TRUE(parse_flush_reply(array_of({3, 1, 0, 0, 4294967296, 7}), 3, t));
    ASSERT_EQ(t.size(), 3u);
    EXPECT_EQ(t[0], std::make_pair(uint64_t(3), uint64_t(1)));
    EXPECT_EQ(t[1], std::make_pair(uint64_t(0), uint64_t(0)));
    EXPECT_EQ(t[2], std::make_pair(uint64_t(4294967296), uint64_t(7)));
    EXPECT_FALSE(parse_flush_reply(array_of({3, 1, 0}), 2, t));
    EXPECT_FALSE(parse_flush_reply(array_of({3, 1, 0, 0, 0}), 2, t));
    EXPECT_FALSE(parse_flush_reply(array_of({3, -1}), 1, t));
    EXPECT_FALSE(parse_flush_reply(array_of({}), 0, t));
    Reply r = array_of({3, 1});
    r.elements[1] = Reply();
    EXPECT_FALSE(parse_flush_reply(r, 1, t));
    r.elements[1].type = Reply::Type::String;
    r.elements[1].str = "1";
    EXPECT_FALSE(parse_flush_reply(r, 1, t));
    Reply err;
    err.type = Reply::Type::Error;
    err.str = "ERR x";
    EXPECT_FALSE(parse_flush_reply(err, 1, t));
    EXPECT_FALSE(parse_flush_reply(Reply(), 1, t));
}

TEST(RedisScriptsUnit, StrictExactBounds) {
    // sliding: L * P < 2^53
    EXPECT_TRUE(strict_exact(0, 100000000, day_ms, 0));    // 1e8r/d: 8.64e15
    EXPECT_FALSE(strict_exact(0, 1000000000, day_ms, 0));  // 1e9r/d: 8.64e16
    EXPECT_TRUE(strict_exact(0, 1000000000, hour_ms, 0));  // 3.6e15
    const uint64_t edge = ((uint64_t(1) << 53) - 1) / uint64_t(day_ms);
    EXPECT_TRUE(strict_exact(0, edge, day_ms, 0));
    EXPECT_FALSE(strict_exact(0, edge + 1, day_ms, 0));
    EXPECT_TRUE(strict_exact(sliding("b", 0, 0)));  // clamped to 1r/1ms
    // gcra: C * T_us <= 2^52
    EXPECT_TRUE(strict_exact(1, 1000000000, 1000, 0));  // T = 1 µs, C = 1e9
    EXPECT_TRUE(strict_exact(1, 1, day_ms, 0));         // T = 8.64e10 µs, C = 1
    EXPECT_TRUE(strict_exact(1, 1, day_ms, 52124));     // 4.5035e15 <= 2^52 = 4.5036e15
    EXPECT_FALSE(strict_exact(1, 1, day_ms, 52125));    // 4.5036e15 > 2^52
    EXPECT_FALSE(strict_exact(1, 1, day_ms, 1000000000));
    EXPECT_FALSE(strict_exact(2, 1, 1000, 0));  // no such algorithm
}

TEST(RedisScriptsUnit, ScriptsAreBuiltOnce) {
    EXPECT_EQ(&strict_script(), &strict_script());
    EXPECT_EQ(&flush_script(), &flush_script());
    EXPECT_NE(strict_script().sha(), flush_script().sha());
    EXPECT_EQ(strict_script().source().compare(0, 6, "#!lua\n"), 0);
    EXPECT_EQ(flush_script().source().compare(0, 6, "#!lua\n"), 0);
    EXPECT_EQ(strict_script().sha(), sha1_hex(strict_script().source()));
}

// ---- against redis-server ----

struct StrictOut {
    bool ok = false;
    int64_t now = 0;
    std::vector<StrictDecision> d;
    Reply reply;
};

class RedisScriptsTest : public ::testing::Test {
   protected:
    void SetUp() override {
        if (!have_redis_server()) {
            GTEST_SKIP() << "redis-server not found (set THROTTLE_REDIS_SERVER)";
        }
        server = std::make_unique<RedisServer>(server_args());
        ASSERT_TRUE(server->start());
        ctl = std::make_unique<Control>(server->port());
        ASSERT_TRUE(ctl->ok());
        client = make_client();
    }

    virtual std::vector<std::string> server_args() { return {}; }

    std::unique_ptr<Client> make_client() {
        Config c;
        c.address = server->address();
        c.command_timeout_ms = 5000;
        return std::make_unique<Client>(ev.loop(), c);
    }

    // Runs the loop until every outcome has its callback; on timeout, closes the client, whose
    // callbacks then fail at once (no callback may outlive the outcomes it writes to).
    bool wait_all(Client& c, const std::function<bool()>& done, uint64_t timeout_ms = 30000) {
        if (ev.run_until(done, timeout_ms)) {
            return true;
        }
        ADD_FAILURE() << "no reply in " << timeout_ms << " ms";
        c.close();
        ev.run_until(done, 5000);
        return false;
    }

    Result evalsha(Client& c, const Script& s, const std::vector<std::string_view>& keys,
                   const std::vector<std::string_view>& args) {
        Outcome o;
        inside_call() = true;
        c.evalsha(s, keys, args, track(o));
        inside_call() = false;
        wait_all(c, [&] { return o.calls > 0; });
        EXPECT_FALSE(o.synchronous);
        EXPECT_TRUE(o.result.ok()) << to_string(o.result.failure);
        return std::move(o.result);
    }

    Result eval(Client& c, const Script& s, const EvalArgs& a) {
        return evalsha(c, s, a.keys(), a.args());
    }

    // One strict call; now_override >= 0 replaces Redis' clock.
    StrictOut strict(const std::vector<StrictZone>& zones, int64_t now_override = -1) {
        EvalArgs a;
        EXPECT_TRUE(build_strict_args(zones, a));
        if (now_override >= 0) {
            a.add_arg(now_override);
        }
        StrictOut out;
        out.reply = eval(*client, strict_script(), a).reply;
        out.ok = parse_strict_reply(out.reply, zones.size(), out.now, out.d);
        EXPECT_TRUE(out.ok) << to_string(out.reply.type) << " " << out.reply.str;
        return out;
    }

    // One flush call; the totals, empty when the reply did not parse.
    std::vector<std::pair<uint64_t, uint64_t>> flush(Client& c, int64_t period_ms,
                                                     const std::vector<FlushEntry>& entries) {
        EvalArgs a;
        EXPECT_TRUE(build_flush_args(period_ms, entries, a));
        Reply r = eval(c, flush_script(), a).reply;
        std::vector<std::pair<uint64_t, uint64_t>> totals;
        if (!parse_flush_reply(r, entries.size(), totals)) {
            ADD_FAILURE() << "flush reply: " << to_string(r.type) << " " << r.str;
            totals.clear();
        }
        return totals;
    }

    int64_t redis_now_ms() {
        std::string t = ctl->run({"TIME"});  // "[seconds,microseconds]"
        size_t comma = t.find(',');
        return std::atoll(t.c_str() + 1) * 1000 + std::atoll(t.c_str() + comma + 1) / 1000;
    }

    std::string get(const std::string& key) { return ctl->run({"GET", key}); }
    long long number(const std::string& reply_text) { return std::atoll(reply_text.c_str()); }

    EventLoop ev;
    std::unique_ptr<RedisServer> server;
    std::unique_ptr<Control> ctl;
    std::unique_ptr<Client> client;
};

// L of 3L sequential calls pass; the others are refused with a retry time, and are counted
// nowhere.
TEST_F(RedisScriptsTest, StrictSlidingAdmitsExactlyTheLimit) {
    const uint64_t L = 10;
    const std::string base = base_key("throttle:", "login", "1.2.3.4");
    std::vector<StrictZone> zones = {sliding(base, L, day_ms)};
    std::vector<StrictOut> outs;
    for (uint64_t i = 0; i < 3 * L; i++) {
        outs.push_back(strict(zones));
        ASSERT_TRUE(outs.back().ok);
    }
    const int64_t w = window_of(outs.front().now, day_ms);
    if (window_of(outs.back().now, day_ms) != w) {
        GTEST_SKIP() << "crossed a window edge (UTC midnight) during the test";
    }
    EXPECT_LT(std::llabs(outs.front().now - wall_ms()), 5000);  // Redis' clock, in ms
    for (uint64_t i = 0; i < 3 * L; i++) {
        const StrictOut& o = outs[i];
        const int64_t e = o.now - w;
        EXPECT_EQ(o.d[0].allowed, i < L) << i;
        EXPECT_EQ(o.d[0].reset_ms, 2 * day_ms - e);
        if (i < L) {
            EXPECT_EQ(o.d[0].remaining, L - 1 - i);
            EXPECT_EQ(o.d[0].retry_after_ms, 0);
        } else {
            // cur == L: the next window, where 10 counted requests weigh (P - e') / P * 10 and
            // admit once that is <= 9: e' = P / 10.
            EXPECT_EQ(o.d[0].remaining, 0u);
            EXPECT_EQ(o.d[0].retry_after_ms, (day_ms - e) + day_ms / 10);
            EXPECT_GT(o.d[0].retry_after_ms, 0);
        }
        if (i > 0) {
            EXPECT_GE(o.now, outs[i - 1].now);
        }
    }
    EXPECT_EQ(get(window_key(base, w)), std::to_string(L));
    EXPECT_EQ(ctl->run({"DBSIZE"}), "1");
}

// A refused request writes nothing: not even the key of the current window.
TEST_F(RedisScriptsTest, StrictRejectionCreatesNoKey) {
    const std::string base = base_key("t:", "z", "k");
    const int64_t w = window_of(1700000000000, day_ms);
    ctl->run({"SET", window_key(base, w - day_ms), "3"});  // the previous window is full
    for (int i = 0; i < 5; i++) {
        // 1 s into the window, 3 * (P - 1000) / P weighs more than 2.
        StrictOut o = strict({sliding(base, 3, day_ms)}, w + 1000);
        ASSERT_TRUE(o.ok);
        EXPECT_FALSE(o.d[0].allowed);
        EXPECT_EQ(o.d[0].reset_ms, day_ms - 1000);  // only prev counts
        EXPECT_EQ(o.d[0].retry_after_ms, day_ms / 3 - 1000);
    }
    EXPECT_EQ(ctl->run({"EXISTS", window_key(base, w)}), "0");
    EXPECT_EQ(ctl->run({"DBSIZE"}), "1");
    EXPECT_EQ(get(window_key(base, w - day_ms)), "3");
}

// A request is counted in all its zones or in none: zone B at its limit leaves A unchanged.
TEST_F(RedisScriptsTest, StrictAllOrNothingAcrossZones) {
    const std::string a = base_key("t:", "a", "user");
    const std::string b = base_key("t:", "b", "user");
    const std::string g = base_key("t:", "g", "user");
    const std::vector<StrictZone> ab = {sliding(a, 5, day_ms), sliding(b, 2, day_ms)};
    const int64_t w = window_of(redis_now_ms(), day_ms);
    StrictOut o1 = strict(ab), o2 = strict(ab), o3 = strict(ab);
    if (window_of(o3.now, day_ms) != w) {
        GTEST_SKIP() << "crossed a window edge";
    }
    EXPECT_TRUE(o1.d[0].allowed && o1.d[1].allowed);
    EXPECT_TRUE(o2.d[0].allowed && o2.d[1].allowed);
    EXPECT_EQ(o2.d[0].remaining, 3u);
    EXPECT_EQ(o2.d[1].remaining, 0u);
    // B refuses; A would admit (and says so, as local mode does) but counts nothing.
    EXPECT_TRUE(o3.d[0].allowed);
    EXPECT_EQ(o3.d[0].remaining, 2u);
    EXPECT_FALSE(o3.d[1].allowed);
    EXPECT_GT(o3.d[1].retry_after_ms, 0);
    EXPECT_EQ(get(window_key(a, w)), "2");
    EXPECT_EQ(get(window_key(b, w)), "2");
    // A alone still has its 3 left.
    StrictOut o4 = strict({ab[0]});
    EXPECT_TRUE(o4.d[0].allowed);
    EXPECT_EQ(o4.d[0].remaining, 2u);
    EXPECT_EQ(get(window_key(a, w)), "3");

    // Mixed algorithms: a GCRA zone of one request per second refuses the second request, and
    // neither its arrival time nor A's count moves.
    const std::vector<StrictZone> ag = {ab[0], gcra(g, 1, 1000, 1)};
    StrictOut o5 = strict(ag);
    EXPECT_TRUE(o5.d[0].allowed && o5.d[1].allowed);
    const std::string tat = get(g + ":gcra");
    EXPECT_EQ(number(tat), o5.now * 1000 + 1000000);
    StrictOut o6 = strict(ag);
    if (o6.now - o5.now >= 1000) {
        GTEST_SKIP() << "too slow for a 1 s spacing";
    }
    EXPECT_TRUE(o6.d[0].allowed);
    EXPECT_FALSE(o6.d[1].allowed);
    EXPECT_EQ(get(g + ":gcra"), tat);
    EXPECT_EQ(get(window_key(a, w)), "4");
}

// GCRA: burst 1 spaces requests T apart; burst 3 admits 3 back to back.
TEST_F(RedisScriptsTest, StrictGcraBurstAndSpacing) {
    // Redis' own clock: 10r/s, burst 1, T = 100 ms.
    const std::string b1 = base_key("t:", "g", "one");
    StrictOut o1 = strict({gcra(b1, 10, 1000, 1)});
    StrictOut o2 = strict({gcra(b1, 10, 1000, 1)});
    ASSERT_TRUE(o1.ok && o2.ok);
    const int64_t dt = o2.now - o1.now;
    if (dt >= 100) {
        GTEST_SKIP() << "too slow for a 100 ms spacing";
    }
    EXPECT_TRUE(o1.d[0].allowed);
    EXPECT_EQ(o1.d[0].remaining, 0u);
    EXPECT_EQ(o1.d[0].reset_ms, 100);
    EXPECT_FALSE(o2.d[0].allowed);
    EXPECT_EQ(o2.d[0].retry_after_ms, 100 - dt);
    EXPECT_EQ(o2.d[0].reset_ms, 100 - dt);
    EXPECT_EQ(number(get(b1 + ":gcra")), o1.now * 1000 + 100000);  // µs, unchanged by o2
    long long pttl = number(ctl->run({"PTTL", b1 + ":gcra"}));
    EXPECT_GT(pttl, 1000);
    EXPECT_LE(pttl, 1100);

    // A fixed clock: exact spacing.
    const std::string b2 = base_key("t:", "g", "two");
    const int64_t t0 = 1700000000000;
    auto at = [&](int64_t t) { return strict({gcra(b2, 10, 1000, 1)}, t).d[0]; };
    EXPECT_TRUE(at(t0).allowed);
    StrictDecision d = at(t0);
    EXPECT_FALSE(d.allowed);
    EXPECT_EQ(d.retry_after_ms, 100);
    d = at(t0 + 99);
    EXPECT_FALSE(d.allowed);
    EXPECT_EQ(d.retry_after_ms, 1);
    EXPECT_TRUE(at(t0 + 100).allowed);
    EXPECT_FALSE(at(t0 + 150).allowed);

    // 1r/s with a bucket of 3.
    const std::string b3 = base_key("t:", "g", "three");
    auto at3 = [&](int64_t t) { return strict({gcra(b3, 1, 1000, 3)}, t).d[0]; };
    for (uint64_t i = 0; i < 3; i++) {
        d = at3(t0);
        EXPECT_TRUE(d.allowed);
        EXPECT_EQ(d.remaining, 2 - i);
        EXPECT_EQ(d.reset_ms, int64_t(1000 * (i + 1)));
    }
    d = at3(t0);
    EXPECT_FALSE(d.allowed);
    EXPECT_EQ(d.retry_after_ms, 1000);
    EXPECT_EQ(d.reset_ms, 3000);
    EXPECT_FALSE(at3(t0 + 999).allowed);
    d = at3(t0 + 1000);
    EXPECT_TRUE(d.allowed);
    EXPECT_EQ(d.remaining, 0u);
    EXPECT_FALSE(at3(t0 + 1000).allowed);
}

// The window key's expiry is set when the key is created, never refreshed.
TEST_F(RedisScriptsTest, StrictExpirySetOnceOnCreation) {
    const std::string base = base_key("t:", "z", "ttl");
    StrictOut first = strict({sliding(base, 1000, hour_ms)});
    ASSERT_TRUE(first.ok && first.d[0].allowed);
    const std::string key = window_key(base, window_of(first.now, hour_ms));
    const long long pttl1 = number(ctl->run({"PTTL", key}));
    EXPECT_GT(pttl1, 2 * hour_ms + 1000 - 1000);
    EXPECT_LE(pttl1, 2 * hour_ms + 1000);
    usleep(60 * 1000);
    StrictOut last;
    for (int i = 0; i < 49; i++) {
        last = strict({sliding(base, 1000, hour_ms)});
    }
    if (window_of(last.now, hour_ms) != window_of(first.now, hour_ms)) {
        GTEST_SKIP() << "crossed a window edge";
    }
    EXPECT_EQ(get(key), "50");
    const long long pttl50 = number(ctl->run({"PTTL", key}));
    EXPECT_GT(pttl50, 0);
    EXPECT_LE(pttl50, pttl1 - 50);  // at least the 60 ms slept, less rounding
}

// Key bytes may hold NUL, braces and colons; each key counts apart, under exactly its bytes.
TEST_F(RedisScriptsTest, StrictBinaryKeys) {
    const std::vector<std::string> keys = {std::string("a\0{b}:c", 7),
                                           std::string("a\0{b}:d", 7),
                                           std::string("a", 1),
                                           std::string(),
                                           "}",
                                           "{",
                                           std::string("\0", 1)};
    const int64_t t = 1700000000000;
    const int64_t w = window_of(t, day_ms);
    std::vector<std::string> expected;
    for (size_t i = 0; i < keys.size(); i++) {
        const std::string base = base_key("p:", "z", keys[i]);
        for (size_t n = 0; n <= i; n++) {
            StrictOut o = strict({sliding(base, 3, day_ms), gcra(base, 1000, hour_ms, 0)}, t);
            EXPECT_EQ(o.d[0].allowed, n < 3) << i << " " << n;
        }
        EXPECT_EQ(get(window_key(base, w)), std::to_string(std::min<size_t>(i + 1, 3)));
        expected.push_back(window_key(base, w));
        expected.push_back(base + ":gcra");
    }
    EXPECT_EQ(ctl->run({"DBSIZE"}), std::to_string(expected.size()));
    for (const std::string& k : expected) {
        EXPECT_EQ(ctl->run({"EXISTS", k}), "1");
    }
}

// Malformed arguments and foreign values are error replies, which the parsers refuse.
TEST_F(RedisScriptsTest, ScriptsRefuseBadArgumentsAndValues) {
    std::vector<std::pair<std::vector<std::string_view>, std::vector<std::string_view>>> bad = {
        {{"k"}, {"0", "10", "1000"}},                 // 3 of 4
        {{"k"}, {"0", "10", "1000", "0", "1", "2"}},  // 6
        {{"k"}, {"2", "10", "1000", "0"}},            // algorithm
        {{"k"}, {"0", "-1", "1000", "0"}},            // negative
        {{"k"}, {"0", "ten", "1000", "0"}},           // not a number
        {{"k"}, {"0", "1.5", "1000", "0"}},           // not an integer
        {{"k"}, {"0", "10", "1000", "0", "x"}},       // clock
        {{}, {}},                                     // no key
    };
    for (auto& [k, a] : bad) {
        Result r = evalsha(*client, strict_script(), k, a);
        EXPECT_TRUE(r.reply.is_error("ERR")) << r.reply.str;
        int64_t now;
        std::vector<StrictDecision> d;
        EXPECT_FALSE(parse_strict_reply(r.reply, std::max<size_t>(k.size(), 1), now, d));
    }
    std::vector<std::pair<std::vector<std::string_view>, std::vector<std::string_view>>> badf = {
        {{"k"}, {"1000", "5000", "1"}},
        {{"k"}, {"x", "5000", "1", "0"}},
        {{"k"}, {"1000", "5000", "-1", "0"}},
        {{}, {"1000"}}};
    for (auto& [k, a] : badf) {
        Result r = evalsha(*client, flush_script(), k, a);
        EXPECT_TRUE(r.reply.is_error("ERR")) << r.reply.str;
        std::vector<std::pair<uint64_t, uint64_t>> t;
        EXPECT_FALSE(parse_flush_reply(r.reply, std::max<size_t>(k.size(), 1), t));
    }
    EXPECT_EQ(ctl->run({"DBSIZE"}), "0");

    // A counter that is not an integer, or not a string at all.
    const int64_t t = 1700000000000;
    ctl->run({"SET", window_key("x", window_of(t, 1000)), "abc"});
    ctl->run({"LPUSH", "y:gcra", "1"});
    EXPECT_TRUE(eval(*client, strict_script(),
                     [&] {
                         EvalArgs a;
                         build_strict_args({sliding("x", 5, 1000)}, a);
                         a.add_arg(t);
                         return a;
                     }())
                    .reply.is_error());
    EXPECT_TRUE(eval(*client, strict_script(),
                     [&] {
                         EvalArgs a;
                         build_strict_args({gcra("y", 5, 1000, 0)}, a);
                         return a;
                     }())
                    .reply.is_error());
    FlushEntry e;
    e.base = "x";
    e.window = window_of(t, 1000);
    e.delta_cur = 1;
    EvalArgs a;
    build_flush_args(1000, {e}, a);
    EXPECT_TRUE(eval(*client, flush_script(), a).reply.is_error());
    EXPECT_EQ(get(window_key("x", window_of(t, 1000))), "abc");
}

// Two hosts flush their deltas for the same key: Redis holds the sums.
TEST_F(RedisScriptsTest, FlushDeltasAddUpAcrossHosts) {
    std::unique_ptr<Client> other = make_client();
    const int64_t P = hour_ms;
    const int64_t w = window_of(redis_now_ms(), P);
    FlushEntry e;
    e.base = base_key("t:", "user", std::string("u\0 1", 4));
    e.window = w;
    e.delta_cur = 3;
    e.delta_prev = 1;
    auto t1 = flush(*client, P, {e});
    ASSERT_EQ(t1.size(), 1u);
    EXPECT_EQ(t1[0], std::make_pair(uint64_t(3), uint64_t(1)));
    e.delta_cur = 5;
    e.delta_prev = 2;
    auto t2 = flush(*other, P, {e});
    ASSERT_EQ(t2.size(), 1u);
    EXPECT_EQ(t2[0], std::make_pair(uint64_t(8), uint64_t(3)));
    EXPECT_EQ(get(window_key(e.base, w)), "8");
    EXPECT_EQ(get(window_key(e.base, w - P)), "3");
    EXPECT_EQ(ctl->run({"DBSIZE"}), "2");
}

// PEXPIREAT window + 2P + 1000 when the key is created; later flushes leave the expiry alone.
TEST_F(RedisScriptsTest, FlushExpirySetOnlyOnCreation) {
    const int64_t P = hour_ms;
    const int64_t w = window_of(redis_now_ms(), P);
    FlushEntry e;
    e.base = base_key("t:", "user", "42");
    e.window = w;
    e.delta_cur = 2;
    e.delta_prev = 1;
    flush(*client, P, {e});
    const std::string cur = window_key(e.base, w), prev = window_key(e.base, w - P);
    EXPECT_EQ(number(ctl->run({"PEXPIRETIME", cur})), w + 2 * P + 1000);
    EXPECT_EQ(number(ctl->run({"PEXPIRETIME", prev})), (w - P) + 2 * P + 1000);
    // Marked by hand: a refresh would overwrite the marks.
    ctl->run({"PEXPIREAT", cur, std::to_string(w + 5 * P)});
    ctl->run({"PEXPIREAT", prev, std::to_string(w + 6 * P)});
    auto t = flush(*client, P, {e});
    ASSERT_EQ(t.size(), 1u);
    EXPECT_EQ(t[0], std::make_pair(uint64_t(4), uint64_t(2)));
    EXPECT_EQ(number(ctl->run({"PEXPIRETIME", cur})), w + 5 * P);
    EXPECT_EQ(number(ctl->run({"PEXPIRETIME", prev})), w + 6 * P);
}

// A delta for the previous window lands in the previous window's key only; zero deltas only
// read.
TEST_F(RedisScriptsTest, FlushPrevDeltaAndZeroDeltas) {
    const int64_t P = 60000;
    const int64_t w = window_of(redis_now_ms(), P);
    FlushEntry e;
    e.base = base_key("t:", "z", "prev");
    e.window = w;
    e.delta_prev = 4;
    auto t = flush(*client, P, {e});
    ASSERT_EQ(t.size(), 1u);
    EXPECT_EQ(t[0], std::make_pair(uint64_t(0), uint64_t(4)));
    EXPECT_EQ(ctl->run({"EXISTS", window_key(e.base, w)}), "0");
    EXPECT_EQ(get(window_key(e.base, w - P)), "4");
    EXPECT_EQ(number(ctl->run({"PEXPIRETIME", window_key(e.base, w - P)})), w + P + 1000);

    // Another host counted 7 in the current window; zero deltas read both totals.
    ctl->run({"SET", window_key(e.base, w), "7", "PX", "100000"});
    FlushEntry zero = e;
    zero.delta_prev = 0;
    FlushEntry fresh;
    fresh.base = base_key("t:", "z", "fresh");
    fresh.window = w;
    t = flush(*client, P, {zero, fresh});
    ASSERT_EQ(t.size(), 2u);
    EXPECT_EQ(t[0], std::make_pair(uint64_t(7), uint64_t(4)));
    EXPECT_EQ(t[1], std::make_pair(uint64_t(0), uint64_t(0)));
    EXPECT_EQ(ctl->run({"DBSIZE"}), "2");  // nothing created for zero deltas
    EXPECT_EQ(get(window_key(e.base, w)), "7");
}

// 256 keys in one call.
TEST_F(RedisScriptsTest, FlushBatchOf256Keys) {
    const int64_t P = hour_ms;
    const int64_t w = window_of(redis_now_ms(), P);
    std::vector<FlushEntry> batch(flush_batch_max);
    for (size_t i = 0; i < batch.size(); i++) {
        std::string key("k\0", 2);
        key += std::to_string(i);
        batch[i].base = base_key("t:", "user", key);
        batch[i].window = w;
        batch[i].delta_cur = uint32_t(i + 1);
        batch[i].delta_prev = uint32_t(i % 3);
    }
    const uint64_t before = client->stats().commands;
    auto t = flush(*client, P, batch);
    auto t2 = flush(*client, P, batch);
    EXPECT_EQ(client->stats().commands - before, 2u);  // one EVALSHA each
    ASSERT_EQ(t.size(), batch.size());
    ASSERT_EQ(t2.size(), batch.size());
    size_t prev_keys = 0;
    for (size_t i = 0; i < batch.size(); i++) {
        EXPECT_EQ(t[i], std::make_pair(uint64_t(i + 1), uint64_t(i % 3))) << i;
        EXPECT_EQ(t2[i], std::make_pair(uint64_t(2 * (i + 1)), uint64_t(2 * (i % 3)))) << i;
        prev_keys += i % 3 != 0;
    }
    EXPECT_EQ(get(window_key(batch[200].base, w)), "402");
    EXPECT_EQ(ctl->run({"DBSIZE"}), std::to_string(batch.size() + prev_keys));
}

// sync and strict use the same keys: what one host flushed, the strict script counts, and
// the other way round.
TEST_F(RedisScriptsTest, FlushAndStrictShareTheLayout) {
    const int64_t P = hour_ms;
    const int64_t t = redis_now_ms();
    const int64_t w = window_of(t, P);
    const std::string base = base_key("t:", "z", std::string("\0}", 2));
    FlushEntry e;
    e.base = base;
    e.window = w;
    e.delta_cur = 4;
    auto totals = flush(*client, P, {e});
    ASSERT_EQ(totals.size(), 1u);
    EXPECT_EQ(totals[0].first, 4u);
    StrictOut o = strict({sliding(base, 5, P)}, t);
    EXPECT_TRUE(o.d[0].allowed);
    EXPECT_EQ(o.d[0].remaining, 0u);
    EXPECT_FALSE(strict({sliding(base, 5, P)}, t).d[0].allowed);
    e.delta_cur = 0;
    totals = flush(*client, P, {e});
    ASSERT_EQ(totals.size(), 1u);
    EXPECT_EQ(totals[0].first, 5u);
    // In the next window, flushed and strict counts weigh as prev.
    e.window = w + P;
    totals = flush(*client, P, {e});
    ASSERT_EQ(totals.size(), 1u);
    EXPECT_EQ(totals[0], std::make_pair(uint64_t(0), uint64_t(5)));
    EXPECT_EQ(ctl->run({"DBSIZE"}), "1");
}

// ---- a one-node Redis Cluster: every key a script touches is in its KEYS' slot ----

class RedisScriptsClusterTest : public RedisScriptsTest {
   protected:
    std::vector<std::string> server_args() override {
        return {"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"};
    }
};

TEST_F(RedisScriptsClusterTest, DerivedKeysShareTheirSlot) {
    ASSERT_EQ(ctl->run({"CLUSTER", "ADDSLOTSRANGE", "0", "16383"}), "OK");
    ASSERT_TRUE(wait_for(
        [&] {
            return ctl->run({"CLUSTER", "INFO"}).find("cluster_state:ok") != std::string::npos;
        },
        10000));
    // A script that touches a key of another slot is refused here (the #!lua flags).
    Script probe("#!lua\nreturn redis.call('GET', 'elsewhere')");
    Result r = evalsha(*client, probe, {"{x}"}, {});
    EXPECT_TRUE(r.reply.is_error()) << r.reply.str;

    const int64_t t = 1700000000000;
    for (const std::string& key :
         {std::string("a\0{b}:c", 7), std::string("}"), std::string("{"), std::string("x}{y")}) {
        const std::string base = base_key("p:", "z", key);
        StrictOut s = strict({sliding(base, 3, 60000), gcra(base, 3, 60000, 0)}, t);
        EXPECT_TRUE(s.ok && s.d[0].allowed && s.d[1].allowed);
        StrictOut live = strict({sliding(base, 3, 60000)});
        EXPECT_TRUE(live.ok);
        FlushEntry e;
        e.base = base;
        e.window = window_of(redis_now_ms(), 60000);
        e.delta_cur = 1;
        e.delta_prev = 1;
        auto totals = flush(*client, 60000, {e});
        EXPECT_EQ(totals.size(), 1u);
    }
}

// ---- the strict script's decisions against core::evaluate ----

struct CheckZone {
    StrictZone zone;
    core::Policy policy;
    core::State state;
    std::string count_key;     // sliding: BASE:now's window; gcra: BASE:gcra
    std::string expect_after;  // GET count_key after the call
};

struct CheckCall {
    size_t index = 0;
    bool parsed = false;
    std::vector<CheckZone> zones;
    int64_t now = 0;
    Outcome outcome;
};

// Random states, biased to the edges: counts around the limit, the first and last ms of a
// window, TATs around the bucket's edge, the largest exact L * P.
class CaseMaker {
   public:
    explicit CaseMaker(uint64_t seed) : rng_(seed) {}

    uint64_t uniform(uint64_t lo, uint64_t hi) {
        return std::uniform_int_distribution<uint64_t>(lo, hi)(rng_);
    }
    bool chance(double p) { return std::uniform_real_distribution<double>(0, 1)(rng_) < p; }

    int64_t period() {
        static const int64_t periods[] = {1000, 60000, hour_ms, day_ms};
        return periods[uniform(0, 3)];
    }

    uint64_t log_uniform(uint64_t hi) {
        double x = std::uniform_real_distribution<double>(0, std::log(double(hi) + 1))(rng_);
        uint64_t v = uint64_t(std::exp(x));
        return std::clamp<uint64_t>(v, 1, hi);
    }

    uint32_t count_near(uint64_t L) {
        uint64_t c;
        switch (uniform(0, 6)) {
            case 0:
                c = 0;
                break;
            case 1:
                c = uniform(0, L);
                break;
            case 2:
                c = L - 1;
                break;
            case 3:
                c = L;
                break;
            case 4:
                c = L + 1;
                break;
            case 5:
                c = uniform(0, 2 * L + 2);
                break;
            default:
                c = uniform(0, UINT32_MAX);
        }
        return uint32_t(std::min<uint64_t>(c, UINT32_MAX));
    }

    // A sliding zone and its state; sets `now`.
    CheckZone sliding_zone(const std::string& base, int64_t& now) {
        CheckZone z;
        const int64_t P = period();
        const uint64_t lmax =
            std::min<uint64_t>(core::max_rate_limit, ((uint64_t(1) << 53) - 1) / uint64_t(P));
        uint64_t L;
        switch (uniform(0, 3)) {
            case 0:
                L = uniform(1, 10);
                break;
            case 1:
                L = uniform(1, 1000);
                break;
            case 2:
                L = lmax - uniform(0, 2);
                break;
            default:
                L = log_uniform(lmax);
        }
        z.zone = sliding(base, L, P);
        z.policy.algorithm = core::Algorithm::sliding;
        z.policy.rate.limit = L;
        z.policy.rate.period_ms = P;
        const int64_t b = 1700000000000 + int64_t(uniform(0, 10000000000));
        z.state.stamp = window_of(b, P);
        z.state.cur = count_near(L);
        z.state.prev = count_near(L);
        int64_t off;
        switch (uniform(0, 11)) {
            case 10:
            case 11: {
                // Where prev * (P - e) == (L - cur - 1) * P, when such an e exists, +-1.
                const uint64_t c = z.state.cur, p = z.state.prev;
                const uint64_t R = c + 1 <= L ? (L - c - 1) * uint64_t(P) : 0;
                if (p > 0 && R % p == 0 && R / p >= 1 && R / p <= uint64_t(P)) {
                    off = P - int64_t(R / p) + int64_t(uniform(0, 2)) - 1;
                    off = std::clamp<int64_t>(off, 0, P - 1);
                } else {
                    off = int64_t(uniform(0, uint64_t(P) - 1));
                }
                break;
            }
            case 0:
                off = 0;
                break;
            case 1:
                off = P - 1;
                break;
            case 2:
            case 3:
                off = P + int64_t(uniform(0, uint64_t(P) - 1));
                break;
            case 4:
                off = 2 * P + int64_t(uniform(0, uint64_t(P) - 1));
                break;
            default:
                off = int64_t(uniform(0, uint64_t(P) - 1));
        }
        now = z.state.stamp + off;
        return z;
    }

    // A gcra zone whose T is a whole number of µs (so core's ns and the script's µs agree),
    // and its state at `now`.
    CheckZone gcra_zone(const std::string& base, int64_t now) {
        CheckZone z;
        for (;;) {
            const int64_t P = period();
            // P * 1000 = 2^a 3^b 5^7 with a <= 10, b <= 3: L a random divisor of it.
            uint64_t pu = uint64_t(P) * 1000;
            uint64_t L = 1;
            for (uint64_t f : {2, 3, 5}) {
                while (pu % (L * f) == 0 && chance(0.6)) {
                    L *= f;
                }
            }
            if (L > core::max_rate_limit) {
                continue;
            }
            uint64_t burst = 0;
            if (chance(0.5)) {
                burst = chance(0.3) ? 1 : uniform(1, std::min<uint64_t>(2 * L + 2, 1000000000));
            }
            z.zone = gcra(base, L, P, burst);
            if (!strict_exact(z.zone)) {
                continue;
            }
            z.policy.algorithm = core::Algorithm::gcra;
            z.policy.rate.limit = L;
            z.policy.rate.period_ms = P;
            z.policy.burst = burst;
            const int64_t T = int64_t(uint64_t(P) * 1000 / L);  // µs
            const int64_t CT = int64_t(core::gcra::capacity(z.policy)) * T;
            const int64_t now_us = now * 1000;
            if (chance(0.2)) {
                z.state.stamp = 0;  // never seen
            } else {
                int64_t tat_us;
                switch (uniform(0, 3)) {
                    case 0:  // the bucket's edge, to the µs
                        tat_us = now_us + CT - T + int64_t(uniform(0, 2000)) - 1000;
                        break;
                    case 1:  // anywhere, to the µs
                        tat_us = now_us - CT - T + int64_t(uniform(0, uint64_t(2 * CT + 3 * T)));
                        break;
                    default: {
                        // What a live key holds: arrivals in whole ms plus whole T's.
                        const uint64_t cap = core::gcra::capacity(z.policy);
                        const int64_t k = int64_t(uniform(0, std::min<uint64_t>(cap, 1000000) + 3));
                        tat_us = now_us - int64_t(uniform(0, 5)) * 1000 + (k - 1) * T;
                    }
                }
                z.state.stamp = std::max<int64_t>(tat_us, 1) * 1000;  // ns
            }
            return z;
        }
    }

   private:
    std::mt19937_64 rng_;
};

TEST_F(RedisScriptsTest, StrictDecisionsMatchCore) {
    const uint64_t seed = 20261125;
    CaseMaker make(seed);
    const size_t calls = 3000, batch = 250;
    size_t compared = 0, admitted = 0, refused = 0, gcra_zones = 0;
    std::deque<CheckCall> todo;
    std::deque<Outcome> setup, after;
    for (size_t first = 0; first < calls; first += batch) {
        todo.clear();
        setup.clear();
        after.clear();
        for (size_t c = first; c < first + batch; c++) {
            CheckCall& call = todo.emplace_back();
            call.index = c;
            const size_t nz = make.uniform(1, 3);
            call.now = 0;
            for (size_t j = 0; j < nz; j++) {
                std::string key("c\0", 2);
                key += std::to_string(c) + "." + std::to_string(j);
                const std::string base = base_key("x:", "z", key);
                if (j == 0 || make.chance(0.5)) {
                    // The first sliding zone sets the clock for the call.
                    int64_t now = 0;
                    CheckZone z = make.sliding_zone(base, now);
                    if (call.now == 0) {
                        call.now = now;
                    } else {
                        // Re-aim the state at this call's clock: same offset into its window.
                        const int64_t P = z.policy.rate.period_ms;
                        z.state.stamp = window_of(call.now, P) - (now - z.state.stamp) / P * P;
                    }
                    call.zones.push_back(std::move(z));
                } else {
                    call.zones.push_back(make.gcra_zone(base, call.now));
                }
            }
            // Redis gets the same state.
            for (CheckZone& z : call.zones) {
                const std::string& base = z.zone.base;
                if (z.policy.algorithm == core::Algorithm::sliding) {
                    const int64_t P = z.policy.rate.period_ms;
                    if (z.state.cur > 0) {
                        issue(*client,
                              {"SET", window_key(base, z.state.stamp), std::to_string(z.state.cur)},
                              setup.emplace_back());
                    }
                    if (z.state.prev > 0) {
                        issue(*client,
                              {"SET", window_key(base, z.state.stamp - P),
                               std::to_string(z.state.prev)},
                              setup.emplace_back());
                    }
                    z.count_key = window_key(base, window_of(call.now, P));
                } else {
                    z.count_key = base + ":gcra";
                    if (z.state.stamp > 0) {
                        issue(*client, {"SET", z.count_key, std::to_string(z.state.stamp / 1000)},
                              setup.emplace_back());
                    }
                }
            }
            std::vector<StrictZone> zones;
            for (const CheckZone& z : call.zones) {
                zones.push_back(z.zone);
            }
            EvalArgs a;
            ASSERT_TRUE(build_strict_args(zones, a));
            a.add_arg(call.now);
            client->evalsha(strict_script(), a.keys(), a.args(), track(call.outcome));
        }
        ASSERT_TRUE(wait_all(*client, [&] { return todo.back().outcome.calls > 0; }));

        for (CheckCall& call : todo) {
            ASSERT_EQ(call.outcome.calls, 1);
            ASSERT_TRUE(call.outcome.result.ok());
            int64_t now = 0;
            std::vector<StrictDecision> got;
            if (!parse_strict_reply(call.outcome.result.reply, call.zones.size(), now, got)) {
                ADD_FAILURE() << "seed " << seed << " call " << call.index << ": reply "
                              << to_string(call.outcome.result.reply.type) << " "
                              << call.outcome.result.reply.str;
                continue;
            }
            call.parsed = true;
            EXPECT_EQ(now, call.now);
            bool all = true;
            for (size_t j = 0; j < call.zones.size(); j++) {
                const CheckZone& z = call.zones[j];
                const core::Decision want = core::evaluate(z.policy, z.state, call.now);
                const StrictDecision& d = got[j];
                std::ostringstream what;
                what << "seed " << seed << " call " << call.index << " zone " << j << ": algorithm "
                     << int(z.zone.algorithm) << " L " << z.zone.limit << " P " << z.zone.period_ms
                     << " burst " << z.zone.burst << " stamp " << z.state.stamp << " cur "
                     << z.state.cur << " prev " << z.state.prev << " now " << call.now;
                EXPECT_EQ(d.allowed, want.allowed) << what.str();
                EXPECT_EQ(d.remaining, want.remaining) << what.str();
                EXPECT_EQ(d.reset_ms, want.reset_ms) << what.str();
                EXPECT_EQ(d.retry_after_ms, want.retry_after_ms) << what.str();
                all = all && want.allowed;
                compared++;
                gcra_zones += z.policy.algorithm == core::Algorithm::gcra;
            }
            (all ? admitted : refused)++;
            // What Redis must hold now: counted in every zone, or in none.
            for (CheckZone& z : call.zones) {
                core::State s = z.state;
                if (all) {
                    core::record(z.policy, s, call.now);
                }
                if (z.policy.algorithm == core::Algorithm::sliding) {
                    const uint32_t c = core::sliding_window::roll(z.policy.rate, s, call.now).cur;
                    z.expect_after = c == 0 ? "(nil)" : std::to_string(c);
                } else {
                    z.expect_after = s.stamp == 0 ? "(nil)" : std::to_string(s.stamp / 1000);
                }
                issue(*client, {"GET", z.count_key}, after.emplace_back());
            }
        }
        ASSERT_TRUE(wait_all(*client, [&] { return after.empty() || after.back().calls > 0; }));
        size_t k = 0;
        for (const CheckCall& call : todo) {
            if (!call.parsed) {
                continue;
            }
            for (const CheckZone& z : call.zones) {
                const Outcome& o = after[k++];
                ASSERT_TRUE(o.result.ok());
                const std::string v = o.result.reply.is_nil() ? "(nil)" : o.result.reply.str;
                EXPECT_EQ(v, z.expect_after) << z.count_key.substr(0, 2) << " algorithm "
                                             << int(z.zone.algorithm) << " now " << call.now;
            }
        }
        ASSERT_FALSE(HasFailure()) << "stopping at the first failing batch";
        ctl->run({"FLUSHALL"});
    }
    // The random states exercise both outcomes and both algorithms.
    EXPECT_GT(admitted, calls / 10);
    EXPECT_GT(refused, calls / 10);
    EXPECT_GT(gcra_zones, compared / 6);
    std::printf("compared %zu zone decisions in %zu calls (%zu admitted, %zu refused)\n", compared,
                calls, admitted, refused);
}

}  // namespace
}  // namespace throttle::redis::test
