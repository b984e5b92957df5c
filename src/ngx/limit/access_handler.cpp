// The pre-access phase check: every zone of the location whose key is not empty must admit
// the request; only then is it counted, in all of them at once.
//
// Local and sync zones are decided in shared memory. Strict zones are decided in Redis, by
// one script call for all of them (all-or-nothing), while the request waits on nginx's event
// loop; when Redis cannot answer (down, slow, circuit open), each strict zone follows its
// fallback: local (decide on this host's counts), open (skip it) or closed (reject).
//
// Lease zones (lease.hpp) are decided in shared memory too, with the local ones: a request
// spends a unit of its host's lease of the key. When the lease holds none, the request gives
// back what it spent elsewhere and waits for the host's lease call, then runs its check again;
// when Redis cannot answer, the zone follows its fallback as a strict zone does.
//
// Subrequests (auth_request, mirror, SSI includes) are checked as main requests are. A zone
// counts a client request at most once, across the main request, its internal redirects and
// its subrequests: the zones it was counted in are marked on the main request (ZoneMark), and
// a location skips them. A zone held by one of them while Redis decides makes the others that
// apply it wait for that decision (Follower), so that concurrent SSI includes or mirrors never
// count it twice nor pass it uncounted.
//
// Metrics (core/metrics.hpp, when some location has throttle_metrics): each zone counts one
// outcome per client request, the first one decided for it (ZoneMark::reported): passed or
// rejected (dry_run_*, fallback_* likewise), or skipped for an empty key. When several zones
// apply and some reject, only the rejecting zones count (rejected): the others did not count
// the request and count no outcome either. Without metrics, each zone's pointer is nullptr and
// the request path pays one null check.
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "ngx/limit/lease.hpp"
#include "ngx/limit/limit.hpp"
#include "ngx/limit/strict.hpp"
#include "ngx/redis_link.hpp"
#include "ngx/request.hpp"
#include "redis/scripts.hpp"

