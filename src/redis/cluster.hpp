// Redis Cluster (issue 12; layer: redis): ClusterClient sends each command to the master that
// serves its key's hash slot, over one Client per master (Config::cluster_node_ok), and follows
// the cluster's redirections. The nginx layer is to hold either a Client or a ClusterClient
// behind one interface; the calling surface is Client's, with a key where routing needs one.
//
// Contract (Client's, for the caller, per command()/command_for_key()/evalsha()):
//   - the callback is called exactly once, never from inside the call: a failure known at once
//     (closed, no key, keys of several slots) is delivered from a 0 ms timer;
//   - no callback later than the command's deadline (now + node.command_timeout_ms, taken when
//     the call is made): a command that waits for the slot map (this object's timer), or is
//     sent again after a redirection (the node's Client, given it), keeps that original
//     deadline and fails with Timeout at it;
//   - Timeout, Disconnected and CircuitOpen are those of the node's Client (each master has its
//     own connection, backoff and circuit breaker): one node down fails the commands of its
//     slots, not the others'; Result::unsent as Client sets it (or true when the command never
//     reached a node);
//   - commands for one node issued in one loop turn leave in one write (Client's pipelining).
// Routing: the slot map (slot -> master) comes from CLUSTER SLOTS, asked of the known masters
// (those available first) and then of the seeds, in order, until one answers with a valid map.
// It is asked at start() or at the first command, and again -- at most once per
// refresh_interval_ms, one question at a time -- after a MOVED, after a command failed with
// Disconnected or CircuitOpen (a node lost: a failover may have moved its slots), and, with
// refresh_every_ms, that long after the last map came (a resharding seen before any command
// meets a MOVED). Commands
// issued while no map is known wait for one (until their deadline); when no node answers, they
// fail with Disconnected (unsent) and the incident is logged once at Error.
// Redirections: MOVED slot host:port points the slot at that node at once, asks for a refresh
// and sends the command again to it; ASK slot host:port sends ASKING and the command to that
// node together (one write: nothing can come between them on that connection), the map
// unchanged. Once: a second redirection for the same command is handed to the caller as the
// error reply it is; so are CLUSTERDOWN, TRYAGAIN and CROSSSLOT.
// Nodes: a Client per master, made when the map (or a MOVED) first names it, with the same
// Config (auth, db, timeouts, breaker), the registered scripts and permission checks; a node
// that leaves the map is retired: no new command goes to it and it is destroyed once nothing is
// pending on it. A seed that is not a master is used only to ask for the map.
// EVALSHA is sent with the node's Client::evalsha() (which reloads a script on NOSCRIPT, once,
// transparently): with cluster_node_ok the node's Client hands MOVED, ASK, TRYAGAIN and
// CLUSTERDOWN back as plain error replies, no failure for its breaker, while a script's real
// error reply counts for that node's breaker as on a single Redis. Every command -- first sent,
// or sent again after a redirection -- is given the Op's original deadline (SendOptions): the
// node's Client fails it with Timeout at that deadline; after ASK the node's Client sends
// ASKING before it (SendOptions::asking), before a NOSCRIPT re-send of EVALSHA too.
// Metrics (set_metrics()): every node's Client counts into the same RedisMetrics and
// WorkerGauge (the gauges sum over the nodes: connected counts connected masters). commands
// counts the caller's commands once each: a command sent again after a redirection is not
// counted again (SendOptions::resend), the slot-map questions not at all
// (SendOptions::internal) nor ASKING (the Client's own); a MOVED, ASK, TRYAGAIN or CLUSTERDOWN
// reply counts as no error, the redirection the caller gets as its reply (a second one, TRYAGAIN)
// included. Single-threaded, like its Loop. It must not be destroyed from inside one of its
// callbacks.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <list>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "redis/client.hpp"
#include "redis/permissions.hpp"

