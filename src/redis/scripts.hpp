// The two Lua scripts the module runs in Redis (7.0), their argument builders and reply parsers
// (layer: redis). No nginx header, no hiredis type: arguments go to Client::evalsha(), replies
// come back as Reply.
//
// Key layout (hash-tag friendly: every key of one client key shares the tag {ZONE:KEY}, so a
// later Redis Cluster needs no migration):
//   BASE            = PREFIX "{" ZONE ":" KEY "}"        (base_key(); KEY: the stored key bytes,
//                     binary safe, may hold NUL, '{', '}', ':'; PREFIX should hold no '{',
//                     which would move the tag into it, and "{}" would make Redis hash whole
//                     names, putting a key's windows in different slots)
//   BASE ":" W      = sliding window starting at W (epoch ms, decimal, no sign, no leading zero):
//                     the number of requests counted in it over all hosts (a string integer)
//   BASE ":gcra"    = GCRA theoretical arrival time, epoch microseconds (a string integer)
//   BASE ":flush:" ID = a flush batch with this id was applied (FLUSH below; "1", short ttl)
// The scripts touch only these names, built from their KEYS. Both start with "#!lua" (Redis 7
// script flags, none set): in a cluster Redis refuses a script that touches a name outside its
// KEYS' slot (t/redis/scripts_test.cpp runs both on a one-node cluster). On a Redis Cluster the
// module makes one call per slot (ngx/limit/strict.cpp, sync_flush.cpp): strict's
// all-or-nothing holds within a call, and REFUND (below) gives back what one slot counted for
// a request another slot rejected.
//
// STRICT (mode=strict; one atomic call decides a batch of m >= 1 requests, in order, each
// all-or-nothing over its zones; a single request is a batch of one)
//   KEYS = the BASE of each distinct (zone key, policy) the batch uses, grouped by policy
//   ARGV[1] = the clock: "" for Redis' TIME (what the module sends), or epoch ms replacing it
//             (tests only)
//   then per policy 5 values: algorithm (0 sliding, 1 gcra), limit, period_ms, burst (0 =
//             limit; sliding ignores it, the builder sends 0), n: the next n KEYS use this
//             policy (the n's add up to #KEYS)
//   then the requests: per request, the KEYS index (1-based) of each of its zones, the first
//             one negated. Requests {A, B}, {C}, {A, B} over KEYS = A, B, C: -1 2 -3 -1 2.
//   now = Redis' TIME in whole ms (every host agrees on window edges), read once per call: every
//   request in the batch is decided at the same now. Each zone decides like core::evaluate() at
//   that now (src/core/sliding_window.hpp, gcra.hpp), with Redis' keys as the state, as left by
//   the requests before it in the batch:
//     sliding  W = now - now % P; cur = BASE:W, prev = BASE:(W - P) (missing: 0); the same
//              decision as core's, field for field (no clock-behind case: the keys are per
//              window).
//     gcra     core's formulas in µs instead of ns: TAT = BASE:gcra in µs (missing: 0),
//              T = max(1, floor(P * 1000 / L)) µs, C = burst ? burst : L (clamped to 1 .. 1e9),
//              now in µs = now_ms * 1000. Identical to core's decision whenever P * 1e6 / L is a
//              whole number of µs; otherwise T is rounded down to the µs (at most 1 µs per
//              request faster than written, core: 1 ns).
//   Only if every zone of a request admits is the request counted, in all of them (sliding:
//   cur + 1; gcra: TAT = new TAT); the next requests see it. A rejected request is counted
//   nowhere. Zones that would have admitted still report the decision core::evaluate() gives
//   (allowed, remaining as if counted), like local mode does. The end state is exactly what one
//   call per request at the same now would leave (one INCR per counted request, PEXPIRE 2P +
//   1000 when that INCR created the window key, SET BASE:gcra TAT PX ceil((TAT - now) / 1000) +
//   1000 per counted request), but each key is written once:
//     sliding  created by the batch (it held 0 or was missing): SET BASE:W count PX 2P + 1000;
//              otherwise INCR / INCRBY BASE:W, which keeps its expiry (set once at creation,
//              never refreshed).
//     gcra     SET BASE:gcra last_tat PX ceil((last_tat - now) / 1000) + 1000.
//   Redis work per call: TIME, one MGET of every key the batch reads (each once), one EXISTS of
//   those MGET found missing (a key of another type reads as missing there and must be an
//   error), then one write per key the batch counted in. (With a single KEYS entry, two GETs
//   replace MGET and EXISTS: cheaper for a lone request.)
//   Reply: [now_ms, then per request, per zone: v, reset_ms], flat, 1 + 2 * (zones in all),
//   where v = remaining when the zone admits (>= 0), -retry_after_ms when it refuses (<= -1).
//   Exactness: Lua numbers are doubles (exact integers below 2^53). Every decision is exact
//   while strict_exact() holds for each zone: sliding L * P < 2^53; gcra C * T < 2^52 µs (with
//   now < 2^52 µs, i.e. until 2112, every TAT stays below 2^53). The sliding script compares
//   prev * (P - e) <= (L - cur - 1) * P, whose right side is an exact integer below 2^53 (a
//   left side rounded above 2^53 still compares right), and every division goes through fmod,
//   which is exact. The module refuses mode=strict for a zone beyond that (1e9r/d sliding, for
//   example, is 8.64e16 > 2^53; 1e8r/d is fine).
//
// FLUSH (mode=sync; one call per batch of at most flush_batch_max keys, sliding window only)
//   KEYS = BASE of each key in the batch
//   ARGV = period_ms, batch id (1 to flush_id_max bytes, unique per batch: the module sends
//          pid, a random number and a sequence), id ttl (ms, >= 1), then per key 3 values:
//          W (window start, epoch ms), delta_cur, delta_prev
//   Idempotent: the first call with an id sets KEYS[1] ":flush:" ID (SET NX PX ttl; in KEYS[1]'s
//   slot, like everything else the call touches) and applies the deltas; a call with an id
//   already set -- a batch sent again because its reply did not come in time -- applies nothing
//   and only reads the totals. A sender must not send an id again once ttl may have run out.
//   Applying, per key: if delta_cur > 0, INCRBY BASE:W delta_cur and, if that created the key
//   (the result equals delta_cur), PEXPIREAT BASE:W W + 2P + 1000; likewise delta_prev on
//   BASE:(W - P) with PEXPIREAT (W - P) + 2P + 1000. The totals are INCRBY's results, and
//   read (missing: 0) for a window nothing was added to. A window whose expiry time has
//   already passed (a delta held through a long outage) is deleted at once by its PEXPIREAT
//   and reads 0 (the script compares with TIME, read once): it no longer weighs in any
//   decision anyway.
//   Every argument is checked before anything is written.
//   Reply: [g_cur, g_prev] per key, flat (core::sync::apply_global()'s inputs), then 1 when
//   this call applied the deltas, 0 when the id had been seen: 2n + 1 integers.
//
// Both scripts check their arguments and answer an error reply when they are malformed (wrong
// count, not a number); a key holding something else than an integer is an error reply too. The
// parsers turn any reply that is not exactly the expected shape into false, which the module
// treats as a Redis failure.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "redis/reply.hpp"
#include "redis/script.hpp"

