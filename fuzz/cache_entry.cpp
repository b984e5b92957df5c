// Fuzz target: bytes read back from Redis as a cache entry -> core::cache::decode(), and a
// gzip body -> core::gzip_decompress() (an entry's stored body; an upstream's gzip response).
//
// Input: one byte of setup, then the bytes.
//   byte 0  bit 0: a small decode limit (max_size 64); bits 1-7: the clock for freshness()
//           and age_seconds(), as a shift of INT64_MAX (so the extremes are tried)
// Checked: decode() accepts only what encode() writes back byte for byte, and valid() agrees;
// the Entry and the EntryView decoders agree; gzip_decompress() never gives more than max_out
// bytes, and what it gives compresses and inflates back to itself.
#include "core/cache_entry.hpp"

#include <zlib.h>

#include <climits>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/gzip.hpp"

using namespace throttle::core;

#define FUZZ_CHECK(cond)      \
    do {                      \
        if (!(cond)) {        \
            __builtin_trap(); \
        }                     \
    } while (0)

namespace {

// The reference: zlib's own gzip inflate (windowBits 16 + 15, gzip only), one shot. True when
// `in` is exactly one gzip member (nothing after it) of at most max_out bytes.
bool reference_inflate(std::string_view in, size_t max_out, std::string& out) {
    z_stream zs{};
    if (inflateInit2(&zs, 16 + 15) != Z_OK) {
        std::abort();
    }
    out.clear();
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
    zs.avail_in = static_cast<uInt>(in.size());
    int rc = Z_OK;
    while (rc == Z_OK && out.size() <= max_out) {
        char buf[16384];
        zs.next_out = reinterpret_cast<Bytef*>(buf);
        zs.avail_out = sizeof(buf);
        rc = inflate(&zs, Z_NO_FLUSH);
        out.append(buf, sizeof(buf) - zs.avail_out);
        if (rc == Z_BUF_ERROR && zs.avail_out != 0) {
            break;  // the input ended before the member did
        }
        if (rc == Z_BUF_ERROR) {
            rc = Z_OK;
        }
    }
    bool ok = rc == Z_STREAM_END && zs.avail_in == 0 && out.size() <= max_out;
    inflateEnd(&zs);
    return ok;
}

void inflate(std::string_view in, size_t max_out) {
    std::string out;
    std::string ref;
    const bool ok = gzip_decompress(in, out, max_out);
    FUZZ_CHECK(ok == reference_inflate(in, max_out, ref));
    if (!ok) {
        FUZZ_CHECK(out.empty());
        return;
    }
    FUZZ_CHECK(out.size() <= max_out && out == ref);
    std::string again;
    std::string back;
    FUZZ_CHECK(gzip_compress(out, again, 1));
    FUZZ_CHECK(gzip_decompress(again, back, out.size()));
    FUZZ_CHECK(back == out);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) {
        return 0;
    }
    cache::DecodeLimits limits;
    if (data[0] & 1) {
        limits.max_size = 64;
    }
    const int shift = (data[0] >> 1) & 63;
    const int64_t now_ms = (data[0] & 128) ? -(INT64_MAX >> shift) - 1 : INT64_MAX >> shift;
    const std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);

    // the entry decoder
    cache::EntryView v;
    const bool ok = cache::decode(in, v, limits);
    cache::Entry e;
    FUZZ_CHECK(cache::decode(in, e, limits) == ok);
    if (ok) {
        FUZZ_CHECK(cache::valid(v, limits) && cache::valid(e, limits));
        FUZZ_CHECK(cache::encode(v) == in);
        FUZZ_CHECK(cache::encode(e) == in);
        FUZZ_CHECK(cache::encode_head(v, v.body.size()) + std::string(v.body) == in);
        FUZZ_CHECK(v.header_count == e.headers.size() && v.body == e.body);
        FUZZ_CHECK(v.body.size() <= limits.max_size && v.plain_size <= limits.max_size);
        for (size_t i = 0; i < v.header_count; i++) {
            FUZZ_CHECK(cache::header_storable(v.headers[i].name));
        }
        cache::Freshness f = cache::freshness(v, now_ms);
        (void)f;
        FUZZ_CHECK(cache::age_seconds(v, now_ms) >= 0);
        if (v.gzip) {
            inflate(v.body, v.plain_size);  // what the module does to serve it plain
        }
        // A stricter limit only refuses more.
        cache::DecodeLimits tight;
        tight.max_size = v.body.size() > 0 ? v.body.size() - 1 : 0;
        if (v.body.size() > 0 && v.plain_size <= tight.max_size) {
            FUZZ_CHECK(!cache::decode(in, v, tight));
        }
    }

    // gzip inflate, with a limit the input cannot pass and one it may
    inflate(in, limits.max_size);
    inflate(in, 1 << 20);
    return 0;
}
