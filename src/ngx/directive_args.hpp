// Small helpers for `name=value` directive arguments (layer: ngx).
#pragma once

#include <string_view>

#include "ngx/ngx.hpp"

namespace throttle::ngx {

inline char* conf_error() noexcept { return static_cast<char*>(NGX_CONF_ERROR); }

inline bool starts_with(const ngx_str_t& v, std::string_view prefix) noexcept {
    return v.len >= prefix.size() && ngx_strncmp(v.data, prefix.data(), prefix.size()) == 0;
}

// The argument's bytes after its first n (the value of "name=value" for n = len("name=")).
inline std::string_view after(const ngx_str_t& v, size_t n) noexcept {
    return {reinterpret_cast<const char*>(v.data) + n, v.len - n};
}

}  // namespace throttle::ngx
