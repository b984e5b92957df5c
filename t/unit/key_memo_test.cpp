// The per-worker key memo: what it returns is exactly what the table computes from the key's
// digest, for hits, misses, colliding and long keys, and after the keyer or the table changed.
#include "core/key_memo.hpp"

#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

namespace {

using throttle::core::KeyMemo;
using throttle::core::OwnSecret;
using throttle::core::SipKey;
using throttle::core::SlotTable;
using throttle::core::StoredKey;
using throttle::core::ZoneKeyer;

const OwnSecret test_secret{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

struct Table {
    explicit Table(uint64_t seed) : words(4096) {
        table = SlotTable::create(words.data(), words.size() * 8, SipKey{seed, ~seed}, test_secret);
    }
    std::vector<uint64_t> words;
    SlotTable* table = nullptr;
};

StoredKey expected(const ZoneKeyer& keyer, const SlotTable& t, const std::string& key) {
    return t.make_key(keyer.digest(key.data(), key.size()));
}

void expect_same(const StoredKey& a, const StoredKey& b) {
    EXPECT_EQ(a.hash, b.hash);
    EXPECT_EQ(a.digest, b.digest);
}

TEST(KeyMemo, HitsReturnWhatTheMissComputed) {
    Table t(7);
    ASSERT_NE(t.table, nullptr);
    ZoneKeyer keyer("test-secret-0123456789abcdef", 28, "zone");
    auto memo = std::make_unique<KeyMemo>();
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < 100; i++) {
            std::string key = "client-" + std::to_string(i);
            expect_same(memo->key(keyer, *t.table, key.data(), key.size()),
                        expected(keyer, *t.table, key));
        }
    }
    // 100 keys in 512 slots: most of rounds 2 and 3 hit (some keys share a slot)
    EXPECT_GT(memo->hits(), 150u);
    EXPECT_LE(memo->hits(), 200u);
}

TEST(KeyMemo, ManyKeysEvictAndStayCorrect) {
    Table t(7);
    ZoneKeyer keyer("test-secret-0123456789abcdef", 28, "zone");
    auto memo = std::make_unique<KeyMemo>();
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 3 * static_cast<int>(KeyMemo::slots); i++) {
            std::string key(4, '\0');
            key[0] = static_cast<char>(i);
            key[1] = static_cast<char>(i >> 8);
            expect_same(memo->key(keyer, *t.table, key.data(), key.size()),
                        expected(keyer, *t.table, key));
        }
    }
}

TEST(KeyMemo, PrefixesAndLongKeysAreNotConfused) {
    Table t(7);
    ZoneKeyer keyer("test-secret-0123456789abcdef", 28, "zone");
    auto memo = std::make_unique<KeyMemo>();
    std::string longest(KeyMemo::max_key, 'k'), longer(KeyMemo::max_key + 1, 'k');
    for (int round = 0; round < 2; round++) {
        for (const std::string& key : {std::string("a"), std::string("ab"), std::string("abc"),
                                       longest, longer, longer + "x"}) {
            expect_same(memo->key(keyer, *t.table, key.data(), key.size()),
                        expected(keyer, *t.table, key));
        }
    }
}

TEST(KeyMemo, AnotherKeyerOrTableStartsOver) {
    Table t1(7), t2(8);
    ZoneKeyer a("test-secret-0123456789abcdef", 28, "zone");
    ZoneKeyer b("test-secret-0123456789abcdef", 28, "other");
    ZoneKeyer c("another-secret-0123456789abcd", 29, "zone");
    auto memo = std::make_unique<KeyMemo>();
    std::string key = "client";
    for (int round = 0; round < 2; round++) {
        for (const ZoneKeyer* k : {&a, &b, &c}) {
            for (SlotTable* t : {t1.table, t2.table}) {
                expect_same(memo->key(*k, *t, key.data(), key.size()), expected(*k, *t, key));
                expect_same(memo->key(*k, *t, key.data(), key.size()), expected(*k, *t, key));
            }
        }
    }
}

}  // namespace
