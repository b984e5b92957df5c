// The response cache's per-worker state (layer: ngx): the key prefix, the fills this worker
// runs, the requests waiting for a fill, and the subscription to the fill channel through
// which fills in other workers and on other hosts announce that they stored or gave up.
//
// A waiter is registered under the entry key E its lookup found locked. It is woken:
//   - by this worker's filler, directly, with the stored bytes (cache_fill_end());
//   - by a message on the fill channel ("1"+E stored, "0"+E gave up) for fills elsewhere; the
//     STORE and RELEASE scripts publish only when a lookup marked E as waited for;
//   - by its own timer (throttle_cache_lock_timeout), in cache_handler.cpp.
// Invalidations Redis did not confirm are retried every second (see cache_invalidate()).
// A message can overtake the lookup reply that makes a request wait (two connections): the
// last messages that found nobody waiting are kept for a second and wake a late waiter at once.
#include <algorithm>
#include <array>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/gzip.hpp"
#include "ngx/cache_request.hpp"
#include "ngx/worker.hpp"
#include "redis/client.hpp"
#include "redis/subscriber.hpp"

namespace throttle::ngx {
namespace {

constexpr uint64_t recent_ms = 1000;

struct Recent {
    std::string e;
    bool stored = false;
    uint64_t at = 0;
};

// An invalidation waiting to be confirmed by Redis.
struct PendingInvalidation {
    std::string id;
    std::vector<std::string> namespaces;
};

// A fill lock an unanswered lookup may have taken.
struct Orphan {
    FillLock lock;
    uint64_t until = 0;  // loop time after which the lock has expired anyway
};

constexpr size_t pending_max = 10000;
constexpr size_t orphans_max = 1000;
constexpr uint64_t retry_ms = 1000;

struct IdentityMemo {
    std::string identity;
    std::string digest;
};

struct PlainMemo {
    std::string entry_key;
    int64_t stored_at_ms = 0;
    std::string trailer;  // the gzip member's last 8 bytes (CRC-32, length)
    std::shared_ptr<const std::string> body;
};

constexpr size_t identity_slots = 512;
constexpr size_t plain_slots = 64;
constexpr size_t plain_max_bytes = 256 * 1024;  // bodies larger than this are not kept

struct QueuedLookup {
    std::shared_ptr<CacheRequest> cr;
    bool want_lock;
};

struct CacheWorker {
    std::string prefix;
    std::string channel;
    redis::Loop* loop = nullptr;
    std::unique_ptr<redis::Subscriber> sub;
    std::unordered_map<std::string, std::vector<std::shared_ptr<CacheRequest>>> waiters;
    std::unordered_map<std::string, unsigned> filling;
    std::array<Recent, 32> recent;
    size_t next_recent = 0;
    std::vector<PendingInvalidation> pending;
    std::unordered_map<std::string, unsigned> pending_keys;  // id "\n" ns -> count
    std::vector<Orphan> orphans;
    std::unique_ptr<redis::Timer> retry_timer;
    std::string secret;  // the one identities in `identities` were hashed with
    std::unique_ptr<core::HmacSha256Key> secret_key;  // `secret`, prepared
    std::array<IdentityMemo, identity_slots> identities;
    std::array<PlainMemo, plain_slots> plain;
    bool pending_full_logged = false;
    std::vector<QueuedLookup> lookups;  // queued during this event-loop turn
    std::vector<QueuedLookup> sending;  // kept for its capacity
    ngx_event_t lookup_event;
    ngx_connection_t lookup_ident;  // what lookup_event.data points at (debug log reads its fd)
};

CacheWorker* cw = nullptr;  // owned; deleted in cache_worker_exit (no static destructor)
const std::string empty;

void wake(const std::string& e, bool stored, const std::shared_ptr<const std::string>& entry,
          bool from_channel) noexcept {
    auto it = cw->waiters.find(e);
    if (it == cw->waiters.end()) {
        if (from_channel) {
            Recent& r = cw->recent[cw->next_recent++ % cw->recent.size()];
            try {
                r.e = e;
                r.stored = stored;
                r.at = cw->loop->now_ms();
            } catch (...) {
                r.e.clear();
            }
        }
        return;
    }
    std::vector<std::shared_ptr<CacheRequest>> list = std::move(it->second);
    cw->waiters.erase(it);
    for (const auto& w : list) {
        cache_woken(w, stored, entry);
    }
}

void on_message(std::string_view msg) noexcept {
    if (cw == nullptr || worker_exiting()) {
        return;
    }
    bool stored = false;
    std::string_view e;
    if (!redis::parse_cache_fill_message(msg, stored, e)) {
        return;
    }
    try {
        wake(std::string(e), stored, nullptr, true);
    } catch (...) {
    }
}

std::string pending_key(std::string_view ns, std::string_view id) {
    std::string k;
    k.reserve(id.size() + 1 + ns.size());
    k.append(id).append(1, '\n').append(ns);
    return k;
}

void forget_pending(const PendingInvalidation& p) noexcept {
    for (const std::string& ns : p.namespaces) {
        try {
            auto it = cw->pending_keys.find(pending_key(ns, p.id));
            if (it != cw->pending_keys.end() && --it->second == 0) {
                cw->pending_keys.erase(it);
            }
        } catch (...) {
        }
    }
}

void keep_pending(PendingInvalidation&& p) noexcept {
    if (cw == nullptr) {
        return;
    }
    try {
        if (cw->pending.size() >= pending_max) {
            if (!cw->pending_full_logged) {
                cw->pending_full_logged = true;
                ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                              "throttle_cache: %uz invalidations wait for Redis, dropping the "
                              "oldest: those users' older entries live until their TTL",
                              cw->pending.size());
            }
            forget_pending(cw->pending.front());
            cw->pending.erase(cw->pending.begin());
        }
        for (const std::string& ns : p.namespaces) {
            cw->pending_keys[pending_key(ns, p.id)]++;
        }
        cw->pending.push_back(std::move(p));
        if (!cw->retry_timer->active()) {
            cw->retry_timer->start(retry_ms);
        }
    } catch (...) {
    }
}

// Sends one invalidation; one Redis did not confirm goes (back) to the pending list. Returns
// whether it was sent (`answered` is then called once with Redis' answer or failure).
bool send_invalidation(PendingInvalidation&& p, std::function<void()> answered) noexcept {
    redis::Client* client = redis_client();
    try {
        std::vector<std::string_view> names(p.namespaces.begin(), p.namespaces.end());
        redis::EvalArgs args;
        if (client == nullptr || !client->available() ||
            !redis::build_cache_invalidate_args(cw->prefix, p.id, names, args)) {
            keep_pending(std::move(p));
            return false;
        }
        auto held = std::make_shared<PendingInvalidation>(std::move(p));
        client->evalsha(redis::cache_invalidate_script(), args.keys(), args.args(),
                        [held, answered = std::move(answered)](redis::Result&& res) noexcept {
                            struct Answer {
                                const std::function<void()>& f;
                                ~Answer() {
                                    if (f) {
                                        f();
                                    }
                                }
                            } answer{answered};
                            std::vector<uint64_t> gens;
                            bool good = false;
                            try {
                                good = res.ok() && redis::parse_cache_invalidate_reply(
                                                       res.reply, held->namespaces.size(), gens);
                            } catch (...) {
                            }
                            if (good || worker_exiting()) {
                                return;
                            }
                            ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                                          "throttle_cache: invalidation failed (%s), retrying",
                                          res.ok() ? "unexpected reply"
                                                   : redis::to_string(res.failure));
                            keep_pending(std::move(*held));
                        });
        return true;
    } catch (...) {
        keep_pending(std::move(p));
        return false;
    }
}

