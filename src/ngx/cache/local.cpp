// The response cache's local tier: its directive, zones and per-worker glue (see local.hpp).
#include "ngx/cache/local.hpp"

#include <new>

#include "core/cache_entry.hpp"
#include "ngx/cache/conf.hpp"
#include "ngx/cache/waiters.hpp"
#include "ngx/conf.hpp"
#include "ngx/directive_args.hpp"
#include "ngx/metrics.hpp"
#include "ngx/shm_zone.hpp"
#include "redis/cache_scripts.hpp"

namespace throttle::ngx {
namespace {

namespace cm = core::metrics;

// The zones' shared memory has a tag of its own: a throttle_zone or throttle_identity zone of
// the same name is refused by nginx ("already declared for a different use").
const char local_zone_tag = 0;

// Where the table lies in the zone (every worker finds it there after a reload).
struct Worker {
    CacheLocalZone** zones = nullptr;
    ngx_uint_t nzones = 0;
};
Worker* worker = nullptr;  // owned; deleted in cache_local_worker_exit

// The zone's lock, held while a scope runs.
struct Locked {
    explicit Locked(const CacheLocalZone& z) noexcept : pool(z.shpool) {
        ngx_shmtx_lock(&pool->mutex);
    }
    ~Locked() { ngx_shmtx_unlock(&pool->mutex); }
    ngx_slab_pool_t* pool;
};

ngx_int_t init_local_zone(ngx_shm_zone_t* shm_zone, void* data) noexcept {
    auto* z = static_cast<CacheLocalZone*>(shm_zone->data);
    auto* old = static_cast<CacheLocalZone*>(data);
    if (old != nullptr) {  // reload, same name and size: keep the entries and the mirror
        z->shpool = old->shpool;
        auto* r = static_cast<ShmRegion*>(z->shpool->data);
        z->table = keep_table<core::cache::LocalCache>(z->shpool, r->mem, r->bytes);
        return z->table != nullptr ? NGX_OK : NGX_ERROR;
    }
    z->shpool = reinterpret_cast<ngx_slab_pool_t*>(shm_zone->shm.addr);
    void* mem;
    size_t bytes;
    auto* r = static_cast<ShmRegion*>(
        shm_zone_fresh(shm_zone, "throttle_cache_local zone", sizeof(ShmRegion), mem, bytes));
    if (r == nullptr) {
        return NGX_ERROR;
    }
    z->table = mem ? core::cache::LocalCache::create(mem, bytes) : nullptr;
    if (z->table == nullptr) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0, "zone \"%V\" is too small",
                      &shm_zone->shm.name);
        return NGX_ERROR;
    }
    r->mem = mem;
    r->bytes = bytes;
    z->shpool->data = r;
    ngx_log_error(NGX_LOG_INFO, shm_zone->shm.log, 0,
                  "throttle_cache_local zone \"%V\" keeps entries of up to %uz bytes",
                  &shm_zone->shm.name, z->table->max_entry());
    return NGX_OK;
}

// The smallest zone: the table's own minimum plus the slab allocator's pages.
size_t min_zone_size() noexcept {
    return core::cache::LocalCache::min_size() + 8 * ngx_pagesize;
}

bool valid_zone_name(const ngx_str_t& n) noexcept {
    return core::cache::valid_namespace(view(n));  // 1 to 64 of A-Z a-z 0-9 _ . -
}

CacheLocalZone* find_or_add_zone(ngx_conf_t* cf, const ngx_str_t& name) noexcept {
    CacheMainConf& cache = main_conf(cf)->cache;
    if (cache.local_zones == nullptr) {
        cache.local_zones = ngx_array_create(cf->pool, 2, sizeof(CacheLocalZone*));
        if (cache.local_zones == nullptr) {
            return nullptr;
        }
    }
    auto** zones = static_cast<CacheLocalZone**>(cache.local_zones->elts);
    for (ngx_uint_t i = 0; i < cache.local_zones->nelts; i++) {
        if (zones[i]->name.len == name.len &&
            ngx_strncmp(zones[i]->name.data, name.data, name.len) == 0) {
            return zones[i];
        }
    }
    auto* z = static_cast<CacheLocalZone*>(ngx_pcalloc(cf->pool, sizeof(CacheLocalZone)));
    auto** slot = static_cast<CacheLocalZone**>(ngx_array_push(cache.local_zones));
    if (z == nullptr || slot == nullptr) {
        return nullptr;
    }
    z->name = name;
    z->file = cf->conf_file->file.name;
    z->line = cf->conf_file->line;
    *slot = z;
    return z;
}