namespace throttle::ngx {

// What a client request did in one zone (RequestCtx::marks of its main request).
struct ZoneMark {
    StrictRequest* deciding;  // held by a request of it while Redis decides (its Waiting)
    bool counted;             // admitted and counted: no request of it is counted there again
    bool reported;            // metrics: an outcome was counted for it (once per client request)
    LeaseOutcome lease;       // mode=lease: what the lease call it waited for answered
};
static_assert(std::is_trivially_destructible_v<ZoneMark>);
static_assert(sizeof(ZoneMark) == 16);  // the pointer first: 16 bytes a zone, not 24

namespace {

namespace cm = core::metrics;

constexpr uint64_t tag_full_logged = 0x100;

enum class Role : uint8_t {
    local,   // decided here (local and sync zones; strict zones falling back to local)
    remote,  // decided by Redis (strict zones)
    open,    // strict zone, Redis unavailable, fallback=open: not applied
    closed,  // strict zone, Redis unavailable, fallback=closed: rejects
    lease,   // lease zone: spends a unit of the host's lease (lease.hpp)
};

struct Applied {
    ZoneConf* zone;
    core::StoredKey key;  // the client key's keyed digest: computed once per request and zone
    Role role;
    core::State* state;
    core::Decision decision;
    int64_t token;  // record()'s token while a local zone holds a reservation
    bool full;      // this request found the zone full of unexpired keys (first time)
    // Role::lease: the deadline of the lease a unit was spent from (0: none spent); no unit
    // held and Redis must be asked (need); a prefetch to send after the locks (want, mark).
    int64_t lease_deadline;
    bool need;
    uint32_t prefetch_want;
    uint32_t prefetch_mark;
};
static_assert(std::is_trivially_copyable_v<Applied>);

struct Check {
    Applied* applied;  // on the handler's stack for a few zones; in the pool once Redis decides
    ngx_uint_t n;
    bool fallback;    // some strict zone could not ask Redis
    bool skipped;     // metrics: a zone counted an empty key (that may have made the contexts)
    bool need_lease;  // some lease zone holds no unit: its lease call must be waited for
    bool lease;       // some zone is a lease zone (Role::lease): its units and prefetches
    bool full;        // some zone found itself full (Applied::full): log_full() says so
};

// Zones a location applies that the check keeps on the handler's stack (more: in the pool).
constexpr ngx_uint_t stack_zones = 4;

// The marks of r's client request, indexed by ZoneConf::index. Without `make`, nullptr when
// no zone was marked yet; with it, nullptr only when memory ran out.
ZoneMark* marks_of(ngx_http_request_t* r, bool make) noexcept {
    RequestCtx* main = get_ctx(r->main);
    if (main == nullptr && (!make || (main = create_ctx(r->main)) == nullptr)) {
        return nullptr;
    }
    if (main->marks == nullptr && make) {
        size_t n = main_conf(r)->limit.zones.nelts;
        main->marks = static_cast<ZoneMark*>(ngx_pcalloc(r->main->pool, n * sizeof(ZoneMark)));
    }
    return main->marks;
}

// The zones a decision counts the request in (an open zone is skipped, a closed one rejects).
bool counts(const Applied& a) noexcept {
    return a.role == Role::local || a.role == Role::remote || a.role == Role::lease;
}

// r was counted in c's zones: no other request of its client request is counted there again.
// Out of memory, nothing is marked (the zones may then count it again). ctx: r's.
void mark_counted(ngx_http_request_t* r, const RequestCtx* ctx, const Check& c) noexcept {
    ZoneMark* marks = r == r->main && ctx->marks != nullptr ? ctx->marks : marks_of(r, true);
    for (ngx_uint_t i = 0; marks != nullptr && i < c.n; i++) {
        if (counts(c.applied[i])) {
            marks[c.applied[i].zone->index].counted = true;
        }
    }
}

// r holds c's zones while Redis decides (w): the other requests of its client request that
// apply one of them wait for the decision. False when memory ran out.
bool hold_zones(ngx_http_request_t* r, const Check& c, StrictRequest* w) noexcept {
    ZoneMark* marks = marks_of(r, true);
    if (marks == nullptr) {
        return false;
    }
    for (ngx_uint_t i = 0; i < c.n; i++) {
        marks[c.applied[i].zone->index].deciding = w;
    }
    return true;
}

// Redis decided (or could not): w holds c's zones no more.
void release_zones(ngx_http_request_t* r, const Check& c, const StrictRequest* w) noexcept {
    ZoneMark* marks = marks_of(r, false);
    for (ngx_uint_t i = 0; marks != nullptr && i < c.n; i++) {
        ZoneMark& m = marks[c.applied[i].zone->index];
        if (m.deciding == w) {
            m.deciding = nullptr;
        }
    }
}

// Metrics: counts outcome o in zone z for r's client request, unless one was counted there
// already (marks: r's client request's, nullptr when out of memory: then counted). Returns
// whether it counted.
bool report(ZoneMark* marks, const ZoneConf& z, cm::Outcome o) noexcept {
    if (marks != nullptr) {
        ZoneMark& m = marks[z.index];
        if (m.reported) {
            return false;
        }
        m.reported = true;
    }
    cm::count(z.metrics, o);
    return true;
}

// Metrics: the decision's outcome in each zone that counts one (see the top of the file). An
// admitted request: every zone passed (a strict zone that took its fallback: fallback_passed,
// fallback=open included); near_limit when at most a tenth of the zone's quota is left after
// it. A rejected one: the zones that rejected it (a strict zone's fallback=local or =closed:
// fallback_rejected). In dry run: dry_run_passed or dry_run_rejected, fallback or not.
// Called with metrics on (then every zone has its counters).
[[gnu::noinline]] void count_outcomes(ngx_http_request_t* r, const LocConf* lcf, const Check& c,
                                      bool admitted) noexcept {
    ZoneMark* marks = marks_of(r, true);
    bool dry = lcf->limit.dry_run;
    for (ngx_uint_t i = 0; i < c.n; i++) {
        const Applied& a = c.applied[i];
        if (a.zone->metrics == nullptr || a.decision.allowed != admitted) {
            continue;  // rejected: a zone that would have admitted it counts nothing
        }
        bool fallback = (a.zone->mode == Mode::strict && a.role != Role::remote) ||
                        (a.zone->mode == Mode::lease && a.role != Role::lease);
        cm::Outcome o = admitted ? (dry        ? cm::Outcome::dry_run_passed
                                    : fallback ? cm::Outcome::fallback_passed
                                               : cm::Outcome::passed)
                                 : (dry        ? cm::Outcome::dry_run_rejected
                                    : fallback ? cm::Outcome::fallback_rejected
                                               : cm::Outcome::rejected);
        // A lease zone's remaining is what this host holds, not what is left of the quota:
        // no near_limit for it.
        if (report(marks, *a.zone, o) && admitted && a.role != Role::open &&
            a.role != Role::lease && a.decision.remaining <= a.decision.limit / 10) {
            cm::add(a.zone->metrics->near_limit);
        }
    }
}

int64_t ceil_seconds(int64_t ms) noexcept {
    return ms <= 0 ? 0 : (ms + 999) / 1000;
}

void lock(Check& c) noexcept {
    for (ngx_uint_t i = 0; i < c.n; i++) {
        ngx_shmtx_lock(&c.applied[i].zone->shpool->mutex);
    }
}

void unlock(Check& c) noexcept {
    for (ngx_uint_t i = c.n; i-- > 0;) {
        ngx_shmtx_unlock(&c.applied[i].zone->shpool->mutex);
    }
}

// A key's state still matters: forgetting it would change a decision now (its counts have not
// expired, or Redis' rejection of a strict key still holds).
bool live(const core::Policy& policy, const core::State& s, int64_t now) noexcept {
    return !core::is_idle(policy, s, now) || s.blocked_until > now;
}

// Under the locks: a's key evicted a key (victim: its state); if that one's counts were still
// live, the zone is full (counted in its metrics; logged once per zone, by log_full()).
void find_full(Check& c, Applied& a, const core::State& victim, int64_t now) noexcept {
    ZoneConf* z = a.zone;
    if (!live(z->policy, victim, now)) {
        return;
    }
    if (z->metrics != nullptr) {
        cm::add(z->metrics->evictions);
    }
    if (!(z->table->tag() & tag_full_logged)) {
        z->table->set_tag(z->table->tag() | tag_full_logged);
        a.full = true;
        c.full = true;
    }
}

// Under the locks: finds (or creates) every key's state; notes a zone that had to evict a key
// whose counts were still live (counted in its metrics; logged once per zone, by log_full()).
void find_states(Check& c, int64_t now) noexcept {
    for (ngx_uint_t i = 0; i < c.n; i++) {
        Applied& a = c.applied[i];
        ZoneConf* z = a.zone;
        core::LookupResult res = z->table->lookup(a.key);
        if (res.evicted) {
            find_full(c, a, res.victim, now);
        }
        a.state = res.state;
    }
}

// The lease state of a's key (under the locks).
core::State* lease_state(const Applied& a) noexcept {
    return a.zone->leases->lookup(a.zone->leases->make_key(a.key.digest)).state;
}

// Under the locks: a lease zone spends a unit of the host's lease; without one, it rejects
// while Redis said the window admits nothing more (blocked_until), else Redis must be asked
// (need: admitted for now, the caller waits for the lease call and decides again).
void decide_lease(Check& c, Applied& a, int64_t now) noexcept {
    ZoneConf* z = a.zone;
    core::State* slot = lease_state(a);
    core::lease::LeaseState l = core::lease::from_state(*slot);
    a.decision = core::Decision{};
    a.decision.limit = core::quota(z->policy);
    a.need = false;
    a.lease_deadline = 0;
    if (core::lease::spend(l, now)) {
        a.decision.allowed = true;
        a.decision.remaining = l.held;
        a.decision.reset_ms = ngx_max(l.deadline - now, 1);
        a.lease_deadline = l.deadline;
        uint32_t want = 0, mark = 0;
        if (lease_after_spend(*z, l, now, want, mark)) {
            a.prefetch_want = want;
            a.prefetch_mark = mark;
        }
        *slot = core::lease::to_state(l);
        return;
    }
    if (a.state->blocked_until > now) {
        a.decision.allowed = false;
        a.decision.retry_after_ms = a.state->blocked_until - now;
        a.decision.reset_ms = a.decision.retry_after_ms;
        return;
    }
    a.decision.allowed = true;
    a.need = true;
    c.need_lease = true;
}

// Under the locks: gives back the units lease zones spent (the request was not admitted, or
// is decided again).
void unspend_leases(Check& c) noexcept {
    if (!c.lease) {
        return;
    }
    for (ngx_uint_t i = 0; i < c.n; i++) {
        Applied& a = c.applied[i];
        if (a.role == Role::lease && a.lease_deadline != 0) {
            core::State* slot = lease_state(a);
            core::lease::LeaseState l = core::lease::from_state(*slot);
            core::lease::unspend(l, a.lease_deadline);
            *slot = core::lease::to_state(l);
            a.lease_deadline = 0;
        }
    }
}

// After the locks: the prefetches decide_lease() planned.
void send_prefetches(Check& c) noexcept {
    if (!c.lease) {
        return;
    }
    for (ngx_uint_t i = 0; i < c.n; i++) {
        Applied& a = c.applied[i];
        if (a.role == Role::lease && a.prefetch_want != 0) {
            lease_prefetch(*a.zone, a.key, a.prefetch_want, a.prefetch_mark);
            a.prefetch_want = 0;
        }
    }
}

// Lease zones whose call cannot be waited for (Redis unavailable) take their fallback.
void lease_fall_back(Check& c) noexcept {
    for (ngx_uint_t i = 0; i < c.n; i++) {
        Applied& a = c.applied[i];
        if (a.role == Role::lease && a.need) {
            a.role = a.zone->fallback == Fallback::local  ? Role::local
                     : a.zone->fallback == Fallback::open ? Role::open
                                                          : Role::closed;
            a.need = false;
            c.fallback = true;
        }
    }
    c.need_lease = false;
}

// Under the locks: decides what can be decided here. Returns false when some zone rejects. A
// remote zone is rejected here only while Redis said its key is over the limit (blocked_until).
bool decide_here(Check& c, int64_t now) noexcept {
    find_states(c, now);
    c.need_lease = false;
    bool all = true;
    for (ngx_uint_t i = 0; i < c.n; i++) {
        Applied& a = c.applied[i];
        ZoneConf* z = a.zone;
        switch (a.role) {
            case Role::local:
                a.decision = core::evaluate(z->policy, *a.state, now);
                break;
            case Role::remote:
                a.decision = core::Decision{};
                a.decision.allowed = a.state->blocked_until <= now;
                a.decision.limit = core::quota(z->policy);
                a.decision.remaining = a.decision.limit;
                if (!a.decision.allowed) {
                    a.decision.retry_after_ms = a.state->blocked_until - now;
                    a.decision.reset_ms = a.decision.retry_after_ms;
                    a.decision.remaining = 0;
                }
                break;
            case Role::lease:
                decide_lease(c, a, now);
                break;
            case Role::open:
                a.decision = core::Decision{};
                a.decision.allowed = true;
                a.decision.limit = core::quota(z->policy);
                a.decision.remaining = a.decision.limit;
                break;
            case Role::closed:
                a.decision = core::Decision{};
                a.decision.allowed = false;
                a.decision.limit = core::quota(z->policy);
                a.decision.retry_after_ms = 1000;
                a.decision.reset_ms = a.decision.retry_after_ms;
                break;
        }
        all = all && a.decision.allowed;
    }
    return all;
}

// Under the locks: counts the request in every zone decided here; strict zones also count
// it locally, so that a fallback to local later starts from this host's real traffic.
void record_here(Check& c, int64_t now, bool local, bool remote) noexcept {
    for (ngx_uint_t i = 0; i < c.n; i++) {
        Applied& a = c.applied[i];
        if ((local && (a.role == Role::local || a.role == Role::lease)) ||
            (remote && a.role == Role::remote)) {
            a.token = core::record(a.zone->policy, *a.state, now);
        }
    }
}

// Under the locks: gives back the reservations record_here() made in local zones.
void unrecord_local(Check& c) noexcept {
    for (ngx_uint_t i = 0; i < c.n; i++) {
        Applied& a = c.applied[i];
        if (a.role == Role::local || a.role == Role::lease) {
            core::unrecord(a.zone->policy, *a.state, a.token);
        }
    }
    unspend_leases(c);
}

void log_full(ngx_http_request_t* r, const Check& c) noexcept {
    if (!c.full) {
        return;
    }
    for (ngx_uint_t i = 0; i < c.n; i++) {
        if (c.applied[i].full) {
            ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                          "throttle_zone \"%V\" is full: evicting keys whose counts have not "
                          "expired yet, increase its size",
                          &c.applied[i].zone->name);
        }
    }
}

// Picks the zone the response describes: the rejecting zone that asks the longest wait,
// or, when all admitted, the one with the fewest requests left (open zones excluded).
const Applied* most_restrictive(const Check& c, bool admitted) noexcept {
    if (c.n == 1) {  // the loop below, for one zone
        const Applied& a = c.applied[0];
        return (admitted ? a.role != Role::open : !a.decision.allowed) ? &a : nullptr;
    }
    const Applied* best = nullptr;
    for (ngx_uint_t i = 0; i < c.n; i++) {
        const Applied& a = c.applied[i];
        const core::Decision& d = a.decision;
        if (!admitted) {
            if (!d.allowed &&
                (best == nullptr || d.retry_after_ms > best->decision.retry_after_ms)) {
                best = &a;
            }
        } else if (a.role != Role::open &&
                   (best == nullptr || d.remaining < best->decision.remaining ||
                    (d.remaining == best->decision.remaining &&
                     d.reset_ms > best->decision.reset_ms))) {
            best = &a;
        }
    }
    return best;
}

const char* title_for(ngx_uint_t status) noexcept {
    switch (status) {
        case 429:
            return "Too Many Requests";
        case 503:
            return "Service Unavailable";
        case 403:
            return "Forbidden";
        default:
            return "Rate Limited";
    }
}

bool has_error_page(ngx_http_request_t* r, ngx_uint_t status) noexcept {
    auto* clcf = static_cast<ngx_http_core_loc_conf_t*>(
        ngx_http_get_module_loc_conf(r, ngx_http_core_module));
    if (clcf->error_pages == nullptr) {
        return false;
    }
    auto* pages = static_cast<ngx_http_err_page_t*>(clcf->error_pages->elts);
    for (ngx_uint_t i = 0; i < clcf->error_pages->nelts; i++) {
        if (pages[i].status == static_cast<ngx_int_t>(status)) {
            return true;
        }
    }
    return false;
}

// An application/problem+json (RFC 9457) answer; error_page for the status takes precedence.
ngx_int_t reject(ngx_http_request_t* r, const LocConf* lcf, const RequestCtx* ctx) noexcept {
    if (has_error_page(r, lcf->limit.status)) {
        return lcf->limit.status;
    }
    const char* title = title_for(lcf->limit.status);
    size_t len = sizeof(
                     "{\"type\":\"about:blank\",\"title\":\"\",\"status\":,"
                     "\"detail\":\"rate limit exceeded in zone \\\"\\\"\",\"zone\":\"\","
                     "\"retry_after\":}") +
                 ngx_strlen(title) + NGX_INT_T_LEN + NGX_INT64_LEN + 2 * ctx->zone_name->len;
    auto* body = static_cast<u_char*>(ngx_pnalloc(r->pool, len));
    if (body == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    u_char* end =
        ngx_sprintf(body,
                    "{\"type\":\"about:blank\",\"title\":\"%s\",\"status\":%ui,"
                    "\"detail\":\"rate limit exceeded in zone \\\"%V\\\"\","
                    "\"zone\":\"%V\",\"retry_after\":%L}",
                    title, lcf->limit.status, ctx->zone_name, ctx->zone_name, ctx->retry_after_s);
    ngx_http_complex_value_t cv;
    ngx_memzero(&cv, sizeof(cv));
    cv.value.data = body;
    cv.value.len = end - body;
    ngx_str_t type = ngx_string("application/problem+json");
    ngx_int_t rc = ngx_http_send_response(r, lcf->limit.status, &type, &cv);
    ngx_http_finalize_request(r, rc);
    return NGX_DONE;
}

// Records the decision in the request's context and logs a rejection. Returns whether the
// request is to be answered with the reject status now.
bool conclude(ngx_http_request_t* r, const LocConf* lcf, RequestCtx* ctx, const Check& c,
              bool admitted) noexcept {
    log_full(r, c);
    if (c.applied[0].zone->metrics != nullptr) {  // c.n > 0; metrics on: every zone's is set
        count_outcomes(r, lcf, c, admitted);
    }
    const Applied* shown = most_restrictive(c, admitted);
    // After an internal redirect into a location with zones not counted yet, an admission
    // keeps describing the earlier decision's zone when that one has fewer requests left.
    bool earlier = ctx->zone_name != nullptr &&
                   (ctx->outcome == Outcome::passed || ctx->outcome == Outcome::passed_fallback);
    bool keep = false;
    if (admitted) {
        bool fallback = c.fallback || ctx->outcome == Outcome::passed_fallback;
        ctx->outcome = fallback ? Outcome::passed_fallback : Outcome::passed;
        keep = earlier && (shown == nullptr || ctx->remaining < shown->decision.remaining ||
                           (ctx->remaining == shown->decision.remaining &&
                            ctx->reset_s >= ceil_seconds(shown->decision.reset_ms)));
    } else if (lcf->limit.dry_run) {
        ctx->outcome = Outcome::rejected_dry_run;
    } else {
        ctx->outcome = c.fallback ? Outcome::rejected_fallback : Outcome::rejected;
    }
    ctx->decided_in = lcf;
    ctx->headers = lcf->limit.headers && (shown != nullptr || keep);
    if (shown != nullptr && !keep) {
        ctx->zone_name = &shown->zone->name;
        ctx->policy = &shown->zone->policy_header;
        ctx->limit_prefix = &shown->zone->limit_prefix;
        ctx->limit = shown->decision.limit;  // every decision says quota(policy)
        ctx->remaining = shown->decision.remaining;
        ctx->reset_s = ceil_seconds(shown->decision.reset_ms);
        ctx->retry_after_s =
            admitted ? 0 : ngx_max(1, ceil_seconds(shown->decision.retry_after_ms));
        if (!admitted) {
            ctx->reset_s = ctx->retry_after_s;  // RateLimit t= and Retry-After agree
        }
    }
    if (admitted) {
        return false;
    }
    if (shown == nullptr) {  // not reached: a rejection always names its zone
        shown = &c.applied[0];
        ctx->zone_name = &shown->zone->name;
        ctx->policy = &shown->zone->policy_header;
        ctx->limit_prefix = &shown->zone->limit_prefix;
        ctx->limit = core::quota(shown->zone->policy);
    }
    ngx_log_error(lcf->limit.log_level, r->connection->log, 0,
                  "limiting request%s%s by zone \"%V\", retry after %Ls",
                  lcf->limit.dry_run ? ", dry run," : "", c.fallback ? " (redis fallback)" : "",
                  &shown->zone->name, ctx->retry_after_s);
    return !lcf->limit.dry_run;
}

// Under the locks, after decide_here(): lease zones that hold no unit and cannot wait for a
// lease call take their fallback, and the request is decided again.
bool decide_without_waiting(Check& c, int64_t now, bool admitted) noexcept {
    while (admitted && c.need_lease) {
        unspend_leases(c);
        lease_fall_back(c);
        admitted = decide_here(c, now);
    }
    return admitted;
}

// Decides everything here (no remote zone left; a lease zone without a unit takes its
// fallback: Redis just failed). Returns whether the request was admitted.
bool decide_locally(Check& c, int64_t now) noexcept {
    lock(c);
    bool admitted = decide_without_waiting(c, now, decide_here(c, now));
    if (admitted) {
        record_here(c, now, true, true);
    } else {
        unspend_leases(c);
    }
    unlock(c);
    send_prefetches(c);
    return admitted;
}

// A request waiting for a lease call of a lease zone of its that held no unit: once the call
// is answered, it runs its check again (and finds units, the key blocked, or its fallback).
class LeaseWaiting final : public LeaseRequest {
   public:
    LeaseWaiting(ngx_http_request_t* r, ngx_uint_t zone_index)
        : LeaseRequest(r), index_(zone_index) {}

    void leased(LeaseOutcome o) noexcept override {
        ngx_http_request_t* r = request();
        if (ZoneMark* marks = marks_of(r, true)) {
            marks[index_].lease = o;
        }
        if (RequestCtx* ctx = get_ctx(r)) {
            ctx->waiting = false;
        }
        resume();
    }

   private:
    ngx_uint_t index_;
};

// Under the locks, decide_here() admitted but some lease zone holds no unit (need_lease): its
// units spent are given back, the locks released, and r waits for the lease call (true: rc is
// NGX_DONE). When it cannot (Redis unavailable), the locks are taken again, the lease zones
// without units take their fallback and `admitted` is decided again (false).
bool wait_for_lease(ngx_http_request_t* r, RequestCtx* ctx, Check& c, int64_t now,
                    bool& admitted) noexcept {
    unspend_leases(c);
    Applied* need = nullptr;
    for (ngx_uint_t i = 0; i < c.n && need == nullptr; i++) {
        if (c.applied[i].role == Role::lease && c.applied[i].need) {
            need = &c.applied[i];
        }
    }
    LeaseAsk ask = lease_plan(*need->zone, need->key, now);
    unlock(c);
    send_prefetches(c);
    bool asked = false;
    try {
        auto w = bind_to_request<LeaseWaiting>(r, need->zone->index);
        if (w != nullptr) {
            asked = true;
            if (lease_wait(*need->zone, need->key, ask, w)) {
                w->suspend();
                ctx->waiting = true;
                return true;
            }
        }
    } catch (...) {
    }
    if (!asked) {
        unmark_lease(*need->zone, need->key, ask.mark);
    }
    lock(c);
    admitted = decide_without_waiting(c, now, decide_here(c, now));
    return false;
}

// Gives back the local zones' reservations (Redis rejected, or could not answer).
void release_local(Check& c, int64_t now) noexcept {
    lock(c);
    find_states(c, now);
    unrecord_local(c);
    unlock(c);
}

// Redis could not answer: every remote zone takes its fallback.
void fall_back(Check& c) noexcept {
    for (ngx_uint_t i = 0; i < c.n; i++) {
        Applied& a = c.applied[i];
        if (a.role == Role::remote) {
            a.role = a.zone->fallback == Fallback::local  ? Role::local
                     : a.zone->fallback == Fallback::open ? Role::open
                                                          : Role::closed;
            c.fallback = true;
        }
    }
}

// Redis answered numbers no correct count gives (a foreign script, a proxy, corruption): they
// were clamped. Logged once per worker, so a bad Redis does not flood the log.
void log_clamped(ngx_http_request_t* r, const ZoneConf* zone) noexcept {
    static bool logged = false;
    if (!logged) {
        logged = true;
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "throttle_zone \"%V\": Redis answered a decision out of range for the "
                      "zone (clamped; logged once)",
                      &zone->name);
    }
}

// Redis answered for the remote zones (decisions in their order), or could not (nullptr):
// decide, then let the request go on. w held the zones meanwhile, since submitted_us
// (monotonic_us(); metrics on only).
void settle(ngx_http_request_t* r, Check& c, const redis::StrictDecision* decisions,
            const StrictRequest* w, int64_t submitted_us) noexcept {
    const LocConf* lcf = loc_conf(r);
    RequestCtx* ctx = get_ctx(r);
    int64_t now = now_ms();
    bool admitted = true;
    release_zones(r, c, w);
    ctx->waiting = false;
    if (decisions == nullptr) {
        release_local(c, now);
        fall_back(c);
        admitted = decide_locally(c, now);
    } else {
        // Redis decided (and counted, if it admitted): its answer stands. The local zones hold
        // a reservation since the request was sent; it is given back if Redis rejected.
        lock(c);
        find_states(c, now);
        size_t k = 0;
        for (ngx_uint_t i = 0; i < c.n; i++) {
            Applied& a = c.applied[i];
            if (a.role != Role::remote) {
                continue;
            }
            const redis::StrictDecision& d = decisions[k++];
            if (cm::ZoneMetrics* m = a.zone->metrics) {
                cm::add(m->strict_decisions);
                cm::observe_latency_us(m->strict_decision_duration,
                                       static_cast<uint64_t>(monotonic_us() - submitted_us));
            }
            a.decision.allowed = d.allowed;
            a.decision.remaining = d.allowed ? d.remaining : 0;
            a.decision.reset_ms = d.reset_ms;
            a.decision.retry_after_ms = d.allowed ? 0 : d.retry_after_ms;
            a.decision.limit = core::quota(a.zone->policy);
            if (core::clamp(a.zone->policy, a.decision)) {
                log_clamped(r, a.zone);
            }
            if (!d.allowed) {
                // Over the limit in Redis: reject locally until then, without asking.
                a.state->blocked_until = now + ngx_max(a.decision.retry_after_ms, 1);
                admitted = false;
            }
        }
        if (admitted) {
            record_here(c, now, false, true);  // this host's share, for a later fallback
        } else {
            unrecord_local(c);
        }
        unlock(c);
    }
    if (admitted) {
        mark_counted(r, ctx, c);
    }
    ctx->respond = conclude(r, lcf, ctx, c, admitted);
}

// A request waiting for another request of its client request (a subrequest, its main
// request) that holds a zone they share while Redis decides: once that one is decided, it
// runs its check again, which skips the zone if it was counted.
class Follower final : public RequestBound {
   public:
    using RequestBound::RequestBound;

