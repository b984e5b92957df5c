// Loop over libevent (layer: redis).
#include "redis/libevent_loop.hpp"

#include <event2/event.h>

#include <new>
#include <utility>

namespace throttle::redis {
namespace {

class LibeventTimer final : public Timer {
   public:
    LibeventTimer(event_base* base, std::function<void()> handler) : handler_(std::move(handler)) {
        ev_ = evtimer_new(base, &LibeventTimer::fire, this);
        if (ev_ == nullptr) {
            throw std::bad_alloc();
        }
    }
    ~LibeventTimer() override { event_free(ev_); }
    LibeventTimer(const LibeventTimer&) = delete;
    LibeventTimer& operator=(const LibeventTimer&) = delete;

    void start(uint64_t ms) noexcept override {
        timeval tv;
        tv.tv_sec = static_cast<time_t>(ms / 1000);
        tv.tv_usec = static_cast<suseconds_t>((ms % 1000) * 1000);
        evtimer_add(ev_, &tv);
    }
    void stop() noexcept override { evtimer_del(ev_); }
    bool active() const noexcept override { return evtimer_pending(ev_, nullptr) != 0; }

   private:
    static void fire(evutil_socket_t, short, void* arg) noexcept {
        // The handler may destroy this timer: nothing touches `this` afterwards.
        static_cast<LibeventTimer*>(arg)->handler_();
    }

    std::function<void()> handler_;
    event* ev_;
};

// An event with no fd, made active by post(): libevent runs it in the current dispatch round.
class LibeventDeferred final : public Deferred {
   public:
    LibeventDeferred(event_base* base, std::function<void()> handler)
        : handler_(std::move(handler)) {
        ev_ = event_new(base, -1, 0, &LibeventDeferred::fire, this);
        if (ev_ == nullptr) {
            throw std::bad_alloc();
        }
    }
    ~LibeventDeferred() override { event_free(ev_); }
    LibeventDeferred(const LibeventDeferred&) = delete;
    LibeventDeferred& operator=(const LibeventDeferred&) = delete;

    void post() noexcept override {
        if (!posted_) {
            posted_ = true;
            event_active(ev_, EV_TIMEOUT, 0);
        }
    }
    void cancel() noexcept override {
        posted_ = false;
        event_del(ev_);
    }
    bool posted() const noexcept override { return posted_; }

   private:
    static void fire(evutil_socket_t, short, void* arg) noexcept {
        auto* self = static_cast<LibeventDeferred*>(arg);
        self->posted_ = false;
        self->handler_();  // may destroy this: nothing touches `self` afterwards
    }

    std::function<void()> handler_;
    event* ev_;
    bool posted_ = false;
};

// Two persistent events on the fd (level-triggered: libevent's default), added and deleted as
// the directions are wanted.
class LibeventWatch final : public IoWatch {
   public:
    LibeventWatch(event_base* base, int fd, std::function<void(int)> handler)
        : handler_(std::move(handler)) {
        read_ = event_new(base, fd, EV_READ | EV_PERSIST, &LibeventWatch::fire, this);
        write_ = event_new(base, fd, EV_WRITE | EV_PERSIST, &LibeventWatch::fire, this);
        if (read_ == nullptr || write_ == nullptr) {
            free_events();
            throw std::bad_alloc();
        }
    }
    ~LibeventWatch() override { free_events(); }
    LibeventWatch(const LibeventWatch&) = delete;
    LibeventWatch& operator=(const LibeventWatch&) = delete;

    void want_read(bool on) noexcept override { want(read_, reading_, on); }
    void want_write(bool on) noexcept override { want(write_, writing_, on); }

   private:
    static void want(event* ev, bool& state, bool on) noexcept {
        if (state == on) {
            return;
        }
        state = on;
        if (on) {
            event_add(ev, nullptr);
        } else {
            event_del(ev);
        }
    }
    void free_events() noexcept {
        if (read_ != nullptr) {
            event_free(read_);
        }
        if (write_ != nullptr) {
            event_free(write_);
        }
    }
    static void fire(evutil_socket_t, short what, void* arg) noexcept {
        // The handler may destroy this watch: nothing touches `arg` afterwards.
        static_cast<LibeventWatch*>(arg)->handler_((what & EV_READ) != 0 ? IoWatch::Readable
                                                                         : IoWatch::Writable);
    }

    std::function<void(int)> handler_;
    event* read_ = nullptr;
    event* write_ = nullptr;
    bool reading_ = false;
    bool writing_ = false;
};

}  // namespace

// The base's own monotonic clock (CLOCK_MONOTONIC_COARSE unless the base was created with
// EVENT_BASE_FLAG_PRECISE_TIMER), the one its timers run on.
uint64_t LibeventLoop::now_ms() noexcept {
    timeval tv;
    if (event_gettime_monotonic(base_, &tv) != 0) {
        return 0;
    }
    return static_cast<uint64_t>(tv.tv_sec) * 1000 + static_cast<uint64_t>(tv.tv_usec) / 1000;
}

std::unique_ptr<Timer> LibeventLoop::create_timer(std::function<void()> handler) {
    return std::make_unique<LibeventTimer>(base_, std::move(handler));
}

std::unique_ptr<Deferred> LibeventLoop::create_deferred(std::function<void()> handler) {
    return std::make_unique<LibeventDeferred>(base_, std::move(handler));
}

std::unique_ptr<IoWatch> LibeventLoop::watch(int fd, std::function<void(int event)> handler) {
    return std::make_unique<LibeventWatch>(base_, fd, std::move(handler));
}

}  // namespace throttle::redis
