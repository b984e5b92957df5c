// The response cache's lookup, in the pre-content phase (before proxy_pass, uwsgi_pass,
// fastcgi_pass take the request in the content phase).
//
// GET and HEAD only. One LOOKUP (batched with the turn's others, lookup.cpp) fetches both
// generations and the entry (and takes the fill lock on a miss) while the request waits on
// nginx's event loop. Then:
//   fresh entry           HIT: answered here (serve.cpp), the upstream never sees the request
//   stale entry           one request takes the refresh lock and goes upstream (EXPIRED); the
//                         others are answered with the stale entry (UPDATING, or STALE when
//                         the lock could not be asked for)
//   miss, lock taken      MISS: this request fills (fill.cpp: the filters store the response;
//                         leases.cpp renews the lock while it runs)
//   miss, lock held       another request fills: wait until it stored (HIT from its bytes, or
//                         from a second lookup when it filled in another worker or host) or
//                         gave up; look again once per lease (a dead filler's lock is gone
//                         then: this request may take it and fill), at most
//                         throttle_cache_lock_timeout in all; then MISS upstream
//   miss, no lock asked   HEAD, conditional: upstream at once (MISS); whether anyone fills is
//                         unknown, and their answer is not stored
//   Redis down or slow    BYPASS (circuit open) or ERROR (failed, timed out): upstream
//   vary record           the base key holds a vary record (the resource varies, vary.hpp):
//                         the variant of this request's header values is looked up (a
//                         second round trip), and the memo remembers the list, so the next
//                         request of the resource looks its variant up at once
// Nothing here ever answers 5xx because of Redis: every failure passes the request on.
//
// Counters (issue 11; nothing is counted without throttle_metrics): a client request's lookup
// is counted once, under its namespace (the location that looked up) and its final
// $throttle_cache_status, where that status is final: when the request goes upstream (pass(),
// and the BYPASS/ERROR decided before any lookup) or when it is answered from an entry
// (cache_serve(), which may still turn a HIT into BYPASS). A request that waited for another
// request's fill counts its wait at the same moment: timed_out when throttle_cache_lock_timeout
// ended it, woken otherwise. A request that ends (the client left) before its status is set
// counts nothing.
#include <algorithm>
#include <cstring>
#include <iterator>
#include <new>

#include "core/cache_identity.hpp"
#include "core/http_text.hpp"
#include "ngx/cache/cache.hpp"
#include "ngx/cache/invalidate.hpp"
#include "ngx/cache/leases.hpp"
#include "ngx/cache/local.hpp"
#include "ngx/cache/lookup.hpp"
#include "ngx/cache/memo.hpp"
#include "ngx/cache/orphans.hpp"
#include "ngx/cache/request.hpp"
#include "ngx/cache/vary.hpp"
#include "ngx/cache/waiters.hpp"
#include "ngx/metrics.hpp"
#include "ngx/redis_link.hpp"

