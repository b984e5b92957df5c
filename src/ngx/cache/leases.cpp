// Fill-lock ownership (see leases.hpp).
#include "ngx/cache/leases.hpp"

#include <sys/random.h>

#include <cstdio>

namespace throttle::ngx {
namespace {

// This worker's part of every token it makes (trivially destructible: no static destructor).
uint64_t token_seed = 0;
uint64_t token_count = 0;

uint64_t seed() noexcept {
    if (token_seed == 0) {
        uint64_t s = 0;
        if (getrandom(&s, sizeof s, GRND_NONBLOCK) != static_cast<ssize_t>(sizeof s)) {
            // No entropy yet (early boot): the pid and the time still tell workers apart.
            s = (static_cast<uint64_t>(ngx_random()) << 32) ^ static_cast<uint64_t>(now_ms());
        }
        token_seed = s | 1;  // never 0: 0 means "not read yet"
    }
    return token_seed;
}

}  // namespace

std::string cache_fill_token() {
    char buf[64];
    int n = std::snprintf(buf, sizeof buf, "%016llx.%lld.%llu",
                          static_cast<unsigned long long>(seed()), static_cast<long long>(ngx_pid),
                          static_cast<unsigned long long>(++token_count));
    return std::string(buf, n > 0 ? static_cast<size_t>(n) : 0);
}

}  // namespace throttle::ngx
