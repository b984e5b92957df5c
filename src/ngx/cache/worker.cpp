// The response cache in one worker (see worker.hpp).
#include "ngx/cache/worker.hpp"

#include "ngx/cache/fast_lookup.hpp"
#include "ngx/cache/invalidate.hpp"
#include "ngx/cache/local.hpp"
#include "ngx/cache/lookup.hpp"
#include "ngx/cache/memo.hpp"
#include "ngx/cache/nsgen.hpp"
#include "ngx/cache/orphans.hpp"
#include "ngx/cache/refusals.hpp"
#include "ngx/cache/waiters.hpp"
#include "ngx/redis_link.hpp"
#include "redis/cache_scripts.hpp"

namespace throttle::ngx {
namespace {

std::string* prefix = nullptr;  // owned; deleted in cache_worker_exit
const std::string none;

}  // namespace

const std::string& cache_prefix() noexcept {
    return prefix ? *prefix : none;
}

void cache_worker_init(ngx_cycle_t* cycle, const MainConf& mcf, redis::Loop& loop) noexcept {
    if (!mcf.cache.used || mcf.redis == nullptr) {
        return;
    }
    try {
        redis::Target& client = *redis_client();
        std::string base(view(mcf.redis->prefix));
        // The ACL check on connect (redis/permissions.hpp): a key of the cache's shape, the
        // fill channel the scripts publish to and the subscriber listens on.
        std::string key = core::cache::namespace_generation_key(base + "cache:", "probe");
        std::string channel = redis::cache_fill_channel(base);
        for (const redis::Script* script :
             {&redis::cache_lookup_batch_script(), &redis::cache_store_script(),
              &redis::cache_release_script(), &redis::cache_renew_script(),
              &redis::cache_abandon_script(), &redis::cache_invalidate_script(),
              &redis::cache_purge_cluster_script()}) {
            client.add_script(*script, key, channel);
        }
        if (client.clustered()) {
            for (const redis::Script* script :
                 {&redis::cache_lookup_batch_cluster_script(), &redis::cache_store_cluster_script(),
                  &redis::cache_abandon_cluster_script(), &redis::cache_ns_generation_script()}) {
                client.add_script(*script, key, channel);
            }
        }
        client.require({{"SUBSCRIBE", channel}});
        if (!client.clustered()) {
            client.require({{"MGET", key, key}});  // the fast lookup (fast_lookup.hpp)
        }
        prefix = new std::string(base + "cache:");
        cache_local_worker_init(mcf);  // before the fill channel's subscriber (its heartbeat)
        memos_init(mcf.cache.inflate_memo);
        orphans_init(loop);
        invalidations_init(loop, mcf);
        if (client.clustered()) {
            nsgens_init(loop);
        }
        lookups_init(loop);
        waiters_init(cycle, mcf, loop, redis::cache_fill_channel(base));
    } catch (const std::exception& e) {
        ngx_log_error(NGX_LOG_ERR, cycle->log, 0, "throttle_cache: cannot start (%s)", e.what());
        cache_worker_exit();
    }
}

void cache_worker_quiesce() noexcept {
    waiters_quiesce();
}

void cache_worker_exit() noexcept {
    const CacheFastStats& fs = cache_fast_stats();
    if (fs.mgets > 0) {
        ngx_log_error(NGX_LOG_DEBUG, ngx_cycle->log, 0,
                      "throttle_cache: fast lookup: %uL MGETs, %uL hits served from them, %uL "
                      "lookups sent on to the script",
                      fs.mgets, fs.fast_hits, fs.to_script);
    }
    waiters_exit();
    cache_local_worker_exit();
    lookups_exit();
    nsgens_exit();
    invalidations_exit();
    orphans_exit();
    memos_exit();
    refusals_exit();
    delete prefix;
    prefix = nullptr;
}

}  // namespace throttle::ngx
