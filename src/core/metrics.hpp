// The module's counters (issue 11): what every zone, the Redis link and every cache namespace
// did, counted by every worker into one block of shared memory and read by a scrape. Pure C++,
// no nginx header (layer: core).
//
// Counters are lock-free 64-bit atomics, added with relaxed order (one `lock xadd` each): a
// request never takes a lock to be counted, and a scrape sums nothing, it reads. Histograms keep
// one counter per bucket (not cumulative; the renderer makes them cumulative), their sum and
// count. Gauges that a dead worker would leave wrong (connected, pending commands, breaker open)
// are kept per worker in WorkerGauge slots stamped with the worker's pid: a scrape sums only the
// slots of live workers, so kill -9 of a worker leaves no ghost connection behind.
//
// Registry: the block in shared memory. It names its entries (zone, cache namespace, Redis
// target) and keeps them across reloads: an entry claimed again by the next configuration keeps
// its counters, a new name starts at 0. An entry the new configuration does not claim stays
// (the old workers may still count into it while they drain) until a later configuration needs
// its place. The block is position independent (no pointers) and laid out once per module
// layout (magic_value, layout version): a module build with another layout starts over.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace throttle::core::metrics {

using Counter = std::atomic<uint64_t>;
static_assert(Counter::is_always_lock_free, "counters must be lock-free in shared memory");

inline void add(Counter& c, uint64_t n = 1) noexcept {
    c.fetch_add(n, std::memory_order_relaxed);
}
inline uint64_t read(const Counter& c) noexcept {
    return c.load(std::memory_order_relaxed);
}

// Bucket upper bounds. Latency in microseconds (rendered in seconds), sizes in units.
inline constexpr size_t bucket_count = 14;
inline constexpr uint64_t latency_bounds_us[bucket_count] = {
    100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 2500000};
inline constexpr uint64_t size_bounds[bucket_count] = {1,   2,   4,   8,    16,   32,    64,
                                                       128, 256, 512, 1024, 4096, 16384, 65536};

// buckets[i] counts values <= bounds[i] (and > bounds[i-1]); buckets[bucket_count]: the rest.
struct Histogram {
    Counter buckets[bucket_count + 1];
    Counter sum;
    Counter count;
};

void observe(Histogram& h, const uint64_t (&bounds)[bucket_count], uint64_t value) noexcept;
inline void observe_latency_us(Histogram& h, uint64_t us) noexcept {
    observe(h, latency_bounds_us, us);
}
inline void observe_size(Histogram& h, uint64_t n) noexcept {
    observe(h, size_bounds, n);
}

// What a zone did with a request (label outcome of nginx_throttle_requests_total).
enum class Outcome : uint8_t {
    passed,
    rejected,
    dry_run_passed,
    dry_run_rejected,
    fallback_passed,
    fallback_rejected,
    skipped,  // the zone's key was empty
};
inline constexpr size_t outcome_count = 7;
extern const std::string_view outcome_names[outcome_count];

struct ZoneMetrics {
    Counter requests[outcome_count];
    Counter near_limit;  // passed with at most 10 % of the quota left
    Counter evictions;   // keys evicted while their counts still mattered
    // mode=sync
    Counter sync_flushes;
    Histogram sync_flush_keys;
    Histogram sync_flush_duration;         // microseconds
    std::atomic<int64_t> sync_last_flush;  // ms since the epoch; 0: never
    Counter sync_errors;
    // mode=strict
    Counter strict_decisions;
    Histogram strict_decision_duration;  // microseconds, submit to answer
    // mode=lease
    Counter lease_calls;           // lease script calls sent
    Counter leases;                // calls that granted units (leases taken or topped up)
    Counter lease_units_granted;   // units Redis granted this host
    Counter lease_units_returned;  // units Redis took back (idle, window over, exit)
    Counter lease_errors;          // lease calls without a usable answer
};

inline void count(ZoneMetrics* m, Outcome o) noexcept {
    if (m != nullptr) {
        add(m->requests[static_cast<size_t>(o)]);
    }
}

// Kinds of Redis errors (label kind of nginx_throttle_redis_errors_total).
enum class RedisError : uint8_t { timeout, connection, protocol, script };
inline constexpr size_t redis_error_count = 4;
extern const std::string_view redis_error_names[redis_error_count];

