// The counters as text (issue 11): the Prometheus text exposition format 0.0.4 and JSON with the
// same numbers. Pure C++, no nginx header (layer: core). The ngx layer gathers a Snapshot (which
// zones, namespaces and targets the configuration names, and the gauges it reads at scrape time)
// and serves the text.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/metrics.hpp"

namespace throttle::core::metrics {

struct ZoneView {
    std::string_view name;
    std::string_view mode;  // "local", "sync", "strict"
    const ZoneMetrics* m;
    uint64_t keys;
    uint64_t capacity;
};

struct CacheView {
    std::string_view ns;
    const CacheMetrics* m;
};

struct RedisView {
    std::string_view target;
    const RedisMetrics* m;
    RedisGauges gauges;  // sum_workers() at scrape time
};

struct Snapshot {
    std::vector<ZoneView> zones;
    std::vector<CacheView> caches;
    std::vector<RedisView> redis;
    int64_t now_ms = 0;  // for the age of the last sync flush
};

inline constexpr std::string_view prometheus_content_type =
    "text/plain; version=0.0.4; charset=utf-8";

// Every family with its # HELP and # TYPE, then its samples; families without a sample (no sync
// zone, no cache namespace) are left out. May throw std::bad_alloc.
std::string prometheus_text(const Snapshot& s);
// {"zones":{NAME:{...}},"redis":{TARGET:{...}},"cache":{NAMESPACE:{...}}}. May throw.
std::string json_text(const Snapshot& s);

}  // namespace throttle::core::metrics
