// Loud configuration (layer: ngx): a location whose responses are refused by the cache for a
// reason the operator (or the application's author) can fix says so once per worker, location
// and reason, at warn:
//   throttle_cache "review": responses from /api/review/ are not stored: Vary: *
// and stays quiet after that (each later refusal is a debug line). The reasons are
// core::cache::verdict_reason()'s; the others (a status not configured, a TTL of 0, ...) are a
// normal part of caching and only ever debug lines.
#pragma once

#include "core/cache_entry.hpp"
#include "core/metrics.hpp"
#include "ngx/cache/conf.hpp"

namespace throttle::ngx {

// A response the filling request got is not stored, for `verdict` (never Verdict::store): says
// so as above and counts it (too_large: Verdict::too_large; uncacheable: every other verdict).
void cache_refused(ngx_http_request_t* r, const CacheLocConf& conf,
                   core::cache::Verdict verdict) noexcept;
// Counts a response not stored in the location's namespace (nothing without throttle_metrics).
void cache_count_refusal(const CacheLocConf& conf, core::metrics::StoreRefusal why) noexcept;

void refusals_exit() noexcept;  // forgets what was said (the worker exits)

}  // namespace throttle::ngx
