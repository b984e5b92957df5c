// Verified identities: user id validation, the credential digest, the Redis value, and the
// shared-memory table (expiry, LRU eviction, erase, attach after reload, a random model check).
#include "core/identity.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/identity_table.hpp"

namespace {

namespace id = throttle::core::identity;
using throttle::core::HmacSha256Key;
using throttle::core::Sha256Digest;

struct Block {
    explicit Block(size_t bytes) : words((bytes + 7) / 8), size(bytes) {}
    void* data() { return words.data(); }
    std::vector<uint64_t> words;
    size_t size;
};

Sha256Digest digest_of(const std::string& credential) {
    static const HmacSha256Key key("0123456789abcdef", 16);
    return id::credential_digest(key, credential);
}

TEST(UserId, AcceptsPrintableAsciiUpTo64) {
    EXPECT_TRUE(id::valid_user_id("42"));
    EXPECT_TRUE(id::valid_user_id("user@example.com"));
    EXPECT_TRUE(id::valid_user_id(std::string(64, 'a')));
    EXPECT_FALSE(id::valid_user_id(""));
    EXPECT_FALSE(id::valid_user_id(std::string(65, 'a')));
    EXPECT_FALSE(id::valid_user_id(std::string(10240, 'a')));
    EXPECT_FALSE(id::valid_user_id("4 2"));
    EXPECT_FALSE(id::valid_user_id("4\r\n2"));
    EXPECT_FALSE(
        id::valid_user_id(std::string("4\0"
                                      "2",
                                      3)));
    EXPECT_FALSE(id::valid_user_id("4\x01"));
    EXPECT_FALSE(id::valid_user_id("\x7f"));
    EXPECT_FALSE(id::valid_user_id("caf\xc3\xa9"));
}

TEST(CredentialDigest, KeyedAndLabelled) {
    HmacSha256Key a("0123456789abcdef", 16);
    HmacSha256Key b("0123456789abcdeF", 16);
    EXPECT_EQ(id::credential_digest(a, "s1"), id::credential_digest(a, "s1"));
    EXPECT_NE(id::credential_digest(a, "s1"), id::credential_digest(a, "s2"));
    EXPECT_NE(id::credential_digest(a, "s1"), id::credential_digest(b, "s1"));
    // Not the plain HMAC of the credential (the cache's identity digest).
    EXPECT_NE(id::credential_digest(a, "s1"), a.mac("s1", 2));
}

TEST(RedisValue, RoundTripsAndRefusesGarbage) {
    std::string u = id::redis_value({id::Kind::user, "42"});
    EXPECT_EQ(u, "u:42");
    id::Resolution r = id::parse_redis_value(u);
    EXPECT_EQ(r.kind, id::Kind::user);
    EXPECT_EQ(r.id, "42");
    EXPECT_EQ(id::redis_value({id::Kind::anonymous, {}}), "a");
    EXPECT_EQ(id::parse_redis_value("a").kind, id::Kind::anonymous);
    for (const char* bad : {"", "u:", "u", "x:1", "u:4 2", "aa", "A", "u:\r\n"}) {
        EXPECT_EQ(id::parse_redis_value(bad).kind, id::Kind::none) << bad;
    }
    EXPECT_EQ(id::parse_redis_value("u:" + std::string(65, 'a')).kind, id::Kind::none);
}

TEST(IdentityTable, FindPutExpireErase) {
    Block b(64 * 1024);
    id::Table* t = id::Table::create(b.data(), b.size);
    ASSERT_NE(t, nullptr);
    Sha256Digest d = digest_of("session");
    EXPECT_EQ(t->find(d, 0).kind, id::Kind::none);
    t->put(d, {id::Kind::user, "42"}, 1000, 0);
    id::Entry e = t->find(d, 999);
    EXPECT_EQ(e.kind, id::Kind::user);
    EXPECT_EQ(std::string(e.id, e.id_len), "42");
    EXPECT_EQ(e.expires_ms, 1000);
    EXPECT_EQ(t->find(d, 1000).kind, id::Kind::none);  // expired: removed
    EXPECT_EQ(t->size(), 0u);
    t->put(d, {id::Kind::anonymous, {}}, 2000, 0);
    EXPECT_EQ(t->find(d, 1).kind, id::Kind::anonymous);
    t->put(d, {id::Kind::user, "7"}, 3000, 1);  // replaced
    EXPECT_EQ(t->size(), 1u);
    EXPECT_EQ(t->find(d, 2).resolution().id, "7");
    EXPECT_TRUE(t->erase(d));
    EXPECT_FALSE(t->erase(d));
    EXPECT_EQ(t->find(d, 2).kind, id::Kind::none);
    // Nothing invalid is stored.
    t->put(d, {id::Kind::user, ""}, 3000, 1);
    t->put(d, {id::Kind::user, std::string(65, 'a')}, 3000, 1);
    t->put(d, {id::Kind::user, "a\nb"}, 3000, 1);
    t->put(d, {id::Kind::none, {}}, 3000, 1);
    EXPECT_EQ(t->size(), 0u);
}

TEST(IdentityTable, FullTableTakesExpiredFirstThenLeastRecentlyUsed) {
    Block b(4096);
    id::Table* t = id::Table::create(b.data(), b.size);
    ASSERT_NE(t, nullptr);
    size_t cap = t->capacity();
    ASSERT_GE(cap, 8u);
    for (size_t i = 0; i < cap; i++) {
        t->put(digest_of("s" + std::to_string(i)), {id::Kind::user, std::to_string(i)},
               i == 0 ? 10 : 100000, 0);
    }
    EXPECT_EQ(t->size(), cap);
    t->find(digest_of("s1"), 5);  // s1 recently used; s0 expires at 10
    t->put(digest_of("new1"), {id::Kind::user, "n1"}, 100000, 20);
    EXPECT_EQ(t->evictions(), 0u);  // s0 had expired: taken without eviction
    EXPECT_EQ(t->find(digest_of("s0"), 20).kind, id::Kind::none);
    t->put(digest_of("new2"), {id::Kind::user, "n2"}, 100000, 20);
    EXPECT_EQ(t->evictions(), 1u);  // s2, the least recently used live one
    EXPECT_EQ(t->find(digest_of("s2"), 20).kind, id::Kind::none);
    EXPECT_EQ(t->find(digest_of("s1"), 20).kind, id::Kind::user);
    EXPECT_EQ(t->size(), cap);
}

TEST(IdentityTable, AttachKeepsEntriesAndRefusesOtherLayouts) {
    Block b(16 * 1024);
    id::Table* t = id::Table::create(b.data(), b.size);
    t->put(digest_of("x"), {id::Kind::user, "9"}, 500, 0);
    // Moved to another address (another process maps it elsewhere).
    Block c(16 * 1024);
    std::memcpy(c.data(), b.data(), b.size);
    id::Table* u = id::Table::attach(c.data(), c.size);
    ASSERT_NE(u, nullptr);
    EXPECT_EQ(u->find(digest_of("x"), 1).resolution().id, "9");
    EXPECT_EQ(id::Table::attach(c.data(), c.size - 8), nullptr);
    std::memset(c.data(), 0, 8);
    EXPECT_EQ(id::Table::attach(c.data(), c.size), nullptr);
    EXPECT_EQ(id::Table::create(b.data(), 200), nullptr);
}

TEST(IdentityTable, MatchesAModel) {
    Block b(8192);
    id::Table* t = id::Table::create(b.data(), b.size);
    std::map<std::string, std::pair<std::string, int64_t>> model;  // credential -> id, expiry
    std::mt19937 rng(7);
    int64_t now = 0;
    for (int step = 0; step < 200000; step++) {
        now += rng() % 3;
        std::string c = "c" + std::to_string(rng() % 200);
        Sha256Digest d = digest_of(c);
        switch (rng() % 4) {
            case 0: {
                std::string uid = std::to_string(rng() % 1000);
                int64_t exp = now + 1 + rng() % 200;
                t->put(d, {id::Kind::user, uid}, exp, now);
                model[c] = {uid, exp};
                break;
            }
            case 1:
                t->erase(d);
                model.erase(c);
                break;
            default: {
                id::Entry e = t->find(d, now);
                auto it = model.find(c);
                bool live = it != model.end() && it->second.second > now;
                if (e.kind != id::Kind::none) {
                    // The table may have evicted, never invented or kept past expiry.
                    ASSERT_TRUE(live) << step;
                    ASSERT_EQ(std::string(e.id, e.id_len), it->second.first) << step;
                    ASSERT_EQ(e.expires_ms, it->second.second);
                } else if (it != model.end()) {
                    model.erase(it);  // evicted or expired: gone from both now
                }
            }
        }
        ASSERT_LE(t->size(), t->capacity());
    }
}

}  // namespace
