// The response cache's per-request state (layer: ngx): one CacheRequest for a main GET/HEAD
// request in a location with `throttle_cache`, bound to the request's pool (RequestBound), so
// that a Redis reply or a fill wake-up arriving after the request ended finds gone() set
// instead of freed memory. RequestCtx::cache points at it while the request lives.
//
// The life of a cached GET (handler.cpp drives it):
//   asking   its lookup is queued or in flight (lookup.cpp batches it with the turn's others)
//   waiting  another request fills the entry (waiters.cpp wakes it); once per lease it looks
//            again (asking: the filler may have died), at most lock_timeout in all
//   serve    `entry` holds the bytes to answer with (serve.cpp)
//   pass     the request goes on to the upstream; when this request took the fill lock,
//            `fill` stores what the upstream answers (fill.cpp, from the filters)
//   done     answered, or passed already
#pragma once

#include <memory>
#include <string>

#include "core/cache_entry.hpp"
#include "core/cache_key.hpp"
#include "core/gzip.hpp"
#include "ngx/cache/conf.hpp"
#include "ngx/cache/fill.hpp"
#include "ngx/cache/leases.hpp"
#include "ngx/cache/vary.hpp"
#include "ngx/cache/worker.hpp"
#include "ngx/metrics.hpp"
#include "ngx/request.hpp"
#include "redis/cache_scripts.hpp"

namespace throttle::ngx {

// A gzip entry's body inflated piece by piece for a client that does not accept gzip, as its
// connection takes it (serve.cpp): at most plain_stream_bufs buffers of plain_stream_buf_size
// (from the request's pool, reused) and zlib's state are held, whatever the body's size.
struct PlainStream {
    core::GzipInflater inflater;  // over the entry's bytes (CacheRequest::entry keeps them)
    ngx_chain_t* free = nullptr;  // buffers sent, to refill
    ngx_chain_t* busy = nullptr;  // buffers passed on, not sent yet
    ngx_uint_t allocated = 0;
    size_t plain_size = 0;  // what it must inflate to (the range filter changes Content-Length)
    bool finished = false;  // the last buffer was passed on
};
inline constexpr size_t plain_stream_bufs = 2;
inline constexpr size_t plain_stream_buf_size = 64 * 1024;
// What a stream counts against throttle_cache_inflate_memory: its buffers and zlib's state
// (about 40 KB: 7 KB of state and the 32 KB window; t/unit/gzip_test.cpp checks < 64 KB).
inline constexpr size_t plain_stream_charge = plain_stream_bufs * plain_stream_buf_size + 65536;

struct CacheRequest final : RequestBound, std::enable_shared_from_this<CacheRequest> {
    enum class Step : uint8_t { asking, waiting, serve, pass, done };

    CacheRequest(ngx_http_request_t* r, const CacheLocConf* conf) noexcept;
    ~CacheRequest() override;

    const CacheLocConf* conf;  // the location that looked up (a redirect elsewhere: no store)
    Step step = Step::asking;
    bool relookup = false;  // asking again after a remote fill stored: never wait twice
    bool head = false;
    bool fills = false;  // may take the fill lock: not HEAD, not conditional

    // The identity digest ("anon" or 64 hex) and the owner token its fill lock is taken with
    // (fills only), kept inline: no heap per request.
    char id_buf[64];
    uint8_t id_len = 0;
    char token_buf[cache_fill_token_max];
    uint8_t token_len = 0;
    std::string_view id() const noexcept { return {id_buf, id_len}; }
    std::string_view token() const noexcept { return {token_buf, token_len}; }
    // The key looked up: the base key, or the variant key of `vary` (vary.hpp).
    core::Sha256Digest key{};
    core::Sha256Digest base_key{};  // core::cache::cache_key() of the request
    core::cache::VaryList vary;     // the list `key` is the variant of; empty: key is base_key
    // The resource's tag in the vary memo, computed when first needed (a request of a location
    // that never met a varying response never pays for it) from the views kept here, which
    // point into the request's own memory.
    std::string_view tag_host, tag_path, tag_query;
    uint64_t vary_tag = 0;
    bool vary_tag_known = false;
    uint64_t tag() noexcept {
        if (!vary_tag_known) {
            vary_tag = cache_vary_tag(conf, tag_host, tag_path, tag_query);
            vary_tag_known = true;
        }
        return vary_tag;
    }
    bool vary_followed = false;  // a vary record was followed already (never twice)
    core::cache::Generation gen;
    // E, once the generations are known: computed when first needed (entry_key_now(): a miss
    // waits and fills under it, so does a stale hit's refresh; a fresh hit never needs it).
    // Empty: not computed for the current gen and key.
    std::string entry_key;
    const std::string& entry_key_now() {  // may throw std::bad_alloc
        if (entry_key.empty()) {
            entry_key = redis::cache_entry_key(target(), gen);
        }
        return entry_key;
    }

