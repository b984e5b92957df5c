// A fixed-size hash table of per-key limiter state laid out in one block of memory
// (an nginx shared-memory zone in production, a plain buffer in unit tests).
// Pure C++, no nginx header (layer: core). Not thread-safe: the caller holds the zone's lock.
//
// Layout: [Header][bucket heads: uint32 x nbuckets][Slot x capacity]. Links are 32-bit
// indices, not pointers, so the block is position independent. Every slot is 88 bytes and
// holds everything for a key: bucket-chain link, LRU links, hash, State and the key bytes.
// Keys up to 32 bytes are stored as they are; longer keys are stored as their SHA-256 digest
// (flagged, so a 32-byte key never equals the digest of a long one). Bucket hashes are
// SipHash-2-4 with a per-table random seed, so clients cannot aim keys at one bucket.
// Lookup is O(1) expected. When every slot is in use, inserting evicts the least recently
// used key.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/hash.hpp"
#include "core/limiter.hpp"

namespace throttle::core {

inline constexpr size_t key_inline_max = 32;

// A key as the table stores it.
struct StoredKey {
    uint64_t hash = 0;  // siphash24(seed, bytes[0..len)) ^ digested
    uint8_t len = 0;    // bytes used in `bytes`
    uint8_t digested = 0;
    uint8_t bytes[key_inline_max] = {};
};

struct LookupResult {
    State* state = nullptr;  // never null after lookup(); valid until the next insert
    bool inserted = false;   // the key was not in the table (state is all zero)
    bool evicted = false;    // inserting it evicted the least recently used key
    State victim;            // the evicted key's state, when evicted
};

class SlotTable {
   public:
    static constexpr uint32_t magic_value = 0x54484c33;  // "THL3" (32-byte State)

    // Lays out an empty table in [mem, mem + size). mem must be 8-byte aligned.
    // Returns nullptr when size cannot hold at least 8 slots.
    static SlotTable* create(void* mem, size_t size, const SipKey& seed) noexcept;
    // Reuses a table that create() laid out in the same block (e.g. after nginx reload).
    // Returns nullptr when the block does not hold a valid table of that size.
    static SlotTable* attach(void* mem, size_t size) noexcept;
    // Bytes one key costs, bucket head included (for documentation and density tests).
    static size_t bytes_per_key() noexcept;

    StoredKey make_key(const void* key, size_t len) const noexcept;

    // Finds the key and marks it most recently used; inserts it (zero state) when absent.
    LookupResult lookup(const void* key, size_t len) noexcept;
    // Finds the key without inserting or touching the LRU order; nullptr when absent.
    State* find(const void* key, size_t len) noexcept;
    // The same, for a key as make_key() or for_each() gave it.
    State* find(const StoredKey& key) noexcept;
    // Forgets every key (keeps the seed).
    void clear() noexcept;

    size_t capacity() const noexcept;
    size_t size() const noexcept;
    uint64_t evictions() const noexcept;

    // Free-form 64-bit word kept with the table across reloads (the ngx layer stores the
    // algorithm there to notice a change).
    uint64_t tag() const noexcept;
    void set_tag(uint64_t tag) noexcept;

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
};

template <typename Fn>
void SlotTable::for_each(Fn&& fn) noexcept {
    visit([](void* arg, const StoredKey& k, State& s) { (*static_cast<Fn*>(arg))(k, s); }, &fn);
}

}  // namespace throttle::core
