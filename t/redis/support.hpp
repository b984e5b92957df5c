// Test support for the Redis client: a real redis-server on a free loopback port (started,
// paused, killed and restarted by the test), a blocking control connection to inspect it, a
// libevent loop driven until a condition holds or a deadline passes, and a fake loop with a
// virtual clock for exact timing tests.
#pragma once

#include <arpa/inet.h>
#include <dirent.h>
#include <event2/event.h>
#include <gtest/gtest.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "redis/client.hpp"
#include "redis/libevent_loop.hpp"

namespace throttle::redis::test {

inline uint64_t mono_ms() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1000 + uint64_t(ts.tv_nsec) / 1000000;
}

inline std::string redis_server_bin() {
    if (const char* env = std::getenv("THROTTLE_REDIS_SERVER")) {
        return env;
    }
    return REDIS_SERVER_BIN;
}

inline bool have_redis_server() {
    std::string bin = redis_server_bin();
    return !bin.empty() && access(bin.c_str(), X_OK) == 0;
}

inline uint16_t free_port() {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = 0;
    bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin));
    socklen_t len = sizeof(sin);
    getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len);
    close(fd);
    return ntohs(sin.sin_port);
}

inline bool port_is_free(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons(port);
    bool ok = bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) == 0;
    close(fd);
    return ok;
}

// A free port P for a cluster-enabled redis-server: its cluster bus listens on P + 10000,
// which must be free too. Both are taken below the kernel's ephemeral range (32768 and up
// here), from 10000-22767 at random: free_port()'s ports are ephemeral ones, which any outgoing
// connection (ours, redis-cli's, the cluster bus's own) may take as its source port between the
// choice and the server's bind, and a node that cannot bind does not start.
inline uint16_t free_cluster_port() {
    static std::mt19937 pick(std::random_device{}());
    std::uniform_int_distribution<int> range(10000, 22767);
    for (int attempt = 0; attempt < 1000; attempt++) {
        uint16_t p = static_cast<uint16_t>(range(pick));
        if (port_is_free(p) && port_is_free(static_cast<uint16_t>(p + 10000))) {
            return p;
        }
    }
    return 0;
}

inline int count_open_fds() {
    int n = 0;
    DIR* d = opendir("/proc/self/fd");
    while (dirent* e = readdir(d)) {
        if (e->d_name[0] != '.') {
            n++;
        }
    }
    closedir(d);
    return n - 1;  // the DIR's own descriptor
}

// Polls `pred` every few milliseconds until it holds or `timeout_ms` passes.
inline bool wait_for(const std::function<bool()>& pred, uint64_t timeout_ms) {
    uint64_t deadline = mono_ms() + timeout_ms;
    while (!pred()) {
        if (mono_ms() >= deadline) {
            return false;
        }
        usleep(2000);
    }
    return true;
}

// A blocking connection to the server, for the test to look at what the client did.
class Control {
   public:
    Control(uint16_t port, const std::string& password = "") {
        timeval tv{1, 0};
        c_ = redisConnectWithTimeout("127.0.0.1", port, tv);
        if (c_ != nullptr && c_->err == 0) {
            redisSetTimeout(c_, tv);
            if (!password.empty()) {
                freeReplyObject(redisCommand(c_, "AUTH %s", password.c_str()));
            }
        }
    }
    ~Control() {
        if (c_ != nullptr) {
            redisFree(c_);
        }
    }
    bool ok() const { return c_ != nullptr && c_->err == 0; }

    // Runs argv; returns the reply as a string ("(nil)", the integer, the text).
    std::string run(const std::vector<std::string>& argv) {
        std::vector<const char*> p;
        std::vector<size_t> l;
        for (const std::string& a : argv) {
            p.push_back(a.data());
            l.push_back(a.size());
        }
        auto* r =
            static_cast<redisReply*>(redisCommandArgv(c_, int(argv.size()), p.data(), l.data()));
        if (r == nullptr) {
            return "(no reply)";
        }
        std::string out = text(r);
        freeReplyObject(r);
        return out;
    }

    // "(nil)", the integer, the string, or "[a,b,...]" for an array.
    static std::string text(const redisReply* r) {
        switch (r->type) {
            case REDIS_REPLY_NIL:
                return "(nil)";
            case REDIS_REPLY_INTEGER:
                return std::to_string(r->integer);
            case REDIS_REPLY_ARRAY: {
                std::string out = "[";
                for (size_t i = 0; i < r->elements; i++) {
                    out += (i ? "," : "") + text(r->element[i]);
                }
                return out + "]";
            }
            default:
                return std::string(r->str, r->len);
        }
    }

