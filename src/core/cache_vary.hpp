// The response cache's variants: responses that carry `Vary` (layer: core, no nginx header).
//
// A response that varies on request headers (DRF's "Vary: Accept", "Vary: Accept-Language")
// is stored under a variant key: the request's key (cache_key(), "the base key" B) plus the
// normalised values of those request headers. The design follows nginx's proxy_cache
// (ngx_http_file_cache.c): there the file under the main key records the response's Vary
// names and the variant's hash, and a request whose own variant differs reopens the file under
// a secondary key, md5(main key, variant). Here:
//
//   vary list   the header names the response varies on, as the cache honours them: lowercase,
//               sorted, unique, joined by ',' ("accept,accept-language"). Not in the list:
//               Accept-Encoding (the module compresses and serves gzip itself), headers
//               throttle_cache_key already holds ($http_NAME), and Cookie / Authorization when
//               the identity stands for them (a verified identity, below). At most
//               vary_max_headers names of at most vary_max_name bytes, each an HTTP token.
//   variant key V = SHA-256("throttle-cache-variant\0" version 1, B (32 bytes), field(list),
//               u64 n, then per name in list order: u8 present, field(value)), with field()
//               and u64 as in cache_key.hpp. A missing header (present 0) differs from an
//               empty one (present 1, ""); V's entry sits in Redis where B's would, under the
//               same generations (entry_key(..., V)), so invalidation and purge reach it.
//   value       every request header line of that name (ASCII case-insensitive), joined by
//               ','; each comma-separated element trimmed of spaces and tabs: "a ,  b" and
//               "a,b" are one value, "A,b" another (values are compared as bytes). A value
//               longer than vary_max_value bytes once normalised is not cached (the request
//               bypasses a lookup of that variant; a response is not stored).
//   vary record the bytes stored under B itself when the response for B varies: "TCV" 0x01
//               followed by the vary list. A lookup of B that finds a record computes V from
//               its own headers and looks V up (a second round trip); a per-worker memo of the
//               list per location and path lets the next request look V up at once (one round
//               trip, as a plain hit). The record is overwritten by the next fill of B: by a
//               plain entry when the response stops varying, by another list when it changes.
//               An entry under V is only ever stored by a response whose own list is exactly
//               the list V was computed with, so whatever list a lookup used, the entry it
//               finds is one RFC 9111 4.1 lets it serve to this request.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/hash.hpp"

namespace throttle::core::cache {

inline constexpr size_t vary_max_headers = 4;
inline constexpr size_t vary_max_name = 64;
inline constexpr size_t vary_max_value = 256;
inline constexpr size_t vary_list_max = vary_max_headers * (vary_max_name + 1);

// A vary list (see above). Fixed size, no heap; trivially copyable.
class VaryList {
   public:
    enum class Add : uint8_t { ok, too_many, bad_name };
    // Adds one name (ASCII case-insensitive; kept lowercase, sorted; a repeat is ignored).
    // too_many: it would be name vary_max_headers + 1; bad_name: empty, not a token, or longer
    // than vary_max_name. The list is unchanged then.
    Add add(std::string_view name) noexcept;
    bool empty() const noexcept { return count_ == 0; }
    size_t size() const noexcept { return count_; }
    std::string_view name(size_t i) const noexcept {
        return {names_[i], static_cast<size_t>(lens_[i])};
    }
    // "accept,accept-language"; empty for an empty list.
    std::string_view text() const noexcept { return {text_, text_len_}; }
    // The list `text` spells, which must be canonical (what text() gives: non-empty, lowercase,
    // sorted, unique, bounded). False otherwise, `out` unspecified.
    static bool parse(std::string_view text, VaryList& out) noexcept;

   private:
    void rebuild() noexcept;
    // Only the first count_ names and text_len_ bytes of text_ are meaningful (the rest is left
    // uninitialised: a request holds a VaryList whether or not its resource varies).
    char names_[vary_max_headers][vary_max_name];
    uint8_t lens_[vary_max_headers] = {};
    size_t count_ = 0;
    char text_[vary_list_max];
    size_t text_len_ = 0;
};

// One request header's value for a variant.
struct VaryValue {
    bool present = false;
    std::string value;  // normalised
};

// Adds one request header line (of the list's name) to `v`: the lines are joined by ',' and
// every element trimmed (see above). False when the value grows beyond vary_max_value (`v` is
// then not to be used). May throw std::bad_alloc.
bool append_vary_value(std::string_view line, VaryValue& v);

// V for base key B, the list, and values[i] for list.name(i) (list.size() of them).
Sha256Digest variant_key(const Sha256Digest& base, const VaryList& list, const VaryValue* values);

// The vary record (see above). May throw std::bad_alloc.
std::string encode_vary_record(const VaryList& list);
// Whether stored bytes are a vary record rather than an entry (entries start "TCE").
bool is_vary_record(std::string_view bytes) noexcept;
// False unless the bytes are exactly a record with a canonical list.
bool decode_vary_record(std::string_view bytes, VaryList& out) noexcept;

}  // namespace throttle::core::cache
