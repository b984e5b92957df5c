// Who waits for which entry (see waiters.hpp).
#include "ngx/cache/waiters.hpp"

#include <array>
#include <unordered_map>
#include <vector>

#include "ngx/cache/local.hpp"
#include "ngx/cache/nsgen.hpp"
#include "ngx/cache/request.hpp"
#include "ngx/redis_link.hpp"
#include "redis/cache_scripts.hpp"
#include "redis/cluster.hpp"
#include "redis/subscriber.hpp"

namespace throttle::ngx {
namespace {

constexpr uint64_t recent_ms = 1000;
constexpr uint64_t rotate_ms = 500;  // a cluster's subscriber: the next seed after a failure

// A channel message that found nobody waiting.
struct Recent {
    std::string e;
    bool stored = false;
    uint64_t at = 0;
};

struct Waiters {
    redis::Loop* loop = nullptr;
    std::string channel;
    redis::Config config;  // the subscriber's; with Sentinels: the primary's address, followed
    ngx_log_t* log = nullptr;
    bool quiesced = false;
    std::unique_ptr<redis::Subscriber> sub;
    // On a Redis Cluster: the seeds, the one subscribed on, and the move to the next one after
    // a failure (any node hears every PUBLISH).
    std::vector<redis::Address> seeds;
    size_t seed = 0;
    std::unique_ptr<redis::Timer> rotate;
    std::unordered_map<std::string, std::vector<std::shared_ptr<CacheRequest>>> waiting;
    std::unordered_map<std::string, unsigned> filling;
    std::array<Recent, 32> recent;
    size_t next_recent = 0;
};

Waiters* ws = nullptr;  // owned; deleted in waiters_exit (no static destructor)
const std::string none;

void remember(const std::string& e, bool stored) noexcept {
    Recent& r = ws->recent[ws->next_recent++ % ws->recent.size()];
    try {
        r.e = e;
        r.stored = stored;
        r.at = ws->loop->now_ms();
    } catch (...) {
        r.e.clear();
    }
}

void wake(const std::string& e, bool stored, const std::shared_ptr<const std::string>& entry,
          bool from_channel) noexcept {
    auto it = ws->waiting.find(e);
    if (it == ws->waiting.end()) {
        if (from_channel) {
            remember(e, stored);
        }
        return;
    }
    std::vector<std::shared_ptr<CacheRequest>> list = std::move(it->second);
    ws->waiting.erase(it);
    for (const auto& w : list) {
        cache_woken(w, stored, entry);
    }
}

void on_message(std::string_view msg) noexcept {
    if (ws == nullptr || worker_exiting()) {
        return;
    }
    bool stored = false;
    std::string_view e;
    if (!redis::parse_cache_fill_message(msg, stored, e)) {
        uint64_t gen = 0;
        std::string_view ns;
        if (redis::parse_cache_purge_message(msg, gen, ns)) {
            cache_ns_generation_seen(ns, gen);  // a purge on a Redis Cluster (nsgen.hpp)
        }
        cache_local_message(msg);  // a purge's or a write's: the local tier's mirror
        return;
    }
    try {
        wake(std::string(e), stored, nullptr, true);
    } catch (...) {
    }
}

}  // namespace

bool cache_can_wait(const std::string& e) noexcept {
    return ws != nullptr && (ws->filling.count(e) > 0 || (ws->sub && ws->sub->subscribed()));
}

bool cache_wait(const std::string& e, const std::shared_ptr<CacheRequest>& cr) noexcept {
    if (ws == nullptr) {
        return false;
    }
    uint64_t now = ws->loop->now_ms();
    for (const Recent& r : ws->recent) {
        if (!r.e.empty() && r.e == e && now - r.at <= recent_ms && ws->filling.count(e) == 0) {
            cache_woken(cr, r.stored, nullptr);
            return true;
        }
    }
    try {
        ws->waiting[e].push_back(cr);
        return true;
    } catch (...) {
        return false;
    }
}

void cache_unwait(const std::string& e, const CacheRequest* cr) noexcept {
    if (ws == nullptr) {
        return;
    }
    auto it = ws->waiting.find(e);
    if (it == ws->waiting.end()) {
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
        ws->waiting.erase(it);
    }
}

void cache_fill_started(const std::string& e) noexcept {
    if (ws == nullptr) {
        return;
    }
    try {
        ws->filling[e]++;
    } catch (...) {
    }
}

void cache_fill_ended(const std::string& e, bool stored,
                      const std::shared_ptr<const std::string>& entry) noexcept {
    if (ws == nullptr) {
        return;
    }
    auto it = ws->filling.find(e);
    if (it != ws->filling.end() && --it->second == 0) {
        ws->filling.erase(it);
    }
    if (!worker_exiting()) {
        wake(e, stored, entry, false);
    }
}

bool cache_filling_here(const std::string& e) noexcept {
    return ws != nullptr && ws->filling.count(e) > 0;
}

bool cache_fill_channel_current(uint64_t max_lag_ms) noexcept {
    return ws != nullptr && ws->sub && ws->sub->current(max_lag_ms);
}

const std::string& cache_channel() noexcept {
    return ws ? ws->channel : none;
}

namespace {

// The subscriber on w.config.address (the primary's), replacing the one before.
void subscribe(Waiters& w) {
    ngx_log_t* log = w.log;
    auto sub = std::make_unique<redis::Subscriber>(
        *w.loop, w.config, w.channel, on_message, [log](redis::LogLevel level, std::string_view m) {
            ngx_log_error(log_level_of(level), log, 0, "throttle_cache: fill channel: %*s",
                          m.size(), m.data());
        });
    if (cache_local_used()) {
        // The local tier trusts what it stored only while this subscriber hears every message:
        // a heartbeat tells a lagging connection, and each (re)subscription makes the entries
        // stored before it unusable (messages may have been lost meanwhile).
        sub->set_heartbeat(cache_local_heartbeat_ms);
    }
    sub->set_on_state([](bool subscribed) noexcept {
        if (subscribed) {
            cache_local_resubscribed();
            return;
        }
        if (ws != nullptr && !ws->seeds.empty() && !ws->quiesced && ws->rotate &&
            !ws->rotate->active()) {
            ws->rotate->start(rotate_ms);  // never replaced from inside its own callback
        }
    });
    if (w.sub) {
        w.sub->close();
    }
    w.sub = std::move(sub);
    w.sub->start();
}

// On a Redis Cluster: the subscriber failed on its node: the next seed.
void next_seed() noexcept {
    if (ws == nullptr || ws->quiesced || worker_exiting() || ws->seeds.empty() ||
        (ws->sub && ws->sub->subscribed())) {
        return;
    }
    try {
        ws->seed = (ws->seed + 1) % ws->seeds.size();
        ws->config.address = ws->seeds[ws->seed];
        ngx_log_error(NGX_LOG_INFO, ws->log, 0,
                      "throttle_cache: fill channel: subscribing on the cluster node %s",
                      ws->config.address.to_string().c_str());
        subscribe(*ws);
    } catch (const std::exception& e) {
        ngx_log_error(NGX_LOG_ERR, ws->log, 0,
                      "throttle_cache: fill channel: cannot move to another node (%s)", e.what());
    }
}

// With Sentinels: the primary is (now) `primary`: subscribe there. Called by the Sentinel
// watch, never from inside the subscriber's own callbacks.
void follow(const redis::Address& primary) noexcept {
    if (ws == nullptr || ws->quiesced || worker_exiting() ||
        (ws->sub && ws->config.address.to_string() == primary.to_string())) {
        return;
    }
    try {
        ws->config.address = primary;
        ngx_log_error(NGX_LOG_INFO, ws->log, 0,
                      "throttle_cache: fill channel: subscribing on the primary %s",
                      primary.to_string().c_str());
        subscribe(*ws);
    } catch (const std::exception& e) {
        ngx_log_error(NGX_LOG_ERR, ws->log, 0,
                      "throttle_cache: fill channel: cannot follow the primary (%s)", e.what());
    }
}

}  // namespace

void waiters_init(ngx_cycle_t* cycle, const MainConf& mcf, redis::Loop& loop,
                  const std::string& channel) noexcept {
    try {
        auto w = std::make_unique<Waiters>();
        w->loop = &loop;
        w->channel = channel;
        if (mcf.redis->cluster != nullptr) {
            // A Redis Cluster broadcasts classic PUBLISH to every node: any one will do. The
            // first seed, then the next after each failure (purge messages lost meanwhile are
            // covered by the mirrors' reads).
            w->config = mcf.redis->cluster->node;
            w->seeds = mcf.redis->cluster->seeds;
            w->config.address = w->seeds.at(0);
            w->rotate = loop.create_timer([]() noexcept { next_seed(); });
        } else {
            w->config = *mcf.redis->client;
        }
        w->log = cycle->log;
        bool sentinel = !w->config.sentinels.empty();
        w->config.sentinels.clear();  // the subscriber is given the primary's address
        if (!sentinel) {
            subscribe(*w);
        }
        ws = w.release();
        if (sentinel) {
            follow_primary(follow);  // subscribes once the Sentinel watch names the primary
        }
    } catch (const std::exception& e) {
        ngx_log_error(NGX_LOG_ERR, cycle->log, 0,
                      "throttle_cache: no fill channel (%s): concurrent misses are not "
                      "coalesced across workers",
                      e.what());
    }
}

void waiters_quiesce() noexcept {
    if (ws != nullptr && ws->waiting.empty()) {
        ws->quiesced = true;  // a failover now does not subscribe again
        if (ws->sub) {
            ws->sub->close();
        }
    }
}

void waiters_exit() noexcept {
    if (ws == nullptr) {
        return;
    }
    if (ws->sub) {
        ws->sub->close();
    }
    Waiters* w = ws;
    ws = nullptr;
    delete w;
}

}  // namespace throttle::ngx
