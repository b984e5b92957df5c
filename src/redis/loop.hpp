// The event-loop interface the Redis client is written against (layer: redis).
//
// Two implementations: LibeventLoop (src/redis/libevent_loop.hpp, for tests and command-line
// tools) and the nginx one (src/ngx/redis_loop.hpp). The loop knows sockets, timers and
// end-of-turn work, nothing of Redis or hiredis: the I/O itself (plain or TLS) is the
// connection layer's (connection.hpp), the same code under both loops.
// Everything here is single-threaded: all calls and all callbacks happen on the loop's thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

namespace throttle::redis {

// A one-shot timer. start() (re)arms it, replacing any earlier expiry; stop() disarms it;
// destroying it disarms it. The handler runs from the loop, never from inside start().
class Timer {
   public:
    virtual ~Timer() = default;
    virtual void start(uint64_t ms) noexcept = 0;
    virtual void stop() noexcept = 0;
    virtual bool active() const noexcept = 0;
};

// Work for the end of the current event-loop turn: after the events being handled now, before
// the loop waits again (nginx: a posted event). post() while posted does nothing; the handler
// runs from the loop, never from inside post(), and may post again (it then runs again in the
// same turn's end). cancel() or destroying it drops a pending run.
class Deferred {
   public:
    virtual ~Deferred() = default;
    virtual void post() noexcept = 0;
    virtual void cancel() noexcept = 0;
    virtual bool posted() const noexcept = 0;
};

// A watch on one socket: while a direction is wanted and the socket is ready for it, the
// handler is called with that direction (one call per direction and readiness). The socket
// may be watched edge-triggered: a handler must read (or write) until the socket would block
// before it can count on being called again. The handler may destroy the watch. Destroying it
// stops watching; it never closes the fd (its owner does, after).
class IoWatch {
   public:
    enum Event : uint8_t { Readable = 1, Writable = 2 };
    virtual ~IoWatch() = default;
    virtual void want_read(bool on) noexcept = 0;
    virtual void want_write(bool on) noexcept = 0;
};

class Loop {
   public:
    virtual ~Loop() = default;

    // Monotonic milliseconds, the clock timers run on (nginx: the cached ngx_current_msec).
    virtual uint64_t now_ms() noexcept = 0;
    // Monotonic microseconds, for measuring durations (the metrics' latency histograms): by
    // default the timers' clock, nginx's loop reads the system's monotonic clock.
    virtual uint64_t now_us() noexcept { return now_ms() * 1000; }

    // A timer whose expiry calls `handler` (which must not throw). May throw std::bad_alloc.
    virtual std::unique_ptr<Timer> create_timer(std::function<void()> handler) = 0;

    // Work run at the end of a turn when posted (`handler` must not throw). May throw
    // std::bad_alloc.
    virtual std::unique_ptr<Deferred> create_deferred(std::function<void()> handler) = 0;

    // Watches `fd` (a non-blocking socket), wanting neither direction yet; `handler` (which
    // must not throw) gets IoWatch::Readable or IoWatch::Writable. nullptr when the loop cannot
    // take the socket (nothing to release). May throw std::bad_alloc.
    virtual std::unique_ptr<IoWatch> watch(int fd, std::function<void(int event)> handler) = 0;
};

}  // namespace throttle::redis
