// The cache entry format (round trips, every rejection, truncation, random mutations under
// ASan/UBSan) and the cacheability rules (README, "Response cache"), one test per rule.
#include "core/cache_entry.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace {

using namespace throttle::core::cache;

Entry sample() {
    Entry e;
    e.status = 200;
    e.stored_at_ms = 1700000000000;
    e.fresh_until_ms = 1700003600000;
    e.stale_until_ms = 1700003630000;
    e.headers = {{"Content-Type", "application/json"},
                 {"Link", "</a>; rel=next"},
                 {"Link", "</b>; rel=prev"},
                 {"X-Empty", ""}};
    e.body = std::string("{\"reviews\":[1,2,3]}\0tail", 24);
    e.plain_size = e.body.size();
    return e;
}

bool same(const Entry& a, const Entry& b) {
    if (a.status != b.status || a.gzip != b.gzip || a.stored_at_ms != b.stored_at_ms ||
        a.fresh_until_ms != b.fresh_until_ms || a.stale_until_ms != b.stale_until_ms ||
        a.plain_size != b.plain_size || a.body != b.body || a.headers.size() != b.headers.size())
        return false;
    for (size_t i = 0; i < a.headers.size(); ++i)
        if (a.headers[i].name != b.headers[i].name || a.headers[i].value != b.headers[i].value)
            return false;
    return true;
}

// Decodes into an owned Entry; rejects must leave `out` untouched.
bool dec(const std::string& s, Entry& out, DecodeLimits l = {}) {
    return decode(std::string_view(s), out, l);
}

TEST(CacheEntry, RoundTrip) {
    Entry e = sample();
    ASSERT_TRUE(valid(e));
    std::string s = encode(e);
    Entry d;
    ASSERT_TRUE(dec(s, d));
    EXPECT_TRUE(same(e, d));
    EXPECT_EQ(encode(d), s);
}

TEST(CacheEntry, RoundTripEdges) {
    Entry e;  // no headers, empty body, all times 0
    std::string s = encode(e);
    EXPECT_EQ(s.size(), entry_fixed_size + 8);
    Entry d;
    ASSERT_TRUE(dec(s, d));
    EXPECT_TRUE(same(e, d));

    e = sample();
    e.gzip = true;
    e.plain_size = 1 << 20;  // the plain size may exceed the stored body when compressed
    e.status = 599;
    e.stale_until_ms = INT64_MAX;
    ASSERT_TRUE(dec(encode(e), d));
    EXPECT_TRUE(same(e, d));

    e = sample();
    e.headers.clear();
    for (size_t i = 0; i < entry_max_headers; ++i)
        e.headers.push_back({"X-H" + std::to_string(i), std::string(100, 'v')});
    e.body.assign(1 << 20, 'b');
    e.plain_size = e.body.size();
    ASSERT_TRUE(dec(encode(e), d));
    EXPECT_TRUE(same(e, d));
}

TEST(CacheEntry, Layout) {
    Entry e;
    e.status = 0x1234 % 600;  // 4660 % 600 = 460
    e.gzip = true;
    e.stored_at_ms = 0x0102030405060708;
    e.fresh_until_ms = e.stored_at_ms;
    e.stale_until_ms = e.stored_at_ms;
    e.plain_size = 3;
    e.headers = {{"A", "bc"}};
    e.body = "xyz";
    std::string s = encode(e);
    std::string expect("TCE\x01\x01\x01\xcc", 7);
    std::string t("\x01\x02\x03\x04\x05\x06\x07\x08", 8);
    expect += t + t + t;
    expect += std::string("\0\0\0\0\0\0\0\x03", 8);
    expect += std::string("\0\x01", 2);
    expect += std::string(
        "\0\x01"
        "A"
        "\0\0\0\x02"
        "bc",
        9);
    expect += std::string(
        "\0\0\0\0\0\0\0\x03"
        "xyz",
        11);
    EXPECT_EQ(s, expect);
}

TEST(CacheEntry, EncodeHeadPlusBody) {
    Entry e = sample();
    EntryView v;
    ASSERT_TRUE(view_of(e, v));
    EXPECT_EQ(encode_head(v, e.body.size()) + e.body, encode(e));
    EXPECT_EQ(encode(v), encode(e));
}

TEST(CacheEntry, DecodeView) {
    Entry e = sample();
    std::string s = encode(e);
    EntryView v;
    ASSERT_TRUE(decode(s, v));
    EXPECT_EQ(v.status, 200);
    ASSERT_EQ(v.header_count, 4u);
    EXPECT_EQ(v.headers[1].value, "</a>; rel=next");
    EXPECT_EQ(v.body, e.body);
    // The view points into the input, no copy.
    EXPECT_GE(v.body.data(), s.data());
    EXPECT_LE(v.body.data() + v.body.size(), s.data() + s.size());
}

