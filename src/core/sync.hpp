// mode=sync: the arithmetic of flushing a key's unsent counts to Redis and folding the
// global totals Redis answers back into the local state. Sliding window only (its counts add
// up; a GCRA arrival time does not). Pure C++, no nginx header (layer: core).
//
// A flush of one key, under the zone's lock each time:
//   1. d = take_unsent(rate, state, now)   the counts to send, zeroed in state
//   2. send: INCRBY window d.window by d.cur, window d.window - period by d.prev; Redis
//      answers the totals of both windows over every host (g_cur, g_prev)
//   3a. success: apply_global(rate, state, d, g_cur, g_prev, now)
//   3b. failure: restore_unsent(rate, state, d, now)   (counted again on the next flush)
// Requests counted between 1 and 3 stay in unsent_* and are never lost or counted twice.
#pragma once

#include <cstdint>

#include "core/limiter.hpp"

namespace throttle::core::sync {

struct Delta {
    int64_t window = 0;  // start of the window `cur` belongs to (epoch ms)
    uint32_t cur = 0;    // requests to add to window
    uint32_t prev = 0;   // requests to add to window - period
    bool empty() const noexcept { return cur == 0 && prev == 0; }
};

// Rolls the state to now and takes its unsent counts (zeroing them).
Delta take_unsent(const Rate& rate, State& state, int64_t now_ms) noexcept;

// A send failed: gives the counts back to the windows that are still current or previous
// (older ones can no longer change any decision, here or on another host).
void restore_unsent(const Rate& rate, State& state, const Delta& sent, int64_t now_ms) noexcept;

// A send succeeded: Redis holds g_cur requests for sent.window and g_prev for the window
// before, over all hosts (this host's sent counts included). The local view becomes the
// global totals plus what this host counted since the send; it never goes below what this
// host already knew (a Redis that lost its data does not make the limit forget).
void apply_global(const Rate& rate, State& state, const Delta& sent, uint64_t g_cur,
                  uint64_t g_prev, int64_t now_ms) noexcept;

}  // namespace throttle::core::sync
