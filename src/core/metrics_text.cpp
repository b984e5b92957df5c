// The counters as Prometheus text and as JSON (core/metrics_text.hpp). Both walk the same
// tables of families, so a number has one name and one meaning in both.
#include "core/metrics_text.hpp"

#include <cinttypes>
#include <cstdio>

namespace throttle::core::metrics {
namespace {

// Microseconds as seconds, exactly: 2500000 -> "2.5", 100 -> "0.0001".
void append_seconds(std::string& out, uint64_t us) {
    char buf[48];
    int n = std::snprintf(buf, sizeof(buf), "%" PRIu64 ".%06" PRIu64, us / 1000000, us % 1000000);
    while (n > 0 && buf[n - 1] == '0') {
        n--;
    }
    if (n > 0 && buf[n - 1] == '.') {
        n--;
    }
    out.append(buf, static_cast<size_t>(n));
}

void append_uint(std::string& out, uint64_t v) {
    char buf[24];
    int n = std::snprintf(buf, sizeof(buf), "%" PRIu64, v);
    out.append(buf, static_cast<size_t>(n));
}

// A Prometheus label value: backslash, double quote and line feed escaped.
void append_label_value(std::string& out, std::string_view v) {
    for (char c : v) {
        if (c == '\\' || c == '"') {
            out += '\\';
            out += c;
        } else if (c == '\n') {
            out += "\\n";
        } else {
            out += c;
        }
    }
}

// A JSON string, quotes included.
void append_json_string(std::string& out, std::string_view v) {
    out += '"';
    for (char c : v) {
        auto u = static_cast<unsigned char>(c);
        if (c == '"' || c == '\\') {
            out += '\\';
            out += c;
        } else if (u < 0x20 || u == 0x7f) {
            char buf[8];
            std::snprintf(buf, sizeof(buf), "\\u%04x", u);
            out += buf;
        } else {
            out += c;
        }
    }
    out += '"';
}

enum class Unit : uint8_t { count, seconds };

// A sample's labels: the entity's (zone+mode, namespace or target) and at most one more.
struct Labels {
    std::string_view k1, v1, k2, v2, k3, v3;
};

void append_labels(std::string& out, const Labels& l) {
    std::string_view keys[3] = {l.k1, l.k2, l.k3};
    std::string_view values[3] = {l.v1, l.v2, l.v3};
    bool any = false;
    for (size_t i = 0; i < 3; i++) {
        if (keys[i].empty()) {
            continue;
        }
        out += any ? ',' : '{';
        any = true;
        out += keys[i];
        out += "=\"";
        append_label_value(out, values[i]);
        out += '"';
    }
    if (any) {
        out += '}';
    }
}

void append_value(std::string& out, uint64_t v, Unit unit) {
    if (unit == Unit::seconds) {
        append_seconds(out, v);
    } else {
        append_uint(out, v);
    }
}

// A histogram bucket's upper bound as the `le` label and the JSON key say it.
std::string bucket_bound(size_t i, const uint64_t (&bounds)[bucket_count], Unit unit) {
    std::string le;
    if (i == bucket_count) {
        le = "+Inf";
    } else {
        append_value(le, bounds[i], unit);
    }
    return le;
}

class Prom {
   public:
    explicit Prom(std::string& out) : out_(out) {}

    void family(std::string_view name, std::string_view type, std::string_view help) {
        out_ += "# HELP ";
        out_ += name;
        out_ += ' ';
        out_ += help;
        out_ += "\n# TYPE ";
        out_ += name;
        out_ += ' ';
        out_ += type;
        out_ += '\n';
    }
    void sample(std::string_view name, const Labels& l, uint64_t v, Unit unit = Unit::count) {
        out_ += name;
        append_labels(out_, l);
        out_ += ' ';
        append_value(out_, v, unit);
        out_ += '\n';
    }
    void histogram(std::string_view name, Labels l, const Histogram& h,
                   const uint64_t (&bounds)[bucket_count], Unit unit) {
        std::string bucket(name);
        bucket += "_bucket";
        uint64_t cumulative = 0;
        for (size_t i = 0; i <= bucket_count; i++) {
            cumulative += read(h.buckets[i]);
            std::string le = bucket_bound(i, bounds, unit);
            Labels with = l;
            if (with.k2.empty()) {
                with.k2 = "le";
                with.v2 = le;
            } else {
                with.k3 = "le";
                with.v3 = le;
            }
            sample(bucket, with, cumulative);
        }
        std::string sum(name);
        sum += "_sum";
        sample(sum, l, read(h.sum), unit);
        std::string count(name);
        count += "_count";
        // The count is the buckets' total, so that _count and the +Inf bucket always agree
        // even when a scrape reads between one observation's adds.
        sample(count, l, cumulative);
    }