namespace throttle::ngx {
namespace {

namespace cm = core::metrics;

// $throttle_cache_status (CacheStatus, none first) and the counters' statuses (CacheLookup)
// list the same values in the same order.
constexpr bool same_lookup_order() noexcept {
    constexpr CacheStatus ngx_order[] = {
        CacheStatus::hit,      CacheStatus::miss,   CacheStatus::expired, CacheStatus::stale,
        CacheStatus::updating, CacheStatus::bypass, CacheStatus::error};
    constexpr cm::CacheLookup core_order[] = {cm::CacheLookup::hit,      cm::CacheLookup::miss,
                                              cm::CacheLookup::expired,  cm::CacheLookup::stale,
                                              cm::CacheLookup::updating, cm::CacheLookup::bypass,
                                              cm::CacheLookup::error};
    static_assert(std::size(ngx_order) == cm::cache_lookup_count);
    for (size_t i = 0; i < cm::cache_lookup_count; i++) {
        if (static_cast<size_t>(ngx_order[i]) != i + 1 || static_cast<size_t>(core_order[i]) != i) {
            return false;
        }
    }
    return true;
}
static_assert(same_lookup_order(), "CacheStatus and core::metrics::CacheLookup must agree");

void count_lookup(cm::CacheMetrics* m, CacheStatus s) noexcept {
    if (m != nullptr && s != CacheStatus::none) {
        cm::add(m->lookups[static_cast<size_t>(s) - 1]);
    }
}

// A status decided before (or instead of) a lookup: final, the request goes on without the
// cache.
ngx_int_t decline(RequestCtx* ctx, const CacheLocConf& conf, CacheStatus s) noexcept {
    ctx->cache_status = s;
    count_lookup(conf.metrics->m, s);
    return NGX_DECLINED;
}

// Whether the request carries one of the configured credential headers.
bool has_credentials(ngx_http_request_t* r, const CacheLocConf& conf) noexcept {
    if (conf.credentials == nullptr || conf.credentials->nelts == 0) {
        return false;
    }
    auto* names = static_cast<ngx_str_t*>(conf.credentials->elts);
    ngx_uint_t n = conf.credentials->nelts;
    for (ngx_list_part_t* part = &r->headers_in.headers.part; part; part = part->next) {
        auto* h = static_cast<ngx_table_elt_t*>(part->elts);
        for (ngx_uint_t i = 0; i < part->nelts; i++) {
            for (ngx_uint_t k = 0; k < n; k++) {
                if (h[i].key.len == names[k].len &&
                    ngx_strncasecmp(h[i].key.data, names[k].data, names[k].len) == 0) {
                    return true;
                }
            }
        }
    }
    return false;
}

// Whether the upstream may answer this request with something that is not the entry: a
// conditional request is passed on with its headers and may be answered 304 or 412, which
// is not stored. Such a miss does not take the fill lock: holding it would make the
// requests behind it wait for a fill that stores nothing and then go upstream unfilled.
// (A range is not one of these: the full 200 is captured before nginx's range filter.)
bool conditional(ngx_http_request_t* r) noexcept {
    const ngx_http_headers_in_t& h = r->headers_in;
    return h.if_modified_since != nullptr || h.if_none_match != nullptr ||
           h.if_unmodified_since != nullptr || h.if_match != nullptr;
}

// Whether the request carries a body, or one may still come: a Content-Length above 0, a
// chunked body, an HTTP/2 stream its client has not closed.
bool has_body(ngx_http_request_t* r) noexcept {
    if (r->headers_in.content_length_n > 0 || r->headers_in.chunked) {
        return true;
    }
#if (NGX_HTTP_V2)
    if (r->stream != nullptr && !r->stream->in_closed) {
        return true;
    }
#endif
    return false;
}

void set_status(CacheRequest& cr, CacheStatus s) noexcept {
    cr.status = s;
    if (RequestCtx* ctx = get_ctx(cr.request())) {
        ctx->cache_status = s;
    }
}

// The request goes on to the upstream. The request may be gone when this returns.
void pass(CacheRequest& cr, CacheStatus s) noexcept {
    set_status(cr, s);
    cache_count_lookup(cr, s);
    cr.step = CacheRequest::Step::pass;
    cr.wait_timer.stop();
    cr.resume();
}

// The request is answered with `entry`. The request may be gone when this returns.
void serve_later(CacheRequest& cr, CacheStatus s,
                 std::shared_ptr<const std::string> entry) noexcept {
    set_status(cr, s);
    if (entry != cr.entry) {
        cr.view_valid = false;  // decoded again from these bytes when served
    }
    cr.entry = std::move(entry);
    cr.step = CacheRequest::Step::serve;
    cr.wait_timer.stop();
    cr.resume();
}

// This request took the fill lock: it fills, from the upstream's answer.
bool begin_fill(CacheRequest& cr) noexcept {
    try {
        cr.fill.begin(cr.request(), cr.conf, cr.fill_lock(), cr.gen, cr.entry_key,
                      FillVary{cr.base_key, cr.vary, cr.tag()});
        return true;
    } catch (...) {
        return false;  // the lock expires by itself, one lease after it was taken
    }
}

// How much longer the request may wait for another request's fill (0: no longer).
ngx_msec_t wait_left(const CacheRequest& cr) noexcept {
    ngx_msec_t waited = cr.wait_began ? ngx_current_msec - cr.wait_since : 0;
    return waited >= cr.conf->lock_timeout ? 0 : cr.conf->lock_timeout - waited;
}

// The timer of a wait: until the next lease, or the end of the wait if that comes first.
void arm_wait_timer(CacheRequest& cr) noexcept {
    ngx_add_timer(&cr.wait_timer.ev, std::min(wait_left(cr), cache_lease_ms(*cr.conf)));
}

// throttle_cache_lock_timeout has passed since the request began to wait.
void give_up_waiting(CacheRequest& cr) noexcept {
    ngx_log_error(NGX_LOG_INFO, cr.request()->connection->log, 0,
                  "throttle_cache: waited %M ms for another request to fill the entry, "
                  "going upstream",
                  cr.conf->lock_timeout);
    cr.wait_timed_out = true;
    pass(cr, CacheStatus::miss);
}

// Waits for the request that fills the entry (first, or again after looking once more).
void wait_for_fill(const std::shared_ptr<CacheRequest>& cr) noexcept {
    CacheRequest& c = *cr;
    if (!c.wait_began) {
        c.wait_began = true;
        c.wait_since = ngx_current_msec;
    }
    if (wait_left(c) == 0) {
        give_up_waiting(c);
        return;
    }
    // cache_wait() may wake the request at once (its fill just ended).
    c.step = CacheRequest::Step::waiting;
    arm_wait_timer(c);
    bool waited_before = c.waited;
    c.waited = true;  // before cache_wait(): it may wake (and count) the request at once
    if (!cache_wait(c.entry_key, cr)) {
        c.waited = waited_before;
        pass(c, CacheStatus::miss);
    }
}

// A lease has passed while waiting, or the whole wait.
void wait_timeout(ngx_event_t* ev) noexcept {
    CacheRequest* cr = RequestTimer<CacheRequest>::owner_of(ev);
    std::shared_ptr<CacheRequest> keep = cr->weak_from_this().lock();  // pass() may end it
    if (!keep || cr->gone() || cr->step != CacheRequest::Step::waiting) {
        return;
    }
    if (wait_left(*cr) == 0) {
        cache_unwait(cr->entry_key, cr);
        give_up_waiting(*cr);
        return;
    }
    if (cache_filling_here(cr->entry_key)) {
        arm_wait_timer(*cr);  // the filler runs in this worker, alive: it wakes the request
        return;
    }
    // The filler is elsewhere and may have died: its lock is then gone within a lease, and this
    // lookup may take it (and fill). Else the request waits again, for what is left.
    cache_unwait(cr->entry_key, cr);
    cr->step = CacheRequest::Step::asking;
    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, cr->request()->connection->log, 0,
                   "throttle_cache: still waiting for the fill after a lease, looking again");
    if (!cache_lookup_submit(keep, cr->fills)) {
        pass(*cr, CacheStatus::error);
    }
}

void on_refresh_lock(const std::shared_ptr<CacheRequest>& cr, redis::Result&& res,
                     std::shared_ptr<const std::string>&& entry) noexcept {
    if (cr->gone() || worker_exiting()) {
        return;
    }
    bool taken = false;
    if (!res.ok() || !redis::parse_cache_fill_lock_reply(res.reply, taken)) {
        redis_reply_unusable(res, "cache refresh lock");
        serve_later(*cr, CacheStatus::stale, std::move(entry));
        return;
    }
    if (!taken) {
        serve_later(*cr, CacheStatus::updating, std::move(entry));
        return;
    }
    begin_fill(*cr);
    pass(*cr, CacheStatus::expired);
}

// A stale entry: one request refreshes it, the others are served the stale bytes.
void refresh_or_serve_stale(const std::shared_ptr<CacheRequest>& cr,
                            std::shared_ptr<const std::string>&& entry) noexcept {
    if (!cr->fills || cache_filling_here(cr->entry_key)) {
        serve_later(*cr, cr->head ? CacheStatus::stale : CacheStatus::updating, std::move(entry));
        return;
    }
    redis::Target* client = redis_client();
    try {
        std::vector<std::string> argv = redis::cache_fill_lock_argv(
            cr->target(), cr->gen, cr->token(), static_cast<int64_t>(cache_lease_ms(*cr->conf)));
        std::vector<std::string_view> args(argv.begin(), argv.end());
        auto held = std::make_shared<std::shared_ptr<const std::string>>(std::move(entry));
        client->command(args, [cr, held](redis::Result&& res) noexcept {
            on_refresh_lock(cr, std::move(res), std::move(*held));
        });
    } catch (...) {
        serve_later(*cr, CacheStatus::stale, std::move(entry));
    }
}

// A lock this request took, but it will not fill (it ended, or the worker exits): a fill that
// is released at once gives it back.
void release_unused_lock(CacheRequest& c, const redis::CacheLookup& out) noexcept {
    if (!out.lock_taken || worker_exiting()) {
        return;
    }
    try {
        Fill unused;
        unused.begin(nullptr, c.conf, c.fill_lock(), out.generation(),
                     redis::cache_entry_key(c.target(), out.generation()),
                     FillVary{c.base_key, c.vary, 0});
        unused.release();
    } catch (...) {
    }
}

// The request looks up the variant of `list` for its own header values (key = V). False when a
// value is too long to be cached.
bool use_variant(CacheRequest& c, const core::cache::VaryList& list) {
    core::Sha256Digest v;
    if (!cache_variant(c.request(), c.base_key, list, v)) {
        return false;
    }
    c.key = v;
    c.vary = list;
    return true;
}

// The base key holds a vary record: look the request's variant up (once).
void follow_vary_record(const std::shared_ptr<CacheRequest>& cr, std::string_view record) noexcept {
    CacheRequest& c = *cr;
    core::cache::VaryList list;
    if (!c.vary.empty() || c.vary_followed || !core::cache::decode_vary_record(record, list)) {
        // Records live under base keys only, and the one followed led to a variant key.
        ngx_log_error(NGX_LOG_WARN, c.request()->connection->log, 0,
                      "throttle_cache: ignoring a vary record that does not decode");
        pass(c, CacheStatus::miss);
        return;
    }
    cache_vary_memo_put(c.tag(), list);
    try {
        if (!use_variant(c, list)) {
            ngx_log_debug0(NGX_LOG_DEBUG_HTTP, c.request()->connection->log, 0,
                           "throttle_cache: a header the resource varies on is too long");
            pass(c, CacheStatus::bypass);
            return;
        }
    } catch (...) {
        pass(c, CacheStatus::error);
        return;
    }
    c.vary_followed = true;
    c.step = CacheRequest::Step::asking;
    // A relookup (woken by a fill elsewhere) may fill its own variant, never wait twice.
    if (!cache_lookup_submit(cr, c.fills)) {
        pass(c, CacheStatus::error);
    }
}

// A hit: fresh (HIT), stale (refresh or UPDATING) or expired (upstream).
void on_hit(const std::shared_ptr<CacheRequest>& cr, redis::CacheLookup& out) noexcept {
    CacheRequest& c = *cr;
    if (core::cache::is_vary_record(out.entry)) {
        follow_vary_record(cr, out.entry);
        return;
    }
    std::shared_ptr<const std::string> entry;
    core::cache::DecodeLimits limits;
    limits.max_size = c.conf->max_size;
    try {
        entry = std::make_shared<const std::string>(std::move(out.entry));
        c.entry = entry;  // the bytes c.decoded points into
    } catch (...) {
        pass(c, CacheStatus::error);
        return;
    }
    if (!core::cache::decode(*entry, c.decoded, limits)) {
        ngx_log_error(NGX_LOG_WARN, c.request()->connection->log, 0,
                      "throttle_cache: ignoring an entry that does not decode");
        pass(c, CacheStatus::miss);
        return;
    }
    c.view_valid = true;  // `entry` is what serve_later() keeps
    switch (core::cache::freshness(c.decoded, now_ms())) {
        case core::cache::Freshness::fresh:
            if (c.local_keep) {
                cache_local_put(*c.conf, core::cache::LocalKey{view(c.conf->ns), c.id(), c.key},
                                c.gen, c.local_seen, *entry);
            }
            serve_later(c, CacheStatus::hit, std::move(entry));
            return;
        case core::cache::Freshness::stale:
            try {
                c.entry_key_now();  // the refresh fills under it
            } catch (...) {
                pass(c, CacheStatus::error);
                return;
            }
            refresh_or_serve_stale(cr, std::move(entry));
            return;
        case core::cache::Freshness::expired:
            pass(c, CacheStatus::expired);
            return;
    }
}

// A miss: fill (the lock was taken here), or wait for the request that fills.
void on_miss(const std::shared_ptr<CacheRequest>& cr, const redis::CacheLookup& out) noexcept {
    CacheRequest& c = *cr;
    if (out.lock_taken) {
        begin_fill(c);
        pass(c, CacheStatus::miss);
        return;
    }
    // A lookup that did not ask for the lock cannot tell whether anyone fills (HEAD and
    // conditional requests), and one after a remote fill stored found nothing: upstream.
    if (!c.fills || c.relookup || !cache_can_wait(c.entry_key)) {
        pass(c, CacheStatus::miss);
        return;
    }
    wait_for_fill(cr);
}

}  // namespace

