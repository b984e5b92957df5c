// Digests used for keys: SHA-256 (collision-safe, for long keys; HMAC for identities),
// SipHash-2-4 (seeded, for hash-table buckets that a client cannot flood) and SHA-1 (only the
// name Redis gives a Lua script, for EVALSHA). hex() is the one hex encoder: every digest that
// becomes text goes through it. Pure C++, no nginx or hiredis header (layer: core).
#pragma once

#include <openssl/sha.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace throttle::core {

// Two lowercase hex digits per byte, in order ("01ab..."). May throw std::bad_alloc.
std::string hex(const void* data, size_t len);
template <size_t N>
std::string hex(const std::array<uint8_t, N>& bytes) {
    return hex(bytes.data(), N);
}

using Sha1Digest = std::array<uint8_t, 20>;

// SHA-1 (FIPS 180-4). Broken for collisions: use it only where a peer demands it (a script's
// EVALSHA name is hex(sha1(source)), as Redis computes it).
Sha1Digest sha1(const void* data, size_t len) noexcept;

using Sha256Digest = std::array<uint8_t, 32>;

Sha256Digest sha256(const void* data, size_t len) noexcept;
Sha256Digest hmac_sha256(const void* key, size_t key_len, const void* data, size_t len) noexcept;

// Incremental SHA-256, for digests over several pieces. OpenSSL's block function underneath
// (libcrypto, which nginx links anyway): it uses the CPU's SHA extensions when present, and
// AVX2/SSSE3 code otherwise. Copyable (a plain struct), no heap.
class Sha256 {
   public:
    Sha256() noexcept;
    void update(const void* data, size_t len) noexcept;
    // Unambiguous framing for hashes over several fields: v as 8 bytes, big-endian; a field
    // as its length (put_u64) and its bytes.
    void put_u64(uint64_t v) noexcept;
    void put_field(std::string_view s) noexcept;
    Sha256Digest finish() noexcept;

   private:
    SHA256_CTX ctx_;
};

// HMAC-SHA256 (RFC 2104) under one key, with the key's two padded blocks hashed once: each MAC
// then costs two SHA-256 compressions fewer than hmac_sha256(). Copyable, no heap.
class HmacSha256Key {
   public:
    HmacSha256Key(const void* key, size_t key_len) noexcept;
    // HMAC of the concatenation a || b.
    Sha256Digest mac(const void* a, size_t a_len, const void* b = nullptr,
                     size_t b_len = 0) const noexcept;

   private:
    Sha256 inner_;  // after K ^ ipad
    Sha256 outer_;  // after K ^ opad
};

struct SipKey {
    uint64_t k0 = 0;
    uint64_t k1 = 0;
};

uint64_t siphash24(const SipKey& key, const void* data, size_t len) noexcept;

// SipHash-1-3: one compression round per 8-byte block and three finalisation rounds (the
// variant Rust's HashMap and CPython use), for hash-table slots over longer keys where
// SipHash-2-4 costs too much; still keyed, so a client cannot aim at slots without the key.
// The same algorithm as siphash24() with fewer rounds (one template in hash.cpp).
uint64_t siphash13(const SipKey& key, const void* data, size_t len) noexcept;

// SipHash-2-4 with its 128-bit output (the reference implementation's outlen = 16: lo is the
// first 8 bytes of the tag, little-endian, hi the next 8). A PRF under a secret key: a memo
// that keys slots by it and compares all 128 bits needs no stronger hash as long as the key
// stays secret (see core::cache::IdentityMemo).
struct Sip128 {
    uint64_t lo = 0;
    uint64_t hi = 0;
    friend bool operator==(const Sip128& a, const Sip128& b) noexcept {
        return a.lo == b.lo && a.hi == b.hi;
    }
    friend bool operator!=(const Sip128& a, const Sip128& b) noexcept { return !(a == b); }
};
Sip128 siphash24_128(const SipKey& key, const void* data, size_t len) noexcept;

// Writes 2 * len lowercase hex digits to out (no terminator): hex() without a string.
void hex_to(char* out, const void* data, size_t len) noexcept;

}  // namespace throttle::core