namespace throttle::redis {

constexpr uint16_t kClusterSlots = 16384;

// The hash slot of `key` as Redis Cluster computes it: CRC16 (XMODEM) mod 16384 of the key, or
// of its hash tag when it has one: the bytes between its first '{' and the first '}' after it,
// if there is such a '}' and they are not empty ("{user1}.a" and "{user1}.b" share a slot;
// "{}a" and "a{" are hashed whole).
uint16_t key_slot(std::string_view key) noexcept;

struct ClusterConfig {
    std::vector<Address> seeds;  // asked for the slot map, in order, when no master answers
    Config node;  // each master's Client: address and sentinels unused, cluster_node_ok set
    uint32_t refresh_interval_ms = 1000;  // the least time between two slot-map questions
    uint32_t refresh_every_ms = 0;  // also asked this long after the last map; 0: only when needed
};

struct ClusterStats {
    uint64_t refreshes = 0;         // slot maps received (CLUSTER SLOTS answered, valid)
    uint64_t refresh_failures = 0;  // slot-map questions no node answered
    uint64_t moved = 0;             // MOVED followed
    uint64_t asked = 0;             // ASK followed
    uint64_t nodes_created = 0;     // Clients made
    uint64_t nodes_retired = 0;     // Clients retired (left the map)
};

class ClusterClient final : public Target {
   public:
    // Throws std::invalid_argument when there is no seed or a seed is not valid().
    // Does not touch the network: start() or the first command asks for the slot map.
    ClusterClient(Loop& loop, ClusterConfig config, Logger logger = nullptr);
    ~ClusterClient()
        override;  // close(), then delivers every outstanding callback (Shutdown) at once
    ClusterClient(const ClusterClient&) = delete;
    ClusterClient& operator=(const ClusterClient&) = delete;

    // Asks for the slot map now (a no-op once asked or known).
    void start() override;

    // argv[0..argc), routed by the slot of argv[1] (the key of GET, SET, DEL, EXPIRE, ...);
    // argc < 2: Failure::Invalid. Commands whose key is elsewhere: command_for_key().
    void command(const std::string_view* argv, size_t argc, Callback cb) override;
    void command(std::initializer_list<std::string_view> argv, Callback cb) {
        command(argv.begin(), argv.size(), std::move(cb));
    }
    void command(const std::vector<std::string_view>& argv, Callback cb) {
        command(argv.data(), argv.size(), std::move(cb));
    }
    // argv routed by the slot of `key` (which the caller says argv's keys share).
    void command_for_key(std::string_view key, const std::string_view* argv, size_t argc,
                         Callback cb) override;
    void command_for_key(std::string_view key, std::initializer_list<std::string_view> argv,
                         Callback cb) {
        command_for_key(key, argv.begin(), argv.size(), std::move(cb));
    }

    // EVALSHA routed by keys[0]; keys in more than one slot, or none: Failure::Invalid.
    void evalsha(const Script& script, const std::string_view* keys, size_t nkeys,
                 const std::string_view* args, size_t nargs, Callback cb) override;
    void evalsha(const Script& script, const std::vector<std::string_view>& keys,
                 const std::vector<std::string_view>& args, Callback cb) {
        evalsha(script, keys.data(), keys.size(), args.data(), args.size(), std::move(cb));
    }
    // The same, the keys and arguments read back from their RESP.
    void evalsha(const Script& script, const EvalResp& call, Callback cb) override;
    // With an explicit deadline (Target's): the Op's deadline, where it would be now +
    // command_timeout_ms.
    void evalsha_until(uint64_t deadline, const Script& script, const std::string_view* keys,
                       size_t nkeys, const std::string_view* args, size_t nargs,
                       Callback cb) override;
    void evalsha_until(uint64_t deadline, const Script& script, const EvalResp& call,
                       Callback cb) override;
    // As Client's, for every node (those made later too).
    void add_script(const Script& script) override;
    void add_script(const Script& script, std::string_view key, std::string_view channel) override;
    void add_script(const Script& script, std::string_view key) { add_script(script, key, {}); }
    void require(const std::vector<Argv>& checks) override;
    // An ASK reply to EVALSHA of `script` is handed to the caller as the error reply it is,
    // not followed: for a script whose declared key is not a name it touches (the module's
    // strict, flush and refund scripts declare PREFIX{ZONE:DIGEST}, which never exists), the
    // source of a slot being migrated answers ASK whatever it holds, and the importing node
    // would run the script without the source's data. No redirection happened: the node did not
    // run it.
    void dont_follow_ask(const Script& script);

    // Client::reply_unusable() on the node that serves `key` (the key the command was routed
    // by).
    void reply_unusable(std::string_view key, const Result& result,
                        std::string_view what) noexcept override;

    // Fails everything pending with Shutdown (from a 0 ms timer), closes every node; later
    // commands fail with Shutdown. Idempotent.
    void close() noexcept override;
    // Client::disconnect_idle() on every node; true when no connection is left and nothing is
    // pending.
    bool disconnect_idle() noexcept override;

