// The response cache's filters (layer: ngx). The header filter is first in the chain: it sees
// the upstream's headers before any other filter of this module or add_header adds its own.
//   header: a write invalidates the user's entries, its response held until Redis answered
//           (write.cpp); the request that holds a fill lock judges the response (fill.cpp)
//   body:   the filler's body is captured and, at the last buffer, stored (fill.cpp); a held
//           response's body links are kept meanwhile (write.cpp)
#include "ngx/cache/cache.hpp"
#include "ngx/cache/request.hpp"
#include "ngx/cache/write.hpp"

namespace throttle::ngx {
namespace {

ngx_http_output_header_filter_pt next_header_filter;
ngx_http_output_body_filter_pt next_body_filter;

// The fill of this request, if it holds one that is not over.
Fill* fill_of(ngx_http_request_t* r) noexcept {
    RequestCtx* ctx = get_ctx(r);
    if (ctx == nullptr || ctx->cache == nullptr || !ctx->cache->fill.active()) {
        return nullptr;
    }
    return &ctx->cache->fill;
}

ngx_int_t header_filter(ngx_http_request_t* r) noexcept {
    if (r != r->main || !main_conf(r)->cache.used) {
        return next_header_filter(r);
    }
    const CacheLocConf& conf = loc_conf(r)->cache;
    bool held = false;
    try {
        held = invalidate_on_write(r, conf, next_header_filter, next_body_filter);
    } catch (const std::exception& e) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "throttle_cache: %s", e.what());
    }
    if (Fill* fill = fill_of(r)) {
        fill->on_header(r, &conf == get_ctx(r)->cache->conf);
    }
    return held ? NGX_OK : next_header_filter(r);
}

ngx_int_t body_filter(ngx_http_request_t* r, ngx_chain_t* in) noexcept {
    if (r != r->main) {
        return next_body_filter(r, in);
    }
    if (in != nullptr) {
        if (Fill* fill = fill_of(r)) {
            fill->on_body(r, in);
        }
    }
    ngx_int_t rc = hold_body(r, in);
    return rc == NGX_DECLINED ? next_body_filter(r, in) : rc;
}

}  // namespace

ngx_int_t install_cache_filters() noexcept {
    next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = header_filter;
    next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = body_filter;
    return NGX_OK;
}

}  // namespace throttle::ngx
