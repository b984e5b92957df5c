// Variants from the request's side (see vary.hpp).
#include "ngx/cache/vary.hpp"

#include <functional>

#include "core/http_text.hpp"

namespace throttle::ngx {
namespace {

// A memo's tag (a collision costs a miss, never a wrong answer): std::hash of each part,
// combined.
uint64_t mix(uint64_t h, std::string_view s) noexcept {
    return (h ^ std::hash<std::string_view>{}(s)) * 0x9e3779b97f4a7c15ULL;
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
    uint64_t h = std::hash<const void*>{}(conf)*0x9e3779b97f4a7c15ULL;
    h = mix(h, host);
    h = mix(h, path);
    return mix(h, query);
}

}  // namespace throttle::ngx
