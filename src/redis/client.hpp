// The Redis client (layer: redis): one connection driven by a Loop, pipelined commands with
// deadlines, EVALSHA with transparent NOSCRIPT reload, reconnect with exponential backoff and a
// circuit breaker. hiredis is an implementation detail: callers see Reply/Result only.
//
// Contract, for every command(), evalsha():
//   - the callback is called exactly once: with the reply, or with the reason there is none
//     (and Result::unsent when the command never left: the server cannot have run it);
//   - never from inside command()/evalsha(): a failure known at once (circuit open, backoff,
//     closed) is delivered from a 0 ms timer; replies come from the loop;
//   - arguments are binary safe and copied when needed: they need not outlive the call;
//   - commands issued in the same loop turn leave in one write (pipelining);
//   - a command without a reply by its deadline (now + command_timeout_ms, or the one given in
//     SendOptions) fails with Timeout, alone: it is abandoned, and its reply, when it comes,
//     is read and dropped; the other commands on the connection keep waiting for theirs. (A
//     command the server received may still run after its caller was told Timeout: callers
//     that must not apply something twice make it idempotent.) A timeout is not a failure for
//     the circuit breaker;
//   - the connection is dropped only when it is stuck: replies are owed and nothing at all has
//     been read from it for stuck_timeout_ms (0: max(1000, 4 * command_timeout_ms)), or more
//     than max_abandoned abandoned replies are outstanding, or a handshake command (AUTH,
//     SELECT, PING) reached its deadline. Every command pending on it then fails (Timeout past
//     its deadline, Disconnected otherwise), the breaker counts one failure and the client
//     reconnects after a backoff;
//   - a server that breaks the protocol -- a reply when no command waits for one, a reply
//     announcing more than config.reply_limits (reply_guard.hpp), garbage, a handshake reply
//     that is not what AUTH, SELECT, ROLE, INFO, SCRIPT LOAD or PING answer -- gets the same: the
//     connection is dropped at once, every command pending on it fails (Disconnected), and the
//     client reconnects; no reply is handed to a command it was not the answer to, as far as
//     the order of replies can tell (RESP2 replies carry no command id);
//   - the handshake asks the server what it is (ROLE, INFO cluster; an error reply such as
//     NOPERM skips the check) and no command is sent before it answers: a replica, a Sentinel
//     or a Redis Cluster node (unless config.cluster_node_ok) fails the connection like a
//     wrong password, with a message saying what it is and what to configure. An error reply
//     that says the same at run time (MOVED, ASK, CROSSSLOT, CLUSTERDOWN, READONLY,
//     MASTERDOWN: a failover, a resharding) is handed to its caller, then the connection is
//     dropped (a failure for the breaker, logged once per incident) and made again, which
//     asks again. With config.cluster_node_ok, a redirection or cluster-state error reply
//     (MOVED, ASK, TRYAGAIN, CLUSTERDOWN) to command() or evalsha() is instead handed to its
//     caller as a plain error reply, nothing more: the connection is kept, the breaker counts
//     neither a failure nor an answer, and the metrics count no error (the caller -- a cluster
//     client -- follows it); CROSSSLOT is an error reply like any other, READONLY and
//     MASTERDOWN still drop the connection.
// The circuit breaker counts failures: connections that fail or are lost (one failure however
// many commands were pending), error replies to evalsha() (NOSCRIPT after the reload included;
// not, with cluster_node_ok, MOVED, ASK, TRYAGAIN, CLUSTERDOWN) and replies the caller found
// unusable (reply_unusable()). failure_threshold of them in a row open the circuit, dropping the
// connection; commands then fail at once (CircuitOpen) for the cool-down, after which one
// connection probes the server. Only a command answered -- not a handshake, not PING -- resets the
// count: a server that connects fine and then fails every command keeps the circuit open (the
// cool-down doubling), instead of being reconnected to after each failure. Each incident is logged
// once: its first failure and the circuit opening at Error, the rest at Debug or Info, and the
// first answered command ("connection restored"). If command()/evalsha() throws (std::bad_alloc
// only), nothing was queued and the callback is never called. Single-threaded, like its Loop. A
// Client must not be destroyed from inside one of its own callbacks; close() may be called from
// anywhere.
//
// Metrics (issue 11; set_metrics(), off by default: then counting costs null checks, and a
// flag and a counter per command that keep the pending gauge exact should metrics be set
// while commands are in flight). Into the RedisMetrics shared by all workers:
//   - connects: connections established, i.e. their handshake done (PING answered, after
//     AUTH, SELECT, the role check, SCRIPT LOAD and the permission check); an attempt that
//     fails is not one;
//   - reconnects: those of them that follow a failure -- a connection attempt that failed, a
//     connection lost, refused or dropped (stuck, circuit opened) since the previous one was
//     established (or since the client started: a first connection that took two attempts
//     is a reconnect); not one after disconnect_idle(), which is no failure;
//   - breaker_openings: transitions to open (closed -> open, and half-open -> open when a
//     probe fails);
//   - commands: caller's commands (command(), evalsha()) sent to Redis, once each, when first
//     handed to a connection: a NOSCRIPT re-send is not counted again, commands that fail
//     before they leave (circuit open, Invalid, no connection) are not counted, and neither
//     are the client's own (AUTH, SELECT, ROLE, INFO, SCRIPT LOAD, PING, the permission
//     check, a NOSCRIPT reload's SCRIPT LOAD), the caller's internal ones
//     (SendOptions::internal: not counted anywhere in the metrics) or a command the caller
//     sends again (SendOptions::resend: counted when it was first sent);
//   - errors{kind}, one per incident:
//       timeout: a caller's command got Timeout (abandoned at its deadline while sent, or
//         failed past its deadline while waiting for a connection or when it dropped);
//       connection: a connection attempt failed (refused, connect timeout), a connection was
//         lost (closed, reset), stuck (dropped), or its handshake failed (an error reply to
//         AUTH, SELECT or PING, a refused permission check, a server that is not a single
//         primary, a handshake command past its deadline), or a reply said the server is not
//         one any more (MOVED, READONLY, ...); once per connection, however many commands
//         were pending on it;
//       protocol: the server broke the protocol (a reply nobody waits for, a reply beyond
//         reply_limits, garbage, a handshake reply of the wrong shape: the connection is
//         dropped, and counted here, not as connection), or the caller declared a reply
//         unusable (reply_unusable(), when it counts);
//       script: an error reply to a caller's command or EVALSHA (after the transparent
//         NOSCRIPT reload: a NOSCRIPT that is reloaded is not counted), or to SCRIPT LOAD;
//         not, with cluster_node_ok, MOVED, ASK, TRYAGAIN or CLUSTERDOWN (no error of the
//         node's: the caller follows them), nor anything about an internal command;
//   - command_duration: for every reply handed to a caller (error replies included), from
//     when the command was first sent to when its reply was read, a NOSCRIPT reload included,
//     on the Loop's clock (now_ms(): millisecond resolution, recorded in microseconds).
//     Late replies to abandoned commands are not observed (their caller got Timeout), nor
//     replies to commands sent before set_metrics().
// Into this worker's WorkerGauge (adjusted by +-1 as the state changes, and moved over by a
// later set_metrics(), so the gauge always holds exactly this client's state):
//   - connected: 1 from the handshake's end until the connection is dropped or closed;
//   - breaker_open: 1 while the circuit is open or half-open (commands fail at once), until
//     it closes or the client is closed;
//   - pending: caller's commands sent (counted in commands) and not yet answered, failed, or
//     abandoned (timed out); each leaves it once. 0 when nothing is in flight, and after
//     close().
#pragma once

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <list>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/metrics.hpp"
#include "redis/address.hpp"
#include "redis/connection.hpp"
#include "redis/loop.hpp"
#include "redis/permissions.hpp"
#include "redis/reply.hpp"
#include "redis/reply_guard.hpp"
#include "redis/script.hpp"
#include "redis/target.hpp"
#include "redis/tls.hpp"

