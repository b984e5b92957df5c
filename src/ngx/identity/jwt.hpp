// Verified identity from a JWT (layer: ngx): the `throttle_jwt` directive and the variables
// $throttle_jwt_status and $throttle_jwt_claim_NAME. The token is verified (core/jwt.hpp) the
// first time a request asks for one of them, once per request; valid tokens are remembered per
// worker, so a repeated token costs a SHA-256 and a hash lookup.
#pragma once

#include "ngx/ngx.hpp"

namespace throttle::ngx {

struct JwtConf;  // jwt_directive.cpp; LocConf::jwt (nullptr: none, or `throttle_jwt off`)

// throttle_jwt off | key=... | jwks=... [header=NAME | cookie=NAME] [alg=LIST] [leeway=TIME]
//              [iss=STR] [aud=STR] [cache=N];
char* throttle_jwt_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
ngx_int_t add_jwt_variables(ngx_conf_t* cf) noexcept;

}  // namespace throttle::ngx
