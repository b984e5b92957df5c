// The counters' shared-memory zone and `throttle_metrics` (ngx/metrics.hpp).
//
//   throttle_metrics [format=prometheus|json];             location
//
// The zone ("throttle:metrics", a fixed size, so a reload finds it again) holds one
// core::metrics::Registry. Its init (in the master, after the configuration is read, on start
// and on every reload) claims the entries of this configuration's zones, cache namespaces and
// Redis target and hands each its pointer. The handler reads them (GET and HEAD only) and answers
// the Prometheus text format or JSON.
#include "ngx/metrics.hpp"

#include <signal.h>

#include <new>
#include <string>

#include "core/metrics_text.hpp"
#include "ngx/conf.hpp"
#include "ngx/directive_args.hpp"

namespace throttle::ngx {
namespace {

namespace cm = core::metrics;

ngx_str_t zone_name = ngx_string("throttle:metrics");

cm::WorkerGauge* worker_gauge = nullptr;  // this worker's, in the Redis target's entry

bool alive(int64_t pid) {
    return kill(static_cast<pid_t>(pid), 0) == 0 || ngx_errno == EPERM;
}

size_t zone_size() noexcept {
    // The registry, the slab pool's header and page descriptors, and room to spare: a size that
    // depends only on the module's layout, so every reload reuses the zone.
    size_t bytes = cm::Registry::bytes();
    return ngx_align(bytes + bytes / 32 + 16 * 4096, 4096);
}

bool fail(ngx_shm_zone_t* shm_zone, const char* what, const ngx_str_t& name) noexcept {
    ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                  "throttle_metrics: no room for the counters of %s \"%V\" (at most %uz zones, "
                  "%uz cache namespaces, names of at most %uz bytes)",
                  what, &name, cm::Registry::max_zones, cm::Registry::max_caches, cm::max_name);
    return false;
}

bool claim_all(ngx_shm_zone_t* shm_zone, MainConf& mcf, cm::Registry& reg) noexcept {
    reg.begin_cycle();
    auto** zones = static_cast<ZoneConf**>(mcf.limit.zones.elts);
    for (ngx_uint_t i = 0; i < mcf.limit.zones.nelts; i++) {
        zones[i]->metrics = reg.zone(view(zones[i]->name));
        if (zones[i]->metrics == nullptr) {
            return fail(shm_zone, "zone", zones[i]->name);
        }
    }
    if (mcf.metrics.caches != nullptr) {
        auto** refs = static_cast<CacheMetricsRef**>(mcf.metrics.caches->elts);
        for (ngx_uint_t i = 0; i < mcf.metrics.caches->nelts; i++) {
            refs[i]->m = reg.cache(view(refs[i]->name));
            if (refs[i]->m == nullptr) {
                return fail(shm_zone, "cache namespace", refs[i]->name);
            }
        }
    }
    if (redis_used(mcf)) {  // a target nobody connects to would say "disconnected" forever
        mcf.metrics.redis = reg.redis(view(mcf.redis->text));
        if (mcf.metrics.redis == nullptr) {
            return fail(shm_zone, "redis", mcf.redis->text);
        }
    }
    mcf.metrics.registry = &reg;
    return true;
}

ngx_int_t init_metrics_zone(ngx_shm_zone_t* shm_zone, void* data) noexcept {
    auto* mcf = static_cast<MainConf*>(shm_zone->data);
    auto* shpool = reinterpret_cast<ngx_slab_pool_t*>(shm_zone->shm.addr);
    cm::Registry* reg = nullptr;
    if (data != nullptr) {  // reload: the zone is the old one
        reg = cm::Registry::attach(shpool->data);
        if (reg == nullptr) {
            ngx_log_error(NGX_LOG_NOTICE, shm_zone->shm.log, 0,
                          "throttle_metrics: the counters were laid out by another module "
                          "version, they start over");
        }
    }
    if (reg == nullptr) {
        if (shm_zone->shm.exists) {  // Windows only
            return NGX_ERROR;
        }
        ngx_shmtx_lock(&shpool->mutex);
        if (shpool->data != nullptr) {
            ngx_slab_free_locked(shpool, shpool->data);
        }
        void* mem = ngx_slab_alloc_locked(shpool, cm::Registry::bytes());
        shpool->data = mem;
        ngx_shmtx_unlock(&shpool->mutex);
        if (mem == nullptr) {
            return NGX_ERROR;
        }
        reg = cm::Registry::create(mem);
    }
    return claim_all(shm_zone, *mcf, *reg) ? NGX_OK : NGX_ERROR;
}

}  // namespace

