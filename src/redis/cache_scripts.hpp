// The response cache's Lua scripts, their argument builders and reply parsers (layer: redis). No
// nginx header, no hiredis type: arguments go to Client::evalsha() through EvalArgs (scripts.hpp),
// replies come back as Reply. Key layout and entry format: src/core/cache_key.hpp,
// src/core/cache_entry.hpp.
//
// LOOKUP reads the user's generation PREFIX{NS:ID}:g and the namespace's
// PREFIX{NS}:g in one script: two hash slots, which Redis Cluster refuses (CROSSSLOT). STORE
// reads both too. Every other name a script touches shares the slot of PREFIX{NS:ID}. PUBLISH
// (STORE, RELEASE) reaches every subscriber of the channel wherever the script runs.
//
// On a Redis Cluster (the "cluster" variants below) every call touches keys of one slot: the
// namespace generation is not read by LOOKUP, STORE or ABANDON but passed as an ARGV (the value
// of the worker's mirror, src/ngx/cache/nsgen.cpp), so LOOKUP BATCH reads only the users'
// generation keys (one call per slot), STORE checks the user generation only (an entry stored
// under a namespace generation that a purge has since moved is unreachable once the mirrors
// move), and a purge (PURGE CLUSTER) publishes the new generation on the fill channel.
//
// Generations are exact integers below 2^53 (Lua numbers are doubles; INCR from 0 never gets
// there). A generation key holding anything else than a canonical decimal ("0", "7", not "07",
// "+7" or " 7") below 2^53 makes LOOKUP and STORE answer an error reply, which the module treats
// as a Redis failure (BYPASS): never a wrong key.
//
// Fill locks have owners and leases. The lock's value is its filler's owner token (unique per
// fill, 1 to cache_fill_token_max bytes; the module's are "SEED.PID.COUNTER"), and lock_ttl_ms
// is a short lease (the module's: min(throttle_cache_lock_timeout, 2 s)) that the filler renews
// with RENEW while its upstream runs, so the lock of a filler that died (kill -9, a host gone)
// is gone within one lease. STORE, RELEASE and ABANDON delete the lock only when it holds their
// token: a filler whose lease ran out cannot drop the lock a newer filler took.
//
// LOOKUP (one round trip: both generations and the entry, plus the fill lock on a miss)
//   KEYS = generation_key(PREFIX, NS, ID), namespace_generation_key(PREFIX, NS)
//   ARGV = PREFIX, NS, ID, KEYHEX (64 lowercase hex digits of cache_key()), lock_ttl_ms (>= 1),
//          want_lock ("1": take the fill lock on a miss, "0": never), TOKEN (the owner token
//          when want_lock is "1"; ignored otherwise, the builder sends "")
//   The script checks that KEYS are exactly the generation keys of PREFIX, NS and ID (else an
//   error reply), reads both generations (missing: 0), builds
//     E = PREFIX "{" NS ":" ID "}:e:" NSGEN "." USERGEN ":" KEYHEX
//   byte for byte as core::cache::entry_key() does, and GETs it. On a miss with want_lock "1"
//   it runs SET E":l" TOKEN NX PX lock_ttl_ms (core::cache::fill_lock_key(E)); when that lock is
//   held already (another process or host is filling), it also runs SET E":w" 1 PX lock_ttl_ms
//   (core::cache::fill_waiter_key(E)): the waiter mark, which tells the filler's STORE or
//   RELEASE to publish a wake-up. (A waiter looks up again at least once per lease, which sets
//   the mark again; a STORE between the mark's expiry and that lookup is seen by the lookup.)
//   Reply: [ns_gen, user_gen, entry (bulk) or nil, lock_taken 0/1] (integers but the entry).
//   lock_taken is 1 only on a miss. The entry's freshness is decided in C++ from the decoded
//   entry (core::cache::freshness()); a present entry is fresh or stale (its Redis expiry is its
//   stale_until), so the fill lock for refreshing a stale entry, which is served at once
//   anyway, is a separate SET fill_lock_key TOKEN NX PX lock_ttl_ms (cache_fill_lock_argv()).
//
// LOOKUP BATCH (every lookup queued during one event-loop turn, in one call)
//   n lookups, 1 <= n <= cache_lookup_batch_max (64), each with LOOKUP's KEYS and ARGV:
//   KEYS = 2 per lookup, ARGV = 7 per lookup, lookup i at KEYS[2i-1..2i], ARGV[7i-6..7i].
//   The effect and the answers are exactly those of the n LOOKUPs run one after another in
//   order (atomically): two lookups of one key in a batch that want the lock and miss, the first
//   takes it (lock_taken 1), the second finds it held (lock_taken 0) and sets the waiter mark.
//   Reply: a flat array of 4n, lookup i's LOOKUP reply at [4i-4 .. 4i) (0-based).
//   All or nothing: a malformed lookup (any check LOOKUP makes; the message names it), a wrong
//   count of KEYS or ARGV, n outside 1..64, a generation key that holds no generation, or a
//   generation or entry key of another type make the whole call an error reply, and an error
//   reply writes nothing (every check and read comes before the first SET).
//   Redis work per call: one MGET of the 2n generation keys, one MGET of the n entry keys, one
//   EXISTS of all 3n (only when a key was missing: tells a missing key from one of another
//   type), then LOOKUP's SETs for each miss that wants the lock (LOOKUP's reads are hoisted: no
//   lookup writes a key a lookup reads).
//
// STORE (after the fill: the whole response arrived and decide() said store)
//   KEYS = E, E":l", E":w", generation_key(PREFIX, NS, ID), namespace_generation_key(PREFIX, NS)
//   ARGV = entry bytes (non-empty), ttl_ms (1 .. generation_ttl_ms), NSGEN, USERGEN (those
//          LOOKUP returned, from which E was built), generation_ttl_ms, CHANNEL (non-empty:
//          cache_fill_channel(PREFIX)), TOKEN (the filler's owner token)
//   If both generation keys still hold NSGEN and USERGEN (missing reads "0"): SET E entry PX
//   ttl_ms, and each generation key: created as "0" with expiry generation_ttl_ms when missing
//   (SET NX PX; the FAST LOOKUP trusts only generation keys that exist, see below), else
//   PEXPIRE'd to generation_ttl_ms; reply 1. So while an entry stored by STORE exists, both
//   its generation keys exist (they outlive it, see "Invalidation safety"). A "0" INVALIDATE
//   then INCRs to 1, as it did a missing key; NS GENERATION reads it as 0, as it did.
//   Otherwise an invalidation happened since the lookup: reply 0. Either way E":l" is deleted
//   if it holds TOKEN (a lock of another filler stays), and last: if the waiter mark E":w"
//   exists, DEL it and PUBLISH CHANNEL "1" E (stored) or "0" E (refused) -- except when nothing
//   was stored and another filler holds the lock (its waiters wait for it). Without a waiter
//   nothing is published.
//   Invalidation safety: an entry is reachable only under the generations it was stored with
//   (the C++ side builds E from the generations LOOKUP returned), and INVALIDATE moves a
//   generation forward, so after an invalidation no lookup builds the key of an entry stored
//   before it. A fill that looked up before a write and stores after its INCR is refused here
//   (0; stored anyway it would only sit under the old generations, unreachable; scripts are
//   atomic, so no STORE interleaves with an INCR). Generations must outlive entries: a
//   generation key that expired would read 0 again, count up again, and could meet an old
//   entry's generation. So STORE refuses ttl_ms > generation_ttl_ms and pushes the generation
//   keys' expiry to generation_ttl_ms from now whenever it stores; INVALIDATE does the same at
//   every INCR. A generation key therefore expires only after every entry stored under it (a
//   missing key is generation 0: an entry stored under 0 expires before any INCR'd key that follows
//   it does).
//
// RELEASE (the filler gave up: the response is not cacheable, the upstream failed, the client
// went away)
//   KEYS = E":l", E":w"
//   ARGV = CHANNEL (non-empty), E (non-empty), TOKEN
//   If E":l" holds another token: nothing (reply 0; that filler's waiters wait for it).
//   Otherwise DEL E":l"; if the waiter mark E":w" exists, DEL it and PUBLISH CHANNEL "0" E;
//   reply 1. Otherwise reply 0.
//
// RENEW (the filler's lease, every third of it while its upstream runs)
//   KEYS = E":l"     ARGV = TOKEN, lease_ms (>= 1)
//   If E":l" holds TOKEN: PEXPIRE it to lease_ms, reply 1. Otherwise (expired, released, taken
//   by another filler since) reply 0 and touch nothing: a lock is renewed only by its owner.
//
// Wake-up messages (STORE, RELEASE): on cache_fill_channel(PREFIX), one flag byte, '1' (stored:
// a lookup now hits) or '0' (nothing stored: look up again, take the lock, fill), then E. A waiter
// that receives E it waits on stops waiting; one that receives nothing (the message is lost, the
// subscriber is disconnected) looks up again after a lease, and gives up at its own timeout: a
// wake-up is a shortcut, never needed for correctness. A waiter mark lives lock_ttl_ms from the
// last waiter's LOOKUP.
//
// INVALIDATE (a user's write, an upstream's header, an operator)
//   KEYS = generation keys (any number >= 1; the user's keys in several namespaces, or one
//          namespace_generation_key for everyone in a namespace)
//   ARGV = generation_ttl_ms (>= 1) [, CHANNEL, ID, NS x #KEYS]
//   INCR each key, then PEXPIRE it to generation_ttl_ms (every time). With the optional ARGV
//   (a user's keys, the names of their namespaces in KEYS order), last one PUBLISH CHANNEL
//   "u" ID " " GEN ":" NS [" " GEN ":" NS ...]: every host's local tier hears the write
//   (ngx/cache/local.hpp). Reply: the new values,
//   in KEYS order. A key holding no integer is an error reply (INCR's); so is a value at or
//   above 2^53 (keys before it were already incremented: harmless, it only invalidates more).
//
// All of them check their arguments and answer an error reply when malformed; the parsers turn
// any reply that is not exactly the expected shape into false, which the module treats as a
// Redis failure. Scripts start with "#!lua" like scripts.cpp's (Redis 7 flags, none set).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/cache_key.hpp"
#include "redis/reply.hpp"
#include "redis/script.hpp"
#include "redis/scripts.hpp"

