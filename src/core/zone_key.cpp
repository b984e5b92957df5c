// Zone keys: see zone_key.hpp.
#include "core/zone_key.hpp"

#include <cstring>

namespace throttle::core {
namespace {

constexpr char zone_key_label[] = "throttle-zone-key";  // sizeof includes the NUL separator
constexpr char zone_id_label[] = "throttle-zone-id";

KeyDigest truncate(const Sha256Digest& d) noexcept {
    KeyDigest out;
    std::memcpy(out.data(), d.data(), out.size());
    return out;
}

}  // namespace

ZoneKeyer::ZoneKeyer() noexcept : key_(nullptr, 0) {}

ZoneKeyer::ZoneKeyer(const void* secret, size_t secret_len, std::string_view zone) noexcept
    : key_(nullptr, 0) {
    HmacSha256Key master(secret, secret_len);
    Sha256Digest k = master.mac(zone_key_label, sizeof zone_key_label, zone.data(), zone.size());
    key_ = HmacSha256Key(k.data(), k.size());
    fingerprint_ =
        truncate(master.mac(zone_id_label, sizeof zone_id_label, zone.data(), zone.size()));
}

KeyDigest ZoneKeyer::digest(const void* key, size_t len) const noexcept {
    return truncate(key_.mac(key, len));
}

}  // namespace throttle::core
