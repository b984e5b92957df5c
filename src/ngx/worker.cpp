// Per-worker Redis client and sync-mode flushes (see worker.hpp).
#include "ngx/worker.hpp"

#include <algorithm>
#include <memory>
#include <new>
#include <vector>

#include "core/sync.hpp"
#include "ngx/cache_request.hpp"
#include "redis/cache_scripts.hpp"
#include "ngx/redis_loop.hpp"
#include "redis/blocking.hpp"
#include "redis/scripts.hpp"

namespace throttle::ngx {
namespace {

constexpr size_t flush_batch = redis::flush_batch_max;

struct SyncTimer {
    ZoneConf* zone;
    std::unique_ptr<redis::Timer> timer;
};

// Strict decisions queued during one event-loop turn, sent together at its end.
struct StrictBatch {
    std::vector<StrictWaiter*> queue;
    std::vector<StrictWaiter*> spare;  // the queue being sent, kept for its capacity
    ngx_event_t event;
    ngx_connection_t ident;  // what event.data points at (nginx's debug log reads its fd)
};


struct Worker {
    explicit Worker(ngx_cycle_t* cycle, MainConf* m)
        : mcf(m),
          log(cycle->log),
          loop(cycle->log),
          client(std::make_unique<redis::Client>(
              loop, *m->redis->client, [this](redis::LogLevel level, std::string_view msg) {
                  log_message(level, msg);
              })) {}

    void log_message(redis::LogLevel level, std::string_view msg) noexcept {
        ngx_log_error(log_level_of(level), log, 0, "throttle_redis: %*s", msg.size(),
                      msg.data());
    }

