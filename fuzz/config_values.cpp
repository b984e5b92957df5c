// Fuzz target: values the directive parsers hand to the core and redis layers, as written in
// nginx.conf: a rate (throttle_zone rate=), a cache namespace (throttle_cache NAME), a
// throttle_cache_user / throttle_cache_key value (identity_variables()), a Redis address.
// Each is checked against what its header promises.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/cache_identity.hpp"
#include "core/cache_key.hpp"
#include "core/rate.hpp"
#include "redis/address.hpp"

using namespace throttle;

#define FUZZ_CHECK(cond)      \
    do {                      \
        if (!(cond)) {        \
            __builtin_trap(); \
        }                     \
    } while (0)

namespace {

// rate.hpp: "Nr/s", "Nr/m", "Nr/h", "Nr/d", N decimal digits, 1 .. max_rate_limit.
void check_rate(std::string_view text) {
    core::Rate r;
    r.limit = 7;
    r.period_ms = 7;
    const bool ok = core::parse_rate(text, r);
    size_t digits = 0;
    while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') {
        digits++;
    }
    const bool shape = digits > 0 && text.size() == digits + 3 && text[digits] == 'r' &&
                       text[digits + 1] == '/' &&
                       std::string_view("smhd").find(text[digits + 2]) != std::string_view::npos;
    if (!shape) {
        FUZZ_CHECK(!ok);
    }
    if (!ok) {
        FUZZ_CHECK(r.limit == 7 && r.period_ms == 7);  // left unchanged
        return;
    }
    uint64_t n = 0;
    for (size_t i = 0; i < digits; i++) {
        if (n <= core::max_rate_limit) {
            n = n * 10 + uint64_t(text[i] - '0');
        }
    }
    FUZZ_CHECK(r.limit == n && n >= 1 && n <= core::max_rate_limit);
    const char unit = text[digits + 2];
    FUZZ_CHECK(r.period_ms == (unit == 's'   ? core::ms_per_second
                               : unit == 'm' ? core::ms_per_minute
                               : unit == 'h' ? core::ms_per_hour
                                             : core::ms_per_day));
}

void check_namespace(std::string_view ns) {
    bool ok = !ns.empty() && ns.size() <= core::cache::namespace_max_len &&
              ns.find_first_not_of(
                  "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                  "0123456789_.-") == std::string_view::npos;
    FUZZ_CHECK(core::cache::valid_namespace(ns) == ok);
}

void check_identity_variables(std::string_view value) {
    size_t dollars = 0;
    for (char c : value) {
        dollars += c == '$';
    }
    auto vars = core::cache::identity_variables(value);
    FUZZ_CHECK(vars.size() <= dollars);
    for (const auto& v : vars) {
        FUZZ_CHECK(!v.name.empty());
        FUZZ_CHECK(v.name.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789_") ==
                   std::string::npos);
        FUZZ_CHECK(!(v.kind == core::cache::IdentityVariable::Kind::header && v.name == "cookie"));
        // what it names is found in the value as written (case aside)
    }
}

// address.hpp: parse() takes what to_string() prints, and to_string() prints what parse()
// took.
void check_address(std::string_view text) {
    redis::Address a;
    if (!redis::Address::parse(text, a)) {
        return;
    }
    FUZZ_CHECK(a.valid());
    redis::Address b;
    const std::string printed = a.to_string();
    FUZZ_CHECK(redis::Address::parse(printed, b));
    FUZZ_CHECK(b.host == a.host && b.port == a.port && b.unix_path == a.unix_path);
    FUZZ_CHECK(b.to_string() == printed);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string_view text(reinterpret_cast<const char*>(data), size);
    check_rate(text);
    check_namespace(text);
    check_identity_variables(text);
    check_address(text);
    return 0;
}
