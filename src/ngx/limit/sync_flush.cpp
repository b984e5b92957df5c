// mode=sync flushes (see sync_flush.hpp).
//
// A flush takes the unsent counts of the keys changed since the last flush (the slot table
// lists them; when its list overflowed, every key) with core::sync::take_unsent, at most
// collect_step keys per hold of the zone's lock (requests never wait behind a whole zone),
// into batches of at most flush_batch keys, each with an id of its own (pid, a random number
// drawn at worker start, a sequence). The flush script applies a batch once per id (scripts.hpp),
// so a batch whose reply did not come -- a timeout, a lost connection: Redis may have applied it
// -- is sent again with the same id and is never counted twice. Only a batch that cannot have
// reached Redis (circuit open) gives its counts back to the zone, where they join the next
// batch under a new id.
//
// Pacing: at most in_flight_max batches of a zone are in flight per worker; each reply sends
// the next, so a large flush (100,000 keys: 391 batches) goes at Redis' pace, leaving room on
// the connection for strict decisions and cache lookups, and no batch waits in a long pipeline
// for its turn past its deadline. Nothing is sent while the connection still owes replies to
// timed-out commands (Client::abandoned()): Redis is behind; the zone looks again after a
// command timeout. A slow Redis so gets at most in_flight_max batches at a time once it caught
// up, instead of a growing pipeline. A worker collects a zone's
// counts again only once every batch of its previous flush has been handed to Redis: a flush
// longer than the interval delays the next one (the counts wait in the zone, merged per key).
//
// Retries: a batch sent without a reply is sent again at this worker's next ticks (one per
// interval), at most sends_max times in all and within retry_window_ms() of its first send;
// then it is given up (logged): Redis counted it once or not at all. Attempts that never left
// (Result::unsent: circuit open, no connection) count for nothing; a batch none of whose
// attempts left gives its counts back to the zone. The id outlives the retries by
// id_margin_ms.
//
// Redis Cluster: the flush script's keys, and the batch id's key (KEYS[1]:flush:ID), must share
// a slot: a flush's keys are grouped by slot, and each batch holds the keys of one slot (its id
// key then lies in that slot too, tagged like its KEYS[1]). Each batch goes to its slot's
// master; Client::abandoned() and the pacing are that node's. A batch whose node is down fails
// unsent (circuit open, no connection): its counts go back to the zone and are sent with a
// later flush, as with a single Redis that is down; the other nodes' batches go on. The final
// flush at exit sends each batch to the master the worker last knew for its slot.
//
// Metrics (when some location has throttle_metrics): each flush that collected keys counts one
// flush and its keys; its duration runs from the collection to the answer of its last batch
// (observed only when every batch of it was answered); sync_last_flush is the time of the last
// collection, empty or not; sync_errors counts every send of a batch that got no usable reply
// (or never left).
#include "ngx/limit/sync_flush.hpp"

#include <algorithm>
#include <cstdio>
#include <deque>
#include <memory>
#include <new>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/sync.hpp"
#include "ngx/limit/limit.hpp"
#include "ngx/redis_link.hpp"
#include "redis/blocking.hpp"
#include "redis/cluster.hpp"
#include "redis/scripts.hpp"

