// Verified identity's directives (grammar in README.md, "Verified identity: sessions"):
//   throttle_identity VALUE resolve=URI zone=NAME:SIZE [ttl=TIME] [negative_ttl=TIME]
//                     [timeout=TIME] [forget_header=NAME];                        http
//   throttle_identity_resolve on | off;                        http, server, location
#include <new>
#include <vector>

#include "core/cache_identity.hpp"
#include "core/identity_table.hpp"
#include "ngx/directive_args.hpp"
#include "ngx/identity/identity.hpp"
#include "ngx/shm_zone.hpp"

namespace throttle::ngx {
namespace {

// The identity store's shared memory has a tag of its own: a throttle_zone of the same name is
// refused by nginx ("already declared for a different use").
const char identity_zone_tag = 0;

// What every worker shares: where the table lies in the zone.
ngx_int_t init_identity_zone(ngx_shm_zone_t* shm_zone, void* data) noexcept {
    auto* icf = static_cast<IdentityMainConf*>(shm_zone->data);
    auto* old = static_cast<IdentityMainConf*>(data);
    if (old != nullptr) {  // reload, same name and size: keep the resolutions
        icf->shpool = old->shpool;
        auto* r = static_cast<ShmRegion*>(icf->shpool->data);
        icf->table = keep_table<core::identity::Table>(icf->shpool, r->mem, r->bytes);
        return icf->table != nullptr ? NGX_OK : NGX_ERROR;
    }
    icf->shpool = reinterpret_cast<ngx_slab_pool_t*>(shm_zone->shm.addr);
    void* mem;
    size_t bytes;
    auto* r = static_cast<ShmRegion*>(
        shm_zone_fresh(shm_zone, "throttle_identity zone", sizeof(ShmRegion), mem, bytes));
    if (r == nullptr) {
        return NGX_ERROR;
    }
    icf->table = mem ? core::identity::Table::create(mem, bytes) : nullptr;
    if (icf->table == nullptr) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0, "zone \"%V\" is too small",
                      &shm_zone->shm.name);
        return NGX_ERROR;
    }
    r->mem = mem;
    r->bytes = bytes;
    icf->shpool->data = r;
    ngx_log_error(NGX_LOG_INFO, shm_zone->shm.log, 0, "throttle_identity zone \"%V\" holds %uz",
                  &shm_zone->shm.name, icf->table->capacity());
    return NGX_OK;
}

bool parse_zone(ngx_conf_t* cf, const Param& p, IdentityMainConf& icf) noexcept {
    auto* colon = static_cast<u_char*>(ngx_strlchr(p.value.data, p.value.data + p.value.len, ':'));
    if (colon == nullptr || colon == p.value.data) {
        return invalid(cf, p, "zone");
    }
    ngx_str_t name{static_cast<size_t>(colon - p.value.data), p.value.data};
    ngx_str_t s{static_cast<size_t>(p.value.data + p.value.len - (colon + 1)), colon + 1};
    ssize_t size = ngx_parse_size(&s);
    if (size == NGX_ERROR || size == 0) {
        return invalid(cf, p, "zone size");
    }
    if (size < static_cast<ssize_t>(8 * ngx_pagesize)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "zone \"%V\" is too small", &name);
        return false;
    }
    icf.shm_zone = ngx_shared_memory_add(cf, &name, size, const_cast<char*>(&identity_zone_tag));
    if (icf.shm_zone == nullptr) {
        return false;
    }
    if (icf.shm_zone->data != nullptr) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "duplicate zone \"%V\"", &name);
        return false;
    }
    icf.shm_zone->init = init_identity_zone;
    icf.shm_zone->data = &icf;
    return true;
}

bool parse_param(ngx_conf_t* cf, Params& params, const Param& p, IdentityMainConf& icf) noexcept {
    constexpr ngx_msec_t day = 24 * 3600 * 1000;
    if (p.name == "resolve") {
        if (p.value.len == 0 || p.value.data[0] != '/') {
            return invalid(cf, p, "resolve URI", " (a local URI, e.g. \"/_identity\")");
        }
        icf.resolve = p.value;
        return true;
    }
    if (p.name == "zone") {
        return parse_zone(cf, p, icf);
    }
    if (p.name == "ttl") {
        return parse_msec(cf, p, 1000, day, "ttl", icf.ttl, " (1s to 1d)");
    }
    if (p.name == "negative_ttl") {
        return parse_msec(cf, p, 1000, day, "negative_ttl", icf.negative_ttl, " (1s to 1d)");
    }
    if (p.name == "timeout") {
        return parse_msec(cf, p, 1, 60000, "timeout", icf.timeout, " (1ms to 60s)");
    }
    if (p.name == "forget_header") {
        if (!valid_header_name(p.value)) {
            return invalid(cf, p, "header name");
        }
        icf.forget_header = p.value;
        return true;
    }
    params.unknown(p);
    return false;
}

}  // namespace

