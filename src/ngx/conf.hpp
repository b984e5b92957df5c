// The module's configuration (layer: ngx): each feature's own part (limit/conf.hpp,
// cache/conf.hpp) and what they share, the Redis settings.
#pragma once

#include <string_view>

#include "ngx/cache/conf.hpp"
#include "ngx/identity/conf.hpp"
#include "ngx/limit/conf.hpp"
#include "ngx/ngx.hpp"

namespace throttle::redis {
struct Config;
}

namespace throttle::ngx {

// The bytes of an nginx string.
inline std::string_view view(const ngx_str_t& s) noexcept {
    return {reinterpret_cast<const char*>(s.data), s.len};
}

// `throttle_redis`: owned by the configuration's pool (destroyed by a pool cleanup).
struct RedisSettings {
    redis::Config* client;  // address resolved at configuration time
    ngx_str_t prefix;       // default "throttle:"
    ngx_str_t text;         // the address as written, for logs
};

struct MainConf {
    LimitMainConf limit;
    CacheMainConf cache;
    IdentityMainConf identity;
    RedisSettings* redis;  // nullptr without throttle_redis
};

struct LocConf {
    LimitLocConf limit;
    CacheLocConf cache;
    IdentityLocConf identity;
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

// redis_directive.cpp
char* throttle_redis_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
// variables.cpp
ngx_int_t add_variables(ngx_conf_t* cf) noexcept;

}  // namespace throttle::ngx