TEST(CacheEntry, EveryTruncationRejected) {
    std::string s = encode(sample());
    Entry d;
    EntryView v;
    for (size_t len = 0; len < s.size(); ++len) {
        std::string cut = s.substr(0, len);  // its own allocation: ASan sees any overread
        EXPECT_FALSE(dec(cut, d)) << len;
        EXPECT_FALSE(decode(cut, v)) << len;
    }
    EXPECT_FALSE(dec(s + "x", d));
    EXPECT_FALSE(dec(s + std::string(1, '\0'), d));
}

// The offset of the header count, the first name length, ... in sample()'s encoding.
constexpr size_t off_flags = 4, off_status = 5, off_stored = 7, off_fresh = 15, off_stale = 23,
                 off_plain = 31, off_count = 39, off_first_name_len = 41;

void set_be(std::string& s, size_t off, uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; --i) {
        s[off + static_cast<size_t>(i)] = static_cast<char>(v & 0xff);
        v >>= 8;
    }
}

TEST(CacheEntry, HeaderFieldsRejected) {
    const std::string good = encode(sample());
    Entry d;
    ASSERT_TRUE(dec(good, d));
    auto rejects = [&](auto mutate) {
        std::string s = good;
        mutate(s);
        Entry out;
        out.status = 42;
        bool ok = dec(s, out);
        if (!ok) {
            EXPECT_EQ(out.status, 42);  // untouched on failure
        }
        return !ok;
    };
    EXPECT_TRUE(rejects([](std::string& s) { s[0] = 'X'; }));
    EXPECT_TRUE(rejects([](std::string& s) { s[3] = 2; }));  // version
    EXPECT_TRUE(rejects([](std::string& s) { s[3] = 0; }));
    EXPECT_TRUE(rejects([](std::string& s) { s[off_flags] = 2; }));  // unknown flag
    EXPECT_TRUE(rejects([](std::string& s) { s[off_flags] = static_cast<char>(0x81); }));
    EXPECT_TRUE(rejects([](std::string& s) { set_be(s, off_status, 99, 2); }));
    EXPECT_TRUE(rejects([](std::string& s) { set_be(s, off_status, 600, 2); }));
    EXPECT_TRUE(rejects([](std::string& s) { set_be(s, off_status, 0xffff, 2); }));
    EXPECT_FALSE(rejects([](std::string& s) { set_be(s, off_status, 100, 2); }));
    EXPECT_TRUE(rejects([](std::string& s) { set_be(s, off_stored, UINT64_MAX, 8); }));  // < 0
    EXPECT_TRUE(rejects([](std::string& s) { set_be(s, off_fresh, 1, 8); }));            // < stored
    EXPECT_TRUE(rejects([](std::string& s) { set_be(s, off_stale, 1700003599999, 8); }));
    EXPECT_TRUE(rejects([](std::string& s) { set_be(s, off_plain, 23, 8); }));  // != body
    EXPECT_TRUE(rejects([](std::string& s) { set_be(s, off_count, 3, 2); }));
    EXPECT_TRUE(rejects([](std::string& s) { set_be(s, off_count, 5, 2); }));
    EXPECT_TRUE(rejects([](std::string& s) { set_be(s, off_count, 0xffff, 2); }));
    EXPECT_TRUE(rejects([](std::string& s) { set_be(s, off_first_name_len, 0, 2); }));
    EXPECT_TRUE(rejects([](std::string& s) { set_be(s, off_first_name_len, 0xffff, 2); }));
    // The body length, last 8 bytes before the body.
    size_t off_body_len = good.size() - 24 - 8;
    EXPECT_TRUE(rejects([&](std::string& s) { set_be(s, off_body_len, 23, 8); }));
    EXPECT_TRUE(rejects([&](std::string& s) { set_be(s, off_body_len, 25, 8); }));
    EXPECT_TRUE(rejects([&](std::string& s) { set_be(s, off_body_len, UINT64_MAX, 8); }));
}

