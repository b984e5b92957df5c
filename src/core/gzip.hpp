// gzip for the response cache: bodies above a small threshold are stored
// gzip-compressed, sent as-is to clients that accept gzip and decompressed for those that do
// not. Pure C++ over zlib, no nginx header (layer: core). Nothing here throws; nothing global.
//
// Format: one gzip member (RFC 1952) as zlib writes it with windowBits 16+15: a 10-byte header
// with no file name, mtime 0 and no extra fields (the same input always gives the same bytes),
// raw deflate, then CRC-32 and the length mod 2^32. Any HTTP client that accepts gzip reads it.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

namespace throttle::core {

// Compresses `in` into `out` (replacing what it held) as one gzip member. level is zlib's:
// 0 (stored) .. 9, or -1 for zlib's default (6). false, with `out` cleared, for a level outside
// that range, when zlib fails or when memory runs out.
bool gzip_compress(std::string_view in, std::string& out, int level = 6) noexcept;

// Decompresses exactly one gzip member into `out` (replacing what it held). false, with `out`
// cleared, for anything else: empty or truncated input, a bad header (zlib or raw deflate
// data, reserved flag bits), corrupt deflate data, a CRC-32 or length mismatch, any byte after
// the member (trailing garbage; a second concatenated member counts as garbage too, since
// gzip_compress() never writes one), or output that would exceed max_out bytes. The zip-bomb
// check stops inflating as soon as max_out + 1 bytes came out, so memory and time are bounded
// by max_out whatever the input claims.
bool gzip_decompress(std::string_view in, std::string& out, size_t max_out) noexcept;

// gzip_decompress() piece by piece: the same member, the same checks, but the output comes in
// pieces of the caller's size, so that a large body is never held inflated as a whole.
//   GzipInflater z;
//   if (!z.begin(member, max_out)) ...            // zlib could not start (memory)
//   for (;;) { size_t n; auto s = z.next(buf, cap, n); use buf[0..n); if (s != more) break; }
// `member` must stay valid (and unchanged) until the last next() or the destructor. next()
// says `done` only once the whole member was read and checked (CRC-32, length, nothing after
// it, at most max_out bytes out); the pieces before may still be followed by `error`, so a
// caller that passes pieces on before the end must be able to abort. Not copyable or movable
// (zlib keeps a pointer to it).
class GzipInflater {
   public:
    enum class Status { more, done, error };

    GzipInflater() noexcept;
    ~GzipInflater();
    GzipInflater(const GzipInflater&) = delete;
    GzipInflater& operator=(const GzipInflater&) = delete;

    // false when zlib cannot start (out of memory); next() then says error.
    bool begin(std::string_view member, size_t max_out) noexcept;
    // Up to cap (> 0) bytes of output into out[0..written). more: written == cap, call again;
    // done: the member ended and checked out (written may be 0); error (written 0): corrupt,
    // truncated, trailing bytes, more than max_out, or next() after done or error.
    Status next(char* out, size_t cap, size_t& written) noexcept;
    // Bytes produced so far.
    size_t produced() const noexcept { return produced_; }
    // Bytes zlib holds for this stream (its state and window), 0 after done or error.
    size_t memory() const noexcept { return memory_; }

   private:
    struct Impl;
    static void* zalloc(void* opaque, unsigned items, unsigned size) noexcept;
    static void zfree(void* opaque, void* p) noexcept;
    void end() noexcept;

    std::unique_ptr<Impl> impl_;
    std::string_view in_;
    size_t fed_ = 0;
    size_t max_out_ = 0;
    size_t produced_ = 0;
    size_t memory_ = 0;
    bool active_ = false;
};

// Whether a request's Accept-Encoding value (RFC 9110 12.5.3) allows a gzip body.
//   - codings are compared case-insensitively; "x-gzip" is gzip (RFC 9110 8.4.1.3);
//   - an explicit gzip (or x-gzip) element decides, whatever its place: yes when its q > 0;
//     otherwise "*" decides the same way; otherwise no. "identity" and other codings play
//     no part. When the same coding is listed twice, a refusal (q=0) wins;
//   - "" (the header present but empty) means no content coding is wanted: false. A request
//     without the header is the caller's call; the module treats it as not accepting gzip,
//     as nginx's gzip filter does;
//   - whitespace (SP, HTAB) is allowed around ',', ';' and '='; empty list elements are
//     skipped; a parameter name is case-insensitive;
//   - an element that does not parse (coding not a token, a parameter without '=', a q that is
//     not a qvalue: "0".."1" with at most three decimals, e.g. "q=2", "q=0.0001", "q=\"0\"")
//     is ignored as a whole, as if it were not there. Parameters other than q are ignored.
bool accepts_gzip(std::string_view accept_encoding) noexcept;

}  // namespace throttle::core
