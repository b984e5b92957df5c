// gzip_compress / gzip_decompress round trips, checked against a second decoder (zlib's
// auto-detecting inflate here, and gzip(1) when it is installed), refusal of damaged input and
// zip bombs, and the Accept-Encoding rules of accepts_gzip().
#include "core/gzip.hpp"

#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

namespace {

using throttle::core::accepts_gzip;
using throttle::core::gzip_compress;
using throttle::core::gzip_decompress;

constexpr size_t mb = 1 << 20;

std::string random_bytes(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::string s(n, '\0');
    for (auto& c : s) c = static_cast<char>(rng() & 0xff);
    return s;
}

std::string repetitive(size_t n) {
    static const char line[] = "{\"id\": 42, \"title\": \"today's reviews\", \"done\": false},\n";
    std::string s;
    s.reserve(n);
    while (s.size() < n) s.append(line, std::min(sizeof line - 1, n - s.size()));
    return s;
}

// An independent decoder: zlib's inflate with header auto-detection (32 + 15), one shot.
bool inflate_auto(const std::string& in, std::string& out) {
    z_stream zs{};
    if (inflateInit2(&zs, 32 + MAX_WBITS) != Z_OK) return false;
    out.clear();
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
    zs.avail_in = static_cast<uInt>(in.size());
    int rc;
    char buf[65536];
    do {
        zs.next_out = reinterpret_cast<Bytef*>(buf);
        zs.avail_out = sizeof buf;
        rc = inflate(&zs, Z_NO_FLUSH);
        out.append(buf, sizeof buf - zs.avail_out);
    } while (rc == Z_OK);
    bool ok = rc == Z_STREAM_END && zs.avail_in == 0;
    inflateEnd(&zs);
    return ok;
}

// A second, external decoder: gzip -dc through a temporary file. false when it is unavailable.
bool have_gzip_tool() {
    return std::system("command -v gzip >/dev/null 2>&1") == 0;
}

bool gunzip_tool(const std::string& in, std::string& out) {
    char path[] = "/tmp/gzip_test_XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) return false;
    bool wrote = write(fd, in.data(), in.size()) == static_cast<ssize_t>(in.size());
    close(fd);
    std::string cmd = std::string("gzip -dc < ") + path;
    FILE* p = wrote ? popen(cmd.c_str(), "r") : nullptr;
    out.clear();
    int status = -1;
    if (p) {
        char buf[65536];
        size_t n;
        while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
        status = pclose(p);
    }
    unlink(path);
    return status == 0;
}

void round_trip(const std::string& body) {
    std::string gz;
    ASSERT_TRUE(gzip_compress(body, gz));
    // RFC 1952 header: magic, deflate, no flags, mtime 0.
    ASSERT_GE(gz.size(), 18u);
    EXPECT_EQ(static_cast<unsigned char>(gz[0]), 0x1f);
    EXPECT_EQ(static_cast<unsigned char>(gz[1]), 0x8b);
    EXPECT_EQ(gz[2], 8);
    EXPECT_EQ(gz[3], 0);
    EXPECT_EQ(gz.substr(4, 4), std::string(4, '\0'));

    std::string plain;
    ASSERT_TRUE(gzip_decompress(gz, plain, body.size()));
    EXPECT_TRUE(plain == body);

    std::string other;
    ASSERT_TRUE(inflate_auto(gz, other));
    EXPECT_TRUE(other == body);

    if (have_gzip_tool()) {
        ASSERT_TRUE(gunzip_tool(gz, other));
        EXPECT_TRUE(other == body);
    }

    // One byte less than the body is refused.
    if (!body.empty()) {
        EXPECT_FALSE(gzip_decompress(gz, plain, body.size() - 1));
    }
}

TEST(Gzip, RoundTripEmpty) {
    round_trip("");
}

TEST(Gzip, RoundTripOneByte) {
    round_trip("x");
    round_trip(std::string(1, '\0'));
}

TEST(Gzip, RoundTripRandomMegabyte) {
    round_trip(random_bytes(mb, 1));
}

TEST(Gzip, RoundTripRepetitiveMegabyte) {
    std::string body = repetitive(mb);
    round_trip(body);
    std::string gz;
    ASSERT_TRUE(gzip_compress(body, gz));
    EXPECT_LT(gz.size(), body.size() / 20);
}

TEST(Gzip, Levels) {
    std::string body = repetitive(100000);
    for (int level = -1; level <= 9; ++level) {
        std::string gz, plain;
        ASSERT_TRUE(gzip_compress(body, gz, level)) << level;
        ASSERT_TRUE(gzip_decompress(gz, plain, body.size())) << level;
        EXPECT_TRUE(plain == body) << level;
    }
    std::string gz = "left over";
    EXPECT_FALSE(gzip_compress(body, gz, 10));
    EXPECT_TRUE(gz.empty());
    EXPECT_FALSE(gzip_compress(body, gz, -2));
}

TEST(Gzip, Deterministic) {
    std::string body = repetitive(5000), a, b;
    ASSERT_TRUE(gzip_compress(body, a));
    ASSERT_TRUE(gzip_compress(body, b));
    EXPECT_EQ(a, b);
}

TEST(Gzip, ReadsOtherWriters) {
    // A member with a file name and an extra field (as gzip(1) may write) is still one member.
    std::string body = repetitive(3000);
    z_stream zs{};
    ASSERT_EQ(deflateInit2(&zs, 9, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
    char name[] = "today.json";
    Bytef extra[] = {'A', 'B', 2, 0, 'x', 'y'};
    gz_header h{};
    h.name = reinterpret_cast<Bytef*>(name);
    h.extra = extra;
    h.extra_len = sizeof extra;
    h.hcrc = 1;
    h.time = 1700000000;
    ASSERT_EQ(deflateSetHeader(&zs, &h), Z_OK);
    std::string gz(deflateBound(&zs, body.size()) + 64, '\0');
    zs.next_in = reinterpret_cast<Bytef*>(body.data());
    zs.avail_in = static_cast<uInt>(body.size());
    zs.next_out = reinterpret_cast<Bytef*>(gz.data());
    zs.avail_out = static_cast<uInt>(gz.size());
    ASSERT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
    gz.resize(zs.total_out);
    deflateEnd(&zs);
    std::string plain;
    ASSERT_TRUE(gzip_decompress(gz, plain, mb));
    EXPECT_TRUE(plain == body);
}

TEST(Gzip, RefusesTruncationAtEveryLength) {
    std::string body = "Hello, cached world! " + repetitive(300) + random_bytes(200, 7);
    std::string gz, plain;
    ASSERT_TRUE(gzip_compress(body, gz));
    for (size_t n = 0; n < gz.size(); ++n) {
        plain = "stale";
        EXPECT_FALSE(gzip_decompress(std::string_view(gz).substr(0, n), plain, mb)) << n;
        EXPECT_TRUE(plain.empty()) << n;
    }
    ASSERT_TRUE(gzip_decompress(gz, plain, mb));
    EXPECT_TRUE(plain == body);

    // The empty body's member too.
    ASSERT_TRUE(gzip_compress("", gz));
    for (size_t n = 0; n < gz.size(); ++n)
        EXPECT_FALSE(gzip_decompress(std::string_view(gz).substr(0, n), plain, mb)) << n;
}

TEST(Gzip, RefusesFlippedBytes) {
    std::string body = random_bytes(500, 3) + repetitive(2000);
    std::string gz, plain;
    ASSERT_TRUE(gzip_compress(body, gz));
    // Every single-bit flip is refused (header check, deflate error, CRC-32 or length
    // mismatch) except where gzip carries no meaning: mtime, XFL and OS (bytes 4..9), FTEXT
    // (byte 3, bit 0), and the padding bits after the last deflate block (in the byte before
    // the 8-byte trailer). Those must give back the body unchanged.
    const size_t last_deflate = gz.size() - 9;
    for (size_t i = 0; i < gz.size(); ++i) {
        for (int bit = 0; bit < 8; ++bit) {
            std::string bad = gz;
            bad[i] = static_cast<char>(bad[i] ^ (1 << bit));
            bool ok = gzip_decompress(bad, plain, mb);
            bool harmless = (i >= 4 && i <= 9) || (i == 3 && bit == 0) || i == last_deflate;
            if (harmless) {
                EXPECT_TRUE(!ok || plain == body) << "byte " << i << " bit " << bit;
            } else {
                EXPECT_FALSE(ok) << "byte " << i << " bit " << bit;
            }
        }
    }
    // The CRC-32 itself (the 4 bytes before ISIZE).
    std::string bad = gz;
    bad[gz.size() - 8] = static_cast<char>(bad[gz.size() - 8] ^ 0xff);
    EXPECT_FALSE(gzip_decompress(bad, plain, mb));
    // ISIZE.
    bad = gz;
    bad[gz.size() - 1] = static_cast<char>(bad[gz.size() - 1] ^ 0x01);
    EXPECT_FALSE(gzip_decompress(bad, plain, mb));
}

TEST(Gzip, RefusesTrailingGarbage) {
    std::string body = repetitive(1000);
    std::string gz, plain;
    ASSERT_TRUE(gzip_compress(body, gz));
    EXPECT_FALSE(gzip_decompress(gz + '\0', plain, mb));
    EXPECT_FALSE(gzip_decompress(gz + "garbage", plain, mb));
    EXPECT_FALSE(gzip_decompress(gz + gz, plain, mb));  // a second member
    EXPECT_TRUE(plain.empty());
}

TEST(Gzip, RefusesOtherFormats) {
    std::string body = repetitive(1000), plain;
    EXPECT_FALSE(gzip_decompress("", plain, mb));
    EXPECT_FALSE(gzip_decompress(body, plain, mb));  // not compressed at all
    // zlib wrapper (RFC 1950) and raw deflate are not gzip.
    std::string z(compressBound(body.size()), '\0');
    uLongf zlen = z.size();
    ASSERT_EQ(compress(reinterpret_cast<Bytef*>(z.data()), &zlen,
                       reinterpret_cast<const Bytef*>(body.data()), body.size()),
              Z_OK);
    z.resize(zlen);
    EXPECT_FALSE(gzip_decompress(z, plain, mb));
    EXPECT_FALSE(gzip_decompress(z.substr(2, z.size() - 6), plain, mb));
    // Reserved flag bits set.
    std::string gz;
    ASSERT_TRUE(gzip_compress(body, gz));
    gz[3] = static_cast<char>(0xe0);
    EXPECT_FALSE(gzip_decompress(gz, plain, mb));
}

TEST(Gzip, RefusesZipBomb) {
    std::string zeros(100 * mb, '\0');
    std::string bomb, plain;
    ASSERT_TRUE(gzip_compress(zeros, bomb, 9));
    zeros = std::string();
    EXPECT_LT(bomb.size(), 200000u);

    auto start = std::chrono::steady_clock::now();
    EXPECT_FALSE(gzip_decompress(bomb, plain, mb));
    auto took = std::chrono::steady_clock::now() - start;
    EXPECT_TRUE(plain.empty());
    EXPECT_LT(plain.capacity(), 4 * mb);  // never held much more than max_out
    // Inflating 1 MB takes a few ms; all 100 MB (even under ASan) would take far longer.
    EXPECT_LT(std::chrono::duration_cast<std::chrono::milliseconds>(took).count(), 500);

    // Exactly at the limit passes, one below fails.
    std::string small(mb, '\0'), gz;
    ASSERT_TRUE(gzip_compress(small, gz));
    EXPECT_TRUE(gzip_decompress(gz, plain, mb));
    EXPECT_EQ(plain.size(), mb);
    EXPECT_FALSE(gzip_decompress(gz, plain, mb - 1));
    EXPECT_FALSE(gzip_decompress(gz, plain, 0));
    ASSERT_TRUE(gzip_compress("", gz));
    EXPECT_TRUE(gzip_decompress(gz, plain, 0));
    EXPECT_TRUE(plain.empty());
}

// ---- GzipInflater: gzip_decompress() piece by piece ----

// The member inflated through GzipInflater in pieces of `cap`; false on error. Checks the
// contract on the way: `more` fills the piece, memory() is bounded while it runs and 0 after.
bool stream_inflate(std::string_view member, size_t max_out, size_t cap, std::string& out) {
    throttle::core::GzipInflater z;
    out.clear();
    if (!z.begin(member, max_out)) return false;
    std::string piece(cap, '\0');
    for (;;) {
        size_t n = 99;
        auto s = z.next(piece.data(), cap, n);
        EXPECT_LT(z.memory(), 64u * 1024) << "zlib's state and 32 KB window";
        if (s == throttle::core::GzipInflater::Status::error) {
            EXPECT_EQ(n, 0u);
            EXPECT_EQ(z.memory(), 0u);
            out.clear();
            return false;
        }
        out.append(piece, 0, n);
        EXPECT_EQ(z.produced(), out.size());
        if (s == throttle::core::GzipInflater::Status::done) {
            EXPECT_EQ(z.memory(), 0u);
            size_t after = 0;
            EXPECT_EQ(z.next(piece.data(), cap, after),
                      throttle::core::GzipInflater::Status::error);
            return true;
        }
        EXPECT_EQ(n, cap);
    }
}

// Streamed (at several piece sizes) and whole, the same answer: both fail or both give `want`.
void expect_same(std::string_view member, size_t max_out, const char* what) {
    std::string whole;
    bool ok = gzip_decompress(member, whole, max_out);
    for (size_t cap : {size_t{1}, size_t{7}, size_t{4096}, size_t{65536}}) {
        if (cap == 1 && member.size() > 20000) continue;  // slow, and nothing new
        std::string streamed;
        bool sok = stream_inflate(member, max_out, cap, streamed);
        EXPECT_EQ(sok, ok) << what << ", pieces of " << cap;
        EXPECT_TRUE(streamed == whole) << what << ", pieces of " << cap;
    }
}

TEST(GzipInflater, SameAsWhole) {
    std::string gz;
    for (size_t n : {size_t{0}, size_t{1}, size_t{4095}, size_t{4096}, size_t{65536}, mb + 3}) {
        std::string body = repetitive(n / 2) + random_bytes(n - n / 2, static_cast<uint32_t>(n));
        ASSERT_TRUE(gzip_compress(body, gz));
        expect_same(gz, body.size(), "round trip");
        std::string out;
        ASSERT_TRUE(stream_inflate(gz, body.size(), 65536, out));
        EXPECT_TRUE(out == body) << n;
        expect_same(gz, body.size() == 0 ? 0 : body.size() - 1, "one byte over max_out");
        expect_same(gz + "x", body.size(), "trailing byte");
        expect_same(gz + gz, 2 * body.size(), "second member");
    }
}

TEST(GzipInflater, RefusesTruncationAndFlips) {
    std::string body = "Hello, cached world! " + repetitive(3000) + random_bytes(200, 7);
    std::string gz;
    ASSERT_TRUE(gzip_compress(body, gz));
    for (size_t n = 0; n < gz.size(); ++n) {
        std::string out;
        EXPECT_FALSE(stream_inflate(std::string_view(gz).substr(0, n), mb, 4096, out)) << n;
        EXPECT_FALSE(stream_inflate(std::string_view(gz).substr(0, n), mb, 7, out)) << n;
    }
    for (size_t i = 0; i < gz.size(); ++i) {
        std::string bad = gz;
        bad[i] = static_cast<char>(bad[i] ^ 0x10);
        expect_same(bad, mb, "flipped byte");
    }
    expect_same(body, mb, "not gzip");
    expect_same("", mb, "empty");
}

TEST(GzipInflater, ZipBombStopsAtMaxOut) {
    std::string zeros(100 * mb, '\0');
    std::string bomb;
    ASSERT_TRUE(gzip_compress(zeros, bomb, 9));
    zeros = std::string();
    throttle::core::GzipInflater z;
    ASSERT_TRUE(z.begin(bomb, mb));
    std::string piece(65536, '\0');
    size_t total = 0, n = 0;
    throttle::core::GzipInflater::Status s;
    while ((s = z.next(piece.data(), piece.size(), n)) ==
           throttle::core::GzipInflater::Status::more)
        total += n;
    EXPECT_EQ(s, throttle::core::GzipInflater::Status::error);
    EXPECT_LE(total, mb);
}

TEST(GzipInflater, BeginAgainAndUnstarted) {
    throttle::core::GzipInflater z;
    char buf[16];
    size_t n = 5;
    EXPECT_EQ(z.next(buf, sizeof buf, n), throttle::core::GzipInflater::Status::error);
    EXPECT_EQ(n, 0u);
    std::string a, b, gz1, gz2;
    ASSERT_TRUE(gzip_compress("first", gz1));
    ASSERT_TRUE(gzip_compress("second body", gz2));
    ASSERT_TRUE(z.begin(gz1, 100));
    EXPECT_EQ(z.next(buf, 2, n), throttle::core::GzipInflater::Status::more);
    EXPECT_GT(z.memory(), 0u);
    ASSERT_TRUE(z.begin(gz2, 100));  // abandons the first stream, frees its state
    std::string out;
    throttle::core::GzipInflater::Status s;
    while ((s = z.next(buf, sizeof buf, n)) == throttle::core::GzipInflater::Status::more)
        out.append(buf, n);
    out.append(buf, n);
    EXPECT_EQ(s, throttle::core::GzipInflater::Status::done);
    EXPECT_EQ(out, "second body");
    EXPECT_FALSE(z.begin("", 100));
}

TEST(AcceptsGzip, Cases) {
    EXPECT_TRUE(accepts_gzip("gzip"));
    EXPECT_TRUE(accepts_gzip("GZIP"));
    EXPECT_TRUE(accepts_gzip("GZip"));
    EXPECT_TRUE(accepts_gzip("deflate, gzip;q=1.0"));
    EXPECT_TRUE(accepts_gzip("gzip, deflate, br"));
    EXPECT_FALSE(accepts_gzip("gzip;q=0"));
    EXPECT_FALSE(accepts_gzip("gzip; q=0.000"));
    EXPECT_FALSE(accepts_gzip("gzip ; Q = 0."));
    EXPECT_TRUE(accepts_gzip("*"));
    EXPECT_FALSE(accepts_gzip("*;q=0"));
    EXPECT_FALSE(accepts_gzip("br"));
    EXPECT_FALSE(accepts_gzip("deflate, br, identity"));
    EXPECT_FALSE(accepts_gzip(""));
    EXPECT_FALSE(accepts_gzip("  ,  "));
    EXPECT_TRUE(accepts_gzip("gzip;q=0.5"));
    EXPECT_TRUE(accepts_gzip("gzip;q=0.001"));
    EXPECT_TRUE(accepts_gzip(",,gzip"));
    EXPECT_TRUE(accepts_gzip("gzip,,"));
    // x-gzip is gzip (RFC 9110 8.4.1.3).
    EXPECT_TRUE(accepts_gzip("x-gzip"));
    EXPECT_TRUE(accepts_gzip("X-GZIP;q=0.8"));
    EXPECT_FALSE(accepts_gzip("x-gzip;q=0"));
    // identity plays no part; "*" does.
    EXPECT_FALSE(accepts_gzip("identity;q=1, *;q=0"));
    EXPECT_TRUE(accepts_gzip("identity;q=0, *"));
    EXPECT_FALSE(accepts_gzip("identity"));
}

TEST(AcceptsGzip, ExplicitBeatsStar) {
    EXPECT_TRUE(accepts_gzip("*;q=0, gzip"));
    EXPECT_TRUE(accepts_gzip("gzip;q=0.1, *;q=0"));
    EXPECT_FALSE(accepts_gzip("*, gzip;q=0"));
    EXPECT_FALSE(accepts_gzip("gzip;q=0, *;q=1"));
    // A refusal wins over another listing of the same coding.
    EXPECT_FALSE(accepts_gzip("gzip, gzip;q=0"));
    EXPECT_FALSE(accepts_gzip("x-gzip;q=0, gzip"));
    EXPECT_FALSE(accepts_gzip("*, *;q=0"));
}

TEST(AcceptsGzip, Whitespace) {
    EXPECT_TRUE(accepts_gzip("  gzip  "));
    EXPECT_TRUE(accepts_gzip("\tdeflate ,\tgzip\t;\tq=0.9 , br"));
    EXPECT_FALSE(accepts_gzip(" gzip ;q = 0 "));
    EXPECT_TRUE(accepts_gzip("deflate,gzip"));
}

TEST(AcceptsGzip, MalformedElementsIgnored) {
    // Each malformed element is dropped; the rest of the list still counts.
    EXPECT_FALSE(accepts_gzip("gzip;q=2"));
    EXPECT_FALSE(accepts_gzip("gzip;q=1.5"));
    EXPECT_FALSE(accepts_gzip("gzip;q=0.0001"));
    EXPECT_FALSE(accepts_gzip("gzip;q=\"1\""));
    EXPECT_FALSE(accepts_gzip("gzip;q=-1"));
    EXPECT_FALSE(accepts_gzip("gzip;q="));
    EXPECT_FALSE(accepts_gzip("gzip;q"));
    EXPECT_FALSE(accepts_gzip("gzip;"));
    EXPECT_FALSE(accepts_gzip("gz ip"));
    EXPECT_FALSE(accepts_gzip("\"gzip\""));
    EXPECT_FALSE(accepts_gzip(";q=1"));
    EXPECT_FALSE(accepts_gzip("gzipx"));
    EXPECT_FALSE(accepts_gzip("xgzip"));
    EXPECT_FALSE(accepts_gzip("gzip/1"));
    EXPECT_TRUE(accepts_gzip("gzip;q=bogus, *"));      // the malformed gzip element is gone
    EXPECT_TRUE(accepts_gzip("gzip;q=0;q=zz, gzip"));  // so is a whole element with one bad q
    EXPECT_TRUE(accepts_gzip("gzip;level=9"));         // parameters other than q: ignored
    EXPECT_TRUE(accepts_gzip("gzip;q=1;foo=bar"));
    EXPECT_FALSE(accepts_gzip(std::string_view("gzip\0", 5)));
    EXPECT_TRUE(accepts_gzip(std::string(10000, ',') + "gzip" + std::string(10000, ' ')));
}

}  // namespace
