// Fill-lock leases (layer: ngx). A fill lock in Redis lives one lease, min(lock_timeout, 2 s),
// not lock_timeout: its filler renews it (RENEW, redis/cache_scripts.hpp) every third of a lease
// while the request that goes upstream lives, so a slow but live upstream keeps its lock, and the
// lock of a filler that died (its worker killed, its host gone) is gone within one lease. Waiters
// look up again once per lease (handler.cpp), so one of them takes the dead filler's lock.
//
// The lock's value is an owner token unique per fill; only its owner renews, stores under or
// releases it (the scripts check).
//
// A FillLease is bound to the filler's request (RequestBound): its nginx timer is deleted when
// the fill ends (stop()) or the request ends, whichever comes first; a renewal's reply that
// arrives after that changes nothing.
#pragma once

#include <memory>
#include <string>

#include "ngx/cache/conf.hpp"
#include "ngx/ngx.hpp"
#include "ngx/request.hpp"

namespace throttle::ngx {

// The longest lease: how long a dead filler's lock can hold the requests for its entry.
inline constexpr ngx_msec_t cache_lease_max_ms = 2000;

// The location's lease: min(throttle_cache_lock_timeout, cache_lease_max_ms).
ngx_msec_t cache_lease_ms(const CacheLocConf& conf) noexcept;

// A new owner token: this worker's random seed (16 hex digits, read once per worker), its pid
// and a counter, "SEED.PID.N". May throw std::bad_alloc.
std::string cache_fill_token();
// The same written to `out` (16 + 1 + 20 + 1 + 20 bytes at most); returns its length.
inline constexpr size_t cache_fill_token_max = 58;
size_t cache_fill_token_to(char (&out)[cache_fill_token_max]) noexcept;

class FillLease final : public RequestBound, public std::enable_shared_from_this<FillLease> {
   public:
    FillLease(ngx_http_request_t* r, std::string entry_key, std::string token,
              ngx_msec_t lease_ms) noexcept;
    ~FillLease() override;

    // The fill ended (stored or released): no more renewals.
    void stop() noexcept;
    bool stopped() const noexcept { return stopped_; }

    // Arms the first renewal (start_lease() does).
    void arm() noexcept;

   protected:
    void request_ended() noexcept override;

   private:
    static void on_timer(ngx_event_t* ev) noexcept;
    void renew() noexcept;
    void renewed(bool ok, bool held) noexcept;

    std::string entry_key_;  // E: the lock is E":l"
    std::string token_;
    ngx_msec_t lease_ms_;
    bool stopped_ = false;
    RequestTimer<FillLease> timer_{};
};

// Starts renewing the lock of entry key E that `token` holds, every third of lease_ms while r
// lives, until stop(). nullptr when it cannot (memory; logged): the lock then lives one lease,
// and a fill that takes longer may be made a second time by another request.
std::shared_ptr<FillLease> start_lease(ngx_http_request_t* r, const std::string& entry_key,
                                       const std::string& token, ngx_msec_t lease_ms) noexcept;

}  // namespace throttle::ngx