void keep_orphan(Orphan&& o) noexcept {
    try {
        if (cw->orphans.size() >= orphans_max) {
            cw->orphans.erase(cw->orphans.begin());
        }
        cw->orphans.push_back(std::move(o));
        if (!cw->retry_timer->active()) {
            cw->retry_timer->start(retry_ms);
        }
    } catch (...) {
    }
}

void send_abandon(Orphan&& o) noexcept {
    if (cw->loop->now_ms() >= o.until) {
        return;  // expired by itself
    }
    redis::Client* client = redis_client();
    try {
        redis::CacheTarget t;
        t.prefix = cw->prefix;
        t.ns = o.lock.ns;
        t.id = o.lock.id;
        t.key = o.lock.key;
        redis::EvalArgs args;
        if (client == nullptr || !client->available() ||
            !redis::build_cache_abandon_args(t, cw->channel, args)) {
            keep_orphan(std::move(o));
            return;
        }
        auto held = std::make_shared<Orphan>(std::move(o));
        client->evalsha(redis::cache_abandon_script(), args.keys(), args.args(),
                        [held](redis::Result&& res) noexcept {
                            bool released = false;
                            if (res.ok() && redis::parse_cache_abandon_reply(res.reply, released)) {
                                return;
                            }
                            if (cw != nullptr && !worker_exiting()) {
                                keep_orphan(std::move(*held));
                            }
                        });
    } catch (...) {
        keep_orphan(std::move(o));
    }
}

