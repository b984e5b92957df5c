// A fill (see fill.hpp).
#include "ngx/cache/fill.hpp"

#include <algorithm>
#include <functional>
#include <memory>
#include <new>

#include "core/gzip.hpp"
#include "ngx/cache/leases.hpp"
#include "ngx/cache/local.hpp"
#include "ngx/cache/memo.hpp"
#include "ngx/cache/nsgen.hpp"
#include "ngx/cache/orphans.hpp"
#include "ngx/cache/refusals.hpp"
#include "ngx/cache/vary.hpp"
#include "ngx/cache/waiters.hpp"
#include "ngx/cache/worker.hpp"
#include "ngx/conf.hpp"
#include "ngx/metrics.hpp"
#include "ngx/redis_link.hpp"
#include "redis/cache_scripts.hpp"

namespace throttle::ngx {
namespace {

// STORE, or on a Redis Cluster STORE CLUSTER (the namespace generation only names the entry).
bool build_store_args(const redis::CacheTarget& t, const core::cache::Generation& gen,
                      std::string_view token, std::string_view entry, int64_t ttl_ms,
                      std::string_view channel, redis::EvalArgs& out) noexcept {
    return cache_ns_mirrored()
               ? redis::build_cache_store_cluster_args(t, gen, token, entry, ttl_ms, channel, out)
               : redis::build_cache_store_args(t, gen, token, entry, ttl_ms, channel, out);
}

const redis::Script& store_script() {
    return cache_ns_mirrored() ? redis::cache_store_cluster_script() : redis::cache_store_script();
}

namespace cm = core::metrics;

redis::CacheTarget target_of(const FillLock& lock) noexcept {
    redis::CacheTarget t;
    t.prefix = cache_prefix();
    t.ns = lock.ns;
    t.id = lock.id;
    t.key = lock.key;
    return t;
}

// Redis' own trouble is logged by its client, once per incident; this is what it cost.
void log_redis_failure(const char* what, const redis::Result& res) noexcept {
    redis_reply_unusable(res, what);
    ngx_log_error(NGX_LOG_INFO, ngx_cycle->log, 0, "throttle_cache: %s failed: %s", what,
                  res.ok() ? "unexpected reply" : redis::to_string(res.failure));
}

// The STORE of an entry was answered (issue 11's counters; m nullptr: metrics off): stored,
// or refused because a generation moved since the lookup (an invalidation during the fill).
void count_store(cm::CacheMetrics* m, const redis::Result& res, bool parsed, bool stored,
                 size_t bytes) noexcept {
    if (m == nullptr || !res.ok() || !parsed) {
        return;
    }
    if (stored) {
        cm::add(m->stores);
        cm::add(m->stored_bytes, bytes);
    } else {
        cm::add(m->refusals[static_cast<size_t>(cm::StoreRefusal::generation_moved)]);
    }
}

// A gzip body that did not inflate within max_size: too large when its trailer says it is
// (ISIZE, the plain size mod 2^32), else not storable (corrupt).
cm::StoreRefusal inflate_refusal(std::string_view gz, size_t max_size) noexcept {
    if (gz.size() >= 4) {
        auto b = [&](size_t i) { return static_cast<uint32_t>(static_cast<uint8_t>(gz[i])); };
        size_t n = gz.size() - 4;
        uint32_t isize = b(n) | b(n + 1) << 8 | b(n + 2) << 16 | b(n + 3) << 24;
        if (isize > max_size) {
            return cm::StoreRefusal::too_large;
        }
    }
    return cm::StoreRefusal::uncacheable;
}

// The storing rules' policy for this location.
core::cache::Policy policy_of(const CacheLocConf& conf, bool user_identity) noexcept {
    core::cache::Policy policy;
    const ngx_array_t* valid = conf.valid;
    policy.valid = valid ? static_cast<core::cache::ValidTime*>(valid->elts) : nullptr;
    policy.valid_count = valid ? valid->nelts : 0;
    policy.user_identity = user_identity;
    policy.identity_verified = conf.user_verified;
    policy.max_entry_size = conf.max_size;
    policy.stale_ms = static_cast<int64_t>(conf.stale);
    policy.accept_gzip = true;  // inflated before storing, stored in the module's own format
    policy.keyed_headers = view(conf.key_headers);  // Vary on them is fine: the key holds them
    return policy;
}

}  // namespace

void Fill::begin(ngx_http_request_t* r, const CacheLocConf* conf, FillLock lock,
                 const core::cache::Generation& gen, std::string entry_key, const FillVary& vary) {
    conf_ = conf;
    vary_ = vary;
    lock_ = std::move(lock);
    gen_ = gen;
    entry_key_ = std::move(entry_key);
    holder_ = true;
    over_ = false;
    cache_fill_started(entry_key_);
    if (r != nullptr) {
        lease_ = start_lease(r, entry_key_, lock_.token, lock_.lease);
    }
}

void Fill::end_lease() noexcept {
    if (lease_) {
        lease_->stop();
        lease_.reset();
    }
}

void Fill::on_header(ngx_http_request_t* r, bool same_location) noexcept {
    if (!active() || capture_) {
        return;
    }
    if (r->upstream == nullptr || !same_location || r->header_only) {
        release();  // not the upstream's answer to this lookup
        return;
    }
    try {
        capture(r);
    } catch (const std::exception& e) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "throttle_cache: %s", e.what());
        release();
    }
}

