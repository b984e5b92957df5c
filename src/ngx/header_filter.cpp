// Adds RateLimit-Policy / RateLimit (draft-ietf-httpapi-ratelimit-headers) and Retry-After
// to the response of every request a zone applied to.
#include "ngx/conf.hpp"

namespace throttle::ngx {
namespace {

ngx_http_output_header_filter_pt next_header_filter;

ngx_int_t add_header(ngx_http_request_t* r, const char* name, u_char* value,
                     u_char* end) noexcept {
    auto* h = static_cast<ngx_table_elt_t*>(ngx_list_push(&r->headers_out.headers));
    if (h == nullptr) {
        return NGX_ERROR;
    }
    h->hash = 1;
    h->key.data = reinterpret_cast<u_char*>(const_cast<char*>(name));
    h->key.len = ngx_strlen(name);
    h->value.data = value;
    h->value.len = end - value;
    return NGX_OK;
}

ngx_int_t header_filter(ngx_http_request_t* r) noexcept {
    if (r != r->main) {
        return next_header_filter(r);
    }
    RequestCtx* ctx = get_ctx(r);
    if (ctx == nullptr || ctx->outcome == Outcome::none || ctx->outcome == Outcome::pending) {
        return next_header_filter(r);
    }
    size_t len = 2 * ((ctx->zone_name ? ctx->zone_name->len : 0) + 2 * NGX_INT64_LEN + sizeof("\"\";q=;w="));
    auto* buf = static_cast<u_char*>(ngx_pnalloc(r->pool, len + NGX_INT64_LEN));
    if (buf == nullptr) {
        return NGX_ERROR;
    }
    u_char* p = buf;
    if (ctx->headers) {
        u_char* end = ngx_sprintf(p, "\"%V\";q=%uL;w=%L", ctx->zone_name, ctx->limit,
                                  ctx->window_s);
        if (add_header(r, "RateLimit-Policy", p, end) != NGX_OK) {
            return NGX_ERROR;
        }
        p = end;
        end = ngx_sprintf(p, "\"%V\";r=%uL;t=%L", ctx->zone_name, ctx->remaining, ctx->reset_s);
        if (add_header(r, "RateLimit", p, end) != NGX_OK) {
            return NGX_ERROR;
        }
        p = end;
    }
    if (ctx->outcome == Outcome::rejected || ctx->outcome == Outcome::rejected_fallback) {
        u_char* end = ngx_sprintf(p, "%L", ctx->retry_after_s);
        if (add_header(r, "Retry-After", p, end) != NGX_OK) {
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
