// Cache lookups (see lookup.hpp).
#include "ngx/cache/lookup.hpp"

#include <vector>

#include "ngx/cache/leases.hpp"
#include "ngx/cache/request.hpp"
#include "ngx/redis_link.hpp"
#include "redis/cache_scripts.hpp"
#include "redis/turn_batcher.hpp"

namespace throttle::ngx {
namespace {

struct Queued {
    std::shared_ptr<CacheRequest> cr;
    bool want_lock;
};

using Batch = std::vector<Queued>;

redis::TurnBatcher<Queued>* batcher = nullptr;  // owned

void fail_all(Batch& batch, redis::Failure why) noexcept {
    for (Queued& q : batch) {
        cache_lookup_done(q.cr, why, nullptr, q.want_lock);
    }
}

// One script call for the batch's lookups.
void send(Batch&& batch) noexcept {
    auto held = std::make_shared<Batch>(std::move(batch));
    redis::Target* client = redis_client();
    try {
        std::vector<redis::CacheLookupRequest> reqs;
        reqs.reserve(held->size());
        for (const Queued& q : *held) {
            redis::CacheLookupRequest rq;
            rq.target = q.cr->target();
            rq.lock_ttl_ms = static_cast<int64_t>(cache_lease_ms(*q.cr->conf));
            rq.want_lock = q.want_lock;
            rq.token = q.cr->token;
            reqs.push_back(rq);
        }
        redis::EvalArgs args;
        if (client == nullptr ||
            !redis::build_cache_lookup_batch_args(reqs.data(), reqs.size(), args)) {
            fail_all(*held, redis::Failure::Invalid);
            return;
        }
        client->evalsha(redis::cache_lookup_batch_script(), args.keys(), args.args(),
                        [held](redis::Result&& res) noexcept {
                            std::vector<redis::CacheLookup> out;
                            bool good = false;
                            try {
                                good = res.ok() && redis::parse_cache_lookup_batch_reply(
                                                       std::move(res.reply), held->size(), out);
                            } catch (...) {
                            }
                            if (!good) {
                                redis_reply_unusable(res, "cache lookup");  // its type is kept
                                fail_all(*held, res.failure);
                                return;
                            }
                            for (size_t i = 0; i < held->size(); i++) {
                                cache_lookup_done((*held)[i].cr, redis::Failure::None, &out[i],
                                                  (*held)[i].want_lock);
                            }
                        });
    } catch (...) {
        fail_all(*held, redis::Failure::Invalid);
    }
}

}  // namespace

bool cache_lookup_submit(const std::shared_ptr<CacheRequest>& cr, bool want_lock) noexcept {
    return batcher != nullptr && redis_client() != nullptr &&
           batcher->submit(Queued{cr, want_lock});
}

void lookups_init(redis::Loop& loop) {
    batcher = new redis::TurnBatcher<Queued>(
        loop, redis::cache_lookup_batch_max, send,
        [](Queued& q) { return q.cr->gone(); },  // nothing to ask for a request that ended
        [](Queued& q) { cache_lookup_done(q.cr, redis::Failure::Invalid, nullptr, q.want_lock); });
}

void lookups_exit() noexcept {
    delete batcher;
    batcher = nullptr;
}

}  // namespace throttle::ngx
