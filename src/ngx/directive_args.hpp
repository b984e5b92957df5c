// Directive arguments (layer: ngx): `name=value` parameters as nginx's own directives take
// them (limit_req_zone's zone=, rate=), with one set of value parsers, so that every directive
// answers a bad value with the same nginx-style message: `invalid WHAT "ARG"`.
#pragma once

#include <string_view>

#include "ngx/ngx.hpp"

namespace throttle::ngx {

inline char* conf_error() noexcept {
    return static_cast<char*>(NGX_CONF_ERROR);
}

inline bool starts_with(const ngx_str_t& v, std::string_view prefix) noexcept {
    return v.len >= prefix.size() && ngx_strncmp(v.data, prefix.data(), prefix.size()) == 0;
}

// The argument's bytes after its first n (the value of "name=value" for n = len("name=")).
inline std::string_view after(const ngx_str_t& v, size_t n) noexcept {
    return {reinterpret_cast<const char*>(v.data) + n, v.len - n};
}

inline bool is_off(const ngx_str_t& v) noexcept {
    return v.len == 3 && ngx_strncmp(v.data, "off", 3) == 0;
}

// A `NAME | off` string setting: unset while data == nullptr, off while len == 0. True when
// that settles the directive (`rv`: "is duplicate", or NGX_CONF_OK with off stored); false
// when the caller is to check and store the name.
inline bool set_once_or_off(ngx_str_t& setting, const ngx_str_t& arg, char*& rv) noexcept {
    if (setting.data != nullptr) {
        rv = const_cast<char*>("is duplicate");
        return true;
    }
    if (is_off(arg)) {
        setting = {0, arg.data};
        rv = NGX_CONF_OK;
        return true;
    }
    return false;
}

// An HTTP header name as the module accepts it in a directive: letters, digits, '-' and '_'.
inline bool valid_header_name(const ngx_str_t& v) noexcept {
    if (v.len == 0) {
        return false;
    }
    for (size_t i = 0; i < v.len; i++) {
        u_char ch = v.data[i];
        bool alnum =
            (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
        if (!(alnum || ch == '-' || ch == '_')) {
            return false;
        }
    }
    return true;
}

// One `name=value` argument.
struct Param {
    const ngx_str_t* arg = nullptr;  // the whole argument, for messages
    std::string_view name;
    ngx_str_t value{};  // the bytes after '=' (inside the argument)
    std::string_view text() const noexcept {
        return {reinterpret_cast<const char*>(value.data), value.len};
    }
};

// The directive's arguments from `first` on, as parameters. next() fails (logged) on an
// argument without '=' (`invalid parameter "ARG"`) and on a name given twice
// (`"NAME" is duplicate`); failed() then tells the caller to return conf_error().
class Params {
   public:
    Params(ngx_conf_t* cf, ngx_uint_t first) noexcept : cf_(cf), next_(first) {}
    bool next(Param& p) noexcept;
    bool failed() const noexcept { return failed_; }
    // `invalid parameter "ARG"`, for a name the directive does not know.
    char* unknown(const Param& p) noexcept;

   private:
    ngx_conf_t* cf_;
    ngx_uint_t next_;
    bool failed_ = false;
};

// Logs `invalid WHAT "ARG"SUFFIX` and returns false.
bool invalid(ngx_conf_t* cf, const Param& p, const char* what, const char* suffix = "") noexcept;

// An enum's names (mode=, fallback=, algorithm=).
template <typename T>
struct EnumName {
    std::string_view name;
    T value;
};

template <typename T, size_t N>
bool parse_enum(ngx_conf_t* cf, const Param& p, const EnumName<T> (&names)[N], const char* what,
                T& out) noexcept {
    for (const EnumName<T>& n : names) {
        if (p.text() == n.name) {
            out = n.value;
            return true;
        }
    }
    return invalid(cf, p, what);
}

// A time (nginx's syntax: 10ms, 1s, 1m ...) within [min, max] milliseconds.
bool parse_msec(ngx_conf_t* cf, const Param& p, ngx_msec_t min, ngx_msec_t max, const char* what,
                ngx_msec_t& out, const char* suffix = "") noexcept;
// A whole number within [min, max].
bool parse_number(ngx_conf_t* cf, const Param& p, ngx_int_t min, ngx_int_t max, const char* what,
                  ngx_int_t& out) noexcept;

// Reads the file at `path` (a full name, see ngx_conf_full_name) into buf, which has room for
// max + 1 bytes: the number of bytes read, or -1 (logged) when it cannot be opened or read or
// holds more than max bytes (`WHAT "PATH" is larger than MAX bytes`).
ssize_t read_conf_file(ngx_conf_t* cf, const char* what, const ngx_str_t& path, u_char* buf,
                       size_t max) noexcept;

}  // namespace throttle::ngx