char* throttle_identity_directive(ngx_conf_t* cf, ngx_command_t*, void*) noexcept {
    IdentityMainConf& icf = main_conf(cf)->identity;
    if (icf.credential != nullptr) {
        return const_cast<char*>("is duplicate");
    }
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    if (value[1].len == 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "invalid credential \"\"");
        return conf_error();
    }
    auto* cv = static_cast<ngx_http_complex_value_t*>(
        ngx_pcalloc(cf->pool, sizeof(ngx_http_complex_value_t)));
    if (cv == nullptr) {
        return conf_error();
    }
    ngx_http_compile_complex_value_t ccv;
    ngx_memzero(&ccv, sizeof(ccv));
    ccv.cf = cf;
    ccv.value = &value[1];
    ccv.complex_value = cv;
    if (ngx_http_compile_complex_value(&ccv) != NGX_OK) {
        return conf_error();
    }
    icf.ttl = identity_default_ttl;
    icf.negative_ttl = identity_default_negative_ttl;
    icf.timeout = identity_default_timeout;
    ngx_str_set(&icf.forget_header, "X-Throttle-Forget");
    Params params(cf, 2);
    Param p;
    while (params.next(p)) {
        if (!parse_param(cf, params, p, icf)) {
            return conf_error();
        }
    }
    if (params.failed()) {
        return conf_error();
    }
    const char* missing = icf.resolve.len == 0      ? "resolve"
                          : icf.shm_zone == nullptr ? "zone"
                                                    : nullptr;
    if (missing != nullptr) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\" must have \"%s\" parameter", &value[0],
                           missing);
        return conf_error();
    }
    // The cookies and headers it reads: a request that sends one twice is anonymous (nginx
    // would digest one value, the application could resolve the other).
    try {
        std::vector<core::cache::IdentityVariable> vars =
            core::cache::identity_variables(view(value[1]));
        icf.sources =
            ngx_array_create(cf->pool, vars.empty() ? 1 : vars.size(), sizeof(IdentitySource));
        if (icf.sources == nullptr) {
            return conf_error();
        }
        for (const core::cache::IdentityVariable& v : vars) {
            auto* src = static_cast<IdentitySource*>(ngx_array_push(icf.sources));
            auto* name = static_cast<u_char*>(ngx_pnalloc(cf->pool, v.name.size()));
            if (src == nullptr || name == nullptr) {
                return conf_error();
            }
            ngx_memcpy(name, v.name.data(), v.name.size());
            src->cookie = v.kind == core::cache::IdentityVariable::Kind::cookie;
            src->name = {v.name.size(), name};
        }
    } catch (...) {
        return conf_error();
    }
    icf.credential = cv;
    icf.file = cf->conf_file->file.name;
    icf.line = cf->conf_file->line;
    return NGX_CONF_OK;
}

char* check_identity_main_conf(ngx_conf_t* cf, MainConf& mcf) noexcept {
    IdentityMainConf& icf = mcf.identity;
    if (icf.credential == nullptr) {
        return NGX_CONF_OK;
    }
    if (mcf.cache.secret.data == nullptr) {
        ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                      "\"throttle_identity\" in %V:%ui needs a secret: set "
                      "\"throttle_cache_secret\" (the same on every host)",
                      &icf.file, icf.line);
        return conf_error();
    }
    void* mem = ngx_palloc(cf->pool, sizeof(core::HmacSha256Key));
    if (mem == nullptr) {
        return conf_error();
    }
    static_assert(std::is_trivially_destructible_v<core::HmacSha256Key>);
    icf.key = new (mem) core::HmacSha256Key(mcf.cache.secret.data, mcf.cache.secret.len);
    return NGX_CONF_OK;
}

char* merge_identity_loc_conf(ngx_conf_t* cf, const IdentityLocConf& prev,
                              IdentityLocConf& conf) noexcept {
    ngx_conf_merge_value(conf.resolve, prev.resolve, 0);
    if (conf.resolve && main_conf(cf)->identity.credential == nullptr) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"throttle_identity_resolve\" requires \"throttle_identity\"");
        return conf_error();
    }
    return NGX_CONF_OK;
}

}  // namespace throttle::ngx
