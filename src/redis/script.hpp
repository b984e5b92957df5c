// A Lua script for EVALSHA: its source and SHA-1, the name Redis knows it by (layer: redis).
#pragma once

#include <string>

namespace throttle::redis {

class Script {
   public:
    // sha() is core::hex(core::sha1(source)): 40 lowercase hex digits, as Redis prints them.
    // May throw std::bad_alloc.
    explicit Script(std::string source);

    const std::string& source() const noexcept { return source_; }
    const std::string& sha() const noexcept { return sha_; }

   private:
    std::string source_;
    std::string sha_;
};

}  // namespace throttle::redis
