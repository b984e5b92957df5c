// The response cache's stored entry and the rules that decide what is stored. Pure C++, no
// nginx header (layer: core).
//
// Entry format, version 1 (all integers big-endian; one Redis string per entry):
//   off  size
//     0     4  magic "TCE" and version 0x01
//     4     1  flags: bit 0 = body is gzip-compressed; the other bits must be 0
//     5     2  status (100..599)
//     7     8  stored_at_ms       i64, epoch ms, >= 0
//    15     8  fresh_until_ms     i64, >= stored_at_ms   (HIT before this)
//    23     8  stale_until_ms     i64, >= fresh_until_ms (STALE before this)
//    31     8  plain_size         u64, body size before compression (= body size unless gzip)
//    39     2  header count       u16, <= entry_max_headers
//    41        per header: u16 name length, name, u32 value length, value
//              u64 body length, body; the body ends the string exactly
// decode() accepts nothing else: wrong magic or version, unknown flags, a length that runs past
// the end, bytes after the body, a status outside 100..599, times out of order, more than
// entry_max_headers headers, a name longer than entry_max_name or not an HTTP token, a value
// longer than entry_max_value or holding CR, LF or NUL, names and values adding up to more than
// entry_max_header_bytes, a header header_storable() refuses (Set-Cookie, hop-by-hop, ...),
// a body or plain size above the caller's limit, a plain body whose plain_size is not its length.
// Lengths are checked against what is left before anything is read or allocated.
//
// Cacheability (decide()): checked in this order, the first rule that refuses gives the reason:
//   method      only GET responses are stored (HEAD is answered from the GET entry)
//   status      1xx, 206 and 304 never (partial or conditional answers); 5xx never; any other
//               status only when throttle_cache_valid lists it (or lists "any")
//   Set-Cookie  a response with Set-Cookie (or Set-Cookie2) is never stored
//   Vary        "*" never; Accept-Encoding is fine (the module serves gzip itself); a header the
//               key holds (Policy::keyed_headers) is fine; Cookie and Authorization only under
//               a per-user identity from a verified source (Policy::identity_verified: the
//               identity then stands for the credentials); any other header goes into the
//               decision's vary list (cache_vary.hpp: the entry is stored under a variant
//               key), at most vary_max_headers of them, each a token of at most vary_max_name
//   encoding    a Content-Encoding other than identity is not stored (the module compresses
//               bodies itself and must be able to serve them plain), except, when the policy
//               says accept_gzip, exactly one "gzip" (or "x-gzip") coding: the decision then
//               says gzip_body and the caller inflates the body before storing it
//               (Decision::gzip_body; "gzip, br", "deflate", "br" are still refused)
//   size        a Content-Length above max_entry_size (the body is counted again while it
//               streams: fits())
//   Cache-Control (all such headers together; names case-insensitive, quoted values allowed)
//               no-store and no-cache never; private only under a per-user identity;
//               a max-age or s-maxage that is not a number refuses (as nginx does)
//   TTL         X-Accel-Expires ("N" seconds or "@T" epoch seconds) if present, else s-maxage,
//               else max-age, else the configured time for the status; "0", a past "@T", or
//               an unparsable value refuses. X-Accel-Expires overrides the TTL only, never
//               no-store, no-cache, private or Set-Cookie (unlike nginx's proxy cache): an
//               application that wants browsers not to cache while nginx does sends
//               "Cache-Control: private, max-age=0" and "X-Accel-Expires: 60" under an identity.
//               Seconds above 2^31 are taken as 2^31 (RFC 9111 5.2.2.1).
//   stale       the configured stale time, 0 when Cache-Control says must-revalidate or
//               proxy-revalidate
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/cache_vary.hpp"

