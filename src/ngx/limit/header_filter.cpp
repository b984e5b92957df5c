// Adds RateLimit-Policy / RateLimit (draft-ietf-httpapi-ratelimit-headers) and Retry-After
// to the response of every request a zone was decided for (main request or subrequest).
#include "ngx/limit/limit.hpp"
#include "ngx/request.hpp"

namespace throttle::ngx {
namespace {

ngx_http_output_header_filter_pt next_header_filter;

ngx_int_t add_header(ngx_http_request_t* r, const ngx_str_t& name, u_char* value,
                     size_t len) noexcept {
    auto* h = static_cast<ngx_table_elt_t*>(ngx_list_push(&r->headers_out.headers));
    if (h == nullptr) {
        return NGX_ERROR;
    }
    h->hash = 1;
    h->key = name;
    h->value.data = value;
    h->value.len = len;
    return NGX_OK;
}

// Decimal digits of v at p (ngx_sprintf costs several times more on this path).
u_char* put_number(u_char* p, uint64_t v) noexcept {
    u_char tmp[NGX_INT64_LEN];
    size_t n = 0;
    do {
        tmp[n++] = static_cast<u_char>('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0) {
        *p++ = tmp[--n];
    }
    return p;
}

u_char* put(u_char* p, const char* s, size_t len) noexcept {
    return static_cast<u_char*>(ngx_cpymem(p, s, len));
}

ngx_str_t rate_limit_policy = ngx_string("RateLimit-Policy");
ngx_str_t rate_limit = ngx_string("RateLimit");
ngx_str_t retry_after = ngx_string("Retry-After");

// A subrequest's fields go into its own headers_out, which nginx never sends to the client:
// there they are $sent_http_ratelimit, $sent_http_retry_after for auth_request_set.
ngx_int_t header_filter(ngx_http_request_t* r) noexcept {
    RequestCtx* ctx = get_ctx(r);
    if (ctx == nullptr || ctx->outcome == Outcome::none || ctx->waiting) {
        return next_header_filter(r);
    }
    if (ctx->headers) {
        // RateLimit-Policy is fixed per zone; RateLimit: "NAME";r=R;t=T
        if (add_header(r, rate_limit_policy, ctx->policy->data, ctx->policy->len) != NGX_OK) {
            return NGX_ERROR;
        }
        size_t len = ctx->zone_name->len + sizeof("\"\";r=;t=") + 2 * NGX_INT64_LEN;
        auto* buf = static_cast<u_char*>(ngx_pnalloc(r->pool, len));
        if (buf == nullptr) {
            return NGX_ERROR;
        }
        u_char* p = put(buf, "\"", 1);
        p = ngx_cpymem(p, ctx->zone_name->data, ctx->zone_name->len);
        p = put(p, "\";r=", 4);
        p = put_number(p, ctx->remaining);
        p = put(p, ";t=", 3);
        p = put_number(p, static_cast<uint64_t>(ctx->reset_s));
        if (add_header(r, rate_limit, buf, p - buf) != NGX_OK) {
            return NGX_ERROR;
        }
    }
    if (ctx->outcome == Outcome::rejected || ctx->outcome == Outcome::rejected_fallback) {
        auto* buf = static_cast<u_char*>(ngx_pnalloc(r->pool, NGX_INT64_LEN));
        if (buf == nullptr) {
            return NGX_ERROR;
        }
        u_char* p = put_number(buf, static_cast<uint64_t>(ctx->retry_after_s));
        if (add_header(r, retry_after, buf, p - buf) != NGX_OK) {
            return NGX_ERROR;
        }
    }
    return next_header_filter(r);
}

}  // namespace

ngx_int_t install_header_filter() noexcept {
    next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = header_filter;
    return NGX_OK;
}

}  // namespace throttle::ngx
