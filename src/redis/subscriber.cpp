// The Redis pub/sub subscriber (layer: redis). See subscriber.hpp for the contract.
//
// hiredis 0.14 keeps a SUBSCRIBE's callback in its channel table: it is called for the
// confirmation and for every message (same privdata), and with a NULL reply when the context is
// freed. AUTH's reply still goes to AUTH's own callback first (hiredis serves pending regular
// callbacks before pub/sub ones). An error reply with no regular callback pending (NOAUTH to the
// SUBSCRIBE) makes hiredis drop the connection itself: the disconnect callback reports it.
//
// As in Client, contexts point back at the subscriber through ac->data, cleared before a
// context is dropped, so the callbacks hiredis runs while freeing it are ignored. A ReplyGuard
// in PubSub mode keeps replies within config.reply_limits and shaped as hiredis' pub/sub
// dispatch expects (it would abort() on a short array, and hand a message of another channel
// to our callback): anything else drops the connection.
#include "redis/subscriber.hpp"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <strings.h>
#include <sys/socket.h>

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

// Keepalive on an idle TCP connection: a peer gone without a FIN/RST (a host down, a NAT entry
// dropped) is noticed after about 15 + 3 * 5 s. Best effort: a failure changes nothing else.
void keepalive(int fd) noexcept {
    int on = 1, idle = 15, interval = 5, count = 3;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count));
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
        if (state_ == State::Subscribed && ac_ != nullptr) {
            healthy();
        }
    });
    guard_ = std::make_unique<ReplyGuard>(
        loop_, ReplyGuard::Mode::PubSub, cfg_.reply_limits,
        [this](std::string_view why) { lost(cat("connection dropped: ", why), false); });
    retry_timer_ = loop_.create_timer([this] {
        if (!closed_ && ac_ == nullptr) {
            connect();
        }
    });
}

Subscriber::~Subscriber() {
    close();
}

