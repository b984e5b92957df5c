// Per-request state (layer: ngx): the context every feature of the module records its
// decision in, and the one idiom for state that outlives a phase handler.
#pragma once

#include <cstddef>
#include <memory>
#include <new>
#include <type_traits>
#include <utility>

#include "ngx/ngx.hpp"

namespace throttle::ngx {

enum class Outcome : uint8_t {
    none = 0,
    passed,
    rejected,
    rejected_dry_run,
    passed_fallback,    // passed while Redis could not answer for a strict zone
    rejected_fallback,  // rejected by the fallback while Redis could not answer
};

// $throttle_cache_status
enum class CacheStatus : uint8_t { none = 0, hit, miss, expired, stale, updating, bypass, error };

struct CacheRequest;
struct CacheHold;
struct ZoneMark;
struct IdentityState;

// One per request: the main request and each subrequest have their own (nginx gives a
// subrequest a context array of its own), kept across internal redirects (see request.cpp).
// (The one-byte fields together: every request a zone decides makes one, zeroed.)
struct RequestCtx {
    ngx_http_request_t* owner;      // the request this context belongs to
    Outcome outcome;                // the last decision made for this request
    bool waiting;                   // a decision is pending: Redis, or another request's (limit)
    bool respond;                   // decided while waiting: the handler still has to answer
    bool headers;                   // throttle_headers of the location that decided
    bool sub_ctxs;                  // main request: some subrequest has a context of its own
    CacheStatus cache_status;       // main request only, as the two below and the five after
    uint8_t cache_tier;             // $throttle_cache_tier: 0 none, 1 local, 2 redis
    bool cache_served;              // the response is a stored entry (cache/serve.cpp), of age:
    const void* decided_in;         // the location (its LocConf) whose zones were decided last
    const ngx_str_t* zone_name;     // the zone the RateLimit fields describe
    const ngx_str_t* policy;        // its RateLimit-Policy value
    const ngx_str_t* limit_prefix;  // the start of its RateLimit value: "NAME";r=
    uint64_t limit;                 // its quota (the policy's q=)
    uint64_t remaining;
    int64_t reset_s;
    int64_t retry_after_s;
    // Main request: what the client request (the main request, its internal redirects and its
    // subrequests) did in each zone, by ZoneConf::index (limit/access_handler.cpp); nullptr
    // until a zone was counted or is being decided.
    ZoneMark* marks;
    int64_t cache_age_s;      // the Age header sent with a stored entry (cache_served)
    CacheHold* hold;          // a write's response held until its invalidation is answered
    CacheRequest* cache;      // the response cache's state (cache/request.hpp), or nullptr
    IdentityState* identity;  // main request only: its verified identity (identity/resolve.cpp)
};
static_assert(std::is_trivially_destructible_v<RequestCtx>);

// get_ctx() when r's context slot is empty and r may have lost it (an internal redirect or a
// filter finalization clears the slot): the search of r's pool cleanups.
RequestCtx* find_ctx(ngx_http_request_t* r) noexcept;

// The context of r itself (a subrequest's, not its main request's), or nullptr. Inline: every
// filter asks, and the slot answers for most requests.
inline RequestCtx* get_ctx(ngx_http_request_t* r) noexcept {
    auto* ctx = static_cast<RequestCtx*>(ngx_http_get_module_ctx(r, ngx_http_throttle_module));
    if (ctx != nullptr || !(r->internal || r->filter_finalize)) {
        return ctx;
    }
    return find_ctx(r);
}
// Makes r's context; for a subrequest, the main request's too if it has none yet. `extra`
// zeroed bytes follow the context (8-aligned, at ctx + 1), in the same allocation.
RequestCtx* create_ctx(ngx_http_request_t* r, size_t extra = 0) noexcept;

// r is the subrequest that asks the application who a credential is (identity/resolve.cpp):
// no zone counts it, the cache does not look it up.
bool is_identity_subrequest(const ngx_http_request_t* r) noexcept;

// State a request shares with what answers it later (a Redis callback, a fill it waits for,
// a held response). The object lives on the heap, held by std::shared_ptr: one share belongs to
// the request's pool, the others to the callbacks. When the pool is destroyed (the request was
// answered, the client went away, the worker exits), request_ended() runs, gone() turns true
// and the pool's share is dropped; a callback checks gone() before it touches the request.
// Made by bind_to_request().
class RequestBound {
   public:
    explicit RequestBound(ngx_http_request_t* r) noexcept : r_(r) {}
    virtual ~RequestBound() = default;
    RequestBound(const RequestBound&) = delete;
    RequestBound& operator=(const RequestBound&) = delete;

    ngx_http_request_t* request() const noexcept { return r_; }
    bool gone() const noexcept { return gone_; }
    bool suspended() const noexcept { return suspended_; }

