// The response cache's directives (grammar in README.md, "Response cache"):
//   (throttle_cache_secret: an alias of throttle_secret, in ngx/secret_directive.cpp)
//   throttle_cache NAME | off;                             http, server, location
//   throttle_cache_user VALUE;                             (variables allowed)
//   throttle_cache_key VALUE;                              (variables allowed)
//   throttle_cache_valid [CODE ... | any] TIME;            like proxy_cache_valid
//   throttle_cache_stale TIME;  throttle_cache_max_size SIZE;
//   throttle_cache_gzip_min_length SIZE;  throttle_cache_lock_timeout TIME;
//   throttle_cache_credentials HEADER ... | off;
//   throttle_cache_invalidate NAME ...;
//   throttle_cache_invalidate_header NAME | off;
//   throttle_cache_purge VALUE;                            location
// The namespaces throttle_cache and throttle_cache_invalidate name are registered for the
// counters (issue 11, ngx/metrics.hpp): each has its entry when some location has
// throttle_metrics.
#include <new>
#include <vector>

#include "core/cache_entry.hpp"
#include "core/cache_identity.hpp"
#include "core/cache_key.hpp"
#include "ngx/cache/cache.hpp"
#include "ngx/directive_args.hpp"
#include "ngx/metrics.hpp"
#include "redis/cache_scripts.hpp"

namespace throttle::ngx {
namespace {

void mark_used(ngx_conf_t* cf) noexcept {
    main_conf(cf)->cache.used = true;
}

char* check_max_size(ngx_conf_t*, void*, void* data) noexcept {
    size_t v = *static_cast<size_t*>(data);
    return v == 0 || v > 64 * 1024 * 1024 ? const_cast<char*>("must be between 1 and 64m")
                                          : NGX_CONF_OK;
}
// A waiter waits at most this long for another request's fill; a lock outlives a filler that
// died by at most this long. Minutes of either are never what an operator means.
char* check_lock_timeout(ngx_conf_t*, void*, void* data) noexcept {
    ngx_msec_t ms = *static_cast<ngx_msec_t*>(data);
    return ms == 0      ? const_cast<char*>("must not be 0")
           : ms > 60000 ? const_cast<char*>("must not be longer than 60s")
                        : NGX_CONF_OK;
}
char* check_stale(ngx_conf_t*, void*, void* data) noexcept {
    return *static_cast<ngx_msec_t*>(data) > static_cast<ngx_msec_t>(redis::cache_generation_ttl_ms)
               ? const_cast<char*>("must not be longer than 30 days")
               : NGX_CONF_OK;
}

bool check_namespace(ngx_conf_t* cf, const ngx_str_t& v) noexcept {
    if (!core::cache::valid_namespace(view(v))) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid namespace \"%V\": 1 to 64 of A-Z a-z 0-9 _ . -", &v);
        return false;
    }
    return true;
}

ngx_array_t* default_credentials(ngx_conf_t* cf) noexcept {
    ngx_array_t* a = ngx_array_create(cf->pool, 2, sizeof(ngx_str_t));
    if (a == nullptr) {
        return nullptr;
    }
    auto* c = static_cast<ngx_str_t*>(ngx_array_push_n(a, 2));
    if (c == nullptr) {
        return nullptr;
    }
    ngx_str_set(&c[0], "cookie");
    ngx_str_set(&c[1], "authorization");
    return a;
}

// Compiles the directive's argument into a complex value (variables allowed).
char* complex_value(ngx_conf_t* cf, ngx_http_complex_value_t*& out) noexcept {
    if (out != NGX_CONF_UNSET_PTR && out != nullptr) {
        return const_cast<char*>("is duplicate");
    }
    auto* cv = static_cast<ngx_http_complex_value_t*>(
        ngx_pcalloc(cf->pool, sizeof(ngx_http_complex_value_t)));
    if (cv == nullptr) {
        return conf_error();
    }
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    ngx_http_compile_complex_value_t ccv;
    ngx_memzero(&ccv, sizeof(ccv));
    ccv.cf = cf;
    ccv.value = &value[1];
    ccv.complex_value = cv;
    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return conf_error();
    }
    out = cv;
    return NGX_CONF_OK;
}

}  // namespace

ngx_conf_post_t cache_max_size_post = {check_max_size};
ngx_conf_post_t cache_lock_timeout_post = {check_lock_timeout};
ngx_conf_post_t cache_stale_post = {check_stale};

