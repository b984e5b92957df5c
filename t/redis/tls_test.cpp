// TLS to Redis (issue 12), driven by libevent against a real redis-server with --tls-port:
// commands and EVALSHA over TLS, mutual TLS, a wrong CA and a wrong server name (each a failed
// connection with the verify error logged, the breaker as for any failed connection, no hang),
// verification off, a plaintext server, a server killed mid-pipeline and restarted, replies
// larger than a TLS record, many pipelined commands, Sentinels over TLS, the subscriber over
// TLS, a Redis Cluster over TLS (routing to each master, MOVED followed).
//
// The certificates are made by the test with the `openssl` command in a temporary directory:
// a CA, a server certificate for IP:127.0.0.1 and DNS:localhost, a client certificate, and a
// second CA that signed none of them. The server also listens on a plaintext port, which only
// the test's Control connection uses.
#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <signal.h>
#include <sys/socket.h>

#include <cstdlib>
#include <fstream>

#include "redis/cluster.hpp"
#include "redis/subscriber.hpp"
#include "support.hpp"

namespace throttle::redis::test {
namespace {

// Wall-clock bounds are hang guards, not speed claims (see client_test.cpp).
constexpr uint64_t slack_ms = 3000;

class Certs {
   public:
    Certs() {
        char tmpl[] = "/tmp/throttle-tls-XXXXXX";
        dir_ = mkdtemp(tmpl);
        ok_ = make();
    }
    ~Certs() {
        std::string cmd = "rm -rf '" + dir_ + "'";
        if (std::system(cmd.c_str()) != 0) {
        }
    }
    bool ok() const { return ok_; }
    const std::string& dir() const { return dir_; }
    std::string path(const std::string& name) const { return dir_ + "/" + name; }

   private:
    bool run(const std::string& cmd) {
        return std::system(("cd '" + dir_ + "' && " + cmd + " >/dev/null 2>&1").c_str()) == 0;
    }
    bool make() {
        const std::string key = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
        std::ofstream(path("server.ext"))
            << "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n";
        std::ofstream(path("client.ext")) << "extendedKeyUsage=clientAuth\n";
        return run("openssl req -x509 " + key +
                   " -keyout ca.key -out ca.crt -days 2 -subj '/CN=throttle test CA'") &&
               run("openssl req -x509 " + key +
                   " -keyout other.key -out other.crt -days 2 -subj '/CN=another CA'") &&
               run("openssl req " + key +
                   " -keyout server.key -out server.csr -subj '/CN=throttle test server'") &&
               run("openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
                   "-out server.crt -days 2 -extfile server.ext") &&
               run("openssl req " + key +
                   " -keyout client.key -out client.csr -subj '/CN=throttle test client'") &&
               run("openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial "
                   "-out client.crt -days 2 -extfile client.ext");
    }

    std::string dir_;
    bool ok_ = false;
};

class RedisTlsTest : public ::testing::Test, protected LogCapture {
   protected:
    void SetUp() override {
        if (!have_redis_server()) {
            GTEST_SKIP() << "redis-server not found (set THROTTLE_REDIS_SERVER)";
        }
        if (std::system("command -v openssl >/dev/null 2>&1") != 0) {
            GTEST_SKIP() << "no openssl command";
        }
        // SIGPIPE keeps its default action (ending the process): the client must never raise
        // it, TLS included (nginx ignores it; a test or a tool may not).
        signal(SIGPIPE, SIG_DFL);
        ASSERT_TRUE(certs.ok());
    }

    // A server with a TLS port (tls_port) besides its plaintext one (for Control).
    std::unique_ptr<RedisServer> tls_server(bool auth_clients = false, uint16_t port = 0) {
        if (port == 0) {
            port = free_port();
        }
        tls_port = port;
        return std::make_unique<RedisServer>(std::vector<std::string>{
            "--tls-port", std::to_string(port), "--tls-cert-file", certs.path("server.crt"),
            "--tls-key-file", certs.path("server.key"), "--tls-ca-cert-file", certs.path("ca.crt"),
            "--tls-auth-clients", auth_clients ? "yes" : "no"});
    }

