// The response cache's scripts (src/redis/cache_scripts.hpp): argument builders and reply
// parsers on their own, then the scripts in a real redis-server driven through the Client and
// libevent: miss, store, hit with the exact bytes (binary, 1 MB); a user's invalidation makes
// only their entries unreachable; a namespace's reaches everyone in it and no one else; the fill
// lock is taken once; entry and generation expiries; a store after an invalidation is refused;
// the Lua entry key is core::cache::entry_key() byte for byte; malformed calls are error replies.
// The stampede wake-up: a lookup that finds the fill lock taken leaves a waiter mark; STORE and
// RELEASE publish "1" E / "0" E on the fill channel only when one exists (seen by a real
// SUBSCRIBE on a blocking connection); RELEASE drops the lock. Fill locks have owners: the
// lock's value is its filler's token, only that filler renews (RENEW), stores under, releases
// or abandons it.
#include "redis/cache_scripts.hpp"

#include <gtest/gtest.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <set>

#include "core/cache_key.hpp"
#include "core/hash.hpp"
#include "redis/cluster.hpp"
#include "support.hpp"

namespace throttle::redis::test {
namespace {

namespace cc = core::cache;

Reply integer(long long v) {
    Reply r;
    r.type = Reply::Type::Integer;
    r.integer = v;
    return r;
}

Reply bulk(std::string s) {
    Reply r;
    r.type = Reply::Type::String;
    r.str = std::move(s);
    return r;
}

Reply array(std::vector<Reply> e) {
    Reply r;
    r.type = Reply::Type::Array;
    r.elements = std::move(e);
    return r;
}

std::vector<std::string> strings(const std::vector<std::string_view>& v) {
    return std::vector<std::string>(v.begin(), v.end());
}

core::Sha256Digest digest_of(std::string_view path) {
    cc::CacheKeyInput in;
    in.ns = "review";
    in.identity_digest = "anon";
    in.method = "GET";
    in.path = path;
    return cc::cache_key(in);
}

CacheTarget target(std::string_view prefix, std::string_view ns, std::string_view id,
                   std::string_view path) {
    CacheTarget t;
    t.prefix = prefix;
    t.ns = ns;
    t.id = id;
    t.key = digest_of(path);
    return t;
}

cc::Generation gen(uint64_t ns, uint64_t user) {
    cc::Generation g;
    g.ns = ns;
    g.user = user;
    return g;
}

const std::string user_a = cc::identity_digest("secret", "session-a");
const std::string user_b = cc::identity_digest("secret", "session-b");

// ---- without Redis ----

const std::string tok = "0123456789abcdef.4242.1";  // an owner token as the module makes them

TEST(RedisCacheScriptsUnit, LookupArguments) {
    const CacheTarget t = target("tc:", "review", user_a, "/api/review/today/");
    EvalArgs a;
    ASSERT_TRUE(build_cache_lookup_args(t, 5000, true, tok, a));
    EXPECT_EQ(strings(a.keys()),
              (std::vector<std::string>{"tc:{review:" + user_a + "}:g", "tc:{review}:g"}));
    EXPECT_EQ(strings(a.args()), (std::vector<std::string>{"tc:", "review", user_a,
                                                           core::hex(t.key), "5000", "1", tok}));
    // No lock: its ttl and token do not matter.
    ASSERT_TRUE(build_cache_lookup_args(t, 0, false, "", a));
    EXPECT_EQ(a.args()[4], "0");
    EXPECT_EQ(a.args()[5], "0");
    EXPECT_EQ(a.args()[6], "");
    ASSERT_TRUE(build_cache_lookup_args(t, 0, false, tok, a));
    EXPECT_EQ(a.args()[6], "");
    EXPECT_FALSE(build_cache_lookup_args(t, 0, true, tok, a));
    EXPECT_TRUE(a.keys().empty());
    EXPECT_TRUE(a.args().empty());
    EXPECT_FALSE(build_cache_lookup_args(t, 5000, true, "", a));  // a lock needs an owner
    EXPECT_FALSE(build_cache_lookup_args(t, 5000, true, std::string(65, 'x'), a));
    EXPECT_TRUE(build_cache_lookup_args(t, 5000, true, std::string(64, 'x'), a));
    EXPECT_FALSE(build_cache_lookup_args(target("tc:", "a:b", "anon", "/"), 5000, true, tok, a));
    EXPECT_FALSE(build_cache_lookup_args(target("tc:", "", "anon", "/"), 5000, true, tok, a));
    EXPECT_FALSE(build_cache_lookup_args(target("tc:", "{x}", "anon", "/"), 5000, true, tok, a));
}

TEST(RedisCacheScriptsUnit, StoreArguments) {
    const CacheTarget t = target("tc:", "review", "anon", "/x");
    const std::string entry("TCE\x01\0body", 9);
    const std::string ch = "tc:cache:filled";
    EvalArgs a;
    ASSERT_TRUE(build_cache_store_args(t, gen(3, 9007199254740991), tok, entry, 60000, ch, a));
    const std::string e = cc::entry_key("tc:", "review", "anon", gen(3, 9007199254740991), t.key);
    EXPECT_EQ(e, "tc:{review:anon}:e:3.9007199254740991:" + core::hex(t.key));
    EXPECT_EQ(strings(a.keys()), (std::vector<std::string>{e, e + ":l", e + ":w",
                                                           "tc:{review:anon}:g", "tc:{review}:g"}));
    EXPECT_EQ(strings(a.args()), (std::vector<std::string>{entry, "60000", "3", "9007199254740991",
                                                           "2592000000", ch, tok}));
    EXPECT_EQ(cache_entry_key(t, gen(3, 9007199254740991)), e);
    EXPECT_TRUE(build_cache_store_args(t, gen(0, 0), tok, entry, cache_generation_ttl_ms, ch, a));
    EXPECT_FALSE(
        build_cache_store_args(t, gen(0, 0), tok, entry, cache_generation_ttl_ms + 1, ch, a));
    EXPECT_TRUE(a.keys().empty());
    EXPECT_FALSE(build_cache_store_args(t, gen(0, 0), tok, entry, 0, ch, a));
    EXPECT_FALSE(build_cache_store_args(t, gen(0, 0), tok, "", 1000, ch, a));
    EXPECT_FALSE(build_cache_store_args(t, gen(0, 0), tok, entry, 1000, "", a));
    EXPECT_FALSE(build_cache_store_args(t, gen(0, 0), "", entry, 1000, ch, a));
    EXPECT_TRUE(a.args().empty());
    EXPECT_FALSE(build_cache_store_args(target("tc:", "a b", "anon", "/"), gen(0, 0), tok, entry,
                                        1000, ch, a));
}

TEST(RedisCacheScriptsUnit, ReleaseArguments) {
    const CacheTarget t = target("tc:", "review", "anon", "/x");
    EvalArgs a;
    ASSERT_TRUE(build_cache_release_args(t, gen(2, 5), tok, "tc:cache:filled", a));
    const std::string e = cc::entry_key("tc:", "review", "anon", gen(2, 5), t.key);
    EXPECT_EQ(strings(a.keys()), (std::vector<std::string>{cc::fill_lock_key(e), e + ":w"}));
    EXPECT_EQ(strings(a.args()), (std::vector<std::string>{"tc:cache:filled", e, tok}));
    EXPECT_FALSE(build_cache_release_args(t, gen(2, 5), tok, "", a));
    EXPECT_TRUE(a.keys().empty());
    EXPECT_TRUE(a.args().empty());
    EXPECT_FALSE(build_cache_release_args(t, gen(2, 5), "", "c", a));
    EXPECT_FALSE(build_cache_release_args(target("tc:", "", "anon", "/"), gen(0, 0), tok, "c", a));
}

TEST(RedisCacheScriptsUnit, RenewArguments) {
    const CacheTarget t = target("tc:", "review", "anon", "/x");
    const std::string e = cache_entry_key(t, gen(2, 5));
    EvalArgs a;
    ASSERT_TRUE(build_cache_renew_args(e, tok, 2000, a));
    EXPECT_EQ(strings(a.keys()), (std::vector<std::string>{cc::fill_lock_key(e)}));
    EXPECT_EQ(strings(a.args()), (std::vector<std::string>{tok, "2000"}));
    EXPECT_FALSE(build_cache_renew_args(e, tok, 0, a));
    EXPECT_TRUE(a.keys().empty());
    EXPECT_TRUE(a.args().empty());
    EXPECT_FALSE(build_cache_renew_args(e, "", 2000, a));
    EXPECT_FALSE(build_cache_renew_args(e, std::string(65, 't'), 2000, a));
    EXPECT_FALSE(build_cache_renew_args("", tok, 2000, a));
    bool held = false;
    EXPECT_TRUE(parse_cache_renew_reply(integer(1), held));
    EXPECT_TRUE(held);
    EXPECT_TRUE(parse_cache_renew_reply(integer(0), held));
    EXPECT_FALSE(held);
    EXPECT_FALSE(parse_cache_renew_reply(integer(2), held));
    EXPECT_FALSE(parse_cache_renew_reply(bulk("1"), held));
    EXPECT_FALSE(parse_cache_renew_reply(Reply{}, held));
}

TEST(RedisCacheScriptsUnit, FillChannelAndMessages) {
    EXPECT_EQ(cache_fill_channel("tc:"), "tc:cache:filled");
    EXPECT_EQ(cache_fill_channel(""), "cache:filled");
    EXPECT_EQ(cache_fill_channel(std::string_view("a\0b", 3)), std::string("a\0bcache:filled", 15));

    bool stored = false;
    std::string_view key;
    const std::string one = "1tc:{review:anon}:e:0.0:ab";
    ASSERT_TRUE(parse_cache_fill_message(one, stored, key));
    EXPECT_TRUE(stored);
    EXPECT_EQ(key, "tc:{review:anon}:e:0.0:ab");
    EXPECT_EQ(key.data(), one.data() + 1);  // a view into the message
    ASSERT_TRUE(parse_cache_fill_message(std::string_view("0\0", 2), stored, key));
    EXPECT_FALSE(stored);
    EXPECT_EQ(key, std::string_view("\0", 1));
    for (std::string_view bad : {"", "0", "1", "2x", "x1", " 1x", "\x01x"}) {
        EXPECT_FALSE(parse_cache_fill_message(bad, stored, key)) << bad;
    }
}

TEST(RedisCacheScriptsUnit, InvalidateArguments) {
    EvalArgs a;
    ASSERT_TRUE(build_cache_invalidate_args("tc:", user_a, {"review", "analytics"}, a));
    EXPECT_EQ(strings(a.keys()), (std::vector<std::string>{"tc:{review:" + user_a + "}:g",
                                                           "tc:{analytics:" + user_a + "}:g"}));
    EXPECT_EQ(strings(a.args()), (std::vector<std::string>{"2592000000"}));
    EXPECT_FALSE(build_cache_invalidate_args("tc:", user_a, {}, a));
    EXPECT_FALSE(build_cache_invalidate_args("tc:", user_a, {"review", "bad:ns"}, a));
    EXPECT_TRUE(a.keys().empty());
    EXPECT_TRUE(a.args().empty());
    ASSERT_TRUE(build_cache_invalidate_namespace_args("tc:", "review", a));
    EXPECT_EQ(strings(a.keys()), (std::vector<std::string>{"tc:{review}:g"}));
    EXPECT_EQ(strings(a.args()), (std::vector<std::string>{"2592000000"}));
    EXPECT_FALSE(build_cache_invalidate_namespace_args("tc:", "", a));
}

TEST(RedisCacheScriptsUnit, ParseLookupReply) {
    CacheLookup l;
    ASSERT_TRUE(parse_cache_lookup_reply(array({integer(2), integer(5), Reply(), integer(1)}), l));
    EXPECT_EQ(l.ns_gen, 2u);
    EXPECT_EQ(l.user_gen, 5u);
    EXPECT_FALSE(l.hit);
    EXPECT_TRUE(l.entry.empty());
    EXPECT_TRUE(l.lock_taken);
    EXPECT_EQ(l.generation().ns, 2u);
    EXPECT_EQ(l.generation().user, 5u);
    const std::string bytes("TCE\x01\0\xff", 6);
    const Reply hit = array({integer(0), integer(9007199254740991), bulk(bytes), integer(0)});
    ASSERT_TRUE(parse_cache_lookup_reply(hit, l));
    EXPECT_TRUE(l.hit);
    EXPECT_EQ(l.entry, bytes);
    EXPECT_FALSE(l.lock_taken);
    EXPECT_EQ(l.user_gen, 9007199254740991u);
    Reply moved = hit;
    CacheLookup m;
    ASSERT_TRUE(parse_cache_lookup_reply(std::move(moved), m));
    EXPECT_EQ(m.entry, bytes);
    ASSERT_TRUE(parse_cache_lookup_reply(array({integer(0), integer(0), Reply(), integer(0)}), l));
    EXPECT_FALSE(l.hit);
    EXPECT_TRUE(l.entry.empty());  // the previous entry is gone

    const std::vector<Reply> bad = {
        Reply(),
        integer(1),
        bulk("x"),
        array({}),
        array({integer(0), integer(0), Reply()}),                             // short
        array({integer(0), integer(0), Reply(), integer(0), integer(0)}),     // long
        array({integer(-1), integer(0), Reply(), integer(0)}),                // negative gen
        array({integer(0), integer(9007199254740992), Reply(), integer(0)}),  // 2^53
        array({integer(0), integer(LLONG_MIN), Reply(), integer(0)}),
        array({bulk("0"), integer(0), Reply(), integer(0)}),      // gen as string
        array({integer(0), integer(0), bulk(""), integer(0)}),    // empty entry
        array({integer(0), integer(0), integer(7), integer(0)}),  // entry integer
        array({integer(0), integer(0), array({}), integer(0)}),   // entry array
        array({integer(0), integer(0), Reply(), integer(2)}),     // lock 2
        array({integer(0), integer(0), Reply(), Reply()}),        // lock nil
        array({integer(0), integer(0), bulk("e"), integer(1)}),   // lock on a hit
    };
    for (size_t i = 0; i < bad.size(); i++) {
        EXPECT_FALSE(parse_cache_lookup_reply(bad[i], l)) << i;
        Reply copy = bad[i];
        EXPECT_FALSE(parse_cache_lookup_reply(std::move(copy), l)) << i;
    }
    Reply err;
    err.type = Reply::Type::Error;
    err.str = "ERR throttle cache lookup: bad lock ttl";
    EXPECT_FALSE(parse_cache_lookup_reply(err, l));
}

TEST(RedisCacheScriptsUnit, LookupBatchArguments) {
    const CacheTarget t1 = target("tc:", "review", user_a, "/a");
    const CacheTarget t2 = target("p:", "analytics", "anon", "/b");
    std::vector<CacheLookupRequest> reqs(3);
    reqs[0].target = t1;
    reqs[0].lock_ttl_ms = 5000;
    reqs[0].want_lock = true;
    reqs[0].token = tok;
    reqs[1].target = t2;
    reqs[1].lock_ttl_ms = 0;  // no lock: its ttl and token do not matter
    reqs[2].target = t1;
    reqs[2].lock_ttl_ms = 700;
    reqs[2].want_lock = true;
    reqs[2].token = "other.1.2";
    EvalArgs a;
    ASSERT_TRUE(build_cache_lookup_batch_args(reqs.data(), reqs.size(), a));
    // Each lookup's KEYS and ARGV are the single LOOKUP's, in order.
    std::vector<std::string> keys, args;
    for (const CacheLookupRequest& r : reqs) {
        EvalArgs one;
        ASSERT_TRUE(build_cache_lookup_args(r.target, r.lock_ttl_ms, r.want_lock, r.token, one));
        for (std::string_view k : one.keys()) {
            keys.emplace_back(k);
        }
        for (std::string_view v : one.args()) {
            args.emplace_back(v);
        }
    }
    EXPECT_EQ(strings(a.keys()), keys);
    EXPECT_EQ(strings(a.args()), args);
    EXPECT_EQ(a.keys().size(), 6u);
    EXPECT_EQ(a.args().size(), 21u);
    EXPECT_EQ(a.args()[20], "other.1.2");
    EXPECT_EQ(a.args()[19], "1");
    EXPECT_EQ(a.args()[18], "700");
    EXPECT_EQ(a.args()[13], "");  // lookup 2 wants no lock

    ASSERT_TRUE(build_cache_lookup_batch_args(reqs.data(), 1, a));
    EXPECT_EQ(a.keys().size(), 2u);
    std::vector<CacheLookupRequest> max(cache_lookup_batch_max, reqs[1]);
    ASSERT_TRUE(build_cache_lookup_batch_args(max.data(), max.size(), a));
    EXPECT_EQ(a.keys().size(), 2 * cache_lookup_batch_max);
    EXPECT_EQ(a.args().size(), 7 * cache_lookup_batch_max);

    // Refused, `out` cleared: 0, 65, one bad lookup anywhere.
    auto refused = [&](const CacheLookupRequest* r, size_t n) {
        ASSERT_TRUE(build_cache_lookup_batch_args(reqs.data(), 1, a));
        EXPECT_FALSE(build_cache_lookup_batch_args(r, n, a));
        EXPECT_TRUE(a.keys().empty());
        EXPECT_TRUE(a.args().empty());
    };
    refused(reqs.data(), 0);
    refused(nullptr, 0);
    max.push_back(reqs[1]);
    refused(max.data(), max.size());
    std::vector<CacheLookupRequest> bad = reqs;
    bad[2].lock_ttl_ms = 0;  // wants the lock with no ttl
    refused(bad.data(), bad.size());
    bad = reqs;
    bad[2].token = "";  // wants the lock with no owner
    refused(bad.data(), bad.size());
    bad = reqs;
    bad[1].target.ns = "a:b";
    refused(bad.data(), bad.size());
    bad = reqs;
    bad[0].target.ns = "";
    refused(bad.data(), bad.size());
}

TEST(RedisCacheScriptsUnit, ParseLookupBatchReply) {
    const std::string bytes("TCE\x01\0\xff", 6);
    auto good = [&] {
        return array({integer(2), integer(5), Reply(), integer(1),                     //
                      integer(0), integer(9007199254740991), bulk(bytes), integer(0),  //
                      integer(2), integer(5), Reply(), integer(0)});
    };
    std::vector<CacheLookup> out(7);
    out[1].entry = "stale";
    ASSERT_TRUE(parse_cache_lookup_batch_reply(good(), 3, out));
    ASSERT_EQ(out.size(), 3u);
    Reply r = good();
    for (size_t i = 0; i < 3; i++) {
        // Each is what the single parser gives for its 4 elements.
        CacheLookup one;
        ASSERT_TRUE(parse_cache_lookup_reply(array({r.elements[4 * i], r.elements[4 * i + 1],
                                                    r.elements[4 * i + 2], r.elements[4 * i + 3]}),
                                             one));
        EXPECT_EQ(out[i].ns_gen, one.ns_gen) << i;
        EXPECT_EQ(out[i].user_gen, one.user_gen) << i;
        EXPECT_EQ(out[i].hit, one.hit) << i;
        EXPECT_EQ(out[i].entry, one.entry) << i;
        EXPECT_EQ(out[i].lock_taken, one.lock_taken) << i;
    }
    EXPECT_TRUE(out[0].lock_taken);
    EXPECT_TRUE(out[1].hit);
    EXPECT_EQ(out[1].entry, bytes);
    EXPECT_FALSE(out[2].hit);
    EXPECT_TRUE(out[2].entry.empty());
    // The entry's bytes are moved out of the reply.
    const std::string big(1000, 'x');
    Reply moved = array({integer(0), integer(0), bulk(big), integer(0)});
    const char* data = moved.elements[2].str.data();
    ASSERT_TRUE(parse_cache_lookup_batch_reply(std::move(moved), 1, out));
    ASSERT_EQ(out.size(), 1u);
    EXPECT_EQ(out[0].entry.data(), data);
    std::vector<Reply> max;
    for (size_t i = 0; i < cache_lookup_batch_max; i++) {
        for (const Reply& e : {integer(1), integer(2), Reply(), integer(0)}) {
            max.push_back(e);
        }
    }
    ASSERT_TRUE(parse_cache_lookup_batch_reply(array(max), cache_lookup_batch_max, out));
    EXPECT_EQ(out.size(), cache_lookup_batch_max);

    // Wrong shapes.
    EXPECT_FALSE(parse_cache_lookup_batch_reply(good(), 2, out));  // n does not match
    EXPECT_FALSE(parse_cache_lookup_batch_reply(good(), 4, out));
    EXPECT_FALSE(parse_cache_lookup_batch_reply(good(), 0, out));
    EXPECT_FALSE(parse_cache_lookup_batch_reply(array({}), 0, out));
    for (const Reply& e : {integer(1), integer(2), Reply(), integer(0)}) {
        max.push_back(e);
    }
    EXPECT_FALSE(parse_cache_lookup_batch_reply(array(max), cache_lookup_batch_max + 1, out));
    Reply err;
    err.type = Reply::Type::Error;
    err.str = "ERR throttle cache lookup batch: lookup 1: bad lock ttl";
    EXPECT_FALSE(parse_cache_lookup_batch_reply(std::move(err), 1, out));
    EXPECT_FALSE(parse_cache_lookup_batch_reply(Reply(), 1, out));
    EXPECT_FALSE(parse_cache_lookup_batch_reply(integer(1), 1, out));
    // Nested (one array per lookup) is not the shape.
    EXPECT_FALSE(parse_cache_lookup_batch_reply(
        array({array({integer(0), integer(0), Reply(), integer(0)})}), 1, out));
    // One bad element anywhere spoils the batch (the single parser's bad shapes, in lookup 2).
    const std::vector<std::vector<Reply>> bad_items = {
        {integer(-1), integer(0), Reply(), integer(0)},
        {integer(0), integer(9007199254740992), Reply(), integer(0)},
        {bulk("0"), integer(0), Reply(), integer(0)},
        {integer(0), integer(0), bulk(""), integer(0)},
        {integer(0), integer(0), integer(7), integer(0)},
        {integer(0), integer(0), array({}), integer(0)},
        {integer(0), integer(0), Reply(), integer(2)},
        {integer(0), integer(0), Reply(), Reply()},
        {integer(0), integer(0), bulk("e"), integer(1)},
    };
    for (size_t b = 0; b < bad_items.size(); b++) {
        Reply x = good();
        for (size_t j = 0; j < 4; j++) {
            x.elements[4 + j] = bad_items[b][j];
        }
        EXPECT_FALSE(parse_cache_lookup_batch_reply(std::move(x), 3, out)) << b;
    }
    Reply shifted = good();  // 12 elements but lookup 1 is short and lookup 3 long
    shifted.elements.erase(shifted.elements.begin() + 3);
    shifted.elements.push_back(integer(0));
    EXPECT_FALSE(parse_cache_lookup_batch_reply(std::move(shifted), 3, out));
}

TEST(RedisCacheScriptsUnit, ParseStoreReleaseAndInvalidateReplies) {
    bool stored = false;
    ASSERT_TRUE(parse_cache_store_reply(integer(1), stored));
    EXPECT_TRUE(stored);
    ASSERT_TRUE(parse_cache_store_reply(integer(0), stored));
    EXPECT_FALSE(stored);
    EXPECT_FALSE(parse_cache_store_reply(integer(2), stored));
    EXPECT_FALSE(parse_cache_store_reply(integer(-1), stored));
    EXPECT_FALSE(parse_cache_store_reply(bulk("1"), stored));
    EXPECT_FALSE(parse_cache_store_reply(Reply(), stored));
    Reply ok;
    ok.type = Reply::Type::Status;
    ok.str = "OK";
    EXPECT_FALSE(parse_cache_store_reply(ok, stored));
    EXPECT_FALSE(parse_cache_store_reply(array({integer(1)}), stored));

    bool had = false;
    ASSERT_TRUE(parse_cache_release_reply(integer(1), had));
    EXPECT_TRUE(had);
    ASSERT_TRUE(parse_cache_release_reply(integer(0), had));
    EXPECT_FALSE(had);
    for (const Reply& bad : {integer(2), integer(-1), bulk("0"), Reply(), ok}) {
        EXPECT_FALSE(parse_cache_release_reply(bad, had));
    }

    std::vector<uint64_t> g;
    ASSERT_TRUE(parse_cache_invalidate_reply(array({integer(1), integer(9007199254740991)}), 2, g));
    EXPECT_EQ(g, (std::vector<uint64_t>{1, 9007199254740991}));
    EXPECT_FALSE(parse_cache_invalidate_reply(array({integer(1)}), 2, g));
    EXPECT_FALSE(parse_cache_invalidate_reply(array({integer(1), integer(2)}), 1, g));
    EXPECT_FALSE(parse_cache_invalidate_reply(array({}), 0, g));
    EXPECT_FALSE(parse_cache_invalidate_reply(array({integer(0)}), 1, g));  // INCR gives >= 1
    EXPECT_FALSE(parse_cache_invalidate_reply(array({integer(9007199254740992)}), 1, g));
    EXPECT_FALSE(parse_cache_invalidate_reply(array({bulk("1")}), 1, g));
    EXPECT_FALSE(parse_cache_invalidate_reply(array({Reply()}), 1, g));
    EXPECT_FALSE(parse_cache_invalidate_reply(integer(1), 1, g));
    EXPECT_FALSE(parse_cache_invalidate_reply(ok, 1, g));

    bool taken = false;
    ASSERT_TRUE(parse_cache_fill_lock_reply(ok, taken));
    EXPECT_TRUE(taken);
    ASSERT_TRUE(parse_cache_fill_lock_reply(Reply(), taken));
    EXPECT_FALSE(taken);
    EXPECT_FALSE(parse_cache_fill_lock_reply(bulk("OK"), taken));
    EXPECT_FALSE(parse_cache_fill_lock_reply(integer(1), taken));
    Reply queued;
    queued.type = Reply::Type::Status;
    queued.str = "QUEUED";
    EXPECT_FALSE(parse_cache_fill_lock_reply(queued, taken));
}

TEST(RedisCacheScriptsUnit, ScriptsAreBuiltOnce) {
    EXPECT_EQ(&cache_lookup_script(), &cache_lookup_script());
    EXPECT_EQ(&cache_lookup_batch_script(), &cache_lookup_batch_script());
    EXPECT_NE(cache_lookup_script().sha(), cache_lookup_batch_script().sha());
    EXPECT_EQ(cache_lookup_batch_script().source().compare(0, 6, "#!lua\n"), 0);
    EXPECT_EQ(&cache_store_script(), &cache_store_script());
    EXPECT_EQ(&cache_release_script(), &cache_release_script());
    EXPECT_EQ(&cache_renew_script(), &cache_renew_script());
    EXPECT_NE(cache_renew_script().sha(), cache_release_script().sha());
    EXPECT_EQ(cache_renew_script().source().compare(0, 6, "#!lua\n"), 0);
    EXPECT_EQ(&cache_invalidate_script(), &cache_invalidate_script());
    EXPECT_NE(cache_lookup_script().sha(), cache_store_script().sha());
    EXPECT_NE(cache_store_script().sha(), cache_invalidate_script().sha());
    EXPECT_NE(cache_release_script().sha(), cache_store_script().sha());
    EXPECT_NE(cache_release_script().sha(), cache_invalidate_script().sha());
    EXPECT_EQ(cache_release_script().source().compare(0, 6, "#!lua\n"), 0);
    EXPECT_EQ(cache_lookup_script().source().compare(0, 6, "#!lua\n"), 0);
    const std::string& src = cache_lookup_script().source();
    EXPECT_EQ(cache_lookup_script().sha(), core::hex(core::sha1(src.data(), src.size())));
}

// ---- against redis-server ----

// The fast lookup's MGET: per lookup its user generation key, its namespace generation key and
// its entry key under the guessed generations, in order.
TEST(RedisCacheScriptsUnit, FastLookupArguments) {
    const CacheTarget ts[] = {target("tc:", "review", user_a, "/a"),
                              target("x{y}:", "n", "anon", "/b")};
    const cc::Generation gs[] = {gen(0, 0), gen(3, 9007199254740991)};
    EvalArgs a;
    ASSERT_TRUE(build_cache_fast_lookup_argv(ts, gs, 2, a));
    EXPECT_TRUE(a.keys().empty());
    const std::vector<std::string> want = {
        "MGET",
        cc::generation_key("tc:", "review", user_a),
        cc::namespace_generation_key("tc:", "review"),
        cache_entry_key(ts[0], gs[0]),
        cc::generation_key("x{y}:", "n", "anon"),
        cc::namespace_generation_key("x{y}:", "n"),
        cache_entry_key(ts[1], gs[1]),
    };
    EXPECT_EQ(strings(a.args()), want);
    EXPECT_NE(want[6].find(":e:3.9007199254740991:"), std::string::npos);

    EXPECT_FALSE(build_cache_fast_lookup_argv(ts, gs, 0, a));
    EXPECT_TRUE(a.args().empty());
    std::vector<CacheTarget> many(cache_lookup_batch_max + 1, ts[0]);
    std::vector<cc::Generation> many_gs(many.size());
    EXPECT_TRUE(
        build_cache_fast_lookup_argv(many.data(), many_gs.data(), cache_lookup_batch_max, a));
    EXPECT_EQ(a.args().size(), 1 + 3 * cache_lookup_batch_max);
    EXPECT_FALSE(build_cache_fast_lookup_argv(many.data(), many_gs.data(), many.size(), a));
    EXPECT_TRUE(a.args().empty());
    const CacheTarget bad_ns[] = {target("tc:", "re view", user_a, "/a")};
    EXPECT_FALSE(build_cache_fast_lookup_argv(bad_ns, gs, 1, a));
    const cc::Generation too_big[] = {gen(cache_generation_limit, 0)};
    EXPECT_FALSE(build_cache_fast_lookup_argv(ts, too_big, 1, a));
    const cc::Generation too_big_user[] = {gen(0, cache_generation_limit)};
    EXPECT_FALSE(build_cache_fast_lookup_argv(ts, too_big_user, 1, a));
}

// A lookup is answered only when both generations read back as the guesses' canonical decimals
// and the entry is a non-empty string; anything else is no answer (the script is asked).
TEST(RedisCacheScriptsUnit, ParseFastLookupReply) {
    const Reply nil;
    auto reply_of = [](std::vector<Reply> e) { return array(std::move(e)); };
    const cc::Generation gs[] = {gen(2, 7), gen(0, 0)};
    std::vector<CacheLookup> out;

    ASSERT_TRUE(parse_cache_fast_lookup_reply(
        reply_of({bulk("7"), bulk("2"), bulk("entry"), bulk("0"), bulk("0"), bulk("e2")}), gs, 2,
        out));
    ASSERT_EQ(out.size(), 2u);
    EXPECT_TRUE(out[0].hit);
    EXPECT_EQ(out[0].entry, "entry");
    EXPECT_EQ(out[0].ns_gen, 2u);
    EXPECT_EQ(out[0].user_gen, 7u);
    EXPECT_FALSE(out[0].lock_taken);
    EXPECT_TRUE(out[1].hit);
    EXPECT_EQ(out[1].entry, "e2");

    // Not answered: a nil generation (missing or another type), another value, a value that is
    // not canonical, the two generations swapped, no entry, an empty entry.
    const std::vector<std::vector<Reply>> misses = {
        {nil, bulk("2"), bulk("entry")},
        {bulk("7"), nil, bulk("entry")},
        {bulk("8"), bulk("2"), bulk("entry")},
        {bulk("7"), bulk("3"), bulk("entry")},
        {bulk("07"), bulk("2"), bulk("entry")},
        {bulk("7"), bulk("+2"), bulk("entry")},
        {bulk("7 "), bulk("2"), bulk("entry")},
        {bulk("2"), bulk("7"), bulk("entry")},
        {bulk("7"), bulk("2"), nil},
        {bulk("7"), bulk("2"), bulk("")},
    };
    for (const std::vector<Reply>& m : misses) {
        std::vector<Reply> e = m;
        e.push_back(bulk("0"));
        e.push_back(bulk("0"));
        e.push_back(bulk("e2"));
        ASSERT_TRUE(parse_cache_fast_lookup_reply(reply_of(e), gs, 2, out));
        EXPECT_FALSE(out[0].hit) << m[0].str << " " << m[1].str << " " << m[2].str;
        EXPECT_TRUE(out[0].entry.empty());
        EXPECT_TRUE(out[1].hit);
    }
    // A guess of 0 never matches a missing key.
    ASSERT_TRUE(parse_cache_fast_lookup_reply(reply_of({nil, nil, bulk("e")}), gs + 1, 1, out));
    EXPECT_FALSE(out[0].hit);

    // Refused: another shape.
    EXPECT_FALSE(parse_cache_fast_lookup_reply(reply_of({bulk("7"), bulk("2")}), gs, 1, out));
    EXPECT_FALSE(parse_cache_fast_lookup_reply(
        reply_of({bulk("7"), bulk("2"), bulk("e"), bulk("0")}), gs, 1, out));
    EXPECT_FALSE(
        parse_cache_fast_lookup_reply(reply_of({integer(7), bulk("2"), bulk("e")}), gs, 1, out));
    EXPECT_FALSE(parse_cache_fast_lookup_reply(reply_of({bulk("7"), bulk("2"), array({bulk("e")})}),
                                               gs, 1, out));
    Reply err;
    err.type = Reply::Type::Error;
    err.str = "NOPERM this user has no permissions to run the 'mget' command";
    EXPECT_FALSE(parse_cache_fast_lookup_reply(Reply(err), gs, 1, out));
    EXPECT_FALSE(parse_cache_fast_lookup_reply(bulk("x"), gs, 1, out));
    EXPECT_FALSE(parse_cache_fast_lookup_reply(reply_of({}), gs, 0, out));
}

class RedisCacheScriptsTest : public ::testing::Test {
   protected:
    void SetUp() override {
        if (!have_redis_server()) {
            GTEST_SKIP() << "redis-server not found (set THROTTLE_REDIS_SERVER)";
        }
        server = std::make_unique<RedisServer>();
        ASSERT_TRUE(server->start());
        ctl = std::make_unique<Control>(server->port());
        ASSERT_TRUE(ctl->ok());
        Config c;
        c.address = server->address();
        c.command_timeout_ms = 5000;
        c.failure_threshold = 0;  // malformed calls are error replies, which the breaker counts
        client = std::make_unique<Client>(ev.loop(), c);
    }

