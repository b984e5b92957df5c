// JWT verification (src/core/jwt.*): RFC 7515 Appendix A vectors, and tokens made here.
#include "core/jwt.hpp"

#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>

#include <memory>
#include <stdexcept>
#include <string>

using namespace throttle::core::jwt;

namespace {

// RFC 7515 A.1 (HS256), A.2 (RS256), A.3 (ES256): one payload, exp 1300819380.
const char* rfc_payload =
    "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cn"
    "VlfQ";
const char* rfc_hs_key_b64 =
    "AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow";
const std::string rfc_hs_token = std::string("eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.") +
                                 rfc_payload + ".dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const char* rfc_rsa_n =
    "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4"
    "d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5re"
    "xMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxX"
    "FvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
const std::string rfc_rs_token =
    std::string("eyJhbGciOiJSUzI1NiJ9.") + rfc_payload +
    ".cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5"
    "jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1"
    "L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOY"
    "EUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";
const char* rfc_ec_x = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
const char* rfc_ec_y = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
const std::string rfc_es_token =
    std::string("eyJhbGciOiJFUzI1NiJ9.") + rfc_payload +
    ".DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
constexpr int64_t rfc_now = 1300819000;  // before the vectors' exp

std::string b64d(const std::string& s) {
    std::string out;
    EXPECT_TRUE(base64url_decode(s, out)) << s;
    return out;
}

std::string rfc_hs_key() {
    return b64d(rfc_hs_key_b64);
}

std::string rfc_jwks(const std::string& extra_rsa = "", const std::string& extra_ec = "") {
    return std::string(R"({"keys":[{"kty":"RSA","kid":"rsa1","n":")") + rfc_rsa_n +
           R"(","e":"AQAB")" + extra_rsa + R"(},{"kty":"EC","crv":"P-256","kid":"ec1","x":")" +
           rfc_ec_x + R"(","y":")" + rfc_ec_y + "\"" + extra_ec + "}]}";
}

std::string hs(const std::string& secret, const std::string& header, const std::string& payload,
               const EVP_MD* md = EVP_sha256()) {
    std::string input = base64url_encode(header) + "." + base64url_encode(payload);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    HMAC(md, secret.data(), static_cast<int>(secret.size()),
         reinterpret_cast<const unsigned char*>(input.data()), input.size(), mac, &len);
    return input + "." + base64url_encode(std::string(reinterpret_cast<char*>(mac), len));
}

const std::string secret = "0123456789abcdef0123456789abcdef";
const std::string hs256 = R"({"alg":"HS256","typ":"JWT"})";

Verifier hs_verifier(Policy p = {}) {
    return Verifier(KeySet(Key::hmac(secret)), std::move(p));
}

struct PkeyFree {
    void operator()(EVP_PKEY* p) const noexcept { EVP_PKEY_free(p); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

std::string public_pem(EVP_PKEY* k) {
    BIO* bio = BIO_new(BIO_s_mem());
    PEM_write_bio_PUBKEY(bio, k);
    char* data = nullptr;
    long len = BIO_get_mem_data(bio, &data);
    std::string pem(data, static_cast<size_t>(len));
    BIO_free(bio);
    return pem;
}

// A token signed by k (RS256 or ES256, the signature in JOSE form).
std::string sign(EVP_PKEY* k, const std::string& header, const std::string& payload) {
    std::string input = base64url_encode(header) + "." + base64url_encode(payload);
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    size_t len = 0;
    EVP_DigestSignInit(ctx, nullptr, EVP_sha256(), nullptr, k);
    EVP_DigestSign(ctx, nullptr, &len, reinterpret_cast<const unsigned char*>(input.data()),
                   input.size());
    std::string sig(len, '\0');
    EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(sig.data()), &len,
                   reinterpret_cast<const unsigned char*>(input.data()), input.size());
    sig.resize(len);
    EVP_MD_CTX_free(ctx);
    if (EVP_PKEY_get_base_id(k) == EVP_PKEY_EC) {
        const auto* p = reinterpret_cast<const unsigned char*>(sig.data());
        ECDSA_SIG* es = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(sig.size()));
        unsigned char rs[64];
        BN_bn2binpad(ECDSA_SIG_get0_r(es), rs, 32);
        BN_bn2binpad(ECDSA_SIG_get0_s(es), rs + 32, 32);
        ECDSA_SIG_free(es);
        sig.assign(reinterpret_cast<char*>(rs), 64);
    }
    return input + "." + base64url_encode(sig);
}

Pkey rsa_key(size_t bits = 2048) {
    return Pkey(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", bits));
}
Pkey ec_key(const char* curve = "P-256") {
    return Pkey(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", curve));
}

}  // namespace

TEST(JwtBase64url, StrictDecoding) {
    std::string out;
    EXPECT_TRUE(base64url_decode("", out));
    EXPECT_TRUE(base64url_decode("YQ", out));
    EXPECT_EQ(out, "a");
    EXPECT_TRUE(base64url_decode("-_8", out));
    EXPECT_EQ(out, "\xfb\xff");
    EXPECT_FALSE(base64url_decode("YQ==", out));  // padding
    EXPECT_FALSE(base64url_decode("Y", out));     // impossible length
    EXPECT_FALSE(base64url_decode("Y+", out));    // standard alphabet
    EXPECT_FALSE(base64url_decode("Y/", out));
    EXPECT_FALSE(base64url_decode("YQ ", out));
    EXPECT_FALSE(base64url_decode("YR", out));  // non-zero unused bits: a second spelling of "a"
    for (std::string s : {"", "a", "ab", "abc", "\xff\x00\x10"}) {
        EXPECT_TRUE(base64url_decode(base64url_encode(s), out));
        EXPECT_EQ(out, s);
    }
}

TEST(JwtRfc7515, A1Hs256) {
    Verifier v(KeySet(Key::hmac(rfc_hs_key())), {});
    Result r = v.verify(rfc_hs_token, rfc_now);
    ASSERT_EQ(r.status, Status::valid);
    ASSERT_NE(r.claim("iss"), nullptr);
    EXPECT_EQ(*r.claim("iss"), "joe");
    EXPECT_EQ(*r.claim("exp"), "1300819380");
    EXPECT_EQ(*r.claim("http://example.com/is_root"), "true");
    EXPECT_EQ(r.exp, 1300819380);
    EXPECT_EQ(v.verify(rfc_hs_token, 1300819380).status, Status::expired);
}

TEST(JwtRfc7515, A2Rs256AndA3Es256FromJwks) {
    Verifier v(KeySet::jwks(rfc_jwks()), {});
    EXPECT_EQ(v.verify(rfc_rs_token, rfc_now).status, Status::valid);
    EXPECT_EQ(v.verify(rfc_es_token, rfc_now).status, Status::valid);
    // a flipped bit in each signature
    std::string rs = rfc_rs_token;
    rs[rs.size() - 2] = rs[rs.size() - 2] == 'R' ? 'S' : 'R';
    EXPECT_EQ(v.verify(rs, rfc_now).status, Status::bad_signature);
    std::string es = rfc_es_token;
    es.back() = 'A';
    EXPECT_EQ(v.verify(es, rfc_now).status, Status::bad_signature);
    // the policy narrows the algorithms
    Policy only_es;
    only_es.algs = alg_bit(Alg::ES256);
    Verifier v2(KeySet::jwks(rfc_jwks()), only_es);
    EXPECT_EQ(v2.verify(rfc_rs_token, rfc_now).status, Status::unsupported_alg);
    EXPECT_EQ(v2.verify(rfc_es_token, rfc_now).status, Status::valid);
}

TEST(JwtRfc7515, JwksAlgAndUse) {
    // a key marked for ES256 only cannot verify RS256 (it is an RSA key: the set refuses it)
    EXPECT_THROW(KeySet::jwks(rfc_jwks(R"(,"alg":"ES256")")), std::runtime_error);
    // an encryption key is skipped
    Verifier v(KeySet::jwks(rfc_jwks(R"(,"use":"enc")")), {});
    EXPECT_EQ(v.verify(rfc_rs_token, rfc_now).status, Status::unsupported_alg);
    EXPECT_EQ(v.verify(rfc_es_token, rfc_now).status, Status::valid);
}

TEST(JwtKid, SelectsTheKeyAndRefusesUnknownOnes) {
    Pkey a = rsa_key();
    Pkey b = rsa_key();
    auto jwk = [](EVP_PKEY* k, const std::string& kid) {
        BIGNUM* n = nullptr;
        BIGNUM* e = nullptr;
        EVP_PKEY_get_bn_param(k, "n", &n);
        EVP_PKEY_get_bn_param(k, "e", &e);
        std::string nb(static_cast<size_t>(BN_num_bytes(n)), '\0');
        std::string eb(static_cast<size_t>(BN_num_bytes(e)), '\0');
        BN_bn2bin(n, reinterpret_cast<unsigned char*>(nb.data()));
        BN_bn2bin(e, reinterpret_cast<unsigned char*>(eb.data()));
        BN_free(n);
        BN_free(e);
        return R"({"kty":"RSA","kid":")" + kid + R"(","n":")" + base64url_encode(nb) +
               R"(","e":")" + base64url_encode(eb) + "\"}";
    };
    Verifier v(KeySet::jwks(R"({"keys":[)" + jwk(a.get(), "a") + "," + jwk(b.get(), "b") + "]}"),
               {});
    std::string p = R"({"sub":"1"})";
    EXPECT_EQ(v.verify(sign(a.get(), R"({"alg":"RS256","kid":"a"})", p), 0).status, Status::valid);
    EXPECT_EQ(v.verify(sign(b.get(), R"({"alg":"RS256","kid":"b"})", p), 0).status, Status::valid);
    // signed by b, naming a: a alone is tried
    EXPECT_EQ(v.verify(sign(b.get(), R"({"alg":"RS256","kid":"a"})", p), 0).status,
              Status::bad_signature);
    EXPECT_EQ(v.verify(sign(a.get(), R"({"alg":"RS256","kid":"c"})", p), 0).status,
              Status::unknown_kid);
    EXPECT_EQ(v.verify(sign(a.get(), R"({"alg":"RS256","kid":7})", p), 0).status,
              Status::malformed);
    // no kid: every key is tried
    EXPECT_EQ(v.verify(sign(b.get(), R"({"alg":"RS256"})", p), 0).status, Status::valid);
    Pkey c = rsa_key();
    EXPECT_EQ(v.verify(sign(c.get(), R"({"alg":"RS256"})", p), 0).status, Status::bad_signature);
}

TEST(JwtPem, RsaAndEcKeys) {
    Pkey rsa = rsa_key();
    Pkey ec = ec_key();
    Verifier vr(KeySet(Key::pem(public_pem(rsa.get()))), {});
    Verifier ve(KeySet(Key::pem(public_pem(ec.get()))), {});
    std::string p = R"({"user_id":42,"name":"ann"})";
    Result r = vr.verify(sign(rsa.get(), R"({"alg":"RS256"})", p), 0);
    ASSERT_EQ(r.status, Status::valid);
    EXPECT_EQ(*r.claim("user_id"), "42");
    EXPECT_EQ(ve.verify(sign(ec.get(), R"({"alg":"ES256"})", p), 0).status, Status::valid);
    // the other key's algorithm is not this key's
    EXPECT_EQ(vr.verify(sign(ec.get(), R"({"alg":"ES256"})", p), 0).status,
              Status::unsupported_alg);
    EXPECT_EQ(ve.verify(sign(rsa.get(), R"({"alg":"RS256"})", p), 0).status,
              Status::unsupported_alg);
    // another key of the same kind
    Pkey ec2 = ec_key();
    EXPECT_EQ(ve.verify(sign(ec2.get(), R"({"alg":"ES256"})", p), 0).status, Status::bad_signature);
    // an ES256 signature in DER form (the classic mistake) is not a JOSE signature
    std::string t = sign(ec.get(), R"({"alg":"ES256"})", p);
    EXPECT_EQ(ve.verify(t.substr(0, t.rfind('.')) + "." + base64url_encode(std::string(70, 'x')), 0)
                  .status,
              Status::bad_signature);
}

TEST(JwtPem, RefusedKeys) {
    EXPECT_THROW(Key::pem("not a key"), std::runtime_error);
    Pkey small = rsa_key(1024);
    EXPECT_THROW(Key::pem(public_pem(small.get())), std::runtime_error);
    Pkey p384 = ec_key("P-384");
    EXPECT_THROW(Key::pem(public_pem(p384.get())), std::runtime_error);
    EXPECT_THROW(KeySet::jwks("[]"), std::runtime_error);
    EXPECT_THROW(KeySet::jwks(R"({"keys":[]})"), std::runtime_error);
    EXPECT_THROW(KeySet::jwks(R"({"keys":[{"kty":"oct","k":"AAAA"}]})"), std::runtime_error);
    EXPECT_THROW(KeySet::jwks(R"({"keys":[{"kty":"EC","crv":"P-256","x":"AAAA","y":"AAAA"}]})"),
                 std::runtime_error);
    // a point that is not on the curve
    std::string bad = rfc_jwks();
    bad.replace(bad.find(rfc_ec_y), 4, "AAAA");
    EXPECT_THROW(KeySet::jwks(bad), std::runtime_error);
}

TEST(JwtAlgConfusion, HsTokenWithThePublicKeyAsSecret) {
    Pkey rsa = rsa_key();
    std::string pem = public_pem(rsa.get());
    Verifier v(KeySet(Key::pem(pem)), {});
    // an attacker who knows the public key signs HS256 with its PEM text as the secret
    for (const EVP_MD* md : {EVP_sha256(), EVP_sha384(), EVP_sha512()}) {
        std::string alg = md == EVP_sha256() ? "HS256" : md == EVP_sha384() ? "HS384" : "HS512";
        EXPECT_EQ(v.verify(hs(pem, R"({"alg":")" + alg + "\"}", R"({"sub":"x"})", md), 0).status,
                  Status::unsupported_alg);
    }
    Verifier vj(KeySet::jwks(rfc_jwks()), {});
    EXPECT_EQ(vj.verify(hs(rfc_rsa_n, R"({"alg":"HS256"})", R"({"sub":"x"})"), 0).status,
              Status::unsupported_alg);
    // and an HMAC key never verifies RS256/ES256
    EXPECT_EQ(hs_verifier().verify(rfc_rs_token, rfc_now).status, Status::unsupported_alg);
}

