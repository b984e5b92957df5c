// The response cache's configuration (layer: ngx; directives in cache/directives.cpp).
#pragma once

#include "ngx/cache/local.hpp"
#include "ngx/ngx.hpp"

namespace throttle::ngx {

struct CacheMetricsRef;  // ngx/metrics.hpp

// http{}
struct CacheMainConf {
    bool used;            // some location uses a throttle_cache* directive
    ngx_str_t secret;     // throttle_secret (alias throttle_cache_secret); data == nullptr: unset
    ngx_str_t user_file;  // where throttle_cache_user was first used (secret check)
    ngx_uint_t user_line;
    size_t inflate_memory;  // throttle_cache_inflate_memory: per worker, bytes of inflated bodies
    size_t inflate_memo;    // throttle_cache_inflate_memo: per worker, the memo's bytes
    ngx_array_t* local_zones;  // of CacheLocalZone* (throttle_cache_local); nullptr: none
};

// throttle_cache_inflate_memory's default.
inline constexpr size_t default_inflate_memory = 32 * 1024 * 1024;
// throttle_cache_inflate_memo's default: as much as the memo of 64 bodies of up to 256 KB it
// replaced could hold.
inline constexpr size_t default_inflate_memo = 16 * 1024 * 1024;

// A $cookie_NAME or $http_NAME variable throttle_cache_user or throttle_cache_key reads
// (core::cache::identity_variables): a request that sends it more than once bypasses the cache.
struct IdentitySource {
    bool cookie;     // $cookie_NAME; else $http_NAME
    ngx_str_t name;  // lowercase: "sessionid", "x_token"
};

// Whether one of these sources (an array of IdentitySource; nullptr: none) is sent more than
// once: nginx reads the first, the application may read the last (Django does), so the two
// could read different users or languages (core/cache_identity.hpp). The cache bypasses such a
// request; throttle_identity treats it as anonymous.
bool sent_twice(ngx_http_request_t* r, const ngx_array_t* list) noexcept;

// Per location. Unset values are NGX_CONF_UNSET*.
struct CacheLocConf {
    ngx_str_t ns;                    // throttle_cache NAME; len 0: off; data null: unset
    CacheMetricsRef* metrics;        // ns's counters, set and inherited with ns; never nullptr
                                     // when ns.len > 0 (->m is nullptr when metrics are off)
    ngx_http_complex_value_t* user;  // throttle_cache_user; nullptr: anonymous
    ngx_array_t* user_sources;       // of IdentitySource, set and inherited with `user`
    bool user_verified;              // `user` names $throttle_user_id or $throttle_jwt_claim_*
                                     // (core::cache::identity_verified), inherited with it
    ngx_http_complex_value_t* key;   // throttle_cache_key: the key's extra; nullptr: none
    ngx_array_t* key_sources;        // of IdentitySource, set and inherited with `key`
    ngx_str_t key_headers;           // its $http_ names joined by ',': Vary on them is fine
    ngx_array_t* valid;              // of core::cache::ValidTime; nullptr: none
    ngx_msec_t stale;
    size_t max_size;
    size_t min_compress;
    ngx_msec_t lock_timeout;
    ngx_array_t* credentials;         // of ngx_str_t, lowercase names; nullptr: off
    ngx_array_t* invalidate;          // of ngx_str_t namespaces; nullptr: none
    ngx_str_t invalidate_header;      // len 0: off; data null: unset
    ngx_http_complex_value_t* purge;  // throttle_cache_purge's namespace
    CacheLocalConf local;             // throttle_cache_local; zone NGX_CONF_UNSET_PTR: unset
};

// Whether the location looks up and stores responses / acts on writes.
inline bool cache_enabled(const CacheLocConf& c) noexcept {
    return c.ns.len > 0;
}

}  // namespace throttle::ngx
