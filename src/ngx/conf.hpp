// The module's configuration (layer: ngx): each feature's own part (limit/conf.hpp,
// cache/conf.hpp) and what they share, the Redis settings.
#pragma once

#include <string_view>

#include "ngx/cache/conf.hpp"
#include "ngx/identity/conf.hpp"
#include "ngx/limit/conf.hpp"
#include "ngx/metrics.hpp"
#include "ngx/ngx.hpp"

namespace throttle::redis {
struct Config;
struct ClusterConfig;
}  // namespace throttle::redis

namespace throttle::ngx {

// The bytes of an nginx string.
inline std::string_view view(const ngx_str_t& s) noexcept {
    return {reinterpret_cast<const char*>(s.data), s.len};
}

// `throttle_redis`: owned by the configuration's pool (destroyed by a pool cleanup).
struct RedisSettings {
    redis::Config* client;          // address resolved at configuration time
    redis::ClusterConfig* cluster;  // `cluster ADDRESS ...`: the seeds and client (else nullptr)
    ngx_str_t prefix;               // default "throttle:"
    ngx_str_t text;                 // the address as written, for logs
};

struct MainConf {
    LimitMainConf limit;
    CacheMainConf cache;  // cache.secret: throttle_secret's value (see secret() below)
    IdentityMainConf identity;
    MetricsMainConf metrics;
    RedisSettings* redis;               // nullptr without throttle_redis
    const ngx_str_t* secret_directive;  // the name that set the secret, for messages
};

// throttle_secret (or its alias throttle_cache_secret): the one secret of zones and cache;
// data == nullptr when not set. Stored as cache.secret, which the cache has always read.
inline const ngx_str_t& secret(const MainConf& mcf) noexcept {
    return mcf.cache.secret;
}

// Whether a worker needs the Redis link: throttle_redis is set and some zone, cache location or
// throttle_identity uses it (a throttle_redis nothing uses is never connected).
inline bool redis_used(const MainConf& mcf) noexcept {
    return mcf.redis != nullptr &&
           (mcf.limit.remote_zones || mcf.cache.used || mcf.identity.credential != nullptr);
}

struct JwtConf;

struct LocConf {
    LimitLocConf limit;
    CacheLocConf cache;
    JwtConf* jwt;  // throttle_jwt (identity/jwt.hpp); nullptr: none or off
    IdentityLocConf identity;
    MetricsFormat metrics;  // throttle_metrics; none: not here
};

inline MainConf* main_conf(ngx_http_request_t* r) noexcept {
    return static_cast<MainConf*>(ngx_http_get_module_main_conf(r, ngx_http_throttle_module));
}
inline MainConf* main_conf(ngx_conf_t* cf) noexcept {
    return static_cast<MainConf*>(ngx_http_conf_get_module_main_conf(cf, ngx_http_throttle_module));
}
inline LocConf* loc_conf(ngx_http_request_t* r) noexcept {
    return static_cast<LocConf*>(ngx_http_get_module_loc_conf(r, ngx_http_throttle_module));
}

// secret_directive.cpp: throttle_secret and its alias throttle_cache_secret
char* throttle_secret_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
// redis_directive.cpp
char* throttle_redis_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
// variables.cpp
ngx_int_t add_variables(ngx_conf_t* cf) noexcept;

}  // namespace throttle::ngx
