// The generic cell rate algorithm (Algorithm::gcra): a token bucket of C requests that
// refills one request every T.
// Pure C++, no nginx header (layer: core).
//
// T = emission interval = period_ms * 1e6 / limit, in integer nanoseconds (rounded down, at
//     least 1). Rounding down makes the rate at most 1 ns per request faster than written:
//     7r/s is T = 142857142 ns. The clock is in whole ms, though: with a bucket of one, each
//     admission finds TAT <= now and the next is due T after that arrival, so 7r/s burst=1
//     spaces requests 143 ms apart. With C > 1 the TAT stays ahead of the clock and the
//     fractional schedule holds (7r/s admits 7 + 489 requests in 70 s of 1-ms ticks).
// C = capacity = burst ? burst : limit, clamped to 1 .. max_rate_limit.
// State: stamp = TAT, the theoretical arrival time in epoch ns (0 = never seen); cur and prev
//        are unused and left as they are.
// now_ns = now_ms * 1e6 (a negative now is treated as 0). All arithmetic is 128-bit: C * T
// exceeds int64 for e.g. C = 1e9 at 1r/d.
//
//   tat = max(stamp, now_ns); new_tat = tat + T;
//   admitted iff new_tat - now_ns <= C * T   (and new_tat fits in int64, see below).
//
// Decision fields (durations in ms, rounded up):
//   remaining       admitted: floor((C*T - (new_tat - now_ns)) / T); rejected: 0.
//   reset_ms        RateLimit t=: ms until one more request is admitted even if the client
//                   spends its `remaining` now: admitted, ceil((new_tat + (remaining + 1) * T
//                   - now_ns - C*T) / 1e6), in 1 .. ceil(T / 1e6) (the next token's arrival);
//                   rejected, retry_after_ms.
//   retry_after_ms  rejected: ceil((new_tat - now_ns - C*T) / 1e6), at least 1. Exact: at
//                   now + retry_after_ms - 1 the request is still refused.
//
// A clock stepping backwards only means tat > now_ns: the request is judged against the later
// TAT, nothing underflows, nothing extra is admitted. A TAT that would not fit in int64 (year
// 2262, or a burst * T of centuries) is refused rather than stored clamped, so saturation can
// never forget a request.
#pragma once

#include <cstdint>

#include "core/limiter.hpp"

namespace throttle::core::gcra {

// T in ns, >= 1.
int64_t emission_interval_ns(const Rate& rate) noexcept;
// C, 1 .. max_rate_limit.
uint64_t capacity(const Policy& policy) noexcept;

Decision evaluate(const Policy& policy, const State& state, int64_t now_ms) noexcept;

// stamp = new_tat (clamped to INT64_MAX; evaluate refuses before that can matter).
void record(const Policy& policy, State& state, int64_t now_ms) noexcept;

// The TAT is not in the future (stamp <= now_ns): the state admits like a fresh one.
bool is_idle(const Policy& policy, const State& state, int64_t now_ms) noexcept;

// ceil(C * T / 1e9): seconds for an empty bucket to refill; at least 1.
int64_t window_seconds(const Policy& policy) noexcept;

}  // namespace throttle::core::gcra