// Declared in cache/conf.hpp.
bool sent_twice(ngx_http_request_t* r, const ngx_array_t* list) noexcept {
    if (list == nullptr) {
        return false;
    }
    auto* sources = static_cast<IdentitySource*>(list->elts);
    for (ngx_uint_t k = 0; k < list->nelts; k++) {
        std::string_view name = view(sources[k].name);
        size_t seen = 0;
        for (ngx_list_part_t* part = &r->headers_in.headers.part; part; part = part->next) {
            auto* h = static_cast<ngx_table_elt_t*>(part->elts);
            for (ngx_uint_t i = 0; i < part->nelts; i++) {
                if (h[i].hash == 0) {
                    continue;
                }
                if (sources[k].cookie) {
                    if (core::http::iequals(view(h[i].key), "cookie")) {
                        seen += core::cache::cookie_occurrences(view(h[i].value), name);
                    }
                } else if (core::cache::header_is_variable(view(h[i].key), name)) {
                    ++seen;
                }
                if (seen > 1) {
                    return true;
                }
            }
        }
    }
    return false;
}

void cache_count_lookup_in(cm::CacheMetrics& m, const CacheRequest& cr, CacheStatus s) noexcept {
    count_lookup(&m, s);
    if (cr.waited) {
        cm::add(m.fill_waits[static_cast<size_t>(cr.wait_timed_out ? cm::FillWait::timed_out
                                                                   : cm::FillWait::woken)]);
    }
}

