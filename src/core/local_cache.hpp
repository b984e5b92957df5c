// The response cache's local tier (issue 13): one host's copy of cache entries in one block of
// memory (an nginx shared-memory zone shared by the workers in production, a plain buffer in
// unit tests), in front of Redis. Pure C++, no nginx header (layer: core). Not thread-safe: the
// caller holds the zone's lock, briefly (copy in, copy out).
//
// What it holds:
//   - entries: the encoded bytes of a cache entry (core::cache::encode()) under its key
//     (namespace, identity digest, the request's cache_key(): exactly what names it in Redis),
//     tagged with the generations the Redis lookup saw, the host epoch at that lookup, when it
//     was stored here and until when it is fresh and present. Bytes in fixed-size blocks; LRU
//     eviction when the blocks or the entry slots run out: the table is bounded in bytes.
//   - the mirror: each namespace's generation (and the anonymous identity's), and a bounded,
//     set-associative table of per-(namespace, user) generations. Every value only moves up
//     (max of what lookups and invalidation messages reported).
//   - the epoch: a host-wide counter bumped whenever a worker's fill-channel subscriber
//     (re)subscribes: messages may have been lost before, so every older entry is unusable.
//
// An entry is served (get()) only when its epoch is the current one, its namespace generation
// equals the mirror's, its user generation equals the mirror's (the anonymous identity's, or a
// user's record, which must be present), its local age is at most the caller's ttl and it is
// fresh. Anything else is a miss. A value stored (put()) must come from a lookup whose snapshot()
// is still current (epoch and, for a user's entry, the user table's eviction count unchanged):
// a user's record evicted between the lookup and the store could otherwise be re-created from
// an older generation than a message that arrived meanwhile. So the table errs on the side of
// invalidating more, never less.
//
// Layout: [Header][NsSlot x ns_slots][UserSlot x user_slots][bucket heads: uint32 x buckets]
// [Entry x entries][block next: uint32 x blocks][blocks: block_size x blocks], all offsets in
// the header, 32-bit links: position independent, kept across reloads (attach()).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/cache_key.hpp"
#include "core/hash.hpp"

namespace throttle::core::cache {

// What names a local entry: exactly the parts of its Redis key but the generations.
struct LocalKey {
    std::string_view ns;  // valid_namespace()
    std::string_view id;  // identity_digest(): "anon" or 64 hex digits
    Sha256Digest key{};   // cache_key() (or a variant key)
};

// The host's state when a lookup was sent: what a put() of its answer must still find.
struct LocalSnapshot {
    uint64_t epoch = 0;
    uint64_t user_evictions = 0;
};

struct LocalStats {
    uint64_t entries = 0;
    uint64_t blocks_used = 0;
    uint64_t blocks = 0;
    uint64_t stores = 0;
    uint64_t evictions = 0;  // live entries dropped for room
    uint64_t user_evictions = 0;
    uint64_t epoch = 0;
};

class LocalCache {
   public:
    static constexpr uint32_t magic_value = 0x54484c31;  // "THL1"
    static constexpr size_t block_size = 512;
    static constexpr size_t ns_slots = 128;
    static constexpr size_t user_ways = 8;
    static constexpr size_t id_max = 64;
    static constexpr size_t ns_max = 64;

    // Lays out an empty table in [mem, mem + size). mem must be 8-byte aligned. nullptr when
    // size is below min_size().
    static LocalCache* create(void* mem, size_t size) noexcept;
    // Reuses a table create() laid out in the same block (after a reload); nullptr when the block
    // does not hold a valid table of that size.
    static LocalCache* attach(void* mem, size_t size) noexcept;
    static size_t min_size() noexcept;
    // The largest entry a table of `size` bytes keeps (a quarter of its blocks).
    static size_t max_entry_for(size_t size) noexcept;

    LocalSnapshot snapshot() const noexcept;

    // Copies `bytes` in under `k`, tagged with `gen` (what the lookup saw), `fresh_until_ms` and
    // `stale_until_ms` (the entry's own times), stored at `now_ms`. Replaces an entry of the
    // same key. False (nothing stored) when `seen` is no longer current, the generations are
    // older than the mirror's, the entry is larger than max_entry(), the key is malformed, or
    // the namespace table is full. Raises the mirror to `gen` when it is behind.
    bool put(const LocalKey& k, const Generation& gen, const LocalSnapshot& seen,
             std::string_view bytes, int64_t fresh_until_ms, int64_t stale_until_ms,
             int64_t now_ms) noexcept;

    // The entry under `k` if it may be served (see above) with a local age of at most
    // max_age_ms: its bytes copied into `out` (true). An entry that can never be served again
    // (older epoch or generations, past its local age or its stale time) is removed.
    // `gen` (if set) receives the generations it was stored under.
    bool get(const LocalKey& k, int64_t now_ms, int64_t max_age_ms, std::string& out,
             Generation* gen = nullptr) noexcept;

    // A lookup sent at `seen` reported these generations: the mirror moves up to them (unless
    // the epoch moved since: bump_epoch() started the mirror over).
    void observe(std::string_view ns, std::string_view id, const Generation& gen,
                 const LocalSnapshot& seen) noexcept;
    // A purge's message: the namespace's generation is now at least `gen`.
    void ns_generation_seen(std::string_view ns, uint64_t gen) noexcept;
    // A user's write: their generation in `ns` is now at least `gen`. Always recorded (the
    // least recently used record of the set is evicted when full).
    void user_generation_seen(std::string_view ns, std::string_view id, uint64_t gen) noexcept;
    // Messages may have been lost: every entry stored so far becomes unusable, and the mirror
    // starts over (namespace and user generations back to 0, raised again by what lookups sent
    // from now on and messages report).
    void bump_epoch() noexcept;

    void clear() noexcept;
    size_t max_entry() const noexcept;
    LocalStats stats() const noexcept;

    struct Header;
    struct NsSlot;
    struct UserSlot;
    struct Entry;

   private:
    LocalCache() = default;
};

}  // namespace throttle::core::cache
