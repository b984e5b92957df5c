// mode=lease: lease calls, prefetches, returns and the sweep (see lease.hpp).
#include "ngx/limit/lease.hpp"

#include <algorithm>
#include <new>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/hash.hpp"
#include "ngx/limit/limit.hpp"
#include "ngx/redis_link.hpp"
#include "redis/blocking.hpp"
#include "redis/cluster.hpp"
#include "redis/lease_scripts.hpp"
#include "redis/turn_batcher.hpp"

namespace throttle::ngx {
namespace {

namespace cl = core::lease;

constexpr uint64_t sweep_ms = 1000;
// A refused key is rejected locally, without asking, for at most this long.
constexpr int64_t refused_hold_ms = 1000;

// A lease call of this worker in flight.
struct Call {
    ZoneConf* zone = nullptr;
    core::StoredKey key;  // the counts table's key
    std::string base;
    uint32_t mark = 0;  // its in-flight mark in the lease (`asked`): one call per key and host
    int64_t sent_ms = 0;
    std::vector<std::shared_ptr<LeaseRequest>> waiters;
};

// Requests of this worker waiting for another worker's call for the key (the host's, marked
// in the lease): the worker looks at the lease every poll_ms and wakes them when the call is
// answered (units came, or the mark went), or, past its deadline, sends them to the fallback.
struct Remote {
    ZoneConf* zone = nullptr;
    core::StoredKey key;
    int64_t deadline_ms = 0;
    std::vector<std::shared_ptr<LeaseRequest>> waiters;
};

constexpr uint64_t poll_ms = 1;

// A lease call queued for the end of the turn.
struct Pending {
    std::shared_ptr<Call> call;
    uint32_t want = 0;
};

struct LeaseWorker {
    std::vector<ZoneConf*> zones;
    std::vector<uint64_t> generations;  // each zone's lease table tag when this worker started
    // Each zone's host id for Redis' count of the hosts asking near the limit: 16 hex digits of
    // the lease table's random secret (every worker of the host, across reloads).
    std::unordered_map<const ZoneConf*, std::string> host_ids;
    std::unordered_map<std::string, std::shared_ptr<Call>> host_calls;  // by base
    std::unordered_map<std::string, Remote> remote_waits;               // by base
    std::unique_ptr<redis::Timer> sweep;
    std::unique_ptr<redis::Timer> poll;
    std::unique_ptr<redis::TurnBatcher<Pending>> batcher;
    bool stopped = false;
};

LeaseWorker* worker = nullptr;  // owned

// A host call's in-flight mark older than this is taken for lost (its worker died): the Redis
// timeout (every call is answered or failed by then) + 1 s.
uint32_t stale_ms = cl::ask_stale_ms;

// Under the lock: the lease state of key (inserted when absent; cl::from_state() reads it).
core::State* lease_slot(ZoneConf& zone, const core::StoredKey& key) noexcept {
    return zone.leases->lookup(zone.leases->make_key(key.digest)).state;
}

// RETURN of returns[0..n) of one zone: one call per lease_batch_max of them (one per key on a
// cluster). Lost replies are not sent again.
void send_returns(ZoneConf& zone, const std::vector<redis::LeaseReturn>& returns) noexcept {
    redis::Target* client = redis_client();
    if (returns.empty() || client == nullptr || worker_exiting()) {
        return;
    }
    size_t per_call = client->clustered() ? 1 : redis::lease_batch_max;
    core::metrics::ZoneMetrics* m = zone.metrics;
    for (size_t i = 0; i < returns.size(); i += per_call) {
        size_t n = std::min(per_call, returns.size() - i);
        try {
            redis::EvalArgs call;
            if (!redis::build_lease_return_args(&returns[i], n, call)) {
                continue;
            }
            std::string key(returns[i].base);
            client->evalsha(redis::lease_return_script(), call.keys(), call.args(),
                            [key, m](redis::Result&& r) noexcept {
                                uint64_t units = 0;
                                if (r.ok() && !redis::parse_lease_return_reply(r.reply, units)) {
                                    redis_reply_unusable(r, "lease return", key);
                                } else if (r.ok() && m != nullptr) {
                                    core::metrics::add(m->lease_units_returned, units);
                                }
                            });
        } catch (...) {  // memory: the units stay counted (under-admission)
        }
    }
}

void send_return(ZoneConf& zone, const std::string& base, const cl::Giveback& back) noexcept {
    if (back.units == 0) {
        return;
    }
    try {
        send_returns(zone, {redis::LeaseReturn{base, back.window, back.units}});
    } catch (...) {
    }
}

// Redis answered c (grant), or could not (nullptr).
void finish(const std::shared_ptr<Call>& c, const redis::LeaseGrant* grant) noexcept {
    if (worker != nullptr && c->mark != 0) {
        auto it = worker->host_calls.find(c->base);
        if (it != worker->host_calls.end() && it->second == c) {
            worker->host_calls.erase(it);
        }
    }
    bool good = grant != nullptr;
    redis::LeaseGrant g = good ? *grant : redis::LeaseGrant{};
    ZoneConf& zone = *c->zone;
    if (core::metrics::ZoneMetrics* m = zone.metrics) {
        if (!good) {
            core::metrics::add(m->lease_errors);
        } else if (g.units > 0) {
            core::metrics::add(m->leases);
            core::metrics::add(m->lease_units_granted, g.units);
        }
    }
    int64_t now = now_ms();
    cl::Giveback back;
    ngx_shmtx_lock(&zone.shpool->mutex);
    core::State* slot = lease_slot(zone, c->key);
    cl::LeaseState l = cl::from_state(*slot);
    if (c->mark != 0 && good) {
        cl::done_asking(l, c->mark);
    } else if (c->mark != 0) {
        cl::failed_asking(l, c->mark);
    }
    if (good && g.units > 0) {
        int64_t deadline = c->sent_ms + g.left_ms;
        back = cl::grant(l, g.window, deadline, static_cast<uint32_t>(g.units), now);
    }
    *slot = cl::to_state(l);
    if (good && g.units == 0) {
        core::State* counts = zone.table->lookup(c->key).state;
        // At most a second: units other hosts give back (idle, at their window's end) can be
        // leased again, so the host asks again at most once a second while refused.
        counts->blocked_until = now + ngx_min(ngx_max(g.retry_after_ms, 1), refused_hold_ms);
    }
    ngx_shmtx_unlock(&zone.shpool->mutex);
    send_return(zone, c->base, back);
    LeaseOutcome o = !good         ? LeaseOutcome::failed
                     : g.units > 0 ? LeaseOutcome::granted
                                   : LeaseOutcome::refused;
    std::vector<std::shared_ptr<LeaseRequest>> waiters = std::move(c->waiters);
    for (const auto& w : waiters) {
        if (!w->gone() && !worker_exiting()) {
            w->leased(o);
        }
    }
}

// One LEASE call for calls[0..n) (a batch of the turn; on a cluster, one call each).
void send_batch(std::vector<Pending>&& batch) noexcept {
    redis::Target* client = redis_client();
    auto held = std::make_shared<std::vector<Pending>>();
    try {
        *held = std::move(batch);
        std::vector<redis::LeaseAsk> asks;
        asks.reserve(held->size());
        for (const Pending& p : *held) {
            const core::Policy& pol = p.call->zone->policy;
            std::string_view host;
            if (worker != nullptr) {
                auto h = worker->host_ids.find(p.call->zone);
                if (h != worker->host_ids.end()) {
                    host = h->second;
                }
            }
            asks.push_back(
                redis::LeaseAsk{p.call->base, pol.rate.limit, pol.rate.period_ms, p.want, host});
        }
        redis::EvalArgs call;
        if (client == nullptr || !redis::build_lease_args(asks.data(), asks.size(), -1, call)) {
            throw std::bad_alloc();
        }
        client->evalsha(
            redis::lease_script(), call.keys(), call.args(), [held](redis::Result&& r) noexcept {
                std::vector<redis::LeaseGrant> out;
                bool good = r.ok() && redis::parse_lease_reply(r.reply, held->size(), out);
                if (!good && r.ok() && !r.reply.is_error("ASK") && !r.reply.is_error("TRYAGAIN")) {
                    redis_reply_unusable(r, "lease", (*held)[0].call->base);
                }
                for (size_t i = 0; i < held->size(); i++) {
                    finish((*held)[i].call, good ? &out[i] : nullptr);
                }
            });
    } catch (...) {
        for (const Pending& p : *held) {
            finish(p.call, nullptr);
        }
    }
}

void send_turn(std::vector<Pending>&& batch) noexcept {
    redis::Target* client = redis_client();
    if (client != nullptr && client->clustered()) {
        // A script's keys must share a slot: one call per key.
        for (Pending& p : batch) {
            std::vector<Pending> one;
            try {
                one.push_back(std::move(p));
            } catch (...) {
                finish(p.call, nullptr);
                continue;
            }
            send_batch(std::move(one));
        }
        return;
    }
    send_batch(std::move(batch));
}

// Queues a lease call for the end of the turn (one LEASE call for the turn's calls). False
// when it could not be queued (nothing will be called back).
bool send_call(const std::shared_ptr<Call>& c, uint32_t want) noexcept {
    redis::Target* client = redis_client();
    if (client == nullptr || worker == nullptr || worker->stopped || !client->available(c->base)) {
        return false;
    }
    try {
        c->sent_ms = now_ms();  // the deadline counts from before the call leaves
        if (c->mark != 0) {
            worker->host_calls[c->base] = c;
        }
        if (!worker->batcher->submit(Pending{c, want})) {
            throw std::bad_alloc();
        }
        if (c->zone->metrics != nullptr) {
            core::metrics::add(c->zone->metrics->lease_calls);
        }
        return true;
    } catch (...) {
        if (c->mark != 0) {
            worker->host_calls.erase(c->base);
        }
        return false;
    }
}

}  // namespace

void unmark_lease(ZoneConf& zone, const core::StoredKey& key, uint32_t mark) noexcept {
    if (mark == 0) {
        return;
    }
    ngx_shmtx_lock(&zone.shpool->mutex);
    core::State* slot = lease_slot(zone, key);
    cl::LeaseState l = cl::from_state(*slot);
    cl::done_asking(l, mark);
    *slot = cl::to_state(l);
    ngx_shmtx_unlock(&zone.shpool->mutex);
}

namespace {

std::shared_ptr<Call> make_call(ZoneConf& zone, const core::StoredKey& key, uint32_t mark) {
    auto c = std::make_shared<Call>();
    c->zone = &zone;
    c->key = key;
    c->base = redis_base(*redis_settings(), zone, key);
    c->mark = mark;
    return c;
}

struct Back {
    std::string base;
    cl::Giveback back;
};

// Under the lock: takes the leases to give back from zone's table (all: at exit).
std::vector<Back> collect(ZoneConf& zone, const RedisSettings& rs, int64_t now, bool all) {
    std::vector<Back> out;
    zone.leases->for_each([&](const core::StoredKey& k, core::State& s) {
        cl::LeaseState l = cl::from_state(s);
        if (l.held == 0) {
            return;
        }
        cl::Giveback b = cl::take_back(l, now, cl::idle_return_s, all);
        if (b.units == 0) {
            return;
        }
        try {
            out.push_back(Back{redis_base(rs, zone, k), b});
        } catch (...) {
            return;  // memory: kept (given back at a later sweep)
        }
        s = cl::to_state(l);
    });
    return out;
}

// One worker per host and second (the one that moves next_flush_ms on): gives back the leases
// whose window is over or that sat idle.
void sweep() noexcept {
    if (worker == nullptr || worker->stopped) {
        return;
    }
    int64_t now = now_ms();
    for (ZoneConf* zone : worker->zones) {
        ngx_atomic_t* next = &zone->shared->next_flush_ms;
        ngx_atomic_uint_t at = *next;
        if (static_cast<int64_t>(at) > now ||
            !ngx_atomic_cmp_set(next, at, static_cast<ngx_atomic_uint_t>(now + sweep_ms - 50))) {
            continue;
        }
        std::vector<Back> backs;
        ngx_shmtx_lock(&zone->shpool->mutex);
        try {
            backs = collect(*zone, *redis_settings(), now, false);
        } catch (...) {
        }
        ngx_shmtx_unlock(&zone->shpool->mutex);
        try {
            std::vector<redis::LeaseReturn> returns;
            returns.reserve(backs.size());
            for (const Back& b : backs) {
                returns.push_back(redis::LeaseReturn{b.base, b.back.window, b.back.units});
            }
            send_returns(*zone, returns);
        } catch (...) {  // memory: those units stay counted (under-admission)
        }
    }
    worker->sweep->start(sweep_ms);
}

void wake(std::vector<std::shared_ptr<LeaseRequest>>& waiters, LeaseOutcome o) noexcept {
    std::vector<std::shared_ptr<LeaseRequest>> ws = std::move(waiters);
    for (const auto& w : ws) {
        if (!w->gone() && !worker_exiting()) {
            w->leased(o);
        }
    }
}

// Every poll_ms while requests wait for another worker's call.
void poll() noexcept {
    if (worker == nullptr || worker->stopped) {
        return;
    }
    int64_t now = now_ms();
    // Woken after the walk: a woken request runs its check at once (resume()), which may wait
    // again and change remote_waits.
    std::vector<std::pair<Remote, LeaseOutcome>> done;
    for (auto it = worker->remote_waits.begin(); it != worker->remote_waits.end();) {
        Remote& w = it->second;
        ZoneConf& zone = *w.zone;
        ngx_shmtx_lock(&zone.shpool->mutex);
        cl::LeaseState l = cl::from_state(*lease_slot(zone, w.key));
        ngx_shmtx_unlock(&zone.shpool->mutex);
        bool units = l.held > 0 && now < l.deadline;
        bool failed = !units && cl::last_call_failed(l);
        bool answered = units || !cl::asking(l, now, stale_ms);
        if (!answered && now < w.deadline_ms) {
            ++it;
            continue;
        }
        // Answered: the requests look again (units, or a call of their own now). The call
        // failed, or no answer in time (that worker died?): their fallback.
        try {
            done.emplace_back(std::move(w),
                              answered && !failed ? LeaseOutcome::granted : LeaseOutcome::failed);
        } catch (...) {  // memory: they wait for the next poll
            ++it;
            continue;
        }
        it = worker->remote_waits.erase(it);
    }
    for (auto& [w, o] : done) {
        wake(w.waiters, o);
    }
    if (worker != nullptr && !worker->remote_waits.empty() && !worker->stopped) {
        worker->poll->start(poll_ms);
    }
}

}  // namespace

LeaseAsk lease_plan(ZoneConf& zone, const core::StoredKey& key, int64_t now) noexcept {
    LeaseAsk ask;
    if (worker != nullptr) {
        try {
            if (worker->host_calls.count(redis_base(*redis_settings(), zone, key)) > 0) {
                return ask;  // join this worker's call
            }
        } catch (...) {
        }
    }
    core::State* slot = lease_slot(zone, key);
    cl::LeaseState l = cl::from_state(*slot);
    if (cl::asking(l, now, stale_ms)) {
        ask.remote = true;  // another worker's call is in flight: wait for it
        return ask;
    }
    ask.want = cl::target_units(l, now, zone.lease_max);
    ask.mark = cl::mark_asking(l, now);
    *slot = cl::to_state(l);
    return ask;
}

bool lease_after_spend(ZoneConf& zone, cl::LeaseState& l, int64_t now, uint32_t& want,
                       uint32_t& mark) noexcept {
    if (!cl::should_prefetch(l, now, zone.lease_max, want, stale_ms)) {
        return false;
    }
    mark = cl::mark_asking(l, now);
    return true;
}

bool lease_wait(ZoneConf& zone, const core::StoredKey& key, const LeaseAsk& ask,
                std::shared_ptr<LeaseRequest> waiter) noexcept {
    try {
        if (ask.remote) {
            if (worker == nullptr || worker->stopped) {
                return false;
            }
            std::string base = redis_base(*redis_settings(), zone, key);
            auto [it, fresh] = worker->remote_waits.try_emplace(std::move(base));
            if (fresh) {
                const redis::Target* client = redis_client();
                uint32_t timeout = client != nullptr ? client->config().command_timeout_ms : 1000;
                it->second.zone = &zone;
                it->second.key = key;
                it->second.deadline_ms = now_ms() + timeout + 50;
            }
            it->second.waiters.push_back(std::move(waiter));
            if (!worker->poll->active()) {
                worker->poll->start(poll_ms);
            }
            return true;
        }
        if (ask.want == 0) {
            auto it = worker != nullptr
                          ? worker->host_calls.find(redis_base(*redis_settings(), zone, key))
                          : decltype(worker->host_calls)::iterator{};
            if (worker == nullptr || it == worker->host_calls.end()) {
                return false;
            }
            it->second->waiters.push_back(std::move(waiter));
            return true;
        }
        auto c = make_call(zone, key, ask.mark);
        c->waiters.push_back(std::move(waiter));
        if (send_call(c, ask.want)) {
            return true;
        }
    } catch (...) {
    }
    unmark_lease(zone, key, ask.mark);
    return false;
}

void lease_prefetch(ZoneConf& zone, const core::StoredKey& key, uint32_t want,
                    uint32_t mark) noexcept {
    try {
        auto c = make_call(zone, key, mark);
        if (send_call(c, want)) {
            return;
        }
    } catch (...) {
    }
    unmark_lease(zone, key, mark);
}

void lease_worker_init(const MainConf& mcf, redis::Loop& loop) {
    auto w = std::make_unique<LeaseWorker>();
    auto** zones = static_cast<ZoneConf**>(mcf.limit.zones.elts);
    for (ngx_uint_t i = 0; i < mcf.limit.zones.nelts; i++) {
        if (zones[i]->mode == Mode::lease && zones[i]->leases != nullptr) {
            w->zones.push_back(zones[i]);
            ngx_shmtx_lock(&zones[i]->shpool->mutex);
            w->generations.push_back(zones[i]->leases->tag());
            w->host_ids[zones[i]] = core::hex(zones[i]->leases->own_secret().data(), 8);
            ngx_shmtx_unlock(&zones[i]->shpool->mutex);
        }
    }
    if (w->zones.empty()) {
        return;
    }
    stale_ms = redis_client()->config().command_timeout_ms + 1000;
    redis_client()->add_script(redis::lease_script(), permission_probe_key(mcf));
    redis_client()->add_script(redis::lease_return_script(), permission_probe_key(mcf));
    if (auto* cluster = dynamic_cast<redis::ClusterClient*>(redis_client())) {
        cluster->dont_follow_ask(redis::lease_script());
        cluster->dont_follow_ask(redis::lease_return_script());
    }
    w->sweep = loop.create_timer(sweep);
    w->sweep->start(sweep_ms);
    w->poll = loop.create_timer(poll);
    w->batcher = std::make_unique<redis::TurnBatcher<Pending>>(
        loop, redis::lease_batch_max, 0,
        [](std::vector<Pending>&& batch, uint64_t) { send_turn(std::move(batch)); }, nullptr,
        [](Pending& p) { finish(p.call, nullptr); });
    worker = w.release();
}

void lease_worker_stop() noexcept {
    if (worker != nullptr) {
        worker->stopped = true;
        worker->sweep->stop();
        worker->poll->stop();
        worker->batcher.reset();  // what is queued is dropped: the process ends
        worker->host_calls.clear();
        worker->remote_waits.clear();
    }
}

void lease_final_return(const MainConf& mcf) noexcept {
    if (worker == nullptr) {
        return;
    }
    const RedisSettings* rs = mcf.redis;
    for (size_t i = 0; rs != nullptr && i < worker->zones.size(); i++) {
        ZoneConf* zone = worker->zones[i];
        std::vector<Back> backs;
        ngx_shmtx_lock(&zone->shpool->mutex);
        bool newer = zone->leases->tag() != worker->generations[i];
        if (!newer && rs->cluster == nullptr) {  // this host stops: its leases go back
            try {
                backs = collect(*zone, *rs, now_ms(), true);
            } catch (...) {
            }
        }
        ngx_shmtx_unlock(&zone->shpool->mutex);
        if (newer) {
            ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                          "throttle_zone \"%V\": leases kept for the new workers", &zone->name);
            continue;
        }
        if (rs->cluster != nullptr) {
            ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                          "throttle_zone \"%V\": leases not given back at exit on a Redis "
                          "Cluster: their units wait for their window's end",
                          &zone->name);
            continue;
        }
        uint64_t units = 0;
        size_t done = 0;
        constexpr size_t per_call = 1024;  // each call is a connection of its own
        for (size_t k = 0; k < backs.size(); k += per_call) {
            try {
                size_t n = std::min(per_call, backs.size() - k);
                std::vector<redis::LeaseReturn> returns;
                for (size_t j = k; j < k + n; j++) {
                    returns.push_back(redis::LeaseReturn{backs[j].base, backs[j].back.window,
                                                         backs[j].back.units});
                }
                redis::EvalArgs call;
                if (!redis::build_lease_return_args(returns.data(), n, call)) {
                    break;
                }
                redis::Result r = redis::eval_blocking(*rs->client, redis::lease_return_script(),
                                                       call.keys(), call.args());
                uint64_t got = 0;
                if (!r.ok() || !redis::parse_lease_return_reply(r.reply, got)) {
                    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                                  "throttle_zone \"%V\": leases not given back at exit (Redis "
                                  "did not answer): their units wait for their window's end",
                                  &zone->name);
                    break;
                }
                units += got;
                done += n;
                if (zone->metrics != nullptr) {
                    core::metrics::add(zone->metrics->lease_units_returned, got);
                }
            } catch (...) {
                break;
            }
        }
        if (done > 0) {
            ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                          "throttle_zone \"%V\": %uL units of %uz leases given back at exit",
                          &zone->name, units, done);
        }
    }
    delete worker;
    worker = nullptr;
}

}  // namespace throttle::ngx
