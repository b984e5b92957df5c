// Redis side of the identity store (layer: redis). One key per resolved credential:
//
//   PREFIX "identity:{" STORE ":" HEX "}"   (identity_key(); HEX: the credential's digest,
//                                             core::identity::credential_digest, 64 hex digits)
//
// holding core::identity::redis_value() ("u:42" or "a") with the resolution's TTL (SET PX).
// Nothing else: never the credential, nor which credentials a user has.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "core/hash.hpp"
#include "redis/reply.hpp"
#include "redis/script.hpp"

namespace throttle::redis {

std::string identity_key(std::string_view prefix, std::string_view store,
                         const core::Sha256Digest& digest);

// KEYS[1] = the identity key. Returns nil, or {value, remaining ttl in ms}: one round trip, so a
// host that reads a resolution another host stored keeps it no longer than Redis does.
const Script& identity_get_script();

struct IdentityGet {
    bool found = false;
    std::string value;  // core::identity::parse_redis_value() it
    int64_t ttl_ms = 0;
};
// False when the reply is not of the script's shape.
bool parse_identity_get(const Reply& reply, IdentityGet& out);

}  // namespace throttle::redis
