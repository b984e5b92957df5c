// The response cache's filters: storing what the upstream answered a filling request, and
// invalidating a user's entries when they write.
//
// Header filter (first in the chain: it sees the upstream's headers before any other filter of
// this module or add_header adds its own):
//   - the upstream's invalidation header (throttle_cache_invalidate_header) is removed from
//     every response; on a 2xx its namespaces are invalidated for the request's user;
//   - a 2xx answer to POST, PUT, PATCH or DELETE invalidates the user's entries in the
//     location's namespace and in those throttle_cache_invalidate names;
//   - for the request that holds the fill lock, core::cache::decide() says whether the
//     response is stored; if not, the lock is released at once (waiters go upstream).
// Body filter: copies the filler's body (memory or temp file buffers) while it passes, up to
// throttle_cache_max_size, and at the last buffer, when the whole body arrived and matches its
// Content-Length, compresses it (above throttle_cache_gzip_min_length) and STOREs it under
// the generations the lookup returned. Waiters in this worker are woken with the bytes; the
// STORE script publishes to the fill channel for waiters elsewhere.
#include <algorithm>
#include <new>

#include "core/gzip.hpp"
#include "core/http_text.hpp"
#include "ngx/cache_request.hpp"
#include "ngx/worker.hpp"

namespace throttle::ngx {
namespace {

ngx_http_output_header_filter_pt next_header_filter;
ngx_http_output_body_filter_pt next_body_filter;

void log_redis_failure(const char* what, const redis::Result& res) noexcept {
    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0, "throttle_cache: %s failed: %s", what,
                  res.ok() ? "unexpected reply" : redis::to_string(res.failure));
}

// ---- invalidation ----

void add_namespace(std::vector<std::string_view>& out, std::string_view ns,
                   ngx_http_request_t* r) {
    if (!core::cache::valid_namespace(ns)) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "throttle_cache: ignoring invalid namespace \"%*s\" to invalidate",
                      ns.size(), ns.data());
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

}  // namespace

// A response held until Redis answered its invalidation (read-your-writes on any connection,
// worker or host). Shared with the invalidation's callback; the request's pool cleanup says
// when the request is gone.
struct CacheHold {
    ngx_http_request_t* r = nullptr;
    bool gone = false;
    bool active = false;
    ngx_chain_t* out = nullptr;  // body links held meanwhile (links copied, buffers shared)
};

namespace {

constexpr unsigned hold_buffered = 0x08;  // r->buffered bit while held

// Redis answered (or could not): the response goes on.
void release_hold(CacheHold& h) noexcept {
    if (h.gone || !h.active || worker_exiting()) {
        return;
    }
    h.active = false;
    ngx_http_request_t* r = h.r;
    ngx_connection_t* c = r->connection;
    r->buffered &= ~hold_buffered;
    ngx_int_t rc = next_header_filter(r);
    if (rc == NGX_ERROR || rc > NGX_OK) {
        ngx_http_finalize_request(r, rc == NGX_ERROR ? NGX_ERROR : rc);
        ngx_http_run_posted_requests(c);
        return;
    }
    ngx_chain_t* out = h.out;
    h.out = nullptr;
    if (out != nullptr && !r->header_only && next_body_filter(r, out) == NGX_ERROR) {
        ngx_http_finalize_request(r, NGX_ERROR);
        ngx_http_run_posted_requests(c);
        return;
    }
    // Whoever drives the response (the upstream, or nginx's writer once it finalized) goes on.
    ngx_post_event(c->write, &ngx_posted_events);
}

// Sends the invalidation; returns whether the response is to be held until it is answered.
bool invalidate(ngx_http_request_t* r, const LocConf* lcf,
                const std::vector<std::string_view>& namespaces) {
    if (namespaces.empty()) {
        return false;
    }
    ngx_str_t identity = ngx_null_string;
    if (lcf->cache_user == nullptr ||
        ngx_http_complex_value(r, lcf->cache_user, &identity) != NGX_OK || identity.len == 0) {
        ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "throttle_cache: a write without a user identity invalidates nothing");
        return false;
    }
    RequestCtx* ctx = get_ctx(r);
    if (ctx == nullptr && (ctx = create_ctx(r)) == nullptr) {
        return false;
    }
    auto* mcf = static_cast<MainConf*>(
        ngx_http_get_module_main_conf(r, ngx_http_throttle_module));
    std::string id = cache_identity(view(mcf->cache_secret), view(identity));
    std::vector<std::string> names(namespaces.begin(), namespaces.end());
    auto hold = std::make_shared<CacheHold>();
    hold->r = r;
    if (!share_with_pool(r->pool, hold)) {
        cache_invalidate(std::move(id), std::move(names));
        return false;
    }
    if (!cache_invalidate(std::move(id), std::move(names),
                          [hold]() noexcept { release_hold(*hold); })) {
        return false;  // queued for a retry; this worker bypasses the user's entries meanwhile
    }
    hold->active = true;
    ctx->hold = hold.get();
    r->buffered |= hold_buffered;
    return true;
}

