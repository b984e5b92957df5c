// The Redis client's event loop inside nginx (layer: ngx).
//
// Sockets: the connection layer (src/redis/connection.hpp) owns the fd (creates and closes it)
// and does the I/O itself, plain or TLS. watch() borrows an nginx connection for the fd, with
// level-triggered read/write events added and deleted as the connection layer wants them
// (level, not nginx's usual edge-triggered epoll: nothing is lost if a handler stops reading
// early, and a direction not wanted costs no wake-up); destroying the watch deletes the events
// and frees the nginx connection without closing the fd. The socket is therefore closed exactly
// once, by the connection layer, after its watch is gone.
//
// Timers: ngx_event_t timers, cancelable so that a pending one never delays a graceful worker
// exit (a request waiting on Redis keeps the worker itself: request.hpp's keep_worker()).
//
// Graceful exit: each socket is c->idle; nginx calls its read handler with c->close set when
// the worker starts shutting down. The handler only notes it (the exit handler runs from a
// posted event: it may close the connection); c->close is cleared, the socket stays.
#include "ngx/redis_loop.hpp"

#include <new>
#include <utility>

namespace throttle::ngx {
namespace {

// An nginx event that calls a handler. Its data is the loop's ident connection (nginx's debug
// log reads an fd there); the handler is found through the slot.
class EventSlot {
   public:
    EventSlot(RedisLoop* loop, ngx_log_t* log, ngx_connection_t* ident,
              std::function<void()> handler)
        : loop_(loop), handler_(std::move(handler)) {
        ngx_memzero(&slot_.ev, sizeof(slot_.ev));
        slot_.ev.handler = &EventSlot::fire;
        slot_.ev.data = ident;
        slot_.ev.log = log;
        slot_.owner = this;
    }
    EventSlot(const EventSlot&) = delete;
    EventSlot& operator=(const EventSlot&) = delete;

    ngx_event_t& ev() noexcept { return slot_.ev; }
    const ngx_event_t& ev() const noexcept { return slot_.ev; }

   private:
    struct Slot {
        ngx_event_t ev;  // first member: an ngx_event_t* is a Slot*
        EventSlot* owner;
    };

    // The handler may destroy the owner: nothing touches it afterwards.
    static void fire(ngx_event_t* ev) noexcept {
        EventSlot* self = reinterpret_cast<Slot*>(ev)->owner;
        if (ngx_exiting) {
            self->loop_->exit_noticed();
        }
        self->handler_();
    }

    Slot slot_;
    RedisLoop* loop_;
    std::function<void()> handler_;
};

class Timer final : public redis::Timer {
   public:
    Timer(RedisLoop* loop, ngx_log_t* log, ngx_connection_t* ident, std::function<void()> handler)
        : event_(loop, log, ident, std::move(handler)) {
        event_.ev().cancelable = 1;  // a pending timer never delays a graceful exit
    }
    ~Timer() override { stop(); }

    void start(uint64_t ms) noexcept override {
        // ngx_add_timer() keeps an armed timer whose new expiry is within
        // NGX_TIMER_LAZY_DELAY (300 ms) of the old one: delete it first so that re-arming
        // to an earlier deadline takes effect.
        stop();
        ngx_add_timer(&event_.ev(), ngx_msec_t(ms));
    }
    void stop() noexcept override {
        if (event_.ev().timer_set) {
            ngx_del_timer(&event_.ev());
        }
    }
    bool active() const noexcept override { return event_.ev().timer_set; }

   private:
    EventSlot event_;
};

// A posted event: nginx runs ngx_posted_events after the events of the current turn.
class Deferred final : public redis::Deferred {
   public:
    Deferred(RedisLoop* loop, ngx_log_t* log, ngx_connection_t* ident,
             std::function<void()> handler)
        : event_(loop, log, ident, std::move(handler)) {}
    ~Deferred() override { cancel(); }

    void post() noexcept override {
        if (!event_.ev().posted) {
            ngx_post_event(&event_.ev(), &ngx_posted_events);
        }
    }
    void cancel() noexcept override {
        if (event_.ev().posted) {
            ngx_delete_posted_event(&event_.ev());
        }
    }
    bool posted() const noexcept override { return event_.ev().posted; }

   private:
    EventSlot event_;
};

// A watched socket: an nginx connection borrowed for the fd (ngx_get_connection), its read
// and write events added and deleted as the directions are wanted, level-triggered (the
// connection layer reads until the socket would block anyway). Destroying it deletes the events
// and frees the connection without closing the fd: the connection layer owns the socket.
class Watch final : public redis::IoWatch {
   public:
    Watch(RedisLoop* loop, std::function<void(int)> handler) noexcept
        : loop_(loop), handler_(std::move(handler)) {}
    ~Watch() override { release(); }
    Watch(const Watch&) = delete;
    Watch& operator=(const Watch&) = delete;

