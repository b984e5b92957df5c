#include "core/gzip.hpp"

#include <zlib.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <new>

#include "core/http_text.hpp"

namespace throttle::core {

namespace {

constexpr int gzip_window_bits = 16 + MAX_WBITS;  // gzip wrapper, 32 KB window
constexpr int mem_level = 8;                      // zlib's default
constexpr size_t max_chunk = UINT_MAX;            // avail_in / avail_out are uInt
constexpr size_t inflate_first_size = 16384;

// Feeds the next piece of `in` to zlib when it has used up the previous one.
void feed(z_stream& zs, std::string_view in, size_t& fed) noexcept {
    if (zs.avail_in != 0 || fed == in.size()) return;
    size_t n = std::min(in.size() - fed, max_chunk);
    // zlib's next_in is not const before 1.2.9's ZLIB_CONST; it never writes through it.
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data() + fed));
    zs.avail_in = static_cast<uInt>(n);
    fed += n;
}

// Gives zlib the unused part of `out` (out.size() is the capacity handed out so far).
void give_output(z_stream& zs, std::string& out, size_t produced) noexcept {
    size_t n = std::min(out.size() - produced, max_chunk);
    zs.next_out = reinterpret_cast<Bytef*>(&out[0] + produced);
    zs.avail_out = static_cast<uInt>(n);
}

struct DeflateGuard {
    z_stream* zs;
    ~DeflateGuard() { deflateEnd(zs); }
};

struct InflateGuard {
    z_stream* zs;
    ~InflateGuard() { inflateEnd(zs); }
};

bool compress_into(std::string_view in, std::string& out, int level) {
    z_stream zs{};
    if (deflateInit2(&zs, level, Z_DEFLATED, gzip_window_bits, mem_level, Z_DEFAULT_STRATEGY) !=
        Z_OK)
        return false;
    DeflateGuard guard{&zs};

    // deflateBound() is enough for the whole member in one pass (header and trailer included);
    // the loop only matters for inputs beyond 4 GB, where avail_in/avail_out run out.
    out.resize(std::max<size_t>(deflateBound(&zs, static_cast<uLong>(in.size())), 64));
    size_t fed = 0;
    size_t produced = 0;
    for (;;) {
        feed(zs, in, fed);
        give_output(zs, out, produced);
        uInt avail_before = zs.avail_out;
        int flush = (fed == in.size()) ? Z_FINISH : Z_NO_FLUSH;
        int rc = deflate(&zs, flush);
        produced += avail_before - zs.avail_out;
        if (rc == Z_STREAM_END) break;
        if (rc != Z_OK && rc != Z_BUF_ERROR) return false;
        if (produced == out.size()) out.resize(out.size() + out.size() / 2);
    }
    out.resize(produced);
    return true;
}

bool decompress_into(std::string_view in, std::string& out, size_t max_out) {
    if (in.empty()) return false;
    z_stream zs{};
    if (inflateInit2(&zs, gzip_window_bits) != Z_OK) return false;
    InflateGuard guard{&zs};

    // Room for max_out + 1 bytes at most: one byte past the limit proves it is exceeded.
    const size_t cap = max_out == SIZE_MAX ? SIZE_MAX : max_out + 1;
    size_t first = in.size() > SIZE_MAX / 4 ? SIZE_MAX : in.size() * 4;
    out.resize(std::min(cap, std::max(first, inflate_first_size)));
    size_t fed = 0;
    size_t produced = 0;
    for (;;) {
        feed(zs, in, fed);
        if (produced == out.size()) {
            if (out.size() == cap) return false;  // would exceed max_out
            size_t grow = out.size() > cap / 2 ? cap : out.size() * 2;
            out.resize(std::min(cap, grow));
        }
        give_output(zs, out, produced);
        uInt avail_before = zs.avail_out;
        uInt in_before = zs.avail_in;
        int rc = inflate(&zs, Z_NO_FLUSH);
        produced += avail_before - zs.avail_out;
        if (rc == Z_STREAM_END) break;
        if (rc != Z_OK && rc != Z_BUF_ERROR) return false;  // data, header, CRC, length, memory
        // No progress with input left to give and room to write: the input ended early.
        bool progress = zs.avail_out != avail_before || zs.avail_in != in_before;
        if (zs.avail_out != 0 && zs.avail_in == 0 && fed == in.size()) return false;
        if (!progress && zs.avail_out != 0) return false;
    }
    if (produced > max_out) return false;
    if (zs.avail_in != 0 || fed != in.size()) return false;  // bytes after the member
    out.resize(produced);
    return true;
}

// ---- Accept-Encoding ----

using http::iequals;
using http::is_ows;
using http::is_token;
using http::trim;

// qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ), in thousandths; -1 if malformed.
int parse_qvalue(std::string_view s) noexcept {
    if (s.empty() || (s[0] != '0' && s[0] != '1')) return -1;
    int whole = s[0] - '0';
    s.remove_prefix(1);
    int frac = 0;
    if (!s.empty()) {
        if (s[0] != '.' || s.size() > 4) return -1;
        s.remove_prefix(1);
        int scale = 100;
        for (char c : s) {
            if (c < '0' || c > '9') return -1;
            frac += (c - '0') * scale;
            scale /= 10;
        }
    }
    if (whole == 1 && frac != 0) return -1;
    return whole * 1000 + frac;
}

