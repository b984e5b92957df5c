// Fuzz target: headers that come from a client or an upstream -> the core's HTTP text parsers:
// decide() (Cache-Control, Vary, Content-Encoding, X-Accel-Expires of an upstream response),
// set_times() and the entry it leads to, accepts_gzip() (a client's Accept-Encoding),
// cookie_occurrences() and header_is_variable() (the identity's ambiguity check).
//
// Input: byte 0 the policy (bit 0 user identity, bit 1 identity_verified, bit 2 accept_gzip, bit 3
// a "valid" list of "any" only, else 200 and 404; bits 4-7 the clock), byte 1 the status
// (100 + byte * 2), then header lines "name: value\n" (the last one may be a cookie name for
// cookie_occurrences, and every value is tried as an Accept-Encoding).
#include <climits>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/cache_entry.hpp"
#include "core/cache_identity.hpp"
#include "core/gzip.hpp"

using namespace throttle::core;
using namespace throttle::core::cache;

#define FUZZ_CHECK(cond)      \
    do {                      \
        if (!(cond)) {        \
            __builtin_trap(); \
        }                     \
    } while (0)

namespace {

std::string upper(std::string_view s) {
    std::string out(s);
    for (char& c : out) {
        if (c >= 'a' && c <= 'z') {
            c = char(c - 'a' + 'A');
        }
    }
    return out;
}

void check_accept_encoding(std::string_view v) {
    const bool yes = accepts_gzip(v);
    // Codings and parameter names are case-insensitive; empty list elements are skipped.
    FUZZ_CHECK(accepts_gzip(upper(v)) == yes);
    FUZZ_CHECK(accepts_gzip(std::string(v) + ",") == yes);
    FUZZ_CHECK(accepts_gzip("," + std::string(v)) == yes);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 2) {
        return 0;
    }
    static const ValidTime any_status[] = {{0, 60000}};
    static const ValidTime some[] = {{200, 600000}, {404, 1000}};
    Policy p;
    p.user_identity = data[0] & 1;
    p.identity_verified = data[0] & 2;
    p.accept_gzip = data[0] & 4;
    p.valid = (data[0] & 8) ? any_status : some;
    p.valid_count = (data[0] & 8) ? 1 : 2;
    p.stale_ms = 30000;
    p.keyed_headers = "accept_language,x_tenant";
    const int64_t clocks[] = {0,         1,  1700000000000,   INT64_MAX / 2, INT64_MAX,
                              INT64_MIN, -1, int64_t(1) << 31};
    const int64_t now_ms = clocks[(data[0] >> 4) & 7];

    std::vector<std::string> names;
    std::vector<std::string> values;
    std::string_view rest(reinterpret_cast<const char*>(data + 2), size - 2);
    while (!rest.empty() && names.size() < 128) {
        size_t nl = rest.find('\n');
        std::string_view line = rest.substr(0, nl);
        rest.remove_prefix(nl == std::string_view::npos ? rest.size() : nl + 1);
        size_t colon = line.find(':');
        names.emplace_back(line.substr(0, colon));
        values.emplace_back(colon == std::string_view::npos ? std::string_view()
                                                            : line.substr(colon + 1));
    }
    std::vector<HeaderView> headers;
    for (size_t i = 0; i < names.size(); i++) {
        headers.push_back({names[i], values[i]});
    }

    Response r;
    r.status = uint16_t(100 + data[1] * 2);
    r.method = "GET";
    r.headers = headers.data();
    r.header_count = headers.size();
    r.now_ms = now_ms;
    const Decision d = decide(p, r);
    FUZZ_CHECK(verdict_name(d.verdict) != nullptr);
    if (d.store()) {
        FUZZ_CHECK(d.ttl_ms > 0 && d.stale_ms >= 0);
        // The vary list is canonical, bounded, and its record reads back as itself.
        FUZZ_CHECK(d.vary.size() <= vary_max_headers);
        if (!d.vary.empty()) {
            VaryList back;
            FUZZ_CHECK(VaryList::parse(d.vary.text(), back) && back.text() == d.vary.text());
            FUZZ_CHECK(decode_vary_record(encode_vary_record(d.vary), back));
        }
        FUZZ_CHECK(!d.gzip_body || p.accept_gzip);
        // The entry made of it: times in order whatever the clock, and it round-trips when its
        // headers are ones an entry may hold.
        EntryView v;
        v.status = r.status;
        set_times(v, d, now_ms);
        FUZZ_CHECK(v.stored_at_ms <= v.fresh_until_ms && v.fresh_until_ms <= v.stale_until_ms);
        for (const HeaderView& h : headers) {
            if (v.header_count < entry_max_headers && header_storable(h.name)) {
                v.headers[v.header_count++] = h;
            }
        }
        if (valid(v)) {
            EntryView back;
            FUZZ_CHECK(decode(encode(v), back));
        }
    }
    Response head = r;
    head.method = "HEAD";
    FUZZ_CHECK(decide(p, head).verdict == Verdict::not_get);

    // A client's request headers.
    VaryValue joined;
    bool joined_ok = true;
    for (size_t i = 0; i < names.size(); i++) {
        if (joined_ok) {
            joined_ok = append_vary_value(values[i], joined);
            FUZZ_CHECK(!joined_ok || joined.value.size() <= vary_max_value);
        }
        check_accept_encoding(values[i]);
        const std::string& name = names.back();
        const size_t n = cookie_occurrences(values[i], name);
        FUZZ_CHECK(cookie_occurrences(values[i], upper(name)) == n);
        size_t eq = 0;
        for (char c : values[i]) {
            eq += c == '=';
        }
        FUZZ_CHECK(n <= eq);
        if (header_is_variable(names[i], names.back())) {
            FUZZ_CHECK(names[i].size() == names.back().size());
        }
    }
    RequestFacts f;
    f.method = names.empty() ? std::string_view() : std::string_view(names[0]);
    f.has_credentials = data[0] & 1;
    f.has_user_identity = data[0] & 2;
    if (request_cacheable(f)) {
        FUZZ_CHECK(f.method == "GET" || f.method == "HEAD");
    }
    return 0;
}
