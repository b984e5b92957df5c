// What `throttle_jwt` configures (layer: ngx; shared by jwt_directive.cpp and
// jwt_variables.cpp only).
#pragma once

#include <string>

#include "core/jwt.hpp"
#include "ngx/identity/jwt.hpp"

namespace throttle::ngx {

// Verified tokens a worker remembers, per throttle_jwt, and for how long at most.
constexpr size_t default_jwt_cache_entries = 1024;
constexpr int64_t jwt_cache_ttl_s = 60;

// One per `throttle_jwt` directive (locations inherit the pointer); on the heap, deleted by a
// cleanup of the configuration's pool. The cache is per worker: each worker mutates its own copy.
struct JwtConf {
    JwtConf(core::jwt::KeySet keys, core::jwt::Policy policy, size_t cache_entries)
        : verifier(std::move(keys), std::move(policy)), cache(cache_entries, jwt_cache_ttl_s) {}

    bool cookie = false;                 // the token is in a cookie, else in a header
    bool authorization = true;           // the header is Authorization: "Bearer " is required
    std::string name = "authorization";  // the header's (lowercase) or the cookie's name
    core::jwt::Verifier verifier;
    core::jwt::TokenCache cache;
};

}  // namespace throttle::ngx