    // The string elements of an array reply (CLUSTER GETKEYSINSLOT); empty for any other.
    std::vector<std::string> list(const std::vector<std::string>& argv) {
        std::vector<const char*> p;
        std::vector<size_t> l;
        for (const std::string& a : argv) {
            p.push_back(a.data());
            l.push_back(a.size());
        }
        auto* r =
            static_cast<redisReply*>(redisCommandArgv(c_, int(argv.size()), p.data(), l.data()));
        std::vector<std::string> out;
        if (r != nullptr && r->type == REDIS_REPLY_ARRAY) {
            for (size_t i = 0; i < r->elements; i++) {
                out.emplace_back(r->element[i]->str != nullptr ? r->element[i]->str : "",
                                 r->element[i]->str != nullptr ? r->element[i]->len : 0);
            }
        }
        if (r != nullptr) {
            freeReplyObject(r);
        }
        return out;
    }

    // A numeric field of INFO section.
    long long info(const std::string& section, const std::string& field) {
        std::string text = run({"INFO", section});
        std::string key = "\r\n" + field + ":";
        size_t at = text.find(key);
        if (at == std::string::npos) {
            return -1;
        }
        return std::atoll(text.c_str() + at + key.size());
    }

   private:
    redisContext* c_ = nullptr;
};

// A redis-server child process on 127.0.0.1:port, no persistence.
class RedisServer {
   public:
    explicit RedisServer(std::vector<std::string> extra = {}, uint16_t port = 0)
        : extra_(std::move(extra)), port_(port != 0 ? port : free_port()) {
        char tmpl[] = "/tmp/throttle-redis-XXXXXX";
        dir_ = mkdtemp(tmpl);
    }
    ~RedisServer() {
        stop();
        std::string cmd = "rm -rf '" + dir_ + "'";
        if (std::system(cmd.c_str()) != 0) {
        }
    }
    RedisServer(const RedisServer&) = delete;
    RedisServer& operator=(const RedisServer&) = delete;

    uint16_t port() const { return port_; }
    Address address() const {
        Address a;
        a.host = "127.0.0.1";
        a.port = port_;
        return a;
    }
    const std::string& password() const { return password_; }
    void set_password(const std::string& p) { password_ = p; }
    // Makes this a Sentinel (redis-server CONF --sentinel) monitoring 127.0.0.1:`primary` as
    // `name` (quorum 1); call before start().
    // `lines`: more lines of sentinel.conf ("sentinel down-after-milliseconds mymaster 500").
    void make_sentinel(uint16_t primary, const std::string& name = "mymaster",
                       const std::vector<std::string>& lines = {}) {
        sentinel_conf_ = dir_ + "/sentinel.conf";
        FILE* f = std::fopen(sentinel_conf_.c_str(), "w");
        if (f != nullptr) {
            std::fprintf(f, "sentinel monitor %s 127.0.0.1 %u 1\n", name.c_str(),
                         unsigned(primary));
            for (const std::string& line : lines) {
                std::fprintf(f, "%s\n", line.c_str());
            }
            std::fclose(f);
        }
    }

    // Starts it and waits until it answers.
    bool start() {
        std::vector<std::string> args = {redis_server_bin(),
                                         "--port",
                                         std::to_string(port_),
                                         "--bind",
                                         "127.0.0.1",
                                         "--save",
                                         "",
                                         "--appendonly",
                                         "no",
                                         "--dir",
                                         dir_,
                                         "--logfile",
                                         dir_ + "/redis.log"};
        args.insert(args.end(), extra_.begin(), extra_.end());
        if (!sentinel_conf_.empty()) {
            args.insert(args.begin() + 1, {sentinel_conf_, "--sentinel"});
        }
        pid_ = fork();
        if (pid_ == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            std::vector<char*> argv;
            for (std::string& a : args) {
                argv.push_back(a.data());
            }
            argv.push_back(nullptr);
            execv(argv[0], argv.data());
            _exit(127);
        }
        if (pid_ < 0) {
            return false;
        }
        return wait_for(
            [this] {
                Control c(port_, password_);
                return c.ok() && c.run({"PING"}) == "PONG";
            },
            10000);
    }
    void pause() { kill(pid_, SIGSTOP); }
    void resume() { kill(pid_, SIGCONT); }
    void kill9() {
        if (pid_ > 0) {
            kill(pid_, SIGKILL);
            waitpid(pid_, nullptr, 0);
            pid_ = -1;
        }
    }
    void stop() {
        if (pid_ <= 0) {
            return;
        }
        kill(pid_, SIGCONT);
        kill(pid_, SIGTERM);
        bool gone = wait_for([this] { return waitpid(pid_, nullptr, WNOHANG) == pid_; }, 5000);
        if (!gone) {
            kill9();
        }
        pid_ = -1;
    }

