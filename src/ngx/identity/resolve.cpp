// Verified identity from a session: who the request's credential (a session cookie) belongs
// to, asked of the application once and remembered.
//
// The pre-access handler runs before the rate limiter's (module.cpp registers it after, and
// nginx runs a phase's handlers last-registered first), so zone keys and the cache's identity
// read a resolved $throttle_user_id. For a credential:
//   1. the store in shared memory (all workers): a hit answers at once, the request never waits;
//   2. a resolution of the same credential already under way in this worker: wait for it
//      (coalescing; other workers each ask once);
//   3. else this request leads one: Redis (when throttle_redis is set: other hosts' and earlier
//      runs' resolutions), then the application, through a background subrequest to the
//      resolve URI (an internal location that proxies to the app with the request's headers).
//      2xx with one valid X-User-Id: that user (kept ttl); 401/403 or 2xx without the header:
//      anonymous (kept negative_ttl); anything else -- 5xx, a timeout, a refused X-User-Id --
//      anonymous for the requests waiting now, kept nowhere, logged once per incident.
// A resolution is stored under HMAC(secret, credential), never the credential. The resolve
// subrequest is counted by no zone and not looked up in the cache (is_identity_subrequest()).
// A subrequest that `timeout` gave up on runs on (in the background) and stores its answer.
//
// Where the phase handler did not run (throttle_identity_resolve off), $throttle_user_id still
// answers from the shared store, without ever asking: an unknown credential is anonymous there.
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/cache_identity.hpp"
#include "core/http_text.hpp"
#include "core/identity_table.hpp"
#include "ngx/cache/conf.hpp"
#include "ngx/identity/identity.hpp"
#include "ngx/redis_link.hpp"
#include "ngx/request.hpp"
#include "redis/identity_scripts.hpp"

