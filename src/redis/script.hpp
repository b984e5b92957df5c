// A Lua script for EVALSHA: its source and SHA-1, the name Redis knows it by (layer: redis).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

namespace throttle::redis {

using Sha1Digest = std::array<uint8_t, 20>;

Sha1Digest sha1(const void* data, size_t len) noexcept;
std::string sha1_hex(std::string_view data);  // 40 lowercase hex digits, as Redis prints them

class Script {
   public:
    explicit Script(std::string source) : source_(std::move(source)), sha_(sha1_hex(source_)) {}

    const std::string& source() const noexcept { return source_; }
    const std::string& sha() const noexcept { return sha_; }

   private:
    std::string source_;
    std::string sha_;
};

}  // namespace throttle::redis