// Decides from the upstream's headers whether the response is stored; starts the capture.
void Fill::capture(ngx_http_request_t* r) {
    std::vector<core::cache::HeaderView>& hv = headers_;
    hv.clear();
    if (r->headers_out.content_type.len > 0) {
        hv.push_back({"Content-Type", view(r->headers_out.content_type)});
    }
    for (ngx_list_part_t* part = &r->headers_out.headers.part; part; part = part->next) {
        auto* h = static_cast<ngx_table_elt_t*>(part->elts);
        for (ngx_uint_t i = 0; i < part->nelts; i++) {
            if (h[i].hash != 0) {
                hv.push_back({view(h[i].key), view(h[i].value)});
            }
        }
    }
    // proxy_pass and friends consume X-Accel-Expires (it is not among the headers sent on):
    // the rules read it from the upstream's headers.
    size_t storable_end = hv.size();
    if (r->upstream->headers_in.x_accel_expires != nullptr) {
        hv.push_back({"X-Accel-Expires", view(r->upstream->headers_in.x_accel_expires->value)});
    }

    core::cache::Response resp;
    resp.status = static_cast<uint16_t>(r->headers_out.status);
    resp.method = "GET";
    resp.headers = hv.data();
    resp.header_count = hv.size();
    resp.content_length = r->headers_out.content_length_n;
    resp.now_ms = now_ms();
    core::cache::Decision d =
        core::cache::decide(policy_of(*conf_, lock_.id != core::cache::anonymous_identity), resp);
    if (!d.store()) {
        cache_refused(r, *conf_, d.verdict);
        release();
        return;
    }
    store_key_ = vary_.base;
    if (!d.vary.empty() && !cache_variant(r, vary_.base, d.vary, store_key_)) {
        cache_refused(r, *conf_, core::cache::Verdict::vary_value_too_long);
        release();
        return;
    }
    // Keep what an entry holds: not X-Accel-Expires, not what header_storable() refuses.
    hv.resize(storable_end);
    hv.erase(std::remove_if(hv.begin(), hv.end(),
                            [](const core::cache::HeaderView& h) {
                                return !core::cache::header_storable(h.name);
                            }),
             hv.end());
    decision_ = d;
    status_ = resp.status;
    capture_ = true;
    if (resp.content_length > 0) {
        body_.reserve(static_cast<size_t>(resp.content_length));
    }
}

void Fill::on_body(ngx_http_request_t* r, ngx_chain_t* in) noexcept {
    if (!capture_) {
        return;
    }
    try {
        for (ngx_chain_t* cl = in; cl != nullptr; cl = cl->next) {
            if (!append(cl->buf)) {
                cache_refused(r, *conf_, core::cache::Verdict::too_large);
                release();
                return;
            }
            if (cl->buf->last_buf) {
                store(r);
                return;
            }
        }
    } catch (const std::exception& e) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0, "throttle_cache: %s", e.what());
        release();
    }
}