   private:
    std::vector<std::string> extra_;
    uint16_t port_;
    std::string dir_;
    std::string password_;
    std::string sentinel_conf_;
    pid_t pid_ = -1;
};

inline std::string redis_cli_bin() {
    if (const char* env = std::getenv("THROTTLE_REDIS_CLI")) {
        return env;
    }
    std::string server = redis_server_bin();
    size_t slash = server.rfind('/');
    return (slash == std::string::npos ? std::string() : server.substr(0, slash + 1)) + "redis-cli";
}

// A Redis Cluster of `masters` cluster-enabled redis-servers, each with `replicas` replicas,
// made one by `redis-cli --cluster create`; start() returns once every node says
// cluster_state:ok with every slot assigned and every node known, and every replica's link to
// its master is up. node(0 .. masters-1) are the masters, the replicas follow.
class RedisCluster {
   public:
    // tls_dir: every node also has a TLS port (tls_address) with the certificates there
    // (ca.crt, server.crt/key, client.crt/key: the cluster bus asks for a client certificate),
    // --tls-cluster yes (the bus on port + 10000, TLS) and --tls-replication yes; the
    // plaintext ports stay for Control and redis-cli.
    explicit RedisCluster(size_t masters = 3, std::vector<std::string> extra = {},
                          size_t replicas = 0, const std::string& tls_dir = "")
        : replicas_(replicas),
          count_(masters * (1 + replicas)),
          extra_(std::move(extra)),
          tls_dir_(tls_dir) {
        make_nodes();
    }

    // Starts the nodes and makes them one cluster. A cluster that does not come up (a port
    // taken between its choice and the node's bind, a bus that never converged on a loaded
    // machine) is torn down and made again on fresh ports, up to three times; why each attempt
    // failed is in why_not_started (the tests print it). What the tests check begins after.
    bool start() {
        std::string log;
        for (int attempt = 1; attempt <= 3; attempt++) {
            if (start_once()) {
                why_not_started = log;
                return true;
            }
            log += "attempt " + std::to_string(attempt) + ": " + why_not_started + "\n";
            nodes_.clear();
            tls_port_of_.clear();
            make_nodes();
        }
        why_not_started = log;
        return false;
    }

    bool start_once() {
        std::string cmd = redis_cli_bin() + " --cluster create";
        for (auto& n : nodes_) {
            if (!n->start()) {
                why_not_started = "node on port " + std::to_string(n->port()) + " did not start";
                return false;
            }
            cmd += " 127.0.0.1:" + std::to_string(n->port());
        }
        cmd +=
            " --cluster-replicas " + std::to_string(replicas_) + " --cluster-yes > /dev/null 2>&1";
        if (std::system(cmd.c_str()) != 0) {
            why_not_started = "redis-cli --cluster create failed";
            return false;
        }
        std::string known = "cluster_known_nodes:" + std::to_string(nodes_.size()) + "\r\n";
        bool ok = wait_for(
            [&] {
                for (auto& n : nodes_) {
                    Control c(n->port());
                    std::string info = c.ok() ? c.run({"CLUSTER", "INFO"}) : "";
                    if (info.find("cluster_state:ok\r\n") == std::string::npos ||
                        info.find("cluster_slots_assigned:16384\r\n") == std::string::npos ||
                        info.find(known) == std::string::npos) {
                        return false;
                    }
                }
                return true;
            },
            20000);
        if (!ok) {
            why_not_started = "no cluster_state:ok with every slot and node within 20 s:";
            for (auto& n : nodes_) {
                Control c(n->port());
                std::string info = c.ok() ? c.run({"CLUSTER", "INFO"}) : "(no answer)";
                why_not_started += "\n" + std::to_string(n->port()) + ": " +
                                   info.substr(0, info.find("cluster_stats_messages"));
            }
            return false;
        }
        // Masters first (redis-cli chose them), then the replicas once attached.
        std::stable_partition(nodes_.begin(), nodes_.end(), [](const auto& n) {
            return Control(n->port()).run({"ROLE"}).rfind("[master", 0) == 0;
        });
        return wait_for(
            [&] {
                for (size_t i = masters(); i < nodes_.size(); i++) {
                    Control c(nodes_[i]->port());
                    std::string info = c.ok() ? c.run({"INFO", "replication"}) : "";
                    if (info.find("master_link_status:up\r\n") == std::string::npos) {
                        return false;
                    }
                }
                return true;
            },
            20000);
    }

