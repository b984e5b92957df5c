// What the Redis reply targets (redis_reply.cpp, redis_async.cpp) share: a loop for the
// ReplyGuard, and every script reply parser over one reply, each either refusing it or keeping
// its contract.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/cache_entry.hpp"
#include "redis/cache_scripts.hpp"
#include "redis/loop.hpp"
#include "redis/reply.hpp"
#include "redis/scripts.hpp"

// A broken promise: the target stops here and libFuzzer reports it with the input.
#define FUZZ_CHECK(cond)       \
    do {                       \
        if (!(cond)) {         \
            __builtin_trap();  \
        }                      \
    } while (0)

namespace throttle::redis::fuzz {

// The loop the connection layer needs: a Deferred (end of a turn) and one socket's watch, whose
// events the target fires itself; no timers.
class FuzzLoop final : public Loop {
   public:
    // Leaves the loop's list when destroyed (a handler may destroy its owner).
    struct D final : Deferred {
        FuzzLoop* loop = nullptr;
        std::function<void()> fn;
        bool is_posted = false;
        ~D() override {
            auto& v = loop->deferred;
            v.erase(std::remove(v.begin(), v.end(), this), v.end());
        }
        void post() noexcept override { is_posted = true; }
        void cancel() noexcept override { is_posted = false; }
        bool posted() const noexcept override { return is_posted; }
    };
    uint64_t now_ms() noexcept override { return 0; }
    std::unique_ptr<Timer> create_timer(std::function<void()>) override { std::abort(); }
    std::unique_ptr<Deferred> create_deferred(std::function<void()> handler) override {
        auto d = std::make_unique<D>();
        d->loop = this;
        d->fn = std::move(handler);
        deferred.push_back(d.get());
        return d;
    }
    // One socket at a time: the target fires its events (fire()) as the real loops would.
    struct W final : IoWatch {
        FuzzLoop* loop;
        explicit W(FuzzLoop* l) : loop(l) {}
        ~W() override { loop->handler = nullptr; }
        void want_read(bool) noexcept override {}
        void want_write(bool) noexcept override {}
    };
    std::unique_ptr<IoWatch> watch(int, std::function<void(int)> h) override {
        handler = std::move(h);
        return std::make_unique<W>(this);
    }
    // The watched socket's handler, if it is still watched.
    void fire(int event) {
        if (handler) {
            std::function<void(int)> h = handler;  // the handler may destroy the watch
            h(event);
        }
    }
    std::function<void(int)> handler;