    void wake() noexcept {
        if (gone()) {
            return;
        }
        if (RequestCtx* ctx = get_ctx(request())) {
            ctx->waiting = false;
        }
        resume();
    }
};

// Zone lists of Waitings that ended, kept for the next ones with their capacity and their
// strings' (a request that waits allocates nothing for them once a few have waited). Never
// destroyed; single-threaded, like the worker.
std::vector<std::vector<redis::StrictZone>>& spare_zone_lists() {
    static auto* spares = new std::vector<std::vector<redis::StrictZone>>();
    return *spares;
}
constexpr size_t max_spare_zone_lists = 64;

std::vector<redis::StrictZone> take_zone_list() noexcept {
    std::vector<std::vector<redis::StrictZone>>& spares = spare_zone_lists();
    if (spares.empty()) {
        return {};
    }
    std::vector<redis::StrictZone> zones = std::move(spares.back());
    spares.pop_back();
    return zones;
}

void give_back_zone_list(std::vector<redis::StrictZone>&& zones) noexcept {
    std::vector<std::vector<redis::StrictZone>>& spares = spare_zone_lists();
    if (spares.size() < max_spare_zone_lists && zones.capacity() > 0) {
        try {
            spares.push_back(std::move(zones));
        } catch (...) {
        }
    }
}

// A request waiting for Redis to decide its strict zones.
class Waiting final : public StrictRequest {
   public:
    Waiting(ngx_http_request_t* r, const Check& c, std::vector<redis::StrictZone>&& zones)
        : StrictRequest(r), check_(c), zones_(std::move(zones)) {}
    ~Waiting() override { give_back_zone_list(std::move(zones_)); }

