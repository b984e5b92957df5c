// SHA-1 (FIPS 180-4), only to name scripts the way Redis does (layer: redis).
#include "redis/script.hpp"

#include <cstring>

namespace throttle::redis {
namespace {

inline uint32_t rol(uint32_t x, int n) noexcept {
    return (x << n) | (x >> (32 - n));
}

void block(uint32_t h[5], const uint8_t* p) noexcept {
    uint32_t w[80];
    for (int i = 0; i < 16; i++) {
        w[i] = uint32_t(p[4 * i]) << 24 | uint32_t(p[4 * i + 1]) << 16 |
               uint32_t(p[4 * i + 2]) << 8 | uint32_t(p[4 * i + 3]);
    }
    for (int i = 16; i < 80; i++) {
        w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    for (int i = 0; i < 80; i++) {
        uint32_t f, k;
        if (i < 20) {
            f = (b & c) | (~b & d);
            k = 0x5a827999;
        } else if (i < 40) {
            f = b ^ c ^ d;
            k = 0x6ed9eba1;
        } else if (i < 60) {
            f = (b & c) | (b & d) | (c & d);
            k = 0x8f1bbcdc;
        } else {
            f = b ^ c ^ d;
            k = 0xca62c1d6;
        }
        uint32_t t = rol(a, 5) + f + e + k + w[i];
        e = d;
        d = c;
        c = rol(b, 30);
        b = a;
        a = t;
    }
    h[0] += a;
    h[1] += b;
    h[2] += c;
    h[3] += d;
    h[4] += e;
}

}  // namespace

Sha1Digest sha1(const void* data, size_t len) noexcept {
    uint32_t h[5] = {0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476, 0xc3d2e1f0};
    const auto* p = static_cast<const uint8_t*>(data);
    size_t left = len;
    for (; left >= 64; left -= 64, p += 64) {
        block(h, p);
    }
    uint8_t tail[128] = {};
    if (left > 0) {
        std::memcpy(tail, p, left);
    }
    tail[left] = 0x80;
    size_t tail_len = left < 56 ? 64 : 128;
    uint64_t bits = uint64_t(len) * 8;
    for (int i = 0; i < 8; i++) {
        tail[tail_len - 1 - i] = uint8_t(bits >> (8 * i));
    }
    block(h, tail);
    if (tail_len == 128) {
        block(h, tail + 64);
    }
    Sha1Digest out;
    for (int i = 0; i < 5; i++) {
        out[4 * i] = uint8_t(h[i] >> 24);
        out[4 * i + 1] = uint8_t(h[i] >> 16);
        out[4 * i + 2] = uint8_t(h[i] >> 8);
        out[4 * i + 3] = uint8_t(h[i]);
    }
    return out;
}

std::string sha1_hex(std::string_view data) {
    static const char digits[] = "0123456789abcdef";
    Sha1Digest d = sha1(data.data(), data.size());
    std::string s(40, '0');
    for (size_t i = 0; i < d.size(); i++) {
        s[2 * i] = digits[d[i] >> 4];
        s[2 * i + 1] = digits[d[i] & 15];
    }
    return s;
}

}  // namespace throttle::redis
