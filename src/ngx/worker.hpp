// A worker's start and end (layer: ngx): the Redis link (redis_link.hpp) and every feature's
// per-worker part (limit/sync_flush, limit/strict, cache/worker), started in init_process and
// stopped in exit_process, in that order and its reverse.
#pragma once

#include "ngx/ngx.hpp"

namespace throttle::ngx {

ngx_int_t init_worker(ngx_cycle_t* cycle) noexcept;
void exit_worker(ngx_cycle_t* cycle) noexcept;

}  // namespace throttle::ngx
