// Invalidations (layer: ngx): a user's write bumps their generation in some namespaces. One
// Redis did not confirm is retried every second until it is; meanwhile this worker does not
// look up that user's entries in those namespaces (BYPASS), so a worker never serves what a
// write made stale. Each namespace of an invalidation Redis confirmed counts one
// nginx_throttle_cache_invalidations_total (when some directive names it and metrics are on).
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "ngx/conf.hpp"
#include "redis/loop.hpp"

namespace throttle::ngx {

// Invalidates the user's (`id`) generation in these namespaces. `answered` (if set) is called
// once when Redis answered the first attempt or failed to; the return value says whether it
// will be (false: not sent now, queued for a retry).
bool cache_invalidate(std::string id, std::vector<std::string> namespaces,
                      std::function<void()> answered = nullptr) noexcept;
// Whether an invalidation of the user's entries in `ns` waits for Redis in this worker.
bool cache_invalidation_pending(std::string_view ns, std::string_view id) noexcept;

void invalidations_init(redis::Loop& loop, const MainConf& mcf);  // may throw
void invalidations_exit() noexcept;                               // logs what Redis never confirmed

}  // namespace throttle::ngx