namespace throttle::ngx {
namespace {

constexpr size_t flush_batch = redis::flush_batch_max;
constexpr size_t collect_step = flush_batch;  // changed keys (or slots) per lock hold
constexpr size_t in_flight_max = 2;           // batches of one zone in flight, per worker
constexpr uint32_t sends_max = 4;             // sends of one batch, the first included
constexpr int64_t id_margin_ms = 30000;       // how much longer Redis remembers a batch id
constexpr int64_t retry_window_min_ms = 5000;
constexpr int64_t retry_window_max_ms = 60000;

namespace cm = core::metrics;

// Metrics: one flush, while its batches are on their way.
struct FlushRun {
    int64_t started_us;    // monotonic_us()
    size_t unanswered;     // batches not answered (nor given up) yet
    bool complete = true;  // every batch ended so far was answered
};

// One key's unsent counts on their way to Redis.
struct FlushItem {
    core::StoredKey key;
    core::sync::Delta delta;
    std::string base;
};

struct Batch {
    std::string id;
    std::vector<FlushItem> items;
    uint32_t sends = 0;    // attempts that left for Redis
    bool reached = false;  // a send may have reached Redis: only the same id may go again
    int64_t first_sent_ms = 0;
    int64_t tried_ms = 0;           // the last attempt
    std::shared_ptr<FlushRun> run;  // metrics: the flush it belongs to; nullptr when off
};
using BatchPtr = std::shared_ptr<Batch>;

struct ZoneFlush {
    ZoneConf* zone;
    std::unique_ptr<redis::Timer> timer;
    std::unique_ptr<redis::Timer> again;  // pump() once more, after a command timeout
    std::deque<BatchPtr> queue;           // to send, in order
    std::vector<BatchPtr> retry;          // failed after they may have reached Redis
    size_t in_flight = 0;
    int64_t hold_logged_us = 0;  // the longest lock hold logged (note_hold)
};

struct SyncState {
    std::vector<ZoneFlush> zones;  // one per sync zone; does not grow after init
    uint64_t random = 0;
    uint64_t seq = 0;
    bool stopped = false;  // the worker is exiting: nothing more is sent on the event loop
    std::vector<std::string> slot_nodes;  // Redis Cluster: slot -> master, kept for the exit
};

SyncState* state = nullptr;  // owned

int64_t retry_window_ms(const ZoneConf* zone) noexcept {
    return std::clamp<int64_t>(10 * static_cast<int64_t>(zone->sync_interval), retry_window_min_ms,
                               retry_window_max_ms);
}

uint32_t id_ttl_ms(const ZoneConf* zone) noexcept {
    return static_cast<uint32_t>(retry_window_ms(zone) + id_margin_ms);
}

// "pid-random-seq" in hex: at most 8 + 16 + 16 + 2 bytes.
std::string next_id() {
    char buf[64];
    int n = snprintf(buf, sizeof(buf), "%lx-%llx-%llx", static_cast<unsigned long>(ngx_pid),
                     static_cast<unsigned long long>(state->random),
                     static_cast<unsigned long long>(++state->seq));
    return std::string(buf, static_cast<size_t>(std::max(n, 0)));
}

// Folds a batch's outcome back into the zone: the global totals, or the counts to resend.
void settle(ZoneConf* zone, const std::vector<FlushItem>& items,
            const std::vector<std::pair<uint64_t, uint64_t>>* totals) noexcept {
    int64_t now = now_ms();
    ngx_shmtx_lock(&zone->shpool->mutex);
    for (size_t i = 0; i < items.size(); i++) {
        core::State* s = zone->table->find(items[i].key);
        if (s == nullptr) {
            continue;  // evicted meanwhile (the zone is too small; logged at eviction)
        }
        if (totals != nullptr) {
            const auto& t = (*totals)[i];
            core::sync::apply_global(zone->policy.rate, *s, items[i].delta, t.first, t.second, now);
        } else {
            core::sync::restore_unsent(zone->policy.rate, *s, items[i].delta, now);
            zone->table->mark_changed(items[i].key);  // sent with the next flush
        }
    }
    ngx_shmtx_unlock(&zone->shpool->mutex);
}

// Lock holds of this worker's flushes of a zone (collecting), in microseconds: the longest so
// far is logged at info level whenever it grows past twice the last one logged.
void note_hold(const ZoneConf* zone, int64_t& logged_us, int64_t us) noexcept {
    if (us > 2 * logged_us) {
        logged_us = us;
        ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                      "throttle_zone \"%V\": longest sync lock hold so far in this worker: %L us",
                      &zone->name, us);
    }
}

// Takes the unsent counts of the keys changed since the last flush (the table's changed keys;
// every key when they overflowed), collect_step keys (or slots) per lock hold, so that
// requests wait at most one short step for the lock, whatever the zone's size.
std::vector<FlushItem> collect(ZoneConf* zone, const RedisSettings& rs, int64_t now,
                               int64_t& logged_us) {
    std::vector<FlushItem> items;
    core::SlotTable::ChangedWalk walk;
    bool first = true, more = true;
    int64_t longest = 0;
    while (more) {
        // Room for a whole step before the lock: nothing below allocates under it.
        if (items.capacity() - items.size() < collect_step) {
            items.reserve(std::max(2 * items.capacity(), items.size() + collect_step));
        }
        ngx_shmtx_lock(&zone->shpool->mutex);
        int64_t t0 = monotonic_us();
        if (first) {
            walk = zone->table->begin_changed();
            first = false;
        }
        more = zone->table->take_changed(
            walk, collect_step, [&](const core::StoredKey& k, core::State& s) noexcept {
                core::sync::Delta d = core::sync::take_unsent(zone->policy.rate, s, now);
                if (!d.empty()) {
                    items.push_back(FlushItem{k, d, std::string()});  // reserved: no throw
                }
            });
        longest = std::max(longest, monotonic_us() - t0);
        ngx_shmtx_unlock(&zone->shpool->mutex);
    }
    note_hold(zone, logged_us, longest);
    try {
        for (FlushItem& it : items) {
            it.base = redis_base(rs, *zone, it.key);
        }
    } catch (...) {
        settle(zone, items, nullptr);  // out of memory: the counts go back to the zone
        throw;
    }
    return items;
}

// Redis Cluster: the items grouped by slot (stable), and where each slot's run ends, so that a
// batch never spans slots.
void group_by_slot(std::vector<FlushItem>& items, std::vector<size_t>& ends) {
    std::vector<std::pair<uint16_t, size_t>> order;
    order.reserve(items.size());
    for (size_t i = 0; i < items.size(); i++) {
        order.emplace_back(redis::key_slot(items[i].base), i);
    }
    std::stable_sort(order.begin(), order.end(),
                     [](const auto& a, const auto& b) { return a.first < b.first; });
    std::vector<FlushItem> sorted;
    sorted.reserve(items.size());
    for (size_t i = 0; i < order.size(); i++) {
        if (i > 0 && order[i].first != order[i - 1].first) {
            ends.push_back(i);
        }
        sorted.push_back(std::move(items[order[i].second]));
    }
    ends.push_back(sorted.size());
    items.swap(sorted);
}

// Splits collected items into batches with ids of their own, appended to `out`. If memory runs
// out, the counts go back to the zone.
// by_slot: for a Redis Cluster, each batch within one slot.
void make_batches(ZoneConf* zone, std::vector<FlushItem>&& items, std::deque<BatchPtr>& out,
                  bool by_slot) {
    std::deque<BatchPtr> made;
    std::vector<size_t> starts;  // made[k] takes items[starts[k] .. starts[k + 1])
    try {
        std::vector<size_t> ends;  // where each slot's items end (one run without a cluster)
        if (by_slot) {
            group_by_slot(items, ends);
        } else {
            ends.push_back(items.size());
        }
        size_t from = 0;
        for (size_t end : ends) {
            for (; from < end; from += std::min(flush_batch, end - from)) {
                auto b = std::make_shared<Batch>();
                b->id = next_id();
                b->items.reserve(std::min(flush_batch, end - from));
                made.push_back(std::move(b));
                starts.push_back(from);
            }
        }
        starts.push_back(items.size());
    } catch (...) {
        settle(zone, items, nullptr);
        throw;
    }
    for (size_t k = 0; k + 1 < starts.size(); k++) {
        for (size_t i = starts[k]; i < starts[k + 1]; i++) {
            made[k]->items.push_back(std::move(items[i]));  // reserved: no throw
        }
    }
    try {
        out.insert(out.end(), made.begin(), made.end());  // all or nothing
    } catch (...) {
        for (const BatchPtr& b : made) {
            settle(zone, b->items, nullptr);
        }
        throw;
    }
}

// Builds the flush script's KEYS and ARGV for a batch.
void flush_args(const ZoneConf* zone, const Batch& b, redis::EvalArgs& out) {
    std::vector<redis::FlushEntry> entries;
    entries.reserve(b.items.size());
    for (const FlushItem& it : b.items) {
        entries.push_back(redis::FlushEntry{it.base, it.delta.window, it.delta.cur, it.delta.prev});
    }
    if (!redis::build_flush_args(zone->policy.rate.period_ms, b.id, id_ttl_ms(zone), entries,
                                 out)) {
        throw std::bad_alloc();
    }
}

bool parse(const redis::Result& r, const Batch& b,
           std::vector<std::pair<uint64_t, uint64_t>>& totals, bool& applied) noexcept {
    try {
        return r.ok() && redis::parse_flush_reply(r.reply, b.items.size(), totals, &applied);
    } catch (...) {
        return false;
    }
}

// Metrics: a flush that started at `now` (ms since the epoch) and `started_us` (monotonic_us())
// collected `keys` keys into the last `batches` batches of `queue`.
void flush_started(ZoneConf* zone, std::deque<BatchPtr>& queue, size_t keys, size_t batches,
                   int64_t now, int64_t started_us) noexcept {
    cm::ZoneMetrics* m = zone->metrics;
    if (m == nullptr) {
        return;
    }
    m->sync_last_flush.store(now, std::memory_order_relaxed);
    if (keys == 0) {
        return;
    }
    cm::add(m->sync_flushes);
    cm::observe_size(m->sync_flush_keys, keys);
    std::shared_ptr<FlushRun> run;
    try {
        run = std::make_shared<FlushRun>(FlushRun{started_us, batches});
    } catch (...) {
        return;  // no memory: this flush's duration is not observed
    }
    for (size_t i = queue.size() - batches; i < queue.size(); i++) {
        queue[i]->run = run;
    }
}

// Metrics: b's send got no usable reply (or never left).
void count_error(const ZoneFlush& zf) noexcept {
    if (zf.zone->metrics != nullptr) {
        cm::add(zf.zone->metrics->sync_errors);
    }
}

// Metrics: b is done with, answered or not; the last batch of a flush whose batches were all
// answered observes its duration.
void batch_ended(ZoneConf* zone, Batch& b, bool answered) noexcept {
    std::shared_ptr<FlushRun> run = std::move(b.run);
    if (run == nullptr) {
        return;
    }
    run->complete = run->complete && answered;
    if (--run->unanswered == 0 && run->complete && zone->metrics != nullptr) {
        cm::observe_latency_us(zone->metrics->sync_flush_duration,
                               static_cast<uint64_t>(monotonic_us() - run->started_us));
    }
}

// A batch that failed: kept to be sent again under its id when it may have reached Redis,
// otherwise its counts go back to the zone.
void failed(ZoneFlush& zf, const BatchPtr& b) noexcept {
    if (b->reached) {
        try {
            zf.retry.push_back(b);
            return;
        } catch (...) {
            batch_ended(zf.zone, *b, false);
            return;  // no memory: given up (Redis counted it once or not at all)
        }
    }
    batch_ended(zf.zone, *b, false);
    settle(zf.zone, b->items, nullptr);
}

void pump(ZoneFlush& zf) noexcept;

void pump_later(ZoneFlush& zf) noexcept {
    redis::Target* client = redis_client();
    if (client != nullptr && zf.again && !zf.again->active()) {
        zf.again->start(client->config().command_timeout_ms);
    }
}

void done(ZoneFlush& zf, const BatchPtr& b, redis::Result&& r) noexcept {
    zf.in_flight--;
    // Redis Cluster, a slot being migrated: its source answers ASK (not followed:
    // dont_follow_ask()) without running the script: as if never sent, the counts go back to
    // the zone for a later flush.
    bool asked = r.ok() && (r.reply.is_error("ASK") || r.reply.is_error("TRYAGAIN"));
    if (asked) {
        r.unsent = true;
    }
    if (!r.unsent && b->sends++ == 0) {
        b->first_sent_ms = b->tried_ms;
    }
    std::vector<std::pair<uint64_t, uint64_t>> totals;
    bool applied = false;
    if (parse(r, *b, totals, applied)) {
        settle(zf.zone, b->items, &totals);
        batch_ended(zf.zone, *b, true);
        if (!applied) {
            ngx_log_debug3(NGX_LOG_DEBUG_HTTP, ngx_cycle->log, 0,
                           "throttle_zone \"%V\": flush batch %s (%uz keys) was applied already",
                           &zf.zone->name, b->id.c_str(), b->items.size());
        }
    } else {
        if (!asked) {
            redis_reply_unusable(r, "sync flush", b->items.front().base);
        }
        count_error(zf);
        if (!r.unsent) {
            // Without a reply the command may have run, or still wait in Redis' queue: the
            // batch goes again at the next tick; the next batch after a command timeout.
            b->reached = true;
            failed(zf, b);
            pump_later(zf);
            return;
        }
        failed(zf, b);  // this attempt never left: back to the zone unless an earlier one did
    }
    pump(zf);
}

// Sends queued batches while fewer than in_flight_max are in flight.
void pump(ZoneFlush& zf) noexcept {
    redis::Target* client = redis_client();
    // A node still owing replies to timed-out commands is behind (a cluster: the node of the
    // next batch's slot).
    auto behind = [&]() noexcept {
        return client->abandoned(std::string_view(zf.queue.front()->items.front().base)) > 0;
    };
    while (state != nullptr && !state->stopped && client != nullptr &&
           zf.in_flight < in_flight_max && !zf.queue.empty() && !behind()) {
        BatchPtr b = std::move(zf.queue.front());
        zf.queue.pop_front();
        try {
            redis::EvalArgs call;
            flush_args(zf.zone, *b, call);
            ZoneFlush* self = &zf;
            client->evalsha(
                redis::flush_script(), call.keys(), call.args(),
                [self, b](redis::Result&& r) noexcept { done(*self, b, std::move(r)); });
        } catch (const std::exception& e) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "throttle_zone \"%V\": flush failed: %s",
                          &zf.zone->name, e.what());
            count_error(zf);
            failed(zf, b);  // not sent this time
            continue;
        }
        b->tried_ms = now_ms();
        zf.in_flight++;
    }
    if (client != nullptr && !zf.queue.empty() && behind()) {
        pump_later(zf);
    }
}

