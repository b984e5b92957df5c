// A memo of inflated bodies for the response cache's clients that do not accept gzip: the
// plain bytes of a stored gzip body, found by what was stored, not by whose it is. Pure C++,
// no nginx header (layer: core).
//
// Content, not entries. A slot holds a stored gzip body's bytes and the bytes they inflate
// to, and is found by those gzip bytes: a lookup picks a set by T = SipHash-1-3(K, the gzip
// member's last 8 bytes (its CRC-32 and length) and its size) under a key K drawn at random per
// worker (never written anywhere, never sent), then compares the whole gzip bytes with the
// slot's (memcmp: about 50 instructions for 700 bytes, where a keyed digest of them all costs
// about 3,000). Identical gzip bytes always inflate to identical plain bytes (one gzip member,
// checked to its CRC-32 and length), so:
//   - a hit serves exactly what inflating the stored body would give, whoever asks: the memo
//     cannot show one user another's data (the comparison is exact: no digest collision);
//   - whether the entry may be served at all is still decided by the lookup that fetched the
//     gzip bytes (Redis or the local tier): an invalidated entry is never fetched, so never
//     inflated, whatever the memo holds;
//   - users that are served the same body (the same page for every user of a tenant, an
//     anonymous page) share one slot: memory grows with distinct bodies, not with users;
//   - a body that does not inflate (corrupt, truncated, other than the size its entry says) is
//     never stored, so it fails the same way on every hit;
//   - a client cannot aim at a set without K: bodies it chose (with a CRC-32 it forced) evict
//     from random sets, as any other bodies would.
// Bounded: at most `slots` bodies (sets of `ways`, the set's least recently used replaced) and
// at most max_bytes in all, gzip and plain bytes counted (the least recently used over all sets
// evicted first). A body whose two forms pass max_bytes is inflated and returned, not kept.
// Bodies are shared (shared_ptr): one a request still sends outlives its eviction, and the
// caller counts what requests hold (throttle_cache_inflate_memory). Not thread-safe (one per
// worker).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/hash.hpp"

namespace throttle::core::cache {

class InflateMemo {
   public:
    static constexpr size_t slots = 4096;
    static constexpr size_t ways = 4;

    // `key` must be secret and random (getrandom()). max_bytes: gzip and plain bytes kept in
    // all (0: nothing is kept; every call inflates). May throw std::bad_alloc (the slot table).
    InflateMemo(const SipKey& key, size_t max_bytes);

    // The bytes the gzip member `gz` inflates to, when they are exactly `plain_size` bytes
    // (gzip_decompress(gz, out, plain_size) and out.size() == plain_size); nullptr when not
    // (then nothing is kept). From the memo when it holds them, else inflated and kept.
    // May throw std::bad_alloc.
    std::shared_ptr<const std::string> plain(std::string_view gz, size_t plain_size);

    size_t bytes() const noexcept { return bytes_; }  // gzip and plain bytes kept
    size_t count() const noexcept { return count_; }  // bodies kept
    size_t max_bytes() const noexcept { return max_bytes_; }
    uint64_t hits() const noexcept { return hits_; }            // answered from the memo
    uint64_t evictions() const noexcept { return evictions_; }  // bodies dropped for others

   private:
    static constexpr uint32_t none = UINT32_MAX;
    struct Slot {
        uint64_t tag = 0;                         // tag_of(gz)
        std::string gz;                           // the gzip bytes
        std::shared_ptr<const std::string> body;  // what they inflate to; nullptr: empty
        uint64_t used_at = 0;                     // tick_ when last found or stored
        uint32_t newer = none;                    // the LRU list over all sets: toward head_
        uint32_t older = none;                    // toward tail_
    };

    void unlink(uint32_t i) noexcept;
    void push_head(uint32_t i) noexcept;
    void drop(uint32_t i) noexcept;  // empties slot i
    uint64_t tag_of(std::string_view gz) const noexcept;

    SipKey key_;
    size_t max_bytes_;
    std::vector<Slot> slots_;
    uint32_t head_ = none;  // most recently used
    uint32_t tail_ = none;  // least recently used
    uint64_t tick_ = 0;
    size_t bytes_ = 0;
    size_t count_ = 0;
    uint64_t hits_ = 0;
    uint64_t evictions_ = 0;
};

}  // namespace throttle::core::cache
