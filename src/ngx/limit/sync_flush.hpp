// mode=sync (layer: ngx): every sync zone's unsent counts go to Redis every `sync=` interval,
// once per host (the worker that moves the zone's next_flush_ms on does it), and Redis'
// global totals come back into the zone. At exit, what is left goes on a blocking connection.
#pragma once

#include "ngx/conf.hpp"
#include "redis/loop.hpp"

namespace throttle::ngx {

void sync_worker_init(const MainConf& mcf, redis::Loop& loop);  // may throw
void sync_worker_stop() noexcept;                               // stops the timers
// After the client was destroyed (its failed flushes gave their counts back): the last flush.
void sync_final_flush(const MainConf& mcf) noexcept;

}  // namespace throttle::ngx
