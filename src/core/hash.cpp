// SHA-256 and SHA-1 (FIPS 180-4), HMAC-SHA256 (RFC 2104), SipHash-2-4 (Aumasson & Bernstein,
// reference algorithm) and the hex encoder. Portable C++: byte order is handled explicitly, no
// unaligned loads.
#include "core/hash.hpp"

#include <cstring>

namespace throttle::core {

namespace {

constexpr uint32_t sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

constexpr uint32_t sha256_h0[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

inline uint32_t rotr32(uint32_t x, unsigned n) {
    return (x >> n) | (x << (32 - n));
}

inline uint32_t rotl32(uint32_t x, unsigned n) {
    return (x << n) | (x >> (32 - n));
}

inline uint64_t rotl64(uint64_t x, unsigned n) {
    return (x << n) | (x >> (64 - n));
}

inline uint32_t load_be32(const uint8_t* p) {
    return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}

inline void store_be32(uint8_t* p, uint32_t v) {
    p[0] = static_cast<uint8_t>(v >> 24);
    p[1] = static_cast<uint8_t>(v >> 16);
    p[2] = static_cast<uint8_t>(v >> 8);
    p[3] = static_cast<uint8_t>(v);
}

inline uint64_t load_le64(const uint8_t* p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return v;
}

void sha256_compress(uint32_t h[8], const uint8_t block[64]) {
    uint32_t w[64];
    for (int t = 0; t < 16; t++) {
        w[t] = load_be32(block + 4 * t);
    }
    for (int t = 16; t < 64; t++) {
        uint32_t s0 = rotr32(w[t - 15], 7) ^ rotr32(w[t - 15], 18) ^ (w[t - 15] >> 3);
        uint32_t s1 = rotr32(w[t - 2], 17) ^ rotr32(w[t - 2], 19) ^ (w[t - 2] >> 10);
        w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }

    uint32_t a = h[0], b = h[1], c = h[2], d = h[3];
    uint32_t e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int t = 0; t < 64; t++) {
        uint32_t s1 = rotr32(e, 6) ^ rotr32(e, 11) ^ rotr32(e, 25);
        uint32_t ch = (e & f) ^ (~e & g);
        uint32_t t1 = hh + s1 + ch + sha256_k[t] + w[t];
        uint32_t s0 = rotr32(a, 2) ^ rotr32(a, 13) ^ rotr32(a, 22);
        uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
        uint32_t t2 = s0 + maj;
        hh = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
    h[5] += f;
    h[6] += g;
    h[7] += hh;
}

void sha1_compress(uint32_t h[5], const uint8_t block[64]) {
    uint32_t w[80];
    for (int t = 0; t < 16; t++) {
        w[t] = load_be32(block + 4 * t);
    }
    for (int t = 16; t < 80; t++) {
        w[t] = rotl32(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1);
    }

    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int t = 0; t < 80; t++) {
        uint32_t f, k;
        if (t < 20) {
            f = (b & c) | (~b & d);
            k = 0x5a827999;
        } else if (t < 40) {
            f = b ^ c ^ d;
            k = 0x6ed9eba1;
        } else if (t < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8f1bbcdc;
        } else {
            f = b ^ c ^ d;
            k = 0xca62c1d6;
        }
        uint32_t tmp = rotl32(a, 5) + f + e + k + w[t];
        e = d;
        d = c;
        c = rotl32(b, 30);
        b = a;
        a = tmp;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

}  // namespace

std::string hex(const void* data, size_t len) {
    static constexpr char digits[] = "0123456789abcdef";
    const uint8_t* p = static_cast<const uint8_t*>(data);
    std::string s(2 * len, '0');
    for (size_t i = 0; i < len; i++) {
        s[2 * i] = digits[p[i] >> 4];
        s[2 * i + 1] = digits[p[i] & 0xf];
    }
    return s;
}

Sha1Digest sha1(const void* data, size_t len) noexcept {
    uint32_t h[5] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0};
    const uint8_t* p = static_cast<const uint8_t*>(data);
    size_t left = len;
    for (; left >= 64; left -= 64, p += 64) {
        sha1_compress(h, p);
    }

    // The last bytes, 0x80, zeros, the length in bits: one block, or two when fewer than 9
    // bytes are free after the message.
    uint8_t tail[128] = {};
    if (left > 0) {
        std::memcpy(tail, p, left);  // data may be null when len is 0
    }
    tail[left] = 0x80;
    size_t tail_len = left < 56 ? 64 : 128;
    uint64_t bits = static_cast<uint64_t>(len) * 8;
    for (int i = 0; i < 8; i++) {
        tail[tail_len - 1 - i] = static_cast<uint8_t>(bits >> (8 * i));
    }
    sha1_compress(h, tail);
    if (tail_len == 128) {
        sha1_compress(h, tail + 64);
    }

    Sha1Digest out;
    for (int i = 0; i < 5; i++) {
        store_be32(out.data() + 4 * i, h[i]);
    }
    return out;
}

Sha256::Sha256() noexcept : block_{} {
    std::memcpy(h_, sha256_h0, sizeof h_);
}

void Sha256::update(const void* data, size_t len) noexcept {
    if (len == 0) {
        return;  // data may be null
    }
    const uint8_t* p = static_cast<const uint8_t*>(data);
    total_ += len;

    if (used_ > 0) {
        size_t n = 64 - used_;
        if (n > len) {
            n = len;
        }
        std::memcpy(block_ + used_, p, n);
        used_ += n;
        p += n;
        len -= n;
        if (used_ < 64) {
            return;
        }
        sha256_compress(h_, block_);
        used_ = 0;
    }

    while (len >= 64) {
        sha256_compress(h_, p);
        p += 64;
        len -= 64;
    }

    if (len > 0) {
        std::memcpy(block_, p, len);
        used_ = len;
    }
}

void Sha256::put_u64(uint64_t v) noexcept {
    uint8_t b[8];
    for (int i = 7; i >= 0; --i) {
        b[i] = static_cast<uint8_t>(v);
        v >>= 8;
    }
    update(b, sizeof(b));
}

void Sha256::put_field(std::string_view s) noexcept {
    put_u64(s.size());
    update(s.data(), s.size());
}

Sha256Digest Sha256::finish() noexcept {
    uint64_t bits = total_ * 8;

    block_[used_++] = 0x80;
    if (used_ > 56) {
        std::memset(block_ + used_, 0, 64 - used_);
        sha256_compress(h_, block_);
        used_ = 0;
    }
    std::memset(block_ + used_, 0, 56 - used_);
    for (int i = 0; i < 8; i++) {
        block_[63 - i] = static_cast<uint8_t>(bits >> (8 * i));
    }
    sha256_compress(h_, block_);

    Sha256Digest out;
    for (int i = 0; i < 8; i++) {
        store_be32(out.data() + 4 * i, h_[i]);
    }

    // Leave the object ready for a new message.
    std::memcpy(h_, sha256_h0, sizeof h_);
    total_ = 0;
    used_ = 0;
    return out;
}

Sha256Digest sha256(const void* data, size_t len) noexcept {
    Sha256 ctx;
    ctx.update(data, len);
    return ctx.finish();
}

HmacSha256Key::HmacSha256Key(const void* key, size_t key_len) noexcept {
    uint8_t k[64] = {};
    if (key_len > sizeof k) {
        Sha256Digest kd = sha256(key, key_len);
        std::memcpy(k, kd.data(), kd.size());
    } else if (key_len > 0) {
        std::memcpy(k, key, key_len);
    }
    uint8_t pad[64];
    for (size_t i = 0; i < sizeof pad; i++) {
        pad[i] = static_cast<uint8_t>(k[i] ^ 0x36);
    }
    inner_.update(pad, sizeof pad);
    for (size_t i = 0; i < sizeof pad; i++) {
        pad[i] = static_cast<uint8_t>(k[i] ^ 0x5c);
    }
    outer_.update(pad, sizeof pad);
}

Sha256Digest HmacSha256Key::mac(const void* a, size_t a_len, const void* b,
                                size_t b_len) const noexcept {
    Sha256 inner = inner_;
    inner.update(a, a_len);
    inner.update(b, b_len);
    Sha256Digest ih = inner.finish();
    Sha256 outer = outer_;
    outer.update(ih.data(), ih.size());
    return outer.finish();
}

Sha256Digest hmac_sha256(const void* key, size_t key_len, const void* data, size_t len) noexcept {
    return HmacSha256Key(key, key_len).mac(data, len);
}

uint64_t siphash24(const SipKey& key, const void* data, size_t len) noexcept {
    const uint8_t* p = static_cast<const uint8_t*>(data);
    uint64_t v0 = 0x736f6d6570736575ULL ^ key.k0;
    uint64_t v1 = 0x646f72616e646f6dULL ^ key.k1;
    uint64_t v2 = 0x6c7967656e657261ULL ^ key.k0;
    uint64_t v3 = 0x7465646279746573ULL ^ key.k1;

    auto round = [&]() {
        v0 += v1;
        v1 = rotl64(v1, 13);
        v1 ^= v0;
        v0 = rotl64(v0, 32);
        v2 += v3;
        v3 = rotl64(v3, 16);
        v3 ^= v2;
        v0 += v3;
        v3 = rotl64(v3, 21);
        v3 ^= v0;
        v2 += v1;
        v1 = rotl64(v1, 17);
        v1 ^= v2;
        v2 = rotl64(v2, 32);
    };

    size_t blocks = len / 8;
    for (size_t i = 0; i < blocks; i++, p += 8) {
        uint64_t m = load_le64(p);
        v3 ^= m;
        round();
        round();
        v0 ^= m;
    }

    uint64_t b = static_cast<uint64_t>(len) << 56;
    size_t left = len % 8;
    for (size_t i = 0; i < left; i++) {
        b |= uint64_t{p[i]} << (8 * i);
    }
    v3 ^= b;
    round();
    round();
    v0 ^= b;

    v2 ^= 0xff;
    round();
    round();
    round();
    round();
    return v0 ^ v1 ^ v2 ^ v3;
}

}  // namespace throttle::core