    Reply eval(const Script& s, const EvalArgs& a) {
        Outcome o;
        inside_call() = true;
        client->evalsha(s, a.keys(), a.args(), track(o));
        inside_call() = false;
        if (!ev.run_until([&] { return o.calls > 0; }, 30000)) {
            ADD_FAILURE() << "no reply";
            client->close();
            ev.run_until([&] { return o.calls > 0; }, 5000);
        }
        EXPECT_FALSE(o.synchronous);
        EXPECT_TRUE(o.result.ok()) << to_string(o.result.failure);
        return std::move(o.result.reply);
    }

    CacheLookup lookup(const CacheTarget& t, bool want_lock = false, int64_t lock_ttl_ms = 5000,
                       std::string_view token = tok) {
        EvalArgs a;
        EXPECT_TRUE(build_cache_lookup_args(t, lock_ttl_ms, want_lock, token, a));
        Reply r = eval(cache_lookup_script(), a);
        CacheLookup l;
        EXPECT_TRUE(parse_cache_lookup_reply(std::move(r), l)) << to_string(r.type) << " " << r.str;
        return l;
    }

    std::vector<CacheLookup> lookup_batch(const std::vector<CacheLookupRequest>& reqs) {
        EvalArgs a;
        EXPECT_TRUE(build_cache_lookup_batch_args(reqs.data(), reqs.size(), a));
        Reply r = eval(cache_lookup_batch_script(), a);
        const std::string what = std::string(to_string(r.type)) + " " + r.str;
        std::vector<CacheLookup> out;
        EXPECT_TRUE(parse_cache_lookup_batch_reply(std::move(r), reqs.size(), out)) << what;
        return out;
    }

