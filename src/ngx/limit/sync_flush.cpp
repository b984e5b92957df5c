// mode=sync flushes (see sync_flush.hpp).
#include "ngx/limit/sync_flush.hpp"

#include <algorithm>
#include <memory>
#include <new>
#include <vector>

#include "core/sync.hpp"
#include "ngx/limit/limit.hpp"
#include "ngx/redis_link.hpp"
#include "redis/blocking.hpp"
#include "redis/scripts.hpp"

namespace throttle::ngx {
namespace {

constexpr size_t flush_batch = redis::flush_batch_max;

struct SyncTimer {
    ZoneConf* zone;
    std::unique_ptr<redis::Timer> timer;
};

std::vector<SyncTimer>* timers = nullptr;  // owned; one per sync zone

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
void flush_args(const ZoneConf* zone, const std::vector<FlushItem>& items, size_t from, size_t to,
                redis::EvalArgs& out) {
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
            core::sync::apply_global(zone->policy.rate, *s, items[i].delta, t.first, t.second, now);
        } else {
            core::sync::restore_unsent(zone->policy.rate, *s, items[i].delta, now);
        }
    }
    ngx_shmtx_unlock(&zone->shpool->mutex);
}

void flush(ZoneConf* zone) noexcept {
    int64_t now = now_ms();
    // One flush per host per interval: the worker that moves next_flush_ms on does it.
    ngx_atomic_uint_t next = zone->shared->next_flush_ms;
    if (now < static_cast<int64_t>(next) ||
        !ngx_atomic_cmp_set(&zone->shared->next_flush_ms, next,
                            static_cast<ngx_atomic_uint_t>(now) + zone->sync_interval)) {
        return;
    }
    redis::Client* client = redis_client();
    const RedisSettings* rs = redis_settings();
    if (client == nullptr || rs == nullptr || !client->available()) {
        return;  // counts stay unsent in the zone and go with the first flush that works
    }
    try {
        auto items = std::make_shared<std::vector<FlushItem>>(collect(zone, *rs, now));
        redis::EvalArgs call;
        for (size_t from = 0; from < items->size(); from += flush_batch) {
            size_t to = std::min(items->size(), from + flush_batch);
            try {
                flush_args(zone, *items, from, to, call);
                client->evalsha(redis::flush_script(), call.keys(), call.args(),
                                [zone, items, from, to](redis::Result&& r) noexcept {
                                    std::vector<std::pair<uint64_t, uint64_t>> totals;
                                    bool good = false;
                                    try {
                                        good = r.ok() &&
                                               redis::parse_flush_reply(r.reply, to - from, totals);
                                    } catch (...) {
                                    }
                                    if (!good) {
                                        redis_reply_unusable(r, "sync flush");
                                    }
                                    settle(zone, *items, from, to, good ? &totals : nullptr);
                                });
            } catch (...) {
                settle(zone, *items, from, to, nullptr);
                throw;
            }
        }
    } catch (const std::exception& e) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "throttle_zone \"%V\": flush failed: %s",
                      &zone->name, e.what());
    }
}

// At exit: whatever is still unsent goes to Redis on a blocking connection, bounded by the
// configured timeouts (the event loop is gone).
void final_flush(ZoneConf* zone, const RedisSettings& rs) noexcept {
    try {
        int64_t now = now_ms();
        std::vector<FlushItem> items = collect(zone, rs, now);
        redis::EvalArgs call;
        for (size_t from = 0; from < items.size(); from += flush_batch) {
            size_t to = std::min(items.size(), from + flush_batch);
            flush_args(zone, items, from, to, call);
            redis::Result r =
                redis::eval_blocking(*rs.client, redis::flush_script(), call.keys(), call.args());
            std::vector<std::pair<uint64_t, uint64_t>> totals;
            bool good = r.ok() && redis::parse_flush_reply(r.reply, to - from, totals);
            settle(zone, items, from, to, good ? &totals : nullptr);
            if (!good) {
                ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                              "throttle_zone \"%V\": unsent counts of %uz keys kept in shared "
                              "memory, Redis did not take them at exit",
                              &zone->name, items.size() - from);
                return;
            }
        }
    } catch (const std::exception& e) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "throttle_zone \"%V\": final flush failed: %s", &zone->name, e.what());
    }
}

}  // namespace

void sync_worker_init(const MainConf& mcf, redis::Loop& loop) {
    auto list = std::make_unique<std::vector<SyncTimer>>();
    auto** zones = static_cast<ZoneConf**>(mcf.limit.zones.elts);
    for (ngx_uint_t i = 0; i < mcf.limit.zones.nelts; i++) {
        if (zones[i]->mode == Mode::sync) {
            list->push_back(SyncTimer{zones[i], nullptr});
        }
    }
    if (!list->empty()) {
        redis_client()->add_script(redis::flush_script(), permission_probe_key(mcf));
    }
    for (SyncTimer& t : *list) {
        SyncTimer* self = &t;  // the vector does not grow any more
        t.timer = loop.create_timer([self]() noexcept {
            flush(self->zone);
            self->timer->start(self->zone->sync_interval);
        });
    }
    for (SyncTimer& t : *list) {
        t.timer->start(t.zone->sync_interval);
    }
    timers = list.release();
}

void sync_worker_stop() noexcept {
    if (timers != nullptr) {
        for (SyncTimer& t : *timers) {
            t.timer->stop();
        }
    }
}

void sync_final_flush(const MainConf& mcf) noexcept {
    if (timers == nullptr) {
        return;
    }
    for (SyncTimer& t : *timers) {
        final_flush(t.zone, *mcf.redis);
    }
    delete timers;
    timers = nullptr;
}

}  // namespace throttle::ngx
