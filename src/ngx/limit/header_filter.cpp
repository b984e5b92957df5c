// Adds RateLimit-Policy / RateLimit (draft-ietf-httpapi-ratelimit-headers) and Retry-After
// to the response of every request a zone was decided for (main request or subrequest).
#include "ngx/limit/limit.hpp"
#include "ngx/request.hpp"

namespace throttle::ngx {
namespace {

ngx_http_output_header_filter_pt next_header_filter;

// Appends a header to r's response: ngx_list_push()'s common case (room left in the last
// part) inline, the call only when a new part is needed.
ngx_int_t add_header(ngx_http_request_t* r, const ngx_str_t& name, u_char* value,
                     size_t len) noexcept {
    ngx_list_t* l = &r->headers_out.headers;
    ngx_list_part_t* last = l->last;
    ngx_table_elt_t* h;
    if (last->nelts < l->nalloc) {
        h = static_cast<ngx_table_elt_t*>(last->elts) + last->nelts++;
    } else if ((h = static_cast<ngx_table_elt_t*>(ngx_list_push(l))) == nullptr) {
        return NGX_ERROR;
    }
    h->hash = 1;
    h->key = name;
    h->value.data = value;
    h->value.len = len;
#if nginx_version >= 1023000
    h->next = nullptr;
#endif
    return NGX_OK;
}

// Two decimal digits of each value below 100.
constexpr char digit_pairs[] =
    "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
    "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
    "8081828384858687888990919293949596979899";

// How many decimal digits v has (1 for 0).
size_t decimal_digits(uint64_t v) noexcept {
    static constexpr uint64_t powers[] = {0,
                                          10ULL,
                                          100ULL,
                                          1000ULL,
                                          10000ULL,
                                          100000ULL,
                                          1000000ULL,
                                          10000000ULL,
                                          100000000ULL,
                                          1000000000ULL,
                                          10000000000ULL,
                                          100000000000ULL,
                                          1000000000000ULL,
                                          10000000000000ULL,
                                          100000000000000ULL,
                                          1000000000000000ULL,
                                          10000000000000000ULL,
                                          100000000000000000ULL,
                                          1000000000000000000ULL,
                                          10000000000000000000ULL};
    // floor(log10(2) * bits) is the count or one less (1233 / 4096 ~ log10(2)).
    size_t bits = 64 - static_cast<size_t>(__builtin_clzll(v | 1));
    size_t n = (bits * 1233) >> 12;
    return n + 1 - (v < powers[n] ? 1 : 0);
}

// The digits of v, two at a time from the last (one 2-byte copy each), ending at q (v has at
// least one digit). (Four at a time, with one more division per step, took more instructions.)
template <typename U>
void put_digits(u_char* q, U v) noexcept {
    while (v >= 100) {
        U hi = v / 100;
        q -= 2;
        ngx_memcpy(q, digit_pairs + static_cast<size_t>(v - hi * 100) * 2, 2);
        v = hi;
    }
    if (v >= 10) {
        ngx_memcpy(q - 2, digit_pairs + static_cast<size_t>(v) * 2, 2);
    } else {
        q[-1] = static_cast<u_char>('0' + v);
    }
}

// The decimal digits of v (`digits` of them: decimal_digits(v)) at p, in 32-bit arithmetic
// when v fits (ngx_sprintf costs several times more on this path). Returns the end.
u_char* put_number(u_char* p, uint64_t v, size_t digits) noexcept {
    u_char* end = p + digits;
    if (v <= UINT32_MAX) {
        put_digits(end, static_cast<uint32_t>(v));
    } else {
        put_digits(end, v);
    }
    return end;
}

u_char* put(u_char* p, const char* s, size_t len) noexcept {
    return static_cast<u_char*>(ngx_cpymem(p, s, len));
}

ngx_str_t rate_limit_policy = ngx_string("RateLimit-Policy");
ngx_str_t rate_limit = ngx_string("RateLimit");
ngx_str_t retry_after = ngx_string("Retry-After");

// A subrequest's fields go into its own headers_out, which nginx never sends to the client:
// there they are $sent_http_ratelimit, $sent_http_retry_after for auth_request_set.
ngx_int_t header_filter(ngx_http_request_t* r) noexcept {
    RequestCtx* ctx = get_ctx(r);
    if (ctx == nullptr || ctx->outcome == Outcome::none || ctx->waiting) {
        return next_header_filter(r);
    }
    bool rejected = ctx->outcome == Outcome::rejected || ctx->outcome == Outcome::rejected_fallback;
    if (!ctx->headers && !rejected) {
        return next_header_filter(r);
    }
    // The values in one allocation of their exact length: RateLimit's (the zone's prefix
    // "NAME";r= and the two numbers), then Retry-After's. RateLimit-Policy is fixed per zone.
    size_t remaining_digits = 0, reset_digits = 0, retry_digits = 0, len = 0;
    if (ctx->headers) {
        remaining_digits = decimal_digits(ctx->remaining);
        reset_digits = decimal_digits(static_cast<uint64_t>(ctx->reset_s));
        len = ctx->limit_prefix->len + remaining_digits + sizeof(";t=") - 1 + reset_digits;
    }
    if (rejected) {
        retry_digits = decimal_digits(static_cast<uint64_t>(ctx->retry_after_s));
    }
    auto* buf = static_cast<u_char*>(ngx_pnalloc(r->pool, len + retry_digits));
    if (buf == nullptr) {
        return NGX_ERROR;
    }
    if (ctx->headers) {
        u_char* p = ngx_cpymem(buf, ctx->limit_prefix->data, ctx->limit_prefix->len);
        p = put_number(p, ctx->remaining, remaining_digits);
        p = put(p, ";t=", 3);
        put_number(p, static_cast<uint64_t>(ctx->reset_s), reset_digits);
        if (add_header(r, rate_limit_policy, ctx->policy->data, ctx->policy->len) != NGX_OK ||
            add_header(r, rate_limit, buf, len) != NGX_OK) {
            return NGX_ERROR;
        }
    }
    if (rejected) {
        put_number(buf + len, static_cast<uint64_t>(ctx->retry_after_s), retry_digits);
        if (add_header(r, retry_after, buf + len, retry_digits) != NGX_OK) {
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
