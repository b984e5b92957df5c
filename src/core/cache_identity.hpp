// The response cache's identities beyond their digest (cache_key.hpp): when an identity is
// ambiguous, and a memo of digests that keeps no identity. Pure C++, no nginx header (layer:
// core).
//
// Ambiguity. nginx and the application must read the same identity from a request, or the
// entry stored under one user's digest holds a page the application made for another. They
// part when the identity is sent more than once: for "Cookie: sessionid=B; sessionid=A"
// nginx's $cookie_sessionid is B (the first), Django reads A (the last); for two "X-Token"
// headers nginx 1.22's $http_x_token is the first, a WSGI server joins them. So a request in
// which a cookie or header the identity is read from appears more than once never uses the
// cache, whatever the values (the same value twice included: one rule, no guessing).
//
// Which ones. identity_variables() finds, in a throttle_cache_user value as written in the
// configuration (and in throttle_cache_key's, which the same rule covers: two Accept-Language
// headers, two answers), every $cookie_NAME and $http_NAME it names directly ("$cookie_sessionid",
// "${http_x_token}:$cookie_tenant"); a variable that derives from them elsewhere (a map, a
// set) is not seen through.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/hash.hpp"

namespace throttle::core::cache {

struct IdentityVariable {
    enum class Kind : uint8_t { cookie, header };
    Kind kind;
    std::string name;  // lowercase, as nginx names it: "sessionid" ($cookie_sessionid),
                       // "x_token" ($http_x_token)
};

// The $cookie_NAME and $http_NAME variables `value` names, in order, repeats included, with
// nginx's syntax ("$name" runs over [A-Za-z0-9_], "${name}" up to the brace; "$1".."$9" are
// captures). $http_cookie is not one of them: nginx joins every Cookie header into it, so it
// cannot be ambiguous. May throw std::bad_alloc.
std::vector<IdentityVariable> identity_variables(std::string_view value);

// Whether a throttle_cache_user value (as written) names a verified identity: the user id the
// application resolved for a session ($throttle_user_id) or a claim of a verified JWT
// ($throttle_jwt_claim_NAME). Under such an identity a response's "Vary: Cookie" or
// "Vary: Authorization" is covered: the identity stands for the credentials. The name is all
// that is checked (like identity_variables(), a map or set over them is not seen through: the
// variable must be named in the value itself). May throw std::bad_alloc.
bool identity_verified(std::string_view value);

// How many cookies named `name` (ASCII case-insensitive, as nginx matches $cookie_NAME) one
// Cookie header value sets. Pairs are split at ';' and at ',' (nginx 1.22 splits at both, an
// application at ';'); a pair counts when, after spaces and tabs, it starts with the name,
// then optional spaces or tabs, then '='. Counting at both separators can only find more.
size_t cookie_occurrences(std::string_view cookie_header, std::string_view name) noexcept;

// Whether a header field name is the one $http_VAR reads: lowercased, '-' as '_'.
bool header_is_variable(std::string_view header_name, std::string_view var) noexcept;

// identity_digest() through a memo, for a worker whose requests repeat the same few
// identities (an HMAC is two SHA-256 compressions and a hex encoding per request; the memo's
// lookup one SipHash). It keeps no identity: a slot holds T = SipHash-2-4-128(K, identity)
// under a key K drawn at random for the memo (per worker, never written anywhere, never sent),
// and the digest; a lookup finds the slot by T and compares all 128 bits of T.
//   - No raw identity is stored: T is a PRF output under a secret key, not the identity.
//   - A client cannot aim at a slot (to evict another user's digest, or to collide with it):
//     without K it cannot compute T for any identity, its own included.
//   - Only the same identity can match: another identity's digest would be served only if its
//     T equals the stored T in all 128 bits, a collision of a PRF under a secret key (about
//     2^-128 per pair; even 2^32 identities give about 2^-65 over the memo's life). Two
//     identities sharing a slot, or a prefix of T, only evict each other.
// Its size is fixed whatever the identities (`slots` slots, no heap): 400 distinct 1 MB
// cookies cost it nothing more than 400 session ids.
//
// Slots form sets of `ways` (4): an identity may sit in any slot of the set its tag picks, and
// a new one replaces the set's least recently used. 2,000 users in turn: about 2 % share a set
// with four others (direct-mapped 4,096 slots: 38 % shared a slot, and missed on every pass).
class IdentityMemo {
   public:
    static constexpr size_t slots = 8192;
    static constexpr size_t ways = 4;

    // `key` must be secret and random (getrandom()): it is what keeps clients from aiming at
    // slots and from colliding tags.
    IdentityMemo(const void* secret, size_t secret_len, const SipKey& key) noexcept;

    // identity_digest(secret, identity). May throw std::bad_alloc (the returned string).
    std::string digest(std::string_view identity);
    // The same written to `out` (no heap when the memo has it); returns its length (4 or 64).
    // May throw std::bad_alloc (a miss computes the digest as a string).
    size_t digest_to(std::string_view identity, char (&out)[64]);

    size_t hits() const noexcept { return hits_; }  // digests answered from the memo

   private:
    struct Slot {
        Sip128 tag{};                   // SipHash-2-4-128(key_, identity)
        std::array<char, 64> digest{};  // identity_digest(), 64 hex digits
        uint32_t used_at = 0;           // tick_ when last found or stored; 0: empty
    };

    HmacSha256Key secret_;
    SipKey key_;
    std::array<Slot, slots> slots_{};
    uint32_t tick_ = 0;
    size_t hits_ = 0;
};

}  // namespace throttle::core::cache
