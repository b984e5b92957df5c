// The slot table: lookups, LRU eviction, keyed keys (no key byte ever in the block), attach
// after reload, position independence, a randomized comparison against a straightforward
// model, and the changed keys (mode=sync's flushes): listed once, taken in steps, a full walk
// after an overflow, kept across attach, and no unsent count ever left behind.
#include "core/slot_table.hpp"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <list>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

using throttle::core::KeyDigest;
using throttle::core::LookupResult;
using throttle::core::OwnSecret;
using throttle::core::SipKey;
using throttle::core::SlotTable;
using throttle::core::State;
using throttle::core::StoredKey;
using throttle::core::ZoneKeyer;

// An 8-byte aligned block.
struct Block {
    explicit Block(size_t bytes) : words((bytes + 7) / 8), size(bytes) {}
    void* data() { return words.data(); }
    std::vector<uint64_t> words;
    size_t size;
};

const SipKey test_seed{0x0123456789abcdefULL, 0xfedcba9876543210ULL};
const OwnSecret test_secret{1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16,
                            17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
const ZoneKeyer test_keyer("test-secret-0123456789abcdef", 28, "zone");

SlotTable* make_table(Block& b) {
    return SlotTable::create(b.data(), b.size, test_seed, test_secret);
}

// The smallest block that gives a table of at least `slots` slots.
size_t block_for(size_t slots) {
    size_t size = 64;
    Block probe(1 << 16);
    while (SlotTable::create(probe.data(), size, test_seed, test_secret) == nullptr ||
           SlotTable::create(probe.data(), size, test_seed, test_secret)->capacity() < slots) {
        size += 8;
    }
    return size;
}

std::string key_of(int i) {
    return "key-" + std::to_string(i);
}

// A client key as the zone stores it: its keyed digest.
StoredKey key(const SlotTable* t, const std::string& k, const ZoneKeyer& keyer = test_keyer) {
    return t->make_key(keyer.digest(k.data(), k.size()));
}

LookupResult lookup(SlotTable* t, const std::string& k) {
    return t->lookup(key(t, k));
}

State* find(SlotTable* t, const std::string& k) {
    return t->find(key(t, k));
}

bool same(const State& a, const State& b) {
    return a.stamp == b.stamp && a.cur == b.cur && a.prev == b.prev;
}

bool is_zero(const State& s) {
    return same(s, State{});
}

bool same_key(const StoredKey& a, const StoredKey& b) {
    return a.hash == b.hash && a.digest == b.digest;
}

TEST(SlotTable, InsertAndFindMany) {
    Block b(1 << 20);
    SlotTable* t = make_table(b);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(static_cast<void*>(t), b.data());
    const int n = static_cast<int>(t->capacity());
    for (int i = 0; i < n; i++) {
        LookupResult r = lookup(t, key_of(i));
        ASSERT_NE(r.state, nullptr);
        ASSERT_TRUE(r.inserted) << i;
        ASSERT_FALSE(r.evicted) << i;
        ASSERT_TRUE(is_zero(*r.state));
        r.state->stamp = i;
        r.state->cur = static_cast<uint32_t>(i * 3);
        r.state->prev = static_cast<uint32_t>(i * 7);
    }
    EXPECT_EQ(t->size(), static_cast<size_t>(n));
    EXPECT_EQ(t->evictions(), 0u);
    for (int i = 0; i < n; i++) {
        State* s = find(t, key_of(i));
        ASSERT_NE(s, nullptr) << i;
        EXPECT_EQ(s->stamp, i);
        EXPECT_EQ(s->cur, static_cast<uint32_t>(i * 3));
        EXPECT_EQ(s->prev, static_cast<uint32_t>(i * 7));

        LookupResult r = lookup(t, key_of(i));
        EXPECT_FALSE(r.inserted);
        EXPECT_FALSE(r.evicted);
        EXPECT_EQ(r.state, s);
    }
    EXPECT_EQ(find(t, key_of(n)), nullptr);
    EXPECT_EQ(find(t, "key-"), nullptr);
    EXPECT_EQ(t->size(), static_cast<size_t>(n));
}

TEST(SlotTable, Density) {
    Block b(1 << 20);
    SlotTable* t = make_table(b);
    ASSERT_NE(t, nullptr);
    std::printf("capacity per MiB: %zu keys, bytes_per_key: %zu\n", t->capacity(),
                SlotTable::bytes_per_key());
    EXPECT_GE(t->capacity(), 11000u);            // limit_req: about 8,000
    EXPECT_GE(t->capacity(), 13500u);            // 72-byte slots since keys are digests
    EXPECT_LE(SlotTable::bytes_per_key(), 77u);  // 72-byte slot + bucket head + ring quarter
    // bytes_per_key() counts a whole bucket head per slot; there are fewer heads than slots,
    // so it is an upper bound and the table holds at least size / bytes_per_key() keys.
    EXPECT_GE(t->capacity(), (b.size - 256) / SlotTable::bytes_per_key());
    // Density holds at other sizes too: every byte but the header is worth a slot and a head.
    for (size_t size : {size_t{32} << 10, size_t{100} << 10, size_t{10} << 20}) {
        Block big(size);
        SlotTable* u = make_table(big);
        ASSERT_NE(u, nullptr);
        EXPECT_GE(u->capacity(), (size - 256) / SlotTable::bytes_per_key()) << size;
    }
}

TEST(SlotTable, CreateTooSmall) {
    Block b(4096);
    for (size_t size : {size_t{0}, size_t{8}, size_t{64}, size_t{200}, size_t{500}}) {
        EXPECT_EQ(SlotTable::create(b.data(), size, test_seed, test_secret), nullptr) << size;
    }
    EXPECT_EQ(SlotTable::create(nullptr, 4096, test_seed, test_secret), nullptr);

    size_t min = block_for(8);
    SlotTable* t = SlotTable::create(b.data(), min, test_seed, test_secret);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->capacity(), 8u);
    EXPECT_EQ(SlotTable::create(b.data(), min - 8, test_seed, test_secret), nullptr);
    EXPECT_LE(min, 8 * SlotTable::bytes_per_key() + 256);
}

