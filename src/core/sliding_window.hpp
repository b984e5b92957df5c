// The sliding-window counter (Algorithm::sliding, the default).
// Pure C++, no nginx header (layer: core).
//
// Windows are fixed and aligned to multiples of period_ms since the epoch:
// the window holding `now` starts at now - now % period_ms (a negative now is treated as 0).
// State: stamp = start of the window `cur` counts, prev = count of the window before it.
//
// Rolling the state to `now` (done on a copy by evaluate, in place by record):
//   now in [stamp, stamp + P)        same window: unchanged;
//   now in [stamp + P, stamp + 2P)   next window: prev = cur, cur = 0, stamp += P;
//   now >= stamp + 2P                both windows past: prev = cur = 0, stamp = now's window;
//   now < stamp                      the clock stepped backwards: the state is kept as it is
//                                    and now is treated as the start of the stamp window
//                                    (elapsed = 0): counts are never reset, nothing underflows,
//                                    and no request is admitted that the later clock refused.
//
// With e = elapsed ms in the rolled window, P = period_ms, L = limit, the estimate is
//   prev * (P - e) / P + cur
// and a request is admitted iff estimate + 1 <= L, decided exactly in integers:
//   prev * (P - e) + (cur + 1) * P <= L * P      (128-bit, no rounding, no overflow).
//
// Decision fields (all durations in ms from the caller's now, never negative):
//   remaining  admitted: floor((L*P - prev*(P-e) - (cur+1)*P) / P), i.e. how many more would be
//              admitted at this same instant; it drops by exactly one per admission. Rejected: 0.
//   reset_ms   RateLimit t= (draft-ietf-httpapi-ratelimit-headers-10: time until additional
//              quota is made available): ms until one more request is admitted even if the
//              client spends its `remaining` now, i.e. the retry_after below of the state with
//              cur + 1 + remaining counted (admitted), or retry_after_ms itself (rejected). At
//              most P - e + ceil(P / L) (plus any lead): at the start of an hour with 95% of
//              1000r/h left it says the next hour's first 3.6 s, never the two windows it takes
//              the estimate to drain to 0. Within the window, as prev's weight decays, it is
//              the time until the next request's worth has decayed. Always >= 1.
//   retry_after_ms  rejected: the smallest w >= 1 such that one request would be admitted at
//              now + w. Either later in this window as prev's weight decays (possible only
//              when cur + 1 <= L), or in the next window where the old cur becomes prev, or at
//              the start of the window after that. Exact: at now + w - 1 it is still refused.
//   When the clock is behind stamp, reset_ms and retry_after_ms include the stamp - now ms
//   until the clock is back at the stamp window.
//
// Consequence worth knowing: the weight of prev is > 0 for the whole next window, so with a
// small limit the sliding window is strict; 1r/d admits one request, then refuses until the
// start of the window after the next one (up to two days later).
//
// Counts saturate at UINT32_MAX, they never wrap. A period_ms < 1 is treated as 1 and a
// limit of 0 as 1, so a bad policy cannot divide by zero.
#pragma once

#include <cstdint>

#include "core/limiter.hpp"

namespace throttle::core::sliding_window {

// The state rolled to a given now (see above). Exposed for unit tests.
struct Rolled {
    int64_t start = 0;    // start of the window the rolled state counts in (new stamp)
    int64_t elapsed = 0;  // ms since start, 0 .. period_ms - 1 (0 when the clock is behind)
    int64_t lead = 0;     // ms the clock is behind start (clock stepped backwards), else 0
    uint32_t cur = 0;
    uint32_t prev = 0;
    uint32_t unsent_cur = 0;   // unsent counts move with their windows; counts of windows
    uint32_t unsent_prev = 0;  // older than the previous one are dropped (nobody reads them)
};

Rolled roll(const Rate& rate, const State& state, int64_t now_ms) noexcept;

Decision evaluate(const Rate& rate, const State& state, int64_t now_ms) noexcept;

// Rolls the state to now_ms, then counts one request in the current window (saturating),
// in cur and in unsent_cur.
void record(const Rate& rate, State& state, int64_t now_ms) noexcept;

// evaluate() and, when it admits, record(), at the same now_ms: the same decision and the
// same state as the two calls, with one roll (the zone's lock is held for less).
Decision admit(const Rate& rate, State& state, int64_t now_ms) noexcept;

// Both counts are zero (whatever the stamp), or both windows are past
// (now >= stamp + 2 * period_ms).
bool is_idle(const Rate& rate, const State& state, int64_t now_ms) noexcept;

}  // namespace throttle::core::sliding_window
