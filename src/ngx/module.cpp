// Module definition: directives table, configuration create/merge (each feature merges its
// own part), phase and filter registration.
#include <new>

#include "ngx/cache/cache.hpp"
#include "ngx/conf.hpp"
#include "ngx/identity/identity.hpp"
#include "ngx/identity/jwt.hpp"
#include "ngx/limit/limit.hpp"
#include "ngx/worker.hpp"

namespace throttle::ngx {
namespace {

ngx_conf_enum_t log_levels[] = {
    {ngx_string("info"), NGX_LOG_INFO},
    {ngx_string("notice"), NGX_LOG_NOTICE},
    {ngx_string("warn"), NGX_LOG_WARN},
    {ngx_string("error"), NGX_LOG_ERR},
    {ngx_null_string, 0},
};

ngx_conf_num_bounds_t status_bounds = {ngx_conf_check_num_bounds, 400, 599};

ngx_command_t commands[] = {
    {ngx_string("throttle_zone"), NGX_HTTP_MAIN_CONF | NGX_CONF_2MORE, throttle_zone_directive, 0,
     0, nullptr},
    {ngx_string("throttle_redis"), NGX_HTTP_MAIN_CONF | NGX_CONF_1MORE, throttle_redis_directive, 0,
     0, nullptr},
    {ngx_string("throttle"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     throttle_directive, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("throttle_status"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_num_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, limit.status),
     &status_bounds},
    {ngx_string("throttle_dry_run"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_FLAG,
     ngx_conf_set_flag_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, limit.dry_run), nullptr},
    {ngx_string("throttle_headers"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_FLAG,
     ngx_conf_set_flag_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, limit.headers), nullptr},
    {ngx_string("throttle_log_level"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_enum_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, limit.log_level),
     log_levels},
    {ngx_string("throttle_secret"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1, throttle_secret_directive,
     0, 0, nullptr},
    {ngx_string("throttle_cache_secret"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
     throttle_secret_directive, 0, 0, nullptr},
    {ngx_string("throttle_cache_inflate_memory"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_size_slot, NGX_HTTP_MAIN_CONF_OFFSET, offsetof(MainConf, cache.inflate_memory),
     nullptr},
    {ngx_string("throttle_cache_inflate_memo"), NGX_HTTP_MAIN_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_size_slot, NGX_HTTP_MAIN_CONF_OFFSET, offsetof(MainConf, cache.inflate_memo),
     nullptr},
    {ngx_string("throttle_cache"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     throttle_cache_directive, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("throttle_cache_local"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_1MORE,
     throttle_cache_local_directive, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("throttle_cache_user"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     throttle_cache_user_directive, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("throttle_cache_key"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     throttle_cache_key_directive, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("throttle_cache_valid"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_1MORE,
     throttle_cache_valid_directive, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("throttle_cache_stale"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_msec_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, cache.stale),
     &cache_stale_post},
    {ngx_string("throttle_cache_max_size"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_size_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, cache.max_size),
     &cache_max_size_post},
    {ngx_string("throttle_cache_gzip_min_length"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_size_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, cache.min_compress),
     nullptr},
    {ngx_string("throttle_cache_lock_timeout"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     ngx_conf_set_msec_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, cache.lock_timeout),
     &cache_lock_timeout_post},
    {ngx_string("throttle_cache_credentials"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_1MORE,
     throttle_cache_list_directive, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("throttle_cache_invalidate"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_1MORE,
     throttle_cache_list_directive, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("throttle_cache_invalidate_header"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     throttle_cache_header_directive, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("throttle_cache_purge"), NGX_HTTP_LOC_CONF | NGX_CONF_TAKE1,
     throttle_cache_purge_directive, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("throttle_jwt"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_1MORE,
     throttle_jwt_directive, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    {ngx_string("throttle_identity"), NGX_HTTP_MAIN_CONF | NGX_CONF_2MORE,
     throttle_identity_directive, 0, 0, nullptr},
    {ngx_string("throttle_identity_resolve"),
     NGX_HTTP_MAIN_CONF | NGX_HTTP_SRV_CONF | NGX_HTTP_LOC_CONF | NGX_CONF_FLAG,
     ngx_conf_set_flag_slot, NGX_HTTP_LOC_CONF_OFFSET, offsetof(LocConf, identity.resolve),
     nullptr},
    {ngx_string("throttle_metrics"), NGX_HTTP_LOC_CONF | NGX_CONF_NOARGS | NGX_CONF_TAKE1,
     throttle_metrics_directive, NGX_HTTP_LOC_CONF_OFFSET, 0, nullptr},
    ngx_null_command,
};

void* create_main_conf(ngx_conf_t* cf) noexcept {
    void* mem = ngx_pcalloc(cf->pool, sizeof(MainConf));
    if (mem == nullptr) {
        return nullptr;
    }
    auto* mcf = new (mem) MainConf{};
    mcf->cache.inflate_memory = NGX_CONF_UNSET_SIZE;
    mcf->cache.inflate_memo = NGX_CONF_UNSET_SIZE;
    if (ngx_array_init(&mcf->limit.zones, cf->pool, 4, sizeof(ZoneConf*)) != NGX_OK) {
        return nullptr;
    }
    return mcf;
}

const char* mode_text(Mode m) noexcept {
    return m == Mode::sync ? "sync" : m == Mode::strict ? "strict" : "lease";
}

char* init_main_conf(ngx_conf_t* cf, void* conf) noexcept {
    auto* mcf = static_cast<MainConf*>(conf);
    auto** zones = static_cast<ZoneConf**>(mcf->limit.zones.elts);
    for (ngx_uint_t i = 0; i < mcf->limit.zones.nelts; i++) {
        if (zones[i]->key.value.data == nullptr) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0, "unknown throttle_zone \"%V\" in %V:%ui",
                          &zones[i]->name, &zones[i]->first_use_file, zones[i]->first_use_line);
            return static_cast<char*>(NGX_CONF_ERROR);
        }
        if (zones[i]->mode != Mode::local && mcf->redis == nullptr) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "throttle_zone \"%V\" has \"mode=%s\" but \"throttle_redis\" is not "
                          "configured",
                          &zones[i]->name, mode_text(zones[i]->mode));
            return static_cast<char*>(NGX_CONF_ERROR);
        }
        if (zones[i]->mode != Mode::local && secret(*mcf).data == nullptr) {
            // Hosts find each other's counts under names only the shared secret gives.
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "throttle_zone \"%V\" has \"mode=%s\" but \"throttle_secret\" is not "
                          "set: its keys reach Redis as their keyed hash, set \"throttle_secret\" "
                          "(the same on every host)",
                          &zones[i]->name, mode_text(zones[i]->mode));
            return static_cast<char*>(NGX_CONF_ERROR);
        }
    }
    ngx_conf_init_size_value(mcf->cache.inflate_memory, default_inflate_memory);
    ngx_conf_init_size_value(mcf->cache.inflate_memo, default_inflate_memo);
    if (check_identity_main_conf(cf, *mcf) != NGX_CONF_OK) {
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    return check_cache_main_conf(cf, *mcf);
}

void* create_loc_conf(ngx_conf_t* cf) noexcept {
    void* mem = ngx_pcalloc(cf->pool, sizeof(LocConf));
    if (mem == nullptr) {
        return nullptr;
    }
    auto* lcf = new (mem) LocConf{};
    lcf->limit.zones = static_cast<ngx_array_t*>(NGX_CONF_UNSET_PTR);
    lcf->limit.status = NGX_CONF_UNSET_UINT;
    lcf->limit.dry_run = NGX_CONF_UNSET;
    lcf->limit.headers = NGX_CONF_UNSET;
    lcf->limit.log_level = NGX_CONF_UNSET_UINT;
    init_cache_loc_conf(lcf->cache);
    lcf->jwt = static_cast<JwtConf*>(NGX_CONF_UNSET_PTR);
    lcf->identity.resolve = NGX_CONF_UNSET;
    return lcf;
}

char* merge_loc_conf(ngx_conf_t* cf, void* parent, void* child) noexcept {
    LimitLocConf* prev = &static_cast<LocConf*>(parent)->limit;
    LimitLocConf* conf = &static_cast<LocConf*>(child)->limit;
    ngx_conf_merge_ptr_value(conf->zones, prev->zones, nullptr);
    ngx_conf_merge_uint_value(conf->status, prev->status, 429);
    ngx_conf_merge_value(conf->dry_run, prev->dry_run, 0);
    ngx_conf_merge_value(conf->headers, prev->headers, 1);
    ngx_conf_merge_uint_value(conf->log_level, prev->log_level, NGX_LOG_ERR);
    ngx_conf_merge_ptr_value(static_cast<LocConf*>(child)->jwt, static_cast<LocConf*>(parent)->jwt,
                             nullptr);
    if (merge_identity_loc_conf(cf, static_cast<LocConf*>(parent)->identity,
                                static_cast<LocConf*>(child)->identity) != NGX_CONF_OK) {
        return static_cast<char*>(NGX_CONF_ERROR);
    }
    return merge_cache_loc_conf(cf, static_cast<LocConf*>(parent)->cache,
                                static_cast<LocConf*>(child)->cache);
}

ngx_int_t postconfiguration(ngx_conf_t* cf) noexcept {
    auto* cmcf = static_cast<ngx_http_core_main_conf_t*>(
        ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module));
    // Pre-access, like limit_req: a rejection here cannot be overridden by `satisfy any`.
    auto* h = static_cast<ngx_http_handler_pt*>(
        ngx_array_push(&cmcf->phases[NGX_HTTP_PREACCESS_PHASE].handlers));
    if (h == nullptr) {
        return NGX_ERROR;
    }
    *h = access_handler;
    // The identity's resolution runs before the limiter reads zone keys: nginx runs a phase's
    // handlers in reverse order of registration.
    h = static_cast<ngx_http_handler_pt*>(
        ngx_array_push(&cmcf->phases[NGX_HTTP_PREACCESS_PHASE].handlers));
    if (h == nullptr) {
        return NGX_ERROR;
    }
    *h = identity_handler;
    // The cache looks up before the content phase, where proxy_pass & co. take the request.
    h = static_cast<ngx_http_handler_pt*>(
        ngx_array_push(&cmcf->phases[NGX_HTTP_PRECONTENT_PHASE].handlers));
    if (h == nullptr) {
        return NGX_ERROR;
    }
    *h = cache_handler;
    // The cache's filters go on top: they see the upstream's headers before the RateLimit
    // fields are added.
    if (install_header_filter() != NGX_OK || install_cache_filters() != NGX_OK) {
        return NGX_ERROR;
    }
    // On top of all: the forget header is gone before the cache sees the response.
    return install_identity_filter();
}

ngx_int_t preconfiguration(ngx_conf_t* cf) noexcept {
    if (add_jwt_variables(cf) != NGX_OK || add_variables(cf) != NGX_OK) {
        return NGX_ERROR;
    }
    return add_identity_variables(cf);
}

ngx_http_module_t module_ctx = {
    preconfiguration, postconfiguration, create_main_conf, init_main_conf,
    nullptr,          nullptr,           create_loc_conf,  merge_loc_conf,
};

}  // namespace
}  // namespace throttle::ngx

extern "C" {
ngx_module_t ngx_http_throttle_module = {
    NGX_MODULE_UNSET_INDEX,
    NGX_MODULE_UNSET_INDEX,
    nullptr,
    0,
    0,
    nginx_version,
    const_cast<char*>(NGX_MODULE_SIGNATURE),
    &throttle::ngx::module_ctx,
    throttle::ngx::commands,
    NGX_HTTP_MODULE,
    nullptr,
    nullptr,
    throttle::ngx::init_worker,
    nullptr,
    nullptr,
    throttle::ngx::exit_worker,
    nullptr,
    NGX_MODULE_V1_PADDING,
};
}
