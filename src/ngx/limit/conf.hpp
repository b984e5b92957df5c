// Rate limiting's configuration (layer: ngx): zones, and what a location applies.
#pragma once

#include "core/key_memo.hpp"
#include "core/key_watch.hpp"
#include "core/limiter.hpp"
#include "core/metrics.hpp"
#include "core/slot_table.hpp"
#include "core/zone_key.hpp"
#include "ngx/ngx.hpp"

namespace throttle::ngx {

enum class Mode : uint8_t { local = 0, sync, strict, lease };
enum class Fallback : uint8_t { local = 0, open, closed };

// What every worker of a host shares for one zone (in the zone's shared memory).
struct ZoneShared {
    ngx_atomic_t next_flush_ms;  // mode=sync: the worker that moves this on flushes;
                                 // mode=lease: on sweeps (idle and expired leases back)
    core::SlotTable* table;
    size_t table_bytes;
};

// One `throttle_zone` (or a zone named by `throttle` before its `throttle_zone` was read).
struct ZoneConf {
    ngx_str_t name;
    ngx_shm_zone_t* shm_zone;
    ngx_http_complex_value_t key;  // key.value.data == nullptr until throttle_zone is read
    // The key is one variable ("$binary_remote_addr"): its index, read without the script
    // engine (same value, no copy). NGX_ERROR: anything else, evaluated as a complex value.
    ngx_int_t key_index;
    core::Policy policy;
    ngx_uint_t index;         // declaration order: zones are always locked in this order
    ngx_str_t policy_header;  // RateLimit-Policy value, fixed per zone: "NAME";q=Q;w=W
    ngx_str_t limit_prefix;   // the start of its RateLimit value, fixed too: "NAME";r=
    Mode mode;
    Fallback fallback;
    ngx_msec_t sync_interval;
    uint32_t lease_max;       // mode=lease: the most units a host holds for a key (lease=N)
    core::SlotTable* leases;  // mode=lease: the host's leases (core/lease.hpp), by key
    ngx_slab_pool_t* shpool;
    ZoneShared* shared;
    core::SlotTable* table;   // shared->table
    const ngx_str_t* secret;  // throttle_secret (MainConf's); data == nullptr: none
    core::ZoneKeyer keyer;    // set by init_zone: the secret's, or the zone's own random one
    // This worker's memo of recent keys and their stored keys in `table` (core/key_memo.hpp):
    // written on the request path without a lock, each worker has its own copy of the conf.
    core::KeyMemo key_memo;
    ngx_str_t first_use_file;  // where `throttle` first named it, for "unknown zone"
    ngx_uint_t first_use_line;
    // This worker's watch for a key empty whenever credentials are sent (a wrong cookie name),
    // written on the request path without a lock: each worker has its own copy of the conf.
    core::EmptyKeyWatch key_watch;
    core::metrics::ZoneMetrics* metrics;  // nullptr: metrics off (set by the metrics zone)
};

// http{}: every zone.
struct LimitMainConf {
    ngx_array_t zones;  // of ZoneConf*
    bool remote_zones;  // some zone has mode=sync or mode=strict
};

// Per location. Unset values are NGX_CONF_UNSET*.
struct LimitLocConf {
    ngx_array_t* zones;  // of ZoneConf*, sorted by index; NGX_CONF_UNSET_PTR when unset
    ngx_uint_t status;
    ngx_flag_t dry_run;
    ngx_flag_t headers;
    ngx_uint_t log_level;
};

}  // namespace throttle::ngx
