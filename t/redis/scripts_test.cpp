// The strict and flush scripts (src/redis/scripts.hpp): argument builders and reply parsers on
// their own, then the scripts in a real redis-server driven through the Client and libevent:
// admission, all-or-nothing, GCRA spacing, expiry set once, binary keys, the same key layout
// for both scripts, a one-node Redis Cluster (derived keys share their slot), and a cross-check
// of the strict script's decisions against core::evaluate() over a few thousand random states
// (the script's first argument can replace Redis' clock for this; the module never does).
// Then batches: many requests decided in one call, in order, each all-or-nothing, the same as
// one call per request and as core deciding them one after the other; and what a decision
// costs Redis in calls of 1, 8 and 32 requests (printed).
#include "redis/scripts.hpp"

#include <gtest/gtest.h>

#include <climits>
#include <cmath>
#include <cstdio>
#include <deque>
#include <random>
#include <sstream>

#include "core/gcra.hpp"
#include "core/hash.hpp"
#include "core/limiter.hpp"
#include "core/sliding_window.hpp"
#include "support.hpp"

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

// The same call with the test-only clock `now` in place of Redis' TIME (ARGV[1]).
EvalArgs with_clock(const EvalArgs& a, int64_t now) {
    EvalArgs b;
    for (std::string_view k : a.keys()) {
        b.add_key(k);
    }
    b.add_arg(now);
    for (size_t i = 1; i < a.args().size(); i++) {
        b.add_arg(a.args()[i]);
    }
    return b;
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
                                     sliding("b3", 0, 0), gcra("b4", 7, 60000, 0),
                                     sliding("b5", 100, hour_ms)};
    zones[2].algorithm = 9;  // unknown: sliding, as in core
    zones[2].burst = 4;      // sliding ignores its burst: sent as 0
    EvalArgs a;
    ASSERT_TRUE(build_strict_args(zones, a));
    // KEYS grouped by policy: b1 and b5 share one.
    EXPECT_EQ(strings(a.keys()), (std::vector<std::string>{"b1", "b5", "b2", "b3", "b4"}));
    EXPECT_EQ(strings(a.args()),
              (std::vector<std::string>{"",                                   // clock: TIME
                                        "0",  "100", "3600000", "0", "2",     // b1 b5
                                        "1",  "5",   "1000",    "2", "1",     // b2
                                        "0",  "1",   "1",       "0", "1",     // b3
                                        "1",  "7",   "60000",   "0", "1",     // b4
                                        "-1", "3",   "4",       "5", "2"}));  // b1 b2 b3 b4 b5
    // Filling again starts over; nothing is an error.
    ASSERT_TRUE(build_strict_args(zones.data(), 1, a));
    EXPECT_EQ(strings(a.keys()), (std::vector<std::string>{"b1"}));
    EXPECT_EQ(strings(a.args()),
              (std::vector<std::string>{"", "0", "100", "3600000", "0", "1", "-1"}));
    EXPECT_FALSE(build_strict_args(zones.data(), 0, a));
    EXPECT_TRUE(a.keys().empty());
    EXPECT_TRUE(a.args().empty());
    // The same zone twice in one request is one key, referenced twice.
    ASSERT_TRUE(build_strict_args({zones[0], zones[0]}, a));
    EXPECT_EQ(strings(a.keys()), (std::vector<std::string>{"b1"}));
    EXPECT_EQ(strings(a.args()),
              (std::vector<std::string>{"", "0", "100", "3600000", "0", "1", "-1", "1"}));
    // The same base under two policies is two keys.
    ASSERT_TRUE(build_strict_args({sliding("b", 5, 1000), sliding("b", 6, 1000)}, a));
    EXPECT_EQ(strings(a.keys()), (std::vector<std::string>{"b", "b"}));
    EXPECT_EQ(strings(a.args()), (std::vector<std::string>{"", "0", "5", "1000", "0", "1", "0", "6",
                                                           "1000", "0", "1", "-1", "2"}));
}

TEST(RedisScriptsUnit, StrictBatchArguments) {
    const StrictZone a = sliding("a", 10, 1000), b = sliding("b", 10, 1000),
                     g = gcra("g", 3, 1000, 0), ab = sliding("a", 20, 60000);
    const std::vector<StrictZone> r1 = {a, g}, r2 = {b}, r3 = {ab, a, g}, r4 = {b, b};
    EvalArgs x;
    ASSERT_TRUE(build_strict_batch_args({&r1, &r2, &r1, &r3, &r4}, x));
    // Policies in order of first use: (10, 1000) for a and b, gcra for g, (20, 60000) for a.
    EXPECT_EQ(strings(x.keys()), (std::vector<std::string>{"a", "b", "g", "a"}));
    EXPECT_EQ(
        strings(x.args()),
        (std::vector<std::string>{"",                              // clock
                                  "0",  "10", "1000",  "0",  "2",  // a b
                                  "1",  "3",  "1000",  "0",  "1",  // g
                                  "0",  "20", "60000", "0",  "1",  // a (other policy)
                                  "-1", "3",  "-2",    "-1", "3", "-4", "1", "3", "-2", "2"}));

    // One request: the same as build_strict_args.
    EvalArgs y;
    ASSERT_TRUE(build_strict_batch_args({&r3}, x));
    ASSERT_TRUE(build_strict_args(r3, y));
    EXPECT_EQ(strings(x.keys()), strings(y.keys()));
    EXPECT_EQ(strings(x.args()), strings(y.args()));

    // Many distinct keys (past the linear search): each once, in order, references in order.
    std::vector<std::vector<StrictZone>> many;
    for (int i = 0; i < 100; i++) {
        many.push_back({sliding("k" + std::to_string(i % 40), 10, 1000)});
    }
    std::vector<const std::vector<StrictZone>*> ptrs;
    for (const auto& r : many) {
        ptrs.push_back(&r);
    }
    ASSERT_TRUE(build_strict_batch_args(ptrs, x));
    ASSERT_EQ(x.keys().size(), 40u);
    ASSERT_EQ(x.args().size(), 1u + 5u + 100u);
    EXPECT_EQ(x.args()[5], "40");
    for (int i = 0; i < 100; i++) {
        EXPECT_EQ(x.keys()[size_t(i % 40)], "k" + std::to_string(i % 40));
        EXPECT_EQ(x.args()[6 + size_t(i)], std::to_string(-(i % 40 + 1)));
    }

    // No request, a null request or one without zones: nothing.
    const std::vector<StrictZone> none;
    EXPECT_FALSE(build_strict_batch_args({}, x));
    EXPECT_TRUE(x.keys().empty());
    EXPECT_FALSE(build_strict_batch_args({&r1, nullptr}, x));
    EXPECT_TRUE(x.keys().empty());
    EXPECT_TRUE(x.args().empty());
    EXPECT_FALSE(build_strict_batch_args({&r1, &none}, x));
    EXPECT_TRUE(x.args().empty());
}

// In RESP the same strings as in views, each "$<len>\r\n<bytes>\r\n".
TEST(RedisScriptsUnit, StrictBatchArgumentsInResp) {
    const StrictZone a = sliding("a", 10, 1000), b = sliding(std::string("b\0\r\n", 4), 10, 1000),
                     g = gcra("g", 3, 1000, 0), ab = sliding("a", 20, 60000);
    const std::vector<StrictZone> r1 = {a, g}, r2 = {b}, r3 = {ab, a, g}, r4 = {b, b};
    std::vector<std::vector<StrictZone>> many;
    for (int i = 0; i < 100; i++) {
        many.push_back({sliding("k" + std::to_string(i % 40), 10, 1000)});
    }
    std::vector<const std::vector<StrictZone>*> all;
    for (const auto& r : many) {
        all.push_back(&r);
    }
    // More policies than the writer's memo of written policies holds, and one zone alone.
    std::vector<std::vector<StrictZone>> policies;
    for (int i = 0; i < 6; i++) {
        policies.push_back({sliding("p" + std::to_string(i), 10 + uint64_t(i), 1000 * (i + 1))});
    }
    std::vector<const std::vector<StrictZone>*> six;
    for (const auto& r : policies) {
        six.push_back(&r);
    }
    EvalResp x;
    for (const auto& batch : {std::vector<const std::vector<StrictZone>*>{&r1, &r2, &r1, &r3, &r4},
                              std::vector<const std::vector<StrictZone>*>{&r3}, all, six, six,
                              std::vector<const std::vector<StrictZone>*>{&r2},
                              std::vector<const std::vector<StrictZone>*>{&policies[5]}, six}) {
        EvalArgs y;
        ASSERT_TRUE(build_strict_batch_args(batch, x));
        ASSERT_TRUE(build_strict_batch_args(batch, y));
        std::vector<std::string_view> keys, args;
        x.views(keys, args);
        EXPECT_EQ(strings(keys), strings(y.keys()));
        EXPECT_EQ(strings(args), strings(y.args()));
        EXPECT_EQ(x.nkeys(), y.keys().size());
        EXPECT_EQ(x.nargs(), y.args().size());
        std::string resp;
        for (std::string_view v : y.args()) {
            resp += "$" + std::to_string(v.size()) + "\r\n" + std::string(v) + "\r\n";
        }
        EXPECT_EQ(x.args_resp(), resp);
    }
    ASSERT_TRUE(build_strict_batch_args({&r2}, x));
    EXPECT_EQ(x.keys_resp(), std::string_view("$4\r\nb\0\r\n\r\n", 10));
    EXPECT_EQ(x.args_resp(),
              "$0\r\n\r\n$1\r\n0\r\n$2\r\n10\r\n$4\r\n1000\r\n$1\r\n0\r\n$1\r\n1\r\n$2\r\n-1\r\n");
    EXPECT_FALSE(build_strict_batch_args({&r1, nullptr}, x));
    EXPECT_EQ(x.nkeys() + x.nargs(), 0u);
    EXPECT_TRUE(x.keys_resp().empty() && x.args_resp().empty());
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
    ASSERT_TRUE(build_flush_args(60000, "12-ab-7", 5000, entries, a));
    EXPECT_EQ(strings(a.keys()), (std::vector<std::string>{std::string("a\0b", 3), "c"}));
    EXPECT_EQ(strings(a.args()),
              (std::vector<std::string>{"60000", "12-ab-7", "5000", "1700000000000", "3", "0",
                                        "1700000060000", "4294967295", "2"}));
    ASSERT_TRUE(build_flush_args(0, "x", 0, entries.data(), 1, a));
    EXPECT_EQ(a.args()[0], "1");
    EXPECT_EQ(a.args()[2], "1");
    EXPECT_FALSE(build_flush_args(1000, "x", 1000, entries.data(), 0, a));
    EXPECT_FALSE(build_flush_args(1000, "", 1000, entries, a));
    EXPECT_FALSE(build_flush_args(1000, std::string(flush_id_max + 1, 'x'), 1000, entries, a));
    EXPECT_TRUE(build_flush_args(1000, std::string(flush_id_max, 'x'), 1000, entries, a));
}

