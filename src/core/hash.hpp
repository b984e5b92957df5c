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

}  // namespace throttle::core