    std::shared_ptr<const std::string> entry;  // what to serve (Step::serve)
    core::cache::EntryView decoded;            // entry, decoded (valid while `entry` lives)
    bool view_valid = false;
    std::shared_ptr<const std::string> plain;  // its body decompressed, when served so
    std::unique_ptr<PlainStream> stream;       // or its body inflated piece by piece
    size_t inflate_charge = 0;                 // what either counts against the worker's bound

    Fill fill;  // this request's fill, when it holds the fill lock

    // The local tier (local.hpp): whether what Redis answers is kept there, and the host's
    // state when the lookup was sent.
    bool local_keep = false;
    core::cache::LocalSnapshot local_seen{};

    // The wait: an nginx timer, deleted when the request ends. It expires once per lease (the
    // request looks again) and at the cap, throttle_cache_lock_timeout after the wait began.
    RequestTimer<CacheRequest> wait_timer{};
    bool wait_began = false;
    ngx_msec_t wait_since = 0;  // ngx_current_msec when the request first waited

    // The status set for the request ($throttle_cache_status, by handler.cpp), the one it is
    // served with (cache_serve).
    CacheStatus status = CacheStatus::none;
    // The counters (cache_count_lookup below): the lookup is counted once, when its status is
    // final; a request that waited for a fill counts its wait then too.
    bool counted = false;
    bool waited = false;          // registered as a waiter at least once
    bool wait_timed_out = false;  // throttle_cache_lock_timeout passed

    redis::CacheTarget target() const noexcept {
        redis::CacheTarget t;
        t.prefix = cache_prefix();
        t.ns = {reinterpret_cast<const char*>(conf->ns.data), conf->ns.len};
        t.id = id();
        t.key = key;
        return t;
    }
    // The fill lock this request's lookup may take, in owned bytes. May throw std::bad_alloc.
    FillLock fill_lock() const {
        return FillLock{std::string(target().ns), std::string(id()), key, std::string(token()),
                        cache_lease_ms(*conf)};
    }

   protected:
    void request_ended() noexcept override;
};

// ---- handler.cpp ----
// A lookup's answer (nullptr: none; `failure` says why, None for a malformed reply).
void cache_lookup_done(const std::shared_ptr<CacheRequest>& cr, redis::Failure failure,
                       redis::CacheLookup* answer, bool want_lock) noexcept;
// A wait ended: the filler stored (`entry` is its bytes when the filler ran in this worker,
// else nullptr: look up again) or gave up (stored false).
void cache_woken(const std::shared_ptr<CacheRequest>& cr, bool stored,
                 const std::shared_ptr<const std::string>& entry) noexcept;

// Counts the request's lookup under `s` (its final $throttle_cache_status) in its location's
// namespace, and its wait for a fill if it waited; once per request, later calls do nothing.
// Inline: without throttle_metrics a hit pays a flag and a null check.
void cache_count_lookup_in(core::metrics::CacheMetrics& m, const CacheRequest& cr,
                           CacheStatus s) noexcept;
inline void cache_count_lookup(CacheRequest& cr, CacheStatus s) noexcept {
    if (cr.counted) {
        return;
    }
    cr.counted = true;
    if (core::metrics::CacheMetrics* m = cr.conf->metrics->m) {
        cache_count_lookup_in(*m, cr, s);
    }
}

// ---- serve.cpp ----
// Answers the request from cr.entry; finalizes it. Returns what the phase handler returns.
ngx_int_t cache_serve(ngx_http_request_t* r, CacheRequest& cr) noexcept;

}  // namespace throttle::ngx
