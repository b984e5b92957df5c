// The keys rate-limiting zones store and send: a keyed hash of the client's key, never the key.
// Pure C++, no nginx header (layer: core).
//
//   zone key     K_zone = HMAC-SHA256(secret, "throttle-zone-key\0" + zone name)
//   key digest   first 16 bytes of HMAC-SHA256(K_zone, key)
//   fingerprint  first 16 bytes of HMAC-SHA256(secret, "throttle-zone-id\0" + zone name)
//
// The slot table keeps the key digest (and nothing of the key); Redis names are built from its
// hex. Without the secret, a digest can neither be linked back to a key (a session token, an
// address) nor computed for a guessed one; the same key in two zones gives unrelated digests
// (K_zone differs), so Redis does not tell which zones one client is counted in either.
//
// Why 16 bytes. The digest identifies a key; two keys sharing one only share a counter. HMAC
// output is a pseudo-random function of the key: two given keys collide with probability
// 2^-128, and among n keys some pair collides with probability below n^2 / 2^129, about 2^-81
// for a billion (2^30) keys, far more than a zone or a Redis ever holds. A client cannot search
// for a collision offline (each guess needs the secret) and online each guess costs a request.
// 16 bytes keep the slot small (72 bytes a key) and the Redis names short (32 hex digits).
//
// Cost. The secret's two padded blocks are hashed once, when the ZoneKeyer is made (at
// configuration time); a key of up to 55 bytes then costs two SHA-256 compressions, each 64
// bytes more one more.
//
// The fingerprint names the keying in effect without revealing it: the zone keeps it in shared
// memory, and a reload whose keying differs (another secret, or a secret where a random one was)
// starts the zone's counts over instead of mixing digests of two keys.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/hash.hpp"

namespace throttle::core {

inline constexpr size_t key_digest_len = 16;
using KeyDigest = std::array<uint8_t, key_digest_len>;

// throttle_secret's minimum length, and the length of a zone's random secret.
inline constexpr size_t secret_min_len = 16;
inline constexpr size_t random_secret_len = 32;

class ZoneKeyer {
   public:
    // An unusable keyer (every key digests to zeros); replaced before any request.
    ZoneKeyer() noexcept;
    ZoneKeyer(const void* secret, size_t secret_len, std::string_view zone) noexcept;

    // The key's digest. Two SHA-256 compressions for a key of up to 55 bytes.
    KeyDigest digest(const void* key, size_t len) const noexcept;
    const KeyDigest& fingerprint() const noexcept { return fingerprint_; }

   private:
    HmacSha256Key key_;
    KeyDigest fingerprint_{};
};

}  // namespace throttle::core
