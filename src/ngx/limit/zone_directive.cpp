// throttle_zone KEY zone=NAME:SIZE rate=RATE [algorithm=sliding|gcra] [burst=N]
//               [mode=local|sync|strict|lease] [sync=TIME] [lease=N]
//               [fallback=local|open|closed];
#include <string_view>

#include "core/rate.hpp"
#include "ngx/directive_args.hpp"
#include "ngx/limit/limit.hpp"
#include "redis/scripts.hpp"

namespace throttle::ngx {
namespace {

// lease=N: the most units of a key's quota one host holds (README "mode=lease").
constexpr uint32_t default_lease_max = 100;
constexpr ngx_int_t lease_max_max = 1000000;

const EnumName<core::Algorithm> algorithms[] = {{"sliding", core::Algorithm::sliding},
                                                {"gcra", core::Algorithm::gcra}};
const EnumName<Mode> modes[] = {
    {"local", Mode::local}, {"sync", Mode::sync}, {"strict", Mode::strict}, {"lease", Mode::lease}};
const EnumName<Fallback> fallbacks[] = {
    {"local", Fallback::local}, {"open", Fallback::open}, {"closed", Fallback::closed}};

// What the parameters say.
struct ZoneArgs {
    ngx_str_t name = ngx_null_string;
    ssize_t size = 0;
    core::Policy policy;
    const Param* rate = nullptr;
    Param burst;
    Param sync;
    Param fallback_arg;
    Param lease;
    uint32_t lease_max = default_lease_max;
    Mode mode = Mode::local;
    Fallback fallback = Fallback::local;
    ngx_msec_t sync_interval = 1000;
    bool have_rate = false;
};

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

// zone=NAME:SIZE
bool parse_zone(ngx_conf_t* cf, const Param& p, ZoneArgs& z) noexcept {
    auto* colon = static_cast<u_char*>(ngx_strlchr(p.value.data, p.value.data + p.value.len, ':'));
    if (colon == nullptr) {
        return invalid(cf, p, "zone size");
    }
    z.name = {static_cast<size_t>(colon - p.value.data), p.value.data};
    if (z.name.len == 0 || !valid_zone_name(z.name)) {
        return invalid(cf, p, "zone name");
    }
    ngx_str_t s{static_cast<size_t>(p.value.data + p.value.len - (colon + 1)), colon + 1};
    z.size = ngx_parse_size(&s);
    if (z.size == NGX_ERROR || z.size == 0) {
        return invalid(cf, p, "zone size");
    }
    if (z.size < static_cast<ssize_t>(8 * ngx_pagesize)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "zone \"%V\" is too small", &z.name);
        return false;
    }
    return true;
}

bool parse_param(ngx_conf_t* cf, Params& params, const Param& p, ZoneArgs& z) noexcept {
    if (p.name == "zone") {
        return parse_zone(cf, p, z);
    }
    if (p.name == "rate") {
        z.have_rate = core::parse_rate(p.text(), z.policy.rate);
        return z.have_rate || invalid(cf, p, "rate");
    }
    if (p.name == "algorithm") {
        return parse_enum(cf, p, algorithms, "algorithm", z.policy.algorithm);
    }
    if (p.name == "burst") {
        ngx_int_t burst = 0;
        if (!parse_number(cf, p, 1, static_cast<ngx_int_t>(core::max_rate_limit), "burst", burst)) {
            return false;
        }
        z.policy.burst = static_cast<uint64_t>(burst);
        z.burst = p;
        return true;
    }
    if (p.name == "mode") {
        return parse_enum(cf, p, modes, "mode", z.mode);
    }
    if (p.name == "sync") {
        z.sync = p;
        return parse_msec(cf, p, 10, NGX_MAX_INT32_VALUE, "sync interval", z.sync_interval,
                          " (10ms at least)");
    }
    if (p.name == "lease") {
        ngx_int_t n = 0;
        if (!parse_number(cf, p, 1, lease_max_max, "lease size", n)) {
            return false;
        }
        z.lease = p;
        z.lease_max = static_cast<uint32_t>(n);
        return true;
    }
    if (p.name == "fallback") {
        z.fallback_arg = p;
        return parse_enum(cf, p, fallbacks, "fallback", z.fallback);
    }
    params.unknown(p);
    return false;
}

// The parameters' combinations.
bool check(ngx_conf_t* cf, const ngx_str_t& directive, const ZoneArgs& z) noexcept {
    const char* missing = z.name.len == 0 ? "zone" : !z.have_rate ? "rate" : nullptr;
    if (missing != nullptr) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\" must have \"%s\" parameter", &directive,
                           missing);
        return false;
    }
    if (z.burst.arg != nullptr && z.policy.algorithm != core::Algorithm::gcra) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"burst\" requires \"algorithm=gcra\" in \"%V\"",
                           z.burst.arg);
        return false;
    }
    if (z.sync.arg != nullptr && z.mode != Mode::sync) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\" requires \"mode=sync\"", z.sync.arg);
        return false;
    }
    if (z.fallback_arg.arg != nullptr && z.mode != Mode::strict && z.mode != Mode::lease) {
        // Local and sync zones always decide on this host's counts: nothing to fall back from.
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" requires \"mode=strict\" or \"mode=lease\"", z.fallback_arg.arg);
        return false;
    }
    if (z.lease.arg != nullptr && z.mode != Mode::lease) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\" requires \"mode=lease\"", z.lease.arg);
        return false;
    }
    if (z.mode == Mode::lease && z.policy.algorithm != core::Algorithm::sliding) {
        // Units are counts in a window: a GCRA arrival time cannot be handed out in advance.
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"mode=lease\" requires \"algorithm=sliding\" (use \"mode=strict\" "
                           "for gcra across hosts)");
        return false;
    }
    if (z.mode == Mode::sync && z.policy.algorithm != core::Algorithm::sliding) {
        // A GCRA arrival time is not a count: hosts cannot add theirs up.
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"mode=sync\" requires \"algorithm=sliding\" (use \"mode=strict\" "
                           "for gcra across hosts)");
        return false;
    }
    const core::Policy& p = z.policy;
    if ((z.mode == Mode::strict || z.mode == Mode::lease) &&
        !redis::strict_exact(static_cast<uint8_t>(p.algorithm), p.rate.limit, p.rate.period_ms,
                             p.burst)) {
        // Redis' Lua computes in doubles: exact below 2^53 only.
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "rate too large for \"mode=%s\"",
                           z.mode == Mode::strict ? "strict" : "lease");
        return false;
    }
    return true;
}