   private:
    std::string& out_;
};

Labels zone_labels(const ZoneView& z) {
    return {"zone", z.name, "mode", z.mode, {}, {}};
}

bool is_sync(const ZoneView& z) {
    return z.mode == "sync";
}
bool is_strict(const ZoneView& z) {
    return z.mode == "strict";
}
bool is_lease(const ZoneView& z) {
    return z.mode == "lease";
}

// Zone families with one number per zone.
struct ZoneScalar {
    const char* name;
    const char* type;
    const char* help;
    const char* json;
    bool (*applies)(const ZoneView&);
    uint64_t (*get)(const ZoneView&);
};

const ZoneScalar zone_scalars[] = {
    {"nginx_throttle_near_limit_total", "counter",
     "Requests passed with at most 10% of the quota left.", "near_limit", nullptr,
     [](const ZoneView& z) { return read(z.m->near_limit); }},
    {"nginx_throttle_keys", "gauge", "Keys in the zone's table.", "keys", nullptr,
     [](const ZoneView& z) { return z.keys; }},
    {"nginx_throttle_keys_capacity", "gauge", "Keys the zone's table can hold.", "capacity",
     nullptr, [](const ZoneView& z) { return z.capacity; }},
    {"nginx_throttle_evictions_total", "counter",
     "Keys evicted from a full zone while their counts still mattered.", "evictions", nullptr,
     [](const ZoneView& z) { return read(z.m->evictions); }},
    {"nginx_throttle_sync_flushes_total", "counter", "Flushes of a sync zone's counts to Redis.",
     "sync_flushes", is_sync, [](const ZoneView& z) { return read(z.m->sync_flushes); }},
    {"nginx_throttle_sync_errors_total", "counter",
     "Flush batches of a sync zone that Redis did not apply (error or no answer).", "sync_errors",
     is_sync, [](const ZoneView& z) { return read(z.m->sync_errors); }},
    {"nginx_throttle_strict_decisions_total", "counter",
     "Requests a strict zone had decided by Redis.", "strict_decisions", is_strict,
     [](const ZoneView& z) { return read(z.m->strict_decisions); }},
    {"nginx_throttle_lease_calls_total", "counter",
     "Lease calls a lease zone sent to Redis (requests without a unit, prefetches).", "lease_calls",
     is_lease, [](const ZoneView& z) { return read(z.m->lease_calls); }},
    {"nginx_throttle_leases_total", "counter", "Lease calls Redis answered with units.", "leases",
     is_lease, [](const ZoneView& z) { return read(z.m->leases); }},
    {"nginx_throttle_lease_units_granted_total", "counter",
     "Units of its keys' quotas Redis granted this host.", "lease_units_granted", is_lease,
     [](const ZoneView& z) { return read(z.m->lease_units_granted); }},
    {"nginx_throttle_lease_units_returned_total", "counter",
     "Unspent units this host gave back to Redis (idle, window over, exit).",
     "lease_units_returned", is_lease,
     [](const ZoneView& z) { return read(z.m->lease_units_returned); }},
    {"nginx_throttle_lease_errors_total", "counter",
     "Lease calls Redis did not answer usably (the requests took the fallback).", "lease_errors",
     is_lease, [](const ZoneView& z) { return read(z.m->lease_errors); }},
};

struct ZoneHistogram {
    const char* name;
    const char* help;
    const char* json;
    bool (*applies)(const ZoneView&);
    const Histogram& (*get)(const ZoneView&);
    Unit unit;
};

const ZoneHistogram zone_histograms[] = {
    {"nginx_throttle_sync_flush_keys", "Keys sent per flush of a sync zone.", "sync_flush_keys",
     is_sync, [](const ZoneView& z) -> const Histogram& { return z.m->sync_flush_keys; },
     Unit::count},
    {"nginx_throttle_sync_flush_duration_seconds",
     "Time from a sync flush's start to Redis' last answer.", "sync_flush_duration_seconds",
     is_sync, [](const ZoneView& z) -> const Histogram& { return z.m->sync_flush_duration; },
     Unit::seconds},
    {"nginx_throttle_strict_decision_duration_seconds",
     "Time a strict decision waited for Redis (submitted to answered).",
     "strict_decision_duration_seconds", is_strict,
     [](const ZoneView& z) -> const Histogram& { return z.m->strict_decision_duration; },
     Unit::seconds},
};

// A sum of per-worker gauges, never below 0.
uint64_t gauge(int64_t v) {
    return v > 0 ? static_cast<uint64_t>(v) : 0;
}

// Redis families with one number per target.
struct RedisScalar {
    const char* name;
    const char* type;
    const char* help;
    const char* json;
    uint64_t (*get)(const RedisView&);
};

const RedisScalar redis_scalars[] = {
    {"nginx_throttle_redis_connected", "gauge", "Workers whose Redis connection is up.",
     "connected", [](const RedisView& r) { return gauge(r.gauges.connected); }},
    {"nginx_throttle_redis_connects_total", "counter", "Redis connections established.", "connects",
     [](const RedisView& r) { return (read(r.m->connects)); }},
    {"nginx_throttle_redis_reconnects_total", "counter",
     "Redis connections established again after one was lost.", "reconnects",
     [](const RedisView& r) { return (read(r.m->reconnects)); }},
    {"nginx_throttle_redis_breaker_open", "gauge",
     "Workers whose circuit breaker to Redis is open (not half-open).", "breaker_open",
     [](const RedisView& r) { return gauge(r.gauges.breaker_open); }},
    {"nginx_throttle_redis_breaker_openings_total", "counter", "Times a circuit breaker opened.",
     "breaker_openings", [](const RedisView& r) { return (read(r.m->breaker_openings)); }},
    {"nginx_throttle_redis_commands_total", "counter", "Commands sent to Redis.", "commands",
     [](const RedisView& r) { return (read(r.m->commands)); }},
    {"nginx_throttle_redis_pending_commands", "gauge", "Commands sent and not answered yet.",
     "pending_commands", [](const RedisView& r) { return gauge(r.gauges.pending); }},
};

struct CacheScalar {
    const char* name;
    const char* help;
    const char* json;
    const Counter& (*get)(const CacheMetrics&);
};

const CacheScalar cache_scalars[] = {
    {"nginx_throttle_cache_stores_total", "Responses stored.", "stores",
     [](const CacheMetrics& m) -> const Counter& { return m.stores; }},
    {"nginx_throttle_cache_stored_bytes_total", "Bytes of the entries stored.", "stored_bytes",
     [](const CacheMetrics& m) -> const Counter& { return m.stored_bytes; }},
    {"nginx_throttle_cache_invalidations_total", "Invalidations of a user's entries (writes).",
     "invalidations", [](const CacheMetrics& m) -> const Counter& { return m.invalidations; }},
    {"nginx_throttle_cache_purges_total", "Purges of the whole namespace.", "purges",
     [](const CacheMetrics& m) -> const Counter& { return m.purges; }},
    {"nginx_throttle_cache_local_hits_total", "Lookups answered from the local tier.", "local_hits",
     [](const CacheMetrics& m) -> const Counter& { return m.local_hits; }},
    {"nginx_throttle_cache_local_stores_total", "Entries kept in the local tier.", "local_stores",
     [](const CacheMetrics& m) -> const Counter& { return m.local_stores; }},
    {"nginx_throttle_cache_local_evictions_total", "Live local-tier entries dropped to make room.",
     "local_evictions", [](const CacheMetrics& m) -> const Counter& { return m.local_evictions; }},
    {"nginx_throttle_cache_local_untrusted_total",
     "Lookups that skipped the local tier: its fill-channel subscriber lagged or was down.",
     "local_untrusted", [](const CacheMetrics& m) -> const Counter& { return m.local_untrusted; }},
};

// A cache family with one label over an array of counters.
struct CacheLabelled {
    const char* name;
    const char* help;
    const char* json;
    const char* label;
    const std::string_view* values;
    size_t n;
    const Counter* (*get)(const CacheMetrics&);
};

const CacheLabelled cache_labelled[] = {
    {"nginx_throttle_cache_lookups_total", "Cache lookups by $throttle_cache_status.", "lookups",
     "status", cache_lookup_names, cache_lookup_count,
     [](const CacheMetrics& m) -> const Counter* { return m.lookups; }},
    {"nginx_throttle_cache_store_refusals_total", "Responses not stored, by reason.",
     "store_refusals", "reason", store_refusal_names, store_refusal_count,
     [](const CacheMetrics& m) -> const Counter* { return m.refusals; }},
    {"nginx_throttle_cache_fill_waits_total",
     "Requests that waited for another request's fill, by how the wait ended.", "fill_waits",
     "outcome", fill_wait_names, fill_wait_count,
     [](const CacheMetrics& m) -> const Counter* { return m.fill_waits; }},
};

template <typename V, typename P>
bool any(const std::vector<V>& v, P pred) {
    for (const V& x : v) {
        if (pred(x)) {
            return true;
        }
    }
    return false;
}

uint64_t flush_age_ms(const ZoneView& z, int64_t now_ms) {
    int64_t last = z.m->sync_last_flush.load(std::memory_order_relaxed);
    return now_ms > last ? static_cast<uint64_t>(now_ms - last) : 0;
}

void zones_prometheus(Prom& p, const Snapshot& s) {
    if (s.zones.empty()) {
        return;
    }
    p.family("nginx_throttle_requests_total", "counter",
             "Requests a zone was applied to, by outcome (skipped: the key was empty).");
    for (const ZoneView& z : s.zones) {
        for (size_t o = 0; o < outcome_count; o++) {
            Labels l = zone_labels(z);
            l.k3 = "outcome";
            l.v3 = outcome_names[o];
            p.sample("nginx_throttle_requests_total", l, read(z.m->requests[o]));
        }
    }
    for (const ZoneScalar& f : zone_scalars) {
        auto applies = [&f](const ZoneView& z) { return f.applies == nullptr || f.applies(z); };
        if (!any(s.zones, applies)) {
            continue;
        }
        p.family(f.name, f.type, f.help);
        for (const ZoneView& z : s.zones) {
            if (applies(z)) {
                p.sample(f.name, zone_labels(z), f.get(z));
            }
        }
    }
    for (const ZoneHistogram& f : zone_histograms) {
        if (!any(s.zones, f.applies)) {
            continue;
        }
        p.family(f.name, "histogram", f.help);
        for (const ZoneView& z : s.zones) {
            if (f.applies(z)) {
                p.histogram(f.name, zone_labels(z), f.get(z),
                            f.unit == Unit::seconds ? latency_bounds_us : size_bounds, f.unit);
            }
        }
    }
    auto flushed = [](const ZoneView& z) {
        return is_sync(z) && z.m->sync_last_flush.load(std::memory_order_relaxed) != 0;
    };
    if (any(s.zones, flushed)) {
        const char* name = "nginx_throttle_sync_last_flush_age_seconds";
        p.family(name, "gauge", "Seconds since a sync zone's last flush started.");
        for (const ZoneView& z : s.zones) {
            if (flushed(z)) {
                p.sample(name, zone_labels(z), flush_age_ms(z, s.now_ms) * 1000, Unit::seconds);
            }
        }
    }
}

void redis_prometheus(Prom& p, const Snapshot& s) {
    if (s.redis.empty()) {
        return;
    }
    for (const RedisScalar& f : redis_scalars) {
        p.family(f.name, f.type, f.help);
        for (const RedisView& r : s.redis) {
            p.sample(f.name, {"target", r.target, {}, {}, {}, {}}, f.get(r));
        }
    }
    const char* errors = "nginx_throttle_redis_errors_total";
    p.family(errors, "counter",
             "Redis failures by kind: timeout (no answer in time), connection (lost, refused, "
             "handshake), protocol (a reply of the wrong shape), script (an error reply).");
    for (const RedisView& r : s.redis) {
        for (size_t k = 0; k < redis_error_count; k++) {
            p.sample(errors, {"target", r.target, "kind", redis_error_names[k], {}, {}},
                     read(r.m->errors[k]));
        }
    }
    const char* duration = "nginx_throttle_redis_command_duration_seconds";
    p.family(duration, "histogram", "Time from sending a command to its reply.");
    for (const RedisView& r : s.redis) {
        p.histogram(duration, {"target", r.target, {}, {}, {}, {}}, r.m->command_duration,
                    latency_bounds_us, Unit::seconds);
    }
    const char* batch = "nginx_throttle_strict_batch_size";
    p.family(batch, "histogram", "Strict decisions per script call.");
    for (const RedisView& r : s.redis) {
        p.histogram(batch, {"target", r.target, {}, {}, {}, {}}, r.m->strict_batch_size,
                    size_bounds, Unit::count);
    }
}

void cache_prometheus(Prom& p, const Snapshot& s) {
    if (s.caches.empty()) {
        return;
    }
    for (const CacheLabelled& f : cache_labelled) {
        p.family(f.name, "counter", f.help);
        for (const CacheView& c : s.caches) {
            const Counter* counters = f.get(*c.m);
            for (size_t i = 0; i < f.n; i++) {
                p.sample(f.name, {"namespace", c.ns, f.label, f.values[i], {}, {}},
                         read(counters[i]));
            }
        }
    }
    for (const CacheScalar& f : cache_scalars) {
        p.family(f.name, "counter", f.help);
        for (const CacheView& c : s.caches) {
            p.sample(f.name, {"namespace", c.ns, {}, {}, {}, {}}, read(f.get(*c.m)));
        }
    }
}

// JSON

class Json {
   public:
    explicit Json(std::string& out) : out_(out) {}

