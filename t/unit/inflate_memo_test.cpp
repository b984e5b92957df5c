// core::cache::InflateMemo: the memo of inflated bodies, found by a keyed digest of the gzip
// bytes, bounded in bodies and in bytes.
#include "core/inflate_memo.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "core/gzip.hpp"

namespace {

using throttle::core::gzip_compress;
using throttle::core::SipKey;
using throttle::core::cache::InflateMemo;

const SipKey key{0x0706050403020100ULL, 0x0f0e0d0c0b0a0908ULL};

std::string body(int i, size_t size) {
    std::string s = "{\"user\":" + std::to_string(i) + ",\"items\":[";
    while (s.size() < size) s += "\"item-" + std::to_string(s.size() % 97) + "\",";
    s.resize(size);
    return s;
}

std::string gz(const std::string& plain) {
    std::string out;
    EXPECT_TRUE(gzip_compress(plain, out));
    return out;
}

TEST(InflateMemo, InflatesAndRemembers) {
    InflateMemo m(key, 1 << 20);
    const std::string a = body(1, 2000), za = gz(a);
    auto p1 = m.plain(za, a.size());
    ASSERT_TRUE(p1);
    EXPECT_EQ(*p1, a);
    EXPECT_EQ(m.hits(), 0u);
    EXPECT_EQ(m.count(), 1u);
    EXPECT_EQ(m.bytes(), a.size() + za.size());  // both forms
    auto p2 = m.plain(za, a.size());
    ASSERT_TRUE(p2);
    EXPECT_EQ(*p2, a);
    EXPECT_EQ(p2.get(), p1.get());  // the same bytes, shared
    EXPECT_EQ(m.hits(), 1u);
    // The same gzip bytes in another buffer (another entry, another user): the same body.
    const std::string copy = za;
    auto p3 = m.plain(copy, a.size());
    ASSERT_TRUE(p3);
    EXPECT_EQ(p3.get(), p1.get());
    EXPECT_EQ(m.count(), 1u);
}

TEST(InflateMemo, DifferentBodiesNeverMix) {
    InflateMemo m(key, 1 << 20);
    std::vector<std::string> plain, zipped;
    for (int i = 0; i < 300; i++) {
        plain.push_back(body(i, 500 + i));
        zipped.push_back(gz(plain.back()));
    }
    for (int pass = 0; pass < 3; pass++) {
        for (size_t i = 0; i < plain.size(); i++) {
            auto p = m.plain(zipped[i], plain[i].size());
            ASSERT_TRUE(p) << i;
            ASSERT_EQ(*p, plain[i]) << i;
        }
    }
    EXPECT_GT(m.hits(), 500u);  // most of passes 2 and 3 (a set holds 4 of 1,024 sets' share)
}

TEST(InflateMemo, SizeMustMatch) {
    InflateMemo m(key, 1 << 20);
    const std::string a = body(1, 2000), za = gz(a);
    EXPECT_FALSE(m.plain(za, a.size() - 1));  // more than the entry says: not inflated
    EXPECT_FALSE(m.plain(za, a.size() + 1));  // less than it says: an entry that lies
    EXPECT_EQ(m.count(), 0u);
    ASSERT_TRUE(m.plain(za, a.size()));
    // Held now; the same bytes with a size that does not match still fail, as before.
    EXPECT_FALSE(m.plain(za, a.size() + 1));
    EXPECT_FALSE(m.plain(za, a.size() - 1));
    EXPECT_EQ(m.count(), 1u);
}

TEST(InflateMemo, CorruptIsNeverKept) {
    InflateMemo m(key, 1 << 20);
    const std::string a = body(1, 2000);
    std::string za = gz(a);
    za[za.size() / 2] ^= 0x55;
    for (int i = 0; i < 3; i++) {
        EXPECT_FALSE(m.plain(za, a.size()));
    }
    EXPECT_FALSE(m.plain("", 0));
    EXPECT_FALSE(m.plain("not gzip at all", 15));
    EXPECT_EQ(m.count(), 0u);
    EXPECT_EQ(m.bytes(), 0u);
}

TEST(InflateMemo, ByteBudgetEvictsLeastRecentlyUsed) {
    const size_t size = 1000;
    std::vector<std::string> plain, zipped;
    size_t cost = 0;  // the largest of the four (gzip and plain bytes)
    for (int i = 0; i < 4; i++) {
        plain.push_back(body(i, size));
        zipped.push_back(gz(plain.back()));
        cost = std::max(cost, size + zipped.back().size());
    }
    InflateMemo m(key, 3 * cost);  // three bodies
    for (int i = 0; i < 3; i++) ASSERT_TRUE(m.plain(zipped[i], size));
    EXPECT_EQ(m.count(), 3u);
    ASSERT_TRUE(m.plain(zipped[0], size));  // 0 is now the most recent; 1 the least
    EXPECT_EQ(m.hits(), 1u);
    auto p3 = m.plain(zipped[3], size);  // evicts 1
    ASSERT_TRUE(p3);
    EXPECT_EQ(*p3, plain[3]);
    EXPECT_EQ(m.count(), 3u);
    EXPECT_LE(m.bytes(), 3 * cost);
    EXPECT_EQ(m.evictions(), 1u);
    uint64_t hits = m.hits();
    ASSERT_TRUE(m.plain(zipped[0], size));
    ASSERT_TRUE(m.plain(zipped[2], size));
    ASSERT_TRUE(m.plain(zipped[3], size));
    EXPECT_EQ(m.hits(), hits + 3);
    auto p1 = m.plain(zipped[1], size);  // inflated again, correctly
    ASSERT_TRUE(p1);
    EXPECT_EQ(*p1, plain[1]);
    EXPECT_EQ(m.hits(), hits + 3);
    EXPECT_LE(m.bytes(), 3 * cost);
}

TEST(InflateMemo, SameTrailerOtherBytes) {
    // The same plain body compressed at two levels: the same trailer (CRC-32, length), other
    // deflate bytes. The set is picked by the trailer; only the whole bytes make a hit.
    const std::string a = body(7, 3000);
    std::string z1, z2;
    ASSERT_TRUE(gzip_compress(a, z1, 1));
    ASSERT_TRUE(gzip_compress(a, z2, 9));
    ASSERT_EQ(z1.substr(z1.size() - 8), z2.substr(z2.size() - 8));  // the same trailer
    InflateMemo m(key, 1 << 20);
    auto p1 = m.plain(z1, a.size());
    auto p2 = m.plain(z2, a.size());
    ASSERT_TRUE(p1 && p2);
    EXPECT_EQ(*p1, a);
    EXPECT_EQ(*p2, a);
    EXPECT_EQ(m.hits(), z1 == z2 ? 1u : 0u);  // other bytes: not a hit, each kept on its own
    // A member whose deflate data was changed but whose trailer was not: never the kept body.
    std::string bad = z1;
    bad[bad.size() / 2] ^= 0x01;
    EXPECT_FALSE(m.plain(bad, a.size()));
}

TEST(InflateMemo, EvictedBodyOutlivesItsSlot) {
    const size_t size = 1000;
    const std::string a = body(1, size), b = body(2, size);
    InflateMemo m(key, size + std::max(gz(a).size(), gz(b).size()));  // one body
    auto pa = m.plain(gz(a), size);
    ASSERT_TRUE(pa);
    ASSERT_TRUE(m.plain(gz(b), size));  // evicts a
    EXPECT_EQ(m.count(), 1u);
    EXPECT_EQ(*pa, a);  // a request that still sends it keeps it
}

TEST(InflateMemo, TooLargeForTheBudgetIsNotKept) {
    InflateMemo m(key, 100);
    const std::string a = body(1, 2000);
    auto p = m.plain(gz(a), a.size());
    ASSERT_TRUE(p);
    EXPECT_EQ(*p, a);
    EXPECT_EQ(m.count(), 0u);
    EXPECT_EQ(m.bytes(), 0u);
    InflateMemo none(key, 0);
    p = none.plain(gz(a), a.size());
    ASSERT_TRUE(p);
    EXPECT_EQ(*p, a);
    EXPECT_EQ(none.count(), 0u);
}

TEST(InflateMemo, BoundedInBodies) {
    // Many small bodies: never more than `slots` kept, bytes always the sum of those kept.
    InflateMemo m(key, 1 << 30);
    const size_t n = InflateMemo::slots * 2;
    for (size_t i = 0; i < n; i++) {
        const std::string p = std::to_string(i);
        auto got = m.plain(gz(p), p.size());
        ASSERT_TRUE(got);
        ASSERT_EQ(*got, p);
    }
    EXPECT_LE(m.count(), InflateMemo::slots);
    EXPECT_GT(m.count(), InflateMemo::slots / 2);
    EXPECT_GE(m.evictions(), n - InflateMemo::slots);
    EXPECT_LE(m.bytes(), m.count() * (std::to_string(n).size() + 64));
}

TEST(InflateMemo, AnotherKeyAnotherSlot) {
    // Two memos under different keys agree on every body (the key only places slots).
    InflateMemo a(key, 1 << 20), b(SipKey{1, 2}, 1 << 20);
    for (int i = 0; i < 50; i++) {
        const std::string p = body(i, 300), z = gz(p);
        auto x = a.plain(z, p.size()), y = b.plain(z, p.size());
        ASSERT_TRUE(x && y);
        EXPECT_EQ(*x, *y);
    }
}

}  // namespace