TEST(SlotTable, CreateRejectsMisalignedMemory) {
    Block b(8192);
    void* odd = static_cast<unsigned char*>(b.data()) + 4;
    EXPECT_EQ(SlotTable::create(odd, 4096, test_seed, test_secret), nullptr);
    EXPECT_EQ(SlotTable::attach(odd, 4096), nullptr);
}

TEST(SlotTable, LruEvictionOrderIsExact) {
    Block b(block_for(8));
    SlotTable* t = make_table(b);
    ASSERT_NE(t, nullptr);
    const int cap = static_cast<int>(t->capacity());
    ASSERT_EQ(cap, 8);

    for (int i = 0; i < cap; i++) {
        LookupResult r = lookup(t, key_of(i));
        ASSERT_TRUE(r.inserted);
        ASSERT_FALSE(r.evicted);
        r.state->stamp = 1000 + i;
    }
    // Touch key 0 and key 2: the oldest untouched key is now 1, then 3, 4, ...
    EXPECT_FALSE(lookup(t, key_of(0)).inserted);
    EXPECT_FALSE(lookup(t, key_of(2)).inserted);
    // find() does not protect a key.
    ASSERT_NE(find(t, key_of(1)), nullptr);

    const int expected_victims[] = {1, 3, 4, 5, 6, 7, 0, 2};
    int next = cap;
    for (int v : expected_victims) {
        ASSERT_NE(find(t, key_of(v)), nullptr) << v;
        LookupResult r = lookup(t, key_of(next));
        EXPECT_TRUE(r.inserted);
        ASSERT_TRUE(r.evicted);
        EXPECT_EQ(r.victim.stamp, 1000 + v) << "expected victim " << v;
        EXPECT_TRUE(is_zero(*r.state));
        EXPECT_EQ(find(t, key_of(v)), nullptr) << v;
        r.state->stamp = 1000 + next;
        next++;
        EXPECT_EQ(t->size(), static_cast<size_t>(cap));
    }
    EXPECT_EQ(t->evictions(), 8u);
    for (int i = cap; i < next; i++) {
        State* s = find(t, key_of(i));
        ASSERT_NE(s, nullptr);
        EXPECT_EQ(s->stamp, 1000 + i);
    }
}

TEST(SlotTable, EvictionReportsVictimState) {
    Block b(block_for(8));
    SlotTable* t = make_table(b);
    ASSERT_NE(t, nullptr);
    for (size_t i = 0; i < t->capacity(); i++) {
        State* s = lookup(t, key_of(static_cast<int>(i))).state;
        s->stamp = -5 - static_cast<int64_t>(i);
        s->cur = 0xdeadbeef;
        s->prev = static_cast<uint32_t>(i);
    }
    LookupResult r = lookup(t, "newcomer");
    ASSERT_TRUE(r.evicted);
    EXPECT_EQ(r.victim.stamp, -5);
    EXPECT_EQ(r.victim.cur, 0xdeadbeefu);
    EXPECT_EQ(r.victim.prev, 0u);
    EXPECT_TRUE(is_zero(*r.state));
    // A hit or an insert into a free slot reports no victim.
    LookupResult hit = lookup(t, "newcomer");
    EXPECT_FALSE(hit.evicted);
    EXPECT_FALSE(hit.inserted);
    EXPECT_TRUE(is_zero(hit.victim));
}

// Finds every occurrence of `needle` in the block.
bool block_contains(Block& b, const std::string& needle) {
    const auto* hay = static_cast<const unsigned char*>(b.data());
    for (size_t i = 0; i + needle.size() <= b.size; i++) {
        if (std::memcmp(hay + i, needle.data(), needle.size()) == 0) {
            return true;
        }
    }
    return false;
}

