// Configuration and per-request state shared by the ngx-layer files.
#pragma once

#include <string_view>
#include <type_traits>

#include "core/limiter.hpp"
#include "core/slot_table.hpp"
#include "ngx/ngx.hpp"

namespace throttle::redis {
struct Config;
}

namespace throttle::ngx {

// The bytes of an nginx string.
inline std::string_view view(const ngx_str_t& s) noexcept {
    return {reinterpret_cast<const char*>(s.data), s.len};
}

enum class Mode : uint8_t { local = 0, sync, strict };
enum class Fallback : uint8_t { local = 0, open, closed };

// What every worker of a host shares for one zone (in the zone's shared memory).
struct ZoneShared {
    ngx_atomic_t next_flush_ms;  // mode=sync: the worker that moves this on flushes
    core::SlotTable* table;
    size_t table_bytes;
};

// One `throttle_zone` (or a zone named by `throttle` before its `throttle_zone` was read).
struct ZoneConf {
    ngx_str_t name;
    ngx_shm_zone_t* shm_zone;
    ngx_http_complex_value_t key;  // key.value.data == nullptr until throttle_zone is read
    core::Policy policy;
    ngx_uint_t index;  // declaration order: zones are always locked in this order
    ngx_str_t policy_header;  // RateLimit-Policy value, fixed per zone: "NAME";q=Q;w=W
    Mode mode;
    Fallback fallback;
    ngx_msec_t sync_interval;
    ngx_slab_pool_t* shpool;
    ZoneShared* shared;
    core::SlotTable* table;  // shared->table
    ngx_str_t first_use_file;  // where `throttle` first named it, for "unknown zone"
    ngx_uint_t first_use_line;
};

// `throttle_redis`: owned by the configuration's pool (destroyed by a pool cleanup).
struct RedisSettings {
    redis::Config* client;  // address resolved at configuration time
    ngx_str_t prefix;       // default "throttle:"
    ngx_str_t text;         // the address as written, for logs
};

struct MainConf {
    ngx_array_t zones;     // of ZoneConf*
    RedisSettings* redis;  // nullptr without throttle_redis
    bool remote_zones;     // some zone has mode=sync or mode=strict
    // The response cache (cache_directive.cpp)
    bool cache_used;          // some location uses a throttle_cache* directive
    ngx_str_t cache_secret;   // throttle_cache_secret; data == nullptr when not set
    ngx_str_t cache_user_file;  // where throttle_cache_user was first used (secret check)
    ngx_uint_t cache_user_line;
};

struct LocConf {
    ngx_array_t* zones;  // of ZoneConf*, sorted by index; NGX_CONF_UNSET_PTR when unset
    ngx_uint_t status;
    ngx_flag_t dry_run;
    ngx_flag_t headers;
    ngx_uint_t log_level;
    // The response cache (cache_directive.cpp). Unset values are NGX_CONF_UNSET*.
    ngx_str_t cache_ns;                    // throttle_cache NAME; len 0: off; data null: unset
    ngx_http_complex_value_t* cache_user;  // throttle_cache_user; nullptr: anonymous
    ngx_array_t* cache_valid;              // of core::cache::ValidTime; nullptr: none
    ngx_msec_t cache_stale;
    size_t cache_max_size;
    size_t cache_min_compress;
    ngx_msec_t cache_lock_timeout;
    ngx_array_t* cache_credentials;        // of ngx_str_t, lowercase names; nullptr: off
    ngx_array_t* cache_invalidate;         // of ngx_str_t namespaces; nullptr: none
    ngx_str_t cache_invalidate_header;     // len 0: off; data null: unset
    ngx_http_complex_value_t* cache_purge; // throttle_cache_purge's namespace
};

enum class Outcome : ngx_uint_t {
    none = 0,
    passed,
    rejected,
    rejected_dry_run,
    passed_fallback,    // passed while Redis could not answer for a strict zone
    rejected_fallback,  // rejected by the fallback while Redis could not answer
    pending,            // waiting for Redis
};

struct CacheRequest;
struct CacheHold;

// $throttle_cache_status
enum class CacheStatus : uint8_t { none = 0, hit, miss, expired, stale, updating, bypass, error };

// Decided once per main request, kept across internal redirects (see request_ctx.cpp).
struct RequestCtx {
    Outcome outcome;
    bool respond;                // decided while waiting: the handler still has to answer
    bool headers;                // throttle_headers of the location that decided
    const ngx_str_t* zone_name;  // the zone the RateLimit fields describe
    const ngx_str_t* policy;     // its RateLimit-Policy value
    uint64_t remaining;
    int64_t reset_s;
    int64_t retry_after_s;
    CacheStatus cache_status;
    CacheHold* hold;      // a write's response held until its invalidation is answered
    CacheRequest* cache;  // the response cache's state (cache_request.hpp), or nullptr
};
static_assert(std::is_trivially_destructible_v<RequestCtx>);

// request_ctx.cpp
RequestCtx* get_ctx(ngx_http_request_t* r) noexcept;
RequestCtx* create_ctx(ngx_http_request_t* r) noexcept;

// zone.cpp
ZoneConf* find_or_add_zone(ngx_conf_t* cf, MainConf* mcf, const ngx_str_t& name) noexcept;
ngx_int_t init_zone(ngx_shm_zone_t* shm_zone, void* data) noexcept;
int64_t now_ms() noexcept;

// directives (zone_directive.cpp, throttle_directive.cpp, redis_directive.cpp)
char* throttle_zone_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* throttle_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* throttle_redis_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;

// worker.cpp: the per-worker Redis client and sync timers
ngx_int_t init_worker(ngx_cycle_t* cycle) noexcept;
void exit_worker(ngx_cycle_t* cycle) noexcept;

// cache_directive.cpp
char* throttle_cache_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* throttle_cache_user_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* throttle_cache_valid_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* throttle_cache_list_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* throttle_cache_purge_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* throttle_cache_secret_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* throttle_cache_header_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
void init_cache_loc_conf(LocConf* lcf) noexcept;
char* merge_cache_loc_conf(ngx_conf_t* cf, LocConf* prev, LocConf* conf) noexcept;
char* check_cache_main_conf(ngx_conf_t* cf, MainConf* mcf) noexcept;
// Whether the location looks up and stores responses / acts on writes.
inline bool cache_enabled(const LocConf* lcf) noexcept { return lcf->cache_ns.len > 0; }

// cache_handler.cpp, cache_filter.cpp, cache_purge.cpp
ngx_int_t cache_handler(ngx_http_request_t* r) noexcept;
ngx_int_t install_cache_filters() noexcept;
ngx_int_t cache_purge_handler(ngx_http_request_t* r) noexcept;

// handlers (access_handler.cpp, header_filter.cpp, variables.cpp)
ngx_int_t access_handler(ngx_http_request_t* r) noexcept;
ngx_int_t install_header_filter() noexcept;
ngx_int_t add_variables(ngx_conf_t* cf) noexcept;

}  // namespace throttle::ngx