void Subscriber::start() {
    if (closed_ || ac_ != nullptr || retry_timer_->active()) {
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
    settle_->cancel();
    state_ = State::Idle;
    if (ac_ != nullptr) {
        redisAsyncContext* ac = ac_;
        ac_ = nullptr;
        ac->data = nullptr;
        guard_->detach();
        redisAsyncFree(ac);  // deferred by hiredis when inside one of its callbacks
    }
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
    const Address& a = cfg_.address;
    redisAsyncContext* ac = a.is_unix() ? redisAsyncConnectUnix(a.unix_path.c_str())
                                        : redisAsyncConnect(a.host.c_str(), a.port);
    if (ac == nullptr) {
        failure("cannot connect: out of memory");
        return;
    }
    if (ac->err != 0) {
        std::string what = cat("cannot connect: ", ac->c.errstr);
        redisAsyncFree(ac);
        failure(what);
        return;
    }
    if (!a.is_unix()) {
        keepalive(ac->c.fd);
    }
    ac->data = this;
    if (!loop_.attach(ac)) {
        ac->data = nullptr;
        redisAsyncFree(ac);
        failure("cannot connect: the event loop did not take the socket");
        return;
    }
    guard_->attach(ac);
    // Setting the connect callback also asks for write readiness (connect completion).
    redisAsyncSetConnectCallback(ac, &Subscriber::on_connect);
    redisAsyncSetDisconnectCallback(ac, &Subscriber::on_disconnect);
    ac_ = ac;
    state_ = State::Connecting;
    send_failed_ = false;
    timeout_timer_->start(cfg_.connect_timeout_ms);
}

void Subscriber::on_connect(const redisAsyncContext* ac, int status) noexcept {
    auto* self = static_cast<Subscriber*>(ac->data);
    if (self == nullptr) {
        return;
    }
    if (status != REDIS_OK) {
        // hiredis frees the context after this returns.
        self->lost(cat("cannot connect: ", ac->c.errstr), true);
        return;
    }
    self->connected_now();
}

void Subscriber::on_disconnect(const redisAsyncContext* ac, int) noexcept {
    auto* self = static_cast<Subscriber*>(ac->data);
    if (self == nullptr) {
        return;
    }
    self->lost(self->lost_reason(ac), true);
}

// Why hiredis is freeing the context: the guard's refusal, or hiredis' own error.
std::string Subscriber::lost_reason(const redisAsyncContext* ac) const {
    if (!guard_->violation().empty()) {
        return cat("connection dropped: ", guard_->violation());
    }
    return cat("connection lost: ", ac->c.errstr[0] != '\0' ? ac->c.errstr : "closed");
}

// Called from hiredis' connect callback, where the context must not be freed: a handshake that
// cannot be queued is failed from timeout_timer_ at once.
void Subscriber::connected_now() noexcept {
    state_ = State::Handshake;
    timeout_timer_->start(cfg_.command_timeout_ms);
    bool ok = true;
    if (!cfg_.password.empty()) {
        const char* argv[3];
        size_t lens[3];
        int argc = 0;
        argv[argc] = "AUTH";
        lens[argc++] = 4;
        if (!cfg_.username.empty()) {
            argv[argc] = cfg_.username.data();
            lens[argc++] = cfg_.username.size();
        }
        argv[argc] = cfg_.password.data();
        lens[argc++] = cfg_.password.size();
        ok =
            redisAsyncCommandArgv(ac_, &Subscriber::on_auth, nullptr, argc, argv, lens) == REDIS_OK;
    }
    if (ok) {
        const char* argv[2] = {"SUBSCRIBE", channel_.data()};
        size_t lens[2] = {9, channel_.size()};
        ok = redisAsyncCommandArgv(ac_, &Subscriber::on_subscribe, nullptr, 2, argv, lens) ==
             REDIS_OK;
    }
    if (!ok) {
        send_failed_ = true;
        timeout_timer_->start(0);
    }
}

void Subscriber::on_timeout() noexcept {
    switch (state_) {
        case State::Connecting:
            lost(cat("cannot connect: no connection within ", cfg_.connect_timeout_ms, " ms"),
                 false);
            return;
        case State::Handshake:
            if (send_failed_) {
                lost("cannot send SUBSCRIBE", false);
            } else {
                lost(cat("no SUBSCRIBE confirmation within ", cfg_.command_timeout_ms, " ms"),
                     false);
            }
            return;
        case State::Idle:
        case State::Subscribed:
            return;
    }
}

void Subscriber::lost(std::string_view what, bool hiredis_frees) noexcept {
    if (ac_ == nullptr) {
        return;
    }
    redisAsyncContext* ac = ac_;
    ac_ = nullptr;
    ac->data = nullptr;
    guard_->detach();
    state_ = State::Idle;
    timeout_timer_->stop();
    settle_->cancel();
    if (!hiredis_frees) {
        redisAsyncFree(ac);  // deferred by hiredis when inside one of its callbacks
    }
    failure(what);
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

void Subscriber::on_auth(redisAsyncContext* ac, void* reply, void*) noexcept {
    auto* self = static_cast<Subscriber*>(ac->data);
    if (self == nullptr) {
        return;  // a dropped connection: late or freeing
    }
    auto* r = static_cast<redisReply*>(reply);
    if (r == nullptr) {
        self->lost(self->lost_reason(ac), true);
        return;
    }
    if (r->type == REDIS_REPLY_ERROR) {
        self->lost(cat("AUTH failed: ", text_of(r)), false);
    }
}

void Subscriber::on_subscribe(redisAsyncContext* ac, void* reply, void*) noexcept {
    auto* self = static_cast<Subscriber*>(ac->data);
    if (self == nullptr) {
        return;
    }
    auto* r = static_cast<redisReply*>(reply);
    if (r == nullptr) {
        self->lost(self->lost_reason(ac), true);
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 3) {
        return;
    }
    if (is_word(r->element[0], "message") && text_of(r->element[1]) == self->channel_) {
        const redisReply* payload = r->element[2];
        if (payload->type == REDIS_REPLY_STRING) {
            self->deliver(text_of(payload));
        }
    } else if (is_word(r->element[0], "subscribe") && self->state_ == State::Handshake) {
        self->state_ = State::Subscribed;
        self->timeout_timer_->stop();
        self->settle_->post();
        self->log(LogLevel::Debug, cat(self->name_, ": subscribed to \"", self->channel_, "\""));
        self->notify(true);
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