// Failed batches go to the front of the queue while they may still be sent again under their
// id; the others are given up (one log line per tick).
void requeue(ZoneFlush& zf, int64_t now) noexcept {
    if (zf.retry.empty()) {
        return;
    }
    size_t dropped = 0, dropped_keys = 0;
    std::vector<BatchPtr> retry;
    retry.swap(zf.retry);
    int64_t window = retry_window_ms(zf.zone);
    for (auto it = retry.rbegin(); it != retry.rend(); ++it) {
        const BatchPtr& b = *it;
        bool fresh = b->sends < sends_max && now - b->first_sent_ms < window;
        if (fresh) {
            try {
                zf.queue.push_front(b);
                continue;
            } catch (...) {
            }
        }
        dropped++;
        dropped_keys += b->items.size();
        batch_ended(zf.zone, *b, false);
    }
    if (dropped > 0) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "throttle_zone \"%V\": %uz flush batch(es) of %uz keys given up after up "
                      "to %ui sends without a reply: Redis counted each once or not at all",
                      &zf.zone->name, dropped, dropped_keys, static_cast<ngx_uint_t>(sends_max));
    }
}

// Every interval, in every worker: failed batches are sent again; and one worker per host (the
// one that moves next_flush_ms on) collects the zone's unsent counts, unless it is still
// sending its previous flush.
void tick(ZoneFlush& zf) noexcept {
    ZoneConf* zone = zf.zone;
    int64_t now = now_ms();
    bool idle = std::none_of(zf.queue.begin(), zf.queue.end(),
                             [](const BatchPtr& b) { return b->sends == 0; });
    redis::Target* client = redis_client();
    const RedisSettings* rs = redis_settings();
    ngx_atomic_uint_t next = zone->shared->next_flush_ms;
    if (idle && client != nullptr && rs != nullptr && now >= static_cast<int64_t>(next) &&
        client->available() &&
        ngx_atomic_cmp_set(&zone->shared->next_flush_ms, next,
                           static_cast<ngx_atomic_uint_t>(now) + zone->sync_interval)) {
        try {
            int64_t started_us = zone->metrics != nullptr ? monotonic_us() : 0;
            std::vector<FlushItem> items = collect(zone, *rs, now, zf.hold_logged_us);
            size_t keys = items.size(), before = zf.queue.size();
            make_batches(zone, std::move(items), zf.queue, rs->cluster != nullptr);
            flush_started(zone, zf.queue, keys, zf.queue.size() - before, now, started_us);
        } catch (const std::exception& e) {
            ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0, "throttle_zone \"%V\": flush failed: %s",
                          &zone->name, e.what());
        }
    }
    requeue(zf, now);
    pump(zf);
}