TEST(CacheEntry, HeaderContentRejected) {
    Entry d;
    auto rejected = [&](const std::string& name, const std::string& value) {
        Entry e = sample();
        e.headers.push_back({name, value});
        EXPECT_FALSE(valid(e)) << name;
        return !dec(encode(e), d);
    };
    EXPECT_TRUE(rejected("", "v"));
    EXPECT_TRUE(rejected("Bad Name", "v"));
    EXPECT_TRUE(rejected("Bad:Name", "v"));
    EXPECT_TRUE(rejected(std::string("X\0", 2), "v"));
    EXPECT_TRUE(rejected(std::string(entry_max_name + 1, 'n'), "v"));
    EXPECT_TRUE(rejected("X-Ok", "a\r\nSet-Cookie: x=1"));
    EXPECT_TRUE(rejected("X-Ok", "a\nb"));
    EXPECT_TRUE(rejected("X-Ok", std::string("a\0b", 3)));
    EXPECT_TRUE(rejected("X-Ok", std::string(entry_max_value + 1, 'v')));
    EXPECT_TRUE(rejected("Set-Cookie", "sid=1"));
    EXPECT_TRUE(rejected("set-cookie", "sid=1"));
    EXPECT_TRUE(rejected("Transfer-Encoding", "chunked"));
    EXPECT_TRUE(rejected("Content-Length", "24"));
    EXPECT_TRUE(rejected("X-Accel-Redirect", "/internal"));
    // CR, LF and NUL at every position of values of several lengths (the check reads eight bytes
    // at a time, then the tail); bytes next to them (0x0c, 0x0e, 0x8a, 0x8d, 0x80, 0xff, 0x01)
    // are fine anywhere.
    for (size_t len = 1; len <= 21; ++len) {
        for (size_t at = 0; at < len; ++at) {
            for (char bad : {'\r', '\n', '\0'}) {
                std::string v(len, 'v');
                v[at] = bad;
                ASSERT_TRUE(rejected("X-Ok", v)) << len << " " << at << " " << int(bad);
            }
            for (unsigned char fine : {0x0c, 0x0e, 0x8a, 0x8d, 0x80, 0xff, 0x01, 0x2d}) {
                std::string v(len, 'v');
                v[at] = static_cast<char>(fine);
                Entry e = sample();
                e.headers.push_back({"X-Ok", v});
                ASSERT_TRUE(valid(e)) << len << " " << at << " " << int(fine);
                ASSERT_TRUE(dec(encode(e), d)) << len << " " << at << " " << int(fine);
            }
        }
    }

    Entry e = sample();
    e.headers.push_back({std::string(entry_max_name, 'n'), std::string(entry_max_value, 'v')});
    e.headers.push_back({"X-Tab", "a\tb \x80\xff"});  // HTAB and obs-text are fine
    EXPECT_TRUE(dec(encode(e), d));

    // Too many headers, too many header bytes.
    e = sample();
    e.headers.clear();
    for (size_t i = 0; i <= entry_max_headers; ++i) e.headers.push_back({"X", "v"});
    EXPECT_FALSE(valid(e));
    e.headers.pop_back();
    EXPECT_TRUE(valid(e));
    e.headers.clear();
    for (size_t i = 0; i < 7; ++i) e.headers.push_back({"X", std::string(entry_max_value, 'v')});
    e.headers.push_back({"X", std::string(entry_max_header_bytes - 7 * 8193 - 1, 'v')});
    EXPECT_TRUE(valid(e));  // exactly entry_max_header_bytes
    e.headers.push_back({"X", ""});
    EXPECT_FALSE(valid(e));
    EXPECT_FALSE(dec(encode(e), d));
}

TEST(CacheEntry, SizeLimits) {
    Entry e = sample();
    e.body.assign(1000, 'b');
    e.plain_size = 1000;
    std::string s = encode(e);
    Entry d;
    EXPECT_TRUE(dec(s, d, DecodeLimits{1000}));
    EXPECT_FALSE(dec(s, d, DecodeLimits{999}));
    e.gzip = true;
    e.body.assign(10, 'z');
    e.plain_size = 1001;  // a gzip bomb's claim is bounded too
    EXPECT_FALSE(dec(encode(e), d, DecodeLimits{1000}));
    e.plain_size = 1000;
    EXPECT_TRUE(dec(encode(e), d, DecodeLimits{1000}));
}

// Random mutations of valid entries: decode either refuses, or accepts an input that is exactly
// the encoding of what it decoded (the format has one spelling per entry). Any read outside the
// input is caught by ASan.
TEST(CacheEntry, FuzzMutations) {
    std::mt19937_64 rng(20240607);
    std::vector<std::string> seeds;
    Entry e = sample();
    seeds.push_back(encode(e));
    e.gzip = true;
    e.plain_size = 99999;
    seeds.push_back(encode(e));
    seeds.push_back(encode(Entry{}));
    e = sample();
    e.headers.clear();
    e.body.clear();
    e.plain_size = 0;
    seeds.push_back(encode(e));

    size_t accepted = 0;
    for (int round = 0; round < 200000; ++round) {
        std::string s = seeds[rng() % seeds.size()];
        int edits = 1 + static_cast<int>(rng() % 4);
        for (int k = 0; k < edits; ++k) {
            size_t pos = s.empty() ? 0 : rng() % s.size();
            switch (rng() % 7) {
                case 0:  // flip a bit
                    if (!s.empty()) s[pos] = static_cast<char>(s[pos] ^ (1 << (rng() % 8)));
                    break;
                case 1:  // random byte
                    if (!s.empty()) s[pos] = static_cast<char>(rng());
                    break;
                case 2:  // truncate
                    s.resize(pos);
                    break;
                case 3:  // insert
                    s.insert(pos, 1, static_cast<char>(rng()));
                    break;
                case 4:  // erase
                    if (!s.empty()) s.erase(pos, 1 + rng() % 8);
                    break;
                case 5:  // an interesting byte in a length-ish spot
                    if (!s.empty()) {
                        static const char interesting[] = {0, 1, 0x7f, char(0x80), char(0xff)};
                        s[pos] = interesting[rng() % sizeof(interesting)];
                    }
                    break;
                case 6:  // append junk
                    s.append(1 + rng() % 4, static_cast<char>(rng()));
                    break;
            }
        }
        std::string input(s);  // exact-size heap copy
        EntryView v;
        Entry d;
        bool ok_view = decode(input, v);
        bool ok = dec(input, d);
        ASSERT_EQ(ok, ok_view);
        if (ok) {
            ++accepted;
            ASSERT_EQ(encode(d), input);
            ASSERT_TRUE(valid(d));
        }
    }
    EXPECT_GT(accepted, 0u);  // some mutations (in values, the body) stay valid
}

