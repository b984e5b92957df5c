// hiredis' reply to our Reply (layer: redis; only for files that include hiredis already).
#pragma once

#include <hiredis/hiredis.h>

#include "redis/reply.hpp"

namespace throttle::redis {

// Copies a hiredis reply tree (may throw std::bad_alloc).
void convert_reply(const redisReply* r, Reply& out);

}  // namespace throttle::redis