// Redis Cluster, at exit: the master the worker last knew for b's slot.
bool cluster_node(const RedisSettings& rs, const Batch& b, redis::Config& out) {
    uint16_t slot = redis::key_slot(b.items.front().base);
    if (state == nullptr || slot >= state->slot_nodes.size()) {
        return false;
    }
    out = rs.cluster->node;
    return redis::Address::parse(state->slot_nodes[slot], out.address) && out.address.valid();
}

// At exit, on a blocking connection (the event loop is gone): the batches still held (those
// that may have reached Redis under their id, while that id is remembered), then whatever is
// unsent, bounded by the configured timeouts. After the first failure nothing more is tried:
// counts that cannot have reached Redis go back to the zone, the rest is given up.
void final_flush(ZoneFlush& zf, const RedisSettings& rs) noexcept {
    ZoneConf* zone = zf.zone;
    size_t given_up = 0;
    bool down = false;
    auto send = [&](const BatchPtr& b) noexcept {
        int64_t now = now_ms();
        if (b->reached &&
            (down || b->sends >= sends_max || now - b->first_sent_ms >= retry_window_ms(zone))) {
            given_up += b->items.size();
            batch_ended(zone, *b, false);
            return;
        }
        if (down) {
            settle(zone, b->items, nullptr);
            batch_ended(zone, *b, false);
            return;
        }
        try {
            redis::EvalArgs call;
            flush_args(zone, *b, call);
            bool sent = false;
            redis::Config node;
            if (rs.cluster != nullptr && !cluster_node(rs, *b, node)) {
                throw std::runtime_error("no node known for the slot");
            }
            redis::Result r =
                redis::eval_blocking(rs.cluster != nullptr ? node : *rs.client,
                                     redis::flush_script(), call.keys(), call.args(), &sent);
            std::vector<std::pair<uint64_t, uint64_t>> totals;
            bool applied = false;
            if (parse(r, *b, totals, applied)) {
                settle(zone, b->items, &totals);
                batch_ended(zone, *b, true);
                return;
            }
            down = true;
            b->reached = b->reached || sent;
        } catch (...) {
            down = true;
        }
        count_error(zf);
        batch_ended(zone, *b, false);
        if (b->reached) {
            given_up += b->items.size();
        } else {
            settle(zone, b->items, nullptr);
        }
    };
    for (const BatchPtr& b : zf.retry) {
        send(b);
    }
    zf.retry.clear();
    for (const BatchPtr& b : zf.queue) {
        send(b);
    }
    zf.queue.clear();
    try {
        std::deque<BatchPtr> rest;
        if (!down) {
            int64_t now = now_ms(), started_us = monotonic_us();
            std::vector<FlushItem> items = collect(zone, rs, now, zf.hold_logged_us);
            size_t keys = items.size();
            make_batches(zone, std::move(items), rest, rs.cluster != nullptr);
            flush_started(zone, rest, keys, rest.size(), now, started_us);
        }
        for (const BatchPtr& b : rest) {
            send(b);
        }
    } catch (const std::exception& e) {
        ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                      "throttle_zone \"%V\": final flush failed: %s", &zone->name, e.what());
    }
    if (down) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "throttle_zone \"%V\": Redis did not take the last flush at exit: unsent "
                      "counts kept in shared memory, %uz key count(s) given up (Redis counted "
                      "them once or not at all)",
                      &zone->name, given_up);
    } else if (given_up > 0) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "throttle_zone \"%V\": %uz key count(s) given up at exit after sends "
                      "without a reply: Redis counted them once or not at all",
                      &zone->name, given_up);
    }
}