TEST(RedisScriptsUnit, ParseStrictReply) {
    int64_t now = -1;
    std::vector<StrictDecision> d;
    ASSERT_TRUE(parse_strict_reply(array_of({1700000000123, 4, 7000, -250, 500}), 2, now, d));
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
    ASSERT_TRUE(parse_strict_reply(array_of({0, 0, 0, -1, 0}), 2, now, d));
    EXPECT_TRUE(d[0].allowed);  // 0 remaining, admitted
    EXPECT_EQ(d[0].remaining, 0u);
    EXPECT_FALSE(d[1].allowed);
    EXPECT_EQ(d[1].retry_after_ms, 1);
    ASSERT_TRUE(parse_strict_reply(array_of({5, LLONG_MAX, 0}), 1, now, d));
    EXPECT_EQ(d[0].remaining, uint64_t(LLONG_MAX));
    ASSERT_TRUE(parse_strict_reply(array_of({5, -LLONG_MAX, 0}), 1, now, d));
    EXPECT_EQ(d[0].retry_after_ms, LLONG_MAX);

    const Reply good = array_of({5, 4, 7000});
    ASSERT_TRUE(parse_strict_reply(good, 1, now, d));
    EXPECT_FALSE(parse_strict_reply(good, 2, now, d));  // length
    EXPECT_FALSE(parse_strict_reply(good, 0, now, d));
    EXPECT_FALSE(parse_strict_reply(array_of({5, 4}), 1, now, d));
    EXPECT_FALSE(parse_strict_reply(array_of({5, 4, 7000, 0}), 1, now, d));
    EXPECT_FALSE(parse_strict_reply(array_of({5, 1, 4, 7000, 0}), 1, now, d));  // the old shape
    EXPECT_FALSE(parse_strict_reply(array_of({-1, 4, 7000}), 1, now, d));       // negative clock
    EXPECT_FALSE(parse_strict_reply(array_of({5, 4, -1}), 1, now, d));          // negative reset
    EXPECT_FALSE(parse_strict_reply(array_of({5, LLONG_MIN, 0}), 1, now, d));   // no -LLONG_MIN

    Reply r = good;
    r.elements[1].type = Reply::Type::String;  // "4" as a bulk string is not an integer
    r.elements[1].str = "4";
    EXPECT_FALSE(parse_strict_reply(r, 1, now, d));
    r = good;
    r.elements[2] = Reply();  // nil
    EXPECT_FALSE(parse_strict_reply(r, 1, now, d));
    r = good;
    r.elements[1] = array_of({1});  // nested
    EXPECT_FALSE(parse_strict_reply(r, 1, now, d));
    r = good;
    r.elements[0].type = Reply::Type::Status;
    EXPECT_FALSE(parse_strict_reply(r, 1, now, d));

    Reply err;
    err.type = Reply::Type::Error;
    err.str = "ERR throttle strict: bad policy at argument 2";
    EXPECT_FALSE(parse_strict_reply(err, 1, now, d));
    EXPECT_FALSE(parse_strict_reply(Reply(), 1, now, d));
    EXPECT_FALSE(parse_strict_reply(integer(1), 1, now, d));
    Reply status;
    status.type = Reply::Type::Status;
    status.str = "OK";
    EXPECT_FALSE(parse_strict_reply(status, 1, now, d));
}

TEST(RedisScriptsUnit, ParseStrictBatchReply) {
    int64_t now = -1;
    std::vector<std::vector<StrictDecision>> d;
    // Three requests of 2, 1 and 1 zones.
    const Reply r = array_of({1700000000123, 4, 7000, -250, 500, 0, 100, -3, 0});
    ASSERT_TRUE(parse_strict_batch_reply(r, {2, 1, 1}, now, d));
    EXPECT_EQ(now, 1700000000123);
    ASSERT_EQ(d.size(), 3u);
    ASSERT_EQ(d[0].size(), 2u);
    ASSERT_EQ(d[1].size(), 1u);
    ASSERT_EQ(d[2].size(), 1u);
    EXPECT_TRUE(d[0][0].allowed);
    EXPECT_EQ(d[0][0].remaining, 4u);
    EXPECT_EQ(d[0][0].reset_ms, 7000);
    EXPECT_FALSE(d[0][1].allowed);
    EXPECT_EQ(d[0][1].retry_after_ms, 250);
    EXPECT_EQ(d[0][1].reset_ms, 500);
    EXPECT_TRUE(d[1][0].allowed);
    EXPECT_EQ(d[1][0].remaining, 0u);
    EXPECT_EQ(d[1][0].reset_ms, 100);
    EXPECT_FALSE(d[2][0].allowed);
    EXPECT_EQ(d[2][0].retry_after_ms, 3);
    EXPECT_EQ(d[2][0].reset_ms, 0);
    // The same reply read as other shapes of 4 zones.
    ASSERT_TRUE(parse_strict_batch_reply(r, {1, 1, 1, 1}, now, d));
    ASSERT_EQ(d.size(), 4u);
    EXPECT_FALSE(d[1][0].allowed);
    ASSERT_TRUE(parse_strict_batch_reply(r, {4}, now, d));
    ASSERT_EQ(d.size(), 1u);
    ASSERT_EQ(d[0].size(), 4u);
    // One request: the same as parse_strict_reply.
    std::vector<StrictDecision> one;
    int64_t now1 = -1;
    ASSERT_TRUE(parse_strict_reply(r, 4, now1, one));
    EXPECT_EQ(now1, now);
    for (size_t k = 0; k < 4; k++) {
        EXPECT_EQ(one[k].allowed, d[0][k].allowed);
        EXPECT_EQ(one[k].remaining, d[0][k].remaining);
        EXPECT_EQ(one[k].reset_ms, d[0][k].reset_ms);
        EXPECT_EQ(one[k].retry_after_ms, d[0][k].retry_after_ms);
    }

    // Counts that do not add up to the reply, an empty request, no request.
    EXPECT_FALSE(parse_strict_batch_reply(r, {2, 1}, now, d));
    EXPECT_FALSE(parse_strict_batch_reply(r, {2, 1, 1, 1}, now, d));
    EXPECT_FALSE(parse_strict_batch_reply(r, {2, 0, 1, 1}, now, d));
    EXPECT_FALSE(parse_strict_batch_reply(r, {}, now, d));
    EXPECT_FALSE(parse_strict_batch_reply(r, {SIZE_MAX, 5}, now, d));  // no overflow
    EXPECT_FALSE(parse_strict_batch_reply(r, {2, SIZE_MAX}, now, d));
    // A bad element anywhere.
    for (size_t i = 0; i < r.elements.size(); i++) {
        Reply bad = r;
        bad.elements[i] = Reply();
        EXPECT_FALSE(parse_strict_batch_reply(bad, {2, 1, 1}, now, d)) << i;
        bad.elements[i] = array_of({1});
        EXPECT_FALSE(parse_strict_batch_reply(bad, {2, 1, 1}, now, d)) << i;
    }
    Reply bad = r;
    bad.elements[7] = integer(LLONG_MIN);
    EXPECT_FALSE(parse_strict_batch_reply(bad, {2, 1, 1}, now, d));
    bad = r;
    bad.elements[6] = integer(-100);  // a negative reset
    EXPECT_FALSE(parse_strict_batch_reply(bad, {2, 1, 1}, now, d));
    Reply err;
    err.type = Reply::Type::Error;
    err.str = "ERR throttle strict: bad zone reference at argument 7";
    EXPECT_FALSE(parse_strict_batch_reply(err, {1}, now, d));
    EXPECT_FALSE(parse_strict_batch_reply(Reply(), {1}, now, d));
    EXPECT_FALSE(parse_strict_batch_reply(array_of({}), {1}, now, d));
}

