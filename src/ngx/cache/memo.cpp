// Per-worker memos (see memo.hpp).
#include "ngx/cache/memo.hpp"

#include <sys/random.h>

#include <algorithm>
#include <array>
#include <cstring>

#include "core/cache_identity.hpp"
#include "core/cache_key.hpp"
#include "core/gzip.hpp"
#include "core/hash.hpp"
#include "core/inflate_memo.hpp"
#include "ngx/ngx.hpp"

namespace throttle::ngx {
namespace {

struct VarySlot {
    uint64_t tag = 0;
    bool used = false;
    core::cache::VaryList list;
};

// One slot of the generation memo: a target's (or namespace's) tag, 0 when empty.
struct GenerationSlot {
    uint64_t tag = 0;
    uint64_t gen = 0;
};
constexpr size_t generation_ways = 4;
constexpr size_t generation_sets = cache_generation_memo_slots / generation_ways;
static_assert((generation_sets & (generation_sets - 1)) == 0, "a power of two");

struct Memos {
    std::string secret;  // the one `identities` hashes with
    // The identity memo's SipHash key, from getrandom(); without one (no entropy) there is no
    // identity memo: every lookup computes the HMAC.
    core::SipKey identity_key;
    bool identity_key_ok = false;
    std::unique_ptr<core::cache::IdentityMemo> identities;  // fixed size, keeps no identity
    // Inflated bodies, under a SipHash key of their own from getrandom(); without one (no
    // entropy) or with a budget of 0 there is none: every hit for a client without gzip inflates.
    std::unique_ptr<core::cache::InflateMemo> plain;
    std::array<VarySlot, cache_vary_memo_slots> vary;
    size_t vary_used = 0;  // slots in use
    std::unique_ptr<core::cache::CacheKeyMemo> keys;
    // The generation memo's key (no memo without one: every guess is 0) and slots.
    core::SipKey generation_key;
    bool generation_key_ok = false;
    std::array<GenerationSlot, cache_generation_memo_slots> generations{};
    char last_ns[64];  // the last namespace_tag() computed, for the next lookup
    size_t last_ns_len = 0;
    uint64_t last_ns_tag = 0;  // 0: none
};

Memos* memos = nullptr;   // owned; deleted in memos_exit
size_t inflate_held = 0;  // this worker's, see cache_inflate_reserve()

}  // namespace

size_t cache_identity_to(std::string_view secret, std::string_view identity, char (&out)[64]) {
    if (memos == nullptr || identity.empty() || !memos->identity_key_ok) {
        std::string d = core::cache::identity_digest(secret, identity);
        size_t n = std::min(d.size(), sizeof(out));  // "anon" or 64 hex digits
        std::memcpy(out, d.data(), n);
        return n;
    }
    if (!memos->identities || memos->secret != secret) {  // never mix digests of two secrets
        memos->identities.reset();
        memos->secret.assign(secret);
        memos->identities = std::make_unique<core::cache::IdentityMemo>(
            secret.data(), secret.size(), memos->identity_key);
    }
    return memos->identities->digest_to(identity, out);
}

std::string cache_identity(std::string_view secret, std::string_view identity) {
    char out[64];
    size_t n = cache_identity_to(secret, identity, out);
    return std::string(out, n);
}

std::shared_ptr<const std::string> cache_plain_body(const core::cache::EntryView& v,
                                                    bool& from_memo) {
    from_memo = false;
    if (memos != nullptr && memos->plain && v.plain_size <= cache_plain_memo_max) {
        uint64_t hits = memos->plain->hits();
        auto body = memos->plain->plain(v.body, v.plain_size);
        from_memo = memos->plain->hits() != hits;
        return body;
    }
    auto out = std::make_shared<std::string>();
    if (!core::gzip_decompress(v.body, *out, v.plain_size) || out->size() != v.plain_size) {
        return nullptr;
    }
    return out;
}

bool cache_inflate_reserve(size_t bytes, size_t bound) noexcept {
    if (bytes > bound || inflate_held > bound - bytes) {
        return false;
    }
    inflate_held += bytes;
    return true;
}

void cache_inflate_release(size_t bytes) noexcept {
    inflate_held -= bytes < inflate_held ? bytes : inflate_held;
}

size_t cache_inflate_held() noexcept {
    return inflate_held;
}

bool cache_vary_memo_get(uint64_t tag, core::cache::VaryList& out) noexcept {
    if (memos == nullptr) {
        return false;
    }
    const VarySlot& s = memos->vary[tag % cache_vary_memo_slots];
    if (!s.used || s.tag != tag) {
        return false;
    }
    out = s.list;
    return true;
}

bool cache_vary_memo_used() noexcept {
    return memos != nullptr && memos->vary_used > 0;
}

void cache_vary_memo_put(uint64_t tag, const core::cache::VaryList& list) noexcept {
    if (memos == nullptr) {
        return;
    }
    VarySlot& s = memos->vary[tag % cache_vary_memo_slots];
    memos->vary_used += s.used ? 0 : 1;
    s.tag = tag;
    s.used = true;
    s.list = list;
}

void cache_vary_memo_forget(uint64_t tag) noexcept {
    if (memos == nullptr) {
        return;
    }
    VarySlot& s = memos->vary[tag % cache_vary_memo_slots];
    if (s.used && s.tag == tag) {
        s.used = false;
        memos->vary_used--;
    }
}

namespace {

// A namespace's tag: SipHash-1-3 of a kind byte and the name, never 0; 0 when there is no memo.
// The last namespace's tag is kept (a worker's lookups mostly repeat one). The prefix is left
// out (one per worker: cache_prefix()).
uint64_t namespace_tag(std::string_view ns) noexcept {
    if (memos == nullptr || !memos->generation_key_ok) {
        return 0;
    }
    Memos& m = *memos;
    if (m.last_ns_tag != 0 && ns.size() == m.last_ns_len &&
        std::memcmp(ns.data(), m.last_ns, ns.size()) == 0) {
        return m.last_ns_tag;
    }
    char buf[1 + 255];
    const size_t nl = ns.size() < 255 ? ns.size() : 255;  // valid namespaces: at most 64
    buf[0] = 'n';
    std::memcpy(buf + 1, ns.data(), nl);
    uint64_t h = core::siphash13(m.generation_key, buf, 1 + nl);
    h = h != 0 ? h : 1;
    if (ns.size() <= sizeof m.last_ns) {
        std::memcpy(m.last_ns, ns.data(), ns.size());
        m.last_ns_len = ns.size();
        m.last_ns_tag = h;
    }
    return h;
}

// A user target's tag: SipHash-1-3 of a kind byte, the namespace's tag and the identity
// digest's first 16 bytes (64 bits of an HMAC, or "anon"), never 0; 0 without a namespace tag.
// Two identities that share those bytes only share a guess.
uint64_t user_tag(uint64_t ns_tag, std::string_view id) noexcept {
    if (ns_tag == 0) {
        return 0;
    }
    char buf[1 + 8 + 16];
    const size_t il = id.size() < 16 ? id.size() : 16;
    buf[0] = 'u';
    std::memcpy(buf + 1, &ns_tag, 8);
    std::memcpy(buf + 9, id.data(), il);
    uint64_t h = core::siphash13(memos->generation_key, buf, 9 + il);
    return h != 0 ? h : 1;
}

GenerationSlot* generation_find(uint64_t tag) noexcept {
    GenerationSlot* set = &memos->generations[(tag & (generation_sets - 1)) * generation_ways];
    for (size_t w = 0; w < generation_ways; w++) {
        if (set[w].tag == tag) {
            return &set[w];
        }
    }
    return nullptr;
}

uint64_t generation_get(uint64_t tag) noexcept {
    if (tag == 0) {
        return 0;
    }
    const GenerationSlot* s = generation_find(tag);
    return s != nullptr ? s->gen : 0;
}

void generation_put(uint64_t tag, uint64_t gen) noexcept {
    if (tag == 0) {
        return;
    }
    GenerationSlot* s = generation_find(tag);
    if (s == nullptr) {
        GenerationSlot* set = &memos->generations[(tag & (generation_sets - 1)) * generation_ways];
        s = &set[(tag >> 40) % generation_ways];  // a victim the tag picks: no LRU to keep
        for (size_t w = 0; w < generation_ways; w++) {
            if (set[w].tag == 0) {
                s = &set[w];
                break;
            }
        }
        s->tag = tag;
    }
    s->gen = gen;
}

}  // namespace

core::cache::Generation cache_generation_guess(std::string_view ns, std::string_view id) noexcept {
    core::cache::Generation g;
    const uint64_t nt = namespace_tag(ns);
    g.ns = generation_get(nt);
    g.user = generation_get(user_tag(nt, id));
    return g;
}

void cache_generation_seen(std::string_view ns, std::string_view id,
                           const core::cache::Generation& gen) noexcept {
    const uint64_t nt = namespace_tag(ns);
    generation_put(nt, gen.ns);
    generation_put(user_tag(nt, id), gen.user);
}

namespace {

// 16 bytes from the kernel's generator (false when it has none yet: early boot).
bool random_key(core::SipKey& key) noexcept {
    uint64_t k[2];
    if (getrandom(k, sizeof k, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof k)) {
        return false;
    }
    key.k0 = k[0];
    key.k1 = k[1];
    return true;
}

}  // namespace

void memos_init(size_t inflate_memo) {
    auto m = std::make_unique<Memos>();
    m->identity_key_ok = random_key(m->identity_key);
    core::SipKey plain_key;
    if (inflate_memo > 0 && random_key(plain_key)) {
        m->plain = std::make_unique<core::cache::InflateMemo>(plain_key, inflate_memo);
    }
    core::SipKey seed;
    if (!random_key(seed)) {
        // The key memo compares whole inputs: a guessable seed lets a client aim at slots (to
        // evict), never match another input.
        seed.k0 = (static_cast<uint64_t>(ngx_random()) << 32) ^ static_cast<uint64_t>(ngx_random());
        seed.k1 = (static_cast<uint64_t>(ngx_random()) << 32) ^ static_cast<uint64_t>(ngx_pid);
    }
    m->keys = std::make_unique<core::cache::CacheKeyMemo>(seed);
    m->generation_key_ok = random_key(m->generation_key);
    memos = m.release();
}

core::Sha256Digest cache_request_key(const core::cache::CacheKeyInput& in) {
    if (memos == nullptr || !memos->keys) {
        return core::cache::cache_key(in);
    }
    return memos->keys->key(in);
}

void memos_exit() noexcept {
    delete memos;
    memos = nullptr;
}

}  // namespace throttle::ngx