struct redisReply;

namespace throttle::redis {

struct Config {
    Address address;
    int db = 0;            // SELECT db on connect unless 0
    std::string username;  // AUTH username password (Redis 6 ACL) when both are set
    std::string password;  // AUTH password when set
    uint32_t connect_timeout_ms = 1000;
    uint32_t command_timeout_ms = 1000;
    uint32_t stuck_timeout_ms = 0;     // nothing read while replies are owed; 0: see above
    uint32_t max_abandoned = 1024;     // timed-out commands whose replies are still to come
    uint32_t backoff_initial_ms = 50;  // delay before reconnecting, doubling per failure
    uint32_t backoff_max_ms = 5000;
    uint32_t failure_threshold = 3;       // consecutive failures that open the circuit; 0: never
    uint32_t cooldown_initial_ms = 1000;  // open time, doubling per failed probe
    uint32_t cooldown_max_ms = 30000;
    ReplyLimits reply_limits;  // what one reply may announce
    // The handshake asks the server what it is (ROLE, INFO cluster) and fails the connection,
    // saying what to configure, when it is a replica, a Sentinel or a Redis Cluster node; an
    // error reply that says so at run time (MOVED, ASK, CROSSSLOT, CLUSTERDOWN, READONLY,
    // MASTERDOWN: a failover, a resharding) drops the connection. true: a cluster node is
    // accepted and cluster replies are plain error replies (a connection to one node of a
    // cluster the caller handles itself; tests of the scripts' slot discipline).
    bool cluster_node_ok = false;
    // Sentinel (issue 12): with sentinels set, `address` is not used as given: before each
    // connect (the first and every reconnect) the Sentinels are asked in order, on a
    // short-lived connection of their own (same Loop, same timeouts), SENTINEL
    // get-master-addr-by-name sentinel_master; the first valid answer is the address
    // connected to, and the role check verifies it is a primary. No Sentinel answering is a
    // failed connection attempt (breaker, backoff), logged once per incident.
    std::string sentinel_master;
    std::vector<Address> sentinels;
    std::string sentinel_password;  // AUTH to the Sentinels when set
    // TLS (issue 12): with tls.enabled every connection -- to the server, and to the Sentinels,
    // with the same settings -- is TLS (tls.hpp). tls_context: the context built from `tls`
    // (nginx builds it at configuration time, so that nginx -t reads the files); without one,
    // the constructor builds it (and throws std::invalid_argument when it cannot).
    TlsSettings tls;
    std::shared_ptr<const TlsContext> tls_context;
    // Internal: this client talks to a Sentinel (no role check, no scripts).
    bool sentinel_query = false;
};

// Per-call options of command() and evalsha() (issue 12: what ClusterClient needs of the Client
// of each node). The overloads without them use the defaults.
struct SendOptions {
    // The command's absolute deadline on the Loop's clock (Loop::now_ms()); 0: now +
    // command_timeout_ms. It is the deadline everywhere one is used: waiting for a connection,
    // sent (abandoned at it with Timeout), failed when the connection drops (Timeout past it).
    // Already past when the call is made: the command is not sent and fails with Timeout
    // (unsent), from a 0 ms timer.
    uint64_t deadline = 0;
    // The caller's own plumbing, not a command of its caller's (ClusterClient's CLUSTER SLOTS,
    // ASKING): not counted in the metrics at all (commands, pending, command_duration,
    // errors{timeout}, errors{script}). The breaker treats it as any command.
    bool internal = false;
    // The same command of its caller's sent again (ClusterClient after MOVED or ASK; it was
    // counted when first sent, maybe by another Client sharing the metrics): not counted again
    // in commands; counted as any command otherwise (pending, command_duration, errors).
    bool resend = false;
    // ASKING goes right before the command, in the same write, each time it is sent (a
    // NOSCRIPT re-send of evalsha() included): a Redis Cluster ASK redirection. Its reply is
    // read and dropped (the command's own reply tells); it is the client's own command in
    // the metrics.
    bool asking = false;
};

enum class LogLevel : uint8_t { Debug, Info, Warn, Error };
using Logger = std::function<void(LogLevel, std::string_view message)>;
using Callback = std::function<void(Result&& result)>;

struct Stats {
    uint64_t commands = 0;       // command()/evalsha() calls
    uint64_t sent = 0;           // commands handed to the connection, handshake ones included
    uint64_t replies = 0;        // replies received (error replies included)
    uint64_t failed = 0;         // callbacks called with a failure
    uint64_t timeouts = 0;       // commands that reached their deadline
    uint64_t late_replies = 0;   // replies to abandoned (timed-out) commands, read and dropped
    uint64_t stuck = 0;          // connections dropped because nothing was read (stuck)
    uint64_t connects = 0;       // connection attempts
    uint64_t reconnects = 0;     // connection attempts after a failure (backoff or probe)
    uint64_t failures = 0;       // failures counted by the breaker (connections and commands)
    uint64_t refused = 0;        // connections dropped for breaking the protocol
    uint64_t circuit_opens = 0;  // closed/half-open -> open transitions
    uint64_t noscript_reloads = 0;
};

class Client final : public Target, private Connection::Owner {
   public:
    // Throws std::invalid_argument if config.address is not valid() (not numeric, no port).
    // Does not touch the network: start() or the first command connects.
    Client(Loop& loop, Config config, Logger logger = nullptr);
    ~Client()
        override;  // close(), then delivers every outstanding callback (Shutdown) synchronously
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

