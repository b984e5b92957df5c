// The generic cell rate algorithm; semantics in gcra.hpp.
// Pure C++, no nginx header (layer: core).
#include "core/gcra.hpp"

#include <cstdint>
#include <limits>

namespace throttle::core::gcra {

namespace {

__extension__ typedef __int128 i128;

constexpr int64_t int64_max = std::numeric_limits<int64_t>::max();
constexpr i128 ns_per_ms = 1000000;
constexpr i128 ns_per_s = 1000000000;

i128 now_ns_of(int64_t now_ms) noexcept {
    return now_ms > 0 ? static_cast<i128>(now_ms) * ns_per_ms : 0;
}

// ceil(v / d) for v >= 0, d > 0, clamped to INT64_MAX.
int64_t ceil_div(i128 v, i128 d) noexcept {
    if (v <= 0) {
        return 0;
    }
    i128 q = (v + d - 1) / d;
    return q > int64_max ? int64_max : static_cast<int64_t>(q);
}

struct Step {
    i128 now_ns;
    i128 tat;
    i128 new_tat;
    i128 T;
    i128 CT;
};

Step step(const Policy& policy, const State& state, int64_t now_ms) noexcept {
    Step s;
    s.now_ns = now_ns_of(now_ms);
    s.T = emission_interval_ns(policy.rate);
    s.CT = static_cast<i128>(capacity(policy)) * s.T;
    s.tat = state.stamp > s.now_ns ? static_cast<i128>(state.stamp) : s.now_ns;
    s.new_tat = s.tat + s.T;
    return s;
}

}  // namespace

int64_t emission_interval_ns(const Rate& rate) noexcept {
    const i128 period_ns = static_cast<i128>(rate.period_ms > 0 ? rate.period_ms : 1) * ns_per_ms;
    const i128 limit = rate.limit > 0 ? rate.limit : 1;
    const i128 t = period_ns / limit;
    if (t < 1) {
        return 1;
    }
    return t > int64_max ? int64_max : static_cast<int64_t>(t);
}

uint64_t capacity(const Policy& policy) noexcept {
    uint64_t c = policy.burst ? policy.burst : policy.rate.limit;
    if (c < 1) {
        return 1;
    }
    return c > max_rate_limit ? max_rate_limit : c;
}

Decision evaluate(const Policy& policy, const State& state, int64_t now_ms) noexcept {
    const Step s = step(policy, state, now_ms);
    const i128 wait = s.new_tat - s.now_ns;  // >= T > 0

    Decision d;
    d.limit = capacity(policy);
    d.allowed = wait <= s.CT && s.new_tat <= int64_max;

    if (d.allowed) {
        const i128 r = (s.CT - wait) / s.T;
        d.remaining = static_cast<uint64_t>(r);
        // reset: when the next request is admitted once the `remaining` after this one are
        // counted now too: wait + r * T <= C * T < wait + (r + 1) * T, so 0 < t <= T.
        const int64_t t = ceil_div(wait + (r + 1) * s.T - s.CT, ns_per_ms);
        d.reset_ms = t > 0 ? t : 1;
        d.retry_after_ms = 0;
        return d;
    }

    d.remaining = 0;
    const int64_t w = ceil_div(wait - s.CT, ns_per_ms);
    d.retry_after_ms = w > 0 ? w : 1;
    d.reset_ms = d.retry_after_ms;  // nothing remains: more quota comes when one is admitted
    return d;
}

void record(const Policy& policy, State& state, int64_t now_ms) noexcept {
    const Step s = step(policy, state, now_ms);
    state.stamp = s.new_tat > int64_max ? int64_max : static_cast<int64_t>(s.new_tat);
}

bool is_idle(const Policy& policy, const State& state, int64_t now_ms) noexcept {
    (void)policy;
    return static_cast<i128>(state.stamp) <= now_ns_of(now_ms);
}

int64_t window_seconds(const Policy& policy) noexcept {
    const i128 ct = static_cast<i128>(capacity(policy)) * emission_interval_ns(policy.rate);
    const int64_t s = ceil_div(ct, ns_per_s);
    return s > 0 ? s : 1;
}

}  // namespace throttle::core::gcra
