// Redis Cluster routing (issue 12): ClusterClient against a real 3-master cluster made by each
// test (cluster-enabled redis-server processes joined by redis-cli --cluster create), driven by
// libevent. The slot function against the server's own CLUSTER KEYSLOT; routing, EVALSHA in one
// slot, cross-slot refusal, MOVED after a slot moved, ASK during a migration, a node killed, a
// dead first seed.
#include "redis/cluster.hpp"

#include <gtest/gtest.h>

#include <list>
#include <random>

#include "fake_server.hpp"
#include "redis/script.hpp"
#include "support.hpp"

namespace throttle::redis::test {
namespace {

class RedisClusterTest : public ::testing::Test, public LogCapture {
   protected:
    void SetUp() override {
        if (!have_redis_server() || access(redis_cli_bin().c_str(), X_OK) != 0) {
            GTEST_SKIP() << "redis-server or redis-cli not found (set THROTTLE_REDIS_SERVER)";
        }
    }

    ClusterConfig config(std::vector<Address> seeds) {
        ClusterConfig c;
        c.seeds = std::move(seeds);
        c.node.connect_timeout_ms = 1000;
        c.node.command_timeout_ms = 2000;
        c.node.backoff_initial_ms = 10;
        c.node.backoff_max_ms = 100;
        c.node.failure_threshold = 3;
        c.node.cooldown_initial_ms = 200;
        c.node.cooldown_max_ms = 400;
        c.refresh_interval_ms = 100;
        return c;
    }
    static Address dead() {
        Address a;
        a.host = "127.0.0.1";
        a.port = free_port();  // nothing listens there
        return a;
    }

    Outcome call(ClusterClient& c, std::initializer_list<std::string_view> argv) {
        Outcome o;
        inside_call() = true;
        c.command(argv, track(o));
        inside_call() = false;
        EXPECT_TRUE(ev.run_until([&] { return o.calls > 0; }, 10000));
        return o;
    }
    Outcome eval(ClusterClient& c, const Script& s, std::vector<std::string_view> keys,
                 std::vector<std::string_view> args) {
        Outcome o;
        inside_call() = true;
        c.evalsha(s, keys, args, track(o));
        inside_call() = false;
        EXPECT_TRUE(ev.run_until([&] { return o.calls > 0; }, 10000));
        return o;
    }
    static std::string what(const Outcome& o) {
        if (!o.result.ok()) {
            return std::string("failure ") + to_string(o.result.failure);
        }
        return std::string(to_string(o.result.reply.type)) + " " + o.result.reply.str;
    }

