#include "core/cache_entry.hpp"

#include <cstring>
#include <limits>
#include <new>
#include <utility>

#include "core/cache_identity.hpp"
#include "core/http_text.hpp"

namespace throttle::core::cache {

namespace {

using http::iequals;
using http::is_ows;
using http::is_tchar;
using http::istarts_with;
using http::trim;

constexpr char magic[3] = {'T', 'C', 'E'};
constexpr uint8_t flag_gzip = 1;
constexpr int64_t max_delta_seconds = int64_t{1} << 31;  // RFC 9111 5.2.2.1
constexpr int64_t int64_max = std::numeric_limits<int64_t>::max();

// is_tchar() as a table: a hit checks every stored header name, byte by byte.
struct TcharTable {
    bool t[256] = {};
    TcharTable() noexcept {
        for (int c = 0; c < 256; ++c) t[c] = is_tchar(static_cast<char>(c));
    }
};
const TcharTable tchar_table;

bool valid_name(std::string_view name) noexcept {
    if (name.empty() || name.size() > entry_max_name) return false;
    for (char c : name)
        if (!tchar_table.t[static_cast<uint8_t>(c)]) return false;
    return header_storable(name);
}

// Whether any byte of x is b (exact: the classic zero-byte test on x ^ bbbbbbbb).
bool has_byte(uint64_t x, uint8_t b) noexcept {
    const uint64_t v = x ^ (0x0101010101010101ULL * b);
    return ((v - 0x0101010101010101ULL) & ~v & 0x8080808080808080ULL) != 0;
}

bool valid_value(std::string_view value) noexcept {
    if (value.size() > entry_max_value) return false;
    size_t i = 0;
    for (; i + 8 <= value.size(); i += 8) {  // eight bytes at a time: a hit checks every value
        uint64_t x;
        std::memcpy(&x, value.data() + i, 8);
        if (has_byte(x, '\r') || has_byte(x, '\n') || has_byte(x, 0)) return false;
    }
    for (; i < value.size(); ++i) {
        const char c = value[i];
        if (c == '\r' || c == '\n' || c == '\0') return false;
    }
    return true;
}

// The checks decode() makes on what it read, shared with valid().
bool valid_fields(const EntryView& v, const DecodeLimits& limits) noexcept {
    if (v.status < 100 || v.status > 599) return false;
    if (v.stored_at_ms < 0 || v.fresh_until_ms < v.stored_at_ms ||
        v.stale_until_ms < v.fresh_until_ms)
        return false;
    if (v.header_count > entry_max_headers) return false;
    size_t header_bytes = 0;
    for (size_t i = 0; i < v.header_count; ++i) {
        const HeaderView& h = v.headers[i];
        if (!valid_name(h.name) || !valid_value(h.value)) return false;
        header_bytes += h.name.size() + h.value.size();  // each bounded: cannot overflow
        if (header_bytes > entry_max_header_bytes) return false;
    }
    if (v.body.size() > limits.max_size || v.plain_size > limits.max_size) return false;
    if (!v.gzip && v.plain_size != v.body.size()) return false;
    return true;
}

void put(std::string& s, uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; --i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// A big-endian value as loaded on this host.
template <class T>
T be(T x) noexcept {
    if constexpr (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__) {
        if constexpr (sizeof(T) == 2) return __builtin_bswap16(x);
        if constexpr (sizeof(T) == 4) return __builtin_bswap32(x);
        if constexpr (sizeof(T) == 8) return __builtin_bswap64(x);
    }
    return x;
}

class Reader {
   public:
    explicit Reader(std::string_view in) noexcept : in_(in) {}
    bool u(int bytes, uint64_t& v) noexcept {
        if (in_.size() < static_cast<size_t>(bytes)) return false;
        const char* p = in_.data();
        switch (bytes) {  // big-endian loads of the sizes the format uses
            case 2: {
                uint16_t x;
                std::memcpy(&x, p, 2);
                v = be(x);
                break;
            }
            case 4: {
                uint32_t x;
                std::memcpy(&x, p, 4);
                v = be(x);
                break;
            }
            case 8: {
                uint64_t x;
                std::memcpy(&x, p, 8);
                v = be(x);
                break;
            }
            default:
                v = 0;
                for (int i = 0; i < bytes; ++i) v = (v << 8) | static_cast<uint8_t>(p[i]);
                break;
        }
        in_.remove_prefix(static_cast<size_t>(bytes));
        return true;
    }
    bool i64(int64_t& v) noexcept {
        uint64_t u64;
        if (!u(8, u64)) return false;
        v = static_cast<int64_t>(u64);  // two's complement (C++20 guarantees it, gcc always)
        return true;
    }
    bool bytes(uint64_t len, std::string_view& out) noexcept {
        if (len > in_.size()) return false;
        out = in_.substr(0, static_cast<size_t>(len));
        in_.remove_prefix(static_cast<size_t>(len));
        return true;
    }
    bool done() const noexcept { return in_.empty(); }

   private:
    std::string_view in_;
};

int64_t sat_add(int64_t a, int64_t b) noexcept {  // b >= 0
    return a > int64_max - b ? int64_max : a + b;
}

// Digits only, saturating at max_delta_seconds. false when empty or not all digits.
bool parse_seconds(std::string_view s, int64_t& out) noexcept {
    if (s.empty()) return false;
    int64_t v = 0;
    for (char c : s) {
        if (c < '0' || c > '9') return false;
        if (v < max_delta_seconds) v = v * 10 + (c - '0');
    }
    out = v < max_delta_seconds ? v : max_delta_seconds;
    return true;
}

struct CacheControl {
    bool no_store = false;
    bool no_cache = false;
    bool private_ = false;
    bool revalidate = false;  // must-revalidate, proxy-revalidate
    bool bad = false;
    int64_t max_age = -1;  // seconds; -1: absent
    int64_t s_maxage = -1;
};

void min_into(int64_t& slot, int64_t v) noexcept {
    if (slot < 0 || v < slot) slot = v;
}

// One Cache-Control field value: #( token [ "=" ( token / quoted-string ) ] ).
void parse_cache_control(std::string_view s, CacheControl& cc) noexcept {
    size_t i = 0;
    const size_t n = s.size();
    while (i < n) {
        while (i < n && (is_ows(s[i]) || s[i] == ',')) ++i;
        if (i == n) break;
        size_t start = i;
        while (i < n && is_tchar(s[i])) ++i;
        std::string_view name = s.substr(start, i - start);
        if (name.empty()) {
            cc.bad = true;
            return;
        }
        while (i < n && is_ows(s[i])) ++i;
        std::string_view value;
        bool has_value = false;
        if (i < n && s[i] == '=') {
            has_value = true;
            ++i;
            while (i < n && is_ows(s[i])) ++i;
            if (i < n && s[i] == '"') {
                ++i;
                size_t vstart = i;
                bool escaped = false;
                while (i < n && (escaped || s[i] != '"')) {
                    escaped = !escaped && s[i] == '\\';
                    ++i;
                }
                if (i == n) {  // unterminated
                    cc.bad = true;
                    return;
                }
                value = s.substr(vstart, i - vstart);  // escapes kept: only numbers are read
                ++i;
            } else {
                size_t vstart = i;
                while (i < n && is_tchar(s[i])) ++i;
                value = s.substr(vstart, i - vstart);
            }
        }
        while (i < n && is_ows(s[i])) ++i;
        if (i < n && s[i] != ',') {
            cc.bad = true;
            return;
        }

        if (iequals(name, "no-store")) {
            cc.no_store = true;
        } else if (iequals(name, "no-cache")) {
            cc.no_cache = true;
        } else if (iequals(name, "private")) {
            cc.private_ = true;
        } else if (iequals(name, "must-revalidate") || iequals(name, "proxy-revalidate")) {
            cc.revalidate = true;
        } else if (iequals(name, "max-age") || iequals(name, "s-maxage")) {
            int64_t secs;
            if (!has_value || !parse_seconds(value, secs)) {
                cc.bad = true;
                return;
            }
            min_into(iequals(name, "max-age") ? cc.max_age : cc.s_maxage, secs);
        }
    }
}

// Whether a header is one of the key's ("accept_language,x_tenant").
bool keyed(std::string_view header, std::string_view keyed_headers) noexcept {
    while (!keyed_headers.empty()) {
        size_t comma = keyed_headers.find(',');
        if (header_is_variable(header, keyed_headers.substr(0, comma))) return true;
        if (comma == std::string_view::npos) break;
        keyed_headers.remove_prefix(comma + 1);
    }
    return false;
}

// Vary: "*" or #field-name; the names the entry varies on go into `list`.
Verdict check_vary(std::string_view s, const Policy& p, VaryList& list) noexcept {
    while (!s.empty()) {
        size_t comma = s.find(',');
        std::string_view item = trim(s.substr(0, comma));
        s = comma == std::string_view::npos ? std::string_view() : s.substr(comma + 1);
        if (item.empty()) continue;
        if (item == "*") return Verdict::vary_star;
        if (iequals(item, "accept-encoding")) continue;
        if (keyed(item, p.keyed_headers)) continue;  // the key holds its value
        if (iequals(item, "cookie") || iequals(item, "authorization")) {
            if (p.user_identity && p.identity_verified) continue;
            return Verdict::vary_credentials;
        }
        switch (list.add(item)) {
            case VaryList::Add::ok:
                break;
            case VaryList::Add::too_many:
                return Verdict::vary_too_many;
            case VaryList::Add::bad_name:
                return Verdict::vary_bad_name;
        }
    }
    return Verdict::store;
}

Decision refuse(Verdict v) noexcept {
    Decision d;
    d.verdict = v;
    return d;
}

template <class E>
void set_times_impl(E& e, const Decision& d, int64_t now_ms) noexcept {
    int64_t now = now_ms < 0 ? 0 : now_ms;
    e.stored_at_ms = now;
    e.fresh_until_ms = sat_add(now, d.ttl_ms < 0 ? 0 : d.ttl_ms);
    e.stale_until_ms = sat_add(e.fresh_until_ms, d.stale_ms < 0 ? 0 : d.stale_ms);
}

}  // namespace

// ---- format ----

std::string encode_head(const EntryView& v, uint64_t body_size) {
    size_t size = entry_fixed_size + 8;
    for (size_t i = 0; i < v.header_count && i < entry_max_headers; ++i)
        size += 6 + v.headers[i].name.size() + v.headers[i].value.size();
    std::string s;
    s.reserve(size);
    s.append(magic, sizeof(magic));
    s.push_back(static_cast<char>(entry_version));
    put(s, v.gzip ? flag_gzip : 0, 1);
    put(s, v.status, 2);
    put(s, static_cast<uint64_t>(v.stored_at_ms), 8);
    put(s, static_cast<uint64_t>(v.fresh_until_ms), 8);
    put(s, static_cast<uint64_t>(v.stale_until_ms), 8);
    put(s, v.plain_size, 8);
    size_t count = v.header_count < entry_max_headers ? v.header_count : entry_max_headers;
    put(s, count, 2);
    for (size_t i = 0; i < count; ++i) {
        put(s, v.headers[i].name.size(), 2);
        s.append(v.headers[i].name);
        put(s, v.headers[i].value.size(), 4);
        s.append(v.headers[i].value);
    }
    put(s, body_size, 8);
    return s;
}

std::string encode(const EntryView& v) {
    std::string s = encode_head(v, v.body.size());
    s.append(v.body);
    return s;
}

std::string encode(const Entry& e) {
    EntryView v;
    view_of(e, v);  // more than entry_max_headers: the rest is dropped (valid() says false)
    return encode(v);
}

bool decode(std::string_view in, EntryView& out, const DecodeLimits& limits) noexcept {
    Reader r(in);
    std::string_view head;
    if (!r.bytes(4, head) || head.substr(0, 3) != std::string_view(magic, 3) ||
        static_cast<uint8_t>(head[3]) != entry_version)
        return false;
    uint64_t flags, status, plain, count;
    // Read straight into `out` (an EntryView is 2 KB: a local one and a copy cost a hit ~1,000
    // instructions); on failure `out` holds whatever was read, as the header allows.
    EntryView& v = out;
    if (!r.u(1, flags) || (flags & ~uint64_t{flag_gzip}) != 0) return false;
    if (!r.u(2, status) || !r.i64(v.stored_at_ms) || !r.i64(v.fresh_until_ms) ||
        !r.i64(v.stale_until_ms) || !r.u(8, plain) || !r.u(2, count))
        return false;
    if (count > entry_max_headers) return false;
    v.gzip = (flags & flag_gzip) != 0;
    v.status = static_cast<uint16_t>(status);
    v.plain_size = plain;
    v.header_count = static_cast<size_t>(count);
    for (size_t i = 0; i < v.header_count; ++i) {
        uint64_t nlen, vlen;
        if (!r.u(2, nlen) || !r.bytes(nlen, v.headers[i].name)) return false;
        if (!r.u(4, vlen) || !r.bytes(vlen, v.headers[i].value)) return false;
    }
    uint64_t blen;
    if (!r.u(8, blen) || !r.bytes(blen, v.body) || !r.done()) return false;
    return valid_fields(v, limits);
}

bool decode(std::string_view in, Entry& out, const DecodeLimits& limits) noexcept {
    EntryView v;
    if (!decode(in, v, limits)) return false;
    try {
        Entry e;
        e.status = v.status;
        e.gzip = v.gzip;
        e.stored_at_ms = v.stored_at_ms;
        e.fresh_until_ms = v.fresh_until_ms;
        e.stale_until_ms = v.stale_until_ms;
        e.plain_size = v.plain_size;
        e.headers.reserve(v.header_count);
        for (size_t i = 0; i < v.header_count; ++i)
            e.headers.push_back(
                Header{std::string(v.headers[i].name), std::string(v.headers[i].value)});
        e.body.assign(v.body);
        out = std::move(e);
    } catch (const std::bad_alloc&) {
        return false;
    }
    return true;
}

bool view_of(const Entry& e, EntryView& out) noexcept {
    out.status = e.status;
    out.gzip = e.gzip;
    out.stored_at_ms = e.stored_at_ms;
    out.fresh_until_ms = e.fresh_until_ms;
    out.stale_until_ms = e.stale_until_ms;
    out.plain_size = e.plain_size;
    out.header_count = e.headers.size() < entry_max_headers ? e.headers.size() : entry_max_headers;
    for (size_t i = 0; i < out.header_count; ++i)
        out.headers[i] = HeaderView{e.headers[i].name, e.headers[i].value};
    out.body = e.body;
    return e.headers.size() <= entry_max_headers;
}

bool valid(const EntryView& v, const DecodeLimits& limits) noexcept {
    return valid_fields(v, limits);
}

bool valid(const Entry& e, const DecodeLimits& limits) noexcept {
    EntryView v;
    return view_of(e, v) && valid_fields(v, limits);
}

bool header_storable(std::string_view name) noexcept {
    // The refused names by length (a hit checks every stored header: one switch, at most three
    // comparisons).
    auto is = [&](std::string_view r) { return iequals(name, r); };
    bool refused = false;
    switch (name.size()) {
        case 2:
            refused = is("te");
            break;
        case 3:
            refused = is("age");
            break;
        case 4:
            refused = is("date");
            break;
        case 7:
            refused = is("trailer") || is("upgrade");
            break;
        case 10:
            refused = is("connection") || is("keep-alive") || is("set-cookie");
            break;
        case 11:
            refused = is("set-cookie2");
            break;
        case 14:
            refused = is("content-length");
            break;
        case 16:
            refused = is("proxy-connection") || is("content-encoding");
            break;
        case 17:
            refused = is("transfer-encoding");
            break;
        case 18:
            refused = is("proxy-authenticate");
            break;
        case 19:
            refused = is("proxy-authorization");
            break;
        default:
            break;
    }
    return !refused && !istarts_with(name, "x-accel-");
}

// ---- serving ----

Freshness freshness(const EntryView& v, int64_t now_ms) noexcept {
    if (now_ms < v.fresh_until_ms) return Freshness::fresh;
    if (now_ms < v.stale_until_ms) return Freshness::stale;
    return Freshness::expired;
}

int64_t age_seconds(const EntryView& v, int64_t now_ms) noexcept {
    if (now_ms <= v.stored_at_ms) return 0;
    // Both are >= 0 here (stored_at_ms >= 0 in a valid entry): no overflow.
    return (now_ms - v.stored_at_ms) / 1000;
}

// ---- what to store ----

Decision decide(const Policy& p, const Response& r) noexcept {
    if (r.method != "GET") return refuse(Verdict::not_get);
    if (r.status < 200 || r.status == 206 || r.status == 304) return refuse(Verdict::status_never);
    if (r.status >= 500) return refuse(Verdict::server_error);

    int64_t configured = -1;
    for (size_t i = 0; i < p.valid_count; ++i) {
        if (p.valid[i].status == r.status) {
            configured = p.valid[i].ttl_ms;
            break;
        }
        if (p.valid[i].status == 0 && configured < 0) configured = p.valid[i].ttl_ms;
    }
    if (configured < 0) return refuse(Verdict::status_not_configured);

    CacheControl cc;
    std::string_view accel;
    bool has_accel = false;
    for (size_t i = 0; i < r.header_count; ++i) {
        const HeaderView& h = r.headers[i];
        if (iequals(h.name, "set-cookie") || iequals(h.name, "set-cookie2"))
            return refuse(Verdict::set_cookie);
    }
    VaryList vary;
    for (size_t i = 0; i < r.header_count; ++i) {
        const HeaderView& h = r.headers[i];
        if (iequals(h.name, "vary")) {
            Verdict v = check_vary(h.value, p, vary);
            if (v != Verdict::store) return refuse(v);
        }
    }
    bool gzip_body = false;
    for (size_t i = 0; i < r.header_count; ++i) {
        const HeaderView& h = r.headers[i];
        if (iequals(h.name, "content-encoding")) {
            std::string_view v = trim(h.value);
            if (v.empty() || iequals(v, "identity")) continue;
            if (p.accept_gzip && !gzip_body && (iequals(v, "gzip") || iequals(v, "x-gzip"))) {
                gzip_body = true;  // one gzip coding; a second Content-Encoding refuses
                continue;
            }
            return refuse(Verdict::content_encoding);
        }
    }
    if (r.content_length >= 0 && !fits(p, static_cast<uint64_t>(r.content_length)))
        return refuse(Verdict::too_large);

    for (size_t i = 0; i < r.header_count; ++i) {
        const HeaderView& h = r.headers[i];
        if (iequals(h.name, "cache-control")) {
            parse_cache_control(h.value, cc);
        } else if (iequals(h.name, "x-accel-expires")) {
            if (has_accel) return refuse(Verdict::bad_accel_expires);  // two: ambiguous
            has_accel = true;
            accel = trim(h.value);
        }
    }
    if (cc.no_store) return refuse(Verdict::no_store);
    if (cc.no_cache) return refuse(Verdict::no_cache);
    if (cc.private_ && !p.user_identity) return refuse(Verdict::private_without_identity);
    if (cc.bad) return refuse(Verdict::bad_cache_control);

    int64_t ttl_ms = configured;
    if (has_accel) {
        int64_t secs;
        if (!accel.empty() && accel.front() == '@') {
            // Absolute epoch seconds, taken up to the year 2038 and a bit (2^31 s).
            if (!parse_seconds(accel.substr(1), secs)) return refuse(Verdict::bad_accel_expires);
            int64_t at_ms = secs * 1000;
            ttl_ms = at_ms > r.now_ms ? at_ms - (r.now_ms < 0 ? 0 : r.now_ms) : 0;
        } else {
            if (!parse_seconds(accel, secs)) return refuse(Verdict::bad_accel_expires);
            ttl_ms = secs * 1000;
        }
    } else if (cc.s_maxage >= 0) {
        ttl_ms = cc.s_maxage * 1000;
    } else if (cc.max_age >= 0) {
        ttl_ms = cc.max_age * 1000;
    }
    if (ttl_ms <= 0) return refuse(Verdict::zero_ttl);

    Decision d;
    d.verdict = Verdict::store;
    d.ttl_ms = ttl_ms;
    d.stale_ms = cc.revalidate || p.stale_ms < 0 ? 0 : p.stale_ms;
    d.gzip_body = gzip_body;
    d.vary = vary;
    return d;
}

const char* verdict_name(Verdict v) noexcept {
    switch (v) {
        case Verdict::store:
            return "store";
        case Verdict::not_get:
            return "not-get";
        case Verdict::status_never:
            return "status-never";
        case Verdict::server_error:
            return "server-error";
        case Verdict::status_not_configured:
            return "status-not-configured";
        case Verdict::set_cookie:
            return "set-cookie";
        case Verdict::vary_star:
            return "vary-star";
        case Verdict::vary_credentials:
            return "vary-credentials";
        case Verdict::vary_too_many:
            return "vary-too-many";
        case Verdict::vary_bad_name:
            return "vary-bad-name";
        case Verdict::vary_value_too_long:
            return "vary-value-too-long";
        case Verdict::content_encoding:
            return "content-encoding";
        case Verdict::too_large:
            return "too-large";
        case Verdict::no_store:
            return "no-store";
        case Verdict::no_cache:
            return "no-cache";
        case Verdict::private_without_identity:
            return "private-without-identity";
        case Verdict::bad_cache_control:
            return "bad-cache-control";
        case Verdict::bad_accel_expires:
            return "bad-accel-expires";
        case Verdict::zero_ttl:
            return "zero-ttl";
    }
    return "unknown";
}

const char* verdict_reason(Verdict v) noexcept {
    switch (v) {
        case Verdict::set_cookie:
            return "they set a cookie (Set-Cookie)";
        case Verdict::vary_star:
            return "Vary: *";
        case Verdict::vary_credentials:
            return "Vary: Cookie or Authorization without a verified identity "
                   "(throttle_cache_user from $throttle_user_id or $throttle_jwt_claim_*)";
        case Verdict::vary_too_many:
            return "Vary names more than 4 request headers";
        case Verdict::vary_bad_name:
            return "Vary names a header that is not a token or is longer than 64 bytes";
        case Verdict::content_encoding:
            return "a Content-Encoding other than gzip";
        case Verdict::too_large:
            return "larger than throttle_cache_max_size";
        case Verdict::no_store:
            return "Cache-Control: no-store";
        case Verdict::no_cache:
            return "Cache-Control: no-cache";
        case Verdict::private_without_identity:
            return "Cache-Control: private without an identity (throttle_cache_user)";
        case Verdict::bad_cache_control:
            return "a Cache-Control that does not parse";
        case Verdict::bad_accel_expires:
            return "an X-Accel-Expires that does not parse";
        default:
            return nullptr;
    }
}

bool request_cacheable(const RequestFacts& r) noexcept {
    if (r.method != "GET" && r.method != "HEAD") return false;
    if (r.has_body || r.ambiguous) return false;
    return !r.has_credentials || r.has_user_identity;
}

void set_times(EntryView& v, const Decision& d, int64_t now_ms) noexcept {
    set_times_impl(v, d, now_ms);
}

void set_times(Entry& e, const Decision& d, int64_t now_ms) noexcept {
    set_times_impl(e, d, now_ms);
}

}  // namespace throttle::core::cache
