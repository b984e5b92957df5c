// The response cache in one worker (layer: ngx): its key prefix, and the start and stop of its
// per-worker parts, each in its own file: lookups (lookup.cpp), fills and their waiters
// (waiters.cpp), invalidations (invalidate.cpp), orphan fill locks (orphans.cpp), memos
// (memo.cpp).
#pragma once

#include <string>

#include "ngx/conf.hpp"
#include "redis/loop.hpp"

namespace throttle::ngx {

// The cache's Redis key prefix in this worker: the throttle_redis prefix followed by "cache:".
const std::string& cache_prefix() noexcept;

// Logs and leaves the cache off (every lookup BYPASS/ERROR) when a part cannot start.
void cache_worker_init(ngx_cycle_t* cycle, const MainConf& mcf, redis::Loop& loop) noexcept;
void cache_worker_exit() noexcept;
// The worker is exiting gracefully and no request waits: lets go of the connections only
// waiters need (the fill channel).
void cache_worker_quiesce() noexcept;

}  // namespace throttle::ngx