TEST(JwtAlgNone, AlwaysRefused) {
    std::string h = base64url_encode(R"({"alg":"none"})");
    std::string p = base64url_encode(R"({"sub":"x"})");
    EXPECT_EQ(hs_verifier().verify(h + "." + p + ".", 0).status, Status::malformed);
    EXPECT_EQ(hs_verifier().verify(h + "." + p + ".AAAA", 0).status, Status::unsupported_alg);
    for (const char* alg : {"None", "NONE", "HS256 ", "hs256", "RS384", ""}) {
        std::string t = hs(secret, std::string(R"({"alg":")") + alg + "\"}", R"({"sub":"x"})");
        EXPECT_EQ(hs_verifier().verify(t, 0).status, Status::unsupported_alg) << alg;
    }
}

TEST(JwtHs, AlgorithmsAndSecrets) {
    std::string p = R"({"sub":"x"})";
    EXPECT_EQ(hs_verifier().verify(hs(secret, hs256, p), 0).status, Status::valid);
    EXPECT_EQ(hs_verifier().verify(hs(secret, R"({"alg":"HS384"})", p, EVP_sha384()), 0).status,
              Status::valid);
    EXPECT_EQ(hs_verifier().verify(hs(secret, R"({"alg":"HS512"})", p, EVP_sha512()), 0).status,
              Status::valid);
    // header says HS512, MAC is HS256
    EXPECT_EQ(hs_verifier().verify(hs(secret, R"({"alg":"HS512"})", p), 0).status,
              Status::bad_signature);
    EXPECT_EQ(hs_verifier().verify(hs(secret + "x", hs256, p), 0).status, Status::bad_signature);
    Policy only256;
    only256.algs = alg_bit(Alg::HS256);
    EXPECT_EQ(
        hs_verifier(only256).verify(hs(secret, R"({"alg":"HS512"})", p, EVP_sha512()), 0).status,
        Status::unsupported_alg);
}

