// Dispatches the limiter interface (limiter.hpp) to the two algorithms:
// sliding_window.hpp (Algorithm::sliding, also used for any unknown value) and gcra.hpp.
// Pure C++, no nginx header (layer: core).
#include "core/limiter.hpp"

#include "core/gcra.hpp"
#include "core/sliding_window.hpp"

namespace throttle::core {

Decision evaluate(const Policy& policy, const State& state, int64_t now_ms) noexcept {
    Decision d = policy.algorithm == Algorithm::gcra
                     ? gcra::evaluate(policy, state, now_ms)
                     : sliding_window::evaluate(policy.rate, state, now_ms);
    d.limit = quota(policy);
    return d;
}

void record(const Policy& policy, State& state, int64_t now_ms) noexcept {
    if (policy.algorithm == Algorithm::gcra) {
        gcra::record(policy, state, now_ms);
    } else {
        sliding_window::record(policy.rate, state, now_ms);
    }
}

bool is_idle(const Policy& policy, const State& state, int64_t now_ms) noexcept {
    return policy.algorithm == Algorithm::gcra
               ? gcra::is_idle(policy, state, now_ms)
               : sliding_window::is_idle(policy.rate, state, now_ms);
}

uint64_t quota(const Policy& policy) noexcept {
    if (policy.algorithm == Algorithm::gcra) {
        return gcra::capacity(policy);
    }
    return policy.rate.limit > 0 ? policy.rate.limit : 1;
}

int64_t window_seconds(const Policy& policy) noexcept {
    if (policy.algorithm == Algorithm::gcra) {
        return gcra::window_seconds(policy);
    }
    const int64_t s = policy.rate.period_ms / 1000;
    return s > 0 ? s : 1;
}

}  // namespace throttle::core
