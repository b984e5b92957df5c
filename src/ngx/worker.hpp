// The per-worker Redis side of the module (layer: ngx): one client per worker process on
// nginx's event loop, the sync-mode flush timers, and the last flush at exit.
#pragma once

#include <string>

#include "core/slot_table.hpp"
#include "ngx/conf.hpp"
#include "redis/client.hpp"

namespace throttle::ngx {

// This worker's Redis client; nullptr when no zone needs Redis (or outside workers).
redis::Client* redis_client() noexcept;
const RedisSettings* redis_settings() noexcept;
// True from the start of exit_worker(): callbacks must not resume requests any more.
bool worker_exiting() noexcept;

// The Redis key base of one client key in a zone: PREFIX{ZONE:KEY}. Keys longer than 32
// bytes are stored (and sent) as "#" and the hex SHA-256 digest, the same on every host.
std::string redis_base(const RedisSettings& settings, const ZoneConf& zone,
                       const core::StoredKey& key);

}  // namespace throttle::ngx