// One list element: "coding *( OWS ";" OWS name OWS "=" OWS value )". false if malformed.
bool parse_element(std::string_view element, std::string_view& coding, int& q) noexcept {
    size_t semi = element.find(';');
    coding = trim(element.substr(0, semi));
    if (!is_token(coding)) return false;
    q = 1000;
    while (semi != std::string_view::npos) {
        element.remove_prefix(semi + 1);
        semi = element.find(';');
        std::string_view param = element.substr(0, semi);
        size_t eq = param.find('=');
        if (eq == std::string_view::npos) return false;
        std::string_view name = trim(param.substr(0, eq));
        std::string_view value = trim(param.substr(eq + 1));
        if (!is_token(name)) return false;
        if (iequals(name, "q")) {
            q = parse_qvalue(value);
            if (q < 0) return false;
        }
    }
    return true;
}

}  // namespace

bool gzip_compress(std::string_view in, std::string& out, int level) noexcept {
    out.clear();
    if (level < Z_DEFAULT_COMPRESSION || level > Z_BEST_COMPRESSION) return false;
    try {
        if (compress_into(in, out, level)) return true;
    } catch (const std::exception&) {  // bad_alloc, or length_error from resize()
    }
    out.clear();
    return false;
}

bool gzip_decompress(std::string_view in, std::string& out, size_t max_out) noexcept {
    out.clear();
    try {
        if (decompress_into(in, out, max_out)) return true;
    } catch (const std::exception&) {  // bad_alloc, or length_error from resize()
    }
    out.clear();
    return false;
}

// ---- GzipInflater ----

struct GzipInflater::Impl {
    z_stream zs{};
};

namespace {
constexpr size_t alloc_header = alignof(std::max_align_t);  // holds the block's size
}  // namespace

void* GzipInflater::zalloc(void* opaque, unsigned items, unsigned size) noexcept {
    auto* self = static_cast<GzipInflater*>(opaque);
    size_t n = static_cast<size_t>(items) * size;
    auto* p = static_cast<unsigned char*>(std::malloc(n + alloc_header));
    if (p == nullptr) return Z_NULL;
    *reinterpret_cast<size_t*>(p) = n;
    self->memory_ += n;
    return p + alloc_header;
}

void GzipInflater::zfree(void* opaque, void* block) noexcept {
    if (block == nullptr) return;
    auto* self = static_cast<GzipInflater*>(opaque);
    auto* p = static_cast<unsigned char*>(block) - alloc_header;
    self->memory_ -= *reinterpret_cast<size_t*>(p);
    std::free(p);
}

GzipInflater::GzipInflater() noexcept = default;

GzipInflater::~GzipInflater() {
    end();
}

void GzipInflater::end() noexcept {
    if (active_) {
        inflateEnd(&impl_->zs);
        active_ = false;
    }
}

bool GzipInflater::begin(std::string_view member, size_t max_out) noexcept {
    end();
    in_ = member;
    fed_ = 0;
    max_out_ = max_out;
    produced_ = 0;
    if (!impl_) {
        impl_.reset(new (std::nothrow) Impl());
        if (!impl_) return false;
    }
    impl_->zs = z_stream{};
    impl_->zs.zalloc = zalloc;
    impl_->zs.zfree = zfree;
    impl_->zs.opaque = this;
    if (member.empty() || inflateInit2(&impl_->zs, gzip_window_bits) != Z_OK) return false;
    active_ = true;
    return true;
}

GzipInflater::Status GzipInflater::next(char* out, size_t cap, size_t& written) noexcept {
    written = 0;
    if (!active_ || cap == 0) {
        end();
        return Status::error;
    }
    z_stream& zs = impl_->zs;
    // At most max_out + 1 bytes in all: one byte past the limit proves it is exceeded.
    size_t room = max_out_ - produced_ + 1;
    if (max_out_ == SIZE_MAX) room = SIZE_MAX;
    zs.next_out = reinterpret_cast<Bytef*>(out);
    zs.avail_out = static_cast<uInt>(std::min({cap, room, max_chunk}));
    for (;;) {
        feed(zs, in_, fed_);
        uInt out_before = zs.avail_out;
        uInt in_before = zs.avail_in;
        int rc = inflate(&zs, Z_NO_FLUSH);
        size_t n = out_before - zs.avail_out;
        written += n;
        produced_ += n;
        if (produced_ > max_out_) break;  // would exceed max_out
        if (rc == Z_STREAM_END) {
            if (zs.avail_in != 0 || fed_ != in_.size()) break;  // bytes after the member
            end();
            return Status::done;
        }
        if (rc != Z_OK && rc != Z_BUF_ERROR) break;  // data, header, CRC, length, memory
        if (zs.avail_out == 0) return Status::more;
        // Room to write but nothing moved: the input ended before the member did.
        bool progress = zs.avail_out != out_before || zs.avail_in != in_before;
        if (zs.avail_in == 0 && fed_ == in_.size() && !progress) break;
        if (!progress) break;
    }
    end();
    written = 0;
    return Status::error;
}

bool accepts_gzip(std::string_view accept_encoding) noexcept {
    // -1: not listed; otherwise the lowest q (thousandths) any valid element gave it.
    int gzip_q = -1;
    int star_q = -1;
    std::string_view rest = accept_encoding;
    for (;;) {
        size_t comma = rest.find(',');
        std::string_view element = trim(rest.substr(0, comma));
        std::string_view coding;
        int q = 0;
        if (!element.empty() && parse_element(element, coding, q)) {
            int* slot = nullptr;
            if (iequals(coding, "gzip") || iequals(coding, "x-gzip"))
                slot = &gzip_q;
            else if (coding == "*")
                slot = &star_q;
            if (slot && (*slot < 0 || q < *slot)) *slot = q;
        }
        if (comma == std::string_view::npos) break;
        rest.remove_prefix(comma + 1);
    }
    if (gzip_q >= 0) return gzip_q > 0;
    return star_q > 0;
}

}  // namespace throttle::core