// The index of the variable KEY is when it is exactly one ("$name", not a capture "$1" nor
// "${name}"), else NGX_ERROR. The complex value was compiled already: the variable is known.
ngx_int_t key_variable_index(ngx_conf_t* cf, const ngx_str_t& key) noexcept {
    if (key.len < 2 || key.data[0] != '$' || (key.data[1] >= '0' && key.data[1] <= '9')) {
        return NGX_ERROR;
    }
    for (size_t i = 1; i < key.len; i++) {
        u_char ch = key.data[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_')) {
            return NGX_ERROR;
        }
    }
    ngx_str_t name{key.len - 1, key.data + 1};
    return ngx_http_get_variable_index(cf, &name);
}

// Gives the zone named by the parameters its key, policy and shared memory.
char* define_zone(ngx_conf_t* cf, MainConf* mcf, const ngx_http_complex_value_t& key,
                  const ZoneArgs& z) noexcept {
    ZoneConf* zone = find_or_add_zone(cf, mcf, z.name);
    if (zone == nullptr) {
        return conf_error();
    }
    if (zone->key.value.data != nullptr) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "duplicate zone \"%V\"", &z.name);
        return conf_error();
    }
    ngx_shm_zone_t* shm_zone =
        ngx_shared_memory_add(cf, &zone->name, z.size, &ngx_http_throttle_module);
    if (shm_zone == nullptr) {
        return conf_error();
    }
    zone->key = key;
    zone->key_index = key_variable_index(cf, key.value);
    try {
        zone->key_watch.sources = core::credential_sources(
            {reinterpret_cast<const char*>(key.value.data), key.value.len});
    } catch (...) {
        return conf_error();
    }
    zone->secret = &secret(*mcf);
    zone->policy = z.policy;
    size_t len = zone->name.len + sizeof("\"\";q=;w=") + 2 * NGX_INT64_LEN;
    zone->policy_header.data = static_cast<u_char*>(ngx_pnalloc(cf->pool, len));
    if (zone->policy_header.data == nullptr) {
        return conf_error();
    }
    zone->policy_header.len =
        ngx_sprintf(zone->policy_header.data, "\"%V\";q=%uL;w=%L", &zone->name,
                    core::quota(z.policy), core::window_seconds(z.policy)) -
        zone->policy_header.data;
    zone->limit_prefix.data = static_cast<u_char*>(ngx_pnalloc(cf->pool, len));
    if (zone->limit_prefix.data == nullptr) {
        return conf_error();
    }
    zone->limit_prefix.len =
        ngx_sprintf(zone->limit_prefix.data, "\"%V\";r=", &zone->name) - zone->limit_prefix.data;
    zone->mode = z.mode;
    zone->fallback = z.fallback;
    zone->sync_interval = z.sync_interval;
    zone->lease_max = z.lease_max;
    if (z.mode != Mode::local) {
        mcf->limit.remote_zones = true;
    }
    zone->shm_zone = shm_zone;
    shm_zone->init = init_zone;
    shm_zone->data = zone;
    return NGX_CONF_OK;
}

}  // namespace

char* throttle_zone_directive(ngx_conf_t* cf, ngx_command_t*, void*) noexcept {
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
    ZoneArgs z;
    Params params(cf, 2);
    Param p;
    while (params.next(p)) {
        if (!parse_param(cf, params, p, z)) {
            return conf_error();
        }
    }
    if (params.failed() || !check(cf, value[0], z)) {
        return conf_error();
    }
    return define_zone(cf, main_conf(cf), key, z);
}

}  // namespace throttle::ngx
