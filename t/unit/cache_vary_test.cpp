// The variant key, the vary list and the vary record (src/core/cache_vary.hpp).
#include "core/cache_vary.hpp"

#include <gtest/gtest.h>

#include <set>
#include <string>
#include <vector>

#include "core/cache_key.hpp"

namespace throttle::core::cache {
namespace {

VaryList list_of(std::initializer_list<const char*> names) {
    VaryList l;
    for (const char* n : names) EXPECT_EQ(l.add(n), VaryList::Add::ok) << n;
    return l;
}

// The variant for base key `base` and one header value per name (nullptr: missing; several
// lines joined as the caller passes them).
Sha256Digest variant(const Sha256Digest& base, const VaryList& list,
                     std::vector<std::vector<const char*>> lines) {
    std::vector<VaryValue> values(list.size());
    for (size_t i = 0; i < list.size(); ++i)
        for (const char* line : lines[i]) EXPECT_TRUE(append_vary_value(line, values[i]));
    return variant_key(base, list, values.data());
}

Sha256Digest base_key(std::string_view path = "/api/x") {
    CacheKeyInput in;
    in.ns = "ns";
    in.identity_digest = "anon";
    in.method = "GET";
    in.path = path;
    in.scheme = "http";
    in.host = "a.test";
    return cache_key(in);
}

TEST(VaryList, NormalisedSortedUnique) {
    VaryList l;
    EXPECT_TRUE(l.empty());
    EXPECT_EQ(l.text(), "");
    EXPECT_EQ(l.add("Accept-Language"), VaryList::Add::ok);
    EXPECT_EQ(l.add("ACCEPT"), VaryList::Add::ok);
    EXPECT_EQ(l.add("accept"), VaryList::Add::ok);  // a repeat
    EXPECT_EQ(l.add("X-Tenant"), VaryList::Add::ok);
    EXPECT_EQ(l.text(), "accept,accept-language,x-tenant");
    EXPECT_EQ(l.size(), 3u);
    EXPECT_EQ(l.name(0), "accept");
    EXPECT_EQ(l.add("origin"), VaryList::Add::ok);
    EXPECT_EQ(l.add("zzz"), VaryList::Add::too_many);
    EXPECT_EQ(l.add("Origin"), VaryList::Add::ok);  // a repeat of a full list is fine
    EXPECT_EQ(l.text(), "accept,accept-language,origin,x-tenant");
}

TEST(VaryList, BadNames) {
    VaryList l;
    for (std::string bad : {std::string(), std::string("a b"), std::string("a:b"), std::string("é"),
                            std::string(65, 'a'), std::string("a\0b", 3)})
        EXPECT_EQ(l.add(bad), VaryList::Add::bad_name) << bad;
    EXPECT_TRUE(l.empty());
    EXPECT_EQ(l.add(std::string(64, 'A')), VaryList::Add::ok);
    EXPECT_EQ(l.text(), std::string(64, 'a'));
}

TEST(VaryList, ParseOnlyCanonical) {
    VaryList l;
    ASSERT_TRUE(VaryList::parse("accept", l));
    EXPECT_EQ(l.text(), "accept");
    ASSERT_TRUE(VaryList::parse("accept,accept-language,origin,x", l));
    EXPECT_EQ(l.size(), 4u);
    for (const char* bad : {"", "Accept", "b,a", "a,a", "a,,b", ",a", "a,", "a,b,c,d,e", "a b",
                            "accept-language,accept"})
        EXPECT_FALSE(VaryList::parse(bad, l)) << bad;
    EXPECT_FALSE(VaryList::parse(std::string(65, 'a'), l));
}

TEST(VaryValue, Normalised) {
    auto norm = [](std::vector<std::string> lines) {
        VaryValue v;
        for (const std::string& line : lines) EXPECT_TRUE(append_vary_value(line, v));
        return v;
    };
    EXPECT_EQ(norm({"application/json"}).value, "application/json");
    EXPECT_EQ(norm({" text/html ,  application/json\t"}).value, "text/html,application/json");
    EXPECT_EQ(norm({"text/html", "application/json"}).value, "text/html,application/json");
    EXPECT_EQ(norm({"a,,b"}).value, "a,,b");
    EXPECT_EQ(norm({"A"}).value, "A");  // values are bytes: case counts
    VaryValue empty = norm({""});
    EXPECT_TRUE(empty.present);
    EXPECT_EQ(empty.value, "");
    EXPECT_FALSE(VaryValue().present);
    // Bounded: 256 bytes once normalised.
    VaryValue v;
    EXPECT_TRUE(append_vary_value(std::string(256, 'a'), v));
    VaryValue w;
    EXPECT_FALSE(append_vary_value(std::string(257, 'a'), w));
    VaryValue spaced;  // spaces around commas do not count against the bound
    EXPECT_TRUE(
        append_vary_value(std::string(100, 'a') + "   ,   " + std::string(100, 'b'), spaced));
    VaryValue two;
    EXPECT_TRUE(append_vary_value(std::string(200, 'a'), two));
    EXPECT_FALSE(append_vary_value(std::string(60, 'b'), two));  // 261 with the comma
}

TEST(VariantKey, SeparatesWhatDiffers) {
    const Sha256Digest b = base_key();
    const VaryList accept = list_of({"Accept"});
    std::set<Sha256Digest> seen;
    seen.insert(b);
    seen.insert(variant(b, accept, {{"application/json"}}));
    seen.insert(variant(b, accept, {{"text/html"}}));
    seen.insert(variant(b, accept, {{}}));    // missing
    seen.insert(variant(b, accept, {{""}}));  // empty
    seen.insert(variant(b, accept, {{"application/JSON"}}));
    seen.insert(variant(base_key("/api/y"), accept, {{"application/json"}}));
    // The same value under another list, or the same two values in other headers.
    const VaryList two = list_of({"Accept", "Accept-Language"});
    seen.insert(variant(b, two, {{"application/json"}, {}}));
    seen.insert(variant(b, two, {{"application/json"}, {""}}));
    seen.insert(variant(b, two, {{"de"}, {"application/json"}}));
    seen.insert(variant(b, two, {{"application/json"}, {"de"}}));
    seen.insert(variant(b, list_of({"Accept-Language"}), {{"application/json"}}));
    // Moving a comma between values, or bytes between name and value.
    seen.insert(variant(b, two, {{"a,b"}, {"c"}}));
    seen.insert(variant(b, two, {{"a"}, {"b,c"}}));
    EXPECT_EQ(seen.size(), 14u);
}

TEST(VariantKey, NormalisationGivesOneKey) {
    const Sha256Digest b = base_key();
    const VaryList accept = list_of({"ACCEPT"});
    const Sha256Digest k = variant(b, accept, {{"text/html,application/json"}});
    EXPECT_EQ(variant(b, list_of({"accept"}), {{"text/html,application/json"}}), k);
    EXPECT_EQ(variant(b, accept, {{" text/html ,\tapplication/json "}}), k);
    EXPECT_EQ(variant(b, accept, {{"text/html", "application/json"}}), k);
    EXPECT_EQ(variant(b, accept, {{"text/html ", " application/json"}}), k);
    // Name order in the response does not matter: the list is sorted.
    VaryList ab, ba;
    ab.add("a");
    ab.add("b");
    ba.add("B");
    ba.add("A");
    EXPECT_EQ(variant(b, ab, {{"1"}, {"2"}}), variant(b, ba, {{"1"}, {"2"}}));
    EXPECT_NE(variant(b, ab, {{"1"}, {"2"}}), variant(b, ab, {{"2"}, {"1"}}));
}

TEST(VaryRecord, RoundTripAndRefusals) {
    const VaryList l = list_of({"Accept", "Accept-Language"});
    std::string rec = encode_vary_record(l);
    EXPECT_EQ(rec, std::string("TCV\x01", 4) + "accept,accept-language");
    EXPECT_TRUE(is_vary_record(rec));
    VaryList out;
    ASSERT_TRUE(decode_vary_record(rec, out));
    EXPECT_EQ(out.text(), l.text());
    EXPECT_FALSE(is_vary_record(std::string("TCE\x01", 4)));  // an entry
    EXPECT_FALSE(is_vary_record("TCV"));
    EXPECT_FALSE(decode_vary_record(std::string("TCV\x01", 4), out));  // empty list
    EXPECT_FALSE(decode_vary_record(std::string("TCV\x02", 4) + "accept", out));
    EXPECT_FALSE(decode_vary_record(std::string("TCV\x01", 4) + "Accept", out));
    EXPECT_FALSE(decode_vary_record(std::string("TCV\x01", 4) + "a,b,c,d,e", out));
    EXPECT_FALSE(decode_vary_record(std::string("TCV\x01", 4) + "accept\n", out));
}

}  // namespace
}  // namespace throttle::core::cache