bool Fill::append(ngx_buf_t* b) {
    if (ngx_buf_in_memory(b)) {
        body_.append(reinterpret_cast<const char*>(b->pos), b->last - b->pos);
    } else if (b->in_file && b->file_last > b->file_pos) {
        size_t size = static_cast<size_t>(b->file_last - b->file_pos);
        if (body_.size() + size > conf_->max_size) {
            return false;
        }
        size_t at = body_.size();
        body_.resize(at + size);
        ssize_t n =
            ngx_read_file(b->file, reinterpret_cast<u_char*>(&body_[at]), size, b->file_pos);
        if (n != static_cast<ssize_t>(size)) {
            return false;
        }
    }
    return body_.size() <= conf_->max_size;
}

// The entry's bytes for the captured response, with its TTL in Redis; empty when it is not to
// be stored after all (logged).
std::string Fill::encode(ngx_http_request_t* r, int64_t now, int64_t& ttl_ms) {
    if (r->headers_out.status != status_ ||
        (r->headers_out.content_length_n >= 0 &&
         static_cast<uint64_t>(r->headers_out.content_length_n) != body_.size())) {
        return {};  // the body is not whole, or a filter changed the answer
    }
    if (decision_.gzip_body) {
        // The upstream compressed it (Django's GZipMiddleware): keep the plain bytes.
        std::string plain;
        if (!core::gzip_decompress(body_, plain, conf_->max_size)) {
            cache_count_refusal(*conf_, inflate_refusal(body_, conf_->max_size));
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "throttle_cache: response not stored: its gzip body does not inflate "
                          "within throttle_cache_max_size");
            return {};
        }
        body_.swap(plain);
    }
    // A filter behind this one that rewrites the body (SSI, sub_filter, addition) asked for it
    // in memory: it will rewrite a hit too, and none of them reads gzip, so a gzip'd entry
    // would reach gzip clients unprocessed. Such an entry is stored plain.
    std::string gz;
    bool compressed = !r->filter_need_in_memory && body_.size() >= conf_->min_compress &&
                      core::gzip_compress(body_, gz) && gz.size() < body_.size();
    if (headers_.size() > core::cache::entry_max_headers) {
        cache_count_refusal(*conf_, cm::StoreRefusal::uncacheable);
        return {};
    }
    core::cache::EntryView v;
    v.status = status_;
    v.gzip = compressed;
    v.plain_size = body_.size();
    v.header_count = headers_.size();
    std::copy(headers_.begin(), headers_.end(), v.headers);
    v.body = compressed ? std::string_view(gz) : std::string_view(body_);
    core::cache::Decision d = decision_;
    int64_t cap = redis::cache_generation_ttl_ms;
    d.ttl_ms = std::min(d.ttl_ms, cap);
    d.stale_ms = std::min(d.stale_ms, cap - d.ttl_ms);
    core::cache::set_times(v, d, now);
    core::cache::DecodeLimits limits;
    limits.max_size = conf_->max_size;
    if (!core::cache::valid(v, limits)) {
        cache_count_refusal(*conf_, cm::StoreRefusal::uncacheable);
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "throttle_cache: response not stored: headers the entry format refuses");
        return {};
    }
    ttl_ms = v.stale_until_ms - now;
    return core::cache::encode(v);
}