// One worker's gauges; pid 0: free.
struct WorkerGauge {
    std::atomic<int64_t> pid;
    std::atomic<int64_t> connected;     // 0 or 1
    std::atomic<int64_t> breaker_open;  // 0 or 1
    std::atomic<int64_t> pending;       // commands sent and not answered yet
};
inline constexpr size_t max_workers = 64;

struct RedisMetrics {
    Counter connects;  // connections established (handshake done)
    Counter reconnects;
    Counter breaker_openings;
    Counter commands;
    Counter errors[redis_error_count];
    Histogram command_duration;  // microseconds
    Histogram strict_batch_size;
    WorkerGauge workers[max_workers];
};

inline void count(RedisMetrics* m, RedisError e) noexcept {
    if (m != nullptr) {
        add(m->errors[static_cast<size_t>(e)]);
    }
}

// Claims a WorkerGauge for `pid` (a free one, or one whose worker is dead: `alive(pid)` false);
// nullptr when all max_workers are held by live workers (then this worker's gauges are not
// counted). Release with release_worker().
WorkerGauge* claim_worker(RedisMetrics& m, int64_t pid, bool (*alive)(int64_t pid));
void release_worker(WorkerGauge* g) noexcept;

// The sums of the live workers' gauges.
struct RedisGauges {
    int64_t connected = 0;
    int64_t breaker_open = 0;
    int64_t pending = 0;
};
RedisGauges sum_workers(const RedisMetrics& m, bool (*alive)(int64_t pid));

// $throttle_cache_status values, in the order of the ngx layer's CacheStatus (HIT first).
enum class CacheLookup : uint8_t { hit, miss, expired, stale, updating, bypass, error };
inline constexpr size_t cache_lookup_count = 7;
extern const std::string_view cache_lookup_names[cache_lookup_count];

enum class StoreRefusal : uint8_t { uncacheable, too_large, generation_moved };
inline constexpr size_t store_refusal_count = 3;
extern const std::string_view store_refusal_names[store_refusal_count];

enum class FillWait : uint8_t { woken, timed_out };
inline constexpr size_t fill_wait_count = 2;
extern const std::string_view fill_wait_names[fill_wait_count];

struct CacheMetrics {
    Counter lookups[cache_lookup_count];
    Counter stores;
    Counter refusals[store_refusal_count];
    Counter stored_bytes;
    Counter invalidations;
    Counter purges;
    Counter fill_waits[fill_wait_count];
    Counter local_hits;       // answered from the local tier (throttle_cache_local)
    Counter local_stores;     // entries kept in the local tier
    Counter local_evictions;  // live local entries dropped for room
    Counter local_untrusted;  // lookups that skipped the local tier: its subscriber lagged or
                              // was not subscribed
};

inline constexpr size_t max_name = 127;  // bytes of a zone, namespace or target name

class Registry {
   public:
    static constexpr uint32_t magic_value = 0x54484d31;  // "THM1"
    static constexpr size_t max_zones = 256;
    static constexpr size_t max_caches = 256;
    static constexpr size_t max_targets = 4;

    // Bytes the block takes (8-byte aligned memory of that size).
    static size_t bytes() noexcept;
    // Lays out an empty registry in mem (bytes() long).
    static Registry* create(void* mem) noexcept;
    // The registry an earlier create() laid out in mem; nullptr when mem holds none of this
    // layout.
    static Registry* attach(void* mem) noexcept;

    // A new configuration starts claiming: entries the previous one did not claim are free from
    // now on. Call once per configuration, before its claims.
    void begin_cycle() noexcept;
    // The entry of that name for this configuration: the existing one (counters kept) or a new
    // one (zeros). nullptr when the name is longer than max_name or the table is full with
    // entries of this and the previous configuration.
    ZoneMetrics* zone(std::string_view name) noexcept;
    CacheMetrics* cache(std::string_view ns) noexcept;
    RedisMetrics* redis(std::string_view target) noexcept;

    Registry(const Registry&) = delete;
    Registry& operator=(const Registry&) = delete;

   private:
    Registry() = default;
};

}  // namespace throttle::core::metrics