    // Metrics: when the decision was submitted to Redis (monotonic_us()).
    void set_submitted(int64_t us) noexcept { submitted_us_ = us; }

    const std::vector<redis::StrictZone>& zones() const noexcept override { return zones_; }

    void decided(const redis::StrictDecision* decisions) noexcept override {
        settle(request(), check_, decisions, this, submitted_us_);
        // The batch holds a share of this object, the local vector one of every follower:
        // resuming a request may end them all (then gone() stops each wake()).
        std::vector<std::shared_ptr<Follower>> followers = std::move(followers_);
        resume();
        for (const auto& f : followers) {
            f->wake();
        }
    }

    void add_follower(std::shared_ptr<Follower> f) { followers_.push_back(std::move(f)); }

   private:
    Check check_;
    std::vector<redis::StrictZone> zones_;
    std::vector<std::shared_ptr<Follower>> followers_;
    int64_t submitted_us_ = 0;
};

// r waits until w is decided. NGX_DONE, or an error status.
ngx_int_t follow(ngx_http_request_t* r, RequestCtx* ctx, Waiting& w) noexcept {
    try {
        auto f = bind_to_request<Follower>(r);
        if (f == nullptr) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        w.add_follower(f);
        f->suspend();
        ctx->waiting = true;
        return NGX_DONE;
    } catch (...) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}

// Queues the remote zones' decision, holds the zones and suspends the request. Returns false
// when that was not possible.
bool ask_redis(ngx_http_request_t* r, Check& c) noexcept {
    const RedisSettings* rs = redis_settings();
    // The check outlives the handler's stack now: the request's pool keeps it for settle().
    auto* kept = static_cast<Applied*>(ngx_palloc(r->pool, c.n * sizeof(Applied)));
    if (kept == nullptr) {
        return false;
    }
    ngx_memcpy(kept, c.applied, c.n * sizeof(Applied));
    c.applied = kept;
    try {
        // A recycled list: its elements' strings keep their capacity, the bases are written
        // into them.
        std::vector<redis::StrictZone> zones = take_zone_list();
        size_t k = 0;
        for (ngx_uint_t i = 0; i < c.n; i++) {
            const Applied& a = c.applied[i];
            if (a.role != Role::remote) {
                continue;
            }
            if (k == zones.size()) {
                zones.emplace_back();
            }
            redis::StrictZone& z = zones[k++];
            const core::Policy& p = a.zone->policy;
            z.algorithm = static_cast<uint8_t>(p.algorithm);
            z.limit = p.rate.limit;
            z.period_ms = p.rate.period_ms;
            z.burst = p.burst;
            redis_base(*rs, *a.zone, a.key, z.base);
        }
        zones.resize(k);
        auto w = bind_to_request<Waiting>(r, c, std::move(zones));
        if (w == nullptr || !hold_zones(r, c, w.get())) {
            return false;
        }
        if (c.applied[0].zone->metrics != nullptr) {
            w->set_submitted(monotonic_us());
        }
        if (!strict_submit(w)) {
            release_zones(r, c, w.get());
            return false;
        }
        w->suspend();
        return true;
    } catch (...) {
        return false;
    }
}

// The zone's key for r (empty: the zone does not apply). A key that is one variable is read
// as ngx_http_complex_value() reads it (flushed, "not found" is empty), without its copy.
bool key_of(ngx_http_request_t* r, const ZoneConf& zone, ngx_str_t& key) noexcept {
    if (zone.key_index == NGX_ERROR) {
        return ngx_http_complex_value(r, const_cast<ngx_http_complex_value_t*>(&zone.key), &key) ==
               NGX_OK;
    }
    ngx_http_variable_value_t* v = ngx_http_get_flushed_variable(r, zone.key_index);
    if (v == nullptr || v->not_found) {
        key.len = 0;
        key.data = nullptr;
    } else {
        key.len = v->len;
        key.data = v->data;
    }
    return true;
}

// Watches a zone whose key reads a credential for a key that is empty whenever one is sent
// (core/key_watch.hpp): said once per worker and zone, at warn.
void watch_key(ngx_http_request_t* r, ZoneConf& zone, bool empty) noexcept {
#if nginx_version >= 1023000
    bool cookie = r->headers_in.cookie != nullptr;
#else
    bool cookie = r->headers_in.cookies.nelts > 0;
#endif
    uint8_t carried = (cookie ? core::credential_cookie : 0) |
                      (r->headers_in.authorization != nullptr ? core::credential_authorization : 0);
    if (!zone.key_watch.observe(carried, empty)) {
        return;
    }
    uint8_t sources = zone.key_watch.sources;
    const char* headers = sources == core::credential_cookie ? "a Cookie header"
                          : sources == core::credential_authorization
                              ? "an Authorization header"
                              : "a Cookie or Authorization header";
    ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                  "throttle_zone \"%V\": key \"%V\" was empty for %uD requests that carried %s "
                  "and never set: the zone applied to none of them; is the cookie or header "
                  "name right? (said once per worker)",
                  &zone.name, &zone.key.value, core::EmptyKeyWatch::threshold, headers);
}

