// Strict decisions (see strict.hpp).
#include "ngx/limit/strict.hpp"

#include "ngx/limit/limit.hpp"
#include "ngx/redis_link.hpp"
#include "redis/turn_batcher.hpp"

namespace throttle::ngx {
namespace {

using Batch = std::vector<std::shared_ptr<StrictRequest>>;

redis::TurnBatcher<std::shared_ptr<StrictRequest>>* batcher = nullptr;  // owned
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

// One script call for the batch's requests.
void send(Batch&& batch) noexcept {
    auto held = std::make_shared<Batch>(std::move(batch));
    redis::Client* client = redis_client();
    try {
        std::vector<const std::vector<redis::StrictZone>*> requests;
        requests.reserve(held->size());
        for (const auto& req : *held) {
            requests.push_back(&req->zones());
        }
        redis::EvalArgs call;
        if (client == nullptr || !redis::build_strict_batch_args(requests, call)) {
            fail_all(*held);
            return;
        }
        if (batch_sizes != nullptr) {
            core::metrics::observe_size(*batch_sizes, held->size());
        }
        client->evalsha(redis::strict_batch_script(), call.keys(), call.args(),
                        [held](redis::Result&& r) noexcept {
                            std::vector<size_t> counts;
                            std::vector<std::vector<redis::StrictDecision>> out;
                            int64_t redis_now = 0;
                            bool good = false;
                            try {
                                for (const auto& req : *held) {
                                    counts.push_back(req->zones().size());
                                }
                                good = r.ok() && redis::parse_strict_batch_reply(r.reply, counts,
                                                                                 redis_now, out);
                            } catch (...) {
                            }
                            if (!good) {
                                redis_reply_unusable(r, "strict decisions");
                                fail_all(*held);
                                return;
                            }
                            for (size_t i = 0; i < held->size(); i++) {
                                deliver(*(*held)[i], out[i].data());
                            }
                        });
    } catch (...) {
        fail_all(*held);
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
            break;
        }
    }
    batcher = new redis::TurnBatcher<std::shared_ptr<StrictRequest>>(
        loop, redis::strict_batch_max, send,
        [](std::shared_ptr<StrictRequest>& req) { return req->gone(); },  // nothing to ask
        [](std::shared_ptr<StrictRequest>& req) { deliver(*req, nullptr); });
}

void strict_worker_exit() noexcept {
    delete batcher;  // drops what is queued: the requests end with the process
    batcher = nullptr;
    batch_sizes = nullptr;
}

}  // namespace throttle::ngx
