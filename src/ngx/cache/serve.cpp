// A hit's answer (layer: ngx): the stored status, headers and body, gzip'd for clients that
// accept it and inflated for the others, with Age, and Vary: Accept-Encoding when the body
// could be either. The stored ETag and Last-Modified feed nginx's not_modified filter (304),
// and nginx's range filter cuts 200s (206).
//
// Inflating for a client that does not accept gzip: a body up to cache_plain_memo_max is
// inflated whole (memoised per worker, by its gzip bytes: memo.hpp); a larger one streams
// (PlainStream): a 64 KB buffer is inflated when one is free, passed down the output filters (all
// of them see plain bytes: range, SSI, ...), and this request's write handler refills it when the
// client took it. A slow client holds two buffers and zlib's state, not the body. Each request
// counts what it holds against throttle_cache_inflate_memory; a hit that would pass it goes
// upstream (BYPASS).
#include <cstring>

#include "core/gzip.hpp"
#include "core/http_text.hpp"
#include "ngx/cache/memo.hpp"
#include "ngx/cache/request.hpp"
#include "ngx/conf.hpp"

namespace throttle::ngx {
namespace {

bool client_accepts_gzip(ngx_http_request_t* r) noexcept {
#if (NGX_HTTP_GZIP || NGX_HTTP_HEADERS)
    ngx_table_elt_t* ae = r->headers_in.accept_encoding;
    return ae != nullptr && core::accepts_gzip(view(ae->value));
#else
    for (ngx_list_part_t* part = &r->headers_in.headers.part; part; part = part->next) {
        auto* h = static_cast<ngx_table_elt_t*>(part->elts);
        for (ngx_uint_t i = 0; i < part->nelts; i++) {
            if (core::http::iequals(view(h[i].key), "accept-encoding")) {
                return core::accepts_gzip(view(h[i].value));
            }
        }
    }
    return false;
#endif
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

// Whether a stored header name is `lit` (lowercase letters and '-' only), in any letter case,
// eight bytes at a time. Only for names decode() accepted (tokens): OR-ing 0x20 maps a byte to a
// lowercase letter only from that letter or its capital, and to '-' only from '-' or CR, which
// a token cannot hold.
bool name_is(std::string_view name, std::string_view lit) noexcept {
    if (name.size() != lit.size()) {
        return false;
    }
    size_t i = 0;
    for (; i + 8 <= name.size(); i += 8) {
        uint64_t a, b;
        std::memcpy(&a, name.data() + i, 8);
        std::memcpy(&b, lit.data() + i, 8);
        if ((a | 0x2020202020202020ULL) != b) {
            return false;
        }
    }
    for (; i < name.size(); i++) {
        if ((name[i] | 0x20) != lit[i]) {
            return false;
        }
    }
    return true;
}

bool mentions_accept_encoding(std::string_view vary) noexcept {
    static constexpr std::string_view ae = "accept-encoding";
    for (size_t i = 0; i + ae.size() <= vary.size(); i++) {
        if (core::http::iequals(vary.substr(i, ae.size()), ae)) {
            return true;
        }
    }
    return false;
}

void set_content_type(ngx_http_request_t* r, std::string_view value) noexcept {
    r->headers_out.content_type.data = reinterpret_cast<u_char*>(const_cast<char*>(value.data()));
    r->headers_out.content_type.len = value.size();
    size_t len = 0;
    while (len < value.size() && value[len] != ';' && value[len] != ' ') {
        len++;
    }
    r->headers_out.content_type_len = len;
    r->headers_out.content_type_lowcase = nullptr;
}

// The stored headers, Age, and the coding's headers. False when out of memory.
bool set_headers(ngx_http_request_t* r, const core::cache::EntryView& v, bool gz) noexcept {
    r->headers_out.status = v.status;
    bool vary_ae = false;
    for (size_t i = 0; i < v.header_count; i++) {
        const core::cache::HeaderView& h = v.headers[i];
        // The names this loop looks for, told apart by length first (one compare per header).
        enum class Known { other, content_type, vary, etag, last_modified };
        Known known = Known::other;
        switch (h.name.size()) {
            case 4:
                known = name_is(h.name, "vary")   ? Known::vary
                        : name_is(h.name, "etag") ? Known::etag
                                                  : Known::other;
                break;
            case 12:
                known = name_is(h.name, "content-type") ? Known::content_type : Known::other;
                break;
            case 13:
                known = name_is(h.name, "last-modified") ? Known::last_modified : Known::other;
                break;
            default:
                break;
        }
        if (known == Known::content_type) {
            set_content_type(r, h.value);
            continue;
        }
        if (known == Known::vary && mentions_accept_encoding(h.value)) {
            vary_ae = true;
        }
        ngx_table_elt_t* t = push_header(r, h.name, h.value);
        if (t == nullptr) {
            return false;
        }
        // nginx's not_modified filter answers If-None-Match / If-Modified-Since from these.
        if (known == Known::etag) {
            r->headers_out.etag = t;
        } else if (known == Known::last_modified) {
            time_t lm = ngx_parse_http_time(t->value.data, t->value.len);
            if (lm != NGX_ERROR) {
                r->headers_out.last_modified = t;
                r->headers_out.last_modified_time = lm;
            }
        }
    }
    auto* age = static_cast<u_char*>(ngx_pnalloc(r->pool, NGX_INT64_LEN));
    if (age == nullptr) {
        return false;
    }
    int64_t age_s = core::cache::age_seconds(v, now_ms());
    size_t age_len = ngx_sprintf(age, "%L", age_s) - age;
    if (push_header(r, "Age", {reinterpret_cast<char*>(age), age_len}) == nullptr) {
        return false;
    }
    if (RequestCtx* ctx = get_ctx(r)) {  // $throttle_cache_age
        ctx->cache_served = true;
        ctx->cache_age_s = age_s;
    }
    if (gz) {
        ngx_table_elt_t* ce = push_header(r, "Content-Encoding", "gzip");
        if (ce == nullptr) {
            return false;
        }
        r->headers_out.content_encoding = ce;
    }
    return !(v.gzip && !vary_ae && push_header(r, "Vary", "Accept-Encoding") == nullptr);
}

// Sends the header and the body; finalizes the request.
void send(ngx_http_request_t* r, std::string_view body) noexcept {
    ngx_int_t rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        ngx_http_finalize_request(r, rc);
        return;
    }
    if (body.empty()) {
        ngx_http_finalize_request(r, ngx_http_send_special(r, NGX_HTTP_LAST));
        return;
    }
    auto* b = static_cast<ngx_buf_t*>(ngx_calloc_buf(r->pool));
    if (b == nullptr) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }
    b->pos = reinterpret_cast<u_char*>(const_cast<char*>(body.data()));
    b->last = b->pos + body.size();
    b->memory = 1;
    b->last_buf = 1;
    b->last_in_chain = 1;
    ngx_chain_t out{b, nullptr};
    ngx_http_finalize_request(r, ngx_http_output_filter(r, &out));
}

// ---- streaming ----

int stream_tag_id;  // its address tags the stream's buffers
ngx_buf_tag_t const stream_tag = &stream_tag_id;

PlainStream* stream_of(ngx_http_request_t* r) noexcept {
    RequestCtx* ctx = get_ctx(r);
    return ctx != nullptr && ctx->cache != nullptr ? ctx->cache->stream.get() : nullptr;
}

// A free buffer (emptied), or a new one while fewer than plain_stream_bufs exist; else nullptr.
ngx_chain_t* take_buffer(ngx_http_request_t* r, PlainStream& s) noexcept {
    ngx_chain_t* cl = s.free;
    if (cl != nullptr) {
        s.free = cl->next;
    } else {
        if (s.allocated == plain_stream_bufs) {
            return nullptr;
        }
        ngx_buf_t* b = ngx_create_temp_buf(r->pool, plain_stream_buf_size);
        cl = ngx_alloc_chain_link(r->pool);
        if (b == nullptr || cl == nullptr) {
            return nullptr;
        }
        cl->buf = b;
        s.allocated++;
    }
    cl->next = nullptr;
    ngx_buf_t* b = cl->buf;
    u_char* start = b->start;
    u_char* end = b->end;
    ngx_memzero(b, sizeof(ngx_buf_t));  // flags a filter may have set (range: sync)
    b->start = start;
    b->end = end;
    b->pos = start;
    b->last = start;
    b->temporary = 1;
    b->tag = stream_tag;
    return cl;
}

// Waits until the connection can take more (or send_timeout), as ngx_http_writer() does.
void wait_writable(ngx_http_request_t* r) noexcept {
    ngx_event_t* wev = r->connection->write;
    auto* clcf = static_cast<ngx_http_core_loc_conf_t*>(
        ngx_http_get_module_loc_conf(r->main, ngx_http_core_module));
    if (!wev->delayed) {
        ngx_add_timer(wev, clcf->send_timeout);
    }
    if (ngx_handle_write_event(wev, clcf->send_lowat) != NGX_OK) {
        ngx_http_finalize_request(r, NGX_ERROR);
    }
}

// The request's write handler while it streams: refill free buffers and pass them on until
// none is free (wait for the client) or the body ended (nginx's writer sends the rest).
void stream_write(ngx_http_request_t* r) noexcept {
    ngx_connection_t* c = r->connection;
    ngx_event_t* wev = c->write;
    if (wev->timedout) {
        ngx_log_error(NGX_LOG_INFO, c->log, NGX_ETIMEDOUT, "client timed out");
        c->timedout = 1;
        ngx_http_finalize_request(r, NGX_HTTP_REQUEST_TIME_OUT);
        return;
    }
    if (wev->delayed || r->aio) {
        wait_writable(r);
        return;
    }
    PlainStream* s = stream_of(r);
    if (s == nullptr) {
        ngx_http_finalize_request(r, NGX_ERROR);
        return;
    }
    for (;;) {
        ngx_chain_t* out = nullptr;
        if (!s->finished && (out = take_buffer(r, *s)) != nullptr) {
            ngx_buf_t* b = out->buf;
            size_t n = 0;
            core::GzipInflater::Status st =
                s->inflater.next(reinterpret_cast<char*>(b->start), plain_stream_buf_size, n);
            if (st == core::GzipInflater::Status::done && s->inflater.produced() != s->plain_size) {
                st = core::GzipInflater::Status::error;
            }
            if (st == core::GzipInflater::Status::error) {
                // The header (and its Content-Length) went out: the connection is cut.
                ngx_log_error(NGX_LOG_ERR, c->log, 0,
                              "throttle_cache: a stored body does not decompress");
                ngx_http_finalize_request(r, NGX_ERROR);
                return;
            }
            b->last = b->start + n;
            if (st == core::GzipInflater::Status::done) {
                s->finished = true;
                b->last_buf = r == r->main ? 1 : 0;
                b->last_in_chain = 1;
            }
        } else if (!s->finished && s->free == nullptr && s->allocated < plain_stream_bufs) {
            ngx_http_finalize_request(r, NGX_ERROR);  // no memory for a buffer
            return;
        }
        ngx_int_t rc = ngx_http_output_filter(r, out);
        if (rc == NGX_ERROR) {
            ngx_http_finalize_request(r, NGX_ERROR);
            return;
        }
        ngx_chain_update_chains(r->pool, &s->free, &s->busy, &out, stream_tag);
        if (s->finished) {
            r->write_event_handler = ngx_http_request_empty_handler;
            ngx_http_finalize_request(r, rc);  // nginx's writer sends what is left
            return;
        }
        if (s->free == nullptr && s->allocated == plain_stream_bufs) {
            wait_writable(r);
            return;
        }
    }
}

// Sends the header and starts streaming cr.stream; finalizes the request (now or later).
void send_stream(ngx_http_request_t* r) noexcept {
    ngx_int_t rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        ngx_http_finalize_request(r, rc);
        return;
    }
    r->write_event_handler = stream_write;
    stream_write(r);
}

}  // namespace