CacheMetricsRef* cache_metrics_ref(ngx_conf_t* cf, const ngx_str_t& ns) noexcept {
    MainConf* mcf = main_conf(cf);
    if (mcf->metrics.caches == nullptr) {
        mcf->metrics.caches = ngx_array_create(cf->pool, 4, sizeof(CacheMetricsRef*));
        if (mcf->metrics.caches == nullptr) {
            return nullptr;
        }
    }
    auto** refs = static_cast<CacheMetricsRef**>(mcf->metrics.caches->elts);
    for (ngx_uint_t i = 0; i < mcf->metrics.caches->nelts; i++) {
        if (refs[i]->name.len == ns.len && ngx_strncmp(refs[i]->name.data, ns.data, ns.len) == 0) {
            return refs[i];
        }
    }
    auto* ref = static_cast<CacheMetricsRef*>(ngx_pcalloc(cf->pool, sizeof(CacheMetricsRef)));
    auto** slot = static_cast<CacheMetricsRef**>(ngx_array_push(mcf->metrics.caches));
    if (ref == nullptr || slot == nullptr) {
        return nullptr;
    }
    ref->name = ns;
    *slot = ref;
    return ref;
}

cm::CacheMetrics* cache_metrics(const MainConf& mcf, std::string_view ns) noexcept {
    if (mcf.metrics.registry == nullptr || mcf.metrics.caches == nullptr) {
        return nullptr;
    }
    auto** refs = static_cast<CacheMetricsRef**>(mcf.metrics.caches->elts);
    for (ngx_uint_t i = 0; i < mcf.metrics.caches->nelts; i++) {
        if (view(refs[i]->name) == ns) {
            return refs[i]->m;
        }
    }
    return nullptr;
}

cm::WorkerGauge* metrics_worker_start(MainConf& mcf) noexcept {
    if (mcf.metrics.redis == nullptr) {
        return nullptr;
    }
    worker_gauge = cm::claim_worker(*mcf.metrics.redis, ngx_pid, alive);
    return worker_gauge;
}

void metrics_worker_exit() noexcept {
    cm::release_worker(worker_gauge);
    worker_gauge = nullptr;
}

// The handler

