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

}  // namespace throttle::ngx
