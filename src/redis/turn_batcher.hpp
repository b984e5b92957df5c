// The end-of-turn batcher (layer: redis): items submitted during one event-loop turn are handed
// over together at its end, in batches of at most `max`, so that one Redis call serves every
// request of the turn (strict decisions, cache lookups).
//
// In flight (natural batching, as Nagle's algorithm): with `max_in_flight` K > 0, a batch
// handed to send() is in flight until its owner calls done() for it, and at most K are in
// flight at once. Items submitted meanwhile stay queued; when a call completes, everything
// queued goes at the end of that turn, in the fewest batches. At low load nothing changes
// (nothing in flight: sent at the end of the turn); under load a batch holds what arrived
// during one round trip. K = 0: no limit, every turn's items are sent at its end.
//
// Contract:
//   - send(batch, queued_ms) is called from the loop, never from inside submit(), with items
//     in submission order, at most `max` per call; queued_ms is Loop::now_ms() when the oldest
//     of them was submitted (the caller's deadline counts from it, not from the send).
//   - done() must be called exactly once per send() call, when its reply, its error or its
//     connection's failure was delivered (a batch split in parts: when all of them were),
//     from anywhere, inside send() too (the call could not be made). A done() that is never
//     called holds a slot forever: the batcher then sends nothing more than K-1 at a time.
//   - skip(item), when set, is asked for each item first; an item it returns true for is not
//     sent (the request ended meanwhile). It may act on the item (tell it it failed).
//   - fail(item) is called for an item that could not be put in a batch (memory), so that its
//     request is answered anyway.
//   - Items submitted while send() runs (a reply path never does, but a callback may) go to the
//     next flush, which is posted again: nothing is lost or sent twice.
//   - Destroying the batcher drops what is queued; its owner must not call done() after.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "redis/loop.hpp"

namespace throttle::redis {

template <typename Item>
class TurnBatcher {
   public:
    using Send = std::function<void(std::vector<Item>&& batch, uint64_t queued_ms)>;
    using Skip = std::function<bool(Item& item)>;
    using Fail = std::function<void(Item& item)>;

    // May throw std::bad_alloc.
    TurnBatcher(Loop& loop, size_t max, size_t max_in_flight, Send send, Skip skip, Fail fail)
        : loop_(loop),
          max_(std::max<size_t>(1, max)),
          max_in_flight_(max_in_flight),
          send_(std::move(send)),
          skip_(std::move(skip)),
          fail_(std::move(fail)) {
        deferred_ = loop.create_deferred([this]() noexcept { flush(); });
    }
    TurnBatcher(const TurnBatcher&) = delete;
    TurnBatcher& operator=(const TurnBatcher&) = delete;

    // Queues an item for the end of this turn, or, while K calls are in flight, for the end of
    // the turn one completes in. False when it could not be queued (memory).
    bool submit(Item item) noexcept {
        try {
            times_.push_back(loop_.now_ms());
        } catch (...) {
            return false;
        }
        try {
            queue_.push_back(std::move(item));
        } catch (...) {
            times_.pop_back();
            return false;
        }
        if (room()) {
            deferred_->post();
        }
        return true;
    }

    // One send() call completed (see the contract).
    void done() noexcept {
        if (in_flight_ > 0) {
            in_flight_--;
        }
        if (head_ < queue_.size()) {
            deferred_->post();
        }
    }

    size_t queued() const noexcept { return queue_.size() - head_; }
    size_t in_flight() const noexcept { return in_flight_; }

   private:
    bool room() const noexcept { return max_in_flight_ == 0 || in_flight_ < max_in_flight_; }

    void flush() noexcept {
        // queue_[head_, end) are sent as far as room() allows; what send(), skip() or fail()
        // submit lands after `end`, for the next flush. `queue_` and `batch_` keep their
        // capacity from turn to turn (send() may take the batch's buffer, or swap it for one
        // of its own, kept empty).
        const size_t end = queue_.size();
        while (head_ < end && room()) {
            batch_.clear();
            try {
                batch_.reserve(std::min(end - head_, max_));
            } catch (...) {
            }
            uint64_t queued_ms = 0;
            while (head_ < end && batch_.size() < max_) {
                size_t at = head_++;
                if (skip_ && skip_(queue_[at])) {
                    continue;
                }
                if (batch_.empty()) {
                    queued_ms = times_[at];
                }
                try {
                    batch_.push_back(std::move(queue_[at]));
                } catch (...) {
                    fail_(queue_[at]);  // only when the reserve above failed: out of memory
                }
            }
            if (!batch_.empty()) {
                in_flight_++;
                send_(std::move(batch_), queued_ms);  // may call done() (not sent)
            }
        }
        batch_.clear();
        // Drop what was taken (moved from or skipped); keep the rest in order.
        if (head_ == queue_.size()) {
            queue_.clear();
            times_.clear();
        } else if (head_ > 0) {
            queue_.erase(queue_.begin(), queue_.begin() + static_cast<ptrdiff_t>(head_));
            times_.erase(times_.begin(), times_.begin() + static_cast<ptrdiff_t>(head_));
        }
        head_ = 0;  // what is left was posted again by submit() or will be by done()
    }

    Loop& loop_;
    size_t max_;
    size_t max_in_flight_;
    Send send_;
    Skip skip_;
    Fail fail_;
    std::unique_ptr<Deferred> deferred_;
    std::vector<Item> queue_;
    std::vector<uint64_t> times_;  // when each of queue_'s items was submitted (Loop::now_ms())
    size_t head_ = 0;              // queue_[0, head_) were taken by the flush running
    size_t in_flight_ = 0;
    std::vector<Item> batch_;
};

}  // namespace throttle::redis
