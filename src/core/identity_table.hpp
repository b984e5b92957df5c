// The resolutions of one identity store, in one block of memory (an nginx shared-memory zone in
// production, a plain buffer in unit tests). Pure C++, no nginx header (layer: core). Not
// thread-safe: the caller holds the zone's lock.
//
// Layout as slot_table.hpp: [Header][bucket heads: uint32 x nbuckets][Slot x capacity], 32-bit
// links, position independent, kept across reloads (attach()). A slot (120 bytes) holds the
// credential's digest (HMAC under the deployment's secret: never the credential), what it
// resolved to and until when. Buckets are the digest's first bytes: an HMAC a client cannot
// compute cannot be aimed at one bucket. Lookup is O(1) expected; an expired resolution is
// removed when met; inserting into a full table first takes expired slots from the least
// recently used end, then evicts the least recently used one.
#pragma once

#include <cstddef>
#include <cstdint>

#include "core/hash.hpp"
#include "core/identity.hpp"

namespace throttle::core::identity {

// A stored resolution, copied out of the table.
struct Entry {
    Kind kind = Kind::none;  // none: not found (or expired)
    uint8_t id_len = 0;
    char id[user_id_max] = {};
    int64_t expires_ms = 0;

    Resolution resolution() const noexcept { return {kind, {id, id_len}}; }
};

class Table {
   public:
    static constexpr uint32_t magic_value = 0x54484931;  // "THI1"

    // Lays out an empty table in [mem, mem + size). mem must be 8-byte aligned. nullptr when
    // size cannot hold at least 8 slots.
    static Table* create(void* mem, size_t size) noexcept;
    // Reuses a table create() laid out in the same block (after a reload); nullptr when the
    // block does not hold a valid table of that size.
    static Table* attach(void* mem, size_t size) noexcept;
    static size_t bytes_per_key() noexcept;

    // The resolution stored for `digest` if it has not expired at `now` (marked most recently
    // used); an expired one is removed. kind == none when there is none.
    Entry find(const Sha256Digest& digest, int64_t now) noexcept;
    // Stores (or replaces) a resolution of kind user or anonymous until `expires_ms`. An id
    // that is not valid_user_id() stores nothing.
    void put(const Sha256Digest& digest, const Resolution& r, int64_t expires_ms,
             int64_t now) noexcept;
    // Forgets `digest`; true when it was stored.
    bool erase(const Sha256Digest& digest) noexcept;
    void clear() noexcept;

    size_t capacity() const noexcept;
    size_t size() const noexcept;
    uint64_t evictions() const noexcept;  // live resolutions dropped because the table was full

    // The layout (identity_table.cpp).
    struct Header;
    struct Slot;

   private:
    Table() = default;
};

}  // namespace throttle::core::identity