    // The end of a turn: every posted handler (which may post again).
    void end_turn() {
        for (bool ran = true; ran;) {
            ran = false;
            for (D* d : deferred) {
                if (d->is_posted) {
                    d->is_posted = false;
                    d->fn();  // may destroy any D: look again from the start
                    ran = true;
                    break;
                }
            }
        }
    }
    std::vector<D*> deferred;
};

inline size_t total_elements(const Reply& r) {
    size_t n = r.elements.size();
    for (const Reply& e : r.elements) {
        n += total_elements(e);
    }
    return n;
}

inline void check_lookup(const CacheLookup& l) {
    FUZZ_CHECK(l.ns_gen < cache_generation_limit && l.user_gen < cache_generation_limit);
    FUZZ_CHECK(l.hit == !l.entry.empty());
    FUZZ_CHECK(!(l.hit && l.lock_taken));
}

inline bool same_lookup(const CacheLookup& a, const CacheLookup& b) {
    return a.ns_gen == b.ns_gen && a.user_gen == b.user_gen && a.hit == b.hit &&
           a.entry == b.entry && a.lock_taken == b.lock_taken;
}

// Every parser over one reply: none may crash, each either refuses or keeps its contract.
inline void parse_all(const Reply& reply, size_t first_zones) {
    const size_t n = reply.elements.size();
    bool b = false;
    (void)reply.is_error("NOSCRIPT");
    (void)reply.is_error("WRONGTYPE");

    // strict
    int64_t now_ms = 0;
    std::vector<StrictDecision> dec;
    size_t zones = n > 0 ? (n - 1) / 2 : 1;
    if (parse_strict_reply(reply, zones, now_ms, dec)) {
        FUZZ_CHECK(n == 1 + 2 * zones && dec.size() == zones && now_ms >= 0);
        for (const StrictDecision& d : dec) {
            FUZZ_CHECK(d.reset_ms >= 0);
            FUZZ_CHECK(d.allowed ? d.retry_after_ms == 0 : d.retry_after_ms >= 1);
        }
    }
    std::vector<std::vector<StrictDecision>> batch;
    std::vector<size_t> counts{first_zones};
    for (size_t left = zones > first_zones ? zones - first_zones : 0; left > 0; left--) {
        counts.push_back(1);
    }
    if (parse_strict_batch_reply(reply, counts, now_ms, batch)) {
        FUZZ_CHECK(batch.size() == counts.size());
        for (size_t i = 0; i < counts.size(); i++) {
            FUZZ_CHECK(batch[i].size() == counts[i]);
        }
    }
    std::vector<size_t> bad{first_zones, 0};
    FUZZ_CHECK(!parse_strict_batch_reply(reply, bad, now_ms, batch));
    FUZZ_CHECK(!parse_strict_batch_reply(reply, {}, now_ms, batch));

    // flush
    std::vector<std::pair<uint64_t, uint64_t>> totals;
    // (2 totals per key, then whether the batch was applied)
    const size_t keys = n > 0 ? (n - 1) / 2 : 0;
    bool applied = false;
    if (parse_flush_reply(reply, keys, totals, &applied)) {
        FUZZ_CHECK(keys > 0 && n == 2 * keys + 1 && totals.size() == keys);
        FUZZ_CHECK(applied == (reply.elements[n - 1].integer == 1));
    }

    // cache lookup, single and batch: the batch's answers are the single parser's
    CacheLookup one;
    if (parse_cache_lookup_reply(reply, one)) {
        check_lookup(one);
        CacheLookup moved;
        Reply copy = reply;
        FUZZ_CHECK(parse_cache_lookup_reply(std::move(copy), moved));
        FUZZ_CHECK(same_lookup(one, moved));
        core::cache::EntryView v;
        if (one.hit && core::cache::decode(one.entry, v)) {
            FUZZ_CHECK(core::cache::valid(v));
        }
    }
    std::vector<CacheLookup> lookups;
    Reply copy = reply;
    if (parse_cache_lookup_batch_reply(std::move(copy), n / 4, lookups)) {
        FUZZ_CHECK(n == 4 * (n / 4) && lookups.size() == n / 4);
        for (size_t i = 0; i < lookups.size(); i++) {
            check_lookup(lookups[i]);
            Reply group;
            group.type = Reply::Type::Array;
            group.elements.assign(reply.elements.begin() + 4 * i,
                                  reply.elements.begin() + 4 * i + 4);
            CacheLookup alone;
            FUZZ_CHECK(parse_cache_lookup_reply(group, alone));
            FUZZ_CHECK(same_lookup(alone, lookups[i]));
        }
    }

    // the integer answers
    if (parse_cache_fill_lock_reply(reply, b)) {
        FUZZ_CHECK(b == (reply.type == Reply::Type::Status));
    }
    if (parse_cache_store_reply(reply, b) || parse_cache_release_reply(reply, b) ||
        parse_cache_renew_reply(reply, b) || parse_cache_abandon_reply(reply, b)) {
        FUZZ_CHECK(reply.type == Reply::Type::Integer);
    }
    std::vector<uint64_t> gens;
    if (parse_cache_invalidate_reply(reply, n, gens)) {
        FUZZ_CHECK(gens.size() == n);
        for (uint64_t g : gens) {
            FUZZ_CHECK(g >= 1 && g < cache_generation_limit);
        }
    }

    // a pub/sub message's payload
    for (const Reply& e : reply.elements) {
        std::string_view key;
        if (parse_cache_fill_message(e.str, b, key)) {
            FUZZ_CHECK(!key.empty() && key.data() == e.str.data() + 1);
        }
        // a purge's or a user's write (the local tier's mirror): views into the payload,
        // generations below 2^53, a bounded walk
        uint64_t g = 0;
        std::string_view ns;
        if (parse_cache_purge_message(e.str, g, ns)) {
            FUZZ_CHECK(g < cache_generation_limit && !ns.empty());
            FUZZ_CHECK(ns.data() + ns.size() == e.str.data() + e.str.size());
        }
        std::string_view id, rest;
        if (parse_cache_user_message(e.str, id, rest)) {
            FUZZ_CHECK(!id.empty() && id.data() == e.str.data() + 1);
            size_t items = 0;
            while (next_cache_user_generation(rest, g, ns)) {
                FUZZ_CHECK(g < cache_generation_limit && !ns.empty());
                FUZZ_CHECK(ns.data() >= e.str.data() &&
                           ns.data() + ns.size() <= e.str.data() + e.str.size());
                FUZZ_CHECK(++items <= e.str.size());
            }
        }
    }
}

}  // namespace throttle::redis::fuzz