// The last buffer passed: STORE the entry (and the vary record; see fill.hpp).
void Fill::store(ngx_http_request_t* r) {
    capture_ = false;
    int64_t ttl = 0;
    auto entry = std::make_shared<const std::string>(encode(r, now_ms(), ttl));
    drop_body();
    redis::EvalArgs args;
    redis::Target* client = redis_client();
    redis::CacheTarget target = target_of(lock_);
    target.key = store_key_;
    const core::cache::VaryList& vary = decision_.vary;
    std::shared_ptr<const std::string> record;
    if (!vary.empty()) {
        record = std::make_shared<const std::string>(core::cache::encode_vary_record(vary));
    }
    if (entry->empty() || client == nullptr || ttl < 1 ||
        !build_store_args(target, gen_, lock_.token, *entry, ttl, cache_channel(), args)) {
        release();
        return;
    }
    // Where the lock is: under the key stored (as without Vary), under the base key the record
    // goes to, or elsewhere (given back by RELEASE).
    const bool lock_here = store_key_ == lock_.key;
    const bool lock_at_record = !lock_here && record && lock_.key == vary_.base;
    over_ = true;
    end_lease();
    cm::CacheMetrics* m = conf_->metrics->m;
    std::function<void()> keep;  // the local tier's copy, once Redis stored
    if (local_ && cache_local_applies(*conf_, lock_.id) && entry->size() <= conf_->local.max_size) {
        keep = [conf = conf_, ns = lock_.ns, id = lock_.id, key = store_key_, gen = gen_,
                seen = local_seen_, entry]() {
            cache_local_put(*conf, core::cache::LocalKey{ns, id, key}, gen, seen, *entry);
        };
    }
    if (lock_here) {
        client->evalsha(
            store_script(), args.keys(), args.args(),
            [e = entry_key_, lock = lock_, entry, m, keep](redis::Result&& res) noexcept {
                bool stored = false;
                bool parsed = res.ok() && redis::parse_cache_store_reply(res.reply, stored);
                if (!parsed) {
                    log_redis_failure("store", res);
                    if (!res.ok()) {
                        cache_abandon_lock(lock);  // the lock (and waiters elsewhere) may be left
                    }
                }
                count_store(m, res, parsed, stored, entry->size());
                if (stored && keep) {
                    keep();
                }
                cache_fill_ended(e, stored, stored ? entry : nullptr);
            });
    } else {
        client->evalsha(store_script(), args.keys(), args.args(),
                        [entry, m, keep](redis::Result&& res) noexcept {
                            bool stored = false;
                            bool parsed =
                                res.ok() && redis::parse_cache_store_reply(res.reply, stored);
                            if (!parsed) {
                                log_redis_failure("store", res);
                            }
                            count_store(m, res, parsed, stored, entry->size());
                            if (stored && keep) {
                                keep();
                            }
                        });
    }
    if (record) {
        cache_vary_memo_put(vary_.tag, vary);
        store_record(record, ttl, lock_at_record);
    } else {
        cache_vary_memo_forget(vary_.tag);
    }
    if (!lock_here && !lock_at_record) {
        release_lock();
    }
}

// The vary record under the base key, for as long as the entry just stored.
void Fill::store_record(const std::shared_ptr<const std::string>& record, int64_t ttl,
                        bool holds_lock) {
    redis::Target* client = redis_client();
    redis::CacheTarget target = target_of(lock_);
    target.key = vary_.base;
    redis::EvalArgs args;
    if (!build_store_args(target, gen_, lock_.token, *record, ttl, cache_channel(), args)) {
        if (holds_lock) {
            release_lock();
        }
        return;
    }
    client->evalsha(store_script(), args.keys(), args.args(),
                    [e = entry_key_, lock = lock_, holds_lock](redis::Result&& res) noexcept {
                        bool stored = false;
                        if (!res.ok() || !redis::parse_cache_store_reply(res.reply, stored)) {
                            log_redis_failure("vary record store", res);
                            if (!res.ok() && holds_lock) {
                                cache_abandon_lock(lock);
                            }
                        }
                        if (holds_lock) {
                            // Waiters of the base key look up again: the record sends each to
                            // its own variant.
                            cache_fill_ended(e, stored, nullptr);
                        }
                    });
}

void Fill::drop_body() noexcept {
    capture_ = false;
    body_.clear();
    body_.shrink_to_fit();
}

void Fill::release() noexcept {
    if (!active()) {
        return;
    }
    over_ = true;
    drop_body();
    end_lease();
    release_lock();
}

// RELEASE of the lock this fill holds; wakes the waiters (nothing stored under its key).
void Fill::release_lock() noexcept {
    try {
        redis::Target* client = redis_client();
        redis::EvalArgs args;
        if (client != nullptr && !worker_exiting() &&
            redis::build_cache_release_args(target_of(lock_), gen_, lock_.token, cache_channel(),
                                            args)) {
            client->evalsha(redis::cache_release_script(), args.keys(), args.args(),
                            [lock = lock_](redis::Result&& res) noexcept {
                                bool had = false;
                                if (res.ok() && redis::parse_cache_release_reply(res.reply, had)) {
                                    return;
                                }
                                log_redis_failure("fill lock release", res);
                                if (!res.ok()) {
                                    cache_abandon_lock(lock);
                                }
                            });
        }
    } catch (...) {
        // The lock expires by itself, a lease after its last renewal.
    }
    cache_fill_ended(entry_key_, false, nullptr);
}

}  // namespace throttle::ngx