namespace throttle::redis {

// How long a generation key lives after its last INCR or STORE: 30 days. Every entry's TTL
// (fresh + stale) must be at most this (build_cache_store_args() refuses more).
inline constexpr int64_t cache_generation_ttl_ms = int64_t(30) * 86400 * 1000;
// Generations are exact below this (2^53).
inline constexpr uint64_t cache_generation_limit = uint64_t(1) << 53;

// What names one entry, apart from the generations.
struct CacheTarget {
    std::string_view prefix;   // the cache's key prefix
    std::string_view ns;       // the namespace (core::cache::valid_namespace())
    std::string_view id;       // core::cache::identity_digest()'s result
    core::Sha256Digest key{};  // core::cache::cache_key()'s result
};

// The scripts, built on first use (may throw std::bad_alloc then) and never destroyed.
const Script& cache_lookup_script();
const Script& cache_lookup_batch_script();
const Script& cache_store_script();
const Script& cache_release_script();
const Script& cache_renew_script();
const Script& cache_abandon_script();

// A fill lock's owner token: 1 to this many bytes.
inline constexpr size_t cache_fill_token_max = 64;
bool valid_fill_token(std::string_view token) noexcept;
const Script& cache_invalidate_script();

// ---- LOOKUP ----

struct CacheLookup {
    uint64_t ns_gen = 0;      // the namespace's generation (0: its key was missing)
    uint64_t user_gen = 0;    // the user's generation in the namespace
    bool hit = false;         // an entry was found
    std::string entry;        // its bytes (core::cache::decode() them), empty unless hit
    bool lock_taken = false;  // this caller holds the fill lock (only on a miss)

