// The role check (issue 12): the client against a server that is not a usable single primary --
// a Redis Cluster node, a replica, a primary demoted while connected, a Sentinel -- fails the
// connection (the breaker counts it and opens) with one Error line that says what the server is
// and what to configure, instead of every command failing in silence. Real redis-server
// processes, except for the Sentinel and the cluster redirections (fake_server.hpp), which one
// standalone node cannot give.
#include <gtest/gtest.h>

#include "fake_server.hpp"
#include "redis/scripts.hpp"
#include "support.hpp"

namespace throttle::redis::test {
namespace {

class RedisRoleTest : public ::testing::Test, public LogCapture {
   protected:
    void SetUp() override {
        if (!have_redis_server()) {
            GTEST_SKIP() << "redis-server not found (set THROTTLE_REDIS_SERVER)";
        }
    }

    // threshold 3, short backoff; the cool-down short enough for a recovery to be seen.
    Config config(Address address) {
        Config c;
        c.address = std::move(address);
        c.connect_timeout_ms = 1000;
        c.command_timeout_ms = 2000;
        c.backoff_initial_ms = 10;
        c.backoff_max_ms = 100;
        c.failure_threshold = 3;
        c.cooldown_initial_ms = 200;
        c.cooldown_max_ms = 400;
        return c;
    }

    Outcome call(Client& c, std::initializer_list<std::string_view> argv) {
        return test::call(ev, c, argv);
    }

    // Issues GETs one after the other for `ms`: none gets an answer from the server, the
    // circuit opens. Returns how many were issued.
    int hammer(Client& client, uint64_t ms) {
        int n = 0;
        uint64_t end = mono_ms() + ms;
        while (mono_ms() < end) {
            Outcome o = call(client, {"GET", "k"});
            EXPECT_FALSE(o.result.ok() && !o.result.reply.is_error()) << o.result.reply.str;
            n++;
            ev.run_once(2);
        }
        return n;
    }

    static int commandstat(Control& ctl, const std::string& name) {
        std::string info = ctl.run({"INFO", "commandstats"});
        size_t at = info.find("cmdstat_" + name + ":calls=");
        return at == std::string::npos ? 0 : std::atoi(info.c_str() + at + 15 + name.size());
    }

