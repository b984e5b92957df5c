#include "core/cache_key.hpp"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <utility>
#include <vector>

#include "core/http_text.hpp"

namespace throttle::core::cache {

namespace {

constexpr char identity_label[] = "throttle-cache-identity";  // with its NUL, see the header
constexpr char key_label[] = "throttle-cache-key";
constexpr uint8_t key_version = 2;

// field(host) with the host lowercased and one trailing dot dropped.
void put_host(Sha256& h, std::string_view host) noexcept {
    if (!host.empty() && host.back() == '.') host.remove_suffix(1);
    h.put_u64(host.size());
    char buf[64];
    while (!host.empty()) {
        size_t n = std::min(host.size(), sizeof(buf));
        for (size_t i = 0; i < n; ++i) buf[i] = http::lower(host[i]);
        h.update(buf, n);
        host.remove_prefix(n);
    }
}

struct Arg {
    std::string_view name;
    std::string_view value;
    bool has_value;
};

void append_u64(std::string& s, uint64_t v) {
    char buf[24];
    auto res = std::to_chars(buf, buf + sizeof(buf), v);
    s.append(buf, static_cast<size_t>(res.ptr - buf));
}

// PREFIX "{" NS ":" ID "}"
std::string user_tag(std::string_view prefix, std::string_view ns, std::string_view id,
                     size_t extra) {
    std::string s;
    s.reserve(prefix.size() + ns.size() + id.size() + 3 + extra);
    s.append(prefix);
    s.push_back('{');
    s.append(ns);
    s.push_back(':');
    s.append(id);
    s.push_back('}');
    return s;
}

}  // namespace

bool valid_namespace(std::string_view ns) noexcept {
    if (ns.empty() || ns.size() > namespace_max_len) return false;
    for (char c : ns) {
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '.' || c == '-';
        if (!ok) return false;
    }
    return true;
}

std::string identity_digest(const HmacSha256Key& secret, std::string_view identity) {
    if (identity.empty()) return std::string(anonymous_identity);
    // The label and its NUL, then the identity.
    return hex(
        secret.mac(identity_label, sizeof(identity_label), identity.data(), identity.size()));
}

std::string identity_digest(std::string_view secret, std::string_view identity) {
    if (identity.empty()) return std::string(anonymous_identity);  // no key schedule for it
    return identity_digest(HmacSha256Key(secret.data(), secret.size()), identity);
}

std::string_view method_class(std::string_view method) noexcept {
    if (method == "GET" || method == "HEAD") return "GET";
    return method;
}

Sha256Digest cache_key(const CacheKeyInput& in) {
    std::vector<Arg> args;
    if (!in.query.empty()) {
        args.reserve(static_cast<size_t>(std::count(in.query.begin(), in.query.end(), '&')) + 1);
        std::string_view q = in.query;
        for (;;) {
            size_t amp = q.find('&');
            std::string_view piece = q.substr(0, amp);
            size_t eq = piece.find('=');
            if (eq == std::string_view::npos) {
                args.push_back(Arg{piece, {}, false});
            } else {
                args.push_back(Arg{piece.substr(0, eq), piece.substr(eq + 1), true});
            }
            if (amp == std::string_view::npos) break;
            q.remove_prefix(amp + 1);
        }
        // string_view compares as unsigned bytes (char_traits<char>::compare is memcmp).
        std::stable_sort(args.begin(), args.end(),
                         [](const Arg& a, const Arg& b) { return a.name < b.name; });
    }

    Sha256 h;
    h.update(key_label, sizeof(key_label));
    h.update(&key_version, 1);
    h.put_field(in.ns);
    h.put_field(in.scheme);
    put_host(h, in.host);
    h.put_field(in.identity_digest);
    h.put_field(method_class(in.method));
    h.put_field(in.path);
    h.put_u64(args.size());
    for (const Arg& a : args) {
        h.put_field(a.name);
        uint8_t flag = a.has_value ? 1 : 0;
        h.update(&flag, 1);
        h.put_field(a.value);
    }
    h.put_field(in.extra);
    return h.finish();
}

std::string generation_key(std::string_view prefix, std::string_view ns, std::string_view id) {
    std::string s = user_tag(prefix, ns, id, 2);
    s.append(":g");
    return s;
}

std::string namespace_generation_key(std::string_view prefix, std::string_view ns) {
    std::string s;
    s.reserve(prefix.size() + ns.size() + 4);
    s.append(prefix);
    s.push_back('{');
    s.append(ns);
    s.append("}:g");
    return s;
}

std::string entry_key(std::string_view prefix, std::string_view ns, std::string_view id,
                      const Generation& gen, const Sha256Digest& key) {
    std::string s = user_tag(prefix, ns, id, 3 + 20 + 1 + 20 + 1 + 64);
    s.append(":e:");
    append_u64(s, gen.ns);
    s.push_back('.');
    append_u64(s, gen.user);
    s.push_back(':');
    s.append(hex(key));
    return s;
}

std::string fill_lock_key(std::string_view entry_key) {
    std::string s;
    s.reserve(entry_key.size() + 2);
    s.append(entry_key);
    s.append(":l");
    return s;
}

std::string fill_waiter_key(std::string_view entry_key) {
    std::string s;
    s.reserve(entry_key.size() + 2);
    s.append(entry_key);
    s.append(":w");
    return s;
}

Sha256Digest CacheKeyMemo::key(const CacheKeyInput& in) {
    const std::string_view fields[] = {
        in.ns,   in.identity_digest, method_class(in.method), in.path, in.query, in.scheme, in.host,
        in.extra};
    size_t total = 0;
    for (std::string_view f : fields) {
        total += 4 + f.size();
    }
    if (total > max_input) {
        return cache_key(in);
    }
    char* out = scratch_.data();
    for (std::string_view f : fields) {
        const auto n = static_cast<uint32_t>(f.size());
        std::memcpy(out, &n, sizeof(n));
        out += sizeof(n);
        if (!f.empty()) {
            std::memcpy(out, f.data(), f.size());
            out += f.size();
        }
    }
    const std::string_view input(scratch_.data(), static_cast<size_t>(out - scratch_.data()));
    Slot* set = &slots_[(siphash13(seed_, input.data(), input.size()) % (slots / ways)) * ways];
    Slot* victim = &set[0];
    if (++tick_ == 0) {  // wrapped: forget the order (0 means empty)
        for (Slot& s : slots_) s.used_at = s.used_at != 0 ? 1 : 0;
        tick_ = 2;
    }
    for (size_t w = 0; w < ways; ++w) {
        Slot& s = set[w];
        if (s.used_at != 0 && std::string_view(s.input) == input) {
            hits_++;
            s.used_at = tick_;
            return s.key;
        }
        if (s.used_at < victim->used_at) victim = &s;
    }
    Sha256Digest k = cache_key(in);
    victim->input.assign(input);
    victim->key = k;
    victim->used_at = tick_;
    return k;
}

}  // namespace throttle::core::cache
