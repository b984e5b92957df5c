// The response cache's keys. Pure C++, no nginx header (layer: core).
//
// Identity. The configured identity (a session token) is never written anywhere: it becomes
//   identity_digest(secret, identity) = hex(HMAC-SHA256(secret, "throttle-cache-identity\0" +
//   identity)), 64 lowercase hex digits. An empty identity is the anonymous marker "anon",
//   which no digest can equal. Different secrets give unrelated digests; without the secret a
//   digest cannot be linked back to a token, nor computed for someone else's token.
//
// Request key. cache_key() is SHA-256 over, in this order:
//   "throttle-cache-key\0" version byte 2
//   field(namespace) field(scheme) field(host, normalised)
//   field(identity digest) field(method class) field(path)
//   u64 number of query arguments, then for each argument in sorted order:
//     field(name) u8 has_value field(value)
//   field(extra)
//   where field(x) = u64 big-endian length of x, then x's bytes, and u64 is big-endian.
// Every variable-length piece is length-prefixed and the argument count is fixed up front, so
// the byte string is an unambiguous encoding of the request: two requests that differ in any
// component never share it ("/a" + "b=c" vs "/ab" + "=c", "&" or "=" or NUL inside a value, ...).
// The version byte changes whenever the encoding does: entries stored under another version
// are simply never found (a miss each, once), never misread. Version 1 had no scheme, host
// nor extra.
//
// Where. The scheme ("http", "https") and the host the request was addressed to are part of
// the key, so two servers (or a whole http{} block) sharing one namespace never share entries
// across hosts. The host is the one nginx resolved ($host: the absolute-form target's host,
// else the Host header's, else the server's name), which comes without a port; the key
// lowercases it and drops one trailing dot, so "B.Test." and "b.test" are one host whatever
// the caller passes. No port is in the key: not the Host header's (nginx ignores it when it
// picks the server: "b.test:1234" is "b.test"), nor the one the connection arrived on (hosts
// and instances listening on different ports share their entries). Servers that answer one
// host name on two ports or addresses with different content need their own namespaces, or
// the port in the extra ("throttle_cache_key $server_port;").
//
// Extra. Whatever else the application varies on (throttle_cache_key: a language, a tenant
// header, the port), as one string; empty when there is nothing else.
//
// Method class. GET and HEAD share "GET" (HEAD is answered from the GET entry); any other
// method is its own class (its bytes as given; only GET responses are stored anyway).
//
// Query arguments, as the key sees them (no decoding at all: a safe choice, because two
// spellings the application might treat alike only cost a miss, never a wrong answer):
//   - the query (without "?") is split on every '&'; each piece is one argument, empty pieces
//     included ("a=1&&b" has three arguments: "a=1", "", "b"; "" has none; "&" has two);
//   - an argument splits at its first '=' into name and value: "a" has no value, "a=" has an
//     empty value, "a=b=c" is name "a", value "b=c"; "a", "a=" and "a=%41" and "a=A" are four
//     different arguments; '+' is not a space and '%xx' is not decoded;
//   - arguments are sorted by name (bytewise, unsigned); equal names keep their relative order
//     (a stable sort), because applications read repeated arguments as an ordered list:
//     "b=2&a=1" equals "a=1&b=2", but "a=1&a=2" differs from "a=2&a=1";
//   - ';' is not a separator.
// The path is taken as given: the caller passes the raw path and query the client sent (what
// proxy_pass forwards), or nginx's normalised URI and $args when a rewrite changed them.
//
// Redis layout (hash-tag friendly: everything of one user in one namespace is in one slot):
//   generation_key            PREFIX{NS:ID}:g                 user's generation (INCR)
//   namespace_generation_key  PREFIX{NS}:g                    whole namespace's generation
//   entry_key                 PREFIX{NS:ID}:e:NSGEN.GEN:KEYHEX the stored entry
//   fill_lock_key             entry_key + ":l"               SET NX PX while one host fills
//   fill_waiter_key           entry_key + ":w"               SET PX by a lookup that finds the
//                                                            lock held; the fill's end wakes it
// ID is the identity digest (or "anon"), KEYHEX the 64 hex digits of cache_key(). Bumping either
// generation changes every entry key of that user (or of the whole namespace) at once; the old
// entries are simply never read again and expire by their TTL. The two generation keys are in
// different hash slots: a script that reads both runs on a single Redis, not a Cluster.
// Namespaces are restricted (valid_namespace) so that NS can hold neither ':' nor braces; the
// key bytes then parse back unambiguously, and KEYHEX alone already separates every request.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/hash.hpp"

