// This worker's Redis link (layer: ngx): one client per worker process on nginx's event loop,
// which every feature's Redis calls go through. Opened and closed by worker.cpp.
#pragma once

#include <functional>

#include "ngx/conf.hpp"
#include "redis/client.hpp"
#include "redis/loop.hpp"
#include "redis/target.hpp"

namespace throttle::ngx {

// nginx's log level for a message of the Redis layer.
ngx_uint_t log_level_of(redis::LogLevel level) noexcept;

// This worker's Redis client (one Redis, or a Redis Cluster: redis/target.hpp); nullptr when
// nothing needs Redis (or outside workers).
redis::Target* redis_client() noexcept;

// The deadline (Loop::now_ms() clock) of a command for work queued at `queued_ms`: its timeout
// counts from then, as when it is sent at once (Target::evalsha_until).
inline uint64_t redis_deadline_from(const redis::Target& client, uint64_t queued_ms) noexcept {
    return queued_ms + client.config().command_timeout_ms;
}
const RedisSettings* redis_settings() noexcept;
// True once the worker began to exit: callbacks must not resume requests any more.
bool worker_exiting() noexcept;
// `res`, a reply to `what`, is not of the shape its script returns: the client counts it toward
// its circuit breaker and logs it once per incident (failures and error replies it counted
// already). Callers log nothing of their own about it. `key`: the key the command was routed
// by (on a Redis Cluster, the node that answered is the one blamed).
void redis_reply_unusable(const redis::Result& res, std::string_view what,
                          std::string_view key = {}) noexcept;

// With throttle_redis sentinel=: `follower` is called with the primary's address each time
// this worker's Sentinel watch (redis/sentinel_watch.hpp) learns it -- named by a Sentinel,
// then moved by each failover -- and at once if it is known already; the client follows it by
// itself. Without Sentinels, never. May throw (std::bad_alloc).
void follow_primary(std::function<void(const redis::Address&)> follower);

// worker.cpp's side. open_redis_link() creates the loop and the (not yet started) client; may
// throw. The loop outlives the client: close_client() first (its callbacks run then), then
// close_redis_link().
redis::Loop& open_redis_link(ngx_cycle_t* cycle, MainConf& mcf);
void mark_worker_exiting() noexcept;
// Called once when the worker starts a graceful exit (redis_loop.hpp). May throw.
void set_graceful_exit_handler(std::function<void()> handler);
// With sentinel=: starts following the primary (may throw); stops (a graceful exit once no
// request waits, close_client()).
void start_sentinel_watch();
void stop_sentinel_watch() noexcept;
// Stops the Sentinel watch, then closes the client.
void close_client() noexcept;
void close_redis_link() noexcept;

}  // namespace throttle::ngx
