// The fast cache lookup (layer: ngx): on one Redis (or Sentinel), a turn's batch of lookups is
// first one MGET of each lookup's generation keys and its entry key under the generations this
// worker last saw (memo.hpp; redis/cache_scripts.hpp, "FAST LOOKUP"). A hit it reads is
// exactly LOOKUP's answer and goes to cache_lookup_done() as the script's would; every other
// lookup (a miss, a generation moved, a key of another type, an error reply) goes on to the
// LOOKUP BATCH script in a second call, as without the fast path. A Redis Cluster keeps the
// script path (lookup.cpp).
//
// Costs: Redis about 1.6 us per hit instead of about 7 us of Lua; a miss one more round trip
// (the MGET, then the script), and up to twice the throttle_redis timeout= when Redis answers
// the MGET just before its deadline and then not the script.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "redis/cache_scripts.hpp"

namespace throttle::ngx {

struct CacheRequest;

// One queued lookup (lookup.cpp's batch item).
struct CacheQueued {
    std::shared_ptr<CacheRequest> cr;
    bool want_lock;
};
using CacheLookupBatch = std::vector<CacheQueued>;
// Sends a batch (at most redis::cache_lookup_batch_max lookups) through LOOKUP BATCH, and
// answers each lookup (cache_lookup_done()) exactly once.
using CacheScriptSend = void (*)(CacheLookupBatch&& batch);

// One MGET for the batch; its hits answered, the rest handed to `script` (requests that ended
// meanwhile are dropped, as the batcher drops them). If the MGET gets no reply (timeout,
// Redis gone, circuit open), every lookup is answered with that failure, as a failed script
// call answers it (the MGET took no lock: nothing to abandon). Never calls cache_lookup_done()
// from inside this call.
void cache_fast_lookup(CacheLookupBatch&& batch, CacheScriptSend script) noexcept;

// How the last LOOKUP BATCH call went (lookup.cpp tells every answer and failure). After a
// failed one (no reply, an error reply, a reply of the wrong shape), batches skip the MGET and
// go to the script, as without the fast path, until a script call is answered: a Redis whose
// scripts fail (NOSCRIPT forever, a proxy that mangles them) then fails every lookup in a row,
// so the circuit breaker opens and the incident is logged once, instead of an MGET answered
// between two failures making each failure a new incident.
void cache_script_answered(bool ok) noexcept;

// What a LOOKUP BATCH answer says of the lookup's generations, for the next guesses.
void cache_lookup_seen(const CacheRequest& cr, const redis::CacheLookup& answer) noexcept;

// This worker's lookups answered by the MGET (hits) and those it sent on to the script, since
// the worker started (a debug line at worker exit; tests count Redis' commands instead).
struct CacheFastStats {
    uint64_t mgets = 0;
    uint64_t fast_hits = 0;
    uint64_t to_script = 0;
};
const CacheFastStats& cache_fast_stats() noexcept;

}  // namespace throttle::ngx
