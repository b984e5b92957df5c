// Strict decisions (see strict.hpp).
#include "ngx/limit/strict.hpp"

#include <map>
#include <string>

#include "ngx/limit/limit.hpp"
#include "ngx/redis_link.hpp"
#include "redis/cluster.hpp"
#include "redis/turn_batcher.hpp"

namespace throttle::ngx {
namespace {

using Batch = std::vector<std::shared_ptr<StrictRequest>>;

// Script calls of this worker in flight at once (TurnBatcher): the decisions that arrive while
// they are out wait, and go together in the next call when one completes (natural batching).
// One Redis only: on a Redis Cluster a batch leaves the count as soon as its slot calls are
// issued (send_cluster()). 1 gave bigger batches than 2 (bench/run.sh, strict, -c32: 0.063
// against 0.070 script calls per request).
constexpr size_t max_calls_in_flight = 1;

redis::TurnBatcher<std::shared_ptr<StrictRequest>>* batcher = nullptr;  // owned

// One call send() made has completed (its reply, error or failure delivered): the batcher may
// send the next. Not after the worker's exit began (the batcher is gone).
void call_done() noexcept {
    if (batcher != nullptr) {
        batcher->done();
    }
}

// Metrics: requests per script call, in the Redis target's entry; nullptr when metrics are off.
core::metrics::Histogram* batch_sizes = nullptr;

void deliver(StrictRequest& req, const redis::StrictDecision* decisions) noexcept {
    if (!req.gone() && !worker_exiting()) {
        req.decided(decisions);
    }
}

void fail_all(const Batch& batch) noexcept {
    for (const auto& req : batch) {
        deliver(*req, nullptr);
    }
}

// ---- Redis Cluster: one strict call per slot ----
//
// Redis refuses a script whose keys span slots, so the turn's batch is split by slot (every
// zone key's names share its BASE's hash tag {ZONE:KEY}): one call per slot, over the parts
// of the requests in that slot (a request's zones in that slot), each part decided
// all-or-nothing there. A request is admitted when every part is. When a part rejects it, or
// a slot cannot answer, the parts that admitted it counted it: they are given back with a
// refund call (redis/scripts.hpp, REFUND), so a rejected request still consumes nothing.
// The race that remains: between a part's count and its refund, another request may find that
// zone fuller than it will be, and be rejected where a single call would have admitted it --
// over-rejection only, never over-admission. A refund that cannot be delivered (a timeout, the
// node down) leaves the request counted there: under-admission, bounded by the refunds lost.
// A slot that cannot answer (its node down: the cluster client fails the call at once and asks
// for the slot map again; a timeout; a slot being migrated, whose source answers ASK, which is
// not followed: the importing node would decide without the source's counts) sends the whole
// request to its zones' fallback (decided(nullptr)), the parts that admitted it refunded.

struct ClusterRequest {
    std::shared_ptr<StrictRequest> req;
    std::vector<redis::StrictDecision> decisions;  // per zone
    size_t owed = 0;                               // slot calls not answered yet
    bool failed = false;                           // some slot did not answer
    struct Counted {
        int64_t now_ms;
        std::vector<size_t> zones;  // indices into req->zones()
    };
    std::vector<Counted> counted;  // the parts a slot admitted (counted)
};

struct Part {
    size_t request;             // index into the batch
    std::vector<size_t> zones;  // its zones in this slot
};

// A batch split by slot, held by its slot calls' callbacks.
struct ClusterBatch {
    std::vector<ClusterRequest> requests;
};

void refund(const ClusterRequest& cr, redis::Target& client) noexcept {
    const std::vector<redis::StrictZone>& zones = cr.req->zones();
    for (const auto& c : cr.counted) {
        try {
            std::vector<const redis::StrictZone*> given;
            for (size_t z : c.zones) {
                given.push_back(&zones[z]);
            }
            redis::EvalArgs call;
            if (redis::build_refund_args(c.now_ms, given, call)) {
                std::string key(given[0]->base);
                client.evalsha(redis::refund_script(), call.keys(), call.args(),
                               [key](redis::Result&& r) noexcept {
                                   // ASK: a slot being migrated; lost, not the node's fault
                                   if (r.ok() && r.reply.type == redis::Reply::Type::Error &&
                                       !r.reply.is_error("ASK") && !r.reply.is_error("TRYAGAIN")) {
                                       redis_reply_unusable(r, "strict refund", key);
                                   }
                               });
            }
        } catch (...) {  // memory: the request stays counted there (under-admission)
        }
    }
}

// Every slot answered for cr (or failed): decide, give back what a rejected request reserved.
void conclude(ClusterRequest& cr) noexcept {
    bool rejected = cr.failed;
    for (const auto& d : cr.decisions) {
        rejected = rejected || !d.allowed;
    }
    if (rejected && !cr.counted.empty()) {
        if (redis::Target* client = redis_client()) {
            refund(cr, *client);
        }
    }
    deliver(*cr.req, cr.failed ? nullptr : cr.decisions.data());
}

void slot_answered(const std::shared_ptr<ClusterBatch>& held, const std::vector<Part>& parts,
                   const std::string& key, redis::Result&& r) noexcept {
    std::vector<std::vector<redis::StrictDecision>> out;
    int64_t redis_now = 0;
    bool good = false;
    try {
        std::vector<size_t> counts;
        for (const Part& p : parts) {
            counts.push_back(p.zones.size());
        }
        good = r.ok() && redis::parse_strict_batch_reply(r.reply, counts, redis_now, out);
    } catch (...) {
    }
    // ASK (not followed: dont_follow_ask()): the slot is being migrated, the source did not
    // run the script; the request takes its fallback, which is no fault of the node's.
    bool migrating = r.ok() && (r.reply.is_error("ASK") || r.reply.is_error("TRYAGAIN"));
    if (!good && r.ok() && !migrating) {
        redis_reply_unusable(r, "strict decisions", key);
    }
    for (size_t i = 0; i < parts.size(); i++) {
        ClusterRequest& cr = held->requests[parts[i].request];
        if (!good) {
            cr.failed = true;
        } else {
            bool all = true;
            for (size_t j = 0; j < parts[i].zones.size(); j++) {
                cr.decisions[parts[i].zones[j]] = out[i][j];
                all = all && out[i][j].allowed;
            }
            if (all) {
                try {
                    cr.counted.push_back({redis_now, parts[i].zones});
                } catch (...) {  // memory: not refunded (under-admission)
                }
            }
        }
        if (--cr.owed == 0) {
            conclude(cr);
        }
    }
}

void send_cluster(Batch&& batch, redis::Target& client, uint64_t deadline) noexcept {
    std::shared_ptr<ClusterBatch> held;
    std::map<uint16_t, std::vector<Part>> slots;
    try {
        held = std::make_shared<ClusterBatch>();
        held->requests.resize(batch.size());
        for (size_t i = 0; i < batch.size(); i++) {
            ClusterRequest& cr = held->requests[i];
            cr.req = std::move(batch[i]);
            const std::vector<redis::StrictZone>& zones = cr.req->zones();
            cr.decisions.resize(zones.size());
            for (size_t z = 0; z < zones.size(); z++) {
                std::vector<Part>& in_slot = slots[redis::key_slot(zones[z].base)];
                if (in_slot.empty() || in_slot.back().request != i) {
                    in_slot.push_back(Part{i, {}});
                    cr.owed++;
                }
                in_slot.back().zones.push_back(z);
            }
        }
    } catch (...) {
        if (held == nullptr) {
            fail_all(batch);
        } else {
            for (auto& cr : held->requests) {
                if (cr.req != nullptr) {
                    deliver(*cr.req, nullptr);
                }
            }
        }
        call_done();
        return;
    }
    for (auto& [slot, parts] : slots) {
        bool sent = false;
        try {
            std::vector<std::vector<redis::StrictZone>> subs(parts.size());
            std::vector<const std::vector<redis::StrictZone>*> requests;
            for (size_t i = 0; i < parts.size(); i++) {
                const auto& zones = held->requests[parts[i].request].req->zones();
                for (size_t z : parts[i].zones) {
                    subs[i].push_back(zones[z]);
                }
                requests.push_back(&subs[i]);
            }
            std::string key(subs[0][0].base);
            redis::EvalArgs call;
            // Sent even when its node is not available(): the cluster client fails it at once
            // and asks for the slot map again (a failover may have moved the slot).
            if (redis::build_strict_batch_args(requests, call)) {
                if (batch_sizes != nullptr) {
                    core::metrics::observe_size(*batch_sizes, parts.size());
                }
                auto mine = std::make_shared<std::vector<Part>>(parts);
                client.evalsha_until(deadline, redis::strict_batch_script(), call.keys().data(),
                                     call.keys().size(), call.args().data(), call.args().size(),
                                     [held, mine, key](redis::Result&& r) noexcept {
                                         slot_answered(held, *mine, key, std::move(r));
                                     });
                sent = true;
            }
        } catch (...) {
        }
        if (!sent) {  // memory: these parts fail (fallback)
            redis::Result none;
            none.failure = redis::Failure::CircuitOpen;
            none.unsent = true;
            slot_answered(held, parts, {}, std::move(none));
        }
    }
    // Not held until its slot calls are answered: they go to several nodes, and one slow or
    // hung node (until its connection is found stuck) would hold every slot's decisions behind
    // it, past their timeouts. A cluster's batches are the turn's, as without a limit.
    call_done();
}

// Batches waiting for their reply: one per call in flight, recycled with their capacity (a
// reply callback holds a plain pointer: no allocation for it). Never destroyed.
std::vector<Batch*>& spare_batches() {
    static auto* spares = new std::vector<Batch*>();
    return *spares;
}
constexpr size_t max_spare_batches = 16;

// A batch holding `from`'s requests; `from` gets an empty vector (of the capacity a spare had,
// for the batcher to fill again). May throw std::bad_alloc.
Batch* hold(Batch& from) {
    std::vector<Batch*>& spares = spare_batches();
    Batch* b = nullptr;
    if (!spares.empty()) {
        b = spares.back();
        spares.pop_back();
    } else {
        b = new Batch();
    }
    b->swap(from);
    return b;
}

void give_back(Batch* b) noexcept {
    b->clear();
    std::vector<Batch*>& spares = spare_batches();
    if (spares.size() < max_spare_batches) {
        try {
            spares.push_back(b);
            return;
        } catch (...) {
        }
    }
    delete b;
}

// Reused by decide() from reply to reply (capacity kept).
struct ReplyScratch {
    std::vector<size_t> counts;
    std::vector<std::vector<redis::StrictDecision>> out;
    bool busy = false;
};

// The batch's reply: every request gets its decisions, or fails (its fallback).
void decide(Batch& batch, redis::Result& r) noexcept {
    static auto* kept = new ReplyScratch();
    ReplyScratch local;  // only should a delivery run into another reply (never expected)
    ReplyScratch& s = kept->busy ? local : *kept;
    s.busy = true;
    s.counts.clear();
    int64_t redis_now = 0;
    bool good = false;
    try {
        for (const auto& req : batch) {
            s.counts.push_back(req->zones().size());
        }
        good = r.ok() && redis::parse_strict_batch_reply(r.reply, s.counts, redis_now, s.out);
    } catch (...) {
    }
    if (!good) {
        redis_reply_unusable(r, "strict decisions");
        fail_all(batch);
    } else {
        for (size_t i = 0; i < batch.size(); i++) {
            deliver(*batch[i], s.out[i].data());
        }
    }
    s.busy = false;
}

// One script call for the batch's requests (a Redis Cluster: one per slot), whose oldest was
// queued at `queued_ms`. call_done() once it completed, or at once when it could not be made.
void send(Batch&& batch, uint64_t queued_ms) noexcept {
    redis::Target* client = redis_client();
    if (client != nullptr && client->clustered()) {
        send_cluster(std::move(batch), *client, redis_deadline_from(*client, queued_ms));
        return;
    }
    Batch* held = nullptr;
    try {
        held = hold(batch);
    } catch (...) {
        fail_all(batch);
        call_done();
        return;
    }
    try {
        // One per worker, reused: its buffers keep their capacity (evalsha copies the
        // arguments, written once in RESP; build_strict_batch_args clears it first).
        static auto* requests = new std::vector<const std::vector<redis::StrictZone>*>();
        static auto* call = new redis::EvalResp();
        requests->clear();
        for (const auto& req : *held) {
            requests->push_back(&req->zones());
        }
        if (client == nullptr || !redis::build_strict_batch_args(*requests, *call)) {
            fail_all(*held);
            give_back(held);
            call_done();
            return;
        }
        if (batch_sizes != nullptr) {
            core::metrics::observe_size(*batch_sizes, held->size());
        }
        client->evalsha_until(redis_deadline_from(*client, queued_ms), redis::strict_batch_script(),
                              *call, [held](redis::Result&& r) noexcept {
                                  decide(*held, r);
                                  give_back(held);
                                  call_done();
                              });
    } catch (...) {  // nothing was queued: the callback will not be called
        fail_all(*held);
        give_back(held);
        call_done();
    }
}

}  // namespace

bool strict_submit(std::shared_ptr<StrictRequest> request) noexcept {
    return batcher != nullptr && redis_client() != nullptr && batcher->submit(std::move(request));
}

void strict_worker_init(const MainConf& mcf, redis::Loop& loop) {
    batch_sizes = mcf.metrics.redis != nullptr ? &mcf.metrics.redis->strict_batch_size : nullptr;
    auto** zones = static_cast<ZoneConf**>(mcf.limit.zones.elts);
    for (ngx_uint_t i = 0; i < mcf.limit.zones.nelts; i++) {
        if (zones[i]->mode == Mode::strict) {
            redis_client()->add_script(redis::strict_batch_script(), permission_probe_key(mcf));
            if (auto* cluster = dynamic_cast<redis::ClusterClient*>(redis_client())) {
                cluster->add_script(redis::refund_script(), permission_probe_key(mcf));
                cluster->dont_follow_ask(redis::strict_batch_script());
                cluster->dont_follow_ask(redis::refund_script());
            }
            break;
        }
    }
    batcher = new redis::TurnBatcher<std::shared_ptr<StrictRequest>>(
        loop, redis::strict_batch_max, max_calls_in_flight, send,
        [](std::shared_ptr<StrictRequest>& req) { return req->gone(); },  // nothing to ask
        [](std::shared_ptr<StrictRequest>& req) { deliver(*req, nullptr); });
}

void strict_worker_exit() noexcept {
    delete batcher;  // drops what is queued: the requests end with the process
    batcher = nullptr;
    batch_sizes = nullptr;
}

}  // namespace throttle::ngx
