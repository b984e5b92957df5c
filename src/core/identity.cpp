// Verified identities from a session (see identity.hpp).
#include "core/identity.hpp"

namespace throttle::core::identity {

bool valid_user_id(std::string_view id) noexcept {
    if (id.empty() || id.size() > user_id_max) {
        return false;
    }
    for (char c : id) {
        auto b = static_cast<unsigned char>(c);
        if (b < 0x21 || b > 0x7e) {
            return false;
        }
    }
    return true;
}

Sha256Digest credential_digest(const HmacSha256Key& key, std::string_view credential) noexcept {
    static constexpr char label[] = "throttle-identity\n";
    return key.mac(label, sizeof(label) - 1, credential.data(), credential.size());
}

std::string redis_value(const Resolution& r) {
    if (r.kind == Kind::user) {
        std::string v = "u:";
        v.append(r.id);
        return v;
    }
    return "a";
}

Resolution parse_redis_value(std::string_view value) noexcept {
    if (value == "a") {
        return {Kind::anonymous, {}};
    }
    if (value.size() > 2 && value.substr(0, 2) == "u:" && valid_user_id(value.substr(2))) {
        return {Kind::user, value.substr(2)};
    }
    return {};
}

}  // namespace throttle::core::identity