namespace throttle::redis {

// PREFIX "{" ZONE ":" KEY "}". May throw std::bad_alloc.
std::string base_key(std::string_view prefix, std::string_view zone, std::string_view key);

// KEYS and ARGV of one script call: owned bytes and views of them for Client::evalsha()
// (which copies them, so an EvalArgs need only live until evalsha() returns). Views stay valid
// when more is added and when the EvalArgs is moved; it cannot be copied.
class EvalArgs {
   public:
    EvalArgs() = default;
    EvalArgs(EvalArgs&&) = default;
    EvalArgs& operator=(EvalArgs&&) = default;
    EvalArgs(const EvalArgs&) = delete;
    EvalArgs& operator=(const EvalArgs&) = delete;

    // May throw std::bad_alloc.
    void add_key(std::string_view key);
    void add_arg(std::string_view arg);
    void add_arg(int64_t value);
    void add_arg(uint64_t value);
    void add_arg(uint32_t value) { add_arg(static_cast<uint64_t>(value)); }
    void clear() noexcept;

    const std::vector<std::string_view>& keys() const noexcept { return keys_; }
    const std::vector<std::string_view>& args() const noexcept { return args_; }

   private:
    // Copies `bytes` where it stays until clear(); may throw std::bad_alloc.
    std::string_view store(std::string_view bytes);

    // The bytes, in blocks that never move (a reused EvalArgs allocates nothing once its
    // blocks hold a call's arguments): small arguments packed in blocks_ (kept by clear(), up
    // to max_kept_blocks), larger ones in a block of their own (large_, freed by clear()).
    static constexpr size_t block_size = 4096;
    static constexpr size_t max_kept_blocks = 16;
    std::vector<std::unique_ptr<char[]>> blocks_;
    std::vector<std::unique_ptr<char[]>> large_;
    size_t block_ = 0;  // the block being filled
    size_t used_ = 0;   // its bytes in use
    std::vector<std::string_view> keys_;
    std::vector<std::string_view> args_;
};

// The same KEYS and ARGV written once, in RESP ("$<len>\r\n<bytes>\r\n" each), for
// Target::evalsha(script, const EvalResp&, cb): a Client copies them after its EVALSHA header as
// they are, without formatting them again (it keeps that copy for a re-send after NOSCRIPT or a
// reconnect). Keys and arguments may come in any order. A reused EvalResp allocates nothing
// once its buffers have held a call that large.
class EvalResp {
   public:
    EvalResp() = default;
    EvalResp(const EvalResp&) = delete;
    EvalResp& operator=(const EvalResp&) = delete;

