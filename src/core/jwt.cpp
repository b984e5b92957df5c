// JSON Web Tokens, verified (see jwt.hpp).
#include "core/jwt.hpp"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include <array>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "core/hash.hpp"
#include "core/http_text.hpp"

namespace throttle::core::jwt {
namespace {

// ---------------------------------------------------------------------------------------
// JSON: just what a JOSE header, a claims set and a JWKS need, strictly.

struct Json {
    enum class Type : uint8_t { null, boolean, number, string, array, object };
    Type type = Type::null;
    std::string text;  // string: decoded; number: as written; boolean: "true"/"false"
    std::vector<Json> items;
    std::vector<std::pair<std::string, Json>> members;

    const Json* get(std::string_view name) const noexcept {
        for (const auto& m : members) {
            if (m.first == name) {
                return &m.second;
            }
        }
        return nullptr;
    }
    const std::string* string(std::string_view name) const noexcept {
        const Json* v = get(name);
        return v != nullptr && v->type == Type::string ? &v->text : nullptr;
    }
};

class JsonParser {
   public:
    explicit JsonParser(std::string_view s) noexcept : s_(s) {}
    // One value and nothing but whitespace after it.
    bool parse(Json& out) {
        if (!value(out, 0)) {
            return false;
        }
        ws();
        return i_ == s_.size();
    }

   private:
    std::string_view s_;
    size_t i_ = 0;

