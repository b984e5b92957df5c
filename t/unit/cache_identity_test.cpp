// Identities beyond their digest: which $cookie_/$http_ variables a throttle_cache_user value
// reads, and how often a request sets one of them (more than once: ambiguous, no cache); the
// memo of digests (exact, fixed size, keeps no identity).
#include "core/cache_identity.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/cache_key.hpp"

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

const std::string secret = "memo-secret-0123456789";
const throttle::core::SipKey memo_key{0x0123456789abcdefULL, 0xfedcba9876543210ULL};

TEST(IdentityMemo, SameDigestsAsWithout) {
    IdentityMemo memo(secret.data(), secret.size(), memo_key);
    std::vector<std::string> ids = {"a", "sessionid-token", std::string(4096, 'x'),
                                    std::string("\0\xff\n", 3), std::string(1 << 20, 'y')};
    for (int round = 0; round < 2; ++round) {
        for (const std::string& id : ids) {
            EXPECT_EQ(memo.digest(id), identity_digest(secret, id));
        }
    }
    EXPECT_EQ(memo.hits(), ids.size());  // the second round came from the memo
    EXPECT_EQ(memo.digest(""), anonymous_identity);
}

TEST(IdentityMemo, NeverAnotherIdentitysDigest) {
    // Far more identities than slots: many share a slot, each gets its own digest, always.
    IdentityMemo memo(secret.data(), secret.size(), memo_key);
    std::vector<std::string> ids;
    for (int i = 0; i < 4000; ++i) ids.push_back("sid-" + std::to_string(i));
    for (int round = 0; round < 3; ++round) {
        for (const std::string& id : ids) {
            ASSERT_EQ(memo.digest(id), identity_digest(secret, id)) << id;
        }
    }
    EXPECT_GT(memo.hits(), 0u);
    // Identities that differ in their last byte only, or by a prefix.
    std::string big(1 << 16, 'k');
    for (char last : {'a', 'b', 'a', 'b'}) {
        EXPECT_EQ(memo.digest(big + last), identity_digest(secret, big + last));
    }
    EXPECT_EQ(memo.digest(big), identity_digest(secret, big));
}

TEST(IdentityMemo, FixedSizeKeepsNoIdentity) {
    // No member owns heap memory: the memo's bytes are its size, whatever it has seen.
    static_assert(sizeof(IdentityMemo) < 1024 * 1024, "about 720 KB per worker (8,192 slots)");
    IdentityMemo memo(secret.data(), secret.size(), memo_key);
    std::string token = "secret-session-token-0123456789";
    memo.digest(token);
    const auto* bytes = reinterpret_cast<const char*>(&memo);
    std::string_view raw(bytes, sizeof(memo));
    EXPECT_EQ(raw.find(token), std::string_view::npos);
    EXPECT_EQ(raw.find("secret-session"), std::string_view::npos);
}

TEST(IdentityMemo, DigestsDependOnTheSecret) {
    IdentityMemo a(secret.data(), secret.size(), memo_key);
    std::string other = "another-secret-0123456789";
    IdentityMemo b(other.data(), other.size(), memo_key);
    EXPECT_NE(a.digest("sid"), b.digest("sid"));
    EXPECT_EQ(b.digest("sid"), identity_digest(other, "sid"));
}

TEST(IdentityMemo, TheKeyChangesSlotsNeverDigests) {
    IdentityMemo a(secret.data(), secret.size(), memo_key);
    IdentityMemo b(secret.data(), secret.size(), throttle::core::SipKey{1, 2});
    for (int round = 0; round < 2; ++round) {
        for (int i = 0; i < 100; ++i) {
            std::string id = "sid-" + std::to_string(i);
            ASSERT_EQ(a.digest(id), b.digest(id));
            ASSERT_EQ(a.digest(id), identity_digest(secret, id));
        }
    }
}

TEST(IdentityMemo, IdentitiesSharingASetKeepTheirOwnDigests) {
    // Find one more identity than a set holds, all in one set (the key is known here, as a
    // client never knows it), and ask for them in turn: they evict each other (least recently
    // used first), none ever gets another's digest.
    constexpr size_t sets = IdentityMemo::slots / IdentityMemo::ways;
    std::vector<std::string> same_set;
    const uint64_t want = throttle::core::siphash24_128(memo_key, "u-0", 3).lo % sets;
    for (int i = 0; same_set.size() < IdentityMemo::ways + 1 && i < 10000000; ++i) {
        std::string id = "u-" + std::to_string(i);
        if (throttle::core::siphash24_128(memo_key, id.data(), id.size()).lo % sets == want) {
            same_set.push_back(id);
        }
    }
    ASSERT_EQ(same_set.size(), IdentityMemo::ways + 1);
    IdentityMemo memo(secret.data(), secret.size(), memo_key);
    for (int round = 0; round < 3; ++round) {
        for (const std::string& id : same_set) {
            ASSERT_EQ(memo.digest(id), identity_digest(secret, id)) << id;
            ASSERT_EQ(memo.digest(id), identity_digest(secret, id)) << id;  // now from the memo
        }
    }
    // Each identity's second ask of each round; the first asks all miss (five in turn through
    // four ways, least recently used out).
    EXPECT_EQ(memo.hits(), 3 * same_set.size());
    // Four of them in turn fit: after one pass, every ask is a hit.
    size_t before = memo.hits();
    for (int round = 0; round < 3; ++round) {
        for (size_t k = 0; k < IdentityMemo::ways; ++k) {
            ASSERT_EQ(memo.digest(same_set[k]), identity_digest(secret, same_set[k]));
        }
    }
    EXPECT_GE(memo.hits(), before + 2 * IdentityMemo::ways);
}

}  // namespace

namespace throttle::core::cache {
namespace {

TEST(IdentityVerified, ByName) {
    for (const char* v : {"$throttle_user_id", "${throttle_user_id}", "u:$throttle_user_id",
                          "$THROTTLE_USER_ID", "$throttle_jwt_claim_sub",
                          "${throttle_jwt_claim_user_id}:$host", "$cookie_x$throttle_user_id"})
        EXPECT_TRUE(identity_verified(v)) << v;
    for (const char* v :
         {"", "$cookie_sessionid", "$http_authorization", "$throttle_user_idx", "throttle_user_id",
          "$throttle_jwt_claim_", "$throttle_jwt", "$throttle_user", "$1throttle_user_id",
          "$arg_throttle_user_id", "$http_throttle_user_id"})
        EXPECT_FALSE(identity_verified(v)) << v;
}

}  // namespace
}  // namespace throttle::core::cache
