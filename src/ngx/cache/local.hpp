// The response cache's local tier (issue 13; layer: ngx): a per-host shared-memory copy of
// entries in front of Redis (core/local_cache.hpp holds the table and its rules), so that a hit
// there costs no Redis command.
//
//   throttle_cache_local zone=NAME[:SIZE] [ttl=TIME] [max_size=SIZE] [users=on|off] | off;
//                                                                http, server, location
// One zone (one table, one ngx_shmtx) may serve several locations and namespaces; its size is
// given once (zone=NAME:SIZE) and referred to by name elsewhere (zone=NAME).
//
// Filled from Redis hits (the lookup's bytes) and from stores Redis confirmed (the fill's
// bytes), tagged with the generations the lookup saw and the host epoch of when it was sent.
// Served (handler.cpp, before the Redis lookup) only when trusted:
//   - this worker's fill-channel subscriber is subscribed and its heartbeat (a PING every
//     cache_local_heartbeat_ms) was answered within cache_local_max_lag_ms, and
//   - the entry's generations equal the host's mirror (namespace, and the user's: purge and
//     invalidation messages on the fill channel, the writer's own confirmation, lookups), its
//     epoch is the host's (each (re)subscription of any worker bumps it: messages may have been
//     lost), its local age is at most ttl and it is fresh.
// When Redis itself is unavailable (client disconnected, in backoff, breaker open) an entry is
// served without the subscriber's word, up to its local age: the staleness bound is `ttl` in
// every case.
#pragma once

#include <string>
#include <string_view>

#include "core/cache_key.hpp"
#include "core/local_cache.hpp"
#include "ngx/ngx.hpp"

namespace throttle::ngx {

struct CacheLocConf;
struct MainConf;

inline constexpr uint32_t cache_local_heartbeat_ms = 200;
inline constexpr uint64_t cache_local_max_lag_ms = 500;
inline constexpr ngx_msec_t cache_local_default_ttl = 10000;
inline constexpr size_t cache_local_default_max_size = 64 * 1024;

// One throttle_cache_local zone (cycle pool).
struct CacheLocalZone {
    ngx_str_t name;
    size_t size;  // 0 until some zone=NAME:SIZE gave it
    ngx_shm_zone_t* shm;
    ngx_slab_pool_t* shpool;
    core::cache::LocalCache* table;  // in the zone; set by its init
    ngx_str_t file;                  // where it was first named (a zone never sized)
    ngx_uint_t line;
};

// Per location (inherited as a whole): throttle_cache_local.
struct CacheLocalConf {
    CacheLocalZone* zone;  // nullptr: off
    ngx_msec_t ttl;
    size_t max_size;
    bool users;
};

char* throttle_cache_local_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
// Every zone named has a size (postconfiguration).
char* check_cache_local_zones(ngx_conf_t* cf, const MainConf& mcf) noexcept;

// Whether the location's lookups may use the local tier for this identity ("anon" always;
// users only with users=on).
bool cache_local_applies(const CacheLocConf& conf, std::string_view id) noexcept;

// The tier's state when a lookup is sent (what a later store must still find).
core::cache::LocalSnapshot cache_local_snapshot(const CacheLocConf& conf) noexcept;

// Whether this worker's subscriber vouches for the local tier now (subscribed, heartbeat on
// time). Counts an untrusted event when not.
bool cache_local_trusted() noexcept;

void cache_local_count_untrusted(const CacheLocConf& conf) noexcept;

// The entry under k when it may be served (copied into out).
bool cache_local_get(const CacheLocConf& conf, const core::cache::LocalKey& k, std::string& out,
                     core::cache::Generation& gen) noexcept;

// Keeps `bytes` (an encoded entry) under k: a Redis hit's or a confirmed store's. Does nothing
// when the tier does not apply, the entry is larger than max_size or not fresh, or the host
// moved on since `seen` (core::cache::LocalCache::put()).
void cache_local_put(const CacheLocConf& conf, const core::cache::LocalKey& k,
                     const core::cache::Generation& gen, const core::cache::LocalSnapshot& seen,
                     std::string_view bytes) noexcept;

// A lookup's answer carried these generations (the mirror moves up to them).
void cache_local_observe(const CacheLocConf& conf, std::string_view id,
                         const core::cache::Generation& gen,
                         const core::cache::LocalSnapshot& seen) noexcept;

// Messages and confirmations, for every zone of this configuration.
void cache_local_ns_generation(std::string_view ns, uint64_t gen) noexcept;
void cache_local_user_generation(std::string_view ns, std::string_view id, uint64_t gen) noexcept;
void cache_local_resubscribed() noexcept;
// A message on the fill channel that is not a wake-up: a purge's or a write's. True if it was.
bool cache_local_message(std::string_view msg) noexcept;

// Per worker: the zones (from the configuration), the subscriber's trust (waiters.cpp).
void cache_local_worker_init(const MainConf& mcf) noexcept;
void cache_local_worker_exit() noexcept;
bool cache_local_used() noexcept;

}  // namespace throttle::ngx