    // The fast lookup's MGET for targets under guesses, through the client; its parsed answers.
    std::vector<CacheLookup> fast_lookup(const std::vector<CacheTarget>& ts,
                                         const std::vector<cc::Generation>& guesses) {
        EvalArgs a;
        EXPECT_TRUE(build_cache_fast_lookup_argv(ts.data(), guesses.data(), ts.size(), a));
        Outcome o;
        client->command(a.args().data(), a.args().size(), track(o));
        EXPECT_TRUE(ev.run_until([&] { return o.calls > 0; }, 30000));
        EXPECT_TRUE(o.result.ok()) << to_string(o.result.failure);
        std::vector<CacheLookup> out;
        EXPECT_TRUE(parse_cache_fast_lookup_reply(std::move(o.result.reply), guesses.data(),
                                                  ts.size(), out));
        return out;
    }

    // LOOKUP's reply for one target (an error reply too: `ok` false).
    CacheLookup lookup_or_error(const CacheTarget& t, bool want_lock, std::string_view token,
                                bool& ok) {
        EvalArgs a;
        EXPECT_TRUE(build_cache_lookup_args(t, 5000, want_lock, token, a));
        Reply r = eval(cache_lookup_script(), a);
        CacheLookup l;
        ok = parse_cache_lookup_reply(std::move(r), l);
        return l;
    }

    // Every key in Redis (all strings), sorted: its name, value and PTTL (-1: no expiry).
    struct Stored {
        std::string key, value;
        long long pttl = 0;
    };
    std::vector<Stored> snapshot() {
        static const Script* dump = new Script(R"lua(#!lua
local ks = redis.call('KEYS', '*')
table.sort(ks)
local out = {}
for i, k in ipairs(ks) do
  out[3 * i - 2], out[3 * i - 1], out[3 * i] = k, redis.call('GET', k), redis.call('PTTL', k)
end
return out
)lua");
        Reply r = eval(*dump, EvalArgs());
        std::vector<Stored> out;
        EXPECT_EQ(r.type, Reply::Type::Array);
        EXPECT_EQ(r.elements.size() % 3, 0u);
        for (size_t i = 0; i + 2 < r.elements.size(); i += 3) {
            Stored st;
            st.key = r.elements[i].str;
            st.value = r.elements[i + 1].str;
            st.pttl = r.elements[i + 2].integer;
            out.push_back(std::move(st));
        }
        return out;
    }

    // Stores under the generations `l` returned; whether the script stored it.
    bool store(const CacheTarget& t, const CacheLookup& l, std::string_view entry,
               int64_t ttl_ms = 60000, std::string_view token = tok) {
        EvalArgs a;
        EXPECT_TRUE(build_cache_store_args(t, l.generation(), token, entry, ttl_ms,
                                           cache_fill_channel(t.prefix), a));
        Reply r = eval(cache_store_script(), a);
        bool stored = false;
        EXPECT_TRUE(parse_cache_store_reply(r, stored)) << to_string(r.type) << " " << r.str;
        return stored;
    }

    // Releases the fill lock of the entry under `l`'s generations; whether a waiter was marked.
    bool release(const CacheTarget& t, const CacheLookup& l, std::string_view token = tok) {
        EvalArgs a;
        EXPECT_TRUE(
            build_cache_release_args(t, l.generation(), token, cache_fill_channel(t.prefix), a));
        Reply r = eval(cache_release_script(), a);
        bool had = false;
        EXPECT_TRUE(parse_cache_release_reply(r, had)) << to_string(r.type) << " " << r.str;
        return had;
    }

    std::vector<uint64_t> invalidate(std::string_view prefix, std::string_view id,
                                     const std::vector<std::string_view>& namespaces) {
        EvalArgs a;
        EXPECT_TRUE(build_cache_invalidate_args(prefix, id, namespaces, a));
        Reply r = eval(cache_invalidate_script(), a);
        std::vector<uint64_t> g;
        EXPECT_TRUE(parse_cache_invalidate_reply(r, namespaces.size(), g))
            << to_string(r.type) << " " << r.str;
        return g;
    }

    std::vector<uint64_t> invalidate_namespace(std::string_view prefix, std::string_view ns) {
        EvalArgs a;
        EXPECT_TRUE(build_cache_invalidate_namespace_args(prefix, ns, a));
        Reply r = eval(cache_invalidate_script(), a);
        std::vector<uint64_t> g;
        EXPECT_TRUE(parse_cache_invalidate_reply(r, 1, g)) << to_string(r.type) << " " << r.str;
        return g;
    }

    // A raw call with hand-made KEYS and ARGV (malformed on purpose).
    Reply raw(const Script& s, const std::vector<std::string>& keys,
              const std::vector<std::string>& args) {
        EvalArgs a;
        for (const std::string& k : keys) {
            a.add_key(k);
        }
        for (const std::string& v : args) {
            a.add_arg(v);
        }
        return eval(s, a);
    }

    long long number(const std::string& text) { return std::atoll(text.c_str()); }

    EventLoop ev;
    std::unique_ptr<RedisServer> server;
    std::unique_ptr<Control> ctl;
    std::unique_ptr<Client> client;
};

// A blocking SUBSCRIBE connection: what was published on one channel, in order. To show that
// nothing was published, the test publishes a marker itself and expects it next (a client gets
// messages in the order the server published them).
class Listener {
   public:
    Listener(uint16_t port, const std::string& channel) {
        timeval tv{5, 0};
        c_ = redisConnectWithTimeout("127.0.0.1", port, tv);
        if (c_ == nullptr || c_->err != 0) {
            return;
        }
        redisSetTimeout(c_, tv);
        auto* r = static_cast<redisReply*>(
            redisCommand(c_, "SUBSCRIBE %b", channel.data(), channel.size()));
        ok_ = r != nullptr && r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
              Control::text(r->element[0]) == "subscribe";
        if (r != nullptr) {
            freeReplyObject(r);
        }
    }
    ~Listener() {
        if (c_ != nullptr) {
            redisFree(c_);
        }
    }
    Listener(const Listener&) = delete;
    Listener& operator=(const Listener&) = delete;

    bool ok() const { return ok_; }

    // The next message's payload, or "(none)" after 5 s.
    std::string next() {
        void* p = nullptr;
        if (c_ == nullptr || redisGetReply(c_, &p) != REDIS_OK || p == nullptr) {
            return "(none)";
        }
        auto* r = static_cast<redisReply*>(p);
        std::string out = "(not a message)";
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 3 &&
            Control::text(r->element[0]) == "message") {
            out = Control::text(r->element[2]);
        }
        freeReplyObject(r);
        return out;
    }