TEST(CacheEntry, HeaderStorable) {
    EXPECT_TRUE(header_storable("Content-Type"));
    EXPECT_TRUE(header_storable("ETag"));
    EXPECT_TRUE(header_storable("Cache-Control"));
    EXPECT_TRUE(header_storable("Vary"));
    EXPECT_TRUE(header_storable("X-Accel"));
    for (const char* n :
         {"Connection", "keep-alive", "Proxy-Connection", "Proxy-Authenticate",
          "Proxy-Authorization", "TE", "Trailer", "Transfer-Encoding", "Upgrade", "Content-Length",
          "Content-Encoding", "Date", "Age", "Set-Cookie", "SET-COOKIE", "Set-Cookie2",
          "X-Accel-Expires", "x-accel-redirect", "X-Accel-Buffering"})
        EXPECT_FALSE(header_storable(n)) << n;
}

TEST(CacheEntry, FreshnessAndAge) {
    Entry e = sample();
    EntryView v;
    view_of(e, v);
    EXPECT_EQ(freshness(v, e.stored_at_ms), Freshness::fresh);
    EXPECT_EQ(freshness(v, e.fresh_until_ms - 1), Freshness::fresh);
    EXPECT_EQ(freshness(v, e.fresh_until_ms), Freshness::stale);
    EXPECT_EQ(freshness(v, e.stale_until_ms - 1), Freshness::stale);
    EXPECT_EQ(freshness(v, e.stale_until_ms), Freshness::expired);
    EXPECT_EQ(age_seconds(v, e.stored_at_ms), 0);
    EXPECT_EQ(age_seconds(v, e.stored_at_ms + 999), 0);
    EXPECT_EQ(age_seconds(v, e.stored_at_ms + 1000), 1);
    EXPECT_EQ(age_seconds(v, e.stored_at_ms - 5000), 0);  // clock stepped back
    EXPECT_EQ(age_seconds(v, INT64_MAX), (INT64_MAX - e.stored_at_ms) / 1000);
}

TEST(CacheEntry, SetTimes) {
    Decision d;
    d.ttl_ms = 60000;
    d.stale_ms = 30000;
    Entry e;
    set_times(e, d, 1000);
    EXPECT_EQ(e.stored_at_ms, 1000);
    EXPECT_EQ(e.fresh_until_ms, 61000);
    EXPECT_EQ(e.stale_until_ms, 91000);
    d.ttl_ms = INT64_MAX;
    d.stale_ms = INT64_MAX;
    set_times(e, d, 1000);
    EXPECT_EQ(e.fresh_until_ms, INT64_MAX);
    EXPECT_EQ(e.stale_until_ms, INT64_MAX);
    e.body.clear();
    e.plain_size = 0;
    EXPECT_TRUE(valid(e));
}

// ---- cacheability ----

struct Rsp {
    uint16_t status = 200;
    std::string method = "GET";
    std::vector<std::pair<std::string, std::string>> headers;
    int64_t content_length = -1;
    int64_t now_ms = 1700000000000;
};

const ValidTime default_valid[] = {{200, 3600000}, {404, 60000}};

Decision run(const Rsp& r, bool identity = false, const ValidTime* valid = default_valid,
             size_t n = 2, int64_t stale_ms = 30000, uint64_t max = 1 << 20, bool verified = false,
             std::string_view keyed_headers = {}) {
    std::vector<HeaderView> hv;
    for (const auto& h : r.headers) hv.push_back(HeaderView{h.first, h.second});
    Policy p;
    p.valid = valid;
    p.valid_count = n;
    p.user_identity = identity;
    p.max_entry_size = max;
    p.stale_ms = stale_ms;
    p.identity_verified = verified;
    p.keyed_headers = keyed_headers;
    Response resp;
    resp.status = r.status;
    resp.method = r.method;
    resp.headers = hv.data();
    resp.header_count = hv.size();
    resp.content_length = r.content_length;
    resp.now_ms = r.now_ms;
    return decide(p, resp);
}

Verdict verdict(const Rsp& r, bool identity = false) {
    return run(r, identity).verdict;
}

Rsp with(std::initializer_list<std::pair<std::string, std::string>> h, uint16_t status = 200) {
    Rsp r;
    r.status = status;
    r.headers = h;
    return r;
}

TEST(CacheDecide, ConfiguredStatusAndTtl) {
    Decision d = run(Rsp{});
    EXPECT_TRUE(d.store());
    EXPECT_EQ(d.ttl_ms, 3600000);
    EXPECT_EQ(d.stale_ms, 30000);
    d = run(with({}, 404));
    EXPECT_TRUE(d.store());
    EXPECT_EQ(d.ttl_ms, 60000);
    EXPECT_EQ(verdict(with({}, 201)), Verdict::status_not_configured);
    EXPECT_EQ(verdict(with({}, 301)), Verdict::status_not_configured);
    EXPECT_EQ(run(Rsp{}, false, nullptr, 0).verdict, Verdict::status_not_configured);
}