TEST(JwtTamper, PayloadAndSignature) {
    std::string t = hs(secret, hs256, R"({"user_id":"1"})");
    std::string other = hs(secret, hs256, R"({"user_id":"2"})");
    size_t d1 = t.find('.');
    size_t d2 = t.rfind('.');
    // payload of another token, this one's signature
    std::string swapped =
        t.substr(0, d1 + 1) + other.substr(d1 + 1, other.rfind('.') - d1 - 1) + t.substr(d2);
    EXPECT_EQ(hs_verifier().verify(swapped, 0).status, Status::bad_signature);
    std::string sig = t;
    sig[d2 + 1] = sig[d2 + 1] == 'A' ? 'B' : 'A';
    EXPECT_EQ(hs_verifier().verify(sig, 0).status, Status::bad_signature);
    EXPECT_EQ(hs_verifier().verify(t.substr(0, d2 + 1), 0).status, Status::malformed);
    EXPECT_EQ(hs_verifier().verify(t.substr(0, d2 + 5), 0).status, Status::bad_signature);
}

TEST(JwtMalformed, Shapes) {
    Verifier v = hs_verifier();
    EXPECT_EQ(v.verify("", 0).status, Status::missing);
    for (std::string t : {"a", "a.b", "a.b.c.d", "..", "eyJhbGciOiJIUzI1NiJ9..", "a b.c.d",
                          "YQ==.YQ.YQ", "e30.e30.e30"}) {
        EXPECT_EQ(v.verify(t, 0).status, Status::malformed) << t;
    }
    std::string good = hs(secret, hs256, R"({"sub":"x"})");
    EXPECT_EQ(v.verify(good + "=", 0).status, Status::malformed);
    EXPECT_EQ(v.verify(" " + good, 0).status, Status::malformed);
    // a header without alg, with crit, not an object
    EXPECT_EQ(v.verify(hs(secret, R"({"typ":"JWT"})", "{}"), 0).status, Status::malformed);
    EXPECT_EQ(v.verify(hs(secret, R"({"alg":"HS256","crit":["exp"]})", "{}"), 0).status,
              Status::malformed);
    EXPECT_EQ(v.verify(hs(secret, R"(["HS256"])", "{}"), 0).status, Status::malformed);
    EXPECT_EQ(v.verify(hs(secret, R"({"alg":256})", "{}"), 0).status, Status::malformed);
}