TEST(RedisScriptsUnit, ParseFlushReply) {
    std::vector<std::pair<uint64_t, uint64_t>> t;
    bool applied = false;
    ASSERT_TRUE(parse_flush_reply(array_of({3, 1, 0, 0, 4294967296, 7, 1}), 3, t, &applied));
    EXPECT_TRUE(applied);
    ASSERT_TRUE(parse_flush_reply(array_of({3, 1, 0, 0, 4294967296, 7, 0}), 3, t, &applied));
    EXPECT_FALSE(applied);
    ASSERT_EQ(t.size(), 3u);
    EXPECT_EQ(t[0], std::make_pair(uint64_t(3), uint64_t(1)));
    EXPECT_EQ(t[1], std::make_pair(uint64_t(0), uint64_t(0)));
    EXPECT_EQ(t[2], std::make_pair(uint64_t(4294967296), uint64_t(7)));
    EXPECT_FALSE(parse_flush_reply(array_of({3, 1, 0, 0}), 2, t));  // no flag
    EXPECT_FALSE(parse_flush_reply(array_of({3, 1, 0, 0, 0, 1}), 2, t));
    EXPECT_FALSE(parse_flush_reply(array_of({3, 1, 2}), 1, t));  // flag not 0 or 1
    EXPECT_FALSE(parse_flush_reply(array_of({3, -1, 1}), 1, t));
    EXPECT_FALSE(parse_flush_reply(array_of({1}), 0, t));
    Reply r = array_of({3, 1, 1});
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
    EXPECT_EQ(&strict_batch_script(), &strict_script());  // one script for one and many
    EXPECT_EQ(&flush_script(), &flush_script());
    EXPECT_NE(strict_script().sha(), flush_script().sha());
    EXPECT_EQ(strict_script().source().compare(0, 6, "#!lua\n"), 0);
    EXPECT_EQ(flush_script().source().compare(0, 6, "#!lua\n"), 0);
    const std::string& src = strict_script().source();
    EXPECT_EQ(strict_script().sha(), core::hex(core::sha1(src.data(), src.size())));
}

// ---- against redis-server ----

struct StrictOut {
    bool ok = false;
    int64_t now = 0;
    std::vector<StrictDecision> d;
    Reply reply;
};

struct StrictBatchOut {
    bool ok = false;
    int64_t now = 0;
    std::vector<std::vector<StrictDecision>> d;
    Reply reply;
};

class RedisScriptsTest : public ::testing::Test {
   protected:
    void SetUp() override {
        if (!have_redis_server()) {
            GTEST_SKIP() << "redis-server not found (set THROTTLE_REDIS_SERVER)";
        }
        server = std::make_unique<RedisServer>(server_args(), server_port());
        ASSERT_TRUE(server->start());
        ctl = std::make_unique<Control>(server->port());
        ASSERT_TRUE(ctl->ok());
        client = make_client();
    }

    virtual std::vector<std::string> server_args() { return {}; }
    uint64_t flush_ids = 0;                       // flush(): each call a new batch id
    virtual uint16_t server_port() { return 0; }  // 0: any free port
    virtual bool cluster_node_ok() { return false; }

    std::unique_ptr<Client> make_client() {
        Config c;
        c.address = server->address();
        c.command_timeout_ms = 5000;
        c.failure_threshold = 0;  // malformed calls are error replies, which the breaker counts
        c.cluster_node_ok = cluster_node_ok();
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
            a = with_clock(a, now_override);
        }
        StrictOut out;
        out.reply = eval(*client, strict_script(), a).reply;
        out.ok = parse_strict_reply(out.reply, zones.size(), out.now, out.d);
        EXPECT_TRUE(out.ok) << to_string(out.reply.type) << " " << out.reply.str;
        return out;
    }

    // One strict call deciding a batch of requests; now_override >= 0 replaces Redis' clock.
    StrictBatchOut strict_batch(const std::vector<std::vector<StrictZone>>& requests,
                                int64_t now_override = -1) {
        std::vector<const std::vector<StrictZone>*> ptrs;
        std::vector<size_t> counts;
        for (const auto& r : requests) {
            ptrs.push_back(&r);
            counts.push_back(r.size());
        }
        EvalArgs a;
        EXPECT_TRUE(build_strict_batch_args(ptrs, a));
        if (now_override >= 0) {
            a = with_clock(a, now_override);
        }
        StrictBatchOut out;
        out.reply = eval(*client, strict_batch_script(), a).reply;
        out.ok = parse_strict_batch_reply(out.reply, counts, out.now, out.d);
        EXPECT_TRUE(out.ok) << to_string(out.reply.type) << " " << out.reply.str;
        return out;
    }

    // One flush call; the totals, empty when the reply did not parse.
    std::vector<std::pair<uint64_t, uint64_t>> flush(Client& c, int64_t period_ms,
                                                     const std::vector<FlushEntry>& entries) {
        EvalArgs a;
        EXPECT_TRUE(
            build_flush_args(period_ms, "test-" + std::to_string(++flush_ids), 60000, entries, a));
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
        // t: spend what remains, and the 10 of this window admit the next P / 10 into the
        // next one (the Retry-After of those refused).
        EXPECT_EQ(o.d[0].reset_ms, (day_ms - e) + day_ms / 10);
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
        EXPECT_EQ(o.d[0].reset_ms, day_ms / 3 - 1000);  // rejected: t is Retry-After
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
        EXPECT_EQ(d.reset_ms, 1000);  // the next token, once the rest are spent
    }
    d = at3(t0);
    EXPECT_FALSE(d.allowed);
    EXPECT_EQ(d.retry_after_ms, 1000);
    EXPECT_EQ(d.reset_ms, 1000);
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
        {{"k"}, {"", "0", "10", "1000", "0", "1"}},             // no request
        {{"k"}, {"", "0", "10", "1000", "0"}},                  // 4 of 5
        {{"k"}, {"0", "10", "1000", "0", "-1"}},                // no clock (the old shape)
        {{"k"}, {"", "2", "10", "1000", "0", "1", "-1"}},       // algorithm
        {{"k"}, {"", "0", "-1", "1000", "0", "1", "-1"}},       // negative
        {{"k"}, {"", "0", "ten", "1000", "0", "1", "-1"}},      // not a number
        {{"k"}, {"", "0", "1.5", "1000", "0", "1", "-1"}},      // not an integer
        {{"k"}, {"", "0", "10", "1000", "0", "0", "-1"}},       // a policy of no key
        {{"k"}, {"", "0", "10", "1000", "0", "2", "-1"}},       // more keys than KEYS
        {{"k", "j"}, {"", "0", "10", "1000", "0", "1", "-1"}},  // fewer
        {{"k"}, {"x", "0", "10", "1000", "0", "1", "-1"}},      // clock
        {{"k"}, {"-5", "0", "10", "1000", "0", "1", "-1"}},     // clock
        {{"k"}, {"", "0", "10", "1000", "0", "1", "1"}},        // the first zone not negated
        {{"k"}, {"", "0", "10", "1000", "0", "1", "-1", "2"}},  // no such key
        {{"k"}, {"", "0", "10", "1000", "0", "1", "-2"}},
        {{"k"}, {"", "0", "10", "1000", "0", "1", "-1", "0"}},
        {{"k"}, {"", "0", "10", "1000", "0", "1", "-1", "1.5"}},
        {{"k"}, {"", "0", "10", "1000", "0", "1", "-1", "nan"}},
        {{"k"}, {"", "0", "10", "1000", "0", "1", "-1", "x"}},
        {{}, {}},  // no key
    };
    for (auto& [k, a] : bad) {
        Result r = evalsha(*client, strict_script(), k, a);
        EXPECT_TRUE(r.reply.is_error("ERR")) << r.reply.str;
        int64_t now;
        std::vector<StrictDecision> d;
        EXPECT_FALSE(parse_strict_reply(r.reply, std::max<size_t>(k.size(), 1), now, d));
    }
    std::vector<std::pair<std::vector<std::string_view>, std::vector<std::string_view>>> badf = {
        {{"k"}, {"1000", "id", "1000", "5000", "1"}},
        {{"k"}, {"x", "id", "1000", "5000", "1", "0"}},
        {{"k"}, {"1000", "id", "1000", "5000", "-1", "0"}},
        {{"k"}, {"1000", "", "1000", "5000", "1", "0"}},
        {{"k"}, {"1000", "id", "0", "5000", "1", "0"}},
        {{"k"}, {"1000", "id", "x", "5000", "1", "0"}},
        {{"k", "k2"}, {"1000", "id", "1000", "5000", "1", "0", "5000", "x", "0"}},
        {{"k"}, {"1000", "5000", "1", "0"}},  // the layout before batch ids
        {{}, {"1000", "id", "1000"}}};
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
                         return with_clock(a, t);
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
    build_flush_args(1000, "bad", 1000, {e}, a);
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
    EXPECT_EQ(ctl->run({"DBSIZE"}), "4");  // and the two batch ids
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

