// A worker's start and end (see worker.hpp). Each feature registers the scripts it uses with
// the client (loaded on every connect) when it starts.
#include "ngx/worker.hpp"

#include "ngx/cache/worker.hpp"
#include "ngx/limit/strict.hpp"
#include "ngx/limit/sync_flush.hpp"
#include "ngx/redis_link.hpp"

namespace throttle::ngx {
namespace {

MainConf* main_conf(ngx_cycle_t* cycle) noexcept {
    auto* ctx =
        reinterpret_cast<ngx_http_conf_ctx_t*>(ngx_get_conf(cycle->conf_ctx, ngx_http_module));
    if (ctx == nullptr) {
        return nullptr;
    }
    return static_cast<MainConf*>(ctx->main_conf[ngx_http_throttle_module.ctx_index]);
}

bool started = false;

}  // namespace

ngx_int_t init_worker(ngx_cycle_t* cycle) noexcept {
    if (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE) {
        return NGX_OK;
    }
    MainConf* mcf = main_conf(cycle);
    if (mcf == nullptr || mcf->redis == nullptr || !(mcf->limit.remote_zones || mcf->cache.used)) {
        return NGX_OK;
    }
    try {
        redis::Loop& loop = open_redis_link(cycle, *mcf);
        started = true;
        strict_worker_init(*mcf, loop);
        if (mcf->cache.used) {
            cache_worker_init(cycle, *mcf, loop);
        }
        sync_worker_init(*mcf, loop);
        redis_client()->start();
    } catch (const std::exception& e) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0, "throttle_redis: cannot start: %s", e.what());
        exit_worker(cycle);
        return NGX_ERROR;
    }
    return NGX_OK;
}

void exit_worker(ngx_cycle_t* cycle) noexcept {
    if (!started) {
        return;
    }
    started = false;
    mark_worker_exiting();
    cache_worker_exit();
    strict_worker_exit();
    sync_worker_stop();
    // Closing the client answers what is still in flight (failed flushes give their counts
    // back to the zone), so the last flush sends everything.
    close_client();
    if (MainConf* mcf = main_conf(cycle)) {
        sync_final_flush(*mcf);
    }
    close_redis_link();
}

}  // namespace throttle::ngx