// Keys of 1, 32 (a Django session key) and 200 bytes, and a 10 KB one: all distinct, found
// again, and not one byte string of any of them (nor of its unkeyed SHA-256) is in the block.
TEST(SlotTable, KeysAreKeyedDigestsNeverKeyBytes) {
    Block b(64 << 10);
    SlotTable* t = make_table(b);
    ASSERT_NE(t, nullptr);

    std::string session = "q8ixt1mb3n2vdw0a7zyl5kpo9cr4fhgj";  // 32 chars, like Django's
    std::string long_key(200, 'x');
    for (size_t i = 0; i < long_key.size(); i++) {
        long_key[i] = static_cast<char>('a' + (i * 7) % 26);
    }
    std::string huge(10 * 1024, 'h');
    huge.back() = 'H';
    std::string prefix = huge.substr(0, huge.size() - 1);
    std::vector<std::string> keys = {"Z", session, long_key, huge, prefix, std::string(1, '\0')};
    for (size_t i = 0; i < keys.size(); i++) {
        LookupResult r = lookup(t, keys[i]);
        ASSERT_TRUE(r.inserted) << i;
        r.state->stamp = static_cast<int64_t>(i + 1);
    }
    EXPECT_EQ(t->size(), keys.size());
    for (size_t i = 0; i < keys.size(); i++) {
        ASSERT_NE(find(t, keys[i]), nullptr) << i;
        EXPECT_EQ(find(t, keys[i])->stamp, static_cast<int64_t>(i + 1)) << i;
        EXPECT_FALSE(lookup(t, keys[i]).inserted) << i;
    }
    EXPECT_FALSE(block_contains(b, session));
    EXPECT_FALSE(block_contains(b, session.substr(0, 8)));
    EXPECT_FALSE(block_contains(b, long_key.substr(0, 16)));
    EXPECT_FALSE(block_contains(b, huge.substr(0, 16)));
    throttle::core::Sha256Digest d = throttle::core::sha256(session.data(), session.size());
    EXPECT_FALSE(block_contains(b, std::string(reinterpret_cast<const char*>(d.data()), 16)));
    // What is there: the keyed digest.
    KeyDigest kd = test_keyer.digest(session.data(), session.size());
    EXPECT_TRUE(
        block_contains(b, std::string(reinterpret_cast<const char*>(kd.data()), kd.size())));
}

// Another secret, or another zone under the same secret: unrelated digests, so the table
// finds none of the keys made under the first keying.
TEST(SlotTable, KeyingDecidesTheDigest) {
    Block b(64 << 10);
    SlotTable* t = make_table(b);
    ASSERT_NE(t, nullptr);
    ZoneKeyer same("test-secret-0123456789abcdef", 28, "zone");
    ZoneKeyer other_secret("test-secret-0123456789abcdeX", 28, "zone");
    ZoneKeyer other_zone("test-secret-0123456789abcdef", 28, "zonf");
    EXPECT_EQ(same.fingerprint(), test_keyer.fingerprint());
    EXPECT_NE(other_secret.fingerprint(), test_keyer.fingerprint());
    EXPECT_NE(other_zone.fingerprint(), test_keyer.fingerprint());
    for (int i = 0; i < 100; i++) {
        lookup(t, key_of(i));
    }
    for (int i = 0; i < 100; i++) {
        std::string k = key_of(i);
        EXPECT_NE(t->find(key(t, k, same)), nullptr);
        EXPECT_EQ(t->find(key(t, k, other_secret)), nullptr);
        EXPECT_EQ(t->find(key(t, k, other_zone)), nullptr);
    }
    // The digest is not the fingerprint's kind of value, nor the plain HMAC of the key.
    std::string k = "abc";
    KeyDigest kd = test_keyer.digest(k.data(), k.size());
    throttle::core::Sha256Digest plain =
        throttle::core::hmac_sha256("test-secret-0123456789abcdef", 28, k.data(), k.size());
    EXPECT_NE(std::memcmp(kd.data(), plain.data(), kd.size()), 0);
}

// The digest is HMAC-SHA256 under the zone key, truncated (RFC 4231 test case 2's vector
// checks the HMAC itself; here the construction).
TEST(ZoneKeyer, Construction) {
    const std::string secret = "test-secret-0123456789abcdef";
    const char zone_label[] = "throttle-zone-key";
    std::string msg(zone_label, sizeof zone_label);
    msg += "zone";
    throttle::core::Sha256Digest zk =
        throttle::core::hmac_sha256(secret.data(), secret.size(), msg.data(), msg.size());
    throttle::core::Sha256Digest full =
        throttle::core::hmac_sha256(zk.data(), zk.size(), "203.0.113.7", 11);
    KeyDigest kd = test_keyer.digest("203.0.113.7", 11);
    EXPECT_EQ(std::memcmp(kd.data(), full.data(), kd.size()), 0);
    EXPECT_EQ(throttle::core::hex(kd), throttle::core::hex(full.data(), 16));
    // The same value the Perl tests compute (Throttle::Redis::zone_digest).
    EXPECT_EQ(throttle::core::hex(kd), "75328ec372f8c459f5eb812025328e4d");
}

