// Which credentials a zone key reads, and the watch that says once that a key was empty for
// every request carrying them (a wrong cookie name).
#include "core/key_watch.hpp"

#include <gtest/gtest.h>

namespace throttle::core {
namespace {

constexpr uint8_t both = credential_cookie | credential_authorization;

TEST(KeyWatch, CredentialSourcesOfKeys) {
    EXPECT_EQ(credential_sources("$cookie_sessionid"), credential_cookie);
    EXPECT_EQ(credential_sources("${cookie_SessionId}:x"), credential_cookie);
    EXPECT_EQ(credential_sources("$http_cookie"), credential_cookie);
    EXPECT_EQ(credential_sources("${http_cookie}"), credential_cookie);
    EXPECT_EQ(credential_sources("$http_authorization"), credential_authorization);
    EXPECT_EQ(credential_sources("$HTTP_AUTHORIZATION"), credential_authorization);
    EXPECT_EQ(credential_sources("$cookie_sid$http_authorization"), both);
    EXPECT_EQ(credential_sources("$throttle_user_id"), both);
    EXPECT_EQ(credential_sources("user:${throttle_user_id}"), both);
    EXPECT_EQ(credential_sources("$throttle_jwt_claim_user_id"), both);
    // Not credentials, or not read directly.
    EXPECT_EQ(credential_sources("$binary_remote_addr"), 0);
    EXPECT_EQ(credential_sources("$anon_ip"), 0);  // a map over a cookie: not looked through
    EXPECT_EQ(credential_sources("$http_x_api_key"), 0);
    EXPECT_EQ(credential_sources("$http_cookies"), 0);     // another header
    EXPECT_EQ(credential_sources("cookie_sessionid"), 0);  // literal text
    EXPECT_EQ(credential_sources(""), 0);
    EXPECT_EQ(credential_sources("$"), 0);
    EXPECT_EQ(credential_sources("${"), 0);
}

TEST(KeyWatch, SaysOnceAfterThresholdEmptyKeysWithCredentials) {
    EmptyKeyWatch w;
    w.sources = credential_cookie;
    for (uint32_t i = 1; i < EmptyKeyWatch::threshold; ++i) {
        ASSERT_FALSE(w.observe(credential_cookie, true)) << i;
        // Requests without the credential the key reads do not count, nor end the watch.
        ASSERT_FALSE(w.observe(0, true));
        ASSERT_FALSE(w.observe(credential_authorization, true));
    }
    EXPECT_TRUE(w.observe(credential_cookie | credential_authorization, true));
    EXPECT_FALSE(w.watching());
    for (int i = 0; i < 1000; ++i) {
        ASSERT_FALSE(w.observe(credential_cookie, true));  // once
    }
}

TEST(KeyWatch, OneNonEmptyKeyEndsTheWatch) {
    EmptyKeyWatch w;
    w.sources = both;
    for (uint32_t i = 1; i < EmptyKeyWatch::threshold; ++i) {
        ASSERT_FALSE(w.observe(credential_authorization, true));
    }
    EXPECT_FALSE(w.observe(credential_cookie, false));  // the name is right
    EXPECT_FALSE(w.watching());
    for (uint32_t i = 0; i < 10 * EmptyKeyWatch::threshold; ++i) {
        ASSERT_FALSE(w.observe(credential_cookie, true));
    }
}

TEST(KeyWatch, UnwatchedKeysNeverSay) {
    EmptyKeyWatch w;  // sources 0
    EXPECT_FALSE(w.watching());
    for (uint32_t i = 0; i < 10 * EmptyKeyWatch::threshold; ++i) {
        ASSERT_FALSE(w.observe(both, true));
    }
}

}  // namespace
}  // namespace throttle::core
