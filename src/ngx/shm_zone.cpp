// A fresh zone's log context, header and table pages; contract in shm_zone.hpp.
#include "ngx/shm_zone.hpp"

namespace throttle::ngx {

void* shm_zone_fresh(ngx_shm_zone_t* shm_zone, const char* what, size_t header, void*& mem,
                     size_t& bytes) noexcept {
    auto* pool = reinterpret_cast<ngx_slab_pool_t*>(shm_zone->shm.addr);
    mem = nullptr;
    bytes = 0;
    if (shm_zone->shm.exists) {  // Windows only
        return nullptr;
    }
    // " in WHAT \"NAME\"\0"
    size_t len = sizeof(" in  \"\"") + ngx_strlen(what) + shm_zone->shm.name.len;
    pool->log_ctx = static_cast<u_char*>(ngx_slab_alloc(pool, len));
    void* head = ngx_slab_calloc(pool, header);
    if (pool->log_ctx == nullptr || head == nullptr) {
        return nullptr;
    }
    ngx_sprintf(pool->log_ctx, " in %s \"%V\"%Z", what, &shm_zone->shm.name);
    // The table takes every page left: one contiguous run of whole pages.
    bytes = pool->pfree * ngx_pagesize;
    mem = ngx_slab_alloc(pool, bytes);
    if (mem == nullptr) {
        bytes = 0;
    }
    return head;
}

}  // namespace throttle::ngx
