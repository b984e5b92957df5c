// The Redis client's event loop inside nginx (layer: ngx).
//
// Socket: hiredis owns the fd (creates and closes it). attach() borrows an nginx connection
// for it; hiredis' ev hooks add and delete level-triggered read/write events on it (level, not
// nginx's usual edge-triggered epoll: hiredis reads at most 16 KB per call and does not read
// until EAGAIN, so an edge could be lost); cleanup -- hiredis calls it when freeing the context,
// before closing the socket -- deletes the events and frees the connection without closing the
// fd. The socket is therefore closed exactly once, by hiredis.
//
// Timers: ngx_event_t timers, cancelable so that a pending one never delays a graceful worker
// exit (a request waiting on Redis keeps the worker itself: request.hpp's keep_worker()).
//
// Graceful exit: each socket is c->idle; nginx calls its read handler with c->close set when
// the worker starts shutting down. The handler only notes it (the exit handler runs from a
// posted event: it may free the context); c->close is cleared, the socket stays.
#include "ngx/redis_loop.hpp"

#include <hiredis/async.h>

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

// What an attached connection's data points at.
struct Socket {
    redisAsyncContext* ac;
    RedisLoop* loop;
};

ngx_connection_t* connection(void* privdata) noexcept {
    return static_cast<ngx_connection_t*>(privdata);
}

Socket& socket_of(ngx_connection_t* c) noexcept {
    return *static_cast<Socket*>(c->data);
}

void read_handler(ngx_event_t* rev) noexcept {
    auto* c = static_cast<ngx_connection_t*>(rev->data);
    Socket& s = socket_of(c);
    if (ngx_exiting) {
        s.loop->exit_noticed();
    }
    if (c->close) {
        c->close = 0;  // ngx_close_idle_connections(): the exit handler decides
        return;
    }
    // May free the context, and with it (cleanup) this connection: touch nothing after.
    redisAsyncHandleRead(s.ac);
}

void write_handler(ngx_event_t* wev) noexcept {
    auto* c = static_cast<ngx_connection_t*>(wev->data);
    Socket& s = socket_of(c);
    if (ngx_exiting) {
        s.loop->exit_noticed();
    }
    redisAsyncHandleWrite(s.ac);
}

void add_event(ngx_event_t* ev, ngx_int_t event) noexcept {
    if (ev->active) {
        return;  // hiredis calls the hooks repeatedly; adding twice would be EEXIST
    }
    if (ngx_add_event(ev, event, NGX_LEVEL_EVENT) != NGX_OK) {
        // The command then reaches its deadline and the client drops the connection.
        ngx_log_error(NGX_LOG_ALERT, ev->log, 0, "throttle: redis: cannot add %s event",
                      event == NGX_READ_EVENT ? "read" : "write");
    }
}

void del_event(ngx_event_t* ev, ngx_int_t event) noexcept {
    if (ev->active) {
        ngx_del_event(ev, event, 0);
    }
}

void add_read(void* privdata) noexcept {
    add_event(connection(privdata)->read, NGX_READ_EVENT);
}

void del_read(void* privdata) noexcept {
    del_event(connection(privdata)->read, NGX_READ_EVENT);
}

void add_write(void* privdata) noexcept {
    add_event(connection(privdata)->write, NGX_WRITE_EVENT);
}

void del_write(void* privdata) noexcept {
    del_event(connection(privdata)->write, NGX_WRITE_EVENT);
}

// Releases the nginx connection; hiredis closes the socket right after.
void release(ngx_connection_t* c) noexcept {
    del_event(c->read, NGX_READ_EVENT);
    del_event(c->write, NGX_WRITE_EVENT);
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
    delete static_cast<Socket*>(c->data);
    c->data = nullptr;
    // ngx_free_connection() still reads c->fd (ngx_cycle->files[c->fd] for poll/select);
    // fd = -1 afterwards marks the connection unused, as ngx_close_connection() does, so that
    // stale events already returned by epoll_wait are ignored.
    ngx_free_connection(c);
    c->fd = (ngx_socket_t)-1;
}

void cleanup(void* privdata) noexcept {
    release(connection(privdata));
}

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

bool RedisLoop::attach(redisAsyncContext* ac) noexcept {
    if (ac->ev.data != nullptr) {
        return false;
    }
    auto* socket = new (std::nothrow) Socket{ac, this};
    if (socket == nullptr) {
        return false;
    }
    ngx_connection_t* c = ngx_get_connection(ac->c.fd, log_);
    if (c == nullptr) {
        delete socket;
        return false;  // ngx_get_connection() logged why
    }
    c->data = socket;
    c->idle = 1;  // told when the worker starts a graceful exit (see the top)
    c->number = ngx_atomic_fetch_add(ngx_connection_counter, 1);
    c->read->handler = read_handler;
    c->write->handler = write_handler;
    c->read->log = log_;
    c->write->log = log_;

    // Connection completion is reported as write readiness, errors as both.
    if (ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT) != NGX_OK ||
        ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT) != NGX_OK) {
        release(c);
        return false;
    }

    ac->ev.addRead = add_read;
    ac->ev.delRead = del_read;
    ac->ev.addWrite = add_write;
    ac->ev.delWrite = del_write;
    ac->ev.cleanup = cleanup;
    ac->ev.data = c;
    return true;
}

}  // namespace throttle::ngx