    void ws() noexcept {
        while (i_ < s_.size() &&
               (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) {
            i_++;
        }
    }
    bool literal(std::string_view word) noexcept {
        if (s_.substr(i_, word.size()) != word) {
            return false;
        }
        i_ += word.size();
        return true;
    }
    bool value(Json& out, int depth) {
        if (depth > max_json_depth) {
            return false;
        }
        ws();
        if (i_ >= s_.size()) {
            return false;
        }
        char c = s_[i_];
        if (c == '{') {
            return object(out, depth);
        }
        if (c == '[') {
            return array(out, depth);
        }
        if (c == '"') {
            out.type = Json::Type::string;
            return string(out.text);
        }
        if (c == 't' || c == 'f') {
            out.type = Json::Type::boolean;
            out.text = c == 't' ? "true" : "false";
            return literal(out.text);
        }
        if (c == 'n') {
            out.type = Json::Type::null;
            return literal("null");
        }
        out.type = Json::Type::number;
        return number(out.text);
    }
    bool object(Json& out, int depth) {
        out.type = Json::Type::object;
        i_++;  // '{'
        ws();
        if (i_ < s_.size() && s_[i_] == '}') {
            i_++;
            return true;
        }
        for (;;) {
            ws();
            std::string name;
            if (i_ >= s_.size() || s_[i_] != '"' || !string(name)) {
                return false;
            }
            if (out.get(name) != nullptr) {
                return false;  // duplicate member: which one would count is ambiguous
            }
            ws();
            if (i_ >= s_.size() || s_[i_] != ':') {
                return false;
            }
            i_++;
            Json v;
            if (!value(v, depth + 1)) {
                return false;
            }
            out.members.emplace_back(std::move(name), std::move(v));
            ws();
            if (i_ < s_.size() && s_[i_] == ',') {
                i_++;
                continue;
            }
            if (i_ < s_.size() && s_[i_] == '}') {
                i_++;
                return true;
            }
            return false;
        }
    }
    bool array(Json& out, int depth) {
        out.type = Json::Type::array;
        i_++;  // '['
        ws();
        if (i_ < s_.size() && s_[i_] == ']') {
            i_++;
            return true;
        }
        for (;;) {
            Json v;
            if (!value(v, depth + 1)) {
                return false;
            }
            out.items.push_back(std::move(v));
            ws();
            if (i_ < s_.size() && s_[i_] == ',') {
                i_++;
                continue;
            }
            if (i_ < s_.size() && s_[i_] == ']') {
                i_++;
                return true;
            }
            return false;
        }
    }
    bool digits() noexcept {
        size_t start = i_;
        while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') {
            i_++;
        }
        return i_ > start;
    }
    bool number(std::string& out) {
        size_t start = i_;
        if (i_ < s_.size() && s_[i_] == '-') {
            i_++;
        }
        if (i_ < s_.size() && s_[i_] == '0') {
            i_++;
        } else if (!digits()) {
            return false;
        }
        if (i_ < s_.size() && s_[i_] == '.') {
            i_++;
            if (!digits()) {
                return false;
            }
        }
        if (i_ < s_.size() && (s_[i_] == 'e' || s_[i_] == 'E')) {
            i_++;
            if (i_ < s_.size() && (s_[i_] == '+' || s_[i_] == '-')) {
                i_++;
            }
            if (!digits()) {
                return false;
            }
        }
        out.assign(s_.substr(start, i_ - start));
        return true;
    }
    static int hexval(char c) noexcept {
        if (c >= '0' && c <= '9') {
            return c - '0';
        }
        if (c >= 'a' && c <= 'f') {
            return c - 'a' + 10;
        }
        if (c >= 'A' && c <= 'F') {
            return c - 'A' + 10;
        }
        return -1;
    }
    bool hex4(uint32_t& out) noexcept {
        if (s_.size() - i_ < 4) {
            return false;
        }
        out = 0;
        for (int k = 0; k < 4; k++) {
            int h = hexval(s_[i_++]);
            if (h < 0) {
                return false;
            }
            out = out << 4 | static_cast<uint32_t>(h);
        }
        return true;
    }
    static void utf8(uint32_t cp, std::string& out) {
        if (cp < 0x80) {
            out += static_cast<char>(cp);
        } else if (cp < 0x800) {
            out += static_cast<char>(0xC0 | cp >> 6);
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out += static_cast<char>(0xE0 | cp >> 12);
            out += static_cast<char>(0x80 | (cp >> 6 & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else {
            out += static_cast<char>(0xF0 | cp >> 18);
            out += static_cast<char>(0x80 | (cp >> 12 & 0x3F));
            out += static_cast<char>(0x80 | (cp >> 6 & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        }
    }
    // One UTF-8 sequence starting at i_ (its first byte >= 0x80), copied: no overlong form, no
    // surrogate, nothing above U+10FFFF.
    bool utf8_sequence(std::string& out) {
        auto b = [&](size_t k) { return static_cast<uint8_t>(s_[i_ + k]); };
        uint8_t c = b(0);
        size_t n = 0;
        uint32_t cp = 0;
        if (c >= 0xC2 && c <= 0xDF) {
            n = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            n = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            n = 4;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (s_.size() - i_ < n) {
            return false;
        }
        for (size_t k = 1; k < n; k++) {
            if ((b(k) & 0xC0) != 0x80) {
                return false;
            }
            cp = cp << 6 | (b(k) & 0x3F);
        }
        if ((n == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF))) ||
            (n == 4 && (cp < 0x10000 || cp > 0x10FFFF))) {
            return false;
        }
        out.append(s_.substr(i_, n));
        i_ += n;
        return true;
    }
    bool string(std::string& out) {
        i_++;  // '"'
        out.clear();
        while (i_ < s_.size()) {
            auto c = static_cast<uint8_t>(s_[i_]);
            if (c == '"') {
                i_++;
                return true;
            }
            if (c < 0x20) {
                return false;
            }
            if (c >= 0x80) {
                if (!utf8_sequence(out)) {
                    return false;
                }
                continue;
            }
            if (c != '\\') {
                out += static_cast<char>(c);
                i_++;
                continue;
            }
            if (++i_ >= s_.size()) {
                return false;
            }
            char e = s_[i_++];
            switch (e) {
                case '"':
                    out += '"';
                    break;
                case '\\':
                    out += '\\';
                    break;
                case '/':
                    out += '/';
                    break;
                case 'b':
                    out += '\b';
                    break;
                case 'f':
                    out += '\f';
                    break;
                case 'n':
                    out += '\n';
                    break;
                case 'r':
                    out += '\r';
                    break;
                case 't':
                    out += '\t';
                    break;
                case 'u': {
                    uint32_t cp = 0;
                    if (!hex4(cp)) {
                        return false;
                    }
                    if (cp >= 0xDC00 && cp <= 0xDFFF) {
                        return false;  // a low surrogate alone
                    }
                    if (cp >= 0xD800 && cp <= 0xDBFF) {
                        uint32_t lo = 0;
                        if (s_.substr(i_, 2) != "\\u") {
                            return false;
                        }
                        i_ += 2;
                        if (!hex4(lo) || lo < 0xDC00 || lo > 0xDFFF) {
                            return false;
                        }
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    }
                    utf8(cp, out);
                    break;
                }
                default:
                    return false;
            }
        }
        return false;
    }
};

bool parse_json(std::string_view s, Json& out) {
    return JsonParser(s).parse(out);
}

// A NumericDate (RFC 7519): seconds, possibly with a fraction; truncated.
bool numeric_date(const Json& v, int64_t& out) noexcept {
    if (v.type != Json::Type::number || v.text.size() > 64) {
        return false;
    }
    char buf[65];
    std::memcpy(buf, v.text.data(), v.text.size());
    buf[v.text.size()] = '\0';
    errno = 0;
    double d = std::strtod(buf, nullptr);
    if (errno != 0 || !std::isfinite(d) || d < -9.2e18 || d > 9.2e18) {
        return false;
    }
    out = static_cast<int64_t>(d);
    return true;
}

// ---------------------------------------------------------------------------------------
// OpenSSL

struct PkeyFree {
    void operator()(EVP_PKEY* p) const noexcept { EVP_PKEY_free(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;

const EVP_MD* hs_md(Alg a) noexcept {
    switch (a) {
        case Alg::HS256:
            return EVP_sha256();
        case Alg::HS384:
            return EVP_sha384();
        case Alg::HS512:
            return EVP_sha512();
        default:
            return nullptr;
    }
}

bool verify_hmac(const std::string& secret, Alg alg, std::string_view input,
                 std::string_view sig) noexcept {
    const EVP_MD* md = hs_md(alg);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (md == nullptr || HMAC(md, secret.data(), static_cast<int>(secret.size()),
                              reinterpret_cast<const unsigned char*>(input.data()), input.size(),
                              mac, &len) == nullptr) {
        return false;
    }
    return sig.size() == len && CRYPTO_memcmp(mac, sig.data(), len) == 0;
}

// The JOSE ES256 signature (r || s, 32 bytes each) as the DER ECDSA-Sig-Value OpenSSL checks.
bool es256_der(std::string_view sig, std::string& der) {
    if (sig.size() != 64) {
        return false;
    }
    ECDSA_SIG* es = ECDSA_SIG_new();
    BIGNUM* r = BN_bin2bn(reinterpret_cast<const unsigned char*>(sig.data()), 32, nullptr);
    BIGNUM* s = BN_bin2bn(reinterpret_cast<const unsigned char*>(sig.data()) + 32, 32, nullptr);
    if (es == nullptr || r == nullptr || s == nullptr || ECDSA_SIG_set0(es, r, s) != 1) {
        BN_free(r);
        BN_free(s);
        ECDSA_SIG_free(es);
        return false;
    }
    unsigned char* out = nullptr;
    int len = i2d_ECDSA_SIG(es, &out);
    ECDSA_SIG_free(es);
    if (len <= 0) {
        return false;
    }
    der.assign(reinterpret_cast<const char*>(out), static_cast<size_t>(len));
    OPENSSL_free(out);
    return true;
}

bool verify_pkey(EVP_PKEY* pkey, Alg alg, std::string_view input, std::string_view sig) {
    std::string der;
    if (alg == Alg::ES256) {
        if (!es256_der(sig, der)) {
            return false;
        }
        sig = der;
    }
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    if (ctx == nullptr) {
        return false;
    }
    bool ok =
        EVP_DigestVerifyInit(ctx, nullptr, EVP_sha256(), nullptr, pkey) == 1 &&
        EVP_DigestVerify(ctx, reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                         reinterpret_cast<const unsigned char*>(input.data()), input.size()) == 1;
    EVP_MD_CTX_free(ctx);
    ERR_clear_error();  // a failed check leaves errors nginx's own TLS code would read as its own
    return ok;
}

// RSA of at least 2048 bits or EC on P-256; throws otherwise.
Key::Type check_pkey(EVP_PKEY* pkey) {
    int id = EVP_PKEY_get_base_id(pkey);
    if (id == EVP_PKEY_RSA) {
        if (EVP_PKEY_get_bits(pkey) < 2048) {
            throw std::runtime_error("RSA key shorter than 2048 bits");
        }
        return Key::Type::rsa;
    }
    if (id == EVP_PKEY_EC) {
        char group[64];
        size_t len = 0;
        if (EVP_PKEY_get_group_name(pkey, group, sizeof(group), &len) != 1 ||
            std::string_view(group, len) != "prime256v1") {
            throw std::runtime_error("EC key not on curve P-256");
        }
        return Key::Type::ec;
    }
    throw std::runtime_error("neither an RSA nor an EC key");
}

struct BldFree {
    void operator()(OSSL_PARAM_BLD* b) const noexcept { OSSL_PARAM_BLD_free(b); }
};
struct ParamFree {
    void operator()(OSSL_PARAM* p) const noexcept { OSSL_PARAM_free(p); }
};
struct BnFree {
    void operator()(BIGNUM* b) const noexcept { BN_free(b); }
};
struct PctxFree {
    void operator()(EVP_PKEY_CTX* c) const noexcept { EVP_PKEY_CTX_free(c); }
};

PkeyPtr pkey_from_params(const char* type, OSSL_PARAM_BLD* bld) {
    std::unique_ptr<OSSL_PARAM, ParamFree> params(OSSL_PARAM_BLD_to_param(bld));
    std::unique_ptr<EVP_PKEY_CTX, PctxFree> ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
    EVP_PKEY* pkey = nullptr;
    if (!params || !ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
        EVP_PKEY_fromdata(ctx.get(), &pkey, EVP_PKEY_PUBLIC_KEY, params.get()) != 1) {
        ERR_clear_error();
        return nullptr;
    }
    return PkeyPtr(pkey);
}

std::string b64_member(const Json& jwk, std::string_view name) {
    const std::string* v = jwk.string(name);
    std::string out;
    if (v == nullptr || !base64url_decode(*v, out) || out.empty()) {
        throw std::runtime_error("invalid \"" + std::string(name) + "\"");
    }
    return out;
}

PkeyPtr rsa_jwk(const Json& jwk) {
    std::string n = b64_member(jwk, "n");
    std::string e = b64_member(jwk, "e");
    std::unique_ptr<BIGNUM, BnFree> bn(BN_bin2bn(reinterpret_cast<const unsigned char*>(n.data()),
                                                 static_cast<int>(n.size()), nullptr));
    std::unique_ptr<BIGNUM, BnFree> be(BN_bin2bn(reinterpret_cast<const unsigned char*>(e.data()),
                                                 static_cast<int>(e.size()), nullptr));
    std::unique_ptr<OSSL_PARAM_BLD, BldFree> bld(OSSL_PARAM_BLD_new());
    if (!bn || !be || !bld ||
        OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn.get()) != 1 ||
        OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, be.get()) != 1) {
        throw std::runtime_error("invalid RSA key");
    }
    PkeyPtr pkey = pkey_from_params("RSA", bld.get());
    if (!pkey) {
        throw std::runtime_error("invalid RSA key");
    }
    return pkey;
}

PkeyPtr ec_jwk(const Json& jwk) {
    const std::string* crv = jwk.string("crv");
    if (crv == nullptr || *crv != "P-256") {
        throw std::runtime_error("unsupported \"crv\" (only P-256)");
    }
    std::string x = b64_member(jwk, "x");
    std::string y = b64_member(jwk, "y");
    if (x.size() != 32 || y.size() != 32) {
        throw std::runtime_error("invalid EC point");
    }
    std::string point = "\x04" + x + y;
    std::unique_ptr<OSSL_PARAM_BLD, BldFree> bld(OSSL_PARAM_BLD_new());
    if (!bld ||
        OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) !=
            1 ||
        OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(),
                                         point.size()) != 1) {
        throw std::runtime_error("invalid EC key");
    }
    PkeyPtr pkey = pkey_from_params("EC", bld.get());
    if (!pkey) {
        throw std::runtime_error("invalid EC point");
    }
    return pkey;
}

const char b64url_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

bool aud_matches(const Json& aud, const std::string& want) noexcept {
    if (aud.type == Json::Type::string) {
        return aud.text == want;
    }
    if (aud.type == Json::Type::array) {
        for (const Json& a : aud.items) {
            if (a.type == Json::Type::string && a.text == want) {
                return true;
            }
        }
    }
    return false;
}

}  // namespace

std::string_view status_name(Status s) noexcept {
    switch (s) {
        case Status::valid:
            return "valid";
        case Status::missing:
            return "missing";
        case Status::malformed:
            return "malformed";
        case Status::bad_signature:
            return "bad_signature";
        case Status::unsupported_alg:
            return "unsupported_alg";
        case Status::expired:
            return "expired";
        case Status::not_yet_valid:
            return "not_yet_valid";
        case Status::bad_issuer:
            return "bad_issuer";
        case Status::bad_audience:
            return "bad_audience";
        case Status::unknown_kid:
            return "unknown_kid";
    }
    return "malformed";
}

std::optional<Alg> alg_from_name(std::string_view name) noexcept {
    for (Alg a : {Alg::HS256, Alg::HS384, Alg::HS512, Alg::RS256, Alg::ES256}) {
        if (alg_name(a) == name) {
            return a;
        }
    }
    return std::nullopt;
}

std::string_view alg_name(Alg a) noexcept {
    switch (a) {
        case Alg::HS256:
            return "HS256";
        case Alg::HS384:
            return "HS384";
        case Alg::HS512:
            return "HS512";
        case Alg::RS256:
            return "RS256";
        case Alg::ES256:
            return "ES256";
    }
    return "";
}

bool base64url_decode(std::string_view in, std::string& out) {
    // 0-63 for the alphabet, 64 for anything else
    static const auto table = [] {
        std::array<uint8_t, 256> t{};
        t.fill(64);
        for (int i = 0; i < 64; i++) {
            t[static_cast<unsigned char>(b64url_alphabet[i])] = static_cast<uint8_t>(i);
        }
        return t;
    }();
    out.clear();
    if (in.size() % 4 == 1) {
        return false;
    }
    out.resize(in.size() / 4 * 3 + (in.size() % 4 == 0 ? 0 : in.size() % 4 - 1));
    auto* o = reinterpret_cast<unsigned char*>(out.data());
    const auto* p = reinterpret_cast<const unsigned char*>(in.data());
    size_t full = in.size() / 4;
    for (size_t i = 0; i < full; i++, p += 4) {
        uint32_t a = table[p[0]], b = table[p[1]], c = table[p[2]], d = table[p[3]];
        if ((a | b | c | d) & 64) {
            return false;
        }
        uint32_t v = a << 18 | b << 12 | c << 6 | d;
        *o++ = static_cast<unsigned char>(v >> 16);
        *o++ = static_cast<unsigned char>(v >> 8);
        *o++ = static_cast<unsigned char>(v);
    }
    size_t rest = in.size() % 4;
    if (rest == 0) {
        return true;
    }
    uint32_t a = table[p[0]], b = table[p[1]], c = rest == 3 ? table[p[2]] : 0;
    if ((a | b | c) & 64) {
        return false;
    }
    uint32_t v = a << 18 | b << 12 | c << 6;
    *o++ = static_cast<unsigned char>(v >> 16);
    if (rest == 3) {
        *o++ = static_cast<unsigned char>(v >> 8);
    }
    // The unused low bits of the last character must be zero (one encoding per byte string).
    return (v & (rest == 2 ? 0xFFFFu : 0xFFu)) == 0;
}

std::string base64url_encode(std::string_view in) {
    std::string out;
    out.reserve((in.size() + 2) / 3 * 4);
    uint32_t acc = 0;
    int bits = 0;
    for (unsigned char c : in) {
        acc = (acc << 8 | c) & 0xFFFF;
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out += b64url_alphabet[acc >> bits & 0x3F];
        }
    }
    if (bits > 0) {
        out += b64url_alphabet[acc << (6 - bits) & 0x3F];
    }
    return out;
}

std::string_view bearer_token(std::string_view value, bool scheme_required) noexcept {
    std::string_view v = http::trim(value);
    if (http::istarts_with(v, "bearer") && v.size() > 6 && http::is_ows(v[6])) {
        return http::trim(v.substr(7));
    }
    return scheme_required ? std::string_view() : v;
}

std::string_view cookie_value(std::string_view header, std::string_view name) noexcept {
    while (!header.empty()) {
        size_t end = header.find(';');
        std::string_view pair = http::trim(header.substr(0, end));
        header = end == std::string_view::npos ? std::string_view() : header.substr(end + 1);
        size_t eq = pair.find('=');
        if (eq != std::string_view::npos && http::iequals(http::trim(pair.substr(0, eq)), name)) {
            std::string_view v = http::trim(pair.substr(eq + 1));
            if (v.size() >= 2 && v.front() == '"' && v.back() == '"') {
                v = v.substr(1, v.size() - 2);
            }
            return v;
        }
    }
    return {};
}

// ---------------------------------------------------------------------------------------
// Keys

Key::~Key() {
    EVP_PKEY_free(static_cast<EVP_PKEY*>(pkey_));
}

Key::Key(Key&& o) noexcept
    : type_(o.type_),
      secret_(std::move(o.secret_)),
      pkey_(o.pkey_),
      kid_(std::move(o.kid_)),
      jwk_algs_(o.jwk_algs_) {
    o.pkey_ = nullptr;
}

Key& Key::operator=(Key&& o) noexcept {
    if (this != &o) {
        EVP_PKEY_free(static_cast<EVP_PKEY*>(pkey_));
        type_ = o.type_;
        secret_ = std::move(o.secret_);
        pkey_ = o.pkey_;
        o.pkey_ = nullptr;
        kid_ = std::move(o.kid_);
        jwk_algs_ = o.jwk_algs_;
    }
    return *this;
}

Key Key::hmac(std::string secret) {
    Key k;
    k.type_ = Type::hmac;
    k.secret_ = std::move(secret);
    return k;
}

Key Key::pem(std::string_view pem_text) {
    BIO* bio = BIO_new_mem_buf(pem_text.data(), static_cast<int>(pem_text.size()));
    if (bio == nullptr) {
        throw std::bad_alloc();
    }
    PkeyPtr pkey(PEM_read_bio_PUBKEY(bio, nullptr, nullptr, nullptr));
    BIO_free(bio);
    ERR_clear_error();
    if (!pkey) {
        throw std::runtime_error("no PEM public key (\"BEGIN PUBLIC KEY\")");
    }
    Key k;
    k.type_ = check_pkey(pkey.get());
    k.pkey_ = pkey.release();
    return k;
}

unsigned Key::algs() const noexcept {
    unsigned a = type_ == Type::hmac  ? hs_algs
                 : type_ == Type::rsa ? alg_bit(Alg::RS256)
                                      : alg_bit(Alg::ES256);
    return a & jwk_algs_;
}

unsigned KeySet::algs() const noexcept {
    unsigned a = 0;
    for (const Key& k : keys_) {
        a |= k.algs();
    }
    return a;
}

KeySet KeySet::jwks(std::string_view json) {
    Json doc;
    if (!parse_json(json, doc) || doc.type != Json::Type::object) {
        throw std::runtime_error("not a JSON object");
    }
    const Json* keys = doc.get("keys");
    if (keys == nullptr || keys->type != Json::Type::array) {
        throw std::runtime_error("no \"keys\" array");
    }
    KeySet set;
    set.jwks_ = true;
    for (size_t i = 0; i < keys->items.size(); i++) {
        const Json& jwk = keys->items[i];
        std::string where = "key " + std::to_string(i) + ": ";
        if (jwk.type != Json::Type::object) {
            throw std::runtime_error(where + "not an object");
        }
        const std::string* use = jwk.string("use");
        if (use != nullptr && *use != "sig") {
            continue;
        }
        const std::string* kty = jwk.string("kty");
        PkeyPtr pkey;
        try {
            if (kty != nullptr && *kty == "RSA") {
                pkey = rsa_jwk(jwk);
            } else if (kty != nullptr && *kty == "EC") {
                pkey = ec_jwk(jwk);
            } else {
                throw std::runtime_error("unsupported \"kty\" (RSA or EC)");
            }
            Key k;
            k.type_ = check_pkey(pkey.get());
            k.pkey_ = pkey.release();
            if (const std::string* kid = jwk.string("kid")) {
                k.kid_ = *kid;
            }
            if (const std::string* alg = jwk.string("alg")) {
                std::optional<Alg> a = alg_from_name(*alg);
                if (!a || (alg_bit(*a) & k.algs()) == 0) {
                    throw std::runtime_error("\"alg\" \"" + *alg + "\" does not fit the key");
                }
                k.jwk_algs_ = alg_bit(*a);
            }
            set.keys_.push_back(std::move(k));
        } catch (const std::runtime_error& e) {
            throw std::runtime_error(where + e.what());
        }
    }
    if (set.keys_.empty()) {
        throw std::runtime_error("no signature key in the set");
    }
    return set;
}

// ---------------------------------------------------------------------------------------
// Verification

const std::string* Result::claim(std::string_view name) const noexcept {
    for (const auto& c : claims) {
        if (c.first == name) {
            return &c.second;
        }
    }
    return nullptr;
}

Result Verifier::verify(std::string_view token, int64_t now) const {
    Result res;
    if (token.empty()) {
        res.status = Status::missing;
        return res;
    }
    res.status = Status::malformed;
    if (token.size() > max_token_size) {
        return res;
    }
    size_t d1 = token.find('.');
    size_t d2 = d1 == std::string_view::npos ? d1 : token.find('.', d1 + 1);
    if (d2 == std::string_view::npos || token.find('.', d2 + 1) != std::string_view::npos) {
        return res;
    }
    std::string header_text;
    std::string payload_text;
    std::string sig;
    if (!base64url_decode(token.substr(0, d1), header_text) ||
        !base64url_decode(token.substr(d1 + 1, d2 - d1 - 1), payload_text) ||
        !base64url_decode(token.substr(d2 + 1), sig) || sig.empty()) {
        return res;  // an empty signature: an unsecured JWS (alg none), never accepted
    }
    Json header;
    if (!parse_json(header_text, header) || header.type != Json::Type::object ||
        header.get("crit") != nullptr) {
        return res;
    }
    const std::string* alg_text = header.string("alg");
    if (alg_text == nullptr) {
        return res;
    }
    std::optional<Alg> alg = alg_from_name(*alg_text);
    if (!alg || (alg_bit(*alg) & policy_.algs & keys_.algs()) == 0) {
        res.status = Status::unsupported_alg;
        return res;
    }
    const Json* kid_v = header.get("kid");
    if (kid_v != nullptr && kid_v->type != Json::Type::string) {
        return res;
    }
    bool by_kid = keys_.from_jwks() && kid_v != nullptr;
    bool kid_found = false;
    bool verified = false;
    std::string_view input = token.substr(0, d2);
    for (const Key& k : keys_.keys()) {
        if (by_kid) {
            if (k.kid() != kid_v->text) {
                continue;
            }
            kid_found = true;
        }
        if ((k.algs() & alg_bit(*alg)) == 0) {
            continue;
        }
        verified = k.type() == Key::Type::hmac
                       ? verify_hmac(k.secret_, *alg, input, sig)
                       : verify_pkey(static_cast<EVP_PKEY*>(k.pkey_), *alg, input, sig);
        if (verified) {
            break;
        }
    }
    if (by_kid && !kid_found) {
        res.status = Status::unknown_kid;
        return res;
    }
    if (!verified) {
        res.status = Status::bad_signature;
        return res;
    }
    Json payload;
    if (!parse_json(payload_text, payload) || payload.type != Json::Type::object) {
        return res;
    }
    int64_t t = 0;
    if (const Json* exp = payload.get("exp")) {
        if (!numeric_date(*exp, t)) {
            return res;
        }
        res.exp = t;
        if (now >= t + policy_.leeway_s) {
            res.status = Status::expired;
            return res;
        }
    }
    if (const Json* nbf = payload.get("nbf")) {
        if (!numeric_date(*nbf, t)) {
            return res;
        }
        if (now + policy_.leeway_s < t) {
            res.status = Status::not_yet_valid;
            return res;
        }
    }
    if (policy_.iss) {
        const std::string* iss = payload.string("iss");
        if (iss == nullptr || *iss != *policy_.iss) {
            res.status = Status::bad_issuer;
            return res;
        }
    }
    if (policy_.aud) {
        const Json* aud = payload.get("aud");
        if (aud == nullptr || !aud_matches(*aud, *policy_.aud)) {
            res.status = Status::bad_audience;
            return res;
        }
    }
    for (auto& m : payload.members) {
        Json::Type ty = m.second.type;
        if (ty == Json::Type::string || ty == Json::Type::number || ty == Json::Type::boolean) {
            res.claims.emplace_back(m.first, std::move(m.second.text));
        }
    }
    res.status = Status::valid;
    return res;
}

// ---------------------------------------------------------------------------------------
// Cache

namespace {

TokenCache::Hash random_hash() {
    uint64_t k[2] = {0, 0};
    if (RAND_bytes(reinterpret_cast<unsigned char*>(k), sizeof(k)) != 1) {
        throw std::runtime_error("RAND_bytes failed");
    }
    return {k[0], k[1]};
}

}  // namespace

size_t TokenCache::Hash::operator()(std::string_view s) const noexcept {
    return static_cast<size_t>(siphash24(SipKey{k0, k1}, s.data(), s.size()));
}

TokenCache::TokenCache(size_t capacity, int64_t ttl_s)
    : capacity_(capacity), ttl_s_(ttl_s), map_(16, random_hash()) {}

std::shared_ptr<const Result> TokenCache::find(std::string_view token, int64_t now) {
    if (capacity_ == 0) {
        return nullptr;
    }
    auto it = map_.find(token);
    if (it == map_.end()) {
        return nullptr;
    }
    auto entry = it->second;
    if (now >= entry->until) {
        map_.erase(it);
        lru_.erase(entry);
        return nullptr;
    }
    lru_.splice(lru_.begin(), lru_, entry);
    return entry->result;
}

void TokenCache::store(std::string_view token, std::shared_ptr<const Result> result, int64_t now,
                       int64_t leeway_s) {
    if (capacity_ == 0 || !result || result->status != Status::valid) {
        return;
    }
    int64_t until = now + ttl_s_;
    if (result->exp && *result->exp + leeway_s < until) {
        until = *result->exp + leeway_s;
    }
    if (until <= now) {
        return;
    }
    auto it = map_.find(token);
    if (it != map_.end()) {
        auto entry = it->second;
        map_.erase(it);
        lru_.erase(entry);
    }
    while (map_.size() >= capacity_) {
        map_.erase(lru_.back().token);
        lru_.pop_back();
    }
    lru_.push_front(Entry{std::string(token), until, std::move(result)});
    map_.emplace(lru_.front().token, lru_.begin());
}

}  // namespace throttle::core::jwt
