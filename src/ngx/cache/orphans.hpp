// Orphan fill locks (layer: ngx): a lookup that asked for the fill lock, or a STORE or RELEASE,
// that Redis did not answer may have left a lock nobody will fill. ABANDON drops the lock found
// under the current generations and wakes its waiters -- now, or every second while Redis is
// away, until the lock would have expired anyway.
#pragma once

#include "ngx/cache/fill.hpp"
#include "redis/loop.hpp"

namespace throttle::ngx {

void cache_abandon_lock(const FillLock& lock) noexcept;

void orphans_init(redis::Loop& loop);  // may throw
void orphans_exit() noexcept;

}  // namespace throttle::ngx
