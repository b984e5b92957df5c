// The Redis target (issue 12; layer: redis): what the nginx layer talks to, one Redis
// (Client, with or without Sentinels) or a Redis Cluster (ClusterClient), behind one
// interface. The contract is Client's (client.hpp): every callback exactly once, never from
// inside the call, never later than the command's deadline.
//
// Routing: command() goes to the node serving argv[1]'s slot (GET, SET, DEL, ...),
// command_for_key() to the one serving `slot_key`'s, evalsha() to the one serving keys[0]'s
// (a script's keys must share a slot on a cluster: Failure::Invalid otherwise). A single Redis
// ignores the keys. available(key), abandoned(key) and reply_unusable(key, ...) ask about the
// node serving `key`; on a single Redis they are available(), abandoned(), reply_unusable().
#pragma once

#include <cstddef>
#include <functional>
#include <initializer_list>
#include <string_view>
#include <vector>

#include "core/metrics.hpp"
#include "redis/permissions.hpp"
#include "redis/reply.hpp"
#include "redis/script.hpp"

namespace throttle::redis {

struct Config;
class EvalResp;
using Callback = std::function<void(Result&& result)>;

class Target {
   public:
    virtual ~Target() = default;

    virtual void start() = 0;

    virtual void command(const std::string_view* argv, size_t argc, Callback cb) = 0;
    void command(std::initializer_list<std::string_view> argv, Callback cb) {
        command(argv.begin(), argv.size(), std::move(cb));
    }
    void command(const std::vector<std::string_view>& argv, Callback cb) {
        command(argv.data(), argv.size(), std::move(cb));
    }
    virtual void command_for_key(std::string_view slot_key, const std::string_view* argv,
                                 size_t argc, Callback cb) = 0;

    virtual void evalsha(const Script& script, const std::string_view* keys, size_t nkeys,
                         const std::string_view* args, size_t nargs, Callback cb) = 0;
    void evalsha(const Script& script, const std::vector<std::string_view>& keys,
                 const std::vector<std::string_view>& args, Callback cb) {
        evalsha(script, keys.data(), keys.size(), args.data(), args.size(), std::move(cb));
    }
    // The same with the keys and arguments in RESP (scripts.hpp): a Client copies them as they
    // are; a cluster reads them back.
    virtual void evalsha(const Script& script, const EvalResp& call, Callback cb) = 0;
    // The two above with the command's absolute deadline on the Loop's clock (Loop::now_ms();
    // 0: now + command_timeout_ms, as above). Already past: not sent, fails with Timeout
    // (unsent), never from inside the call. For a caller that counts its own time from before
    // the call (a request that waited in a queue for its turn).
    virtual void evalsha_until(uint64_t deadline, const Script& script,
                               const std::string_view* keys, size_t nkeys,
                               const std::string_view* args, size_t nargs, Callback cb) = 0;
    virtual void evalsha_until(uint64_t deadline, const Script& script, const EvalResp& call,
                               Callback cb) = 0;
    virtual void add_script(const Script& script) = 0;
    virtual void add_script(const Script& script, std::string_view key,
                            std::string_view channel) = 0;
    void add_script(const Script& script, std::string_view key) { add_script(script, key, {}); }
    virtual void require(const std::vector<Argv>& checks) = 0;

    virtual void reply_unusable(std::string_view slot_key, const Result& result,
                                std::string_view what) noexcept = 0;

    virtual void close() noexcept = 0;
    virtual bool disconnect_idle() noexcept = 0;

    virtual bool available() const noexcept = 0;
    virtual bool available(std::string_view slot_key) const noexcept = 0;
    virtual size_t pending() const noexcept = 0;
    virtual size_t abandoned() const noexcept = 0;
    virtual size_t abandoned(std::string_view slot_key) const noexcept = 0;
    virtual const Config& config() const noexcept = 0;
    virtual void set_metrics(core::metrics::RedisMetrics* metrics,
                             core::metrics::WorkerGauge* gauge) noexcept = 0;
    // True for a Redis Cluster: a script's keys must share a slot.
    virtual bool clustered() const noexcept = 0;
};

}  // namespace throttle::redis
