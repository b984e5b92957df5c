// The end-of-turn batcher under the fake loop: what one turn submits is sent at its end, in
// order, in batches of at most `max`; skipped items are not sent; nothing is sent from inside
// submit(); destroying the batcher drops what is queued. With an in-flight limit K: at most K
// sends without their done(), what arrives meanwhile goes in one batch when one completes,
// done() from inside send() frees its slot at once, and each batch says when its oldest item
// was queued.
#include "redis/turn_batcher.hpp"

#include <gtest/gtest.h>

#include "support.hpp"

namespace throttle::redis::test {
namespace {

struct Recorder {
    std::vector<std::vector<int>> batches;
    std::vector<int> skipped;
    std::vector<int> failed;
    bool inside_submit = false;
    bool sent_inside_submit = false;
};

TurnBatcher<int> make(FakeLoop& loop, Recorder& rec, size_t max, bool skip_odd = false) {
    return TurnBatcher<int>(
        loop, max, 0,
        [&rec](std::vector<int>&& batch, uint64_t) {
            rec.sent_inside_submit = rec.sent_inside_submit || rec.inside_submit;
            rec.batches.push_back(std::move(batch));
        },
        [&rec, skip_odd](int& item) {
            if (skip_odd && item % 2 != 0) {
                rec.skipped.push_back(item);
                return true;
            }
            return false;
        },
        [&rec](int& item) { rec.failed.push_back(item); });
}

TEST(TurnBatcher, OneTurnIsOneBatch) {
    FakeLoop loop;
    Recorder rec;
    TurnBatcher<int> b = make(loop, rec, 64);
    for (int i = 0; i < 10; i++) {
        rec.inside_submit = true;
        EXPECT_TRUE(b.submit(i));
        rec.inside_submit = false;
    }
    EXPECT_TRUE(rec.batches.empty());  // nothing before the turn ends
    EXPECT_EQ(b.queued(), 10u);
    loop.end_turn();
    ASSERT_EQ(rec.batches.size(), 1u);
    EXPECT_EQ(rec.batches[0], (std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}));
    EXPECT_FALSE(rec.sent_inside_submit);
    EXPECT_EQ(b.queued(), 0u);
    loop.end_turn();  // nothing posted: nothing sent again
    EXPECT_EQ(rec.batches.size(), 1u);
}

TEST(TurnBatcher, SplitsAtMaxInOrder) {
    FakeLoop loop;
    Recorder rec;
    TurnBatcher<int> b = make(loop, rec, 4);
    for (int i = 0; i < 10; i++) {
        b.submit(i);
    }
    loop.end_turn();
    ASSERT_EQ(rec.batches.size(), 3u);
    EXPECT_EQ(rec.batches[0], (std::vector<int>{0, 1, 2, 3}));
    EXPECT_EQ(rec.batches[1], (std::vector<int>{4, 5, 6, 7}));
    EXPECT_EQ(rec.batches[2], (std::vector<int>{8, 9}));
}

TEST(TurnBatcher, SkippedItemsAreNotSentAndDoNotTakeASlot) {
    FakeLoop loop;
    Recorder rec;
    TurnBatcher<int> b = make(loop, rec, 2, true);
    for (int i = 0; i < 7; i++) {
        b.submit(i);
    }
    loop.end_turn();
    EXPECT_EQ(rec.skipped, (std::vector<int>{1, 3, 5}));
    ASSERT_EQ(rec.batches.size(), 2u);
    EXPECT_EQ(rec.batches[0], (std::vector<int>{0, 2}));
    EXPECT_EQ(rec.batches[1], (std::vector<int>{4, 6}));
}

TEST(TurnBatcher, EachTurnItsOwnBatch) {
    FakeLoop loop;
    Recorder rec;
    TurnBatcher<int> b = make(loop, rec, 64);
    b.submit(1);
    b.submit(2);
    loop.end_turn();
    b.submit(3);
    loop.end_turn();
    ASSERT_EQ(rec.batches.size(), 2u);
    EXPECT_EQ(rec.batches[0], (std::vector<int>{1, 2}));
    EXPECT_EQ(rec.batches[1], (std::vector<int>{3}));
}

TEST(TurnBatcher, SubmitFromSendGoesToTheNextFlush) {
    FakeLoop loop;
    std::vector<std::vector<int>> batches;
    TurnBatcher<int>* self = nullptr;
    TurnBatcher<int> b(
        loop, 64, 0,
        [&](std::vector<int>&& batch, uint64_t) {
            batches.push_back(batch);
            if (batch.front() < 3) {
                self->submit(batch.front() + 1);  // a callback that asks again
            }
        },
        nullptr, [](int&) {});
    self = &b;
    b.submit(0);
    loop.end_turn();  // runs until nothing is posted: 0, then 1, 2, 3
    ASSERT_EQ(batches.size(), 4u);
    for (int i = 0; i < 4; i++) {
        EXPECT_EQ(batches[static_cast<size_t>(i)], (std::vector<int>{i}));
    }
}

TEST(TurnBatcher, DestroyedWithAQueueSendsNothing) {
    FakeLoop loop;
    Recorder rec;
    {
        TurnBatcher<int> b = make(loop, rec, 64);
        b.submit(7);
        b.submit(8);
    }
    loop.end_turn();  // its deferred flush went with it
    EXPECT_TRUE(rec.batches.empty());
}

TEST(TurnBatcher, TimersRunInTheirOwnTurn) {
    // A timer's work submitted during advance_to() is flushed before the next timer fires.
    FakeLoop loop;
    Recorder rec;
    TurnBatcher<int> b = make(loop, rec, 64);
    std::vector<size_t> seen;
    auto t1 = loop.create_timer([&]() noexcept { b.submit(1); });
    auto t2 = loop.create_timer([&]() noexcept { seen.push_back(rec.batches.size()); });
    t1->start(10);
    t2->start(20);
    loop.advance_to(30);
    EXPECT_EQ(seen, (std::vector<size_t>{1}));
    ASSERT_EQ(rec.batches.size(), 1u);
}

// A batcher limited to `k` calls in flight, recording each batch and when its oldest item was
// queued; done() is the test's to call.
struct InFlight {
    FakeLoop loop;
    std::vector<std::vector<int>> batches;
    std::vector<uint64_t> queued_ms;
    std::function<void()> on_send;  // run inside send(), when set
    TurnBatcher<int> b;
    InFlight(size_t k, size_t max = 64)
        : b(
              loop, max, k,
              [this](std::vector<int>&& batch, uint64_t at) {
                  batches.push_back(std::move(batch));
                  queued_ms.push_back(at);
                  if (on_send) {
                      on_send();
                  }
              },
              nullptr, [](int&) {}) {}
};

TEST(TurnBatcherInFlight, OneCallOutTheRestWaitThenGoTogether) {
    InFlight t(1);
    t.b.submit(1);
    t.loop.end_turn();
    ASSERT_EQ(t.batches.size(), 1u);
    EXPECT_EQ(t.b.in_flight(), 1u);
    for (int turn = 0; turn < 3; turn++) {  // three turns while the call is out
        t.b.submit(10 + 2 * turn);
        t.b.submit(11 + 2 * turn);
        t.loop.end_turn();
        EXPECT_EQ(t.batches.size(), 1u) << "sent while the limit was reached";
    }
    EXPECT_EQ(t.b.queued(), 6u);
    t.b.done();                       // the reply came
    EXPECT_EQ(t.batches.size(), 1u);  // not from inside done(): at the end of the turn
    t.loop.end_turn();
    ASSERT_EQ(t.batches.size(), 2u);
    EXPECT_EQ(t.batches[1], (std::vector<int>{10, 11, 12, 13, 14, 15}));
    EXPECT_EQ(t.b.in_flight(), 1u);
    EXPECT_EQ(t.b.queued(), 0u);
    t.b.done();
    t.loop.end_turn();
    EXPECT_EQ(t.b.in_flight(), 0u);
    EXPECT_EQ(t.batches.size(), 2u);  // nothing queued: nothing sent
    t.b.submit(20);  // idle again: sent at the end of this turn, as without a limit
    t.loop.end_turn();
    ASSERT_EQ(t.batches.size(), 3u);
    EXPECT_EQ(t.batches[2], (std::vector<int>{20}));
}

TEST(TurnBatcherInFlight, TwoCallsOut) {
    InFlight t(2);
    t.b.submit(1);
    t.loop.end_turn();
    t.b.submit(2);
    t.loop.end_turn();
    t.b.submit(3);
    t.b.submit(4);
    t.loop.end_turn();
    ASSERT_EQ(t.batches.size(), 2u);
    EXPECT_EQ(t.b.in_flight(), 2u);
    t.b.done();
    t.loop.end_turn();
    ASSERT_EQ(t.batches.size(), 3u);
    EXPECT_EQ(t.batches[2], (std::vector<int>{3, 4}));
    EXPECT_EQ(t.b.in_flight(), 2u);
}

TEST(TurnBatcherInFlight, FullBatchesWaitTheirTurnInOrder) {
    // More than `max` queued while the call is out: one batch per completed call, in order.
    InFlight t(1, 3);
    t.b.submit(0);
    t.loop.end_turn();
    for (int i = 1; i <= 7; i++) {
        t.b.submit(i);
    }
    t.loop.end_turn();
    t.b.done();
    t.loop.end_turn();
    t.b.submit(8);  // after the others
    t.loop.end_turn();
    t.b.done();
    t.loop.end_turn();
    t.b.done();
    t.loop.end_turn();
    ASSERT_EQ(t.batches.size(), 4u);
    EXPECT_EQ(t.batches[1], (std::vector<int>{1, 2, 3}));
    EXPECT_EQ(t.batches[2], (std::vector<int>{4, 5, 6}));
    EXPECT_EQ(t.batches[3], (std::vector<int>{7, 8}));
    EXPECT_EQ(t.b.in_flight(), 1u);
    EXPECT_EQ(t.b.queued(), 0u);
}

TEST(TurnBatcherInFlight, DoneFromInsideSendFreesTheSlotAtOnce) {
    // A call that could not be made completes inside send(): the next batch goes in the same
    // flush, nothing stays queued, nothing is counted in flight.
    InFlight t(1, 2);
    t.on_send = [&t]() { t.b.done(); };
    for (int i = 0; i < 5; i++) {
        t.b.submit(i);
    }
    t.loop.end_turn();
    ASSERT_EQ(t.batches.size(), 3u);
    EXPECT_EQ(t.batches[2], (std::vector<int>{4}));
    EXPECT_EQ(t.b.in_flight(), 0u);
    EXPECT_EQ(t.b.queued(), 0u);
}

TEST(TurnBatcherInFlight, ExtraDoneDoesNotOpenASecondSlot) {
    InFlight t(1);
    t.b.done();  // none in flight: nothing to count down
    t.b.submit(1);
    t.b.submit(2);
    t.loop.end_turn();
    t.b.submit(3);
    t.loop.end_turn();
    EXPECT_EQ(t.batches.size(), 1u);
    EXPECT_EQ(t.b.in_flight(), 1u);
}

TEST(TurnBatcherInFlight, BatchSaysWhenItsOldestWasQueued) {
    InFlight t(1);
    t.loop.advance_to(100);
    t.b.submit(1);
    t.loop.end_turn();
    t.loop.advance_to(150);
    t.b.submit(2);  // waits for the call out
    t.loop.end_turn();
    t.loop.advance_to(170);
    t.b.submit(3);
    t.loop.end_turn();
    t.loop.advance_to(400);
    t.b.done();
    t.loop.end_turn();
    ASSERT_EQ(t.queued_ms.size(), 2u);
    EXPECT_EQ(t.queued_ms[0], 100u);
    EXPECT_EQ(t.queued_ms[1], 150u);  // not 400: the caller's deadline counts from 150
}

TEST(TurnBatcherInFlight, SkippedWhileQueuedAreNotSent) {
    // A request that ended (or fell back) while it waited for a slot is dropped by skip().
    FakeLoop loop;
    std::vector<std::vector<int>> batches;
    std::vector<int> gone;
    TurnBatcher<int> b(
        loop, 64, 1, [&](std::vector<int>&& batch, uint64_t) { batches.push_back(batch); },
        [&](int& item) { return std::find(gone.begin(), gone.end(), item) != gone.end(); },
        [](int&) {});
    b.submit(1);
    loop.end_turn();
    b.submit(2);
    b.submit(3);
    b.submit(4);
    loop.end_turn();
    gone = {2, 4};
    b.done();
    loop.end_turn();
    ASSERT_EQ(batches.size(), 2u);
    EXPECT_EQ(batches[1], (std::vector<int>{3}));
    gone = {5};
    b.submit(5);  // every item skipped: no call, nothing in flight but the one out
    b.done();
    loop.end_turn();
    EXPECT_EQ(batches.size(), 2u);
    EXPECT_EQ(b.in_flight(), 0u);
}

TEST(TurnBatcherInFlight, DestroyedWithCallsOutAndAQueue) {
    std::vector<std::vector<int>> batches;
    FakeLoop loop;
    {
        TurnBatcher<int> b(
            loop, 64, 1, [&](std::vector<int>&& batch, uint64_t) { batches.push_back(batch); },
            nullptr, [](int&) {});
        b.submit(1);
        loop.end_turn();
        b.submit(2);
        loop.end_turn();
    }
    loop.end_turn();
    EXPECT_EQ(batches.size(), 1u);
}

}  // namespace
}  // namespace throttle::redis::test
