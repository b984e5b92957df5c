// Rate limiting's entry points (layer: ngx), for the module definition and the worker.
#pragma once

#include <time.h>

#include <cstdint>
#include <string>

#include "ngx/conf.hpp"

namespace throttle::ngx {

// zone.cpp
// The Redis key base of one client key in a zone: PREFIX{ZONE:DIGEST}, DIGEST the 32 hex
// digits of the key's keyed digest (core/zone_key.hpp), the same on every host with the same
// throttle_secret. The key itself never reaches Redis.
std::string redis_base(const RedisSettings& settings, const ZoneConf& zone,
                       const core::StoredKey& key);
// The same, into `out` (replaced; its capacity reused). May throw std::bad_alloc.
void redis_base(const RedisSettings& settings, const ZoneConf& zone, const core::StoredKey& key,
                std::string& out);
// A key of the shape zone keys have (PREFIX{probe:probe}:0), for the connect-time ACL check of
// the scripts' commands (redis/permissions.hpp).
std::string permission_probe_key(const MainConf& mcf);
ZoneConf* find_or_add_zone(ngx_conf_t* cf, MainConf* mcf, const ngx_str_t& name) noexcept;
ngx_int_t init_zone(ngx_shm_zone_t* shm_zone, void* data) noexcept;

// zone_directive.cpp, throttle_directive.cpp
char* throttle_zone_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* throttle_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;

// access_handler.cpp (pre-access phase), header_filter.cpp
ngx_int_t access_handler(ngx_http_request_t* r) noexcept;
ngx_int_t install_header_filter() noexcept;

}  // namespace throttle::ngx
