// core/metrics: the registry across configurations, per-worker gauges, histograms, and the
// Prometheus and JSON texts.
#include "core/metrics.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <set>
#include <string>

#include "core/metrics_text.hpp"

namespace m = throttle::core::metrics;

namespace {

struct Block {
    Block() : mem(new uint64_t[m::Registry::bytes() / 8 + 1]) {}
    void* get() { return mem.get(); }
    std::unique_ptr<uint64_t[]> mem;
};

std::set<int64_t> live;
bool alive(int64_t pid) {
    return live.count(pid) != 0;
}

}  // namespace

TEST(Metrics, HistogramBucketsAreUpperBoundsInclusive) {
    m::Histogram h{};
    m::observe_latency_us(h, 100);      // le 0.0001
    m::observe_latency_us(h, 101);      // le 0.00025
    m::observe_latency_us(h, 9000000);  // +Inf
    EXPECT_EQ(m::read(h.buckets[0]), 1u);
    EXPECT_EQ(m::read(h.buckets[1]), 1u);
    EXPECT_EQ(m::read(h.buckets[m::bucket_count]), 1u);
    EXPECT_EQ(m::read(h.count), 3u);
    EXPECT_EQ(m::read(h.sum), 9000201u);
}

TEST(Metrics, ARegistryKeepsClaimedEntriesAcrossConfigurations) {
    Block b;
    m::Registry* r = m::Registry::create(b.get());
    r->begin_cycle();
    m::ZoneMetrics* login = r->zone("login");
    m::ZoneMetrics* api = r->zone("api");
    ASSERT_NE(login, nullptr);
    ASSERT_NE(api, nullptr);
    EXPECT_NE(login, api);
    m::count(login, m::Outcome::rejected);
    EXPECT_EQ(r->zone("login"), login) << "the same name in one configuration is one entry";

    // A reload: the registry is found again in the same memory; login is kept, api is gone.
    m::Registry* again = m::Registry::attach(b.get());
    ASSERT_EQ(again, r);
    again->begin_cycle();
    EXPECT_EQ(again->zone("login"), login);
    EXPECT_EQ(m::read(login->requests[static_cast<size_t>(m::Outcome::rejected)]), 1u);
    m::ZoneMetrics* fresh = again->zone("fresh");
    ASSERT_NE(fresh, nullptr);
    EXPECT_NE(fresh, api) << "api's old workers may still count: its entry is not reused yet";

    // One more reload without api: now its place is free, and a new name starts at zero.
    m::count(api, m::Outcome::passed);
    again->begin_cycle();
    again->zone("login");
    std::set<m::ZoneMetrics*> seen;
    for (int i = 0; i < 256; i++) {
        m::ZoneMetrics* z = again->zone("z" + std::to_string(i));
        if (z == nullptr) {
            break;
        }
        EXPECT_EQ(m::read(z->requests[static_cast<size_t>(m::Outcome::passed)]), 0u);
        seen.insert(z);
    }
    EXPECT_EQ(seen.count(api), 1u) << "the entry unclaimed for two configurations was reused";
    EXPECT_EQ(seen.count(login), 0u);
    EXPECT_EQ(seen.size(), m::Registry::max_zones - 2)
        << "all but login's and fresh's (the previous configuration's, still in use)";
    EXPECT_EQ(again->zone("one-too-many"), nullptr);
}

TEST(Metrics, NamesAreBoundedAndKindsSeparate) {
    Block b;
    m::Registry* r = m::Registry::create(b.get());
    r->begin_cycle();
    EXPECT_EQ(r->zone(""), nullptr);
    EXPECT_EQ(r->zone(std::string(m::max_name + 1, 'a')), nullptr);
    EXPECT_NE(r->zone(std::string(m::max_name, 'a')), nullptr);
    EXPECT_NE(r->cache("a"), nullptr);
    EXPECT_NE(r->redis("127.0.0.1:6379"), nullptr);
    EXPECT_NE(static_cast<void*>(r->cache("x")), static_cast<void*>(r->zone("x")));
}