namespace throttle::ngx {

namespace id = core::identity;

class IdentityResolution;

// A client request's identity (RequestCtx::identity of its main request, in its pool).
struct IdentityState {
    bool done;         // final for this client request: user_id says who (len 0: anonymous)
    bool waiting;      // suspended on a resolution (its own or another request's)
    bool have_digest;  // digest is the credential's (empty credential: done at once)
    ngx_str_t user_id;
    core::Sha256Digest digest;
    class IdentityResolution* leading;  // the resolution this request leads, while it does
};
static_assert(std::is_trivially_destructible_v<IdentityState>);

namespace {

const ngx_str_t user_id_header = ngx_string("X-User-Id");

// What a resolution found.
struct Answer {
    id::Kind kind = id::Kind::anonymous;
    std::string id;
    bool keep = false;      // store it (shared memory; Redis too when it came from the app)
    bool from_app = false;  // the application said it (else Redis did)
    int64_t ttl_ms = 0;     // how long to keep it
};

ngx_int_t resolve_done(ngx_http_request_t* sr, void* data, ngx_int_t rc) noexcept;

// Per worker.
struct Worker {
    std::unordered_map<std::string, std::shared_ptr<IdentityResolution>> pending;  // by digest
    bool failing = false;      // the resolve URI failed; logged, not answered well since
    bool bad_answers = false;  // it answered an X-User-Id that was refused; logged
    std::string redis_prefix;
};
Worker* worker = nullptr;  // owned; deleted in identity_worker_exit

std::string map_key(const core::Sha256Digest& d) {
    return std::string(reinterpret_cast<const char*>(d.data()), d.size());
}

IdentityMainConf& conf_of(ngx_http_request_t* r) noexcept {
    return main_conf(r)->identity;
}

// r's client request's state; made when `make` (nullptr when memory ran out).
IdentityState* state_of(ngx_http_request_t* r, bool make) noexcept {
    RequestCtx* ctx = get_ctx(r->main);
    if (ctx == nullptr && (!make || (ctx = create_ctx(r->main)) == nullptr)) {
        return nullptr;
    }
    if (ctx->identity == nullptr && make) {
        ctx->identity =
            static_cast<IdentityState*>(ngx_pcalloc(r->main->pool, sizeof(IdentityState)));
    }
    return ctx->identity;
}

// st is final: who the request is.
void settle(ngx_http_request_t* r, IdentityState& st, id::Kind kind,
            std::string_view uid) noexcept {
    st.done = true;
    st.waiting = false;
    st.user_id = {0, nullptr};
    if (kind == id::Kind::user && !uid.empty()) {
        auto* p = static_cast<u_char*>(ngx_pnalloc(r->main->pool, uid.size()));
        if (p != nullptr) {
            ngx_memcpy(p, uid.data(), uid.size());
            st.user_id = {uid.size(), p};
        }
    }
}

// The credential's digest; false when the request carries none (empty value).
bool digest_credential(ngx_http_request_t* r, const IdentityMainConf& icf, IdentityState& st,
                       bool& error) noexcept {
    error = false;
    if (st.have_digest) {
        return true;
    }
    ngx_str_t cred;
    if (ngx_http_complex_value(r, icf.credential, &cred) != NGX_OK) {
        error = true;
        return false;
    }
    if (cred.len == 0 || sent_twice(r, icf.sources)) {
        return false;  // no credential, or an ambiguous one: anonymous
    }
    st.digest = id::credential_digest(*icf.key, view(cred));
    st.have_digest = true;
    return true;
}

id::Entry store_find(const IdentityMainConf& icf, const core::Sha256Digest& d) noexcept {
    ngx_shmtx_lock(&icf.shpool->mutex);
    id::Entry e = icf.table->find(d, now_ms());
    ngx_shmtx_unlock(&icf.shpool->mutex);
    return e;
}

void store_put(const IdentityMainConf& icf, const core::Sha256Digest& d, const Answer& a) noexcept {
    int64_t now = now_ms();
    ngx_shmtx_lock(&icf.shpool->mutex);
    icf.table->put(d, {a.kind, a.id}, now + a.ttl_ms, now);
    ngx_shmtx_unlock(&icf.shpool->mutex);
}

redis::Target* usable_redis() noexcept {
    redis::Target* c = redis_client();
    return c != nullptr && worker != nullptr && !worker_exiting() ? c : nullptr;
}

std::string redis_key(const IdentityMainConf& icf, const core::Sha256Digest& d) {
    return redis::identity_key(worker->redis_prefix, view(icf.shm_zone->shm.name), d);
}

// Keeps a resolution the application gave: shared memory, and Redis for the other hosts.
void keep(const IdentityMainConf& icf, const core::Sha256Digest& d, const Answer& a) noexcept {
    if (!a.keep) {
        return;
    }
    store_put(icf, d, a);
    redis::Target* c = usable_redis();
    if (!a.from_app || c == nullptr) {
        return;
    }
    try {
        std::string key = redis_key(icf, d);
        std::string value = id::redis_value({a.kind, a.id});
        std::string px = std::to_string(a.ttl_ms);
        c->command({"SET", key, value, "PX", px}, [](redis::Result&&) {});
    } catch (...) {  // bad_alloc: shared memory has it
    }
}

void log_failure(ngx_http_request_t* r, const char* what, ngx_uint_t status) noexcept {
    if (worker == nullptr || worker->failing) {
        return;
    }
    worker->failing = true;
    const IdentityMainConf& icf = conf_of(r);
    if (status != 0) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "throttle_identity: \"%V\" answered %ui: credentials not resolved yet are "
                      "anonymous until it answers 2xx, 401 or 403 (logged once)",
                      &icf.resolve, status);
    } else {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "throttle_identity: \"%V\" %s: credentials not resolved yet are anonymous "
                      "until it answers (logged once)",
                      &icf.resolve, what);
    }
}

