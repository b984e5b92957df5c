// The response cache's per-request state and the per-worker fill registry (layer: ngx).
//
// A main GET/HEAD request in a location with `throttle_cache` gets one CacheRequest. It is
// shared (std::shared_ptr) between the request's pool cleanup and whatever Redis callback or
// fill wait is outstanding, so that a reply arriving after the request ended finds `gone` set
// instead of freed memory. RequestCtx::cache points at it while the request lives.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/cache_entry.hpp"
#include "core/cache_key.hpp"
#include "ngx/conf.hpp"
#include "redis/cache_scripts.hpp"
#include "redis/loop.hpp"

namespace throttle::ngx {

// A fill lock in owned bytes (it outlives the request): what ABANDON needs to find it under the
// current generations.
struct FillLock {
    std::string ns;
    std::string id;
    core::Sha256Digest key{};
    ngx_msec_t ttl = 0;  // throttle_cache_lock_timeout: the lock is gone by itself after it
};

struct CacheRequest {
    enum class Step : uint8_t {
        asking,   // LOOKUP (or the refresh lock, or a re-lookup) in flight
        waiting,  // another request fills this key: woken when it stored or gave up
        serve,    // `entry` holds the bytes to answer with
        pass,     // go to the upstream (content phase)
        done,     // answered, or passed already
    };

    ngx_http_request_t* r = nullptr;
    const LocConf* lcf = nullptr;  // the location that looked up (a redirect elsewhere: no store)
    bool gone = false;             // the request ended (its pool is freed)
    bool holds_count = false;      // took r->main->count while asking or waiting
    Step step = Step::asking;
    bool relookup = false;  // asking again after a remote fill stored: never wait twice

    std::string id;  // identity digest ("anon" or 64 hex)
    core::Sha256Digest key{};
    core::cache::Generation gen;
    std::string entry_key;  // E, once the generations are known
    bool head = false;

    // Filling: this request holds the fill lock (a miss, or the refresh of a stale entry).
    bool filler = false;
    bool fill_over = false;  // stored, or released: nothing more to do for the fill

    std::shared_ptr<const std::string> entry;  // what to serve (Step::serve)
    core::cache::EntryView decoded;             // entry, decoded (valid while `entry` lives)
    bool view_valid = false;
    std::shared_ptr<const std::string> plain;  // its body decompressed, when served so

    // Capture of the upstream's response (filler only)
    bool capture = false;
    core::cache::Decision decision;
    uint16_t resp_status = 0;
    std::vector<core::cache::HeaderView> headers;  // views into the request's pool
    std::string body;

    // The wait cap (throttle_cache_lock_timeout): an nginx timer, deleted when the request ends.
    struct WaitTimer {
        ngx_event_t ev;  // first member: the handler finds the WaitTimer from the event
        CacheRequest* owner;
    };
    WaitTimer wait_timer{};
    std::weak_ptr<CacheRequest> self;

    redis::CacheTarget target() const noexcept;  // prefix, namespace, id, key
    FillLock fill_lock() const;                  // may throw std::bad_alloc

    ~CacheRequest();
};

// identity_digest(secret, identity) through a small per-worker memo (an HMAC per request is
// two SHA-256 passes; a session's requests repeat the same identity).
std::string cache_identity(std::string_view secret, std::string_view identity);
// The plain body of a gzip entry, from a small per-worker memo of recently inflated bodies
// (keyed by the entry key, its store time and the gzip trailer: only that exact entry's bytes
// can match). nullptr when the body does not inflate.
std::shared_ptr<const std::string> cache_plain_body(std::string_view entry_key,
                                                    const core::cache::EntryView& v);

// The cache's Redis key prefix in this worker: the throttle_redis prefix followed by "cache:".
const std::string& cache_prefix() noexcept;

// Shares `obj` with the request's pool: when the pool is destroyed (the request ended),
// obj->gone is set and the pool's share is dropped, so a callback still holding obj knows not to
// touch the request. False when the pool cannot take a cleanup. May throw std::bad_alloc.
template <typename T>
bool share_with_pool(ngx_pool_t* pool, const std::shared_ptr<T>& obj) {
    ngx_pool_cleanup_t* cln = ngx_pool_cleanup_add(pool, 0);
    if (cln == nullptr) {
        return false;
    }
    cln->data = new std::shared_ptr<T>(obj);
    cln->handler = [](void* data) noexcept {
        auto* held = static_cast<std::shared_ptr<T>*>(data);
        (*held)->gone = true;
        delete held;
    };
    return true;
}

// ---- cache_handler.cpp ----
// A lookup's answer (nullptr: none; `failure` says why, None for a malformed reply).
void cache_lookup_done(const std::shared_ptr<CacheRequest>& cr, redis::Failure failure,
                       redis::CacheLookup* answer, bool want_lock) noexcept;
// A wait ended: the filler stored (`entry` is its bytes when the filler ran in this worker,
// else nullptr: look up again) or gave up (stored false).
void cache_woken(const std::shared_ptr<CacheRequest>& cr, bool stored,
                 const std::shared_ptr<const std::string>& entry) noexcept;
// ---- cache_filter.cpp ----
// The filler is done without storing (not cacheable, error, request gone): frees the lock
// and wakes whoever waits. Idempotent.
void cache_release(CacheRequest& cr) noexcept;

// ---- cache_worker.cpp: per-worker registry of fills and waiters ----
// Queues a lookup; every lookup queued in one event-loop turn goes to Redis in one batch
// script call at the end of the turn; cache_lookup_done() is called for each, never from inside
// this call. False when it could not be queued.
bool cache_lookup_submit(const std::shared_ptr<CacheRequest>& cr, bool want_lock) noexcept;
void cache_worker_init(ngx_cycle_t* cycle, MainConf* mcf, redis::Loop& loop) noexcept;
void cache_worker_exit() noexcept;
// Whether a waiter for E will be woken: E is filled by this worker, or the fill channel is
// subscribed (another worker or host fills it).
bool cache_can_wait(const std::string& e) noexcept;
// Registers a waiter for E. Returns false when it could not (memory): do not wait then.
bool cache_wait(const std::string& e, const std::shared_ptr<CacheRequest>& cr) noexcept;
void cache_unwait(const std::string& e, const CacheRequest* cr) noexcept;
// This worker starts / ends filling E.
void cache_fill_begin(const std::string& e) noexcept;
// Ends a fill of this worker and wakes its local waiters.
void cache_fill_end(const std::string& e, bool stored,
                    const std::shared_ptr<const std::string>& entry) noexcept;
bool cache_filling_here(const std::string& e) noexcept;
// The pub/sub channel of fills, or empty without a subscriber.
const std::string& cache_channel() noexcept;
// Invalidates the user's generation in these namespaces. An invalidation Redis did not confirm
// is retried every second until it is; meanwhile this worker does not look up that user's
// entries in those namespaces (BYPASS), so a worker never serves what a write made stale.
// `answered` (if set) is called once when Redis answered the first attempt or failed to; the
// return value says whether it will be (false: not sent now, queued for a retry).
bool cache_invalidate(std::string id, std::vector<std::string> namespaces,
                      std::function<void()> answered = nullptr) noexcept;
bool cache_invalidation_pending(std::string_view ns, std::string_view id) noexcept;
// A lookup that asked for the fill lock got no answer: Redis may hold a lock nobody will fill.
// ABANDON it (now, or when Redis is back, until the lock would have expired anyway).
void cache_abandon_lock(const FillLock& lock) noexcept;

}  // namespace throttle::ngx