namespace throttle::core::cache {

inline constexpr std::string_view anonymous_identity = "anon";
inline constexpr size_t namespace_max_len = 64;

// 1 to 64 bytes of [A-Za-z0-9_.-].
bool valid_namespace(std::string_view ns) noexcept;

// "anon" for an empty identity, else 64 lowercase hex digits (see above).
std::string identity_digest(std::string_view secret, std::string_view identity);
// The same with the secret prepared once (HmacSha256Key(secret)): two compressions fewer.
std::string identity_digest(const HmacSha256Key& secret, std::string_view identity);

// "GET" for GET and HEAD, else the method itself.
std::string_view method_class(std::string_view method) noexcept;

struct CacheKeyInput {
    std::string_view ns;               // the namespace (throttle_cache NAME)
    std::string_view identity_digest;  // identity_digest()'s result, never the raw identity
    std::string_view method;           // request method; GET and HEAD give the same key
    std::string_view path;             // the request's path (see above)
    std::string_view query;            // its query, without '?'
    std::string_view scheme;           // "http", "https"
    std::string_view host;             // without a port; case and one trailing dot do not count
    std::string_view extra;            // throttle_cache_key's value; empty: none
};

// The fixed-length digest of a request (see above). May throw std::bad_alloc (the sort holds
// one pair of views per query argument). KEYHEX is core::hex() of it: 64 lowercase hex digits.
Sha256Digest cache_key(const CacheKeyInput& in);

// A per-worker memo of cache_key(): the last keys of `slots` distinct inputs (a hot URL's key is
// computed once, not per request: SHA-256 over the fields is most of what a cache hit costs).
// A slot holds the exact inputs (each length-prefixed: the identity as its digest, never the
// identity itself) and the key; a lookup compares all of them, so only the same inputs can
// match. Inputs longer than max_input in all are not memoised. The slot index is SipHash-1-3
// of the input under the memo's seed (keyed: a client cannot aim at slots; and a cheap index
// is enough, since the whole input is compared). Not thread-safe.
class CacheKeyMemo {
   public:
    // Sets of `ways` slots, least recently used replaced (as IdentityMemo): 2,000 users in turn
    // mostly find their key.
    static constexpr size_t slots = 8192;
    static constexpr size_t ways = 4;
    static constexpr size_t max_input = 512;

    explicit CacheKeyMemo(const SipKey& seed) noexcept : seed_(seed) {}

    // cache_key(in). May throw std::bad_alloc.
    Sha256Digest key(const CacheKeyInput& in);
    size_t hits() const noexcept { return hits_; }

   private:
    struct Slot {
        std::string input;
        Sha256Digest key{};
        uint32_t used_at = 0;  // tick_ when last found or stored; 0: empty
    };
    SipKey seed_;
    std::array<Slot, slots> slots_{};
    std::array<char, max_input> scratch_{};  // this lookup's input, built in place
    uint32_t tick_ = 0;
    size_t hits_ = 0;
};

// Generations are numbers Redis INCRs; a missing key reads as 0.
struct Generation {
    uint64_t ns = 0;    // namespace_generation_key's value
    uint64_t user = 0;  // generation_key's value
};

// The Redis keys above. `id` is identity_digest()'s result. May throw std::bad_alloc.
std::string generation_key(std::string_view prefix, std::string_view ns, std::string_view id);
std::string namespace_generation_key(std::string_view prefix, std::string_view ns);
std::string entry_key(std::string_view prefix, std::string_view ns, std::string_view id,
                      const Generation& gen, const Sha256Digest& key);
std::string fill_lock_key(std::string_view entry_key);
std::string fill_waiter_key(std::string_view entry_key);

}  // namespace throttle::core::cache
