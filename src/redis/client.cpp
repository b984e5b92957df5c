// The Redis client (layer: redis). See client.hpp for the contract.
//
// Connection life: connect() -> Connecting (connect_timer_ bounds it) -> on_connected() ->
// Checking: handshake [AUTH] [SELECT] ROLE INFO [SCRIPT LOAD...] [probe] PING, in one write;
// Connected once ROLE, INFO (role_reply()) and the probe said yes: the commands that waited.
// Any failure (connect error or timeout, a handshake error or a handshake reply of the wrong
// shape, a lost connection, a stuck connection, a reply the ReplyGuard refused) goes
// through connection_lost(): the connection is closed (late replies are never read), every
// pending command fails, and count_failure() schedules the next attempt: a backoff, or -- after
// failure_threshold consecutive failures -- the circuit breaker's cool-down, after which one
// connection (half-open) probes the server. Commands fail on a live connection too (an error
// reply to EVALSHA, a reply the caller could not use): count_failure() without a reconnect,
// unless the circuit opens, which drops the connection.
//
// A probe's handshake (PING answered) closes the circuit but leaves the failure count as it
// is: the next failure opens it again, for twice as long. Only a command's answer resets the
// count, the backoff and the cool-down (healthy()), and not at once: at the end of the loop
// turn, if the connection it came on is still up -- a reply followed in the same read by one
// nobody asked for proves nothing about the server.
//
// A command past its deadline is abandoned (on_deadline()): its callback gets Timeout from
// defer_timer_, but its Pending stays in inflight_ (replies come in order) with no callback; its
// reply, when it comes, is counted and dropped. The connection is dropped only when stuck: replies
// owed and nothing read for stuck_ms() since the last reply (or since replies began to be owed), or
// more than max_abandoned abandoned.
//
// I/O is the connection layer's (connection.hpp: the socket, plain or TLS, the output buffer,
// hiredis' reply parser behind the ReplyGuard). inflight_ holds the commands sent, in the
// order they were appended to the connection's output: each reply is the answer to
// inflight_.front(). Dropping the connection destroys it, which may happen inside one of its
// callbacks (a reply that breaks the handshake): it notices and touches nothing after.
#include "redis/client.hpp"

#include <hiredis/hiredis.h>
#include <strings.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "redis/hiredis_reply.hpp"
#include "redis/message.hpp"
#include "redis/scripts.hpp"

namespace throttle::redis {
namespace {

using core::metrics::RedisError;

using message::cat;
using message::printable;

bool iequals(std::string_view a, std::string_view b) noexcept {
    return a.size() == b.size() && strncasecmp(a.data(), b.data(), b.size()) == 0;
}

// Commands that would change the connection's state behind the client's back. (Lengths are
// compared first: a command such as MGET costs a few compares, no strlen.)
bool refused(const std::string_view* argv, size_t argc) noexcept {
    static constexpr std::string_view names[] = {
        "subscribe",    "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe",
        "sunsubscribe", "monitor",    "select",     "auth",        "hello",
        "reset",        "sync",       "psync"};
    for (std::string_view name : names) {
        if (iequals(argv[0], name)) {
            return true;
        }
    }
    return argc >= 2 && iequals(argv[0], "client") && iequals(argv[1], "reply");
}

// The argv/argvlen arrays Connection::append() wants, on the stack for short commands.
class ArgvArrays {
   public:
    bool init(size_t n) noexcept {
        if (n <= kInline) {
            ptrs_ = inline_ptrs_;
            lens_ = inline_lens_;
            return true;
        }
        heap_ptrs_.reset(new (std::nothrow) const char*[n]);
        heap_lens_.reset(new (std::nothrow) size_t[n]);
        ptrs_ = heap_ptrs_.get();
        lens_ = heap_lens_.get();
        return ptrs_ != nullptr && lens_ != nullptr;
    }
    void set(size_t i, const char* p, size_t len) noexcept {
        ptrs_[i] = p;
        lens_[i] = len;
    }
    const char** ptrs() noexcept { return ptrs_; }
    const size_t* lens() noexcept { return lens_; }