// The zones of the location whose key is not empty for this request and that its client
// request was not counted in yet (marks, nullptr when none), in c. `busy`: a request that holds
// one of them while Redis decides, if any. False on error.
// (`c.applied`: room for the location's zones, on the stack or in the pool.)
bool applied_zones(ngx_http_request_t* r, const LimitLocConf& conf, const ZoneMark* marks, Check& c,
                   bool& remote, Waiting*& busy) noexcept {
    ngx_uint_t total = conf.zones->nelts;
    auto** zones = static_cast<ZoneConf**>(conf.zones->elts);
    remote = false;
    for (ngx_uint_t i = 0; i < total; i++) {
        ngx_str_t key;
        if (!key_of(r, *zones[i], key)) {
            return false;
        }
        if (zones[i]->key_watch.watching() && r == r->main) {
            watch_key(r, *zones[i], key.len == 0);
        }
        if (key.len == 0) {
            if (zones[i]->metrics != nullptr) {
                report(marks_of(r, true), *zones[i], cm::Outcome::skipped);
                c.skipped = true;
            }
            continue;  // an empty key: this zone does not apply to the request
        }
        if (marks != nullptr) {
            const ZoneMark& m = marks[zones[i]->index];
            if (m.counted) {
                continue;  // counted already: before an internal redirect, or in a subrequest
            }
            if (m.deciding != nullptr) {
                busy = static_cast<Waiting*>(m.deciding);  // the only StrictRequest here
            }
        }
        Role role = zones[i]->mode == Mode::strict  ? Role::remote
                    : zones[i]->mode == Mode::lease ? Role::lease
                                                    : Role::local;
        if (role == Role::lease && marks != nullptr &&
            marks[zones[i]->index].lease == LeaseOutcome::failed) {
            // The lease call this client request waited for failed: the zone's fallback.
            const_cast<ZoneMark*>(marks)[zones[i]->index].lease = LeaseOutcome::none;
            role = zones[i]->fallback == Fallback::local  ? Role::local
                   : zones[i]->fallback == Fallback::open ? Role::open
                                                          : Role::closed;
            c.fallback = true;
        }
        remote = remote || role == Role::remote;
        c.lease = c.lease || role == Role::lease;
        // The key's digest (two SHA-256 compressions for a short key, unless this worker's
        // memo has the key; the bucket hash reads only the table's seed, no lock needed). The
        // key itself goes no further.
        core::StoredKey sk =
            zones[i]->key_memo.key(zones[i]->keyer, *zones[i]->table, key.data, key.len);
        new (&c.applied[c.n++])
            Applied{zones[i], sk, role, nullptr, core::Decision{}, 0, false, 0, false, 0, 0};
    }
    if (remote) {
        redis::Target* client = redis_client();
        if (client == nullptr || !client->available()) {
            fall_back(c);
            remote = false;
        }
    }
    return true;
}