    // Starts connecting now, if not connected or connecting already (and not closed).
    void start() override;

    // Sends argv[0..argc) (argv[0] is the command name). (P|S)SUBSCRIBE, MONITOR, SELECT, AUTH,
    // HELLO, SYNC, PSYNC, CLIENT REPLY are refused with Failure::Invalid: they would change the
    // connection's state behind the client's back.
    void command(const std::string_view* argv, size_t argc, Callback cb) override;
    void command(std::initializer_list<std::string_view> argv, Callback cb) {
        command(argv.begin(), argv.size(), std::move(cb));
    }
    void command(const std::vector<std::string_view>& argv, Callback cb) {
        command(argv.data(), argv.size(), std::move(cb));
    }
    // The same, with options (SendOptions: an explicit deadline, internal, resend).
    void command(const std::string_view* argv, size_t argc, Callback cb, const SendOptions& opts);
    void command(std::initializer_list<std::string_view> argv, Callback cb,
                 const SendOptions& opts) {
        command(argv.begin(), argv.size(), std::move(cb), opts);
    }

    // EVALSHA script.sha() nkeys keys... args...; the script is loaded (SCRIPT LOAD) on every
    // (re)connect from its first use on, and reloaded once, transparently, on NOSCRIPT.
    void evalsha(const Script& script, const std::string_view* keys, size_t nkeys,
                 const std::string_view* args, size_t nargs, Callback cb) override;
    void evalsha(const Script& script, const std::vector<std::string_view>& keys,
                 const std::vector<std::string_view>& args, Callback cb) {
        evalsha(script, keys.data(), keys.size(), args.data(), args.size(), std::move(cb));
    }
    void evalsha(const Script& script, const std::string_view* keys, size_t nkeys,
                 const std::string_view* args, size_t nargs, Callback cb, const SendOptions& opts);
    // The same with the keys and arguments in RESP (EvalResp, scripts.hpp), copied as they are.
    void evalsha(const Script& script, const EvalResp& call, Callback cb) override;
    // With an explicit deadline (Target's; SendOptions::deadline).
    void evalsha_until(uint64_t deadline, const Script& script, const std::string_view* keys,
                       size_t nkeys, const std::string_view* args, size_t nargs,
                       Callback cb) override;
    void evalsha_until(uint64_t deadline, const Script& script, const EvalResp& call,
                       Callback cb) override;
    // Registers a script so that it is loaded on connect, before it is first used. With a
    // `key` (and the `channel` it publishes to), the commands the script calls are checked on
    // every connect against the user's ACL (permissions.hpp): a user who may not run one of
    // them, or may not run EVALSHA, fails the connection with a message naming what is
    // refused, as a wrong password does, instead of every call failing.
    void add_script(const Script& script) override;
    void add_script(const Script& script, std::string_view key, std::string_view channel) override;
    void add_script(const Script& script, std::string_view key) { add_script(script, key, {}); }
    // Adds command lines to that check (e.g. SUBSCRIBE on a channel another connection uses).
    void require(const std::vector<Argv>& checks) override;

