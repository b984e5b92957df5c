// The per-worker Redis side of the module (layer: ngx): one client per worker process on
// nginx's event loop, the sync-mode flush timers, and the last flush at exit.
#pragma once

#include <string>

#include <vector>

#include "core/slot_table.hpp"
#include "ngx/conf.hpp"
#include "redis/client.hpp"
#include "redis/scripts.hpp"

namespace throttle::ngx {

// nginx's log level for a message of the Redis layer.
ngx_uint_t log_level_of(redis::LogLevel level) noexcept;

// This worker's Redis client; nullptr when no zone needs Redis (or outside workers).
redis::Client* redis_client() noexcept;
const RedisSettings* redis_settings() noexcept;
// True from the start of exit_worker(): callbacks must not resume requests any more.
bool worker_exiting() noexcept;

// A request waiting for Redis to decide its strict zones.
class StrictWaiter {
   public:
    virtual bool gone() const noexcept = 0;  // the request ended meanwhile: do not ask for it
    virtual const std::vector<redis::StrictZone>& zones() const noexcept = 0;
    // Called exactly once, never from inside strict_submit(): Redis' decisions, one per zone
    // (zones().size()), or nullptr when Redis could not answer. The waiter may delete itself.
    virtual void decided(const redis::StrictDecision* decisions) noexcept = 0;

   protected:
    ~StrictWaiter() = default;
};

// Queues a strict decision. Every request queued in one event-loop turn is decided by one
// script call at the end of the turn (Redis runs one script for many requests). False when it
// could not be queued (decided() will not be called).
bool strict_submit(StrictWaiter* waiter) noexcept;

// The Redis key base of one client key in a zone: PREFIX{ZONE:KEY}. Keys longer than 32
// bytes are stored (and sent) as "#" and the hex SHA-256 digest, the same on every host.
std::string redis_base(const RedisSettings& settings, const ZoneConf& zone,
                       const core::StoredKey& key);

}  // namespace throttle::ngx
