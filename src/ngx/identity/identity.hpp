// Verified identity's entry points (layer: ngx), for the module definition and the worker.
#pragma once

#include "ngx/conf.hpp"

namespace throttle::ngx {

// directives.cpp
char* throttle_identity_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
// The secret (nginx -t fails without it) and the HMAC key made from it.
char* check_identity_main_conf(ngx_conf_t* cf, MainConf& mcf) noexcept;
char* merge_identity_loc_conf(ngx_conf_t* cf, const IdentityLocConf& prev,
                              IdentityLocConf& conf) noexcept;

// resolve.cpp: the pre-access handler that resolves the request's credential (it runs before
// the rate limiter's), $throttle_user_id, the forget header's filter.
ngx_int_t identity_handler(ngx_http_request_t* r) noexcept;
ngx_int_t add_identity_variables(ngx_conf_t* cf) noexcept;
ngx_int_t install_identity_filter() noexcept;

// worker start and end; identity_worker_redis() registers the script and commands with the
// worker's Redis client (may throw)
void identity_worker_init(const MainConf& mcf) noexcept;
void identity_worker_redis(const MainConf& mcf);
void identity_worker_exit() noexcept;

}  // namespace throttle::ngx