    MainConf* mcf;
    ngx_log_t* log;
    RedisLoop loop;
    std::unique_ptr<redis::Client> client;  // reset first at exit: its callbacks run then
    std::vector<SyncTimer> timers;
    StrictBatch strict;
};

Worker* worker = nullptr;  // owned; deleted in exit_worker (no static destructor)
bool exiting = false;

// One key's unsent counts on their way to Redis.
struct FlushItem {
    core::StoredKey key;
    core::sync::Delta delta;
    std::string base;
};

// Takes the unsent counts of every key of a zone (under its lock).
std::vector<FlushItem> collect(ZoneConf* zone, const RedisSettings& rs, int64_t now) {
    std::vector<FlushItem> items;
    ngx_shmtx_lock(&zone->shpool->mutex);
    try {
        zone->table->for_each([&](const core::StoredKey& k, core::State& s) {
            core::sync::Delta d = core::sync::take_unsent(zone->policy.rate, s, now);
            if (!d.empty()) {
                items.push_back(FlushItem{k, d, std::string()});
            }
        });
    } catch (...) {
        // Out of memory half way: give back what was taken.
        for (FlushItem& it : items) {
            if (core::State* s = zone->table->find(it.key)) {
                core::sync::restore_unsent(zone->policy.rate, *s, it.delta, now);
            }
        }
        ngx_shmtx_unlock(&zone->shpool->mutex);
        throw;
    }
    ngx_shmtx_unlock(&zone->shpool->mutex);
    for (FlushItem& it : items) {
        it.base = redis_base(rs, *zone, it.key);
    }
    return items;
}

// Builds the flush script's KEYS and ARGV for items[from, to).
void flush_args(const ZoneConf* zone, const std::vector<FlushItem>& items, size_t from,
                size_t to, redis::EvalArgs& out) {
    std::vector<redis::FlushEntry> entries;
    entries.reserve(to - from);
    for (size_t i = from; i < to; i++) {
        entries.push_back(redis::FlushEntry{items[i].base, items[i].delta.window,
                                            items[i].delta.cur, items[i].delta.prev});
    }
    if (!redis::build_flush_args(zone->policy.rate.period_ms, entries, out)) {
        throw std::bad_alloc();
    }
}

// Folds a batch's outcome back into the zone: the global totals, or the counts to resend.
void settle(ZoneConf* zone, const std::vector<FlushItem>& items, size_t from, size_t to,
            const std::vector<std::pair<uint64_t, uint64_t>>* totals) noexcept {
    int64_t now = now_ms();
    ngx_shmtx_lock(&zone->shpool->mutex);
    for (size_t i = from; i < to; i++) {
        core::State* s = zone->table->find(items[i].key);
        if (s == nullptr) {
            continue;  // evicted meanwhile (the zone is too small; logged at eviction)
        }
        if (totals != nullptr) {
            const auto& t = (*totals)[i - from];
            core::sync::apply_global(zone->policy.rate, *s, items[i].delta, t.first, t.second,
                                     now);
        } else {
            core::sync::restore_unsent(zone->policy.rate, *s, items[i].delta, now);
        }
    }
    ngx_shmtx_unlock(&zone->shpool->mutex);
}

void flush(ZoneConf* zone) noexcept {
    Worker& w = *worker;
    int64_t now = now_ms();
    // One flush per host per interval: the worker that moves next_flush_ms on does it.
    ngx_atomic_uint_t next = zone->shared->next_flush_ms;
    if (now < static_cast<int64_t>(next) ||
        !ngx_atomic_cmp_set(&zone->shared->next_flush_ms, next,
                            static_cast<ngx_atomic_uint_t>(now) + zone->sync_interval)) {
        return;
    }
    if (!w.client->available()) {
        return;  // counts stay unsent in the zone and go with the first flush that works
    }
    try {
        auto items = std::make_shared<std::vector<FlushItem>>(
            collect(zone, *w.mcf->redis, now));
        redis::EvalArgs call;
        for (size_t from = 0; from < items->size(); from += flush_batch) {
            size_t to = std::min(items->size(), from + flush_batch);
            try {
                flush_args(zone, *items, from, to, call);
                w.client->evalsha(
                    redis::flush_script(), call.keys(), call.args(),
                    [zone, items, from, to](redis::Result&& r) noexcept {
                        std::vector<std::pair<uint64_t, uint64_t>> totals;
                        bool good = false;
                        try {
                            good = r.ok() &&
                                   redis::parse_flush_reply(r.reply, to - from, totals);
                        } catch (...) {
                        }
                        settle(zone, *items, from, to, good ? &totals : nullptr);
                    });
            } catch (...) {
                settle(zone, *items, from, to, nullptr);
                throw;
            }
        }
    } catch (const std::exception& e) {
        ngx_log_error(NGX_LOG_ERR, w.log, 0, "throttle_zone \"%V\": flush failed: %s",
                      &zone->name, e.what());
    }
}

// At exit: whatever is still unsent goes to Redis on a blocking connection, bounded by the
// configured timeouts (the event loop is gone).
void final_flush(ZoneConf* zone) noexcept {
    Worker& w = *worker;
    try {
        int64_t now = now_ms();
        std::vector<FlushItem> items = collect(zone, *w.mcf->redis, now);
        redis::EvalArgs call;
        for (size_t from = 0; from < items.size(); from += flush_batch) {
            size_t to = std::min(items.size(), from + flush_batch);
            flush_args(zone, items, from, to, call);
            redis::Result r = redis::eval_blocking(*w.mcf->redis->client, redis::flush_script(),
                                                   call.keys(), call.args());
            std::vector<std::pair<uint64_t, uint64_t>> totals;
            bool good = r.ok() && redis::parse_flush_reply(r.reply, to - from, totals);
            settle(zone, items, from, to, good ? &totals : nullptr);
            if (!good) {
                ngx_log_error(NGX_LOG_WARN, w.log, 0,
                              "throttle_zone \"%V\": unsent counts of %uz keys kept in shared "
                              "memory, Redis did not take them at exit",
                              &zone->name, items.size() - from);
                return;
            }
        }
    } catch (const std::exception& e) {
        ngx_log_error(NGX_LOG_ERR, w.log, 0, "throttle_zone \"%V\": final flush failed: %s",
                      &zone->name, e.what());
    }
}

void fail_all(const std::vector<StrictWaiter*>& waiters) noexcept {
    for (StrictWaiter* w : waiters) {
        w->decided(nullptr);
    }
}

// Sends the waiters' strict decisions as one script call.
void send_strict(std::vector<StrictWaiter*>&& batch) noexcept {
    auto waiters = std::make_shared<std::vector<StrictWaiter*>>(std::move(batch));
    try {
        std::vector<const std::vector<redis::StrictZone>*> requests;
        requests.reserve(waiters->size());
        for (StrictWaiter* w : *waiters) {
            requests.push_back(&w->zones());
        }
        redis::EvalArgs call;
        if (!redis::build_strict_batch_args(requests, call)) {
            throw std::bad_alloc();
        }
        worker->client->evalsha(
            redis::strict_batch_script(), call.keys(), call.args(),
            [waiters](redis::Result&& r) noexcept {
                std::vector<size_t> counts;
                std::vector<std::vector<redis::StrictDecision>> out;
                int64_t redis_now = 0;
                bool good = false;
                try {
                    for (StrictWaiter* w : *waiters) {
                        counts.push_back(w->zones().size());
                    }
                    good = r.ok() &&
                           redis::parse_strict_batch_reply(r.reply, counts, redis_now, out);
                } catch (...) {
                }
                if (!good) {
                    fail_all(*waiters);
                    return;
                }
                for (size_t i = 0; i < waiters->size(); i++) {
                    (*waiters)[i]->decided(out[i].data());
                }
            });
    } catch (...) {
        fail_all(*waiters);
    }
}

// The end of an event-loop turn: what was queued goes to Redis.
void flush_strict(ngx_event_t*) noexcept {
    if (worker == nullptr) {
        return;
    }
    // The queue keeps its capacity from turn to turn; `queue` is refilled meanwhile only by
    // requests of the next turn (a reply never submits), so swapping with a kept spare is safe.
    std::vector<StrictWaiter*>& queue = worker->strict.spare;
    queue.swap(worker->strict.queue);
    std::vector<StrictWaiter*> batch;
    batch.reserve(std::min(queue.size(), redis::strict_batch_max));
    for (StrictWaiter* w : queue) {
        if (w->gone()) {
            w->decided(nullptr);  // nothing to ask for a request that ended
            continue;
        }
        batch.push_back(w);
        if (batch.size() == redis::strict_batch_max) {
            send_strict(std::move(batch));
            batch.clear();
        }
    }
    if (!batch.empty()) {
        send_strict(std::move(batch));
    }
    queue.clear();
}

MainConf* main_conf(ngx_cycle_t* cycle) noexcept {
    auto* ctx = reinterpret_cast<ngx_http_conf_ctx_t*>(ngx_get_conf(cycle->conf_ctx, ngx_http_module));
    if (ctx == nullptr) {
        return nullptr;
    }
    return static_cast<MainConf*>(ctx->main_conf[ngx_http_throttle_module.ctx_index]);
}

}  // namespace

ngx_uint_t log_level_of(redis::LogLevel level) noexcept {
    return level == redis::LogLevel::Error  ? NGX_LOG_ERR
           : level == redis::LogLevel::Warn ? NGX_LOG_WARN
           : level == redis::LogLevel::Info ? NGX_LOG_NOTICE
                                            : NGX_LOG_DEBUG;
}

redis::Client* redis_client() noexcept {
    return worker && worker->client ? worker->client.get() : nullptr;
}

bool worker_exiting() noexcept { return exiting; }

bool strict_submit(StrictWaiter* waiter) noexcept {
    if (worker == nullptr || !worker->client) {
        return false;
    }
    StrictBatch& b = worker->strict;
    try {
        b.queue.push_back(waiter);
    } catch (...) {
        return false;
    }
    if (!b.event.posted) {
        ngx_post_event(&b.event, &ngx_posted_events);
    }
    return true;
}

const RedisSettings* redis_settings() noexcept { return worker ? worker->mcf->redis : nullptr; }

std::string redis_base(const RedisSettings& settings, const ZoneConf& zone,
                       const core::StoredKey& key) {
    static const char hex[] = "0123456789abcdef";
    std::string k;
    if (key.digested) {
        k.reserve(1 + 2 * key.len);
        k.push_back('#');
        for (size_t i = 0; i < key.len; i++) {
            k.push_back(hex[key.bytes[i] >> 4]);
            k.push_back(hex[key.bytes[i] & 0xf]);
        }
    } else {
        k.assign(reinterpret_cast<const char*>(key.bytes), key.len);
    }
    return redis::base_key(
        view(settings.prefix), view(zone.name), k);
}

ngx_int_t init_worker(ngx_cycle_t* cycle) noexcept {
    if (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE) {
        return NGX_OK;
    }
    MainConf* mcf = main_conf(cycle);
    if (mcf == nullptr || mcf->redis == nullptr || !(mcf->remote_zones || mcf->cache_used)) {
        return NGX_OK;
    }
    try {
        worker = new Worker(cycle, mcf);
        StrictBatch& b = worker->strict;
        ngx_memzero(&b.event, sizeof(b.event));
        ngx_memzero(&b.ident, sizeof(b.ident));
        b.ident.fd = static_cast<ngx_socket_t>(-1);
        b.event.data = &b.ident;
        b.event.log = cycle->log;
        b.event.handler = flush_strict;
        if (mcf->remote_zones) {  // loaded on every connect: only what this configuration uses
            worker->client->add_script(redis::strict_batch_script());
            worker->client->add_script(redis::flush_script());
        }
        if (mcf->cache_used) {
            worker->client->add_script(redis::cache_lookup_batch_script());
            worker->client->add_script(redis::cache_store_script());
            worker->client->add_script(redis::cache_release_script());
            worker->client->add_script(redis::cache_abandon_script());
            worker->client->add_script(redis::cache_invalidate_script());
            cache_worker_init(cycle, mcf, worker->loop);
        }
        auto** zones = static_cast<ZoneConf**>(mcf->zones.elts);
        for (ngx_uint_t i = 0; i < mcf->zones.nelts; i++) {
            ZoneConf* zone = zones[i];
            if (zone->mode != Mode::sync) {
                continue;
            }
            worker->timers.push_back(SyncTimer{zone, nullptr});
            size_t index = worker->timers.size() - 1;
            worker->timers[index].timer = worker->loop.create_timer([index]() noexcept {
                SyncTimer& t = worker->timers[index];
                flush(t.zone);
                t.timer->start(t.zone->sync_interval);
            });
        }
        for (SyncTimer& t : worker->timers) {
            t.timer->start(t.zone->sync_interval);
        }
        worker->client->start();
    } catch (const std::exception& e) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0, "throttle_redis: cannot start: %s",
                      e.what());
        delete worker;
        worker = nullptr;
        return NGX_ERROR;
    }
    return NGX_OK;
}

void exit_worker(ngx_cycle_t*) noexcept {
    if (worker == nullptr) {
        return;
    }
    exiting = true;
    cache_worker_exit();
    if (worker->strict.event.posted) {
        ngx_delete_posted_event(&worker->strict.event);
    }
    fail_all(worker->strict.queue);
    worker->strict.queue.clear();
    for (SyncTimer& t : worker->timers) {
        t.timer->stop();
    }
    // Destroying the client answers what is still in flight (failed flushes give their counts
    // back to the zone), so the last flush below sends everything.
    worker->client.reset();
    for (SyncTimer& t : worker->timers) {
        final_flush(t.zone);
    }
    delete worker;
    worker = nullptr;
}

}  // namespace throttle::ngx
