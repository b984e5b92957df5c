// Verified identities from a session (layer: core): what the application may answer as a user
// id, the digest a credential is stored under, and the value Redis keeps for it. The table that
// holds resolutions in shared memory is identity_table.hpp. No nginx or hiredis header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/hash.hpp"

namespace throttle::core::identity {

// A user id the application answers (X-User-Id): 1 to 64 bytes, each printable ASCII without
// space (0x21..0x7e). Anything else (empty, longer, CR, LF, NUL, UTF-8, spaces) is refused.
inline constexpr size_t user_id_max = 64;
bool valid_user_id(std::string_view id) noexcept;

// What a credential resolved to.
enum class Kind : uint8_t {
    none = 0,   // not known (not resolved, or not stored)
    user,       // a verified user (id)
    anonymous,  // the application said it is no session (401/403, or 2xx without an id)
};

struct Resolution {
    Kind kind = Kind::none;
    std::string_view id;  // Kind::user only; points into the caller's storage
};

// The digest a credential is known by everywhere (shared memory, Redis, logs never): HMAC-SHA256
// under the deployment's secret, with a label of its own, so that it never equals the digest the
// response cache makes of the same value.
Sha256Digest credential_digest(const HmacSha256Key& key, std::string_view credential) noexcept;

// The value Redis keeps for a resolution: "u:" ID for a user, "a" for anonymous. parse_value()
// refuses anything else (a foreign or corrupted value is a miss). `id` points into `value`.
std::string redis_value(const Resolution& r);
Resolution parse_redis_value(std::string_view value) noexcept;

}  // namespace throttle::core::identity