ngx_int_t cache_serve(ngx_http_request_t* r, CacheRequest& cr) noexcept {
    cr.step = CacheRequest::Step::done;
    if (!cr.view_valid) {
        core::cache::DecodeLimits limits;
        limits.max_size = cr.conf->max_size;
        if (!core::cache::decode(*cr.entry, cr.decoded, limits)) {
            cache_count_lookup(cr, cr.status);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;  // not reached: checked when fetched
        }
        cr.view_valid = true;
    }
    const core::cache::EntryView& v = cr.decoded;
    bool gz = v.gzip && client_accepts_gzip(r);
    bool inflate = v.gzip && !gz && !cr.head;  // HEAD needs only the size
    bool stream = inflate && v.plain_size > cache_plain_memo_max;
    if (inflate) {
        size_t bound = main_conf(r)->cache.inflate_memory;
        size_t charge = stream ? plain_stream_charge : v.plain_size;
        if (!cache_inflate_reserve(charge, bound)) {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "throttle_cache: bodies inflated in this worker hold %uz bytes, "
                          "%uz more would pass \"throttle_cache_inflate_memory\" %uz: a hit "
                          "for a client that does not accept gzip is going upstream",
                          cache_inflate_held(), charge, bound);
            if (RequestCtx* ctx = get_ctx(r)) {
                ctx->cache_status = CacheStatus::bypass;
            }
            cache_count_lookup(cr, CacheStatus::bypass);
            return NGX_DECLINED;
        }
        cr.inflate_charge = charge;  // released when the request ends
    }
    cache_count_lookup(cr, cr.status);  // final: HIT, STALE or UPDATING
    // A body the client sent with its GET must be read away, or nginx would parse it as the
    // connection's next request (request smuggling).
    ngx_int_t rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }
    std::string_view body = v.body;
    if (stream) {
        try {
            cr.stream = std::make_unique<PlainStream>();
        } catch (...) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        cr.stream->plain_size = v.plain_size;
        if (!cr.stream->inflater.begin(v.body, v.plain_size)) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        if (!set_headers(r, v, false)) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        r->headers_out.content_length_n = static_cast<off_t>(v.plain_size);
        r->allow_ranges = v.status == NGX_HTTP_OK;
        r->single_range = 1;  // a multipart answer needs the whole body in one buffer
        send_stream(r);
        return NGX_DONE;
    }
    if (inflate) {
        bool from_memo = false;
        try {
            cr.plain = cache_plain_body(v, from_memo);
        } catch (...) {
            cr.plain = nullptr;
        }
        ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0, "throttle_cache: plain body %s",
                       from_memo ? "from the inflate memo" : "inflated");
        if (!cr.plain) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "throttle_cache: a stored body does not decompress");
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        body = *cr.plain;  // lives as long as the request
    }
    if (!set_headers(r, v, gz)) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    r->headers_out.content_length_n =
        static_cast<off_t>(cr.head && v.gzip && !gz ? v.plain_size : body.size());
    r->allow_ranges = v.status == NGX_HTTP_OK;
    send(r, body);
    return NGX_DONE;
}

}  // namespace throttle::ngx
