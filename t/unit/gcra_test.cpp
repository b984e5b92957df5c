// GCRA, driven with an explicit clock: emission intervals and their rounding, bursts,
// clocks stepping backwards, tiny and huge rates and buckets, and exact retry_after / reset_ms.
#include "core/gcra.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "core/limiter.hpp"
#include "limiter_test_util.hpp"

namespace throttle::core {
namespace {

// A realistic clock, aligned to a day: 2023-11-14 00:00:00 UTC.
constexpr int64_t base = 1699920000000;
constexpr int64_t ns_per_ms = 1000000;
constexpr int64_t int64_max = std::numeric_limits<int64_t>::max();

Policy gcra_policy(uint64_t limit, int64_t period_ms, uint64_t burst = 0) {
    Policy p;
    p.algorithm = Algorithm::gcra;
    p.rate.limit = limit;
    p.rate.period_ms = period_ms;
    p.burst = burst;
    return p;
}

using test::burst_at;
using test::hit;
using test::splitmix64;

TEST(Gcra, EmissionIntervalAndCapacity) {
    EXPECT_EQ(gcra::emission_interval_ns(Rate{10, ms_per_second}), 100000000);
    EXPECT_EQ(gcra::emission_interval_ns(Rate{7, ms_per_second}), 142857142);  // rounded down
    EXPECT_EQ(gcra::emission_interval_ns(Rate{3, ms_per_minute}), 20000000000);
    EXPECT_EQ(gcra::emission_interval_ns(Rate{1, ms_per_day}), 86400000000000);
    EXPECT_EQ(gcra::emission_interval_ns(Rate{max_rate_limit, ms_per_second}), 1);
    EXPECT_EQ(gcra::emission_interval_ns(Rate{max_rate_limit, ms_per_day}), 86400);
    EXPECT_EQ(gcra::emission_interval_ns(Rate{0, 0}), 1000000);  // degenerate: 1r per 1 ms

    EXPECT_EQ(gcra::capacity(gcra_policy(10, ms_per_second)), 10u);
    EXPECT_EQ(gcra::capacity(gcra_policy(10, ms_per_second, 1)), 1u);
    EXPECT_EQ(gcra::capacity(gcra_policy(10, ms_per_second, 500)), 500u);
    EXPECT_EQ(gcra::capacity(gcra_policy(10, ms_per_second, max_rate_limit + 1)), max_rate_limit);
    EXPECT_EQ(gcra::capacity(gcra_policy(0, ms_per_second)), 1u);
}

TEST(Gcra, QuotaWindowAndDecisionLimit) {
    EXPECT_EQ(quota(gcra_policy(10, ms_per_second)), 10u);
    EXPECT_EQ(quota(gcra_policy(10, ms_per_second, 3)), 3u);
    EXPECT_EQ(window_seconds(gcra_policy(10, ms_per_second)), 1);
    EXPECT_EQ(window_seconds(gcra_policy(10, ms_per_second, 1)), 1);  // 0.1 s, at least 1
    EXPECT_EQ(window_seconds(gcra_policy(7, ms_per_second)), 1);      // 0.999999994 s
    EXPECT_EQ(window_seconds(gcra_policy(100, ms_per_hour, 10)), 360);
    EXPECT_EQ(window_seconds(gcra_policy(100, ms_per_hour, 1000)), 36000);
    EXPECT_EQ(window_seconds(gcra_policy(1, ms_per_day)), 86400);
    EXPECT_EQ(window_seconds(gcra_policy(max_rate_limit, ms_per_second)), 1);
    // C * T = 1e9 * 86400e9 ns does not fit in int64 ns; in seconds it does.
    EXPECT_EQ(window_seconds(gcra_policy(1, ms_per_day, max_rate_limit)), 86400000000000);
    State s;
    EXPECT_EQ(evaluate(gcra_policy(10, ms_per_second, 3), s, base).limit, 3u);
}

TEST(Gcra, BurstOneSpacesRequestsExactlyT) {
    const Policy p = gcra_policy(10, ms_per_second, 1);
    State s;
    Decision d = evaluate(p, s, base);
    ASSERT_TRUE(d.allowed);
    EXPECT_EQ(d.remaining, 0u);
    EXPECT_EQ(d.reset_ms, 100);
    record(p, s, base);
    EXPECT_EQ(s.stamp, base * ns_per_ms + 100000000);
    EXPECT_EQ(s.cur, 0u);
    EXPECT_EQ(s.prev, 0u);

    d = evaluate(p, s, base + 1);
    EXPECT_FALSE(d.allowed);
    EXPECT_EQ(d.retry_after_ms, 99);
    EXPECT_EQ(d.reset_ms, 99);  // rejected: t is Retry-After
    d = evaluate(p, s, base + 99);
    EXPECT_FALSE(d.allowed);
    EXPECT_EQ(d.retry_after_ms, 1);
    EXPECT_TRUE(hit(p, s, base + 100));
    EXPECT_FALSE(hit(p, s, base + 199));
    EXPECT_TRUE(hit(p, s, base + 200));
    // Idle for a while: the bucket holds one request, not more.
    EXPECT_EQ(burst_at(p, s, base + 10000), 1u);
}

TEST(Gcra, SevenPerSecondRounding) {
    // T = 142857142 ns. With a bucket of one, each admission finds TAT <= now, so the next
    // one is due T after the (whole-ms) arrival: the gaps are T rounded up to the clock's ms.
    const Policy p = gcra_policy(7, ms_per_second, 1);
    State s;
    std::vector<int64_t> times;
    for (int64_t ms = 0; ms <= 1001; ++ms) {
        if (hit(p, s, base + ms)) {
            times.push_back(ms);
        }
    }
    EXPECT_EQ(times, (std::vector<int64_t>{0, 143, 286, 429, 572, 715, 858, 1001}));

    // Default bucket (7): seven at once, then TAT stays ahead of the clock and the k-th
    // further request is due at exactly k * T (rounding does not accumulate); over 70 s of
    // one-ms ticks that is 7 + 489 (k * T <= 69999 ms for k <= 489).
    const Policy q = gcra_policy(7, ms_per_second);
    State t;
    uint64_t admitted = 0;
    for (int64_t ms = 0; ms < 70000; ++ms) {
        admitted += burst_at(q, t, base + ms);
        ASSERT_LE(admitted, 7u + static_cast<uint64_t>(ms) * 7 / 1000 + 1) << ms;
    }
    EXPECT_EQ(admitted, 496u);
}

TEST(Gcra, FullBucketAdmitsCapacityBackToBackThenOnePerT) {
    const Policy p = gcra_policy(10, ms_per_second, 5);
    State s;
    for (uint64_t i = 0; i < 5; ++i) {
        Decision d = evaluate(p, s, base);
        ASSERT_TRUE(d.allowed);
        EXPECT_EQ(d.remaining, 4 - i);
        // t: spend the rest now, and the next token comes T after the bucket was full.
        EXPECT_EQ(d.reset_ms, 100);
        EXPECT_EQ(d.limit, 5u);
        record(p, s, base);
    }
    Decision d = evaluate(p, s, base);
    EXPECT_FALSE(d.allowed);
    EXPECT_EQ(d.remaining, 0u);
    EXPECT_EQ(d.retry_after_ms, 100);
    EXPECT_EQ(d.reset_ms, 100);
    for (int64_t k = 1; k <= 20; ++k) {
        EXPECT_FALSE(hit(p, s, base + 100 * k - 1)) << k;
        EXPECT_EQ(burst_at(p, s, base + 100 * k), 1u) << k;
    }
    // Left alone for the bucket's refill time, it is full again.
    EXPECT_FALSE(is_idle(p, s, base + 2000 + 499));
    EXPECT_TRUE(is_idle(p, s, base + 2000 + 500));
    EXPECT_EQ(burst_at(p, s, base + 2000 + 500), 5u);
}

TEST(Gcra, DefaultBucketIsTheLimit) {
    const Policy p = gcra_policy(100, ms_per_minute);
    State s;
    EXPECT_EQ(burst_at(p, s, base), 100u);
    Decision d = evaluate(p, s, base);
    EXPECT_EQ(d.retry_after_ms, 600);
    EXPECT_EQ(d.reset_ms, 600);
}

TEST(Gcra, OneRequestPerDay) {
    const Policy p = gcra_policy(1, ms_per_day);
    State s;
    const int64_t first = base + 5 * ms_per_hour;
    ASSERT_TRUE(hit(p, s, first));
    Decision d = evaluate(p, s, first + 1);
    EXPECT_FALSE(d.allowed);
    EXPECT_EQ(d.retry_after_ms, ms_per_day - 1);
    EXPECT_FALSE(hit(p, s, first + ms_per_day - 1));
    EXPECT_TRUE(hit(p, s, first + ms_per_day));
}

TEST(Gcra, MillionPerSecond) {
    const Policy p = gcra_policy(1000000, ms_per_second);
    State s;
    EXPECT_EQ(burst_at(p, s, base), 1000000u);
    Decision d = evaluate(p, s, base);
    EXPECT_FALSE(d.allowed);
    EXPECT_EQ(d.retry_after_ms, 1);  // T = 1 us
    EXPECT_EQ(d.reset_ms, 1);
    EXPECT_EQ(burst_at(p, s, base + 1), 1000u);
    EXPECT_EQ(burst_at(p, s, base + 1001), 1000000u);  // a second later the bucket is full
}

TEST(Gcra, HugeBucketDoesNotOverflow) {
    // C * T = 1e9 * 86400e9 ns = 8.64e22 ns, far beyond int64.
    const Policy p = gcra_policy(1, ms_per_day, max_rate_limit);
    State s;
    Decision d = evaluate(p, s, base);
    ASSERT_TRUE(d.allowed);
    EXPECT_EQ(d.remaining, max_rate_limit - 1);
    EXPECT_EQ(d.reset_ms, ms_per_day);  // T: one request per day
    EXPECT_EQ(d.limit, max_rate_limit);
    record(p, s, base);
    EXPECT_EQ(s.stamp, base * ns_per_ms + 86400000000000);
    EXPECT_EQ(evaluate(p, s, base).remaining, max_rate_limit - 2);

    // A TAT that would not fit in int64 is refused, never stored clamped.
    s.stamp = int64_max - 1000;
    d = evaluate(p, s, base);
    EXPECT_FALSE(d.allowed);
    EXPECT_GE(d.retry_after_ms, 1);
    EXPECT_GT(d.reset_ms, 0);
    record(p, s, base);  // misuse: still no overflow
    EXPECT_EQ(s.stamp, int64_max);

    // Times past int64 nanoseconds (year 2262) or negative stamps: no undefined behaviour.
    State t;
    (void)evaluate(p, t, int64_max);
    record(p, t, int64_max);
    EXPECT_EQ(t.stamp, int64_max);
    State neg;
    neg.stamp = std::numeric_limits<int64_t>::min();
    EXPECT_TRUE(evaluate(p, neg, base).allowed);
}

TEST(Gcra, ClockBackwardsAdmitsNothingExtra) {
    const Policy p = gcra_policy(10, ms_per_second, 5);
    State s;
    EXPECT_EQ(burst_at(p, s, base + 1000), 5u);
    const State drained = s;  // TAT = base + 1500 ms
    for (int64_t now = base - 5000; now < base + 1100; now += 3) {
        ASSERT_FALSE(hit(p, s, now)) << now - base;
    }
    EXPECT_EQ(s.stamp, drained.stamp);
    Decision d = evaluate(p, s, base);
    EXPECT_EQ(d.retry_after_ms, 1100);  // TAT + T - C*T = base + 1100
    EXPECT_EQ(d.reset_ms, 1100);
    EXPECT_TRUE(hit(p, s, base + 1100));
    // A negative clock is 0.
    EXPECT_FALSE(evaluate(p, s, -1).allowed);
    State fresh;
    EXPECT_TRUE(hit(p, fresh, -1));
    EXPECT_EQ(fresh.stamp, 100000000);
}

TEST(Gcra, IsIdle) {
    const Policy p = gcra_policy(10, ms_per_second);
    State s;
    EXPECT_TRUE(is_idle(p, s, base));
    EXPECT_TRUE(is_idle(p, s, -5));
    record(p, s, base);
    EXPECT_FALSE(is_idle(p, s, base));
    EXPECT_FALSE(is_idle(p, s, base + 99));
    EXPECT_TRUE(is_idle(p, s, base + 100));
    EXPECT_FALSE(is_idle(p, s, base - 100000));
}

// The contract of RateLimit t= for an admitted decision d made at now (`after`: the state with
// the request counted): spend the `remaining` now, and the next request is admitted at
// now + reset_ms and refused at now + reset_ms - 1; t is at most one emission interval T
// (rounded up to the ms), the next token's arrival.
void check_reset(const Policy& p, const State& after, int64_t now, const Decision& d) {
    ASSERT_GE(d.reset_ms, 1);
    const int64_t T = gcra::emission_interval_ns(p.rate);
    ASSERT_LE(d.reset_ms, (T + ns_per_ms - 1) / ns_per_ms);
    State spent = after;
    // What `remaining` hits at now leave: after's TAT is ahead of now, each adds T.
    const __int128 tat =
        static_cast<__int128>(after.stamp) + static_cast<__int128>(d.remaining) * T;
    if (tat > int64_max - T) {
        return;  // beyond year 2262: refused anyway, nothing to check
    }
    spent.stamp = static_cast<int64_t>(tat);
    ASSERT_FALSE(evaluate(p, spent, now).allowed);
    ASSERT_TRUE(evaluate(p, spent, now + d.reset_ms).allowed)
        << "t too short: " << d.reset_ms << " remaining " << d.remaining;
    ASSERT_FALSE(evaluate(p, spent, now + d.reset_ms - 1).allowed) << "t too long: " << d.reset_ms;
    const Decision later = evaluate(p, after, now + d.reset_ms);
    ASSERT_TRUE(later.allowed);  // not spending them: all of them, and one more, are there
    ASSERT_GE(later.remaining, d.remaining);
}

TEST(Gcra, RetryAfterAndResetAreExactInManyStates) {
    uint64_t seed = 42;
    const int64_t periods[] = {ms_per_second, ms_per_minute, ms_per_hour, ms_per_day};
    const uint64_t limits[] = {1, 2, 3, 7, 10, 13, 100, 999, 1000000, max_rate_limit};
    int rejected = 0;
    int admitted = 0;
    for (int i = 0; i < 4000; ++i) {
        const int64_t P = periods[splitmix64(seed) % 4];
        const uint64_t L = limits[splitmix64(seed) % 10];
        uint64_t burst = 0;
        switch (splitmix64(seed) % 3) {
            case 0:
                burst = 1 + splitmix64(seed) % 1000;
                break;
            case 1:
                burst = 1;
                break;
            default:
                break;
        }
        const Policy p = gcra_policy(L, P, burst);
        const __int128 T = gcra::emission_interval_ns(p.rate);
        const __int128 CT = T * static_cast<__int128>(gcra::capacity(p));
        const int64_t now = base + static_cast<int64_t>(splitmix64(seed) % 100000);
        const __int128 now_ns = static_cast<__int128>(now) * ns_per_ms;

        State s;
        switch (splitmix64(seed) % 4) {
            case 0:
                break;  // fresh
            case 1:     // around a drained bucket
                s.stamp = static_cast<int64_t>(now_ns + CT - T +
                                               static_cast<__int128>(splitmix64(seed) % 3) - 1);
                break;
            default: {  // anywhere from 2 C*T in the past to 2 C*T in the future
                const uint64_t span =
                    static_cast<uint64_t>(CT > (__int128{1} << 60) ? (__int128{1} << 60) : CT);
                const __int128 off =
                    static_cast<__int128>(splitmix64(seed) % (4 * span + 1)) - 2 * span;
                s.stamp = static_cast<int64_t>(now_ns + off);
            }
        }

        const Decision d = evaluate(p, s, now);
        const uint64_t C = gcra::capacity(p);
        if (!d.allowed) {
            ++rejected;
            ASSERT_GE(d.retry_after_ms, 1);
            ASSERT_EQ(d.remaining, 0u);
            ASSERT_FALSE(evaluate(p, s, now + d.retry_after_ms - 1).allowed) << i;
            ASSERT_TRUE(evaluate(p, s, now + d.retry_after_ms).allowed) << i;
            if (d.retry_after_ms <= 2000) {
                for (int64_t w = 1; w < d.retry_after_ms; ++w) {
                    ASSERT_FALSE(evaluate(p, s, now + w).allowed) << i << " " << w;
                }
            }
            ASSERT_EQ(d.reset_ms, d.retry_after_ms) << i;  // t is Retry-After
            continue;
        }
        ++admitted;
        ASSERT_EQ(d.retry_after_ms, 0);
        ASSERT_LT(d.remaining, C);
        State after = s;
        record(p, after, now);
        if (d.remaining < 3000) {
            State more = after;
            ASSERT_EQ(burst_at(p, more, now, d.remaining + 1), d.remaining) << i;
        } else {
            ASSERT_EQ(evaluate(p, after, now).remaining, d.remaining - 1) << i;
        }
        check_reset(p, after, now, d);
    }
    EXPECT_GT(rejected, 500);
    EXPECT_GT(admitted, 500);
}

}  // namespace
}  // namespace throttle::core

