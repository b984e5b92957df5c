// The per-worker memo of keys: see key_memo.hpp.
#include "core/key_memo.hpp"

#include <cstring>

namespace throttle::core {
namespace {

constexpr char memo_seed_label[] = "throttle-key-memo-seed";

uint64_t load64(const uint8_t* p) noexcept {
    uint64_t v;
    std::memcpy(&v, p, 8);
    return v;
}

uint32_t load32(const uint8_t* p) noexcept {
    uint32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

uint64_t rotl(uint64_t x, int n) noexcept {
    return (x << n) | (x >> (64 - n));
}

// SipHash-1-3 (one compression round per 8-byte block, three finalization rounds; the
// variant Rust's and Python's hash tables use): the memo only picks a slot with it, under a
// secret seed, and compares the full key, so it needs keyed bucket spreading, not a MAC.
// The words are read in host order (SipHash says little-endian): only which slot a key takes
// depends on it.
uint64_t siphash13(const SipKey& key, const uint8_t* p, size_t len) noexcept {
    uint64_t v0 = 0x736f6d6570736575ULL ^ key.k0;
    uint64_t v1 = 0x646f72616e646f6dULL ^ key.k1;
    uint64_t v2 = 0x6c7967656e657261ULL ^ key.k0;
    uint64_t v3 = 0x7465646279746573ULL ^ key.k1;
    auto round = [&]() {
        v0 += v1;
        v1 = rotl(v1, 13);
        v1 ^= v0;
        v0 = rotl(v0, 32);
        v2 += v3;
        v3 = rotl(v3, 16);
        v3 ^= v2;
        v0 += v3;
        v3 = rotl(v3, 21);
        v3 ^= v0;
        v2 += v1;
        v1 = rotl(v1, 17);
        v1 ^= v2;
        v2 = rotl(v2, 32);
    };
    const uint8_t* end = p + (len & ~size_t{7});
    for (; p != end; p += 8) {
        uint64_t m = load64(p);
        v3 ^= m;
        round();
        v0 ^= m;
    }
    uint64_t b = static_cast<uint64_t>(len) << 56;
    size_t left = len & 7;
    if (left >= 4) {
        b |= uint64_t{load32(p)} | (uint64_t{load32(p + left - 4)} << (8 * (left - 4)));
    } else {
        for (size_t i = 0; i < left; i++) {
            b |= uint64_t{p[i]} << (8 * i);
        }
    }
    v3 ^= b;
    round();
    v0 ^= b;
    v2 ^= 0xff;
    round();
    round();
    round();
    return v0 ^ v1 ^ v2 ^ v3;
}

// a and b hold the same len bytes (len <= max_key), without a call to memcmp.
bool same_bytes(const uint8_t* a, const uint8_t* b, size_t len) noexcept {
    if (len >= 8) {
        for (size_t i = 0; i + 8 < len; i += 8) {
            if (load64(a + i) != load64(b + i)) {
                return false;
            }
        }
        return load64(a + len - 8) == load64(b + len - 8);  // the last 8, overlapping
    }
    if (len >= 4) {
        return load32(a) == load32(b) && load32(a + len - 4) == load32(b + len - 4);
    }
    for (size_t i = 0; i < len; i++) {
        if (a[i] != b[i]) {
            return false;
        }
    }
    return true;
}

bool same_digest(const KeyDigest& a, const KeyDigest& b) noexcept {
    static_assert(key_digest_len == 16);
    return load64(a.data()) == load64(b.data()) && load64(a.data() + 8) == load64(b.data() + 8);
}

}  // namespace

void KeyMemo::reset(const ZoneKeyer& keyer, const SlotTable& table) noexcept {
    for (Slot& s : slots_) {
        s.len = 0;
    }
    // The seed: the keyed digest of a label, under the zone's keyer (secret, like the keys).
    KeyDigest d = keyer.digest(memo_seed_label, sizeof memo_seed_label);
    std::memcpy(&seed_.k0, d.data(), 8);
    std::memcpy(&seed_.k1, d.data() + 8, 8);
    fingerprint_ = keyer.fingerprint();
    table_ = &table;
}

StoredKey KeyMemo::key(const ZoneKeyer& keyer, const SlotTable& table, const void* key,
                       size_t len) noexcept {
    if (len == 0 || len > max_key) {
        return table.make_key(keyer.digest(key, len));
    }
    if (table_ != &table || !same_digest(fingerprint_, keyer.fingerprint())) {
        reset(keyer, table);
    }
    const auto* bytes = static_cast<const uint8_t*>(key);
    Slot& s = slots_[siphash13(seed_, bytes, len) & (slots - 1)];
    if (s.len == len && same_bytes(s.bytes, bytes, len)) {
        hits_++;
        return s.key;
    }
    s.key = table.make_key(keyer.digest(key, len));
    std::memcpy(s.bytes, key, len);
    s.len = static_cast<uint8_t>(len);
    return s.key;
}

}  // namespace throttle::core
