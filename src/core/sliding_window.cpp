// The sliding-window counter; semantics in sliding_window.hpp.
// Pure C++, no nginx header (layer: core).
#include "core/sliding_window.hpp"

#include <cstdint>
#include <limits>

namespace throttle::core::sliding_window {

namespace {

__extension__ typedef __int128 i128;
__extension__ typedef unsigned __int128 u128;

constexpr int64_t int64_max = std::numeric_limits<int64_t>::max();
constexpr uint32_t count_max = std::numeric_limits<uint32_t>::max();

int64_t period_of(const Rate& rate) noexcept {
    return rate.period_ms > 0 ? rate.period_ms : 1;
}

uint64_t limit_of(const Rate& rate) noexcept {
    return rate.limit > 0 ? rate.limit : 1;
}

// A duration in ms, clamped to 0 .. INT64_MAX.
int64_t to_ms(i128 v) noexcept {
    if (v < 0) {
        return 0;
    }
    return v > int64_max ? int64_max : static_cast<int64_t>(v);
}

// The smallest w >= 1 (ms after window start + elapsed) at which one request is admitted,
// given that it is refused now. P, L >= 1. U: unsigned __int128, or uint64_t where every
// product fits (see decide()).
template <typename U>
U retry_after(U P, U L, U e, U cur, U prev) noexcept {
    if (cur + 1 <= L) {
        // Still in this window (or exactly at its end): solve prev * (P - e - w) <= R.
        // Refused now means prev * (P - e) > R >= 0, so prev > 0 and q < P - e, so w >= 1.
        // If q == 0 then w = P - e: the next window starts, where prev becomes cur and
        // (cur + 1) * P <= L * P admits.
        U R = (L - cur - 1) * P;
        U q = R / prev;
        return P - e - q;
    }
    // cur >= L: refused for the rest of this window whatever prev is. In the next window the
    // old cur becomes prev and the new cur is 0: solve cur * (P - e') <= (L - 1) * P for the
    // smallest e'. cur >= L > L - 1 means q < P, so e' is in 1 .. P; e' == P is the start of
    // the window after the next one, where both counts are 0 and L >= 1 admits.
    U q = (L - 1) * P / cur;
    U e_next = P - q;
    return P - e + e_next;
}

// roll(), inlined into the steps below.
[[gnu::always_inline]] inline Rolled roll_to(const Rate& rate, const State& state,
                                             int64_t now_ms) noexcept {
    Rolled r;
    // The common case first, in 64 bits: now in the state's window (0 <= now - stamp < P; the
    // subtraction cannot overflow when both are >= 0). The same as the second branch below.
    if (now_ms >= 0 && state.stamp >= 0 && now_ms >= state.stamp &&
        now_ms - state.stamp < period_of(rate)) {
        r.start = state.stamp;
        r.elapsed = now_ms - state.stamp;
        r.cur = state.cur;
        r.prev = state.prev;
        r.unsent_cur = state.unsent_cur;
        r.unsent_prev = state.unsent_prev;
        return r;
    }
    const i128 P = period_of(rate);
    const i128 now = now_ms > 0 ? now_ms : 0;
    const i128 stamp = state.stamp;

    if (now < stamp) {
        // The clock stepped backwards: keep everything, pretend we are at the stamp.
        r.start = state.stamp;
        r.elapsed = 0;
        r.lead = to_ms(stamp - now);
        r.cur = state.cur;
        r.prev = state.prev;
        r.unsent_cur = state.unsent_cur;
        r.unsent_prev = state.unsent_prev;
    } else if (now < stamp + P) {
        r.start = state.stamp;
        r.elapsed = static_cast<int64_t>(now - stamp);
        r.cur = state.cur;
        r.prev = state.prev;
        r.unsent_cur = state.unsent_cur;
        r.unsent_prev = state.unsent_prev;
    } else if (now < stamp + 2 * P) {
        // stamp + P <= now <= INT64_MAX, so it fits.
        r.start = static_cast<int64_t>(stamp + P);
        r.elapsed = static_cast<int64_t>(now - (stamp + P));
        r.cur = 0;
        r.prev = state.cur;
        r.unsent_prev = state.unsent_cur;
    } else {
        r.start = static_cast<int64_t>(now - now % P);
        r.elapsed = static_cast<int64_t>(now % P);
        r.cur = 0;
        r.prev = 0;
    }
    return r;
}

// evaluate() of the state rolled to now (r), in U (see decide()).
template <typename U>
[[gnu::always_inline]] inline Decision decide_in(const Rate& rate, const Rolled& r) noexcept {
    const U P = static_cast<U>(period_of(rate));
    const U L = limit_of(rate);
    const U e = static_cast<U>(r.elapsed);
    const U cur = r.cur;
    const U prev = r.prev;

    const U weighted = prev * (P - e) + (cur + 1) * P;
    const U allowance = L * P;

    Decision d;
    d.limit = static_cast<uint64_t>(L);
    d.allowed = weighted <= allowance;

    if (d.allowed) {
        d.remaining = static_cast<uint64_t>((allowance - weighted) / P);
        // reset: when the next request is admitted once this one and the `remaining` after it
        // are counted now. cur + 1 + remaining more would be refused now (remaining is a
        // floor), which retry_after() needs.
        const U spent = cur + 1 + d.remaining;
        const U w = retry_after<U>(P, L, e, spent, prev);
        // Without a lead, in 64 bits when w fits (always, for U = uint64_t: w < 2^33).
        const int64_t t = r.lead == 0 && w <= static_cast<U>(int64_max)
                              ? static_cast<int64_t>(w)
                              : to_ms(static_cast<i128>(r.lead) + static_cast<i128>(w));
        d.reset_ms = t > 0 ? t : 1;
        d.retry_after_ms = 0;
        return d;
    }

    d.remaining = 0;
    const int64_t w =
        to_ms(static_cast<i128>(r.lead) + static_cast<i128>(retry_after<U>(P, L, e, cur, prev)));
    d.retry_after_ms = w > 0 ? w : 1;
    d.reset_ms = d.retry_after_ms;  // nothing remains: more quota comes when one is admitted
    return d;
}

// evaluate() of the state rolled to now (r). In 64 bits when P < 2^31 and L < 2^32 (every
// rate nginx configures in practice): then, with counts < 2^32 and e < P, every product and
// sum above is below 2^64 and every result below 2^33, so both widths compute the same.
[[gnu::always_inline]] inline Decision decide(const Rate& rate, const Rolled& r) noexcept {
    if (rate.period_ms < (int64_t{1} << 31) && rate.limit < (uint64_t{1} << 32)) {
        return decide_in<uint64_t>(rate, r);
    }
    return decide_in<u128>(rate, r);
}

// record() of the state rolled to now (r).
[[gnu::always_inline]] inline void count(State& state, const Rolled& r) noexcept {
    state.stamp = r.start;
    state.prev = r.prev;
    state.cur = r.cur < count_max ? r.cur + 1 : count_max;
    state.unsent_prev = r.unsent_prev;
    state.unsent_cur = r.unsent_cur < count_max ? r.unsent_cur + 1 : count_max;
}

}  // namespace

Rolled roll(const Rate& rate, const State& state, int64_t now_ms) noexcept {
    return roll_to(rate, state, now_ms);
}

Decision evaluate(const Rate& rate, const State& state, int64_t now_ms) noexcept {
    return decide(rate, roll_to(rate, state, now_ms));
}

void record(const Rate& rate, State& state, int64_t now_ms) noexcept {
    count(state, roll_to(rate, state, now_ms));
}

Decision admit(const Rate& rate, State& state, int64_t now_ms) noexcept {
    const Rolled r = roll_to(rate, state, now_ms);
    const Decision d = decide(rate, r);
    if (d.allowed) {
        count(state, r);  // what record() at the same now_ms does: it rolls to the same r
    }
    return d;
}

bool is_idle(const Rate& rate, const State& state, int64_t now_ms) noexcept {
    if (state.cur == 0 && state.prev == 0) {
        return true;  // rolls to zero counts at any now, like a fresh state
    }
    const i128 now = now_ms > 0 ? now_ms : 0;
    return now >= static_cast<i128>(state.stamp) + 2 * static_cast<i128>(period_of(rate));
}

}  // namespace throttle::core::sliding_window