namespace throttle::core {
namespace {

TEST(Unrecord, GcraGivesBackOneInterval) {
    Policy p{Algorithm::gcra, Rate{10, ms_per_second}, 3};
    State s;
    const int64_t now = 1000000;
    int64_t t1 = record(p, s, now);
    record(p, s, now);
    record(p, s, now);
    EXPECT_FALSE(evaluate(p, s, now).allowed);
    unrecord(p, s, t1);  // the first reservation is given back, even after two more
    EXPECT_TRUE(evaluate(p, s, now).allowed);
    record(p, s, now);
    EXPECT_FALSE(evaluate(p, s, now).allowed);
}

TEST(Unrecord, SlidingGivesBackInTheWindowItWasCountedIn) {
    Policy p{Algorithm::sliding, Rate{2, ms_per_minute}, 0};
    State s;
    const int64_t now = 10 * ms_per_minute + 5;
    int64_t t1 = record(p, s, now);
    record(p, s, now);
    EXPECT_FALSE(evaluate(p, s, now).allowed);
    unrecord(p, s, t1);
    EXPECT_TRUE(evaluate(p, s, now).allowed);
    EXPECT_EQ(s.cur, 1u);
    EXPECT_EQ(s.unsent_cur, 1u);
    // Counted in one window, given back after the next one began: it leaves prev.
    int64_t t2 = record(p, s, now);
    record(p, s, now + ms_per_minute);  // rolls: prev = 2, cur = 1
    unrecord(p, s, t2);
    EXPECT_EQ(s.prev, 1u);
    EXPECT_EQ(s.cur, 1u);
    // Older than the previous window: nothing to give back.
    State old = s;
    unrecord(p, s, t2 - 5 * ms_per_minute);
    EXPECT_EQ(s.prev, old.prev);
    EXPECT_EQ(s.cur, old.cur);
}

}  // namespace
}  // namespace throttle::core