TEST(SlotTable, OwnSecretAndKeyingSurviveAttachAndClear) {
    Block b(64 << 10);
    SlotTable* t = make_table(b);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->own_secret(), test_secret);
    EXPECT_EQ(t->keying(), KeyDigest{});  // a new table: no keying yet
    t->set_keying(test_keyer.fingerprint());
    lookup(t, "a");
    SlotTable* u = SlotTable::attach(b.data(), b.size);
    ASSERT_EQ(u, t);
    EXPECT_EQ(u->own_secret(), test_secret);
    EXPECT_EQ(u->keying(), test_keyer.fingerprint());
    u->clear();
    EXPECT_EQ(u->own_secret(), test_secret);
    EXPECT_EQ(u->keying(), test_keyer.fingerprint());
    EXPECT_EQ(find(u, "a"), nullptr);
}

TEST(SlotTable, AttachSeesKeysAndTag) {
    Block b(256 << 10);
    SlotTable* t = make_table(b);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->tag(), 0u);
    t->set_tag(0x1122334455667788ULL);
    for (int i = 0; i < 1000; i++) {
        lookup(t, key_of(i)).state->stamp = i;
    }

    SlotTable* u = SlotTable::attach(b.data(), b.size);
    ASSERT_EQ(u, t);
    EXPECT_EQ(u->tag(), 0x1122334455667788ULL);
    EXPECT_EQ(u->size(), 1000u);
    EXPECT_EQ(u->capacity(), t->capacity());
    for (int i = 0; i < 1000; i++) {
        State* s = find(u, key_of(i));
        ASSERT_NE(s, nullptr);
        EXPECT_EQ(s->stamp, i);
    }
    // The seed survives: the same key hashes the same way.
    EXPECT_EQ(key(u, "abc").hash, key(t, "abc").hash);
}

TEST(SlotTable, AttachRejectsGarbageAndWrongSize) {
    Block b(256 << 10);
    EXPECT_EQ(SlotTable::attach(b.data(), b.size), nullptr);  // all zero

    std::mt19937_64 rng(7);
    for (auto& w : b.words) {
        w = rng();
    }
    EXPECT_EQ(SlotTable::attach(b.data(), b.size), nullptr);

    SlotTable* t = make_table(b);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(SlotTable::attach(b.data(), b.size - 8), nullptr);
    EXPECT_EQ(SlotTable::attach(b.data(), b.size / 2), nullptr);
    EXPECT_EQ(SlotTable::attach(b.data(), 0), nullptr);
    EXPECT_EQ(SlotTable::attach(nullptr, b.size), nullptr);
    EXPECT_EQ(SlotTable::attach(b.data(), b.size), t);

    // A corrupted magic word is refused.
    uint32_t magic;
    std::memcpy(&magic, b.data(), sizeof magic);
    EXPECT_EQ(magic, SlotTable::magic_value);
    magic ^= 1;
    std::memcpy(b.data(), &magic, sizeof magic);
    EXPECT_EQ(SlotTable::attach(b.data(), b.size), nullptr);
}

TEST(SlotTable, Clear) {
    Block b(block_for(16));
    SlotTable* t = make_table(b);
    ASSERT_NE(t, nullptr);
    t->set_tag(42);
    uint64_t h = key(t, "abc").hash;
    const size_t cap = t->capacity();
    for (size_t i = 0; i < cap + 5; i++) {
        lookup(t, key_of(static_cast<int>(i))).state->stamp = 1;
    }
    EXPECT_EQ(t->size(), cap);
    EXPECT_EQ(t->evictions(), 5u);

    t->clear();
    EXPECT_EQ(t->size(), 0u);
    EXPECT_EQ(t->evictions(), 0u);
    EXPECT_EQ(t->tag(), 42u);
    EXPECT_EQ(key(t, "abc").hash, h);
    for (size_t i = 0; i < cap + 5; i++) {
        EXPECT_EQ(find(t, key_of(static_cast<int>(i))), nullptr);
    }
    int visited = 0;
    t->for_each([&](const StoredKey&, State&) { visited++; });
    EXPECT_EQ(visited, 0);
    // Full capacity is available again without eviction.
    for (size_t i = 0; i < cap; i++) {
        LookupResult r = lookup(t, "again-" + std::to_string(i));
        EXPECT_TRUE(r.inserted);
        EXPECT_FALSE(r.evicted);
        EXPECT_TRUE(is_zero(*r.state));
    }
    EXPECT_TRUE(lookup(t, "one-more").evicted);
}

TEST(SlotTable, ForEachIsMostRecentFirst) {
    Block b(16 << 10);
    SlotTable* t = make_table(b);
    ASSERT_NE(t, nullptr);
    for (int i = 0; i < 5; i++) {
        lookup(t, key_of(i)).state->stamp = i;
    }
    lookup(t, key_of(2));
    find(t, key_of(0));  // no effect on the order
    std::vector<int64_t> order;
    t->for_each([&](const StoredKey& k, State& s) {
        order.push_back(s.stamp);
        std::string name = key_of(static_cast<int>(s.stamp));
        EXPECT_TRUE(same_key(k, key(t, name)));
        s.cur = 99;  // states are writable through for_each
    });
    EXPECT_EQ(order, (std::vector<int64_t>{2, 4, 3, 1, 0}));
    EXPECT_EQ(find(t, key_of(3))->cur, 99u);
}

