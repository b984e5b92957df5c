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
    // SipHash-1-3 (hash.hpp): the memo only picks a slot with it, under a secret seed, and
    // compares the full key, so it needs keyed bucket spreading, not a MAC.
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
