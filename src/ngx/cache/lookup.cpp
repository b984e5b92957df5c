// Cache lookups (see lookup.hpp).
#include "ngx/cache/lookup.hpp"

#include <map>
#include <vector>

#include "ngx/cache/fast_lookup.hpp"
#include "ngx/cache/leases.hpp"
#include "ngx/cache/nsgen.hpp"
#include "ngx/cache/request.hpp"
#include "ngx/redis_link.hpp"
#include "redis/cache_scripts.hpp"
#include "redis/cluster.hpp"
#include "redis/turn_batcher.hpp"

namespace throttle::ngx {
namespace {

using Queued = CacheQueued;
using Batch = CacheLookupBatch;

// Lookup calls of this worker in flight at once (TurnBatcher; 0: no limit, every turn's lookups
// go at its end). 1 (as strict) was measured and changed nothing: bench/cache.sh, throttle
// and throttle_users at -c32, 0.060-0.064 EVALSHA per request either way (the reply of a
// lookup call comes back within the turn that follows; the turn already batches), Redis
// CPU per request within the run-to-run noise. So a lookup never waits for another's call.
constexpr size_t max_calls_in_flight = 0;

redis::TurnBatcher<Queued>* batcher = nullptr;  // owned

// One call send() made has completed, or send_cluster() issued its slot calls.
void call_done() noexcept {
    if (batcher != nullptr) {
        batcher->done();
    }
}

void fail_all(Batch& batch, redis::Failure why) noexcept {
    for (Queued& q : batch) {
        cache_lookup_done(q.cr, why, nullptr, q.want_lock);
    }
}

// The answer to one script call for `held`'s lookups.
void answer(const std::shared_ptr<Batch>& held, redis::Result&& res) noexcept {
    std::vector<redis::CacheLookup> out;
    bool good = false;
    try {
        good = res.ok() &&
               redis::parse_cache_lookup_batch_reply(std::move(res.reply), held->size(), out);
    } catch (...) {
    }
    cache_script_answered(good);  // after a failure, the fast lookup waits for a good answer
    if (!good) {
        redis_reply_unusable(res, "cache lookup");  // its type is kept
        fail_all(*held, res.failure);
        return;
    }
    for (size_t i = 0; i < held->size(); i++) {
        cache_lookup_seen(*(*held)[i].cr, out[i]);  // the fast lookup's next guess
        cache_lookup_done((*held)[i].cr, redis::Failure::None, &out[i], (*held)[i].want_lock);
    }
}

redis::CacheLookupRequest request_of(const Queued& q) noexcept {
    redis::CacheLookupRequest rq;
    rq.target = q.cr->target();
    rq.lock_ttl_ms = static_cast<int64_t>(cache_lease_ms(*q.cr->conf));
    rq.want_lock = q.want_lock;
    rq.token = q.cr->token();
    return rq;
}

// What send() builds a call from, kept between calls so that their vectors keep their
// capacity (no allocation for them in steady state). The client copies the arguments before
// evalsha() returns. `busy` while in use: a send() reached from inside one (a failure answered
// at once) builds its own.
struct SendScratch {
    std::vector<redis::CacheLookupRequest> reqs;
    redis::EvalArgs args;
    bool busy = false;
};
SendScratch* send_scratch = nullptr;  // owned

// One script call for the batch's lookups, the oldest queued at `queued_ms`; call_done() once
// when `counted` (a batch the batcher handed over, not the fast path's rest).
void send(Batch&& batch, uint64_t queued_ms, bool counted = true) noexcept {
    auto held = std::make_shared<Batch>(std::move(batch));
    redis::Target* client = redis_client();
    SendScratch local;
    SendScratch& sc = send_scratch != nullptr && !send_scratch->busy ? *send_scratch : local;
    sc.busy = true;
    try {
        sc.reqs.clear();
        for (const Queued& q : *held) {
            sc.reqs.push_back(request_of(q));
        }
        if (client == nullptr ||
            !redis::build_cache_lookup_batch_args(sc.reqs.data(), sc.reqs.size(), sc.args)) {
            sc.busy = false;
            fail_all(*held, redis::Failure::Invalid);
            if (counted) {
                call_done();
            }
            return;
        }
        const auto& keys = sc.args.keys();
        const auto& args = sc.args.args();
        client->evalsha_until(redis_deadline_from(*client, queued_ms),
                              redis::cache_lookup_batch_script(), keys.data(), keys.size(),
                              args.data(), args.size(),
                              [held, counted](redis::Result&& res) noexcept {
                                  answer(held, std::move(res));
                                  if (counted) {
                                      call_done();
                                  }
                              });
    } catch (...) {
        sc.busy = false;
        fail_all(*held, redis::Failure::Invalid);
        if (counted) {
            call_done();
        }
        return;
    }
    sc.busy = false;
}

redis::Loop* lookup_loop = nullptr;

// The fast path's second call (fast_lookup.hpp): LOOKUP BATCH for the lookups the MGET did not
// answer, its timeout counted from now. Their batch left the in-flight count when it went to
// the MGET.
void send_rest(Batch&& batch) noexcept {
    send(std::move(batch), lookup_loop->now_ms(), false);
}

// On a Redis Cluster: one call per user slot, with each namespace's mirrored generation
// (nsgen.hpp). A lookup whose namespace has no fresh mirror is a BYPASS (CircuitOpen: nothing
// was asked).
void send_cluster(Batch&& batch, uint64_t queued_ms) noexcept {
    redis::Target* client = redis_client();
    std::map<uint16_t, std::pair<Batch, std::vector<uint64_t>>> by_slot;
    try {
        for (Queued& q : batch) {
            uint64_t gen = 0;
            if (client == nullptr || !cache_ns_generation(q.cr->target().ns, gen)) {
                cache_lookup_done(q.cr, redis::Failure::CircuitOpen, nullptr, q.want_lock);
                q.cr.reset();  // answered
                continue;
            }
            const redis::CacheTarget t = q.cr->target();
            auto& group =
                by_slot[redis::key_slot(core::cache::generation_key(t.prefix, t.ns, t.id))];
            group.first.push_back(std::move(q));
            group.second.push_back(gen);
        }
    } catch (...) {
        for (Queued& q : batch) {
            if (q.cr) {
                cache_lookup_done(q.cr, redis::Failure::Invalid, nullptr, q.want_lock);
            }
        }
        for (auto& [slot, group] : by_slot) {
            fail_all(group.first, redis::Failure::Invalid);
        }
        call_done();
        return;
    }
    // The batch leaves the in-flight count once its slot calls are issued: they go to several
    // nodes, and one slow node must not hold every slot's lookups behind it.
    for (auto& [slot, group] : by_slot) {
        auto held = std::make_shared<Batch>(std::move(group.first));
        try {
            std::vector<redis::CacheLookupRequest> reqs;
            reqs.reserve(held->size());
            for (const Queued& q : *held) {
                reqs.push_back(request_of(q));
            }
            redis::EvalArgs args;
            if (!redis::build_cache_lookup_batch_cluster_args(reqs.data(), group.second.data(),
                                                              reqs.size(), args)) {
                fail_all(*held, redis::Failure::Invalid);
                continue;
            }
            client->evalsha_until(
                redis_deadline_from(*client, queued_ms), redis::cache_lookup_batch_cluster_script(),
                args.keys().data(), args.keys().size(), args.args().data(), args.args().size(),
                [held](redis::Result&& res) noexcept { answer(held, std::move(res)); });
        } catch (...) {
            fail_all(*held, redis::Failure::Invalid);
        }
    }
    call_done();
}

}  // namespace

bool cache_lookup_submit(const std::shared_ptr<CacheRequest>& cr, bool want_lock) noexcept {
    return batcher != nullptr && redis_client() != nullptr &&
           batcher->submit(Queued{cr, want_lock});
}

void lookups_init(redis::Loop& loop) {
    lookup_loop = &loop;
    send_scratch = new SendScratch();
    batcher = new redis::TurnBatcher<Queued>(
        loop, redis::cache_lookup_batch_max, max_calls_in_flight,
        [](Batch&& b, uint64_t queued_ms) {
            if (cache_ns_mirrored()) {
                send_cluster(std::move(b), queued_ms);
            } else {
                cache_fast_lookup(std::move(b), send_rest);
                call_done();  // issued (the cache has no in-flight limit: see above)
            }
        },
        [](Queued& q) { return q.cr->gone(); },  // nothing to ask for a request that ended
        [](Queued& q) { cache_lookup_done(q.cr, redis::Failure::Invalid, nullptr, q.want_lock); });
}

void lookups_exit() noexcept {
    delete batcher;
    batcher = nullptr;
    delete send_scratch;
    send_scratch = nullptr;
}

}  // namespace throttle::ngx