    size_t masters() const { return nodes_.size() / (1 + replicas_); }
    size_t size() const { return nodes_.size(); }
    RedisServer& node(size_t i) { return *nodes_[i]; }
    std::vector<Address> seeds() const {
        std::vector<Address> out;
        for (const auto& n : nodes_) {
            out.push_back(n->address());
        }
        return out;
    }
    // The TLS address of node `i` (a cluster made with tls_dir).
    Address tls_address(size_t i) const {
        Address a;
        a.host = "127.0.0.1";
        a.port = tls_port_of_.at(nodes_[i]->port());
        return a;
    }
    std::string id(size_t i) { return Control(nodes_[i]->port()).run({"CLUSTER", "MYID"}); }
    // The node (index) that serves `key` as the cluster itself says: the one that does not
    // answer GET with a redirection. size() when none does.
    size_t owner(const std::string& key) {
        for (size_t i = 0; i < nodes_.size(); i++) {
            Control c(nodes_[i]->port());
            std::string r = c.ok() ? c.run({"GET", key}) : "MOVED";
            if (r.rfind("MOVED", 0) != 0 && r.rfind("ASK", 0) != 0 && r != "(no reply)") {
                return i;
            }
        }
        return nodes_.size();
    }
    // A key ("PREFIX<n>") that node `i` serves.
    std::string key_on(size_t i, const std::string& prefix = "key") {
        for (int n = 0; n < 10000; n++) {
            std::string k = prefix + std::to_string(n);
            if (owner(k) == i) {
                return k;
            }
        }
        return std::string();
    }
    // Starts moving `slot` from node `from` to node `to` (IMPORTING, MIGRATING), then MIGRATEs
    // `keys` (all of that slot) to it. The slot stays in migration: ASK.
    bool begin_migration(uint16_t slot, size_t from, size_t to,
                         const std::vector<std::string>& keys) {
        Control src(nodes_[from]->port()), dst(nodes_[to]->port());
        std::string s = std::to_string(slot);
        std::string r = dst.run({"CLUSTER", "SETSLOT", s, "IMPORTING", id(from)});
        if (r != "OK") {
            last_error = "IMPORTING: " + r;
            return false;
        }
        r = src.run({"CLUSTER", "SETSLOT", s, "MIGRATING", id(to)});
        if (r != "OK") {
            last_error = "MIGRATING: " + r;
            return false;
        }
        if (keys.empty()) {
            return true;
        }
        // A TLS cluster MIGRATEs over TLS (--tls-cluster): to the target's TLS port.
        uint16_t port = tls_port_of_.empty() ? nodes_[to]->port() : tls_address(to).port;
        std::vector<std::string> migrate = {"MIGRATE", "127.0.0.1", std::to_string(port), "", "0",
                                            "5000",    "KEYS"};
        migrate.insert(migrate.end(), keys.begin(), keys.end());
        r = src.run(migrate);
        last_error = "MIGRATE: " + r;
        return r == "OK";
    }
    // Moves `slot` from `from` to `to` with all its keys, and tells every node (MOVED).
    bool move_slot(uint16_t slot, size_t from, size_t to) {
        Control src(nodes_[from]->port());
        std::vector<std::string> keys =
            src.list({"CLUSTER", "GETKEYSINSLOT", std::to_string(slot), "1000"});
        if (!begin_migration(slot, from, to, keys)) {
            return false;
        }
        std::string owner_id = id(to);
        for (size_t i : {to, from}) {
            std::string r =
                Control(nodes_[i]->port())
                    .run({"CLUSTER", "SETSLOT", std::to_string(slot), "NODE", owner_id});
            if (r != "OK") {
                last_error = "SETSLOT NODE on " + std::to_string(i) + ": " + r;
                return false;
            }
        }
        for (size_t i = 0; i < nodes_.size(); i++) {
            if (i != to && i != from) {
                Control(nodes_[i]->port())
                    .run({"CLUSTER", "SETSLOT", std::to_string(slot), "NODE", owner_id});
            }
        }
        return true;
    }