CacheRequest::CacheRequest(ngx_http_request_t* r, const CacheLocConf* c) noexcept
    : RequestBound(r), conf(c) {
    head = r->method == NGX_HTTP_HEAD;
    fills = !head && !conditional(r);
    wait_timer.init(this, wait_timeout, r);
}

CacheRequest::~CacheRequest() {
    wait_timer.stop();
}

// The request ended (answered, or aborted while waiting).
void CacheRequest::request_ended() noexcept {
    wait_timer.stop();
    if (step == Step::waiting) {
        cache_unwait(entry_key, this);
    }
    fill.release();  // no-op unless it holds a lock it did not store under
    stream.reset();
    plain.reset();
    cache_inflate_release(inflate_charge);
    inflate_charge = 0;
}

void cache_lookup_done(const std::shared_ptr<CacheRequest>& cr, redis::Failure failure,
                       redis::CacheLookup* answer, bool want_lock) noexcept {
    CacheRequest& c = *cr;
    if (answer == nullptr && want_lock &&
        (failure == redis::Failure::Timeout || failure == redis::Failure::Disconnected)) {
        // Redis may have run the lookup and taken the lock after all.
        try {
            cache_abandon_lock(c.fill_lock());
        } catch (...) {
            // The lock expires by itself (throttle_cache_lock_timeout).
        }
    }
    if (c.gone() || worker_exiting()) {
        if (answer != nullptr) {
            release_unused_lock(c, *answer);
        }
        return;
    }
    if (answer == nullptr) {  // the client logged why, once per incident
        pass(c, failure == redis::Failure::CircuitOpen ? CacheStatus::bypass : CacheStatus::error);
        return;
    }
    try {
        c.gen = answer->generation();
        c.entry_key.clear();
        if (!answer->hit) {
            c.entry_key_now();  // a miss waits or fills under it
        }
    } catch (...) {
        pass(c, CacheStatus::error);
        return;
    }
    if (RequestCtx* ctx = get_ctx(c.request())) {
        ctx->cache_tier = 2;  // redis
    }
    if (c.local_keep) {
        // The mirror moves up to what Redis said.
        cache_local_observe(*c.conf, c.id(), c.gen, c.local_seen);
    }
    if (answer->hit) {
        on_hit(cr, *answer);
    } else {
        on_miss(cr, *answer);
    }
}

