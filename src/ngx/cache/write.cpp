// A user's write invalidates their entries (see write.hpp).
#include "ngx/cache/write.hpp"

#include <algorithm>
#include <memory>
#include <string_view>
#include <vector>

#include "core/cache_key.hpp"
#include "core/http_text.hpp"
#include "ngx/cache/invalidate.hpp"
#include "ngx/cache/memo.hpp"
#include "ngx/redis_link.hpp"
#include "ngx/request.hpp"

namespace throttle::ngx {

// A response held until Redis answered its invalidation.
struct CacheHold final : RequestBound {
    CacheHold(ngx_http_request_t* r, ngx_http_output_header_filter_pt h,
              ngx_http_output_body_filter_pt b) noexcept
        : RequestBound(r), next_header(h), next_body(b) {}

    ngx_http_output_header_filter_pt next_header;
    ngx_http_output_body_filter_pt next_body;
    bool active = false;
    ngx_chain_t* out = nullptr;  // body links held meanwhile (links copied, buffers shared)
};

namespace {

constexpr unsigned hold_buffered = 0x08;  // r->buffered bit while held

// Redis answered (or could not): the response goes on.
void release_hold(CacheHold& h) noexcept {
    if (h.gone() || !h.active || worker_exiting()) {
        return;
    }
    h.active = false;
    h.keep_worker(false);
    ngx_http_request_t* r = h.request();
    ngx_connection_t* c = r->connection;
    r->buffered &= ~hold_buffered;
    ngx_int_t rc = h.next_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK) {
        ngx_http_finalize_request(r, rc == NGX_ERROR ? NGX_ERROR : rc);
        ngx_http_run_posted_requests(c);
        return;
    }
    ngx_chain_t* out = h.out;
    h.out = nullptr;
    if (out != nullptr && !r->header_only && h.next_body(r, out) == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_ERROR);
        ngx_http_run_posted_requests(c);
        return;
    }
    // Whoever drives the response (the upstream, or nginx's writer once it finalized) goes on.
    ngx_post_event(c->write, &ngx_posted_events);
}

void add_namespace(std::vector<std::string_view>& out, std::string_view ns, ngx_http_request_t* r) {
    if (!core::cache::valid_namespace(ns)) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "throttle_cache: ignoring invalid namespace \"%*s\" to invalidate", ns.size(),
                      ns.data());
        return;
    }
    if (std::find(out.begin(), out.end(), ns) == out.end()) {
        out.push_back(ns);
    }
}

// Splits an invalidation header's value on commas and whitespace.
void add_header_namespaces(std::vector<std::string_view>& out, std::string_view v,
                           ngx_http_request_t* r) {
    size_t i = 0;
    while (i < v.size()) {
        while (i < v.size() && (v[i] == ',' || v[i] == ' ' || v[i] == '\t')) {
            i++;
        }
        size_t start = i;
        while (i < v.size() && v[i] != ',' && v[i] != ' ' && v[i] != '\t') {
            i++;
        }
        if (i > start) {
            add_namespace(out, v.substr(start, i - start), r);
        }
    }
}

// The namespaces this response invalidates; the invalidation header is removed meanwhile.
std::vector<std::string_view> namespaces_of(ngx_http_request_t* r, const CacheLocConf& conf) {
    bool ok = r->headers_out.status >= 200 && r->headers_out.status < 300;
    std::vector<std::string_view> namespaces;
    if (conf.invalidate_header.len > 0) {
        for (ngx_list_part_t* part = &r->headers_out.headers.part; part; part = part->next) {
            auto* h = static_cast<ngx_table_elt_t*>(part->elts);
            for (ngx_uint_t i = 0; i < part->nelts; i++) {
                if (h[i].hash == 0 ||
                    !core::http::iequals(view(h[i].key), view(conf.invalidate_header))) {
                    continue;
                }
                h[i].hash = 0;  // never reaches the client
                if (ok) {
                    add_header_namespaces(namespaces, view(h[i].value), r);
                }
            }
        }
    }
    bool write =
        (r->method & (NGX_HTTP_POST | NGX_HTTP_PUT | NGX_HTTP_PATCH | NGX_HTTP_DELETE)) != 0;
    if (ok && write) {
        if (cache_enabled(conf)) {
            add_namespace(namespaces, view(conf.ns), r);
        }
        if (conf.invalidate != nullptr) {
            auto* names = static_cast<ngx_str_t*>(conf.invalidate->elts);
            for (ngx_uint_t i = 0; i < conf.invalidate->nelts; i++) {
                add_namespace(namespaces, view(names[i]), r);
            }
        }
    }
    return namespaces;
}

}  // namespace

bool invalidate_on_write(ngx_http_request_t* r, const CacheLocConf& conf,
                         ngx_http_output_header_filter_pt next_header,
                         ngx_http_output_body_filter_pt next_body) {
    std::vector<std::string_view> namespaces = namespaces_of(r, conf);
    if (namespaces.empty()) {
        return false;
    }
    ngx_str_t identity = ngx_null_string;
    if (conf.user == nullptr || ngx_http_complex_value(r, conf.user, &identity) != NGX_OK ||
        identity.len == 0) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "throttle_cache: a write without a user identity invalidates nothing");
        return false;
    }
    RequestCtx* ctx = get_ctx(r);
    if (ctx == nullptr && (ctx = create_ctx(r)) == nullptr) {
        return false;
    }
    std::string id = cache_identity(view(main_conf(r)->cache.secret), view(identity));
    std::vector<std::string> names(namespaces.begin(), namespaces.end());
    auto hold = bind_to_request<CacheHold>(r, next_header, next_body);
    if (hold == nullptr) {
        cache_invalidate(std::move(id), std::move(names));
        return false;
    }
    if (!cache_invalidate(std::move(id), std::move(names),
                          [hold]() noexcept { release_hold(*hold); })) {
        return false;  // queued for a retry; this worker bypasses the user's entries meanwhile
    }
    hold->active = true;
    hold->keep_worker(true);  // a graceful exit waits for Redis' answer, then the response
    ctx->hold = hold.get();
    r->buffered |= hold_buffered;
    return true;
}

ngx_int_t hold_body(ngx_http_request_t* r, ngx_chain_t* in) noexcept {
    RequestCtx* ctx = get_ctx(r);
    if (ctx == nullptr || ctx->hold == nullptr || !ctx->hold->active) {
        return NGX_DECLINED;
    }
    if (in != nullptr && ngx_chain_add_copy(r->pool, &ctx->hold->out, in) != NGX_OK) {
        return NGX_ERROR;
    }
    return NGX_OK;
}

}  // namespace throttle::ngx
