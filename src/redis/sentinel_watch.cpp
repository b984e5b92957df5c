// Following the primary through failovers (see sentinel_watch.hpp).
#include "redis/sentinel_watch.hpp"

#include <algorithm>
#include <charconv>
#include <stdexcept>
#include <utility>
#include <vector>

#include "redis/message.hpp"

namespace throttle::redis {
namespace {

using message::cat;
using message::printable;

bool parse_port(std::string_view text, uint16_t& port) noexcept {
    unsigned value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc() || end != text.data() + text.size() || value == 0 || value > 65535) {
        return false;
    }
    port = uint16_t(value);
    return true;
}

}  // namespace

bool parse_switch_master(std::string_view payload, std::string& name, Address& from, Address& to) {
    if (payload.empty() || payload.back() == ' ') {
        return false;
    }
    std::vector<std::string_view> f;
    while (!payload.empty() && f.size() < 6) {
        size_t sp = payload.find(' ');
        std::string_view field = payload.substr(0, sp);
        if (field.empty()) {
            return false;
        }
        f.push_back(field);
        payload = sp == std::string_view::npos ? std::string_view() : payload.substr(sp + 1);
    }
    if (f.size() != 5 || !payload.empty()) {
        return false;
    }
    Address a, b;
    a.host = std::string(f[1]);
    b.host = std::string(f[3]);
    if (!parse_port(f[2], a.port) || !parse_port(f[4], b.port) || !a.valid() || !b.valid()) {
        return false;
    }
    name = std::string(f[0]);
    from = std::move(a);
    to = std::move(b);
    return true;
}

SentinelWatch::SentinelWatch(Loop& loop, const Config& config, OnPrimary on_primary, Logger logger)
    : loop_(loop), cfg_(config), on_primary_(std::move(on_primary)), logger_(std::move(logger)) {
    if (cfg_.sentinels.empty() || cfg_.sentinel_master.empty()) {
        throw std::invalid_argument("a Sentinel watch needs Sentinels and a master name");
    }
    for (const Address& a : cfg_.sentinels) {
        if (!a.valid()) {
            throw std::invalid_argument("invalid sentinel address \"" + a.to_string() + "\"");
        }
    }
    cfg_.backoff_initial_ms = std::max<uint32_t>(cfg_.backoff_initial_ms, 1);
    cfg_.backoff_max_ms = std::max(cfg_.backoff_max_ms, cfg_.backoff_initial_ms);
    backoff_ms_ = cfg_.backoff_initial_ms;
    name_ = "sentinel watch \"" + cfg_.sentinel_master + "\"";
    next_timer_ = loop_.create_timer([this] { watch(); });
}

SentinelWatch::~SentinelWatch() {
    close();
    query_.reset();  // delivers its callback (ignored: closed) while the rest still stands
    sub_.reset();
}

void SentinelWatch::start() {
    if (started_ || closed_) {
        return;
    }
    started_ = true;
    watch();
}

void SentinelWatch::close() noexcept {
    if (closed_) {
        return;
    }
    closed_ = true;
    gen_++;
    next_timer_->stop();
    if (sub_) {
        sub_->close();
    }
    if (query_) {
        query_->close();  // its callback, from a timer, sees gen_ changed
    }
}

bool SentinelWatch::subscribed() const noexcept {
    return sub_ && sub_->subscribed();
}

void SentinelWatch::log(LogLevel level, std::string_view message) const noexcept {
    if (!logger_) {
        return;
    }
    try {
        logger_(level, message);
    } catch (...) {
    }
}

// A Subscriber on cfg_.sentinels[index_], replacing the one before (called from the loop or
// start(), never from inside the old one's callbacks).
void SentinelWatch::watch() noexcept {
    if (closed_) {
        return;
    }
    uint64_t gen = ++gen_;
    sub_.reset();
    query_.reset();
    try {
        Config sc;
        sc.address = cfg_.sentinels[index_];
        sc.password = cfg_.sentinel_password;
        sc.connect_timeout_ms = cfg_.connect_timeout_ms;
        sc.command_timeout_ms = cfg_.command_timeout_ms;
        sc.backoff_initial_ms = cfg_.backoff_initial_ms;
        sc.backoff_max_ms = cfg_.backoff_max_ms;
        sc.reply_limits = cfg_.reply_limits;
        // The subscriber's own lines: its failures are this watch's, logged once per incident.
        Logger sublog = [this](LogLevel level, std::string_view m) {
            if (level == LogLevel::Error && failures_ > 0) {
                level = LogLevel::Debug;
            }
            if (level == LogLevel::Info) {
                level = LogLevel::Debug;  // "subscribed again": said by on_state()
            }
            log(level, cat(name_, ": ", m));
        };
        sub_ = std::make_unique<Subscriber>(
            loop_, std::move(sc), "+switch-master",
            [this](std::string_view payload) { on_message(payload); }, std::move(sublog));
        sub_->set_on_state([this, gen](bool subscribed) { on_state(gen, subscribed); });
        sub_->start();
    } catch (...) {
        sub_.reset();
        log(failures_ == 0 ? LogLevel::Error : LogLevel::Debug,
            cat(name_, ": cannot watch Sentinel ", cfg_.sentinels[index_].to_string(),
                ": out of memory"));
        failures_++;
        next_timer_->start(backoff_ms_);
        backoff_ms_ = std::min(backoff_ms_ * 2, cfg_.backoff_max_ms);
    }
}

