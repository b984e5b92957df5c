// A fill (layer: ngx): what happens to a miss after its lookup took the entry's fill lock, in
// one place. The request that holds the lock goes upstream; its response is judged, captured,
// stored, and whoever waits for the entry is woken:
//
//   begin()      the lookup took the lock (a miss, or the refresh of a stale entry): this worker
//                now fills E, so local waiters wait for it (waiters.cpp); the lock's lease is
//                renewed while the request lives (leases.cpp)
//   on_header()  header filter: core::cache::decide() on the upstream's headers; not storable,
//                or not the upstream's answer to this lookup: release()
//   on_body()    body filter: the body is copied while it passes (memory and temp-file
//                buffers), up to throttle_cache_max_size; at the last buffer: store
//   store        inflate a gzip'd upstream body, compress above gzip_min_length, encode, STORE
//                under the lookup's generations (refused by Redis when one moved); this worker's
//                waiters are woken with the bytes, others by the STORE script's message.
//                A response that varies (its Vary names request headers, core/cache_vary.hpp)
//                is stored under the variant key of the filling request's values and the
//                response's own list, and a vary record under the base key (a second STORE,
//                pipelined after the first, so whoever the record sends to the variant finds
//                it); a plain response under the base key, where it replaces any record. The
//                lock is on the key the lookup read. When that is not where the entry went
//                (the resource's Vary changed, or the lookup read the base key before anyone
//                knew it varies), the STORE under the base key gives the lock back, or a
//                RELEASE does; this worker's waiters are then woken without bytes (their own
//                variant may differ) and look up again
//   release()    not stored (not cacheable, too large, an error, the request ended): RELEASE
//                gives the lock back and wakes waiters everywhere to go upstream themselves
// STORE and RELEASE end the lease's renewals. A STORE or RELEASE Redis did not answer may have
// run or not: ABANDON follows (orphans.cpp).
// Counters (issue 11, when throttle_metrics is on): a STORE of the entry Redis answered 1
// counts a store and the entry's bytes (as stored: encoded, gzip'd or not; a vary record is not
// counted), one it answered 0 a generation_moved refusal; decide()'s refusals count too_large
// (Verdict::too_large, a body that grew past throttle_cache_max_size, a gzip body whose plain
// size does) or uncacheable (every other verdict: a status not configured, 5xx, Set-Cookie,
// Cache-Control, Vary, ...; and headers the entry format refuses). A fill released for another
// reason (not the upstream's answer, the client went away, an error) counts nothing.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "core/cache_entry.hpp"
#include "core/cache_key.hpp"
#include "core/cache_vary.hpp"
#include "ngx/cache/conf.hpp"
#include "ngx/ngx.hpp"

namespace throttle::ngx {

class FillLease;

// A fill lock in owned bytes (it outlives the request): what ABANDON needs to find it under the
// current generations.
struct FillLock {
    std::string ns;
    std::string id;
    core::Sha256Digest key{};
    std::string token;     // its owner token (leases.hpp): the lock's value in Redis
    ngx_msec_t lease = 0;  // the lock is gone by itself a lease after its last renewal
};

// What a fill needs to store a varying response: the request's base key, the list its lookup
// used (empty: the lookup read the base key) and the resource's tag in the vary memo.
struct FillVary {
    core::Sha256Digest base{};
    core::cache::VaryList looked_up;
    uint64_t tag = 0;
};

class Fill {
   public:
    // Request r holds the lock of entry E (under `gen`): its lease is renewed while r lives,
    // until the fill ends. r is nullptr for a lock given back at once (no renewal). May throw
    // std::bad_alloc.
    void begin(ngx_http_request_t* r, const CacheLocConf* conf, FillLock lock,
               const core::cache::Generation& gen, std::string entry_key, const FillVary& vary);
    // The local tier (local.hpp) keeps what this fill stores, if Redis confirms it and the host
    // is still as `seen` (the lookup's snapshot).
    void keep_locally(const core::cache::LocalSnapshot& seen) noexcept {
        local_ = true;
        local_seen_ = seen;
    }
    // Holds the lock and has not stored or released it yet.
    bool active() const noexcept { return holder_ && !over_; }
    bool capturing() const noexcept { return capture_; }

    // The response's headers. `same_location`: the location that looked up answers (an
    // internal redirect elsewhere answers something else, which is not stored).
    void on_header(ngx_http_request_t* r, bool same_location) noexcept;
    // Body buffers as they pass.
    void on_body(ngx_http_request_t* r, ngx_chain_t* in) noexcept;
    // Gives the lock back (not stored) and wakes the waiters. Idempotent.
    void release() noexcept;

   private:
    void capture(ngx_http_request_t* r);
    bool append(ngx_buf_t* b);
    void store(ngx_http_request_t* r);
    std::string encode(ngx_http_request_t* r, int64_t now, int64_t& ttl_ms);
    void drop_body() noexcept;
    void end_lease() noexcept;
    void release_lock() noexcept;
    void store_record(const std::shared_ptr<const std::string>& record, int64_t ttl,
                      bool holds_lock);

    const CacheLocConf* conf_ = nullptr;
    FillLock lock_;
    std::shared_ptr<FillLease> lease_;  // renews the lock while the upstream runs
    core::cache::Generation gen_;
    std::string entry_key_;  // E of the lock's key
    FillVary vary_;
    core::Sha256Digest store_key_{};  // where the captured response goes
    bool holder_ = false;
    bool over_ = false;
    bool local_ = false;
    core::cache::LocalSnapshot local_seen_{};
    // Capture of the upstream's response
    bool capture_ = false;
    core::cache::Decision decision_;
    uint16_t status_ = 0;
    std::vector<core::cache::HeaderView> headers_;  // views into the request's pool
    std::string body_;
};

}  // namespace throttle::ngx