// A delta held through a long outage, for windows whose expiry time has passed: the windows
// are deleted at once by their PEXPIREAT and the totals read 0 (the script answers from
// INCRBY, so this is its clock's comparison); a window still alive answers its count.
TEST_F(RedisScriptsTest, FlushOfExpiredWindowsReadsZero) {
    const int64_t P = 60000;
    const int64_t w = window_of(redis_now_ms(), P) - 4 * P;  // cur and prev both expired
    FlushEntry old;
    old.base = base_key("t:", "z", "old");
    old.window = w;
    old.delta_cur = 5;
    old.delta_prev = 2;
    FlushEntry live;
    live.base = base_key("t:", "z", "live");
    live.window = w + 4 * P;  // the current window: cur and prev alive
    live.delta_cur = 3;
    live.delta_prev = 1;
    auto t = flush(*client, P, {old, live});
    ASSERT_EQ(t.size(), 2u);
    EXPECT_EQ(t[0], std::make_pair(uint64_t(0), uint64_t(0)));
    EXPECT_EQ(t[1], std::make_pair(uint64_t(3), uint64_t(1)));
    EXPECT_EQ(ctl->run({"EXISTS", window_key(old.base, w)}), "0");
    EXPECT_EQ(ctl->run({"EXISTS", window_key(old.base, w - P)}), "0");
    EXPECT_EQ(get(window_key(live.base, w + 4 * P)), "3");
    EXPECT_EQ(get(window_key(live.base, w + 3 * P)), "1");
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
    EXPECT_EQ(ctl->run({"DBSIZE"}), "4");  // nothing created for zero deltas (but 2 batch ids)
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
    EXPECT_EQ(ctl->run({"DBSIZE"}), std::to_string(batch.size() + prev_keys + 2));  // + ids
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
    EXPECT_EQ(ctl->run({"DBSIZE"}), "4");  // and three batch ids
}

// A batch sent again with its id (its reply was late) applies nothing: it reads the totals,
// which include what other batches added meanwhile, and says so. The id is remembered for its
// ttl, in the slot of the batch's first key; once it is gone, the id is new again.
TEST_F(RedisScriptsTest, FlushBatchSentTwiceCountsOnce) {
    const int64_t P = hour_ms;
    const int64_t w = window_of(redis_now_ms(), P);
    FlushEntry a, b;
    a.base = base_key("t:", "z", "a");
    a.window = w;
    a.delta_cur = 3;
    a.delta_prev = 1;
    b.base = base_key("t:", "z", "b");
    b.window = w;
    b.delta_cur = 2;
    auto send = [&](const std::string& id, uint32_t ttl, const std::vector<FlushEntry>& batch,
                    bool& applied) {
        EvalArgs args;
        EXPECT_TRUE(build_flush_args(P, id, ttl, batch, args));
        Reply r = eval(*client, flush_script(), args).reply;
        std::vector<std::pair<uint64_t, uint64_t>> totals;
        EXPECT_TRUE(parse_flush_reply(r, batch.size(), totals, &applied))
            << to_string(r.type) << " " << r.str;
        return totals;
    };
    bool applied = false;
    auto t = send("1-2-3", 60000, {a, b}, applied);
    EXPECT_TRUE(applied);
    ASSERT_EQ(t.size(), 2u);
    EXPECT_EQ(t[0], std::make_pair(uint64_t(3), uint64_t(1)));
    EXPECT_EQ(t[1], std::make_pair(uint64_t(2), uint64_t(0)));
    const std::string marker = a.base + ":flush:1-2-3";
    EXPECT_EQ(get(marker), "1");
    long long pttl = number(ctl->run({"PTTL", marker}));
    EXPECT_GT(pttl, 0);
    EXPECT_LE(pttl, 60000);

    FlushEntry other = a;  // another host's batch, another id
    other.delta_cur = 10;
    other.delta_prev = 0;
    send("9-9-9", 60000, {other}, applied);
    EXPECT_TRUE(applied);
    for (int i = 0; i < 3; i++) {
        t = send("1-2-3", 60000, {a, b}, applied);
        EXPECT_FALSE(applied);
        ASSERT_EQ(t.size(), 2u);
        EXPECT_EQ(t[0], std::make_pair(uint64_t(13), uint64_t(1)));
        EXPECT_EQ(t[1], std::make_pair(uint64_t(2), uint64_t(0)));
    }
    EXPECT_EQ(get(window_key(a.base, w)), "13");
    EXPECT_EQ(get(window_key(a.base, w - P)), "1");
    EXPECT_EQ(get(window_key(b.base, w)), "2");

    // A short ttl: gone, the id applies again (which is why a sender stops resending in time).
    send("short", 1, {b}, applied);
    EXPECT_TRUE(applied);
    ASSERT_TRUE(ev.run_until(
        [&] {
            return ctl->run({"EXISTS", b.base + ":flush:short"}) == "0";
        },
        5000));
    send("short", 1, {b}, applied);
    EXPECT_TRUE(applied);
    EXPECT_EQ(get(window_key(b.base, w)), "6");
}

// ---- batches: one call decides many requests, in order ----

// Calls of each command Redis ran since the last CONFIG RESETSTAT ("evalsha", "mget", ...).
long long command_calls(Control& ctl, const std::string& name) {
    const std::string text = ctl.run({"INFO", "commandstats"});
    const std::string key = "cmdstat_" + name + ":calls=";
    const size_t at = text.find(key);
    return at == std::string::npos ? 0 : std::atoll(text.c_str() + at + key.size());
}

// 3L requests on one key with limit L in one call: exactly the first L pass, each seeing the
// ones before it; the key holds L, written once, with its expiry; no TIME with a fixed clock.
TEST_F(RedisScriptsTest, StrictBatchAdmitsExactlyTheLimitInBatch) {
    const uint64_t L = 10;
    const int64_t t = 1700000000000 + 12345;
    const int64_t w = window_of(t, day_ms), e = t - w;
    const std::string base = base_key("throttle:", "login", "1.2.3.4");
    const std::vector<std::vector<StrictZone>> batch(3 * L, {sliding(base, L, day_ms)});
    ctl->run({"CONFIG", "RESETSTAT"});
    StrictBatchOut o = strict_batch(batch, t);
    ASSERT_TRUE(o.ok);
    EXPECT_EQ(command_calls(*ctl, "evalsha"), 1);
    EXPECT_EQ(command_calls(*ctl, "time"), 0);  // the fixed clock
    EXPECT_EQ(command_calls(*ctl, "get"), 2);   // both windows, once (one key: GET, not MGET)
    EXPECT_EQ(command_calls(*ctl, "set"), 1);   // the window created: count and expiry at once
    EXPECT_EQ(command_calls(*ctl, "mget") + command_calls(*ctl, "exists") +
                  command_calls(*ctl, "incr") + command_calls(*ctl, "incrby") +
                  command_calls(*ctl, "pexpire"),
              0);
    EXPECT_EQ(o.now, t);
    ASSERT_EQ(o.d.size(), 3 * L);
    for (uint64_t i = 0; i < 3 * L; i++) {
        ASSERT_EQ(o.d[i].size(), 1u);
        const StrictDecision& d = o.d[i][0];
        EXPECT_EQ(d.allowed, i < L) << i;
        EXPECT_EQ(d.reset_ms, (day_ms - e) + day_ms / 10) << i;
        if (i < L) {
            EXPECT_EQ(d.remaining, L - 1 - i);
            EXPECT_EQ(d.retry_after_ms, 0);
        } else {
            EXPECT_EQ(d.remaining, 0u);
            EXPECT_EQ(d.retry_after_ms, (day_ms - e) + day_ms / 10) << i;
        }
    }
    EXPECT_EQ(get(window_key(base, w)), std::to_string(L));
    const long long pttl = number(ctl->run({"PTTL", window_key(base, w)}));
    EXPECT_GT(pttl, 2 * day_ms);
    EXPECT_LE(pttl, 2 * day_ms + 1000);
    EXPECT_EQ(ctl->run({"DBSIZE"}), "1");
}

// Batches of 7 with Redis' clock, limit 10: 7, then 3 of 7, then none; TIME once per call.
TEST_F(RedisScriptsTest, StrictBatchAdmitsExactlyTheLimitAcrossBatches) {
    const uint64_t L = 10;
    const std::string base = base_key("t:", "z", "across");
    const std::vector<std::vector<StrictZone>> batch(7, {sliding(base, L, day_ms)});
    ctl->run({"CONFIG", "RESETSTAT"});
    std::vector<StrictBatchOut> outs;
    for (int b = 0; b < 3; b++) {
        outs.push_back(strict_batch(batch));
        ASSERT_TRUE(outs.back().ok);
    }
    const int64_t w = window_of(outs[0].now, day_ms);
    if (window_of(outs[2].now, day_ms) != w) {
        GTEST_SKIP() << "crossed a window edge (UTC midnight) during the test";
    }
    EXPECT_LT(std::llabs(outs[0].now - wall_ms()), 5000);
    uint64_t n = 0;
    for (const StrictBatchOut& o : outs) {
        for (const auto& d : o.d) {
            EXPECT_EQ(d[0].allowed, n < L) << n;
            EXPECT_EQ(d[0].remaining, n < L ? L - 1 - n : 0) << n;
            n++;
        }
    }
    EXPECT_EQ(get(window_key(base, w)), std::to_string(L));
    EXPECT_EQ(command_calls(*ctl, "evalsha"), 3);
    EXPECT_EQ(command_calls(*ctl, "time"), 3);    // once per call, not per request
    EXPECT_EQ(command_calls(*ctl, "set"), 1);     // the first batch created the window
    EXPECT_EQ(command_calls(*ctl, "incrby"), 1);  // the second added its 3 at once
    EXPECT_EQ(command_calls(*ctl, "incr"), 0);    // the third counted nothing
}