char* throttle_cache_directive(ngx_conf_t* cf, ngx_command_t*, void* conf) noexcept {
    auto* lcf = static_cast<LocConf*>(conf);
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    if (char* rv = nullptr; set_once_or_off(lcf->cache.ns, value[1], rv)) {
        return rv;
    }
    if (!check_namespace(cf, value[1])) {
        return conf_error();
    }
    lcf->cache.metrics = cache_metrics_ref(cf, value[1]);
    if (lcf->cache.metrics == nullptr) {
        return conf_error();
    }
    lcf->cache.ns = value[1];
    mark_used(cf);
    return NGX_CONF_OK;
}

namespace {

// The cookies and headers the identity (or the key) reads, to refuse requests that send one
// twice.
char* identity_sources(ngx_conf_t* cf, const ngx_str_t& value, ngx_array_t*& out) {
    std::vector<core::cache::IdentityVariable> vars = core::cache::identity_variables(view(value));
    out = ngx_array_create(cf->pool, vars.empty() ? 1 : vars.size(), sizeof(IdentitySource));
    if (out == nullptr) {
        return conf_error();
    }
    for (const core::cache::IdentityVariable& v : vars) {
        auto* src = static_cast<IdentitySource*>(ngx_array_push(out));
        if (src == nullptr) {
            return conf_error();
        }
        src->cookie = v.kind == core::cache::IdentityVariable::Kind::cookie;
        src->name.len = v.name.size();
        src->name.data = static_cast<u_char*>(ngx_pnalloc(cf->pool, v.name.size()));
        if (src->name.data == nullptr) {
            return conf_error();
        }
        ngx_memcpy(src->name.data, v.name.data(), v.name.size());
    }
    return NGX_CONF_OK;
}

}  // namespace

char* throttle_cache_user_directive(ngx_conf_t* cf, ngx_command_t*, void* conf) noexcept {
    MainConf* mcf = main_conf(cf);
    if (mcf->cache.user_file.data == nullptr) {
        mcf->cache.user_file = cf->conf_file->file.name;
        mcf->cache.user_line = cf->conf_file->line;
    }
    CacheLocConf& lc = static_cast<LocConf*>(conf)->cache;
    char* rv = complex_value(cf, lc.user);
    if (rv != NGX_CONF_OK) {
        return rv;
    }
    try {
        const ngx_str_t& value = static_cast<ngx_str_t*>(cf->args->elts)[1];
        lc.user_verified = core::cache::identity_verified(view(value));
        return identity_sources(cf, value, lc.user_sources);
    } catch (...) {
        return conf_error();
    }
}

// throttle_cache_key: the $http_ names of the headers it reads, joined by ','.
char* key_headers(ngx_conf_t* cf, CacheLocConf& lc) noexcept {
    auto* sources = static_cast<IdentitySource*>(lc.key_sources->elts);
    size_t len = 0;
    for (ngx_uint_t i = 0; i < lc.key_sources->nelts; i++) {
        len += sources[i].cookie ? 0 : sources[i].name.len + 1;
    }
    lc.key_headers.len = 0;
    lc.key_headers.data = static_cast<u_char*>(ngx_pnalloc(cf->pool, len + 1));
    if (lc.key_headers.data == nullptr) {
        return conf_error();
    }
    for (ngx_uint_t i = 0; i < lc.key_sources->nelts; i++) {
        if (sources[i].cookie) {
            continue;
        }
        if (lc.key_headers.len > 0) {
            lc.key_headers.data[lc.key_headers.len++] = ',';
        }
        ngx_memcpy(lc.key_headers.data + lc.key_headers.len, sources[i].name.data,
                   sources[i].name.len);
        lc.key_headers.len += sources[i].name.len;
    }
    return NGX_CONF_OK;
}

char* throttle_cache_key_directive(ngx_conf_t* cf, ngx_command_t*, void* conf) noexcept {
    CacheLocConf& lc = static_cast<LocConf*>(conf)->cache;
    char* rv = complex_value(cf, lc.key);
    if (rv != NGX_CONF_OK) {
        return rv;
    }
    try {
        rv = identity_sources(cf, static_cast<ngx_str_t*>(cf->args->elts)[1], lc.key_sources);
    } catch (...) {
        return conf_error();
    }
    return rv != NGX_CONF_OK ? rv : key_headers(cf, lc);
}

