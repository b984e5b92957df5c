// A per-worker memo of a zone's recent keys and what they hash to: the keyed digest
// (ZoneKeyer::digest, two SHA-256 compressions, ~9,000 instructions) and the slot table's
// bucket hash (SlotTable::make_key, SipHash of the digest). The same client sends many
// requests; each but its first one in a while finds its key here for the cost of one SipHash
// of the key (SipHash-1-3: it only picks the slot) and one compare. Pure C++, no nginx header
// (layer: core).
//
// Nothing persistent changes: a hit returns exactly what the miss computed (the full key is
// compared, never its hash alone), so the digests in the shared table and in Redis are the
// same with or without the memo.
//
// Fixed slots, no heap, trivially copyable: it lives in the zone's configuration, and each
// worker has its own copy of it after fork (no lock). A slot is chosen by SipHash of the key
// under a seed derived from the zone's keyer, so a client cannot aim its keys at another
// client's slot; a key that collides only evicts (a miss costs what no memo costs). Keys
// longer than max_key are not memoised.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "core/hash.hpp"
#include "core/slot_table.hpp"
#include "core/zone_key.hpp"

namespace throttle::core {

class KeyMemo {
   public:
    static constexpr size_t slots = 512;  // a power of two
    static constexpr size_t max_key = 48;

    // The stored key of `key` for `table` under `keyer`: table.make_key(keyer.digest(key)).
    // The memo forgets everything when the keyer's fingerprint or the table is not the ones
    // it was filled for.
    // Inline: a hit (the common case) costs the caller no call but SipHash's.
    StoredKey key(const ZoneKeyer& keyer, const SlotTable& table, const void* key,
                  size_t len) noexcept {
        if (len - 1 < max_key && table_ == &table &&
            same_digest(fingerprint_, keyer.fingerprint())) {
            const auto* bytes = static_cast<const uint8_t*>(key);
            // SipHash-1-3 (hash.hpp): the memo only picks a slot with it, under a secret seed,
            // and compares the full key, so it needs keyed bucket spreading, not a MAC.
            const Slot& s = slots_[siphash13(seed_, bytes, len) & (slots - 1)];
            if (s.len == len && same_bytes(s.bytes, bytes, len)) {
                hits_++;
                return s.key;
            }
        }
        return miss(keyer, table, key, len);
    }

    size_t hits() const noexcept { return hits_; }

   private:
    struct Slot {
        uint8_t len;  // 0: empty (an empty key never reaches the memo)
        uint8_t bytes[max_key];
        StoredKey key;
    };
    void reset(const ZoneKeyer& keyer, const SlotTable& table) noexcept;
    // key() when the memo does not hold the key (or cannot: len 0 or above max_key).
    StoredKey miss(const ZoneKeyer& keyer, const SlotTable& table, const void* key,
                   size_t len) noexcept;

    static uint64_t load64(const uint8_t* p) noexcept {
        uint64_t v;
        std::memcpy(&v, p, 8);
        return v;
    }
    static uint32_t load32(const uint8_t* p) noexcept {
        uint32_t v;
        std::memcpy(&v, p, 4);
        return v;
    }
    // a and b hold the same len bytes (1 <= len <= max_key), without a call to memcmp.
    static bool same_bytes(const uint8_t* a, const uint8_t* b, size_t len) noexcept {
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
    static bool same_digest(const KeyDigest& a, const KeyDigest& b) noexcept {
        static_assert(key_digest_len == 16);
        return load64(a.data()) == load64(b.data()) && load64(a.data() + 8) == load64(b.data() + 8);
    }

    const SlotTable* table_ = nullptr;  // nullptr: never filled
    KeyDigest fingerprint_{};
    SipKey seed_{};
    size_t hits_ = 0;
    std::array<Slot, slots> slots_{};
};

}  // namespace throttle::core