// Inside a batch, each request is all-or-nothing over its zones: request 2, refused by B, is
// counted in A neither, and request 3 sees A as request 1 left it.
TEST_F(RedisScriptsTest, StrictBatchAllOrNothingPerRequest) {
    const int64_t t = 1700000000000 + 500;
    const int64_t w = window_of(t, day_ms);
    const StrictZone A = sliding(base_key("t:", "a", "user"), 5, day_ms);
    const StrictZone B = sliding(base_key("t:", "b", "user"), 1, day_ms);
    const StrictZone G = gcra(base_key("t:", "g", "user"), 1, 1000, 1);
    ctl->run({"CONFIG", "RESETSTAT"});
    StrictBatchOut o = strict_batch({{A, B}, {A, B}, {A}, {A}, {A, G}, {G, A}, {A}, {A}}, t);
    ASSERT_TRUE(o.ok);
    ASSERT_EQ(o.d.size(), 8u);
    // One MGET of the 5 names (G's twice), one EXISTS of the missing ones, one SET per key.
    EXPECT_EQ(command_calls(*ctl, "mget"), 1);
    EXPECT_EQ(command_calls(*ctl, "exists"), 1);
    EXPECT_EQ(command_calls(*ctl, "set"), 3);
    EXPECT_EQ(command_calls(*ctl, "get") + command_calls(*ctl, "incr") +
                  command_calls(*ctl, "incrby") + command_calls(*ctl, "time"),
              0);
    auto admitted = [](const std::vector<StrictDecision>& r) {
        bool all = true;
        for (const StrictDecision& d : r) {
            all = all && d.allowed;
        }
        return all;
    };
    // 1: counted in A and B.
    EXPECT_TRUE(admitted(o.d[0]));
    EXPECT_EQ(o.d[0][0].remaining, 4u);
    EXPECT_EQ(o.d[0][1].remaining, 0u);
    // 2: B refuses; A would admit (remaining as if counted), counts nothing.
    EXPECT_TRUE(o.d[1][0].allowed);
    EXPECT_EQ(o.d[1][0].remaining, 3u);
    EXPECT_FALSE(o.d[1][1].allowed);
    EXPECT_GT(o.d[1][1].retry_after_ms, 0);
    // 3 and 4 see A at 1, then 2: 3 does not see 2.
    EXPECT_TRUE(admitted(o.d[2]));
    EXPECT_EQ(o.d[2][0].remaining, 3u);
    EXPECT_TRUE(admitted(o.d[3]));
    EXPECT_EQ(o.d[3][0].remaining, 2u);
    // 5: A (at 3) and G (its only token). 6: G refuses, A at 4 not counted. 7: A's last.
    // 8: refused.
    EXPECT_TRUE(admitted(o.d[4]));
    EXPECT_EQ(o.d[4][0].remaining, 1u);
    EXPECT_EQ(o.d[4][1].reset_ms, 1000);
    EXPECT_FALSE(o.d[5][0].allowed);
    EXPECT_EQ(o.d[5][0].retry_after_ms, 1000);
    EXPECT_EQ(o.d[5][0].reset_ms, 1000);
    EXPECT_TRUE(o.d[5][1].allowed);
    EXPECT_EQ(o.d[5][1].remaining, 0u);
    EXPECT_TRUE(admitted(o.d[6]));
    EXPECT_EQ(o.d[6][0].remaining, 0u);
    EXPECT_FALSE(o.d[7][0].allowed);
    EXPECT_EQ(get(window_key(A.base, w)), "5");
    EXPECT_EQ(get(window_key(B.base, w)), "1");
    EXPECT_EQ(number(get(G.base + ":gcra")), t * 1000 + 1000000);
    EXPECT_EQ(ctl->run({"DBSIZE"}), "3");
}

// Expiry as one INCR per request would leave it: a window created by the batch gets 2P + 1000,
// one that existed keeps its own, one holding 0 gets a fresh one (INCR returned 1); GCRA's
// follows its last arrival time.
TEST_F(RedisScriptsTest, StrictBatchExpiryRules) {
    const int64_t P = hour_ms;
    const int64_t t = redis_now_ms();
    const int64_t w = window_of(t, P);
    const StrictZone fresh = sliding(base_key("t:", "z", "fresh"), 100, P);
    const StrictZone old = sliding(base_key("t:", "z", "old"), 100, P);
    const StrictZone zero = sliding(base_key("t:", "z", "zero"), 100, P);
    const StrictZone g = gcra(base_key("t:", "z", "g"), 10, 1000, 5);  // T = 100 ms
    ctl->run({"SET", window_key(old.base, w), "7"});
    ctl->run({"PEXPIREAT", window_key(old.base, w), std::to_string(w + 5 * P)});
    ctl->run({"SET", window_key(zero.base, w), "0"});
    ctl->run({"PEXPIREAT", window_key(zero.base, w), std::to_string(w + 6 * P)});
    ctl->run({"SET", window_key(zero.base, w - P), "0"});  // read, never written
    ctl->run({"PEXPIREAT", window_key(zero.base, w - P), std::to_string(w + 7 * P)});
    std::vector<std::vector<StrictZone>> batch;
    for (int i = 0; i < 3; i++) {
        batch.push_back({fresh, old, zero, g});
    }
    StrictBatchOut o = strict_batch(batch, t);
    ASSERT_TRUE(o.ok);
    for (const auto& r : o.d) {
        for (const StrictDecision& d : r) {
            EXPECT_TRUE(d.allowed);
        }
    }
    EXPECT_EQ(get(window_key(fresh.base, w)), "3");
    EXPECT_EQ(get(window_key(old.base, w)), "10");
    EXPECT_EQ(get(window_key(zero.base, w)), "3");
    EXPECT_EQ(get(g.base + ":gcra"), std::to_string(t * 1000 + 300000));
    const long long now = redis_now_ms();
    const long long fresh_at = number(ctl->run({"PEXPIRETIME", window_key(fresh.base, w)}));
    EXPECT_GE(fresh_at, t + 2 * P + 1000);  // set at Redis' time, which is >= t
    EXPECT_LE(fresh_at, now + 2 * P + 1000);
    EXPECT_EQ(number(ctl->run({"PEXPIRETIME", window_key(old.base, w)})), w + 5 * P);
    const long long zero_at = number(ctl->run({"PEXPIRETIME", window_key(zero.base, w)}));
    EXPECT_GE(zero_at, t + 2 * P + 1000);
    EXPECT_LE(zero_at, now + 2 * P + 1000);
    EXPECT_EQ(number(ctl->run({"PEXPIRETIME", window_key(zero.base, w - P)})), w + 7 * P);
    // GCRA: ceil((TAT - now) / 1000) + 1000 ms from the call, for the last TAT (300 ms ahead).
    const long long g_at = number(ctl->run({"PEXPIRETIME", g.base + ":gcra"}));
    EXPECT_GE(g_at, t + 300 + 1000);
    EXPECT_LE(g_at, now + 300 + 1000);
}

// A request naming the same sliding zone twice counts twice, as one call per request did.
TEST_F(RedisScriptsTest, StrictBatchSameZoneTwiceInARequest) {
    const int64_t t = 1700000000000;
    const StrictZone z = sliding(base_key("t:", "z", "twice"), 5, day_ms);
    StrictBatchOut o = strict_batch({{z, z}, {z}, {z, z}, {z, z}}, t);
    ASSERT_TRUE(o.ok);
    EXPECT_TRUE(o.d[0][0].allowed && o.d[0][1].allowed);
    EXPECT_EQ(o.d[0][1].remaining, 4u);  // both decided before either is counted
    EXPECT_EQ(o.d[1][0].remaining, 2u);
    EXPECT_TRUE(o.d[2][0].allowed && o.d[2][1].allowed);
    EXPECT_EQ(o.d[2][0].remaining, 1u);
    EXPECT_FALSE(o.d[3][0].allowed);
    EXPECT_EQ(get(window_key(z.base, window_of(t, day_ms))), "5");
}