// r's context, made by its first check: a main request's holds its client request's marks
// (one allocation for both, zeroed), which mark_counted() then finds at once.
RequestCtx* new_ctx(ngx_http_request_t* r) noexcept {
    if (r != r->main) {
        return create_ctx(r);
    }
    size_t n = main_conf(r)->limit.zones.nelts;
    RequestCtx* ctx = create_ctx(r, n * sizeof(ZoneMark));
    if (ctx != nullptr) {
        ctx->marks = reinterpret_cast<ZoneMark*>(ctx + 1);
    }
    return ctx;
}

// Under the lock of c's one zone, a local one: decide_here() and, when it admits,
// record_here() in one step (core::admit: the same decision, state and token).
bool admit_one(Check& c, int64_t now) noexcept {
    Applied& a = c.applied[0];
    ZoneConf* z = a.zone;
    core::LookupResult res = z->table->lookup(a.key);
    if (res.evicted) [[unlikely]] {
        find_full(c, a, res.victim, now);
    }
    a.state = res.state;
    c.need_lease = false;
    a.decision = core::admit(z->policy, *a.state, now, a.token);
    return a.decision.allowed;
}

// conclude() of an admission by one zone decided here (Role::local), for a request this
// location decides first (no earlier decision to keep describing) with the zone's metrics off:
// the same fields, without the search for the zone to show and the comparisons with an
// earlier decision. ctx: r's; its client request's marks, when r is the main request.
void conclude_admitted_one(ngx_http_request_t* r, const LocConf* lcf, RequestCtx* ctx,
                           const Check& c) noexcept {
    const Applied& a = c.applied[0];
    if (r == r->main && ctx->marks != nullptr) {
        ctx->marks[a.zone->index].counted = true;  // mark_counted(), for this one zone
    } else {
        mark_counted(r, ctx, c);
    }
    bool fallback = c.fallback || ctx->outcome == Outcome::passed_fallback;
    ctx->outcome = fallback ? Outcome::passed_fallback : Outcome::passed;
    ctx->decided_in = lcf;
    ctx->headers = lcf->limit.headers;
    ctx->zone_name = &a.zone->name;
    ctx->policy = &a.zone->policy_header;
    ctx->limit_prefix = &a.zone->limit_prefix;
    ctx->limit = a.decision.limit;
    ctx->remaining = a.decision.remaining;
    ctx->reset_s = ceil_seconds(a.decision.reset_ms);
    ctx->retry_after_s = 0;
}