void log_answering(ngx_http_request_t* r) noexcept {
    if (worker != nullptr && worker->failing) {
        worker->failing = false;
        ngx_log_error(NGX_LOG_NOTICE, r->connection->log, 0,
                      "throttle_identity: \"%V\" answers again", &conf_of(r).resolve);
    }
}

void log_bad_answer(ngx_http_request_t* r, const char* why) noexcept {
    if (worker == nullptr || worker->bad_answers) {
        return;
    }
    worker->bad_answers = true;
    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "throttle_identity: \"%V\" answered %s: the request is anonymous, nothing is "
                  "kept (a user id is 1 to 64 printable ASCII characters, one header; logged "
                  "once)",
                  &conf_of(r).resolve, why);
}

// The application's answer, from the resolve subrequest.
Answer judge(ngx_http_request_t* sr, ngx_int_t rc) noexcept {
    const IdentityMainConf& icf = conf_of(sr);
    Answer a;
    ngx_uint_t status = sr->headers_out.status;
    if (status == 0 && rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        status = rc;
    }
    if (rc == NGX_ERROR || status == 0) {
        log_failure(sr, "failed", 0);
        return a;
    }
    if (status == NGX_HTTP_UNAUTHORIZED || status == NGX_HTTP_FORBIDDEN) {
        log_answering(sr);
        a.keep = true;
        a.from_app = true;
        a.ttl_ms = icf.negative_ttl;
        return a;
    }
    if (status < 200 || status >= 300) {
        log_failure(sr, nullptr, status);
        return a;
    }
    log_answering(sr);
    const ngx_table_elt_t* found = nullptr;
    ngx_uint_t n = 0;
    ngx_list_part_t* part = &sr->headers_out.headers.part;
    auto* h = static_cast<ngx_table_elt_t*>(part->elts);
    for (ngx_uint_t i = 0;; i++) {
        if (i >= part->nelts) {
            if (part->next == nullptr) {
                break;
            }
            part = part->next;
            h = static_cast<ngx_table_elt_t*>(part->elts);
            i = 0;
            if (part->nelts == 0) {
                break;
            }
        }
        if (h[i].hash != 0 && h[i].key.len == user_id_header.len &&
            ngx_strncasecmp(h[i].key.data, user_id_header.data, user_id_header.len) == 0) {
            found = &h[i];
            n++;
        }
    }
    if (n == 0) {  // a session that is no user's
        a.keep = true;
        a.from_app = true;
        a.ttl_ms = icf.negative_ttl;
        return a;
    }
    if (n > 1) {
        log_bad_answer(sr, "X-User-Id more than once");
        return a;
    }
    std::string_view uid = view(found->value);
    if (!id::valid_user_id(uid)) {
        log_bad_answer(sr, "an invalid X-User-Id");
        return a;
    }
    try {
        a.id.assign(uid);
    } catch (...) {
        return a;
    }
    if (worker != nullptr) {
        worker->bad_answers = false;
    }
    a.kind = id::Kind::user;
    a.keep = true;
    a.from_app = true;
    a.ttl_ms = icf.ttl;
    return a;
}

// A request's wake-up, run from nginx's posted events (never from inside another request's
// processing: a subrequest's finalization, a pool's cleanup).
template <typename T>
struct PostedWake {
    ngx_event_t ev;  // first member
    T* owner;

    void init(T* o, ngx_http_request_t* r) noexcept {
        owner = o;
        ev.handler = [](ngx_event_t* e) noexcept {
            reinterpret_cast<PostedWake*>(e)->owner->woken();
        };
        ev.data = r->connection;
        ev.log = r->connection->log;
    }
    void post() noexcept {
        if (!ev.posted) {
            ngx_post_event(&ev, &ngx_posted_events);
        }
    }
    void cancel() noexcept {
        if (ev.posted) {
            ngx_delete_posted_event(&ev);
        }
    }
};

