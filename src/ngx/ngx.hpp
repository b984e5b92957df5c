// The one place nginx's headers are included (layer: ngx).
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

extern ngx_module_t ngx_http_throttle_module;
}

namespace throttle::ngx {

// Wall-clock milliseconds from nginx's cached time (the clock zones and entries are kept in).
inline int64_t now_ms() noexcept {
    ngx_time_t* tp = ngx_timeofday();
    return static_cast<int64_t>(tp->sec) * 1000 + static_cast<int64_t>(tp->msec);
}

// Monotonic microseconds from the system's clock (not cached): for durations the metrics
// measure (nginx's cached milliseconds would put every Redis round trip in one bucket).
inline int64_t monotonic_us() noexcept {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

}  // namespace throttle::ngx