    // False when closed, when no map is known and the last question for one failed, or when
    // no master's Client is available().
    bool available() const noexcept override;
    // Whether a command for `key` would reach a node now: its master's Client is available(),
    // or no map is known yet and none failed to come (the command will wait for one).
    bool available(std::string_view key) const noexcept override;
    size_t pending() const noexcept override;    // caller's commands not answered yet
    size_t abandoned() const noexcept override;  // Client::abandoned() summed over the nodes
    // Client::abandoned() of the node serving `key` (0 when none).
    size_t abandoned(std::string_view key) const noexcept override;
    bool clustered() const noexcept override { return true; }
    const Config& config() const noexcept override { return cfg_.node; }
    const ClusterStats& stats() const noexcept { return stats_; }
    void set_metrics(core::metrics::RedisMetrics* metrics,
                     core::metrics::WorkerGauge* gauge) noexcept override;

    // For tests and diagnostics: the master serving `slot` ("" when unknown), the masters with
    // a Client, and that Client (nullptr when none).
    std::string node_of_slot(uint16_t slot) const;
    size_t masters() const noexcept;
    Client* client_of_slot(uint16_t slot) const noexcept;

   private:
    struct Node;
    struct Op;
    using OpPtr = std::shared_ptr<Op>;

    void submit(OpPtr op, uint64_t deadline = 0);
    void dispatch(const OpPtr& op) noexcept;
    void send_to(Node& node, const OpPtr& op, bool asking) noexcept;
    void on_result(const OpPtr& op, Node* node, Result&& r) noexcept;
    bool redirect(const OpPtr& op, Node* from, const Reply& reply) noexcept;
    void finish(const OpPtr& op, Result&& r) noexcept;
    void fail_soon(const OpPtr& op, Failure why) noexcept;
    void deliver() noexcept;
    void on_deadline() noexcept;
    void arm_deadline(uint64_t at) noexcept;

    Node* node_for(const Address& address, bool master) noexcept;
    Node* find_node(const Address& address) const noexcept;
    void retire(std::unique_ptr<Node> node) noexcept;
    void reap() noexcept;

    void request_refresh() noexcept;
    void refresh() noexcept;
    void ask_next() noexcept;
    void slots_answer(uint64_t gen, Node* asked, Result&& r) noexcept;
    bool apply_slots(const Node& asked, const Reply& reply) noexcept;
    void refresh_failed() noexcept;
    void dispatch_waiting() noexcept;
    void log(LogLevel level, std::string_view message) const noexcept;
    const Script& own_script(const Script& script);

    Loop& loop_;
    ClusterConfig cfg_;
    Logger logger_;
    bool closed_ = false;
    ClusterStats stats_;

    std::vector<std::unique_ptr<Node>> nodes_;    // masters in the map, and seeds being asked
    std::vector<std::unique_ptr<Node>> retired_;  // left the map, destroyed when idle
    std::vector<Node*> slots_;                    // slot -> master; empty: no map yet

    std::list<OpPtr> ops_;         // the caller's commands not delivered yet, in call order
    std::vector<OpPtr> waiting_;   // for the slot map
    size_t deferred_ = 0;          // ops_ failed, waiting for defer_timer_
    uint64_t armed_deadline_ = 0;  // deadline_timer_'s, while active

    // The slot-map question: candidates_ asked in turn, gen_ tells answers to old ones apart.
    bool refreshing_ = false;
    bool refresh_again_ = false;    // asked for while one was in flight
    bool refresh_failing_ = false;  // logged; until a map comes
    uint64_t refresh_gen_ = 0;
    uint64_t last_refresh_ms_ = 0;
    bool refreshed_once_ = false;
    std::vector<Address> candidates_;
    size_t candidate_ = 0;
    std::string refresh_errors_;

    std::vector<std::unique_ptr<Script>> scripts_;  // copies: for later nodes and resends
    std::vector<Argv> checks_;                      // permission checks, for every node
    std::vector<std::string> no_ask_;               // dont_follow_ask(): script SHAs
    core::metrics::RedisMetrics* metrics_ = nullptr;
    core::metrics::WorkerGauge* gauge_ = nullptr;

    std::unique_ptr<Timer> deadline_timer_;
    std::unique_ptr<Timer> defer_timer_;
    std::unique_ptr<Timer> refresh_timer_;
    std::unique_ptr<Timer> reap_timer_;
    std::unique_ptr<Timer> periodic_timer_;  // refresh_every_ms
};

}  // namespace throttle::redis
