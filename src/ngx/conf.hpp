// Configuration and per-request state shared by the ngx-layer files.
#pragma once

#include <type_traits>

#include "core/limiter.hpp"
#include "core/slot_table.hpp"
#include "ngx/ngx.hpp"

namespace throttle::redis {
struct Config;
}

namespace throttle::ngx {

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
};

struct LocConf {
    ngx_array_t* zones;  // of ZoneConf*, sorted by index; NGX_CONF_UNSET_PTR when unset
    ngx_uint_t status;
    ngx_flag_t dry_run;
    ngx_flag_t headers;
    ngx_uint_t log_level;
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

// handlers (access_handler.cpp, header_filter.cpp, variables.cpp)
ngx_int_t access_handler(ngx_http_request_t* r) noexcept;
ngx_int_t install_header_filter() noexcept;
ngx_int_t add_variables(ngx_conf_t* cf) noexcept;

}  // namespace throttle::ngx
