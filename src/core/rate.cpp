// parse_rate: "Nr/s", "Nr/m", "Nr/h", "Nr/d".
// Pure C++, no nginx header (layer: core).
//
// Accepted: one or more ASCII decimal digits (leading zeros allowed, e.g. "010r/s" is 10),
// then exactly "r/", then exactly one lowercase unit letter: s, m, h or d.
// Rejected: empty text, no digits, a sign ('+' or '-'), any space, an uppercase or unknown
// unit, trailing characters, N == 0, N > max_rate_limit. Digits are checked against
// max_rate_limit while they are read, so no number of digits can overflow.
// On failure `out` is left unchanged.
#include "core/rate.hpp"

namespace throttle::core {

namespace {

bool unit_period(char unit, int64_t& period_ms) noexcept {
    switch (unit) {
        case 's':
            period_ms = ms_per_second;
            return true;
        case 'm':
            period_ms = ms_per_minute;
            return true;
        case 'h':
            period_ms = ms_per_hour;
            return true;
        case 'd':
            period_ms = ms_per_day;
            return true;
        default:
            return false;
    }
}

}  // namespace

bool parse_rate(std::string_view text, Rate& out) noexcept {
    size_t i = 0;
    uint64_t n = 0;

    while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
        n = n * 10 + static_cast<uint64_t>(text[i] - '0');
        if (n > max_rate_limit) {
            return false;  // also stops before n * 10 could overflow
        }
        ++i;
    }

    if (i == 0 || n == 0) {
        return false;
    }

    // What follows the digits must be exactly "r/" and one unit letter.
    if (text.size() - i != 3 || text[i] != 'r' || text[i + 1] != '/') {
        return false;
    }

    int64_t period_ms = 0;
    if (!unit_period(text[i + 2], period_ms)) {
        return false;
    }

    out.limit = n;
    out.period_ms = period_ms;
    return true;
}

}  // namespace throttle::core