    Config config(uint16_t port) {
        Config c;
        c.address.host = "127.0.0.1";
        c.address.port = port;
        c.connect_timeout_ms = 1000;
        c.command_timeout_ms = 2000;
        c.backoff_initial_ms = 10;
        c.backoff_max_ms = 50;
        c.tls.enabled = true;
        c.tls.ca_file = certs.path("ca.crt");
        return c;
    }

    // A connection attempt that must fail: the first command fails (Disconnected, not Timeout:
    // no hang), and the log says why.
    void expect_connect_failure(Config c, const std::string& why) {
        c.failure_threshold = 2;
        Client client(ev.loop(), c, logger());
        uint64_t t0 = mono_ms();
        Outcome o = call(ev, client, {"PING"});
        EXPECT_EQ(o.calls, 1);
        EXPECT_FALSE(o.result.ok());
        EXPECT_EQ(o.result.failure, Failure::Disconnected) << all_logs();
        EXPECT_LE(o.at_ms - t0, c.connect_timeout_ms + slack_ms);
        EXPECT_EQ(logged(LogLevel::Error, why), 1) << all_logs();
        // As for any failed connection: backoff, then the breaker opens.
        ASSERT_TRUE(ev.run_until([&] { return client.circuit_open(); }, 10000)) << all_logs();
        EXPECT_FALSE(client.connected());
    }

