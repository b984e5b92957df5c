// The pre-access phase check: every zone of the location whose key is not empty must admit
// the request; only then is it counted, in all of them at once.
#include "ngx/conf.hpp"

namespace throttle::ngx {
namespace {

constexpr uint64_t tag_full_logged = 0x100;

struct Applied {
    ZoneConf* zone;
    ngx_str_t key;
    core::State* state;
    core::Decision decision;
    bool full;  // this request found the zone full of unexpired keys (first time)
};

int64_t ceil_seconds(int64_t ms) noexcept { return ms <= 0 ? 0 : (ms + 999) / 1000; }

// Locks the zones (already in their global order), decides, and counts only if all admit.
// Returns false when some zone rejects.
bool decide(Applied* applied, ngx_uint_t n, int64_t now) noexcept {
    for (ngx_uint_t i = 0; i < n; i++) {
        ngx_shmtx_lock(&applied[i].zone->shpool->mutex);
    }
    bool all = true;
    for (ngx_uint_t i = 0; i < n; i++) {
        ZoneConf* z = applied[i].zone;
        core::LookupResult res = z->table->lookup(applied[i].key.data, applied[i].key.len);
        if (res.evicted && !core::is_idle(z->policy, res.victim, now) &&
            !(z->table->tag() & tag_full_logged)) {
            z->table->set_tag(z->table->tag() | tag_full_logged);
            applied[i].full = true;
        }
        applied[i].state = res.state;
        applied[i].decision = core::evaluate(z->policy, *res.state, now);
        all = all && applied[i].decision.allowed;
    }
    if (all) {
        for (ngx_uint_t i = 0; i < n; i++) {
            core::record(applied[i].zone->policy, *applied[i].state, now);
        }
    }
    for (ngx_uint_t i = n; i-- > 0;) {
        ngx_shmtx_unlock(&applied[i].zone->shpool->mutex);
    }
    return all;
}

// Picks the zone the response describes: the rejecting zone that asks the longest wait,
// or, when all admitted, the one with the fewest requests left.
const Applied& most_restrictive(const Applied* applied, ngx_uint_t n, bool admitted) noexcept {
    const Applied* best = nullptr;
    for (ngx_uint_t i = 0; i < n; i++) {
        const core::Decision& d = applied[i].decision;
        if (!admitted) {
            if (!d.allowed &&
                (best == nullptr || d.retry_after_ms > best->decision.retry_after_ms)) {
                best = &applied[i];
            }
        } else if (best == nullptr || d.remaining < best->decision.remaining ||
                   (d.remaining == best->decision.remaining &&
                    d.reset_ms > best->decision.reset_ms)) {
            best = &applied[i];
        }
    }
    return *best;
}

const char* title_for(ngx_uint_t status) noexcept {
    switch (status) {
        case 429:
            return "Too Many Requests";
        case 503:
            return "Service Unavailable";
        case 403:
            return "Forbidden";
        default:
            return "Rate Limited";
    }
}

bool has_error_page(ngx_http_request_t* r, ngx_uint_t status) noexcept {
    auto* clcf = static_cast<ngx_http_core_loc_conf_t*>(
        ngx_http_get_module_loc_conf(r, ngx_http_core_module));
    if (clcf->error_pages == nullptr) {
        return false;
    }
    auto* pages = static_cast<ngx_http_err_page_t*>(clcf->error_pages->elts);
    for (ngx_uint_t i = 0; i < clcf->error_pages->nelts; i++) {
        if (pages[i].status == static_cast<ngx_int_t>(status)) {
            return true;
        }
    }
    return false;
}

// An application/problem+json (RFC 9457) answer; error_page for the status takes precedence.
ngx_int_t reject(ngx_http_request_t* r, const LocConf* lcf, const RequestCtx* ctx) noexcept {
    if (has_error_page(r, lcf->status)) {
        return lcf->status;
    }
    const char* title = title_for(lcf->status);
    size_t len = sizeof("{\"type\":\"about:blank\",\"title\":\"\",\"status\":,"
                        "\"detail\":\"rate limit exceeded in zone \\\"\\\"\",\"zone\":\"\","
                        "\"retry_after\":}") +
                 ngx_strlen(title) + NGX_INT_T_LEN + NGX_INT64_LEN + 2 * ctx->zone_name->len;
    auto* body = static_cast<u_char*>(ngx_pnalloc(r->pool, len));
    if (body == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    u_char* end = ngx_sprintf(body,
                              "{\"type\":\"about:blank\",\"title\":\"%s\",\"status\":%ui,"
                              "\"detail\":\"rate limit exceeded in zone \\\"%V\\\"\","
                              "\"zone\":\"%V\",\"retry_after\":%L}",
                              title, lcf->status, ctx->zone_name, ctx->zone_name,
                              ctx->retry_after_s);
    ngx_http_complex_value_t cv;
    ngx_memzero(&cv, sizeof(cv));
    cv.value.data = body;
    cv.value.len = end - body;
    ngx_str_t type = ngx_string("application/problem+json");
    ngx_int_t rc = ngx_http_send_response(r, lcf->status, &type, &cv);
    ngx_http_finalize_request(r, rc);
    return NGX_DONE;
}

}  // namespace

ngx_int_t access_handler(ngx_http_request_t* r) noexcept {
    if (r != r->main) {
        return NGX_DECLINED;
    }
    auto* lcf = static_cast<LocConf*>(ngx_http_get_module_loc_conf(r, ngx_http_throttle_module));
    if (lcf->zones == nullptr || lcf->zones->nelts == 0 || get_ctx(r) != nullptr) {
        return NGX_DECLINED;  // nothing to check, or decided before an internal redirect
    }

    ngx_uint_t total = lcf->zones->nelts;
    auto** zones = static_cast<ZoneConf**>(lcf->zones->elts);
    auto* applied = static_cast<Applied*>(ngx_palloc(r->pool, total * sizeof(Applied)));
    if (applied == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_uint_t n = 0;
    for (ngx_uint_t i = 0; i < total; i++) {
        ngx_str_t key;
        if (ngx_http_complex_value(r, &zones[i]->key, &key) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        if (key.len == 0) {
            continue;  // an empty key: this zone does not apply to the request
        }
        applied[n++] = Applied{zones[i], key, nullptr, core::Decision{}, false};
    }
    if (n == 0) {
        return NGX_DECLINED;
    }

    int64_t now = now_ms();
    bool admitted = decide(applied, n, now);

    for (ngx_uint_t i = 0; i < n; i++) {
        if (applied[i].full) {
            ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                          "throttle_zone \"%V\" is full: evicting keys whose counts have not "
                          "expired yet, increase its size",
                          &applied[i].zone->name);
        }
    }

    RequestCtx* ctx = create_ctx(r);
    if (ctx == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    const Applied& shown = most_restrictive(applied, n, admitted);
    ctx->outcome = admitted         ? Outcome::passed
                   : lcf->dry_run ? Outcome::rejected_dry_run
                                  : Outcome::rejected;
    ctx->headers = lcf->headers;
    ctx->zone_name = &shown.zone->name;
    ctx->limit = shown.decision.limit;
    ctx->remaining = shown.decision.remaining;
    ctx->window_s = core::window_seconds(shown.zone->policy);
    ctx->reset_s = ceil_seconds(shown.decision.reset_ms);
    ctx->retry_after_s = admitted ? 0 : ngx_max(1, ceil_seconds(shown.decision.retry_after_ms));

    if (admitted) {
        return NGX_DECLINED;
    }
    ngx_log_error(lcf->log_level, r->connection->log, 0,
                  "limiting request%s by zone \"%V\", retry after %Ls",
                  lcf->dry_run ? ", dry run," : "", &shown.zone->name, ctx->retry_after_s);
    if (lcf->dry_run) {
        return NGX_DECLINED;
    }
    return reject(r, lcf, ctx);
}

}  // namespace throttle::ngx
