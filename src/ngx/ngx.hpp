// The one place nginx's headers are included (layer: ngx).
#pragma once

extern "C" {
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

extern ngx_module_t ngx_http_throttle_module;
}
