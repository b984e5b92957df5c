// SHA-256 (OpenSSL's block function), SHA-1 (FIPS 180-4, portable), HMAC-SHA256 (RFC 2104),
// SipHash-2-4 (Aumasson & Bernstein, reference algorithm) and the hex encoder. The portable
// parts handle byte order explicitly, no unaligned loads.
#include "core/hash.hpp"

#include <cstring>

namespace throttle::core {

namespace {

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

// 8 bytes as a little-endian number: one load on a little-endian host (x86-64 and every
// target nginx runs on here), byte by byte elsewhere.
inline uint64_t load_le64(const uint8_t* p) {
    uint64_t v = 0;
    if constexpr (__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__) {
        std::memcpy(&v, p, 8);
    } else {
        for (int i = 7; i >= 0; i--) {
            v = (v << 8) | p[i];
        }
    }
    return v;
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

// SHA256_Init/Update/Final are deprecated in OpenSSL 3.0 in favour of EVP, whose per-message
// set-up costs more than the two compressions a key digest needs; they remain in 3.x and go
// straight to the block function (SHA-NI, AVX2 or SSSE3, chosen at run time).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

Sha256::Sha256() noexcept {
    SHA256_Init(&ctx_);
}

void Sha256::update(const void* data, size_t len) noexcept {
    if (len == 0) {
        return;  // data may be null
    }
    SHA256_Update(&ctx_, data, len);
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
    Sha256Digest out;
    SHA256_Final(out.data(), &ctx_);
    // Leave the object ready for a new message.
    SHA256_Init(&ctx_);
    return out;
}

#pragma GCC diagnostic pop

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

namespace {

// SipHash-C-D (C compression rounds per block, D finalisation rounds), 64- or 128-bit output.
template <int C, int D, bool Wide>
Sip128 siphash_cd(const SipKey& key, const void* data, size_t len) noexcept {
    const uint8_t* p = static_cast<const uint8_t*>(data);
    uint64_t v0 = 0x736f6d6570736575ULL ^ key.k0;
    uint64_t v1 = 0x646f72616e646f6dULL ^ key.k1;
    uint64_t v2 = 0x6c7967656e657261ULL ^ key.k0;
    uint64_t v3 = 0x7465646279746573ULL ^ key.k1;
    if (Wide) {
        v1 ^= 0xee;
    }
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
    // n (1 to 4, a constant here) rounds, unrolled: a loop's counter cost about a third of a
    // round each time.
    static_assert(C >= 1 && C <= 4 && D >= 1 && D <= 4);
    auto rounds = [&](int n) {
        round();
        if (n > 1) round();
        if (n > 2) round();
        if (n > 3) round();
    };
    size_t blocks = len / 8;
    for (size_t i = 0; i < blocks; i++, p += 8) {
        uint64_t m = load_le64(p);
        v3 ^= m;
        rounds(C);
        v0 ^= m;
    }
    uint64_t b = static_cast<uint64_t>(len) << 56;
    size_t left = len % 8;
    if (left >= 4 && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__) {
        // Two 4-byte loads that overlap when left < 8: the bytes they share are the same bytes,
        // so OR-ing them gives what the byte loop gives.
        uint32_t lo, hi;
        std::memcpy(&lo, p, 4);
        std::memcpy(&hi, p + left - 4, 4);
        b |= uint64_t{lo} | (uint64_t{hi} << (8 * (left - 4)));
    } else {
        for (size_t i = 0; i < left; i++) {
            b |= uint64_t{p[i]} << (8 * i);
        }
    }
    v3 ^= b;
    rounds(C);
    v0 ^= b;
    v2 ^= Wide ? 0xee : 0xff;
    rounds(D);
    Sip128 out;
    out.lo = v0 ^ v1 ^ v2 ^ v3;
    if (Wide) {
        v1 ^= 0xdd;
        rounds(D);
        out.hi = v0 ^ v1 ^ v2 ^ v3;
    }
    return out;
}

}  // namespace

uint64_t siphash24(const SipKey& key, const void* data, size_t len) noexcept {
    return siphash_cd<2, 4, false>(key, data, len).lo;
}

uint64_t siphash13(const SipKey& key, const void* data, size_t len) noexcept {
    return siphash_cd<1, 3, false>(key, data, len).lo;
}

Sip128 siphash24_128(const SipKey& key, const void* data, size_t len) noexcept {
    return siphash_cd<2, 4, true>(key, data, len);
}

void hex_to(char* out, const void* data, size_t len) noexcept {
    static constexpr char digits[] = "0123456789abcdef";
    const auto* p = static_cast<const uint8_t*>(data);
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
}

}  // namespace throttle::core
