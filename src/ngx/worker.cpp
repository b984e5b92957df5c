// A worker's start and end (see worker.hpp). Each feature registers the scripts it uses with
// the client (loaded on every connect) when it starts.
#include "ngx/worker.hpp"

#include "ngx/cache/worker.hpp"
#include "ngx/identity/identity.hpp"
#include "ngx/limit/lease.hpp"
#include "ngx/limit/strict.hpp"
#include "ngx/limit/sync_flush.hpp"
#include "ngx/metrics.hpp"
#include "ngx/redis_link.hpp"
#include "ngx/request.hpp"

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

// A graceful exit (reload, QUIT): nginx keeps the worker while requests are in flight, and
// those waiting on the module keep it through keep_worker() (request.hpp). The Redis
// connections must not keep it once no request waits: reached through a proxy in the same
// nginx (the stream module), each is a session of some worker, and the workers would wait for
// each other's (until proxy_timeout). So, as nginx closes idle keep-alive connections, they
// are closed when no request waits -- checked again while the worker lives, a later command
// connecting again -- and the worker goes as soon as nginx's own work is done.
constexpr uint64_t drain_check_ms = 100;
redis::Timer* drain_timer = nullptr;  // owned; deleted in exit_worker

void drain() noexcept {
    if (requests_waiting() == 0) {
        if (redis::Target* client = redis_client()) {
            client->disconnect_idle();
        }
        stop_sentinel_watch();  // its connection must not keep the worker either
        cache_worker_quiesce();
    }
    if (drain_timer != nullptr) {
        drain_timer->start(drain_check_ms);  // cancelable: it keeps nothing alive
    }
}

}  // namespace

ngx_int_t init_worker(ngx_cycle_t* cycle) noexcept {
    if (ngx_process != NGX_PROCESS_WORKER && ngx_process != NGX_PROCESS_SINGLE) {
        return NGX_OK;
    }
    MainConf* mcf = main_conf(cycle);
    if (mcf != nullptr) {
        identity_worker_init(*mcf);
    }
    if (mcf == nullptr || !redis_used(*mcf)) {
        return NGX_OK;
    }
    try {
        redis::Loop& loop = open_redis_link(cycle, *mcf);
        redis_client()->set_metrics(mcf->metrics.redis, metrics_worker_start(*mcf));
        started = true;
        drain_timer = loop.create_timer(drain).release();
        set_graceful_exit_handler(drain);
        strict_worker_init(*mcf, loop);
        if (mcf->cache.used) {
            cache_worker_init(cycle, *mcf, loop);
        }
        sync_worker_init(*mcf, loop);
        lease_worker_init(*mcf, loop);
        identity_worker_redis(*mcf);
        redis_client()->start();
        start_sentinel_watch();
    } catch (const std::exception& e) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0, "throttle_redis: cannot start: %s", e.what());
        exit_worker(cycle);
        return NGX_ERROR;
    }
    return NGX_OK;
}

void exit_worker(ngx_cycle_t* cycle) noexcept {
    identity_worker_exit();
    if (!started) {
        return;
    }
    started = false;
    delete drain_timer;
    drain_timer = nullptr;
    mark_worker_exiting();
    cache_worker_exit();
    strict_worker_exit();
    sync_worker_stop();
    lease_worker_stop();
    // Closing the client answers what is still in flight (failed flushes give their counts
    // back to the zone), so the last flush sends everything.
    close_client();
    if (MainConf* mcf = main_conf(cycle)) {
        sync_final_flush(*mcf);
        lease_final_return(*mcf);
    }
    close_redis_link();
    metrics_worker_exit();
}

}  // namespace throttle::ngx
