// mode=sync flush arithmetic: nothing counted is lost or counted twice, whatever the
// interleaving of requests, flushes, failures and window changes.
#include "core/sync.hpp"

#include <gtest/gtest.h>

#include <map>
#include <random>

#include "core/limiter.hpp"

namespace throttle::core {
namespace {

constexpr int64_t kHour = ms_per_hour;
const Policy kPolicy{Algorithm::sliding, Rate{1000, kHour}, 0};

// A stand-in for the Redis side of a flush: window start -> total over all hosts.
struct Store {
    std::map<int64_t, uint64_t> windows;
    std::pair<uint64_t, uint64_t> apply(const sync::Delta& d) {
        windows[d.window] += d.cur;
        windows[d.window - kHour] += d.prev;
        return {windows[d.window], windows[d.window - kHour]};
    }
};

void count(State& s, int64_t now, int n) {
    for (int i = 0; i < n; i++) {
        record(kPolicy, s, now);
    }
}

TEST(Sync, TakeZeroesAndApplyShowsTheGlobalTotal) {
    State a, b;
    Store redis;
    const int64_t t0 = 100 * kHour + 10;
    count(a, t0, 7);
    count(b, t0, 5);
    EXPECT_EQ(a.unsent_cur, 7u);

    sync::Delta da = sync::take_unsent(kPolicy.rate, a, t0);
    EXPECT_EQ(da.cur, 7u);
    EXPECT_EQ(da.window, 100 * kHour);
    EXPECT_EQ(a.unsent_cur, 0u);
    auto [ga, gpa] = redis.apply(da);
    sync::apply_global(kPolicy.rate, a, da, ga, gpa, t0);
    EXPECT_EQ(a.cur, 7u);

    sync::Delta db = sync::take_unsent(kPolicy.rate, b, t0);
    auto [gb, gpb] = redis.apply(db);
    sync::apply_global(kPolicy.rate, b, db, gb, gpb, t0);
    EXPECT_EQ(b.cur, 12u);  // sees host a's 7 too

    // a learns b's counts on its next flush, even with nothing to send.
    sync::Delta da2 = sync::take_unsent(kPolicy.rate, a, t0 + 1);
    EXPECT_TRUE(da2.empty());
    auto [ga2, gpa2] = redis.apply(da2);
    sync::apply_global(kPolicy.rate, a, da2, ga2, gpa2, t0 + 1);
    EXPECT_EQ(a.cur, 12u);
}

TEST(Sync, RequestsDuringAFlushAreKeptForTheNextOne) {
    State a;
    Store redis;
    const int64_t t0 = 5 * kHour;
    count(a, t0, 3);
    sync::Delta d = sync::take_unsent(kPolicy.rate, a, t0);
    count(a, t0 + 5, 4);  // while the send is in flight
    auto [g, gp] = redis.apply(d);
    sync::apply_global(kPolicy.rate, a, d, g, gp, t0 + 10);
    EXPECT_EQ(a.cur, 7u);
    EXPECT_EQ(a.unsent_cur, 4u);
    sync::Delta d2 = sync::take_unsent(kPolicy.rate, a, t0 + 20);
    EXPECT_EQ(d2.cur, 4u);
}

TEST(Sync, FailedSendIsRestored) {
    State a;
    const int64_t t0 = 5 * kHour;
    count(a, t0, 3);
    sync::Delta d = sync::take_unsent(kPolicy.rate, a, t0);
    count(a, t0, 2);
    sync::restore_unsent(kPolicy.rate, a, d, t0 + 1);
    EXPECT_EQ(a.unsent_cur, 5u);
    EXPECT_EQ(a.cur, 5u);
}

TEST(Sync, FailedSendAcrossAWindowChangeMovesToPrev) {
    State a;
    const int64_t t0 = 5 * kHour + kHour - 1;
    count(a, t0, 3);
    sync::Delta d = sync::take_unsent(kPolicy.rate, a, t0);
    sync::restore_unsent(kPolicy.rate, a, d, t0 + 2);  // now in the next window
    EXPECT_EQ(a.stamp, 6 * kHour);
    EXPECT_EQ(a.unsent_prev, 3u);
    EXPECT_EQ(a.unsent_cur, 0u);
    sync::Delta d2 = sync::take_unsent(kPolicy.rate, a, t0 + 3);
    EXPECT_EQ(d2.window, 6 * kHour);
    EXPECT_EQ(d2.prev, 3u);  // sent to the window it was counted in
}

TEST(Sync, UnsentCountsOlderThanThePreviousWindowAreDropped) {
    State a;
    count(a, 5 * kHour, 3);
    sync::Delta d = sync::take_unsent(kPolicy.rate, a, 7 * kHour + 1);
    EXPECT_TRUE(d.empty());
}

TEST(Sync, ApplyAfterTheWindowChangedUpdatesPrev) {
    State a;
    Store redis;
    const int64_t t0 = 5 * kHour + kHour - 1;
    count(a, t0, 3);
    redis.windows[5 * kHour] = 10;  // other hosts
    sync::Delta d = sync::take_unsent(kPolicy.rate, a, t0);
    auto [g, gp] = redis.apply(d);
    count(a, t0 + 2, 1);  // next window
    sync::apply_global(kPolicy.rate, a, d, g, gp, t0 + 3);
    EXPECT_EQ(a.stamp, 6 * kHour);
    EXPECT_EQ(a.prev, 13u);
    EXPECT_EQ(a.cur, 1u);
}

TEST(Sync, RedisThatLostItsDataDoesNotLowerLocalCounts) {
    State a;
    count(a, 5 * kHour, 50);
    sync::Delta d = sync::take_unsent(kPolicy.rate, a, 5 * kHour);
    sync::apply_global(kPolicy.rate, a, d, 0, 0, 5 * kHour);
    EXPECT_EQ(a.cur, 50u);
}

// Three hosts, random interleavings of requests, flushes that succeed or fail, and a clock
// that crosses windows: Redis ends with exactly the requests counted, per window.
TEST(Sync, RandomInterleavingsLoseNothingAndCountNothingTwice) {
    std::mt19937_64 rng(12345);
    for (int round = 0; round < 200; round++) {
        State hosts[3];
        Store redis;
        std::map<int64_t, uint64_t> truth;
        struct InFlight {
            int host;
            sync::Delta d;
        };
        std::vector<InFlight> flying;
        int64_t now = 50 * kHour + static_cast<int64_t>(rng() % kHour);
        for (int step = 0; step < 300; step++) {
            now += static_cast<int64_t>(rng() % (kHour / 20));
            int h = static_cast<int>(rng() % 3);
            switch (rng() % 4) {
                case 0:
                case 1: {
                    record(kPolicy, hosts[h], now);
                    truth[now - now % kHour] += 1;
                    break;
                }
                case 2:
                    flying.push_back({h, sync::take_unsent(kPolicy.rate, hosts[h], now)});
                    break;
                case 3:
                    if (!flying.empty()) {
                        InFlight f = flying.front();
                        flying.erase(flying.begin());
                        if (rng() % 3 == 0) {
                            sync::restore_unsent(kPolicy.rate, hosts[f.host], f.d, now);
                        } else {
                            auto [g, gp] = redis.apply(f.d);
                            sync::apply_global(kPolicy.rate, hosts[f.host], f.d, g, gp, now);
                        }
                    }
                    break;
            }
        }
        // Drain: land everything in flight, then flush every host until nothing is left,
        // all within the current window so nothing recent is dropped as too old.
        for (auto& f : flying) {
            auto [g, gp] = redis.apply(f.d);
            sync::apply_global(kPolicy.rate, hosts[f.host], f.d, g, gp, now);
        }
        for (int pass = 0; pass < 2; pass++) {  // the second pass only learns the totals
            for (auto& s : hosts) {
                sync::Delta d = sync::take_unsent(kPolicy.rate, s, now);
                EXPECT_TRUE(pass == 0 || d.empty());
                auto [g, gp] = redis.apply(d);
                sync::apply_global(kPolicy.rate, s, d, g, gp, now);
            }
        }
        // The current and previous windows must match exactly (older counts may be dropped
        // by design once they can no longer influence a decision).
        const int64_t cur = now - now % kHour;
        EXPECT_EQ(redis.windows[cur], truth[cur]) << "round " << round;
        EXPECT_LE(redis.windows[cur - kHour], truth[cur - kHour]) << "round " << round;
        for (auto& s : hosts) {
            EXPECT_EQ(s.stamp, cur);
            EXPECT_EQ(s.cur, truth[cur]);
            EXPECT_EQ(s.unsent_cur, 0u);
        }
    }
}

}  // namespace
}  // namespace throttle::core