bool unsafe_method(ngx_http_request_t* r) noexcept {
    return (r->method & (NGX_HTTP_POST | NGX_HTTP_PUT | NGX_HTTP_PATCH | NGX_HTTP_DELETE)) != 0;
}

// Removes the upstream's invalidation header; on a 2xx, and on a 2xx to a write, invalidates.
// Returns whether the response is held until Redis answered.
bool handle_invalidation(ngx_http_request_t* r, const LocConf* lcf) {
    bool ok = r->headers_out.status >= 200 && r->headers_out.status < 300;
    std::vector<std::string_view> namespaces;
    if (lcf->cache_invalidate_header.len > 0) {
        for (ngx_list_part_t* part = &r->headers_out.headers.part; part; part = part->next) {
            auto* h = static_cast<ngx_table_elt_t*>(part->elts);
            for (ngx_uint_t i = 0; i < part->nelts; i++) {
                if (h[i].hash == 0 ||
                    !core::http::iequals(view(h[i].key), view(lcf->cache_invalidate_header))) {
                    continue;
                }
                h[i].hash = 0;  // never reaches the client
                if (ok) {
                    add_header_namespaces(namespaces, view(h[i].value), r);
                }
            }
        }
    }
    if (ok && unsafe_method(r)) {
        if (cache_enabled(lcf)) {
            add_namespace(namespaces, view(lcf->cache_ns), r);
        }
        if (lcf->cache_invalidate != nullptr) {
            auto* names = static_cast<ngx_str_t*>(lcf->cache_invalidate->elts);
            for (ngx_uint_t i = 0; i < lcf->cache_invalidate->nelts; i++) {
                add_namespace(namespaces, view(names[i]), r);
            }
        }
    }
    return invalidate(r, lcf, namespaces);
}

// ---- storing ----

void start_capture(ngx_http_request_t* r, CacheRequest& cr, const LocConf* lcf) {
    std::vector<core::cache::HeaderView>& hv = cr.headers;
    hv.clear();
    if (r->headers_out.content_type.len > 0) {
        hv.push_back({"Content-Type", view(r->headers_out.content_type)});
    }
    for (ngx_list_part_t* part = &r->headers_out.headers.part; part; part = part->next) {
        auto* h = static_cast<ngx_table_elt_t*>(part->elts);
        for (ngx_uint_t i = 0; i < part->nelts; i++) {
            if (h[i].hash == 0) {
                continue;
            }
            hv.push_back({view(h[i].key), view(h[i].value)});
        }
    }
    // proxy_pass and friends consume X-Accel-Expires (it is not among the headers sent on):
    // the rules read it from the upstream's headers.
    size_t storable_end = hv.size();
    if (r->upstream != nullptr && r->upstream->headers_in.x_accel_expires != nullptr) {
        hv.push_back({"X-Accel-Expires", view(r->upstream->headers_in.x_accel_expires->value)});
    }

    core::cache::Policy policy;
    auto* valid = lcf->cache_valid;
    policy.valid = valid ? static_cast<core::cache::ValidTime*>(valid->elts) : nullptr;
    policy.valid_count = valid ? valid->nelts : 0;
    policy.user_identity = cr.id != core::cache::anonymous_identity;
    policy.max_entry_size = lcf->cache_max_size;
    policy.stale_ms = static_cast<int64_t>(lcf->cache_stale);
    policy.accept_gzip = true;  // inflated in store(), stored in the module's own format
    core::cache::Response resp;
    resp.status = static_cast<uint16_t>(r->headers_out.status);
    resp.method = "GET";
    resp.headers = hv.data();
    resp.header_count = hv.size();
    resp.content_length = r->headers_out.content_length_n;
    resp.now_ms = now_ms();
    core::cache::Decision d = core::cache::decide(policy, resp);
    if (!d.store()) {
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                       "throttle_cache: not stored: %s", core::cache::verdict_name(d.verdict));
        cache_release(cr);
        return;
    }
    // Keep what an entry holds: not X-Accel-Expires, not what header_storable() refuses.
    hv.resize(storable_end);
    hv.erase(std::remove_if(hv.begin(), hv.end(),
                            [](const core::cache::HeaderView& h) {
                                return !core::cache::header_storable(h.name);
                            }),
             hv.end());
    cr.decision = d;
    cr.resp_status = resp.status;
    cr.capture = true;
    if (resp.content_length > 0) {
        cr.body.reserve(static_cast<size_t>(resp.content_length));
    }
}