    // The caller could not use `result`, a reply this client delivered (a script's reply of
    // the wrong shape): counted by the circuit breaker like a failed command, and logged once
    // per incident ("unusable reply: `what`"). Results that failed and error replies to
    // evalsha() were counted already: ignored, as is everything once closed.
    void reply_unusable(const Result& result, std::string_view what) noexcept;

    // Drops the connection, fails everything pending with Shutdown (from a 0 ms timer); later
    // commands fail with Shutdown too. Idempotent.
    void close() noexcept override;

    // Closes the connection if no command of the caller's is pending on it (a handshake still
    // in flight is dropped) and the circuit is closed, as nginx closes an idle keep-alive
    // connection when a worker exits: not a failure, nothing is logged, no backoff; the next
    // command connects again. True when no connection is left.
    bool disconnect_idle() noexcept override;

    // Sentinel (issue 12): the Sentinels say the primary is now `primary` (a +switch-master
    // message, sentinel_watch.hpp). Unless the connection is to `primary` already (made or being
    // made), it is dropped at once -- commands pending on it fail with Disconnected, as when
    // it is lost, but this is no failure for the circuit breaker and nothing waits for a
    // backoff -- and the client connects to `primary` now, without asking the Sentinels (their
    // answer may lag the message): the role check verifies it is a primary, and if it is not,
    // the next reconnect asks the Sentinels as always. An open circuit is probed at once
    // (half-open). While idle (no connection, none wanted) only the address is remembered for
    // the next connect. Logged at Info with `reason`; the new connection counts as a
    // reconnect in the metrics. Ignored without Config::sentinels, with an invalid address, or
    // once closed; true when the connection was moved.
    bool reconnect_to(const Address& primary, std::string_view reason) noexcept;

