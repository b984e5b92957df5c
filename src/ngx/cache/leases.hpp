// Fill-lock ownership (layer: ngx). The lock's value is an owner token unique per fill; only its
// owner stores under or releases it (the scripts check, redis/cache_scripts.hpp).
#pragma once

#include <string>

#include "ngx/ngx.hpp"

namespace throttle::ngx {

// A new owner token: this worker's random seed (16 hex digits, read once per worker), its pid
// and a counter, "SEED.PID.N". May throw std::bad_alloc.
std::string cache_fill_token();

}  // namespace throttle::ngx
