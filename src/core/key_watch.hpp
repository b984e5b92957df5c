// A zone key that is empty for every request carrying credentials: typically a wrong cookie
// name (`$cookie_session_id` where the application sets `sessionid`), which quietly makes a
// per-user zone apply to nobody. Pure C++, no nginx header (layer: core).
//
// Which zones. credential_sources() reads the key as written in the configuration and says
// which credential headers it reads directly: `$cookie_NAME` and `$http_cookie` read Cookie,
// `$http_authorization` reads Authorization, the verified identities `$throttle_user_id` and
// `$throttle_jwt_claim_*` read either. A key built elsewhere (a map, a set) is not looked
// through: `map $cookie_sessionid $anon_ip { "" $binary_remote_addr; default ""; }` makes a
// key that is meant to be empty whenever a session cookie is sent, and is never watched.
//
// When. EmptyKeyWatch counts, per worker and zone, the requests that carried one of the
// headers the key reads and still got an empty key. The first non-empty key proves the name
// right and ends the watch for good (no cost after that but one branch); `threshold` empty
// ones before any non-empty one say it once. A site whose visitors all carry some other cookie
// (Django's csrftoken) before the first signed-in user arrives could be told so once, at warn.
#pragma once

#include <cstdint>
#include <string_view>

namespace throttle::core {

enum CredentialSource : uint8_t {
    credential_cookie = 1,
    credential_authorization = 2,
};

// A mask of CredentialSource; 0 when the key reads no credential directly. May throw
// std::bad_alloc.
uint8_t credential_sources(std::string_view key);

struct EmptyKeyWatch {
    static constexpr uint32_t threshold = 100;

    uint8_t sources = 0;  // credential_sources() of the key; 0: not watched
    bool done = false;    // a non-empty key was seen, or the warning was given
    uint32_t empty = 0;   // credentialed requests with an empty key so far

    bool watching() const noexcept { return sources != 0 && !done; }

    // One request the zone was applied to. `carried`: a mask of the credential headers it
    // sent. Returns true exactly once: when the threshold-th empty key is seen before any
    // non-empty one (the caller logs).
    bool observe(uint8_t carried, bool key_empty) noexcept {
        if (!watching()) {
            return false;
        }
        if (!key_empty) {
            done = true;
            return false;
        }
        if ((carried & sources) == 0) {
            return false;
        }
        if (++empty < threshold) {
            return false;
        }
        done = true;
        return true;
    }
};

}  // namespace throttle::core
