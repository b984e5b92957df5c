#include "core/cache_identity.hpp"

#include <cstring>
#include <new>
#include <utility>

#include "core/cache_key.hpp"
#include "core/http_text.hpp"

namespace throttle::core::cache {

namespace {

bool name_char(char c) noexcept {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

// Calls fn(name) for every variable `value` names, the name lowercased (nginx's syntax: "$name"
// runs over [A-Za-z0-9_], "${name}" up to the brace; "$1".."$9" are captures, skipped).
template <class Fn>
void for_each_variable(std::string_view value, Fn&& fn) {
    size_t i = 0;
    while (i < value.size()) {
        if (value[i++] != '$' || i == value.size()) {
            continue;
        }
        if (value[i] >= '1' && value[i] <= '9') {  // a capture
            ++i;
            continue;
        }
        bool braced = value[i] == '{';
        if (braced) {
            ++i;
        }
        size_t start = i;
        while (i < value.size() && name_char(value[i])) {
            ++i;
        }
        std::string name;
        name.reserve(i - start);
        for (size_t k = start; k < i; ++k) {
            name.push_back(http::lower(value[k]));
        }
        if (braced && i < value.size() && value[i] == '}') {
            ++i;
        }
        fn(std::move(name));
    }
}

}  // namespace

std::vector<IdentityVariable> identity_variables(std::string_view value) {
    constexpr std::string_view cookie_prefix = "cookie_";
    constexpr std::string_view http_prefix = "http_";
    std::vector<IdentityVariable> out;
    for_each_variable(value, [&](std::string name) {
        std::string_view n = name;
        if (n.size() > cookie_prefix.size() && n.substr(0, cookie_prefix.size()) == cookie_prefix) {
            out.push_back({IdentityVariable::Kind::cookie, name.substr(cookie_prefix.size())});
        } else if (n.size() > http_prefix.size() &&
                   n.substr(0, http_prefix.size()) == http_prefix && n != "http_cookie") {
            out.push_back({IdentityVariable::Kind::header, name.substr(http_prefix.size())});
        }
    });
    return out;
}

bool identity_verified(std::string_view value) {
    constexpr std::string_view claim_prefix = "throttle_jwt_claim_";
    bool verified = false;
    for_each_variable(value, [&](std::string name) {
        std::string_view n = name;
        if (n == "throttle_user_id" ||
            (n.size() > claim_prefix.size() && n.substr(0, claim_prefix.size()) == claim_prefix)) {
            verified = true;
        }
    });
    return verified;
}

size_t cookie_occurrences(std::string_view cookie_header, std::string_view name) noexcept {
    if (name.empty()) {
        return 0;
    }
    size_t count = 0;
    std::string_view rest = cookie_header;
    for (;;) {
        // A plain loop: find_first_of(";,") calls memchr once per byte.
        size_t end = 0;
        while (end < rest.size() && rest[end] != ';' && rest[end] != ',') {
            ++end;
        }
        std::string_view pair = rest.substr(0, end);
        while (!pair.empty() && http::is_ows(pair.front())) {
            pair.remove_prefix(1);
        }
        if (http::istarts_with(pair, name)) {
            pair.remove_prefix(name.size());
            while (!pair.empty() && http::is_ows(pair.front())) {
                pair.remove_prefix(1);
            }
            if (!pair.empty() && pair.front() == '=') {
                ++count;
            }
        }
        if (end == rest.size()) {
            return count;
        }
        rest.remove_prefix(end + 1);
    }
}

bool header_is_variable(std::string_view header_name, std::string_view var) noexcept {
    if (header_name.size() != var.size()) {
        return false;
    }
    for (size_t i = 0; i < var.size(); ++i) {
        char c = header_name[i] == '-' ? '_' : http::lower(header_name[i]);
        if (c != var[i]) {
            return false;
        }
    }
    return true;
}

IdentityMemo::IdentityMemo(const void* secret, size_t secret_len, const SipKey& key) noexcept
    : secret_(secret, secret_len), key_(key) {}

std::string IdentityMemo::digest(std::string_view identity) {
    char out[64];
    size_t n = digest_to(identity, out);
    return std::string(out, n);
}

size_t IdentityMemo::digest_to(std::string_view identity, char (&out)[64]) {
    if (identity.empty()) {
        std::memcpy(out, anonymous_identity.data(), anonymous_identity.size());
        return anonymous_identity.size();
    }
    const Sip128 t = siphash24_128(key_, identity.data(), identity.size());
    Slot* set = &slots_[(t.lo % (slots / ways)) * ways];
    Slot* victim = &set[0];
    if (++tick_ == 0) {  // wrapped: forget the order (0 means empty)
        for (Slot& s : slots_) s.used_at = s.used_at != 0 ? 1 : 0;
        tick_ = 2;
    }
    for (size_t w = 0; w < ways; ++w) {
        Slot& slot = set[w];
        if (slot.used_at != 0 && slot.tag == t) {
            ++hits_;
            slot.used_at = tick_;
            std::memcpy(out, slot.digest.data(), slot.digest.size());
            return slot.digest.size();
        }
        if (slot.used_at < victim->used_at) victim = &slot;
    }
    std::string d = identity_digest(secret_, identity);
    if (d.size() != sizeof(out)) {
        throw std::bad_alloc();  // not reached: a non-empty identity's digest is 64 hex digits
    }
    std::memcpy(out, d.data(), d.size());
    std::memcpy(victim->digest.data(), d.data(), d.size());
    victim->tag = t;
    victim->used_at = tick_;
    return d.size();
}

}  // namespace throttle::core::cache
