// The module's counters in nginx (layer: ngx): the shared-memory zone that holds them
// (core/metrics.hpp's Registry, added when some location has `throttle_metrics`), the entries
// each zone, cache namespace and the Redis target count into, and `throttle_metrics` itself.
// Without throttle_metrics nothing is counted: every pointer below stays nullptr and the request
// path pays one null check per counter.
#pragma once

#include <string_view>

#include "core/metrics.hpp"
#include "ngx/ngx.hpp"

namespace throttle::ngx {

struct MainConf;

// A cache namespace some directive names (throttle_cache, throttle_cache_invalidate): its
// counters, set when the metrics zone is initialised. Allocated once per name and
// configuration, so a location may keep the pointer.
struct CacheMetricsRef {
    ngx_str_t name;
    core::metrics::CacheMetrics* m;  // nullptr: metrics off
};

// http{}: part of MainConf.
struct MetricsMainConf {
    ngx_shm_zone_t* shm_zone;            // nullptr: no throttle_metrics anywhere
    core::metrics::Registry* registry;   // set by the zone's init
    core::metrics::RedisMetrics* redis;  // throttle_redis's entry; nullptr: metrics off or none
    ngx_array_t* caches;                 // of CacheMetricsRef*; nullptr until one is named
};

// Per location: throttle_metrics.
enum class MetricsFormat : uint8_t { none = 0, prometheus, json };

// The counters of a namespace named at configuration time (found or added); nullptr when out
// of memory.
CacheMetricsRef* cache_metrics_ref(ngx_conf_t* cf, const ngx_str_t& ns) noexcept;
// The counters of a namespace by name at run time (throttle_cache_purge's value); nullptr when
// metrics are off or no directive names it.
core::metrics::CacheMetrics* cache_metrics(const MainConf& mcf, std::string_view ns) noexcept;

// This worker's gauges (connected, breaker, pending) in the Redis target's entry: claimed at
// worker start, released at exit; nullptr when metrics are off.
core::metrics::WorkerGauge* metrics_worker_start(MainConf& mcf) noexcept;
void metrics_worker_exit() noexcept;

char* throttle_metrics_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;

}  // namespace throttle::ngx