TEST(Metrics, AttachRefusesMemoryOfAnotherLayout) {
    Block b;
    std::memset(b.get(), 0, m::Registry::bytes());
    EXPECT_EQ(m::Registry::attach(b.get()), nullptr);
    m::Registry::create(b.get());
    static_cast<uint32_t*>(b.get())[1] ^= 1;  // the layout word
    EXPECT_EQ(m::Registry::attach(b.get()), nullptr);
}

TEST(Metrics, GaugesOfDeadWorkersAreNotSummed) {
    Block b;
    m::Registry* r = m::Registry::create(b.get());
    r->begin_cycle();
    m::RedisMetrics* redis = r->redis("127.0.0.1:6379");
    live = {101, 102};
    m::WorkerGauge* a = m::claim_worker(*redis, 101, alive);
    m::WorkerGauge* c = m::claim_worker(*redis, 102, alive);
    ASSERT_NE(a, nullptr);
    ASSERT_NE(c, nullptr);
    a->connected = 1;
    a->pending = 3;
    c->connected = 1;
    c->breaker_open = 1;
    m::RedisGauges g = m::sum_workers(*redis, alive);
    EXPECT_EQ(g.connected, 2);
    EXPECT_EQ(g.pending, 3);
    EXPECT_EQ(g.breaker_open, 1);

    live.erase(101);  // kill -9: nobody released the slot
    g = m::sum_workers(*redis, alive);
    EXPECT_EQ(g.connected, 1);
    EXPECT_EQ(g.pending, 0);

    live.insert(103);
    m::WorkerGauge* d = m::claim_worker(*redis, 103, alive);
    EXPECT_EQ(d, a) << "the dead worker's slot is taken over, zeroed";
    EXPECT_EQ(d->pending.load(), 0);
    m::release_worker(c);
    EXPECT_EQ(m::sum_workers(*redis, alive).breaker_open, 0);
}

