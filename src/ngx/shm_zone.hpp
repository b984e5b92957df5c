// Shared-memory zones that give one table every page their slab pool has left (the cache's
// local tier, the identity zone, the limit zones). Layer: ngx.
//
// Contract:
//   - shm_zone_fresh() is for a zone's first init (data == NULL): it sets the pool's log
//     context to ` in WHAT "NAME"` (slab errors then name the zone), allocates `header` zeroed
//     bytes for the caller's own record (the caller stores it in pool->data), and hands every
//     page left over as one contiguous run in mem/bytes (mem null when no page is left: the
//     caller reports its zone too small). Null (and nothing to report beyond NGX_ERROR) when the
//     zone already exists (Windows only) or the pool cannot give the header.
//   - keep_table<Table>() is for a reload that keeps a zone (same name and size): under the
//     pool's lock, the table as laid out in mem, or laid out afresh there when another module
//     build laid it out (Table::attach gives null then). Null only when Table::create fails.
#pragma once

#include "ngx/ngx.hpp"

namespace throttle::ngx {

// The header of a zone whose table's place is all it records (pool->data).
struct ShmRegion {
    void* mem;
    size_t bytes;
};

void* shm_zone_fresh(ngx_shm_zone_t* shm_zone, const char* what, size_t header, void*& mem,
                     size_t& bytes) noexcept;

template <typename Table>
Table* keep_table(ngx_slab_pool_t* pool, void* mem, size_t bytes) noexcept {
    ngx_shmtx_lock(&pool->mutex);
    Table* table = Table::attach(mem, bytes);
    if (table == nullptr) {
        table = Table::create(mem, bytes);
    }
    ngx_shmtx_unlock(&pool->mutex);
    return table;
}

}  // namespace throttle::ngx