    core::cache::Generation generation() const noexcept {
        core::cache::Generation g;
        g.ns = ns_gen;
        g.user = user_gen;
        return g;
    }
};

// The single LOOKUP (cache_lookup_script(), these arguments, this reply) is what the module no
// longer sends on its own: LOOKUP BATCH is. It stays as the reference the batch is tested
// against (t/redis/cache_scripts_test.cpp), and its arguments are a batch entry's.
//
// Fills `out` (cleared first). False when the namespace is not valid_namespace(), want_lock
// is set with lock_ttl_ms < 1 or a token that is not valid_fill_token(), or memory runs out.
bool build_cache_lookup_args(const CacheTarget& t, int64_t lock_ttl_ms, bool want_lock,
                             std::string_view token, EvalArgs& out) noexcept;

// False, with `out` unspecified, unless the reply is an array of exactly 4: two integers in
// [0, 2^53), a nil or a non-empty bulk string, an integer 0 or 1 (1 only with a nil entry).
// The rvalue form moves the entry's bytes out of the reply instead of copying them.
bool parse_cache_lookup_reply(const Reply& reply, CacheLookup& out) noexcept;
bool parse_cache_lookup_reply(Reply&& reply, CacheLookup& out) noexcept;

// ---- LOOKUP BATCH ----

// At most this many lookups per batch call: a longer script delays every other Redis client.
inline constexpr size_t cache_lookup_batch_max = 64;

// One lookup of a batch: build_cache_lookup_args()'s arguments.
struct CacheLookupRequest {
    CacheTarget target;
    int64_t lock_ttl_ms = 0;
    bool want_lock = false;
    std::string_view token;  // the owner token the lock is taken with (want_lock)
};

// Fills `out` (cleared first) with reqs[0..n)'s lookups, in order. False, with `out` cleared,
// when n is 0 or above cache_lookup_batch_max, or for any lookup build_cache_lookup_args()
// refuses (a namespace that is not valid, want_lock with lock_ttl_ms < 1 or without a valid
// token), or when memory runs out.
bool build_cache_lookup_batch_args(const CacheLookupRequest* reqs, size_t n,
                                   EvalArgs& out) noexcept;

// `out` resized to n; out[i] is exactly what parse_cache_lookup_reply() gives for lookup i's
// reply alone (its entry's bytes moved out of `reply`). False, with `out` unspecified, unless
// 1 <= n <= cache_lookup_batch_max and the reply is an array of exactly 4n elements whose every
// group of 4 is a valid LOOKUP reply.
bool parse_cache_lookup_batch_reply(Reply&& reply, size_t n,
                                    std::vector<CacheLookup>& out) noexcept;

// ---- FAST LOOKUP (one MGET, no script: one Redis or Sentinel, never a Redis Cluster) ----
//
// A cache hit through LOOKUP BATCH costs Redis about 7 us of Lua per hit (building strings,
// copying the entry into Lua and back); a plain MGET of the same keys about 1.6 us. The fast
// lookup asks for the batch's entries under generations the worker guesses (the ones it last
// saw, ngx/cache/memo.hpp), and only what it cannot answer goes to LOOKUP BATCH.
//   MGET, lookup i of n (0-based, 1 <= n <= cache_lookup_batch_max) at argv[3i+1 .. 3i+3]:
//     generation_key(PREFIX, NS, ID), namespace_generation_key(PREFIX, NS),
//     entry_key(PREFIX, NS, ID, guess, KEY)
//   Lookup i is answered (a hit) when its generation keys hold the guessed generations as
//   canonical decimals ("0", "7") and its entry key a non-empty string: that is exactly LOOKUP's
//   answer at that instant (MGET is atomic; LOOKUP reads the same generations, builds the same
//   entry key, GETs it, and takes no lock on a hit), want_lock or not. Anything else -- a nil
//   (a missing key or, MGET cannot tell, a key of another type), another value, an empty
//   entry -- answers nothing: that lookup goes to LOOKUP BATCH, which tells an error from a
//   miss and takes the fill lock. So a guess of 0 matches only a generation key that holds
//   "0", never a missing one; STORE creates a missing generation key as "0" for this, so
//   that while an entry exists, both its generation keys do.

// Fills `out` (cleared first) with the MGET's argv (out.args(); out.keys() stays empty) for
// targets[0..n) under guesses[0..n). False, with `out` cleared, when n is 0 or above
// cache_lookup_batch_max, a namespace is not valid_namespace(), a guess is at or above 2^53,
// or memory runs out.
bool build_cache_fast_lookup_argv(const CacheTarget* targets,
                                  const core::cache::Generation* guesses, size_t n,
                                  EvalArgs& out) noexcept;

// `out` resized to n: out[i].hit when lookup i is answered (ns_gen and user_gen its guess, the
// entry's bytes moved out of `reply`, lock_taken false), else out[i] is a miss that answers
// nothing (ask LOOKUP BATCH). False, with `out` unspecified, unless 1 <= n <=
// cache_lookup_batch_max and the reply is an array of exactly 3n nils and bulk strings (an
// error reply included: ask LOOKUP BATCH for all).
bool parse_cache_fast_lookup_reply(Reply&& reply, const core::cache::Generation* guesses, size_t n,
                                   std::vector<CacheLookup>& out) noexcept;

// The entry key LOOKUP read (core::cache::entry_key() with these generations). May throw
// std::bad_alloc.
std::string cache_entry_key(const CacheTarget& t, const core::cache::Generation& gen);

// SET fill_lock_key(E) TOKEN NX PX lock_ttl_ms: the fill lock for refreshing a stale entry
// (Client::command()). Empty when lock_ttl_ms < 1 or the token is not valid_fill_token(). May
// throw std::bad_alloc. The reply is Status "OK" when taken, Nil when another holds it:
// parse_cache_fill_lock_reply().
std::vector<std::string> cache_fill_lock_argv(const CacheTarget& t,
                                              const core::cache::Generation& gen,
                                              std::string_view token, int64_t lock_ttl_ms);
bool parse_cache_fill_lock_reply(const Reply& reply, bool& taken) noexcept;

// ---- STORE ----

// Fills `out` (cleared first) to store `entry` (core::cache::encode()'s bytes) under the
// generations LOOKUP returned, for ttl_ms (stale_until - now), by the filler holding `token`,
// waking waiters on `channel` (cache_fill_channel()). False when the namespace is not valid, the
// entry or the channel is empty, ttl_ms is outside 1 .. cache_generation_ttl_ms, the token is
// not valid_fill_token(), or memory runs out.
bool build_cache_store_args(const CacheTarget& t, const core::cache::Generation& gen,
                            std::string_view token, std::string_view entry, int64_t ttl_ms,
                            std::string_view channel, EvalArgs& out) noexcept;

// `stored`: 1 (stored) or 0 (a generation moved since the lookup: not stored). False unless the
// reply is the integer 0 or 1.
bool parse_cache_store_reply(const Reply& reply, bool& stored) noexcept;

// ---- RELEASE ----

// Fills `out` (cleared first) to drop the fill lock `token` holds on the entry under the
// generations LOOKUP returned and wake its waiters on `channel`. False when the namespace is not
// valid, the channel is empty, the token is not valid_fill_token(), or memory runs out.
bool build_cache_release_args(const CacheTarget& t, const core::cache::Generation& gen,
                              std::string_view token, std::string_view channel,
                              EvalArgs& out) noexcept;

// `had_waiters`: 1 (a waiter mark existed: "0" E was published) or 0. False unless the reply is
// the integer 0 or 1.
bool parse_cache_release_reply(const Reply& reply, bool& had_waiters) noexcept;

// ---- RENEW ----

// Fills `out` (cleared first) to extend the fill lock of entry key E (cache_entry_key()) to
// lease_ms from now if it still holds `token`. False when E is empty, the token is not
// valid_fill_token(), lease_ms < 1, or memory runs out.
bool build_cache_renew_args(std::string_view entry_key, std::string_view token, int64_t lease_ms,
                            EvalArgs& out) noexcept;

// `held`: 1 (renewed: the lock is still this filler's) or 0 (it is not any more). False unless
// the reply is the integer 0 or 1.
bool parse_cache_renew_reply(const Reply& reply, bool& held) noexcept;

// ---- wake-up messages ----

// ---- ABANDON ----
// A LOOKUP that wanted the fill lock got no answer (timeout, connection lost): Redis may still
// have run it and taken the lock for a filler that will never fill. ABANDON recomputes E from
// the current generations (as LOOKUP does), DELs E":l" if it holds TOKEN (the lock that lookup
// may have taken; another filler's stays), and, unless another filler holds the lock, wakes
// marked waiters with "0"+E (they look up again or go upstream). Without it the orphan lock
// would hold every request for the key for up to a lease.
//   KEYS = generation_key(PREFIX, NS, ID), namespace_generation_key(PREFIX, NS)
//   ARGV = PREFIX, NS, ID, KEYHEX, channel, TOKEN     Reply: 1 if the lock was deleted, else 0.
bool build_cache_abandon_args(const CacheTarget& t, std::string_view token,
                              std::string_view channel, EvalArgs& out) noexcept;
bool parse_cache_abandon_reply(const Reply& reply, bool& released) noexcept;

// The pub/sub channel STORE and RELEASE publish on: prefix "cache:filled". May throw
// std::bad_alloc.
std::string cache_fill_channel(std::string_view prefix);

// Splits a message received on that channel: `stored` from the flag byte, `entry_key` (a view
// into `msg`) the rest. False unless the first byte is '0' or '1' and the rest is non-empty.
bool parse_cache_fill_message(std::string_view msg, bool& stored,
                              std::string_view& entry_key) noexcept;

// ---- INVALIDATE ----

// The user's generation in each of namespaces[0..n) (the location's own and those
// throttle_cache_invalidate names). False when n == 0, a namespace is not valid, or memory runs
// out.
bool build_cache_invalidate_args(std::string_view prefix, std::string_view id,
                                 const std::string_view* namespaces, size_t n,
                                 EvalArgs& out) noexcept;
inline bool build_cache_invalidate_args(std::string_view prefix, std::string_view id,
                                        const std::vector<std::string_view>& namespaces,
                                        EvalArgs& out) noexcept {
    return build_cache_invalidate_args(prefix, id, namespaces.data(), namespaces.size(), out);
}

// The same, and publishes the new generations on `channel` (the fill channel; empty: publish
// nothing) in one message, "u" ID " " GEN ":" NS [" " GEN ":" NS ...] (NS in the order given):
// every host's local tier hears the write (ngx/cache/local.hpp). INVALIDATE's ARGV is then
// generation_ttl_ms, CHANNEL, ID, NS x n. False also for an empty id with a channel.
bool build_cache_invalidate_args(std::string_view prefix, std::string_view id,
                                 const std::string_view* namespaces, size_t n,
                                 std::string_view channel, EvalArgs& out) noexcept;

// A user's write on the fill channel: `id` and `rest` (views into `msg`) for
// next_cache_user_generation(). False unless msg is "u" ID " " and more.
bool parse_cache_user_message(std::string_view msg, std::string_view& id,
                              std::string_view& rest) noexcept;
// The next "GEN:NS" of `rest` (advanced past it). False at the end or at a malformed item (the
// rest is then dropped).
bool next_cache_user_generation(std::string_view& rest, uint64_t& gen,
                                std::string_view& ns) noexcept;

// The namespace's generation: every user's entries in it at once. False when the namespace is
// not valid or memory runs out.
bool build_cache_invalidate_namespace_args(std::string_view prefix, std::string_view ns,
                                           EvalArgs& out) noexcept;

// The new generations, one per key (resized to n). False unless the reply is an array of
// exactly n integers in [1, 2^53).
bool parse_cache_invalidate_reply(const Reply& reply, size_t n,
                                  std::vector<uint64_t>& generations) noexcept;

// ---- Redis Cluster variants (see "On a Redis Cluster" above) ----
//
// LOOKUP BATCH CLUSTER: KEYS = generation_key(PREFIX, NS, ID) per lookup (all of one slot),
//   ARGV = 8 per lookup: LOOKUP's 7, then NSGEN (the mirror's value, canonical decimal < 2^53).
//   Reply and all-or-nothing checks as LOOKUP BATCH; the reply's ns_gen is NSGEN.
// STORE CLUSTER: STORE's keys without the namespace generation key (4), STORE's ARGV; stores
//   when the user generation still holds USERGEN (NSGEN only names E). It PEXPIREs the user
//   generation key and creates none (a cluster has no FAST LOOKUP).
// ABANDON CLUSTER: KEYS = generation_key(PREFIX, NS, ID), ARGV = ABANDON's 6, then NSGEN.
// PURGE CLUSTER: KEYS = namespace_generation_key(PREFIX, NS), ARGV = generation_ttl_ms, CHANNEL,
//   NS: INCR, PEXPIRE, PUBLISH CHANNEL "g" GEN ":" NS; reply: [GEN] (parse_cache_invalidate_reply
//   with n = 1). The module sends it on one Redis too (the purge handler, whenever the fill
//   channel runs): the message is what moves every host's local tier (ngx/cache/local.hpp).
// NS GENERATION: KEYS = namespace_generation_key(PREFIX, NS), ARGV = ttl_ms: the generation (0
//   when missing); when it exists its expiry is pushed to ttl_ms (cache_ns_generation_ttl_ms: a
//   day more than any entry lives, so a generation key outlives every entry stored under it
//   while some worker reads it once in a while).
const Script& cache_lookup_batch_cluster_script();
const Script& cache_store_cluster_script();
const Script& cache_abandon_cluster_script();
const Script& cache_purge_cluster_script();
const Script& cache_ns_generation_script();

inline constexpr int64_t cache_ns_generation_ttl_ms =
    cache_generation_ttl_ms + int64_t(86400) * 1000;

// ns_gens[i]: lookup i's namespace generation. False as build_cache_lookup_batch_args(), or
// for a generation at or above 2^53.
bool build_cache_lookup_batch_cluster_args(const CacheLookupRequest* reqs, const uint64_t* ns_gens,
                                           size_t n, EvalArgs& out) noexcept;
bool build_cache_store_cluster_args(const CacheTarget& t, const core::cache::Generation& gen,
                                    std::string_view token, std::string_view entry, int64_t ttl_ms,
                                    std::string_view channel, EvalArgs& out) noexcept;
bool build_cache_abandon_cluster_args(const CacheTarget& t, uint64_t ns_gen, std::string_view token,
                                      std::string_view channel, EvalArgs& out) noexcept;
bool build_cache_purge_cluster_args(std::string_view prefix, std::string_view ns,
                                    std::string_view channel, EvalArgs& out) noexcept;
bool build_cache_ns_generation_args(std::string_view prefix, std::string_view ns,
                                    EvalArgs& out) noexcept;
// False unless the reply is an integer in [0, 2^53).
bool parse_cache_ns_generation_reply(const Reply& reply, uint64_t& gen) noexcept;
// A PURGE CLUSTER message on the fill channel: "g" GEN ":" NS. False for anything else (the
// fill messages "0"/"1" E among them).
bool parse_cache_purge_message(std::string_view msg, uint64_t& gen, std::string_view& ns) noexcept;

}  // namespace throttle::redis