namespace {

std::string_view mode_name(Mode m) noexcept {
    switch (m) {
        case Mode::sync:
            return "sync";
        case Mode::strict:
            return "strict";
        case Mode::lease:
            return "lease";
        default:
            return "local";
    }
}

cm::Snapshot snapshot(const MainConf& mcf) {
    cm::Snapshot s;
    auto** zones = static_cast<ZoneConf**>(mcf.limit.zones.elts);
    for (ngx_uint_t i = 0; i < mcf.limit.zones.nelts; i++) {
        ZoneConf* z = zones[i];
        if (z->metrics == nullptr || z->shpool == nullptr) {
            continue;
        }
        ngx_shmtx_lock(&z->shpool->mutex);
        uint64_t keys = z->table != nullptr ? z->table->size() : 0;
        uint64_t capacity = z->table != nullptr ? z->table->capacity() : 0;
        ngx_shmtx_unlock(&z->shpool->mutex);
        s.zones.push_back({view(z->name), mode_name(z->mode), z->metrics, keys, capacity});
    }
    if (mcf.metrics.redis != nullptr) {
        s.redis.push_back(
            {view(mcf.redis->text), mcf.metrics.redis, cm::sum_workers(*mcf.metrics.redis, alive)});
    }
    if (mcf.metrics.caches != nullptr) {
        auto** refs = static_cast<CacheMetricsRef**>(mcf.metrics.caches->elts);
        for (ngx_uint_t i = 0; i < mcf.metrics.caches->nelts; i++) {
            if (refs[i]->m != nullptr) {
                s.caches.push_back({view(refs[i]->name), refs[i]->m});
            }
        }
    }
    s.now_ms = static_cast<int64_t>(now_ms());
    return s;
}

ngx_int_t send_text(ngx_http_request_t* r, std::string_view type,
                    const std::string& text) noexcept {
    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = static_cast<off_t>(text.size());
    r->headers_out.content_type.len = type.size();
    r->headers_out.content_type.data = reinterpret_cast<u_char*>(const_cast<char*>(type.data()));
    r->headers_out.content_type_len = type.size();
    r->headers_out.content_type_lowcase = nullptr;
    auto* cc = static_cast<ngx_table_elt_t*>(ngx_list_push(&r->headers_out.headers));
    if (cc == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    cc->hash = 1;
    ngx_str_set(&cc->key, "Cache-Control");
    ngx_str_set(&cc->value, "no-store");
    if (r->method == NGX_HTTP_HEAD || text.empty()) {  // nothing configured: an empty text
        r->header_only = 1;
        return ngx_http_send_header(r);
    }
    auto* buf = static_cast<u_char*>(ngx_pnalloc(r->pool, text.size()));
    auto* b = static_cast<ngx_buf_t*>(ngx_pcalloc(r->pool, sizeof(ngx_buf_t)));
    if (buf == nullptr || b == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    ngx_memcpy(buf, text.data(), text.size());
    b->pos = buf;
    b->last = buf + text.size();
    b->memory = 1;
    b->last_buf = (r == r->main) ? 1 : 0;
    b->last_in_chain = 1;
    ngx_int_t rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }
    ngx_chain_t out = {b, nullptr};
    return ngx_http_output_filter(r, &out);
}

ngx_int_t metrics_handler(ngx_http_request_t* r) noexcept {
    if (!(r->method & (NGX_HTTP_GET | NGX_HTTP_HEAD))) {
        return NGX_HTTP_NOT_ALLOWED;
    }
    ngx_int_t rc = ngx_http_discard_request_body(r);
    if (rc != NGX_OK) {
        return rc;
    }
    const MainConf& mcf = *main_conf(r);
    try {
        cm::Snapshot s = snapshot(mcf);
        if (loc_conf(r)->metrics == MetricsFormat::json) {
            return send_text(r, "application/json", cm::json_text(s));
        }
        return send_text(r, cm::prometheus_content_type, cm::prometheus_text(s));
    } catch (const std::exception& e) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "throttle_metrics: %s", e.what());
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}

const EnumName<MetricsFormat> formats[] = {
    {"prometheus", MetricsFormat::prometheus},
    {"json", MetricsFormat::json},
};

}  // namespace

char* throttle_metrics_directive(ngx_conf_t* cf, ngx_command_t*, void* conf) noexcept {
    auto* lcf = static_cast<LocConf*>(conf);
    if (lcf->metrics != MetricsFormat::none) {
        return const_cast<char*>("is duplicate");
    }
    MetricsFormat format = MetricsFormat::prometheus;
    Params params(cf, 1);
    for (Param p; params.next(p);) {
        if (p.name == "format") {
            if (!parse_enum(cf, p, formats, "format", format)) {
                return conf_error();
            }
        } else {
            return params.unknown(p);
        }
    }
    if (params.failed()) {
        return conf_error();
    }
    lcf->metrics = format;
    MainConf* mcf = main_conf(cf);
    if (mcf->metrics.shm_zone == nullptr) {
        ngx_shm_zone_t* shm_zone =
            ngx_shared_memory_add(cf, &zone_name, zone_size(), &ngx_http_throttle_module);
        if (shm_zone == nullptr) {
            return conf_error();
        }
        shm_zone->init = init_metrics_zone;
        shm_zone->data = mcf;
        mcf->metrics.shm_zone = shm_zone;
    }
    auto* clcf = static_cast<ngx_http_core_loc_conf_t*>(
        ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module));
    clcf->handler = metrics_handler;
    return NGX_CONF_OK;
}

}  // namespace throttle::ngx
