// JSON Web Tokens (RFC 7519) in JWS compact serialization (RFC 7515), verified (layer: core:
// plain C++ and OpenSSL, no nginx header).
//
// Contract:
// - A token is three base64url parts (strict: no padding, no character outside the alphabet,
//   no non-zero unused bits), at most max_token_size bytes. Header and payload are JSON objects
//   (a strict parser: duplicate names, trailing bytes, nesting deeper than max_json_depth,
//   invalid UTF-8 and lone surrogates are refused).
// - The key decides which algorithms can be verified: an HMAC secret HS256/HS384/HS512, an
//   RSA public key RS256, an EC P-256 public key ES256. The policy's list narrows that down.
//   `none` and any other algorithm is `unsupported_alg`; so is an HS token against an RSA/EC
//   key (no algorithm confusion: a public key is never used as an HMAC secret). A header with
//   "crit" is refused (malformed): no extension is understood.
// - Keys from a JWKS: a token's "kid" selects the key; a kid not in the set is unknown_kid;
//   without a kid every key of the set that fits the algorithm is tried.
// - The signature is checked before any claim is looked at. Then: exp (now < exp + leeway),
//   nbf (now + leeway >= nbf), iss (equal, when the policy names one), aud (equal to the
//   string or to one of the array's strings, when the policy names one). exp, nbf must be
//   numbers when present.
// - Claims: the payload's top-level strings (decoded), numbers (as written) and booleans.
// Everything that parses untrusted bytes is noexcept except for std::bad_alloc.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace throttle::core::jwt {

constexpr size_t max_token_size = 8192;
constexpr int max_json_depth = 16;

enum class Status : uint8_t {
    valid = 0,
    missing,
    malformed,
    bad_signature,
    unsupported_alg,
    expired,
    not_yet_valid,
    bad_issuer,
    bad_audience,
    unknown_kid,
};
// "valid", "missing", ... (the enum's names).
std::string_view status_name(Status s) noexcept;

enum class Alg : uint8_t { HS256 = 0, HS384, HS512, RS256, ES256 };
constexpr unsigned alg_bit(Alg a) noexcept {
    return 1u << static_cast<unsigned>(a);
}
constexpr unsigned hs_algs = alg_bit(Alg::HS256) | alg_bit(Alg::HS384) | alg_bit(Alg::HS512);
std::optional<Alg> alg_from_name(std::string_view name) noexcept;
std::string_view alg_name(Alg a) noexcept;

// Strict base64url without padding. False on any other input.
bool base64url_decode(std::string_view in, std::string& out);
std::string base64url_encode(std::string_view in);

// Where a token comes from. The credentials of `Authorization: Bearer TOKEN` (scheme
// case-insensitive; empty for another scheme), and a header's value with an optional "Bearer "
// taken off.
std::string_view bearer_token(std::string_view authorization, bool scheme_required) noexcept;
// The value of the first cookie named `name` (ASCII case-insensitive, as nginx's $cookie_NAME)
// in one Cookie header; empty when absent.
std::string_view cookie_value(std::string_view cookie_header, std::string_view name) noexcept;

// One verification key.
class Key {
   public:
    enum class Type : uint8_t { hmac, rsa, ec };
    ~Key();
    Key(Key&&) noexcept;
    Key& operator=(Key&&) noexcept;
    Key(const Key&) = delete;
    Key& operator=(const Key&) = delete;

    static Key hmac(std::string secret);
    // A PEM public key ("BEGIN PUBLIC KEY", RSA or EC P-256). Throws std::runtime_error with a
    // reason on anything else (RSA below 2048 bits, another curve, not PEM).
    static Key pem(std::string_view pem_text);
    Type type() const noexcept { return type_; }
    // The algorithms this key can verify.
    unsigned algs() const noexcept;
    const std::string& kid() const noexcept { return kid_; }

   private:
    friend class KeySet;
    friend class Verifier;
    Key() = default;
    Type type_ = Type::hmac;
    std::string secret_;
    void* pkey_ = nullptr;  // EVP_PKEY*
    std::string kid_;
    unsigned jwk_algs_ = ~0u;  // a JWK's "alg", when it names one
};

class KeySet {
   public:
    KeySet() = default;
    explicit KeySet(Key k) { keys_.push_back(std::move(k)); }
    // A JWKS document ({"keys": [...]}): kty RSA (n, e) and kty EC (crv P-256, x, y); keys
    // whose "use" is not "sig" are skipped. Throws std::runtime_error with a reason when the
    // document is not a JWKS or a key in it is broken, or when no usable key is left.
    static KeySet jwks(std::string_view json);
    bool from_jwks() const noexcept { return jwks_; }
    const std::vector<Key>& keys() const noexcept { return keys_; }
    unsigned algs() const noexcept;

   private:
    std::vector<Key> keys_;
    bool jwks_ = false;
};

struct Policy {
    unsigned algs = ~0u;   // alg_bit()s allowed (narrowed by the keys)
    int64_t leeway_s = 0;  // for exp and nbf
    std::optional<std::string> iss;
    std::optional<std::string> aud;
};

struct Result {
    Status status = Status::missing;
    std::optional<int64_t> exp;  // the exp claim (seconds), when valid and present
    std::vector<std::pair<std::string, std::string>> claims;  // when valid
    // The claim's text, or nullptr.
    const std::string* claim(std::string_view name) const noexcept;
};

class Verifier {
   public:
    Verifier(KeySet keys, Policy policy) : keys_(std::move(keys)), policy_(std::move(policy)) {}
    // An empty token is `missing`. May throw std::bad_alloc.
    Result verify(std::string_view token, int64_t now) const;
    const Policy& policy() const noexcept { return policy_; }
    const KeySet& keys() const noexcept { return keys_; }

   private:
    KeySet keys_;
    Policy policy_;
};

// Valid results by token, bounded, least recently used first out. An entry holds until
// min(exp + leeway, stored + ttl): a repeated token costs a SipHash (keyed with random bytes,
// so that clients cannot aim at one bucket) and a comparison of the token's bytes. Only valid
// tokens are stored, so only what the key's owner signed takes memory.
class TokenCache {
   public:
    TokenCache(size_t capacity, int64_t ttl_s);
    // The cached result for this token, or nullptr (expired entries are dropped).
    std::shared_ptr<const Result> find(std::string_view token, int64_t now);
    // Stores a valid result (others are not cached). leeway_s: the policy's.
    void store(std::string_view token, std::shared_ptr<const Result> result, int64_t now,
               int64_t leeway_s);
    size_t size() const noexcept { return map_.size(); }

    struct Hash {
        uint64_t k0, k1;
        size_t operator()(std::string_view s) const noexcept;
    };

   private:
    struct Entry {
        std::string token;
        int64_t until;
        std::shared_ptr<const Result> result;
    };
    size_t capacity_;
    int64_t ttl_s_;
    std::list<Entry> lru_;  // most recent first
    // Keys view the entries' tokens (list nodes do not move).
    std::unordered_map<std::string_view, std::list<Entry>::iterator, Hash> map_;
};

}  // namespace throttle::core::jwt
