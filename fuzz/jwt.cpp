// Fuzz target: what a client sends as a JWT, and what a JWKS file holds -> core::jwt.
//
// Input: byte 0 picks the mode, the rest is the bytes.
//   0: the bytes are a token, verified against an HMAC key and against the RFC 7515 A.3 EC
//      key (JWKS): never `valid` for the HMAC key (nobody can forge a MAC), `valid` for the EC
//      key only with the RFC's own signed input (a seed; nobody can forge an ECDSA signature).
//   1: the bytes are a payload, base64url'd under an HS256 header and signed with the key: the
//      strict JSON parser meets arbitrary bytes behind a good signature; the status is valid
//      or malformed (or expired/not_yet_valid from exp/nbf), a second verification agrees, and
//      a valid token's claims are what the cache hands back.
//   2: the bytes are a JWKS document: KeySet::jwks() either throws std::runtime_error or gives
//      keys that verify nothing the fuzzer wrote.
#include "core/jwt.hpp"

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>

using namespace throttle::core::jwt;

#define FUZZ_CHECK(cond)      \
    do {                      \
        if (!(cond)) {        \
            __builtin_trap(); \
        }                     \
    } while (0)

namespace {

const std::string secret = "fuzz-secret-0123456789-abcdefghijklmnop";
const char* jwks_text =
    R"({"keys":[{"kty":"EC","crv":"P-256","kid":"k","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",)"
    R"("y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]})";

const std::string rfc_es_input =
    "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNv"
    "bS9pc19yb290Ijp0cnVlfQ";

std::string hs256(std::string_view payload) {
    std::string input = base64url_encode(R"({"alg":"HS256"})") + "." + base64url_encode(payload);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
         reinterpret_cast<const unsigned char*>(input.data()), input.size(), mac, &len);
    return input + "." + base64url_encode(std::string(reinterpret_cast<char*>(mac), len));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 1) {
        return 0;
    }
    static const Verifier hs(KeySet(Key::hmac(secret)), {});
    static const Verifier ec(KeySet::jwks(jwks_text), {});
    std::string_view bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
    switch (data[0] % 3) {
        case 0:
            FUZZ_CHECK(hs.verify(bytes, 0).status != Status::valid);
            // ECDSA signatures are malleable ((r, n - s) verifies too): what is fixed is the
            // signed input, the RFC's (a seed).
            FUZZ_CHECK(ec.verify(bytes, 0).status != Status::valid ||
                       bytes.substr(0, bytes.rfind('.')) == rfc_es_input);
            break;
        case 1: {
            std::string token = hs256(bytes);
            Result r = hs.verify(token, 0);
            FUZZ_CHECK(r.status == Status::valid || r.status == Status::malformed ||
                       r.status == Status::expired || r.status == Status::not_yet_valid ||
                       (token.size() > max_token_size && r.status == Status::malformed));
            Result again = hs.verify(token, 0);
            FUZZ_CHECK(again.status == r.status && again.claims == r.claims);
            if (r.status == Status::valid) {
                TokenCache cache(4, 60);
                cache.store(token, std::make_shared<Result>(r), 0, 0);
                auto hit = cache.find(token, 0);
                FUZZ_CHECK(r.exp.has_value() ? (hit == nullptr) == (*r.exp <= 0) : hit != nullptr);
                FUZZ_CHECK(hit == nullptr || hit->claims == r.claims);
            }
            break;
        }
        default:
            try {
                Verifier v(KeySet::jwks(bytes), {});
                FUZZ_CHECK(v.verify(hs256("{}"), 0).status != Status::valid);
            } catch (const std::runtime_error&) {
            }
            break;
    }
    return 0;
}