// A foreign value anywhere in the batch is an error reply, and the batch writes nothing.
TEST_F(RedisScriptsTest, StrictBatchForeignValueWritesNothing) {
    const int64_t t = 1700000000000;
    const int64_t w = window_of(t, 1000);
    const StrictZone a = sliding("a", 5, 1000), b = sliding("b", 5, 1000),
                     g = gcra("g", 5, 1000, 0);
    for (int kind = 0; kind < 3; kind++) {
        ctl->run({"FLUSHALL"});
        if (kind == 0) {
            ctl->run({"LPUSH", window_key("b", w - 1000), "1"});  // b's previous window: a list
        } else if (kind == 1) {
            ctl->run({"SET", window_key("b", w), "1.5"});
        } else {
            ctl->run({"HSET", "g:gcra", "f", "1"});
        }
        EvalArgs args;
        const std::vector<StrictZone> r1 = {a}, r2 = {b, g}, r3 = {a};
        ASSERT_TRUE(build_strict_batch_args({&r1, &r2, &r3}, args));
        Result r = eval(*client, strict_script(), with_clock(args, t));
        EXPECT_TRUE(r.reply.is_error("ERR")) << kind << " " << r.reply.str;
        EXPECT_EQ(ctl->run({"DBSIZE"}), "1") << kind;
        EXPECT_EQ(ctl->run({"EXISTS", window_key("a", w)}), "0") << kind;
    }
}

// The same random batches decided in one call and one call per request (the same clock, the
// same starting state, under two prefixes): the same decisions, the same keys, values and
// expiry times afterwards.
TEST_F(RedisScriptsTest, StrictBatchEqualsOneCallPerRequest) {
    std::mt19937_64 rng(7);
    auto pick = [&](uint64_t n) {
        return size_t(std::uniform_int_distribution<uint64_t>(0, n - 1)(rng));
    };
    const int64_t t0 = redis_now_ms();
    size_t admitted = 0, refused = 0, partly = 0;  // partly: refused, though some zone admitted
    for (int round = 0; round < 20; round++) {
        ctl->run({"FLUSHALL"});
        const int64_t t = t0 + round * 777;
        // Zones over 4 keys; two sliding periods that can share a window key name.
        std::vector<std::function<StrictZone(const std::string&)>> kinds = {
            [](const std::string& p) { return sliding(base_key(p, "s", "k1"), 3, 1000); },
            [](const std::string& p) { return sliding(base_key(p, "s", "k2"), 4, 1000); },
            [](const std::string& p) { return sliding(base_key(p, "s", "k1"), 6, 60000); },
            [](const std::string& p) { return gcra(base_key(p, "g", "k1"), 10, 1000, 3); },
            [](const std::string& p) { return gcra(base_key(p, "g", "k2"), 2, 1000, 0); },
            [](const std::string& p) { return sliding(base_key(p, "s", "k3"), 100, hour_ms); },
        };
        std::vector<std::vector<size_t>> shape(1 + pick(30));
        for (auto& r : shape) {
            const size_t n = 1 + pick(3);
            for (size_t k = 0; k < n; k++) {
                r.push_back(pick(kinds.size()));
            }
        }
        auto requests = [&](const std::string& prefix) {
            std::vector<std::vector<StrictZone>> rs;
            for (const auto& r : shape) {
                rs.emplace_back();
                for (size_t k : r) {
                    rs.back().push_back(kinds[k](prefix));
                }
            }
            return rs;
        };
        // A starting state: some counts in both windows, with expiry marks.
        for (const std::string prefix : {"b:", "s:"}) {
            int i = 0;
            for (const char* key : {"k1", "k2", "k3"}) {
                for (int64_t P : {int64_t(1000), int64_t(60000), hour_ms}) {
                    for (int64_t back : {int64_t(0), P}) {
                        if ((round + i++) % 3 == 0) {
                            const std::string k =
                                window_key(base_key(prefix, "s", key), window_of(t, P) - back);
                            ctl->run({"SET", k, std::to_string(i % 4)});
                            ctl->run({"PEXPIREAT", k, std::to_string(t0 + 100000 + i)});
                        }
                    }
                }
            }
        }
        const auto batch = requests("b:"), single = requests("s:");
        StrictBatchOut b = strict_batch(batch, t);
        ASSERT_TRUE(b.ok);
        for (size_t i = 0; i < single.size(); i++) {
            StrictOut o = strict(single[i], t);
            ASSERT_TRUE(o.ok);
            size_t yes = 0;
            for (const StrictDecision& d : o.d) {
                yes += d.allowed;
            }
            (yes == o.d.size() ? admitted : refused)++;
            partly += yes > 0 && yes < o.d.size();
            for (size_t k = 0; k < single[i].size(); k++) {
                const StrictDecision &x = b.d[i][k], &y = o.d[k];
                EXPECT_EQ(x.allowed, y.allowed) << round << " " << i << " " << k;
                EXPECT_EQ(x.remaining, y.remaining) << round << " " << i << " " << k;
                EXPECT_EQ(x.reset_ms, y.reset_ms) << round << " " << i << " " << k;
                EXPECT_EQ(x.retry_after_ms, y.retry_after_ms) << round << " " << i << " " << k;
            }
        }
        // Every key: same value, expiry times within the few ms the single calls took.
        std::string keys = ctl->run({"KEYS", "b:*"});
        std::vector<std::string> names;
        std::stringstream ss(keys.substr(1, keys.size() - 2));
        for (std::string k; std::getline(ss, k, ',');) {
            names.push_back(k);
        }
        EXPECT_EQ(ctl->run({"DBSIZE"}), std::to_string(2 * names.size()));
        for (const std::string& k : names) {
            const std::string other = "s:" + k.substr(2);
            EXPECT_EQ(get(k), get(other)) << k;
            const long long x = number(ctl->run({"PEXPIRETIME", k}));
            const long long y = number(ctl->run({"PEXPIRETIME", other}));
            EXPECT_LE(std::llabs(x - y), 1000) << k << " " << x << " " << y;
        }
        ASSERT_FALSE(HasFailure()) << "round " << round;
    }
    EXPECT_GT(admitted, 20u);
    EXPECT_GT(refused, 20u);
    EXPECT_GT(partly, 5u);
    std::printf("%zu requests admitted, %zu refused (%zu of them by some zones only)\n", admitted,
                refused, partly);
}

// ---- a one-node Redis Cluster: every key a script touches is in its KEYS' slot ----

