// The end-of-turn batcher (layer: redis): items submitted during one event-loop turn are handed
// over together at its end, in batches of at most `max`, so that one Redis call serves every
// request of the turn (strict decisions, cache lookups).
//
// Contract:
//   - send() is called from the loop, never from inside submit(), with the items of the turn in
//     submission order, at most `max` per call.
//   - skip(item), when set, is asked for each item first; an item it returns true for is not
//     sent (the request ended meanwhile). It may act on the item (tell it it failed).
//   - fail(item) is called for an item that could not be put in a batch (memory), so that its
//     request is answered anyway.
//   - Items submitted while send() runs (a reply path never does, but a callback may) go to the
//     next flush, which is posted again: nothing is lost or sent twice.
#pragma once

#include <algorithm>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "redis/loop.hpp"

namespace throttle::redis {

template <typename Item>
class TurnBatcher {
   public:
    using Send = std::function<void(std::vector<Item>&& batch)>;
    using Skip = std::function<bool(Item& item)>;
    using Fail = std::function<void(Item& item)>;

    // May throw std::bad_alloc.
    TurnBatcher(Loop& loop, size_t max, Send send, Skip skip, Fail fail)
        : max_(std::max<size_t>(1, max)),
          send_(std::move(send)),
          skip_(std::move(skip)),
          fail_(std::move(fail)) {
        deferred_ = loop.create_deferred([this]() noexcept { flush(); });
    }
    TurnBatcher(const TurnBatcher&) = delete;
    TurnBatcher& operator=(const TurnBatcher&) = delete;

    // Queues an item for the end of this turn. False when it could not be queued (memory).
    bool submit(Item item) noexcept {
        try {
            queue_.push_back(std::move(item));
        } catch (...) {
            return false;
        }
        deferred_->post();
        return true;
    }

    size_t queued() const noexcept { return queue_.size(); }

   private:
    void flush() noexcept {
        // `sending_` keeps its capacity from turn to turn; submit() refills `queue_` meanwhile.
        // `batch_` too: send() may take its buffer, or swap it for one of its own (kept empty).
        sending_.swap(queue_);
        std::vector<Item>& batch = batch_;
        batch.clear();
        try {
            batch.reserve(std::min(sending_.size(), max_));
        } catch (...) {
        }
        for (Item& item : sending_) {
            if (skip_ && skip_(item)) {
                continue;
            }
            try {
                batch.push_back(std::move(item));
            } catch (...) {
                fail_(item);  // only when the reserve above failed: out of memory
                continue;
            }
            if (batch.size() == max_) {
                send_(std::move(batch));
                batch.clear();  // valid after a move: empty (or the buffer send() gave)
            }
        }
        if (!batch.empty()) {
            send_(std::move(batch));
        }
        batch.clear();
        sending_.clear();
    }

    size_t max_;
    Send send_;
    Skip skip_;
    Fail fail_;
    std::unique_ptr<Deferred> deferred_;
    std::vector<Item> queue_;
    std::vector<Item> sending_;
    std::vector<Item> batch_;
};

}  // namespace throttle::redis
