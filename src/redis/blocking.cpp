#include "redis/blocking.hpp"

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <memory>
#include <string>

#include "redis/hiredis_reply.hpp"

namespace throttle::redis {
namespace {

struct ContextFree {
    void operator()(redisContext* c) const noexcept { redisFree(c); }
};
struct ReplyFree {
    void operator()(void* r) const noexcept { freeReplyObject(r); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyFree>;

timeval to_timeval(uint32_t ms) noexcept {
    timeval tv;
    tv.tv_sec = ms / 1000;
    tv.tv_usec = static_cast<suseconds_t>((ms % 1000) * 1000);
    return tv;
}

ReplyPtr run(redisContext* c, const std::vector<std::string_view>& argv) {
    std::vector<const char*> ptrs;
    std::vector<size_t> lens;
    for (std::string_view a : argv) {
        ptrs.push_back(a.data());
        lens.push_back(a.size());
    }
    return ReplyPtr(static_cast<redisReply*>(
        redisCommandArgv(c, static_cast<int>(argv.size()), ptrs.data(), lens.data())));
}

bool ok(const ReplyPtr& r) noexcept {
    return r && r->type != REDIS_REPLY_ERROR;
}

}  // namespace

Result eval_blocking(const Config& config, const Script& script,
                     const std::vector<std::string_view>& keys,
                     const std::vector<std::string_view>& args, bool* sent) noexcept {
    if (sent != nullptr) {
        *sent = false;
    }
    Result result;
    result.failure = Failure::Disconnected;
    try {
        timeval ctv = to_timeval(config.connect_timeout_ms);
        std::unique_ptr<redisContext, ContextFree> c(
            config.address.is_unix()
                ? redisConnectUnixWithTimeout(config.address.unix_path.c_str(), ctv)
                : redisConnectWithTimeout(config.address.host.c_str(), config.address.port, ctv));
        if (!c || c->err) {
            return result;
        }
        if (redisSetTimeout(c.get(), to_timeval(config.command_timeout_ms)) != REDIS_OK) {
            return result;
        }
        if (!config.password.empty()) {
            ReplyPtr r = config.username.empty()
                             ? run(c.get(), {"AUTH", config.password})
                             : run(c.get(), {"AUTH", config.username, config.password});
            if (!ok(r)) {
                return result;
            }
        }
        if (config.db != 0) {
            std::string db = std::to_string(config.db);
            if (!ok(run(c.get(), {"SELECT", db}))) {
                return result;
            }
        }
        std::string nkeys = std::to_string(keys.size());
        std::vector<std::string_view> argv{"EVAL", script.source(), nkeys};
        argv.insert(argv.end(), keys.begin(), keys.end());
        argv.insert(argv.end(), args.begin(), args.end());
        if (sent != nullptr) {
            *sent = true;
        }
        ReplyPtr r = run(c.get(), argv);
        if (!r) {
            result.failure = c->err == REDIS_ERR_IO ? Failure::Timeout : Failure::Disconnected;
            return result;
        }
        convert_reply(r.get(), result.reply);
        result.failure = Failure::None;
    } catch (...) {
        result.failure = Failure::Disconnected;
    }
    return result;
}

}  // namespace throttle::redis
