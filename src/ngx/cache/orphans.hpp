// Orphan fill locks (layer: ngx): a lookup that asked for the fill lock, or a STORE or RELEASE,
// that Redis did not answer may have left a lock nobody will fill (for up to a lease: nobody
// renews it). ABANDON drops the lock found under the current generations if it still holds this
// fill's owner token, and wakes its waiters -- now, and every second until it
// released one or Redis answered two (the unanswered call may run in Redis after the first
// ABANDON: a paused Redis reads it from the old connection when it resumes; it has run before
// Redis answers the second).
#pragma once

#include "ngx/cache/fill.hpp"
#include "redis/loop.hpp"

namespace throttle::ngx {

void cache_abandon_lock(const FillLock& lock) noexcept;

void orphans_init(redis::Loop& loop);  // may throw
void orphans_exit() noexcept;

}  // namespace throttle::ngx