void SentinelWatch::on_state(uint64_t gen, bool subscribed) noexcept {
    if (closed_ || gen != gen_) {
        return;
    }
    if (subscribed) {
        if (failures_ > 0) {
            log(LogLevel::Info,
                cat(name_, ": watching Sentinel ", cfg_.sentinels[index_].to_string(),
                    " again after ", failures_, " failure(s)"));
        } else {
            log(LogLevel::Debug,
                cat(name_, ": watching Sentinel ", cfg_.sentinels[index_].to_string()));
        }
        failures_ = 0;
        tried_ = 0;
        backoff_ms_ = cfg_.backoff_initial_ms;
        ask();
        return;
    }
    // This Sentinel failed (the subscriber logged why): the next one.
    failures_++;
    sub_->close();  // no retry of its own; freed by watch(), from the timer
    index_ = (index_ + 1) % cfg_.sentinels.size();
    uint32_t delay = 0;
    if (++tried_ >= cfg_.sentinels.size()) {
        tried_ = 0;
        delay = backoff_ms_;
        backoff_ms_ = std::min(backoff_ms_ * 2, cfg_.backoff_max_ms);
    }
    next_timer_->start(delay);
}

// Asks the watched Sentinel for the primary: a switch missed while no subscription stood.
void SentinelWatch::ask() noexcept {
    uint64_t gen = gen_;
    if (query_) {
        query_->close();
    }
    try {
        Config qc;
        qc.address = cfg_.sentinels[index_];
        qc.password = cfg_.sentinel_password;
        qc.connect_timeout_ms = cfg_.connect_timeout_ms;
        qc.command_timeout_ms = cfg_.command_timeout_ms;
        qc.failure_threshold = 0;
        qc.reply_limits = cfg_.reply_limits;
        qc.sentinel_query = true;
        auto q = std::make_unique<Client>(loop_, std::move(qc));
        q->command({"SENTINEL", "get-master-addr-by-name", cfg_.sentinel_master},
                   [this, gen](Result&& r) { answer(gen, std::move(r)); });
        query_ = std::move(q);  // the old one (closed) is freed here: not inside its callback
    } catch (...) {
        log(LogLevel::Debug, cat(name_, ": cannot ask for the primary: out of memory"));
    }
}

void SentinelWatch::answer(uint64_t gen, Result&& r) noexcept {
    if (closed_ || gen != gen_) {
        return;
    }
    const Reply& rep = r.reply;
    if (!r.ok() || rep.type != Reply::Type::Array || rep.elements.size() != 2 ||
        rep.elements[0].type != Reply::Type::String ||
        rep.elements[1].type != Reply::Type::String) {
        log(LogLevel::Debug,
            cat(name_, ": Sentinel ", cfg_.sentinels[index_].to_string(),
                " did not name the primary (",
                r.ok() ? printable(rep.is_error() ? rep.str : to_string(rep.type), 60)
                       : std::string(to_string(r.failure)),
                ")"));
        return;
    }
    Address a;
    try {
        a.host = rep.elements[0].str;
    } catch (...) {
        return;
    }
    if (!parse_port(rep.elements[1].str, a.port) || !a.valid()) {
        log(LogLevel::Debug, cat(name_, ": Sentinel ", cfg_.sentinels[index_].to_string(),
                                 " named an invalid address"));
        return;
    }
    report(a, cat("Sentinel ", cfg_.sentinels[index_].to_string(), " names it"));
}

void SentinelWatch::on_message(std::string_view payload) noexcept {
    if (closed_) {
        return;
    }
    std::string name;
    Address from, to;
    try {
        if (!parse_switch_master(payload, name, from, to)) {
            log(LogLevel::Debug,
                cat(name_, ": not a +switch-master message: \"", printable(payload, 80), "\""));
            return;
        }
    } catch (...) {
        return;
    }
    if (name != cfg_.sentinel_master) {
        return;
    }
    switches_++;
    std::string why =
        cat("master ", name, " moved from ", from.to_string(), " to ", to.to_string());
    log(LogLevel::Info, cat(name_, ": ", why));
    report(to, why);
}

void SentinelWatch::report(const Address& primary, std::string_view why) noexcept {
    if (primary_.valid() && primary.to_string() == primary_.to_string()) {
        return;
    }
    try {
        primary_ = primary;
    } catch (...) {
        return;
    }
    if (!on_primary_) {
        return;
    }
    try {
        on_primary_(primary, why);  // last: it may call close()
    } catch (...) {
        log(LogLevel::Error, cat(name_, ": the primary callback threw an exception"));
    }
}

}  // namespace throttle::redis