// zone=NAME or zone=NAME:SIZE.
bool parse_zone(ngx_conf_t* cf, const Param& p, CacheLocalConf& out) noexcept {
    auto* colon = static_cast<u_char*>(ngx_strlchr(p.value.data, p.value.data + p.value.len, ':'));
    ngx_str_t name{colon ? static_cast<size_t>(colon - p.value.data) : p.value.len, p.value.data};
    if (!valid_zone_name(name)) {
        return invalid(cf, p, "zone", " (NAME:SIZE, NAME 1 to 64 of A-Z a-z 0-9 _ . -)");
    }
    ssize_t size = 0;
    if (colon != nullptr) {
        ngx_str_t s{static_cast<size_t>(p.value.data + p.value.len - (colon + 1)), colon + 1};
        size = ngx_parse_size(&s);
        if (size == NGX_ERROR || size == 0) {
            return invalid(cf, p, "zone size");
        }
        if (static_cast<size_t>(size) < min_zone_size()) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "zone \"%V\" is too small (at least %uzk)",
                               &name, min_zone_size() / 1024);
            return false;
        }
    }
    CacheLocalZone* z = find_or_add_zone(cf, name);
    if (z == nullptr) {
        return false;
    }
    if (size > 0) {
        if (z->size != 0 && z->size != static_cast<size_t>(size)) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "zone \"%V\" is already declared with another size (give the size "
                               "once, then zone=%V)",
                               &name, &name);
            return false;
        }
        if (z->size == 0) {
            z->size = static_cast<size_t>(size);
            z->shm =
                ngx_shared_memory_add(cf, &z->name, z->size, const_cast<char*>(&local_zone_tag));
            if (z->shm == nullptr) {
                return false;
            }
            if (z->shm->data != nullptr) {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "duplicate zone \"%V\"", &name);
                return false;
            }
            z->shm->init = init_local_zone;
            z->shm->data = z;
        }
    }
    out.zone = z;
    return true;
}

bool parse_param(ngx_conf_t* cf, Params& params, const Param& p, CacheLocalConf& out) noexcept {
    if (p.name == "zone") {
        return parse_zone(cf, p, out);
    }
    if (p.name == "ttl") {
        return parse_msec(cf, p, 1, 3600 * 1000, "ttl", out.ttl, " (1ms to 1h)");
    }
    if (p.name == "max_size") {
        ssize_t n = ngx_parse_size(const_cast<ngx_str_t*>(&p.value));
        if (n == NGX_ERROR || n == 0 || n > 64 * 1024 * 1024) {
            return invalid(cf, p, "max_size", " (1 to 64m)");
        }
        out.max_size = static_cast<size_t>(n);
        return true;
    }
    if (p.name == "users") {
        static constexpr EnumName<bool> names[] = {{"on", true}, {"off", false}};
        return parse_enum(cf, p, names, "users", out.users);
    }
    params.unknown(p);
    return false;
}

void count(const CacheLocConf& conf, cm::Counter cm::CacheMetrics::*c, uint64_t n = 1) noexcept {
    if (cm::CacheMetrics* m = conf.metrics != nullptr ? conf.metrics->m : nullptr) {
        cm::add(m->*c, n);
    }
}

template <typename F>
void each_zone(F&& f) noexcept {
    if (worker == nullptr) {
        return;
    }
    for (ngx_uint_t i = 0; i < worker->nzones; i++) {
        CacheLocalZone& z = *worker->zones[i];
        if (z.table != nullptr) {
            Locked lock(z);
            f(*z.table);
        }
    }
}

}  // namespace

char* throttle_cache_local_directive(ngx_conf_t* cf, ngx_command_t*, void* conf) noexcept {
    CacheLocalConf& lc = static_cast<LocConf*>(conf)->cache.local;
    if (lc.zone != NGX_CONF_UNSET_PTR) {
        return const_cast<char*>("is duplicate");
    }
    auto* value = static_cast<ngx_str_t*>(cf->args->elts);
    if (cf->args->nelts == 2 && is_off(value[1])) {
        lc.zone = nullptr;
        return NGX_CONF_OK;
    }
    CacheLocalConf out{nullptr, cache_local_default_ttl, cache_local_default_max_size, false};
    Params params(cf, 1);
    Param p;
    while (params.next(p)) {
        if (!parse_param(cf, params, p, out)) {
            return conf_error();
        }
    }
    if (params.failed()) {
        return conf_error();
    }
    if (out.zone == nullptr) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "\"%V\" must have \"zone\" parameter", &value[0]);
        return conf_error();
    }
    if (out.zone->size != 0 &&
        out.max_size > core::cache::LocalCache::max_entry_for(out.zone->size)) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "max_size=%uz does not fit zone \"%V\" (at most %uz: a quarter of "
                           "its blocks)",
                           out.max_size, &out.zone->name,
                           core::cache::LocalCache::max_entry_for(out.zone->size));
        return conf_error();
    }
    lc = out;
    return NGX_CONF_OK;
}