char* throttle_cache_valid_directive(ngx_conf_t* cf, ngx_command_t*, void* conf) noexcept {
    auto* lcf = static_cast<LocConf*>(conf);
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    ngx_uint_t n = cf->args->nelts;
    ngx_str_t& time = value[n - 1];
    ngx_int_t ms = ngx_parse_time(&time, 0);
    if (ms == NGX_ERROR || ms <= 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid time value \"%V\"", &time);
        return conf_error();
    }
    if (ms > redis::cache_generation_ttl_ms) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "time \"%V\" is longer than 30 days", &time);
        return conf_error();
    }
    if (lcf->cache.valid == NGX_CONF_UNSET_PTR) {
        lcf->cache.valid = ngx_array_create(cf->pool, 4, sizeof(core::cache::ValidTime));
        if (lcf->cache.valid == nullptr) {
            return conf_error();
        }
    }
    auto add = [&](uint16_t status) -> bool {
        auto* v = static_cast<core::cache::ValidTime*>(ngx_array_push(lcf->cache.valid));
        if (v == nullptr) {
            return false;
        }
        v->status = status;
        v->ttl_ms = ms;
        return true;
    };
    if (n == 2) {  // only a time: 200, 301 and 302, as proxy_cache_valid
        return add(200) && add(301) && add(302) ? NGX_CONF_OK : conf_error();
    }
    for (ngx_uint_t i = 1; i < n - 1; i++) {
        if (view(value[i]) == "any") {
            if (!add(0)) {
                return conf_error();
            }
            continue;
        }
        ngx_int_t status = ngx_atoi(value[i].data, value[i].len);
        if (status < 200 || status > 599) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid status \"%V\"", &value[i]);
            return conf_error();
        }
        if (status >= 500 || status == 206 || status == 304) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "status \"%V\" is never stored (5xx, 206 and 304 are not)",
                               &value[i]);
            return conf_error();
        }
        if (!add(static_cast<uint16_t>(status))) {
            return conf_error();
        }
    }
    return NGX_CONF_OK;
}

// throttle_cache_credentials and throttle_cache_invalidate: lists of names.
char* throttle_cache_list_directive(ngx_conf_t* cf, ngx_command_t* cmd, void* conf) noexcept {
    auto* lcf = static_cast<LocConf*>(conf);
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    bool credentials = cmd->name.len == sizeof("throttle_cache_credentials") - 1;
    ngx_array_t*& list = credentials ? lcf->cache.credentials : lcf->cache.invalidate;
    if (list != NGX_CONF_UNSET_PTR) {
        return const_cast<char*>("is duplicate");
    }
    if (credentials && cf->args->nelts == 2 && is_off(value[1])) {
        list = nullptr;
        return NGX_CONF_OK;
    }
    list = ngx_array_create(cf->pool, cf->args->nelts - 1, sizeof(ngx_str_t));
    if (list == nullptr) {
        return conf_error();
    }
    for (ngx_uint_t i = 1; i < cf->args->nelts; i++) {
        if (!credentials &&
            (!check_namespace(cf, value[i]) || cache_metrics_ref(cf, value[i]) == nullptr)) {
            return conf_error();
        }
        if (credentials && !valid_header_name(value[i])) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid header name \"%V\"", &value[i]);
            return conf_error();
        }
        auto* s = static_cast<ngx_str_t*>(ngx_array_push(list));
        if (s == nullptr) {
            return conf_error();
        }
        *s = value[i];
        if (credentials) {
            s->data = static_cast<u_char*>(ngx_pnalloc(cf->pool, value[i].len));
            if (s->data == nullptr) {
                return conf_error();
            }
            ngx_strlow(s->data, value[i].data, value[i].len);
        }
    }
    if (!credentials) {
        mark_used(cf);
    }
    return NGX_CONF_OK;
}

char* throttle_cache_header_directive(ngx_conf_t* cf, ngx_command_t*, void* conf) noexcept {
    auto* lcf = static_cast<LocConf*>(conf);
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    if (char* rv = nullptr; set_once_or_off(lcf->cache.invalidate_header, value[1], rv)) {
        return rv;
    }
    if (!valid_header_name(value[1])) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid header name \"%V\"", &value[1]);
        return conf_error();
    }
    lcf->cache.invalidate_header = value[1];
    return NGX_CONF_OK;
}

char* throttle_cache_purge_directive(ngx_conf_t* cf, ngx_command_t*, void* conf) noexcept {
    auto* lcf = static_cast<LocConf*>(conf);
    char* rv = complex_value(cf, lcf->cache.purge);
    if (rv != NGX_CONF_OK) {
        return rv;
    }
    auto* clcf = static_cast<ngx_http_core_loc_conf_t*>(
        ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module));
    clcf->handler = cache_purge_handler;
    mark_used(cf);
    return NGX_CONF_OK;
}