   private:
    redisContext* c_ = nullptr;
    bool ok_ = false;
};

std::string binary_body(size_t n) {
    std::string s(n, '\0');
    for (size_t i = 0; i < n; i++) {
        s[i] = char((i * 131 + i / 7) & 0xff);  // every byte value, NUL included
    }
    return s;
}

TEST_F(RedisCacheScriptsTest, MissStoreHitExactBytes) {
    const CacheTarget t = target("tc:", "review", user_a, "/api/review/today/");
    CacheLookup l = lookup(t);
    EXPECT_FALSE(l.hit);
    EXPECT_FALSE(l.lock_taken);  // not asked for
    EXPECT_EQ(l.ns_gen, 0u);
    EXPECT_EQ(l.user_gen, 0u);
    EXPECT_EQ(ctl->run({"DBSIZE"}), "0");  // a lookup creates nothing

    const std::string entry = std::string("TCE\x01\0", 5) + binary_body(1 << 20);
    ASSERT_TRUE(store(t, l, entry));
    CacheLookup h = lookup(t, true);
    EXPECT_TRUE(h.hit);
    EXPECT_FALSE(h.lock_taken);  // never on a hit
    ASSERT_EQ(h.entry.size(), entry.size());
    EXPECT_TRUE(h.entry == entry);
    EXPECT_EQ(ctl->run({"GET", cache_entry_key(t, gen(0, 0))}), entry);
    EXPECT_EQ(ctl->run({"DBSIZE"}), "3");  // the entry and its two generation keys ("0")
    // Another path of the same user misses.
    EXPECT_FALSE(lookup(target("tc:", "review", user_a, "/api/review/other/")).hit);
}

TEST_F(RedisCacheScriptsTest, UserInvalidationReachesThatUserOnly) {
    const CacheTarget a = target("tc:", "review", user_a, "/today/");
    const CacheTarget b = target("tc:", "review", user_b, "/today/");
    const CacheTarget a_other = target("tc:", "analytics", user_a, "/today/");
    ASSERT_TRUE(store(a, lookup(a), "entry a"));
    ASSERT_TRUE(store(b, lookup(b), "entry b"));
    ASSERT_TRUE(store(a_other, lookup(a_other), "entry a analytics"));
    EXPECT_EQ(lookup(a).entry, "entry a");
    EXPECT_EQ(lookup(b).entry, "entry b");

    EXPECT_EQ(invalidate("tc:", user_a, {"review"}), (std::vector<uint64_t>{1}));
    CacheLookup l = lookup(a);
    EXPECT_FALSE(l.hit);  // the old entry still exists but is unreachable
    EXPECT_EQ(l.user_gen, 1u);
    EXPECT_EQ(l.ns_gen, 0u);
    EXPECT_EQ(ctl->run({"GET", cache_entry_key(a, gen(0, 0))}), "entry a");
    EXPECT_EQ(lookup(b).entry, "entry b");                  // another user: untouched
    EXPECT_EQ(lookup(a_other).entry, "entry a analytics");  // another namespace: untouched
    // The generation key lives 30 days, set at every INCR.
    const long long pttl = number(ctl->run({"PTTL", cc::generation_key("tc:", "review", user_a)}));
    EXPECT_GT(pttl, cache_generation_ttl_ms - 60000);
    EXPECT_LE(pttl, cache_generation_ttl_ms);

    // A new fill under generation 1 hits again; a second invalidation over two namespaces.
    ASSERT_TRUE(store(a, l, "entry a, after the write"));
    EXPECT_EQ(lookup(a).entry, "entry a, after the write");
    EXPECT_EQ(invalidate("tc:", user_a, {"review", "analytics"}), (std::vector<uint64_t>{2, 1}));
    EXPECT_FALSE(lookup(a).hit);
    EXPECT_FALSE(lookup(a_other).hit);
    EXPECT_EQ(lookup(b).entry, "entry b");
}

TEST_F(RedisCacheScriptsTest, NamespaceInvalidationReachesEveryoneInItOnly) {
    const CacheTarget a = target("tc:", "review", user_a, "/today/");
    const CacheTarget b = target("tc:", "review", "anon", "/today/");
    const CacheTarget other = target("tc:", "analytics", user_a, "/today/");
    const CacheTarget other_prefix = target("tc2:", "review", user_a, "/today/");
    for (const CacheTarget* t : {&a, &b, &other, &other_prefix}) {
        ASSERT_TRUE(store(*t, lookup(*t), "e"));
    }
    EXPECT_EQ(invalidate("tc:", user_a, {"review"}), (std::vector<uint64_t>{1}));
    ASSERT_TRUE(store(a, lookup(a), "e"));
    EXPECT_EQ(invalidate_namespace("tc:", "review"), (std::vector<uint64_t>{1}));
    CacheLookup la = lookup(a), lb = lookup(b);
    EXPECT_FALSE(la.hit);
    EXPECT_FALSE(lb.hit);
    EXPECT_EQ(la.ns_gen, 1u);
    EXPECT_EQ(la.user_gen, 1u);
    EXPECT_EQ(lb.ns_gen, 1u);
    EXPECT_EQ(lb.user_gen, 0u);
    EXPECT_TRUE(lookup(other).hit);
    EXPECT_TRUE(lookup(other_prefix).hit);
    ASSERT_TRUE(store(b, lb, "after"));
    EXPECT_EQ(lookup(b).entry, "after");
    EXPECT_EQ(ctl->run({"GET", cc::entry_key("tc:", "review", "anon", gen(1, 0), b.key)}), "after");
}

TEST_F(RedisCacheScriptsTest, FillLockTakenOnceUntilStoreOrExpiry) {
    const CacheTarget t = target("tc:", "review", user_a, "/today/");
    const std::string lock = cc::fill_lock_key(cache_entry_key(t, gen(0, 0)));
    CacheLookup first = lookup(t, true, 60000);
    EXPECT_FALSE(first.hit);
    EXPECT_TRUE(first.lock_taken);
    EXPECT_EQ(ctl->run({"GET", lock}), tok);  // its value is the owner token
    const long long pttl = number(ctl->run({"PTTL", lock}));
    EXPECT_GT(pttl, 50000);
    EXPECT_LE(pttl, 60000);
    for (int i = 0; i < 3; i++) {
        CacheLookup again = lookup(t, true, 60000);
        EXPECT_FALSE(again.hit);
        EXPECT_FALSE(again.lock_taken);
    }
    // STORE deletes the lock; the next miss (after the entry is gone) can take it again.
    ASSERT_TRUE(store(t, first, "filled"));
    EXPECT_EQ(ctl->run({"EXISTS", lock}), "0");
    EXPECT_TRUE(lookup(t, true).hit);
    ctl->run({"DEL", cache_entry_key(t, gen(0, 0))});
    EXPECT_TRUE(lookup(t, true, 100).lock_taken);
    EXPECT_FALSE(lookup(t, true, 100).lock_taken);
    // It expires by its own PX.
    usleep(250000);
    EXPECT_TRUE(lookup(t, true, 100).lock_taken);
    // A lock is per entry key: another path, or the same path after an invalidation, is free.
    EXPECT_TRUE(lookup(target("tc:", "review", user_a, "/other/"), true).lock_taken);
    invalidate("tc:", user_a, {"review"});
    EXPECT_TRUE(lookup(t, true).lock_taken);

    // The separate lock for refreshing a stale entry: the same key, the same NX semantics.
    const std::vector<std::string> argv = cache_fill_lock_argv(t, gen(0, 1), "refresh.1.2", 5000);
    EXPECT_EQ(argv,
              (std::vector<std::string>{"SET", cc::fill_lock_key(cache_entry_key(t, gen(0, 1))),
                                        "refresh.1.2", "NX", "PX", "5000"}));
    EXPECT_TRUE(cache_fill_lock_argv(t, gen(0, 1), tok, 0).empty());
    EXPECT_TRUE(cache_fill_lock_argv(t, gen(0, 1), "", 5000).empty());
    EXPECT_EQ(ctl->run(argv), "(nil)");  // the lookup above holds it
}

TEST_F(RedisCacheScriptsTest, EntryExpiryIsHonoured) {
    const CacheTarget t = target("tc:", "review", user_a, "/today/");
    ASSERT_TRUE(store(t, lookup(t), "short", 150));
    const std::string key = cache_entry_key(t, gen(0, 0));
    const long long pttl = number(ctl->run({"PTTL", key}));
    EXPECT_GT(pttl, 0);
    EXPECT_LE(pttl, 150);
    EXPECT_TRUE(lookup(t).hit);
    usleep(300000);
    EXPECT_FALSE(lookup(t).hit);

    ASSERT_TRUE(store(t, lookup(t), "long", 3600000));
    const long long long_pttl = number(ctl->run({"PTTL", key}));
    EXPECT_GT(long_pttl, 3590000);
    EXPECT_LE(long_pttl, 3600000);
}

// Generations outlive entries: a store pushes the existing generation keys' expiry to 30 days
// (and does not create missing ones).
TEST_F(RedisCacheScriptsTest, StoreRefreshesGenerationExpiry) {
    const CacheTarget t = target("tc:", "review", user_a, "/today/");
    const std::string ug = cc::generation_key("tc:", "review", user_a);
    const std::string ng = cc::namespace_generation_key("tc:", "review");
    ASSERT_TRUE(store(t, lookup(t), "e"));
    EXPECT_EQ(ctl->run({"GET", ug}), "0");  // created (StoreCreatesMissingGenerationKeysAsZero)
    EXPECT_EQ(ctl->run({"GET", ng}), "0");
    ctl->run({"SET", ug, "4", "PX", "10000"});
    ctl->run({"SET", ng, "2"});  // no expiry at all: gets one
    CacheLookup l = lookup(t);
    EXPECT_EQ(l.user_gen, 4u);
    EXPECT_EQ(l.ns_gen, 2u);
    ASSERT_TRUE(store(t, l, "e"));
    EXPECT_GT(number(ctl->run({"PTTL", ug})), cache_generation_ttl_ms - 60000);
    EXPECT_GT(number(ctl->run({"PTTL", ng})), cache_generation_ttl_ms - 60000);
}

// A fill that looked up before a write and stores after it is refused (and drops its lock).
TEST_F(RedisCacheScriptsTest, StoreAfterInvalidationIsRefused) {
    const CacheTarget t = target("tc:", "review", user_a, "/today/");
    CacheLookup before = lookup(t, true);
    ASSERT_TRUE(before.lock_taken);
    invalidate("tc:", user_a, {"review"});
    EXPECT_FALSE(store(t, before, "from before the write"));
    EXPECT_EQ(ctl->run({"EXISTS", cache_entry_key(t, gen(0, 0))}), "0");
    EXPECT_EQ(ctl->run({"EXISTS", cc::fill_lock_key(cache_entry_key(t, gen(0, 0)))}), "0");
    EXPECT_FALSE(lookup(t).hit);
    // The same with the namespace's generation.
    CacheLookup mid = lookup(t);
    invalidate_namespace("tc:", "review");
    EXPECT_FALSE(store(t, mid, "x"));
    CacheLookup now = lookup(t);
    EXPECT_EQ(now.ns_gen, 1u);
    EXPECT_EQ(now.user_gen, 1u);
    EXPECT_TRUE(store(t, now, "fresh"));
    EXPECT_EQ(lookup(t).entry, "fresh");
    EXPECT_EQ(ctl->run({"DBSIZE"}), "3");  // two generations and one entry
}

// A lookup that finds the fill lock taken marks that someone waits, for the lock's ttl; no other
// lookup does (no lock wanted, the lock taken by this very lookup, a hit).
TEST_F(RedisCacheScriptsTest, WaiterMarkOnlyWhenLockContended) {
    const CacheTarget t = target("tc:", "review", user_a, "/today/");
    const std::string e = cache_entry_key(t, gen(0, 0));
    const std::string mark = e + ":w";
    EXPECT_FALSE(lookup(t).hit);
    EXPECT_EQ(ctl->run({"DBSIZE"}), "0");
    CacheLookup filler = lookup(t, true, 60000);
    ASSERT_TRUE(filler.lock_taken);
    EXPECT_EQ(ctl->run({"EXISTS", mark}), "0");  // the lock's taker waits for no one
    EXPECT_FALSE(lookup(t).lock_taken);          // no lock wanted: no mark either
    EXPECT_EQ(ctl->run({"EXISTS", mark}), "0");
    EXPECT_EQ(ctl->run({"DBSIZE"}), "1");

    CacheLookup waiter = lookup(t, true, 30000);
    EXPECT_FALSE(waiter.hit);
    EXPECT_FALSE(waiter.lock_taken);
    EXPECT_EQ(ctl->run({"GET", mark}), "1");
    long long pttl = number(ctl->run({"PTTL", mark}));
    EXPECT_GT(pttl, 25000);
    EXPECT_LE(pttl, 30000);
    // Each further waiter pushes its expiry to its own lock ttl.
    EXPECT_FALSE(lookup(t, true, 120000).lock_taken);
    pttl = number(ctl->run({"PTTL", mark}));
    EXPECT_GT(pttl, 110000);
    EXPECT_LE(pttl, 120000);
    // It expires by itself like the lock.
    EXPECT_FALSE(lookup(t, true, 100).lock_taken);
    usleep(250000);
    EXPECT_EQ(ctl->run({"EXISTS", mark}), "0");

    // A hit marks nothing.
    ASSERT_TRUE(store(t, filler, "e"));
    EXPECT_TRUE(lookup(t, true).hit);
    EXPECT_EQ(ctl->run({"EXISTS", mark}), "0");
    EXPECT_EQ(ctl->run({"EXISTS", cc::fill_lock_key(e)}), "0");
}

// INVALIDATE with a channel publishes the user's new generations in one message (the local
// tier's mirror on every host, ngx/cache/local.hpp); without one it publishes nothing.
TEST_F(RedisCacheScriptsTest, InvalidatePublishesTheNewGenerations) {
    const std::string ch = cache_fill_channel("tc:");
    Listener listener(server->port(), ch);
    ASSERT_TRUE(listener.ok());
    std::vector<std::string_view> names{"review", "analytics"};
    EvalArgs a;
    ASSERT_TRUE(build_cache_invalidate_args("tc:", user_a, names.data(), names.size(), ch, a));
    Reply r = eval(cache_invalidate_script(), a);
    std::vector<uint64_t> g;
    ASSERT_TRUE(parse_cache_invalidate_reply(r, 2, g)) << to_string(r.type) << " " << r.str;
    EXPECT_EQ(g, (std::vector<uint64_t>{1, 1}));
    const std::string msg = listener.next();
    EXPECT_EQ(msg, "u" + std::string(user_a) + " 1:review 1:analytics");
    std::string_view id, rest, ns;
    uint64_t gen = 0;
    ASSERT_TRUE(parse_cache_user_message(msg, id, rest));
    EXPECT_EQ(id, user_a);
    ASSERT_TRUE(next_cache_user_generation(rest, gen, ns));
    EXPECT_EQ(gen, 1u);
    EXPECT_EQ(ns, "review");
    ASSERT_TRUE(next_cache_user_generation(rest, gen, ns));
    EXPECT_EQ(ns, "analytics");
    EXPECT_FALSE(next_cache_user_generation(rest, gen, ns));
    // Without a channel (the old call): the generations move, nothing is published.
    EXPECT_EQ(invalidate("tc:", user_a, {"review"}), (std::vector<uint64_t>{2}));
    EXPECT_EQ(ctl->run({"PUBLISH", ch, "marker"}), "1");
    EXPECT_EQ(listener.next(), "marker");
    // Malformed: an id with a channel but no namespace names is refused by the script.
    EvalArgs bad;
    bad.add_key(cc::generation_key("tc:", "review", user_a));
    bad.add_arg(cache_generation_ttl_ms);
    bad.add_arg(ch);
    EXPECT_EQ(eval(cache_invalidate_script(), bad).type, Reply::Type::Error);
}

TEST(RedisCacheScriptsUnit, UserMessages) {
    std::string_view id, rest, ns;
    uint64_t gen = 0;
    EXPECT_FALSE(parse_cache_user_message("g1:review", id, rest));
    EXPECT_FALSE(parse_cache_user_message("u", id, rest));
    EXPECT_FALSE(parse_cache_user_message("uabc", id, rest));
    EXPECT_FALSE(parse_cache_user_message("u abc", id, rest));
    ASSERT_TRUE(parse_cache_user_message("uanon 3:a 07:b 5:c", id, rest));
    EXPECT_EQ(id, "anon");
    ASSERT_TRUE(next_cache_user_generation(rest, gen, ns));
    EXPECT_EQ(gen, 3u);
    EXPECT_EQ(ns, "a");
    EXPECT_FALSE(next_cache_user_generation(rest, gen, ns));  // "07": not canonical
    EXPECT_FALSE(next_cache_user_generation(rest, gen, ns));  // and the rest is dropped
}

// STORE publishes "1" E (stored) or "0" E (refused) on the prefix's fill channel, and deletes the
// mark, only when a waiter marked the entry; without one it publishes nothing.
TEST_F(RedisCacheScriptsTest, StorePublishesOnlyToMarkedWaiters) {
    const std::string ch = cache_fill_channel("tc:");
    Listener listener(server->port(), ch);
    ASSERT_TRUE(listener.ok());
    Listener other_prefix(server->port(), cache_fill_channel("tc2:"));
    ASSERT_TRUE(other_prefix.ok());
    const CacheTarget t = target("tc:", "review", user_a, "/today/");
    const std::string e = cache_entry_key(t, gen(0, 0));

    // No waiter: nothing published.
    CacheLookup filler = lookup(t, true);
    ASSERT_TRUE(filler.lock_taken);
    ASSERT_TRUE(store(t, filler, "quiet"));
    EXPECT_EQ(ctl->run({"PUBLISH", ch, "marker 1"}), "1");  // one subscriber: the listener
    EXPECT_EQ(listener.next(), "marker 1");

    // A waiter: the store wakes it with "1" E and removes the mark and the lock.
    ctl->run({"DEL", e});
    filler = lookup(t, true);
    ASSERT_TRUE(filler.lock_taken);
    ASSERT_FALSE(lookup(t, true).lock_taken);
    ASSERT_FALSE(lookup(t, true).lock_taken);  // two waiters, one mark, one message
    ASSERT_TRUE(store(t, filler, "filled"));
    EXPECT_EQ(listener.next(), "1" + e);
    bool stored = false;
    std::string_view key;
    const std::string msg = "1" + e;
    ASSERT_TRUE(parse_cache_fill_message(msg, stored, key));
    EXPECT_TRUE(stored);
    EXPECT_EQ(key, e);
    EXPECT_EQ(ctl->run({"EXISTS", e + ":w"}), "0");
    EXPECT_EQ(ctl->run({"EXISTS", cc::fill_lock_key(e)}), "0");
    EXPECT_EQ(lookup(t).entry, "filled");
    ctl->run({"PUBLISH", ch, "marker 2"});
    EXPECT_EQ(listener.next(), "marker 2");  // exactly one message

    // Refused (a write moved the generation since the lookup): "0" E, under the old generations.
    ctl->run({"DEL", e});
    filler = lookup(t, true);
    ASSERT_TRUE(filler.lock_taken);
    ASSERT_FALSE(lookup(t, true).lock_taken);
    invalidate("tc:", user_a, {"review"});
    EXPECT_FALSE(store(t, filler, "stale"));
    EXPECT_EQ(listener.next(), "0" + e);
    EXPECT_EQ(ctl->run({"EXISTS", e + ":w"}), "0");
    EXPECT_EQ(ctl->run({"EXISTS", cc::fill_lock_key(e)}), "0");

    // Refused without a waiter: nothing.
    filler = lookup(t, true);
    ASSERT_TRUE(filler.lock_taken);
    invalidate("tc:", user_a, {"review"});
    EXPECT_FALSE(store(t, filler, "stale"));
    ctl->run({"PUBLISH", ch, "marker 3"});
    EXPECT_EQ(listener.next(), "marker 3");

    // Another prefix's channel heard none of it.
    ctl->run({"PUBLISH", cache_fill_channel("tc2:"), "marker 4"});
    EXPECT_EQ(other_prefix.next(), "marker 4");
}

// RELEASE drops its own fill lock and wakes marked waiters with "0" E, so that one of them takes
// the lock and fills; unmarked, it publishes nothing and answers 0.
TEST_F(RedisCacheScriptsTest, ReleaseDropsLockAndWakesOnlyMarkedWaiters) {
    const std::string ch = cache_fill_channel("tc:");
    Listener listener(server->port(), ch);
    ASSERT_TRUE(listener.ok());
    const CacheTarget t = target("tc:", "review", user_a, "/today/");
    const std::string e = cache_entry_key(t, gen(0, 0));

    CacheLookup filler = lookup(t, true);
    ASSERT_TRUE(filler.lock_taken);
    EXPECT_FALSE(release(t, filler));
    EXPECT_EQ(ctl->run({"DBSIZE"}), "0");
    ctl->run({"PUBLISH", ch, "marker 1"});
    EXPECT_EQ(listener.next(), "marker 1");

    filler = lookup(t, true);
    ASSERT_TRUE(filler.lock_taken);  // free again after the release
    CacheLookup waiter = lookup(t, true);
    ASSERT_FALSE(waiter.lock_taken);
    EXPECT_TRUE(release(t, filler));
    EXPECT_EQ(listener.next(), "0" + e);
    EXPECT_EQ(ctl->run({"DBSIZE"}), "0");
    EXPECT_FALSE(release(t, filler));  // twice: nothing left to do
    ctl->run({"PUBLISH", ch, "marker 2"});
    EXPECT_EQ(listener.next(), "marker 2");

    // The woken waiter looks up again and becomes the filler.
    CacheLookup again = lookup(t, true);
    EXPECT_FALSE(again.hit);
    EXPECT_TRUE(again.lock_taken);
    // A release of another entry leaves this lock alone.
    const CacheTarget other = target("tc:", "review", user_a, "/other/");
    EXPECT_FALSE(release(other, lookup(other)));
    EXPECT_EQ(ctl->run({"EXISTS", cc::fill_lock_key(e)}), "1");
    EXPECT_FALSE(release(t, lookup(t)));
    EXPECT_EQ(ctl->run({"EXISTS", cc::fill_lock_key(e)}), "0");
}

// A lookup whose reply never came may have taken the lock: ABANDON finds the entry key from
// the current generations, drops the lock and wakes marked waiters.
TEST_F(RedisCacheScriptsTest, AbandonDropsAnOrphanLockAndWakesWaiters) {
    const std::string ch = cache_fill_channel("tc:");
    Listener listener(server->port(), ch);
    ASSERT_TRUE(listener.ok());
    const CacheTarget t = target("tc:", "review", user_a, "/orphan/");
    auto abandon = [&](const CacheTarget& x) {
        EvalArgs a;
        EXPECT_TRUE(build_cache_abandon_args(x, tok, ch, a));
        Reply r = eval(cache_abandon_script(), a);
        bool released = false;
        EXPECT_TRUE(parse_cache_abandon_reply(r, released)) << to_string(r.type) << " " << r.str;
        return released;
    };
    EXPECT_FALSE(abandon(t));  // no lock: nothing to do, nothing published
    ctl->run({"PUBLISH", ch, "marker 1"});
    EXPECT_EQ(listener.next(), "marker 1");

    ASSERT_TRUE(lookup(t, true).lock_taken);  // the orphan
    invalidate("tc:", "anon", {"review"});    // another user's generation: same E for user_a
    CacheLookup waiter = lookup(t, true);
    ASSERT_FALSE(waiter.lock_taken);
    const std::string e = cache_entry_key(t, waiter.generation());
    EXPECT_TRUE(abandon(t));
    EXPECT_EQ(listener.next(), "0" + e);
    EXPECT_EQ(ctl->run({"EXISTS", cc::fill_lock_key(e)}), "0");
    EXPECT_TRUE(lookup(t, true).lock_taken);  // free for the next filler

    // Under moved generations the orphan's E is not the current one: nothing current to drop.
    invalidate("tc:", user_a, {"review"});
    EXPECT_FALSE(abandon(t));

    EvalArgs bad;
    EXPECT_FALSE(build_cache_abandon_args(t, tok, "", bad));
    EXPECT_FALSE(build_cache_abandon_args(t, "", ch, bad));
    CacheTarget badns = t;
    badns.ns = "a:b";
    EXPECT_FALSE(build_cache_abandon_args(badns, tok, ch, bad));
}

// A fill lock lives one lease unless its owner renews it: RENEW by the token the lock holds
// pushes its expiry to the new lease; by any other token (a filler whose lease ran out, whose
// lock another filler took since) it answers 0 and touches nothing, nor does it bring back a
// lock that expired.
TEST_F(RedisCacheScriptsTest, LeaseRenewedOnlyByItsOwner) {
    const CacheTarget t = target("tc:", "review", user_a, "/lease/");
    const std::string e = cache_entry_key(t, gen(0, 0));
    const std::string lock = cc::fill_lock_key(e);
    auto renew = [&](std::string_view token, int64_t lease_ms) {
        EvalArgs a;
        EXPECT_TRUE(build_cache_renew_args(e, token, lease_ms, a));
        Reply r = eval(cache_renew_script(), a);
        bool held = false;
        EXPECT_TRUE(parse_cache_renew_reply(r, held)) << to_string(r.type) << " " << r.str;
        return held;
    };
    const std::string a = "filler-a.1.1", b = "filler-b.2.1";
    EXPECT_FALSE(renew(a, 5000));  // no lock: nothing renewed, nothing made
    EXPECT_EQ(ctl->run({"EXISTS", lock}), "0");

    ASSERT_TRUE(lookup(t, true, 2000, a).lock_taken);
    EXPECT_EQ(ctl->run({"GET", lock}), a);
    EXPECT_LE(number(ctl->run({"PTTL", lock})), 2000);  // the lease, not a lock timeout
    EXPECT_TRUE(renew(a, 60000));
    EXPECT_GT(number(ctl->run({"PTTL", lock})), 50000);
    EXPECT_FALSE(renew(b, 100));  // not its owner: untouched
    EXPECT_EQ(ctl->run({"GET", lock}), a);
    EXPECT_GT(number(ctl->run({"PTTL", lock})), 50000);
    EXPECT_FALSE(lookup(t, true, 2000, b).lock_taken);  // held: b waits

    // a's owner stops renewing (it died): the lock is gone one lease after the last renewal.
    EXPECT_TRUE(renew(a, 150));
    const uint64_t renewed_at = mono_ms();
    const bool expired = wait_for([&] { return ctl->run({"EXISTS", lock}) == "0"; }, 5000);
    EXPECT_TRUE(expired);
    EXPECT_GE(mono_ms() - renewed_at, 100u);
    EXPECT_FALSE(renew(a, 5000));  // too late: not brought back
    EXPECT_EQ(ctl->run({"EXISTS", lock}), "0");
    ASSERT_TRUE(lookup(t, true, 2000, b).lock_taken);  // the waiter takes it
    EXPECT_FALSE(renew(a, 60000));                     // and a cannot extend b's lock
    EXPECT_EQ(ctl->run({"GET", lock}), b);
    EXPECT_LE(number(ctl->run({"PTTL", lock})), 2000);
    EXPECT_TRUE(renew(b, 60000));
    EXPECT_GT(number(ctl->run({"PTTL", lock})), 50000);
}

// A filler whose lease ran out (another filler took the lock since) cannot drop the newer
// filler's lock: its RELEASE and ABANDON touch nothing and wake nobody (the waiters wait for the
// newer fill); its STORE still stores (the same answer; the waiters are woken to read it) but
// leaves the lock to its owner, whose own STORE drops it.
TEST_F(RedisCacheScriptsTest, AnExpiredFillerCannotDropANewerFillersLock) {
    const std::string ch = cache_fill_channel("tc:");
    Listener listener(server->port(), ch);
    ASSERT_TRUE(listener.ok());
    const CacheTarget t = target("tc:", "review", user_a, "/newer/");
    const std::string e = cache_entry_key(t, gen(0, 0));
    const std::string lock = cc::fill_lock_key(e), mark = cc::fill_waiter_key(e);
    const std::string old_owner = "old.1.1", new_owner = "new.2.1";
    const CacheLookup old_fill = lookup(t, true, 5000, old_owner);
    ASSERT_TRUE(old_fill.lock_taken);
    ctl->run({"DEL", lock});  // its lease ran out
    const CacheLookup new_fill = lookup(t, true, 5000, new_owner);
    ASSERT_TRUE(new_fill.lock_taken);
    ASSERT_FALSE(lookup(t, true, 5000, "waiter.3.1").lock_taken);  // a waiter: the mark
    EXPECT_EQ(ctl->run({"EXISTS", mark}), "1");

    EXPECT_FALSE(release(t, old_fill, old_owner));
    EvalArgs a;
    ASSERT_TRUE(build_cache_abandon_args(t, old_owner, ch, a));
    bool released = true;
    ASSERT_TRUE(parse_cache_abandon_reply(eval(cache_abandon_script(), a), released));
    EXPECT_FALSE(released);
    EXPECT_EQ(ctl->run({"GET", lock}), new_owner);
    EXPECT_EQ(ctl->run({"EXISTS", mark}), "1");
    ctl->run({"PUBLISH", ch, "marker 1"});
    EXPECT_EQ(listener.next(), "marker 1");  // nothing was published before it

    EXPECT_TRUE(store(t, old_fill, "old answer", 60000, old_owner));
    EXPECT_EQ(listener.next(), "1" + e);  // the waiter reads it
    EXPECT_EQ(ctl->run({"GET", lock}), new_owner);
    EXPECT_EQ(ctl->run({"GET", e}), "old answer");
    EXPECT_TRUE(store(t, new_fill, "new answer", 60000, new_owner));
    EXPECT_EQ(ctl->run({"EXISTS", lock}), "0");
    EXPECT_EQ(ctl->run({"GET", e}), "new answer");

    // Refused (a generation moved) while another filler holds the lock: that lock and its
    // waiters' mark stay, nothing is published.
    ctl->run({"DEL", e});
    ctl->run({"SET", lock, new_owner, "PX", "60000"});
    ctl->run({"SET", mark, "1", "PX", "60000"});
    invalidate("tc:", user_a, {"review"});
    EXPECT_FALSE(store(t, old_fill, "refused", 60000, old_owner));
    EXPECT_EQ(ctl->run({"GET", lock}), new_owner);
    EXPECT_EQ(ctl->run({"EXISTS", mark}), "1");
    ctl->run({"PUBLISH", ch, "marker 2"});
    EXPECT_EQ(listener.next(), "marker 2");
    // Refused by its owner: the lock goes, the waiters are told "0" (go and fill).
    EXPECT_FALSE(store(t, new_fill, "refused", 60000, new_owner));
    EXPECT_EQ(listener.next(), "0" + e);
    EXPECT_EQ(ctl->run({"EXISTS", lock}), "0");
}

// The Lua entry key is core::cache::entry_key() byte for byte: an entry SET under the C++ key
// is what the lookup finds, and the lock the lookup takes is at fill_lock_key() of it.
TEST_F(RedisCacheScriptsTest, LuaEntryKeyIsCoreEntryKey) {
    struct Case {
        std::string prefix, ns, id, path;
        uint64_t ns_gen, user_gen;
    };
    const std::vector<Case> cases = {
        {"tc:", "review", user_a, "/a", 0, 0},
        {"", "r", "anon", "/", 1, 0},
        {"tc:", "review", "anon", "/b", 0, 7},
        {std::string("p\0x:\xff", 5), "A-Z_a.z-09", std::string("i\0d}{:", 6), "/c", 10, 99},
        {"tc:", std::string(64, 'n'), user_b, "/d", 9007199254740991, 123456789012345},
        {"x{y}:", "ns", "}{", "/e", 18, 1000000},
        {"%s%d\r\n", "review", "\n\r\t ", "/f", 3, 1},
    };
    for (const Case& c : cases) {
        SCOPED_TRACE(c.path);
        const CacheTarget t = target(c.prefix, c.ns, c.id, c.path);
        const cc::Generation g = gen(c.ns_gen, c.user_gen);
        if (c.ns_gen != 0) {
            ctl->run(
                {"SET", cc::namespace_generation_key(c.prefix, c.ns), std::to_string(c.ns_gen)});
        }
        if (c.user_gen != 0) {
            ctl->run({"SET", cc::generation_key(c.prefix, c.ns, c.id), std::to_string(c.user_gen)});
        }
        const std::string key = cc::entry_key(c.prefix, c.ns, c.id, g, t.key);
        // The lock the miss takes sits at the C++ lock key.
        CacheLookup miss = lookup(t, true);
        EXPECT_FALSE(miss.hit);
        EXPECT_TRUE(miss.lock_taken);
        EXPECT_EQ(miss.ns_gen, c.ns_gen);
        EXPECT_EQ(miss.user_gen, c.user_gen);
        EXPECT_EQ(ctl->run({"EXISTS", cc::fill_lock_key(key)}), "1");
        // The waiter mark a second miss leaves sits next to it.
        EXPECT_FALSE(lookup(t, true).lock_taken);
        EXPECT_EQ(ctl->run({"EXISTS", key + ":w"}), "1");
        // An entry SET by hand under the C++ key is found.
        ctl->run({"SET", key, "by hand " + c.path});
        EXPECT_EQ(lookup(t).entry, "by hand " + c.path);
        // And STORE writes there too.
        ASSERT_TRUE(store(t, miss, "stored " + c.path));
        EXPECT_EQ(ctl->run({"GET", key}), "stored " + c.path);
        EXPECT_EQ(ctl->run({"EXISTS", cc::fill_lock_key(key)}), "0");
        EXPECT_EQ(ctl->run({"EXISTS", key + ":w"}), "0");
    }
}

// Malformed calls and corrupt generation keys are error replies, which the parsers refuse.
TEST_F(RedisCacheScriptsTest, MalformedCallsAreErrors) {
    const CacheTarget t = target("tc:", "review", "anon", "/x");
    const std::string hex = core::hex(t.key);
    const std::string ug = "tc:{review:anon}:g", ng = "tc:{review}:g";
    CacheLookup l;
    auto lookup_error = [&](const std::vector<std::string>& keys,
                            const std::vector<std::string>& args) {
        Reply r = raw(cache_lookup_script(), keys, args);
        EXPECT_TRUE(r.is_error()) << to_string(r.type);
        EXPECT_FALSE(parse_cache_lookup_reply(r, l));
    };
    lookup_error({ug, ng}, {"tc:", "review", "anon", hex, "5000"});
    lookup_error({ug, ng}, {"tc:", "review", "anon", hex, "5000", "1"});  // no owner token
    lookup_error({ug}, {"tc:", "review", "anon", hex, "5000", "1", tok});
    lookup_error({ng, ug}, {"tc:", "review", "anon", hex, "5000", "1", tok});   // swapped
    lookup_error({ug, ng}, {"tc:", "review", "anon2", hex, "5000", "1", tok});  // not its keys
    lookup_error({ug, ng}, {"tc:", "review", "anon", hex.substr(1), "5000", "1", tok});
    std::string upper = hex;
    upper[0] = 'A';
    lookup_error({ug, ng}, {"tc:", "review", "anon", upper, "5000", "1", tok});
    lookup_error({ug, ng}, {"tc:", "review", "anon", hex, "0", "1", tok});
    lookup_error({ug, ng}, {"tc:", "review", "anon", hex, "x", "1", tok});
    lookup_error({ug, ng}, {"tc:", "review", "anon", hex, "5000", "yes", tok});
    lookup_error({ug, ng}, {"tc:", "review", "anon", hex, "5000", "1", ""});
    lookup_error({ug, ng}, {"tc:", "review", "anon", hex, "5000", "1", std::string(65, 't')});
    EXPECT_EQ(ctl->run({"DBSIZE"}), "0");
    for (const std::string bad : {"07", "-1", "1.5", " 1", "abc", "9007199254740992", ""}) {
        ctl->run({"SET", ug, bad});
        lookup_error({ug, ng}, {"tc:", "review", "anon", hex, "5000", "1", tok});
        Reply r = raw(cache_store_script(), {"e", "e:l", "e:w", ug, ng},
                      {"x", "1000", "0", "0", "2592000000", "ch", tok});
        EXPECT_TRUE(r.is_error()) << bad;
    }
    ctl->run({"DEL", ug});
    ctl->run({"HSET", ng, "f", "v"});  // a generation of the wrong type
    lookup_error({ug, ng}, {"tc:", "review", "anon", hex, "5000", "1", tok});
    ctl->run({"DEL", ng});

    bool stored = false;
    auto store_error = [&](const std::vector<std::string>& keys,
                           const std::vector<std::string>& args) {
        Reply r = raw(cache_store_script(), keys, args);
        EXPECT_TRUE(r.is_error()) << to_string(r.type);
        EXPECT_FALSE(parse_cache_store_reply(r, stored));
    };
    const std::string ch = "tc:cache:filled";
    const std::string gt = "2592000000";
    store_error({"e", "e:l", "e:w", ug, ng}, {"x", "1000", "0", "0", gt, tok});  // no channel
    store_error({"e", "e:l", "e:w", ug, ng}, {"x", "1000", "0", "0", gt, ch});   // no token
    store_error({"e", "e:l", ug, ng}, {"x", "1000", "0", "0", gt, ch, tok});     // 4 keys
    store_error({"e", "e:x", "e:w", ug, ng}, {"x", "1000", "0", "0", gt, ch, tok});
    store_error({"e", "e:l", "e:x", ug, ng}, {"x", "1000", "0", "0", gt, ch, tok});
    store_error({"e", "e:w", "e:l", ug, ng}, {"x", "1000", "0", "0", gt, ch, tok});
    store_error({"e", "e:l", "e:w", ug, ng}, {"", "1000", "0", "0", gt, ch, tok});
    store_error({"e", "e:l", "e:w", ug, ng}, {"x", "0", "0", "0", gt, ch, tok});
    store_error({"e", "e:l", "e:w", ug, ng}, {"x", "2592000001", "0", "0", gt, ch, tok});
    store_error({"e", "e:l", "e:w", ug, ng}, {"x", "1000", "0", "0", gt, "", tok});
    store_error({"e", "e:l", "e:w", ug, ng}, {"x", "1000", "0", "0", gt, ch, ""});
    ctl->run({"SET", "e:l", tok});
    ctl->run({"SET", "e:w", "1"});
    store_error({"e", "e:l", "e:w", ug, ng}, {"x", "1000", "0", "0", gt, "", tok});
    store_error({"e", "e:l", "e:w", ug, ng}, {"x", "1000", "0", "0", gt, ch, std::string(65, 't')});
    EXPECT_EQ(ctl->run({"DBSIZE"}), "2");  // an error reply touches nothing

    bool had = false;
    auto release_error = [&](const std::vector<std::string>& keys,
                             const std::vector<std::string>& args) {
        Reply r = raw(cache_release_script(), keys, args);
        EXPECT_TRUE(r.is_error()) << to_string(r.type);
        EXPECT_FALSE(parse_cache_release_reply(r, had));
    };
    release_error({"e:l", "e:w"}, {ch});
    release_error({"e:l", "e:w"}, {ch, "e"});  // no token
    release_error({"e:l"}, {ch, "e", tok});
    release_error({"e:l", "e:w", "e:x"}, {ch, "e", tok});
    release_error({"e:w", "e:l"}, {ch, "e", tok});
    release_error({"e:l", "e:w"}, {ch, "f", tok});
    release_error({"e:l", "e:w"}, {"", "e", tok});
    release_error({":l", ":w"}, {ch, "", tok});
    release_error({"e:l", "e:w"}, {ch, "e", ""});
    EXPECT_EQ(ctl->run({"DBSIZE"}), "2");

    bool held = false;
    auto renew_error = [&](const std::vector<std::string>& keys,
                           const std::vector<std::string>& args) {
        Reply r = raw(cache_renew_script(), keys, args);
        EXPECT_TRUE(r.is_error()) << to_string(r.type);
        EXPECT_FALSE(parse_cache_renew_reply(r, held));
    };
    renew_error({"e:l"}, {tok});
    renew_error({"e:l", "e:w"}, {tok, "2000"});
    renew_error({"e:l"}, {"", "2000"});
    renew_error({"e:l"}, {std::string(65, 't'), "2000"});
    renew_error({"e:l"}, {tok, "0"});
    renew_error({"e:l"}, {tok, "x"});
    renew_error({"e:w"}, {tok, "2000"});  // not a lock
    renew_error({"e"}, {tok, "2000"});
    EXPECT_EQ(ctl->run({"DBSIZE"}), "2");
    EXPECT_EQ(ctl->run({"PTTL", "e:l"}), "-1");  // untouched
    ctl->run({"DEL", "e:l", "e:w"});

    std::vector<uint64_t> g;
    Reply r = raw(cache_invalidate_script(), {ug}, {});
    EXPECT_TRUE(r.is_error());
    r = raw(cache_invalidate_script(), {ug}, {"0"});
    EXPECT_TRUE(r.is_error());
    ctl->run({"SET", ug, "not a number"});
    r = raw(cache_invalidate_script(), {ug}, {"1000"});
    EXPECT_TRUE(r.is_error());
    EXPECT_FALSE(parse_cache_invalidate_reply(r, 1, g));
    ctl->run({"SET", ug, "9007199254740991"});
    r = raw(cache_invalidate_script(), {ug}, {"1000"});
    EXPECT_TRUE(r.is_error());  // would reach 2^53
}

// ---- LOOKUP BATCH against redis-server ----

bool same_lookup(const CacheLookup& a, const CacheLookup& b) {
    return a.ns_gen == b.ns_gen && a.user_gen == b.user_gen && a.hit == b.hit &&
           a.entry == b.entry && a.lock_taken == b.lock_taken;
}

// `token` must outlive the request (a view).
CacheLookupRequest request(const CacheTarget& t, bool want_lock, int64_t lock_ttl_ms = 5000,
                           std::string_view token = tok) {
    CacheLookupRequest r;
    r.target = t;
    r.want_lock = want_lock;
    r.lock_ttl_ms = lock_ttl_ms;
    r.token = token;
    return r;
}

// The batch is n single LOOKUPs run in order: on identical datasets (generations set, some bumped
// after entries were stored under them, entries under current and old generations, fill locks and
// waiter marks held by others), every answer and every key left in Redis (value and expiry) are
// the same. Few targets per case, so lookups of one key repeat within a batch.
TEST_F(RedisCacheScriptsTest, BatchEqualsSingleLookupsInOrder) {
    const std::vector<std::string> prefixes = {"tc:", "x{y}:"};
    const std::vector<std::string> namespaces = {"review", "analytics", "n"};
    const std::vector<std::string> ids = {user_a, user_b, "anon"};
    std::vector<CacheTarget> universe;
    for (const std::string& p : prefixes) {
        for (const std::string& ns : namespaces) {
            for (const std::string& id : ids) {
                for (std::string_view path : {"/a", "/b", "/c"}) {
                    universe.push_back(target(p, ns, id, path));
                }
            }
        }
    }
    std::mt19937 rng(20240611);
    auto pick = [&](size_t n) { return size_t(rng() % n); };
    auto chance = [&](size_t pct) { return pick(100) < pct; };
    size_t lookups = 0, hits = 0, taken = 0, held_by_other = 0, held_in_batch = 0, no_lock = 0;
    size_t bumped = 0, full = 0;
    constexpr int cases = 400;
    for (int c = 0; c < cases; c++) {
        SCOPED_TRACE("case " + std::to_string(c));
        std::vector<const CacheTarget*> hot;
        for (size_t i = 1 + pick(6); i > 0; i--) {
            hot.push_back(&universe[pick(universe.size())]);
        }
        // The dataset: commands applied before each run.
        std::vector<std::vector<std::string>> data;
        std::map<std::string, uint64_t> gens;  // generation key -> value (missing: 0)
        auto gen_of = [&](const CacheTarget& t) {
            return gen(gens[cc::namespace_generation_key(t.prefix, t.ns)],
                       gens[cc::generation_key(t.prefix, t.ns, t.id)]);
        };
        for (const CacheTarget* t : hot) {
            for (const std::string& k : {cc::namespace_generation_key(t->prefix, t->ns),
                                         cc::generation_key(t->prefix, t->ns, t->id)}) {
                if (chance(35)) {
                    gens[k] = 1 + pick(5);
                    data.push_back({"SET", k, std::to_string(gens[k]), "PX", "600000"});
                }
            }
        }
        std::set<std::string> locked;  // fill locks held before the batch
        for (const CacheTarget* t : hot) {
            const std::string e = cache_entry_key(*t, gen_of(*t));
            if (chance(45)) {
                data.push_back({"SET", e, "entry " + e, "PX", "600000"});
            }
            if (chance(25)) {
                data.push_back({"SET", cc::fill_lock_key(e), "1", "PX", "600000"});
                locked.insert(e);
            }
            if (chance(15)) {
                data.push_back({"SET", e + ":w", "1", "PX", "600000"});
            }
        }
        for (const CacheTarget* t : hot) {  // bumped after the stores: those entries are orphans
            for (const std::string& k : {cc::namespace_generation_key(t->prefix, t->ns),
                                         cc::generation_key(t->prefix, t->ns, t->id)}) {
                if (chance(12)) {
                    gens[k]++;
                    data.push_back({"INCR", k});
                    bumped++;
                }
            }
        }
        const size_t n = c % 40 == 0 ? cache_lookup_batch_max : 1 + pick(16);
        full += n == cache_lookup_batch_max;
        std::vector<CacheLookupRequest> reqs;
        std::vector<std::string> tokens(n);  // each lookup its own owner
        for (size_t i = 0; i < n; i++) {
            const bool want = chance(70);
            const int64_t ttl[] = {1500, 5000, 30000};
            tokens[i] = "owner." + std::to_string(c) + "." + std::to_string(i);
            reqs.push_back(
                request(*hot[pick(hot.size())], want, want ? ttl[pick(3)] : 0, tokens[i]));
        }
        auto prepare = [&] {
            ctl->run({"FLUSHALL"});
            for (const std::vector<std::string>& cmd : data) {
                ctl->run(cmd);
            }
        };
        prepare();
        const std::vector<CacheLookup> batch = lookup_batch(reqs);
        const std::vector<Stored> after_batch = snapshot();
        prepare();
        std::vector<CacheLookup> singles;
        for (const CacheLookupRequest& r : reqs) {
            singles.push_back(lookup(r.target, r.want_lock, r.lock_ttl_ms, r.token));
        }
        const std::vector<Stored> after_singles = snapshot();

        ASSERT_EQ(batch.size(), n);
        std::set<std::string> taken_here;
        for (size_t i = 0; i < n; i++) {
            const CacheLookup& b = batch[i];
            EXPECT_TRUE(same_lookup(b, singles[i]))
                << "lookup " << i << ": batch " << b.ns_gen << "." << b.user_gen << " hit " << b.hit
                << " lock " << b.lock_taken << ", single " << singles[i].ns_gen << "."
                << singles[i].user_gen << " hit " << singles[i].hit << " lock "
                << singles[i].lock_taken;
            const std::string e = cache_entry_key(reqs[i].target, b.generation());
            lookups++;
            hits += b.hit;
            taken += b.lock_taken;
            if (!b.hit && !reqs[i].want_lock) {
                no_lock++;
            } else if (!b.hit && !b.lock_taken) {
                held_in_batch += taken_here.count(e) != 0;
                held_by_other += locked.count(e) != 0;
            }
            if (b.lock_taken) {
                taken_here.insert(e);
            }
        }
        ASSERT_EQ(after_batch.size(), after_singles.size());
        for (size_t i = 0; i < after_batch.size(); i++) {
            const Stored& x = after_batch[i];
            const Stored& y = after_singles[i];
            EXPECT_EQ(x.key, y.key);
            EXPECT_EQ(x.value, y.value) << x.key;
            EXPECT_EQ(x.pttl < 0, y.pttl < 0) << x.key;
            EXPECT_LE(std::llabs(x.pttl - y.pttl), 2000) << x.key;
        }
    }
    // Every path was taken, many times.
    EXPECT_GT(hits, 300u);
    EXPECT_GT(taken, 300u);
    EXPECT_GT(held_in_batch, 300u);  // the lock an earlier lookup of the batch took
    EXPECT_GT(held_by_other, 100u);  // a lock held before the batch
    EXPECT_GT(no_lock, 300u);
    EXPECT_GT(bumped, 100u);
    EXPECT_EQ(full, 10u);
    EXPECT_GT(lookups - hits, 1000u);
}

// Two lookups of one key in a batch: the first takes the lock, the second finds it held and
// leaves the waiter mark, so the filler's STORE wakes it.
TEST_F(RedisCacheScriptsTest, BatchLookupsOfOneKeyTakeTheLockOnce) {
    const CacheTarget t = target("tc:", "review", user_a, "/same");
    const CacheTarget other = target("tc:", "review", user_b, "/same");
    const std::string e = cache_entry_key(t, gen(0, 0));
    std::vector<CacheLookup> l =
        lookup_batch({request(t, false), request(t, true, 4000, tok), request(other, true, 5000),
                      request(t, true, 3000, "second.1.1"), request(t, false)});
    ASSERT_EQ(l.size(), 5u);
    EXPECT_FALSE(l[0].lock_taken);  // not asked for
    EXPECT_TRUE(l[1].lock_taken);
    EXPECT_TRUE(l[2].lock_taken);  // another user: another key
    EXPECT_FALSE(l[3].lock_taken);
    EXPECT_FALSE(l[4].lock_taken);
    for (const CacheLookup& x : l) {
        EXPECT_FALSE(x.hit);
    }
    EXPECT_EQ(ctl->run({"GET", cc::fill_lock_key(e)}), tok);  // the first lookup's
    EXPECT_EQ(ctl->run({"EXISTS", e + ":w"}), "1");
    EXPECT_EQ(ctl->run({"EXISTS", cache_entry_key(other, gen(0, 0)) + ":w"}), "0");
    const long long lock_ttl = number(ctl->run({"PTTL", cc::fill_lock_key(e)}));
    const long long mark_ttl = number(ctl->run({"PTTL", e + ":w"}));
    EXPECT_GT(lock_ttl, 3000);  // the first lookup's ttl
    EXPECT_LE(lock_ttl, 4000);
    EXPECT_GT(mark_ttl, 2000);  // the waiter's
    EXPECT_LE(mark_ttl, 3000);

    Listener listener(server->port(), cache_fill_channel("tc:"));
    ASSERT_TRUE(listener.ok());
    ASSERT_TRUE(store(t, l[1], "filled"));
    EXPECT_EQ(listener.next(), "1" + e);
    l = lookup_batch({request(t, true), request(t, false)});
    ASSERT_EQ(l.size(), 2u);
    EXPECT_EQ(l[0].entry, "filled");
    EXPECT_EQ(l[1].entry, "filled");
    EXPECT_FALSE(l[0].lock_taken);
}

TEST_F(RedisCacheScriptsTest, BatchOfOneAndOfMaxOnly) {
    const CacheTarget t = target("tc:", "review", "anon", "/one");
    std::vector<CacheLookup> l = lookup_batch({request(t, true)});
    ASSERT_EQ(l.size(), 1u);
    EXPECT_TRUE(l[0].lock_taken);
    ASSERT_TRUE(store(t, l[0], "one"));
    l = lookup_batch({request(t, true)});
    ASSERT_EQ(l.size(), 1u);
    EXPECT_EQ(l[0].entry, "one");
    ctl->run({"FLUSHALL"});

    // 64 different keys: stored for the even ones, a lock taken for each odd one; then the same
    // batch again finds the odd ones' locks held and marks them all.
    std::vector<CacheLookupRequest> reqs;
    for (size_t i = 0; i < cache_lookup_batch_max; i++) {
        const CacheTarget ti =
            target("tc:", "review", i % 3 ? user_a : user_b, "/p" + std::to_string(i));
        if (i % 2 == 0) {
            ctl->run({"SET", cache_entry_key(ti, gen(0, 0)), "e" + std::to_string(i)});
        }
        reqs.push_back(request(ti, true));
    }
    for (int round = 0; round < 2; round++) {
        l = lookup_batch(reqs);
        ASSERT_EQ(l.size(), cache_lookup_batch_max);
        for (size_t i = 0; i < l.size(); i++) {
            EXPECT_EQ(l[i].hit, i % 2 == 0) << i;
            EXPECT_EQ(l[i].entry, i % 2 == 0 ? "e" + std::to_string(i) : "") << i;
            EXPECT_EQ(l[i].lock_taken, round == 0 && i % 2 == 1) << i;
        }
        // entries, locks, and (after the second round) waiter marks
        EXPECT_EQ(number(ctl->run({"DBSIZE"})), round == 0 ? 64 : 96);
    }

    // 0 and 65 lookups: refused by the builder and by the script.
    EvalArgs a;
    EXPECT_FALSE(build_cache_lookup_batch_args(reqs.data(), 0, a));
    reqs.push_back(reqs[0]);
    EXPECT_FALSE(build_cache_lookup_batch_args(reqs.data(), reqs.size(), a));
    ctl->run({"FLUSHALL"});
    Reply r = raw(cache_lookup_batch_script(), {}, {});
    EXPECT_TRUE(r.is_error()) << to_string(r.type);
    std::vector<std::string> keys, args;
    EvalArgs one;
    ASSERT_TRUE(build_cache_lookup_args(t, 5000, true, tok, one));
    for (size_t i = 0; i < cache_lookup_batch_max + 1; i++) {
        keys.insert(keys.end(), one.keys().begin(), one.keys().end());
        args.insert(args.end(), one.args().begin(), one.args().end());
    }
    r = raw(cache_lookup_batch_script(), keys, args);
    EXPECT_TRUE(r.is_error()) << to_string(r.type);
    EXPECT_NE(r.str.find("expected 1 to 64 lookups"), std::string::npos) << r.str;
    EXPECT_EQ(ctl->run({"DBSIZE"}), "0");
    keys.resize(2 * cache_lookup_batch_max);
    args.resize(7 * cache_lookup_batch_max);
    r = raw(cache_lookup_batch_script(), keys, args);
    std::vector<CacheLookup> out;
    EXPECT_TRUE(parse_cache_lookup_batch_reply(std::move(r), cache_lookup_batch_max, out));
}

// A malformed lookup anywhere, a corrupt generation or a key of another type make the whole
// batch an error reply, which writes nothing (lookup 1 would have taken its fill lock).
TEST_F(RedisCacheScriptsTest, MalformedBatchesAreErrorsThatWriteNothing) {
    const CacheTarget t1 = target("tc:", "review", "anon", "/x");
    const CacheTarget t2 = target("tc:", "review", user_a, "/y");
    const std::vector<CacheLookupRequest> reqs = {request(t1, true), request(t2, true)};
    EvalArgs a;
    ASSERT_TRUE(build_cache_lookup_batch_args(reqs.data(), reqs.size(), a));
    const std::vector<std::string> keys = strings(a.keys()), args = strings(a.args());
    std::string dbsize = "0";
    std::vector<CacheLookup> out;
    auto batch_error = [&](const std::vector<std::string>& k, const std::vector<std::string>& v,
                           std::string_view says) {
        Reply r = raw(cache_lookup_batch_script(), k, v);
        EXPECT_TRUE(r.is_error()) << to_string(r.type);
        EXPECT_NE(r.str.find(says), std::string::npos) << r.str;
        EXPECT_FALSE(parse_cache_lookup_batch_reply(std::move(r), 2, out));
        EXPECT_EQ(ctl->run({"DBSIZE"}), dbsize);
    };
    auto with = [](std::vector<std::string> v, size_t i, std::string x) {
        v[i] = std::move(x);
        return v;
    };
    const std::string counts = "expected 1 to 64 lookups of 2 keys and 7 arguments";
    batch_error({keys.begin(), keys.end() - 1}, args, counts);
    batch_error(with(keys, 3, keys[3]), {args.begin(), args.end() - 1}, counts);
    std::vector<std::string> more = args;
    more.insert(more.end(), args.begin(), args.begin() + 7);
    batch_error(keys, more, counts);
    more = keys;
    more.push_back(keys[0]);
    batch_error(more, args, counts);
    batch_error({}, args, counts);
    batch_error(keys, {}, counts);

    // Lookup 2 malformed: ARGV[8..14] = prefix, ns, id, hex, ttl, want, token (0-based 7..13).
    std::vector<std::string> swapped = keys;
    std::swap(swapped[2], swapped[3]);
    const std::string not_keys = "lookup 2: keys are not the generation keys";
    batch_error(swapped, args, not_keys);
    batch_error(keys, with(args, 9, "anon"), not_keys);
    batch_error(keys, with(args, 7, "tc"), not_keys);
    batch_error(keys, with(args, 8, "analytics"), not_keys);
    batch_error(keys, with(args, 10, args[10].substr(1)), "lookup 2: the key is not 64");
    std::string upper = args[10];
    upper[63] = 'A';
    batch_error(keys, with(args, 10, upper), "lookup 2: the key is not 64");
    batch_error(keys, with(args, 10, args[10] + "0"), "lookup 2: the key is not 64");
    batch_error(keys, with(args, 11, "0"), "lookup 2: bad lock ttl");
    batch_error(keys, with(args, 11, "x"), "lookup 2: bad lock ttl");
    batch_error(keys, with(args, 11, "1.5"), "lookup 2: bad lock ttl");
    batch_error(keys, with(args, 12, "yes"), "lookup 2: want_lock is not 0 or 1");
    batch_error(keys, with(args, 12, ""), "lookup 2: want_lock is not 0 or 1");
    batch_error(keys, with(args, 5, "2"), "lookup 1: want_lock is not 0 or 1");
    batch_error(keys, with(args, 13, ""), "lookup 2: bad owner token");
    batch_error(keys, with(args, 13, std::string(65, 't')), "lookup 2: bad owner token");
    batch_error(keys, with(args, 6, ""), "lookup 1: bad owner token");
    // Without the lock its ttl and token are not looked at, as in LOOKUP.
    Reply r =
        raw(cache_lookup_batch_script(), keys, with(with(with(args, 12, "0"), 11, "x"), 13, ""));
    ASSERT_TRUE(parse_cache_lookup_batch_reply(std::move(r), 2, out));
    EXPECT_TRUE(out[0].lock_taken);
    EXPECT_FALSE(out[1].lock_taken);
    ctl->run({"FLUSHALL"});

    // Corrupt generations and keys of another type, in lookup 2's keys: LOOKUP alone fails too.
    const std::string ug2 = keys[2], ng = keys[1];
    dbsize = "1";
    const std::string corrupt = "a generation key holds no generation";
    for (const std::string bad : {"07", "-1", "1.5", " 1", "abc", "9007199254740992", ""}) {
        ctl->run({"SET", ug2, bad});
        batch_error(keys, args, corrupt);
        EXPECT_TRUE(raw(cache_lookup_script(), {keys[2], keys[3]}, {args.begin() + 7, args.end()})
                        .is_error());
    }
    ctl->run({"DEL", ug2});
    const std::string type = "a generation or entry key holds another type";
    for (const std::string& k : {ug2, ng, cache_entry_key(t2, gen(0, 0))}) {
        ctl->run({"HSET", k, "f", "v"});
        batch_error(keys, args, type);
        EXPECT_TRUE(raw(cache_lookup_script(), {keys[2], keys[3]}, {args.begin() + 7, args.end()})
                        .is_error());
        ctl->run({"DEL", k});
    }
    // A generation present and an entry of another type: still found.
    ctl->run({"SET", ug2, "3"});
    ctl->run({"HSET", cache_entry_key(t2, gen(0, 3)), "f", "v"});
    dbsize = "2";
    batch_error(keys, args, type);
}

// Redis CPU of 64 single LOOKUPs against one batch of 64. Not run by default:
//   throttle_redis_tests --gtest_also_run_disabled_tests --gtest_filter='*BatchRedisCpu*'
// Per lookup: the scripts' time (INFO commandstats, cmdstat_evalsha usec) and the whole
// redis-server process' CPU (INFO cpu: the scripts plus reading, parsing and answering).
TEST_F(RedisCacheScriptsTest, DISABLED_BatchRedisCpu) {
    const size_t n = cache_lookup_batch_max;
    const int rounds = 300;
    std::vector<CacheTarget> ts;
    for (size_t i = 0; i < n; i++) {
        ts.push_back(target("tc:", "review", i % 2 ? user_a : user_b, "/p" + std::to_string(i)));
    }
    auto field = [](const std::string& text, const std::string& key) {
        size_t at = text.find(key);
        return at == std::string::npos ? -1.0 : std::atof(text.c_str() + at + key.size());
    };
    auto cpu_us = [&] {
        const std::string cpu = ctl->run({"INFO", "cpu"});
        return 1e6 * (field(cpu, "used_cpu_user:") + field(cpu, "used_cpu_sys:"));
    };
    struct Scenario {
        const char* name;
        bool stored, want_lock;
    };
    for (const Scenario& sc :
         {Scenario{"hit (1 KB entry)", true, true}, Scenario{"miss, no lock", false, false},
          Scenario{"miss, lock held (waiter)", false, true}}) {
        double script[2] = {0, 0}, process[2] = {0, 0}, wall[2] = {0, 0};
        for (int batch = 0; batch < 2; batch++) {
            ctl->run({"FLUSHALL"});
            std::vector<CacheLookupRequest> reqs;
            std::vector<EvalArgs> singles(n);
            for (size_t i = 0; i < n; i++) {
                if (sc.stored) {
                    ctl->run({"SET", cache_entry_key(ts[i], gen(0, 0)), std::string(1024, 'e')});
                }
                reqs.push_back(request(ts[i], sc.want_lock));
                ASSERT_TRUE(build_cache_lookup_args(ts[i], 5000, sc.want_lock, tok, singles[i]));
            }
            EvalArgs all;
            ASSERT_TRUE(build_cache_lookup_batch_args(reqs.data(), n, all));
            lookup_batch(reqs);  // loads the scripts, takes the locks
            lookup(ts[0]);
            ctl->run({"CONFIG", "RESETSTAT"});
            const double cpu0 = cpu_us();
            const uint64_t t0 = mono_ms();
            for (int r = 0; r < rounds; r++) {
                std::vector<Outcome> o(batch ? 1 : n);
                if (batch) {
                    client->evalsha(cache_lookup_batch_script(), all.keys(), all.args(),
                                    track(o[0]));
                } else {
                    for (size_t i = 0; i < n; i++) {  // pipelined, as nginx would send them
                        client->evalsha(cache_lookup_script(), singles[i].keys(), singles[i].args(),
                                        track(o[i]));
                    }
                }
                ASSERT_TRUE(ev.run_until([&] { return o.back().calls > 0; }, 30000));
                for (const Outcome& x : o) {
                    ASSERT_TRUE(x.result.ok());
                    ASSERT_FALSE(x.result.reply.is_error()) << x.result.reply.str;
                }
            }
            wall[batch] = 1000.0 * double(mono_ms() - t0) / (rounds * n);
            process[batch] = (cpu_us() - cpu0) / (rounds * n);
            const std::string stats = ctl->run({"INFO", "commandstats"});
            const size_t at = stats.find("cmdstat_evalsha:");
            ASSERT_NE(at, std::string::npos);
            script[batch] = field(stats.substr(at), "usec=") / (rounds * n);
        }
        std::printf(
            "%-26s per lookup: script %.2f us single, %.2f us batch (x%.1f); "
            "redis-server cpu %.2f us / %.2f us (x%.1f); client wall %.2f us / %.2f us\n",
            sc.name, script[0], script[1], script[0] / script[1], process[0], process[1],
            process[0] / process[1], wall[0], wall[1]);
    }
}

// ---- the Redis Cluster variants (the namespace generation as an ARGV: keys of one slot) ----

// Every variant's keys share one slot; the purge message parses back; bad arguments are refused.
// The fast lookup answers only what LOOKUP answers, byte for byte. On random datasets --
// generations set, bumped after entries were stored, missing, non-canonical ("07"), keys of
// another type (a hash at a generation key, a list at an entry key), entries under current and
// old generations, empty entries -- and random guesses (right, 0, off by one), every fast hit is
// a hit LOOKUP gives at that moment with the same generations and bytes; every lookup LOOKUP
// answers with an error is no fast hit; and a hit whose generations were guessed and whose
// generation keys exist is always a fast hit (the fast path misses nothing it could serve).
TEST_F(RedisCacheScriptsTest, FastLookupHitsAreLookupHits) {
    std::vector<CacheTarget> universe;
    for (std::string_view p : {"tc:", "x{y}:"}) {
        for (std::string_view ns : {"review", "n"}) {
            for (const std::string* id : {&user_a, &user_b}) {
                for (std::string_view path : {"/a", "/b"}) {
                    universe.push_back(target(p, ns, *id, path));
                }
            }
        }
    }
    std::mt19937 rng(20261207);
    auto pick = [&](size_t n) { return size_t(rng() % n); };
    auto chance = [&](size_t pct) { return pick(100) < pct; };
    size_t fast_hits = 0, script_hits_guessed = 0, errors = 0, wrong_guess = 0, missing_gen = 0;
    for (int c = 0; c < 300; c++) {
        SCOPED_TRACE("case " + std::to_string(c));
        ctl->run({"FLUSHALL"});
        std::map<std::string, std::string> gens;  // generation key -> its text ("" missing)
        auto gen_text = [&](const std::string& k) { return gens.count(k) ? gens[k] : ""; };
        std::vector<const CacheTarget*> hot;
        for (size_t i = 1 + pick(4); i > 0; i--) {
            hot.push_back(&universe[pick(universe.size())]);
        }
        for (const CacheTarget* t : hot) {
            for (const std::string& k : {cc::namespace_generation_key(t->prefix, t->ns),
                                         cc::generation_key(t->prefix, t->ns, t->id)}) {
                if (gens.count(k)) {
                    continue;
                }
                size_t r = pick(100);
                if (r < 60) {
                    gens[k] = std::to_string(pick(4));
                    ctl->run({"SET", k, gens[k]});
                } else if (r < 65) {
                    gens[k] = "0" + std::to_string(1 + pick(3));  // not canonical
                    ctl->run({"SET", k, gens[k]});
                } else if (r < 70) {
                    gens[k] = "(hash)";
                    ctl->run({"HSET", k, "f", "1"});
                } else {
                    gens[k] = "";  // missing
                }
            }
        }
        auto value_of = [](const std::string& text) -> uint64_t {
            return text.empty() || text[0] == '(' ? 0 : std::stoull(text);
        };
        for (const CacheTarget* t : hot) {
            const cc::Generation g =
                gen(value_of(gen_text(cc::namespace_generation_key(t->prefix, t->ns))),
                    value_of(gen_text(cc::generation_key(t->prefix, t->ns, t->id))));
            const std::string e = cache_entry_key(*t, g);
            size_t r = pick(100);
            if (r < 60) {
                ctl->run({"SET", e, "entry " + e + " " + std::to_string(c)});
            } else if (r < 65) {
                ctl->run({"RPUSH", e, "x"});
            } else if (r < 68) {
                ctl->run({"SET", e, ""});
            }
            if (chance(20)) {  // an older entry, under other generations
                ctl->run({"SET", cache_entry_key(*t, gen(g.ns, g.user + 1)), "old"});
            }
        }
        const size_t n = 1 + pick(8);
        std::vector<CacheTarget> ts;
        std::vector<cc::Generation> guesses;
        for (size_t i = 0; i < n; i++) {
            const CacheTarget& t = *hot[pick(hot.size())];
            ts.push_back(t);
            cc::Generation g = gen(value_of(gen_text(cc::namespace_generation_key(t.prefix, t.ns))),
                                   value_of(gen_text(cc::generation_key(t.prefix, t.ns, t.id))));
            size_t r = pick(100);
            if (r < 15) {
                g = gen(0, 0);
            } else if (r < 25) {
                g.user++;
            } else if (r < 30) {
                g.ns++;
            }
            guesses.push_back(g);
        }
        const std::vector<CacheLookup> fast = fast_lookup(ts, guesses);
        ASSERT_EQ(fast.size(), n);
        for (size_t i = 0; i < n; i++) {
            bool ok = false;
            const CacheLookup l = lookup_or_error(ts[i], chance(50), tok, ok);
            const bool guessed = ok && l.ns_gen == guesses[i].ns && l.user_gen == guesses[i].user;
            const bool keys_exist =
                !gen_text(cc::namespace_generation_key(ts[i].prefix, ts[i].ns)).empty() &&
                !gen_text(cc::generation_key(ts[i].prefix, ts[i].ns, ts[i].id)).empty();
            if (fast[i].hit) {
                fast_hits++;
                ASSERT_TRUE(ok) << "a fast hit where LOOKUP answers an error, lookup " << i;
                EXPECT_TRUE(same_lookup(fast[i], l)) << "lookup " << i;
            } else {
                EXPECT_FALSE(ok && l.hit && guessed && keys_exist)
                    << "a hit the fast lookup could have served, lookup " << i;
            }
            errors += !ok;
            script_hits_guessed += ok && l.hit && guessed;
            wrong_guess += ok && l.hit && !guessed;
            missing_gen += ok && l.hit && guessed && !keys_exist;
        }
    }
    // Every path was taken, many times.
    EXPECT_GT(fast_hits, 100u);
    EXPECT_GT(errors, 50u);
    EXPECT_GT(wrong_guess, 30u);
    EXPECT_GT(missing_gen, 10u);  // an entry under a missing (0) generation: only the script
    EXPECT_GT(script_hits_guessed, fast_hits);
}

// STORE creates a missing generation key as "0" with the generation ttl, so that a stored
// entry's generation keys exist (the fast lookup trusts no nil); an existing one keeps its
// value. INVALIDATE counts from it as from a missing key.
TEST_F(RedisCacheScriptsTest, StoreCreatesMissingGenerationKeysAsZero) {
    const CacheTarget t = target("tc:", "review", user_a, "/z");
    const std::string ug = cc::generation_key("tc:", "review", user_a);
    const std::string ng = cc::namespace_generation_key("tc:", "review");
    CacheLookup l = lookup(t);
    EXPECT_EQ(ctl->run({"DBSIZE"}), "0");
    ASSERT_TRUE(store(t, l, "e0"));
    EXPECT_EQ(ctl->run({"GET", ug}), "0");
    EXPECT_EQ(ctl->run({"GET", ng}), "0");
    EXPECT_GT(number(ctl->run({"PTTL", ug})), cache_generation_ttl_ms - 60000);
    EXPECT_GT(number(ctl->run({"PTTL", ng})), cache_generation_ttl_ms - 60000);
    // The fast lookup now serves it under 0.0.
    std::vector<CacheLookup> f = fast_lookup({t}, {gen(0, 0)});
    ASSERT_EQ(f.size(), 1u);
    EXPECT_TRUE(f[0].hit);
    EXPECT_EQ(f[0].entry, "e0");
    // A store refused (a generation moved) creates nothing.
    const CacheTarget u = target("tc:", "other", user_b, "/z");
    CacheLookup lu = lookup(u);
    invalidate("tc:", user_b, {"other"});
    EXPECT_FALSE(store(u, lu, "late"));
    EXPECT_EQ(ctl->run({"EXISTS", cc::namespace_generation_key("tc:", "other")}), "0");
    EXPECT_EQ(invalidate("tc:", user_a, {"review"}), std::vector<uint64_t>{1});
    EXPECT_EQ(invalidate_namespace("tc:", "review"), std::vector<uint64_t>{1});
    // Now the old entry is out of reach, for the fast lookup too.
    f = fast_lookup({t}, {gen(0, 0)});
    EXPECT_FALSE(f[0].hit);
    EXPECT_FALSE(lookup(t).hit);
}

TEST(RedisCacheScriptsUnit, ClusterVariantsTouchOneSlot) {
    const CacheTarget a = target("tc:", "review", user_a, "/x/");
    std::vector<CacheLookupRequest> reqs(3);
    for (auto& r : reqs) {
        r.target = a;
    }
    reqs[1].want_lock = true;
    reqs[1].lock_ttl_ms = 5000;
    reqs[1].token = tok;
    const uint64_t gens[3] = {0, 7, 7};
    EvalArgs args;
    ASSERT_TRUE(build_cache_lookup_batch_cluster_args(reqs.data(), gens, 3, args));
    ASSERT_EQ(args.keys().size(), 3u);
    ASSERT_EQ(args.args().size(), 24u);
    EXPECT_EQ(args.args()[7], "0");
    EXPECT_EQ(args.args()[15], "7");
    for (auto k : args.keys()) {
        EXPECT_EQ(key_slot(k), key_slot(cc::generation_key("tc:", "review", user_a)));
    }
    const uint64_t too_big[1] = {cache_generation_limit};
    EXPECT_FALSE(build_cache_lookup_batch_cluster_args(reqs.data(), too_big, 1, args));
    EXPECT_FALSE(build_cache_lookup_batch_cluster_args(reqs.data(), gens, 0, args));

    ASSERT_TRUE(build_cache_store_cluster_args(a, gen(3, 2), tok, "entry", 1000, "ch", args));
    ASSERT_EQ(args.keys().size(), 4u);
    EXPECT_EQ(args.args().size(), 7u);
    for (auto k : args.keys()) {
        EXPECT_EQ(key_slot(k), key_slot(args.keys()[0]));
    }
    EXPECT_EQ(args.keys()[0], cache_entry_key(a, gen(3, 2)));
    ASSERT_TRUE(build_cache_abandon_cluster_args(a, 3, tok, "ch", args));
    EXPECT_EQ(args.keys().size(), 1u);
    EXPECT_EQ(args.args().back(), "3");
    ASSERT_TRUE(build_cache_purge_cluster_args("tc:", "review", "ch", args));
    EXPECT_EQ(args.keys().size(), 1u);
    EXPECT_FALSE(build_cache_purge_cluster_args("tc:", "a:b", "ch", args));
    EXPECT_FALSE(build_cache_ns_generation_args("tc:", "", args));

    uint64_t g = 0;
    std::string_view ns;
    ASSERT_TRUE(parse_cache_purge_message("g12:review", g, ns));
    EXPECT_EQ(g, 12u);
    EXPECT_EQ(ns, "review");
    for (const char* bad : {"", "g", "g1:", "g:review", "g01:review", "gx:review", "1abc", "0abc",
                            "g9007199254740992:review", "g12review"}) {
        EXPECT_FALSE(parse_cache_purge_message(bad, g, ns)) << bad;
    }
    bool stored = false;
    std::string_view e;
    EXPECT_FALSE(parse_cache_fill_message("g12:review", stored, e));  // old waiters ignore it
}

// The cluster lookup with the mirror's generation answers what the single LOOKUP answers when
// the namespace key holds that generation; STORE CLUSTER stores where LOOKUP then finds it and
// refuses after a user's invalidation; PURGE CLUSTER publishes the new generation; the
// namespace generation read pushes the key's expiry; ABANDON CLUSTER drops an orphan lock.
TEST_F(RedisCacheScriptsTest, ClusterVariantsMatchTheSingleScripts) {
    const std::string ch = cache_fill_channel("tc:");
    Listener listener(server->port(), ch);
    ASSERT_TRUE(listener.ok());
    const CacheTarget a = target("tc:", "review", user_a, "/cl/");
    auto cl_lookup = [&](const CacheTarget& t, uint64_t nsgen, bool want_lock) {
        CacheLookupRequest r;
        r.target = t;
        r.want_lock = want_lock;
        r.lock_ttl_ms = 5000;
        r.token = tok;
        EvalArgs args;
        EXPECT_TRUE(build_cache_lookup_batch_cluster_args(&r, &nsgen, 1, args));
        Reply rep = eval(cache_lookup_batch_cluster_script(), args);
        const std::string what = std::string(to_string(rep.type)) + " " + rep.str;
        std::vector<CacheLookup> out;
        EXPECT_TRUE(parse_cache_lookup_batch_reply(std::move(rep), 1, out)) << what;
        return out.empty() ? CacheLookup() : out[0];
    };
    auto cl_store = [&](const CacheTarget& t, const CacheLookup& l, std::string_view entry) {
        EvalArgs args;
        EXPECT_TRUE(build_cache_store_cluster_args(t, l.generation(), tok, entry, 60000, ch, args));
        Reply r = eval(cache_store_cluster_script(), args);
        bool stored = false;
        EXPECT_TRUE(parse_cache_store_reply(r, stored)) << to_string(r.type) << " " << r.str;
        return stored;
    };
    auto ns_gen = [&]() {
        EvalArgs args;
        EXPECT_TRUE(build_cache_ns_generation_args("tc:", "review", args));
        Reply r = eval(cache_ns_generation_script(), args);
        uint64_t g = 99;
        EXPECT_TRUE(parse_cache_ns_generation_reply(r, g)) << to_string(r.type) << " " << r.str;
        return g;
    };
    auto purge = [&]() {
        EvalArgs args;
        EXPECT_TRUE(build_cache_purge_cluster_args("tc:", "review", ch, args));
        Reply r = eval(cache_purge_cluster_script(), args);
        std::vector<uint64_t> g;
        EXPECT_TRUE(parse_cache_invalidate_reply(r, 1, g)) << to_string(r.type) << " " << r.str;
        return g.empty() ? uint64_t(0) : g[0];
    };

    EXPECT_EQ(ns_gen(), 0u);
    EXPECT_EQ(ctl->run({"DBSIZE"}), "0");  // reading a missing generation creates nothing
    CacheLookup m = cl_lookup(a, 0, true);
    EXPECT_FALSE(m.hit);
    EXPECT_TRUE(m.lock_taken);
    ASSERT_TRUE(cl_store(a, m, "entry a"));
    EXPECT_EQ(ctl->run({"EXISTS", cc::fill_lock_key(cache_entry_key(a, gen(0, 0)))}), "0");
    EXPECT_EQ(lookup(a).entry, "entry a");  // the single LOOKUP finds it: same entry key
    EXPECT_EQ(cl_lookup(a, 0, true).entry, "entry a");

    // A purge: the namespace generation moves and is published; under it, a miss.
    EXPECT_EQ(purge(), 1u);
    EXPECT_EQ(listener.next(), "g1:review");
    EXPECT_EQ(ns_gen(), 1u);
    ctl->run({"PEXPIRE", cc::namespace_generation_key("tc:", "review"), "1000"});
    EXPECT_EQ(ns_gen(), 1u);
    EXPECT_GT(number(ctl->run({"PTTL", cc::namespace_generation_key("tc:", "review")})),
              cache_generation_ttl_ms);  // pushed past every entry's life
    CacheLookup after = cl_lookup(a, 1, false);
    EXPECT_FALSE(after.hit);
    EXPECT_EQ(after.ns_gen, 1u);
    CacheLookup single = lookup(a);
    EXPECT_EQ(single.ns_gen, after.ns_gen);
    EXPECT_EQ(single.user_gen, after.user_gen);
    EXPECT_EQ(single.hit, after.hit);

    // A user's invalidation between lookup and store: refused, as STORE does.
    CacheLookup l = cl_lookup(a, 1, true);
    ASSERT_TRUE(l.lock_taken);
    invalidate("tc:", user_a, {"review"});
    EXPECT_FALSE(cl_store(a, l, "too late"));
    EXPECT_FALSE(cl_lookup(a, 1, false).hit);
    EXPECT_EQ(ctl->run({"EXISTS", cc::fill_lock_key(cache_entry_key(a, l.generation()))}), "0");

    // ABANDON CLUSTER under the mirror's generation.
    ASSERT_TRUE(cl_lookup(a, 1, true).lock_taken);
    EvalArgs ab;
    ASSERT_TRUE(build_cache_abandon_cluster_args(a, 1, tok, ch, ab));
    Reply r = eval(cache_abandon_cluster_script(), ab);
    bool released = false;
    EXPECT_TRUE(parse_cache_abandon_reply(r, released));
    EXPECT_TRUE(released);
    EXPECT_TRUE(cl_lookup(a, 1, true).lock_taken);

    // Malformed: a namespace generation that is not a canonical decimal, a wrong key.
    EvalArgs good;
    CacheLookupRequest rq;
    rq.target = a;
    const uint64_t one = 1;
    ASSERT_TRUE(build_cache_lookup_batch_cluster_args(&rq, &one, 1, good));
    std::vector<std::string> keys(good.keys().begin(), good.keys().end());
    std::vector<std::string> args(good.args().begin(), good.args().end());
    args[7] = "01";
    EXPECT_EQ(raw(cache_lookup_batch_cluster_script(), keys, args).type, Reply::Type::Error);
    args[7] = "1";
    keys[0] = cc::namespace_generation_key("tc:", "review");
    EXPECT_EQ(raw(cache_lookup_batch_cluster_script(), keys, args).type, Reply::Type::Error);
}

}  // namespace
}  // namespace throttle::redis::test
