// The response cache's lookup, in the pre-content phase (before proxy_pass, uwsgi_pass,
// fastcgi_pass take the request in the content phase).
//
// GET and HEAD only. One LOOKUP script call fetches both generations and the entry (and takes
// the fill lock on a miss) while the request waits on nginx's event loop. Then:
//   fresh entry           HIT: answered here, the upstream never sees the request
//   stale entry           one request takes the refresh lock and goes upstream (EXPIRED); the
//                         others are answered with the stale entry (UPDATING, or STALE when
//                         the lock could not be asked for)
//   miss, lock taken      MISS: this request fills (the filters store the response)
//   miss, lock held       another request fills: wait until it stored (HIT from its bytes, or
//                         from a second lookup when it filled in another worker or host) or
//                         gave up, at most throttle_cache_lock_timeout; then MISS upstream
//   Redis down or slow    BYPASS (circuit open) or ERROR (failed, timed out): upstream
// Nothing here ever answers 5xx because of Redis: every failure passes the request on.
#include <new>

#include "core/gzip.hpp"
#include "core/http_text.hpp"
#include "ngx/cache_request.hpp"
#include "ngx/worker.hpp"

namespace throttle::ngx {
namespace {

MainConf* main_conf(ngx_http_request_t* r) noexcept {
    return static_cast<MainConf*>(ngx_http_get_module_main_conf(r, ngx_http_throttle_module));
}

// Whether the request carries one of the configured credential headers.
bool has_credentials(ngx_http_request_t* r, const LocConf* lcf) noexcept {
    if (lcf->cache_credentials == nullptr || lcf->cache_credentials->nelts == 0) {
        return false;
    }
    auto* names = static_cast<ngx_str_t*>(lcf->cache_credentials->elts);
    ngx_uint_t n = lcf->cache_credentials->nelts;
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

bool client_accepts_gzip(ngx_http_request_t* r) noexcept {
#if (NGX_HTTP_GZIP || NGX_HTTP_HEADERS)
    ngx_table_elt_t* ae = r->headers_in.accept_encoding;
    return ae != nullptr && core::accepts_gzip(view(ae->value));
#else
    static const ngx_str_t name = ngx_string("accept-encoding");
    for (ngx_list_part_t* part = &r->headers_in.headers.part; part; part = part->next) {
        auto* h = static_cast<ngx_table_elt_t*>(part->elts);
        for (ngx_uint_t i = 0; i < part->nelts; i++) {
            if (h[i].key.len == name.len &&
                ngx_strncasecmp(h[i].key.data, name.data, name.len) == 0) {
                return core::accepts_gzip(view(h[i].value));
            }
        }
    }
    return false;
#endif
}

void set_status(CacheRequest& cr, CacheStatus s) noexcept {
    if (RequestCtx* ctx = get_ctx(cr.r)) {
        ctx->cache_status = s;
    }
}

ngx_table_elt_t* push_header(ngx_http_request_t* r, std::string_view name,
                             std::string_view value) noexcept {
    auto* h = static_cast<ngx_table_elt_t*>(ngx_list_push(&r->headers_out.headers));
    if (h == nullptr) {
        return nullptr;
    }
    h->hash = 1;
    h->key.data = reinterpret_cast<u_char*>(const_cast<char*>(name.data()));
    h->key.len = name.size();
    h->value.data = reinterpret_cast<u_char*>(const_cast<char*>(value.data()));
    h->value.len = value.size();
    h->lowcase_key = nullptr;
    return h;
}

bool mentions_accept_encoding(std::string_view vary) noexcept {
    static constexpr std::string_view ae = "accept-encoding";
    for (size_t i = 0; i + ae.size() <= vary.size(); i++) {
        if (ngx_strncasecmp(reinterpret_cast<u_char*>(const_cast<char*>(vary.data() + i)),
                            reinterpret_cast<u_char*>(const_cast<char*>(ae.data())),
                            ae.size()) == 0) {
            return true;
        }
    }
    return false;
}

// Answers the request from cr.entry (decoded and checked when it was fetched). Called from the
// phase handler; finalizes the request.
ngx_int_t serve(ngx_http_request_t* r, CacheRequest& cr) noexcept {
    cr.step = CacheRequest::Step::done;
    // A body the client sent with its GET must be read away, or nginx would parse it as the
    // connection's next request (request smuggling).
    ngx_int_t rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }
    if (!cr.view_valid) {
        core::cache::DecodeLimits limits;
        limits.max_size = cr.lcf->cache_max_size;
        if (!core::cache::decode(*cr.entry, cr.decoded, limits)) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;  // not reached: checked when fetched
        }
        cr.view_valid = true;
    }
    const core::cache::EntryView* v = &cr.decoded;
    bool gz = v->gzip && client_accepts_gzip(r);
    std::string_view body = v->body;
    if (v->gzip && !gz) {
        cr.plain = cache_plain_body(cr.entry_key, *v);
        if (!cr.plain) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "throttle_cache: a stored body does not decompress");
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        body = *cr.plain;  // lives as long as the request
    }

