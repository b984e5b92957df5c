// The counters' registry in shared memory and the per-worker gauges (core/metrics.hpp).
#include "core/metrics.hpp"

#include <cstring>
#include <new>
#include <type_traits>

namespace throttle::core::metrics {

const std::string_view outcome_names[outcome_count] = {
    "passed",          "rejected",          "dry_run_passed", "dry_run_rejected",
    "fallback_passed", "fallback_rejected", "skipped",
};
const std::string_view redis_error_names[redis_error_count] = {"timeout", "connection", "protocol",
                                                               "script"};
const std::string_view cache_lookup_names[cache_lookup_count] = {
    "HIT", "MISS", "EXPIRED", "STALE", "UPDATING", "BYPASS", "ERROR"};
const std::string_view store_refusal_names[store_refusal_count] = {"uncacheable", "too_large",
                                                                   "generation_moved"};
const std::string_view fill_wait_names[fill_wait_count] = {"woken", "timed_out"};

void observe(Histogram& h, const uint64_t (&bounds)[bucket_count], uint64_t value) noexcept {
    size_t i = 0;
    while (i < bucket_count && value > bounds[i]) {
        i++;
    }
    add(h.buckets[i]);
    add(h.sum, value);
    add(h.count);
}

namespace {

template <typename T>
struct Entry {
    uint64_t generation;  // the configuration that last claimed it
    uint32_t used;
    uint32_t name_len;
    char name[max_name + 1];
    T m;
};

struct Header {
    uint32_t magic;
    uint32_t layout;
    uint64_t bytes;
    uint64_t generation;
};

struct Block {
    Header h;
    Entry<ZoneMetrics> zones[Registry::max_zones];
    Entry<CacheMetrics> caches[Registry::max_caches];
    Entry<RedisMetrics> targets[Registry::max_targets];
};

// Bumped by hand when a field changes meaning without changing the block's size.
constexpr uint32_t layout_version = 1;
constexpr uint32_t layout_word = layout_version << 24 ^ static_cast<uint32_t>(sizeof(Block));

Block* block(Registry* r) noexcept {
    return reinterpret_cast<Block*>(r);
}

template <typename T, size_t N>
T* claim(Entry<T> (&entries)[N], uint64_t generation, std::string_view name) noexcept {
    if (name.empty() || name.size() > max_name) {
        return nullptr;
    }
    Entry<T>* free = nullptr;
    for (Entry<T>& e : entries) {
        if (e.used != 0 && e.name_len == name.size() &&
            std::memcmp(e.name, name.data(), name.size()) == 0) {
            e.generation = generation;
            return &e.m;
        }
        // Neither this configuration's nor the previous one's (whose workers may still run).
        if (free == nullptr && (e.used == 0 || e.generation + 1 < generation)) {
            free = &e;
        }
    }
    if (free == nullptr) {
        return nullptr;
    }
    new (&free->m) T{};  // value-initialised: every counter 0
    std::memcpy(free->name, name.data(), name.size());
    free->name[name.size()] = '\0';
    free->name_len = static_cast<uint32_t>(name.size());
    free->generation = generation;
    free->used = 1;
    return &free->m;
}

}  // namespace

size_t Registry::bytes() noexcept {
    return sizeof(Block);
}

Registry* Registry::create(void* mem) noexcept {
    auto* b = static_cast<Block*>(mem);
    std::memset(static_cast<void*>(b), 0, sizeof(Block));
    b->h.layout = layout_word;
    b->h.bytes = sizeof(Block);
    b->h.magic = magic_value;
    return reinterpret_cast<Registry*>(b);
}

Registry* Registry::attach(void* mem) noexcept {
    auto* b = static_cast<Block*>(mem);
    if (b == nullptr || b->h.magic != magic_value || b->h.layout != layout_word ||
        b->h.bytes != sizeof(Block)) {
        return nullptr;
    }
    return reinterpret_cast<Registry*>(b);
}

void Registry::begin_cycle() noexcept {
    block(this)->h.generation++;
}

ZoneMetrics* Registry::zone(std::string_view name) noexcept {
    Block* b = block(this);
    return claim(b->zones, b->h.generation, name);
}

CacheMetrics* Registry::cache(std::string_view ns) noexcept {
    Block* b = block(this);
    return claim(b->caches, b->h.generation, ns);
}

RedisMetrics* Registry::redis(std::string_view target) noexcept {
    Block* b = block(this);
    return claim(b->targets, b->h.generation, target);
}

WorkerGauge* claim_worker(RedisMetrics& m, int64_t pid, bool (*alive)(int64_t pid)) {
    for (WorkerGauge& g : m.workers) {
        int64_t held = g.pid.load(std::memory_order_acquire);
        if (held != 0 && alive(held)) {
            continue;
        }
        if (g.pid.compare_exchange_strong(held, pid, std::memory_order_acq_rel)) {
            g.connected.store(0, std::memory_order_relaxed);
            g.breaker_open.store(0, std::memory_order_relaxed);
            g.pending.store(0, std::memory_order_relaxed);
            return &g;
        }
    }
    return nullptr;
}

void release_worker(WorkerGauge* g) noexcept {
    if (g == nullptr) {
        return;
    }
    g->connected.store(0, std::memory_order_relaxed);
    g->breaker_open.store(0, std::memory_order_relaxed);
    g->pending.store(0, std::memory_order_relaxed);
    g->pid.store(0, std::memory_order_release);
}

RedisGauges sum_workers(const RedisMetrics& m, bool (*alive)(int64_t pid)) {
    RedisGauges s;
    for (const WorkerGauge& g : m.workers) {
        int64_t pid = g.pid.load(std::memory_order_acquire);
        if (pid == 0 || !alive(pid)) {
            continue;
        }
        s.connected += g.connected.load(std::memory_order_relaxed);
        s.breaker_open += g.breaker_open.load(std::memory_order_relaxed);
        s.pending += g.pending.load(std::memory_order_relaxed);
    }
    return s;
}

}  // namespace throttle::core::metrics