void retry_pending() noexcept {
    if (cw == nullptr || worker_exiting()) {
        return;
    }
    std::vector<Orphan> orphans;
    orphans.swap(cw->orphans);
    for (Orphan& o : orphans) {
        send_abandon(std::move(o));
    }
    std::vector<PendingInvalidation> batch;
    batch.swap(cw->pending);
    for (const PendingInvalidation& p : batch) {
        forget_pending(p);
    }
    for (PendingInvalidation& p : batch) {
        send_invalidation(std::move(p), nullptr);
    }
}

void fail_lookups(std::vector<QueuedLookup>& batch, redis::Failure why) noexcept {
    for (QueuedLookup& q : batch) {
        cache_lookup_done(q.cr, why, nullptr, q.want_lock);
    }
}

// Sends lookups [0, n) of `batch` (moved out) as one script call.
void send_lookups(std::vector<QueuedLookup>&& batch) noexcept {
    auto held = std::make_shared<std::vector<QueuedLookup>>(std::move(batch));
    redis::Client* client = redis_client();
    try {
        std::vector<redis::CacheLookupRequest> reqs;
        reqs.reserve(held->size());
        for (const QueuedLookup& q : *held) {
            redis::CacheLookupRequest rq;
            rq.target = q.cr->target();
            rq.lock_ttl_ms = static_cast<int64_t>(q.cr->lcf->cache_lock_timeout);
            rq.want_lock = q.want_lock;
            reqs.push_back(rq);
        }
        redis::EvalArgs args;
        if (client == nullptr ||
            !redis::build_cache_lookup_batch_args(reqs.data(), reqs.size(), args)) {
            fail_lookups(*held, redis::Failure::Invalid);
            return;
        }
        client->evalsha(redis::cache_lookup_batch_script(), args.keys(), args.args(),
                        [held](redis::Result&& res) noexcept {
                            std::vector<redis::CacheLookup> out;
                            bool good = false;
                            try {
                                good = res.ok() && redis::parse_cache_lookup_batch_reply(
                                                       std::move(res.reply), held->size(), out);
                            } catch (...) {
                            }
                            if (!good) {
                                fail_lookups(*held, res.failure);
                                return;
                            }
                            for (size_t i = 0; i < held->size(); i++) {
                                cache_lookup_done((*held)[i].cr, redis::Failure::None, &out[i],
                                                  (*held)[i].want_lock);
                            }
                        });
    } catch (...) {
        fail_lookups(*held, redis::Failure::Invalid);
    }
}