TEST(CacheDecide, AnyStatus) {
    const ValidTime v[] = {{0, 5000}, {404, 1000}};
    EXPECT_EQ(run(with({}, 301), false, v, 2).ttl_ms, 5000);
    EXPECT_EQ(run(with({}, 404), false, v, 2).ttl_ms, 1000);  // exact wins, listed after
    const ValidTime w[] = {{404, 1000}, {0, 5000}};
    EXPECT_EQ(run(with({}, 404), false, w, 2).ttl_ms, 1000);
    EXPECT_EQ(run(with({}, 200), false, w, 2).ttl_ms, 5000);
    // "any" never opens 5xx, 1xx, 206, 304.
    for (uint16_t s : {500, 502, 503, 599})
        EXPECT_EQ(run(with({}, s), false, v, 2).verdict, Verdict::server_error) << s;
    for (uint16_t s : {100, 101, 199, 206, 304})
        EXPECT_EQ(run(with({}, s), false, v, 2).verdict, Verdict::status_never) << s;
}

TEST(CacheDecide, NoServerErrorsEvenWhenConfigured) {
    const ValidTime v[] = {{500, 5000}, {503, 5000}};
    EXPECT_EQ(run(with({}, 500), false, v, 2).verdict, Verdict::server_error);
    EXPECT_EQ(run(with({}, 503), false, v, 2).verdict, Verdict::server_error);
}

