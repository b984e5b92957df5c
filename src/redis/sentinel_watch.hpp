// Follows a Sentinel-monitored primary through failovers (layer: redis; issue 12).
//
// One pub/sub connection to one Sentinel at a time (a Subscriber on `+switch-master`, with
// AUTH sentinel_password when set), the Sentinels of Config::sentinels tried in order: the
// first that answers is watched; when its connection fails or is lost, the next one (round
// robin; after a whole round without a subscription, the wait doubles from
// backoff_initial_ms up to backoff_max_ms, reset once subscribed).
//
// The primary's address is reported to on_primary:
//   - when a subscription is confirmed, the same Sentinel is asked SENTINEL
//     get-master-addr-by-name (on a short-lived connection, as Client asks): a failover that
//     happened while no subscription stood is caught there;
//   - on a `+switch-master` message for Config::sentinel_master (`<name> <old-ip> <old-port>
//     <new-ip> <new-port>`): logged at Info, "master NAME moved from A to B".
// on_primary is called only when the address differs from the last one reported (the first
// one included), never from inside start() or close(), nor after close(); it may call
// close(). An exception it throws is caught and logged. Failures are logged once per
// incident (Error, then Debug), the recovery at Info. Single-threaded, like its Loop; must not
// be destroyed from inside on_primary.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "redis/address.hpp"
#include "redis/client.hpp"
#include "redis/loop.hpp"
#include "redis/subscriber.hpp"

namespace throttle::redis {

// Parses a +switch-master payload; false when it is not one (five space-separated fields, the
// last four two valid numeric addresses).
bool parse_switch_master(std::string_view payload, std::string& name, Address& from, Address& to);

class SentinelWatch {
   public:
    using OnPrimary = std::function<void(const Address& primary, std::string_view why)>;

    // Uses config's sentinels, sentinel_master, sentinel_password, connect_timeout_ms,
    // command_timeout_ms, backoff_initial_ms, backoff_max_ms and reply_limits. Throws
    // std::invalid_argument without sentinels or a master name, or with an invalid address.
    // Does not touch the network: start() connects.
    SentinelWatch(Loop& loop, const Config& config, OnPrimary on_primary, Logger logger = nullptr);
    ~SentinelWatch();  // close()
    SentinelWatch(const SentinelWatch&) = delete;
    SentinelWatch& operator=(const SentinelWatch&) = delete;

    // Starts watching (the first Sentinel), unless started or closed.
    void start();
    // Drops the connections; no callback after it. Idempotent.
    void close() noexcept;

    // A subscription to +switch-master stands.
    bool subscribed() const noexcept;
    // The Sentinel watched (or tried) now.
    const Address& sentinel() const noexcept { return cfg_.sentinels[index_]; }
    // The last primary reported; !valid() before the first.
    const Address& primary() const noexcept { return primary_; }
    // +switch-master messages for our master received.
    uint64_t switches() const noexcept { return switches_; }

   private:
    void watch() noexcept;
    void on_state(uint64_t gen, bool subscribed) noexcept;
    void on_message(std::string_view payload) noexcept;
    void ask() noexcept;
    void answer(uint64_t gen, Result&& r) noexcept;
    void report(const Address& primary, std::string_view why) noexcept;
    void log(LogLevel level, std::string_view message) const noexcept;

    Loop& loop_;
    Config cfg_;
    OnPrimary on_primary_;
    Logger logger_;
    std::string name_;  // "sentinel watch \"mymaster\""

    std::unique_ptr<Subscriber> sub_;
    std::unique_ptr<Client> query_;      // asking the watched Sentinel for the primary
    std::unique_ptr<Timer> next_timer_;  // replaces sub_ (never from inside its callbacks)
    size_t index_ = 0;
    size_t tried_ = 0;       // Sentinels tried without a subscription since the last one
    uint32_t backoff_ms_;    // after a whole round
    uint32_t failures_ = 0;  // this incident's
    uint64_t gen_ = 0;       // of sub_ and query_: older callbacks are ignored
    bool started_ = false;
    bool closed_ = false;
    Address primary_;
    uint64_t switches_ = 0;
};

}  // namespace throttle::redis