TEST(JwtMalformed, HugeToken) {
    std::string big(max_token_size, 'a');
    std::string t = hs(secret, hs256, R"({"pad":")" + big + "\"}");
    EXPECT_GT(t.size(), max_token_size);
    EXPECT_EQ(hs_verifier().verify(t, 0).status, Status::malformed);
    std::string fits = hs(secret, hs256, R"({"pad":")" + std::string(5000, 'a') + "\"}");
    EXPECT_EQ(hs_verifier().verify(fits, 0).status, Status::valid);
}

TEST(JwtMalformed, Payloads) {
    Verifier v = hs_verifier();
    auto status = [&](const std::string& payload) {
        return v.verify(hs(secret, hs256, payload), 0).status;
    };
    EXPECT_EQ(status("{}"), Status::valid);
    // not an object
    for (const char* p : {"[]", "\"x\"", "42", "null", "true", ""}) {
        EXPECT_EQ(status(p), Status::malformed) << p;
    }
    // duplicate claims: which one would count?
    EXPECT_EQ(status(R"({"user_id":"1","user_id":"2"})"), Status::malformed);
    EXPECT_EQ(status(R"({"a":{"x":1,"x":2}})"), Status::malformed);
    EXPECT_EQ(status(R"({"a":{"x":1,"y":2}})"), Status::valid);
    // deep nesting
    std::string deep = R"({"a":)" + std::string(100, '[') + std::string(100, ']') + "}";
    EXPECT_EQ(status(deep), Status::malformed);
    std::string ok = R"({"a":)" + std::string(10, '[') + std::string(10, ']') + "}";
    EXPECT_EQ(status(ok), Status::valid);
    std::string very_deep = std::string(4000, '[');
    EXPECT_EQ(status(very_deep), Status::malformed);
    // JSON syntax
    for (const char* p : {R"({"a":1,})", R"({"a":01})", R"({"a":1.})", R"({"a":.5})", R"({"a":+1})",
                          R"({'a':1})", R"({"a":1} x)", R"({"a":"\x"})", R"({"a":"\u12"})",
                          R"({"a":"\ud800"})", R"({"a":"\udc00"})", "{\"a\":\"\x01\"}",
                          "{\"a\":\"\xc0\xaf\"}", "{\"a\":\"\xed\xa0\x80\"}", "{\"a\":\"\xff\"}",
                          R"({"a":tru})", R"({"a":nul})", R"({a:1})", R"({"a" 1})"}) {
        EXPECT_EQ(status(p), Status::malformed) << p;
    }
    // strings are decoded, numbers kept as written
    Result r = v.verify(hs(secret, hs256,
                           R"({"s":"a\"b\\c\u00e9\ud83d\ude00","n":-1.5e3,"b":false,"o":{},)"
                           R"("l":[1],"z":null, "u":"é"})"),
                        0);
    ASSERT_EQ(r.status, Status::valid);
    EXPECT_EQ(*r.claim("s"), "a\"b\\c\xc3\xa9\xf0\x9f\x98\x80");
    EXPECT_EQ(*r.claim("n"), "-1.5e3");
    EXPECT_EQ(*r.claim("b"), "false");
    EXPECT_EQ(*r.claim("u"), "\xc3\xa9");
    EXPECT_EQ(r.claim("o"), nullptr);
    EXPECT_EQ(r.claim("l"), nullptr);
    EXPECT_EQ(r.claim("z"), nullptr);
}