// Some zone is strict: the zones decided here first (a request they reject costs Redis
// nothing), then Redis. Local zones reserve the request meanwhile, so that concurrent requests
// cannot all pass them while Redis is asked. True when that settled what the phase handler
// returns (`rc`: NGX_DONE while Redis decides, or the rejection); false when Redis cannot be
// asked: the strict zones took their fallback, the caller decides locally.
bool decide_remote(ngx_http_request_t* r, const LocConf* lcf, RequestCtx* ctx, Check& c,
                   int64_t now, ngx_int_t& rc) noexcept {
    lock(c);
    bool admitted = decide_here(c, now);
    if (admitted && c.need_lease && wait_for_lease(r, ctx, c, now, admitted)) {
        rc = NGX_DONE;  // the lease call first; then the check runs again
        return true;
    }
    if (admitted) {
        record_here(c, now, true, false);
    } else {
        unspend_leases(c);
    }
    unlock(c);
    send_prefetches(c);
    if (!admitted) {
        rc = conclude(r, lcf, ctx, c, false) ? reject(r, lcf, ctx) : NGX_DECLINED;
        return true;
    }
    if (ask_redis(r, c)) {  // decided() is never called from inside it
        ctx->waiting = true;
        rc = NGX_DONE;
        return true;
    }
    release_local(c, now);
    fall_back(c);
    return false;
}

}  // namespace