    // May throw std::bad_alloc.
    void add_key(std::string_view key) {
        put(keys_, key);
        nkeys_++;
    }
    void add_arg(std::string_view arg) {
        put(args_, arg);
        nargs_++;
    }
    void add_arg(int64_t value);
    void add_arg(uint64_t value);
    void add_arg(uint32_t value) { add_arg(static_cast<uint64_t>(value)); }
    // n arguments already in RESP (as args_resp() gives them). May throw std::bad_alloc.
    void add_args_resp(std::string_view resp, size_t n) {
        char* at = args_.room(resp.size());
        if (!resp.empty()) {
            std::memcpy(at, resp.data(), resp.size());
        }
        args_.size += resp.size();
        nargs_ += n;
    }
    void clear() noexcept;

    size_t nkeys() const noexcept { return nkeys_; }
    size_t nargs() const noexcept { return nargs_; }
    std::string_view keys_resp() const noexcept { return keys_.view(); }
    std::string_view args_resp() const noexcept { return args_.view(); }
    // Views of the keys and the arguments (into this EvalResp, valid until it changes), for a
    // target that needs them one by one. May throw std::bad_alloc.
    void views(std::vector<std::string_view>& keys, std::vector<std::string_view>& args) const;

   private:
    // Bytes written in place (a std::string's append costs more than the copy here).
    struct Buffer {
        std::unique_ptr<char[]> bytes;
        size_t size = 0;
        size_t capacity = 0;

        // Room for n more bytes at the end; may throw std::bad_alloc.
        char* room(size_t n) {
            if (capacity - size < n) {
                grow(n);
            }
            return bytes.get() + size;
        }
        void grow(size_t n);
        std::string_view view() const noexcept { return {bytes.get(), size}; }
    };
    static void put(Buffer& to, std::string_view bytes);
    template <typename Int>
    static void put_integer(Buffer& to, Int value);