    // The phase handler returns NGX_DONE after this: the request waits, kept alive by a
    // reference, with reading watched so that a client that closes ends it. A suspended
    // request keeps the worker too (keep_worker()).
    void suspend() noexcept;
    // The answer came: the request runs its phases again (the handler that suspended it picks
    // its result up) and the reference suspend() took is dropped. Only while suspended.
    void resume() noexcept;

    // While on, this request counts in requests_waiting() and the worker does not end a
    // graceful exit (reload, QUIT) before it is off again or the request ended: nginx waits
    // only for requests with a timer pending, and one waiting on the module may have none.
    // suspend()/resume() do it; a response held without suspending (CacheHold) calls it.
    void keep_worker(bool on) noexcept;

    // The pool cleanup bind_to_request() installs.
    static void pool_cleanup(void* data) noexcept;

   protected:
    // The request ended: release what only makes sense while it lives. gone() is true already.
    virtual void request_ended() noexcept {}

   private:
    ngx_http_request_t* r_;
    bool gone_ = false;
    bool suspended_ = false;
    bool keeps_worker_ = false;
};

// Requests of this worker that wait on the module (keep_worker()): while there are any, a
// timer nginx cannot cancel is pending, so a graceful exit waits for them (each is answered
// within its own bound: the Redis timeout, throttle_cache_lock_timeout).
size_t requests_waiting() noexcept;

// An nginx timer of an object tied to a request (a RequestBound): its event handler finds the
// object with owner_of(). The owner stops it when it is done and when it goes.
template <typename T>
struct RequestTimer {
    ngx_event_t ev;  // first member: an ngx_event_t* is a RequestTimer*
    T* owner;

    void init(T* o, ngx_event_handler_pt handler, ngx_http_request_t* r) noexcept {
        owner = o;
        ev.handler = handler;
        ev.data = r->connection;
        ev.log = r->connection->log;
    }
    void stop() noexcept {
        if (ev.timer_set) {
            ngx_del_timer(&ev);
        }
    }
    static T* owner_of(ngx_event_t* e) noexcept {
        return reinterpret_cast<RequestTimer*>(e)->owner;
    }
};

// An allocator that keeps up to max_spare freed blocks of its type for the next allocations of
// one object (per type; single-threaded, like the worker): the objects bind_to_request() makes
// cost no heap allocation once a few requests have waited. The spares are never freed (plain
// data: the module may be unloaded without static destructors); a worker's spares go with it.
template <typename T>
class Recycling {
   public:
    using value_type = T;
    Recycling() noexcept = default;
    template <typename U>
    Recycling(const Recycling<U>&) noexcept {}

    T* allocate(size_t n) {
        static_assert(sizeof(T) >= sizeof(Spare) && alignof(T) <= alignof(std::max_align_t));
        if (n == 1 && spare_ != nullptr) {
            Spare* s = spare_;
            spare_ = s->next;
            spares_--;
            return reinterpret_cast<T*>(s);
        }
        return std::allocator<T>().allocate(n);
    }
    void deallocate(T* p, size_t n) noexcept {
        if (n == 1 && spares_ < max_spare) {
            auto* s = reinterpret_cast<Spare*>(p);
            s->next = spare_;
            spare_ = s;
            spares_++;
            return;
        }
        std::allocator<T>().deallocate(p, n);
    }
    template <typename U>
    bool operator==(const Recycling<U>&) const noexcept {
        return true;
    }
    template <typename U>
    bool operator!=(const Recycling<U>&) const noexcept {
        return false;
    }

   private:
    struct Spare {
        Spare* next;
    };
    static constexpr size_t max_spare = 64;
    static inline Spare* spare_ = nullptr;
    static inline size_t spares_ = 0;
};

// A T (a RequestBound, constructed from r and args) whose life is tied to r's pool as above
// (the pool's share lives in the pool, in the cleanup's data). nullptr when the pool cannot take
// a cleanup. May throw std::bad_alloc.
template <typename T, typename... Args>
std::shared_ptr<T> bind_to_request(ngx_http_request_t* r, Args&&... args) {
    static_assert(std::is_base_of_v<RequestBound, T>);
    auto obj = std::allocate_shared<T>(Recycling<T>(), r, std::forward<Args>(args)...);
    ngx_pool_cleanup_t* cln = ngx_pool_cleanup_add(r->pool, sizeof(std::shared_ptr<RequestBound>));
    if (cln == nullptr) {
        return nullptr;
    }
    new (cln->data) std::shared_ptr<RequestBound>(obj);
    cln->handler = RequestBound::pool_cleanup;
    return obj;
}

}  // namespace throttle::ngx