namespace throttle::core::cache {

inline constexpr size_t entry_max_headers = 64;
inline constexpr size_t entry_max_name = 256;
inline constexpr size_t entry_max_value = 8192;
inline constexpr size_t entry_max_header_bytes = 65536;
inline constexpr size_t entry_fixed_size = 41;  // everything before the first header
inline constexpr uint8_t entry_version = 1;

struct Header {
    std::string name;
    std::string value;
};

struct HeaderView {
    std::string_view name;
    std::string_view value;
};

struct Entry {
    uint16_t status = 200;
    bool gzip = false;           // body is gzip-compressed (the module compressed it)
    int64_t stored_at_ms = 0;    // epoch ms
    int64_t fresh_until_ms = 0;  // a HIT before this
    int64_t stale_until_ms = 0;  // STALE before this (the Redis key's expiry)
    uint64_t plain_size = 0;     // body size before compression; body.size() unless gzip
    std::vector<Header> headers;
    std::string body;
};

// The same, viewing bytes owned elsewhere (decode() without copying a 1 MB body; encode()
// straight from the response). Trivially destructible.
struct EntryView {
    uint16_t status = 200;
    bool gzip = false;
    int64_t stored_at_ms = 0;
    int64_t fresh_until_ms = 0;
    int64_t stale_until_ms = 0;
    uint64_t plain_size = 0;
    size_t header_count = 0;
    HeaderView headers[entry_max_headers];
    std::string_view body;
};

struct DecodeLimits {
    uint64_t max_size = 1 << 20;  // body and plain_size; the configured maximum entry size
};

// The encoded entry. The entry must be one decode() accepts (valid() says so): encode() does
// not check, and an entry that breaks the rules is refused when read back. May throw
// std::bad_alloc. encode_head() is all of it but the body: the entry is encode_head() followed
// by the body bytes (for bodies held in several buffers; not used by the module yet, which
// encodes whole bodies); view.body is not read there.
std::string encode(const Entry& e);
std::string encode(const EntryView& v);
std::string encode_head(const EntryView& v, uint64_t body_size);

// false for any input that is not exactly one well-formed entry within the limits (see above).
// The view points into `in`. Neither reads outside `in` nor throws.
bool decode(std::string_view in, EntryView& out, const DecodeLimits& limits = {}) noexcept;
bool decode(std::string_view in, Entry& out, const DecodeLimits& limits = {}) noexcept;

// Whether decode() would accept the entry (with these limits) once encoded.
bool valid(const EntryView& v, const DecodeLimits& limits = {}) noexcept;
bool valid(const Entry& e, const DecodeLimits& limits = {}) noexcept;

// For tests (the module works on views): a view of an Entry (valid while it lives and is not
// changed). false when it has more than
// entry_max_headers headers.
bool view_of(const Entry& e, EntryView& out) noexcept;

// Whether a response header is kept in an entry. Refused, case-insensitively: hop-by-hop
// headers (Connection, Keep-Alive, Proxy-Connection, Proxy-Authenticate, Proxy-Authorization,
// TE, Trailer, Transfer-Encoding, Upgrade), those the module sets itself when it serves an
// entry (Content-Length, Content-Encoding, Date, Age), Set-Cookie, Set-Cookie2 and X-Accel-*.
bool header_storable(std::string_view name) noexcept;

// ---- serving ----

enum class Freshness : uint8_t { fresh, stale, expired };
Freshness freshness(const EntryView& v, int64_t now_ms) noexcept;
// The Age header's value: whole seconds since stored_at, 0 when the clock went back.
int64_t age_seconds(const EntryView& v, int64_t now_ms) noexcept;

// ---- what to store ----

struct ValidTime {
    uint16_t status = 0;  // 0: any status
    int64_t ttl_ms = 0;
};

struct Policy {
    const ValidTime* valid = nullptr;  // throttle_cache_valid, in configuration order; an
    size_t valid_count = 0;            // exact status wins over "any" wherever it is listed
    bool user_identity = false;        // this request has a non-empty per-user identity
    bool identity_verified = false;    // the identity comes from a verified source (JWT claim,
                                       // resolved user id): Vary: Cookie/Authorization is
                                       // covered by it
    uint64_t max_entry_size = 1 << 20;
    int64_t stale_ms = 0;            // throttle_cache_stale
    std::string_view keyed_headers;  // the headers the key holds (throttle_cache_key), as
                                     // nginx names them, joined by ',': "accept_language,x_a"
    bool accept_gzip = false;        // a gzip-coded response is stored (inflated by the caller)
};

struct Response {
    uint16_t status = 0;
    std::string_view method;              // the request's
    const HeaderView* headers = nullptr;  // the upstream's response headers
    size_t header_count = 0;
    int64_t content_length = -1;  // -1: unknown
    int64_t now_ms = 0;           // for X-Accel-Expires "@T"
};

enum class Verdict : uint8_t {
    store,
    not_get,
    status_never,  // 1xx, 206, 304
    server_error,  // 5xx
    status_not_configured,
    set_cookie,
    vary_star,
    vary_credentials,     // Vary: Cookie or Authorization without a verified identity
    vary_too_many,        // more than vary_max_headers request headers
    vary_bad_name,        // a name that is not a token, or longer than vary_max_name
    vary_value_too_long,  // (the caller's) a request header's value above vary_max_value
    content_encoding,
    too_large,
    no_store,
    no_cache,
    private_without_identity,
    bad_cache_control,
    bad_accel_expires,
    zero_ttl,
};

struct Decision {
    Verdict verdict = Verdict::store;
    int64_t ttl_ms = 0;      // fresh for this long (when stored)
    int64_t stale_ms = 0;    // then stale for this long
    bool gzip_body = false;  // the body is gzip-coded: inflate it before storing
    VaryList vary;           // the request headers the entry varies on (empty: none)
    bool store() const noexcept { return verdict == Verdict::store; }
};

Decision decide(const Policy& policy, const Response& response) noexcept;
// A lowercase name for debug logs ("store", "set-cookie", ...).
const char* verdict_name(Verdict v) noexcept;
// Why responses are not stored, for the operator, when the operator (or the application's
// author) can change it ("Vary: *", "Set-Cookie", "Cache-Control: private without an identity",
// ...); nullptr for verdicts that are a normal part of caching (not GET, a status not
// configured, a TTL of 0, a 5xx, a client's too long header value).
const char* verdict_reason(Verdict v) noexcept;
// Whether a body of this many bytes (so far) still fits the policy's maximum entry size.
inline bool fits(const Policy& policy, uint64_t body_bytes) noexcept {
    return body_bytes <= policy.max_entry_size;
}

// What decides whether a request may use the cache at all.
struct RequestFacts {
    std::string_view method;
    bool has_body = false;           // a request body (or one may follow: chunked, HTTP/2)
    bool has_credentials = false;    // Cookie, Authorization, ... (throttle_cache_credentials)
    bool has_user_identity = false;  // a non-empty throttle_cache_user
    bool ambiguous = false;          // a cookie or header the identity or the key reads, sent twice
};

// GET or HEAD without a body (a search API may answer a GET by its body, which is not in the
// key); a request that carries credentials only under a non-empty identity; and never one
// whose identity or key is ambiguous (nginx and the application could read two different
// users: cache_identity.hpp).
bool request_cacheable(const RequestFacts& r) noexcept;

// Fills the times of an entry stored now under a decision (overflow-safe).
void set_times(EntryView& v, const Decision& d, int64_t now_ms) noexcept;
void set_times(Entry& e, const Decision& d, int64_t now_ms) noexcept;

}  // namespace throttle::core::cache