    // False while a command would fail at once without touching the network: circuit open or
    // half-open (probing), waiting to reconnect (backoff), or closed.
    bool available() const noexcept override;
    // True once a connection is established and its checks passed (the role check, the
    // permission probe; PING may still be in flight).
    bool connected() const noexcept { return conn_ == Conn::Connected; }
    bool circuit_open() const noexcept { return breaker_ != Breaker::Closed; }
    const Stats& stats() const noexcept { return stats_; }
    const Config& config() const noexcept override { return cfg_; }
    // Commands of the caller's awaiting a reply or a connection.
    size_t pending() const noexcept override;

    // Counts into `metrics` (shared by all workers) and `gauge` (this worker's, for this
    // client alone) from now on; either may be nullptr: not counted. The gauge given before
    // (if any) gives back this client's part, the new one takes it. See the top of the file.
    void set_metrics(core::metrics::RedisMetrics* metrics,
                     core::metrics::WorkerGauge* gauge) noexcept override;
    // Replies still owed to commands that timed out (abandoned): while there are any, the
    // server is behind; a caller with deferrable work can wait.
    size_t abandoned() const noexcept override { return abandoned_; }

    // Target: one Redis, the keys do not route.
    void command_for_key(std::string_view, const std::string_view* argv, size_t argc,
                         Callback cb) override {
        command(argv, argc, std::move(cb));
    }
    void reply_unusable(std::string_view, const Result& result,
                        std::string_view what) noexcept override {
        reply_unusable(result, what);
    }
    bool available(std::string_view) const noexcept override { return available(); }
    size_t abandoned(std::string_view) const noexcept override { return abandoned_; }
    bool clustered() const noexcept override { return false; }

   private:
    // Checking: connected, the role check (ROLE, INFO cluster) or the permission probe not
    // answered yet; commands wait as in Connecting (none may reach Redis before the checks say
    // the server is a single primary and the user may run them all).
    enum class Conn : uint8_t { None, Connecting, Checking, Connected };
    enum class Breaker : uint8_t { Closed, Open, HalfOpen };
    enum class Kind : uint8_t {
        User,
        EvalSha,
        Auth,
        Select,
        Role,
        Info,
        ScriptLoad,
        Probe,
        Ping,
        Asking
    };