// The end of an event-loop turn: what was queued goes to Redis.
void flush_lookups(ngx_event_t*) noexcept {
    if (cw == nullptr) {
        return;
    }
    std::vector<QueuedLookup>& queue = cw->sending;
    queue.swap(cw->lookups);
    std::vector<QueuedLookup> batch;
    batch.reserve(std::min(queue.size(), redis::cache_lookup_batch_max));
    for (QueuedLookup& q : queue) {
        if (q.cr->gone) {
            continue;  // nothing to ask for a request that ended
        }
        batch.push_back(std::move(q));
        if (batch.size() == redis::cache_lookup_batch_max) {
            send_lookups(std::move(batch));
            batch.clear();
        }
    }
    if (!batch.empty()) {
        send_lookups(std::move(batch));
    }
    queue.clear();
}

}  // namespace

bool cache_lookup_submit(const std::shared_ptr<CacheRequest>& cr, bool want_lock) noexcept {
    if (cw == nullptr || redis_client() == nullptr) {
        return false;
    }
    try {
        cw->lookups.push_back(QueuedLookup{cr, want_lock});
    } catch (...) {
        return false;
    }
    if (!cw->lookup_event.posted) {
        ngx_post_event(&cw->lookup_event, &ngx_posted_events);
    }
    return true;
}

bool cache_invalidate(std::string id, std::vector<std::string> namespaces,
                      std::function<void()> answered) noexcept {
    if (cw == nullptr || namespaces.empty()) {
        return false;
    }
    return send_invalidation(PendingInvalidation{std::move(id), std::move(namespaces)},
                             std::move(answered));
}

void cache_abandon_lock(const FillLock& lock) noexcept {
    if (cw == nullptr || worker_exiting()) {
        return;
    }
    try {
        send_abandon(Orphan{lock, cw->loop->now_ms() + lock.ttl});
    } catch (...) {
    }
}

bool cache_invalidation_pending(std::string_view ns, std::string_view id) noexcept {
    if (cw == nullptr || cw->pending_keys.empty()) {
        return false;
    }
    try {
        return cw->pending_keys.count(pending_key(ns, id)) > 0;
    } catch (...) {
        return true;
    }
}

std::string cache_identity(std::string_view secret, std::string_view identity) {
    if (cw == nullptr || identity.empty()) {
        return core::cache::identity_digest(secret, identity);
    }
    if (!cw->secret_key || cw->secret != secret) {  // never mix digests of two secrets
        cw->secret.assign(secret);
        cw->secret_key = std::make_unique<core::HmacSha256Key>(secret.data(), secret.size());
        for (IdentityMemo& m : cw->identities) {
            m.identity.clear();
            m.digest.clear();
        }
    }
    IdentityMemo& m = cw->identities[std::hash<std::string_view>{}(identity) % identity_slots];
    if (!m.digest.empty() && m.identity == identity) {
        return m.digest;
    }
    std::string d = core::cache::identity_digest(*cw->secret_key, identity);
    m.identity.assign(identity);
    m.digest = d;
    return d;
}

std::shared_ptr<const std::string> cache_plain_body(std::string_view entry_key,
                                                    const core::cache::EntryView& v) {
    std::string_view trailer = v.body.size() >= 8 ? v.body.substr(v.body.size() - 8) : v.body;
    PlainMemo* m = nullptr;
    if (cw != nullptr && v.plain_size <= plain_max_bytes) {
        size_t h = std::hash<std::string_view>{}(entry_key) ^
                   std::hash<int64_t>{}(v.stored_at_ms);
        m = &cw->plain[h % plain_slots];
        if (m->body && m->stored_at_ms == v.stored_at_ms && m->entry_key == entry_key &&
            m->trailer == trailer) {
            return m->body;
        }
    }
    auto out = std::make_shared<std::string>();
    if (!core::gzip_decompress(v.body, *out, v.plain_size)) {
        return nullptr;
    }
    if (m != nullptr) {
        m->entry_key.assign(entry_key);
        m->stored_at_ms = v.stored_at_ms;
        m->trailer.assign(trailer);
        m->body = out;
    }
    return out;
}

const std::string& cache_prefix() noexcept { return cw ? cw->prefix : empty; }
const std::string& cache_channel() noexcept { return cw ? cw->channel : empty; }

