// The per-worker Redis link (layer: ngx): one client per worker process on nginx's event loop,
// started in init_process and destroyed in exit_process, and the features' per-worker parts
// started and stopped with it (limit/sync_flush, limit/strict, cache/worker).
#pragma once

#include "ngx/conf.hpp"
#include "redis/client.hpp"

namespace throttle::ngx {

// nginx's log level for a message of the Redis layer.
ngx_uint_t log_level_of(redis::LogLevel level) noexcept;

// This worker's Redis client; nullptr when nothing needs Redis (or outside workers).
redis::Client* redis_client() noexcept;
const RedisSettings* redis_settings() noexcept;
// True from the start of exit_worker(): callbacks must not resume requests any more.
bool worker_exiting() noexcept;

ngx_int_t init_worker(ngx_cycle_t* cycle) noexcept;
void exit_worker(ngx_cycle_t* cycle) noexcept;

}  // namespace throttle::ngx
