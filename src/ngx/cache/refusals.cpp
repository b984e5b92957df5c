// Loud configuration (see refusals.hpp).
#include "ngx/cache/refusals.hpp"

#include <cstdint>
#include <vector>

#include "ngx/metrics.hpp"

namespace throttle::ngx {
namespace {

struct Said {
    const CacheLocConf* conf;
    uint32_t verdicts;  // bit v: the reason of Verdict v was logged for this location
};

// Owned; deleted in refusals_exit. One element per location that refused something: bounded
// by the configuration.
std::vector<Said>* said = nullptr;

// Whether this is the first time (location, verdict) is seen in this worker; records it.
bool first_time(const CacheLocConf* conf, core::cache::Verdict verdict) {
    if (said == nullptr) {
        said = new std::vector<Said>();
    }
    uint32_t bit = uint32_t(1) << static_cast<unsigned>(verdict);
    for (Said& s : *said) {
        if (s.conf == conf) {
            bool first = (s.verdicts & bit) == 0;
            s.verdicts |= bit;
            return first;
        }
    }
    said->push_back(Said{conf, bit});
    return true;
}

}  // namespace

void cache_count_refusal(const CacheLocConf& conf, core::metrics::StoreRefusal why) noexcept {
    if (core::metrics::CacheMetrics* m = conf.metrics->m) {
        core::metrics::add(m->refusals[static_cast<size_t>(why)]);
    }
}

void cache_refused(ngx_http_request_t* r, const CacheLocConf& conf,
                   core::cache::Verdict verdict) noexcept {
    cache_count_refusal(conf, verdict == core::cache::Verdict::too_large
                                  ? core::metrics::StoreRefusal::too_large
                                  : core::metrics::StoreRefusal::uncacheable);
    static_assert(static_cast<unsigned>(core::cache::Verdict::zero_ttl) < 32, "a bit per verdict");
    const char* reason = core::cache::verdict_reason(verdict);
    bool loud = false;
    if (reason != nullptr) {
        try {
            loud = first_time(&conf, verdict);
        } catch (...) {
            loud = false;  // no memory to remember it: stay quiet rather than log each time
        }
    }
    if (loud) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "throttle_cache \"%V\": responses from %V are not stored: %s (said once "
                      "per worker)",
                      &conf.ns, &r->uri, reason);
        return;
    }
    ngx_log_debug1(NGX_LOG_DEBUG_HTTP, r->connection->log, 0, "throttle_cache: not stored: %s",
                   core::cache::verdict_name(verdict));
}

void refusals_exit() noexcept {
    delete said;
    said = nullptr;
}

}  // namespace throttle::ngx