    Certs certs;
    EventLoop ev;
    uint16_t tls_port = 0;
};

TEST_F(RedisTlsTest, CommandsAndEvalshaOverTls) {
    auto server = tls_server();
    ASSERT_TRUE(server->start());
    Control ctl(server->port());
    Client client(ev.loop(), config(tls_port), logger());

    Outcome set = call(ev, client, {"SET", "k", std::string_view("v\0\r\n", 4)});
    ASSERT_TRUE(set.result.ok()) << all_logs();
    EXPECT_EQ(set.result.reply.str, "OK");
    EXPECT_FALSE(set.synchronous);
    Outcome get = call(ev, client, {"GET", "k"});
    ASSERT_TRUE(get.result.ok());
    EXPECT_EQ(get.result.reply.str, std::string("v\0\r\n", 4));
    EXPECT_EQ(ctl.run({"GET", "k"}), std::string("v\0\r\n", 4));  // the same server

    Script script("return {KEYS[1], redis.call('INCR', KEYS[1])}");
    Outcome eval;
    client.evalsha(script, {"n"}, {}, track(eval));
    ASSERT_TRUE(ev.run_until([&] { return eval.calls > 0; }, 10000));
    ASSERT_TRUE(eval.result.ok()) << all_logs();
    ASSERT_EQ(eval.result.reply.elements.size(), 2u);
    EXPECT_EQ(eval.result.reply.elements[1].integer, 1);
    EXPECT_EQ(ctl.run({"SCRIPT", "EXISTS", script.sha()}), "[1]");
    // The connection the server sees is the TLS one: no plaintext client but the Control.
    EXPECT_EQ(ctl.info("clients", "connected_clients"), 2);
    EXPECT_EQ(logged(LogLevel::Error), 0) << all_logs();
}

TEST_F(RedisTlsTest, MutualTls) {
    auto server = tls_server(true);
    ASSERT_TRUE(server->start());
    Config c = config(tls_port);
    c.tls.cert_file = certs.path("client.crt");
    c.tls.key_file = certs.path("client.key");
    Client client(ev.loop(), c, logger());
    Outcome o = call(ev, client, {"PING"});
    ASSERT_TRUE(o.result.ok()) << all_logs();
    EXPECT_EQ(o.result.reply.str, "PONG");

    // Without a client certificate the server refuses the connection.
    Config bare = config(tls_port);
    bare.failure_threshold = 0;
    Client anonymous(ev.loop(), bare, logger());
    Outcome refused = call(ev, anonymous, {"PING"});
    EXPECT_FALSE(refused.result.ok());
    EXPECT_EQ(refused.result.failure, Failure::Disconnected);
    EXPECT_FALSE(anonymous.connected());
}

TEST_F(RedisTlsTest, WrongCaFailsWithTheVerifyError) {
    auto server = tls_server();
    ASSERT_TRUE(server->start());
    Config c = config(tls_port);
    c.tls.ca_file = certs.path("other.crt");
    expect_connect_failure(c, "TLS handshake failed: certificate verify failed: ");
}

TEST_F(RedisTlsTest, ServerNameIsVerified) {
    auto server = tls_server();
    ASSERT_TRUE(server->start());
    {
        Config c = config(tls_port);
        c.tls.server_name = "redis.example";
        expect_connect_failure(c, "certificate verify failed: hostname mismatch");
    }
    logs.clear();
    {
        Config c = config(tls_port);  // the name the certificate has (its DNS SAN)
        c.tls.server_name = "localhost";
        Client client(ev.loop(), c, logger());
        EXPECT_TRUE(call(ev, client, {"PING"}).result.ok()) << all_logs();
    }
    {
        Config c = config(tls_port);  // verification off: any name, any CA
        c.tls.server_name = "redis.example";
        c.tls.ca_file = certs.path("other.crt");
        c.tls.verify = false;
        Client client(ev.loop(), c, logger());
        EXPECT_TRUE(call(ev, client, {"PING"}).result.ok()) << all_logs();
    }
}

TEST_F(RedisTlsTest, PlaintextServerFailsCleanly) {
    RedisServer server;
    ASSERT_TRUE(server.start());
    // Redis reads the ClientHello as an inline command still without its newline: no answer,
    // the connect timeout ends the attempt, saying why.
    expect_connect_failure(config(server.port()), "cannot connect: TLS handshake not done");
}

TEST_F(RedisTlsTest, BadSettingsAreRefusedAtConstruction) {
    Config c = config(6379);
    c.tls.ca_file = certs.path("missing.crt");
    EXPECT_THROW(Client(ev.loop(), c), std::invalid_argument);
    std::string error;
    TlsSettings s;
    s.enabled = true;
    s.ca_file = certs.path("missing.crt");
    EXPECT_EQ(TlsContext::create(s, error), nullptr);
    EXPECT_NE(error.find("cannot load tls_ca"), std::string::npos) << error;
    s.ca_file = certs.path("ca.crt");
    s.cert_file = certs.path("client.crt");
    EXPECT_EQ(TlsContext::create(s, error), nullptr);
    EXPECT_EQ(error, "tls_cert requires tls_key");
    s.key_file = certs.path("server.key");  // another certificate's key
    EXPECT_EQ(TlsContext::create(s, error), nullptr);
    EXPECT_NE(error.find("does not match"), std::string::npos) << error;
    s.key_file = certs.path("client.key");
    EXPECT_NE(TlsContext::create(s, error), nullptr) << error;
}

TEST_F(RedisTlsTest, ServerKilledMidPipelineThenRestarted) {
    auto server = tls_server();
    ASSERT_TRUE(server->start());
    Config c = config(tls_port);
    c.failure_threshold = 0;  // no breaker: reconnect after the backoff
    Client client(ev.loop(), c, logger());
    ASSERT_TRUE(call(ev, client, {"PING"}).result.ok()) << all_logs();

    server->pause();  // replies stop; commands pile up in the pipeline
    std::vector<Outcome> outs(200);
    for (Outcome& o : outs) {
        issue(client, {"INCR", "n"}, o);
    }
    ev.run_for(50);
    server->kill9();
    ASSERT_TRUE(ev.run_until(
        [&] {
            return std::all_of(outs.begin(), outs.end(), [](const Outcome& o) { return o.calls; });
        },
        10000));
    for (const Outcome& o : outs) {
        EXPECT_EQ(o.calls, 1);
        EXPECT_FALSE(o.synchronous);
        EXPECT_FALSE(o.result.ok());
    }

    auto again = tls_server(false, tls_port);
    ASSERT_TRUE(again->start());
    bool ok = false;
    uint64_t deadline = mono_ms() + 10000;
    while (!ok && mono_ms() < deadline) {
        ok = call(ev, client, {"PING"}).result.ok();
        if (!ok) {
            ev.run_for(20);
        }
    }
    EXPECT_TRUE(ok) << all_logs();
    EXPECT_TRUE(call(ev, client, {"SET", "after", "1"}).result.ok());
}

TEST_F(RedisTlsTest, RepliesLargerThanOneRecordArriveIntact) {
    auto server = tls_server();
    ASSERT_TRUE(server->start());
    Control ctl(server->port());
    Client client(ev.loop(), config(tls_port), logger());
    std::string big(1 << 20, '\0');
    for (size_t i = 0; i < big.size(); i++) {
        big[i] = char((i * 7919) >> 3);
    }
    // Written over TLS (many records), read back over TLS and over the plaintext port.
    ASSERT_TRUE(call(ev, client, {"SET", "big", big}).result.ok()) << all_logs();
    EXPECT_EQ(ctl.run({"STRLEN", "big"}), std::to_string(big.size()));
    std::vector<Outcome> gets(4);
    for (Outcome& o : gets) {
        issue(client, {"GET", "big"}, o);  // pipelined: 4 MB of replies in a row
    }
    ASSERT_TRUE(ev.run_until([&] { return gets.back().calls > 0; }, 20000));
    for (const Outcome& o : gets) {
        ASSERT_TRUE(o.result.ok()) << all_logs();
        EXPECT_TRUE(o.result.reply.str == big);
    }
}

TEST_F(RedisTlsTest, ManyPipelinedCommandsInOrder) {
    auto server = tls_server();
    ASSERT_TRUE(server->start());
    Client client(ev.loop(), config(tls_port), logger());
    ASSERT_TRUE(call(ev, client, {"PING"}).result.ok()) << all_logs();
    std::vector<Outcome> outs(5000);
    for (Outcome& o : outs) {
        issue(client, {"INCR", "seq"}, o);  // one turn: one write, one pipeline
    }
    ASSERT_TRUE(ev.run_until([&] { return outs.back().calls > 0; }, 20000));
    for (size_t i = 0; i < outs.size(); i++) {
        ASSERT_TRUE(outs[i].result.ok()) << i;
        EXPECT_EQ(outs[i].result.reply.integer, static_cast<int64_t>(i + 1))
            << i;  // each its own reply
        EXPECT_EQ(outs[i].calls, 1);
    }
}

// With sentinel=, the Sentinels are asked over TLS too (the same settings), and the primary
// they name (its TLS port: the Sentinel monitors it over TLS, tls-replication) is connected to
// over TLS.
TEST_F(RedisTlsTest, SentinelsAreReachedWithTheSameTlsSettings) {
    auto primary = tls_server();
    ASSERT_TRUE(primary->start());
    uint16_t primary_tls = tls_port;
    uint16_t sentinel_tls = free_port();
    RedisServer sentinel({"--tls-port", std::to_string(sentinel_tls), "--tls-cert-file",
                          certs.path("server.crt"), "--tls-key-file", certs.path("server.key"),
                          "--tls-ca-cert-file", certs.path("ca.crt"), "--tls-auth-clients", "no",
                          "--tls-replication", "yes"});
    sentinel.make_sentinel(primary_tls);
    ASSERT_TRUE(sentinel.start());

    Config c = config(0);
    c.address = Address();
    Address s;
    s.host = "127.0.0.1";
    s.port = sentinel_tls;
    c.sentinels = {s};
    c.sentinel_master = "mymaster";
    Client client(ev.loop(), c, logger());
    Outcome o = call(ev, client, {"SET", "via-sentinel", "v"});
    ASSERT_TRUE(o.result.ok()) << all_logs();
    EXPECT_EQ(client.config().address.port, primary_tls);
    Control ctl(primary->port());
    EXPECT_EQ(ctl.run({"GET", "via-sentinel"}), "v");

    // A Sentinel that speaks plaintext only is not asked in the clear: the question fails.
    RedisServer plain_sentinel;
    plain_sentinel.make_sentinel(primary_tls);
    ASSERT_TRUE(plain_sentinel.start());
    Config p = c;
    p.sentinels = {plain_sentinel.address()};
    p.failure_threshold = 0;
    Client refused(ev.loop(), p, logger());
    EXPECT_FALSE(call(ev, refused, {"PING"}).result.ok());
}

// OpenSSL's own socket BIO writes with write(): SIGPIPE when the peer is gone. The client's
// BIO sends with MSG_NOSIGNAL: EPIPE, and the process (SIGPIPE's default action: exit) lives.
TEST_F(RedisTlsTest, WritesToAClosedPeerRaiseNoSigpipe) {
    TlsSettings s;
    s.enabled = true;
    s.ca_file = certs.path("ca.crt");
    std::string error;
    auto ctx = TlsContext::create(s, error);
    ASSERT_NE(ctx, nullptr) << error;
    int sv[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    close(sv[1]);
    BIO* b = ctx->socket_bio(sv[0]);
    ASSERT_NE(b, nullptr);
    errno = 0;
    EXPECT_LE(BIO_write(b, "PING\r\n", 6), 0);
    EXPECT_EQ(errno, EPIPE);
    EXPECT_FALSE(BIO_should_retry(b));
    BIO_free(b);
    close(sv[0]);
}

TEST_F(RedisTlsTest, SubscriberOverTls) {
    auto server = tls_server();
    ASSERT_TRUE(server->start());
    Control ctl(server->port());
    std::vector<std::string> received;
    Subscriber sub(
        ev.loop(), config(tls_port), "ch",
        [&](std::string_view payload) { received.emplace_back(payload); }, logger());
    sub.start();
    ASSERT_TRUE(ev.run_until([&] { return sub.subscribed(); }, 10000)) << all_logs();
    EXPECT_EQ(ctl.run({"PUBLISH", "ch", "hello"}), "1");
    ASSERT_TRUE(ev.run_until([&] { return !received.empty(); }, 10000));
    EXPECT_EQ(received[0], "hello");
}

// A Redis Cluster whose nodes speak TLS (--tls-cluster yes), reached from one TLS seed: CLUSTER
// SLOTS asked over TLS answers the nodes' TLS ports (Redis 7), so each master's Client connects
// to its TLS port with the same settings; every key reaches its master; a slot moved: MOVED,
// also answered with the TLS port, is followed over TLS.
TEST_F(RedisTlsTest, ClusterOverTls) {
    if (access(redis_cli_bin().c_str(), X_OK) != 0) {
        GTEST_SKIP() << "redis-cli not found";
    }
    RedisCluster cluster(3, {}, 0, certs.dir());
    ASSERT_TRUE(cluster.start()) << cluster.why_not_started;
    ClusterConfig cc;
    cc.seeds = {cluster.tls_address(0)};
    cc.node = config(0);
    cc.node.failure_threshold = 3;
    ClusterClient client(ev.loop(), cc, logger());
    auto run = [&](std::initializer_list<std::string_view> argv) {
        Outcome o;
        inside_call() = true;
        client.command(argv, track(o));
        inside_call() = false;
        EXPECT_TRUE(ev.run_until([&] { return o.calls > 0; }, 10000));
        return o;
    };
    for (size_t i = 0; i < cluster.size(); i++) {
        std::string key = cluster.key_on(i);
        ASSERT_FALSE(key.empty());
        Outcome o = run({"SET", key, "v" + std::to_string(i)});
        ASSERT_TRUE(o.result.ok()) << all_logs();
        EXPECT_EQ(o.result.reply.str, "OK");
        EXPECT_EQ(Control(cluster.node(i).port()).run({"GET", key}), "v" + std::to_string(i));
        // The map holds the TLS ports: the commands went over TLS.
        EXPECT_EQ(client.node_of_slot(key_slot(key)), cluster.tls_address(i).to_string());
    }
    EXPECT_EQ(client.masters(), 3u);
    EXPECT_EQ(client.stats().moved, 0u);

    std::string key = cluster.key_on(0, "moving");
    uint16_t slot = key_slot(key);
    ASSERT_TRUE(run({"SET", key, "before"}).result.ok()) << all_logs();
    ASSERT_TRUE(cluster.move_slot(slot, 0, 2)) << cluster.last_error;
    Outcome get = run({"GET", key});
    ASSERT_TRUE(get.result.ok()) << all_logs();
    EXPECT_EQ(get.result.reply.str, "before");
    EXPECT_EQ(get.calls, 1);
    EXPECT_EQ(client.stats().moved, 1u);
    EXPECT_EQ(client.node_of_slot(slot), cluster.tls_address(2).to_string());
    EXPECT_EQ(logged(LogLevel::Error), 0) << all_logs();
}

}  // namespace
}  // namespace throttle::redis::test
