// Per-worker memos (see memo.hpp).
#include "ngx/cache/memo.hpp"

#include <sys/random.h>

#include <algorithm>
#include <array>
#include <cstring>

#include "core/cache_identity.hpp"
#include "core/cache_key.hpp"
#include "core/gzip.hpp"
#include "core/inflate_memo.hpp"
#include "ngx/ngx.hpp"

namespace throttle::ngx {
namespace {

struct VarySlot {
    uint64_t tag = 0;
    bool used = false;
    core::cache::VaryList list;
};

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
