// The namespace generations on a Redis Cluster (issue 12; layer: ngx). A namespace's
// generation key PREFIX{NS}:g is in another slot than its users' keys, so a script cannot read
// it with theirs: each worker keeps a mirror of the generation of every namespace it looked up,
// and the cluster scripts take the mirror's value as an ARGV (redis/cache_scripts.hpp).
//
// The mirror of a namespace is read (NS GENERATION: a GET that also pushes the key's expiry) at
// its first lookup in the worker and again every cache_ns_refresh_ms, and is set at once by a
// purge's message on the fill channel ("g" GEN ":" NS, PURGE CLUSTER publishes it; classic
// PUBLISH reaches every node of a cluster) and by this worker's own purge. A lookup is served
// only under a mirror confirmed within cache_ns_stale_ms (the time the read was sent, so the
// read's own time counts): until the first read answers, or when reads failed for that long,
// the lookup is a BYPASS (upstream, nothing stored). So a purge is seen by every worker when its
// message arrives, and at the latest cache_ns_refresh_ms (+ the read's time) after it when the
// message is lost.
//
// Only on a cluster (cache_ns_mirrored()); with one Redis the scripts read the key themselves.
#pragma once

#include <cstdint>
#include <string_view>

#include "redis/loop.hpp"

namespace throttle::ngx {

inline constexpr uint64_t cache_ns_refresh_ms = 1000;
inline constexpr uint64_t cache_ns_stale_ms = 3 * cache_ns_refresh_ms;

// Starts the mirrors (a cluster only). May throw std::bad_alloc.
void nsgens_init(redis::Loop& loop);
void nsgens_exit() noexcept;

// True on a cluster (the mirrors run).
bool cache_ns_mirrored() noexcept;

// The namespace's generation, when its mirror is confirmed within cache_ns_stale_ms; else false
// (and the namespace is read now if it was never read).
bool cache_ns_generation(std::string_view ns, uint64_t& gen) noexcept;

// A purge moved the namespace's generation to `gen` (its message, or this worker's purge).
void cache_ns_generation_seen(std::string_view ns, uint64_t gen) noexcept;

}  // namespace throttle::ngx
