// Variants from the request's side (see vary.hpp).
#include "ngx/cache/vary.hpp"

#include "core/http_text.hpp"

namespace throttle::ngx {
namespace {

// FNV-1a, 64 bits: a memo's tag (a collision costs a miss, never a wrong answer).
uint64_t fnv(uint64_t h, const void* data, size_t len) noexcept {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

uint64_t fnv_field(uint64_t h, std::string_view s) noexcept {
    uint64_t n = s.size();
    return fnv(fnv(h, &n, sizeof(n)), s.data(), s.size());
}

}  // namespace

bool cache_variant(ngx_http_request_t* r, const core::Sha256Digest& base,
                   const core::cache::VaryList& list, core::Sha256Digest& out) {
    core::cache::VaryValue values[core::cache::vary_max_headers];
    for (ngx_list_part_t* part = &r->headers_in.headers.part; part; part = part->next) {
        auto* h = static_cast<ngx_table_elt_t*>(part->elts);
        for (ngx_uint_t i = 0; i < part->nelts; i++) {
            if (h[i].hash == 0) {
                continue;
            }
            std::string_view name = view(h[i].key);
            for (size_t k = 0; k < list.size(); k++) {
                if (core::http::iequals(name, list.name(k)) &&
                    !core::cache::append_vary_value(view(h[i].value), values[k])) {
                    return false;
                }
            }
        }
    }
    out = core::cache::variant_key(base, list, values);
    return true;
}

uint64_t cache_vary_tag(const CacheLocConf* conf, std::string_view host, std::string_view path,
                        std::string_view query) noexcept {
    uint64_t h = 14695981039346656037ULL;
    h = fnv(h, &conf, sizeof(conf));
    h = fnv_field(h, host);
    h = fnv_field(h, path);
    return fnv_field(h, query);
}

}  // namespace throttle::ngx