void init_cache_loc_conf(CacheLocConf& conf) noexcept {
    conf.metrics = nullptr;  // set with ns
    conf.user = static_cast<ngx_http_complex_value_t*>(NGX_CONF_UNSET_PTR);
    conf.user_sources = nullptr;
    conf.user_verified = false;
    conf.key = static_cast<ngx_http_complex_value_t*>(NGX_CONF_UNSET_PTR);
    conf.key_sources = nullptr;
    ngx_str_null(&conf.key_headers);
    conf.valid = static_cast<ngx_array_t*>(NGX_CONF_UNSET_PTR);
    conf.stale = NGX_CONF_UNSET_MSEC;
    conf.max_size = NGX_CONF_UNSET_SIZE;
    conf.min_compress = NGX_CONF_UNSET_SIZE;
    conf.lock_timeout = NGX_CONF_UNSET_MSEC;
    conf.credentials = static_cast<ngx_array_t*>(NGX_CONF_UNSET_PTR);
    conf.invalidate = static_cast<ngx_array_t*>(NGX_CONF_UNSET_PTR);
    conf.purge = nullptr;  // not inherited: it is the location's handler
    conf.local.zone = static_cast<CacheLocalZone*>(NGX_CONF_UNSET_PTR);
}

// The values' ranges were checked when their directives were read (the *_post handlers).
char* merge_cache_loc_conf(ngx_conf_t* cf, const CacheLocConf& prev, CacheLocConf& conf) noexcept {
    if (conf.ns.data == nullptr) {
        conf.ns = prev.ns;
        conf.metrics = prev.metrics;
    }
    if (conf.user == NGX_CONF_UNSET_PTR) {
        conf.user = prev.user == NGX_CONF_UNSET_PTR ? nullptr : prev.user;
        conf.user_sources = prev.user_sources;
        conf.user_verified = prev.user_verified;
    }
    if (conf.key == NGX_CONF_UNSET_PTR) {
        conf.key = prev.key == NGX_CONF_UNSET_PTR ? nullptr : prev.key;
        conf.key_sources = prev.key_sources;
        conf.key_headers = prev.key_headers;
    }
    ngx_conf_merge_ptr_value(conf.valid, prev.valid, nullptr);
    ngx_conf_merge_msec_value(conf.stale, prev.stale, 0);
    ngx_conf_merge_size_value(conf.max_size, prev.max_size, 1024 * 1024);
    ngx_conf_merge_size_value(conf.min_compress, prev.min_compress, 1024);
    ngx_conf_merge_msec_value(conf.lock_timeout, prev.lock_timeout, 5000);
    if (conf.credentials == NGX_CONF_UNSET_PTR) {
        conf.credentials = prev.credentials;
    }
    if (conf.credentials == NGX_CONF_UNSET_PTR) {
        conf.credentials = default_credentials(cf);
        if (conf.credentials == nullptr) {
            return conf_error();
        }
    }
    ngx_conf_merge_ptr_value(conf.invalidate, prev.invalidate, nullptr);
    if (conf.invalidate_header.data == nullptr) {
        conf.invalidate_header = prev.invalidate_header;
    }
    if (conf.invalidate_header.data == nullptr) {
        ngx_str_set(&conf.invalidate_header, "X-Throttle-Invalidate");
    }
    if (conf.local.zone == NGX_CONF_UNSET_PTR) {
        conf.local = prev.local;
        if (conf.local.zone == NGX_CONF_UNSET_PTR) {
            conf.local.zone = nullptr;
        }
    }
    if (conf.local.zone != nullptr && conf.local.max_size > conf.max_size) {
        conf.local.max_size = conf.max_size;  // nothing larger is stored anyway
    }
    return NGX_CONF_OK;
}

char* check_cache_main_conf(ngx_conf_t* cf, const MainConf& main) noexcept {
    const MainConf* mcf = &main;
    if (mcf->cache.used && mcf->redis == nullptr) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "the response cache (\"throttle_cache\") needs \"throttle_redis\"");
        return conf_error();
    }
    if (mcf->cache.user_file.data != nullptr && mcf->cache.secret.data == nullptr) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"throttle_cache_user\" in %V:%ui needs \"throttle_secret\" (the "
                      "key that hashes identities before they reach Redis)",
                      &mcf->cache.user_file, mcf->cache.user_line);
        return conf_error();
    }
    return check_cache_local_zones(cf, *mcf);
}

}  // namespace throttle::ngx
