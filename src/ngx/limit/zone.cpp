// Shared-memory zones: one SlotTable per throttle_zone, shared by every worker, kept across
// reloads while the zone's name, size, key and secret stay the same; the zone's keyer (the
// keyed digests its keys are stored and sent as); and the Redis names of its keys.
#include <sys/random.h>

#include <cstring>
#include <new>
#include <string_view>

#include "core/hash.hpp"
#include "ngx/limit/limit.hpp"
#include "ngx/shm_zone.hpp"
#include "redis/scripts.hpp"

namespace throttle::ngx {
namespace {

// The table's tag word: the algorithm in the low byte, "full" already logged in bit 8.
constexpr uint64_t tag_algorithm_mask = 0xff;

core::SipKey random_seed(ngx_log_t* log) noexcept {
    core::SipKey seed;
    if (getrandom(&seed, sizeof(seed), 0) != static_cast<ssize_t>(sizeof(seed))) {
        ngx_log_error(NGX_LOG_WARN, log, ngx_errno, "getrandom() failed, seeding from time");
        seed.k0 = static_cast<uint64_t>(ngx_time()) ^ (static_cast<uint64_t>(ngx_pid) << 32);
        seed.k1 = reinterpret_cast<uintptr_t>(&seed) ^ static_cast<uint64_t>(ngx_random());
    }
    return seed;
}

// The zone's own secret, for a zone without throttle_secret: kept in the table, so a reload
// keeps it (and the counts). No weak fallback: a zone without entropy does not start.
bool random_secret(ngx_log_t* log, core::OwnSecret& out) noexcept {
    if (getrandom(out.data(), out.size(), 0) != static_cast<ssize_t>(out.size())) {
        ngx_log_error(NGX_LOG_EMERG, log, ngx_errno, "getrandom() failed");
        return false;
    }
    return true;
}

core::SlotTable* create_table(void* mem, size_t bytes, ngx_log_t* log) noexcept {
    core::OwnSecret secret;
    if (mem == nullptr || !random_secret(log, secret)) {
        return nullptr;
    }
    return core::SlotTable::create(mem, bytes, random_seed(log), secret);
}

// Under the zone's lock: gives the zone its keyer (throttle_secret's, else the table's own
// secret's) and starts the counts over when the table's keys were made under another keying.
void key_zone(ZoneConf* zone, core::SlotTable* table, ngx_log_t* log) noexcept {
    const ngx_str_t* s = zone->secret;
    std::string_view name = view(zone->name);
    if (s != nullptr && s->data != nullptr) {
        zone->keyer = core::ZoneKeyer(s->data, s->len, name);
    } else {
        const core::OwnSecret& own = table->own_secret();
        zone->keyer = core::ZoneKeyer(own.data(), own.size(), name);
    }
    const core::KeyDigest& fp = zone->keyer.fingerprint();
    if (table->keying() == fp) {
        return;
    }
    if (table->keying() != core::KeyDigest{}) {
        table->clear();
        ngx_log_error(NGX_LOG_NOTICE, log, 0,
                      "throttle_zone \"%V\" changed its secret, its counts start over",
                      &zone->name);
    }
    table->set_keying(fp);
}

// A reload that changes a zone's size makes nginx allocate a fresh zone: say so.
void note_size_change(ngx_shm_zone_t* shm_zone) noexcept {
    ngx_list_part_t* part = &const_cast<ngx_cycle_t*>(ngx_cycle)->shared_memory.part;
    auto* zones = static_cast<ngx_shm_zone_t*>(part->elts);
    for (ngx_uint_t i = 0;; i++) {
        if (i >= part->nelts) {
            if (part->next == nullptr) {
                return;
            }
            part = part->next;
            zones = static_cast<ngx_shm_zone_t*>(part->elts);
            i = 0;
            if (part->nelts == 0) {
                return;
            }
        }
        ngx_shm_zone_t* old = &zones[i];
        if (old->tag == shm_zone->tag && old->shm.name.len == shm_zone->shm.name.len &&
            ngx_strncmp(old->shm.name.data, shm_zone->shm.name.data, old->shm.name.len) == 0 &&
            old->shm.size != shm_zone->shm.size) {
            ngx_log_error(NGX_LOG_NOTICE, shm_zone->shm.log, 0,
                          "throttle_zone \"%V\" changed size from %uz to %uz bytes, "
                          "its counts start over",
                          &shm_zone->shm.name, old->shm.size, shm_zone->shm.size);
            return;
        }
    }
}

// The zone's region (sh->table, sh->table_bytes): one table of counts, or, for mode=lease, the
// counts in its first half (8-byte aligned) and the host's leases (core/lease.hpp) in the rest.
// The counts' tag says which (tag_lease_layout).
constexpr uint64_t tag_lease_layout = 0x200;

struct Tables {
    core::SlotTable* counts = nullptr;
    core::SlotTable* leases = nullptr;
};

size_t lease_split(size_t bytes) noexcept {
    return (bytes / 2) & ~size_t(7);
}

Tables attach_tables(void* region, size_t bytes, bool lease) noexcept {
    Tables t;
    if (!lease) {
        t.counts = core::SlotTable::attach(region, bytes);
        if (t.counts != nullptr && (t.counts->tag() & tag_lease_layout)) {
            t.counts = nullptr;
        }
        return t;
    }
    size_t half = lease_split(bytes);
    core::SlotTable* counts = core::SlotTable::attach(region, half);
    core::SlotTable* leases =
        core::SlotTable::attach(static_cast<u_char*>(region) + half, bytes - half);
    if (counts != nullptr && leases != nullptr && (counts->tag() & tag_lease_layout)) {
        t.counts = counts;
        t.leases = leases;
    }
    return t;
}

Tables create_tables(void* region, size_t bytes, bool lease, uint64_t algorithm,
                     ngx_log_t* log) noexcept {
    Tables t;
    if (!lease) {
        t.counts = create_table(region, bytes, log);
        if (t.counts != nullptr) {
            t.counts->set_tag(algorithm);
        }
        return t;
    }
    size_t half = lease_split(bytes);
    core::SlotTable* counts = create_table(region, half, log);
    core::SlotTable* leases =
        region == nullptr ? nullptr
                          : create_table(static_cast<u_char*>(region) + half, bytes - half, log);
    if (counts != nullptr && leases != nullptr) {
        counts->set_tag(algorithm | tag_lease_layout);
        t.counts = counts;
        t.leases = leases;
    }
    return t;
}

}  // namespace

std::string redis_base(const RedisSettings& settings, const ZoneConf& zone,
                       const core::StoredKey& key) {
    std::string out;
    redis_base(settings, zone, key, out);
    return out;
}

namespace {

// "000102..ff": a byte's two hex digits at 2 * byte.
struct HexPairs {
    char bytes[512];
    constexpr HexPairs() : bytes() {
        constexpr char digits[] = "0123456789abcdef";
        for (int b = 0; b < 256; b++) {
            bytes[2 * b] = digits[b >> 4];
            bytes[2 * b + 1] = digits[b & 0xf];
        }
    }
};
constexpr HexPairs hex_pairs;

}  // namespace

// base_key(prefix, zone, hex(digest)), written in place (no temporary strings).
void redis_base(const RedisSettings& settings, const ZoneConf& zone, const core::StoredKey& key,
                std::string& out) {
    const std::string_view prefix = view(settings.prefix);
    const std::string_view name = view(zone.name);
    const size_t n = key.digest.size();
    out.resize(prefix.size() + name.size() + 2 * n + 3);
    char* p = out.data();
    if (!prefix.empty()) {
        std::memcpy(p, prefix.data(), prefix.size());
        p += prefix.size();
    }
    *p++ = '{';
    if (!name.empty()) {
        std::memcpy(p, name.data(), name.size());
        p += name.size();
    }
    *p++ = ':';
    for (size_t i = 0; i < n; i++) {  // two digits at a time (strict: every request)
        std::memcpy(p, hex_pairs.bytes + 2 * key.digest[i], 2);
        p += 2;
    }
    *p = '}';
}

std::string permission_probe_key(const MainConf& mcf) {
    std::string_view prefix = mcf.redis != nullptr ? view(mcf.redis->prefix) : "";
    return redis::base_key(prefix, "probe", "probe") + ":0";
}

ZoneConf* find_or_add_zone(ngx_conf_t* cf, MainConf* mcf, const ngx_str_t& name) noexcept {
    auto** zones = static_cast<ZoneConf**>(mcf->limit.zones.elts);
    for (ngx_uint_t i = 0; i < mcf->limit.zones.nelts; i++) {
        if (zones[i]->name.len == name.len &&
            ngx_strncmp(zones[i]->name.data, name.data, name.len) == 0) {
            return zones[i];
        }
    }
    void* mem = ngx_pcalloc(cf->pool, sizeof(ZoneConf));
    auto** slot = static_cast<ZoneConf**>(ngx_array_push(&mcf->limit.zones));
    if (mem == nullptr || slot == nullptr) {
        return nullptr;
    }
    auto* zone = new (mem) ZoneConf{};
    zone->name = name;
    zone->index = mcf->limit.zones.nelts - 1;
    // Size 0 until throttle_zone gives it one, as limit_req does.
    zone->shm_zone = ngx_shared_memory_add(cf, &zone->name, 0, &ngx_http_throttle_module);
    if (zone->shm_zone == nullptr) {
        return nullptr;
    }
    *slot = zone;
    return zone;
}

ngx_int_t init_zone(ngx_shm_zone_t* shm_zone, void* data) noexcept {
    auto* zone = static_cast<ZoneConf*>(shm_zone->data);
    auto* old = static_cast<ZoneConf*>(data);
    const uint64_t algorithm = static_cast<uint64_t>(zone->policy.algorithm);
    const bool lease = zone->mode == Mode::lease;

    if (old != nullptr) {  // reload, same name and size: keep the counts
        if (old->key.value.len != zone->key.value.len ||
            ngx_strncmp(old->key.value.data, zone->key.value.data, zone->key.value.len) != 0) {
            ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                          "throttle_zone \"%V\" uses the \"%V\" key "
                          "while previously it used the \"%V\" key",
                          &shm_zone->shm.name, &zone->key.value, &old->key.value);
            return NGX_ERROR;
        }
        zone->shpool = old->shpool;
        zone->shared = old->shared;
        ZoneShared* sh = zone->shared;
        ngx_shmtx_lock(&zone->shpool->mutex);
        Tables t = attach_tables(sh->table, sh->table_bytes, lease);
        if (t.counts == nullptr &&
            attach_tables(sh->table, sh->table_bytes, !lease).counts != nullptr) {
            // Laid out for the other layout: the old workers, still running, would go on
            // reading their tables where the new layout puts others.
            ngx_shmtx_unlock(&zone->shpool->mutex);
            ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0,
                          "throttle_zone \"%V\" cannot change to or from \"mode=lease\" on a "
                          "reload while it keeps its size: give it another size (its counts "
                          "start over) or restart nginx",
                          &shm_zone->shm.name);
            return NGX_ERROR;
        }
        if (t.counts == nullptr) {  // laid out by a module build with another layout
            t = create_tables(sh->table, sh->table_bytes, lease, algorithm, shm_zone->shm.log);
            if (t.counts == nullptr) {
                ngx_shmtx_unlock(&zone->shpool->mutex);
                return NGX_ERROR;
            }
            ngx_log_error(NGX_LOG_NOTICE, shm_zone->shm.log, 0,
                          "throttle_zone \"%V\" was laid out by another module version, "
                          "its counts start over",
                          &shm_zone->shm.name);
        } else if ((t.counts->tag() & tag_algorithm_mask) != algorithm) {
            t.counts->clear();
            t.counts->set_tag((t.counts->tag() & ~tag_algorithm_mask) | algorithm);
            ngx_log_error(NGX_LOG_NOTICE, shm_zone->shm.log, 0,
                          "throttle_zone \"%V\" changed its algorithm, its counts start over",
                          &shm_zone->shm.name);
        }
        if (t.leases != nullptr) {
            // A new generation of workers takes the leases over: the old ones keep them at exit.
            t.leases->set_tag(t.leases->tag() + 1);
        }
        key_zone(zone, t.counts, shm_zone->shm.log);
        sh->table = t.counts;
        zone->table = t.counts;
        zone->leases = t.leases;
        ngx_shmtx_unlock(&zone->shpool->mutex);
        return NGX_OK;
    }

    auto* shpool = reinterpret_cast<ngx_slab_pool_t*>(shm_zone->shm.addr);
    zone->shpool = shpool;
    note_size_change(shm_zone);

    void* mem;
    size_t bytes;
    auto* sh = static_cast<ZoneShared*>(
        shm_zone_fresh(shm_zone, "throttle_zone", sizeof(ZoneShared), mem, bytes));
    if (sh == nullptr) {
        return NGX_ERROR;
    }
    Tables t = create_tables(mem, bytes, lease, algorithm, shm_zone->shm.log);
    if (t.counts == nullptr) {
        ngx_log_error(NGX_LOG_EMERG, shm_zone->shm.log, 0, "zone \"%V\" is too small",
                      &shm_zone->shm.name);
        return NGX_ERROR;
    }
    key_zone(zone, t.counts, shm_zone->shm.log);
    sh->table = t.counts;
    sh->table_bytes = bytes;
    shpool->data = sh;
    zone->shared = sh;
    zone->table = t.counts;
    zone->leases = t.leases;
    ngx_log_error(NGX_LOG_INFO, shm_zone->shm.log, 0, "throttle_zone \"%V\" holds %uz keys",
                  &shm_zone->shm.name, t.counts->capacity());
    return NGX_OK;
}

}  // namespace throttle::ngx
