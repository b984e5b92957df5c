// mode=lease (layer: ngx): a host's leases of its keys' quotas, in each lease zone's lease
// table (core/lease.hpp): lease calls (one in flight per key per host, marked in the lease;
// the host's requests that find no unit wait for it; a turn's calls go in one script call),
// prefetches, returns (window over, idle, exit) and the sweep that finds them. Redis side:
// redis/lease_scripts.hpp.
#pragma once

#include <memory>

#include "core/lease.hpp"
#include "ngx/conf.hpp"
#include "ngx/request.hpp"
#include "redis/loop.hpp"

namespace throttle::ngx {

enum class LeaseOutcome : uint8_t {
    none = 0,
    granted,  // units came (into the host's lease): look again
    refused,  // the window admits nothing more: the key is blocked (counts' blocked_until)
    failed,   // Redis could not answer (or the call waited for was lost): the zone's fallback
};

// A request waiting for a lease call (made by bind_to_request()).
class LeaseRequest : public RequestBound {
   public:
    using RequestBound::RequestBound;
    // Called once, from the loop, while the request lives and the worker runs.
    virtual void leased(LeaseOutcome outcome) noexcept = 0;
};

// Under the zone's lock (the caller holds it): what a request that found no unit in the lease
// of `key` (the counts table's key) asks for. Returns the call to send (want > 0) after the
// lock is released, via lease_wait(). Marks the host's call in flight when it is the host's;
// while another worker's is, the request waits for it (the worker polls the lease every ms
// and wakes its waiters when the call was answered; past the Redis timeout: the fallback).
struct LeaseAsk {
    uint32_t want = 0;    // units to ask for (0: join this worker's call in flight)
    uint32_t mark = 0;    // the host-wide in-flight mark it set
    bool remote = false;  // another worker's call is in flight: wait for its answer
};
LeaseAsk lease_plan(ZoneConf& zone, const core::StoredKey& key, int64_t now) noexcept;

// Sends (or joins) the lease call for key and makes `waiter` wait for it. False when that is
// not possible (the caller falls back). Not under the lock.
bool lease_wait(ZoneConf& zone, const core::StoredKey& key, const LeaseAsk& ask,
                std::shared_ptr<LeaseRequest> waiter) noexcept;

// A host call planned by lease_plan() or lease_after_spend() will not leave: its mark goes
// (takes the zone's lock).
void unmark_lease(ZoneConf& zone, const core::StoredKey& key, uint32_t mark) noexcept;

// A prefetch of `want` units (the host's call: mark set by lease_after_spend()). Not under the
// lock.
void lease_prefetch(ZoneConf& zone, const core::StoredKey& key, uint32_t want,
                    uint32_t mark) noexcept;

// Under the zone's lock, after a request spent a unit of key's lease: whether to prefetch
// (then want and mark are set, the host's call marked in flight).
bool lease_after_spend(ZoneConf& zone, core::lease::LeaseState& l, int64_t now, uint32_t& want,
                       uint32_t& mark) noexcept;

void lease_worker_init(const MainConf& mcf, redis::Loop& loop);  // may throw
void lease_worker_stop() noexcept;
// At exit, after the client was closed: unless a newer generation of workers took the zones
// over (a reload: they keep spending the same leases), the leases go back to Redis on a
// blocking connection (one Redis; on a cluster they are left to expire with their window).
void lease_final_return(const MainConf& mcf) noexcept;

}  // namespace throttle::ngx
