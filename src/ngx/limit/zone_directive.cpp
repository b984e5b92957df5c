// throttle_zone KEY zone=NAME:SIZE rate=RATE [algorithm=sliding|gcra] [burst=N];
#include <string_view>

#include "core/rate.hpp"
#include "ngx/limit/limit.hpp"
#include "ngx/directive_args.hpp"
#include "redis/scripts.hpp"

namespace throttle::ngx {
namespace {

// Zone names appear quoted in response headers (RFC 8941 strings) and JSON bodies.
bool valid_zone_name(const ngx_str_t& name) noexcept {
    for (size_t i = 0; i < name.len; i++) {
        u_char c = name.data[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-' || c == '.';
        if (!ok) {
            return false;
        }
    }
    return true;
}

}  // namespace

char* throttle_zone_directive(ngx_conf_t* cf, ngx_command_t*, void*) noexcept {
    auto* mcf = static_cast<MainConf*>(
        ngx_http_conf_get_module_main_conf(cf, ngx_http_throttle_module));
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);

    if (value[1].len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid key \"\": a zone needs a key");
        return conf_error();
    }
    ngx_http_complex_value_t key;
    ngx_http_compile_complex_value_t ccv;
    ngx_memzero(&ccv, sizeof(ccv));
    ngx_memzero(&key, sizeof(key));
    ccv.cf = cf;
    ccv.value = &value[1];
    ccv.complex_value = &key;
    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return conf_error();
    }

    ngx_str_t name = ngx_null_string;
    ssize_t size = 0;
    core::Policy policy;
    bool have_rate = false;
    bool have_burst = false;
    const ngx_str_t* burst_arg = nullptr;
    Mode mode = Mode::local;
    Fallback fallback = Fallback::local;
    ngx_msec_t sync_interval = 1000;
    const ngx_str_t* sync_arg = nullptr;

    for (ngx_uint_t i = 2; i < cf->args->nelts; i++) {
        const ngx_str_t& v = value[i];
        if (starts_with(v, "zone=")) {
            name.data = v.data + 5;
            auto* colon = static_cast<u_char*>(ngx_strlchr(name.data, v.data + v.len, ':'));
            if (colon == nullptr) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid zone size \"%V\"", &v);
                return conf_error();
            }
            name.len = colon - name.data;
            if (name.len == 0 || !valid_zone_name(name)) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid zone name \"%V\"", &v);
                return conf_error();
            }
            ngx_str_t s;
            s.data = colon + 1;
            s.len = v.data + v.len - s.data;
            size = ngx_parse_size(&s);
            if (size == NGX_ERROR || size == 0) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid zone size \"%V\"", &v);
                return conf_error();
            }
            if (size < static_cast<ssize_t>(8 * ngx_pagesize)) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "zone \"%V\" is too small", &name);
                return conf_error();
            }
            continue;
        }
        if (starts_with(v, "rate=")) {
            if (!core::parse_rate(after(v, 5), policy.rate)) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid rate \"%V\"", &v);
                return conf_error();
            }
            have_rate = true;
            continue;
        }
        if (starts_with(v, "algorithm=")) {
            std::string_view a = after(v, 10);
            if (a == "sliding") {
                policy.algorithm = core::Algorithm::sliding;
            } else if (a == "gcra") {
                policy.algorithm = core::Algorithm::gcra;
            } else {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid algorithm \"%V\"", &v);
                return conf_error();
            }
            continue;
        }
        if (starts_with(v, "burst=")) {
            ngx_int_t burst = ngx_atoi(v.data + 6, v.len - 6);
            if (burst == NGX_ERROR || burst <= 0 ||
                static_cast<uint64_t>(burst) > core::max_rate_limit) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid burst \"%V\"", &v);
                return conf_error();
            }
            policy.burst = static_cast<uint64_t>(burst);
            have_burst = true;
            burst_arg = &v;
            continue;
        }
        if (starts_with(v, "mode=")) {
            std::string_view m = after(v, 5);
            if (m == "local") {
                mode = Mode::local;
            } else if (m == "sync") {
                mode = Mode::sync;
            } else if (m == "strict") {
                mode = Mode::strict;
            } else {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid mode \"%V\"", &v);
                return conf_error();
            }
            continue;
        }
        if (starts_with(v, "sync=")) {
            ngx_str_t t{v.len - 5, v.data + 5};
            ngx_msec_t ms = ngx_parse_time(&t, 0);
            if (ms == static_cast<ngx_msec_t>(NGX_ERROR) || ms < 10) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "invalid sync interval \"%V\" (10ms at least)", &v);
                return conf_error();
            }
            sync_interval = ms;
            sync_arg = &v;
            continue;
        }
        if (starts_with(v, "fallback=")) {
            std::string_view f = after(v, 9);
            if (f == "local") {
                fallback = Fallback::local;
            } else if (f == "open") {
                fallback = Fallback::open;
            } else if (f == "closed") {
                fallback = Fallback::closed;
            } else {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid fallback \"%V\"", &v);
                return conf_error();
            }
            continue;
        }
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid parameter \"%V\"", &v);
        return conf_error();
    }

    if (name.len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\" must have \"zone\" parameter", &value[0]);
        return conf_error();
    }
    if (!have_rate) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\" must have \"rate\" parameter", &value[0]);
        return conf_error();
    }
    if (have_burst && policy.algorithm != core::Algorithm::gcra) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"burst\" requires \"algorithm=gcra\" in \"%V\"",
                           burst_arg);
        return conf_error();
    }

    if (sync_arg != nullptr && mode != Mode::sync) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\" requires \"mode=sync\"", sync_arg);
        return conf_error();
    }
    if (mode == Mode::sync && policy.algorithm != core::Algorithm::sliding) {
        // A GCRA arrival time is not a count: hosts cannot add theirs up.
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"mode=sync\" requires \"algorithm=sliding\" (use \"mode=strict\" "
                           "for gcra across hosts)");
        return conf_error();
    }
    if (mode == Mode::strict &&
        !redis::strict_exact(static_cast<uint8_t>(policy.algorithm), policy.rate.limit,
                             policy.rate.period_ms, policy.burst)) {
        // Redis' Lua computes in doubles: exact below 2^53 only.
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "rate too large for \"mode=strict\"");
        return conf_error();
    }

    ZoneConf* zone = find_or_add_zone(cf, mcf, name);
    if (zone == nullptr) {
        return conf_error();
    }
    if (zone->key.value.data != nullptr) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "duplicate zone \"%V\"", &name);
        return conf_error();
    }
    ngx_shm_zone_t* shm_zone =
        ngx_shared_memory_add(cf, &zone->name, size, &ngx_http_throttle_module);
    if (shm_zone == nullptr) {
        return conf_error();
    }
    zone->key = key;
    zone->policy = policy;
    size_t len = zone->name.len + sizeof("\"\";q=;w=") + 2 * NGX_INT64_LEN;
    zone->policy_header.data = static_cast<u_char*>(ngx_pnalloc(cf->pool, len));
    if (zone->policy_header.data == nullptr) {
        return conf_error();
    }
    zone->policy_header.len =
        ngx_sprintf(zone->policy_header.data, "\"%V\";q=%uL;w=%L", &zone->name,
                    core::quota(policy), core::window_seconds(policy)) -
        zone->policy_header.data;
    zone->mode = mode;
    zone->fallback = fallback;
    zone->sync_interval = sync_interval;
    if (mode != Mode::local) {
        mcf->limit.remote_zones = true;
    }
    zone->shm_zone = shm_zone;
    shm_zone->init = init_zone;
    shm_zone->data = zone;
    return NGX_CONF_OK;
}

}  // namespace throttle::ngx