    // A field of CLUSTER INFO on node `i` ("" if missing).
    std::string cluster_info(size_t i, const std::string& field) {
        std::string info = Control(nodes_[i]->port()).run({"CLUSTER", "INFO"});
        size_t at = info.find(field + ":");
        if (at == std::string::npos) {
            return std::string();
        }
        at += field.size() + 1;
        return info.substr(at, info.find_first_of("\r\n", at) - at);
    }
    bool epochs_settled() {
        std::string current = cluster_info(0, "cluster_current_epoch");
        std::vector<std::string> mine;
        for (size_t i = 0; i < nodes_.size(); i++) {
            if (cluster_info(i, "cluster_current_epoch") != current) {
                return false;
            }
            if (i < masters()) {  // a replica reports its master's epoch
                mine.push_back(cluster_info(i, "cluster_my_epoch"));
            }
        }
        std::sort(mine.begin(), mine.end());
        return !current.empty() && std::adjacent_find(mine.begin(), mine.end()) == mine.end();
    }

    // Waits until `key` (of `slot`) is served by node `to` (owner()), re-asserting the move
    // every 500 ms: CLUSTER BUMPEPOCH on `to`, then SETSLOT NODE on every node. A slot moved
    // back and forth quickly can be taken back by an older claim gossiped late (Redis' own
    // config-epoch race between the two masters), which is the cluster's doing, not the
    // client's: the harness settles it instead of failing the test on it.
    bool settle_slot(uint16_t slot, const std::string& key, size_t to,
                     uint64_t timeout_ms = 10000) {
        uint64_t deadline = mono_ms() + timeout_ms;
        uint64_t next_assert = mono_ms() + 500;
        while (owner(key) != to) {
            uint64_t now = mono_ms();
            if (now >= deadline) {
                last_error =
                    "slot " + std::to_string(slot) + " not settled on node " + std::to_string(to);
                return false;
            }
            if (now >= next_assert) {
                Control(nodes_[to]->port()).run({"CLUSTER", "BUMPEPOCH"});
                std::string owner_id = id(to);
                for (size_t i = 0; i < nodes_.size(); i++) {
                    Control(nodes_[i]->port())
                        .run({"CLUSTER", "SETSLOT", std::to_string(slot), "NODE", owner_id});
                }
                next_assert = now + 500;
            }
            usleep(2000);
        }
        // And no config-epoch collision left to resolve (equal epochs of two masters: Redis
        // bumps one, and a claim gossiped before can then win again): every node reports the
        // same current epoch, and the masters' own epochs are distinct.
        if (!wait_for([&] { return epochs_settled(); },
                      deadline > mono_ms() ? deadline - mono_ms() : 0)) {
            last_error = "config epochs not settled";
            return false;
        }
        return owner(key) == to;
    }

    std::string last_error;       // why begin_migration(), move_slot() or settle_slot() failed
    std::string why_not_started;  // what went wrong in start()'s attempts

   private:
    // Ports for the nodes: each distinct from every other chosen (free_port() may return a
    // port again once its probe socket is closed) and from every bus port (port + 10000).
    static bool clashes(uint16_t p, const std::set<uint16_t>& taken) {
        return taken.count(p) != 0 || taken.count(static_cast<uint16_t>(p + 10000)) != 0;
    }
    static uint16_t distinct_cluster_port(std::set<uint16_t>& taken) {
        for (int attempt = 0; attempt < 1000; attempt++) {
            uint16_t p = free_cluster_port();
            if (p != 0 && !clashes(p, taken)) {
                taken.insert(p);
                taken.insert(static_cast<uint16_t>(p + 10000));
                return p;
            }
        }
        return 0;
    }
    static uint16_t distinct_port(std::set<uint16_t>& taken) {
        for (int attempt = 0; attempt < 1000; attempt++) {
            uint16_t p = free_port();
            if (taken.count(p) == 0) {
                taken.insert(p);
                return p;
            }
        }
        return 0;
    }
    void make_nodes() {
        std::set<uint16_t> taken;
        for (size_t i = 0; i < count_; i++) {
            std::vector<std::string> args = {"--cluster-enabled",      "yes",
                                             "--cluster-config-file",  "nodes.conf",
                                             "--cluster-node-timeout", "1000"};
            args.insert(args.end(), extra_.begin(), extra_.end());
            uint16_t port = distinct_cluster_port(taken);
            if (!tls_dir_.empty()) {
                uint16_t tls = distinct_port(taken);
                tls_port_of_[port] = tls;
                std::vector<std::string> t = {"--tls-port",
                                              std::to_string(tls),
                                              "--tls-cert-file",
                                              tls_dir_ + "/server.crt",
                                              "--tls-key-file",
                                              tls_dir_ + "/server.key",
                                              "--tls-ca-cert-file",
                                              tls_dir_ + "/ca.crt",
                                              "--tls-client-cert-file",
                                              tls_dir_ + "/client.crt",
                                              "--tls-client-key-file",
                                              tls_dir_ + "/client.key",
                                              "--tls-auth-clients",
                                              "no",
                                              "--tls-cluster",
                                              "yes",
                                              "--tls-replication",
                                              "yes",
                                              "--cluster-port",
                                              std::to_string(port + 10000)};
                args.insert(args.end(), t.begin(), t.end());
            }
            nodes_.push_back(std::make_unique<RedisServer>(args, port));
        }
    }

