// Verified identity's configuration (layer: ngx; directives in identity/directives.cpp).
#pragma once

#include "core/hash.hpp"
#include "ngx/ngx.hpp"

namespace throttle::core::identity {
class Table;
}

namespace throttle::ngx {

// http{}: `throttle_identity`, one store per configuration.
struct IdentityMainConf {
    ngx_http_complex_value_t* credential;  // nullptr: no throttle_identity
    ngx_array_t* sources;     // of IdentitySource (cache/conf.hpp): its $cookie_/$http_ variables
    ngx_str_t resolve;        // the URI asked (a subrequest)
    ngx_str_t forget_header;  // the response header naming a credential to forget
    ngx_msec_t ttl;           // a user's resolution
    ngx_msec_t negative_ttl;  // "not a session"
    ngx_msec_t timeout;       // a resolution's wait, at most
    ngx_shm_zone_t* shm_zone;
    ngx_slab_pool_t* shpool;
    core::identity::Table* table;  // in the zone; set by the zone's init
    core::HmacSha256Key* key;      // under the secret (cache.secret), in the cycle pool
    ngx_str_t file;                // where throttle_identity is, for the secret check
    ngx_uint_t line;
};

// Per location: `throttle_identity_resolve on|off` (NGX_CONF_UNSET when unset).
struct IdentityLocConf {
    ngx_flag_t resolve;
};

// throttle_identity's defaults.
inline constexpr ngx_msec_t identity_default_ttl = 5 * 60 * 1000;
inline constexpr ngx_msec_t identity_default_negative_ttl = 10 * 1000;
inline constexpr ngx_msec_t identity_default_timeout = 1000;

}  // namespace throttle::ngx