void cache_woken(const std::shared_ptr<CacheRequest>& cr, bool stored,
                 const std::shared_ptr<const std::string>& entry) noexcept {
    if (cr->gone() || worker_exiting() || cr->step != CacheRequest::Step::waiting) {
        return;
    }
    if (!stored) {
        pass(*cr, CacheStatus::miss);  // the filler got nothing storable: go upstream
        return;
    }
    if (entry) {
        serve_later(*cr, CacheStatus::hit, entry);  // filled by this worker: its bytes
        return;
    }
    // Filled by another worker or host: read it (once; a miss now goes upstream).
    cr->wait_timer.stop();
    cr->step = CacheRequest::Step::asking;
    cr->relookup = true;
    if (!cache_lookup_submit(cr, false)) {
        pass(*cr, CacheStatus::error);
    }
}

namespace {

// The key's path and query: as the client sent them when nothing rewrote the URI (what
// proxy_pass without a URI forwards; a "#..." nginx leaves out of $args included), the
// normalised r->uri and $args otherwise. Either way a different path is a different key; only
// spelling variants cost a miss.
void key_path_and_query(ngx_http_request_t* r, std::string_view& path, std::string_view& query) {
    path = view(r->uri);
    query = view(r->args);
    if (r->valid_unparsed_uri && r->unparsed_uri.len > 0) {
        path = view(r->unparsed_uri);
        query = {};
        size_t q = path.find('?');
        if (q != std::string_view::npos) {
            query = path.substr(q + 1);
            path = path.substr(0, q);
        }
    }
}

// Where the request was addressed, as nginx resolved it: $scheme and $host (the absolute-form
// target's host, else the Host header's, lowercased, without its port or a trailing dot; else
// the server's name). The key normalises the host once more (core::cache::cache_key).
void key_origin(ngx_http_request_t* r, core::cache::CacheKeyInput& in) noexcept {
    in.scheme = "http";
#if (NGX_HTTP_SSL)
    if (r->connection->ssl != nullptr) {
        in.scheme = "https";
    }
#endif
    if (r->headers_in.server.len > 0) {
        in.host = view(r->headers_in.server);
    } else {
        auto* cscf = static_cast<ngx_http_core_srv_conf_t*>(
            ngx_http_get_module_srv_conf(r, ngx_http_core_module));
        in.host = view(cscf->server_name);
    }
}

// The request's entry from the local tier, if it may be served (fresh, within its local age,
// under the mirrored generations): cr is then ready for cache_serve() (HIT, tier local).
bool serve_local(ngx_http_request_t* r, CacheRequest& cr, RequestCtx* ctx) {
    auto bytes = std::make_shared<std::string>();
    core::cache::Generation gen;
    if (!cache_local_get(*cr.conf, core::cache::LocalKey{view(cr.conf->ns), cr.id(), cr.key},
                         *bytes, gen)) {
        return false;
    }
    core::cache::DecodeLimits limits;
    limits.max_size = cr.conf->max_size;
    std::shared_ptr<const std::string> entry = std::move(bytes);
    if (!core::cache::decode(*entry, cr.decoded, limits) ||
        core::cache::freshness(cr.decoded, now_ms()) != core::cache::Freshness::fresh) {
        return false;
    }
    cr.entry = std::move(entry);
    cr.view_valid = true;
    cr.gen = gen;
    cr.entry_key.clear();  // computed when needed
    cr.status = CacheStatus::hit;
    cr.step = CacheRequest::Step::serve;
    ctx->cache_status = CacheStatus::hit;
    ctx->cache_tier = 1;  // local
    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "throttle_cache: answered from the local tier");
    return true;
}

