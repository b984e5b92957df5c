// Orphan fill locks (see orphans.hpp).
#include "ngx/cache/orphans.hpp"

#include <memory>
#include <vector>

#include "ngx/cache/nsgen.hpp"
#include "ngx/cache/waiters.hpp"
#include "ngx/cache/worker.hpp"
#include "ngx/redis_link.hpp"
#include "redis/cache_scripts.hpp"

namespace throttle::ngx {
namespace {

constexpr size_t orphans_max = 1000;
constexpr uint64_t retry_ms = 1000;
constexpr uint64_t give_up_ms = 10 * 60 * 1000;  // Redis away this long: the locks are its own

// A fill lock an unanswered call may have left. When Redis runs that call is unknown: the
// call may wait in Redis' input (a paused Redis runs it on resuming), so the lock's own TTL
// may start long after the call timed out here. What is known: once Redis answered an ABANDON,
// whatever it had read before (the old call included) runs before it answers the next one.
// So ABANDON is repeated until it released a lock, or until two were answered.
struct Orphan {
    FillLock lock;
    uint64_t give_up_at = 0;  // loop time: Redis stayed away too long
    bool answered = false;    // an ABANDON was answered (without finding the lock)
};

struct Orphans {
    redis::Loop* loop = nullptr;
    std::vector<Orphan> list;
    std::unique_ptr<redis::Timer> retry_timer;
};

Orphans* orphans = nullptr;  // owned; deleted in orphans_exit

void keep(Orphan&& o) noexcept {
    try {
        if (orphans->list.size() >= orphans_max) {
            orphans->list.erase(orphans->list.begin());
        }
        orphans->list.push_back(std::move(o));
        if (!orphans->retry_timer->active()) {
            orphans->retry_timer->start(retry_ms);
        }
    } catch (...) {
    }
}

void send(Orphan&& o) noexcept {
    if (orphans->loop->now_ms() >= o.give_up_at) {
        return;
    }
    redis::Target* client = redis_client();
    try {
        redis::CacheTarget t;
        t.prefix = cache_prefix();
        t.ns = o.lock.ns;
        t.id = o.lock.id;
        t.key = o.lock.key;
        redis::EvalArgs args;
        uint64_t ns_gen = 0;
        const bool cluster = cache_ns_mirrored();
        if (client == nullptr || !client->available() ||
            (cluster ? !cache_ns_generation(t.ns, ns_gen) ||
                           !redis::build_cache_abandon_cluster_args(t, ns_gen, o.lock.token,
                                                                    cache_channel(), args)
                     : !redis::build_cache_abandon_args(t, o.lock.token, cache_channel(), args))) {
            keep(std::move(o));
            return;
        }
        auto held = std::make_shared<Orphan>(std::move(o));
        client->evalsha(
            cluster ? redis::cache_abandon_cluster_script() : redis::cache_abandon_script(),
            args.keys(), args.args(), [held](redis::Result&& res) noexcept {
                bool released = false;
                bool answered = res.ok() && redis::parse_cache_abandon_reply(res.reply, released);
                if (!answered) {
                    redis_reply_unusable(res, "cache fill lock abandon");
                }
                if (released || (answered && held->answered) || orphans == nullptr ||
                    worker_exiting()) {
                    return;  // released, or the old call has run by now: no lock is left
                }
                held->answered = held->answered || answered;
                keep(std::move(*held));
            });
    } catch (...) {
        keep(std::move(o));
    }
}

void retry() noexcept {
    if (orphans == nullptr || worker_exiting()) {
        return;
    }
    std::vector<Orphan> list;
    list.swap(orphans->list);
    for (Orphan& o : list) {
        send(std::move(o));
    }
}

}  // namespace

void cache_abandon_lock(const FillLock& lock) noexcept {
    if (orphans == nullptr || worker_exiting()) {
        return;
    }
    try {
        send(Orphan{lock, orphans->loop->now_ms() + give_up_ms, false});
    } catch (...) {
    }
}

void orphans_init(redis::Loop& loop) {
    auto o = std::make_unique<Orphans>();
    o->loop = &loop;
    o->retry_timer = loop.create_timer([]() noexcept { retry(); });
    orphans = o.release();
}

void orphans_exit() noexcept {
    delete orphans;
    orphans = nullptr;
}

}  // namespace throttle::ngx
