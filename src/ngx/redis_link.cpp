// This worker's Redis link (see redis_link.hpp).
#include "ngx/redis_link.hpp"

#include <memory>

#include "ngx/redis_loop.hpp"

namespace throttle::ngx {
namespace {

struct Link {
    Link(ngx_cycle_t* cycle, MainConf* m)
        : mcf(m),
          log(cycle->log),
          loop(cycle->log),
          client(std::make_unique<redis::Client>(
              loop, *m->redis->client, [this](redis::LogLevel level, std::string_view msg) {
                  ngx_log_error(log_level_of(level), log, 0, "throttle_redis: %*s", msg.size(),
                                msg.data());
              })) {}

    MainConf* mcf;
    ngx_log_t* log;
    RedisLoop loop;
    std::unique_ptr<redis::Client> client;
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

redis::Client* redis_client() noexcept {
    return link ? link->client.get() : nullptr;
}

const RedisSettings* redis_settings() noexcept {
    return link ? link->mcf->redis : nullptr;
}

bool worker_exiting() noexcept {
    return exiting;
}

void redis_reply_unusable(const redis::Result& res, std::string_view what) noexcept {
    if (redis::Client* client = redis_client()) {
        client->reply_unusable(res, what);
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

void close_client() noexcept {
    if (link != nullptr) {
        link->client.reset();
    }
}

void close_redis_link() noexcept {
    delete link;
    link = nullptr;
}

}  // namespace throttle::ngx
