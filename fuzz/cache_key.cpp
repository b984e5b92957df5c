// Fuzz target: what a client controls in a cache key (method, path, query, host, the identity
// and the extra) -> core::cache::cache_key(), identity_digest() and the Redis key builders.
//
// Two requests A and B are built from one byte string: A cuts it into the eight fields at one
// set of places, B at another (so "/a" + "b=c" meets "/ab" + "=c"), or B is A rewritten in a
// way the key must not see (host case and a trailing dot, GET for HEAD, the query's arguments
// in their sorted order). A reference model of what the key holds (cache_key.hpp: the fields,
// the host lowercased without one trailing dot, the method class, the query's arguments split
// at '&' and '=' and stably sorted by name) decides whether A and B are the same request; the
// keys must be equal exactly when the models are. SHA-256 does not collide, so equal keys for
// different models means the encoding is ambiguous.
//
// Input: byte 0 how B is made (0-3: cut elsewhere; 4: host case and dot; 5: GET/HEAD; 6: the
// query sorted; 7: B = A), bytes 1-7 A's cuts, bytes 8-14 B's cuts, then the bytes.
#include "core/cache_key.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

#include "core/cache_identity.hpp"
#include "core/hash.hpp"

using namespace throttle::core;
using namespace throttle::core::cache;

#define FUZZ_CHECK(cond)      \
    do {                      \
        if (!(cond)) {        \
            __builtin_trap(); \
        }                     \
    } while (0)

namespace {

constexpr size_t fields = 8;  // ns, identity, method, path, query, scheme, host, extra

struct Request {
    std::string f[fields];
    CacheKeyInput input() const {
        CacheKeyInput in;
        in.ns = f[0];
        in.identity_digest = f[1];
        in.method = f[2];
        in.path = f[3];
        in.query = f[4];
        in.scheme = f[5];
        in.host = f[6];
        in.extra = f[7];
        return in;
    }
};

Request cut(std::string_view bytes, const uint8_t* cuts) {
    size_t at[fields - 1];
    for (size_t i = 0; i < fields - 1; i++) {
        at[i] = bytes.empty() ? 0 : cuts[i] % (bytes.size() + 1);
    }
    std::sort(at, at + (fields - 1));
    Request r;
    size_t from = 0;
    for (size_t i = 0; i < fields; i++) {
        size_t to = i < fields - 1 ? at[i] : bytes.size();
        r.f[i] = std::string(bytes.substr(from, to - from));
        from = to;
    }
    return r;
}

struct Arg {
    std::string name;
    bool has_value;
    std::string value;
    bool operator==(const Arg& o) const {
        return name == o.name && has_value == o.has_value && value == o.value;
    }
};

std::vector<Arg> args_of(std::string_view q) {
    std::vector<Arg> args;
    if (q.empty()) {
        return args;
    }
    for (;;) {
        size_t amp = q.find('&');
        std::string_view piece = q.substr(0, amp);
        size_t eq = piece.find('=');
        if (eq == std::string_view::npos) {
            args.push_back(Arg{std::string(piece), false, ""});
        } else {
            args.push_back(
                Arg{std::string(piece.substr(0, eq)), true, std::string(piece.substr(eq + 1))});
        }
        if (amp == std::string_view::npos) {
            break;
        }
        q.remove_prefix(amp + 1);
    }
    std::stable_sort(args.begin(), args.end(), [](const Arg& a, const Arg& b) {
        return std::string_view(a.name) < std::string_view(b.name);
    });
    return args;
}

std::string host_of(std::string h) {
    if (!h.empty() && h.back() == '.') {
        h.pop_back();
    }
    for (char& c : h) {
        if (c >= 'A' && c <= 'Z') {
            c = char(c - 'A' + 'a');
        }
    }
    return h;
}

// What the key holds, per cache_key.hpp.
struct Model {
    std::string ns, id, method, path, scheme, host, extra;
    std::vector<Arg> args;
    bool operator==(const Model& o) const {
        return std::tie(ns, id, method, path, scheme, host, extra) ==
                   std::tie(o.ns, o.id, o.method, o.path, o.scheme, o.host, o.extra) &&
               args == o.args;
    }
};

Model model_of(const Request& r) {
    Model m;
    m.ns = r.f[0];
    m.id = r.f[1];
    m.method = std::string(method_class(r.f[2]));
    m.path = r.f[3];
    m.args = args_of(r.f[4]);
    m.scheme = r.f[5];
    m.host = host_of(r.f[6]);
    m.extra = r.f[7];
    return m;
}

std::string sorted_query(std::string_view q) {
    std::string out;
    bool first = true;
    for (const Arg& a : args_of(q)) {
        if (!first) {
            out.push_back('&');
        }
        first = false;
        out += a.name;
        if (a.has_value) {
            out.push_back('=');
            out += a.value;
        }
    }
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 15) {
        return 0;
    }
    const uint8_t how = data[0] & 7;
    const std::string_view bytes(reinterpret_cast<const char*>(data + 15), size - 15);
    const Request a = cut(bytes, data + 1);
    Request b = how < 4 ? cut(bytes, data + 8) : a;
    switch (how) {
        case 4:  // the host as another spelling of itself
            for (char& c : b.f[6]) {
                if (c >= 'a' && c <= 'z') {
                    c = char(c - 'a' + 'A');
                }
            }
            if (b.f[6].empty() || b.f[6].back() != '.') {
                b.f[6].push_back('.');
            }
            break;
        case 5:
            if (b.f[2] == "GET") {
                b.f[2] = "HEAD";
            } else if (b.f[2] == "HEAD") {
                b.f[2] = "GET";
            }
            break;
        case 6:
            b.f[4] = sorted_query(b.f[4]);
            break;
    }

