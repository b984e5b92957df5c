// The response cache's entry points (layer: ngx), for the module definition and the worker.
#pragma once

#include "ngx/conf.hpp"

namespace throttle::ngx {

// directives.cpp
char* throttle_cache_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* throttle_cache_user_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* throttle_cache_key_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* throttle_cache_valid_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* throttle_cache_list_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* throttle_cache_purge_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
char* throttle_cache_header_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept;
// Range checks of throttle_cache_max_size, _lock_timeout and _stale, run when the directive is
// read (nginx -t points at its line).
extern ngx_conf_post_t cache_max_size_post;
extern ngx_conf_post_t cache_lock_timeout_post;
extern ngx_conf_post_t cache_stale_post;
void init_cache_loc_conf(CacheLocConf& conf) noexcept;
char* merge_cache_loc_conf(ngx_conf_t* cf, const CacheLocConf& prev, CacheLocConf& conf) noexcept;
char* check_cache_main_conf(ngx_conf_t* cf, const MainConf& mcf) noexcept;

// handler.cpp (pre-content phase), filter.cpp, purge.cpp (a location's content handler)
ngx_int_t cache_handler(ngx_http_request_t* r) noexcept;
ngx_int_t install_cache_filters() noexcept;
ngx_int_t cache_purge_handler(ngx_http_request_t* r) noexcept;

}  // namespace throttle::ngx
