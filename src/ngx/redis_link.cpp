// This worker's Redis link (see redis_link.hpp).
#include "ngx/redis_link.hpp"

#include <memory>
#include <vector>

#include "ngx/redis_loop.hpp"
#include "redis/cluster.hpp"
#include "redis/sentinel_watch.hpp"

namespace throttle::ngx {
namespace {

struct Link {
    Link(ngx_cycle_t* cycle, MainConf* m)
        : mcf(m), log(cycle->log), loop(cycle->log), client(make_client(m)) {
        if (m->redis->cluster == nullptr && !m->redis->client->sentinels.empty()) {
            watch = std::make_unique<redis::SentinelWatch>(
                loop, *m->redis->client,
                [this](const redis::Address& primary, std::string_view why) {
                    moved(primary, why);
                },
                logger());
        }
    }

    // One Redis (single, or its primary named by Sentinels) or a Redis Cluster.
    std::unique_ptr<redis::Target> make_client(MainConf* m) {
        if (m->redis->cluster != nullptr) {
            return std::make_unique<redis::ClusterClient>(loop, *m->redis->cluster, logger());
        }
        auto c = std::make_unique<redis::Client>(loop, *m->redis->client, logger());
        single = c.get();
        return c;
    }

    redis::Logger logger() {
        return [this](redis::LogLevel level, std::string_view msg) {
            ngx_log_error(log_level_of(level), log, 0, "throttle_redis: %*s", msg.size(),
                          msg.data());
        };
    }

    // The Sentinels name the primary (first, or after a failover): the client and every
    // follower (the cache's fill channel) go there.
    void moved(const redis::Address& primary, std::string_view why) noexcept {
        if (client && single != nullptr) {
            single->reconnect_to(primary, why);
        }
        for (auto& f : followers) {
            try {
                f(primary);
            } catch (...) {
            }
        }
    }

    MainConf* mcf;
    ngx_log_t* log;
    RedisLoop loop;
    redis::Client* single = nullptr;  // client, when it is a single Redis
    std::unique_ptr<redis::Target> client;
    std::vector<std::function<void(const redis::Address&)>> followers;
    std::unique_ptr<redis::SentinelWatch> watch;  // with sentinel=
};

Link* link = nullptr;  // owned; deleted in close_redis_link (no static destructor)
bool exiting = false;

}  // namespace

ngx_uint_t log_level_of(redis::LogLevel level) noexcept {
    return level == redis::LogLevel::Error  ? NGX_LOG_ERR
           : level == redis::LogLevel::Warn ? NGX_LOG_WARN
           : level == redis::LogLevel::Info ? NGX_LOG_NOTICE
                                            : NGX_LOG_DEBUG;
}

redis::Target* redis_client() noexcept {
    return link ? link->client.get() : nullptr;
}

const RedisSettings* redis_settings() noexcept {
    return link ? link->mcf->redis : nullptr;
}

bool worker_exiting() noexcept {
    return exiting;
}

void redis_reply_unusable(const redis::Result& res, std::string_view what,
                          std::string_view key) noexcept {
    if (redis::Target* client = redis_client()) {
        client->reply_unusable(key, res, what);
    }
}

redis::Loop& open_redis_link(ngx_cycle_t* cycle, MainConf& mcf) {
    link = new Link(cycle, &mcf);
    return link->loop;
}

void set_graceful_exit_handler(std::function<void()> handler) {
    link->loop.on_exit(std::move(handler));
}

void mark_worker_exiting() noexcept {
    exiting = true;
}

void follow_primary(std::function<void(const redis::Address&)> follower) {
    if (link == nullptr || !link->watch) {
        return;
    }
    link->followers.push_back(std::move(follower));
    if (link->watch->primary().valid()) {
        link->followers.back()(link->watch->primary());
    }
}

void start_sentinel_watch() {
    if (link != nullptr && link->watch) {
        link->watch->start();
    }
}

void stop_sentinel_watch() noexcept {
    if (link != nullptr && link->watch) {
        link->watch->close();
    }
}

void close_client() noexcept {
    if (link != nullptr) {
        stop_sentinel_watch();
        link->single = nullptr;
        link->client.reset();
    }
}

void close_redis_link() noexcept {
    delete link;
    link = nullptr;
}

}  // namespace throttle::ngx
