// Cache lookups (layer: ngx): every lookup queued during one event-loop turn goes to Redis in
// one LOOKUP BATCH script call at the end of the turn (redis::TurnBatcher); each answer goes
// to cache_lookup_done() (handler.cpp), never from inside cache_lookup_submit().
#pragma once

#include <memory>

#include "redis/loop.hpp"

namespace throttle::ngx {

struct CacheRequest;

// Queues a lookup (`want_lock`: take the fill lock on a miss). False when it could not be
// queued: cache_lookup_done() will not be called.
bool cache_lookup_submit(const std::shared_ptr<CacheRequest>& cr, bool want_lock) noexcept;

void lookups_init(redis::Loop& loop);  // may throw
void lookups_exit() noexcept;          // what is queued is dropped (the worker exits)

}  // namespace throttle::ngx
