// Who waits for which entry, per worker (layer: ngx): the fills this worker runs, the requests
// waiting for a fill, and the subscription to the fill channel through which fills in other
// workers and on other hosts announce that they stored or gave up.
//
// A waiter is registered under the entry key E its lookup found locked. It is woken:
//   - by this worker's filler, directly, with the stored bytes (cache_fill_ended());
//   - by a message on the fill channel ("1"+E stored, "0"+E gave up) for fills elsewhere; the
//     STORE and RELEASE scripts publish only when a lookup marked E as waited for;
//   - by its own timer (throttle_cache_lock_timeout), in handler.cpp.
// A message can overtake the lookup reply that makes a request wait (two connections): the
// last messages that found nobody waiting are kept for a second and wake a late waiter at once.
#pragma once

#include <memory>
#include <string>

#include "ngx/conf.hpp"
#include "redis/loop.hpp"

namespace throttle::ngx {

struct CacheRequest;

// Whether a waiter for E will be woken: E is filled by this worker, or the fill channel is
// subscribed (another worker or host fills it).
bool cache_can_wait(const std::string& e) noexcept;
// Registers a waiter for E; it may be woken at once (a message about E just came). False when
// it could not be registered (memory): do not wait then.
bool cache_wait(const std::string& e, const std::shared_ptr<CacheRequest>& cr) noexcept;
void cache_unwait(const std::string& e, const CacheRequest* cr) noexcept;
// This worker starts / ends filling E; the end wakes E's waiters in this worker (`entry`: the
// stored bytes, or nullptr).
void cache_fill_started(const std::string& e) noexcept;
void cache_fill_ended(const std::string& e, bool stored,
                      const std::shared_ptr<const std::string>& entry) noexcept;
bool cache_filling_here(const std::string& e) noexcept;
// Whether the fill channel is subscribed and its heartbeat answered within max_lag_ms (the
// local tier's trust, local.hpp).
bool cache_fill_channel_current(uint64_t max_lag_ms) noexcept;
// The pub/sub channel of fills; empty without a subscriber.
const std::string& cache_channel() noexcept;

// May throw. Without a channel (it could not be created) concurrent misses are not coalesced
// across workers; logged.
void waiters_init(ngx_cycle_t* cycle, const MainConf& mcf, redis::Loop& loop,
                  const std::string& channel) noexcept;
void waiters_exit() noexcept;
// The worker is exiting and nobody waits: the fill channel's connection is closed for good
// (a later miss whose lock is held elsewhere goes upstream instead of waiting).
void waiters_quiesce() noexcept;

}  // namespace throttle::ngx
