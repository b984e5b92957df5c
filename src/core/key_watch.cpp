// Which credentials a zone key reads; semantics in key_watch.hpp.
// Pure C++, no nginx header (layer: core).
#include "core/key_watch.hpp"

#include <string>
#include <vector>

#include "core/cache_identity.hpp"
#include "core/http_text.hpp"

namespace throttle::core {

uint8_t credential_sources(std::string_view key) {
    uint8_t mask = 0;
    // $cookie_NAME and $http_NAME, parsed as nginx does (the cache's identity check's parser).
    for (const cache::IdentityVariable& v : cache::identity_variables(key)) {
        if (v.kind == cache::IdentityVariable::Kind::cookie) {
            mask |= credential_cookie;
        } else if (v.name == "authorization") {
            mask |= credential_authorization;
        }
    }
    // What that parser leaves out: $http_cookie (it cannot be ambiguous, so the cache skips
    // it) and the module's verified identities, read from either header.
    std::string lower(key);
    for (char& c : lower) {
        c = http::lower(c);
    }
    for (std::string_view cookie : {"$http_cookie", "${http_cookie}"}) {
        size_t at = lower.find(cookie);
        while (at != std::string::npos) {
            size_t end = at + cookie.size();
            bool braced = cookie.back() == '}';
            char next = end < lower.size() ? lower[end] : '\0';
            bool more = (next >= 'a' && next <= 'z') || (next >= '0' && next <= '9') || next == '_';
            if (braced || !more) {
                mask |= credential_cookie;
            }
            at = lower.find(cookie, end);
        }
    }
    for (std::string_view id : {"$throttle_user_id", "${throttle_user_id}", "$throttle_jwt_claim_",
                                "${throttle_jwt_claim_"}) {
        if (lower.find(id) != std::string::npos) {
            mask |= credential_cookie | credential_authorization;
        }
    }
    return mask;
}

}  // namespace throttle::core
