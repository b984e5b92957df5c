// What a Redis server may make one connection do (layer: redis).
//
// hiredis 0.14 trusts the server. An array header "*N" makes its reader calloc N pointers before
// any element arrives (and free them one by one later: *300000000 alone costs seconds); a bulk
// header "$N" makes it buffer until N bytes came, and a line without its CRLF is buffered
// forever; a reply that arrives when no command waits for one makes it abort() the process
// (redisProcessCallbacks' assertion), and in pub/sub mode so does an array that is not shaped
// like a pub/sub message. hiredis comes from the system, so the guard stands in front of it,
// in the two places hiredis lets a user in: the reader's reply object functions (called as
// each part of a reply is parsed: an array's element count is known before hiredis allocates
// it) and the context's event hooks (called after every read: the guard looks at what the
// reader is waiting for at the end of that loop turn).
//
// The guard refuses, as a protocol violation on that connection:
//   - in Commands mode, a reply when no command awaits one; in PubSub mode, a reply no command
//     awaits that is neither an error nor an array of 3 or 4 elements whose first two are bulk
//     strings (and the third an integer, for an (p)unsubscribe);
//   - a reply whose arrays announce more than max_elements elements, all together;
//   - a reply whose strings carry more than max_bytes, all together; a bulk string announcing
//     more than is left of that budget is refused when its header arrives, before its bytes
//     are buffered; a reply still incomplete with more than max_bytes buffered, too.
// Nesting deeper than 7 arrays hiredis refuses itself.
//
// A violation found while hiredis parses makes the reply function fail: hiredis sets an error
// on the context ("Out of memory": read violation() instead) and frees it, calling every
// pending callback with no reply, then the disconnect callback. A violation found at the end of
// a turn is reported through on_violation, outside hiredis: the owner drops the connection.
//
// One connection at a time: attach() a context right after Loop::attach(), detach() it before
// the owner lets go of it (any path: its own redisAsyncFree, or hiredis freeing it on an
// error). Single-threaded, like the Loop.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "redis/loop.hpp"

struct redisAsyncContext;
struct redisReadTask;
struct redisReplyObjectFunctions;

namespace throttle::redis {

struct ReplyLimits {
    uint64_t max_elements = 1 << 20;  // 8 MB of element pointers at most before they arrive
    uint64_t max_bytes = 256 << 20;   // the largest cache entry is 64 MB
};

class ReplyGuard {
   public:
    enum class Mode : uint8_t { Commands, PubSub };
    using OnViolation = std::function<void(std::string_view why)>;

    // May throw std::bad_alloc.
    ReplyGuard(Loop& loop, Mode mode, ReplyLimits limits, OnViolation on_violation);
    ~ReplyGuard();  // detach()
    ReplyGuard(const ReplyGuard&) = delete;
    ReplyGuard& operator=(const ReplyGuard&) = delete;

    // Guards `ac` (already attached to the loop). Forgets any earlier violation.
    void attach(redisAsyncContext* ac) noexcept;
    // Gives `ac` back to plain hiredis: its reader and event hooks as they were.
    void detach() noexcept;
    // Why the guard stopped the current (or last) connection's reader; empty if it did not.
    const std::string& violation() const noexcept { return violation_; }

   private:
    static void* create_string(const redisReadTask* task, char* str, size_t len);
    static void* create_array(const redisReadTask* task, int elements);
    static void* create_integer(const redisReadTask* task, long long value);
    static void* create_nil(const redisReadTask* task);
    static void add_read(void* data);
    static void del_read(void* data);
    static void add_write(void* data);
    static void del_write(void* data);
    static void cleanup(void* data);

    bool admit(const redisReadTask* task, int type, uint64_t count, std::string_view str) noexcept;
    bool admit_pubsub(const redisReadTask* task, int type, uint64_t count,
                      std::string_view str) noexcept;
    bool refuse(std::string why) noexcept;
    void end_of_turn() noexcept;

    Mode mode_;
    ReplyLimits limits_;
    OnViolation on_violation_;
    std::unique_ptr<Deferred> check_;

    redisAsyncContext* ac_ = nullptr;
    redisReplyObjectFunctions* hiredis_fn_ = nullptr;  // the reader's own functions
    struct LoopHooks {
        void* data;
        void (*add_read)(void*);
        void (*del_read)(void*);
        void (*add_write)(void*);
        void (*del_write)(void*);
        void (*cleanup)(void*);
    } loop_{};
    bool cleaned_ = false;  // hiredis ran the loop's cleanup hook already

    uint64_t elements_ = 0;  // announced by the reply being read
    uint64_t bytes_ = 0;     // carried by its strings
    bool unsubscribe_ = false;
    std::string violation_;
};

}  // namespace throttle::redis
