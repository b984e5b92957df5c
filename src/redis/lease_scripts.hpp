// mode=lease: the two Lua scripts a lease zone runs in Redis, their arguments and replies
// (layer: redis; no nginx header, no hiredis type). Keys as in scripts.hpp: BASE ":" W is the
// sliding window starting at W, the same counter a strict zone counts requests in (a lease
// zone's units are requests admitted in advance).
//
// LEASE (a batch of n >= 1 keys, decided one after the other at one now; grants units of
// each key's quota in the current window)
//   KEYS = the BASE of each key (the same BASE may come twice: the second sees the first's grant)
//   ARGV = clock ("" for Redis' TIME; epoch ms in tests), then per key: limit L, period_ms P,
//          want (>= 1), host (the asking host's id, hex; "" for none)
//   now = Redis' TIME in ms; W = now - now % P, e = now - W; cur = BASE:W, prev = BASE:(W - P)
//   (missing: 0). avail = the most units the sliding window admits at this instant: the
//   largest k with prev * (P - e) + (cur + k) * P <= L * P (what strict would admit, request
//   by request, at now). Granted: g = min(want, max(1, floor(avail / s))) when avail >= 1
//   (INCRBY BASE:W g; a key the call creates gets PEXPIRE 2P + 1000, as strict's), else 0,
//   where s = 8 (lease_share), or, when that share is below want (near the limit) and more
//   than 4 hosts asked there in the last 10 s, 2 x those hosts: BASE ":h" is a sorted set of
//   the hosts that asked near the limit (score: the ms they last did; older than 10 s removed;
//   expiry 10 s), written only then.
//   Reply, per key, flat: g, W, P - e (ms left in the window), v where v = avail - g (units
//   left after the grant) when g >= 1, else the ms until one unit is admitted (strict's
//   retry-after, >= 1). Exact while L * P < 2^53 (strict_exact()). On a Redis Cluster a call's
//   keys must share a slot: the module sends one key per call there.
//
// RETURN (n >= 1 keys; gives back unspent units)
//   KEYS = the BASE of each key, ARGV = per key: W, units
//   Per key, BASE:W, if present, drops by min(units, its count): never below 0, its expiry kept
//   (a window already expired is not created again). Reply: the units taken off in all.
//   Not idempotent: sent once, never again (a return lost to a timeout leaves the units
//   counted: under-admission, never over). On a Redis Cluster: one key per call.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "redis/reply.hpp"
#include "redis/script.hpp"
#include "redis/scripts.hpp"

namespace throttle::redis {

inline constexpr uint64_t lease_share = 8;  // core::lease::lease_share

const Script& lease_script();
const Script& lease_return_script();

struct LeaseGrant {
    uint64_t units = 0;          // granted (0: refused)
    int64_t window = 0;          // W, epoch ms
    int64_t left_ms = 0;         // ms left in W at Redis' now (>= 1)
    uint64_t remaining = 0;      // granted: units the window still admits after the grant
    int64_t retry_after_ms = 0;  // refused: ms until one unit is admitted (>= 1)
};

struct LeaseAsk {
    std::string_view base;
    uint64_t limit = 0;
    int64_t period_ms = 0;
    uint64_t want = 0;      // 0 is sent as 1
    std::string_view host;  // the host's id (hex), "" for none
};

// The most keys the module puts in one LEASE call (like strict_batch_max).
inline constexpr size_t lease_batch_max = 128;

// asks[0..n); clock_ms < 0: Redis' TIME. False when n == 0 or memory runs out.
bool build_lease_args(const LeaseAsk* asks, size_t n, int64_t clock_ms, EvalArgs& out) noexcept;
// out[0..n) (resized); false unless the reply is an array of 4n integers of the shape above.
bool parse_lease_reply(const Reply& reply, size_t n, std::vector<LeaseGrant>& out) noexcept;

struct LeaseReturn {
    std::string_view base;
    int64_t window = 0;
    uint64_t units = 0;
};
bool build_lease_return_args(const LeaseReturn* returns, size_t n, EvalArgs& out) noexcept;
inline bool build_lease_return_args(std::string_view base, int64_t window, uint64_t units,
                                    EvalArgs& out) noexcept {
    LeaseReturn r{base, window, units};
    return build_lease_return_args(&r, 1, out);
}
// The units taken off; false unless the reply is a non-negative integer.
bool parse_lease_return_reply(const Reply& reply, uint64_t& units) noexcept;

}  // namespace throttle::redis
