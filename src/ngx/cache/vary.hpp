// Variants of a varying resource, from the request's side (layer: ngx; the key, the list and
// the record are core/cache_vary.hpp's): which request header values select the variant, and
// the tag of the vary memo (memo.hpp).
//
// A lookup (handler.cpp) starts at the base key B, or, when the memo knows the resource's vary
// list, at the variant key V at once. A lookup of B that finds a vary record looks V up
// (a second round trip) and teaches the memo. A fill (fill.cpp) stores a varying response under
// V, computed from the filling request's headers and the response's own list, and the record
// under B; a plain response under B (which replaces any record there).
#pragma once

#include <cstdint>
#include <string_view>

#include "core/cache_vary.hpp"
#include "ngx/conf.hpp"

namespace throttle::ngx {

// V for this request: its values of list's headers (every line of a name, joined and
// normalised). False when a value is longer than core::cache::vary_max_value: the request's
// variant is not cached. May throw std::bad_alloc.
bool cache_variant(ngx_http_request_t* r, const core::Sha256Digest& base,
                   const core::cache::VaryList& list, core::Sha256Digest& out);

// The vary memo's tag of a resource: its location, host, path and query (not the identity).
uint64_t cache_vary_tag(const CacheLocConf* conf, std::string_view host, std::string_view path,
                        std::string_view query) noexcept;

}  // namespace throttle::ngx