void cache_worker_init(ngx_cycle_t* cycle, MainConf* mcf, redis::Loop& loop) noexcept {
    if (!mcf->cache_used || mcf->redis == nullptr) {
        return;
    }
    try {
        auto w = std::make_unique<CacheWorker>();
        std::string base(view(mcf->redis->prefix));
        w->prefix = base + "cache:";
        w->channel = redis::cache_fill_channel(base);
        w->loop = &loop;
        w->retry_timer = loop.create_timer([]() noexcept { retry_pending(); });
        ngx_memzero(&w->lookup_event, sizeof(w->lookup_event));
        ngx_memzero(&w->lookup_ident, sizeof(w->lookup_ident));
        w->lookup_ident.fd = static_cast<ngx_socket_t>(-1);
        w->lookup_event.data = &w->lookup_ident;
        w->lookup_event.log = cycle->log;
        w->lookup_event.handler = flush_lookups;
        ngx_log_t* log = cycle->log;
        w->sub = std::make_unique<redis::Subscriber>(
            loop, *mcf->redis->client, w->channel, on_message,
            [log](redis::LogLevel level, std::string_view m) {
                ngx_log_error(log_level_of(level), log, 0, "throttle_cache: fill channel: %*s",
                              m.size(), m.data());
            });
        cw = w.release();
        cw->sub->start();
    } catch (const std::exception& e) {
        ngx_log_error(NGX_LOG_ERR, cycle->log, 0,
                      "throttle_cache: no fill channel (%s): concurrent misses are not "
                      "coalesced across workers",
                      e.what());
    }
}

void cache_worker_exit() noexcept {
    if (cw == nullptr) {
        return;
    }
    if (cw->sub) {
        cw->sub->close();
    }
    if (cw->lookup_event.posted) {
        ngx_delete_posted_event(&cw->lookup_event);
    }
    if (!cw->pending.empty()) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "throttle_cache: %uz invalidations not confirmed by Redis at exit",
                      cw->pending.size());
    }
    CacheWorker* w = cw;
    cw = nullptr;
    delete w;
}

bool cache_can_wait(const std::string& e) noexcept {
    if (cw == nullptr) {
        return false;
    }
    return cw->filling.count(e) > 0 || (cw->sub && cw->sub->subscribed());
}

bool cache_wait(const std::string& e, const std::shared_ptr<CacheRequest>& cr) noexcept {
    if (cw == nullptr) {
        return false;
    }
    uint64_t now = cw->loop->now_ms();
    for (const Recent& r : cw->recent) {
        if (!r.e.empty() && r.e == e && now - r.at <= recent_ms && cw->filling.count(e) == 0) {
            cache_woken(cr, r.stored, nullptr);
            return true;
        }
    }
    try {
        cw->waiters[e].push_back(cr);
        return true;
    } catch (...) {
        return false;
    }
}

void cache_unwait(const std::string& e, const CacheRequest* cr) noexcept {
    if (cw == nullptr) {
        return;
    }
    auto it = cw->waiters.find(e);
    if (it == cw->waiters.end()) {
        return;
    }
    auto& list = it->second;
    for (size_t i = 0; i < list.size(); i++) {
        if (list[i].get() == cr) {
            list.erase(list.begin() + static_cast<std::ptrdiff_t>(i));
            break;
        }
    }
    if (list.empty()) {
        cw->waiters.erase(it);
    }
}

void cache_fill_begin(const std::string& e) noexcept {
    if (cw == nullptr) {
        return;
    }
    try {
        cw->filling[e]++;
    } catch (...) {
    }
}

void cache_fill_end(const std::string& e, bool stored,
                    const std::shared_ptr<const std::string>& entry) noexcept {
    if (cw == nullptr) {
        return;
    }
    auto it = cw->filling.find(e);
    if (it != cw->filling.end() && --it->second == 0) {
        cw->filling.erase(it);
    }
    if (worker_exiting()) {
        return;
    }
    wake(e, stored, entry, false);
}

bool cache_filling_here(const std::string& e) noexcept {
    return cw != nullptr && cw->filling.count(e) > 0;
}

}  // namespace throttle::ngx