TEST(SlotTable, SeedChangesHashes) {
    Block b1(16 << 10), b2(16 << 10);
    SlotTable* t1 = SlotTable::create(b1.data(), b1.size, SipKey{1, 2}, test_secret);
    SlotTable* t2 = SlotTable::create(b2.data(), b2.size, SipKey{3, 4}, test_secret);
    ASSERT_NE(t1, nullptr);
    ASSERT_NE(t2, nullptr);
    EXPECT_NE(key(t1, "abc").hash, key(t2, "abc").hash);
}

TEST(SlotTable, PositionIndependent) {
    Block a(block_for(64));
    SlotTable* t = make_table(a);
    ASSERT_NE(t, nullptr);
    const int cap = static_cast<int>(t->capacity());
    t->set_tag(9);
    for (int i = 0; i < cap; i++) {
        lookup(t, key_of(i)).state->stamp = i;
    }
    lookup(t, key_of(0));  // protect key 0: key 1 is now the oldest

    Block copy(a.size);
    std::memcpy(copy.data(), a.data(), a.size);
    std::memset(a.data(), 0xa5, a.size);  // the original is gone

    SlotTable* u = SlotTable::attach(copy.data(), copy.size);
    ASSERT_NE(u, nullptr);
    EXPECT_EQ(static_cast<void*>(u), copy.data());
    EXPECT_EQ(u->tag(), 9u);
    EXPECT_EQ(u->size(), static_cast<size_t>(cap));
    for (int i = 0; i < cap; i++) {
        State* s = find(u, key_of(i));
        ASSERT_NE(s, nullptr);
        EXPECT_EQ(s->stamp, i);
    }
    LookupResult r = lookup(u, "fresh");
    ASSERT_TRUE(r.evicted);
    EXPECT_EQ(r.victim.stamp, 1);
    r = lookup(u, "fresh2");
    ASSERT_TRUE(r.evicted);
    EXPECT_EQ(r.victim.stamp, 2);
}

// A model the table must agree with exactly: a map plus a list, front = most recent.
class Model {
   public:
    explicit Model(size_t capacity) : capacity_(capacity) {}

    struct Result {
        bool inserted = false;
        bool evicted = false;
        State victim;
        State* state = nullptr;
    };

    Result lookup(const std::string& k) {
        Result r;
        auto it = map_.find(k);
        if (it != map_.end()) {
            order_.splice(order_.begin(), order_, it->second.pos);
            r.state = &it->second.state;
            return r;
        }
        if (map_.size() == capacity_) {
            const std::string& old = order_.back();
            auto victim = map_.find(old);
            r.evicted = true;
            r.victim = victim->second.state;
            map_.erase(victim);
            order_.pop_back();
            evictions_++;
        }
        order_.push_front(k);
        Entry& e = map_[k];
        e.pos = order_.begin();
        r.inserted = true;
        r.state = &e.state;
        return r;
    }

    State* find(const std::string& k) {
        auto it = map_.find(k);
        return it == map_.end() ? nullptr : &it->second.state;
    }

    void clear() {
        map_.clear();
        order_.clear();
        evictions_ = 0;
    }

    size_t size() const { return map_.size(); }
    uint64_t evictions() const { return evictions_; }
    const std::list<std::string>& order() const { return order_; }

   private:
    struct Entry {
        State state;
        std::list<std::string>::iterator pos;
    };
    size_t capacity_;
    std::unordered_map<std::string, Entry> map_;
    std::list<std::string> order_;
    uint64_t evictions_ = 0;
};