bool append(CacheRequest& cr, ngx_buf_t* b) {
    if (ngx_buf_in_memory(b)) {
        cr.body.append(reinterpret_cast<const char*>(b->pos), b->last - b->pos);
    } else if (b->in_file && b->file_last > b->file_pos) {
        size_t size = static_cast<size_t>(b->file_last - b->file_pos);
        if (cr.body.size() + size > cr.lcf->cache_max_size) {
            return false;
        }
        size_t at = cr.body.size();
        cr.body.resize(at + size);
        ssize_t n = ngx_read_file(b->file, reinterpret_cast<u_char*>(&cr.body[at]), size,
                                  b->file_pos);
        if (n != static_cast<ssize_t>(size)) {
            return false;
        }
    }
    return cr.body.size() <= cr.lcf->cache_max_size;
}

void store(ngx_http_request_t* r, CacheRequest& cr) {
    cr.capture = false;
    if (r->headers_out.status != cr.resp_status ||
        (r->headers_out.content_length_n >= 0 &&
         static_cast<uint64_t>(r->headers_out.content_length_n) != cr.body.size())) {
        cache_release(cr);
        return;
    }
    const LocConf* lcf = cr.lcf;
    if (cr.decision.gzip_body) {
        // The upstream compressed it (Django's GZipMiddleware): keep the plain bytes.
        std::string plain;
        if (!core::gzip_decompress(cr.body, plain, lcf->cache_max_size)) {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "throttle_cache: response not stored: its gzip body does not inflate "
                          "within throttle_cache_max_size");
            cache_release(cr);
            return;
        }
        cr.body.swap(plain);
    }
    std::string gz;
    bool compressed = false;
    if (cr.body.size() >= lcf->cache_min_compress && core::gzip_compress(cr.body, gz) &&
        gz.size() < cr.body.size()) {
        compressed = true;
    }
    if (cr.headers.size() > core::cache::entry_max_headers) {
        cache_release(cr);
        return;
    }
    core::cache::EntryView v;
    v.status = cr.resp_status;
    v.gzip = compressed;
    v.plain_size = cr.body.size();
    v.header_count = cr.headers.size();
    std::copy(cr.headers.begin(), cr.headers.end(), v.headers);
    v.body = compressed ? std::string_view(gz) : std::string_view(cr.body);
    int64_t now = now_ms();
    core::cache::Decision d = cr.decision;
    int64_t cap = redis::cache_generation_ttl_ms;
    d.ttl_ms = std::min(d.ttl_ms, cap);
    d.stale_ms = std::min(d.stale_ms, cap - d.ttl_ms);
    core::cache::set_times(v, d, now);
    core::cache::DecodeLimits limits;
    limits.max_size = lcf->cache_max_size;
    if (!core::cache::valid(v, limits)) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "throttle_cache: response not stored: headers the entry format refuses");
        cache_release(cr);
        return;
    }
    auto entry = std::make_shared<const std::string>(core::cache::encode(v));
    int64_t ttl = v.stale_until_ms - now;
    redis::EvalArgs args;
    redis::Client* client = redis_client();
    if (client == nullptr || ttl < 1 ||
        !redis::build_cache_store_args(cr.target(), cr.gen, *entry, ttl, cache_channel(),
                                       args)) {
        cache_release(cr);
        return;
    }
    FillLock lock = cr.fill_lock();
    cr.fill_over = true;
    client->evalsha(redis::cache_store_script(), args.keys(), args.args(),
                    [e = cr.entry_key, lock = std::move(lock), entry](redis::Result&& res) noexcept {
                        bool stored = false;
                        if (!res.ok() || !redis::parse_cache_store_reply(res.reply, stored)) {
                            log_redis_failure("store", res);
                            if (!res.ok()) {
                                // The lock (and waiters elsewhere) may be left: free them.
                                cache_abandon_lock(lock);
                            }
                        }
                        cache_fill_end(e, stored, stored ? entry : nullptr);
                    });
    cr.body.clear();
    cr.body.shrink_to_fit();
}