// Starts the lookup of a new request. NGX_DONE: it waits for Redis; NGX_DECLINED: it goes on
// without the cache (ctx->cache_status says why).
ngx_int_t start_lookup(ngx_http_request_t* r, const CacheLocConf& conf, RequestCtx* ctx) {
    ngx_str_t identity = ngx_null_string;
    if (conf.user != nullptr && ngx_http_complex_value(r, conf.user, &identity) != NGX_OK) {
        return decline(ctx, conf, CacheStatus::bypass);
    }
    core::cache::RequestFacts facts;
    facts.method = view(r->method_name);
    facts.has_body = has_body(r);  // the body may select the answer; the key does not hold it
    // Credentials without an identity: the answer may be personal; never share it.
    facts.has_credentials = identity.len == 0 && has_credentials(r, conf);
    facts.has_user_identity = identity.len > 0;
    facts.ambiguous = sent_twice(r, conf.user_sources) || sent_twice(r, conf.key_sources);
    if (!core::cache::request_cacheable(facts)) {
        return decline(ctx, conf, CacheStatus::bypass);
    }
    redis::Target* client = redis_client();
    const bool redis_up = client != nullptr && client->available();
    if (!redis_up && conf.local.zone == nullptr) {
        return decline(ctx, conf, CacheStatus::bypass);
    }
    char id_buf[64];
    const std::string_view id(
        id_buf, cache_identity_to(view(main_conf(r)->cache.secret), view(identity), id_buf));
    const bool local = cache_local_applies(conf, id);
    if (!redis_up && !local) {
        return decline(ctx, conf, CacheStatus::bypass);
    }
    if (cache_invalidation_pending(view(conf.ns), id)) {
        // This user's write is not confirmed by Redis yet: their entries may be stale.
        return decline(ctx, conf, CacheStatus::bypass);
    }
    ngx_str_t extra = ngx_null_string;
    if (conf.key != nullptr && ngx_http_complex_value(r, conf.key, &extra) != NGX_OK) {
        return decline(ctx, conf, CacheStatus::bypass);
    }
    std::shared_ptr<CacheRequest> cr = bind_to_request<CacheRequest>(r, &conf);
    if (cr == nullptr) {
        return decline(ctx, conf, CacheStatus::error);
    }
    std::memcpy(cr->id_buf, id.data(), id.size());
    cr->id_len = static_cast<uint8_t>(id.size());
    core::cache::CacheKeyInput in;
    in.ns = view(conf.ns);
    in.identity_digest = cr->id();
    in.method = view(r->method_name);
    key_path_and_query(r, in.path, in.query);
    key_origin(r, in);
    in.extra = view(extra);  // throttle_cache_key
    cr->key = cache_request_key(in);
    cr->base_key = cr->key;
    cr->tag_host = in.host;
    cr->tag_path = in.path;
    cr->tag_query = in.query;
    core::cache::VaryList known;
    if (cache_vary_memo_used() && cache_vary_memo_get(cr->tag(), known) &&
        !use_variant(*cr, known)) {
        cr->step = CacheRequest::Step::done;
        return decline(ctx, conf, CacheStatus::bypass);  // a header it varies on is too long
    }
    ctx->cache = cr.get();
    if (local) {
        // The local tier first: trusted while this worker's subscriber hears every message;
        // without Redis at all, its entries serve up to their local age (ttl) regardless.
        const bool trusted = cache_local_trusted();
        if (trusted || !redis_up) {
            if (serve_local(r, *cr, ctx)) {
                return cache_serve(r, *cr);
            }
        } else {
            cache_local_count_untrusted(conf);
        }
        if (trusted) {
            cr->local_keep = true;
            cr->local_seen = cache_local_snapshot(conf);
        }
    }
    if (!redis_up) {
        cr->step = CacheRequest::Step::done;
        return decline(ctx, conf, CacheStatus::bypass);
    }
    if (cr->fills) {
        cr->token_len = static_cast<uint8_t>(cache_fill_token_to(cr->token_buf));
    }
    if (!cache_lookup_submit(cr, cr->fills)) {
        cr->step = CacheRequest::Step::done;
        return decline(ctx, conf, CacheStatus::error);
    }
    cr->suspend();
    return NGX_DONE;
}

}  // namespace

