// mode=lease: the arithmetic of one host's lease of a key's quota (layer: core, no nginx
// header). Semantics in README "mode=lease" and docs/ARCHITECTURE.md ("life of a leased
// decision"); the Redis side in redis/lease_scripts.hpp.
//
// Redis counts the units it grants in the key's sliding window (the same BASE:W counters
// strict counts requests in), granting only what the window still admits at that instant; a
// host spends its units locally while its clock is before the lease's deadline, the end of the
// window they were granted in, measured from the moment the call left (so a late reply or a
// clock difference never stretches a lease into the next window). Sum over hosts of admitted
// <= granted <= what the sliding window admits: never more than strict would admit.
//
// A LeaseState is 32 bytes, trivially copyable, kept in the zone's lease table (a SlotTable,
// whose core::State it is stored as: to_state()/from_state()); all-zero is "no lease".
// Callers hold the zone's lock.
#pragma once

#include <cstdint>
#include <type_traits>

#include "core/limiter.hpp"

namespace throttle::core::lease {

struct LeaseState {
    int64_t deadline = 0;    // local epoch ms: units are spendable while now < deadline (0: none)
    int64_t window = 0;      // the Redis window (start, epoch ms) the units were granted in
    uint32_t held = 0;       // granted, not spent yet
    uint32_t asked = 0;      // this host's lease call in flight: low 32 bits of its send ms | 1
    uint32_t last_s = 0;     // epoch seconds of the last spend or grant (rate, idleness)
    uint16_t rate_cur = 0;   // spends in second last_s (saturating)
    uint16_t rate_prev = 0;  // spends in the second before it
};
static_assert(sizeof(LeaseState) == sizeof(State));
static_assert(std::is_trivially_copyable_v<LeaseState>);

LeaseState from_state(const State& s) noexcept;
State to_state(const LeaseState& l) noexcept;

// A lease call in flight for longer is considered lost (its worker died): another may leave.
// The default; the module passes its Redis timeout + 1 s.
inline constexpr uint32_t ask_stale_ms = 3000;
// A lease no request spent from for this long is given back (other hosts can use it).
inline constexpr int64_t idle_return_s = 2;
// Redis grants at most 1/lease_share of what the window still admits (so the last units are
// shared: with fewer than 2 * lease_share left, one unit per call: strict); near the limit,
// with more than 4 hosts asking there, 1/(2 x hosts) (redis/lease_scripts.hpp).
inline constexpr uint64_t lease_share = 8;

// Units the host should hold for its rate: the spends of the last full second (or of this
// one, if more), at least 1, at most max_units (lease=N).
uint32_t target_units(const LeaseState& l, int64_t now_ms, uint32_t max_units) noexcept;

// Takes one unit when the lease is valid at now and holds one. Notes the spend (rate, last).
bool spend(LeaseState& l, int64_t now_ms) noexcept;
// Gives back a unit spend() took (another zone of the request rejected it), if the lease it
// came from (its deadline) is still the one held.
void unspend(LeaseState& l, int64_t deadline) noexcept;

// A lease call of this host is in flight (and not stale).
bool asking(const LeaseState& l, int64_t now_ms, uint32_t stale_ms = ask_stale_ms) noexcept;
// Marks a lease call as leaving now; returns its mark (for done_asking()).
uint32_t mark_asking(LeaseState& l, int64_t now_ms) noexcept;
void done_asking(LeaseState& l, uint32_t mark) noexcept;
// The call of `mark` failed (no answer from Redis): noted until the next call is marked, so
// that requests waiting for it elsewhere take their fallback at once.
void failed_asking(LeaseState& l, uint32_t mark) noexcept;
bool last_call_failed(const LeaseState& l) noexcept;

// After a spend: the host should ask for more now (it holds at most half its target, no call
// is in flight). `want` gets the units to ask: target - held.
bool should_prefetch(const LeaseState& l, int64_t now_ms, uint32_t max_units, uint32_t& want,
                     uint32_t stale_ms = ask_stale_ms) noexcept;

// Units to give back to Redis: `units` of window `window` (none when units == 0).
struct Giveback {
    int64_t window = 0;
    uint32_t units = 0;
};

// Redis granted `units` for `window`, valid locally until `deadline`. The units join the lease
// when it is of the same window; a lease of an earlier window is replaced (its units are given
// back: they were counted in a window that is over, its count still weighs as the next
// window's previous one); a grant for a window earlier than the lease's (a late reply) is
// given back itself. Notes the grant as activity (idleness).
Giveback grant(LeaseState& l, int64_t window, int64_t deadline, uint32_t units,
               int64_t now_ms) noexcept;

// The lease's units to give back now: its window is over locally (now >= deadline), or no
// request spent from it for idle_s seconds (idle_s <= 0: any), or `all` (exit). Empties it.
Giveback take_back(LeaseState& l, int64_t now_ms, int64_t idle_s, bool all) noexcept;

// Forgetting the state loses nothing (no units held, no call in flight).
bool is_empty(const LeaseState& l, int64_t now_ms) noexcept;

}  // namespace throttle::core::lease
