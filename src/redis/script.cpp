// A script's name is the SHA-1 of its source, as Redis computes it (layer: redis).
#include "redis/script.hpp"

#include <utility>

#include "core/hash.hpp"

namespace throttle::redis {

Script::Script(std::string source)
    : source_(std::move(source)), sha_(core::hex(core::sha1(source_.data(), source_.size()))) {}

}  // namespace throttle::redis