    bool take(int fd, ngx_log_t* log) noexcept {
        c_ = ngx_get_connection(ngx_socket_t(fd), log);
        if (c_ == nullptr) {
            return false;  // ngx_get_connection() logged why
        }
        c_->data = this;
        c_->idle = 1;  // told when the worker starts a graceful exit (see the top)
        c_->number = ngx_atomic_fetch_add(ngx_connection_counter, 1);
        c_->read->handler = &Watch::read_handler;
        c_->write->handler = &Watch::write_handler;
        c_->read->log = log;
        c_->write->log = log;
        return true;
    }

    void want_read(bool on) noexcept override { want(c_->read, NGX_READ_EVENT, on); }
    void want_write(bool on) noexcept override { want(c_->write, NGX_WRITE_EVENT, on); }

   private:
    static void want(ngx_event_t* ev, ngx_int_t event, bool on) noexcept {
        if (on && !ev->active) {
            if (ngx_add_event(ev, event, NGX_LEVEL_EVENT) != NGX_OK) {
                // The command then reaches its deadline and the client drops the connection.
                ngx_log_error(NGX_LOG_ALERT, ev->log, 0, "throttle: redis: cannot add %s event",
                              event == NGX_READ_EVENT ? "read" : "write");
            }
        } else if (!on && ev->active) {
            ngx_del_event(ev, event, 0);
        }
    }

    // The handler may destroy the watch, and with it this connection: touch nothing after.
    static void read_handler(ngx_event_t* rev) noexcept {
        auto* c = static_cast<ngx_connection_t*>(rev->data);
        auto* self = static_cast<Watch*>(c->data);
        if (ngx_exiting) {
            self->loop_->exit_noticed();
        }
        if (c->close) {
            c->close = 0;  // ngx_close_idle_connections(): the exit handler decides
            return;
        }
        self->handler_(redis::IoWatch::Readable);
    }

    static void write_handler(ngx_event_t* wev) noexcept {
        auto* c = static_cast<ngx_connection_t*>(wev->data);
        auto* self = static_cast<Watch*>(c->data);
        if (ngx_exiting) {
            self->loop_->exit_noticed();
        }
        self->handler_(redis::IoWatch::Writable);
    }

    void release() noexcept {
        if (c_ == nullptr) {
            return;
        }
        ngx_connection_t* c = c_;
        c_ = nullptr;
        want(c->read, NGX_READ_EVENT, false);
        want(c->write, NGX_WRITE_EVENT, false);
        if (c->read->posted) {
            ngx_delete_posted_event(c->read);
        }
        if (c->write->posted) {
            ngx_delete_posted_event(c->write);
        }
        if (c->read->timer_set) {
            ngx_del_timer(c->read);
        }
        if (c->write->timer_set) {
            ngx_del_timer(c->write);
        }
        c->data = nullptr;
        // ngx_free_connection() still reads c->fd (ngx_cycle->files[c->fd] for poll/select);
        // fd = -1 afterwards marks the connection unused, as ngx_close_connection() does, so
        // that stale events already returned by epoll_wait are ignored.
        ngx_free_connection(c);
        c->fd = (ngx_socket_t)-1;
    }

    RedisLoop* loop_;
    std::function<void(int)> handler_;
    ngx_connection_t* c_ = nullptr;
};

}  // namespace

RedisLoop::RedisLoop(ngx_log_t* log) noexcept : log_(log) {
    ngx_memzero(&ident_, sizeof(ident_));
    ident_.fd = (ngx_socket_t)-1;
}

std::unique_ptr<redis::Timer> RedisLoop::create_timer(std::function<void()> handler) {
    return std::make_unique<Timer>(this, log_, &ident_, std::move(handler));
}

std::unique_ptr<redis::Deferred> RedisLoop::create_deferred(std::function<void()> handler) {
    return std::make_unique<Deferred>(this, log_, &ident_, std::move(handler));
}

void RedisLoop::on_exit(std::function<void()> handler) {
    exit_ = create_deferred(std::move(handler));
}

void RedisLoop::exit_noticed() noexcept {
    if (exit_noticed_) {
        return;
    }
    exit_noticed_ = true;
    if (exit_) {
        exit_->post();
    }
}

std::unique_ptr<redis::IoWatch> RedisLoop::watch(int fd, std::function<void(int)> handler) {
    auto w = std::make_unique<Watch>(this, std::move(handler));
    if (!w->take(fd, log_)) {
        return nullptr;
    }
    return w;
}

}  // namespace throttle::ngx
