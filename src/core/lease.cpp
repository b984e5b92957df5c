// mode=lease arithmetic; semantics in lease.hpp.
#include "core/lease.hpp"

#include <algorithm>
#include <cstring>
#include <limits>

namespace throttle::core::lease {
namespace {

constexpr uint16_t rate_max = std::numeric_limits<uint16_t>::max();
constexpr uint32_t units_max = std::numeric_limits<uint32_t>::max();

uint32_t seconds_of(int64_t now_ms) noexcept {
    return now_ms > 0 ? static_cast<uint32_t>(now_ms / 1000) : 0;
}

// Moves the rate buckets to now's second (without counting anything).
void roll_rate(LeaseState& l, uint32_t now_s) noexcept {
    if (now_s == l.last_s) {
        return;
    }
    if (now_s == l.last_s + 1) {
        l.rate_prev = l.rate_cur;
    } else {
        l.rate_prev = 0;
    }
    l.rate_cur = 0;
    l.last_s = now_s;
}

}  // namespace

LeaseState from_state(const State& s) noexcept {
    LeaseState l;
    std::memcpy(static_cast<void*>(&l), static_cast<const void*>(&s), sizeof(l));
    return l;
}

State to_state(const LeaseState& l) noexcept {
    State s;
    std::memcpy(static_cast<void*>(&s), static_cast<const void*>(&l), sizeof(s));
    return s;
}

uint32_t target_units(const LeaseState& l, int64_t now_ms, uint32_t max_units) noexcept {
    uint32_t now_s = seconds_of(now_ms);
    uint32_t rate = 0;
    if (now_s == l.last_s) {
        rate = std::max<uint32_t>(l.rate_cur, l.rate_prev);
    } else if (now_s == l.last_s + 1) {
        rate = l.rate_cur;
    }
    uint32_t cap = max_units > 0 ? max_units : 1;
    return std::clamp<uint32_t>(rate, 1, cap);
}

bool spend(LeaseState& l, int64_t now_ms) noexcept {
    if (l.held == 0 || now_ms >= l.deadline) {
        return false;
    }
    l.held--;
    roll_rate(l, seconds_of(now_ms));
    if (l.rate_cur < rate_max) {
        l.rate_cur++;
    }
    return true;
}

void unspend(LeaseState& l, int64_t deadline) noexcept {
    if (deadline != 0 && l.deadline == deadline && l.held < units_max) {
        l.held++;
    }
}

// `asked` of a state whose last call failed: even, so never a mark (marks are odd).
constexpr uint32_t asked_failed = 2;

bool asking(const LeaseState& l, int64_t now_ms, uint32_t stale_ms) noexcept {
    if (l.asked == 0 || l.asked == asked_failed) {
        return false;
    }
    uint32_t since = static_cast<uint32_t>(now_ms) - (l.asked & ~uint32_t(1));
    return since < stale_ms;
}

uint32_t mark_asking(LeaseState& l, int64_t now_ms) noexcept {
    l.asked = static_cast<uint32_t>(now_ms) | 1;
    return l.asked;
}

void done_asking(LeaseState& l, uint32_t mark) noexcept {
    if (l.asked == mark) {
        l.asked = 0;
    }
}

void failed_asking(LeaseState& l, uint32_t mark) noexcept {
    if (l.asked == mark) {
        l.asked = asked_failed;
    }
}

bool last_call_failed(const LeaseState& l) noexcept {
    return l.asked == asked_failed;
}

bool should_prefetch(const LeaseState& l, int64_t now_ms, uint32_t max_units, uint32_t& want,
                     uint32_t stale_ms) noexcept {
    if (now_ms >= l.deadline || asking(l, now_ms, stale_ms)) {
        return false;
    }
    uint32_t target = target_units(l, now_ms, max_units);
    if (static_cast<uint64_t>(l.held) * 2 > target || l.held >= target) {
        return false;
    }
    want = target - l.held;
    return true;
}

Giveback grant(LeaseState& l, int64_t window, int64_t deadline, uint32_t units,
               int64_t now_ms) noexcept {
    Giveback back;
    roll_rate(l, seconds_of(now_ms));
    if (units == 0) {
        return back;
    }
    if (l.held > 0 && l.window > window) {
        back.window = window;  // a late reply for a window before the lease's
        back.units = units;
        return back;
    }
    if (l.held > 0 && l.window == window) {
        l.held = static_cast<uint32_t>(
            std::min<uint64_t>(static_cast<uint64_t>(l.held) + units, units_max));
        l.deadline = std::min(l.deadline, deadline);
        return back;
    }
    if (l.held > 0) {
        back.window = l.window;
        back.units = l.held;
    }
    l.window = window;
    l.deadline = deadline;
    l.held = units;
    return back;
}

Giveback take_back(LeaseState& l, int64_t now_ms, int64_t idle_s, bool all) noexcept {
    Giveback back;
    if (l.held == 0) {
        return back;
    }
    int64_t now_s = seconds_of(now_ms);
    bool idle = now_s - static_cast<int64_t>(l.last_s) >= (idle_s > 0 ? idle_s : 0);
    if (!all && !idle && now_ms < l.deadline) {
        return back;
    }
    back.window = l.window;
    back.units = l.held;
    l.held = 0;
    l.deadline = 0;
    return back;
}

bool is_empty(const LeaseState& l, int64_t now_ms) noexcept {
    return l.held == 0 && !asking(l, now_ms);
}

}  // namespace throttle::core::lease
