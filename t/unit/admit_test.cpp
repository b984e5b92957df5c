// core::admit (evaluate + record in one step, limiter.hpp) against the two calls it replaces on
// the request path: the same decision, the same state afterwards and the same unrecord() token,
// for both algorithms, in random states around window edges, with the clock stepping back,
// counts near saturation and degenerate policies.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <limits>

#include "core/gcra.hpp"
#include "core/limiter.hpp"
#include "core/sliding_window.hpp"
#include "limiter_test_util.hpp"

namespace throttle::core {
namespace {

constexpr int64_t base = 1699920000000;  // 2023-11-14 00:00:00 UTC, aligned to a day
constexpr uint32_t u32max = std::numeric_limits<uint32_t>::max();

using test::splitmix64;

bool same_state(const State& a, const State& b) {
    return a.stamp == b.stamp && a.cur == b.cur && a.prev == b.prev &&
           a.unsent_cur == b.unsent_cur && a.unsent_prev == b.unsent_prev &&
           a.blocked_until == b.blocked_until;
}

void expect_same(const Decision& a, const Decision& b) {
    EXPECT_EQ(a.allowed, b.allowed);
    EXPECT_EQ(a.limit, b.limit);
    EXPECT_EQ(a.remaining, b.remaining);
    EXPECT_EQ(a.reset_ms, b.reset_ms);
    EXPECT_EQ(a.retry_after_ms, b.retry_after_ms);
}

// admit() at now against evaluate() then, if allowed, record(), from the same state.
void check(const Policy& p, const State& s, int64_t now, int& admitted, int& rejected) {
    State two = s;
    const Decision want = evaluate(p, two, now);
    int64_t want_token = -7;
    if (want.allowed) {
        want_token = record(p, two, now);
    }
    State one = s;
    int64_t token = -7;
    const Decision got = admit(p, one, now, token);
    expect_same(got, want);
    EXPECT_TRUE(same_state(one, two))
        << "stamp " << one.stamp << " vs " << two.stamp << ", cur " << one.cur << " vs " << two.cur;
    EXPECT_EQ(token, want_token);
    (want.allowed ? admitted : rejected)++;
}

uint32_t random_count(uint64_t& seed, uint64_t limit) {
    switch (splitmix64(seed) % 6) {
        case 0:
            return 0;
        case 1:
            return static_cast<uint32_t>(limit > u32max ? u32max : limit);
        case 2:
            return u32max - static_cast<uint32_t>(splitmix64(seed) % 3);
        default: {
            uint64_t c = splitmix64(seed) % (2 * limit + 2);
            return static_cast<uint32_t>(c > u32max ? u32max : c);
        }
    }
}

TEST(Admit, SlidingIsEvaluateThenRecord) {
    uint64_t seed = 14;
    const int64_t periods[] = {1, 7, ms_per_second, ms_per_minute, ms_per_hour, ms_per_day};
    const uint64_t limits[] = {0, 1, 2, 3, 10, 1000, 1000000, max_rate_limit};
    int admitted = 0, rejected = 0;
    for (int i = 0; i < 20000 && !HasFailure(); ++i) {
        Policy p;
        p.algorithm = Algorithm::sliding;
        p.rate.period_ms = periods[splitmix64(seed) % 6];
        p.rate.limit = limits[splitmix64(seed) % 8];
        if (splitmix64(seed) % 3 == 0) {
            p.rate.limit = 1 + splitmix64(seed) % 5000;
        }
        const int64_t P = p.rate.period_ms;
        const uint64_t L = p.rate.limit > 0 ? p.rate.limit : 1;
        State s;
        if (splitmix64(seed) % 8 != 0) {  // else a fresh key
            s.stamp = base + P * static_cast<int64_t>(splitmix64(seed) % 3);
            s.cur = random_count(seed, L);
            s.prev = random_count(seed, L);
            s.unsent_cur = static_cast<uint32_t>(splitmix64(seed) % (uint64_t{s.cur} + 1));
            s.unsent_prev = static_cast<uint32_t>(splitmix64(seed) % (uint64_t{s.prev} + 1));
        }
        // from a window before the stamp (the clock stepped back) to two windows after it
        const int64_t from = (s.stamp != 0 ? s.stamp : base) - P;
        const int64_t now =
            from + static_cast<int64_t>(splitmix64(seed) % static_cast<uint64_t>(4 * P));
        check(p, s, now, admitted, rejected);
    }
    EXPECT_GT(admitted, 2000);
    EXPECT_GT(rejected, 2000);
}

TEST(Admit, GcraIsEvaluateThenRecord) {
    uint64_t seed = 15;
    int admitted = 0, rejected = 0;
    for (int i = 0; i < 20000 && !HasFailure(); ++i) {
        Policy p;
        p.algorithm = Algorithm::gcra;
        p.rate.period_ms = splitmix64(seed) % 2 ? ms_per_second : ms_per_minute;
        p.rate.limit = 1 + splitmix64(seed) % 1000;
        p.burst = splitmix64(seed) % 3 == 0 ? 0 : 1 + splitmix64(seed) % 100;
        State s;
        const int64_t now = base + static_cast<int64_t>(splitmix64(seed) % ms_per_minute);
        if (splitmix64(seed) % 8 != 0) {
            // an arrival time around now (ns), up to a few bursts ahead of it
            const int64_t t = gcra::emission_interval_ns(p.rate);
            const int64_t cap = static_cast<int64_t>(p.burst > 0 ? p.burst : p.rate.limit);
            s.stamp = now * 1000000 - cap * t +
                      static_cast<int64_t>(splitmix64(seed) % static_cast<uint64_t>(3 * cap * t));
        }
        check(p, s, now, admitted, rejected);
    }
    EXPECT_GT(admitted, 2000);
    EXPECT_GT(rejected, 2000);
}

// Many requests through admit() alone leave the state evaluate()/record() leave.
TEST(Admit, ASequenceEndsInTheSameState) {
    Policy p;
    p.rate.limit = 50;
    p.rate.period_ms = ms_per_second;
    State one, two;
    uint64_t seed = 16;
    int64_t now = base;
    for (int i = 0; i < 5000; ++i) {
        now += static_cast<int64_t>(splitmix64(seed) % 40) - 3;  // now and then a step back
        int64_t token = 0;
        const Decision got = admit(p, one, now, token);
        EXPECT_EQ(got.allowed, test::hit(p, two, now)) << i;
        ASSERT_TRUE(same_state(one, two)) << i;
    }
}

}  // namespace
}  // namespace throttle::core
