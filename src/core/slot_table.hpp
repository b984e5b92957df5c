// A fixed-size hash table of per-key limiter state laid out in one block of memory
// (an nginx shared-memory zone in production, a plain buffer in unit tests).
// Pure C++, no nginx header (layer: core). Not thread-safe: the caller holds the zone's lock.
//
// Layout: [Header][bucket heads: uint32 x nbuckets][Slot x capacity]. Links are 32-bit
// indices, not pointers, so the block is position independent. Every slot is 72 bytes and
// holds everything for a key: bucket-chain link, LRU links, hash, State and the key's digest.
// The table never sees a key: only its 16-byte keyed digest (core/zone_key.hpp, a KeyDigest),
// so no client value is ever written into the block. Bucket hashes are SipHash-2-4 of the
// digest with a per-table random seed, so clients cannot aim keys at one bucket even with the
// configured secret.
// The header also keeps, across reloads, the zone's own random secret (made with the table,
// never changed: the secret of a zone without throttle_secret) and the fingerprint of the
// keying its digests were made with (ZoneKeyer::fingerprint(), set by the caller).
// Lookup is O(1) expected. When every slot is in use, inserting evicts the least recently
// used key.
// Changed keys (for mode=sync's flushes): every lookup() lists its key in a bounded FIFO ring
// of slot indices kept in the block (capacity / 4 entries, 1 byte per key; a flag in the slot
// says "listed", so a key is listed at most once). When the ring is full the table notes an
// overflow instead, and the next pass over the changed keys walks every slot. A flush takes the
// changed keys in bounded steps (take_changed()), so its caller can release the lock between
// them. Layout: [Header][bucket heads][ring: uint32 x ring size][Slot x capacity].
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "core/hash.hpp"
#include "core/limiter.hpp"
#include "core/zone_key.hpp"

namespace throttle::core {

// A key as the table stores it.
struct StoredKey {
    uint64_t hash = 0;  // siphash24(seed, digest)
    KeyDigest digest{};
};

using OwnSecret = std::array<uint8_t, random_secret_len>;

struct LookupResult {
    State* state = nullptr;  // never null after lookup(); valid until the next insert
    bool inserted = false;   // the key was not in the table (state is all zero)
    bool evicted = false;    // inserting it evicted the least recently used key
    State victim;            // the evicted key's state, when evicted
};

class SlotTable {
   public:
    static constexpr uint32_t magic_value = 0x54484c35;  // "THL5" (keyed digests, changed ring)

    // Lays out an empty table in [mem, mem + size). mem must be 8-byte aligned. `seed` and
    // `secret` are random (the caller's entropy). Returns nullptr when size cannot hold at
    // least 8 slots.
    static SlotTable* create(void* mem, size_t size, const SipKey& seed,
                             const OwnSecret& secret) noexcept;
    // Reuses a table that create() laid out in the same block (e.g. after nginx reload).
    // Returns nullptr when the block does not hold a valid table of that size.
    static SlotTable* attach(void* mem, size_t size) noexcept;
    // Bytes one key costs, bucket head included (for documentation and density tests).
    static size_t bytes_per_key() noexcept;

    // The key of a digest in this table (its bucket hash). Needs no lock: reads only the seed.
    StoredKey make_key(const KeyDigest& digest) const noexcept;

    // Finds the key and marks it most recently used; inserts it (zero state) when absent.
    LookupResult lookup(const StoredKey& key) noexcept;
    // Finds the key without inserting or touching the LRU order; nullptr when absent.
    State* find(const StoredKey& key) noexcept;
    // Forgets every key (keeps the seed, the own secret and the keying).
    void clear() noexcept;

    // The random secret made with the table; never changes while the table lives.
    const OwnSecret& own_secret() const noexcept;
    // The fingerprint of the keying the stored digests were made with; zeros in a new table.
    const KeyDigest& keying() const noexcept;
    void set_keying(const KeyDigest& fingerprint) noexcept;

    size_t capacity() const noexcept;
    size_t size() const noexcept;
    uint64_t evictions() const noexcept;

    // Free-form 64-bit word kept with the table across reloads (the ngx layer stores the
    // algorithm there to notice a change).
    uint64_t tag() const noexcept;
    void set_tag(uint64_t tag) noexcept;

    // A pass over the keys changed since the previous pass (plain data, kept by the caller
    // between lock holds).
    struct ChangedWalk {
        bool full = false;       // the ring overflowed: every slot is visited
        uint32_t next_slot = 0;  // full: the next slot index to visit
        uint32_t listed = 0;     // ring entries still to take in this pass
    };
    // Starts a pass: takes the overflow note (a full walk) and the ring's current length.
    // Keys changed after this call are listed for this pass or, when they do not fit, the next.
    ChangedWalk begin_changed() noexcept;
    // Calls fn(const StoredKey&, State&) for changed keys, visiting at most `max` (>= 1) slots
    // or ring entries; a ring entry is unlisted when visited. Returns true while the pass has
    // more to visit. Every key changed before begin_changed() is visited by the pass (unless
    // evicted meanwhile); it may also visit keys that did not change.
    template <typename Fn>
    bool take_changed(ChangedWalk& walk, size_t max, Fn&& fn) noexcept;
    // Lists the key as changed (e.g. its unsent counts went back into it); false when absent.
    bool mark_changed(const StoredKey& key) noexcept;
    // Keys listed as changed now, and whether the ring overflowed since the last pass began.
    size_t changed_listed() const noexcept;
    bool changed_overflow() const noexcept;
    size_t changed_capacity() const noexcept;

    // Calls fn(const StoredKey&, State&) for every key, most recently used first.
    template <typename Fn>
    void for_each(Fn&& fn) noexcept;

   private:
    SlotTable() = default;
    struct Header;
    struct Slot;
    Header* header() noexcept;
    const Header* header() const noexcept;
    void visit(void (*cb)(void*, const StoredKey&, State&), void* arg) noexcept;
    bool visit_changed(ChangedWalk& walk, size_t max, void (*cb)(void*, const StoredKey&, State&),
                       void* arg) noexcept;
};

template <typename Fn>
void SlotTable::for_each(Fn&& fn) noexcept {
    visit([](void* arg, const StoredKey& k, State& s) { (*static_cast<Fn*>(arg))(k, s); }, &fn);
}

template <typename Fn>
bool SlotTable::take_changed(ChangedWalk& walk, size_t max, Fn&& fn) noexcept {
    using F = std::remove_reference_t<Fn>;
    return visit_changed(
        walk, max, [](void* arg, const StoredKey& k, State& s) { (*static_cast<F*>(arg))(k, s); },
        const_cast<void*>(static_cast<const void*>(&fn)));
}

}  // namespace throttle::core