char* check_cache_local_zones(ngx_conf_t* cf, const MainConf& mcf) noexcept {
    const ngx_array_t* a = mcf.cache.local_zones;
    if (a == nullptr) {
        return NGX_CONF_OK;
    }
    auto** zones = static_cast<CacheLocalZone**>(a->elts);
    for (ngx_uint_t i = 0; i < a->nelts; i++) {
        if (zones[i]->size == 0) {
            ngx_log_error(NGX_LOG_EMERG, cf->log, 0,
                          "throttle_cache_local zone \"%V\" in %V:%ui has no size: give "
                          "zone=%V:SIZE once",
                          &zones[i]->name, &zones[i]->file, zones[i]->line, &zones[i]->name);
            return conf_error();
        }
    }
    return NGX_CONF_OK;
}

bool cache_local_applies(const CacheLocConf& conf, std::string_view id) noexcept {
    return conf.local.zone != nullptr && conf.local.zone->table != nullptr && worker != nullptr &&
           (conf.local.users || id == core::cache::anonymous_identity);
}

core::cache::LocalSnapshot cache_local_snapshot(const CacheLocConf& conf) noexcept {
    Locked lock(*conf.local.zone);
    return conf.local.zone->table->snapshot();
}

bool cache_local_trusted() noexcept {
    return cache_fill_channel_current(cache_local_max_lag_ms);
}

bool cache_local_get(const CacheLocConf& conf, const core::cache::LocalKey& k, std::string& out,
                     core::cache::Generation& gen) noexcept {
    bool found;
    {
        Locked lock(*conf.local.zone);
        found = conf.local.zone->table->get(k, now_ms(), static_cast<int64_t>(conf.local.ttl), out,
                                            &gen);
    }
    if (found) {
        count(conf, &cm::CacheMetrics::local_hits);
    }
    return found;
}

void cache_local_put(const CacheLocConf& conf, const core::cache::LocalKey& k,
                     const core::cache::Generation& gen, const core::cache::LocalSnapshot& seen,
                     std::string_view bytes) noexcept {
    if (!cache_local_applies(conf, k.id) || bytes.size() > conf.local.max_size) {
        return;
    }
    core::cache::EntryView v;
    core::cache::DecodeLimits limits;
    limits.max_size = conf.max_size;
    if (!core::cache::decode(bytes, v, limits)) {
        return;
    }
    int64_t now = now_ms();
    bool stored;
    uint64_t evicted;
    {
        Locked lock(*conf.local.zone);
        core::cache::LocalCache& t = *conf.local.zone->table;
        uint64_t before = t.stats().evictions;
        stored = t.put(k, gen, seen, bytes, v.fresh_until_ms, v.stale_until_ms, now);
        evicted = t.stats().evictions - before;
    }
    if (stored) {
        count(conf, &cm::CacheMetrics::local_stores);
    }
    if (evicted > 0) {
        count(conf, &cm::CacheMetrics::local_evictions, evicted);
    }
}

void cache_local_observe(const CacheLocConf& conf, std::string_view id,
                         const core::cache::Generation& gen,
                         const core::cache::LocalSnapshot& seen) noexcept {
    if (conf.local.zone == nullptr || conf.local.zone->table == nullptr) {
        return;
    }
    Locked lock(*conf.local.zone);
    conf.local.zone->table->observe(view(conf.ns), id, gen, seen);
}

void cache_local_count_untrusted(const CacheLocConf& conf) noexcept {
    count(conf, &cm::CacheMetrics::local_untrusted);
}

void cache_local_ns_generation(std::string_view ns, uint64_t gen) noexcept {
    each_zone([&](core::cache::LocalCache& t) { t.ns_generation_seen(ns, gen); });
}

void cache_local_user_generation(std::string_view ns, std::string_view id, uint64_t gen) noexcept {
    each_zone([&](core::cache::LocalCache& t) { t.user_generation_seen(ns, id, gen); });
}

void cache_local_resubscribed() noexcept {
    each_zone([](core::cache::LocalCache& t) { t.bump_epoch(); });
}

bool cache_local_message(std::string_view msg) noexcept {
    uint64_t gen = 0;
    std::string_view ns;
    if (redis::parse_cache_purge_message(msg, gen, ns)) {
        cache_local_ns_generation(ns, gen);
        return true;
    }
    std::string_view id, rest;
    if (redis::parse_cache_user_message(msg, id, rest)) {
        while (redis::next_cache_user_generation(rest, gen, ns)) {
            cache_local_user_generation(ns, id, gen);
        }
        return true;
    }
    return false;
}

void cache_local_worker_init(const MainConf& mcf) noexcept {
    const ngx_array_t* a = mcf.cache.local_zones;
    if (a == nullptr || a->nelts == 0) {
        return;
    }
    worker = new (std::nothrow) Worker;
    if (worker != nullptr) {
        worker->zones = static_cast<CacheLocalZone**>(a->elts);
        worker->nzones = a->nelts;
    }
}

void cache_local_worker_exit() noexcept {
    delete worker;
    worker = nullptr;
}

bool cache_local_used() noexcept {
    return worker != nullptr;
}

}  // namespace throttle::ngx