    struct Pending {
        Kind kind = Kind::User;
        bool retried = false;             // EVALSHA already reloaded its script once
        bool abandoned = false;           // timed out: its caller was told, its reply is dropped
        bool sent = false;                // handed to a connection at least once
        bool counted = false;             // in the pending gauge (caller's, sent)
        bool timed = false;               // sent_us set: sent while metrics were on
        bool internal = false;            // SendOptions::internal: not in the metrics
        bool resend = false;              // SendOptions::resend: not counted in commands again
        bool asking = false;              // SendOptions::asking: ASKING before each send
        Failure failure = Failure::None;  // set when moved to done_
        size_t script = 0;                // EvalSha, ScriptLoad: index in scripts_
        uint64_t deadline = 0;
        uint64_t sent_us = 0;  // when first sent (timed), Loop::now_us()
        Callback cb;
        std::string args;  // the command in RESP, when kept (waiting, EVALSHA)
        std::list<Pending>::iterator self;
    };
    struct ScriptEntry {
        std::string sha;
        std::string source;
        std::string head;            // "\r\n$7\r\nEVALSHA\r\n$40\r\n<sha>\r\n": after "*<argc>"
        bool reload_logged = false;  // a NOSCRIPT reload was logged; no answer since
    };

    // Connection::Owner
    void on_connected() noexcept override;
    void on_reply(redisReply* reply) noexcept override;
    void on_lost(Connection::Loss loss, std::string_view message) noexcept override;
    bool awaiting_reply() const noexcept override;

    void connect() noexcept;
    void connected_now() noexcept;
    void send_waiting() noexcept;
    void handle_reply(Pending& p, redisReply* r) noexcept;
    void handshake_reply(Pending& p, redisReply* r) noexcept;
    Result reply_result(redisReply* r) noexcept;
    void evalsha_error(Pending& p, redisReply* r) noexcept;
    void probe_reply(Pending& p, redisReply* r) noexcept;
    void role_reply(Pending& p, redisReply* r) noexcept;
    void check_passed() noexcept;
    void resolve() noexcept;
    void ask_sentinel() noexcept;
    void sentinel_answer(uint64_t gen, Result&& r) noexcept;
    void retire_resolver() noexcept;
    void topology_error(Pending& p, redisReply* r, std::string_view why) noexcept;
    void send_probe();
    void drop(Failure why) noexcept;
    void connection_lost(Failure why, core::metrics::RedisError kind,
                         std::string_view detail) noexcept;
    void count_failure(std::string_view what) noexcept;
    void open_circuit(std::string_view message, LogLevel level) noexcept;
    void answered() noexcept;
    void healthy() noexcept;

    // Metrics (see the top of the file).
    void count_sent(Pending& p) noexcept;
    void uncount(Pending& p) noexcept;
    void count_reply(Pending& p, bool error) noexcept;
    void count_error(core::metrics::RedisError kind) noexcept {
        core::metrics::count(metrics_, kind);
    }
    void set_ready(bool ready) noexcept;
    void set_breaker(Breaker b) noexcept;
    bool breaker_shown() const noexcept { return breaker_ != Breaker::Closed && !closed_; }
    void established() noexcept;

