// The Redis client's event loop inside nginx (layer: ngx): each Redis socket wrapped in an
// nginx connection (ngx_get_connection), level-triggered read/write events that call the
// connection layer's handler, ngx_event_t timers, and posted events for end-of-turn work
// (Deferred). One per worker, created in init_process;
// it must outlive every redis::Client that uses it.
//
// Graceful exit: the Redis sockets are marked idle (c->idle), like nginx's own idle keep-alive
// connections, so that nginx tells the loop when the worker starts shutting down
// (ngx_close_idle_connections()); the loop then calls the exit handler, once, at the end of
// that turn -- or of the first turn with a Redis event or timer after ngx_exiting is set, if it
// had no socket then. The sockets are not closed by nginx: the handler decides.
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
    uint64_t now_us() noexcept override { return static_cast<uint64_t>(monotonic_us()); }
    std::unique_ptr<redis::Timer> create_timer(std::function<void()> handler) override;
    std::unique_ptr<redis::Deferred> create_deferred(std::function<void()> handler) override;
    std::unique_ptr<redis::IoWatch> watch(int fd, std::function<void(int event)> handler) override;

    // The handler of the worker's graceful exit (see above). May throw std::bad_alloc.
    void on_exit(std::function<void()> handler);
    // The worker is exiting: runs the exit handler at the end of this turn, unless it did.
    void exit_noticed() noexcept;

   private:
    ngx_log_t* log_;
    std::unique_ptr<redis::Deferred> exit_;
    bool exit_noticed_ = false;
    // What timer events' data points at: nginx's debug log reads the fd of ev->data as if it
    // were a connection (ngx_event_ident), so give it one, with no socket.
    ngx_connection_t ident_;
};

}  // namespace throttle::ngx