// A request waiting for another request's resolution of the same credential.
class Follower final : public RequestBound {
   public:
    explicit Follower(ngx_http_request_t* r) : RequestBound(r) { wake_.init(this, r); }

    // The resolution ended: `a` is the answer, or nullptr when its leader went away before
    // one (this request then resolves again, perhaps leading).
    void answer(const Answer* a) noexcept {
        if (gone()) {
            return;
        }
        if (IdentityState* st = state_of(request(), false)) {
            if (a != nullptr) {
                settle(request(), *st, a->kind, a->id);
            } else {
                st->waiting = false;
            }
        }
        wake_.post();
    }
    void woken() noexcept { resume(); }

   protected:
    void request_ended() noexcept override { wake_.cancel(); }

   private:
    PostedWake<Follower> wake_{};
};

enum class Stage : uint8_t {
    redis,      // Redis asked
    ask,        // the application is to be asked (by the handler, resumed)
    asking,     // the subrequest runs
    timed_out,  // the leader went on without an answer; the subrequest still runs
    finished,
};

}  // namespace

// A resolution, led by the request that found the credential unknown first in this worker.
class IdentityResolution final : public RequestBound,
                                 public std::enable_shared_from_this<IdentityResolution> {
   public:
    IdentityResolution(ngx_http_request_t* r, const core::Sha256Digest& d)
        : RequestBound(r), digest_(d) {
        wake_.init(this, r);
        timer_.init(this, timed_out_handler, r);
    }

    Stage stage() const noexcept { return stage_; }
    const core::Sha256Digest& digest() const noexcept { return digest_; }
    void add_follower(std::shared_ptr<Follower> f) { followers_.push_back(std::move(f)); }

    // Redis first: NGX_DONE while it answers, else the subrequest at once.
    ngx_int_t start(IdentityState& st) noexcept {
        redis::Target* c = usable_redis();
        if (c != nullptr && c->available()) {
            try {
                std::string key = redis_key(conf_of(request()), digest_);
                std::string_view keys[] = {key};
                auto self = shared_from_this();
                c->evalsha(redis::identity_get_script(), keys, 1, nullptr, 0,
                           [self](redis::Result&& res) { self->redis_answered(res); });
                stage_ = Stage::redis;
                st.waiting = true;
                suspend();
                return NGX_DONE;
            } catch (...) {  // bad_alloc: ask the application
            }
        }
        return ask(st);
    }

    // The subrequest: NGX_DONE while it runs; when it cannot be made, the request is anonymous.
    ngx_int_t ask(IdentityState& st) noexcept {
        ngx_http_request_t* r = request();
        const IdentityMainConf& icf = conf_of(r);
        auto* ps = static_cast<ngx_http_post_subrequest_t*>(
            ngx_palloc(r->pool, sizeof(ngx_http_post_subrequest_t)));
        ngx_http_request_t* sr = nullptr;
        if (ps != nullptr) {
            ps->handler = resolve_done;
            ps->data = this;
            if (ngx_http_subrequest(r, const_cast<ngx_str_t*>(&icf.resolve), nullptr, &sr, ps,
                                    NGX_HTTP_SUBREQUEST_BACKGROUND) != NGX_OK) {
                sr = nullptr;
            }
        }
        if (sr == nullptr) {
            log_failure(r, "could not be asked", 0);
            finish(Answer{}, true);
            return NGX_DECLINED;
        }
        // As auth_request: a request body of its own (none), so that the client's is never read
        // or closed by it; the response's header only.
        sr->request_body = static_cast<ngx_http_request_body_t*>(
            ngx_pcalloc(r->pool, sizeof(ngx_http_request_body_t)));
        sr->header_only = 1;
        stage_ = Stage::asking;
        ngx_add_timer(&timer_.ev, conf_of(r).timeout);
        st.waiting = true;
        suspend();
        return NGX_DONE;
    }

    void woken() noexcept {
        if (IdentityState* st = state_of(request(), false)) {
            st->waiting = false;
        }
        resume();
    }

   protected:
    void request_ended() noexcept override {
        timer_.stop();
        wake_.cancel();
        if (stage_ != Stage::finished) {
            stage_ = Stage::finished;
            unregister();
            wake_followers(nullptr);  // they resolve again
        }
    }

   private:
    void unregister() noexcept {
        if (worker == nullptr) {
            return;
        }
        auto it = worker->pending.find(map_key(digest_));
        if (it != worker->pending.end() && it->second.get() == this) {
            worker->pending.erase(it);  // may drop the map's share; `this` lives on (the pool's)
        }
    }

    void wake_followers(const Answer* a) noexcept {
        std::vector<std::shared_ptr<Follower>> fs = std::move(followers_);
        followers_.clear();
        for (const auto& f : fs) {
            f->answer(a);
        }
    }

    // The answer for the leader and its followers. `done`: the resolution is over (else the
    // subrequest runs on after a timeout, and the map keeps it: no other request asks the
    // application about this credential meanwhile).
    void finish(const Answer& a, bool done) noexcept {
        keep(conf_of(request()), digest_, a);
        if (IdentityState* st = state_of(request(), false)) {
            settle(request(), *st, a.kind, a.id);
            st->leading = nullptr;
        }
        wake_followers(&a);
        if (done) {
            stage_ = Stage::finished;
            unregister();
        }
        if (suspended()) {
            wake_.post();
        }
    }

    void redis_answered(const redis::Result& res) noexcept {
        if (gone() || stage_ != Stage::redis || worker_exiting()) {
            return;
        }
        redis::IdentityGet got;
        bool shaped = false;
        try {
            shaped = res.ok() && !res.reply.is_error() && redis::parse_identity_get(res.reply, got);
        } catch (...) {
        }
        if (res.ok() && !res.reply.is_error() && !shaped) {
            redis_reply_unusable(res, "identity get");
        }
        id::Resolution found =
            shaped && got.found ? id::parse_redis_value(got.value) : id::Resolution{};
        if (found.kind != id::Kind::none) {
            Answer a;
            a.kind = found.kind;
            a.keep = true;
            const IdentityMainConf& icf = conf_of(request());
            int64_t bound = found.kind == id::Kind::user ? icf.ttl : icf.negative_ttl;
            a.ttl_ms = got.ttl_ms < bound ? got.ttl_ms : bound;
            try {
                a.id.assign(found.id);
            } catch (...) {
                a = Answer{};
            }
            finish(a, true);
            return;
        }
        stage_ = Stage::ask;  // the handler asks the application, in the request's phases
        wake_.post();
    }

   public:
    // The subrequest's post_subrequest handler (called at each of its finalizations).
    static ngx_int_t subrequest_done(ngx_http_request_t* sr, void* data, ngx_int_t rc) noexcept {
        auto* p = static_cast<IdentityResolution*>(data);
        if (rc == NGX_AGAIN || p->sub_done_ || p->gone()) {
            return rc;
        }
        p->sub_done_ = true;
        p->timer_.stop();
        Answer a = judge(sr, rc);
        if (p->stage_ == Stage::asking) {
            p->finish(a, true);
        } else if (p->stage_ == Stage::timed_out) {
            keep(conf_of(sr), p->digest_, a);  // late, but good for the next requests
            p->stage_ = Stage::finished;
            p->unregister();
        }
        return rc;
    }

   private:
    static void timed_out_handler(ngx_event_t* ev) noexcept {
        IdentityResolution* p = RequestTimer<IdentityResolution>::owner_of(ev);
        if (p->gone() || p->stage_ != Stage::asking) {
            return;
        }
        log_failure(p->request(), "did not answer within the timeout", 0);
        p->stage_ = Stage::timed_out;
        p->finish(Answer{}, false);
    }

    core::Sha256Digest digest_;
    Stage stage_ = Stage::redis;
    bool sub_done_ = false;
    std::vector<std::shared_ptr<Follower>> followers_;
    PostedWake<IdentityResolution> wake_{};
    RequestTimer<IdentityResolution> timer_{};
};

