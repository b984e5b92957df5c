// mode=sync flush arithmetic; semantics in sync.hpp.
#include "core/sync.hpp"

#include <algorithm>
#include <limits>

#include "core/sliding_window.hpp"

namespace throttle::core::sync {
namespace {

constexpr uint64_t count_max = std::numeric_limits<uint32_t>::max();

uint32_t saturate(uint64_t v) noexcept {
    return static_cast<uint32_t>(std::min(v, count_max));
}

uint32_t add(uint32_t a, uint32_t b) noexcept {
    return saturate(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}

// Rolls state to now in place (no request counted).
void roll_in_place(const Rate& rate, State& state, int64_t now_ms) noexcept {
    const sliding_window::Rolled r = sliding_window::roll(rate, state, now_ms);
    state.stamp = r.start;
    state.cur = r.cur;
    state.prev = r.prev;
    state.unsent_cur = r.unsent_cur;
    state.unsent_prev = r.unsent_prev;
}

int64_t period_of(const Rate& rate) noexcept {
    return rate.period_ms > 0 ? rate.period_ms : 1;
}

}  // namespace

Delta take_unsent(const Rate& rate, State& state, int64_t now_ms) noexcept {
    roll_in_place(rate, state, now_ms);
    Delta d;
    d.window = state.stamp;
    d.cur = state.unsent_cur;
    d.prev = state.unsent_prev;
    state.unsent_cur = 0;
    state.unsent_prev = 0;
    return d;
}

void restore_unsent(const Rate& rate, State& state, const Delta& sent, int64_t now_ms) noexcept {
    roll_in_place(rate, state, now_ms);
    const int64_t p = period_of(rate);
    if (state.stamp == sent.window) {
        state.unsent_cur = add(state.unsent_cur, sent.cur);
        state.unsent_prev = add(state.unsent_prev, sent.prev);
    } else if (state.stamp - p == sent.window) {
        state.unsent_prev = add(state.unsent_prev, sent.cur);
    }
}

void apply_global(const Rate& rate, State& state, const Delta& sent, uint64_t g_cur,
                  uint64_t g_prev, int64_t now_ms) noexcept {
    roll_in_place(rate, state, now_ms);
    const int64_t p = period_of(rate);
    if (state.stamp == sent.window) {
        state.cur = std::max(state.cur, saturate(g_cur + state.unsent_cur));
        state.prev = std::max(state.prev, saturate(g_prev + state.unsent_prev));
    } else if (state.stamp - p == sent.window) {
        state.prev = std::max(state.prev, saturate(g_cur + state.unsent_prev));
    }
}

}  // namespace throttle::core::sync
