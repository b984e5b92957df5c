// The local tier's table (core/local_cache.hpp): LRU, the byte bound, generations, the epoch.
#include "core/local_cache.hpp"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

using namespace throttle::core;
using namespace throttle::core::cache;

namespace {

struct Buffer {
    explicit Buffer(size_t n) : size(n), mem(static_cast<char*>(std::aligned_alloc(8, n))) {}
    ~Buffer() { std::free(mem); }
    size_t size;
    char* mem;
};

Sha256Digest key_of(int n) {
    std::string s = "key" + std::to_string(n);
    return sha256(s.data(), s.size());
}

const std::string user_a(64, 'a');
const std::string user_b(64, 'b');

LocalKey anon_key(int n, std::string_view ns = "review") {
    return LocalKey{ns, "anon", key_of(n)};
}

Generation gen(uint64_t ns, uint64_t user) {
    Generation g;
    g.ns = ns;
    g.user = user;
    return g;
}

constexpr int64_t now = 1'000'000;
constexpr int64_t ttl = 10'000;

struct LocalCacheTest : ::testing::Test {
    Buffer buf{256 * 1024};
    LocalCache* t = LocalCache::create(buf.mem, buf.size);

    bool put(const LocalKey& k, const Generation& g, std::string_view bytes, int64_t at = now) {
        return t->put(k, g, t->snapshot(), bytes, at + 60'000, at + 120'000, at);
    }
    bool get(const LocalKey& k, std::string& out, int64_t at = now) {
        return t->get(k, at, ttl, out);
    }
};

TEST_F(LocalCacheTest, StoresAndFinds) {
    ASSERT_NE(t, nullptr);
    std::string out;
    EXPECT_FALSE(get(anon_key(1), out));
    ASSERT_TRUE(put(anon_key(1), gen(0, 0), "hello"));
    ASSERT_TRUE(get(anon_key(1), out));
    EXPECT_EQ(out, "hello");
    EXPECT_FALSE(get(anon_key(2), out));
    EXPECT_FALSE(get(anon_key(1, "other"), out));  // the namespace is part of the key
    EXPECT_EQ(t->stats().entries, 1u);
    EXPECT_EQ(t->stats().stores, 1u);
}

TEST_F(LocalCacheTest, UsersNeverSeeEachOther) {
    LocalKey a{"review", user_a, key_of(1)};
    LocalKey b{"review", user_b, key_of(1)};  // same request key, another identity
    ASSERT_TRUE(put(a, gen(0, 0), "A's page"));
    std::string out;
    EXPECT_FALSE(get(b, out));
    EXPECT_FALSE(get(anon_key(1), out));
    ASSERT_TRUE(get(a, out));
    EXPECT_EQ(out, "A's page");
    ASSERT_TRUE(put(b, gen(0, 0), "B's page"));
    ASSERT_TRUE(get(a, out));
    EXPECT_EQ(out, "A's page");
    ASSERT_TRUE(get(b, out));
    EXPECT_EQ(out, "B's page");
}

TEST_F(LocalCacheTest, LargeBodiesSpanBlocksAndComeBackWhole) {
    std::string body;
    for (int i = 0; i < 5000; i++) {
        body += static_cast<char>('a' + i % 26);
    }
    ASSERT_TRUE(put(anon_key(1), gen(0, 0), body));
    std::string out;
    ASSERT_TRUE(get(anon_key(1), out));
    EXPECT_EQ(out, body);
    std::string huge(t->max_entry() + 1, 'x');
    EXPECT_FALSE(put(anon_key(2), gen(0, 0), huge));
}

TEST_F(LocalCacheTest, BoundedInBytesLeastRecentlyUsedGoesFirst) {
    std::string body(4000, 'x');
    size_t blocks = t->stats().blocks;
    ASSERT_TRUE(put(anon_key(0), gen(0, 0), body));
    std::string out;
    for (int i = 1; i < 500; i++) {
        ASSERT_TRUE(put(anon_key(i), gen(0, 0), body));
        ASSERT_TRUE(get(anon_key(0), out));  // 0 stays the most recently used
        ASSERT_LE(t->stats().blocks_used, blocks);
    }
    EXPECT_GT(t->stats().evictions, 0u);
    EXPECT_TRUE(get(anon_key(0), out));
    EXPECT_FALSE(get(anon_key(1), out));  // evicted long ago
    EXPECT_TRUE(get(anon_key(499), out));
}

TEST_F(LocalCacheTest, ReplacingAnEntryFreesItsBlocks) {
    std::string body(3000, 'y');
    for (int i = 0; i < 100; i++) {
        ASSERT_TRUE(put(anon_key(1), gen(0, 0), body));
    }
    EXPECT_EQ(t->stats().entries, 1u);
    EXPECT_EQ(t->stats().blocks_used, (body.size() + 511) / 512);
    EXPECT_EQ(t->stats().evictions, 0u);
}

TEST_F(LocalCacheTest, PurgeMessageMakesOlderEntriesUnusable) {
    ASSERT_TRUE(put(anon_key(1), gen(3, 0), "old"));
    t->ns_generation_seen("review", 4);
    std::string out;
    EXPECT_FALSE(get(anon_key(1), out));
    EXPECT_EQ(t->stats().entries, 0u);  // removed when met
    // A lookup answered before the purge comes back late: refused.
    EXPECT_FALSE(put(anon_key(1), gen(3, 0), "old"));
    ASSERT_TRUE(put(anon_key(1), gen(4, 0), "new"));
    ASSERT_TRUE(get(anon_key(1), out));
    EXPECT_EQ(out, "new");
    // Another namespace is untouched.
    ASSERT_TRUE(put(anon_key(1, "other"), gen(0, 0), "x"));
    t->ns_generation_seen("review", 5);
    EXPECT_TRUE(get(anon_key(1, "other"), out));
}

TEST_F(LocalCacheTest, ALookupThatSawANewerGenerationRaisesTheMirror) {
    ASSERT_TRUE(put(anon_key(1), gen(1, 0), "gen1"));
    // Another host purged; this host has not heard yet but a lookup saw generation 2.
    ASSERT_TRUE(put(anon_key(2), gen(2, 0), "gen2"));
    std::string out;
    EXPECT_FALSE(get(anon_key(1), out));
    EXPECT_TRUE(get(anon_key(2), out));
    t->observe("review", "anon", gen(3, 0), t->snapshot());
    EXPECT_FALSE(get(anon_key(2), out));
}

TEST_F(LocalCacheTest, UserWriteInvalidatesOnlyThatUser) {
    LocalKey a{"review", user_a, key_of(1)};
    LocalKey b{"review", user_b, key_of(1)};
    ASSERT_TRUE(put(a, gen(0, 5), "a5"));
    ASSERT_TRUE(put(b, gen(0, 2), "b2"));
    ASSERT_TRUE(put(anon_key(1), gen(0, 0), "anon"));
    t->user_generation_seen("review", user_a, 6);
    std::string out;
    EXPECT_FALSE(get(a, out));
    EXPECT_TRUE(get(b, out));
    EXPECT_TRUE(get(anon_key(1), out));
    EXPECT_FALSE(put(a, gen(0, 5), "a5 late"));  // looked up before the write
    ASSERT_TRUE(put(a, gen(0, 6), "a6"));
    ASSERT_TRUE(get(a, out));
    EXPECT_EQ(out, "a6");
    // The write in another namespace does not touch this one.
    t->user_generation_seen("other", user_b, 9);
    EXPECT_TRUE(get(b, out));
}

TEST_F(LocalCacheTest, UserTableOverflowInvalidatesMoreNeverLess) {
    LocalKey a{"review", user_a, key_of(1)};
    LocalSnapshot before = t->snapshot();  // a's lookup is sent now, sees generation 1
    // a writes (generation 2), the message arrives; then many other users' writes push a's
    // record out of the bounded table.
    t->user_generation_seen("review", user_a, 2);
    for (int i = 0; i < 100000 && t->snapshot().user_evictions == before.user_evictions; i++) {
        t->user_generation_seen("review", std::to_string(i), 1);
    }
    ASSERT_NE(t->snapshot().user_evictions, before.user_evictions);
    for (int i = 0; i < 5000; i++) {
        t->user_generation_seen("review", "u" + std::to_string(i), 1);
    }
    // a's lookup answer (generation 1) arrives now: it must not be stored.
    EXPECT_FALSE(t->put(a, gen(0, 1), before, "stale", now + 60'000, now + 120'000, now));
    std::string out;
    EXPECT_FALSE(get(a, out));
    // A lookup sent after all that stores.
    ASSERT_TRUE(put(a, gen(0, 2), "fresh"));
    EXPECT_TRUE(get(a, out));
}

TEST_F(LocalCacheTest, AnEvictedUserRecordHidesItsEntries) {
    LocalKey a{"review", user_a, key_of(1)};
    ASSERT_TRUE(put(a, gen(0, 1), "a"));
    for (int i = 0; i < 100000; i++) {
        t->user_generation_seen("review", std::to_string(i), 1);
    }
    std::string out;
    EXPECT_FALSE(get(a, out));  // no record: never served
}

TEST_F(LocalCacheTest, EpochBumpMakesEverythingOlderUnusable) {
    LocalSnapshot before = t->snapshot();
    ASSERT_TRUE(put(anon_key(1), gen(0, 0), "x"));
    t->bump_epoch();
    std::string out;
    EXPECT_FALSE(get(anon_key(1), out));
    // A lookup sent before the resubscription may have missed a message: refused.
    EXPECT_FALSE(t->put(anon_key(2), gen(0, 0), before, "y", now + 60'000, now + 120'000, now));
    ASSERT_TRUE(put(anon_key(2), gen(0, 0), "y"));
    EXPECT_TRUE(get(anon_key(2), out));
}

TEST_F(LocalCacheTest, EpochBumpStartsTheMirrorOver) {
    // Redis restarted empty: generations count from 0 again.
    ASSERT_TRUE(put(anon_key(1), gen(7, 0), "x"));
    LocalKey a{"review", user_a, key_of(1)};
    ASSERT_TRUE(put(a, gen(7, 4), "a"));
    LocalSnapshot before = t->snapshot();
    t->bump_epoch();
    t->observe("review", "anon", gen(9, 0), before);  // a lookup sent before: ignored
    ASSERT_TRUE(put(anon_key(1), gen(0, 0), "after restart"));
    ASSERT_TRUE(put(a, gen(0, 0), "a after restart"));
    std::string out;
    ASSERT_TRUE(get(anon_key(1), out));
    EXPECT_EQ(out, "after restart");
    ASSERT_TRUE(get(a, out));
    EXPECT_EQ(out, "a after restart");
}

TEST_F(LocalCacheTest, LocalAgeAndFreshnessBoundServing) {
    ASSERT_TRUE(t->put(anon_key(1), gen(0, 0), t->snapshot(), "x", now + 5'000, now + 60'000, now));
    std::string out;
    EXPECT_TRUE(t->get(anon_key(1), now + 4'000, ttl, out));
    EXPECT_FALSE(t->get(anon_key(1), now + 5'000, ttl, out));  // stale: Redis decides
    ASSERT_TRUE(
        t->put(anon_key(2), gen(0, 0), t->snapshot(), "y", now + 50'000, now + 60'000, now));
    EXPECT_TRUE(t->get(anon_key(2), now + ttl, ttl, out));
    EXPECT_FALSE(t->get(anon_key(2), now + ttl + 1, ttl, out));  // older than the local ttl
    EXPECT_FALSE(t->get(anon_key(2), now, ttl, out));            // and removed
    // Already stale or expired when stored: not kept.
    EXPECT_FALSE(t->put(anon_key(3), gen(0, 0), t->snapshot(), "z", now, now + 10, now));
}

TEST_F(LocalCacheTest, AttachKeepsEntriesAcrossReload) {
    ASSERT_TRUE(put(anon_key(1), gen(2, 0), "kept"));
    LocalCache* again = LocalCache::attach(buf.mem, buf.size);
    ASSERT_EQ(again, t);
    std::string out;
    ASSERT_TRUE(again->get(anon_key(1), now, ttl, out));
    EXPECT_EQ(out, "kept");
    EXPECT_EQ(LocalCache::attach(buf.mem, buf.size - 4096), nullptr);  // another size
    std::memset(buf.mem, 0, 8);
    EXPECT_EQ(LocalCache::attach(buf.mem, buf.size), nullptr);
}

TEST(LocalCacheSize, TooSmallIsRefused) {
    Buffer small(LocalCache::min_size() - 8);
    EXPECT_EQ(LocalCache::create(small.mem, small.size), nullptr);
    Buffer ok(LocalCache::min_size());
    LocalCache* t = LocalCache::create(ok.mem, ok.size);
    ASSERT_NE(t, nullptr);
    EXPECT_GT(t->max_entry(), 0u);
    EXPECT_EQ(t->max_entry(), LocalCache::max_entry_for(ok.size));
}

TEST(LocalCacheSize, ManyNamespacesFillTheTableThenRefuse) {
    Buffer b(256 * 1024);
    LocalCache* t = LocalCache::create(b.mem, b.size);
    int stored = 0;
    for (int i = 0; i < 200; i++) {
        std::string ns = "ns" + std::to_string(i);
        if (t->put(LocalKey{ns, "anon", key_of(i)}, gen(0, 0), t->snapshot(), "x", now + 60'000,
                   now + 120'000, now)) {
            stored++;
        }
    }
    EXPECT_EQ(stored, static_cast<int>(LocalCache::ns_slots));
}

}  // namespace

namespace {

// A random sequence of stores, reads, purge and write messages, epoch bumps and time steps,
// against a model of what may be served: the table never serves an entry the model says is
// invalidated (an older generation than any reported since the last epoch bump, an older
// epoch, past its local age), never other bytes than the last stored under that key, and
// never holds more blocks than it has.
TEST(LocalCacheModel, NeverServesWhatAnInvalidationCovers) {
    Buffer buf(160 * 1024);  // small: evictions and user-record evictions happen
    LocalCache* t = LocalCache::create(buf.mem, buf.size);
    ASSERT_NE(t, nullptr);
    std::mt19937_64 rng(12345);
    const std::vector<std::string> nss = {"a", "b"};
    std::vector<std::string> ids = {"anon"};
    for (int i = 0; i < 300; i++) {
        ids.push_back(std::string(60, 'u') + std::to_string(1000 + i));
    }
    struct Stored {
        std::string bytes;
        Generation gen;
        uint64_t epoch;
        int64_t at;
    };
    std::map<std::tuple<std::string, std::string, int>, Stored> last;
    // The model's mirror since the last bump: the max of what was reported.
    std::map<std::string, uint64_t> ns_max;
    std::map<std::pair<std::string, std::string>, uint64_t> user_max;
    // What "Redis" holds now: generations only move up.
    std::map<std::string, uint64_t> redis_ns;
    std::map<std::pair<std::string, std::string>, uint64_t> redis_user;
    uint64_t epoch = 1;
    int64_t now = 1'000'000;
    const int64_t ttl = 5'000;
    size_t served = 0;
    for (int step = 0; step < 200000; step++) {
        const std::string& ns = nss[rng() % nss.size()];
        const std::string& id = ids[rng() % (rng() % 4 == 0 ? ids.size() : 8)];
        const int k = int(rng() % 6);
        const auto key = std::make_tuple(ns, id, k);
        switch (rng() % 10) {
            case 0:
            case 1:
            case 2: {  // a lookup answered (sent now: its snapshot), stored
                LocalSnapshot seen = t->snapshot();
                Generation g;
                g.ns = redis_ns[ns];
                g.user = redis_user[{ns, id}];
                std::string bytes = "v" + std::to_string(step) + std::string(rng() % 3000, 'x');
                if (t->put(LocalKey{ns, id, key_of(k)}, g, seen, bytes, now + 60'000, now + 120'000,
                           now)) {
                    last[key] = Stored{bytes, g, epoch, now};
                }
                ns_max[ns] = std::max(ns_max[ns], g.ns);
                user_max[{ns, id}] = std::max(user_max[{ns, id}], g.user);
                break;
            }
            case 3: {  // a purge and its message
                uint64_t g = ++redis_ns[ns];
                t->ns_generation_seen(ns, g);
                ns_max[ns] = std::max(ns_max[ns], g);
                break;
            }
            case 4: {  // a user's write and its message
                uint64_t g = ++redis_user[{ns, id}];
                t->user_generation_seen(ns, id, g);
                user_max[{ns, id}] = std::max(user_max[{ns, id}], g);
                break;
            }
            case 5:
                if (rng() % 50 == 0) {  // a resubscription
                    t->bump_epoch();
                    epoch++;
                    ns_max.clear();
                    user_max.clear();
                }
                break;
            case 6:
                now += int64_t(rng() % 700);
                break;
            default: {  // a read
                std::string out;
                Generation g;
                if (!t->get(LocalKey{ns, id, key_of(k)}, now, ttl, out, &g)) {
                    break;
                }
                served++;
                auto it = last.find(key);
                ASSERT_NE(it, last.end()) << "served what was never stored";
                const Stored& s = it->second;
                ASSERT_EQ(out, s.bytes) << "served other bytes than the last stored";
                ASSERT_EQ(s.epoch, epoch) << "served an entry of an older epoch";
                ASSERT_LE(now - s.at, ttl) << "served past its local age";
                ASSERT_EQ(g.ns, ns_max[ns]) << "served under an older namespace generation";
                ASSERT_EQ(g.ns, redis_ns[ns]) << "a purge this host heard of";
                ASSERT_EQ(g.user, (redis_user[{ns, id}])) << "a write this host heard of";
                break;
            }
        }
        ASSERT_LE(t->stats().blocks_used, t->stats().blocks);
    }
    EXPECT_GT(served, 1000u);
    EXPECT_GT(t->stats().evictions, 0u);
    EXPECT_GT(t->stats().user_evictions, 0u);
}

}  // namespace
