// mode=lease arithmetic (core/lease.hpp): units are spent only from a lease valid at now,
// never more than were granted; grants of the lease's window add up, a later window's grant
// replaces the lease and gives its units back, a late grant of an earlier window is given back
// itself; idle and expired leases are taken back whole; the adaptive size follows the spends of
// the last second, capped by lease=N. A simulation of hosts leasing from one window checks
// that units are conserved: granted = spent + held + given back.
#include "core/lease.hpp"

#include <gtest/gtest.h>

#include <random>
#include <vector>

namespace throttle::core::lease {
namespace {

constexpr int64_t kT0 = 1'700'000'000'000;  // epoch ms, a whole second

TEST(Lease, AllZeroIsNoLease) {
    LeaseState l;
    EXPECT_FALSE(spend(l, kT0));
    EXPECT_TRUE(is_empty(l, kT0));
    EXPECT_EQ(sizeof(LeaseState), 32u);
    State s = to_state(l);
    EXPECT_EQ(s.stamp, 0);
}

TEST(Lease, StateRoundTrip) {
    LeaseState l;
    l.deadline = kT0 + 5;
    l.window = kT0 - 100;
    l.held = 7;
    l.asked = 9;
    l.last_s = 123;
    l.rate_cur = 4;
    l.rate_prev = 5;
    LeaseState back = from_state(to_state(l));
    EXPECT_EQ(back.deadline, l.deadline);
    EXPECT_EQ(back.window, l.window);
    EXPECT_EQ(back.held, 7u);
    EXPECT_EQ(back.asked, 9u);
    EXPECT_EQ(back.last_s, 123u);
    EXPECT_EQ(back.rate_cur, 4);
    EXPECT_EQ(back.rate_prev, 5);
}

TEST(Lease, SpendsOnlyGrantedUnitsBeforeTheDeadline) {
    LeaseState l;
    EXPECT_EQ(grant(l, kT0, kT0 + 1000, 3, kT0).units, 0u);
    EXPECT_TRUE(spend(l, kT0));
    EXPECT_TRUE(spend(l, kT0 + 10));
    EXPECT_TRUE(spend(l, kT0 + 999));
    EXPECT_FALSE(spend(l, kT0 + 999));  // none left
    EXPECT_EQ(grant(l, kT0, kT0 + 1000, 2, kT0 + 999).units, 0u);
    EXPECT_FALSE(spend(l, kT0 + 1000));  // the window is over locally
    EXPECT_EQ(l.held, 2u);
}

TEST(Lease, UnspendOnlyIntoTheSameLease) {
    LeaseState l;
    grant(l, kT0, kT0 + 1000, 1, kT0);
    ASSERT_TRUE(spend(l, kT0));
    int64_t token = l.deadline;
    unspend(l, token);
    EXPECT_EQ(l.held, 1u);
    ASSERT_TRUE(spend(l, kT0));
    Giveback b = grant(l, kT0 + 1000, kT0 + 2000, 5, kT0 + 1000);  // next window
    EXPECT_EQ(b.units, 0u);                                        // nothing held to give back
    unspend(l, token);  // the unit was of the old lease: not added to the new one
    EXPECT_EQ(l.held, 5u);
    unspend(l, 0);
    EXPECT_EQ(l.held, 5u);
}

TEST(Lease, GrantsOfOneWindowAddUp) {
    LeaseState l;
    grant(l, kT0, kT0 + 900, 4, kT0);
    Giveback b = grant(l, kT0, kT0 + 800, 6, kT0);
    EXPECT_EQ(b.units, 0u);
    EXPECT_EQ(l.held, 10u);
    EXPECT_EQ(l.deadline, kT0 + 800);  // the earlier (conservative) deadline
}

TEST(Lease, ALaterWindowReplacesTheLeaseAndGivesItsUnitsBack) {
    LeaseState l;
    grant(l, kT0, kT0 + 1000, 4, kT0);
    Giveback b = grant(l, kT0 + 1000, kT0 + 2000, 3, kT0 + 1000);
    EXPECT_EQ(b.window, kT0);
    EXPECT_EQ(b.units, 4u);
    EXPECT_EQ(l.window, kT0 + 1000);
    EXPECT_EQ(l.held, 3u);
}

TEST(Lease, ALateGrantOfAnEarlierWindowIsGivenBack) {
    LeaseState l;
    grant(l, kT0 + 1000, kT0 + 2000, 4, kT0 + 1000);
    Giveback b = grant(l, kT0, kT0 + 1000, 9, kT0 + 1000);
    EXPECT_EQ(b.window, kT0);
    EXPECT_EQ(b.units, 9u);
    EXPECT_EQ(l.held, 4u);
    EXPECT_EQ(l.window, kT0 + 1000);
}

TEST(Lease, TakeBackExpiredIdleOrAll) {
    LeaseState l;
    grant(l, kT0, kT0 + 60'000, 5, kT0);
    EXPECT_EQ(take_back(l, kT0 + 1000, idle_return_s, false).units, 0u);  // busy enough
    Giveback b = take_back(l, kT0 + idle_return_s * 1000, idle_return_s, false);
    EXPECT_EQ(b.units, 5u);  // idle for idle_return_s
    EXPECT_EQ(b.window, kT0);
    EXPECT_EQ(l.held, 0u);
    EXPECT_FALSE(spend(l, kT0 + idle_return_s * 1000));

    grant(l, kT0, kT0 + 500, 3, kT0);
    EXPECT_EQ(take_back(l, kT0 + 500, 100, false).units, 3u);  // the window is over

    grant(l, kT0, kT0 + 60'000, 2, kT0);
    EXPECT_EQ(take_back(l, kT0, 100, true).units, 2u);  // exit
}

TEST(Lease, SpendingKeepsTheLeaseBusy) {
    LeaseState l;
    grant(l, kT0, kT0 + 60'000, 100, kT0);
    for (int s = 0; s < 10; s++) {
        ASSERT_TRUE(spend(l, kT0 + s * 1000));
        EXPECT_EQ(take_back(l, kT0 + s * 1000 + 999, idle_return_s, false).units, 0u);
    }
}

TEST(Lease, TargetFollowsTheLastSecondsSpendsCappedByMax) {
    LeaseState l;
    EXPECT_EQ(target_units(l, kT0, 100), 1u);  // nothing known: one unit
    grant(l, kT0, kT0 + 60'000, 1000, kT0);
    for (int i = 0; i < 30; i++) {
        spend(l, kT0 + 500);
    }
    EXPECT_EQ(target_units(l, kT0 + 600, 100), 30u);   // this second so far
    EXPECT_EQ(target_units(l, kT0 + 1200, 100), 30u);  // the last full second
    EXPECT_EQ(target_units(l, kT0 + 1200, 20), 20u);   // capped by lease=N
    EXPECT_EQ(target_units(l, kT0 + 2500, 100), 1u);   // nothing for a second: 1
    EXPECT_EQ(target_units(l, kT0 + 600, 0), 1u);
}

TEST(Lease, PrefetchAtHalfTheTargetOnceInFlight) {
    LeaseState l;
    grant(l, kT0, kT0 + 60'000, 10, kT0);
    for (int i = 0; i < 10; i++) {
        spend(l, kT0);  // rate 10 this second, held 0
    }
    grant(l, kT0, kT0 + 60'000, 10, kT0);
    uint32_t want = 0;
    EXPECT_FALSE(should_prefetch(l, kT0, 100, want));  // holds 10 of a target of 10
    for (int i = 0; i < 3; i++) {
        spend(l, kT0);
    }
    EXPECT_FALSE(should_prefetch(l, kT0, 100, want));  // 7 > 13 / 2
    spend(l, kT0);
    ASSERT_TRUE(should_prefetch(l, kT0, 100, want));  // 6 <= 14 / 2
    EXPECT_EQ(want, 14u - 6u);
    uint32_t mark = mark_asking(l, kT0);
    EXPECT_TRUE(asking(l, kT0 + 10));
    EXPECT_FALSE(should_prefetch(l, kT0 + 10, 100, want));  // one call at a time
    EXPECT_FALSE(asking(l, kT0 + ask_stale_ms));            // a lost call goes stale
    EXPECT_TRUE(asking(l, kT0 + 1049, 1050));
    EXPECT_FALSE(asking(l, kT0 + 1050, 1050));  // after the module's own bound
    done_asking(l, mark + 2);                   // another call's mark: kept
    EXPECT_NE(l.asked, 0u);
    done_asking(l, mark);
    EXPECT_EQ(l.asked, 0u);
    EXPECT_FALSE(should_prefetch(l, kT0 + 60'000, 100, want));  // the lease is over
}

TEST(Lease, AFailedCallIsNotedUntilTheNextMark) {
    LeaseState l;
    uint32_t mark = mark_asking(l, kT0);
    failed_asking(l, mark + 2);  // another call's: nothing
    EXPECT_FALSE(last_call_failed(l));
    failed_asking(l, mark);
    EXPECT_TRUE(last_call_failed(l));
    EXPECT_FALSE(asking(l, kT0));
    EXPECT_FALSE(asking(l, 2));  // never read as a mark sent at ms 2
    mark_asking(l, kT0 + 5);
    EXPECT_FALSE(last_call_failed(l));
    EXPECT_TRUE(asking(l, kT0 + 5));
}

TEST(Lease, AskingMarkIsNeverZero) {
    LeaseState l;
    EXPECT_NE(mark_asking(l, 0), 0u);
    EXPECT_NE(mark_asking(l, int64_t(1) << 32), 0u);
    EXPECT_TRUE(asking(l, int64_t(1) << 32));
}

// Hosts lease units of one window from a model Redis, spend them, give them back (idle, the
// window's end, replaced leases), in random order: no unit is spent twice or out of nowhere.
TEST(Lease, SimulatedHostsConserveUnits) {
    std::mt19937_64 rng(13);
    constexpr int64_t P = 10'000;
    uint64_t granted = 0, spent = 0, returned = 0;
    std::vector<LeaseState> hosts(3);
    int64_t now = kT0;
    for (int step = 0; step < 200'000; step++) {
        now += static_cast<int64_t>(rng() % 3);
        LeaseState& h = hosts[rng() % hosts.size()];
        switch (rng() % 8) {
            case 0: {  // a grant for now's window (or, rarely, a late one for the one before)
                int64_t w = now - now % P;
                if (rng() % 10 == 0) {
                    w -= P;
                }
                uint32_t n = static_cast<uint32_t>(1 + rng() % 20);
                granted += n;
                Giveback b = grant(h, w, w + P, n, now);
                returned += b.units;
                break;
            }
            case 1: {
                Giveback b = take_back(h, now, idle_return_s, rng() % 50 == 0);
                returned += b.units;
                break;
            }
            default:
                if (spend(h, now)) {
                    ASSERT_LT(now, h.deadline);
                    spent++;
                }
        }
    }
    uint64_t held = 0;
    for (auto& h : hosts) {
        held += h.held;
    }
    EXPECT_EQ(granted, spent + held + returned);
    EXPECT_GT(spent, 0u);
    EXPECT_GT(returned, 0u);
}

}  // namespace
}  // namespace throttle::core::lease