    EventLoop ev;
};

// One node with --cluster-enabled: refused at connect, its commands never reach it.
TEST_F(RedisRoleTest, ClusterNodeRefusedAtConnect) {
    RedisServer node({"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"},
                     free_cluster_port());
    ASSERT_TRUE(node.start());
    Control ctl(node.port());
    Client client(ev.loop(), config(node.address()), logger());
    int issued = hammer(client, 600);
    EXPECT_GT(issued, 3);
    EXPECT_TRUE(client.circuit_open() || client.stats().circuit_opens > 0);
    const std::string what =
        "the server is a Redis Cluster node: single-server throttle_redis "
        "cannot use it, use \"throttle_redis cluster ADDRESS ...\" (or point it at a "
        "standalone Redis)";
    EXPECT_EQ(logged(LogLevel::Error, what), 1) << all_logs();
    EXPECT_LE(logged(LogLevel::Error), 2) << all_logs();  // and the circuit opening
    EXPECT_EQ(commandstat(ctl, "get"), 0);
    EXPECT_GT(commandstat(ctl, "role"), 0);

    // A caller that handles the cluster itself may use the node.
    Config ok = config(node.address());
    ok.cluster_node_ok = true;
    Client other(ev.loop(), ok, logger());
    EXPECT_TRUE(call(other, {"PING"}).result.ok());
}

// A replica: refused, naming its primary; promoted, it is used again after the cool-down.
TEST_F(RedisRoleTest, ReplicaRefusedThenUsedOncePromoted) {
    RedisServer primary;
    ASSERT_TRUE(primary.start());
    RedisServer replica({"--replicaof", "127.0.0.1", std::to_string(primary.port())});
    ASSERT_TRUE(replica.start());
    Control ctl(replica.port());
    Client client(ev.loop(), config(replica.address()), logger());
    hammer(client, 600);
    EXPECT_GT(client.stats().circuit_opens, 0u);
    const std::string what =
        "the server is a replica of 127.0.0.1:" + std::to_string(primary.port()) +
        " (ROLE): writes fail with READONLY; point throttle_redis at the "
        "primary";
    EXPECT_EQ(logged(LogLevel::Error, what), 1) << all_logs();
    EXPECT_LE(logged(LogLevel::Error), 2) << all_logs();
    EXPECT_EQ(commandstat(ctl, "get"), 0);

    ASSERT_EQ(ctl.run({"REPLICAOF", "NO", "ONE"}), "OK");
    bool written = ev.run_until(
        [&] {
            Outcome o = call(client, {"SET", "k", "v"});
            ev.run_once(5);
            return o.result.ok() && !o.result.reply.is_error();
        },
        15000);
    EXPECT_TRUE(written) << all_logs();
    EXPECT_EQ(ctl.run({"GET", "k"}), "v");
    EXPECT_EQ(logged(LogLevel::Info, "connection restored"), 1) << all_logs();
}

// A primary made a replica while connected (a failover): the next write gets READONLY -- the
// caller gets that reply --, the connection is dropped (once, logged once) and made again,
// which finds a replica: the circuit opens. Both a plain command and EVALSHA.
TEST_F(RedisRoleTest, PrimaryDemotedWhileConnected) {
    RedisServer other;
    ASSERT_TRUE(other.start());
    RedisServer server;
    ASSERT_TRUE(server.start());
    Control ctl(server.port());
    Client plain(ev.loop(), config(server.address()), logger());
    Client scripts(ev.loop(), config(server.address()), logger());
    Script incr("return redis.call('INCRBY', KEYS[1], 1)");
    auto eval = [&](Outcome& o) {
        inside_call() = true;
        scripts.evalsha(incr, {"n"}, {}, track(o));
        inside_call() = false;
        EXPECT_TRUE(ev.run_until([&] { return o.calls > 0; }, 10000));
    };
    ASSERT_TRUE(call(plain, {"SET", "k", "v"}).result.ok());
    Outcome first;
    eval(first);
    ASSERT_TRUE(first.result.ok());
    ASSERT_EQ(first.result.reply.integer, 1);
    EXPECT_EQ(logged(LogLevel::Error), 0) << all_logs();

    ASSERT_EQ(ctl.run({"REPLICAOF", "127.0.0.1", std::to_string(other.port())}), "OK");
    Outcome set = call(plain, {"SET", "k", "w"});
    ASSERT_TRUE(set.result.ok());
    EXPECT_TRUE(set.result.reply.is_error());
    EXPECT_EQ(set.result.reply.str.substr(0, 9), "READONLY ");
    EXPECT_FALSE(set.synchronous);
    Outcome second;
    eval(second);
    ASSERT_TRUE(second.result.ok());
    EXPECT_EQ(second.result.reply.str.substr(0, 9), "READONLY ");
    const std::string runtime =
        "it is a replica now (a failover?): writes fail with READONLY; "
        "point throttle_redis at the primary; connection dropped";
    EXPECT_EQ(logged(LogLevel::Error, runtime), 2) << all_logs();  // once per client
    EXPECT_FALSE(plain.connected());

    // Reconnecting asks the server what it is now; the circuit opens.
    hammer(plain, 500);
    EXPECT_GT(plain.stats().circuit_opens, 0u);
    EXPECT_EQ(logged(LogLevel::Error, runtime), 2) << all_logs();
    const std::string replica =
        "the server is a replica of 127.0.0.1:" + std::to_string(other.port()) + " (ROLE)";
    EXPECT_EQ(logged(LogLevel::Error, replica), 0) << all_logs();  // the same incident
    EXPECT_GE(logged(LogLevel::Debug, replica) + logged(LogLevel::Info, replica), 1) << all_logs();
}

// A user whose ACL forbids ROLE and INFO: the check is skipped (not a failure) and the client
// works; on a replica the run-time check still catches READONLY.
TEST_F(RedisRoleTest, AclUserWithoutRoleOrInfo) {
    RedisServer server({"--user", "limited", "on", ">pw", "~*", "&*", "+@all", "-role", "-info"});
    ASSERT_TRUE(server.start());
    Config cfg = config(server.address());
    cfg.username = "limited";
    cfg.password = "pw";
    {
        Client client(ev.loop(), cfg, logger());
        Outcome o = call(client, {"SET", "k", "v"});
        ASSERT_TRUE(o.result.ok());
        EXPECT_FALSE(o.result.reply.is_error()) << o.result.reply.str;
        EXPECT_EQ(logged(LogLevel::Error), 0) << all_logs();
        EXPECT_EQ(logged(LogLevel::Debug, "ROLE refused (NOPERM"), 1) << all_logs();
        EXPECT_EQ(logged(LogLevel::Debug, "INFO cluster refused (NOPERM"), 1) << all_logs();
    }
    RedisServer primary;
    ASSERT_TRUE(primary.start());
    Control ctl(server.port());
    ASSERT_EQ(ctl.run({"REPLICAOF", "127.0.0.1", std::to_string(primary.port())}), "OK");
    logs.clear();
    Client client(ev.loop(), cfg, logger());
    Outcome o = call(client, {"SET", "k", "w"});
    ASSERT_TRUE(o.result.ok());
    EXPECT_EQ(o.result.reply.str.substr(0, 9), "READONLY ");
    EXPECT_EQ(logged(LogLevel::Error, "it is a replica now"), 1) << all_logs();
}

// A Sentinel answers ROLE with "sentinel"; cluster redirections at run time (a resharding, a
// cluster node reached by a user without INFO) drop the connection, logged once; other error
// replies are the caller's business, as before.
TEST_F(RedisRoleTest, SentinelAndClusterRepliesFromAFakeServer) {
    FakeServer sentinel(
        [](const std::vector<std::string>&) { return FakeServer::Answer{"+OK\r\n"}; });
    sentinel.set_handshake([](const std::vector<std::string>& argv) {
        if (argv[0] == "ROLE") {
            return FakeServer::Answer{"*2\r\n$8\r\nsentinel\r\n*1\r\n$8\r\nmymaster\r\n"};
        }
        if (argv[0] == "INFO") {
            return FakeServer::as_primary(argv);
        }
        return FakeServer::Answer{"+PONG\r\n"};
    });
    {
        Client client(ev.loop(), config(sentinel.address()), logger());
        Outcome o = call(client, {"GET", "k"});
        EXPECT_EQ(o.result.failure, Failure::Disconnected);
        EXPECT_EQ(logged(LogLevel::Error,
                         "the server is a Sentinel, not a Redis server: point "
                         "throttle_redis at the primary it monitors"),
                  1)
            << all_logs();
        EXPECT_EQ(sentinel.received("GET"), 0);
    }
    logs.clear();
    FakeServer node([](const std::vector<std::string>& argv) {
        if (argv[1] == "moved") {
            return FakeServer::Answer{"-MOVED 3999 127.0.0.1:7001\r\n"};
        }
        if (argv[1] == "crossslot") {
            return FakeServer::Answer{"-CROSSSLOT Keys in request don't hash to the same slot\r\n"};
        }
        return FakeServer::Answer{"-ERR something else\r\n"};
    });
    Client client(ev.loop(), config(node.address()), logger());
    for (int i = 0; i < 3; i++) {
        Outcome o = call(client, {"GET", "other"});
        EXPECT_EQ(o.result.reply.str, "ERR something else");
    }
    EXPECT_TRUE(client.connected());
    EXPECT_EQ(node.connections(), 1);
    Outcome moved = call(client, {"GET", "moved"});
    EXPECT_EQ(moved.result.reply.str, "MOVED 3999 127.0.0.1:7001");
    EXPECT_FALSE(client.connected());
    EXPECT_EQ(logged(LogLevel::Error,
                     "the server answered \"MOVED 3999 127.0.0.1:7001\": it is a Redis Cluster "
                     "node: single-server throttle_redis cannot use it"),
              1)
        << all_logs();
    ASSERT_TRUE(ev.run_until([&] { return node.connections() == 2 && client.connected(); }, 5000));
    Outcome cross = call(client, {"GET", "crossslot"});
    EXPECT_EQ(cross.result.reply.str.substr(0, 10), "CROSSSLOT ");
    EXPECT_FALSE(client.connected());
    EXPECT_EQ(logged(LogLevel::Error, "it is a Redis Cluster node"), 1)
        << all_logs();  // 2nd: Debug
    EXPECT_EQ(client.stats().failures, 2u);
}

}  // namespace
}  // namespace throttle::redis::test
