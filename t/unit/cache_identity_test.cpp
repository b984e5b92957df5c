// Identities beyond their digest: which $cookie_/$http_ variables a throttle_cache_user value
// reads, and how often a request sets one of them (more than once: ambiguous, no cache).
#include "core/cache_identity.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace {

using namespace throttle::core::cache;
using Kind = IdentityVariable::Kind;

std::string describe(const std::vector<IdentityVariable>& v) {
    std::string s;
    for (const IdentityVariable& x : v) {
        s += (x.kind == Kind::cookie ? "cookie:" : "header:") + x.name + " ";
    }
    return s;
}

TEST(CacheIdentity, VariablesOfAValue) {
    EXPECT_EQ(describe(identity_variables("$cookie_sessionid")), "cookie:sessionid ");
    EXPECT_EQ(describe(identity_variables("${cookie_sessionid}")), "cookie:sessionid ");
    EXPECT_EQ(describe(identity_variables("$http_x_token")), "header:x_token ");
    EXPECT_EQ(describe(identity_variables("$Cookie_SessionID")), "cookie:sessionid ");
    EXPECT_EQ(describe(identity_variables("${http_x_tenant}:$cookie_sid-$cookie_b.x")),
              "header:x_tenant cookie:sid cookie:b ");
    EXPECT_EQ(describe(identity_variables("u=$cookie_a$cookie_b")), "cookie:a cookie:b ");
    EXPECT_EQ(describe(identity_variables("$cookie_a$cookie_a")), "cookie:a cookie:a ");
    // Not cookies or headers nginx reads one of several.
    EXPECT_EQ(describe(identity_variables("$http_cookie")), "");
    EXPECT_EQ(describe(identity_variables("$remote_user $session $arg_token $cookie_ $http_")), "");
    EXPECT_EQ(describe(identity_variables("cookie_x http_y $1cookie_z $")), "");
    EXPECT_EQ(describe(identity_variables("${cookie_x")), "cookie:x ");  // nginx refuses it
    EXPECT_EQ(describe(identity_variables("")), "");
}

TEST(CacheIdentity, CookieOccurrences) {
    EXPECT_EQ(cookie_occurrences("sessionid=B", "sessionid"), 1u);
    EXPECT_EQ(cookie_occurrences("sessionid=B; sessionid=A", "sessionid"), 2u);
    EXPECT_EQ(cookie_occurrences("sessionid=B;sessionid=A", "sessionid"), 2u);
    EXPECT_EQ(cookie_occurrences("sessionid=B, sessionid=A", "sessionid"), 2u);
    EXPECT_EQ(cookie_occurrences("sessionid=B; SESSIONID=A", "sessionid"), 2u);
    EXPECT_EQ(cookie_occurrences("sessionid=B; sessionid =A", "sessionid"), 2u);
    EXPECT_EQ(cookie_occurrences("sessionid=B;\tsessionid\t=A", "sessionid"), 2u);
    EXPECT_EQ(cookie_occurrences("sessionid=B; sessionid=B", "sessionid"), 2u);
    EXPECT_EQ(cookie_occurrences("a=1; sessionid=; b=2", "sessionid"), 1u);
    EXPECT_EQ(cookie_occurrences("x=\"q; sessionid=A\"; sessionid=B", "sessionid"), 2u);
    // Other cookies whose names or values merely contain it.
    EXPECT_EQ(cookie_occurrences("xsessionid=A; sessionid=B", "sessionid"), 1u);
    EXPECT_EQ(cookie_occurrences("sessionidx=A; sessionid=B", "sessionid"), 1u);
    EXPECT_EQ(cookie_occurrences("a=sessionid=A; sessionid=B", "sessionid"), 1u);
    EXPECT_EQ(cookie_occurrences("sessionid; sessionid=B", "sessionid"), 1u);
    EXPECT_EQ(cookie_occurrences("session=B", "sessionid"), 0u);
    EXPECT_EQ(cookie_occurrences("", "sessionid"), 0u);
    EXPECT_EQ(cookie_occurrences(";;, ;", "sessionid"), 0u);
    EXPECT_EQ(cookie_occurrences("sessionid=B", ""), 0u);
}

TEST(CacheIdentity, HeaderIsVariable) {
    EXPECT_TRUE(header_is_variable("X-Token", "x_token"));
    EXPECT_TRUE(header_is_variable("x-token", "x_token"));
    EXPECT_TRUE(header_is_variable("X_TOKEN", "x_token"));
    EXPECT_FALSE(header_is_variable("X-Tokens", "x_token"));
    EXPECT_FALSE(header_is_variable("X-Toke", "x_token"));
    EXPECT_FALSE(header_is_variable("Authorization", "x_token"));
}

}  // namespace