    void open(std::string_view key) {
        comma();
        if (!key.empty()) {
            append_json_string(out_, key);
            out_ += ':';
        }
        out_ += '{';
        first_ = true;
    }
    void close() {
        out_ += '}';
        first_ = false;
    }
    void key(std::string_view k) {
        comma();
        append_json_string(out_, k);
        out_ += ':';
    }
    void number(std::string_view k, uint64_t v, Unit unit = Unit::count) {
        key(k);
        append_value(out_, v, unit);
    }
    void string(std::string_view k, std::string_view v) {
        key(k);
        append_json_string(out_, v);
    }
    void histogram(std::string_view k, const Histogram& h, const uint64_t (&bounds)[bucket_count],
                   Unit unit) {
        open(k);
        open("buckets");
        uint64_t cumulative = 0;
        for (size_t i = 0; i <= bucket_count; i++) {
            cumulative += read(h.buckets[i]);
            number(bucket_bound(i, bounds, unit), cumulative);
        }
        close();
        number("sum", read(h.sum), unit);
        number("count", cumulative);
        close();
    }

   private:
    void comma() {
        if (!first_) {
            out_ += ',';
        }
        first_ = false;
    }

    std::string& out_;
    bool first_ = true;
};

void zones_json(Json& j, const Snapshot& s) {
    j.open("zones");
    for (const ZoneView& z : s.zones) {
        j.open(z.name);
        j.string("mode", z.mode);
        j.open("requests");
        for (size_t o = 0; o < outcome_count; o++) {
            j.number(outcome_names[o], read(z.m->requests[o]));
        }
        j.close();
        for (const ZoneScalar& f : zone_scalars) {
            if (f.applies == nullptr || f.applies(z)) {
                j.number(f.json, f.get(z));
            }
        }
        for (const ZoneHistogram& f : zone_histograms) {
            if (f.applies(z)) {
                j.histogram(f.json, f.get(z),
                            f.unit == Unit::seconds ? latency_bounds_us : size_bounds, f.unit);
            }
        }
        if (is_sync(z) && z.m->sync_last_flush.load(std::memory_order_relaxed) != 0) {
            j.number("sync_last_flush_age_seconds", flush_age_ms(z, s.now_ms) * 1000,
                     Unit::seconds);
        }
        j.close();
    }
    j.close();
}

void redis_json(Json& j, const Snapshot& s) {
    j.open("redis");
    for (const RedisView& r : s.redis) {
        j.open(r.target);
        for (const RedisScalar& f : redis_scalars) {
            j.number(f.json, f.get(r));
        }
        j.open("errors");
        for (size_t k = 0; k < redis_error_count; k++) {
            j.number(redis_error_names[k], read(r.m->errors[k]));
        }
        j.close();
        j.histogram("command_duration_seconds", r.m->command_duration, latency_bounds_us,
                    Unit::seconds);
        j.histogram("strict_batch_size", r.m->strict_batch_size, size_bounds, Unit::count);
        j.close();
    }
    j.close();
}

void cache_json(Json& j, const Snapshot& s) {
    j.open("cache");
    for (const CacheView& c : s.caches) {
        j.open(c.ns);
        for (const CacheLabelled& f : cache_labelled) {
            j.open(f.json);
            const Counter* counters = f.get(*c.m);
            for (size_t i = 0; i < f.n; i++) {
                j.number(f.values[i], read(counters[i]));
            }
            j.close();
        }
        for (const CacheScalar& f : cache_scalars) {
            j.number(f.json, read(f.get(*c.m)));
        }
        j.close();
    }
    j.close();
}

}  // namespace

std::string prometheus_text(const Snapshot& s) {
    std::string out;
    out.reserve(4096 + 2048 * (s.zones.size() + s.caches.size() + s.redis.size()));
    Prom p(out);
    zones_prometheus(p, s);
    redis_prometheus(p, s);
    cache_prometheus(p, s);
    return out;
}

std::string json_text(const Snapshot& s) {
    std::string out;
    out.reserve(2048 + 1024 * (s.zones.size() + s.caches.size() + s.redis.size()));
    Json j(out);
    j.open({});
    zones_json(j, s);
    redis_json(j, s);
    cache_json(j, s);
    j.close();
    out += '\n';
    return out;
}

}  // namespace throttle::core::metrics