    size_t replicas_;
    size_t count_;
    std::vector<std::string> extra_;
    std::string tls_dir_;
    std::vector<std::unique_ptr<RedisServer>> nodes_;
    std::map<uint16_t, uint16_t> tls_port_of_;  // plaintext port -> TLS port
};

// A libevent loop the test drives.
class EventLoop {
   public:
    // Precise timers: the tests measure them against CLOCK_MONOTONIC.
    EventLoop() : base_(precise_base()), loop_(base_) {
        tick_ = evtimer_new(
            base_, [](evutil_socket_t, short, void*) {}, nullptr);
    }
    ~EventLoop() {
        event_free(tick_);
        event_base_free(base_);
    }
    LibeventLoop& loop() { return loop_; }

    // Runs the loop until `pred` holds (true) or `timeout_ms` passes (false).
    bool run_until(const std::function<bool()>& pred, uint64_t timeout_ms) {
        uint64_t deadline = mono_ms() + timeout_ms;
        while (!pred()) {
            uint64_t now = mono_ms();
            if (now >= deadline) {
                return false;
            }
            run_once(std::min<uint64_t>(deadline - now, 10));
        }
        return true;
    }
    // Runs the loop for `ms` whatever happens.
    void run_for(uint64_t ms) {
        uint64_t deadline = mono_ms() + ms;
        run_until([&] { return mono_ms() >= deadline; }, ms + 1000);
    }
    // One loop turn, waiting at most `max_wait_ms` for something to happen.
    void run_once(uint64_t max_wait_ms) {
        timeval tv{time_t(max_wait_ms / 1000), suseconds_t((max_wait_ms % 1000) * 1000)};
        evtimer_add(tick_, &tv);
        event_base_loop(base_, EVLOOP_ONCE);
    }

   private:
    static event_base* precise_base() {
        event_config* cfg = event_config_new();
        event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
        event_base* base = event_base_new_with_config(cfg);
        event_config_free(cfg);
        return base;
    }

    event_base* base_;
    LibeventLoop loop_;
    event* tick_;
};

// A loop with a virtual clock: timers fire only when the test advances time, deferred work
// when the test ends the turn (end_turn(), or advance_to()). It takes no socket (watch()
// fails), so it suits clients whose every connection attempt fails at once.
class FakeLoop final : public Loop {
   public:
    std::unique_ptr<Deferred> create_deferred(std::function<void()> handler) override {
        auto d = std::make_unique<FakeDeferred>(this, std::move(handler));
        deferred_.push_back(d.get());
        return d;
    }
    // The end of the turn: runs posted work, in posting order, until none is posted.
    void end_turn() {
        for (;;) {
            FakeDeferred* next = nullptr;
            for (FakeDeferred* d : deferred_) {
                if (d->is_posted && (next == nullptr || d->seq < next->seq)) {
                    next = d;
                }
            }
            if (next == nullptr) {
                return;
            }
            next->is_posted = false;
            next->handler();
        }
    }

    uint64_t now_ms() noexcept override { return now_; }
    std::unique_ptr<IoWatch> watch(int, std::function<void(int)>) override {
        watches++;
        return nullptr;
    }
    std::unique_ptr<Timer> create_timer(std::function<void()> handler) override {
        auto t = std::make_unique<FakeTimer>(this, std::move(handler));
        timers_.push_back(t.get());
        return t;
    }

