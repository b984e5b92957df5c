// The sliding-window counter, driven with an explicit clock: window edges, the decay of the
// previous window, clocks stepping backwards, tiny and huge rates, saturation, and exact
// retry_after / reset_ms.
#include "core/sliding_window.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>

#include "core/limiter.hpp"
#include "limiter_test_util.hpp"

namespace throttle::core {
namespace {

// A realistic clock, aligned to a day (so to every period): 2023-11-14 00:00:00 UTC.
constexpr int64_t base = 1699920000000;
static_assert(base % ms_per_day == 0);

constexpr uint32_t u32max = std::numeric_limits<uint32_t>::max();

Policy sliding(uint64_t limit, int64_t period_ms) {
    Policy p;
    p.algorithm = Algorithm::sliding;
    p.rate.limit = limit;
    p.rate.period_ms = period_ms;
    return p;
}

using test::burst_at;
using test::hit;
using test::splitmix64;

// The contract of RateLimit t= for an admitted decision d made at now (`after`: the state with
// the request counted): spend the `remaining` now, and the next request is admitted at
// now + reset_ms and refused at now + reset_ms - 1 (so waiting t seconds, rounded up, gets
// one). Bounded by the rest of the window plus ceil(P / L), plus any lead of the stamp over
// the clock: never the two windows the estimate takes to drain.
void check_reset(const Policy& p, const State& after, int64_t now, const Decision& d) {
    ASSERT_GE(d.reset_ms, 1);
    State spent = after;
    if (d.remaining < 3000) {
        for (uint64_t i = 0; i < d.remaining; ++i) {
            ASSERT_TRUE(hit(p, spent, now)) << i;
        }
    } else {
        spent.cur += static_cast<uint32_t>(d.remaining);  // what as many hits now would count
        spent.unsent_cur += static_cast<uint32_t>(d.remaining);
    }
    ASSERT_FALSE(evaluate(p, spent, now).allowed);
    ASSERT_TRUE(evaluate(p, spent, now + d.reset_ms).allowed)
        << "t too short: " << d.reset_ms << " remaining " << d.remaining;
    ASSERT_FALSE(evaluate(p, spent, now + d.reset_ms - 1).allowed) << "t too long: " << d.reset_ms;
    ASSERT_TRUE(evaluate(p, after, now + d.reset_ms).allowed);
    const int64_t P = p.rate.period_ms;
    const sliding_window::Rolled r = sliding_window::roll(p.rate, after, now);
    const int64_t L = static_cast<int64_t>(p.rate.limit);
    ASSERT_LE(d.reset_ms, r.lead + (P - r.elapsed) + (P + L - 1) / L)
        << "t beyond the window's end plus one request's share";
}

TEST(SlidingWindow, FreshStateAdmitsExactlyLimitInOneWindow) {
    const Policy policies[] = {sliding(1, ms_per_second), sliding(7, ms_per_second),
                               sliding(100, ms_per_minute), sliding(100, ms_per_hour),
                               sliding(1000, ms_per_day)};
    for (const Policy& p : policies) {
        // All at one instant, mid-window.
        State s;
        EXPECT_EQ(burst_at(p, s, base + p.rate.period_ms / 3), p.rate.limit);
        // Spread over the window: with an empty previous window the estimate is cur.
        State t;
        uint64_t admitted = 0;
        for (int64_t ms = 0; ms < p.rate.period_ms; ms += p.rate.period_ms / 50) {
            admitted += burst_at(p, t, base + ms, p.rate.limit / 50 + 1);
        }
        EXPECT_EQ(admitted, p.rate.limit) << p.rate.limit << "/" << p.rate.period_ms;
        EXPECT_FALSE(evaluate(p, t, base + p.rate.period_ms - 1).allowed);
    }
}

TEST(SlidingWindow, RemainingDecreasesByOnePerAdmission) {
    const Policy p = sliding(10, ms_per_minute);
    State s;
    const int64_t now = base + 12345;
    for (uint64_t i = 0; i < 10; ++i) {
        Decision d = evaluate(p, s, now);
        ASSERT_TRUE(d.allowed);
        EXPECT_EQ(d.limit, 10u);
        EXPECT_EQ(d.remaining, 9 - i);
        EXPECT_EQ(d.retry_after_ms, 0);
        record(p, s, now);
    }
    Decision d = evaluate(p, s, now);
    EXPECT_FALSE(d.allowed);
    EXPECT_EQ(d.remaining, 0u);
    EXPECT_EQ(d.limit, 10u);
}

TEST(SlidingWindow, WindowsAreAlignedToTheEpoch) {
    const Policy p = sliding(10, ms_per_second);
    State s;
    record(p, s, base + 999);
    EXPECT_EQ(s.stamp, base);
    EXPECT_EQ(s.cur, 1u);
    record(p, s, base + 1000);
    EXPECT_EQ(s.stamp, base + 1000);
    EXPECT_EQ(s.cur, 1u);
    EXPECT_EQ(s.prev, 1u);
    record(p, s, base + 3500);  // two windows later: both counts forgotten
    EXPECT_EQ(s.stamp, base + 3000);
    EXPECT_EQ(s.cur, 1u);
    EXPECT_EQ(s.prev, 0u);

    sliding_window::Rolled r = sliding_window::roll(p.rate, s, base + 4999);
    EXPECT_EQ(r.start, base + 4000);
    EXPECT_EQ(r.elapsed, 999);
    EXPECT_EQ(r.prev, 1u);
    EXPECT_EQ(r.cur, 0u);
}

TEST(SlidingWindow, LastMillisecondOfAWindowAndFirstOfTheNext) {
    const Policy p = sliding(10, ms_per_second);
    State s;
    EXPECT_EQ(burst_at(p, s, base + 999), 10u);  // all ten in the last ms of window 0
    Decision d = evaluate(p, s, base + 999);
    EXPECT_FALSE(d.allowed);
    // Refused in window 0; in window 1 the 10 weigh (1000 - e) / 1000: admitted once
    // 10 * (1000 - e) / 1000 + 1 <= 10, i.e. e >= 100.
    EXPECT_EQ(d.retry_after_ms, 1 + 100);
    EXPECT_EQ(d.reset_ms, d.retry_after_ms);  // rejected: t is Retry-After

    d = evaluate(p, s, base + 1000);
    EXPECT_FALSE(d.allowed);
    EXPECT_EQ(d.retry_after_ms, 100);
    EXPECT_EQ(d.reset_ms, 100);
    EXPECT_FALSE(evaluate(p, s, base + 1099).allowed);
    EXPECT_TRUE(evaluate(p, s, base + 1100).allowed);
    EXPECT_EQ(evaluate(p, s, base + 1100).remaining, 0u);
    EXPECT_EQ(evaluate(p, s, base + 1200).remaining, 1u);
    EXPECT_EQ(evaluate(p, s, base + 1999).remaining, 8u);  // 10/1000 + 1 rounds the estimate
    EXPECT_EQ(evaluate(p, s, base + 2000).remaining, 9u);  // window 0 is forgotten
}

TEST(SlidingWindow, PreviousWindowWeightDecays) {
    const Policy p = sliding(100, ms_per_hour);
    const int64_t P = ms_per_hour;
    State full;
    EXPECT_EQ(burst_at(p, full, base + 10), 100u);

    struct Point {
        int64_t at;
        uint64_t admitted;
    };
    const Point points[] = {
        {base + P, 0},               // the start of the next window: prev weighs 100
        {base + P + 1, 0},           // 100 * (P - 1) / P = 99.99..., so not even one
        {base + P + P / 100, 1},     // 99 + 1
        {base + P + P / 2, 50},      // halfway: 50
        {base + P + 3 * P / 4, 75},  // three quarters: 75
        {base + 2 * P - 1, 99},      // the last ms: prev still weighs a little
        {base + 2 * P, 100},         // window 0 is two windows back: forgotten
    };
    for (const Point& pt : points) {
        State s = full;
        EXPECT_EQ(burst_at(p, s, pt.at), pt.admitted) << "at +" << pt.at - base;
    }
}

TEST(SlidingWindow, ClockBackwardsAcrossAWindowBoundaryNeverResets) {
    const Policy p = sliding(10, ms_per_second);
    State s;
    EXPECT_EQ(burst_at(p, s, base + 500, 4), 4u);
    // Window 1, 10 ms in: 4 * 990 / 1000 = 3.96, so 6 more fit.
    EXPECT_EQ(burst_at(p, s, base + 1010), 6u);
    const State after = s;
    EXPECT_EQ(after.stamp, base + 1000);
    EXPECT_EQ(after.cur, 6u);
    EXPECT_EQ(after.prev, 4u);

    // The clock steps back into window 0: the state is kept and now counts as the start of
    // window 1, where 4 + 6 + 1 > 10.
    for (int64_t now = base - 5000; now < base + 1010; now += 7) {
        Decision d = evaluate(p, s, now);
        ASSERT_FALSE(d.allowed) << now - base;
        ASSERT_GE(d.retry_after_ms, 1);
    }
    EXPECT_EQ(s.stamp, after.stamp);
    EXPECT_EQ(s.cur, after.cur);
    EXPECT_EQ(s.prev, after.prev);

    // retry_after counts the ms back to the stamp window, then the decay:
    // 4 * (1000 - w) + 7 * 1000 <= 10 * 1000  =>  w >= 250.
    Decision d = evaluate(p, s, base + 990);
    EXPECT_EQ(d.retry_after_ms, 10 + 250);
    EXPECT_EQ(d.reset_ms, 10 + 250);
    EXPECT_FALSE(evaluate(p, s, base + 990 + 259).allowed);
    EXPECT_TRUE(evaluate(p, s, base + 990 + 260).allowed);

    // A request admitted while the clock is behind is counted in the stamp window.
    State q;
    q.stamp = base + 1000;
    q.cur = 1;
    EXPECT_TRUE(hit(p, q, base + 400));
    EXPECT_EQ(q.stamp, base + 1000);
    EXPECT_EQ(q.cur, 2u);
    EXPECT_EQ(q.prev, 0u);

    // A negative clock is 0 and the far past of any stamp.
    EXPECT_FALSE(evaluate(p, s, -1).allowed);
    EXPECT_FALSE(evaluate(p, s, std::numeric_limits<int64_t>::min()).allowed);
}

TEST(SlidingWindow, ClockJitterNeverAdmitsMoreThanTheLimit) {
    // A clock that wanders back and forth around window edges. Whatever it does, no window
    // ever counts more than the limit and the rolled estimate stays within the limit.
    uint64_t seed = 7;
    const Policy p = sliding(20, ms_per_second);
    State s;
    int64_t now = base;
    for (int i = 0; i < 20000; ++i) {
        int64_t step = static_cast<int64_t>(splitmix64(seed) % 700) - 300;  // -300 .. 399
        now += step;
        const uint64_t n = burst_at(p, s, now, 1 + splitmix64(seed) % 5);
        ASSERT_LE(s.cur, 20u);
        if (n > 0) {
            // Right after an admission the estimate, this request included, is within the
            // limit. (Stepping back later can raise the estimate, but then nothing is admitted.)
            sliding_window::Rolled r = sliding_window::roll(p.rate, s, now);
            ASSERT_LE(
                uint64_t{r.prev} * static_cast<uint64_t>(1000 - r.elapsed) + uint64_t{r.cur} * 1000,
                20u * 1000u);
        }
    }
}

TEST(SlidingWindow, OneRequestPerDay) {
    const Policy p = sliding(1, ms_per_day);
    const int64_t D = ms_per_day;
    State s;
    const int64_t first = base + 5 * ms_per_hour;
    Decision d = evaluate(p, s, first);
    ASSERT_TRUE(d.allowed);
    EXPECT_EQ(d.remaining, 0u);
    // Nothing remains, and the next is admitted at the start of day 2: 43 h, more than the
    // window, because the first request weighs on all of day 1 (see sliding_window.hpp).
    EXPECT_EQ(d.reset_ms, 2 * D - 5 * ms_per_hour);
    record(p, s, first);

    // The rest of day 0 and all of day 1 refuse (day 0's request still weighs on day 1).
    for (int64_t t = first; t < base + 2 * D; t += 997 * 61) {
        ASSERT_FALSE(evaluate(p, s, t).allowed) << t - base;
    }
    EXPECT_FALSE(evaluate(p, s, base + 2 * D - 1).allowed);
    d = evaluate(p, s, first + 1);
    EXPECT_EQ(d.retry_after_ms, 2 * D - 5 * ms_per_hour - 1);
    d = evaluate(p, s, base + D);
    EXPECT_EQ(d.retry_after_ms, D);
    EXPECT_EQ(d.reset_ms, D);
    EXPECT_TRUE(evaluate(p, s, base + 2 * D).allowed);
    EXPECT_TRUE(is_idle(p, s, base + 2 * D));
    EXPECT_FALSE(is_idle(p, s, base + 2 * D - 1));
    EXPECT_EQ(quota(p), 1u);
    EXPECT_EQ(window_seconds(p), 86400);
}

// RateLimit t= (draft-ietf-httpapi-ratelimit-headers-10: seconds until additional quota is
// made available). `make run` used to say t=5207 for 1000r/h with 999 left: the time until
// the estimate drains to 0, up to two windows. Now: when the next request passes for a
// client that spends what remains now.
TEST(SlidingWindow, ResetIsWhenTheNextRequestPassesNotWhenTheEstimateDrains) {
    const Policy p = sliding(1000, ms_per_hour);
    const int64_t H = ms_per_hour;
    // 26 min 47 s into a fresh window, 50 requests counted: 95% left.
    State s;
    const int64_t now = base + 1607000;
    s.stamp = base;
    s.cur = 49;
    Decision d = evaluate(p, s, now);
    ASSERT_TRUE(d.allowed);
    EXPECT_EQ(d.remaining, 950u);
    // Spend the 950 now: 1000 in this window, which weigh 1000 * (H - e') / H on the next;
    // one more passes at e' = 3.6 s into it. Not 2H - e (89 min 13 s), not beyond the hour.
    EXPECT_EQ(d.reset_ms, (H - 1607000) + 3600);
    EXPECT_LE(d.reset_ms, H);
    State after = s;
    record(p, after, now);
    check_reset(p, after, now, d);

    // With last hour's counts decaying, more comes as soon as one request's worth decayed:
    // 800 last hour, 30 min in, 100 now: 1000 - 400 - 101 = 499 left after this one; spend
    // them and the next passes once 800 * (H - e) / H <= 399, i.e. 1 s later (800 / H per ms).
    State mid;
    mid.stamp = base;
    mid.prev = 800;
    mid.cur = 100;
    const int64_t half = base + H / 2;
    d = evaluate(p, mid, half);
    ASSERT_TRUE(d.allowed);
    EXPECT_EQ(d.remaining, 499u);
    EXPECT_EQ(d.reset_ms, 4500);  // 800 * (1800000 - w) <= 399 * 3600000  =>  w >= 4500
    after = mid;
    record(p, after, half);
    check_reset(p, after, half, d);

    // The last admitted request of a window (nothing remains): t is exactly the Retry-After
    // the next request would get, and that request is rejected with it.
    State full;
    full.stamp = base;
    full.cur = 999;
    d = evaluate(p, full, base + 10);
    ASSERT_TRUE(d.allowed);
    EXPECT_EQ(d.remaining, 0u);
    record(p, full, base + 10);
    const Decision next = evaluate(p, full, base + 10);
    ASSERT_FALSE(next.allowed);
    EXPECT_EQ(d.reset_ms, next.retry_after_ms);
    EXPECT_EQ(next.reset_ms, next.retry_after_ms);
}

TEST(SlidingWindow, ResetAtWindowEdgesHighRatesAndClockSteps) {
    // Last ms of a window, first of the next.
    const Policy p = sliding(10, ms_per_second);
    State s;
    Decision d = evaluate(p, s, base + 999);
    ASSERT_TRUE(d.allowed);
    EXPECT_EQ(d.remaining, 9u);
    EXPECT_EQ(d.reset_ms, 1 + 100);  // spend 9: window 1 admits once e >= 100
    State after = s;
    record(p, after, base + 999);
    check_reset(p, after, base + 999, d);
    d = evaluate(p, after, base + 1000);
    ASSERT_TRUE(d.allowed);
    EXPECT_EQ(d.remaining, 8u);  // 1 * 1000 / 1000 + 1 counted: 8 more now
    State again = after;
    record(p, again, base + 1000);
    check_reset(p, again, base + 1000, d);

    // 1e6 r/s: t is the ms the next request's worth takes.
    const Policy m = sliding(1000000, ms_per_second);
    State big;
    d = evaluate(m, big, base + 500);
    ASSERT_TRUE(d.allowed);
    EXPECT_EQ(d.remaining, 999999u);
    EXPECT_EQ(d.reset_ms, 500 + 1);
    State big_after = big;
    record(m, big_after, base + 500);
    check_reset(m, big_after, base + 500, d);

    // 1e9 r/d, the largest rate: no overflow, within the window plus a ms.
    const Policy g = sliding(max_rate_limit, ms_per_day);
    State huge;
    huge.stamp = base;
    huge.prev = 700000000;
    huge.cur = 100000000;
    d = evaluate(g, huge, base + ms_per_day / 3);
    ASSERT_TRUE(d.allowed);
    State huge_after = huge;
    record(g, huge_after, base + ms_per_day / 3);
    check_reset(g, huge_after, base + ms_per_day / 3, d);

    // The clock steps back 10 s behind the stamp: t includes the 10 s back to the stamp
    // window, and still says when the next passes.
    State back;
    back.stamp = base + 10000;
    back.cur = 3;
    d = evaluate(p, back, base);
    ASSERT_TRUE(d.allowed);
    EXPECT_EQ(d.remaining, 6u);
    EXPECT_EQ(d.reset_ms, 10000 + 1000 + 100);
    State back_after = back;
    record(p, back_after, base);
    check_reset(p, back_after, base, d);
}

TEST(SlidingWindow, MillionPerSecond) {
    const Policy p = sliding(1000000, ms_per_second);
    State s;
    uint64_t admitted = 0;
    for (int64_t ms = 0; ms < 1000; ++ms) {
        for (int i = 0; i < 1000; ++i) {
            admitted += hit(p, s, base + ms) ? 1 : 0;
        }
    }
    EXPECT_EQ(admitted, 1000000u);
    EXPECT_EQ(s.cur, 1000000u);
    Decision d = evaluate(p, s, base + 999);
    EXPECT_FALSE(d.allowed);
    // Next window: 1e6 * (1000 - e) / 1000 + 1 <= 1e6  =>  e >= 1 (rounded up from 0.001).
    EXPECT_EQ(d.retry_after_ms, 2);
    EXPECT_FALSE(evaluate(p, s, base + 1000).allowed);
    EXPECT_EQ(burst_at(p, s, base + 1001), 1000u);  // 1e6 * 999 / 1000 = 999000
}

TEST(SlidingWindow, CountersNearOverflowSaturate) {
    const Policy p = sliding(max_rate_limit, ms_per_second);
    State s;
    s.stamp = base;
    s.cur = u32max - 1;
    Decision d = evaluate(p, s, base + 200);
    EXPECT_FALSE(d.allowed);
    // Next window: (2^32 - 2) * (1000 - e) <= (1e9 - 1) * 1000  =>  e >= 1000 - 232 = 768.
    EXPECT_EQ(d.retry_after_ms, 800 + 768);
    EXPECT_EQ(d.reset_ms, 800 + 768);

    record(p, s, base + 200);
    EXPECT_EQ(s.cur, u32max);
    record(p, s, base + 300);
    EXPECT_EQ(s.cur, u32max);  // saturated, not wrapped

    record(p, s, base + 1000);  // rolls: prev = UINT32_MAX
    EXPECT_EQ(s.prev, u32max);
    EXPECT_EQ(s.cur, 1u);
    d = evaluate(p, s, base + 1000);
    EXPECT_FALSE(d.allowed);
    // (2^32 - 1) * (1000 - e) + 2 * 1000 <= 1e12  =>  1000 - e <= 232  =>  e >= 768.
    EXPECT_EQ(d.retry_after_ms, 768);

    State both;
    both.stamp = base;
    both.cur = u32max;
    both.prev = u32max;
    const Policy day = sliding(max_rate_limit, ms_per_day);
    d = evaluate(day, both, base);
    EXPECT_FALSE(d.allowed);
    EXPECT_GE(d.retry_after_ms, ms_per_day);
    EXPECT_EQ(d.reset_ms, d.retry_after_ms);

    // One below the limit is admitted with nothing remaining.
    State edge;
    edge.stamp = base;
    edge.cur = max_rate_limit - 1;
    d = evaluate(p, edge, base + 1);
    EXPECT_TRUE(d.allowed);
    EXPECT_EQ(d.remaining, 0u);
}

// Checks the contract of one decision against the decisions at later instants.
void check_exact(const Policy& p, const State& s, int64_t now, bool scan) {
    const Decision d = evaluate(p, s, now);
    const uint64_t L = p.rate.limit;
    if (!d.allowed) {
        ASSERT_GE(d.retry_after_ms, 1);
        ASSERT_EQ(d.remaining, 0u);
        ASSERT_FALSE(evaluate(p, s, now + d.retry_after_ms - 1).allowed)
            << "retry_after too long: " << d.retry_after_ms;
        ASSERT_TRUE(evaluate(p, s, now + d.retry_after_ms).allowed)
            << "retry_after too short: " << d.retry_after_ms;
        if (scan) {
            for (int64_t w = 1; w < d.retry_after_ms; ++w) {
                ASSERT_FALSE(evaluate(p, s, now + w).allowed) << w;
            }
        }
        // reset (RateLimit t=) is Retry-After when nothing remains.
        ASSERT_EQ(d.reset_ms, d.retry_after_ms);
        return;
    }
    ASSERT_EQ(d.retry_after_ms, 0);
    ASSERT_LE(d.remaining, L - 1);
    State after = s;
    record(p, after, now);
    // remaining is exactly how many more are admitted at this instant.
    if (d.remaining < 3000) {
        State more = after;
        ASSERT_EQ(burst_at(p, more, now, d.remaining + 1), d.remaining);
    } else {
        ASSERT_EQ(evaluate(p, after, now).remaining, d.remaining - 1);
    }
    // reset: a client that spends the remaining requests now gets the next one after reset_ms,
    // and not a ms before; one that does not spend them has them all then, and more.
    check_reset(p, after, now, d);
}

TEST(SlidingWindow, RetryAfterAndResetAreExactInManyStates) {
    uint64_t seed = 20231114;
    const int64_t periods[] = {ms_per_second, ms_per_minute, ms_per_hour, ms_per_day};
    const uint64_t limits[] = {1, 2, 3, 7, 10, 100, 1000, 1000000, max_rate_limit};
    int rejected = 0;
    int admitted = 0;
    for (int i = 0; i < 4000; ++i) {
        const int64_t P = periods[splitmix64(seed) % 4];
        uint64_t L = limits[splitmix64(seed) % 9];
        if (splitmix64(seed) % 3 == 0) {
            L = 1 + splitmix64(seed) % 5000;
        }
        const Policy p = sliding(L, P);

        auto count = [&]() -> uint32_t {
            switch (splitmix64(seed) % 6) {
                case 0:
                    return 0;
                case 1:
                    return static_cast<uint32_t>(L > u32max ? u32max : L);
                case 2:
                    return u32max - static_cast<uint32_t>(splitmix64(seed) % 3);
                default: {
                    uint64_t c = splitmix64(seed) % (2 * L + 2);
                    return static_cast<uint32_t>(c > u32max ? u32max : c);
                }
            }
        };
        State s;
        s.stamp = base + P * static_cast<int64_t>(splitmix64(seed) % 3);
        s.cur = count();
        s.prev = count();
        const int64_t now =
            s.stamp - P + static_cast<int64_t>(splitmix64(seed) % static_cast<uint64_t>(4 * P));

        const bool was_rejected = !evaluate(p, s, now).allowed;
        check_exact(p, s, now, P == ms_per_second);
        if (HasFatalFailure()) {
            ADD_FAILURE() << "L=" << L << " P=" << P << " stamp=+" << s.stamp - base
                          << " cur=" << s.cur << " prev=" << s.prev << " now=+" << now - base;
            return;
        }
        (was_rejected ? rejected : admitted)++;
    }
    EXPECT_GT(rejected, 500);
    EXPECT_GT(admitted, 500);
}

TEST(SlidingWindow, IsIdle) {
    const Policy p = sliding(5, ms_per_minute);
    State s;
    EXPECT_TRUE(is_idle(p, s, base));
    record(p, s, base + 30000);
    EXPECT_FALSE(is_idle(p, s, base + 30000));
    EXPECT_FALSE(is_idle(p, s, base + 60000));          // counted as prev
    EXPECT_FALSE(is_idle(p, s, base + 2 * 60000 - 1));  // still weighs
    EXPECT_TRUE(is_idle(p, s, base + 2 * 60000));       // both windows past
    EXPECT_FALSE(is_idle(p, s, base - 1));              // clock behind: keep the counts
    State zero_counts;
    zero_counts.stamp = base;
    EXPECT_TRUE(is_idle(p, zero_counts, base));
}

TEST(SlidingWindow, QuotaWindowAndDecisionLimit) {
    const Policy p = sliding(100, ms_per_hour);
    EXPECT_EQ(quota(p), 100u);
    EXPECT_EQ(window_seconds(p), 3600);
    EXPECT_EQ(window_seconds(sliding(1, ms_per_second)), 1);
    EXPECT_EQ(window_seconds(sliding(1, ms_per_minute)), 60);
    State s;
    EXPECT_EQ(evaluate(p, s, base).limit, 100u);
    Policy odd = sliding(100, ms_per_hour);
    odd.burst = 5;  // ignored by the sliding window
    EXPECT_EQ(quota(odd), 100u);
    EXPECT_EQ(burst_at(odd, s, base), 100u);
}

TEST(SlidingWindow, DegeneratePolicyDoesNotDivideByZero) {
    State s;
    const Policy zero = sliding(0, 0);
    EXPECT_TRUE(hit(zero, s, base));
    Decision d = evaluate(zero, s, base);
    EXPECT_FALSE(d.allowed);
    EXPECT_GE(d.retry_after_ms, 1);
}

}  // namespace
}  // namespace throttle::core