// Main requests and subrequests alike (see the top of the file).
ngx_int_t access_handler(ngx_http_request_t* r) noexcept {
    const LocConf* lcf = loc_conf(r);
    if (lcf->limit.zones == nullptr || lcf->limit.zones->nelts == 0 || is_identity_subrequest(r)) {
        return NGX_DECLINED;  // the module's own question to the application is never counted
    }
    RequestCtx* ctx = get_ctx(r);  // the cache's, perhaps
    if (ctx != nullptr) {
        if (ctx->waiting) {
            return NGX_AGAIN;  // for Redis, or for another request of the client request
        }
        if (ctx->respond) {
            ctx->respond = false;
            return reject(r, lcf, ctx);
        }
        // Decided in this location already (the phases run again after a wait), or rejected
        // before an internal redirect: nothing more is counted. An admitted request that an
        // internal redirect brought here is checked against the zones it was not counted in.
        if (ctx->decided_in == lcf ||
            (ctx->outcome != Outcome::none && ctx->outcome != Outcome::passed &&
             ctx->outcome != Outcome::passed_fallback)) {
            return NGX_DECLINED;
        }
    }
    const RequestCtx* main = r == r->main ? ctx : get_ctx(r->main);
    Check c{nullptr, 0, false, false, false, false, false};
    alignas(Applied) unsigned char room[stack_zones * sizeof(Applied)];
    ngx_uint_t total = lcf->limit.zones->nelts;
    c.applied = total <= stack_zones
                    ? reinterpret_cast<Applied*>(room)
                    : static_cast<Applied*>(ngx_palloc(r->pool, total * sizeof(Applied)));
    bool remote = false;
    Waiting* busy = nullptr;
    if (c.applied == nullptr ||
        !applied_zones(r, lcf->limit, main != nullptr ? main->marks : nullptr, c, remote, busy)) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (c.n == 0) {
        return NGX_DECLINED;
    }
    if (ctx == nullptr && c.skipped) {
        ctx = get_ctx(r);  // counting a skipped zone may have made it (the main request's)
    }
    if (ctx == nullptr && (ctx = new_ctx(r)) == nullptr) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    if (busy != nullptr) {
        return follow(r, ctx, *busy);
    }
    int64_t now = now_ms();
    ngx_int_t rc = NGX_DECLINED;
    if (remote && decide_remote(r, lcf, ctx, c, now, rc)) {
        return rc;
    }
    bool admitted;
    if (c.n == 1 && c.applied[0].role == Role::local) {
        // The common case: one local or sync zone (lock(), unlock() for it; no lease).
        ngx_shmtx_t* mutex = &c.applied[0].zone->shpool->mutex;
        ngx_shmtx_lock(mutex);
        admitted = admit_one(c, now);
        ngx_shmtx_unlock(mutex);
        if (admitted && !c.full && ctx->zone_name == nullptr &&
            c.applied[0].zone->metrics == nullptr) {
            conclude_admitted_one(r, lcf, ctx, c);  // as below, for this case
            return NGX_DECLINED;
        }
    } else {
        lock(c);
        admitted = decide_here(c, now);
        if (admitted && c.need_lease && wait_for_lease(r, ctx, c, now, admitted)) {
            return NGX_DONE;  // the lease call first; then the check runs again
        }
        if (admitted) {
            record_here(c, now, true, true);
        } else {
            unspend_leases(c);
        }
        unlock(c);
        send_prefetches(c);
    }
    if (admitted) {
        mark_counted(r, ctx, c);
    }
    if (!conclude(r, lcf, ctx, c, admitted)) {
        return NGX_DECLINED;
    }
    return reject(r, lcf, ctx);
}

}  // namespace throttle::ngx