    // The earliest armed expiry, or UINT64_MAX.
    uint64_t next_expiry() const {
        uint64_t at = UINT64_MAX;
        for (const FakeTimer* t : timers_) {
            if (t->armed) {
                at = std::min(at, t->at);
            }
        }
        return at;
    }
    // Fires, in order, every timer due by `t` (each its own turn); the clock ends at `t`.
    void advance_to(uint64_t t) {
        end_turn();
        for (;;) {
            FakeTimer* next = nullptr;
            for (FakeTimer* timer : timers_) {
                if (timer->armed && timer->at <= t && (next == nullptr || timer->at < next->at)) {
                    next = timer;
                }
            }
            if (next == nullptr) {
                break;
            }
            now_ = std::max(now_, next->at);
            next->armed = false;
            next->handler();
            end_turn();
        }
        now_ = std::max(now_, t);
    }

    int watches = 0;

   private:
    struct FakeTimer final : Timer {
        FakeTimer(FakeLoop* l, std::function<void()> h) : loop(l), handler(std::move(h)) {}
        ~FakeTimer() override {
            auto& v = loop->timers_;
            v.erase(std::remove(v.begin(), v.end(), this), v.end());
        }
        void start(uint64_t ms) noexcept override {
            armed = true;
            at = loop->now_ + ms;
        }
        void stop() noexcept override { armed = false; }
        bool active() const noexcept override { return armed; }

        FakeLoop* loop;
        std::function<void()> handler;
        bool armed = false;
        uint64_t at = 0;
    };

    struct FakeDeferred final : Deferred {
        FakeDeferred(FakeLoop* l, std::function<void()> h) : loop(l), handler(std::move(h)) {}
        ~FakeDeferred() override {
            auto& v = loop->deferred_;
            v.erase(std::remove(v.begin(), v.end(), this), v.end());
        }
        void post() noexcept override {
            if (!is_posted) {
                is_posted = true;
                seq = ++loop->posts_;
            }
        }
        void cancel() noexcept override { is_posted = false; }
        bool posted() const noexcept override { return is_posted; }

        FakeLoop* loop;
        std::function<void()> handler;
        bool is_posted = false;
        uint64_t seq = 0;
    };

    uint64_t now_ = 0;
    uint64_t posts_ = 0;
    std::vector<FakeTimer*> timers_;
    std::vector<FakeDeferred*> deferred_;
};

// Records what a command's callback got, how often, and whether it came from inside the call.
struct Outcome {
    int calls = 0;
    bool synchronous = false;
    uint64_t at_ms = 0;
    Result result;
};

// Tracks whether the test is inside a client call, to catch synchronous callbacks.
inline bool& inside_call() {
    static bool inside = false;
    return inside;
}

inline Callback track(Outcome& o) {
    return [&o](Result&& r) {
        o.calls++;
        o.synchronous = o.synchronous || inside_call();
        o.at_ms = mono_ms();
        o.result = std::move(r);
    };
}

inline void issue(Client& c, std::initializer_list<std::string_view> argv, Outcome& o) {
    inside_call() = true;
    c.command(argv, track(o));
    inside_call() = false;
}

// What a client logged, for a fixture to derive from: logger() collects, logged() counts the
// lines of a level (containing `text`), all_logs() prints them for a failure message.
struct LogCapture {
    std::vector<std::pair<LogLevel, std::string>> logs;

    Logger logger() {
        return [this](LogLevel level, std::string_view msg) {
            logs.emplace_back(level, std::string(msg));
        };
    }
    int logged(LogLevel level, const std::string& text = "") const {
        return int(std::count_if(logs.begin(), logs.end(), [&](const auto& l) {
            return l.first == level && l.second.find(text) != std::string::npos;
        }));
    }
    std::string all_logs() const {
        std::string out;
        for (const auto& l : logs) {
            out += std::to_string(int(l.first)) + " " + l.second + "\n";
        }
        return out;
    }
};

// One command, run until its callback (10 s at most).
inline Outcome call(EventLoop& ev, Client& c, std::initializer_list<std::string_view> argv) {
    Outcome o;
    issue(c, argv, o);
    EXPECT_TRUE(ev.run_until([&] { return o.calls > 0; }, 10000));
    return o;
}

}  // namespace throttle::redis::test
