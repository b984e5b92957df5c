// The end-of-turn batcher under the fake loop: what one turn submits is sent at its end, in
// order, in batches of at most `max`; skipped items are not sent; nothing is sent from inside
// submit(); destroying the batcher drops what is queued.
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
        loop, max,
        [&rec](std::vector<int>&& batch) {
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
        loop, 64,
        [&](std::vector<int>&& batch) {
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

}  // namespace
}  // namespace throttle::redis::test
