// What a Redis server may make one connection do (layer: redis).
//
// hiredis 0.14 trusts the server. An array header "*N" makes its reader calloc N pointers before
// any element arrives (and free them one by one later: *300000000 alone costs seconds); a bulk
// header "$N" makes it buffer until N bytes came, and a line without its CRLF is buffered
// forever; a reply that arrives when no command waits for one makes it abort() the process
// (redisProcessCallbacks' assertion), and in pub/sub mode so does an array that is not shaped
// like a pub/sub message. The connection layer (connection.hpp) parses replies with hiredis'
// redisReader; the guard stands in front of it, in the place the reader lets a user in: its
// reply object functions (called as each part of a reply is parsed: an array's element count
// is known before hiredis allocates it). After every read, the connection asks the guard to
// look at what the reader is still waiting for (check_buffered()).
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
// A violation found while hiredis parses makes the reply function fail: the reader fails
// ("Out of memory": read violation() instead) and the connection is dropped. A violation found
// by check_buffered() returns false: the connection is dropped too.
//
// One reader at a time: attach() it when it is created, detach() it before it is freed.
// Whether a command awaits a reply is the owner's to say (the `awaited` function). Single-
// threaded, like the Loop.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

struct redisReader;
struct redisReadTask;
struct redisReplyObjectFunctions;
struct redisReply;

namespace throttle::redis {

struct ReplyLimits {
    uint64_t max_elements = 1 << 20;  // 8 MB of element pointers at most before they arrive
    uint64_t max_bytes = 256 << 20;   // the largest cache entry is 64 MB
};

class ReplyGuard {
   public:
    enum class Mode : uint8_t { Commands, PubSub };

    // `awaited` says whether a command awaits a reply now (Commands: any command; PubSub: a
    // regular command such as AUTH, not the subscription's messages). It must not throw.
    ReplyGuard(Mode mode, ReplyLimits limits, std::function<bool()> awaited) noexcept;
    ~ReplyGuard();  // detach()
    ReplyGuard(const ReplyGuard&) = delete;
    ReplyGuard& operator=(const ReplyGuard&) = delete;

    // Guards `reader`. Forgets any earlier violation.
    void attach(redisReader* reader) noexcept;
    // Gives the reader back its own functions.
    void detach() noexcept;
    // After a read (bytes fed, complete replies taken): false, with violation() set, when what
    // the reader holds of the reply still incomplete breaks the limits.
    bool check_buffered() noexcept;
    // Why the guard stopped the current (or last) reader; empty if it did not.
    const std::string& violation() const noexcept { return violation_; }

    // The common replies without hiredis' reader (issue 14: its parse cost more than the rest of
    // a reply's way): when the reader holds nothing, the guard is in Commands mode and [p, p+n)
    // starts with a complete reply of one of the shapes the module's scripts answer -- an
    // integer, a bulk string, a nil, or an array of up to 256 of these -- written canonically
    // (no sign but a minus, no leading zero, at most 18 digits, each line ending in CRLF), a
    // command awaits it and it is within the limits: the reply, built as the reader would build
    // it, and `used` its bytes. Otherwise null (nothing used): the reader parses from there,
    // finding what it finds (a violation included) exactly as before.
    redisReply* quick_reply(const char* p, size_t n, size_t& used) noexcept;

    // Frees a complete reply the guarded reader made, keeping its objects for the next replies
    // (hiredis' freeReplyObject() frees them as well: they are malloc()ed as hiredis' own).
    void recycle(redisReply* reply) noexcept;

   private:
    // hiredis' reply objects, built by the guard's functions as hiredis' own would be, from
    // the spare objects of replies recycled before (a reply of the usual size allocates
    // nothing): redisReply structs, and element arrays by capacity (1, 2, 4, .. 256).
    static constexpr size_t array_classes = 9;
    static constexpr uint32_t max_spare_replies = 256;
    static constexpr uint32_t max_spare_arrays = 16;  // per capacity
    redisReply* new_reply(int type) noexcept;
    redisReply** new_elements(size_t n) noexcept;
    static void link(const redisReadTask* task, redisReply* r) noexcept;
    void free_spares() noexcept;

    static void* create_string(const redisReadTask* task, char* str, size_t len);
    static void* create_array(const redisReadTask* task, int elements);
    static void* create_integer(const redisReadTask* task, long long value);
    static void* create_nil(const redisReadTask* task);

    bool admit(const redisReadTask* task, int type, uint64_t count, std::string_view str) noexcept;
    bool admit_pubsub(const redisReadTask* task, int type, uint64_t count,
                      std::string_view str) noexcept;
    bool refuse(std::string why) noexcept;

    Mode mode_;
    ReplyLimits limits_;
    std::function<bool()> awaited_;

    redisReader* reader_ = nullptr;
    redisReplyObjectFunctions* hiredis_fn_ = nullptr;  // the reader's own functions

    redisReply* spare_replies_ = nullptr;  // linked through their `element`
    uint32_t n_spare_replies_ = 0;
    void* spare_arrays_[array_classes] = {};  // linked through their first pointer
    uint32_t n_spare_arrays_[array_classes] = {};

    uint64_t elements_ = 0;  // announced by the reply being read
    uint64_t bytes_ = 0;     // carried by its strings
    bool unsubscribe_ = false;
    std::string violation_;
};

}  // namespace throttle::redis
