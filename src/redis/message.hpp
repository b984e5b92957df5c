// Log-message building for the Redis layer: cat("redis ", host, ":", port) (layer: redis).
#pragma once

#include <charconv>
#include <string>
#include <string_view>
#include <type_traits>

#include "core/hash.hpp"

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

// Text a server sent, fit for one log line: at most `max` bytes of it, bytes outside printable
// ASCII as \xNN, "..." when cut. Never throws (empty if memory runs out).
inline std::string printable(std::string_view text, size_t max = 120) noexcept {
    try {
        std::string s;
        for (size_t i = 0; i < text.size() && i < max; i++) {
            auto c = static_cast<unsigned char>(text[i]);
            if (c >= 0x20 && c < 0x7f && c != '\\') {
                s.push_back(char(c));
            } else {
                s += "\\x" + core::hex(&c, 1);
            }
        }
        if (text.size() > max) {
            s += "...";
        }
        return s;
    } catch (...) {
        return std::string();
    }
}

}  // namespace throttle::redis::message
