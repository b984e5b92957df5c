// The fast cache lookup (see fast_lookup.hpp).
#include "ngx/cache/fast_lookup.hpp"

#include <array>
#include <new>
#include <utility>

#include "ngx/cache/memo.hpp"
#include "ngx/cache/request.hpp"
#include "ngx/redis_link.hpp"

namespace throttle::ngx {
namespace {

CacheFastStats stats;
bool script_failing = false;  // cache_script_answered(false) last

// What one MGET asked, kept until its reply.
struct Held {
    CacheLookupBatch batch;
    CacheScriptSend script = nullptr;
    std::array<core::cache::Generation, redis::cache_lookup_batch_max> guesses;  // no allocation
};

// What cache_fast_lookup() builds an MGET from, kept between calls so that its vectors keep
// their capacity. `busy` while in use (never re-entered today: the reply path builds none).
// Made on first use in a worker and kept until it exits (nothing global with a destructor).
struct Scratch {
    std::vector<redis::CacheTarget> targets;
    redis::EvalArgs argv;
    bool busy = false;
};
Scratch* scratch_ptr = nullptr;

void answer(const std::shared_ptr<Held>& held, redis::Result&& res) noexcept {
    CacheLookupBatch& batch = held->batch;
    CacheScriptSend script = held->script;
    if (!res.ok()) {
        for (CacheQueued& q : batch) {
            cache_lookup_done(q.cr, res.failure, nullptr, false);
        }
        return;
    }
    std::vector<redis::CacheLookup> out;
    bool parsed = false;
    try {
        parsed = redis::parse_cache_fast_lookup_reply(std::move(res.reply), held->guesses.data(),
                                                      batch.size(), out);
    } catch (...) {
    }
    size_t answered = 0;
    for (size_t i = 0; parsed && i < batch.size(); i++) {
        answered += out[i].hit;
    }
    CacheLookupBatch rest;
    try {
        if (answered < batch.size()) {
            rest.reserve(batch.size() - answered);
        }
    } catch (...) {
        for (CacheQueued& q : batch) {
            cache_lookup_done(q.cr, redis::Failure::Invalid, nullptr, false);
        }
        return;
    }
    for (size_t i = 0; i < batch.size(); i++) {
        if (parsed && out[i].hit) {
            continue;
        }
        if (!batch[i].cr->gone()) {  // nothing to ask for a request that ended
            rest.push_back(std::move(batch[i]));
        }
    }
    stats.to_script += rest.size();
    if (!rest.empty()) {
        script(std::move(rest));  // the misses leave first
    }
    if (!parsed) {
        return;
    }
    for (size_t i = 0; i < batch.size(); i++) {
        if (out[i].hit) {
            stats.fast_hits++;
            cache_lookup_done(batch[i].cr, redis::Failure::None, &out[i], batch[i].want_lock);
        }
    }
}

}  // namespace

void cache_fast_lookup(CacheLookupBatch&& batch, CacheScriptSend script) noexcept {
    redis::Target* client = redis_client();
    if (client == nullptr || script_failing || batch.empty() ||
        batch.size() > redis::cache_lookup_batch_max) {
        script(std::move(batch));
        return;
    }
    std::shared_ptr<Held> held;
    if (scratch_ptr == nullptr) {
        scratch_ptr = new (std::nothrow) Scratch();
    }
    if (scratch_ptr == nullptr || scratch_ptr->busy) {
        script(std::move(batch));
        return;
    }
    Scratch& scratch = *scratch_ptr;
    scratch.busy = true;
    try {
        held = std::make_shared<Held>();
        held->batch = std::move(batch);
        held->script = script;
        scratch.targets.clear();
        for (size_t i = 0; i < held->batch.size(); i++) {
            const redis::CacheTarget t = held->batch[i].cr->target();
            scratch.targets.push_back(t);
            held->guesses[i] = cache_generation_guess(t.ns, t.id);
        }
        if (redis::build_cache_fast_lookup_argv(scratch.targets.data(), held->guesses.data(),
                                                scratch.targets.size(), scratch.argv)) {
            const auto& argv = scratch.argv.args();
            client->command(argv.data(), argv.size(),
                            [held](redis::Result&& res) noexcept { answer(held, std::move(res)); });
            stats.mgets++;
            scratch.busy = false;
            return;
        }
    } catch (...) {
    }
    scratch.busy = false;
    // No MGET was sent: the script path answers (and checks the arguments as it always did).
    script(held ? std::move(held->batch) : std::move(batch));
}

void cache_script_answered(bool ok) noexcept {
    script_failing = !ok;
}

void cache_lookup_seen(const CacheRequest& cr, const redis::CacheLookup& answer) noexcept {
    const redis::CacheTarget t = cr.target();
    cache_generation_seen(t.ns, t.id, answer.generation());
}

const CacheFastStats& cache_fast_stats() noexcept {
    return stats;
}

}  // namespace throttle::ngx
