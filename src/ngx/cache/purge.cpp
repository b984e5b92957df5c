// throttle_cache_purge VALUE: a content handler that invalidates a namespace for everyone
// (the namespace's generation moves on, so every user's entries in it become unreachable at
// once). POST, DELETE or PURGE; protect the location (allow/deny, auth) as any admin endpoint.
//   200 {"namespace":"review","generation":4}
//   400 the value is not a valid namespace; 405 another method; 503 Redis did not answer.
// A purge Redis confirmed counts one nginx_throttle_cache_purges_total under the namespace, when
// some directive (throttle_cache, throttle_cache_invalidate) names it and metrics are on.
#include <memory>

#include "core/cache_key.hpp"
#include "ngx/cache/cache.hpp"
#include "ngx/cache/local.hpp"
#include "ngx/cache/nsgen.hpp"
#include "ngx/cache/waiters.hpp"
#include "ngx/cache/worker.hpp"
#include "ngx/metrics.hpp"
#include "ngx/redis_link.hpp"
#include "ngx/request.hpp"
#include "redis/cache_scripts.hpp"

namespace throttle::ngx {
namespace {

// The request while Redis bumps the namespace's generation.
struct Purge final : RequestBound {
    using RequestBound::RequestBound;
};

ngx_int_t respond(ngx_http_request_t* r, ngx_uint_t status, const char* fmt, const ngx_str_t& ns,
                  uint64_t gen) noexcept {
    size_t len = ngx_strlen(fmt) + ns.len + NGX_INT64_LEN;
    auto* body = static_cast<u_char*>(ngx_pnalloc(r->pool, len));
    if (body == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_http_complex_value_t cv;
    ngx_memzero(&cv, sizeof(cv));
    cv.value.data = body;
    cv.value.len =
        (gen != 0 ? ngx_snprintf(body, len, fmt, &ns, gen) : ngx_snprintf(body, len, fmt, &ns)) -
        body;
    ngx_str_t type = ngx_string("application/json");
    return ngx_http_send_response(r, status, &type, &cv);
}

}  // namespace

ngx_int_t cache_purge_handler(ngx_http_request_t* r) noexcept {
    bool purge = r->method_name.len == 5 && ngx_strncmp(r->method_name.data, "PURGE", 5) == 0;
    if (!(r->method & (NGX_HTTP_POST | NGX_HTTP_DELETE)) && !purge) {
        return NGX_HTTP_NOT_ALLOWED;
    }
    ngx_int_t rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }
    ngx_str_t ns;
    if (ngx_http_complex_value(r, loc_conf(r)->cache.purge, &ns) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (!core::cache::valid_namespace(view(ns))) {
        ngx_str_t shown = ns;
        shown.len = ngx_min(shown.len, 64);
        for (size_t i = 0; i < shown.len; i++) {
            u_char c = shown.data[i];
            if (c == '"' || c == '\\' || c < 0x20 || c >= 0x7f) {
                shown.len = i;  // never echo what would break the JSON
                break;
            }
        }
        return respond(r, NGX_HTTP_BAD_REQUEST,
                       "{\"error\":\"invalid namespace\",\"namespace\":\"%V\"}\n", shown, 0);
    }
    redis::Target* client = redis_client();
    if (client == nullptr || !client->available()) {
        return respond(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                       "{\"error\":\"redis unavailable\",\"namespace\":\"%V\"}\n", ns, 0);
    }
    try {
        redis::EvalArgs args;
        // The purge publishes the new generation on the fill channel: every worker's mirror on
        // a Redis Cluster (nsgen.hpp), every host's local tier (local.hpp). Without a channel
        // (the subscriber could not start) it only moves the generation.
        const bool publish = !cache_channel().empty();
        if (publish
                ? !redis::build_cache_purge_cluster_args(cache_prefix(), view(ns), cache_channel(),
                                                         args)
                : !redis::build_cache_invalidate_namespace_args(cache_prefix(), view(ns), args)) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        auto p = bind_to_request<Purge>(r);
        if (p == nullptr) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        client->evalsha(
            publish ? redis::cache_purge_cluster_script() : redis::cache_invalidate_script(),
            args.keys(), args.args(), [p, ns](redis::Result&& res) noexcept {
                if (p->gone() || worker_exiting()) {
                    return;
                }
                ngx_http_request_t* req = p->request();
                std::vector<uint64_t> gens;
                bool good = false;
                try {
                    good = res.ok() && redis::parse_cache_invalidate_reply(res.reply, 1, gens);
                } catch (...) {
                }
                if (!good) {
                    redis_reply_unusable(res, "cache purge");
                }
                ngx_int_t status;
                if (good) {
                    cache_ns_generation_seen(view(ns), gens[0]);
                    cache_local_ns_generation(view(ns), gens[0]);  // this host: at once
                    if (core::metrics::CacheMetrics* m = cache_metrics(*main_conf(req), view(ns))) {
                        core::metrics::add(m->purges);
                    }
                    ngx_log_error(NGX_LOG_NOTICE, req->connection->log, 0,
                                  "throttle_cache: namespace \"%V\" purged (generation %uL)", &ns,
                                  gens[0]);
                    status = respond(req, NGX_HTTP_OK,
                                     "{\"namespace\":\"%V\",\"generation\":%uL}\n", ns, gens[0]);
                } else {
                    status = respond(req, NGX_HTTP_SERVICE_UNAVAILABLE,
                                     "{\"error\":\"redis did not answer\",\"namespace\":\"%V\"}\n",
                                     ns, 0);
                }
                ngx_connection_t* c = req->connection;
                ngx_http_finalize_request(req, status);
                ngx_http_run_posted_requests(c);
            });
    } catch (...) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    r->main->count++;  // a content handler's wait, as for a request body: finalized above
    return NGX_DONE;
}

}  // namespace throttle::ngx
