// Invalidations and their retries (see invalidate.hpp).
#include "ngx/cache/invalidate.hpp"

#include <memory>
#include <unordered_map>

#include "ngx/cache/local.hpp"
#include "ngx/cache/nsgen.hpp"
#include "ngx/cache/waiters.hpp"
#include "ngx/cache/worker.hpp"
#include "ngx/metrics.hpp"
#include "ngx/redis_link.hpp"
#include "redis/cache_scripts.hpp"

namespace throttle::ngx {
namespace {

constexpr size_t pending_max = 10000;
constexpr uint64_t retry_ms = 1000;

// An invalidation waiting to be confirmed by Redis.
struct Pending {
    std::string id;
    std::vector<std::string> namespaces;
};

struct Invalidations {
    std::vector<Pending> pending;
    std::unordered_map<std::string, unsigned> pending_keys;  // id "\n" ns -> count
    std::unique_ptr<redis::Timer> retry_timer;
    bool full_logged = false;
    const MainConf* mcf = nullptr;  // the counters' namespaces
};

Invalidations* inv = nullptr;  // owned; deleted in invalidations_exit

std::string pending_key(std::string_view ns, std::string_view id) {
    std::string k;
    k.reserve(id.size() + 1 + ns.size());
    k.append(id).append(1, '\n').append(ns);
    return k;
}

void forget(const Pending& p) noexcept {
    for (const std::string& ns : p.namespaces) {
        try {
            auto it = inv->pending_keys.find(pending_key(ns, p.id));
            if (it != inv->pending_keys.end() && --it->second == 0) {
                inv->pending_keys.erase(it);
            }
        } catch (...) {
        }
    }
}

void keep(Pending&& p) noexcept {
    if (inv == nullptr) {
        return;
    }
    try {
        if (inv->pending.size() >= pending_max) {
            if (!inv->full_logged) {
                inv->full_logged = true;
                ngx_log_error(NGX_LOG_ALERT, ngx_cycle->log, 0,
                              "throttle_cache: %uz invalidations wait for Redis, dropping the "
                              "oldest: those users' older entries live until their TTL",
                              inv->pending.size());
            }
            forget(inv->pending.front());
            inv->pending.erase(inv->pending.begin());
        }
        for (const std::string& ns : p.namespaces) {
            inv->pending_keys[pending_key(ns, p.id)]++;
        }
        inv->pending.push_back(std::move(p));
        if (!inv->retry_timer->active()) {
            inv->retry_timer->start(retry_ms);
        }
    } catch (...) {
    }
}

// Calls `f` when it goes out of scope: Redis answered, whatever the answer.
struct Answer {
    const std::function<void()>& f;
    ~Answer() {
        if (f) {
            f();
        }
    }
};

// Redis confirmed an invalidation: one count per namespace.
void count_confirmed(const std::vector<std::string>& namespaces) noexcept {
    if (inv == nullptr || inv->mcf->metrics.registry == nullptr) {
        return;
    }
    for (const std::string& ns : namespaces) {
        if (core::metrics::CacheMetrics* m = cache_metrics(*inv->mcf, ns)) {
            core::metrics::add(m->invalidations);
        }
    }
}

// Sends one invalidation; one Redis did not confirm goes (back) to the pending list. Returns
// whether it was sent (`answered` is then called once with Redis' answer or failure).
bool send(Pending&& p, std::function<void()> answered) noexcept {
    redis::Target* client = redis_client();
    if (cache_ns_mirrored() && p.namespaces.size() > 1) {
        // A Redis Cluster: the user's generation keys of several namespaces are in several
        // slots: one call per namespace; `answered` once every one answered.
        try {
            auto left = std::make_shared<size_t>(0);  // parts sent and not answered yet
            auto all = std::make_shared<std::function<void()>>(std::move(answered));
            std::function<void()> one = [left, all]() {
                if (--*left == 0 && *all) {
                    (*all)();
                }
            };
            std::vector<std::string> names = std::move(p.namespaces);
            for (std::string& ns : names) {
                ++*left;  // a Target never answers from inside the call
                if (!send(Pending{p.id, {std::move(ns)}}, one)) {
                    --*left;
                }
            }
            return *left > 0;
        } catch (...) {
            keep(std::move(p));
            return false;
        }
    }
    try {
        std::vector<std::string_view> names(p.namespaces.begin(), p.namespaces.end());
        redis::EvalArgs args;
        if (client == nullptr || !client->available() ||
            !redis::build_cache_invalidate_args(cache_prefix(), p.id, names.data(), names.size(),
                                                cache_channel(), args)) {
            keep(std::move(p));
            return false;
        }
        auto held = std::make_shared<Pending>(std::move(p));
        client->evalsha(
            redis::cache_invalidate_script(), args.keys(), args.args(),
            [held, answered = std::move(answered)](redis::Result&& res) noexcept {
                Answer answer{answered};
                std::vector<uint64_t> gens;
                bool good = false;
                try {
                    good = res.ok() && redis::parse_cache_invalidate_reply(
                                           res.reply, held->namespaces.size(), gens);
                } catch (...) {
                }
                if (good) {
                    count_confirmed(held->namespaces);
                    // This host's local tier at once, before the held write
                    // response is released (`answer`, below): the writer's next
                    // read here sees the write. Other hosts: the message.
                    for (size_t i = 0; i < gens.size(); i++) {
                        cache_local_user_generation(held->namespaces[i], held->id, gens[i]);
                    }
                }
                if (good || worker_exiting()) {
                    return;
                }
                redis_reply_unusable(res, "cache invalidation");
                ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0,
                              "throttle_cache: invalidation failed (%s), retrying",
                              res.ok() ? "unexpected reply" : redis::to_string(res.failure));
                keep(std::move(*held));
            });
        return true;
    } catch (...) {
        keep(std::move(p));
        return false;
    }
}

void retry() noexcept {
    if (inv == nullptr || worker_exiting()) {
        return;
    }
    std::vector<Pending> batch;
    batch.swap(inv->pending);
    for (const Pending& p : batch) {
        forget(p);
    }
    for (Pending& p : batch) {
        send(std::move(p), nullptr);
    }
}

}  // namespace

bool cache_invalidate(std::string id, std::vector<std::string> namespaces,
                      std::function<void()> answered) noexcept {
    if (inv == nullptr || namespaces.empty()) {
        return false;
    }
    return send(Pending{std::move(id), std::move(namespaces)}, std::move(answered));
}

bool cache_invalidation_pending(std::string_view ns, std::string_view id) noexcept {
    if (inv == nullptr || inv->pending_keys.empty()) {
        return false;
    }
    try {
        return inv->pending_keys.count(pending_key(ns, id)) > 0;
    } catch (...) {
        return true;
    }
}

void invalidations_init(redis::Loop& loop, const MainConf& mcf) {
    auto i = std::make_unique<Invalidations>();
    i->mcf = &mcf;
    i->retry_timer = loop.create_timer([]() noexcept { retry(); });
    inv = i.release();
}

void invalidations_exit() noexcept {
    if (inv == nullptr) {
        return;
    }
    if (!inv->pending.empty()) {
        ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                      "throttle_cache: %uz invalidations not confirmed by Redis at exit",
                      inv->pending.size());
    }
    delete inv;
    inv = nullptr;
}

}  // namespace throttle::ngx
