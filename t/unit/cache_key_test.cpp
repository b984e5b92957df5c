// Cache keys: query-order normalisation, collision attempts (crafted and exhaustive over a small
// alphabet against a model), identity hashing, method classes and the Redis key layout.
#include "core/cache_key.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

namespace {

using throttle::core::hex;
using throttle::core::Sha256Digest;
using namespace throttle::core::cache;

const std::string secret = "s3cret";
const std::string alice = identity_digest(secret, "alice-session-token");

CacheKeyInput input(std::string_view ns, std::string_view id, std::string_view method,
                    std::string_view path, std::string_view query) {
    CacheKeyInput in;
    in.ns = ns;
    in.identity_digest = id;
    in.method = method;
    in.path = path;
    in.query = query;
    return in;
}

Sha256Digest key(std::string_view path, std::string_view query, std::string_view method = "GET",
                 std::string_view ns = "review", std::string_view id = alice) {
    return cache_key(input(ns, id, method, path, query));
}

TEST(CacheKey, FixedLength) {
    EXPECT_EQ(hex(key("/", "")).size(), 64u);
    std::string long_path(1 << 20, 'p');
    std::string long_query(1 << 20, 'q');
    EXPECT_EQ(hex(key(long_path, long_query)).size(), 64u);
    EXPECT_NE(key(long_path, long_query), key(long_path, long_query + "q"));
    EXPECT_NE(key(long_path, long_query), key(long_path + "p", long_query));
}

TEST(CacheKey, Deterministic) {
    EXPECT_EQ(key("/api/review/today/", "page=2&lang=en"),
              key("/api/review/today/", "page=2&lang=en"));
}

TEST(CacheKey, QueryOrderNormalised) {
    EXPECT_EQ(key("/x", "b=2&a=1"), key("/x", "a=1&b=2"));
    EXPECT_EQ(key("/x", "c=3&b=2&a=1"), key("/x", "a=1&b=2&c=3"));
    EXPECT_EQ(key("/x", "z&y=&x=1"), key("/x", "x=1&y=&z"));
    // Bytewise unsigned order: high bytes sort after ASCII, either way round.
    EXPECT_EQ(key("/x", "\xff=1&a=2"), key("/x", "a=2&\xff=1"));
    EXPECT_NE(key("/x", "a=1&b=2"), key("/x", "a=1&b=3"));
}

TEST(CacheKey, RepeatedNamesKeepTheirOrder) {
    EXPECT_NE(key("/x", "a=1&a=2"), key("/x", "a=2&a=1"));
    EXPECT_EQ(key("/x", "a=1&b=0&a=2"), key("/x", "b=0&a=1&a=2"));
    EXPECT_EQ(key("/x", "a=1&b=0&a=2"), key("/x", "a=1&a=2&b=0"));
    EXPECT_NE(key("/x", "a=1&b=0&a=2"), key("/x", "a=2&a=1&b=0"));
    EXPECT_NE(key("/x", "a=1"), key("/x", "a=1&a=1"));
    EXPECT_NE(key("/x", "a&a="), key("/x", "a=&a"));
}

TEST(CacheKey, ValueSpellingsAreDistinct) {
    // No decoding: each spelling is its own key (a possible extra miss, never a wrong hit).
    std::vector<std::string> qs = {"a",   "a=",  "a=A",   "a=%41",  "A",     "a=+", "a=%20",
                                   "a= ", "a==", "a=b=c", "a=b&=c", "a%3Db", "=a",  ""};
    for (size_t i = 0; i < qs.size(); ++i)
        for (size_t j = i + 1; j < qs.size(); ++j)
            EXPECT_NE(key("/x", qs[i]), key("/x", qs[j])) << qs[i] << " vs " << qs[j];
}

TEST(CacheKey, EmptyArgumentsCount) {
    EXPECT_NE(key("/x", ""), key("/x", "&"));
    EXPECT_NE(key("/x", "&"), key("/x", "&&"));
    EXPECT_NE(key("/x", "a=1&&b=2"), key("/x", "a=1&b=2"));
    EXPECT_NE(key("/x", "a=1&"), key("/x", "a=1"));
    EXPECT_NE(key("/x", "="), key("/x", ""));
    EXPECT_NE(key("/x", "="), key("/x", "&"));
    // Empty pieces are arguments with an empty name: they sort first, wherever they were.
    EXPECT_EQ(key("/x", "a=1&"), key("/x", "&a=1"));
}

TEST(CacheKey, CraftedCollisionsFail) {
    EXPECT_NE(key("/a", "b=c"), key("/ab", "=c"));
    EXPECT_NE(key("/a", "b=c"), key("/a?b=c", ""));
    EXPECT_NE(key("/a", "b"), key("/ab", ""));
    EXPECT_NE(key("/x", "a=1&b=2"), key("/x", "a=1%26b=2"));
    EXPECT_NE(key("/x", "a=1&b=2"), key("/x", "a=1&b=2&"));
    // '&' inside a value cannot be expressed raw; a value with "=" or NUL can.
    EXPECT_NE(key("/x", "a=b=c"), key("/x", "a=b&=c"));
    EXPECT_NE(key("/x", std::string_view("a=\0b", 4)), key("/x", std::string_view("a=\0&b", 5)));
    EXPECT_NE(key("/x", std::string_view("a\0=1", 4)), key("/x", "a=1"));
    EXPECT_NE(key(std::string_view("/x\0", 3), "a"), key("/x", std::string_view("\0a", 2)));
    // Components cannot slide into each other.
    EXPECT_NE(key("/x", "", "GET", "ns", "ab"), key("/x", "", "GET", "nsa", "b"));
    EXPECT_NE(key("/x", "", "GET", "ns", ""), key("/x", "", "GET", "n", "s"));
    EXPECT_NE(key("", "/x"), key("/x", ""));
    // A name that looks like a length prefix.
    std::string fake_len("\0\0\0\0\0\0\0\x01", 8);
    EXPECT_NE(key("/x", "a=" + fake_len + "b"), key("/x", "a=" + fake_len + "&b"));
}

TEST(CacheKey, EveryComponentCounts) {
    Sha256Digest base = key("/x", "a=1");
    EXPECT_NE(base, key("/y", "a=1"));
    EXPECT_NE(base, key("/x", "a=2"));
    EXPECT_NE(base, key("/x", "a=1", "POST"));
    EXPECT_NE(base, key("/x", "a=1", "GET", "analytics"));
    EXPECT_NE(base, key("/x", "a=1", "GET", "review", identity_digest(secret, "bob")));
    EXPECT_NE(base, key("/x", "a=1", "GET", "review", anonymous_identity));
}

Sha256Digest where(std::string_view scheme, std::string_view host, std::string_view extra = {},
                   std::string_view path = "/x") {
    CacheKeyInput in = input("review", alice, "GET", path, "a=1");
    in.scheme = scheme;
    in.host = host;
    in.extra = extra;
    return cache_key(in);
}

TEST(CacheKey, SchemeHostAndExtraCount) {
    Sha256Digest base = where("http", "a.test");
    EXPECT_NE(base, where("http", "b.test"));
    EXPECT_NE(base, where("https", "a.test"));
    EXPECT_NE(base, where("http", ""));
    EXPECT_NE(base, where("http", "a.test", "fr"));
    EXPECT_NE(where("http", "a.test", "fr"), where("http", "a.test", "en"));
    EXPECT_NE(base, key("/x", "a=1"));  // no host at all is a host too ("")
    // Nothing slides between the scheme, the host, the path and the extra.
    EXPECT_NE(where("http", "sa.test"), where("https", "a.test"));
    EXPECT_NE(where("http", "a.test", "", "/x"), where("http", "a.test/x", "", ""));
    EXPECT_NE(where("http", "a.test", "y"), where("http", "a.test", "", "/xy"));
}

TEST(CacheKey, HostSpellingsNginxResolvesAlike) {
    Sha256Digest b = where("http", "b.test");
    EXPECT_EQ(b, where("http", "B.TEST"));
    EXPECT_EQ(b, where("http", "b.test."));
    EXPECT_EQ(b, where("http", "B.Test."));
    EXPECT_NE(b, where("http", "b.test.."));   // one dot only (nginx refuses "..")
    EXPECT_NE(b, where("http", "b.test:80"));  // the caller passes the host without its port
    // Lowercasing is ASCII only and covers hosts longer than one chunk.
    std::string long_host(200, 'H');
    EXPECT_EQ(where("http", long_host + "."), where("http", std::string(200, 'h')));
    EXPECT_NE(where("http", "\xc3\x89.test"), where("http", "\xc3\xa9.test"));
    // The scheme and the extra are taken as given.
    EXPECT_NE(where("HTTP", "b.test"), b);
    EXPECT_NE(where("http", "b.test", "FR"), where("http", "b.test", "fr"));
}

// The documented byte string (see cache_key.hpp), built independently of cache_key().
TEST(CacheKey, KnownEncoding) {
    auto u64 = [](uint64_t v) {
        std::string s(8, '\0');
        for (int i = 7; i >= 0; --i, v >>= 8) s[i] = static_cast<char>(v & 0xff);
        return s;
    };
    auto field = [&](std::string_view x) { return u64(x.size()) + std::string(x); };
    std::string bytes("throttle-cache-key\0\x02", 20);
    bytes += field("review") + field("https") + field("b.test") + field(alice) + field("GET") +
             field("/p") + u64(2) + field("a") + std::string(1, '\x01') + field("1") + field("b") +
             std::string(1, '\0') + field("") + field("fr");
    CacheKeyInput in = input("review", alice, "HEAD", "/p", "b&a=1");
    in.scheme = "https";
    in.host = "B.test.";
    in.extra = "fr";
    EXPECT_EQ(cache_key(in), throttle::core::sha256(bytes.data(), bytes.size()));
}

TEST(CacheKey, GetAndHeadShareAKey) {
    EXPECT_EQ(key("/x", "a=1", "GET"), key("/x", "a=1", "HEAD"));
    EXPECT_EQ(method_class("HEAD"), "GET");
    EXPECT_EQ(method_class("GET"), "GET");
    EXPECT_EQ(method_class("POST"), "POST");
    EXPECT_EQ(method_class("get"), "get");  // methods are case-sensitive
    EXPECT_NE(key("/x", "", "GET"), key("/x", "", "get"));
    EXPECT_NE(key("/x", "", "GET"), key("/x", "", "OPTIONS"));
}

TEST(CacheKey, IdentityDigest) {
    EXPECT_EQ(alice.size(), 64u);
    EXPECT_EQ(alice.find_first_not_of("0123456789abcdef"), std::string::npos);
    EXPECT_EQ(alice, identity_digest(secret, "alice-session-token"));
    EXPECT_NE(alice, identity_digest(secret, "alice-session-tokeN"));
    EXPECT_NE(alice, identity_digest("other", "alice-session-token"));
    EXPECT_NE(alice, identity_digest("", "alice-session-token"));
    EXPECT_EQ(identity_digest(secret, ""), anonymous_identity);
    EXPECT_EQ(identity_digest("other", ""), anonymous_identity);
    // Not the plain HMAC of the identity (a label separates it from other uses of the secret).
    std::string id = "alice-session-token";
    EXPECT_NE(alice,
              hex(throttle::core::hmac_sha256(secret.data(), secret.size(), id.data(), id.size())));
    // A one-byte identity is not anonymous, nor a NUL.
    EXPECT_NE(identity_digest(secret, std::string_view("\0", 1)), anonymous_identity);
    EXPECT_NE(identity_digest(secret, "anon"), anonymous_identity);
}

TEST(CacheKey, IdentityDigestWithPreparedSecret) {
    const std::string secret = "0123456789abcdef-secret";
    throttle::core::HmacSha256Key prepared(secret.data(), secret.size());
    for (std::string id : {std::string(), std::string("a"), std::string("sessionid-token"),
                           std::string(4096, 'x'), std::string("\0\xff\n", 3)}) {
        EXPECT_EQ(identity_digest(prepared, id), identity_digest(secret, id));
    }
    EXPECT_EQ(identity_digest(prepared, ""), "anon");
}

TEST(CacheKey, IdentityNeverAppearsInRedisKeys) {
    std::string token = "sessionid-0123456789-secret";
    std::string id = identity_digest(secret, token);
    EXPECT_EQ(id.find(token), std::string::npos);
    Sha256Digest k = key("/x", "", "GET", "review", id);
    std::vector<std::string> keys = {generation_key("p:", "review", id),
                                     entry_key("p:", "review", id, {3, 7}, k),
                                     fill_lock_key(entry_key("p:", "review", id, {3, 7}, k))};
    for (const std::string& s : keys) {
        EXPECT_EQ(s.find(token), std::string::npos) << s;
        EXPECT_EQ(s.find("sessionid"), std::string::npos) << s;
    }
}

TEST(CacheKey, RedisLayout) {
    Sha256Digest k = key("/x", "");
    const std::string keyhex = hex(k);
    EXPECT_EQ(generation_key("thr:c:", "review", alice), "thr:c:{review:" + alice + "}:g");
    EXPECT_EQ(generation_key("", "review", "anon"), "{review:anon}:g");
    EXPECT_EQ(namespace_generation_key("thr:c:", "review"), "thr:c:{review}:g");
    EXPECT_EQ(entry_key("thr:c:", "review", alice, {0, 0}, k),
              "thr:c:{review:" + alice + "}:e:0.0:" + keyhex);
    EXPECT_EQ(entry_key("thr:c:", "review", alice, {18446744073709551615ULL, 12}, k),
              "thr:c:{review:" + alice + "}:e:18446744073709551615.12:" + keyhex);
    EXPECT_EQ(fill_lock_key("abc"), "abc:l");
    EXPECT_EQ(fill_waiter_key("abc"), "abc:w");
    // Bumping either generation changes the entry key; the two do not alias.
    EXPECT_NE(entry_key("p", "n", "anon", {1, 0}, k), entry_key("p", "n", "anon", {0, 1}, k));
    EXPECT_NE(entry_key("p", "n", "anon", {1, 11}, k), entry_key("p", "n", "anon", {11, 1}, k));
    EXPECT_NE(entry_key("p", "n", "anon", {0, 0}, k),
              entry_key("p", "n", "anon", {0, 0}, key("/y", "")));
}

TEST(CacheKey, ValidNamespace) {
    EXPECT_TRUE(valid_namespace("review"));
    EXPECT_TRUE(valid_namespace("a.b-c_D9"));
    EXPECT_TRUE(valid_namespace(std::string(64, 'n')));
    EXPECT_FALSE(valid_namespace(std::string(65, 'n')));
    EXPECT_FALSE(valid_namespace(""));
    EXPECT_FALSE(valid_namespace("a:b"));
    EXPECT_FALSE(valid_namespace("a{b"));
    EXPECT_FALSE(valid_namespace("a}b"));
    EXPECT_FALSE(valid_namespace("a b"));
    EXPECT_FALSE(valid_namespace(std::string_view("a\0", 2)));
}

// The model: what a request means to the key. Two inputs must share a key exactly when their
// models are equal.
using Model = std::tuple<std::string, std::vector<std::tuple<std::string, bool, std::string>>>;

Model model(const std::string& path, const std::string& query) {
    std::vector<std::tuple<std::string, bool, std::string>> args;
    if (!query.empty()) {
        size_t start = 0;
        for (;;) {
            size_t amp = query.find('&', start);
            std::string piece = query.substr(start, amp == std::string::npos ? amp : amp - start);
            size_t eq = piece.find('=');
            if (eq == std::string::npos)
                args.emplace_back(piece, false, "");
            else
                args.emplace_back(piece.substr(0, eq), true, piece.substr(eq + 1));
            if (amp == std::string::npos) break;
            start = amp + 1;
        }
        std::stable_sort(args.begin(), args.end(), [](const auto& a, const auto& b) {
            return std::get<0>(a) < std::get<0>(b);
        });
    }
    return {path, args};
}

void all_strings(const std::string& alphabet, size_t max_len, std::string& cur,
                 std::vector<std::string>& out) {
    out.push_back(cur);
    if (cur.size() == max_len) return;
    for (char c : alphabet) {
        cur.push_back(c);
        all_strings(alphabet, max_len, cur, out);
        cur.pop_back();
    }
}

// Every split of every short string over {/, a, b, =, &, NUL} into path and query: keys are
// equal exactly when the models are.
TEST(CacheKey, ExhaustiveSmallInputsMatchModel) {
    std::string alphabet("/ab=&\0", 6);
    std::vector<std::string> strings;
    std::string cur;
    all_strings(alphabet, 5, cur, strings);
    std::map<Sha256Digest, Model> seen;
    std::map<Model, Sha256Digest> by_model;
    size_t checked = 0;
    for (const std::string& s : strings) {
        for (size_t cut = 0; cut <= s.size(); ++cut) {
            std::string path = s.substr(0, cut), query = s.substr(cut);
            Model m = model(path, query);
            Sha256Digest k = key(path, query);
            auto [it, fresh] = seen.emplace(k, m);
            ASSERT_TRUE(fresh || it->second == m) << "collision: path \"" << path << "\"";
            auto [it2, fresh2] = by_model.emplace(m, k);
            ASSERT_TRUE(fresh2 || it2->second == k) << "same request, two keys";
            ++checked;
        }
    }
    EXPECT_GT(checked, 50000u);
    EXPECT_LT(seen.size(), checked);  // sorting did merge some
}

// Random permutations of a query's arguments with distinct names all give the same key.
TEST(CacheKey, RandomPermutations) {
    std::mt19937 rng(42);
    for (int round = 0; round < 200; ++round) {
        std::vector<std::string> args;
        int n = 1 + static_cast<int>(rng() % 12);
        for (int i = 0; i < n; ++i)
            args.push_back("k" + std::to_string(i) + "=" + std::to_string(rng() % 1000));
        auto join = [](const std::vector<std::string>& v) {
            std::string q;
            for (size_t i = 0; i < v.size(); ++i) q += (i ? "&" : "") + v[i];
            return q;
        };
        Sha256Digest k = key("/p", join(args));
        std::shuffle(args.begin(), args.end(), rng);
        EXPECT_EQ(k, key("/p", join(args)));
    }
}

TEST(CacheKey, ManyArguments) {
    std::string q;
    for (int i = 0; i < 100000; ++i) q += (i ? "&" : "") + std::to_string(99999 - i) + "=v";
    std::string q2;
    for (int i = 0; i < 100000; ++i) q2 += (i ? "&" : "") + std::to_string(i) + "=v";
    EXPECT_EQ(key("/p", q), key("/p", q2));
    std::string amps(1 << 16, '&');
    EXPECT_NE(key("/p", amps), key("/p", amps + "&"));
}

}  // namespace

