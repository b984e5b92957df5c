// $throttle_status, $throttle_zone, $throttle_limit, $throttle_remaining, $throttle_reset,
// $throttle_retry_after, $throttle_cache_status and $throttle_cache_age.
#include "ngx/conf.hpp"
#include "ngx/request.hpp"

namespace throttle::ngx {
namespace {

ngx_str_t outcome_names[] = {
    ngx_null_string,
    ngx_string("PASSED"),
    ngx_string("REJECTED"),
    ngx_string("REJECTED_DRY_RUN"),
    ngx_string("PASSED_FALLBACK"),
    ngx_string("REJECTED_FALLBACK"),
};
ngx_str_t pending_name = ngx_string("PENDING");

void set_not_found(ngx_http_variable_value_t* v) noexcept {
    v->not_found = 1;
}

ngx_int_t set_value(ngx_http_variable_value_t* v, const ngx_str_t& value) noexcept {
    v->len = value.len;
    v->data = value.data;
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
    return NGX_OK;
}

// The decision the rate-limiting variables describe: r's own; for a subrequest for which no
// zone was decided (none in its location, or all counted by the client request already), its
// main request's.
const RequestCtx* decision_of(ngx_http_request_t* r) noexcept {
    const RequestCtx* ctx = get_ctx(r);
    if ((ctx == nullptr || (ctx->outcome == Outcome::none && !ctx->waiting)) && r != r->main) {
        ctx = get_ctx(r->main);
    }
    return ctx;
}

ngx_int_t status_variable(ngx_http_request_t* r, ngx_http_variable_value_t* v, uintptr_t) noexcept {
    const RequestCtx* ctx = decision_of(r);
    if (ctx != nullptr && ctx->waiting) {
        return set_value(v, pending_name);
    }
    if (ctx == nullptr || ctx->outcome == Outcome::none) {
        set_not_found(v);
        return NGX_OK;
    }
    return set_value(v, outcome_names[static_cast<ngx_uint_t>(ctx->outcome)]);
}

// The decision of r when a zone applied: the one the RateLimit fields describe (the zone that
// rejected, or the one with the fewest requests left); nullptr when none applied.
const RequestCtx* zone_decision_of(ngx_http_request_t* r) noexcept {
    const RequestCtx* ctx = decision_of(r);
    if (ctx == nullptr || ctx->outcome == Outcome::none || ctx->zone_name == nullptr) {
        return nullptr;
    }
    return ctx;
}

ngx_int_t set_unsigned(ngx_http_request_t* r, ngx_http_variable_value_t* v, uint64_t n) noexcept {
    auto* p = static_cast<u_char*>(ngx_pnalloc(r->pool, NGX_INT64_LEN));
    if (p == nullptr) {
        return NGX_ERROR;
    }
    return set_value(v, {static_cast<size_t>(ngx_sprintf(p, "%uL", n) - p), p});
}

ngx_int_t set_signed(ngx_http_request_t* r, ngx_http_variable_value_t* v, int64_t n) noexcept {
    auto* p = static_cast<u_char*>(ngx_pnalloc(r->pool, NGX_INT64_LEN));
    if (p == nullptr) {
        return NGX_ERROR;
    }
    return set_value(v, {static_cast<size_t>(ngx_sprintf(p, "%L", n) - p), p});
}

// $throttle_zone: the name of the zone the other variables describe.
ngx_int_t zone_variable(ngx_http_request_t* r, ngx_http_variable_value_t* v, uintptr_t) noexcept {
    const RequestCtx* ctx = zone_decision_of(r);
    if (ctx == nullptr) {
        set_not_found(v);
        return NGX_OK;
    }
    return set_value(v, *ctx->zone_name);
}

// $throttle_limit: its quota (RateLimit-Policy q=).
ngx_int_t limit_variable(ngx_http_request_t* r, ngx_http_variable_value_t* v, uintptr_t) noexcept {
    const RequestCtx* ctx = zone_decision_of(r);
    if (ctx == nullptr) {
        set_not_found(v);
        return NGX_OK;
    }
    return set_unsigned(r, v, ctx->limit);
}

ngx_int_t remaining_variable(ngx_http_request_t* r, ngx_http_variable_value_t* v,
                             uintptr_t) noexcept {
    const RequestCtx* ctx = zone_decision_of(r);
    if (ctx == nullptr) {
        set_not_found(v);
        return NGX_OK;
    }
    return set_unsigned(r, v, ctx->remaining);
}

// $throttle_reset (RateLimit t=) and $throttle_retry_after (Retry-After, rejected only), in
// seconds, of the decision the RateLimit fields describe.
ngx_int_t seconds_variable(ngx_http_request_t* r, ngx_http_variable_value_t* v,
                           uintptr_t data) noexcept {
    const RequestCtx* ctx = zone_decision_of(r);
    if (ctx == nullptr) {
        set_not_found(v);
        return NGX_OK;
    }
    bool retry = data != 0;
    if (retry && ctx->outcome != Outcome::rejected && ctx->outcome != Outcome::rejected_fallback &&
        ctx->outcome != Outcome::rejected_dry_run) {
        set_not_found(v);
        return NGX_OK;
    }
    return set_signed(r, v, retry ? ctx->retry_after_s : ctx->reset_s);
}

ngx_str_t cache_status_names[] = {
    ngx_null_string,     ngx_string("HIT"),      ngx_string("MISS"),   ngx_string("EXPIRED"),
    ngx_string("STALE"), ngx_string("UPDATING"), ngx_string("BYPASS"), ngx_string("ERROR"),
};

// The cache serves main requests only: a subrequest reports its main request's.
ngx_int_t cache_status_variable(ngx_http_request_t* r, ngx_http_variable_value_t* v,
                                uintptr_t) noexcept {
    const RequestCtx* ctx = get_ctx(r->main);
    if (ctx == nullptr || ctx->cache_status == CacheStatus::none) {
        set_not_found(v);
        return NGX_OK;
    }
    return set_value(v, cache_status_names[static_cast<ngx_uint_t>(ctx->cache_status)]);
}

// $throttle_cache_tier: "local" (answered from the local tier), "redis" (Redis answered the
// lookup); empty otherwise.
ngx_int_t cache_tier_variable(ngx_http_request_t* r, ngx_http_variable_value_t* v,
                              uintptr_t) noexcept {
    static ngx_str_t names[] = {ngx_null_string, ngx_string("local"), ngx_string("redis")};
    const RequestCtx* ctx = get_ctx(r->main);
    if (ctx == nullptr || ctx->cache_tier == 0 || ctx->cache_tier > 2) {
        set_not_found(v);
        return NGX_OK;
    }
    return set_value(v, names[ctx->cache_tier]);
}

// $throttle_cache_age: the Age of the entry a HIT, STALE or UPDATING response served.
ngx_int_t cache_age_variable(ngx_http_request_t* r, ngx_http_variable_value_t* v,
                             uintptr_t) noexcept {
    const RequestCtx* ctx = get_ctx(r->main);
    if (ctx == nullptr || !ctx->cache_served ||
        (ctx->cache_status != CacheStatus::hit && ctx->cache_status != CacheStatus::stale &&
         ctx->cache_status != CacheStatus::updating)) {
        set_not_found(v);
        return NGX_OK;
    }
    return set_signed(r, v, ctx->cache_age_s);
}

ngx_http_variable_t variables[] = {
    {ngx_string("throttle_cache_status"), nullptr, cache_status_variable, 0,
     NGX_HTTP_VAR_NOCACHEABLE, 0},
    {ngx_string("throttle_cache_age"), nullptr, cache_age_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0},
    {ngx_string("throttle_cache_tier"), nullptr, cache_tier_variable, 0, NGX_HTTP_VAR_NOCACHEABLE,
     0},
    {ngx_string("throttle_status"), nullptr, status_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0},
    {ngx_string("throttle_zone"), nullptr, zone_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0},
    {ngx_string("throttle_limit"), nullptr, limit_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0},
    {ngx_string("throttle_remaining"), nullptr, remaining_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0},
    {ngx_string("throttle_reset"), nullptr, seconds_variable, 0, NGX_HTTP_VAR_NOCACHEABLE, 0},
    {ngx_string("throttle_retry_after"), nullptr, seconds_variable, 1, NGX_HTTP_VAR_NOCACHEABLE, 0},
    ngx_http_null_variable,
};

}  // namespace

ngx_int_t add_variables(ngx_conf_t* cf) noexcept {
    for (ngx_http_variable_t* v = variables; v->name.len; v++) {
        ngx_http_variable_t* var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == nullptr) {
            return NGX_ERROR;
        }
        var->get_handler = v->get_handler;
        var->data = v->data;
    }
    return NGX_OK;
}

}  // namespace throttle::ngx
