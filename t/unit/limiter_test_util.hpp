// Helpers shared by the algorithm tests (sliding_window_test.cpp, gcra_test.cpp).
#pragma once

#include <cstdint>

#include "core/limiter.hpp"

namespace throttle::core::test {

// One request: admitted ones are recorded.
inline bool hit(const Policy& p, State& s, int64_t now) {
    Decision d = evaluate(p, s, now);
    if (d.allowed) {
        record(p, s, now);
    }
    return d.allowed;
}

// Requests at one instant until the first refusal (at most `cap`); returns the admitted count.
inline uint64_t burst_at(const Policy& p, State& s, int64_t now, uint64_t cap = 10000000) {
    uint64_t n = 0;
    while (n < cap && hit(p, s, now)) {
        ++n;
    }
    return n;
}

// A small deterministic PRNG for randomized cases.
inline uint64_t splitmix64(uint64_t& x) {
    uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

}  // namespace throttle::core::test
