// The rate algorithms, over explicit state and an explicit clock.
// Pure C++, no nginx header (layer: core). State is trivially copyable and lives in
// shared memory; an all-zero State is a key never seen before.
#pragma once

#include <cstdint>
#include <type_traits>

#include "core/rate.hpp"

namespace throttle::core {

enum class Algorithm : uint8_t {
    sliding = 0,  // sliding-window counter: current and previous fixed windows, weighted
    gcra = 1,     // generic cell rate algorithm: a token bucket of `burst` requests
};

struct Policy {
    Algorithm algorithm = Algorithm::sliding;
    Rate rate;
    // gcra only: the bucket holds this many requests (admitted back to back when it is full).
    // 0 means rate.limit. Ignored by the sliding window.
    uint64_t burst = 0;
};

// Per-key state, 32 bytes.
//   sliding: stamp = start of the current fixed window (epoch ms, a multiple of period_ms),
//            cur = requests counted in that window, prev = requests counted in the window before.
//            Counts are plain sums (they add up across hosts, which a Redis flush needs).
//            unsent_cur / unsent_prev = the part of cur / prev this host counted and has not
//            sent to Redis yet (mode=sync, see sync.hpp); every mode keeps them, only sync
//            mode sends them.
//   gcra:    stamp = theoretical arrival time in epoch nanoseconds (0 = never seen);
//            cur and prev unused (0); unsent_* unused.
//   blocked_until (both, mode=strict): epoch ms until which Redis said this key is over its
//            limit; the key is rejected locally until then without asking Redis again.
struct State {
    int64_t stamp = 0;
    uint32_t cur = 0;
    uint32_t prev = 0;
    uint32_t unsent_cur = 0;
    uint32_t unsent_prev = 0;
    int64_t blocked_until = 0;
};
static_assert(sizeof(State) == 32);
static_assert(std::is_trivially_copyable_v<State>);

struct Decision {
    bool allowed = false;
    uint64_t limit = 0;          // the quota shown to clients (RateLimit-Policy q=)
    uint64_t remaining = 0;      // requests still admitted after this one (0 when rejected)
    int64_t reset_ms = 0;        // RateLimit t=: ms until one more request is admitted if
                                 // the client spends `remaining` now (= retry_after_ms when
                                 // rejected); see sliding_window.hpp and gcra.hpp
    int64_t retry_after_ms = 0;  // rejected: ms until one request would be admitted; else 0
};

// Would one more request be admitted at now_ms? Does not change state.
// Robust against now_ms stepping backwards (never underflows, never admits more than the
// limit because of it) and against counters near their maximum (saturating arithmetic).
Decision evaluate(const Policy& policy, const State& state, int64_t now_ms) noexcept;

// Counts one admitted request. Call only after evaluate() said allowed, with the same now_ms
// and with no other change to state in between (the caller holds the zone's lock).
// Returns a token for unrecord(): state.stamp right after counting.
int64_t record(const Policy& policy, State& state, int64_t now_ms) noexcept;

// evaluate() and, when it admits, record() (its token in `token`; unchanged when rejected),
// at the same now_ms: the same decision and state as the two calls, in one step.
Decision admit(const Policy& policy, State& state, int64_t now_ms, int64_t& token) noexcept;

// Takes back one request record() counted (a reservation that another check then refused),
// given record()'s token, even if other requests were counted since. Sliding: the count of
// the window it was counted in drops by one (nothing when that window is older than the
// previous one). GCRA: the arrival time moves back by one emission interval, never below
// what it would be had the request not come (exact unless the bucket drained in between).
void unrecord(const Policy& policy, State& state, int64_t token) noexcept;

// True when forgetting this state changes no future decision (the key can be evicted
// without losing counts).
bool is_idle(const Policy& policy, const State& state, int64_t now_ms) noexcept;

// A decision made elsewhere (by Redis) brought within what the policy can ever say: remaining
// at most the quota (0 when rejected), reset and retry-after between 0 and three windows (a
// correct count asks for at most two, plus the clock steps back by less than a window; a reply
// claiming more is wrong, and clients would be told to wait for years). Returns whether
// anything had to change.
bool clamp(const Policy& policy, Decision& d) noexcept;

// What RateLimit-Policy shows: q= (requests) and w= (seconds).
uint64_t quota(const Policy& policy) noexcept;
int64_t window_seconds(const Policy& policy) noexcept;

}  // namespace throttle::core