TEST(Metrics, PrometheusTextHasFamiliesOnceWithCumulativeBuckets) {
    Block b;
    m::Registry* r = m::Registry::create(b.get());
    r->begin_cycle();
    m::ZoneMetrics* login = r->zone("login");
    m::ZoneMetrics* api = r->zone("a\"p\\i\n");
    m::count(login, m::Outcome::rejected);
    m::count(login, m::Outcome::rejected);
    m::count(api, m::Outcome::passed);
    m::add(api->sync_flushes);
    m::observe_size(api->sync_flush_keys, 3);
    m::observe_size(api->sync_flush_keys, 300);
    api->sync_last_flush = 1000;
    m::CacheMetrics* ns = r->cache("review");
    m::add(ns->lookups[static_cast<size_t>(m::CacheLookup::hit)], 5);
    m::RedisMetrics* redis = r->redis("127.0.0.1:6379");
    m::observe_latency_us(redis->command_duration, 150);

    m::Snapshot s;
    s.zones.push_back({"login", "local", login, 3, 1024});
    s.zones.push_back({"a\"p\\i\n", "sync", api, 1, 1024});
    s.caches.push_back({"review", ns});
    s.redis.push_back({"127.0.0.1:6379", redis, {1, 0, 2}});
    s.now_ms = 3500;
    std::string t = m::prometheus_text(s);

    EXPECT_NE(t.find("# TYPE nginx_throttle_requests_total counter\n"), std::string::npos);
    EXPECT_NE(t.find("nginx_throttle_requests_total{zone=\"login\",mode=\"local\",outcome="
                     "\"rejected\"} 2\n"),
              std::string::npos);
    EXPECT_NE(t.find("nginx_throttle_requests_total{zone=\"a\\\"p\\\\i\\n\",mode=\"sync\","
                     "outcome=\"passed\"} 1\n"),
              std::string::npos)
        << t;
    EXPECT_NE(t.find("nginx_throttle_keys{zone=\"login\",mode=\"local\"} 3\n"), std::string::npos);
    // Sync families only for the sync zone.
    EXPECT_EQ(t.find("nginx_throttle_sync_flushes_total{zone=\"login\""), std::string::npos);
    EXPECT_NE(t.find("nginx_throttle_sync_flush_keys_bucket{zone=\"a\\\"p\\\\i\\n\",mode="
                     "\"sync\",le=\"4\"} 1\n"),
              std::string::npos);
    EXPECT_NE(t.find("nginx_throttle_sync_flush_keys_bucket{zone=\"a\\\"p\\\\i\\n\",mode="
                     "\"sync\",le=\"+Inf\"} 2\n"),
              std::string::npos);
    EXPECT_NE(t.find("nginx_throttle_sync_flush_keys_sum{zone=\"a\\\"p\\\\i\\n\",mode=\"sync\"} "
                     "303\n"),
              std::string::npos);
    EXPECT_NE(t.find("nginx_throttle_sync_last_flush_age_seconds{zone=\"a\\\"p\\\\i\\n\",mode="
                     "\"sync\"} 2.5\n"),
              std::string::npos);
    EXPECT_EQ(t.find("strict_decisions"), std::string::npos) << "no strict zone";
    EXPECT_NE(t.find("nginx_throttle_redis_command_duration_seconds_bucket{target="
                     "\"127.0.0.1:6379\",le=\"0.00025\"} 1\n"),
              std::string::npos);
    EXPECT_NE(t.find("nginx_throttle_redis_command_duration_seconds_sum{target="
                     "\"127.0.0.1:6379\"} 0.00015\n"),
              std::string::npos);
    EXPECT_NE(t.find("nginx_throttle_redis_pending_commands{target=\"127.0.0.1:6379\"} 2\n"),
              std::string::npos);
    EXPECT_NE(t.find("nginx_throttle_cache_lookups_total{namespace=\"review\",status=\"HIT\"} 5\n"),
              std::string::npos);

    // Each family's HELP and TYPE once, before its samples; nothing after the last newline.
    std::set<std::string> types;
    size_t pos = 0;
    while ((pos = t.find("# TYPE ", pos)) != std::string::npos) {
        size_t end = t.find(' ', pos + 7);
        EXPECT_TRUE(types.insert(t.substr(pos + 7, end - pos - 7)).second)
            << t.substr(pos + 7, end - pos - 7);
        pos = end;
    }
    EXPECT_GT(types.size(), 20u);
    EXPECT_EQ(t.back(), '\n');
}

TEST(Metrics, JsonCarriesTheSameNumbers) {
    Block b;
    m::Registry* r = m::Registry::create(b.get());
    r->begin_cycle();
    m::ZoneMetrics* login = r->zone("login");
    m::count(login, m::Outcome::dry_run_rejected);
    m::add(login->strict_decisions, 4);
    m::CacheMetrics* ns = r->cache("q\"");
    m::add(ns->fill_waits[static_cast<size_t>(m::FillWait::timed_out)]);
    m::Snapshot s;
    s.zones.push_back({"login", "strict", login, 0, 8});
    s.caches.push_back({"q\"", ns});
    std::string j = m::json_text(s);
    EXPECT_EQ(j.rfind("{\"zones\":{\"login\":{\"mode\":\"strict\",\"requests\":{\"passed\":0,", 0),
              0u)
        << j;
    EXPECT_NE(j.find("\"dry_run_rejected\":1,"), std::string::npos);
    EXPECT_NE(j.find("\"strict_decisions\":4"), std::string::npos);
    EXPECT_NE(j.find("\"redis\":{},\"cache\":{\"q\\\"\":{\"lookups\":{\"HIT\":0"),
              std::string::npos)
        << j;
    EXPECT_NE(j.find("\"fill_waits\":{\"woken\":0,\"timed_out\":1}"), std::string::npos);
    int depth = 0;
    for (char c : j) {
        depth += c == '{' ? 1 : c == '}' ? -1 : 0;
        EXPECT_GE(depth, 0);
    }
    EXPECT_EQ(depth, 0);
}
