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

int64_t record(const Policy& policy, State& state, int64_t now_ms) noexcept {
    if (policy.algorithm == Algorithm::gcra) {
        gcra::record(policy, state, now_ms);
    } else {
        sliding_window::record(policy.rate, state, now_ms);
    }
    return state.stamp;
}

Decision admit(const Policy& policy, State& state, int64_t now_ms, int64_t& token) noexcept {
    if (policy.algorithm != Algorithm::gcra) {
        // d.limit is the window's limit (at least 1): quota(policy) already.
        Decision d = sliding_window::admit(policy.rate, state, now_ms);
        if (d.allowed) {
            token = state.stamp;
        }
        return d;
    }
    Decision d = gcra::evaluate(policy, state, now_ms);
    if (d.allowed) {
        gcra::record(policy, state, now_ms);
        token = state.stamp;
    }
    d.limit = quota(policy);
    return d;
}

namespace {
uint32_t minus_one(uint32_t v) noexcept {
    return v > 0 ? v - 1 : 0;
}
}  // namespace

void unrecord(const Policy& policy, State& state, int64_t token) noexcept {
    if (policy.algorithm == Algorithm::gcra) {
        // token is the arrival time right after this request: the one before it was token - T.
        if (state.stamp < token) {
            return;  // not the state it was counted in (the key was evicted and came back)
        }
        const int64_t t = gcra::emission_interval_ns(policy.rate);
        const int64_t before = token - t;  // max(old arrival time, now) when it was counted
        const int64_t back = state.stamp - t;
        state.stamp = back > before ? back : before;
        return;
    }
    // token is the start of the window the request was counted in.
    const int64_t period = policy.rate.period_ms > 0 ? policy.rate.period_ms : 1;
    if (state.stamp == token) {
        state.cur = minus_one(state.cur);
        state.unsent_cur = minus_one(state.unsent_cur);
    } else if (state.stamp - period == token) {
        state.prev = minus_one(state.prev);
        state.unsent_prev = minus_one(state.unsent_prev);
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

bool clamp(const Policy& policy, Decision& d) noexcept {
    const Decision before = d;
    const uint64_t q = quota(policy);
    const int64_t longest = 3 * 1000 * window_seconds(policy);
    auto bound = [longest](int64_t v) { return v < 0 ? 0 : v > longest ? longest : v; };
    d.remaining = !d.allowed ? 0 : d.remaining > q ? q : d.remaining;
    d.reset_ms = bound(d.reset_ms);
    d.retry_after_ms = d.allowed ? 0 : bound(d.retry_after_ms);
    return d.remaining != before.remaining || d.reset_ms != before.reset_ms ||
           d.retry_after_ms != before.retry_after_ms;
}

int64_t window_seconds(const Policy& policy) noexcept {
    if (policy.algorithm == Algorithm::gcra) {
        return gcra::window_seconds(policy);
    }
    const int64_t s = policy.rate.period_ms / 1000;
    return s > 0 ? s : 1;
}

}  // namespace throttle::core
