// core::clamp(): what Redis says about a key is brought within what the policy can ever say,
// and a decision the algorithms themselves make is never changed by it.
#include <gtest/gtest.h>

#include "core/limiter.hpp"
#include "limiter_test_util.hpp"

namespace throttle::core::test {
namespace {

Policy policy(Algorithm a, uint64_t limit, int64_t period_ms, uint64_t burst = 0) {
    Policy p;
    p.algorithm = a;
    p.rate.limit = limit;
    p.rate.period_ms = period_ms;
    p.burst = burst;
    return p;
}

TEST(Clamp, NonsenseFromRedisIsBounded) {
    Policy p = policy(Algorithm::sliding, 100, 3600 * 1000);
    Decision d;
    d.allowed = true;
    d.remaining = UINT64_MAX;
    d.reset_ms = INT64_MAX;
    d.retry_after_ms = 5;  // meaningless when admitted
    EXPECT_TRUE(clamp(p, d));
    EXPECT_EQ(d.remaining, 100u);
    EXPECT_EQ(d.reset_ms, 3 * 3600 * 1000);
    EXPECT_EQ(d.retry_after_ms, 0);

    d = Decision{};
    d.allowed = false;
    d.remaining = 7;
    d.reset_ms = -5;
    d.retry_after_ms = INT64_MAX;  // Retry-After: 9223372036854776 before
    EXPECT_TRUE(clamp(p, d));
    EXPECT_EQ(d.remaining, 0u);
    EXPECT_EQ(d.reset_ms, 0);
    EXPECT_EQ(d.retry_after_ms, 3 * 3600 * 1000);

    Decision sane;
    sane.allowed = true;
    sane.remaining = 3;
    sane.reset_ms = 1000;
    EXPECT_FALSE(clamp(p, sane));
}

// Every decision evaluate() makes, over random traffic and clock steps, is left alone.
TEST(Clamp, TheAlgorithmsOwnDecisionsAreUnchanged) {
    const Policy policies[] = {
        policy(Algorithm::sliding, 5, 60 * 1000),     policy(Algorithm::sliding, 100, 1000),
        policy(Algorithm::sliding, 1, 86400 * 1000),  policy(Algorithm::gcra, 10, 1000, 3),
        policy(Algorithm::gcra, 5, 60 * 1000),        policy(Algorithm::gcra, 1, 86400 * 1000, 1),
        policy(Algorithm::gcra, 1000000000, 1000, 7),
    };
    uint64_t seed = 42;
    for (const Policy& p : policies) {
        State s;
        int64_t now = 1700000000000;
        for (int i = 0; i < 20000; i++) {
            uint64_t r = splitmix64(seed);
            now += static_cast<int64_t>(r % (2 * p.rate.period_ms / 50 + 2)) -
                   1;  // a step back now and then
            Decision d = evaluate(p, s, now);
            Decision c = d;
            ASSERT_FALSE(clamp(p, c))
                << "policy " << int(p.algorithm) << " limit " << p.rate.limit << " remaining "
                << d.remaining << " reset " << d.reset_ms << " retry " << d.retry_after_ms;
            if (d.allowed) {
                record(p, s, now);
            }
        }
    }
}

}  // namespace
}  // namespace throttle::core::test