class RedisScriptsClusterTest : public RedisScriptsTest {
   protected:
    std::vector<std::string> server_args() override {
        return {"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"};
    }
    uint16_t server_port() override { return free_cluster_port(); }
    bool cluster_node_ok() override { return true; }  // the scripts' slots are under test
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
        // A batch over one key's windows, its arrival time and a second period (MGET, EXISTS).
        const StrictZone sw = sliding(base, 3, 60000), g = gcra(base, 3, 60000, 0),
                         hour = sliding(base, 5, hour_ms);
        StrictBatchOut b = strict_batch({{sw, g}, {hour}, {g, hour}, {sw}});
        EXPECT_TRUE(b.ok);
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
            a = with_clock(a, call.now);
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

// The same cross-check over batches: each call decides up to 40 requests over a pool of up to
// 8 zones (random policies and states as above, all at the call's clock), each request 1 to 3
// of them. core decides the requests one after the other, recording the admitted ones in every
// zone: the script must give the same decisions and leave the same counts.
struct BatchCall {
    size_t index = 0;
    int64_t now = 0;
    std::vector<CheckZone> pool;
    std::vector<std::vector<size_t>> requests;  // indices into pool
    Outcome outcome;
    bool parsed = false;
};

TEST_F(RedisScriptsTest, StrictBatchDecisionsMatchCore) {
    const uint64_t seed = 20261126;
    CaseMaker make(seed);
    const size_t calls = 400, group = 50;
    size_t compared = 0, admitted = 0, refused = 0, flips = 0;
    std::deque<BatchCall> todo;
    std::deque<Outcome> setup, after;
    for (size_t first = 0; first < calls; first += group) {
        todo.clear();
        setup.clear();
        after.clear();
        for (size_t c = first; c < first + group; c++) {
            BatchCall& call = todo.emplace_back();
            call.index = c;
            const size_t np = make.uniform(1, 8);
            for (size_t j = 0; j < np; j++) {
                std::string key("b\0", 2);
                key += std::to_string(c) + "." + std::to_string(j);
                const std::string base = base_key("x:", "z", key);
                if (j == 0 || make.chance(0.5)) {
                    int64_t now = 0;
                    CheckZone z = make.sliding_zone(base, now);
                    if (call.now == 0) {
                        call.now = now;
                    } else {
                        const int64_t P = z.policy.rate.period_ms;
                        z.state.stamp = window_of(call.now, P) - (now - z.state.stamp) / P * P;
                    }
                    call.pool.push_back(std::move(z));
                } else {
                    call.pool.push_back(make.gcra_zone(base, call.now));
                }
            }
            for (CheckZone& z : call.pool) {
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
            const size_t m = make.uniform(1, 40);
            std::vector<std::vector<StrictZone>> requests;
            for (size_t i = 0; i < m; i++) {
                std::vector<size_t> order(np);
                for (size_t j = 0; j < np; j++) {
                    order[j] = j;
                }
                for (size_t j = np; j > 1; j--) {
                    std::swap(order[j - 1], order[make.uniform(0, j - 1)]);
                }
                order.resize(make.uniform(1, std::min<size_t>(3, np)));
                requests.emplace_back();
                for (size_t j : order) {
                    requests.back().push_back(call.pool[j].zone);
                }
                call.requests.push_back(std::move(order));
            }
            std::vector<const std::vector<StrictZone>*> ptrs;
            for (const auto& r : requests) {
                ptrs.push_back(&r);
            }
            EvalArgs a;
            ASSERT_TRUE(build_strict_batch_args(ptrs, a));
            a = with_clock(a, call.now);
            client->evalsha(strict_batch_script(), a.keys(), a.args(), track(call.outcome));
        }
        ASSERT_TRUE(wait_all(*client, [&] { return todo.back().outcome.calls > 0; }));

        for (BatchCall& call : todo) {
            ASSERT_EQ(call.outcome.calls, 1);
            ASSERT_TRUE(call.outcome.result.ok());
            std::vector<size_t> counts;
            for (const auto& r : call.requests) {
                counts.push_back(r.size());
            }
            int64_t now = 0;
            std::vector<std::vector<StrictDecision>> got;
            if (!parse_strict_batch_reply(call.outcome.result.reply, counts, now, got)) {
                ADD_FAILURE() << "seed " << seed << " call " << call.index << ": reply "
                              << to_string(call.outcome.result.reply.type) << " "
                              << call.outcome.result.reply.str;
                continue;
            }
            call.parsed = true;
            EXPECT_EQ(now, call.now);
            // core, one request after the other.
            std::vector<core::State> states;
            for (const CheckZone& z : call.pool) {
                states.push_back(z.state);
            }
            bool last = true;
            for (size_t i = 0; i < call.requests.size(); i++) {
                bool all = true;
                for (size_t k = 0; k < call.requests[i].size(); k++) {
                    const size_t j = call.requests[i][k];
                    const CheckZone& z = call.pool[j];
                    const core::Decision want = core::evaluate(z.policy, states[j], call.now);
                    const StrictDecision& d = got[i][k];
                    std::ostringstream what;
                    what << "seed " << seed << " call " << call.index << " request " << i
                         << " zone " << j << ": algorithm " << int(z.zone.algorithm) << " L "
                         << z.zone.limit << " P " << z.zone.period_ms << " burst " << z.zone.burst
                         << " stamp " << states[j].stamp << " cur " << states[j].cur << " prev "
                         << states[j].prev << " now " << call.now;
                    EXPECT_EQ(d.allowed, want.allowed) << what.str();
                    EXPECT_EQ(d.remaining, want.remaining) << what.str();
                    EXPECT_EQ(d.reset_ms, want.reset_ms) << what.str();
                    EXPECT_EQ(d.retry_after_ms, want.retry_after_ms) << what.str();
                    all = all && want.allowed;
                    compared++;
                }
                if (all) {
                    for (size_t j : call.requests[i]) {
                        core::record(call.pool[j].policy, states[j], call.now);
                    }
                }
                (all ? admitted : refused)++;
                flips += i > 0 && all != last;
                last = all;
            }
            for (size_t j = 0; j < call.pool.size(); j++) {
                CheckZone& z = call.pool[j];
                const core::State& st = states[j];
                if (z.policy.algorithm == core::Algorithm::sliding) {
                    const uint32_t c = core::sliding_window::roll(z.policy.rate, st, call.now).cur;
                    z.expect_after = c == 0 ? "(nil)" : std::to_string(c);
                } else {
                    z.expect_after = st.stamp == 0 ? "(nil)" : std::to_string(st.stamp / 1000);
                }
                issue(*client, {"GET", z.count_key}, after.emplace_back());
            }
        }
        ASSERT_TRUE(wait_all(*client, [&] { return after.empty() || after.back().calls > 0; }));
        size_t k = 0;
        for (const BatchCall& call : todo) {
            if (!call.parsed) {
                continue;
            }
            for (const CheckZone& z : call.pool) {
                const Outcome& o = after[k++];
                ASSERT_TRUE(o.result.ok());
                const std::string v = o.result.reply.is_nil() ? "(nil)" : o.result.reply.str;
                EXPECT_EQ(v, z.expect_after) << "call " << call.index << " algorithm "
                                             << int(z.zone.algorithm) << " now " << call.now;
            }
        }
        ASSERT_FALSE(HasFailure()) << "stopping at the first failing group";
        ctl->run({"FLUSHALL"});
    }
    EXPECT_GT(admitted, compared / 20);
    EXPECT_GT(refused, compared / 20);
    EXPECT_GT(flips, calls);  // requests admitted, then refused, inside batches
    std::printf(
        "compared %zu zone decisions in %zu batch calls (%zu requests admitted, %zu "
        "refused, %zu changes of outcome within a batch)\n",
        compared, calls, admitted, refused, flips);
}

// The script's one-key path (a lone request, a batch on one hot key) against its general
// path, which the same call takes when KEYS holds a second key no request uses: the same
// replies, the same counts left behind, expiry set in the same cases. Policies small enough
// that batches go from admitting to refusing; requests hold the zone up to three times.
TEST_F(RedisScriptsTest, StrictOneKeyPathEqualsGeneralPath) {
    CaseMaker make(20261207);
    const std::string& source = strict_script().source();
    const size_t cases = 600;
    size_t flips = 0, decisions = 0;
    for (size_t c = 0; c < cases; c++) {
        const bool gcra = make.chance(0.5);
        const uint64_t L = make.uniform(0, 3) == 0 ? make.log_uniform(100000) : make.uniform(1, 12);
        const int64_t P = make.chance(0.2) ? int64_t(make.uniform(1, 5000)) : make.period();
        const uint64_t B = gcra && make.chance(0.5) ? make.uniform(0, 20) : 0;
        const int64_t now = 1700000000000 + int64_t(make.uniform(0, 10 * uint64_t(day_ms)));
        const std::string fast = base_key("d:", "z", "one" + std::to_string(c));
        const std::string slow = base_key("d:", "z", "gen" + std::to_string(c));
        const std::string unused = base_key("d:", "z", "unused" + std::to_string(c));
        // The name each call writes (the current window, or the TAT), under both bases.
        std::vector<std::string> names;
        for (const std::string& base : {fast, slow}) {
            names.push_back(gcra ? base + ":gcra" : window_key(base, window_of(now, P)));
        }
        // The same state under both bases.
        const uint64_t cur_count = make.chance(0.3) ? 0 : make.uniform(1, L + 2);
        const uint64_t prev_count = make.chance(0.3) ? 0 : make.uniform(1, L + 2);
        const bool with_ttl = make.chance(0.5);
        const int64_t tat_us = int64_t(now * 1000) +
                               int64_t(make.uniform(0, 4 * uint64_t(P) * 1000)) - int64_t(P) * 1000;
        const bool has_tat = tat_us > 0 && make.chance(0.8);
        for (const std::string& base : {fast, slow}) {
            if (!gcra) {
                const int64_t W = window_of(now, P);
                if (cur_count > 0) {
                    std::vector<std::string> set = {"SET", window_key(base, W),
                                                    std::to_string(cur_count)};
                    if (with_ttl) {
                        set.insert(set.end(), {"PX", "600000"});
                    }
                    ctl->run(set);
                }
                if (prev_count > 0) {
                    ctl->run({"SET", window_key(base, W - P), std::to_string(prev_count)});
                }
            } else if (has_tat) {
                ctl->run({"SET", base + ":gcra", std::to_string(tat_us)});
            }
        }
        // The requests: -1, then 1 for each further time the request holds the zone.
        std::vector<std::string> refs;
        const size_t m = make.uniform(1, 60);
        for (size_t i = 0; i < m; i++) {
            refs.push_back("-1");
            for (size_t n = make.chance(0.2) ? make.uniform(1, 2) : 0; n > 0; n--) {
                refs.push_back("1");
            }
        }
        const std::vector<std::string> policy = {gcra ? "1" : "0", std::to_string(L),
                                                 std::to_string(P), std::to_string(B)};
        std::vector<std::string> one = {"EVAL", source, "1", fast, std::to_string(now)};
        one.insert(one.end(), policy.begin(), policy.end());
        one.push_back("1");
        one.insert(one.end(), refs.begin(), refs.end());
        std::vector<std::string> general = {"EVAL", source, "2", slow, unused, std::to_string(now)};
        general.insert(general.end(), policy.begin(), policy.end());
        general.push_back("2");
        general.insert(general.end(), refs.begin(), refs.end());
        const std::string a = ctl->run(one), b = ctl->run(general);
        const std::string what = "case " + std::to_string(c) + (gcra ? " gcra" : " sliding") +
                                 " L " + std::to_string(L) + " P " + std::to_string(P) + " burst " +
                                 std::to_string(B) + " now " + std::to_string(now);
        ASSERT_EQ(a, b) << what;
        ASSERT_EQ(a.compare(0, 1, "["), 0) << what << ": " << a;
        ASSERT_EQ(ctl->run({"GET", names[0]}), ctl->run({"GET", names[1]})) << what;
        const long long ttl_a = std::atoll(ctl->run({"PTTL", names[0]}).c_str());
        const long long ttl_b = std::atoll(ctl->run({"PTTL", names[1]}).c_str());
        ASSERT_EQ(ttl_a < 0, ttl_b < 0) << what << ": pttl " << ttl_a << " " << ttl_b;
        if (ttl_a < 0) {
            ASSERT_EQ(ttl_a, ttl_b) << what;
        }
        EXPECT_EQ(ctl->run({"EXISTS", unused + ":gcra"}), "0") << what;
        flips += a.find(",-") != std::string::npos && a.find(",0,") != std::string::npos;
        decisions += refs.size();
    }
    EXPECT_GT(flips, cases / 10);  // batches that admitted and refused
    std::printf(
        "compared %zu zone decisions in %zu pairs of calls (%zu batches both admitted "
        "and refused)\n",
        decisions, cases, flips);
}

// ---- what a decision costs Redis ----

// A numeric field of INFO (decimals kept), or -1.
double info_number(Control& ctl, const std::string& section, const std::string& field) {
    const std::string text = ctl.run({"INFO", section});
    const std::string key = "\r\n" + field + ":";
    const size_t at = text.find(key);
    return at == std::string::npos ? -1 : std::strtod(text.c_str() + at + key.size(), nullptr);
}

struct RedisCost {
    double usec = 0;      // INFO commandstats: usec of the measured command, per decision
    double cpu_usec = 0;  // INFO cpu: used_cpu_user + used_cpu_sys, per decision
    double commands = 0;  // commands the scripts ran (TIME, MGET, SET, ...), per decision
};

// The measured command's line of INFO commandstats: usec; and the calls of every other command
// except the test's own (INFO, CONFIG).
void commandstats(Control& ctl, const std::string& measured, double& usec, double& inner) {
    const std::string text = ctl.run({"INFO", "commandstats"});
    usec = 0;
    inner = 0;
    std::stringstream ss(text);
    for (std::string line; std::getline(ss, line);) {
        if (line.compare(0, 8, "cmdstat_") != 0) {
            continue;
        }
        const size_t colon = line.find(':');
        const std::string name = line.substr(8, colon - 8);
        const long long calls = std::atoll(line.c_str() + line.find("calls=") + 6);
        if (name == measured) {
            usec = std::strtod(line.c_str() + line.find(",usec=") + 6, nullptr);
        } else if (name != "info" && name.compare(0, 6, "config") != 0) {
            inner += double(calls);
        }
    }
}

TEST_F(RedisScriptsTest, StrictBatchCostPerDecision) {
    const size_t N = 20000, wave = 64;  // decisions per run; calls in flight at once
    const StrictZone policy = sliding("", 100000000, day_ms);  // 1e8r/d, as bench/ runs it
    // Runs N decisions in calls of `batch` requests (batch 0: N plain INCRs, the peer's one
    // command per request); the best of 3 runs.
    auto run = [&](size_t batch, size_t nkeys) -> RedisCost {
        RedisCost best;
        best.usec = 1e9;
        for (int rep = 0; rep < 3; rep++) {
            ctl->run({"FLUSHALL"});
            std::vector<std::vector<StrictZone>> reqs;
            for (size_t i = 0; i < std::max<size_t>(batch, 1); i++) {
                reqs.push_back({policy});
            }
            size_t next_key = 0;
            auto fill = [&](EvalArgs& a) {
                std::vector<const std::vector<StrictZone>*> ptrs;
                for (auto& r : reqs) {
                    r[0].base =
                        base_key("t:", "bench", "10.0." + std::to_string(next_key++ % nkeys));
                    ptrs.push_back(&r);
                }
                EXPECT_TRUE(build_strict_batch_args(ptrs, a));
            };
            ctl->run({"CONFIG", "RESETSTAT"});
            const double cpu0 = info_number(*ctl, "cpu", "used_cpu_user") +
                                info_number(*ctl, "cpu", "used_cpu_sys");
            for (size_t done = 0; done < N;) {
                std::deque<Outcome> outs;
                for (size_t c = 0; c < wave && done < N; c++) {
                    Outcome& o = outs.emplace_back();
                    if (batch == 0) {
                        const std::string key = "rl:10.0." + std::to_string(next_key++ % nkeys);
                        client->command({"INCR", key}, track(o));
                        done++;
                    } else {
                        EvalArgs a;
                        fill(a);
                        client->evalsha(strict_batch_script(), a.keys(), a.args(), track(o));
                        done += batch;
                    }
                }
                if (!wait_all(*client, [&] { return outs.back().calls > 0; })) {
                    return best;
                }
                for (const Outcome& o : outs) {
                    EXPECT_TRUE(o.result.ok() && !o.result.reply.is_error()) << o.result.reply.str;
                }
            }
            const double cpu1 = info_number(*ctl, "cpu", "used_cpu_user") +
                                info_number(*ctl, "cpu", "used_cpu_sys");
            RedisCost c;
            commandstats(*ctl, batch == 0 ? "incr" : "evalsha", c.usec, c.commands);
            c.usec /= double(N);
            c.commands /= double(N);
            c.cpu_usec = (cpu1 - cpu0) * 1e6 / double(N);
            if (c.usec < best.usec) {
                best = c;
            }
        }
        return best;
    };
    std::printf(
        "Redis cost per decision, %zu decisions per run, %zu calls in flight (best of 3)\n"
        "  workload                   in-script usec   Redis CPU usec   commands\n",
        N, wave);
    for (size_t nkeys : {size_t(1000), size_t(1)}) {
        const RedisCost incr = run(0, nkeys);
        std::printf("  %4zu key(s), plain INCR      %8.2f         %8.2f        %5.2f\n", nkeys,
                    incr.usec, incr.cpu_usec, 1.0);
        RedisCost cost[3];
        const size_t sizes[3] = {1, 8, 32};
        for (int i = 0; i < 3; i++) {
            cost[i] = run(sizes[i], nkeys);
            std::printf("  %4zu key(s), batch of %2zu     %8.2f         %8.2f        %5.2f\n",
                        nkeys, sizes[i], cost[i].usec, cost[i].cpu_usec, cost[i].commands);
        }
        // The times are a measurement, printed above (they move with the machine's load: a test
        // does not assert them). What batching must do regardless of load: fewer commands run
        // in Redis per decision as the batch grows.
        EXPECT_LT(cost[1].commands, cost[0].commands) << nkeys;
        EXPECT_LE(cost[2].commands, cost[1].commands) << nkeys;
    }
}

// REFUND (Redis Cluster): gives back one request per key a strict call counted, in the window
// it was counted in (sliding) or by one emission (gcra); never below 0, expiry kept, a
// missing key left missing; bad arguments are an error reply.
TEST_F(RedisScriptsTest, RefundGivesBackOneRequest) {
    const std::string s = base_key("t:", "s", "user");
    const std::string g = base_key("t:", "g", "user");
    const int64_t t0 = 1700000000000;
    const int64_t w = window_of(t0, day_ms);
    const StrictZone zs = sliding(s, 3, day_ms);
    const StrictZone zg = gcra(g, 10, 1000, 3);  // T = 100 ms
    auto refund = [&](int64_t now, std::vector<const StrictZone*> zones) {
        EvalArgs a;
        EXPECT_TRUE(build_refund_args(now, zones, a));
        return eval(*client, refund_script(), a).reply;
    };
    for (int i = 0; i < 3; i++) {
        ASSERT_TRUE(strict({zs, zg}, t0).d[0].allowed);
    }
    EXPECT_FALSE(strict({zs}, t0).d[0].allowed);
    EXPECT_EQ(get(window_key(s, w)), "3");
    const long long tat = number(get(g + ":gcra"));
    EXPECT_EQ(tat, t0 * 1000 + 3 * 100000);
    const long long pttl = number(ctl->run({"PTTL", window_key(s, w)}));

    // Later (same window): the window it was counted in loses one; the TAT moves back 100 ms.
    Reply r = refund(t0 + 5000, {&zs, &zg});
    ASSERT_EQ(r.type, Reply::Type::Integer) << r.str;
    EXPECT_EQ(get(window_key(s, w)), "2");
    EXPECT_EQ(number(get(g + ":gcra")), tat - 100000);
    EXPECT_GT(number(ctl->run({"PTTL", window_key(s, w)})), pttl - 60000);  // kept, not reset
    EXPECT_GT(number(ctl->run({"PTTL", g + ":gcra"})), 0);
    // The freed place admits one more, exactly.
    EXPECT_TRUE(strict({zs}, t0 + 5000).d[0].allowed);
    EXPECT_FALSE(strict({zs}, t0 + 5000).d[0].allowed);

    // Never below 0, missing keys stay missing.
    ctl->run({"SET", window_key(s, w), "0"});
    ASSERT_EQ(refund(t0, {&zs}).type, Reply::Type::Integer);
    EXPECT_EQ(get(window_key(s, w)), "0");
    const StrictZone other = sliding(base_key("t:", "s", "nobody"), 3, day_ms);
    const StrictZone otherg = gcra(base_key("t:", "g", "nobody"), 10, 1000, 3);
    ASSERT_EQ(refund(t0, {&other, &otherg}).type, Reply::Type::Integer);
    EXPECT_EQ(ctl->run({"EXISTS", window_key(other.base, w)}), "0");
    EXPECT_EQ(ctl->run({"EXISTS", otherg.base + ":gcra"}), "0");

    // Bad arguments: an error reply, nothing written.
    EXPECT_TRUE(eval(*client, refund_script(),
                     [&] {
                         EvalArgs a;
                         a.add_key(s);
                         a.add_arg("x");
                         a.add_arg("0");
                         a.add_arg("3");
                         a.add_arg("1000");
                         return a;
                     }())
                    .reply.is_error());
    EvalArgs none;
    EXPECT_FALSE(build_refund_args(t0, {}, none));
}

}  // namespace
}  // namespace throttle::redis::test