TEST(SlotTable, RandomizedAgainstModel) {
    Block b(block_for(16));
    SlotTable* t = make_table(b);
    ASSERT_NE(t, nullptr);
    Model m(t->capacity());

    std::mt19937_64 rng(20240601);
    // A key pool three times the capacity, of all shapes: empty, short, exactly 32 bytes,
    // 33 bytes, long, and pairs that differ only in the last byte.
    std::vector<std::string> pool;
    pool.push_back("");
    while (pool.size() < 3 * t->capacity()) {
        size_t shape = rng() % 5;
        size_t len = shape == 0   ? rng() % 8
                     : shape == 1 ? 32
                     : shape == 2 ? 33
                     : shape == 3 ? rng() % 40
                                  : 100 + rng() % 400;
        std::string k(len, '\0');
        for (auto& c : k) {
            c = static_cast<char>('a' + rng() % 3);  // few letters: many near misses
        }
        pool.push_back(k);
        if (len > 0 && rng() % 4 == 0) {
            k.back() = static_cast<char>(k.back() ^ 0x40);
            pool.push_back(k);
        }
    }

    int64_t stamp = 0;
    uint64_t total_evictions = 0;
    for (int op = 0; op < 100000; op++) {
        const std::string& k = pool[rng() % pool.size()];
        unsigned what = static_cast<unsigned>(rng() % 100);
        if (what < 70) {
            LookupResult r = lookup(t, k);
            Model::Result e = m.lookup(k);
            ASSERT_EQ(r.inserted, e.inserted) << "op " << op;
            ASSERT_EQ(r.evicted, e.evicted) << "op " << op;
            if (e.evicted) {
                ASSERT_TRUE(same(r.victim, e.victim)) << "op " << op;
            }
            ASSERT_NE(r.state, nullptr);
            ASSERT_TRUE(same(*r.state, *e.state)) << "op " << op;
            stamp++;
            r.state->stamp = e.state->stamp = stamp;
            r.state->cur = e.state->cur = static_cast<uint32_t>(r.state->cur + 1);
            r.state->prev = e.state->prev = static_cast<uint32_t>(rng());
        } else if (what < 99) {
            State* s = find(t, k);
            State* e = m.find(k);
            ASSERT_EQ(s == nullptr, e == nullptr) << "op " << op;
            if (e != nullptr) {
                ASSERT_TRUE(same(*s, *e)) << "op " << op;
            }
        } else if (rng() % 20 == 0) {
            total_evictions += m.evictions();
            t->clear();
            m.clear();
        }
        ASSERT_EQ(t->size(), m.size());
        ASSERT_EQ(t->evictions(), m.evictions());

        if (op % 97 == 0) {
            std::vector<StoredKey> seen;
            t->for_each([&](const StoredKey& sk, State&) { seen.push_back(sk); });
            ASSERT_EQ(seen.size(), m.order().size());
            size_t i = 0;
            for (const std::string& mk : m.order()) {
                ASSERT_TRUE(same_key(seen[i], key(t, mk))) << "op " << op << " position " << i;
                i++;
            }
        }
    }
    total_evictions += m.evictions();
    EXPECT_GT(total_evictions, 10000u);  // eviction was exercised, not just lookups
}

}  // namespace

// --- Changed keys (mode=sync's flushes walk only them).

// A pass over the changed keys in steps of `step`; returns the digests visited (in order).
std::vector<StoredKey> pass(SlotTable* t, size_t step, size_t* steps = nullptr) {
    std::vector<StoredKey> seen;
    SlotTable::ChangedWalk w = t->begin_changed();
    size_t n = 0;
    bool more = true;
    while (more) {
        more = t->take_changed(w, step, [&](const StoredKey& k, State&) { seen.push_back(k); });
        n++;
        EXPECT_LE(n, t->capacity() + t->changed_capacity() + 1) << "a pass must end";
        if (n > t->capacity() + t->changed_capacity() + 1) {
            break;
        }
    }
    if (steps != nullptr) {
        *steps = n;
    }
    return seen;
}

bool contains(const std::vector<StoredKey>& v, const StoredKey& k) {
    for (const StoredKey& x : v) {
        if (same_key(x, k)) {
            return true;
        }
    }
    return false;
}

TEST(SlotTableChanged, ListedOnceTakenInStepsThenEmpty) {
    Block b(64 << 10);
    SlotTable* t = make_table(b);
    ASSERT_NE(t, nullptr);
    ASSERT_GE(t->changed_capacity(), 100u);
    EXPECT_EQ(t->changed_listed(), 0u);
    EXPECT_TRUE(pass(t, 4).empty());  // a new table has nothing to flush
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 50; i++) {
            lookup(t, key_of(i));
        }
    }
    EXPECT_EQ(t->changed_listed(), 50u);  // each key once, however often it was looked up
    EXPECT_FALSE(t->changed_overflow());
    size_t steps = 0;
    std::vector<StoredKey> seen = pass(t, 7, &steps);
    ASSERT_EQ(seen.size(), 50u);
    EXPECT_EQ(steps, 8u);  // ceil(50 / 7): never more than a step per take_changed()
    for (int i = 0; i < 50; i++) {
        EXPECT_TRUE(contains(seen, key(t, key_of(i)))) << i;
    }
    EXPECT_EQ(t->changed_listed(), 0u);
    EXPECT_TRUE(pass(t, 7).empty());  // nothing changed since: nothing visited
    // find() changes nothing; mark_changed() lists a key, and only a key that is there.
    find(t, key_of(3));
    EXPECT_TRUE(pass(t, 7).empty());
    EXPECT_TRUE(t->mark_changed(key(t, key_of(3))));
    EXPECT_FALSE(t->mark_changed(key(t, "absent")));
    seen = pass(t, 7);
    ASSERT_EQ(seen.size(), 1u);
    EXPECT_TRUE(same_key(seen[0], key(t, key_of(3))));
}

