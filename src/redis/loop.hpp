// The event-loop interface the Redis client is written against (layer: redis).
//
// Two implementations: LibeventLoop (src/redis/libevent_loop.hpp, hiredis' stock libevent
// adapter, for tests and command-line tools) and the nginx one (src/ngx/redis_loop.hpp).
// Everything here is single-threaded: all calls and all callbacks happen on the loop's thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

struct redisAsyncContext;

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

    // Attaches a freshly created context (ac->c.fd valid, ac->ev.data null): installs the
    // ev.addRead/delRead/addWrite/delWrite hooks and starts watching the socket for both read
    // and write (write readiness completes the non-blocking connect), calling
    // redisAsyncHandleRead/Write when it is ready. Detaching is hiredis' ev.cleanup hook, which
    // hiredis calls when it frees the context, before it closes the socket: it must release
    // what attach() took and must not close the fd (hiredis does). Returns false (nothing
    // attached, nothing to release) when the loop cannot take the socket.
    virtual bool attach(redisAsyncContext* ac) noexcept = 0;
};

}  // namespace throttle::redis
