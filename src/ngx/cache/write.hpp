// A user's write invalidates their entries (layer: ngx), from the header filter:
//   - the upstream's invalidation header (throttle_cache_invalidate_header) is removed from
//     every response; on a 2xx its namespaces are invalidated for the request's user;
//   - a 2xx answer to POST, PUT, PATCH or DELETE invalidates the user's entries in the
//     location's namespace and in those throttle_cache_invalidate names.
// The write's response is held (headers and body links kept, r->buffered set) until Redis
// answered the invalidation, so that the user's next read, on any connection, worker or host,
// cannot find what the write made stale.
#pragma once

#include "ngx/conf.hpp"

namespace throttle::ngx {

// Returns whether the response is held (the caller does not pass the headers on). May throw
// std::bad_alloc.
bool invalidate_on_write(ngx_http_request_t* r, const CacheLocConf& conf,
                         ngx_http_output_header_filter_pt next_header,
                         ngx_http_output_body_filter_pt next_body);
// While a response is held, its body links are kept instead of passed on. NGX_DECLINED when
// the response is not held (the caller passes `in` on).
ngx_int_t hold_body(ngx_http_request_t* r, ngx_chain_t* in) noexcept;

}  // namespace throttle::ngx