    const Sha256Digest ka = cache_key(a.input());
    const Sha256Digest kb = cache_key(b.input());
    const bool same = model_of(a) == model_of(b);
    FUZZ_CHECK((ka == kb) == same);
    if (how >= 4) {
        FUZZ_CHECK(ka == kb);  // model_of() agrees with the rewrites above
    }

    // The identity digest: "anon" or 64 hex digits, never the identity; the memo agrees.
    const std::string_view secret = a.f[7];
    const std::string id = identity_digest(secret, a.f[1]);
    if (a.f[1].empty()) {
        FUZZ_CHECK(id == anonymous_identity);
    } else {
        FUZZ_CHECK(id.size() == 64 && id != anonymous_identity);
        FUZZ_CHECK(id.find_first_not_of("0123456789abcdef") == std::string::npos);
    }
    static IdentityMemo* memo = nullptr;
    static std::string memo_secret;
    if (memo == nullptr || memo_secret != secret) {
        delete memo;
        memo_secret.assign(secret);
        memo = new IdentityMemo(memo_secret.data(), memo_secret.size(),
                                SipKey{0x0123456789abcdefULL, 0xfedcba9876543210ULL});
    }
    FUZZ_CHECK(memo->digest(a.f[1]) == id);
    FUZZ_CHECK(memo->digest(a.f[1]) == id);  // from the memo this time

    // The Redis names: the entry key ends with the key's 64 hex digits; the lock and waiter
    // marks extend it.
    Generation gen;
    gen.ns = data[1];
    gen.user = uint64_t(data[2]) << 56;
    const std::string e = entry_key(a.f[5], a.f[0], id, gen, ka);
    FUZZ_CHECK(e.size() >= 64 && e.compare(e.size() - 64, 64, hex(ka)) == 0);
    FUZZ_CHECK(fill_lock_key(e) == e + ":l" && fill_waiter_key(e) == e + ":w");
    (void)generation_key(a.f[5], a.f[0], id);
    (void)namespace_generation_key(a.f[5], a.f[0]);
    if (valid_namespace(a.f[0])) {
        FUZZ_CHECK(a.f[0].find_first_of(":{}") == std::string::npos);
    }
    return 0;
}