RequestCtx* filler_ctx(ngx_http_request_t* r) noexcept {
    RequestCtx* ctx = get_ctx(r);
    if (ctx == nullptr || ctx->cache == nullptr) {
        return nullptr;
    }
    return ctx;
}

ngx_int_t header_filter(ngx_http_request_t* r) noexcept {
    if (r != r->main) {
        return next_header_filter(r);
    }
    auto* mcf = static_cast<MainConf*>(
        ngx_http_get_module_main_conf(r, ngx_http_throttle_module));
    if (mcf == nullptr || !mcf->cache_used) {
        return next_header_filter(r);
    }
    auto* lcf = static_cast<LocConf*>(ngx_http_get_module_loc_conf(r, ngx_http_throttle_module));
    bool held = false;
    try {
        held = handle_invalidation(r, lcf);
        if (RequestCtx* ctx = filler_ctx(r)) {
            CacheRequest& cr = *ctx->cache;
            if (cr.filler && !cr.fill_over && !cr.capture) {
                if (r->upstream == nullptr || lcf != cr.lcf || r->header_only) {
                    cache_release(cr);  // not the upstream's answer to this lookup
                } else {
                    start_capture(r, cr, lcf);
                }
            }
        }
    } catch (const std::exception& e) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "throttle_cache: %s", e.what());
        if (RequestCtx* ctx = filler_ctx(r)) {
            cache_release(*ctx->cache);
        }
    }
    return held ? NGX_OK : next_header_filter(r);
}

// While a response is held, its body links are kept (and nothing is written).
ngx_int_t pass_body(ngx_http_request_t* r, RequestCtx* ctx, ngx_chain_t* in) noexcept {
    if (ctx != nullptr && ctx->hold != nullptr && ctx->hold->active) {
        if (in != nullptr && ngx_chain_add_copy(r->pool, &ctx->hold->out, in) != NGX_OK) {
            return NGX_ERROR;
        }
        return NGX_OK;
    }
    return next_body_filter(r, in);
}

ngx_int_t body_filter(ngx_http_request_t* r, ngx_chain_t* in) noexcept {
    if (r != r->main) {
        return next_body_filter(r, in);
    }
    RequestCtx* ctx = get_ctx(r);
    if (in == nullptr || ctx == nullptr || ctx->cache == nullptr || !ctx->cache->capture) {
        return pass_body(r, ctx, in);
    }
    CacheRequest& cr = *ctx->cache;
    try {
        for (ngx_chain_t* cl = in; cl != nullptr; cl = cl->next) {
            if (!append(cr, cl->buf)) {
                ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                               "throttle_cache: not stored: too large");
                cr.capture = false;
                cr.body.clear();
                cr.body.shrink_to_fit();
                cache_release(cr);
                break;
            }
            if (cl->buf->last_buf) {
                store(r, cr);
                break;
            }
        }
    } catch (const std::exception& e) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "throttle_cache: %s", e.what());
        cr.capture = false;
        cache_release(cr);
    }
    return pass_body(r, ctx, in);
}

}  // namespace

void cache_release(CacheRequest& cr) noexcept {
    if (!cr.filler || cr.fill_over) {
        return;
    }
    cr.fill_over = true;
    cr.capture = false;
    try {
        redis::Client* client = redis_client();
        redis::EvalArgs args;
        if (client != nullptr && !worker_exiting() &&
            redis::build_cache_release_args(cr.target(), cr.gen, cache_channel(), args)) {
            client->evalsha(redis::cache_release_script(), args.keys(), args.args(),
                            [lock = cr.fill_lock()](redis::Result&& res) noexcept {
                                bool had = false;
                                if (res.ok() && redis::parse_cache_release_reply(res.reply, had)) {
                                    return;
                                }
                                log_redis_failure("fill lock release", res);
                                if (!res.ok()) {
                                    cache_abandon_lock(lock);
                                }
                            });
        }
    } catch (...) {
        // The lock expires by itself (throttle_cache_lock_timeout).
    }
    cache_fill_end(cr.entry_key, false, nullptr);
}

ngx_int_t install_cache_filters() noexcept {
    next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = header_filter;
    next_body_filter = ngx_http_top_body_filter;
    ngx_http_top_body_filter = body_filter;
    return NGX_OK;
}

}  // namespace throttle::ngx
