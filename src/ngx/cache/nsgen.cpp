// The namespace generation mirrors (see nsgen.hpp).
#include "ngx/cache/nsgen.hpp"

#include <map>
#include <memory>
#include <string>

#include "ngx/cache/worker.hpp"
#include "ngx/redis_link.hpp"
#include "redis/cache_scripts.hpp"

namespace throttle::ngx {
namespace {

struct Mirror {
    uint64_t gen = 0;
    uint64_t confirmed_at = 0;  // when the read that answered gen was sent, or the message came
    bool valid = false;         // gen was answered once
    bool asking = false;        // a read is under way
    uint64_t seq = 0;           // moves at each message: a read sent before it is older
};

struct Mirrors {
    redis::Loop* loop = nullptr;
    std::unique_ptr<redis::Timer> timer;
    std::map<std::string, Mirror, std::less<>> by_ns;
};

Mirrors* mirrors = nullptr;  // owned; deleted in nsgens_exit

void ask(const std::string& ns, Mirror& m) noexcept {
    redis::Target* client = redis_client();
    if (m.asking || client == nullptr || worker_exiting()) {
        return;
    }
    try {
        redis::EvalArgs args;
        if (!redis::build_cache_ns_generation_args(cache_prefix(), ns, args)) {
            return;
        }
        m.asking = true;
        uint64_t sent_at = mirrors->loop->now_ms();
        uint64_t seq = m.seq;
        client->evalsha(
            redis::cache_ns_generation_script(), args.keys(), args.args(),
            [ns, sent_at, seq](redis::Result&& res) noexcept {
                if (mirrors == nullptr) {
                    return;
                }
                auto it = mirrors->by_ns.find(ns);
                if (it == mirrors->by_ns.end()) {
                    return;
                }
                Mirror& m = it->second;
                m.asking = false;
                uint64_t g = 0;
                if (!res.ok() || !redis::parse_cache_ns_generation_reply(res.reply, g)) {
                    redis_reply_unusable(res, "cache namespace generation");
                    return;
                }
                if (m.valid && m.seq != seq && g < m.gen) {
                    return;  // a purge's message came after this read was sent
                }
                m.gen = g;
                m.valid = true;
                if (sent_at > m.confirmed_at) {
                    m.confirmed_at = sent_at;
                }
            });
    } catch (...) {
        m.asking = false;
    }
}

void refresh() noexcept {
    if (mirrors == nullptr || worker_exiting()) {
        return;
    }
    for (auto& [ns, m] : mirrors->by_ns) {
        ask(ns, m);
    }
    mirrors->timer->start(cache_ns_refresh_ms);
}

}  // namespace

void nsgens_init(redis::Loop& loop) {
    auto m = std::make_unique<Mirrors>();
    m->loop = &loop;
    m->timer = loop.create_timer([]() noexcept { refresh(); });
    m->timer->start(cache_ns_refresh_ms);
    mirrors = m.release();
}

void nsgens_exit() noexcept {
    delete mirrors;
    mirrors = nullptr;
}

bool cache_ns_mirrored() noexcept {
    return mirrors != nullptr;
}

bool cache_ns_generation(std::string_view ns, uint64_t& gen) noexcept {
    if (mirrors == nullptr) {
        return false;
    }
    try {
        auto it = mirrors->by_ns.find(ns);
        if (it == mirrors->by_ns.end()) {
            it = mirrors->by_ns.emplace(std::string(ns), Mirror()).first;
            ask(it->first, it->second);
            return false;
        }
        const Mirror& m = it->second;
        if (!m.valid || mirrors->loop->now_ms() - m.confirmed_at > cache_ns_stale_ms) {
            return false;
        }
        gen = m.gen;
        return true;
    } catch (...) {
        return false;
    }
}

void cache_ns_generation_seen(std::string_view ns, uint64_t gen) noexcept {
    if (mirrors == nullptr) {
        return;
    }
    auto it = mirrors->by_ns.find(ns);
    if (it == mirrors->by_ns.end()) {
        return;  // never looked up here: read at its first lookup
    }
    Mirror& m = it->second;
    m.seq++;
    if (!m.valid || gen >= m.gen) {
        m.gen = gen;
        m.valid = true;
        m.confirmed_at = mirrors->loop->now_ms();
    }
}

}  // namespace throttle::ngx