    static constexpr size_t max_kept = 1 << 16;  // clear() frees a larger buffer
    Buffer keys_;
    Buffer args_;
    size_t nkeys_ = 0;
    size_t nargs_ = 0;
};

// ---- STRICT ----

struct StrictZone {
    uint8_t algorithm = 0;  // core::Algorithm: 0 sliding, 1 gcra
    uint64_t limit = 0;     // requests per period (0 is sent as 1, like core)
    int64_t period_ms = 0;  // (< 1 is sent as 1, like core)
    uint64_t burst = 0;     // gcra: bucket size, 0 = limit
    std::string base;       // base_key(prefix, zone, key)
};

struct StrictDecision {
    bool allowed = false;
    uint64_t remaining = 0;
    int64_t reset_ms = 0;
    int64_t retry_after_ms = 0;
};

// The script (batch form; one request is a batch of one), built on first use (may throw
// std::bad_alloc then) and never destroyed.
const Script& strict_script();
inline const Script& strict_batch_script() {
    return strict_script();
}

// The most requests the module should put in one strict call: the script runs atomically, so
// a long batch delays every other Redis client (it costs Redis about 1 to 4 µs per request,
// more when it creates many keys: see StrictBatchCostPerDecision in t/redis/scripts_test.cpp).
inline constexpr size_t strict_batch_max = 128;

// True when the strict script's arithmetic is exact for this policy (see above): sliding
// L * P < 2^53, gcra C * T_us <= 2^52 (limit, period and burst clamped like the script does).
bool strict_exact(uint8_t algorithm, uint64_t limit, int64_t period_ms, uint64_t burst) noexcept;
inline bool strict_exact(const StrictZone& z) noexcept {
    return strict_exact(z.algorithm, z.limit, z.period_ms, z.burst);
}

// For tests (the module sends batches: build_strict_batch_args()): fills `out` (cleared first)
// with the KEYS and ARGV of a strict call deciding one request over zones[0..n) (a batch of
// one). False when n == 0 or memory runs out.
bool build_strict_args(const StrictZone* zones, size_t n, EvalArgs& out) noexcept;
inline bool build_strict_args(const std::vector<StrictZone>& zones, EvalArgs& out) noexcept {
    return build_strict_args(zones.data(), zones.size(), out);
}

// Fills `out` (cleared first) with the KEYS and ARGV of one strict call deciding
// requests[0..m), in that order, each a list of zones. Zones with the same base and policy
// (within a request or across requests) share one KEYS entry. False when m == 0, a request is
// null or has no zone, or memory runs out. Any m works; the module should send at most
// strict_batch_max.
bool build_strict_batch_args(const std::vector<const std::vector<StrictZone>*>& requests,
                             EvalArgs& out) noexcept;
// The same, in RESP (what the module sends on one Redis).
bool build_strict_batch_args(const std::vector<const std::vector<StrictZone>*>& requests,
                             EvalResp& out) noexcept;

// Parses the reply of a strict call over one request of n zones into now_ms (Redis' clock,
// epoch ms) and out[0..n) (resized to n). False, with now_ms and out unspecified, unless the
// reply is an array of exactly 1 + 2n integers: now_ms >= 0, then per zone v (any integer but
// LLONG_MIN) and reset_ms >= 0.
bool parse_strict_reply(const Reply& reply, size_t n, int64_t& now_ms,
                        std::vector<StrictDecision>& out) noexcept;

// Parses the reply of a strict batch call: out[i] gets requests[i]'s decisions (zone_counts[i]
// of them; out is resized to zone_counts.size()). False, with now_ms and out unspecified, when
// zone_counts is empty or holds a 0, or the reply is not exactly what parse_strict_reply()
// takes for sum(zone_counts) zones.
bool parse_strict_batch_reply(const Reply& reply, const std::vector<size_t>& zone_counts,
                              int64_t& now_ms,
                              std::vector<std::vector<StrictDecision>>& out) noexcept;

// ---- REFUND (Redis Cluster) ----
//
// A request whose strict zones fall in several slots is decided by one strict call per slot;
// when a slot rejects it (or cannot answer), the slots that admitted it counted it: REFUND gives
// that back, so that a rejected request consumes nothing.
//   KEYS = the BASE of each zone to give back (one slot: the zones one strict call admitted)
//   ARGV = now_ms (the strict call's reply: the time it counted at), then per key 3 values:
//          algorithm (0 sliding, 1 gcra), limit, period_ms
//   sliding  BASE:W (W = now_ms - now_ms % P, the window it was counted in) is decremented by
//            one (DECR, which keeps its expiry), unless missing or 0: never below 0.
//   gcra     BASE:gcra, if present, moves back by one emission interval T (the strict script's
//            T), not below 0, its expiry kept (SET ... KEEPTTL).
//   Reply: 1. Not idempotent: sent once, never again (a refund lost to a timeout leaves the
//   request counted: under-admission, bounded by the refunds lost).
const Script& refund_script();
bool build_refund_args(int64_t now_ms, const std::vector<const StrictZone*>& zones,
                       EvalArgs& out) noexcept;

// ---- FLUSH ----

inline constexpr size_t flush_batch_max = 256;
inline constexpr size_t flush_id_max = 64;  // bytes of a batch id

struct FlushEntry {
    std::string base;         // base_key(prefix, zone, key)
    int64_t window = 0;       // core::sync::Delta::window
    uint32_t delta_cur = 0;   // added to BASE:window
    uint32_t delta_prev = 0;  // added to BASE:(window - period)
};

// Built on first use (may throw std::bad_alloc then) and never destroyed.
const Script& flush_script();

// Fills `out` (cleared first) with the KEYS and ARGV of a flush of entries[0..n) for a zone of
// period_ms (< 1 is sent as 1), as batch `batch_id` remembered by Redis for id_ttl_ms (< 1 is
// sent as 1). False when n == 0, the id is empty or longer than flush_id_max, or memory runs
// out. Any n works; the module sends at most flush_batch_max per call to keep each script short.
bool build_flush_args(int64_t period_ms, std::string_view batch_id, uint32_t id_ttl_ms,
                      const FlushEntry* entries, size_t n, EvalArgs& out) noexcept;
inline bool build_flush_args(int64_t period_ms, std::string_view batch_id, uint32_t id_ttl_ms,
                             const std::vector<FlushEntry>& entries, EvalArgs& out) noexcept {
    return build_flush_args(period_ms, batch_id, id_ttl_ms, entries.data(), entries.size(), out);
}

// Parses the reply of a flush of n keys into totals[0..n) = (g_cur, g_prev) (resized to n) and
// *applied (when not null): whether this call applied the deltas (false: the batch id had
// been seen). False unless the reply is an array of exactly 2n non-negative integers and a
// last 0 or 1.
bool parse_flush_reply(const Reply& reply, size_t n,
                       std::vector<std::pair<uint64_t, uint64_t>>& totals,
                       bool* applied = nullptr) noexcept;

// A script's source: "#!lua" (Redis 7 script flags, none set: in a cluster Redis refuses a name
// outside its KEYS' slot, and the script when it is out of memory), then, with `helpers`, the
// Lua helpers int(s), fmt(x), count(k) (non-negative integers below 2^53; count raises an
// error reply for a non-integer value), then `body` (which starts with a newline). May throw
// std::bad_alloc.
std::string source_of(std::string_view body, bool helpers);

}  // namespace throttle::redis
