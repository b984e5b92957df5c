// A hit's answer (layer: ngx): the stored status, headers and body, gzip'd for clients that
// accept it and inflated for the others, with Age, and Vary: Accept-Encoding when the body
// could be either. The stored ETag and Last-Modified feed nginx's not_modified filter (304),
// and nginx's range filter cuts 200s (206).
#include "core/gzip.hpp"
#include "core/http_text.hpp"
#include "ngx/cache/memo.hpp"
#include "ngx/cache/request.hpp"

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
        if (core::http::iequals(h.name, "content-type")) {
            set_content_type(r, h.value);
            continue;
        }
        if (core::http::iequals(h.name, "vary") && mentions_accept_encoding(h.value)) {
            vary_ae = true;
        }
        ngx_table_elt_t* t = push_header(r, h.name, h.value);
        if (t == nullptr) {
            return false;
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
        return false;
    }
    size_t age_len = ngx_sprintf(age, "%L", core::cache::age_seconds(v, now_ms())) - age;
    if (push_header(r, "Age", {reinterpret_cast<char*>(age), age_len}) == nullptr) {
        return false;
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

}  // namespace

ngx_int_t cache_serve(ngx_http_request_t* r, CacheRequest& cr) noexcept {
    cr.step = CacheRequest::Step::done;
    // A body the client sent with its GET must be read away, or nginx would parse it as the
    // connection's next request (request smuggling).
    ngx_int_t rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }
    if (!cr.view_valid) {
        core::cache::DecodeLimits limits;
        limits.max_size = cr.conf->max_size;
        if (!core::cache::decode(*cr.entry, cr.decoded, limits)) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;  // not reached: checked when fetched
        }
        cr.view_valid = true;
    }
    const core::cache::EntryView& v = cr.decoded;
    bool gz = v.gzip && client_accepts_gzip(r);
    std::string_view body = v.body;
    if (v.gzip && !gz) {
        try {
            cr.plain = cache_plain_body(cr.entry_key, v);
        } catch (...) {
            cr.plain = nullptr;
        }
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
    r->headers_out.content_length_n = static_cast<off_t>(body.size());
    r->allow_ranges = v.status == NGX_HTTP_OK;
    send(r, body);
    return NGX_DONE;
}

}  // namespace throttle::ngx
