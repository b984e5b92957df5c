// Loop over libevent: persistent read/write events for the socket, libevent timers, and
// fd-less events for end-of-turn work (layer: redis). Used by the client's tests and command-line
// tools; the nginx module does not link it (see ./config).
#pragma once

#include "redis/loop.hpp"

struct event_base;

namespace throttle::redis {

class LibeventLoop final : public Loop {
   public:
    // Does not take ownership of `base`.
    explicit LibeventLoop(event_base* base) noexcept : base_(base) {}

    uint64_t now_ms() noexcept override;
    std::unique_ptr<Timer> create_timer(std::function<void()> handler) override;
    std::unique_ptr<Deferred> create_deferred(std::function<void()> handler) override;
    std::unique_ptr<IoWatch> watch(int fd, std::function<void(int event)> handler) override;

    event_base* base() const noexcept { return base_; }

   private:
    event_base* base_;
};

}  // namespace throttle::redis