namespace {

// r waits for p's answer.
ngx_int_t follow(ngx_http_request_t* r, IdentityState& st, IdentityResolution& p) noexcept {
    try {
        auto f = bind_to_request<Follower>(r);
        if (f == nullptr) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        p.add_follower(f);
        st.waiting = true;
        f->suspend();
        return NGX_DONE;
    } catch (...) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}

ngx_int_t lead(ngx_http_request_t* r, IdentityState& st) noexcept {
    try {
        auto p = bind_to_request<IdentityResolution>(r, st.digest);
        if (p == nullptr) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        worker->pending.emplace(map_key(st.digest), p);
        st.leading = p.get();
        return p->start(st);
    } catch (...) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}

ngx_int_t resolve_done(ngx_http_request_t* sr, void* data, ngx_int_t rc) noexcept {
    return IdentityResolution::subrequest_done(sr, data, rc);
}

// $throttle_user_id where the handler did not resolve: the shared store only, never asking.
void look_up_only(ngx_http_request_t* r, IdentityState& st) noexcept {
    const IdentityMainConf& icf = conf_of(r);
    bool error = false;
    if (icf.table == nullptr || !digest_credential(r, icf, st, error)) {
        return;
    }
    id::Entry e = store_find(icf, st.digest);
    if (e.kind != id::Kind::none) {
        settle(r, st, e.kind, {e.id, e.id_len});
    }
}

ngx_int_t user_id_variable(ngx_http_request_t* r, ngx_http_variable_value_t* v,
                           uintptr_t) noexcept {
    v->valid = 1;
    v->no_cacheable = 0;
    v->not_found = 0;
    v->len = 0;
    v->data = nullptr;
    if (conf_of(r).credential == nullptr) {
        return NGX_OK;
    }
    IdentityState* st = state_of(r, true);
    if (st == nullptr) {
        return NGX_ERROR;
    }
    if (!st->done && !st->waiting && st->leading == nullptr) {
        look_up_only(r->main, *st);
    }
    if (st->done) {
        v->len = st->user_id.len;
        v->data = st->user_id.data;
    }
    return NGX_OK;
}

ngx_http_output_header_filter_pt next_header_filter;

// The forget header: the application names a credential (a session key, on logout) whose
// resolution is dropped here and in Redis. Never sent on to the client.
void forget(ngx_http_request_t* r, const IdentityMainConf& icf,
            const ngx_str_t& credential) noexcept {
    core::Sha256Digest d = id::credential_digest(*icf.key, view(credential));
    ngx_shmtx_lock(&icf.shpool->mutex);
    icf.table->erase(d);
    ngx_shmtx_unlock(&icf.shpool->mutex);
    if (redis::Target* c = usable_redis()) {
        try {
            c->command({"DEL", redis_key(icf, d)}, [](redis::Result&&) {});
        } catch (...) {
        }
    }
    ngx_log_debug0(NGX_LOG_DEBUG_HTTP, r->connection->log, 0,
                   "throttle_identity: forgot a credential");
}

ngx_int_t forget_filter(ngx_http_request_t* r) noexcept {
    const IdentityMainConf& icf = conf_of(r);
    if (icf.credential == nullptr || icf.table == nullptr) {
        return next_header_filter(r);
    }
    ngx_list_part_t* part = &r->headers_out.headers.part;
    auto* h = static_cast<ngx_table_elt_t*>(part->elts);
    for (ngx_uint_t i = 0;; i++) {
        if (i >= part->nelts) {
            if (part->next == nullptr) {
                break;
            }
            part = part->next;
            h = static_cast<ngx_table_elt_t*>(part->elts);
            i = 0;
            if (part->nelts == 0) {
                break;
            }
        }
        if (h[i].hash != 0 && h[i].key.len == icf.forget_header.len &&
            ngx_strncasecmp(h[i].key.data, icf.forget_header.data, icf.forget_header.len) == 0) {
            if (r == r->main && h[i].value.len > 0) {
                forget(r, icf, h[i].value);
            }
            h[i].hash = 0;
        }
    }
    return next_header_filter(r);
}

}  // namespace