TEST(CacheDecide, OnlyGet) {
    for (const char* m : {"HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "get"}) {
        Rsp r;
        r.method = m;
        EXPECT_EQ(verdict(r), Verdict::not_get) << m;
    }
}

TEST(CacheDecide, SetCookieNeverStored) {
    EXPECT_EQ(verdict(with({{"Set-Cookie", "sid=1"}})), Verdict::set_cookie);
    EXPECT_EQ(verdict(with({{"set-cookie", ""}}), true), Verdict::set_cookie);
    EXPECT_EQ(verdict(with({{"SET-COOKIE2", "a=b"}})), Verdict::set_cookie);
    // Not even when the application asks for it.
    EXPECT_EQ(verdict(with({{"X-Accel-Expires", "60"},
                            {"Cache-Control", "public, max-age=60"},
                            {"Set-Cookie", "sid=1"}}),
                      true),
              Verdict::set_cookie);
}

TEST(CacheDecide, VaryOnHeadersTheKeyHolds) {
    auto keyed = [](const Rsp& r, std::string_view headers) {
        return run(r, false, default_valid, 2, 0, 1 << 20, false, headers);
    };
    Rsp lang = with({{"Vary", "Accept-Language"}});
    EXPECT_EQ(keyed(lang, "").vary.text(), "accept-language");  // a variant
    EXPECT_TRUE(keyed(lang, "accept_language").vary.empty());   // the key holds it
    EXPECT_TRUE(keyed(lang, "x_tenant,accept_language").vary.empty());
    EXPECT_EQ(keyed(lang, "accept_language_x").vary.text(), "accept-language");
    EXPECT_EQ(keyed(lang, "accept").vary.text(), "accept-language");
    Decision d = keyed(with({{"Vary", "accept-language, X-Tenant"}}), "x_tenant,accept_language");
    EXPECT_TRUE(d.store());
    EXPECT_TRUE(d.vary.empty());
    d = keyed(with({{"Vary", "Accept-Language, Origin"}}), "accept_language");
    EXPECT_TRUE(d.store());
    EXPECT_EQ(d.vary.text(), "origin");
    EXPECT_EQ(keyed(with({{"Vary", "Accept-Language, *"}}), "accept_language").verdict,
              Verdict::vary_star);
    EXPECT_TRUE(keyed(with({{"Vary", "Cookie"}}), "cookie").store());  // keyed by value
}

TEST(CacheDecide, Vary) {
    auto vrun = [](const Rsp& r, bool identity, bool verified) {
        return run(r, identity, default_valid, 2, 0, 1 << 20, verified);
    };
    EXPECT_EQ(verdict(with({{"Vary", "*"}})), Verdict::vary_star);
    EXPECT_EQ(verdict(with({{"Vary", "Accept-Encoding, *"}}), true), Verdict::vary_star);
    EXPECT_EQ(vrun(with({{"Vary", "*"}}), true, true).verdict, Verdict::vary_star);
    EXPECT_EQ(vrun(with({{"Vary", "Accept, *"}}), true, true).verdict, Verdict::vary_star);
    EXPECT_TRUE(run(with({{"Vary", "Accept-Encoding"}})).store());
    EXPECT_TRUE(run(with({{"Vary", "Accept-Encoding"}})).vary.empty());
    EXPECT_TRUE(run(with({{"Vary", " accept-encoding ,"}, {"Vary", ""}})).store());
    // Cookie and Authorization: only under an identity from a verified source.
    for (const char* v : {"Cookie", "Authorization", "Accept, cookie", "AUTHORIZATION"}) {
        EXPECT_EQ(vrun(with({{"Vary", v}}), false, false).verdict, Verdict::vary_credentials) << v;
        EXPECT_EQ(vrun(with({{"Vary", v}}), true, false).verdict, Verdict::vary_credentials) << v;
        EXPECT_EQ(vrun(with({{"Vary", v}}), false, true).verdict, Verdict::vary_credentials) << v;
        EXPECT_TRUE(vrun(with({{"Vary", v}}), true, true).store()) << v;
    }
    EXPECT_EQ(vrun(with({{"Vary", "Accept, Cookie"}}), true, true).vary.text(), "accept");
    EXPECT_TRUE(vrun(with({{"Vary", "Cookie"}}), true, true).vary.empty());
    // Other headers: a variant, the list normalised (case, spaces, repeats, several fields).
    Decision d = run(with({{"Vary", "Accept-Language"}}), true);
    EXPECT_TRUE(d.store());
    EXPECT_EQ(d.vary.text(), "accept-language");
    d = run(with({{"Vary", " ACCEPT ,accept-Language,, accept"}, {"Vary", "Origin"}}));
    EXPECT_TRUE(d.store());
    EXPECT_EQ(d.vary.text(), "accept,accept-language,origin");
    EXPECT_EQ(d.vary.size(), 3u);
    EXPECT_EQ(d.vary.name(2), "origin");
    EXPECT_EQ(run(with({{"Vary", "Accept-Encoding"}, {"Vary", "Origin"}}), true).vary.text(),
              "origin");
    // Bounds: at most 4 headers, names tokens of at most 64 bytes.
    EXPECT_TRUE(run(with({{"Vary", "a, b, c, d, A, accept-encoding"}})).store());
    EXPECT_EQ(verdict(with({{"Vary", "a, b, c, d, e"}})), Verdict::vary_too_many);
    EXPECT_EQ(verdict(with({{"Vary", "a, b, c"}, {"Vary", "d, e"}})), Verdict::vary_too_many);
    EXPECT_TRUE(run(with({{"Vary", std::string(64, 'x')}})).store());
    EXPECT_EQ(verdict(with({{"Vary", std::string(65, 'x')}})), Verdict::vary_bad_name);
    EXPECT_EQ(verdict(with({{"Vary", "Accept Language"}})), Verdict::vary_bad_name);
    EXPECT_EQ(verdict(with({{"Vary", "a;b"}})), Verdict::vary_bad_name);
    // "*" anywhere wins over a bound.
    EXPECT_EQ(verdict(with({{"Vary", "a, b, c, d, *"}})), Verdict::vary_star);
}

TEST(CacheDecide, ReasonsForTheOperator) {
    for (Verdict v : {Verdict::set_cookie, Verdict::vary_star, Verdict::vary_credentials,
                      Verdict::vary_too_many, Verdict::vary_bad_name, Verdict::content_encoding,
                      Verdict::too_large, Verdict::no_store, Verdict::no_cache,
                      Verdict::private_without_identity, Verdict::bad_cache_control,
                      Verdict::bad_accel_expires})
        EXPECT_NE(verdict_reason(v), nullptr) << verdict_name(v);
    for (Verdict v :
         {Verdict::store, Verdict::not_get, Verdict::status_never, Verdict::server_error,
          Verdict::status_not_configured, Verdict::zero_ttl, Verdict::vary_value_too_long})
        EXPECT_EQ(verdict_reason(v), nullptr) << verdict_name(v);
}

TEST(CacheDecide, ContentEncoding) {
    EXPECT_EQ(verdict(with({{"Content-Encoding", "gzip"}})), Verdict::content_encoding);
    EXPECT_EQ(verdict(with({{"Content-Encoding", "br"}})), Verdict::content_encoding);
    EXPECT_TRUE(run(with({{"Content-Encoding", "identity"}})).store());
    EXPECT_TRUE(run(with({{"Content-Encoding", ""}})).store());
    EXPECT_FALSE(run(with({{"Content-Encoding", "identity"}})).gzip_body);
}

TEST(CacheDecide, UpstreamGzipWhenAccepted) {
    ValidTime valid[] = {{200, 60000}};
    Policy p;
    p.valid = valid;
    p.valid_count = 1;
    p.accept_gzip = true;
    auto decide_with = [&](std::vector<HeaderView> hs) {
        Response r;
        r.status = 200;
        r.method = "GET";
        r.headers = hs.data();
        r.header_count = hs.size();
        return decide(p, r);
    };
    for (const char* v : {"gzip", "GZIP", " x-gzip ", "X-Gzip"}) {
        SCOPED_TRACE(v);
        Decision d = decide_with({{"Content-Encoding", v}});
        EXPECT_TRUE(d.store());
        EXPECT_TRUE(d.gzip_body);
    }
    for (const char* v : {"br", "deflate", "gzip, br", "gzip,gzip", "compress"}) {
        SCOPED_TRACE(v);
        EXPECT_EQ(decide_with({{"Content-Encoding", v}}).verdict, Verdict::content_encoding);
    }
    // Two Content-Encoding fields are two codings: refused.
    EXPECT_EQ(decide_with({{"Content-Encoding", "gzip"}, {"Content-Encoding", "gzip"}}).verdict,
              Verdict::content_encoding);
    EXPECT_FALSE(decide_with({}).gzip_body);
    p.accept_gzip = false;
    EXPECT_EQ(decide_with({{"Content-Encoding", "gzip"}}).verdict, Verdict::content_encoding);
}

TEST(CacheDecide, MaxEntrySize) {
    Rsp r;
    r.content_length = 1 << 20;
    EXPECT_TRUE(run(r).store());
    r.content_length = (1 << 20) + 1;
    EXPECT_EQ(verdict(r), Verdict::too_large);
    r.content_length = 0;
    EXPECT_TRUE(run(r).store());
    r.content_length = -1;  // unknown: counted while it streams
    EXPECT_TRUE(run(r).store());
    Policy p;
    EXPECT_TRUE(fits(p, 1 << 20));
    EXPECT_FALSE(fits(p, (1 << 20) + 1));
}

TEST(CacheDecide, NoStoreNoCache) {
    EXPECT_EQ(verdict(with({{"Cache-Control", "no-store"}})), Verdict::no_store);
    EXPECT_EQ(verdict(with({{"Cache-Control", "public, No-Store"}}), true), Verdict::no_store);
    EXPECT_EQ(verdict(with({{"Cache-Control", "max-age=60"}, {"Cache-Control", "no-store"}})),
              Verdict::no_store);
    EXPECT_EQ(verdict(with({{"Cache-Control", "no-cache"}})), Verdict::no_cache);
    EXPECT_EQ(verdict(with({{"Cache-Control", "no-cache=\"Set-Cookie, X-A\""}})),
              Verdict::no_cache);
    // X-Accel-Expires does not override them.
    EXPECT_EQ(verdict(with({{"Cache-Control", "no-store"}, {"X-Accel-Expires", "60"}}), true),
              Verdict::no_store);
    // Directive names inside quoted values do not count.
    EXPECT_TRUE(run(with({{"Cache-Control", "community=\"no-store, private\""}})).store());
}

TEST(CacheDecide, PrivateOnlyUnderIdentity) {
    EXPECT_EQ(verdict(with({{"Cache-Control", "private"}})), Verdict::private_without_identity);
    EXPECT_EQ(verdict(with({{"Cache-Control", "private=\"X-A\", max-age=10"}})),
              Verdict::private_without_identity);
    Decision d = run(with({{"Cache-Control", "private, max-age=10"}}), true);
    EXPECT_TRUE(d.store());
    EXPECT_EQ(d.ttl_ms, 10000);
    EXPECT_TRUE(run(with({{"Cache-Control", "public"}})).store());
}

TEST(CacheDecide, MaxAgeAndSMaxAge) {
    EXPECT_EQ(run(with({{"Cache-Control", "max-age=120"}})).ttl_ms, 120000);
    EXPECT_EQ(run(with({{"Cache-Control", "max-age=\"120\""}})).ttl_ms, 120000);
    EXPECT_EQ(run(with({{"Cache-Control", "s-maxage=30, max-age=120"}})).ttl_ms, 30000);
    EXPECT_EQ(run(with({{"Cache-Control", "max-age=120, s-maxage=300"}})).ttl_ms, 300000);
    EXPECT_EQ(run(with({{"Cache-Control", "max-age=120"}, {"Cache-Control", "s-maxage=5"}})).ttl_ms,
              5000);
    EXPECT_EQ(run(with({{"Cache-Control", "MAX-AGE=7"}})).ttl_ms, 7000);
    // Two max-ages: the smaller.
    EXPECT_EQ(run(with({{"Cache-Control", "max-age=50, max-age=20"}})).ttl_ms, 20000);
    // Headers override the configured time both ways (as proxy_cache_valid does).
    EXPECT_EQ(run(with({{"Cache-Control", "max-age=86400"}})).ttl_ms, 86400000);
    EXPECT_EQ(verdict(with({{"Cache-Control", "max-age=0"}})), Verdict::zero_ttl);
    EXPECT_EQ(verdict(with({{"Cache-Control", "s-maxage=0, max-age=60"}})), Verdict::zero_ttl);
    // Huge values saturate at 2^31 seconds.
    EXPECT_EQ(run(with({{"Cache-Control", "max-age=99999999999999999999999999"}})).ttl_ms,
              (int64_t{1} << 31) * 1000);
}

TEST(CacheDecide, BadCacheControl) {
    for (const char* v :
         {"max-age=abc", "max-age=-1", "max-age=", "max-age", "max-age=1.5", "s-maxage=x",
          "max-age=\"60", ", = ,", "max-age=60 garbage", "max-age=+60"})
        EXPECT_EQ(verdict(with({{"Cache-Control", v}})), Verdict::bad_cache_control) << v;
    // Unknown directives and stray commas are fine.
    EXPECT_TRUE(run(with({{"Cache-Control", ",, public ,immutable, foo=bar,"}})).store());
    EXPECT_TRUE(run(with({{"Cache-Control", ""}})).store());
    EXPECT_EQ(run(with({{"Cache-Control", "max-age = 60"}})).ttl_ms, 60000);
}

TEST(CacheDecide, XAccelExpiresOverrides) {
    EXPECT_EQ(run(with({{"X-Accel-Expires", "90"}})).ttl_ms, 90000);
    EXPECT_EQ(
        run(with({{"X-Accel-Expires", "90"}, {"Cache-Control", "s-maxage=5, max-age=3"}})).ttl_ms,
        90000);
    EXPECT_EQ(run(with({{"Cache-Control", "max-age=5"}, {"x-accel-expires", " 90 "}})).ttl_ms,
              90000);
    // max-age=0 is for browsers; X-Accel-Expires still stores (under an identity when private).
    EXPECT_EQ(run(with({{"Cache-Control", "private, max-age=0"}, {"X-Accel-Expires", "60"}}), true)
                  .ttl_ms,
              60000);
    EXPECT_EQ(verdict(with({{"Cache-Control", "private, max-age=0"}, {"X-Accel-Expires", "60"}})),
              Verdict::private_without_identity);
    EXPECT_EQ(verdict(with({{"X-Accel-Expires", "0"}, {"Cache-Control", "max-age=60"}})),
              Verdict::zero_ttl);
    // "@T": absolute epoch seconds.
    Rsp r = with({{"X-Accel-Expires", "@1700000100"}});
    EXPECT_EQ(run(r).ttl_ms, 100000);
    r = with({{"X-Accel-Expires", "@1699999999"}});
    EXPECT_EQ(verdict(r), Verdict::zero_ttl);
    for (const char* v : {"", "abc", "-5", "@", "@x", "1h", "60s"})
        EXPECT_EQ(verdict(with({{"X-Accel-Expires", v}})), Verdict::bad_accel_expires) << v;
    EXPECT_EQ(verdict(with({{"X-Accel-Expires", "60"}, {"X-Accel-Expires", "30"}})),
              Verdict::bad_accel_expires);
}

TEST(CacheDecide, StaleWindow) {
    EXPECT_EQ(run(Rsp{}).stale_ms, 30000);
    EXPECT_EQ(run(Rsp{}, false, default_valid, 2, 0).stale_ms, 0);
    EXPECT_EQ(run(with({{"Cache-Control", "max-age=60, must-revalidate"}})).stale_ms, 0);
    EXPECT_EQ(run(with({{"Cache-Control", "proxy-revalidate"}})).stale_ms, 0);
}

TEST(CacheDecide, RuleOrderGivesTheFirstReason) {
    EXPECT_EQ(verdict(with({{"Set-Cookie", "a=1"}}, 500)), Verdict::server_error);
    EXPECT_EQ(verdict(with({{"Set-Cookie", "a=1"}, {"Vary", "*"}})), Verdict::set_cookie);
    EXPECT_EQ(verdict(with({{"Cache-Control", "no-store"}, {"Vary", "*"}})), Verdict::vary_star);
}

TEST(CacheDecide, VerdictNames) {
    EXPECT_STREQ(verdict_name(Verdict::store), "store");
    EXPECT_STREQ(verdict_name(Verdict::set_cookie), "set-cookie");
    EXPECT_STREQ(verdict_name(Verdict::zero_ttl), "zero-ttl");
}

RequestFacts facts(std::string_view method, bool credentials, bool identity, bool body = false) {
    RequestFacts f;
    f.method = method;
    f.has_credentials = credentials;
    f.has_user_identity = identity;
    f.has_body = body;
    return f;
}

TEST(CacheDecide, RequestCacheable) {
    EXPECT_TRUE(request_cacheable(facts("GET", false, false)));
    EXPECT_TRUE(request_cacheable(facts("HEAD", false, false)));
    EXPECT_FALSE(request_cacheable(facts("POST", false, true)));
    EXPECT_FALSE(request_cacheable(facts("GET", true, false)));  // credentials, no identity
    EXPECT_TRUE(request_cacheable(facts("GET", true, true)));
}

TEST(CacheDecide, RequestWithABodyIsNotCacheable) {
    // A search API may answer a GET by its body, which the key does not hold.
    EXPECT_FALSE(request_cacheable(facts("GET", false, false, true)));
    EXPECT_FALSE(request_cacheable(facts("HEAD", false, false, true)));
    EXPECT_FALSE(request_cacheable(facts("GET", true, true, true)));
}

TEST(CacheDecide, AmbiguousRequestIsNotCacheable) {
    RequestFacts f = facts("GET", true, true);
    f.ambiguous = true;  // "Cookie: sessionid=B; sessionid=A"
    EXPECT_FALSE(request_cacheable(f));
    f.has_user_identity = false;
    EXPECT_FALSE(request_cacheable(f));
}

}  // namespace