    EventLoop ev;
};

// The slot of many keys, hash tags and their edge cases included, is the server's.
TEST_F(RedisClusterTest, KeySlotIsTheServers) {
    RedisServer node({"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"},
                     free_cluster_port());
    ASSERT_TRUE(node.start());
    Control ctl(node.port());
    std::vector<std::string> keys = {"",
                                     "a",
                                     "foo",
                                     "123456789",
                                     "{",
                                     "}",
                                     "{}",
                                     "{}a",
                                     "a{}",
                                     "a{}b",
                                     "{a}",
                                     "a{b}c",
                                     "{a}{b}",
                                     "}{a}",
                                     "}{a",
                                     "{{a}}",
                                     "{a{b}}",
                                     "a{b",
                                     "a}b{c}",
                                     "{}{a}",
                                     "foo{}{bar}",
                                     "foo{{bar}}zap",
                                     "foo{bar}{zap}",
                                     "{user1000}.following",
                                     "{user1000}.followers",
                                     "throttle:{api:0123456789abcdef0123456789abcdef}:w:1",
                                     std::string("bin\0ary{\xff\x00}", 11)};
    std::mt19937 rng(12);
    const std::string alphabet = std::string("ab{}xyz:\0\xff", 10);
    for (int i = 0; i < 2000; i++) {
        std::string k;
        size_t len = rng() % 24;
        for (size_t j = 0; j < len; j++) {
            k.push_back(alphabet[rng() % alphabet.size()]);
        }
        keys.push_back(k);
    }
    for (const std::string& k : keys) {
        ASSERT_EQ(std::to_string(key_slot(k)), ctl.run({"CLUSTER", "KEYSLOT", k}))
            << "key \"" << k << "\"";
    }
    EXPECT_EQ(key_slot("{user1000}.following"), key_slot("{user1000}.followers"));
    EXPECT_NE(key_slot("{}a"), key_slot("{}b"));
}

// Each command reaches the master that serves its key; commands for several nodes issued in one
// turn all come back.
TEST_F(RedisClusterTest, RoutesEachKeyToItsMaster) {
    RedisCluster cluster;
    ASSERT_TRUE(cluster.start()) << cluster.why_not_started;
    ClusterClient client(ev.loop(), config({cluster.node(0).address()}), logger());
    std::vector<std::string> keys;
    for (size_t i = 0; i < cluster.size(); i++) {
        keys.push_back(cluster.key_on(i));
        ASSERT_FALSE(keys.back().empty());
    }
    for (size_t i = 0; i < keys.size(); i++) {
        Outcome o = call(client, {"SET", keys[i], "v" + std::to_string(i)});
        ASSERT_TRUE(o.result.ok()) << what(o) << "\n" << all_logs();
        EXPECT_EQ(o.result.reply.str, "OK");
        EXPECT_FALSE(o.synchronous);
        EXPECT_EQ(Control(cluster.node(i).port()).run({"GET", keys[i]}), "v" + std::to_string(i));
        EXPECT_EQ(client.node_of_slot(key_slot(keys[i])), cluster.node(i).address().to_string());
    }
    EXPECT_EQ(client.masters(), 3u);
    EXPECT_EQ(client.stats().moved, 0u);

    // 60 commands in one turn, spread over the three nodes.
    std::vector<Outcome> out(60);
    for (size_t i = 0; i < out.size(); i++) {
        inside_call() = true;
        client.command({"INCR", "counter" + std::to_string(i)}, track(out[i]));
        inside_call() = false;
    }
    EXPECT_EQ(client.pending(), out.size());
    ASSERT_TRUE(ev.run_until(
        [&] {
            return std::all_of(out.begin(), out.end(), [](const Outcome& o) { return o.calls; });
        },
        10000));
    for (size_t i = 0; i < out.size(); i++) {
        ASSERT_TRUE(out[i].result.ok()) << what(out[i]);
        EXPECT_EQ(out[i].result.reply.integer, 1) << what(out[i]);
        EXPECT_EQ(out[i].calls, 1);
        EXPECT_FALSE(out[i].synchronous);
        std::string key = "counter" + std::to_string(i);
        EXPECT_EQ(Control(cluster.node(cluster.owner(key)).port()).run({"GET", key}), "1");
    }
    EXPECT_EQ(client.pending(), 0u);
    EXPECT_EQ(client.stats().moved, 0u);
    EXPECT_EQ(logged(LogLevel::Error), 0) << all_logs();
}

// EVALSHA with keys of one slot runs on its master; keys of two slots, no key, or a command with
// no key are refused (Invalid), from the loop, without touching the network.
TEST_F(RedisClusterTest, EvalshaInOneSlotAndCrossSlotRefused) {
    RedisCluster cluster;
    ASSERT_TRUE(cluster.start()) << cluster.why_not_started;
    ClusterClient client(ev.loop(), config({cluster.node(1).address()}), logger());
    Script incr2(
        "return redis.call('INCRBY', KEYS[1], ARGV[1]) + redis.call('INCRBY', KEYS[2], "
        "ARGV[1])");
    client.add_script(incr2);
    Outcome o = eval(client, incr2, {"{user7}.a", "{user7}.b"}, {"5"});
    ASSERT_TRUE(o.result.ok()) << what(o) << "\n" << all_logs();
    EXPECT_EQ(o.result.reply.type, Reply::Type::Integer) << what(o);
    EXPECT_EQ(o.result.reply.integer, 10);
    size_t owner = cluster.owner("{user7}.a");
    ASSERT_LT(owner, cluster.size());
    EXPECT_EQ(Control(cluster.node(owner).port()).run({"GET", "{user7}.b"}), "5");

    // The node forgot the script (SCRIPT FLUSH): loaded again, transparently, once (by the
    // node's Client::evalsha()).
    EXPECT_EQ(Control(cluster.node(owner).port()).run({"SCRIPT", "FLUSH"}), "OK");
    Outcome again = eval(client, incr2, {"{user7}.a", "{user7}.b"}, {"1"});
    ASSERT_TRUE(again.result.ok()) << what(again) << "\n" << all_logs();
    EXPECT_EQ(again.result.reply.integer, 12) << what(again);
    EXPECT_EQ(logged(LogLevel::Info, "NOSCRIPT, reloading script"), 1) << all_logs();
    EXPECT_EQ(client.client_of_slot(key_slot("{user7}.a"))->stats().noscript_reloads, 1u);

    ASSERT_NE(key_slot("a"), key_slot("b"));
    for (auto keys : {std::vector<std::string_view>{"a", "b"}, std::vector<std::string_view>{}}) {
        Outcome bad = eval(client, incr2, keys, {"1"});
        EXPECT_EQ(bad.result.failure, Failure::Invalid);
        EXPECT_TRUE(bad.result.unsent);
        EXPECT_EQ(bad.calls, 1);
        EXPECT_FALSE(bad.synchronous);
    }
    Outcome nokey = call(client, {"PING"});
    EXPECT_EQ(nokey.result.failure, Failure::Invalid);
    EXPECT_FALSE(nokey.synchronous);
    EXPECT_EQ(client.pending(), 0u);
    EXPECT_EQ(logged(LogLevel::Error), 0) << all_logs();
}

// A slot moved to another master (keys and all): the old master answers MOVED, the command is
// sent again to the new one and succeeds; the map points at the new master, so the next command
// goes there directly.
TEST_F(RedisClusterTest, MovedAfterTheSlotMoved) {
    RedisCluster cluster;
    ASSERT_TRUE(cluster.start()) << cluster.why_not_started;
    ClusterClient client(ev.loop(), config({cluster.node(0).address()}), logger());
    std::string key = cluster.key_on(0, "moving");
    uint16_t slot = key_slot(key);
    Outcome set = call(client, {"SET", key, "before"});
    ASSERT_TRUE(set.result.ok()) << what(set) << "\n" << all_logs();
    ASSERT_EQ(client.node_of_slot(slot), cluster.node(0).address().to_string());

    ASSERT_TRUE(cluster.move_slot(slot, 0, 2));
    ASSERT_EQ(cluster.owner(key), 2u);

    Outcome get = call(client, {"GET", key});
    ASSERT_TRUE(get.result.ok()) << what(get) << "\n" << all_logs();
    EXPECT_EQ(get.result.reply.str, "before") << what(get);
    EXPECT_EQ(get.calls, 1);
    EXPECT_EQ(client.stats().moved, 1u);
    EXPECT_EQ(client.node_of_slot(slot), cluster.node(2).address().to_string());

    Outcome again = call(client, {"SET", key, "after"});
    ASSERT_TRUE(again.result.ok()) << what(again);
    EXPECT_EQ(client.stats().moved, 1u);  // straight to the new master
    EXPECT_EQ(Control(cluster.node(2).port()).run({"GET", key}), "after");
    // The full refresh the MOVED asked for agrees.
    ASSERT_TRUE(ev.run_until([&] { return client.stats().refreshes >= 2; }, 5000));
    EXPECT_EQ(client.node_of_slot(slot), cluster.node(2).address().to_string());
    EXPECT_EQ(logged(LogLevel::Error), 0) << all_logs();
}

// With refresh_every_ms the map follows a slot moved while no command went to it: no MOVED.
TEST_F(RedisClusterTest, PeriodicRefreshSeesAMovedSlot) {
    RedisCluster cluster;
    ASSERT_TRUE(cluster.start()) << cluster.why_not_started;
    ClusterConfig cfg = config({cluster.node(0).address()});
    cfg.refresh_every_ms = 50;
    ClusterClient client(ev.loop(), cfg, logger());
    std::string key = cluster.key_on(1, "idle");
    uint16_t slot = key_slot(key);
    ASSERT_TRUE(call(client, {"SET", key, "v"}).result.ok()) << all_logs();
    ASSERT_EQ(client.node_of_slot(slot), cluster.node(1).address().to_string());
    ASSERT_TRUE(cluster.move_slot(slot, 1, 0));
    EXPECT_TRUE(ev.run_until(
        [&] { return client.node_of_slot(slot) == cluster.node(0).address().to_string(); }, 10000))
        << all_logs();
    Outcome o = call(client, {"GET", key});
    ASSERT_TRUE(o.result.ok()) << what(o);
    EXPECT_EQ(o.result.reply.str, "v");
    EXPECT_EQ(client.stats().moved, 0u);
    EXPECT_GE(client.stats().refreshes, 2u);
}

// A slot in migration: a key already moved is answered ASK by the old master and read from the
// new one (ASKING first); a key not moved yet is served by the old master; the map is unchanged.
TEST_F(RedisClusterTest, AskDuringAMigration) {
    RedisCluster cluster;
    ASSERT_TRUE(cluster.start()) << cluster.why_not_started;
    auto m = std::make_unique<core::metrics::RedisMetrics>();
    ClusterClient client(ev.loop(), config({cluster.node(0).address()}), logger());
    client.set_metrics(m.get(), nullptr);
    std::string tag;  // "{migN": a hash tag node 1 serves
    for (int n = 0; n < 1000 && tag.empty(); n++) {
        if (cluster.owner("{mig" + std::to_string(n) + "}") == 1) {
            tag = "{mig" + std::to_string(n);
        }
    }
    std::string moved = tag + "}moved", stays = tag + "}stays";
    ASSERT_EQ(cluster.owner(moved), 1u);
    uint16_t slot = key_slot(moved);
    ASSERT_EQ(slot, key_slot(stays));
    ASSERT_TRUE(call(client, {"SET", moved, "m"}).result.ok());
    ASSERT_TRUE(call(client, {"SET", stays, "s"}).result.ok());

    ASSERT_TRUE(cluster.begin_migration(slot, 1, 2, {moved}));

    Outcome a = call(client, {"GET", moved});
    ASSERT_TRUE(a.result.ok()) << what(a) << "\n" << all_logs();
    EXPECT_EQ(a.result.reply.str, "m") << what(a);
    EXPECT_EQ(client.stats().asked, 1u);
    Outcome b = call(client, {"GET", stays});
    ASSERT_TRUE(b.result.ok()) << what(b);
    EXPECT_EQ(b.result.reply.str, "s") << what(b);
    EXPECT_EQ(client.stats().asked, 1u);
    EXPECT_EQ(client.stats().moved, 0u);
    EXPECT_EQ(client.node_of_slot(slot), cluster.node(1).address().to_string());

    // A new key of the slot: the old master does not have it, ASK, created on the new one.
    Outcome c = call(client, {"SET", tag + "}new", "n"});
    ASSERT_TRUE(c.result.ok()) << what(c);
    EXPECT_EQ(c.result.reply.str, "OK") << what(c);
    EXPECT_EQ(client.stats().asked, 2u);
    Control dst(cluster.node(2).port());
    EXPECT_EQ(dst.run({"ASKING"}), "OK");
    EXPECT_EQ(dst.run({"GET", tag + "}new"}), "n");

    // EVALSHA on a moved key: ASKING then EVALSHA, in one write.
    Script get("return redis.call('GET', KEYS[1])");
    client.add_script(get);
    Outcome e = eval(client, get, {moved}, {});
    ASSERT_TRUE(e.result.ok()) << what(e);
    EXPECT_EQ(e.result.reply.str, "m") << what(e);
    EXPECT_EQ(client.stats().asked, 3u);

    // The importing node lost the script: its Client reloads it and sends ASKING and EVALSHA
    // again (without ASKING the EVALSHA would meet MOVED back to the old master).
    EXPECT_EQ(dst.run({"SCRIPT", "FLUSH"}), "OK");
    Outcome reloaded = eval(client, get, {moved}, {});
    ASSERT_TRUE(reloaded.result.ok()) << what(reloaded) << "\n" << all_logs();
    EXPECT_EQ(reloaded.result.reply.str, "m") << what(reloaded);
    EXPECT_EQ(client.stats().asked, 4u);
    EXPECT_EQ(client.stats().moved, 0u);
    EXPECT_EQ(logged(LogLevel::Info, "NOSCRIPT, reloading script"), 1) << all_logs();

    // The caller's seven commands, each once: not ASKING, not a resend after ASK, not the
    // slot-map question; an ASK reply is no error.
    EXPECT_EQ(core::metrics::read(m->commands), 7u);
    for (const auto& errors : m->errors) {
        EXPECT_EQ(core::metrics::read(errors), 0u);
    }
    EXPECT_EQ(logged(LogLevel::Error), 0) << all_logs();
}

// dont_follow_ask(): an ASK reply to that script's EVALSHA reaches the caller (the node did not
// run it), the other scripts and commands still follow ASK.
TEST_F(RedisClusterTest, DontFollowAskForAScript) {
    RedisCluster cluster;
    ASSERT_TRUE(cluster.start()) << cluster.why_not_started;
    ClusterClient client(ev.loop(), config({cluster.node(0).address()}), logger());
    std::string tag;
    for (int n = 0; n < 1000 && tag.empty(); n++) {
        if (cluster.owner("{ask" + std::to_string(n) + "}") == 1) {
            tag = "{ask" + std::to_string(n);
        }
    }
    std::string moved = tag + "}moved";
    ASSERT_EQ(cluster.owner(moved), 1u);
    ASSERT_TRUE(call(client, {"SET", moved, "m"}).result.ok());
    ASSERT_TRUE(cluster.begin_migration(key_slot(moved), 1, 2, {moved}));

    Script mine("return redis.call('GET', KEYS[1])");
    Script other("return redis.call('STRLEN', KEYS[1])");
    client.add_script(mine);
    client.add_script(other);
    client.dont_follow_ask(mine);
    Outcome e = eval(client, mine, {moved}, {});
    ASSERT_TRUE(e.result.ok()) << what(e);
    EXPECT_TRUE(e.result.reply.is_error("ASK")) << what(e);
    EXPECT_EQ(client.stats().asked, 0u);
    Outcome o = eval(client, other, {moved}, {});
    ASSERT_TRUE(o.result.ok()) << what(o);
    EXPECT_EQ(o.result.reply.integer, 1) << what(o);
    EXPECT_EQ(client.stats().asked, 1u);
    Outcome g = call(client, {"GET", moved});
    ASSERT_TRUE(g.result.ok()) << what(g);
    EXPECT_EQ(g.result.reply.str, "m") << what(g);
    EXPECT_EQ(client.stats().asked, 2u);
    EXPECT_EQ(logged(LogLevel::Error), 0) << all_logs();
}

// A master killed: the commands of its slots fail fast (Disconnected, then CircuitOpen without
// touching the network), the other masters' commands keep succeeding.
TEST_F(RedisClusterTest, ANodeKilledFailsOnlyItsSlots) {
    RedisCluster cluster(3, {"--cluster-require-full-coverage", "no"});
    ASSERT_TRUE(cluster.start()) << cluster.why_not_started;
    ClusterClient client(ev.loop(), config({cluster.node(0).address()}), logger());
    std::vector<std::string> keys;
    for (size_t i = 0; i < cluster.size(); i++) {
        keys.push_back(cluster.key_on(i));
        ASSERT_TRUE(call(client, {"SET", keys[i], "x"}).result.ok()) << all_logs();
    }
    cluster.node(2).kill9();
    bool circuit_open = false;
    for (int round = 0; round < 20; round++) {
        Outcome down = call(client, {"GET", keys[2]});
        EXPECT_EQ(down.calls, 1);
        ASSERT_FALSE(down.result.ok()) << what(down);
        EXPECT_TRUE(down.result.failure == Failure::Disconnected ||
                    down.result.failure == Failure::CircuitOpen)
            << what(down);
        circuit_open = circuit_open || down.result.failure == Failure::CircuitOpen;
        for (size_t i = 0; i < 2; i++) {
            Outcome up = call(client, {"GET", keys[i]});
            ASSERT_TRUE(up.result.ok()) << what(up) << "\n" << all_logs();
            EXPECT_EQ(up.result.reply.str, "x");
        }
        ev.run_for(20);
    }
    EXPECT_TRUE(circuit_open) << all_logs();
    EXPECT_FALSE(client.available(keys[2]));
    EXPECT_TRUE(client.available(keys[0]));
    EXPECT_TRUE(client.available());
}

// A master killed, its replica promoted by the cluster: commands for its slots fail meanwhile
// (the node's Client: Disconnected, CircuitOpen; or the cluster's own CLUSTERDOWN) and succeed
// again once the map, asked again after those failures, names the new master; the dead one
// is retired.
TEST_F(RedisClusterTest, FollowsAFailover) {
    RedisCluster cluster(3, {}, 1);
    ASSERT_TRUE(cluster.start()) << cluster.why_not_started;
    ClusterClient client(ev.loop(), config({cluster.node(0).address()}), logger());
    std::string key = cluster.key_on(2, "fo");
    uint16_t slot = key_slot(key);
    ASSERT_TRUE(call(client, {"SET", key, "kept"}).result.ok()) << all_logs();
    ASSERT_EQ(Control(cluster.node(2).port()).run({"WAIT", "1", "5000"}), "1");
    ASSERT_EQ(client.node_of_slot(slot), cluster.node(2).address().to_string());
    EXPECT_EQ(client.masters(), 3u);
    cluster.node(2).kill9();

    Outcome o;
    int failures = 0;
    bool served = ev.run_until(
        [&] {
            o = call(client, {"GET", key});
            if (o.result.ok() && !o.result.reply.is_error()) {
                return true;
            }
            failures++;
            ev.run_for(50);
            return false;
        },
        30000);
    ASSERT_TRUE(served) << what(o) << "\n" << all_logs();
    EXPECT_EQ(o.result.reply.str, "kept") << what(o) << "\n" << all_logs();
    EXPECT_GT(failures, 0);
    std::string now_served_by = client.node_of_slot(slot);
    EXPECT_NE(now_served_by, cluster.node(2).address().to_string());
    size_t replica = cluster.size();
    for (size_t i = cluster.masters(); i < cluster.size(); i++) {
        if (cluster.node(i).address().to_string() == now_served_by) {
            replica = i;
        }
    }
    EXPECT_LT(replica, cluster.size()) << now_served_by;  // a former replica
    EXPECT_EQ(client.masters(), 3u);
    EXPECT_GE(client.stats().nodes_retired, 1u);
    EXPECT_EQ(logged(LogLevel::Info, "left the slot map"), 1) << all_logs();
}

// A command sent again after MOVED keeps its original deadline: the old master answers late
// (paused meanwhile), the new one does not answer (paused); the new master's Client, given the
// original deadline, fails the resent command with Timeout at it (its own timeout counted, the
// command no longer pending there), and the metrics count the command once.
TEST_F(RedisClusterTest, ResendKeepsTheOriginalDeadline) {
    RedisCluster cluster(3, {"--cluster-require-full-coverage", "no"});
    ASSERT_TRUE(cluster.start()) << cluster.why_not_started;
    ClusterConfig cfg = config({cluster.node(0).address()});
    cfg.node.command_timeout_ms = 1000;
    cfg.node.stuck_timeout_ms = 10000;
    auto m = std::make_unique<core::metrics::RedisMetrics>();
    auto g = std::make_unique<core::metrics::WorkerGauge>();
    ClusterClient client(ev.loop(), cfg, logger());
    client.set_metrics(m.get(), g.get());
    std::string key = cluster.key_on(0, "late");
    uint16_t slot = key_slot(key);
    ASSERT_TRUE(call(client, {"SET", key, "v"}).result.ok()) << all_logs();
    // The new master's connection is up before it is paused (no connect timeout involved).
    ASSERT_TRUE(call(client, {"SET", cluster.key_on(1, "warm"), "w"}).result.ok());
    ASSERT_TRUE(cluster.move_slot(slot, 0, 1));
    cluster.node(1).pause();
    cluster.node(0).pause();

    Outcome o;
    size_t new_master_pending = 0;
    uint64_t new_master_timeouts = 0;
    Client* target = nullptr;
    inside_call() = true;
    client.command({"GET", key}, [&](Result&& r) {
        o.calls++;
        o.synchronous = inside_call();
        o.result = std::move(r);
        target = client.client_of_slot(slot);
        if (target != nullptr) {
            new_master_pending = target->pending();
            new_master_timeouts = target->stats().timeouts;
        }
    });
    inside_call() = false;
    ev.run_for(400);  // the old master answers MOVED 400 ms after the call
    cluster.node(0).resume();
    ASSERT_TRUE(ev.run_until([&] { return o.calls > 0; }, 10000));
    cluster.node(1).resume();
    EXPECT_EQ(o.result.failure, Failure::Timeout) << what(o) << "\n" << all_logs();
    EXPECT_FALSE(o.result.unsent);
    EXPECT_EQ(client.stats().moved, 1u);
    ASSERT_NE(target, nullptr);
    EXPECT_EQ(client.node_of_slot(slot), cluster.node(1).address().to_string());
    EXPECT_EQ(new_master_timeouts, 1u);  // the new master's Client timed it out
    EXPECT_EQ(new_master_pending, 0u);   // abandoned there: nothing of the caller's pending
    ev.run_for(100);
    EXPECT_EQ(o.calls, 1);
    // SET, SET, GET: the GET once, though two nodes were sent it; its timeout once; the MOVED
    // no error; no slot-map question counted.
    EXPECT_EQ(core::metrics::read(m->commands), 3u);
    EXPECT_EQ(core::metrics::read(m->errors[size_t(core::metrics::RedisError::timeout)]), 1u);
    EXPECT_EQ(core::metrics::read(m->errors[size_t(core::metrics::RedisError::script)]), 0u);
    ASSERT_TRUE(ev.run_until([&] { return g->pending.load() == 0; }, 5000));
}

// A script's error reply on a node (not a redirection) counts for that node's circuit breaker
// (and errors{script}): failure_threshold of them open that node's circuit, not the others'.
TEST_F(RedisClusterTest, ScriptErrorCountsForItsNodesBreaker) {
    RedisCluster cluster;
    ASSERT_TRUE(cluster.start()) << cluster.why_not_started;
    ClusterConfig cfg = config({cluster.node(0).address()});
    cfg.node.cooldown_initial_ms = 60000;
    cfg.node.cooldown_max_ms = 60000;
    auto m = std::make_unique<core::metrics::RedisMetrics>();
    ClusterClient client(ev.loop(), cfg, logger());
    client.set_metrics(m.get(), nullptr);
    Script boom("return redis.error_reply('BOOM ' .. KEYS[1])");
    client.add_script(boom);
    std::string bad = cluster.key_on(1, "boom"), good = cluster.key_on(2, "fine");
    ASSERT_TRUE(call(client, {"SET", good, "ok"}).result.ok()) << all_logs();
    for (uint32_t i = 0; i < cfg.node.failure_threshold; i++) {
        Outcome e = eval(client, boom, {bad}, {});
        ASSERT_TRUE(e.result.ok()) << what(e) << "\n" << all_logs();
        EXPECT_EQ(e.result.reply.str, "BOOM " + bad) << what(e);
    }
    Client* node = client.client_of_slot(key_slot(bad));
    ASSERT_NE(node, nullptr);
    EXPECT_TRUE(node->circuit_open()) << all_logs();
    EXPECT_EQ(node->stats().failures, cfg.node.failure_threshold);
    Outcome refused = eval(client, boom, {bad}, {});
    EXPECT_EQ(refused.result.failure, Failure::CircuitOpen) << what(refused);
    EXPECT_FALSE(client.available(bad));
    EXPECT_TRUE(client.available(good));
    Outcome other = call(client, {"GET", good});
    ASSERT_TRUE(other.result.ok()) << what(other);
    EXPECT_EQ(other.result.reply.str, "ok");
    EXPECT_EQ(core::metrics::read(m->errors[size_t(core::metrics::RedisError::script)]),
              cfg.node.failure_threshold);
    EXPECT_EQ(core::metrics::read(m->breaker_openings), 1u);
}

// A MOVED storm: a slot moved back and forth between two masters while commands and scripts on
// it run (sent, then the slot moved under them). Every command is answered (a MOVED is
// followed), no node's breaker counts a failure, let alone opens (failure_threshold 1), no
// error is counted, and metrics commands is exactly the caller's commands.
TEST_F(RedisClusterTest, MovedStormOpensNoBreaker) {
    RedisCluster cluster;
    ASSERT_TRUE(cluster.start()) << cluster.why_not_started;
    ClusterConfig cfg = config({cluster.node(0).address()});
    cfg.node.failure_threshold = 1;
    cfg.refresh_interval_ms = 10000;  // the map follows the MOVEDs, not a refresh
    std::list<Outcome> all;           // outlives the client (a failed assertion destroys it first)
    auto m = std::make_unique<core::metrics::RedisMetrics>();
    auto g = std::make_unique<core::metrics::WorkerGauge>();
    ClusterClient client(ev.loop(), cfg, logger());
    client.set_metrics(m.get(), g.get());
    Script incr("return redis.call('INCR', KEYS[1])");
    client.add_script(incr);
    std::string tag = cluster.key_on(0, "storm");
    std::string by_command = "{" + tag + "}c", by_script = "{" + tag + "}s";
    uint16_t slot = key_slot(by_command);
    ASSERT_EQ(slot, key_slot(by_script));
    ASSERT_EQ(cluster.owner(by_command), 0u);
    ASSERT_TRUE(call(client, {"SET", cluster.key_on(1, "warm"), "w"}).result.ok()) << all_logs();
    uint64_t issued = 1;

    const int rounds = 6, per_round = 20;
    size_t at = 0;
    int answered_commands = 0, answered_scripts = 0;
    for (int round = 0; round < rounds; round++) {
        std::vector<Outcome*> out;
        for (int i = 0; i < per_round; i++) {
            out.push_back(&all.emplace_back());
            client.command({"INCR", by_command}, track(*out.back()));
            out.push_back(&all.emplace_back());
            client.evalsha(incr, {by_script}, {}, track(*out.back()));
            issued += 2;
        }
        ev.run_for(1);  // they leave for the node the map names
        size_t to = 1 - at;
        ASSERT_TRUE(cluster.move_slot(slot, at, to))
            << "round " << round << ": " << cluster.last_error;
        at = to;
        // Every node agrees before the next move (the cluster's own gossip settles).
        ASSERT_TRUE(cluster.settle_slot(slot, by_command, to)) << cluster.last_error;
        ASSERT_TRUE(ev.run_until(
            [&] {
                return std::all_of(out.begin(), out.end(),
                                   [](const Outcome* o) { return o->calls; });
            },
            10000))
            << all_logs();
        for (size_t i = 0; i < out.size(); i++) {
            ASSERT_TRUE(out[i]->result.ok()) << what(*out[i]) << "\n" << all_logs();
            ASSERT_EQ(out[i]->result.reply.type, Reply::Type::Integer) << what(*out[i]);
            EXPECT_EQ(out[i]->calls, 1);
            (i % 2 == 0 ? answered_commands : answered_scripts)++;
        }
        // Commands issued now go to the old master by the map: MOVED, followed.
        Outcome after = call(client, {"INCR", by_command});
        issued++;
        ASSERT_TRUE(after.result.ok()) << what(after) << "\n" << all_logs();
        answered_commands++;
        Outcome script_after = eval(client, incr, {by_script}, {});
        issued++;
        ASSERT_TRUE(script_after.result.ok()) << what(script_after);
        ASSERT_EQ(script_after.result.reply.type, Reply::Type::Integer) << what(script_after);
        answered_scripts++;
    }
    EXPECT_GE(client.stats().moved, uint64_t(rounds));
    EXPECT_EQ(Control(cluster.node(at).port()).run({"GET", by_command}),
              std::to_string(answered_commands));
    EXPECT_EQ(Control(cluster.node(at).port()).run({"GET", by_script}),
              std::to_string(answered_scripts));
    for (size_t i = 0; i < cluster.size(); i++) {
        Client* node = client.client_of_slot(key_slot(cluster.key_on(i)));
        ASSERT_NE(node, nullptr);
        EXPECT_FALSE(node->circuit_open()) << "node " << i << "\n" << all_logs();
        EXPECT_EQ(node->stats().failures, 0u) << "node " << i << "\n" << all_logs();
    }
    EXPECT_EQ(core::metrics::read(m->breaker_openings), 0u);
    EXPECT_EQ(core::metrics::read(m->errors[size_t(core::metrics::RedisError::script)]), 0u);
    EXPECT_EQ(core::metrics::read(m->errors[size_t(core::metrics::RedisError::connection)]), 0u);
    EXPECT_EQ(core::metrics::read(m->commands), issued);
    EXPECT_EQ(g->pending.load(), 0);
    EXPECT_EQ(logged(LogLevel::Error), 0) << all_logs();
}

// Every node's Client counts into the metrics given: connected is the masters connected,
// pending goes back to 0; disconnect_idle() closes every node's connection, and the next
// command connects again.
TEST_F(RedisClusterTest, MetricsAndDisconnectIdle) {
    RedisCluster cluster;
    ASSERT_TRUE(cluster.start()) << cluster.why_not_started;
    auto m = std::make_unique<core::metrics::RedisMetrics>();
    auto g = std::make_unique<core::metrics::WorkerGauge>();
    ClusterClient client(ev.loop(), config({cluster.node(0).address()}), logger());
    client.set_metrics(m.get(), g.get());
    std::vector<std::string> keys;
    for (size_t i = 0; i < cluster.size(); i++) {
        keys.push_back(cluster.key_on(i));
        ASSERT_TRUE(call(client, {"SET", keys[i], "m"}).result.ok()) << all_logs();
    }
    EXPECT_EQ(g->connected.load(), 3);
    EXPECT_EQ(g->pending.load(), 0);
    EXPECT_EQ(core::metrics::read(m->connects), 3u);
    // The three SETs (the slot-map question is the ClusterClient's own: not counted).
    EXPECT_EQ(core::metrics::read(m->commands), 3u);

    ASSERT_TRUE(ev.run_until([&] { return client.disconnect_idle(); }, 5000));
    EXPECT_EQ(g->connected.load(), 0);
    for (size_t i = 0; i < cluster.size(); i++) {
        EXPECT_FALSE(client.client_of_slot(key_slot(keys[i]))->connected());
    }
    Outcome o = call(client, {"GET", keys[1]});
    ASSERT_TRUE(o.result.ok()) << what(o);
    EXPECT_EQ(o.result.reply.str, "m");
    EXPECT_EQ(g->connected.load(), 1);
    client.close();
    ev.run_for(20);
    EXPECT_EQ(g->connected.load(), 0);
    EXPECT_EQ(g->pending.load(), 0);
    EXPECT_EQ(logged(LogLevel::Error), 0) << all_logs();
}

// The first seed is down: the second one gives the map.
TEST_F(RedisClusterTest, FirstSeedDown) {
    RedisCluster cluster;
    ASSERT_TRUE(cluster.start()) << cluster.why_not_started;
    ClusterClient client(ev.loop(), config({dead(), cluster.node(1).address()}), logger());
    Outcome o = call(client, {"SET", "seeded", "1"});
    ASSERT_TRUE(o.result.ok()) << what(o) << "\n" << all_logs();
    EXPECT_EQ(o.result.reply.str, "OK");
    EXPECT_EQ(client.masters(), 3u);
    EXPECT_EQ(client.stats().refresh_failures, 0u);
    EXPECT_EQ(Control(cluster.node(cluster.owner("seeded")).port()).run({"GET", "seeded"}), "1");
}

// No seed answers: the commands fail (Disconnected, unsent), the incident is logged once.
TEST_F(RedisClusterTest, NoSeedAnswers) {
    Address a = dead(), b = dead();
    ClusterClient client(ev.loop(), config({a, b}), logger());
    for (int i = 0; i < 5; i++) {
        Outcome o = call(client, {"GET", "k"});
        EXPECT_EQ(o.calls, 1);
        EXPECT_EQ(o.result.failure, Failure::Disconnected) << what(o);
        EXPECT_TRUE(o.result.unsent);
        EXPECT_FALSE(o.synchronous);
        ev.run_for(20);
    }
    EXPECT_GE(client.stats().refresh_failures, 1u);
    EXPECT_FALSE(client.available());
    EXPECT_FALSE(client.available("k"));
    EXPECT_EQ(logged(LogLevel::Error, "redis cluster: no node answered CLUSTER SLOTS"), 1)
        << all_logs();
}

// close() fails what is pending with Shutdown, from the loop; later commands too.
TEST_F(RedisClusterTest, CloseFailsPendingWithShutdown) {
    RedisCluster cluster;
    ASSERT_TRUE(cluster.start()) << cluster.why_not_started;
    ClusterClient client(ev.loop(), config({cluster.node(0).address()}), logger());
    Outcome pending;
    inside_call() = true;
    client.command({"GET", "k"}, track(pending));
    client.close();
    inside_call() = false;
    EXPECT_EQ(pending.calls, 0);
    ASSERT_TRUE(ev.run_until([&] { return pending.calls > 0; }, 5000));
    EXPECT_EQ(pending.result.failure, Failure::Shutdown);
    Outcome later = call(client, {"GET", "k"});
    EXPECT_EQ(later.result.failure, Failure::Shutdown);
    EXPECT_FALSE(later.synchronous);
    EXPECT_FALSE(client.available());
    ev.run_for(50);
    EXPECT_EQ(pending.calls, 1);
}

// CLUSTER SLOTS as a node answers it: every slot served by 127.0.0.1:`port` (or `host`).
std::string all_slots_on(uint16_t port, const std::string& host = "127.0.0.1") {
    return "*1\r\n*3\r\n:0\r\n:16383\r\n*3\r\n$" + std::to_string(host.size()) + "\r\n" + host +
           "\r\n:" + std::to_string(port) + "\r\n$40\r\n" + std::string(40, 'a') + "\r\n";
}

// Redirections a real cluster does not make on demand, from two fake nodes that send each
// command to the other: the second redirection (MOVED or ASK) is the caller's error reply, as
// are TRYAGAIN and a redirection that names no valid address.
TEST_F(RedisClusterTest, SecondRedirectionAndOthersAreTheCallers) {
    std::atomic<uint16_t> a_port{0}, b_port{0};
    auto node = [](std::atomic<uint16_t>& self, std::atomic<uint16_t>& other) {
        return [&self, &other](const std::vector<std::string>& argv) {
            std::string o = std::to_string(other.load());
            if (argv[0] == "CLUSTER") {
                return FakeServer::Answer{all_slots_on(self.load())};
            }
            if (argv[0] == "ASKING") {
                return FakeServer::Answer{"+OK\r\n"};
            }
            if (argv[1] == "moved") {
                return FakeServer::Answer{"-MOVED 9 127.0.0.1:" + o + "\r\n"};
            }
            if (argv[1] == "ask") {
                return FakeServer::Answer{"-ASK 9 127.0.0.1:" + o + "\r\n"};
            }
            if (argv[1] == "tryagain") {
                return FakeServer::Answer{"-TRYAGAIN Multiple keys request during rehashing\r\n"};
            }
            return FakeServer::Answer{"-MOVED 9 nowhere:1\r\n"};
        };
    };
    FakeServer a(node(a_port, b_port)), b(node(b_port, a_port));
    a_port = a.port();
    b_port = b.port();
    ClusterClient client(ev.loop(), config({a.address()}), logger());

    Outcome moved = call(client, {"GET", "moved"});
    ASSERT_TRUE(moved.result.ok()) << what(moved) << "\n" << all_logs();
    EXPECT_EQ(moved.result.reply.str, "MOVED 9 127.0.0.1:" + std::to_string(a.port()));
    EXPECT_EQ(moved.calls, 1);
    EXPECT_EQ(client.stats().moved, 1u);
    EXPECT_EQ(b.received("GET"), 1);
    EXPECT_EQ(client.node_of_slot(9), b.address().to_string());

    Outcome ask = call(client, {"GET", "ask"});  // to the map's node (A), ASK to B, ASK again
    ASSERT_TRUE(ask.result.ok()) << what(ask);
    EXPECT_EQ(ask.result.reply.str, "ASK 9 127.0.0.1:" + std::to_string(a.port()));
    EXPECT_EQ(client.stats().asked, 1u);
    EXPECT_EQ(b.received("ASKING"), 1);
    EXPECT_EQ(a.received("ASKING"), 0);

    Outcome again = call(client, {"GET", "tryagain"});
    EXPECT_EQ(again.result.reply.str.substr(0, 9), "TRYAGAIN ");
    Outcome nowhere = call(client, {"GET", "nowhere"});
    EXPECT_EQ(nowhere.result.reply.str, "MOVED 9 nowhere:1");
    EXPECT_EQ(logged(LogLevel::Warn, "cannot follow \"MOVED 9 nowhere:1\""), 1) << all_logs();
    EXPECT_EQ(client.stats().moved, 1u);
    EXPECT_EQ(client.stats().asked, 1u);
    // No breaker counted any of them: every node is still available.
    EXPECT_TRUE(client.available());
    EXPECT_EQ(logged(LogLevel::Error), 0) << all_logs();
}

// Seeds that cannot give a map are passed over: a Redis without cluster support (an error
// reply) and a node that names its masters by host name (not numeric); the third seed's map is
// used.
TEST_F(RedisClusterTest, SeedsWithoutAUsableMapArePassedOver) {
    FakeServer plain([](const std::vector<std::string>&) {
        return FakeServer::Answer{"-ERR This instance has cluster support disabled\r\n"};
    });
    FakeServer named([](const std::vector<std::string>&) {
        return FakeServer::Answer{all_slots_on(7000, "redis-a.example")};
    });
    std::atomic<uint16_t> good_port{0};
    FakeServer good([&good_port](const std::vector<std::string>& argv) {
        if (argv[0] == "CLUSTER") {
            return FakeServer::Answer{all_slots_on(good_port.load())};
        }
        return FakeServer::Answer{"$2\r\nok\r\n"};
    });
    good_port = good.port();
    ClusterClient client(ev.loop(), config({plain.address(), named.address(), good.address()}),
                         logger());
    Outcome o = call(client, {"GET", "k"});
    ASSERT_TRUE(o.result.ok()) << what(o) << "\n" << all_logs();
    EXPECT_EQ(o.result.reply.str, "ok");
    EXPECT_EQ(client.masters(), 1u);
    EXPECT_EQ(client.stats().refreshes, 1u);
    EXPECT_EQ(client.stats().refresh_failures, 0u);
    EXPECT_EQ(plain.received("CLUSTER"), 1);
    EXPECT_EQ(named.received("CLUSTER"), 1);
    EXPECT_EQ(good.received("GET"), 1);
    EXPECT_EQ(logged(LogLevel::Error), 0) << all_logs();
}

}  // namespace
}  // namespace throttle::redis::test
