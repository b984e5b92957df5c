// The Redis pub/sub subscriber (layer: redis). See subscriber.hpp for the contract.
//
// The connection layer (connection.hpp) does the I/O and parses replies; the subscriber reads
// them in order: AUTH's reply first (while auth_pending_), then pub/sub messages: the
// SUBSCRIBE confirmation, then the channel's messages. An error reply when AUTH is not pending
// (NOAUTH to the SUBSCRIBE) drops the connection, with the server's words. The connection's
// ReplyGuard, in PubSub mode, keeps replies within config.reply_limits and shaped as pub/sub
// messages: anything else drops the connection. The connection may be destroyed from inside
// its own callbacks (lost()): it notices and touches nothing after.
#include "redis/subscriber.hpp"

#include <hiredis/hiredis.h>
#include <strings.h>

#include <algorithm>
#include <charconv>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "redis/message.hpp"

namespace throttle::redis {
namespace {

using message::cat;

std::string_view text_of(const redisReply* r) noexcept {
    return r->str != nullptr ? std::string_view(r->str, r->len) : std::string_view();
}

bool is_word(const redisReply* r, const char* word) noexcept {
    std::string_view t = text_of(r);
    size_t n = std::char_traits<char>::length(word);
    return (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) && t.size() == n &&
           strncasecmp(t.data(), word, n) == 0;
}

}  // namespace

Subscriber::Subscriber(Loop& loop, Config config, std::string channel, OnMessage on_message,
                       Logger logger)
    : loop_(loop),
      cfg_(std::move(config)),
      channel_(std::move(channel)),
      on_message_(std::move(on_message)),
      logger_(std::move(logger)) {
    if (!cfg_.sentinels.empty()) {
        // Its owner follows the primary (sentinel_watch.hpp) and names its address.
        throw std::invalid_argument("a subscriber takes the primary's address, not Sentinels");
    }
    if (!cfg_.address.valid()) {
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
    if (channel_.empty()) {
        throw std::invalid_argument("empty redis pub/sub channel");
    }
    cfg_.connect_timeout_ms = std::max<uint32_t>(cfg_.connect_timeout_ms, 1);
    cfg_.command_timeout_ms = std::max<uint32_t>(cfg_.command_timeout_ms, 1);
    cfg_.backoff_initial_ms = std::max<uint32_t>(cfg_.backoff_initial_ms, 1);
    cfg_.backoff_max_ms = std::max(cfg_.backoff_max_ms, cfg_.backoff_initial_ms);
    backoff_ms_ = cfg_.backoff_initial_ms;
    name_ = "redis " + cfg_.address.to_string() + " subscriber";

    timeout_timer_ = loop_.create_timer([this] { on_timeout(); });
    // A confirmation ends an incident at the end of its turn, if the connection still stands
    // (a message nobody could parse may follow it in the same read).
    settle_ = loop_.create_deferred([this] {
        if (state_ == State::Subscribed && connection_ != nullptr) {
            healthy();
        }
    });
    heartbeat_timer_ = loop_.create_timer([this] { heartbeat(); });
    retry_timer_ = loop_.create_timer([this] {
        if (!closed_ && connection_ == nullptr) {
            connect();
        }
    });
}

Subscriber::~Subscriber() {
    close();
}

void Subscriber::start() {
    if (closed_ || connection_ != nullptr || retry_timer_->active()) {
        return;
    }
    connect();
}

void Subscriber::close() noexcept {
    if (closed_) {
        return;
    }
    closed_ = true;
    timeout_timer_->stop();
    retry_timer_->stop();
    heartbeat_timer_->stop();
    settle_->cancel();
    state_ = State::Idle;
    pings_ = 0;
    connection_.reset();  // also from inside its own callbacks (see the top)
}

bool Subscriber::current(uint64_t max_lag_ms) const noexcept {
    if (state_ != State::Subscribed) {
        return false;
    }
    return pings_ == 0 || loop_.now_ms() - ping_sent_at_ <= max_lag_ms;
}

// A PING unless one is still waiting for its pong (current() tells how long).
void Subscriber::heartbeat() noexcept {
    if (closed_ || state_ != State::Subscribed || connection_ == nullptr) {
        return;
    }
    if (pings_ == 0) {
        const char* argv[1] = {"PING"};
        size_t lens[1] = {4};
        if (connection_->append(1, argv, lens)) {
            pings_ = 1;
            ping_sent_at_ = loop_.now_ms();
        }
    }
    heartbeat_timer_->start(heartbeat_ms_);
}

void Subscriber::log(LogLevel level, std::string_view message) const noexcept {
    if (!logger_) {
        return;
    }
    try {
        logger_(level, message);
    } catch (...) {
    }
}

// ---- connection ------------------------------------------------------------------------------

void Subscriber::connect() noexcept {
    std::unique_ptr<Connection> c;
    std::string error;
    try {
        Connection::Owner& owner = *this;
        c = std::make_unique<Connection>(loop_, owner, ReplyGuard::Mode::PubSub, cfg_.reply_limits);
    } catch (...) {
        error = "out of memory";
    }
    if (!c || !c->open(cfg_.address, true, cfg_.tls.enabled ? cfg_.tls_context : nullptr, error)) {
        failure(cat("cannot connect: ", error));
        return;
    }
    connection_ = std::move(c);
    state_ = State::Connecting;
    send_failed_ = false;
    auth_pending_ = false;
    timeout_timer_->start(cfg_.connect_timeout_ms);
}

void Subscriber::on_connected() noexcept {
    connected_now();
}

void Subscriber::on_lost(Connection::Loss, std::string_view message) noexcept {
    lost(message);
}

// A pong is a reply to a command (an array of 2, which the guard would refuse as a message).
bool Subscriber::awaiting_reply() const noexcept {
    return auth_pending_ || pings_ > 0;
}

// A handshake that cannot be queued is failed from timeout_timer_ at once.
void Subscriber::connected_now() noexcept {
    state_ = State::Handshake;
    timeout_timer_->start(cfg_.command_timeout_ms);
    bool ok = true;
    if (!cfg_.password.empty()) {
        const char* argv[3];
        size_t lens[3];
        size_t argc = 0;
        argv[argc] = "AUTH";
        lens[argc++] = 4;
        if (!cfg_.username.empty()) {
            argv[argc] = cfg_.username.data();
            lens[argc++] = cfg_.username.size();
        }
        argv[argc] = cfg_.password.data();
        lens[argc++] = cfg_.password.size();
        ok = connection_->append(argc, argv, lens);
        auth_pending_ = ok;
    }
    if (ok) {
        const char* argv[2] = {"SUBSCRIBE", channel_.data()};
        size_t lens[2] = {9, channel_.size()};
        ok = connection_->append(2, argv, lens);
    }
    if (!ok) {
        send_failed_ = true;
        timeout_timer_->start(0);
    }
}

void Subscriber::on_timeout() noexcept {
    switch (state_) {
        case State::Connecting:
            lost(cat("cannot connect: no connection within ", cfg_.connect_timeout_ms, " ms"));
            return;
        case State::Handshake:
            if (send_failed_) {
                lost("cannot send SUBSCRIBE");
            } else {
                lost(cat("no SUBSCRIBE confirmation within ", cfg_.command_timeout_ms, " ms"));
            }
            return;
        case State::Idle:
        case State::Subscribed:
            return;
    }
}

void Subscriber::lost(std::string_view what) noexcept {
    if (connection_ == nullptr) {
        return;
    }
    std::string why(what);  // `what` may live in the connection
    connection_.reset();    // also from inside its own callbacks (see the top)
    state_ = State::Idle;
    auth_pending_ = false;
    pings_ = 0;
    timeout_timer_->stop();
    heartbeat_timer_->stop();
    settle_->cancel();
    failure(why);
}

void Subscriber::failure(std::string_view what) noexcept {
    failures_++;
    if (failures_ == 1) {
        log(LogLevel::Error, cat(name_, ": ", what));
    } else {
        log(LogLevel::Debug, cat(name_, ": ", what));
    }
    retry_timer_->start(backoff_ms_);
    backoff_ms_ = std::min(backoff_ms_ * 2, cfg_.backoff_max_ms);
    notify(false);  // last: it may call close()
}

void Subscriber::notify(bool subscribed) noexcept {
    if (!on_state_ || closed_) {
        return;
    }
    try {
        on_state_(subscribed);
    } catch (...) {
        log(LogLevel::Error, cat(name_, ": the state callback threw an exception"));
    }
}

void Subscriber::healthy() noexcept {
    if (failures_ > 0) {
        log(LogLevel::Info, cat(name_, ": subscribed again after ", failures_, " failure(s)"));
    }
    failures_ = 0;
    backoff_ms_ = cfg_.backoff_initial_ms;
}

// ---- replies ---------------------------------------------------------------------------------

void Subscriber::on_reply(redisReply* r) noexcept {
    if (auth_pending_) {
        auth_pending_ = false;
        if (r->type == REDIS_REPLY_ERROR) {
            lost(cat("AUTH failed: ", text_of(r)));
        }
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        lost(cat("connection lost: ", text_of(r)));
        return;
    }
    if (r->type == REDIS_REPLY_ARRAY && r->elements >= 1 && pings_ > 0 &&
        is_word(r->element[0], "pong")) {
        pings_ = 0;
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 3) {
        return;
    }
    if (is_word(r->element[0], "message") && text_of(r->element[1]) == channel_) {
        const redisReply* payload = r->element[2];
        if (payload->type == REDIS_REPLY_STRING) {
            deliver(text_of(payload));
        }
    } else if (is_word(r->element[0], "subscribe") && state_ == State::Handshake) {
        state_ = State::Subscribed;
        timeout_timer_->stop();
        settle_->post();
        if (heartbeat_ms_ > 0) {
            heartbeat_timer_->start(heartbeat_ms_);
        }
        log(LogLevel::Debug, cat(name_, ": subscribed to \"", channel_, "\""));
        notify(true);
    }
}

void Subscriber::deliver(std::string_view payload) noexcept {
    messages_++;
    if (!on_message_) {
        return;
    }
    try {
        on_message_(payload);  // last: it may call close()
    } catch (...) {
        log(LogLevel::Error, cat(name_, ": the message callback threw an exception"));
    }
}

}  // namespace throttle::redis
