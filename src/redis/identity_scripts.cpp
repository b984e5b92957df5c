// Redis side of the identity store (see identity_scripts.hpp).
#include "redis/identity_scripts.hpp"

#include "redis/scripts.hpp"

namespace throttle::redis {

std::string identity_key(std::string_view prefix, std::string_view store,
                         const core::Sha256Digest& digest) {
    std::string p(prefix);
    p.append("identity:");
    return base_key(p, store, core::hex(digest));
}

const Script& identity_get_script() {
    static const Script* script = new Script(R"lua(#!lua
local v = redis.call('GET', KEYS[1])
if not v then
  return false
end
return {v, redis.call('PTTL', KEYS[1])}
)lua");
    return *script;
}

bool parse_identity_get(const Reply& reply, IdentityGet& out) {
    out = IdentityGet{};
    if (reply.is_nil()) {
        return true;
    }
    if (reply.type != Reply::Type::Array || reply.elements.size() != 2 ||
        reply.elements[0].type != Reply::Type::String ||
        reply.elements[1].type != Reply::Type::Integer) {
        return false;
    }
    out.found = reply.elements[1].integer > 0;  // -1 (no ttl) or -2 (gone): not ours to keep
    out.value = reply.elements[0].str;
    out.ttl_ms = reply.elements[1].integer;
    return true;
}

}  // namespace throttle::redis
