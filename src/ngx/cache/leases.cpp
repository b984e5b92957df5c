// Fill-lock leases (see leases.hpp).
#include "ngx/cache/leases.hpp"

#include <sys/random.h>

#include <algorithm>
#include <charconv>
#include <cstring>

#include "ngx/redis_link.hpp"
#include "redis/cache_scripts.hpp"

namespace throttle::ngx {
namespace {

// This worker's part of every token it makes (trivially destructible: no static destructor).
uint64_t token_seed = 0;
uint64_t token_count = 0;

uint64_t seed() noexcept {
    if (token_seed == 0) {
        uint64_t s = 0;
        if (getrandom(&s, sizeof s, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof s)) {
            // No entropy yet (early boot): the pid and the time still tell workers apart.
            s = (static_cast<uint64_t>(ngx_random()) << 32) ^ static_cast<uint64_t>(now_ms());
        }
        token_seed = s | 1;  // never 0: 0 means "not read yet"
    }
    return token_seed;
}

}  // namespace

ngx_msec_t cache_lease_ms(const CacheLocConf& conf) noexcept {
    return std::min(conf.lock_timeout, cache_lease_max_ms);
}

size_t cache_fill_token_to(char (&out)[cache_fill_token_max]) noexcept {
    // "%016llx.%lld.%llu" of (seed, pid, count), without snprintf (it cost a cache hit ~1,800
    // instructions: every GET that may fill carries a token to its lookup). The part before the
    // count is made once per worker.
    static char prefix[16 + 1 + 20 + 1];
    static size_t prefix_len = 0;
    if (prefix_len == 0) {
        uint64_t s = seed();
        for (int i = 15; i >= 0; i--) {
            prefix[i] = "0123456789abcdef"[s & 15];
            s >>= 4;
        }
        prefix[16] = '.';
        auto pid =
            std::to_chars(prefix + 17, prefix + sizeof prefix - 1, static_cast<long long>(ngx_pid));
        *pid.ptr = '.';
        prefix_len = static_cast<size_t>(pid.ptr + 1 - prefix);
    }
    static_assert(sizeof prefix + 20 <= cache_fill_token_max);
    std::memcpy(out, prefix, prefix_len);
    auto end = std::to_chars(out + prefix_len, out + cache_fill_token_max,
                             static_cast<unsigned long long>(++token_count));
    return static_cast<size_t>(end.ptr - out);
}

std::string cache_fill_token() {
    char buf[cache_fill_token_max];
    return std::string(buf, cache_fill_token_to(buf));
}

FillLease::FillLease(ngx_http_request_t* r, std::string entry_key, std::string token,
                     ngx_msec_t lease_ms) noexcept
    : RequestBound(r),
      entry_key_(std::move(entry_key)),
      token_(std::move(token)),
      lease_ms_(lease_ms) {
    timer_.init(this, on_timer, r);
    // A graceful exit does not wait for it: the request it renews for keeps the worker itself.
    timer_.ev.cancelable = 1;
}

FillLease::~FillLease() {
    timer_.stop();
}

void FillLease::arm() noexcept {
    if (!stopped_ && !gone()) {
        ngx_add_timer(&timer_.ev, std::max<ngx_msec_t>(lease_ms_ / 3, 1));
    }
}

void FillLease::stop() noexcept {
    stopped_ = true;
    timer_.stop();
}

void FillLease::request_ended() noexcept {
    stop();
}

void FillLease::on_timer(ngx_event_t* ev) noexcept {
    FillLease* lease = RequestTimer<FillLease>::owner_of(ev);
    std::shared_ptr<FillLease> keep = lease->weak_from_this().lock();
    if (!keep || lease->stopped_ || lease->gone()) {
        return;
    }
    lease->arm();  // the next one does not wait for this one's reply
    lease->renew();
}

void FillLease::renew() noexcept {
    redis::Target* client = redis_client();
    if (client == nullptr || worker_exiting()) {
        return;
    }
    try {
        redis::EvalArgs args;
        if (!redis::build_cache_renew_args(entry_key_, token_, static_cast<int64_t>(lease_ms_),
                                           args)) {
            return;
        }
        client->evalsha(redis::cache_renew_script(), args.keys(), args.args(),
                        [self = shared_from_this()](redis::Result&& res) noexcept {
                            bool held = false;
                            bool ok = res.ok() && redis::parse_cache_renew_reply(res.reply, held);
                            if (res.ok() && !ok) {
                                redis_reply_unusable(res, "cache fill lock renewal");
                            }
                            self->renewed(ok, held);
                        });
    } catch (...) {
        // The next renewal tries again; the lock lives a lease meanwhile.
    }
}

void FillLease::renewed(bool ok, bool held) noexcept {
    if (!ok || held || stopped_ || gone()) {
        return;  // a failed renewal is tried again at the next one (the client logged it)
    }
    // The lease ran out before a renewal reached Redis (a Redis outage longer than a lease):
    // another request may have taken the lock and fill the entry too. This fill still stores
    // (the same answer, newer); it no longer holds anyone back.
    ngx_log_error(NGX_LOG_INFO, request()->connection->log, 0,
                  "throttle_cache: the fill lock's lease ran out before it was renewed; "
                  "another request may fill the entry too");
    stop();
}

std::shared_ptr<FillLease> start_lease(ngx_http_request_t* r, const std::string& entry_key,
                                       const std::string& token, ngx_msec_t lease_ms) noexcept {
    try {
        std::shared_ptr<FillLease> lease =
            bind_to_request<FillLease>(r, entry_key, token, lease_ms);
        if (lease != nullptr) {
            lease->arm();
            return lease;
        }
    } catch (...) {
    }
    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "throttle_cache: cannot renew the fill lock (no memory): it lives one lease");
    return nullptr;
}

}  // namespace throttle::ngx
