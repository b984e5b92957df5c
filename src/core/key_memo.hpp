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
    StoredKey key(const ZoneKeyer& keyer, const SlotTable& table, const void* key,
                  size_t len) noexcept;

    size_t hits() const noexcept { return hits_; }

   private:
    struct Slot {
        uint8_t len;  // 0: empty (an empty key never reaches the memo)
        uint8_t bytes[max_key];
        StoredKey key;
    };
    void reset(const ZoneKeyer& keyer, const SlotTable& table) noexcept;

    const SlotTable* table_ = nullptr;  // nullptr: never filled
    KeyDigest fingerprint_{};
    SipKey seed_{};
    size_t hits_ = 0;
    std::array<Slot, slots> slots_{};
};

}  // namespace throttle::core
