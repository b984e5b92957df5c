// The per-worker Redis link (see worker.hpp).
#include "ngx/worker.hpp"

#include <memory>

#include "ngx/cache/worker.hpp"
#include "ngx/limit/strict.hpp"
#include "ngx/limit/sync_flush.hpp"
#include "ngx/redis_loop.hpp"
#include "redis/cache_scripts.hpp"
#include "redis/scripts.hpp"

namespace throttle::ngx {
namespace {

struct Worker {
    Worker(ngx_cycle_t* cycle, MainConf* m)
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
    std::unique_ptr<redis::Client> client;  // reset first at exit: its callbacks run then
};

Worker* worker = nullptr;  // owned; deleted in exit_worker (no static destructor)
bool exiting = false;

MainConf* main_conf(ngx_cycle_t* cycle) noexcept {
    auto* ctx =
        reinterpret_cast<ngx_http_conf_ctx_t*>(ngx_get_conf(cycle->conf_ctx, ngx_http_module));
    if (ctx == nullptr) {
        return nullptr;
    }
    return static_cast<MainConf*>(ctx->main_conf[ngx_http_throttle_module.ctx_index]);
}

// The scripts loaded on every connect: only what this configuration uses.
void add_scripts(redis::Client& client, const MainConf& mcf) {
    if (mcf.limit.remote_zones) {
        client.add_script(redis::strict_batch_script());
        client.add_script(redis::flush_script());
    }
    if (mcf.cache.used) {
        client.add_script(redis::cache_lookup_batch_script());
        client.add_script(redis::cache_store_script());
        client.add_script(redis::cache_release_script());
        client.add_script(redis::cache_abandon_script());
        client.add_script(redis::cache_invalidate_script());
    }
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

const RedisSettings* redis_settings() noexcept {
    return worker ? worker->mcf->redis : nullptr;
}

bool worker_exiting() noexcept {
    return exiting;
}

ngx_int_t init_worker(ngx_cycle_t* cycle) noexcept {
    if (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE) {
        return NGX_OK;
    }
    MainConf* mcf = main_conf(cycle);
    if (mcf == nullptr || mcf->redis == nullptr || !(mcf->limit.remote_zones || mcf->cache.used)) {
        return NGX_OK;
    }
    try {
        worker = new Worker(cycle, mcf);
        add_scripts(*worker->client, *mcf);
        strict_worker_init(worker->loop);
        if (mcf->cache.used) {
            cache_worker_init(cycle, *mcf, worker->loop);
        }
        sync_worker_init(*mcf, worker->loop);
        worker->client->start();
    } catch (const std::exception& e) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0, "throttle_redis: cannot start: %s", e.what());
        strict_worker_exit();
        sync_worker_stop();
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
    strict_worker_exit();
    sync_worker_stop();
    // Destroying the client answers what is still in flight (failed flushes give their counts
    // back to the zone), so the last flush sends everything.
    worker->client.reset();
    sync_final_flush(*worker->mcf);
    delete worker;
    worker = nullptr;
}

}  // namespace throttle::ngx
