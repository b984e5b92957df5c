// The client's small parts: SHA-1 (script names), addresses, replies.
#include <gtest/gtest.h>

#include "redis/address.hpp"
#include "redis/reply.hpp"
#include "redis/script.hpp"

namespace throttle::redis {
namespace {

// FIPS 180-4 examples and the padding edges.
TEST(RedisSha1, Vectors) {
    EXPECT_EQ(sha1_hex(""), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
    EXPECT_EQ(sha1_hex("abc"), "a9993e364706816aba3e25717850c26c9cd0d89d");
    EXPECT_EQ(sha1_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
              "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
    EXPECT_EQ(sha1_hex(std::string(1000000, 'a')), "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
    EXPECT_EQ(sha1_hex("The quick brown fox jumps over the lazy dog"),
              "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12");
    // 55, 56 and 64 bytes: one or two final blocks.
    EXPECT_EQ(sha1_hex(std::string(55, 'a')), "c1c8bbdc22796e28c0e15163d20899b65621d65a");
    EXPECT_EQ(sha1_hex(std::string(56, 'a')), "c2db330f6083854c99d4b5bfb6e8f29f201be699");
    EXPECT_EQ(sha1_hex(std::string(64, 'a')), "0098ba824b5c16427bd7a1122a5a442a25ec644d");
    EXPECT_EQ(Script("return 1").sha(), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
}

TEST(RedisAddress, ParseAndPrint) {
    Address a;
    ASSERT_TRUE(Address::parse("127.0.0.1:6380", a));
    EXPECT_EQ(a.host, "127.0.0.1");
    EXPECT_EQ(a.port, 6380);
    EXPECT_EQ(a.to_string(), "127.0.0.1:6380");
    ASSERT_TRUE(Address::parse("[::1]:7000", a));
    EXPECT_EQ(a.host, "::1");
    EXPECT_EQ(a.port, 7000);
    EXPECT_EQ(a.to_string(), "[::1]:7000");
    ASSERT_TRUE(Address::parse("10.1.2.3", a));
    EXPECT_EQ(a.port, 6379);
    ASSERT_TRUE(Address::parse("unix:/run/redis/redis.sock", a));
    EXPECT_TRUE(a.is_unix());
    EXPECT_EQ(a.to_string(), "unix:/run/redis/redis.sock");
    for (const char* bad : {"", "localhost:6379", "::1:6379", "[::1]6379", "1.2.3.4:", "1.2.3.4:0",
                            "1.2.3.4:65536", "1.2.3.4:x", "unix:", "[::1"}) {
        EXPECT_FALSE(Address::parse(bad, a)) << bad;
    }
}

TEST(RedisReply, ErrorCodes) {
    Reply r;
    r.type = Reply::Type::Error;
    r.str = "NOSCRIPT No matching script. Please use EVAL.";
    EXPECT_TRUE(r.is_error());
    EXPECT_TRUE(r.is_error("NOSCRIPT"));
    EXPECT_FALSE(r.is_error("NOSCRIPTX"));
    EXPECT_FALSE(r.is_error("NOSC"));
    r.type = Reply::Type::Status;
    EXPECT_FALSE(r.is_error("NOSCRIPT"));
    EXPECT_STREQ(to_string(Failure::CircuitOpen), "circuit open");
    EXPECT_STREQ(to_string(Reply::Type::Array), "array");
}

}  // namespace
}  // namespace throttle::redis
