// Per-request state (see request.hpp).
//
// Every request has its own context: the main request and each subrequest (auth_request,
// mirror, SSI include), which nginx gives a context array of its own. nginx clears module
// contexts on an internal redirect (try_files, error_page, rewrite ... last); the decision must
// survive it, or a redirected request would be counted twice. As the realip module does, the
// context is allocated as a pool cleanup entry and found again through the pool's cleanup list,
// by its owner: subrequests share their main request's pool, so the list holds the contexts of
// all of them.
#include "ngx/request.hpp"

namespace throttle::ngx {
namespace {

void ctx_marker(void*) noexcept {}

// What keeps a worker that is shutting down gracefully alive while requests wait on the module.
// nginx ends such a worker once no timer is left that is not `cancelable`; a request suspended
// on Redis (or on a fill) has no timer of its own -- the Redis client's deadlines are
// cancelable -- and would be cut without a response. One timer for all of them, armed while
// any waits; when it expires it is armed again.
constexpr ngx_msec_t guard_ms = 60000;
size_t waiting = 0;
ngx_event_t guard;             // trivially destructible, zero-initialized
ngx_connection_t guard_ident;  // ev->data: nginx's debug log reads an fd there

void guard_expired(ngx_event_t* ev) noexcept {
    if (waiting > 0) {
        ngx_add_timer(ev, guard_ms);
    }
}

}  // namespace

size_t requests_waiting() noexcept {
    return waiting;
}

void RequestBound::keep_worker(bool on) noexcept {
    if (on == keeps_worker_) {
        return;
    }
    keeps_worker_ = on;
    if (on) {
        if (waiting++ == 0 && !guard.timer_set) {
            guard_ident.fd = (ngx_socket_t)-1;
            guard.handler = guard_expired;
            guard.data = &guard_ident;
            guard.log = ngx_cycle->log;
            ngx_add_timer(&guard, guard_ms);
        }
    } else if (--waiting == 0 && guard.timer_set) {
        ngx_del_timer(&guard);
    }
}

RequestCtx* find_ctx(ngx_http_request_t* r) noexcept {
    if (r != r->main) {
        // Subrequests are always internal: search only when some subrequest has a context.
        RequestCtx* main = get_ctx(r->main);
        if (main == nullptr || !main->sub_ctxs) {
            return nullptr;
        }
    }
    for (ngx_pool_cleanup_t* c = r->pool->cleanup; c != nullptr; c = c->next) {
        if (c->handler == ctx_marker && static_cast<RequestCtx*>(c->data)->owner == r) {
            auto* ctx = static_cast<RequestCtx*>(c->data);
            ngx_http_set_ctx(r, ctx, ngx_http_throttle_module);
            return ctx;
        }
    }
    return nullptr;
}

RequestCtx* create_ctx(ngx_http_request_t* r, size_t extra) noexcept {
    RequestCtx* main = nullptr;
    if (r != r->main) {
        main = get_ctx(r->main);
        if (main == nullptr && (main = create_ctx(r->main)) == nullptr) {
            return nullptr;
        }
    }
    // The cleanup entry, the context and `extra` in one allocation, the entry linked in as
    // ngx_pool_cleanup_add() does (which allocates the entry and its data apart).
    static_assert(sizeof(ngx_pool_cleanup_t) % alignof(RequestCtx) == 0);
    static_assert(sizeof(RequestCtx) % 8 == 0);  // what follows it is 8-aligned
    auto* c = static_cast<ngx_pool_cleanup_t*>(
        ngx_palloc(r->pool, sizeof(ngx_pool_cleanup_t) + sizeof(RequestCtx) + extra));
    if (c == nullptr) {
        return nullptr;
    }
    // All zero, as RequestCtx{} (a trivial type: every field's zero is its "none"), and extra.
    static_assert(std::is_trivially_default_constructible_v<RequestCtx>);
    ngx_memzero(c + 1, sizeof(RequestCtx) + extra);
    auto* ctx = new (c + 1) RequestCtx;
    c->handler = ctx_marker;
    c->data = ctx;
    c->next = r->pool->cleanup;
    r->pool->cleanup = c;
    ctx->owner = r;
    ngx_http_set_ctx(r, ctx, ngx_http_throttle_module);
    if (main != nullptr) {
        main->sub_ctxs = true;
    }
    return ctx;
}

void RequestBound::suspend() noexcept {
    if (suspended_) {
        return;
    }
    suspended_ = true;
    keep_worker(true);
    r_->main->count++;
    r_->read_event_handler = ngx_http_test_reading;
    r_->write_event_handler = ngx_http_request_empty_handler;
}

void RequestBound::resume() noexcept {
    if (!suspended_ || gone_) {
        return;
    }
    suspended_ = false;
    keep_worker(false);
    ngx_http_request_t* r = r_;
    ngx_connection_t* c = r->connection;
    r->read_event_handler = ngx_http_block_reading;
    r->write_event_handler = ngx_http_core_run_phases;
    ngx_http_core_run_phases(r);
    // The reference suspend() took: the request (and this object's pool share) may go here;
    // nothing touches `this` afterwards.
    ngx_http_finalize_request(r, NGX_DONE);
    ngx_http_run_posted_requests(c);
}

void RequestBound::pool_cleanup(void* data) noexcept {
    auto* held = static_cast<std::shared_ptr<RequestBound>*>(data);
    RequestBound& obj = **held;
    obj.gone_ = true;
    obj.keep_worker(false);
    obj.request_ended();
    held->~shared_ptr();  // the pool frees its memory
}

}  // namespace throttle::ngx