uint64_t worker_random() noexcept {
    uint64_t r = 0;
    try {
        std::random_device rd;
        r = (static_cast<uint64_t>(rd()) << 32) ^ rd();
    } catch (...) {
    }
    return r ^ (static_cast<uint64_t>(ngx_time()) << 20) ^ static_cast<uint64_t>(ngx_pid);
}

}  // namespace

void sync_worker_init(const MainConf& mcf, redis::Loop& loop) {
    auto s = std::make_unique<SyncState>();
    auto** zones = static_cast<ZoneConf**>(mcf.limit.zones.elts);
    for (ngx_uint_t i = 0; i < mcf.limit.zones.nelts; i++) {
        if (zones[i]->mode == Mode::sync) {
            s->zones.push_back(ZoneFlush{zones[i], nullptr, nullptr, {}, {}, 0, 0});
        }
    }
    if (!s->zones.empty()) {
        redis_client()->add_script(redis::flush_script(), permission_probe_key(mcf));
        if (auto* cluster = dynamic_cast<redis::ClusterClient*>(redis_client())) {
            cluster->dont_follow_ask(redis::flush_script());
        }
    }
    s->random = worker_random();
    for (ZoneFlush& z : s->zones) {
        ZoneFlush* self = &z;  // the vector does not grow any more
        z.timer = loop.create_timer([self]() noexcept {
            tick(*self);
            self->timer->start(self->zone->sync_interval);
        });
        z.again = loop.create_timer([self]() noexcept { pump(*self); });
    }
    for (ZoneFlush& z : s->zones) {
        z.timer->start(z.zone->sync_interval);
    }
    state = s.release();
}

void sync_worker_stop() noexcept {
    if (state != nullptr) {
        state->stopped = true;
        auto* cluster = dynamic_cast<redis::ClusterClient*>(redis_client());
        if (cluster != nullptr && !state->zones.empty()) {
            try {  // for the final flush, once the client is closed
                state->slot_nodes.resize(redis::kClusterSlots);
                for (uint16_t slot = 0; slot < redis::kClusterSlots; slot++) {
                    state->slot_nodes[slot] = cluster->node_of_slot(slot);
                }
            } catch (...) {
                state->slot_nodes.clear();  // the final flush fails: counts stay in the zone
            }
        }
        for (ZoneFlush& z : state->zones) {
            z.timer->stop();
            z.again->stop();
        }
    }
}

void sync_final_flush(const MainConf& mcf) noexcept {
    if (state == nullptr) {
        return;
    }
    for (ZoneFlush& z : state->zones) {
        final_flush(z, *mcf.redis);
    }
    delete state;
    state = nullptr;
}

}  // namespace throttle::ngx
