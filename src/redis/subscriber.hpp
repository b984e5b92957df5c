// A Redis pub/sub subscriber (layer: redis): one dedicated connection, driven by a Loop like
// Client's, subscribed to one channel, handing every message's payload to a callback. Used by
// the response cache to hear cache_fill_channel()'s wake-ups (cache_scripts.hpp).
//
// Connection life: start() connects (connect_timeout_ms bounds the TCP connect), then sends
// [AUTH] SUBSCRIBE channel in one write (no SELECT: pub/sub ignores the db); command_timeout_ms
// bounds the wait for Redis' confirmation, after which subscribed() is true. Any failure (connect
// error or timeout, AUTH refused, no confirmation in time, the connection lost) clears
// subscribed() and reconnects after a backoff, backoff_initial_ms doubling up to backoff_max_ms,
// reset once subscribed again; no circuit breaker (one idle connection costs nothing). The first
// failure of an incident is logged at Error, the next ones at Debug, the recovery at Info. A
// server that breaks the pub/sub protocol or announces more than config.reply_limits
// (reply_guard.hpp) is a failure too: the connection is dropped, never the process. TCP
// keepalive is on, so a peer that vanished silently is noticed too (after about 30 s).
//
// With a heartbeat (set_heartbeat()), a subscribed connection also sends PING every interval
// (never two outstanding); Redis answers a pong in subscribed mode, queued after every message
// published before it, so current(max_lag) tells an owner whether what was published up to
// about that long ago has been delivered (the response cache's local tier trusts its copies
// only then). While a PING is outstanding its pong is read as a command's reply.
//
// Messages published while no connection is subscribed are lost: pub/sub keeps nothing. The
// payload view passed to on_message is valid only during the call. on_message is never called
// from inside start() or close(), nor after close(); it may call close(). An exception it throws
// is caught and logged. Single-threaded, like its Loop. A Subscriber must not be destroyed from
// inside its own on_message; close() may be called from anywhere.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "redis/client.hpp"
#include "redis/connection.hpp"
#include "redis/loop.hpp"
#include "redis/reply_guard.hpp"

struct redisReply;

namespace throttle::redis {

class Subscriber final : private Connection::Owner {
   public:
    using OnMessage = std::function<void(std::string_view payload)>;

    // Throws std::invalid_argument if config.address is not valid() or the channel is empty.
    // Uses config's address, username, password, connect_timeout_ms, command_timeout_ms,
    // backoff_initial_ms, backoff_max_ms, reply_limits and tls. Does not touch the network: start()
    // connects.
    Subscriber(Loop& loop, Config config, std::string channel, OnMessage on_message,
               Logger logger = nullptr);
    ~Subscriber();  // close()
    Subscriber(const Subscriber&) = delete;
    Subscriber& operator=(const Subscriber&) = delete;

    // Called with true when Redis confirms the SUBSCRIBE, with false after each failure (the
    // subscriber then retries after its backoff, unless closed): for an owner that follows
    // something else on a failure (sentinel_watch.hpp moves to the next Sentinel). May call
    // close(). Set before start().
    using OnState = std::function<void(bool subscribed)>;
    void set_on_state(OnState on_state) { on_state_ = std::move(on_state); }

    // Starts connecting, unless connected, connecting, waiting to reconnect or closed.
    void start();
    // Drops the connection and stops reconnecting; no callback after it. Idempotent.
    void close() noexcept;

    // True once Redis confirmed the SUBSCRIBE on the current connection.
    bool subscribed() const noexcept { return state_ == State::Subscribed; }

    // Heartbeat (the response cache's local tier): while subscribed, a PING every interval_ms
    // (Redis answers a pong in subscribed mode, after every message published before it). Set
    // before start(); 0 (the default): none.
    void set_heartbeat(uint32_t interval_ms) noexcept { heartbeat_ms_ = interval_ms; }
    // Subscribed, and no PING has waited for its pong longer than max_lag_ms: the messages
    // published up to about max_lag_ms ago have been delivered.
    bool current(uint64_t max_lag_ms) const noexcept;
    // Messages received (handed to on_message) since construction.
    uint64_t messages() const noexcept { return messages_; }
    const std::string& channel() const noexcept { return channel_; }

   private:
    enum class State : uint8_t { Idle, Connecting, Handshake, Subscribed };

    // Connection::Owner
    void on_connected() noexcept override;
    void on_reply(redisReply* reply) noexcept override;
    void on_lost(Connection::Loss loss, std::string_view message) noexcept override;
    bool awaiting_reply() const noexcept override;

    void connect() noexcept;
    void connected_now() noexcept;
    void on_timeout() noexcept;
    void lost(std::string_view what) noexcept;
    void failure(std::string_view what) noexcept;
    void healthy() noexcept;
    void deliver(std::string_view payload) noexcept;
    void notify(bool subscribed) noexcept;
    void log(LogLevel level, std::string_view message) const noexcept;

    Loop& loop_;
    Config cfg_;
    std::string channel_;
    OnMessage on_message_;
    OnState on_state_;
    Logger logger_;
    std::string name_;  // "redis 127.0.0.1:6379 subscriber"

    std::unique_ptr<Connection> connection_;
    State state_ = State::Idle;
    bool auth_pending_ = false;  // AUTH sent, its reply not read yet
    bool closed_ = false;
    bool send_failed_ = false;  // the handshake could not be queued: fail from the timer
    uint32_t failures_ = 0;     // consecutive failures (this incident)
    uint32_t backoff_ms_;
    uint64_t messages_ = 0;
    uint32_t heartbeat_ms_ = 0;
    uint32_t pings_ = 0;         // PINGs sent on this connection whose pong has not come
    uint64_t ping_sent_at_ = 0;  // the oldest of them

    std::unique_ptr<Timer> timeout_timer_;  // connect, then confirmation
    std::unique_ptr<Timer> retry_timer_;    // backoff
    std::unique_ptr<Deferred> settle_;      // healthy() at the end of a confirmation's turn
    std::unique_ptr<Timer> heartbeat_timer_;

    void heartbeat() noexcept;
};

}  // namespace throttle::redis