bool is_identity_subrequest(const ngx_http_request_t* r) noexcept {
    return r != r->main && r->post_subrequest != nullptr &&
           r->post_subrequest->handler == resolve_done;
}

ngx_int_t identity_handler(ngx_http_request_t* r) noexcept {
    const IdentityMainConf& icf = conf_of(r);
    if (icf.credential == nullptr || r != r->main || !loc_conf(r)->identity.resolve ||
        icf.table == nullptr) {
        return NGX_DECLINED;
    }
    IdentityState* st = state_of(r, true);
    if (st == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (st->done) {
        return NGX_DECLINED;  // resolved already: before an internal redirect, or just now
    }
    if (st->waiting) {
        return NGX_AGAIN;
    }
    if (st->leading != nullptr) {  // resumed: Redis did not know it, ask the application
        IdentityResolution* p = st->leading;
        return p->stage() == Stage::ask ? p->ask(*st) : NGX_AGAIN;
    }
    bool error = false;
    if (!digest_credential(r, icf, *st, error)) {
        if (error) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        settle(r, *st, id::Kind::anonymous, {});
        return NGX_DECLINED;
    }
    id::Entry e = store_find(icf, st->digest);
    if (e.kind != id::Kind::none) {
        settle(r, *st, e.kind, {e.id, e.id_len});
        return NGX_DECLINED;
    }
    if (worker == nullptr) {
        settle(r, *st, id::Kind::anonymous, {});
        return NGX_DECLINED;
    }
    auto it = worker->pending.find(map_key(st->digest));
    if (it != worker->pending.end()) {
        IdentityResolution& p = *it->second;
        if (p.stage() == Stage::timed_out || p.stage() == Stage::finished) {
            settle(r, *st, id::Kind::anonymous, {});  // the application is slow on it already
            return NGX_DECLINED;
        }
        return follow(r, *st, p);
    }
    return lead(r, *st);
}

ngx_int_t add_identity_variables(ngx_conf_t* cf) noexcept {
    ngx_str_t name = ngx_string("throttle_user_id");
    ngx_http_variable_t* var = ngx_http_add_variable(cf, &name, NGX_HTTP_VAR_NOCACHEABLE);
    if (var == nullptr) {
        return NGX_ERROR;
    }
    var->get_handler = user_id_variable;
    return NGX_OK;
}

ngx_int_t install_identity_filter() noexcept {
    next_header_filter = ngx_http_top_header_filter;
    ngx_http_top_header_filter = forget_filter;
    return NGX_OK;
}

void identity_worker_init(const MainConf& mcf) noexcept {
    if (mcf.identity.credential == nullptr) {
        return;
    }
    try {
        worker = new Worker();
        if (mcf.redis != nullptr) {
            worker->redis_prefix.assign(view(mcf.redis->prefix));
        }
    } catch (...) {
        worker = nullptr;
    }
}

void identity_worker_redis(const MainConf& mcf) {
    redis::Target* c = redis_client();
    if (mcf.identity.credential == nullptr || c == nullptr || worker == nullptr) {
        return;
    }
    core::Sha256Digest probe{};
    std::string key =
        redis::identity_key(worker->redis_prefix, view(mcf.identity.shm_zone->shm.name), probe);
    c->add_script(redis::identity_get_script(), key);
    c->require({{"SET", key, "a", "PX", "1000"}, {"DEL", key}});
}

void identity_worker_exit() noexcept {
    delete worker;
    worker = nullptr;
}

}  // namespace throttle::ngx