   private:
    static constexpr size_t kInline = 16;
    const char* inline_ptrs_[kInline];
    size_t inline_lens_[kInline];
    std::unique_ptr<const char*[]> heap_ptrs_;
    std::unique_ptr<size_t[]> heap_lens_;
    const char** ptrs_ = nullptr;
    size_t* lens_ = nullptr;
};

// A reply in a log line: its type and its text (cut, made printable).
std::string describe(const redisReply* r) {
    std::string_view text(r->str != nullptr ? r->str : "", r->str != nullptr ? r->len : 0);
    switch (r->type) {
        case REDIS_REPLY_STRING:
            return cat("a bulk string \"", printable(text, 60), "\"");
        case REDIS_REPLY_STATUS:
            return cat("a status \"", printable(text, 60), "\"");
        case REDIS_REPLY_ERROR:
            return cat("an error \"", printable(text, 60), "\"");
        case REDIS_REPLY_INTEGER:
            return cat("an integer ", r->integer);
        case REDIS_REPLY_ARRAY:
            return cat("an array of ", r->elements);
        default:
            return "nil";
    }
}

// What the server is, and what to configure, for the log.
constexpr std::string_view kClusterNode =
    "a Redis Cluster node: single-server throttle_redis cannot use it, use \"throttle_redis "
    "cluster ADDRESS ...\" (or point it at a standalone Redis)";
constexpr std::string_view kReplicaNow =
    "a replica now (a failover?): writes fail with READONLY; point throttle_redis at the primary";

// An error reply that says the server is not a usable single primary (any more: a failover,
// a resharding): what it means and what to configure; empty for any other error.
std::string_view topology_error_advice(std::string_view text, bool cluster_node_ok) noexcept {
    auto code = [&](std::string_view name) {
        return text.substr(0, name.size()) == name &&
               (text.size() == name.size() || text[name.size()] == ' ');
    };
    for (std::string_view name : {"MOVED", "ASK", "CROSSSLOT", "CLUSTERDOWN"}) {
        if (code(name) && !cluster_node_ok) {
            return kClusterNode;
        }
    }
    for (std::string_view name : {"READONLY", "MASTERDOWN"}) {
        if (code(name)) {
            return kReplicaNow;
        }
    }
    return {};
}

// With Config::cluster_node_ok: a reply that redirects the command or says the cluster cannot
// serve it now (MOVED, ASK, TRYAGAIN, CLUSTERDOWN): the caller's to handle, nothing about
// this node's health.
bool cluster_state_error(std::string_view text) noexcept {
    for (std::string_view name : {"MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"}) {
        if (text.substr(0, name.size()) == name &&
            (text.size() == name.size() || text[name.size()] == ' ')) {
            return true;
        }
    }
    return false;
}

}  // namespace

Client::Client(Loop& loop, Config config, Logger logger)
    : loop_(loop), cfg_(std::move(config)), logger_(std::move(logger)) {
    for (const Address& a : cfg_.sentinels) {
        if (!a.valid()) {
            throw std::invalid_argument("invalid sentinel address \"" + a.to_string() +
                                        "\": a numeric IPv4/IPv6 address and a port, or "
                                        "unix:PATH");
        }
    }
    if (!cfg_.sentinels.empty() && cfg_.sentinel_master.empty()) {
        throw std::invalid_argument("sentinels without a master name");
    }
    if (cfg_.sentinels.empty() && !cfg_.address.valid()) {
        throw std::invalid_argument("invalid redis address \"" + cfg_.address.to_string() +
                                    "\": a numeric IPv4/IPv6 address and a port, or unix:PATH");
    }
    if (cfg_.tls.enabled && cfg_.tls_context == nullptr) {
        std::string error;
        cfg_.tls_context = TlsContext::create(cfg_.tls, error);
        if (cfg_.tls_context == nullptr) {
            throw std::invalid_argument(error);
        }
    }
    cfg_.connect_timeout_ms = std::max<uint32_t>(cfg_.connect_timeout_ms, 1);
    cfg_.command_timeout_ms = std::max<uint32_t>(cfg_.command_timeout_ms, 1);
    if (cfg_.stuck_timeout_ms == 0) {
        uint64_t four = uint64_t(cfg_.command_timeout_ms) * 4;
        cfg_.stuck_timeout_ms =
            uint32_t(std::clamp<uint64_t>(four, 1000, std::numeric_limits<uint32_t>::max()));
    }
    cfg_.backoff_initial_ms = std::max<uint32_t>(cfg_.backoff_initial_ms, 1);
    cfg_.backoff_max_ms = std::max(cfg_.backoff_max_ms, cfg_.backoff_initial_ms);
    cfg_.cooldown_initial_ms = std::max<uint32_t>(cfg_.cooldown_initial_ms, 1);
    cfg_.cooldown_max_ms = std::max(cfg_.cooldown_max_ms, cfg_.cooldown_initial_ms);
    backoff_ms_ = cfg_.backoff_initial_ms;
    cooldown_ms_ = cfg_.cooldown_initial_ms;
    name_ = cfg_.sentinels.empty() ? "redis " + cfg_.address.to_string()
                                   : "redis (Sentinel master \"" + cfg_.sentinel_master + "\")";
    if (cfg_.sentinel_query) {
        name_ = "sentinel " + cfg_.address.to_string();
    }

    connect_timer_ = loop_.create_timer([this] {
        if (connection_ != nullptr && connection_->handshaking()) {
            connection_lost(
                Failure::Disconnected, RedisError::connection,
                cat("cannot connect: TLS handshake not done within ", cfg_.connect_timeout_ms,
                    " ms (is the port a TLS port? a plaintext Redis does not answer "
                    "the handshake)"));
            return;
        }
        connection_lost(
            Failure::Disconnected, RedisError::connection,
            cat("cannot connect: no connection within ", cfg_.connect_timeout_ms, " ms"));
    });
    deadline_timer_ = loop_.create_timer([this] { on_deadline(); });
    retry_timer_ = loop_.create_timer([this] {
        if (closed_ || connection_ != nullptr) {
            return;
        }
        stats_.reconnects++;
        if (breaker_ == Breaker::Open) {
            set_breaker(Breaker::HalfOpen);
            log(LogLevel::Debug, cat(name_, ": circuit half-open, probing"));
        }
        connect();
    });
    defer_timer_ = loop_.create_timer([this] { deliver(); });
    reap_timer_ = loop_.create_timer([this] { retired_.clear(); });
    settle_ = loop_.create_deferred([this] {
        if (answer_pending_ && connection_ != nullptr) {
            answer_pending_ = false;
            healthy();
        }
    });
}

Client::~Client() {
    close();
    retired_.clear();  // their callbacks see closed_ and do nothing
    // Everything outstanding is in done_ now; callbacks that issue commands add to it.
    while (!done_.empty()) {
        deliver();
    }
}

void Client::start() {
    if (closed_ || conn_ != Conn::None || retry_timer_->active()) {
        return;
    }
    connect();
}

size_t Client::pending() const noexcept {
    size_t n = 0;
    for (const std::list<Pending>* list : {&inflight_, &waiting_}) {
        for (const Pending& p : *list) {
            n += (p.kind == Kind::User || p.kind == Kind::EvalSha) && !p.abandoned;
        }
    }
    return n;
}

bool Client::available() const noexcept {
    return !closed_ && breaker_ == Breaker::Closed &&
           (conn_ != Conn::None || !retry_timer_->active());
}

void Client::log(LogLevel level, std::string_view message) const noexcept {
    if (!logger_) {
        return;
    }
    try {
        logger_(level, message);
    } catch (...) {
    }
}

void Client::invoke(Callback& cb, Result&& result, const Client* self) noexcept {
    if (!cb) {
        return;
    }
    try {
        cb(std::move(result));
    } catch (...) {
        if (self != nullptr) {
            self->log(LogLevel::Error, cat(self->name_, ": a command callback threw an exception"));
        }
    }
}

// ---- connection ------------------------------------------------------------------------------

void Client::connect() noexcept {
    if (!cfg_.sentinels.empty() && !resolved_) {
        resolve();
        return;
    }
    resolved_ = false;
    stats_.connects++;
    std::unique_ptr<Connection> c;
    std::string error;
    try {
        Connection::Owner& owner = *this;
        c = std::make_unique<Connection>(loop_, owner, ReplyGuard::Mode::Commands,
                                         cfg_.reply_limits);
    } catch (...) {
        error = "out of memory";
    }
    if (!c || !c->open(cfg_.address, false, cfg_.tls.enabled ? cfg_.tls_context : nullptr, error)) {
        lost_ = true;
        count_error(RedisError::connection);
        count_failure(cat("cannot connect: ", error));
        return;
    }
    connection_ = std::move(c);
    conn_ = Conn::Connecting;
    connect_timer_->start(cfg_.connect_timeout_ms);
}

void Client::on_connected() noexcept {
    connected_now();
}

// The reply to the oldest command sent (the guard refused any reply nobody awaits).
void Client::on_reply(redisReply* reply) noexcept {
    if (inflight_.empty()) {
        stats_.refused++;
        connection_lost(Failure::Disconnected, RedisError::protocol,
                        "connection dropped: unexpected reply: the server sent more replies "
                        "than commands");
        return;
    }
    handle_reply(inflight_.front(), reply);
}

void Client::on_lost(Connection::Loss loss, std::string_view message) noexcept {
    RedisError kind = RedisError::connection;
    if (loss == Connection::Loss::Protocol) {
        stats_.refused++;
        kind = RedisError::protocol;
    }
    connection_lost(Failure::Disconnected, kind, message);
}

bool Client::awaiting_reply() const noexcept {
    return !inflight_.empty();
}

// Called from the connection's on_connected(): a handshake that cannot be sent is failed from
// connect_timer_ at once.
void Client::connected_now() noexcept {
    connect_timer_->stop();
    conn_ = Conn::Connected;
    bool ok = true;
    try {
        if (!cfg_.password.empty()) {
            if (!cfg_.username.empty()) {
                send_internal(Kind::Auth, {"AUTH", cfg_.username, cfg_.password});
            } else {
                send_internal(Kind::Auth, {"AUTH", cfg_.password});
            }
        }
        if (cfg_.db != 0) {
            std::string db = std::to_string(cfg_.db);
            send_internal(Kind::Select, {"SELECT", db});
        }
        // What the server is (role_reply()): in the same write, no round trip of its own.
        if (!cfg_.sentinel_query) {
            send_internal(Kind::Role, {"ROLE"});
            send_internal(Kind::Info, {"INFO", "cluster"});
        }
        for (size_t i = 0; i < scripts_.size(); i++) {
            send_internal(Kind::ScriptLoad, {"SCRIPT", "LOAD", scripts_[i].source}, i);
        }
        if (!checks_.empty()) {
            send_probe();
        }
        send_internal(Kind::Ping, {"PING"});
    } catch (...) {
        ok = false;
    }
    if (!ok) {
        connect_timer_->start(0);
        return;
    }
    // send_waiting() when the role check (and the permission probe) says yes: no command
    // reaches a server that is not what it must be.
    conn_ = Conn::Checking;
    checks_owed_ = uint8_t((cfg_.sentinel_query ? 0 : 2) + (checks_.empty() ? 0 : 1));
    if (checks_owed_ == 0) {
        conn_ = Conn::Connected;
        send_waiting();
    }
}

// ---- Sentinel discovery ----------------------------------------------------------------------
//
// connect() with cfg_.sentinels: Connecting without a connection (connection_ == nullptr, no
// connect_timer_: the resolver's own timeouts bound each question) while a resolver, a Client
// of its own on a Sentinel, asks SENTINEL get-master-addr-by-name; commands wait in waiting_
// as for any connection. A valid answer sets cfg_.address and connects to it (the role check
// then verifies it is a primary); no valid answer from any Sentinel fails the attempt.

void Client::resolve() noexcept {
    conn_ = Conn::Connecting;
    sentinel_index_ = 0;
    sentinel_errors_.clear();
    ask_sentinel();
}

// Resolvers are closed at once but freed from a timer: never from inside their callbacks.
void Client::retire_resolver() noexcept {
    resolve_gen_++;
    if (!resolver_) {
        return;
    }
    resolver_->close();
    try {
        retired_.push_back(std::move(resolver_));
    } catch (...) {
        // Out of memory: it may be inside its own callback, so it is left (closed), not freed.
        (void)resolver_.release();
    }
    resolver_.reset();
    reap_timer_->start(0);
}

void Client::ask_sentinel() noexcept {
    retire_resolver();
    if (sentinel_index_ >= cfg_.sentinels.size()) {
        conn_ = Conn::None;
        lost_ = true;
        count_error(RedisError::connection);
        fail_all(Failure::Disconnected, true);
        count_failure(cat("cannot connect: no Sentinel named the primary of \"",
                          cfg_.sentinel_master, "\" (", sentinel_errors_, ")"));
        return;
    }
    uint64_t gen = resolve_gen_;
    try {
        Config sc;
        sc.address = cfg_.sentinels[sentinel_index_];
        sc.password = cfg_.sentinel_password;
        sc.connect_timeout_ms = cfg_.connect_timeout_ms;
        sc.command_timeout_ms = cfg_.command_timeout_ms;
        sc.failure_threshold = 0;
        sc.reply_limits = cfg_.reply_limits;
        sc.sentinel_query = true;
        sc.tls = cfg_.tls;  // the Sentinels are reached with the same TLS settings
        sc.tls_context = cfg_.tls_context;
        resolver_ = std::make_unique<Client>(loop_, std::move(sc));
        resolver_->command({"SENTINEL", "get-master-addr-by-name", cfg_.sentinel_master},
                           [this, gen](Result&& r) { sentinel_answer(gen, std::move(r)); });
    } catch (...) {
        resolver_.reset();
        sentinel_errors_ += sentinel_errors_.empty() ? "" : "; ";
        sentinel_errors_ += "out of memory";
        sentinel_index_++;
        ask_sentinel();
    }
}

void Client::sentinel_answer(uint64_t gen, Result&& r) noexcept {
    if (closed_ || gen != resolve_gen_) {
        return;
    }
    std::string why;
    Address a;
    try {
        const Reply& rep = r.reply;
        if (!r.ok()) {
            why = to_string(r.failure);
        } else if (rep.type == Reply::Type::Array && rep.elements.size() == 2 &&
                   rep.elements[0].type == Reply::Type::String &&
                   rep.elements[1].type == Reply::Type::String) {
            const std::string& host = rep.elements[0].str;
            const std::string& port = rep.elements[1].str;
            unsigned value = 0;
            auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
            a.host = host;
            if (ec != std::errc() || end != port.data() + port.size() || value == 0 ||
                value > 65535) {
                why = cat("an invalid port \"", printable(port, 20), "\"");
            } else {
                a.port = uint16_t(value);
                if (!a.valid()) {
                    why = cat("an invalid address \"", printable(host, 60), "\"");
                }
            }
        } else if (rep.is_nil()) {
            why = cat("no master named \"", printable(cfg_.sentinel_master, 60), "\"");
        } else if (rep.is_error()) {
            why = cat("an error \"", printable(rep.str, 60), "\"");
        } else {
            why = cat("a reply of type ", to_string(rep.type));
        }
        if (why.empty()) {
            if (a.to_string() != cfg_.address.to_string()) {
                log(LogLevel::Info,
                    cat(name_, ": Sentinel ", cfg_.sentinels[sentinel_index_].to_string(),
                        " names the primary ", a.to_string()));
            }
            cfg_.address = std::move(a);
            retire_resolver();
            conn_ = Conn::None;
            resolved_ = true;
            connect();
            return;
        }
        sentinel_errors_ += sentinel_errors_.empty() ? "" : "; ";
        sentinel_errors_ += cat(cfg_.sentinels[sentinel_index_].to_string(), ": ", why);
    } catch (...) {
    }
    sentinel_index_++;
    ask_sentinel();
}

bool Client::reconnect_to(const Address& primary, std::string_view reason) noexcept {
    if (closed_ || cfg_.sentinels.empty() || !primary.valid()) {
        return false;
    }
    bool same = primary.to_string() == cfg_.address.to_string();
    if (same && connection_ != nullptr) {
        return false;  // connected or connecting to it already
    }
    bool idle = connection_ == nullptr && conn_ == Conn::None && !retry_timer_->active();
    try {
        cfg_.address = primary;
    } catch (...) {
        return false;
    }
    resolved_ = true;  // the next connect goes there without asking
    if (idle) {
        return false;
    }
    log(LogLevel::Info, cat(name_, ": reconnecting to ", primary.to_string(), " now: ", reason));
    if (connection_ != nullptr) {
        lost_ = true;  // a reconnect, for the metrics; not a failure for the breaker
        drop(Failure::Disconnected);
    }
    retire_resolver();  // a Sentinel question in flight: the answer is known
    retry_timer_->stop();
    conn_ = Conn::None;
    backoff_ms_ = cfg_.backoff_initial_ms;
    if (breaker_ == Breaker::Open) {
        set_breaker(Breaker::HalfOpen);
        log(LogLevel::Debug, cat(name_, ": circuit half-open, probing the new primary"));
    }
    stats_.reconnects++;
    connect();
    return true;
}

// A check of the handshake (ROLE, INFO cluster, the permission probe) passed.
void Client::check_passed() noexcept {
    if (checks_owed_ > 0 && --checks_owed_ == 0 && conn_ == Conn::Checking) {
        conn_ = Conn::Connected;
        send_waiting();
    }
}

// The commands that waited for the connection (and its permission check), in order.
void Client::send_waiting() noexcept {
    uint64_t now = loop_.now_ms();
    while (!waiting_.empty()) {
        Pending& p = waiting_.front();
        if (p.deadline <= now) {
            stats_.timeouts++;
            fail(waiting_, p, Failure::Timeout);
            continue;
        }
        inflight_.splice(inflight_.end(), waiting_, p.self);
        if (!send_kept(p)) {
            fail(inflight_, p, Failure::Disconnected);
        }
    }
    if (!done_.empty() && !defer_timer_->active()) {
        defer_timer_->start(0);
    }
}

// Lets go of the connection: it is closed (also from inside its own callbacks: see the top),
// every command pending fails with `why` (or Timeout, past its deadline).
void Client::drop(Failure why) noexcept {
    connection_.reset();
    conn_ = Conn::None;
    set_ready(false);
    connect_timer_->stop();
    answer_pending_ = false;  // an answer on a connection that failed in the same turn
    // fail_all() erases the abandoned commands, counting abandoned_ down to 0 (zeroing it
    // first made that count wrap around: abandoned() stayed huge after a dropped connection
    // with late replies owed, and sync flushes, which wait for abandoned() == 0, stopped).
    fail_all(why, true);
    abandoned_ = 0;
}

void Client::connection_lost(Failure why, RedisError kind, std::string_view detail) noexcept {
    if (connection_ == nullptr) {
        return;
    }
    lost_ = true;
    count_error(kind);
    size_t pending_before = pending();
    drop(why);
    if (pending_before > 0) {
        count_failure(cat(detail, " (", pending_before, " pending command(s) failed)"));
    } else {
        count_failure(detail);
    }
}

// One failure of a connection or of a command. Without a connection, the next attempt is
// scheduled: after a backoff, or the cool-down once the circuit opens.
void Client::count_failure(std::string_view what) noexcept {
    stats_.failures++;
    answer_pending_ = false;
    if (breaker_ == Breaker::Open) {
        return;  // a late report: nothing is tried until the cool-down ends
    }
    consecutive_failures_++;
    uint32_t threshold = cfg_.failure_threshold;
    if (breaker_ == Breaker::HalfOpen || (threshold > 0 && consecutive_failures_ > threshold)) {
        // The probe failed: connecting, or with the first command after it connected.
        cooldown_ms_ = std::min(cooldown_ms_ * 2, cfg_.cooldown_max_ms);
        open_circuit(
            cat(name_, ": probe failed: ", what, "; circuit open for ", cooldown_ms_, " ms"),
            LogLevel::Info);
        return;
    }
    log(consecutive_failures_ == 1 ? LogLevel::Error : LogLevel::Debug, cat(name_, ": ", what));
    if (threshold > 0 && consecutive_failures_ == threshold) {
        cooldown_ms_ = cfg_.cooldown_initial_ms;
        open_circuit(cat(name_, ": ", consecutive_failures_,
                         " consecutive failures, circuit open for ", cooldown_ms_, " ms"),
                     LogLevel::Error);
        return;
    }
    if (connection_ == nullptr) {
        retry_timer_->start(backoff_ms_);
        backoff_ms_ = std::min(backoff_ms_ * 2, cfg_.backoff_max_ms);
    }
}

// No connection while the circuit is open: commands fail at once, the cool-down's end probes.
void Client::open_circuit(std::string_view message, LogLevel level) noexcept {
    set_breaker(Breaker::Open);
    stats_.circuit_opens++;
    if (metrics_ != nullptr) {
        core::metrics::add(metrics_->breaker_openings);
    }
    if (connection_ != nullptr) {
        lost_ = true;
        drop(Failure::Disconnected);
    }
    log(level, message);
    retry_timer_->start(cooldown_ms_);
}

// A command was answered: the incident (if any) ends at the end of the turn, unless the
// connection fails first.
void Client::answered() noexcept {
    if (consecutive_failures_ == 0 && breaker_ == Breaker::Closed) {
        return;
    }
    answer_pending_ = true;
    settle_->post();
}

void Client::reply_unusable(const Result& result, std::string_view what) noexcept {
    if (closed_ || !result.ok() || result.reply.is_error()) {
        return;
    }
    count_error(RedisError::protocol);
    count_failure(cat("unusable reply: ", what));
}

void Client::healthy() noexcept {
    if (consecutive_failures_ == 0 && breaker_ == Breaker::Closed) {
        return;
    }
    log(LogLevel::Info,
        cat(name_, ": connection restored after ", consecutive_failures_, " failure(s)"));
    consecutive_failures_ = 0;
    set_breaker(Breaker::Closed);
    backoff_ms_ = cfg_.backoff_initial_ms;
    cooldown_ms_ = cfg_.cooldown_initial_ms;
}

void Client::close() noexcept {
    if (closed_) {
        return;
    }
    bool breaker_was_shown = breaker_shown();
    closed_ = true;
    if (breaker_was_shown && gauge_ != nullptr) {
        gauge_->breaker_open.fetch_sub(1, std::memory_order_relaxed);
    }
    connect_timer_->stop();
    retry_timer_->stop();
    deadline_timer_->stop();
    settle_->cancel();
    answer_pending_ = false;
    retire_resolver();
    conn_ = Conn::None;  // without a connection: at most a Sentinel question, dropped
    if (connection_ != nullptr) {
        connection_.reset();
        set_ready(false);
    }
    fail_all(Failure::Shutdown, false);
}

bool Client::disconnect_idle() noexcept {
    if (!closed_ && connection_ == nullptr && conn_ == Conn::Connecting &&
        breaker_ == Breaker::Closed && pending() == 0) {
        retire_resolver();  // asking a Sentinel for nobody: dropped, as an idle connection is
        conn_ = Conn::None;
        return true;
    }
    if (closed_ || connection_ == nullptr || breaker_ != Breaker::Closed || pending() > 0) {
        return connection_ == nullptr;
    }
    drop(Failure::Disconnected);  // fails nothing of the caller's
    return true;
}

// ---- metrics ---------------------------------------------------------------------------------

void Client::set_metrics(core::metrics::RedisMetrics* metrics,
                         core::metrics::WorkerGauge* gauge) noexcept {
    auto give = [this](core::metrics::WorkerGauge* g, int64_t sign) {
        if (g == nullptr) {
            return;
        }
        g->connected.fetch_add(sign * int64_t(ready_), std::memory_order_relaxed);
        g->breaker_open.fetch_add(sign * int64_t(breaker_shown()), std::memory_order_relaxed);
        g->pending.fetch_add(sign * in_flight_, std::memory_order_relaxed);
    };
    give(gauge_, -1);
    metrics_ = metrics;
    gauge_ = gauge;
    give(gauge_, 1);
}

// A caller's command handed to a connection for the first time.
void Client::count_sent(Pending& p) noexcept {
    if (p.counted || p.internal || (p.kind != Kind::User && p.kind != Kind::EvalSha)) {
        return;
    }
    p.counted = true;
    in_flight_++;
    if (metrics_ != nullptr) {
        if (!p.resend) {
            core::metrics::add(metrics_->commands);
        }
        p.timed = true;
        p.sent_us = loop_.now_us();
    }
    if (gauge_ != nullptr) {
        gauge_->pending.fetch_add(1, std::memory_order_relaxed);
    }
}

// A counted command leaves the pending gauge: answered, failed or abandoned.
void Client::uncount(Pending& p) noexcept {
    if (!p.counted) {
        return;
    }
    p.counted = false;
    in_flight_--;
    if (gauge_ != nullptr) {
        gauge_->pending.fetch_sub(1, std::memory_order_relaxed);
    }
}

// The reply to a caller's command, about to be handed to it.
void Client::count_reply(Pending& p, bool error) noexcept {
    if (metrics_ != nullptr && !p.internal) {
        if (error) {
            count_error(RedisError::script);
        }
        if (p.timed) {
            uint64_t now = loop_.now_us();
            core::metrics::observe_latency_us(metrics_->command_duration,
                                              now > p.sent_us ? now - p.sent_us : 0);
        }
    }
    uncount(p);
}

void Client::set_ready(bool ready) noexcept {
    if (ready_ == ready) {
        return;
    }
    ready_ = ready;
    if (gauge_ != nullptr) {
        gauge_->connected.fetch_add(ready ? 1 : -1, std::memory_order_relaxed);
    }
}

void Client::set_breaker(Breaker b) noexcept {
    bool before = breaker_shown();
    breaker_ = b;
    bool after = breaker_shown();
    if (gauge_ != nullptr && before != after) {
        gauge_->breaker_open.fetch_add(after ? 1 : -1, std::memory_order_relaxed);
    }
}

// The handshake's last reply (PING) came: the connection is ready.
void Client::established() noexcept {
    set_ready(true);
    if (metrics_ != nullptr) {
        core::metrics::add(metrics_->connects);
        if (lost_) {
            core::metrics::add(metrics_->reconnects);
        }
    }
    lost_ = false;
}

// ---- commands --------------------------------------------------------------------------------

Client::Pending& Client::new_pending(std::list<Pending>& list, Kind kind, Callback cb,
                                     uint64_t deadline) {
    if (spare_.empty()) {
        list.emplace_back();
    } else {
        // A spare node: no allocation, and its argument buffers keep their capacity.
        list.splice(list.end(), spare_, spare_.begin());
        Pending& q = list.back();
        std::string args = std::move(q.args);
        q = Pending{};
        q.args = std::move(args);
    }
    Pending& p = list.back();
    p.self = std::prev(list.end());
    p.kind = kind;
    p.deadline = deadline;
    p.cb = std::move(cb);
    return p;
}

// Takes a finished command out of `from`: its callback is released at once (as erase would),
// its node and argument buffers are kept for the next command (new_pending), up to
// max_spare of them.
void Client::recycle(std::list<Pending>& from, std::list<Pending>::iterator it) noexcept {
    if (spare_.size() >= max_spare || it->args.capacity() > max_spare_args) {
        from.erase(it);
        return;
    }
    it->cb = nullptr;
    it->args.clear();
    spare_.splice(spare_.begin(), from, it);
}

namespace {

size_t resp_digits(size_t n) noexcept {
    size_t d = 1;
    while (n >= 10) {
        n /= 10;
        d++;
    }
    return d;
}

char* put_resp_number(char* p, char* end, char kind, size_t n) noexcept {
    *p++ = kind;
    p = std::to_chars(p, end, n).ptr;
    *p++ = '\r';
    *p++ = '\n';
    return p;
}

}  // namespace

void Client::keep_header(Pending& p, size_t argc) {
    p.args.clear();
    const size_t need = 1 + resp_digits(argc) + 2;
    p.args.resize(need);
    put_resp_number(p.args.data(), p.args.data() + need, '*', argc);
}

void Client::keep_args(Pending& p, const std::string_view* argv, size_t argc) {
    size_t total = 0;
    for (size_t i = 0; i < argc; i++) {
        total += 1 + resp_digits(argv[i].size()) + 2 + argv[i].size() + 2;
    }
    const size_t at = p.args.size();
    p.args.resize(at + total);  // once (exact), then written in place
    char* out = p.args.data() + at;
    char* end = p.args.data() + p.args.size();
    for (size_t i = 0; i < argc; i++) {
        out = put_resp_number(out, end, '$', argv[i].size());
        if (!argv[i].empty()) {
            std::memcpy(out, argv[i].data(), argv[i].size());
            out += argv[i].size();
        }
        *out++ = '\r';
        *out++ = '\n';
    }
}

bool Client::send(Pending& p, const std::string_view* argv, size_t argc) noexcept {
    if (connection_ == nullptr) {
        return false;
    }
    ArgvArrays a;
    if (!a.init(argc)) {
        return false;
    }
    for (size_t i = 0; i < argc; i++) {
        a.set(i, argv[i].data(), argv[i].size());
    }
    return submit(p, argc, a.ptrs(), a.lens());
}

// Hands one prepared command to the connection and starts its deadline. `p` is the last of
// inflight_: replies come in the order of the commands.
bool Client::submit(Pending& p, size_t argc, const char** argv, const size_t* lens) noexcept {
    return submit(p, std::string_view(), argc, argv, lens);
}

bool Client::submit(Pending& p, std::string_view resp, size_t argc, const char** argv,
                    const size_t* lens) noexcept {
    bool first = inflight_.size() == 1;  // the connection owed nothing before `p`
    if (p.asking) {
        // ASKING holds for the next command on the connection only: it goes right before.
        try {
            auto it = inflight_.emplace(p.self);
            it->self = it;
            it->kind = Kind::Asking;
            it->deadline = p.deadline;
            const char* asking_argv[] = {"ASKING"};
            const size_t asking_len[] = {6};
            if (!connection_->append(1, asking_argv, asking_len)) {
                inflight_.erase(it);
                return false;
            }
            stats_.sent++;
        } catch (...) {
            return false;
        }
    }
    if (!(resp.empty() ? connection_->append(argc, argv, lens) : connection_->append_raw(resp))) {
        return false;
    }
    if (first) {
        last_progress_ms_ = loop_.now_ms();  // the connection owed nothing: the clock starts
    }
    stats_.sent++;
    p.sent = true;
    count_sent(p);
    arm_deadline(p.deadline);
    return true;
}

bool Client::send_kept(Pending& p) noexcept {
    if (connection_ == nullptr || p.args.empty()) {
        return false;
    }
    return submit(p, p.args, 0, nullptr, nullptr);
}

// Handshake and reload commands; throws std::bad_alloc or std::runtime_error when not sent.
void Client::send_internal(Kind kind, std::initializer_list<std::string_view> argv, size_t script) {
    Pending& p = new_pending(inflight_, kind, nullptr, loop_.now_ms() + cfg_.command_timeout_ms);
    p.script = script;
    if (!send(p, argv.begin(), argv.size())) {
        recycle(inflight_, p.self);
        throw std::runtime_error("not sent");
    }
}

void Client::fail(std::list<Pending>& from, Pending& p, Failure why) noexcept {
    uncount(p);
    if (why == Failure::Timeout && !p.abandoned && !p.internal &&
        (p.kind == Kind::User || p.kind == Kind::EvalSha)) {
        count_error(RedisError::timeout);
    }
    if (p.abandoned) {
        abandoned_--;
        recycle(from, p.self);  // its caller was told already
    } else if (p.kind == Kind::User || p.kind == Kind::EvalSha) {
        p.failure = why;
        done_.splice(done_.end(), from, p.self);
    } else {
        recycle(from, p.self);
    }
}

void Client::fail_all(Failure why, bool by_deadline) noexcept {
    uint64_t now = loop_.now_ms();
    for (std::list<Pending>* list : {&inflight_, &waiting_}) {
        while (!list->empty()) {
            Pending& p = list->front();
            Failure f = why;
            if (by_deadline && !p.abandoned && p.deadline <= now) {
                f = Failure::Timeout;
                stats_.timeouts++;
            }
            fail(*list, p, f);
        }
    }
    if (!done_.empty() && !defer_timer_->active()) {
        defer_timer_->start(0);
    }
}

void Client::fail_soon(Callback cb, Failure why) {
    Pending& p = new_pending(done_, Kind::User, std::move(cb), 0);
    p.failure = why;
    if (!defer_timer_->active()) {
        defer_timer_->start(0);
    }
}

void Client::deliver() noexcept {
    std::list<Pending> batch;
    batch.swap(done_);
    while (!batch.empty()) {
        Pending& p = batch.front();
        Callback cb = std::move(p.cb);
        Result result;
        result.failure = p.failure;
        result.unsent = !p.sent;
        batch.pop_front();
        stats_.failed++;
        invoke(cb, std::move(result), this);
    }
}

// Checks what every command goes through; false when `cb` was failed already.
bool Client::admit(Callback& cb) {
    stats_.commands++;
    if (closed_) {
        fail_soon(std::move(cb), Failure::Shutdown);
        return false;
    }
    if (breaker_ != Breaker::Closed) {
        fail_soon(std::move(cb), Failure::CircuitOpen);
        return false;
    }
    if (conn_ == Conn::None) {
        if (!retry_timer_->active()) {
            connect();
        }
        if (conn_ == Conn::None) {
            fail_soon(std::move(cb),
                      breaker_ != Breaker::Closed ? Failure::CircuitOpen : Failure::Disconnected);
            return false;
        }
    }
    return true;
}

// An explicit deadline (SendOptions) that is already past: the command fails with Timeout
// (unsent), and true. Otherwise `deadline` is the command's.
bool Client::past_deadline(Callback& cb, const SendOptions& opts, uint64_t& deadline) {
    uint64_t now = loop_.now_ms();
    deadline = opts.deadline != 0 ? opts.deadline : now + cfg_.command_timeout_ms;
    if (deadline > now) {
        return false;
    }
    stats_.timeouts++;
    if (!opts.internal) {
        count_error(RedisError::timeout);
    }
    fail_soon(std::move(cb), Failure::Timeout);
    return true;
}

void Client::command(const std::string_view* argv, size_t argc, Callback cb) {
    command(argv, argc, std::move(cb), SendOptions());
}

void Client::command(const std::string_view* argv, size_t argc, Callback cb,
                     const SendOptions& opts) {
    if (argc == 0 || refused(argv, argc)) {
        stats_.commands++;
        fail_soon(std::move(cb), Failure::Invalid);
        return;
    }
    if (!admit(cb)) {
        return;
    }
    uint64_t deadline = 0;
    if (past_deadline(cb, opts, deadline)) {
        return;
    }
    if (conn_ == Conn::Connecting || conn_ == Conn::Checking) {
        Pending& p = new_pending(waiting_, Kind::User, std::move(cb), deadline);
        p.internal = opts.internal;
        p.resend = opts.resend;
        p.asking = opts.asking;
        try {
            keep_header(p, argc);
            keep_args(p, argv, argc);
        } catch (...) {
            recycle(waiting_, p.self);
            throw;
        }
        arm_deadline(deadline);
        return;
    }
    Pending& p = new_pending(inflight_, Kind::User, std::move(cb), deadline);
    p.internal = opts.internal;
    p.resend = opts.resend;
    p.asking = opts.asking;
    if (!send(p, argv, argc)) {
        fail(inflight_, p, Failure::Disconnected);
        if (!defer_timer_->active()) {
            defer_timer_->start(0);
        }
    }
}

size_t Client::script_index(const Script& script) {
    for (size_t i = 0; i < scripts_.size(); i++) {
        if (scripts_[i].sha == script.sha()) {
            return i;
        }
    }
    scripts_.push_back(ScriptEntry{
        script.sha(), script.source(),
        cat("\r\n$7\r\nEVALSHA\r\n$", script.sha().size(), "\r\n", script.sha(), "\r\n")});
    if (conn_ == Conn::Connected || conn_ == Conn::Checking) {
        try {
            send_internal(Kind::ScriptLoad, {"SCRIPT", "LOAD", script.source()},
                          scripts_.size() - 1);
        } catch (...) {
            // EVALSHA will meet NOSCRIPT and reload it.
        }
    }
    return scripts_.size() - 1;
}

void Client::add_script(const Script& script) {
    script_index(script);
}

void Client::add_script(const Script& script, std::string_view key, std::string_view channel) {
    script_index(script);
    require(permission_checks(script.source(), key, channel));
}

void Client::require(const std::vector<Argv>& checks) {
    if (checks.empty()) {
        return;
    }
    script_index(permission_probe_script());
    for (const Argv& argv : checks) {
        if (std::find(checks_.begin(), checks_.end(), argv) == checks_.end()) {
            checks_.push_back(argv);
        }
    }
}

// EVALSHA of the probe, in the handshake after the scripts are loaded: the user's own ACL is
// asked (redis.acl_check_cmd) about each command line our scripts run.
void Client::send_probe() {
    std::vector<std::string> args = permission_probe_args(checks_);
    std::vector<std::string_view> argv = {"EVALSHA", permission_probe_script().sha(), "0"};
    argv.insert(argv.end(), args.begin(), args.end());
    Pending& p =
        new_pending(inflight_, Kind::Probe, nullptr, loop_.now_ms() + cfg_.command_timeout_ms);
    p.script = script_index(permission_probe_script());
    if (!send(p, argv.data(), argv.size())) {
        recycle(inflight_, p.self);
        throw std::runtime_error("not sent");
    }
}

void Client::evalsha(const Script& script, const std::string_view* keys, size_t nkeys,
                     const std::string_view* args, size_t nargs, Callback cb) {
    evalsha(script, keys, nkeys, args, nargs, std::move(cb), SendOptions());
}

void Client::evalsha(const Script& script, const std::string_view* keys, size_t nkeys,
                     const std::string_view* args, size_t nargs, Callback cb,
                     const SendOptions& opts) {
    size_t index = script_index(script);
    if (!admit(cb)) {
        return;
    }
    uint64_t deadline = 0;
    if (past_deadline(cb, opts, deadline)) {
        return;
    }
    std::list<Pending>& list =
        conn_ == Conn::Connecting || conn_ == Conn::Checking ? waiting_ : inflight_;
    Pending& p = new_pending(list, Kind::EvalSha, std::move(cb), deadline);
    p.script = index;
    p.internal = opts.internal;
    p.resend = opts.resend;
    p.asking = opts.asking;
    try {
        char numkeys[24];
        auto res = std::to_chars(numkeys, numkeys + sizeof(numkeys), nkeys);
        std::string_view head[] = {"EVALSHA", scripts_[index].sha,
                                   std::string_view(numkeys, size_t(res.ptr - numkeys))};
        keep_header(p, 3 + nkeys + nargs);
        keep_args(p, head, 3);
        keep_args(p, keys, nkeys);
        keep_args(p, args, nargs);
    } catch (...) {
        recycle(list, p.self);
        throw;
    }
    if (&list == &waiting_) {
        arm_deadline(deadline);
        return;
    }
    if (!send_kept(p)) {
        fail(inflight_, p, Failure::Disconnected);
        if (!defer_timer_->active()) {
            defer_timer_->start(0);
        }
    }
}

void Client::evalsha_until(uint64_t deadline, const Script& script, const std::string_view* keys,
                           size_t nkeys, const std::string_view* args, size_t nargs, Callback cb) {
    SendOptions opts;
    opts.deadline = deadline;
    evalsha(script, keys, nkeys, args, nargs, std::move(cb), opts);
}

void Client::evalsha(const Script& script, const EvalResp& call, Callback cb) {
    evalsha_until(0, script, call, std::move(cb));
}

void Client::evalsha_until(uint64_t at, const Script& script, const EvalResp& call, Callback cb) {
    size_t index = script_index(script);
    if (!admit(cb)) {
        return;
    }
    uint64_t deadline = 0;
    SendOptions opts;
    opts.deadline = at;
    if (past_deadline(cb, opts, deadline)) {
        return;
    }
    std::list<Pending>& list =
        conn_ == Conn::Connecting || conn_ == Conn::Checking ? waiting_ : inflight_;
    Pending& p = new_pending(list, Kind::EvalSha, std::move(cb), deadline);
    p.script = index;
    try {
        // *<argc> $7 EVALSHA $<n> <sha> $<d> <nkeys>, then the call's RESP as it is.
        const std::string_view head = scripts_[index].head;
        const std::string_view keys = call.keys_resp();
        const std::string_view args = call.args_resp();
        char argc[24];
        argc[0] = '*';
        const size_t a = size_t(
            std::to_chars(argc + 1, argc + sizeof(argc), 3 + call.nkeys() + call.nargs()).ptr -
            argc);
        char digits[24];
        const size_t d =
            size_t(std::to_chars(digits, digits + sizeof(digits), call.nkeys()).ptr - digits);
        char numkeys[48];  // "$<d>\r\n<nkeys>\r\n"
        char* o = numkeys;
        *o++ = '$';
        o = std::to_chars(o, o + 4, d).ptr;
        *o++ = '\r';
        *o++ = '\n';
        std::memcpy(o, digits, d);
        o += d;
        *o++ = '\r';
        *o++ = '\n';
        const std::string_view nkeys_resp(numkeys, size_t(o - numkeys));
        p.args.resize(a + head.size() + nkeys_resp.size() + keys.size() + args.size());
        char* out = p.args.data();  // written in place
        std::memcpy(out, argc, a);
        out += a;
        std::memcpy(out, head.data(), head.size());
        out += head.size();
        std::memcpy(out, nkeys_resp.data(), nkeys_resp.size());
        out += nkeys_resp.size();
        if (!keys.empty()) {
            std::memcpy(out, keys.data(), keys.size());
            out += keys.size();
        }
        if (!args.empty()) {
            std::memcpy(out, args.data(), args.size());
        }
    } catch (...) {
        recycle(list, p.self);
        throw;
    }
    if (&list == &waiting_) {
        arm_deadline(deadline);
        return;
    }
    if (!send_kept(p)) {
        fail(inflight_, p, Failure::Disconnected);
        if (!defer_timer_->active()) {
            defer_timer_->start(0);
        }
    }
}

void Client::handle_reply(Pending& p, redisReply* r) noexcept {
    stats_.replies++;
    last_progress_ms_ = loop_.now_ms();
    if (p.abandoned) {
        stats_.late_replies++;  // its caller was told Timeout: read and dropped
        abandoned_--;
        recycle(inflight_, p.self);
        return;
    }
    bool error = r->type == REDIS_REPLY_ERROR;
    std::string_view text(r->str != nullptr ? r->str : "", r->str != nullptr ? r->len : 0);
    switch (p.kind) {
        case Kind::Auth:
        case Kind::Select:
        case Kind::Ping:
        case Kind::ScriptLoad:
            handshake_reply(p, r);
            return;
        case Kind::Probe:
            probe_reply(p, r);
            return;
        case Kind::Asking:
            recycle(inflight_, p.self);  // the command after it answers for both
            return;
        case Kind::Role:
        case Kind::Info:
            role_reply(p, r);
            return;
        case Kind::EvalSha:
            if (error && !p.retried && text.substr(0, 9) == "NOSCRIPT ") {
                ScriptEntry& script = scripts_[p.script];
                stats_.noscript_reloads++;
                p.retried = true;
                log(script.reload_logged ? LogLevel::Debug : LogLevel::Info,
                    cat(name_, ": NOSCRIPT, reloading script ", script.sha));
                script.reload_logged = true;
                try {
                    send_internal(Kind::ScriptLoad, {"SCRIPT", "LOAD", script.source}, p.script);
                } catch (...) {
                }
                inflight_.splice(inflight_.end(), inflight_, p.self);
                if (!send_kept(p)) {
                    fail(inflight_, p, Failure::Disconnected);
                    if (!defer_timer_->active()) {
                        defer_timer_->start(0);
                    }
                }
                return;
            }
            if (error && cfg_.cluster_node_ok && cluster_state_error(text)) {
                cluster_reply(p, r);
                return;
            }
            if (error && !topology_error_advice(text, cfg_.cluster_node_ok).empty()) {
                topology_error(p, r, topology_error_advice(text, cfg_.cluster_node_ok));
                return;
            }
            if (error) {
                evalsha_error(p, r);
                return;
            }
            scripts_[p.script].reload_logged = false;
            break;
        case Kind::User:
            if (error && cfg_.cluster_node_ok && cluster_state_error(text)) {
                cluster_reply(p, r);
                return;
            }
            if (error && !topology_error_advice(text, cfg_.cluster_node_ok).empty()) {
                topology_error(p, r, topology_error_advice(text, cfg_.cluster_node_ok));
                return;
            }
            break;
    }
    count_reply(p, error);
    answered();
    Result result = reply_result(r);
    Callback cb = std::move(p.cb);
    recycle(inflight_, p.self);
    invoke(cb, std::move(result), this);  // the callback may call close()
    // What the callback left of the reply (its buffers' capacity) serves the next one, when
    // small: a large reply's memory is not kept.
    bool small = result.reply.str.capacity() <= 16384 && result.reply.elements.capacity() <= 256;
    for (size_t i = 0; small && i < result.reply.elements.size(); i++) {
        const Reply& e = result.reply.elements[i];
        small = e.elements.capacity() == 0 && e.str.capacity() <= 1024;
    }
    if (small) {
        spare_reply_ = std::move(result.reply);
    } else {
        spare_reply_ = Reply();
    }
}

// Handshake replies are known in advance: an error fails the connection, and so does any
// other reply than the one the command gives -- most likely the reply to another command,
// the server having sent one too many before.
void Client::handshake_reply(Pending& p, redisReply* r) noexcept {
    std::string_view text(r->str != nullptr ? r->str : "", r->str != nullptr ? r->len : 0);
    const char* what = p.kind == Kind::Auth     ? "AUTH"
                       : p.kind == Kind::Select ? "SELECT"
                       : p.kind == Kind::Ping   ? "PING"
                                                : "SCRIPT LOAD";
    if (p.kind == Kind::ScriptLoad) {
        const std::string& sha = scripts_[p.script].sha;
        if (r->type == REDIS_REPLY_STRING && text == sha) {
            recycle(inflight_, p.self);
            return;
        }
        if (r->type == REDIS_REPLY_ERROR) {
            recycle(inflight_, p.self);  // before count_failure(): opening drops the connection
            count_error(RedisError::script);
            count_failure(cat("SCRIPT LOAD failed: ", printable(text)));
            return;
        }
        connection_lost(Failure::Disconnected, RedisError::protocol,
                        cat("connection dropped: SCRIPT LOAD answered ", describe(r),
                            ", not the script's SHA-1 ", sha));
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        connection_lost(Failure::Disconnected, RedisError::connection,
                        cat(what, " failed: ", printable(text)));
        return;
    }
    const char* expected = p.kind == Kind::Ping ? "PONG" : "OK";
    if (r->type != REDIS_REPLY_STATUS || text != expected) {
        connection_lost(
            Failure::Disconnected, RedisError::protocol,
            cat("connection dropped: ", what, " answered ", describe(r), ", not ", expected));
        return;
    }
    bool ping = p.kind == Kind::Ping;
    recycle(inflight_, p.self);
    if (ping && breaker_ == Breaker::HalfOpen) {
        set_breaker(Breaker::Closed);  // the failure count stays: the next failure reopens
        log(LogLevel::Debug, cat(name_, ": probe connected, circuit closed"));
    }
    if (ping) {
        established();
    }
}

// A refusal fails the connection as a wrong password does (the breaker, logged once per
// incident): every script call would fail on it, each with an error reply.
void Client::probe_reply(Pending& p, redisReply* r) noexcept {
    std::string_view text(r->str != nullptr ? r->str : "", r->str != nullptr ? r->len : 0);
    std::string user = cfg_.username.empty() ? std::string("default") : cfg_.username;
    if (r->type == REDIS_REPLY_ERROR) {
        connection_lost(Failure::Disconnected, RedisError::connection,
                        cat("permission check failed: user \"", printable(user),
                            "\" may not run EVALSHA of the module's scripts: ", printable(text)));
        return;
    }
    Reply reply;
    std::vector<std::string> refused;
    bool ok = false;
    try {
        convert_reply(r, reply);
        ok = parse_permission_probe(reply, refused);
    } catch (...) {
    }
    if (!ok) {
        connection_lost(Failure::Disconnected, RedisError::protocol,
                        cat("connection dropped: the permission check answered ", describe(r)));
        return;
    }
    if (!refused.empty()) {
        std::string list;
        for (const std::string& line : refused) {
            list += list.empty() ? "\"" : ", \"";
            list += printable(line);
            list += "\"";
        }
        connection_lost(Failure::Disconnected, RedisError::connection,
                        cat("user \"", printable(user), "\" may not run ", list,
                            ": the module's scripts call them (grant them with ACL SETUSER)"));
        return;
    }
    recycle(inflight_, p.self);
    check_passed();
}

// ROLE and INFO cluster, in the handshake: a replica, a Sentinel or a Redis Cluster node fails
// the connection (the breaker counts it, logged once per incident) with a message that says
// what the server is and what to configure, instead of every command failing in silence. An
// error reply (NOPERM: a user whose ACL forbids them; a command renamed away) skips the check:
// the run-time check (topology_error()) still holds.
void Client::role_reply(Pending& p, redisReply* r) noexcept {
    const char* what = p.kind == Kind::Role ? "ROLE" : "INFO cluster";
    std::string_view text(r->str != nullptr ? r->str : "", r->str != nullptr ? r->len : 0);
    if (r->type == REDIS_REPLY_ERROR) {
        log(LogLevel::Debug,
            cat(name_, ": ", what, " refused (", printable(text, 60), "): role check skipped"));
        recycle(inflight_, p.self);
        check_passed();
        return;
    }
    std::string misconfigured;
    if (p.kind == Kind::Info) {
        if (r->type != REDIS_REPLY_STRING) {
            connection_lost(Failure::Disconnected, RedisError::protocol,
                            cat("connection dropped: INFO cluster answered ", describe(r),
                                ", not a bulk string"));
            return;
        }
        if (text.find("cluster_enabled:1") != std::string_view::npos && !cfg_.cluster_node_ok) {
            misconfigured = cat("the server is ", kClusterNode);
        }
    } else {
        bool shaped = r->type == REDIS_REPLY_ARRAY && r->elements >= 1 &&
                      r->element[0]->type == REDIS_REPLY_STRING;
        if (!shaped) {
            connection_lost(Failure::Disconnected, RedisError::protocol,
                            cat("connection dropped: ROLE answered ", describe(r),
                                ", not an array naming a role"));
            return;
        }
        std::string_view role(r->element[0]->str, r->element[0]->len);
        if (role == "slave" || role == "replica") {
            std::string primary = "its primary";
            if (r->elements >= 3 && r->element[1]->type == REDIS_REPLY_STRING &&
                r->element[2]->type == REDIS_REPLY_INTEGER) {
                primary =
                    cat(printable(std::string_view(r->element[1]->str, r->element[1]->len), 60),
                        ":", r->element[2]->integer);
            }
            misconfigured =
                cat("the server is a replica of ", primary,
                    " (ROLE): writes fail with READONLY; point throttle_redis at the primary");
        } else if (role == "sentinel") {
            misconfigured =
                "the server is a Sentinel, not a Redis server: point throttle_redis at the primary "
                "it monitors, or ask the Sentinel for it: throttle_redis sentinel=MASTER_NAME "
                "ADDRESS";
        } else if (role != "master") {
            log(LogLevel::Debug, cat(name_, ": ROLE answered an unknown role \"",
                                     printable(role, 60), "\": role check skipped"));
        }
    }
    if (!misconfigured.empty()) {
        connection_lost(Failure::Disconnected, RedisError::connection, misconfigured);
        return;
    }
    recycle(inflight_, p.self);
    check_passed();
}

// An error reply that says the server is no usable single primary any more (a failover made
// it a replica, a cluster node): the caller gets the reply, the connection is dropped (a
// failure for the breaker) and made again, which asks the server what it is (role_reply()).
void Client::topology_error(Pending& p, redisReply* r, std::string_view why) noexcept {
    std::string_view text(r->str != nullptr ? r->str : "", r->str != nullptr ? r->len : 0);
    std::string what = cat("the server answered \"", printable(text, 60), "\": it is ", why,
                           "; connection dropped");
    Result result = reply_result(r);
    count_reply(p, true);
    Callback cb = std::move(p.cb);
    recycle(inflight_, p.self);  // before connection_lost(): it is answered, not failed
    connection_lost(Failure::Disconnected, RedisError::connection, what);
    invoke(cb, std::move(result), this);
}

// With cluster_node_ok, a redirection or cluster-state error reply (cluster_state_error()):
// handed to the caller as it is; neither a failure nor an answer for the breaker, and not an
// error in the metrics (command_duration observes it, pending lets it go).
void Client::cluster_reply(Pending& p, redisReply* r) noexcept {
    Result result = reply_result(r);
    count_reply(p, false);
    Callback cb = std::move(p.cb);
    recycle(inflight_, p.self);
    invoke(cb, std::move(result), this);
}

// The caller's result for reply r: the reply converted, or Disconnected when there is no memory
// to convert it into.
Result Client::reply_result(redisReply* r) noexcept {
    Result result;
    // The last reply's buffers, elements included: convert_reply() sets every field.
    result.reply = std::move(spare_reply_);
    try {
        convert_reply(r, result.reply);
    } catch (...) {
        result.reply = Reply();
        result.failure = Failure::Disconnected;
        stats_.failed++;
    }
    return result;
}

// Our scripts answer no error: Redis could not run this one (NOSCRIPT after the reload, OOM,
// BUSY, READONLY, ...). The caller gets the error reply; the breaker counts a failure.
void Client::evalsha_error(Pending& p, redisReply* r) noexcept {
    std::string what = cat("EVALSHA ", scripts_[p.script].sha,
                           " failed: ", printable(std::string_view(r->str, r->len)));
    Result result = reply_result(r);
    count_reply(p, true);
    Callback cb = std::move(p.cb);
    recycle(inflight_, p.self);  // before count_failure(): opening drops the connection
    count_failure(what);
    invoke(cb, std::move(result), this);
}

// ---- deadlines -------------------------------------------------------------------------------

void Client::arm_deadline(uint64_t deadline) noexcept {
    if (deadline_timer_->active() && armed_deadline_ <= deadline) {
        return;
    }
    uint64_t now = loop_.now_ms();
    armed_deadline_ = deadline;
    deadline_timer_->start(deadline > now ? deadline - now : 0);
}

uint32_t Client::stuck_ms() const noexcept {
    return cfg_.stuck_timeout_ms;
}

// A command past its deadline: its caller gets Timeout (from defer_timer_), the Pending stays
// in inflight_ without a callback until its reply comes. False when there was no memory to
// tell the caller: the connection must then be dropped.
bool Client::abandon(Pending& p) noexcept {
    if (p.kind == Kind::User || p.kind == Kind::EvalSha) {
        try {
            done_.emplace_back();
        } catch (...) {
            return false;
        }
        uncount(p);
        if (!p.internal) {
            count_error(RedisError::timeout);
        }
        Pending& d = done_.back();
        d.self = std::prev(done_.end());
        d.cb = std::move(p.cb);
        d.failure = Failure::Timeout;
        d.sent = true;
    }
    p.abandoned = true;
    p.cb = nullptr;
    std::string().swap(p.args);  // kept for a NOSCRIPT re-send, which it will not get
    abandoned_++;
    stats_.timeouts++;
    timeouts_unlogged_++;
    return true;
}

// Timeouts are logged at most every 10 s (Warn), with their count; the rest at Debug.
void Client::log_timeouts(uint64_t now) noexcept {
    if (timeouts_unlogged_ == 0) {
        return;
    }
    bool due = timeouts_logged_ms_ == 0 || now - timeouts_logged_ms_ >= 10000;
    log(due ? LogLevel::Warn : LogLevel::Debug,
        cat(name_, ": no reply within ", cfg_.command_timeout_ms, " ms: ", timeouts_unlogged_,
            " command(s) failed with a timeout (the connection is kept; late replies are read "
            "and dropped)"));
    timeouts_unlogged_ = 0;
    timeouts_logged_ms_ = now;
}

void Client::on_deadline() noexcept {
    uint64_t now = loop_.now_ms();
    for (auto it = waiting_.begin(); it != waiting_.end();) {
        auto next = std::next(it);
        if (it->deadline <= now) {
            stats_.timeouts++;
            fail(waiting_, *it, Failure::Timeout);
        }
        it = next;
    }
    // Commands past their deadline are abandoned, alone; a handshake that is not answered in
    // time leaves the connection unusable.
    bool handshake = false;
    bool no_memory = false;
    for (Pending& p : inflight_) {
        if (p.abandoned || p.deadline > now) {
            continue;
        }
        if (p.kind == Kind::Auth || p.kind == Kind::Select || p.kind == Kind::Ping ||
            p.kind == Kind::Role || p.kind == Kind::Info) {
            handshake = true;
        } else if (!abandon(p)) {
            no_memory = true;
        }
    }
    log_timeouts(now);
    if (handshake || no_memory) {
        connection_lost(Failure::Disconnected, RedisError::connection,
                        cat("no reply within ", cfg_.command_timeout_ms, " ms",
                            handshake ? " to the handshake" : "", ", connection dropped"));
    } else if (!inflight_.empty() &&
               (now - last_progress_ms_ >= stuck_ms() || abandoned_ > cfg_.max_abandoned)) {
        stats_.stuck++;
        connection_lost(
            Failure::Disconnected, RedisError::connection,
            cat("connection stuck, dropped: nothing read for ", now - last_progress_ms_, " ms, ",
                inflight_.size(), " replies owed (", abandoned_, " to timed-out commands)"));
    }
    uint64_t next = std::numeric_limits<uint64_t>::max();
    for (const std::list<Pending>* list : {&inflight_, &waiting_}) {
        for (const Pending& p : *list) {
            if (!p.abandoned) {
                next = std::min(next, p.deadline);
            }
        }
    }
    if (!inflight_.empty()) {
        next = std::min(next, last_progress_ms_ + stuck_ms());
    }
    if (next != std::numeric_limits<uint64_t>::max()) {
        arm_deadline(next);
    }
    if (!done_.empty() && !defer_timer_->active()) {
        defer_timer_->start(0);
    }
}

}  // namespace throttle::redis
