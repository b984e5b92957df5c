// Log-message building for the Redis layer: cat("redis ", host, ":", port) (layer: redis).
#pragma once

#include <charconv>
#include <string>
#include <string_view>
#include <type_traits>

namespace throttle::redis::message {

inline void append_part(std::string& s, std::string_view part) {
    s.append(part.data(), part.size());
}

inline void append_part(std::string& s, const char* part) {
    s.append(part);
}

template <typename Int, typename = std::enable_if_t<std::is_integral_v<Int>>>
void append_part(std::string& s, Int n) {
    char buf[24];
    auto res = std::to_chars(buf, buf + sizeof(buf), n);
    s.append(buf, res.ptr);
}

// Concatenates message parts; never throws (an empty message if memory runs out).
template <typename... Parts>
std::string cat(const Parts&... parts) noexcept {
    try {
        std::string s;
        (append_part(s, parts), ...);
        return s;
    } catch (...) {
        return std::string();
    }
}

}  // namespace throttle::redis::message