ngx_int_t cache_handler(ngx_http_request_t* r) noexcept {
    if (r != r->main) {
        return NGX_DECLINED;
    }
    const CacheLocConf& conf = loc_conf(r)->cache;
    if (!cache_enabled(conf)) {
        return NGX_DECLINED;
    }
    RequestCtx* ctx = get_ctx(r);
    if (ctx != nullptr && ctx->cache != nullptr) {
        // Run again after the lookup or the wait: its outcome decides.
        CacheRequest& cr = *ctx->cache;
        switch (cr.step) {
            case CacheRequest::Step::asking:
            case CacheRequest::Step::waiting:
                return NGX_AGAIN;
            case CacheRequest::Step::serve:
                return cache_serve(r, cr);
            case CacheRequest::Step::pass:
                cr.step = CacheRequest::Step::done;
                return NGX_DECLINED;
            case CacheRequest::Step::done:
                return NGX_DECLINED;
        }
    }
    if (ctx != nullptr && ctx->cache_status != CacheStatus::none) {
        return NGX_DECLINED;  // decided before an internal redirect
    }
    if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD))) {
        return NGX_DECLINED;
    }
    if (ctx == nullptr && (ctx = create_ctx(r)) == nullptr) {
        return NGX_DECLINED;
    }
    try {
        return start_lookup(r, conf, ctx);
    } catch (...) {
        return decline(ctx, conf, CacheStatus::error);
    }
}

}  // namespace throttle::ngx