TEST(SlotTableChanged, OverflowFallsBackToAFullWalk) {
    Block b(block_for(64));
    SlotTable* t = make_table(b);
    ASSERT_NE(t, nullptr);
    const size_t ring = t->changed_capacity();
    ASSERT_LT(ring, t->capacity());
    const int n = static_cast<int>(ring) + 5;  // fits the table, not the ring
    for (int i = 0; i < n; i++) {
        lookup(t, key_of(i));
    }
    EXPECT_EQ(t->changed_listed(), ring);
    EXPECT_TRUE(t->changed_overflow());
    size_t steps = 0;
    std::vector<StoredKey> seen = pass(t, 3, &steps);
    for (int i = 0; i < n; i++) {
        EXPECT_TRUE(contains(seen, key(t, key_of(i)))) << i;  // not one key left out
    }
    // Every slot, then the ring: at most `step` of them per take_changed().
    EXPECT_GE(steps, (t->capacity() + ring) / 3);
    EXPECT_FALSE(t->changed_overflow());
    EXPECT_EQ(t->changed_listed(), 0u);
    EXPECT_TRUE(pass(t, 3).empty());  // back to listing: nothing changed since
    lookup(t, key_of(1));
    seen = pass(t, 3);
    ASSERT_EQ(seen.size(), 1u);
}

TEST(SlotTableChanged, ChangesDuringAPassAreVisitedNowOrByTheNext) {
    Block b(block_for(400));
    SlotTable* t = make_table(b);
    ASSERT_NE(t, nullptr);
    for (int full = 0; full < 2; full++) {
        const int n = full ? static_cast<int>(t->changed_capacity()) + 20 : 60;
        for (int i = 0; i < n; i++) {
            lookup(t, key_of(i));
        }
        ASSERT_EQ(t->changed_overflow(), full == 1);
        SlotTable::ChangedWalk w = t->begin_changed();
        std::vector<StoredKey> seen;
        auto take = [&](const StoredKey& k, State&) { seen.push_back(k); };
        ASSERT_TRUE(t->take_changed(w, 5, take));
        // Between two steps (the lock released): keys already visited change again, new keys
        // come.
        for (const StoredKey& k : std::vector<StoredKey>(seen)) {
            t->lookup(k);
        }
        for (int i = 0; i < 10; i++) {
            lookup(t, "new-" + std::to_string(full) + "-" + std::to_string(i));
        }
        while (t->take_changed(w, 5, take)) {
        }
        for (int i = 0; i < n; i++) {
            EXPECT_TRUE(contains(seen, key(t, key_of(i)))) << i;
        }
        std::vector<StoredKey> next = pass(t, 5);
        for (int i = 0; i < 5; i++) {
            EXPECT_TRUE(contains(next, seen[static_cast<size_t>(i)])) << "changed again: " << i;
        }
        for (int i = 0; i < 10; i++) {
            StoredKey k = key(t, "new-" + std::to_string(full) + "-" + std::to_string(i));
            EXPECT_TRUE(contains(seen, k) || contains(next, k)) << "new: " << i;
        }
        EXPECT_TRUE(pass(t, 5).empty());
    }
}

TEST(SlotTableChanged, SurviveAttachAndMove) {
    Block b(block_for(200));
    SlotTable* t = make_table(b);
    ASSERT_NE(t, nullptr);
    for (int i = 0; i < 30; i++) {
        lookup(t, key_of(i));
    }
    // A pass half done when nginx reloads: the rest is still listed in the block.
    SlotTable::ChangedWalk w = t->begin_changed();
    std::vector<StoredKey> seen;
    t->take_changed(w, 10, [&](const StoredKey& k, State&) { seen.push_back(k); });
    ASSERT_EQ(seen.size(), 10u);

    Block copy(b.size);  // mapped elsewhere after the reload
    std::memcpy(copy.data(), b.data(), b.size);
    std::memset(b.data(), 0x5a, b.size);
    SlotTable* u = SlotTable::attach(copy.data(), copy.size);
    ASSERT_NE(u, nullptr);
    EXPECT_EQ(u->changed_listed(), 20u);
    std::vector<StoredKey> rest = pass(u, 4);
    EXPECT_EQ(rest.size(), 20u);
    for (int i = 0; i < 30; i++) {
        StoredKey k = key(u, key_of(i));
        EXPECT_TRUE(contains(seen, k) != contains(rest, k)) << i;  // exactly one of them
    }
    // The overflow note survives too.
    for (int i = 0; i < static_cast<int>(u->capacity()); i++) {
        lookup(u, key_of(i));
    }
    ASSERT_TRUE(u->changed_overflow());
    SlotTable* v = SlotTable::attach(copy.data(), copy.size);
    ASSERT_NE(v, nullptr);
    EXPECT_TRUE(v->changed_overflow());
    std::vector<StoredKey> all = pass(v, 64);  // every slot, then the ring's entries
    EXPECT_EQ(all.size(), v->capacity() + v->changed_capacity());
    for (int i = 0; i < static_cast<int>(v->capacity()); i++) {
        EXPECT_TRUE(contains(all, key(v, key_of(i)))) << i;
    }
}