TEST(JwtClaims, ExpAndNbfWithLeeway) {
    Policy p;
    p.leeway_s = 30;
    Verifier v = hs_verifier(p);
    std::string t = hs(secret, hs256, R"({"exp":1000,"nbf":900})");
    EXPECT_EQ(v.verify(t, 869).status, Status::not_yet_valid);
    EXPECT_EQ(v.verify(t, 870).status, Status::valid);
    EXPECT_EQ(v.verify(t, 1029).status, Status::valid);
    EXPECT_EQ(v.verify(t, 1030).status, Status::expired);
    Verifier strict = hs_verifier();
    EXPECT_EQ(strict.verify(t, 899).status, Status::not_yet_valid);
    EXPECT_EQ(strict.verify(t, 999).status, Status::valid);
    EXPECT_EQ(strict.verify(t, 1000).status, Status::expired);
    EXPECT_EQ(strict.verify(hs(secret, hs256, R"({"exp":1000.9})"), 1000).status, Status::expired);
    EXPECT_EQ(strict.verify(hs(secret, hs256, R"({"exp":"2000"})"), 0).status, Status::malformed);
    EXPECT_EQ(strict.verify(hs(secret, hs256, R"({"nbf":null})"), 0).status, Status::malformed);
    EXPECT_EQ(strict.verify(hs(secret, hs256, R"({"exp":1e400})"), 0).status, Status::malformed);
    // a forged token never gets as far as its claims
    EXPECT_EQ(
        strict.verify(hs("wrong secret wrong secret wrong!!", hs256, R"({"exp":1})"), 5).status,
        Status::bad_signature);
}

