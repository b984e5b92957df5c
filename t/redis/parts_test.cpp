// The client's small parts: script names, addresses, replies.
#include <gtest/gtest.h>

#include "redis/address.hpp"
#include "redis/reply.hpp"
#include "redis/script.hpp"

namespace throttle::redis {
namespace {

// The name Redis gives a script: SHA-1 of its source (core::sha1's own vectors are in
// t/unit/hash_test.cpp), 40 lowercase hex digits.
TEST(RedisScript, ShaIsRedisName) {
    EXPECT_EQ(Script("return 1").sha(), "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
    EXPECT_EQ(Script("").sha(), "da39a3ee5e6b4b0d3255bfef95601890afd80709");
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