TEST(SlotTableChanged, ClearForgetsTheChangedKeys) {
    Block b(block_for(64));
    SlotTable* t = make_table(b);
    ASSERT_NE(t, nullptr);
    for (int i = 0; i < static_cast<int>(t->capacity()); i++) {
        lookup(t, key_of(i));
    }
    EXPECT_TRUE(t->changed_overflow());
    t->clear();
    EXPECT_FALSE(t->changed_overflow());
    EXPECT_EQ(t->changed_listed(), 0u);
    EXPECT_TRUE(pass(t, 8).empty());
    lookup(t, "after");
    EXPECT_EQ(pass(t, 8).size(), 1u);
}

// No lost counts: requests count unsent requests into keys (each lookup adds to unsent_cur, as
// a sync zone's decision does); flushes take them in random steps, some of which "fail" and
// give the counts back (mark_changed, as sync_flush's settle() does); the table is sometimes
// attached again, and its small ring overflows now and then. Whatever was counted is either
// taken by a successful flush or still in the table, and after a last pass nothing is left.
TEST(SlotTableChanged, RandomizedNoLostCounts) {
    for (uint64_t seed = 1; seed <= 6; seed++) {
        std::mt19937_64 rng(seed);
        Block b(block_for(seed % 2 ? 64 : 512));
        SlotTable* t = make_table(b);
        ASSERT_NE(t, nullptr);
        // Fewer keys than slots: nothing is evicted (eviction drops counts by design).
        const int keys = static_cast<int>(t->capacity()) - 1;
        uint64_t counted = 0, flushed = 0;
        auto flush = [&](bool fail, bool traffic) {
            SlotTable::ChangedWalk w = t->begin_changed();
            bool more = true;
            while (more) {
                std::vector<std::pair<StoredKey, uint32_t>> taken;
                more = t->take_changed(w, 1 + rng() % 9, [&](const StoredKey& k, State& s) {
                    if (s.unsent_cur > 0) {
                        taken.emplace_back(k, s.unsent_cur);
                        s.unsent_cur = 0;
                    }
                });
                // Requests between two steps.
                for (int r = traffic ? static_cast<int>(rng() % 6) : 0; r > 0; r--) {
                    lookup(t, key_of(static_cast<int>(rng() % keys))).state->unsent_cur++;
                    counted++;
                }
                for (auto& [k, n] : taken) {
                    if (fail) {
                        State* s = t->find(k);
                        ASSERT_NE(s, nullptr);
                        s->unsent_cur += n;
                        ASSERT_TRUE(t->mark_changed(k));
                    } else {
                        flushed += n;
                    }
                }
            }
        };
        for (int round = 0; round < 400; round++) {
            int burst = static_cast<int>(rng() % (round % 50 == 0 ? 4 * keys : 12));
            for (int r = 0; r < burst; r++) {
                lookup(t, key_of(static_cast<int>(rng() % keys))).state->unsent_cur++;
                counted++;
            }
            if (rng() % 20 == 0) {
                t = SlotTable::attach(b.data(), b.size);  // a reload
                ASSERT_NE(t, nullptr);
            }
            flush(rng() % 5 == 0, true);
            uint64_t left = 0;
            t->for_each([&](const StoredKey&, State& s) { left += s.unsent_cur; });
            ASSERT_EQ(flushed + left, counted) << "seed " << seed << " round " << round;
        }
        ASSERT_EQ(t->evictions(), 0u);
        flush(false, false);  // the last flush, no more traffic: takes everything
        uint64_t left = 0;
        t->for_each([&](const StoredKey&, State& s) { left += s.unsent_cur; });
        EXPECT_EQ(left, 0u) << "seed " << seed;
        EXPECT_EQ(flushed, counted) << "seed " << seed;
    }
}

// A key evicted while listed leaves its slot listed for the key that takes the slot: the ring
// never holds a slot twice and never grows past its size.
TEST(SlotTableChanged, EvictionKeepsTheRingConsistent) {
    Block b(block_for(32));
    SlotTable* t = make_table(b);
    ASSERT_NE(t, nullptr);
    std::mt19937_64 rng(3);
    for (int round = 0; round < 200; round++) {
        for (int r = static_cast<int>(rng() % 40); r > 0; r--) {
            lookup(t, key_of(static_cast<int>(rng() % 200)));
            ASSERT_LE(t->changed_listed(), t->changed_capacity());
        }
        if (rng() % 2) {
            bool overflow = t->changed_overflow();
            std::vector<StoredKey> seen = pass(t, 1 + rng() % 5);
            if (!overflow) {
                // Without an overflow, a pass visits each listed slot once.
                for (size_t i = 0; i < seen.size(); i++) {
                    for (size_t j = i + 1; j < seen.size(); j++) {
                        ASSERT_FALSE(same_key(seen[i], seen[j]));
                    }
                }
            }
            // Every key in the table now is listed fresh after its next lookup.
            EXPECT_EQ(t->changed_listed(), 0u);
        }
    }
    EXPECT_GT(t->evictions(), 0u);
}