    Pending& new_pending(std::list<Pending>& list, Kind kind, Callback cb, uint64_t deadline);
    void recycle(std::list<Pending>& from, std::list<Pending>::iterator it) noexcept;
    static constexpr size_t max_spare = 64;            // spare_'s most nodes
    static constexpr size_t max_spare_args = 1 << 14;  // a larger argument buffer is freed
    // The command kept in p.args, in RESP: the header for argc arguments (p.args replaced),
    // then the arguments.
    static void keep_header(Pending& p, size_t argc);
    static void keep_args(Pending& p, const std::string_view* argv, size_t argc);
    bool send(Pending& p, const std::string_view* argv, size_t argc) noexcept;
    bool send_kept(Pending& p) noexcept;
    bool submit(Pending& p, size_t argc, const char** argv, const size_t* lens) noexcept;
    // The same with the command in RESP (resp, when not empty, instead of argv).
    bool submit(Pending& p, std::string_view resp, size_t argc, const char** argv,
                const size_t* lens) noexcept;
    void send_internal(Kind kind, std::initializer_list<std::string_view> argv, size_t script = 0);
    void fail(std::list<Pending>& from, Pending& p, Failure why) noexcept;  // moves p to done_
    void fail_all(Failure why, bool by_deadline) noexcept;
    void fail_soon(Callback cb, Failure why);  // may throw std::bad_alloc
    bool admit(Callback& cb);
    bool past_deadline(Callback& cb, const SendOptions& opts, uint64_t& deadline);
    void cluster_reply(Pending& p, redisReply* r) noexcept;
    void arm_deadline(uint64_t deadline) noexcept;
    void on_deadline() noexcept;
    bool abandon(Pending& p) noexcept;
    void log_timeouts(uint64_t now) noexcept;
    uint32_t stuck_ms() const noexcept;
    void deliver() noexcept;
    static void invoke(Callback& cb, Result&& result, const Client* self) noexcept;
    void log(LogLevel level, std::string_view message) const noexcept;
    size_t script_index(const Script& script);

    Loop& loop_;
    Config cfg_;
    Logger logger_;
    std::string name_;  // "redis 127.0.0.1:6379"

    std::unique_ptr<Connection> connection_;
    Conn conn_ = Conn::None;
    Breaker breaker_ = Breaker::Closed;
    bool closed_ = false;
    bool answer_pending_ = false;  // a command was answered this turn: healthy() at its end
    uint8_t checks_owed_ = 0;      // Checking: handshake checks still to pass
    uint32_t consecutive_failures_ = 0;
    uint32_t backoff_ms_;
    uint32_t cooldown_ms_;
    uint64_t armed_deadline_ = 0;
    uint64_t last_progress_ms_ = 0;    // last reply read, or when replies began to be owed
    size_t abandoned_ = 0;             // in inflight_, abandoned
    uint64_t timeouts_unlogged_ = 0;   // timeouts since the last log line about them
    uint64_t timeouts_logged_ms_ = 0;  // when that line was

    std::list<Pending> inflight_;  // sent on connection_, awaiting a reply, in order
    std::list<Pending> waiting_;   // issued while connecting: sent once connected
    std::list<Pending> done_;      // failures to deliver from defer_timer_
    std::list<Pending> spare_;     // finished nodes, no callback, for new_pending to reuse
    std::vector<ScriptEntry> scripts_;
    Reply spare_reply_;  // a reply a callback is done with: reply_result() reuses its buffers
    std::vector<Argv> checks_;  // the permission probe's command lines; empty: no probe
    Stats stats_;

    core::metrics::RedisMetrics* metrics_ = nullptr;
    core::metrics::WorkerGauge* gauge_ = nullptr;
    bool ready_ = false;     // the connection's handshake is done (gauge connected)
    bool lost_ = false;      // a connection failed since the last one was established
    int64_t in_flight_ = 0;  // Pendings counted (gauge pending)

    std::unique_ptr<Timer> connect_timer_;
    std::unique_ptr<Timer> deadline_timer_;
    std::unique_ptr<Timer> retry_timer_;  // backoff, or the breaker's cool-down
    std::unique_ptr<Timer> defer_timer_;
    std::unique_ptr<Deferred> settle_;  // answer_pending_ -> healthy(), at the end of the turn

    // Sentinel discovery (cfg_.sentinels non-empty).
    std::unique_ptr<Client> resolver_;              // asking cfg_.sentinels[sentinel_index_]
    std::vector<std::unique_ptr<Client>> retired_;  // closed resolvers, freed by reap_timer_
    std::unique_ptr<Timer> reap_timer_;
    size_t sentinel_index_ = 0;
    uint64_t resolve_gen_ = 0;     // the answer awaited; older callbacks are ignored
    bool resolved_ = false;        // cfg_.address was just named by a Sentinel: connect to it
    std::string sentinel_errors_;  // why each Sentinel asked did not answer, for the log
};

}  // namespace throttle::redis
