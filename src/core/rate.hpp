// Rates as written in the configuration: "100r/h" = 100 requests per hour.
// Pure C++, no nginx header (layer: core).
#pragma once

#include <cstdint>
#include <string_view>

namespace throttle::core {

inline constexpr uint64_t max_rate_limit = 1000000000;  // 1e9 requests per period

inline constexpr int64_t ms_per_second = 1000;
inline constexpr int64_t ms_per_minute = 60 * ms_per_second;
inline constexpr int64_t ms_per_hour = 60 * ms_per_minute;
inline constexpr int64_t ms_per_day = 24 * ms_per_hour;

struct Rate {
    uint64_t limit = 0;     // requests admitted per period, 1 .. max_rate_limit
    int64_t period_ms = 0;  // one of ms_per_second, _minute, _hour, _day
};

// Parses "Nr/s", "Nr/m", "Nr/h", "Nr/d" (N decimal digits, no sign, no spaces).
// Returns false for anything else: empty, missing "r/", unknown unit, N == 0,
// N > max_rate_limit, digits that overflow.
bool parse_rate(std::string_view text, Rate& out) noexcept;

}  // namespace throttle::core