TEST(JwtClaims, IssuerAndAudience) {
    Policy p;
    p.iss = "https://auth.example";
    p.aud = "api";
    Verifier v = hs_verifier(p);
    auto status = [&](const std::string& payload) {
        return v.verify(hs(secret, hs256, payload), 0).status;
    };
    EXPECT_EQ(status(R"({"iss":"https://auth.example","aud":"api"})"), Status::valid);
    EXPECT_EQ(status(R"({"iss":"https://auth.example","aud":["web","api"]})"), Status::valid);
    EXPECT_EQ(status(R"({"iss":"https://auth.example","aud":["web"]})"), Status::bad_audience);
    EXPECT_EQ(status(R"({"iss":"https://auth.example","aud":"apix"})"), Status::bad_audience);
    EXPECT_EQ(status(R"({"iss":"https://auth.example","aud":[]})"), Status::bad_audience);
    EXPECT_EQ(status(R"({"iss":"https://auth.example","aud":[["api"]]})"), Status::bad_audience);
    EXPECT_EQ(status(R"({"iss":"https://auth.example"})"), Status::bad_audience);
    EXPECT_EQ(status(R"({"iss":"https://evil.example","aud":"api"})"), Status::bad_issuer);
    EXPECT_EQ(status(R"({"aud":"api"})"), Status::bad_issuer);
    EXPECT_EQ(status(R"({"iss":["https://auth.example"],"aud":"api"})"), Status::bad_issuer);
    // without a policy, iss and aud are not checked
    EXPECT_EQ(hs_verifier().verify(hs(secret, hs256, R"({"aud":"other"})"), 0).status,
              Status::valid);
}

TEST(JwtStatus, Names) {
    EXPECT_EQ(status_name(Status::valid), "valid");
    EXPECT_EQ(status_name(Status::not_yet_valid), "not_yet_valid");
    EXPECT_EQ(status_name(Status::unknown_kid), "unknown_kid");
}

TEST(JwtCache, BoundedLruUntilExpiry) {
    TokenCache c(2, 60);
    auto valid = [](std::optional<int64_t> exp) {
        auto r = std::make_shared<Result>();
        r->status = Status::valid;
        r->exp = exp;
        return std::shared_ptr<const Result>(r);
    };
    c.store("a", valid(std::nullopt), 100, 0);
    c.store("b", valid(130), 100, 10);  // until 140
    EXPECT_NE(c.find("a", 159), nullptr);
    EXPECT_EQ(c.find("a", 160), nullptr);  // the cache ttl
    EXPECT_NE(c.find("b", 139), nullptr);
    EXPECT_EQ(c.find("b", 140), nullptr);  // exp + leeway
    EXPECT_EQ(c.size(), 0u);
    c.store("x", valid(std::nullopt), 0, 0);
    c.store("y", valid(std::nullopt), 0, 0);
    EXPECT_NE(c.find("x", 1), nullptr);  // x is now the most recent
    c.store("z", valid(std::nullopt), 0, 0);
    EXPECT_EQ(c.size(), 2u);
    EXPECT_NE(c.find("x", 1), nullptr);
    EXPECT_EQ(c.find("y", 1), nullptr);
    EXPECT_NE(c.find("z", 1), nullptr);
    // only valid results, and not one that is already over
    auto bad = std::make_shared<Result>();
    bad->status = Status::expired;
    c.store("w", bad, 0, 0);
    EXPECT_EQ(c.find("w", 0), nullptr);
    c.store("v", valid(5), 10, 0);
    EXPECT_EQ(c.find("v", 10), nullptr);
}

TEST(JwtSource, BearerAndCookie) {
    EXPECT_EQ(bearer_token("Bearer abc.def.ghi", true), "abc.def.ghi");
    EXPECT_EQ(bearer_token("bearer   abc ", true), "abc");
    EXPECT_EQ(bearer_token("Basic dXNlcjpwYXNz", true), "");
    EXPECT_EQ(bearer_token("Bearerabc", true), "");
    EXPECT_EQ(bearer_token("Bearer", true), "");
    EXPECT_EQ(bearer_token("abc.def.ghi", false), "abc.def.ghi");
    EXPECT_EQ(bearer_token("Bearer x", false), "x");
    EXPECT_EQ(cookie_value("a=1; jwt=t.o.k; b=2", "jwt"), "t.o.k");
    EXPECT_EQ(cookie_value("JWT=first;jwt=second", "jwt"), "first");
    EXPECT_EQ(cookie_value("xjwt=1; jwtx=2", "jwt"), "");
    EXPECT_EQ(cookie_value("jwt=\"q\"", "jwt"), "q");
    EXPECT_EQ(cookie_value("", "jwt"), "");
    EXPECT_EQ(cookie_value("jwt", "jwt"), "");
}