    r->headers_out.status = v->status;
    bool vary_ae = false;
    for (size_t i = 0; i < v->header_count; i++) {
        const core::cache::HeaderView& h = v->headers[i];
        if (core::http::iequals(h.name, "content-type")) {
            r->headers_out.content_type.data =
                reinterpret_cast<u_char*>(const_cast<char*>(h.value.data()));
            r->headers_out.content_type.len = h.value.size();
            size_t len = 0;
            while (len < h.value.size() && h.value[len] != ';' && h.value[len] != ' ') {
                len++;
            }
            r->headers_out.content_type_len = len;
            r->headers_out.content_type_lowcase = nullptr;
            continue;
        }
        if (core::http::iequals(h.name, "vary") && mentions_accept_encoding(h.value)) {
            vary_ae = true;
        }
        ngx_table_elt_t* t = push_header(r, h.name, h.value);
        if (t == nullptr) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        // nginx's not_modified filter answers If-None-Match / If-Modified-Since from these.
        if (core::http::iequals(h.name, "etag")) {
            r->headers_out.etag = t;
        } else if (core::http::iequals(h.name, "last-modified")) {
            time_t lm = ngx_parse_http_time(t->value.data, t->value.len);
            if (lm != NGX_ERROR) {
                r->headers_out.last_modified = t;
                r->headers_out.last_modified_time = lm;
            }
        }
    }
    auto* age = static_cast<u_char*>(ngx_pnalloc(r->pool, NGX_INT64_LEN));
    if (age == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    size_t age_len = ngx_sprintf(age, "%L", core::cache::age_seconds(*v, now_ms())) - age;
    if (push_header(r, "Age", {reinterpret_cast<char*>(age), age_len}) == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (gz) {
        ngx_table_elt_t* ce = push_header(r, "Content-Encoding", "gzip");
        if (ce == nullptr) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        r->headers_out.content_encoding = ce;
    }
    if (v->gzip && !vary_ae && push_header(r, "Vary", "Accept-Encoding") == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    r->headers_out.content_length_n = static_cast<off_t>(body.size());
    r->allow_ranges = v->status == NGX_HTTP_OK;

    rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        ngx_http_finalize_request(r, rc);
        return NGX_DONE;
    }
    if (body.empty()) {
        ngx_http_finalize_request(r, ngx_http_send_special(r, NGX_HTTP_LAST));
        return NGX_DONE;
    }
    auto* b = static_cast<ngx_buf_t*>(ngx_calloc_buf(r->pool));
    if (b == nullptr) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return NGX_DONE;
    }
    b->pos = reinterpret_cast<u_char*>(const_cast<char*>(body.data()));
    b->last = b->pos + body.size();
    b->memory = 1;
    b->last_buf = 1;
    b->last_in_chain = 1;
    ngx_chain_t out{b, nullptr};
    ngx_http_finalize_request(r, ngx_http_output_filter(r, &out));
    return NGX_DONE;
}

// The request stops waiting and runs its phases again (our handler answers or passes).
void resume(CacheRequest& cr) noexcept {
    ngx_http_request_t* r = cr.r;
    ngx_connection_t* c = r->connection;
    if (cr.wait_timer.ev.timer_set) {
        ngx_del_timer(&cr.wait_timer.ev);
    }
    if (!cr.holds_count) {
        return;  // decided before the handler went asynchronous: it picks the step up itself
    }
    cr.holds_count = false;
    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_core_run_phases;
    ngx_http_core_run_phases(r);
    ngx_http_finalize_request(r, NGX_DONE);  // the reference taken while waiting
    ngx_http_run_posted_requests(c);
}

void pass(CacheRequest& cr, CacheStatus s) noexcept {
    set_status(cr, s);
    cr.step = CacheRequest::Step::pass;
    resume(cr);
}

void serve_later(CacheRequest& cr, CacheStatus s,
                 std::shared_ptr<const std::string> entry) noexcept {
    set_status(cr, s);
    if (entry != cr.entry) {
        cr.view_valid = false;  // decoded again from these bytes when served
    }
    cr.entry = std::move(entry);
    cr.step = CacheRequest::Step::serve;
    resume(cr);
}

void begin_fill(CacheRequest& cr) noexcept {
    cr.filler = true;
    cr.fill_over = false;
    cache_fill_begin(cr.entry_key);
}

void wait_timeout(ngx_event_t* ev) noexcept {
    CacheRequest* cr = reinterpret_cast<CacheRequest::WaitTimer*>(ev)->owner;
    std::shared_ptr<CacheRequest> keep = cr->self.lock();
    if (!keep || cr->gone || cr->step != CacheRequest::Step::waiting) {
        return;
    }
    cache_unwait(cr->entry_key, cr);
    ngx_log_error(NGX_LOG_INFO, cr->r->connection->log, 0,
                  "throttle_cache: waited %M ms for another request to fill the entry, "
                  "going upstream",
                  cr->lcf->cache_lock_timeout);
    pass(*cr, CacheStatus::miss);
}

void on_refresh_lock(const std::shared_ptr<CacheRequest>& cr, redis::Result&& res,
                     std::shared_ptr<const std::string>&& entry) noexcept {
    if (cr->gone || worker_exiting()) {
        return;
    }
    bool taken = false;
    if (!res.ok() || !redis::parse_cache_fill_lock_reply(res.reply, taken)) {
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
    if (cr->head || cache_filling_here(cr->entry_key)) {
        serve_later(*cr, cr->head ? CacheStatus::stale : CacheStatus::updating,
                    std::move(entry));
        return;
    }
    redis::Client* client = redis_client();
    try {
        std::vector<std::string> argv = redis::cache_fill_lock_argv(
            cr->target(), cr->gen, static_cast<int64_t>(cr->lcf->cache_lock_timeout));
        std::vector<std::string_view> args(argv.begin(), argv.end());
        auto held = std::make_shared<std::shared_ptr<const std::string>>(std::move(entry));
        client->command(args, [cr, held](redis::Result&& res) noexcept {
            on_refresh_lock(cr, std::move(res), std::move(*held));
        });
    } catch (...) {
        serve_later(*cr, CacheStatus::stale, std::move(entry));
    }
}

// A lock this request took, but it will not fill (it ended, or the worker exits).
void release_unused_lock(CacheRequest& c, const redis::CacheLookup& out) noexcept {
    if (!out.lock_taken || worker_exiting()) {
        return;
    }
    try {
        c.gen = out.generation();
        c.entry_key = redis::cache_entry_key(c.target(), c.gen);
        c.filler = true;
        c.fill_over = false;
        cache_fill_begin(c.entry_key);
        cache_release(c);
    } catch (...) {
    }
}

}  // namespace

void cache_lookup_done(const std::shared_ptr<CacheRequest>& cr, redis::Failure failure,
                       redis::CacheLookup* answer, bool want_lock) noexcept {
    CacheRequest& c = *cr;
    bool parsed = answer != nullptr;
    redis::CacheLookup& out = *answer;
    if (!parsed && want_lock &&
        (failure == redis::Failure::Timeout || failure == redis::Failure::Disconnected)) {
        // Redis may have run the lookup and taken the lock after all.
        try {
            cache_abandon_lock(c.fill_lock());
        } catch (...) {
            // The lock expires by itself (throttle_cache_lock_timeout).
        }
    }
    if (c.gone || worker_exiting()) {
        if (parsed) {
            release_unused_lock(c, out);
        }
        return;
    }
    if (!parsed) {
        if (failure == redis::Failure::None) {
            ngx_log_error(NGX_LOG_WARN, c.r->connection->log, 0,
                          "throttle_cache: unexpected lookup reply");
        }
        pass(c, failure == redis::Failure::CircuitOpen ? CacheStatus::bypass
                                                         : CacheStatus::error);
        return;
    }
    try {
        c.gen = out.generation();
        c.entry_key = redis::cache_entry_key(c.target(), c.gen);
    } catch (...) {
        pass(c, CacheStatus::error);
        return;
    }
    if (out.hit) {
        std::shared_ptr<const std::string> entry;
        core::cache::EntryView& v = c.decoded;
        core::cache::DecodeLimits limits;
        limits.max_size = c.lcf->cache_max_size;
        try {
            entry = std::make_shared<const std::string>(std::move(out.entry));
            c.entry = entry;  // the bytes c.decoded points into
        } catch (...) {
            pass(c, CacheStatus::error);
            return;
        }
        if (!core::cache::decode(*entry, v, limits)) {
            ngx_log_error(NGX_LOG_WARN, c.r->connection->log, 0,
                          "throttle_cache: ignoring an entry that does not decode");
            pass(c, CacheStatus::miss);
            return;
        }
        c.view_valid = true;  // `entry` is what serve_later() keeps
        switch (core::cache::freshness(v, now_ms())) {
            case core::cache::Freshness::fresh:
                serve_later(c, CacheStatus::hit, std::move(entry));
                return;
            case core::cache::Freshness::stale:
                refresh_or_serve_stale(cr, std::move(entry));
                return;
            case core::cache::Freshness::expired:
                pass(c, CacheStatus::expired);
                return;
        }
    }
    if (out.lock_taken) {
        begin_fill(c);
        pass(c, CacheStatus::miss);
        return;
    }
    if (c.head || c.relookup || !cache_can_wait(c.entry_key)) {
        pass(c, CacheStatus::miss);
        return;
    }
    // Wait for the filler; cache_wait() may wake the request at once (its fill just ended).
    c.step = CacheRequest::Step::waiting;
    ngx_add_timer(&c.wait_timer.ev, c.lcf->cache_lock_timeout);
    if (!cache_wait(c.entry_key, cr)) {
        pass(c, CacheStatus::miss);
    }
}

namespace {

// The request pool's cleanup: the request ended (answered, or aborted while waiting).
void cleanup(void* data) noexcept {
    auto* holder = static_cast<std::shared_ptr<CacheRequest>*>(data);
    CacheRequest& cr = **holder;
    cr.gone = true;
    if (cr.wait_timer.ev.timer_set) {
        ngx_del_timer(&cr.wait_timer.ev);
    }
    if (cr.step == CacheRequest::Step::waiting) {
        cache_unwait(cr.entry_key, &cr);
    }
    if (cr.filler) {
        cache_release(cr);  // no-op when it stored already
    }
    delete holder;
}

}  // namespace

CacheRequest::~CacheRequest() {
    if (wait_timer.ev.timer_set) {
        ngx_del_timer(&wait_timer.ev);
    }
}

FillLock CacheRequest::fill_lock() const {
    return FillLock{std::string(view(lcf->cache_ns)), id, key, lcf->cache_lock_timeout};
}

redis::CacheTarget CacheRequest::target() const noexcept {
    redis::CacheTarget t;
    t.prefix = cache_prefix();
    t.ns = view(lcf->cache_ns);
    t.id = id;
    t.key = key;
    return t;
}

void cache_woken(const std::shared_ptr<CacheRequest>& cr, bool stored,
                 const std::shared_ptr<const std::string>& entry) noexcept {
    if (cr->gone || worker_exiting() || cr->step != CacheRequest::Step::waiting) {
        return;
    }
    if (cr->wait_timer.ev.timer_set) {
        ngx_del_timer(&cr->wait_timer.ev);
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
    cr->step = CacheRequest::Step::asking;
    cr->relookup = true;
    if (!cache_lookup_submit(cr, false)) {
        pass(*cr, CacheStatus::error);
    }
}

ngx_int_t cache_handler(ngx_http_request_t* r) noexcept {
    if (r != r->main) {
        return NGX_DECLINED;
    }
    auto* lcf = static_cast<LocConf*>(ngx_http_get_module_loc_conf(r, ngx_http_throttle_module));
    if (!cache_enabled(lcf)) {
        return NGX_DECLINED;
    }
    RequestCtx* ctx = get_ctx(r);
    if (ctx != nullptr && ctx->cache != nullptr) {
        CacheRequest& cr = *ctx->cache;
        switch (cr.step) {
            case CacheRequest::Step::asking:
            case CacheRequest::Step::waiting:
                return NGX_AGAIN;
            case CacheRequest::Step::serve:
                return serve(r, cr);
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

    ngx_str_t identity = ngx_null_string;
    if (lcf->cache_user != nullptr && ngx_http_complex_value(r, lcf->cache_user, &identity) !=
                                          NGX_OK) {
        ctx->cache_status = CacheStatus::bypass;
        return NGX_DECLINED;
    }
    if (identity.len == 0 && has_credentials(r, lcf)) {
        // Credentials without an identity: the answer may be personal; never share it.
        ctx->cache_status = CacheStatus::bypass;
        return NGX_DECLINED;
    }
    redis::Client* client = redis_client();
    if (client == nullptr || !client->available()) {
        ctx->cache_status = CacheStatus::bypass;
        return NGX_DECLINED;
    }

    MainConf* mcf = main_conf(r);
    std::shared_ptr<CacheRequest>* holder = nullptr;
    try {
        ngx_pool_cleanup_t* cln = ngx_pool_cleanup_add(r->pool, 0);
        if (cln == nullptr) {
            ctx->cache_status = CacheStatus::error;
            return NGX_DECLINED;
        }
        auto cr = std::make_shared<CacheRequest>();
        cr->self = cr;
        cr->r = r;
        cr->lcf = lcf;
        cr->head = r->method == NGX_HTTP_HEAD;
        cr->wait_timer.owner = cr.get();
        cr->wait_timer.ev.handler = wait_timeout;
        cr->wait_timer.ev.data = r->connection;
        cr->wait_timer.ev.log = r->connection->log;
        cr->id = cache_identity(view(mcf->cache_secret), view(identity));
        // The path as the client sent it when nothing rewrote it (what proxy_pass without a
        // URI forwards); the normalised one otherwise. Either way a different path is a
        // different key; only spelling variants cost a miss.
        // The query likewise: raw, as sent on (a "#..." nginx leaves out of $args included).
        std::string_view path = view(r->uri);
        std::string_view query = view(r->args);
        if (r->valid_unparsed_uri && r->unparsed_uri.len > 0) {
            path = view(r->unparsed_uri);
            query = {};
            size_t q = path.find('?');
            if (q != std::string_view::npos) {
                query = path.substr(q + 1);
                path = path.substr(0, q);
            }
        }
        core::cache::CacheKeyInput in;
        in.ns = view(lcf->cache_ns);
        in.identity_digest = cr->id;
        in.method = view(r->method_name);
        in.path = path;
        in.query = query;
        cr->key = core::cache::cache_key(in);

        if (cache_invalidation_pending(in.ns, cr->id)) {
            // This user's write is not confirmed by Redis yet: their entries may be stale.
            ctx->cache_status = CacheStatus::bypass;
            return NGX_DECLINED;
        }

        holder = new std::shared_ptr<CacheRequest>(cr);
        cln->handler = cleanup;
        cln->data = holder;
        ctx->cache = cr.get();

        if (!cache_lookup_submit(cr, !cr->head)) {
            cr->step = CacheRequest::Step::done;
            ctx->cache_status = CacheStatus::error;
            return NGX_DECLINED;
        }
        cr->holds_count = true;
    } catch (...) {
        ctx->cache_status = CacheStatus::error;
        return NGX_DECLINED;
    }
    r->main->count++;
    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_request_empty_handler;
    return NGX_DONE;
}

}  // namespace throttle::ngx
