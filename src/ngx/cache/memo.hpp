// Per-worker memos of the cache's costly computations (layer: ngx): identity digests (an
// HMAC per request; a session's requests repeat the same identity; core::cache::IdentityMemo:
// fixed size, keeps digests, never identities), inflated bodies of gzip entries served to
// clients that do not accept gzip (core::cache::InflateMemo: keyed by the stored gzip bytes,
// bounded in bytes), and the vary lists of varying resources (a round trip).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "core/cache_entry.hpp"
#include "core/cache_key.hpp"
#include "core/cache_vary.hpp"

namespace throttle::ngx {

// core::cache::identity_digest(secret, identity), through the memo. May throw std::bad_alloc.
std::string cache_identity(std::string_view secret, std::string_view identity);
// The same written to `out`; returns its length ("anon": 4, else 64). May throw std::bad_alloc.
size_t cache_identity_to(std::string_view secret, std::string_view identity, char (&out)[64]);

// core::cache::cache_key(in), from the worker's memo of recent inputs (8,192 slots)
// (core::cache::CacheKeyMemo). May throw std::bad_alloc.
core::Sha256Digest cache_request_key(const core::cache::CacheKeyInput& in);
// Plain bodies up to this size are inflated whole and memoised; larger ones are streamed
// (serve.cpp), never held whole.
inline constexpr size_t cache_plain_memo_max = 256 * 1024;
// The plain body of a gzip entry (v.plain_size bytes), through the worker's memo of inflated
// bodies (core/inflate_memo.hpp: found by the gzip bytes themselves, so users served the
// same body share it, and no user can be served another's). nullptr when the body does
// not inflate to exactly v.plain_size bytes; from_memo says whether the memo had it. May throw
// std::bad_alloc.
std::shared_ptr<const std::string> cache_plain_body(const core::cache::EntryView& v,
                                                    bool& from_memo);

// Bytes this worker holds for bodies inflated for clients that do not accept gzip (whole
// bodies and streams, counted per request while it lives), against throttle_cache_inflate_memory.
// cache_inflate_reserve() adds `bytes` unless the total would pass `bound` (then false).
bool cache_inflate_reserve(size_t bytes, size_t bound) noexcept;
void cache_inflate_release(size_t bytes) noexcept;
size_t cache_inflate_held() noexcept;

// The vary list last seen for a resource (core/cache_vary.hpp), by a tag of its location, host,
// path and query (cache_vary_tag(); the identity is not in it: a resource varies alike for every
// user). A hint only: a lookup that uses it reads the variant key at once (one round trip)
// instead of the base key's vary record first (two); a wrong or outdated list costs a miss,
// never a wrong answer (an entry under a variant key was stored by a response whose own Vary
// named exactly that list). Fixed size: cache_vary_memo_slots slots, direct-mapped.
inline constexpr size_t cache_vary_memo_slots = 1024;
bool cache_vary_memo_get(uint64_t tag, core::cache::VaryList& out) noexcept;
// Whether any slot is in use (none: no lookup needs the tag).
bool cache_vary_memo_used() noexcept;
void cache_vary_memo_put(uint64_t tag, const core::cache::VaryList& list) noexcept;
void cache_vary_memo_forget(uint64_t tag) noexcept;

// The generations this worker last saw for a target (namespace, identity digest; the prefix is
// the worker's one cache_prefix()) and for its namespace: the fast lookup's guess
// (fast_lookup.hpp). A hint only: the fast lookup serves an entry only when Redis holds
// exactly the guessed generations, so a wrong or outdated guess (another worker's write, a
// purge, two targets sharing a tag) costs the script call, never a wrong answer. Unknown: 0.
// Fixed size: cache_generation_memo_slots slots in sets of 4, keyed by a SipHash-1-3 of the
// namespace (and of its tag with the identity digest's first 16 bytes) under a random per-worker
// key (no memo without one: every guess is 0); each slot one
// 64-bit tag and one generation (128 KB per worker). Users and namespaces share it.
inline constexpr size_t cache_generation_memo_slots = 8192;
core::cache::Generation cache_generation_guess(std::string_view ns, std::string_view id) noexcept;
void cache_generation_seen(std::string_view ns, std::string_view id,
                           const core::cache::Generation& gen) noexcept;

// inflate_memo: the memo of inflated bodies' byte budget (throttle_cache_inflate_memo; 0: none).
void memos_init(size_t inflate_memo);  // may throw
void memos_exit() noexcept;

}  // namespace throttle::ngx