namespace {

// The memo answers exactly cache_key() for every input: same inputs hit, any field changed
// misses, slots shared by many inputs only evict each other, long inputs bypass it.
TEST(CacheKeyMemo, AnswersExactlyCacheKey) {
    CacheKeyMemo memo(throttle::core::SipKey{1, 2});
    const std::string alice(64, 'a');
    std::vector<CacheKeyInput> inputs;
    std::vector<std::string> paths;
    for (int i = 0; i < 600; i++) {
        paths.push_back("/p/" + std::to_string(i));
    }
    for (int i = 0; i < 600; i++) {
        inputs.push_back(input("review", i % 2 ? std::string_view(alice) : std::string_view("anon"),
                               i % 3 ? "GET" : "HEAD", paths[size_t(i)], i % 5 ? "b=2&a=1" : ""));
    }
    for (int round = 0; round < 3; round++) {
        for (const CacheKeyInput& in : inputs) {
            ASSERT_EQ(memo.key(in), cache_key(in));
        }
    }
    EXPECT_GT(memo.hits(), 0u);
    // The same request twice in a row: the second is a hit.
    size_t before = memo.hits();
    EXPECT_EQ(memo.key(inputs[7]), cache_key(inputs[7]));
    EXPECT_EQ(memo.key(inputs[7]), cache_key(inputs[7]));
    EXPECT_GE(memo.hits(), before + 1);
    // Each field matters.
    CacheKeyInput base = input("review", alice, "GET", "/x", "a=1");
    const Sha256Digest k = memo.key(base);
    CacheKeyInput v = base;
    v.ns = "other";
    EXPECT_NE(memo.key(v), k);
    v = base;
    v.identity_digest = "anon";
    EXPECT_NE(memo.key(v), k);
    v = base;
    v.query = "a=2";
    EXPECT_NE(memo.key(v), k);
    v = base;
    v.host = "b.test";
    EXPECT_NE(memo.key(v), k);
    v = base;
    v.scheme = "https";
    EXPECT_NE(memo.key(v), k);
    v = base;
    v.extra = "en";
    EXPECT_NE(memo.key(v), k);
    EXPECT_EQ(memo.key(base), k);
    // Inputs longer than max_input: computed, not memoised, still exact.
    const std::string long_path(CacheKeyMemo::max_input, 'p');
    CacheKeyInput big = input("review", alice, "GET", long_path, "");
    before = memo.hits();
    EXPECT_EQ(memo.key(big), cache_key(big));
    EXPECT_EQ(memo.key(big), cache_key(big));
    EXPECT_EQ(memo.hits(), before);
}

// More inputs than slots: sets overflow, their inputs evict each other (least recently used
// first), and every answer is still exactly cache_key(). A set's inputs asked in turn stay.
TEST(CacheKeyMemo, FullSetsEvictNeverMix) {
    CacheKeyMemo memo(throttle::core::SipKey{3, 4});
    const std::string alice(64, 'a');
    std::vector<std::string> paths;
    for (size_t i = 0; i < CacheKeyMemo::slots * 2; i++) {
        paths.push_back("/q/" + std::to_string(i));
    }
    for (int round = 0; round < 2; round++) {
        for (const std::string& p : paths) {
            CacheKeyInput in = input("review", alice, "GET", p, "");
            ASSERT_EQ(memo.key(in), cache_key(in)) << p;
        }
    }
    // A few inputs in turn, far fewer than a set's ways can hold in all: all hits after one pass.
    size_t before = memo.hits();
    for (int round = 0; round < 3; round++) {
        for (size_t i = 0; i < 3; i++) {
            CacheKeyInput in = input("review", alice, "GET", paths[i], "");
            ASSERT_EQ(memo.key(in), cache_key(in));
        }
    }
    EXPECT_GE(memo.hits(), before + 6);
}

TEST(CacheKey, AnonymousIdentityNeedsNoKey) {
    EXPECT_EQ(identity_digest("any secret", ""), "anon");
    EXPECT_EQ(identity_digest("", ""), "anon");
}

}  // namespace
