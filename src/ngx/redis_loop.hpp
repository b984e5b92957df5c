// The Redis client's event loop inside nginx (layer: ngx): the hiredis socket wrapped in an
// nginx connection (ngx_get_connection), level-triggered read/write events that call
// redisAsyncHandleRead/Write, ngx_event_t timers, and posted events for end-of-turn work
// (Deferred). One per worker, created in init_process;
// it must outlive every redis::Client that uses it.
#pragma once

#include "ngx/ngx.hpp"
#include "redis/loop.hpp"

namespace throttle::ngx {

class RedisLoop final : public redis::Loop {
   public:
    explicit RedisLoop(ngx_log_t* log) noexcept;
    RedisLoop(const RedisLoop&) = delete;
    RedisLoop& operator=(const RedisLoop&) = delete;

    uint64_t now_ms() noexcept override { return uint64_t(ngx_current_msec); }
    std::unique_ptr<redis::Timer> create_timer(std::function<void()> handler) override;
    std::unique_ptr<redis::Deferred> create_deferred(std::function<void()> handler) override;
    bool attach(redisAsyncContext* ac) noexcept override;

   private:
    ngx_log_t* log_;
    // What timer events' data points at: nginx's debug log reads the fd of ev->data as if it
    // were a connection (ngx_event_ident), so give it one, with no socket.
    ngx_connection_t ident_;
};

}  // namespace throttle::ngx
