// What a Redis server may make one connection do (see reply_guard.hpp).
//
// hiredis 0.14's reader (read.c) calls the reply object functions with a task: task->parent is
// null for a reply's top level, task->idx is the index in the parent array, and task->privdata
// is the reader's privdata (here: the guard). It calls createArray with the element count
// before it allocates anything for it, createString once a whole bulk string is buffered. A
// function returning null makes the reader fail ("Out of memory"), and the connection is then
// dropped. The connection layer hands each reply to its owner before it asks the reader for
// the next one, so at a new top level the owner knows whether anybody still awaits a reply.
#include "redis/reply_guard.hpp"

#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#include <strings.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "redis/message.hpp"

namespace throttle::redis {
namespace {

using message::cat;

const char* type_name(int type) noexcept {
    switch (type) {
        case REDIS_REPLY_STRING:
            return "bulk string";
        case REDIS_REPLY_ARRAY:
            return "array";
        case REDIS_REPLY_INTEGER:
            return "integer";
        case REDIS_REPLY_NIL:
            return "nil";
        case REDIS_REPLY_STATUS:
            return "status";
        case REDIS_REPLY_ERROR:
            return "error";
    }
    return "reply";
}

// hiredis' test for an unsubscribe message: the name, a "p" before it for patterns, compared
// as a C string.
bool is_unsubscribe(std::string_view name) noexcept {
    name = name.substr(0, name.find('\0'));
    if (!name.empty() && std::tolower(static_cast<unsigned char>(name[0])) == 'p') {
        name.remove_prefix(1);
    }
    return name.size() == 11 && strncasecmp(name.data(), "unsubscribe", 11) == 0;
}

ReplyGuard* guard_of(const redisReadTask* task) noexcept {
    return static_cast<ReplyGuard*>(task->privdata);
}

// Plain data, no destructor: the module may be unloaded without static destructors.
redisReplyObjectFunctions guarded_functions = {};

}  // namespace

ReplyGuard::ReplyGuard(Mode mode, ReplyLimits limits, std::function<bool()> awaited) noexcept
    : mode_(mode), limits_(limits), awaited_(std::move(awaited)) {
    guarded_functions.createString = &ReplyGuard::create_string;
    guarded_functions.createArray = &ReplyGuard::create_array;
    guarded_functions.createInteger = &ReplyGuard::create_integer;
    guarded_functions.createNil = &ReplyGuard::create_nil;
    guarded_functions.freeObject = &freeReplyObject;
}

ReplyGuard::~ReplyGuard() {
    detach();
    free_spares();
}

void ReplyGuard::free_spares() noexcept {
    while (spare_replies_ != nullptr) {
        redisReply* r = spare_replies_;
        spare_replies_ = reinterpret_cast<redisReply*>(r->element);
        free(r);
    }
    n_spare_replies_ = 0;
    for (size_t c = 0; c < array_classes; c++) {
        while (spare_arrays_[c] != nullptr) {
            void** a = static_cast<void**>(spare_arrays_[c]);
            spare_arrays_[c] = a[0];
            free(a);
        }
        n_spare_arrays_[c] = 0;
    }
}

namespace {

// The capacity class of an array of n >= 1 elements: capacity 1 << class.
size_t array_class(size_t n) noexcept {
    size_t c = 0;
    while ((size_t(1) << c) < n) {
        c++;
    }
    return c;
}

}  // namespace

redisReply* ReplyGuard::new_reply(int type) noexcept {
    redisReply* r = spare_replies_;
    if (r != nullptr) {
        spare_replies_ = reinterpret_cast<redisReply*>(r->element);
        n_spare_replies_--;
        *r = redisReply{};
    } else {
        r = static_cast<redisReply*>(calloc(1, sizeof(redisReply)));
        if (r == nullptr) {
            return nullptr;
        }
    }
    r->type = type;
    return r;
}

redisReply** ReplyGuard::new_elements(size_t n) noexcept {
    size_t c = array_class(n);
    if (c >= array_classes) {
        return static_cast<redisReply**>(calloc(n, sizeof(redisReply*)));
    }
    void** a = static_cast<void**>(spare_arrays_[c]);
    if (a != nullptr) {
        spare_arrays_[c] = a[0];
        n_spare_arrays_[c]--;
    } else {
        a = static_cast<void**>(malloc((size_t(1) << c) * sizeof(void*)));
        if (a == nullptr) {
            return nullptr;
        }
    }
    std::memset(a, 0, n * sizeof(void*));
    return reinterpret_cast<redisReply**>(a);
}

void ReplyGuard::link(const redisReadTask* task, redisReply* r) noexcept {
    if (task->parent != nullptr) {
        auto* parent = static_cast<redisReply*>(task->parent->obj);
        parent->element[task->idx] = r;
    }
}

void ReplyGuard::recycle(redisReply* r) noexcept {
    if (r == nullptr) {
        return;
    }
    switch (r->type) {
        case REDIS_REPLY_ARRAY:
            if (r->element != nullptr) {
                for (size_t i = 0; i < r->elements; i++) {
                    recycle(r->element[i]);
                }
                size_t c = array_class(r->elements);
                if (c < array_classes && n_spare_arrays_[c] < max_spare_arrays) {
                    void** a = reinterpret_cast<void**>(r->element);
                    a[0] = spare_arrays_[c];
                    spare_arrays_[c] = a;
                    n_spare_arrays_[c]++;
                } else {
                    free(r->element);
                }
            }
            break;
        case REDIS_REPLY_STRING:
        case REDIS_REPLY_STATUS:
        case REDIS_REPLY_ERROR:
            free(r->str);
            break;
        default:
            break;
    }
    if (n_spare_replies_ < max_spare_replies) {
        r->element = reinterpret_cast<redisReply**>(spare_replies_);
        spare_replies_ = r;
        n_spare_replies_++;
    } else {
        free(r);
    }
}

void ReplyGuard::attach(redisReader* reader) noexcept {
    detach();
    reader_ = reader;
    violation_.clear();
    elements_ = 0;
    bytes_ = 0;
    unsubscribe_ = false;
    hiredis_fn_ = reader->fn;
    reader->fn = &guarded_functions;
    reader->privdata = this;
}

void ReplyGuard::detach() noexcept {
    if (reader_ == nullptr) {
        return;
    }
    reader_->fn = hiredis_fn_;
    reader_->privdata = nullptr;
    reader_ = nullptr;
}

bool ReplyGuard::refuse(std::string why) noexcept {
    violation_ = std::move(why);
    if (violation_.empty()) {
        violation_ = "reply refused";  // out of memory for the words
    }
    return false;
}

bool ReplyGuard::admit(const redisReadTask* task, int type, uint64_t count,
                       std::string_view str) noexcept {
    if (reader_ == nullptr || !violation_.empty()) {
        return violation_.empty();
    }
    if (task->parent == nullptr) {
        elements_ = 0;
        bytes_ = 0;
        unsubscribe_ = false;
        if (mode_ == Mode::Commands && !awaited_()) {
            return refuse(cat("unexpected reply (", type_name(type), " ",
                              message::printable(str, 40),
                              "): the server sent more replies than commands"));
        }
    }
    if (mode_ == Mode::PubSub && !admit_pubsub(task, type, count, str)) {
        return false;
    }
    if (type == REDIS_REPLY_ARRAY) {
        elements_ += count;
        if (elements_ > limits_.max_elements) {
            return refuse(cat("reply refused: an array of ", count, " elements (", elements_,
                              " in this reply, at most ", limits_.max_elements, ")"));
        }
    } else if (type == REDIS_REPLY_STRING || type == REDIS_REPLY_STATUS ||
               type == REDIS_REPLY_ERROR) {
        bytes_ += count;
        if (bytes_ > limits_.max_bytes) {
            return refuse(cat("reply refused: a string of ", count, " bytes (", bytes_,
                              " in this reply, at most ", limits_.max_bytes, ")"));
        }
    }
    return true;
}

// A reply no command waits for, on a subscribed connection: hiredis hands it to its pub/sub
// dispatch, which asserts that it is an array whose first two elements are bulk strings, reads
// a third element of an unsubscribe message as an integer (past the end of a shorter array),
// and hands anything else but an error (which makes it disconnect) to whichever callback ran
// last. Only messages shaped as Redis sends them pass, and errors.
bool ReplyGuard::admit_pubsub(const redisReadTask* task, int type, uint64_t count,
                              std::string_view str) noexcept {
    if (awaited_()) {
        return true;  // a reply to AUTH goes to its callback
    }
    if (task->parent == nullptr) {
        if (type == REDIS_REPLY_ERROR) {
            return true;  // the subscriber drops the connection, with the server's words (NOAUTH)
        }
        if (type != REDIS_REPLY_ARRAY || count < 3 || count > 4) {
            return refuse(cat("unexpected reply (", type_name(type), " of ", count,
                              "): not a pub/sub message"));
        }
        return true;
    }
    if (task->parent->parent != nullptr) {
        return true;
    }
    if (task->idx <= 1 && type != REDIS_REPLY_STRING) {
        return refuse(cat("unexpected pub/sub message: element ", task->idx, " (", type_name(type),
                          ") is not a bulk string"));
    }
    if (task->idx == 0) {
        unsubscribe_ = is_unsubscribe(str);
    } else if (task->idx == 2 && unsubscribe_ && type != REDIS_REPLY_INTEGER) {
        return refuse(cat("unexpected pub/sub message: the count of an unsubscribe (",
                          type_name(type), ") is not an integer"));
    }
    return true;
}

// After a read: what the reader waits for. A bulk string whose header arrived announces its
// length there ("$<len>\r\n" at the read position) long before its bytes.
bool ReplyGuard::check_buffered() noexcept {
    if (reader_ == nullptr || !violation_.empty()) {
        return violation_.empty();
    }
    const redisReader* r = reader_;
    if (r->err != 0 || r->ridx < 0 || r->pos > r->len) {
        return true;
    }
    size_t buffered = r->len - r->pos;
    const redisReadTask& cur = r->rstack[r->ridx];
    uint64_t used = r->ridx == 0 ? 0 : bytes_;  // a top-level bulk string: a reply of its own
    uint64_t left = limits_.max_bytes - std::min(used, limits_.max_bytes);
    if (cur.type == REDIS_REPLY_STRING) {
        const char* p = r->buf + r->pos;
        size_t n = std::min<size_t>(buffered, 24);
        uint64_t announced = 0;
        size_t i = 0;
        for (; i < n && p[i] >= '0' && p[i] <= '9'; i++) {
            announced = announced * 10 + uint64_t(p[i] - '0');
        }
        if (i > 0 && i < n && p[i] == '\r' && announced > left) {
            return refuse(cat("reply refused: a bulk string of ", announced, " bytes announced (",
                              left, " left of the ", limits_.max_bytes, " one reply may carry)"));
        }
    }
    if (buffered > left) {
        return refuse(cat("reply refused: ", buffered,
                          " bytes buffered and the reply not complete (", left, " left of the ",
                          limits_.max_bytes, " one reply may carry)"));
    }
    return true;
}

namespace {

// A canonical decimal integer at [p, end) up to its CRLF: "0", or an optional '-' and 1 to 18
// digits without a leading zero ("-0" is not canonical). Sets `value` and returns the position
// after the CRLF; null when the line is not that (or not complete).
const char* canonical_integer(const char* p, const char* end, long long& value) noexcept {
    bool negative = false;
    if (p < end && *p == '-') {
        negative = true;
        p++;
    }
    const char* digits = p;
    unsigned long long v = 0;  // wraps past 20 digits: refused below anyway
    for (; p < end; p++) {
        const unsigned digit = unsigned(static_cast<unsigned char>(*p)) - '0';
        if (digit > 9) {
            break;
        }
        v = v * 10 + digit;
    }
    const size_t d = size_t(p - digits);
    if (d == 0 || d > 18 || (d > 1 && *digits == '0') || (negative && v == 0) || end - p < 2 ||
        p[0] != '\r' || p[1] != '\n') {
        return nullptr;
    }
    value = negative ? -static_cast<long long>(v) : static_cast<long long>(v);
    return p + 2;
}

}  // namespace

redisReply* ReplyGuard::quick_reply(const char* p, size_t n, size_t& used) noexcept {
    used = 0;
    if (mode_ != Mode::Commands || reader_ == nullptr || !violation_.empty() || n < 4) {
        return nullptr;
    }
    const redisReader* rd = reader_;
    if (rd->err != 0 || rd->ridx >= 0 || rd->pos < rd->len) {
        return nullptr;  // the reader is inside a reply: it goes on
    }
    const char* const start = p;
    const char* const end = p + n;
    // One element (or the reply itself) of the quick shapes: its object, or null.
    uint64_t bytes = 0;
    const auto one = [&](const char*& at) -> redisReply* {
        if (end - at < 4) {
            return nullptr;
        }
        const char kind = *at++;
        long long v = 0;
        if (kind == ':') {
            const char* next = canonical_integer(at, end, v);
            if (next == nullptr) {
                return nullptr;
            }
            redisReply* r = new_reply(REDIS_REPLY_INTEGER);
            if (r != nullptr) {
                r->integer = v;
                at = next;
            }
            return r;
        }
        if (kind != '$') {
            return nullptr;
        }
        if (end - at >= 4 && std::memcmp(at, "-1\r\n", 4) == 0) {
            redisReply* r = new_reply(REDIS_REPLY_NIL);
            if (r != nullptr) {
                at += 4;
            }
            return r;
        }
        const char* body = canonical_integer(at, end, v);
        if (body == nullptr || v < 0 || end - body < v + 2 || body[v] != '\r' ||
            body[v + 1] != '\n') {
            return nullptr;
        }
        bytes += uint64_t(v);
        if (bytes > limits_.max_bytes) {
            return nullptr;
        }
        char* buf = static_cast<char*>(malloc(size_t(v) + 1));
        if (buf == nullptr) {
            return nullptr;
        }
        redisReply* r = new_reply(REDIS_REPLY_STRING);
        if (r == nullptr) {
            free(buf);
            return nullptr;
        }
        std::memcpy(buf, body, size_t(v));
        buf[v] = '\0';
        r->str = buf;
        r->len = size_t(v);
        at = body + v + 2;
        return r;
    };
    const char* at = p;
    redisReply* reply = nullptr;
    if (*at == '*') {
        long long count = 0;
        const char* next = canonical_integer(at + 1, end, count);
        if (next == nullptr || count < 0 || count > 256 || uint64_t(count) > limits_.max_elements) {
            return nullptr;
        }
        at = next;
        reply = new_reply(REDIS_REPLY_ARRAY);
        if (reply == nullptr) {
            return nullptr;
        }
        if (count > 0) {
            reply->element = new_elements(size_t(count));
            if (reply->element == nullptr) {
                recycle(reply);
                return nullptr;
            }
            reply->elements = size_t(count);
            for (long long i = 0; i < count; i++) {
                redisReply* e = one(at);
                if (e == nullptr) {
                    recycle(reply);  // the elements made so far with it
                    return nullptr;
                }
                reply->element[i] = e;
            }
        }
    } else {
        reply = one(at);
        if (reply == nullptr) {
            return nullptr;
        }
    }
    // Complete and within the limits. Nobody waiting for it: the reader refuses it as before.
    if (!awaited_()) {
        recycle(reply);
        return nullptr;
    }
    used = size_t(at - start);
    return reply;
}

// The four functions build what hiredis' own (hiredis.c) would, from the spare objects.
void* ReplyGuard::create_string(const redisReadTask* task, char* str, size_t len) {
    ReplyGuard* g = guard_of(task);
    if (g == nullptr || !g->admit(task, task->type, len, std::string_view(str, len))) {
        return nullptr;
    }
    char* buf = static_cast<char*>(malloc(len + 1));
    if (buf == nullptr) {
        return nullptr;
    }
    redisReply* r = g->new_reply(task->type);
    if (r == nullptr) {
        free(buf);
        return nullptr;
    }
    std::memcpy(buf, str, len);
    buf[len] = '\0';
    r->str = buf;
    r->len = len;
    link(task, r);
    return r;
}

void* ReplyGuard::create_array(const redisReadTask* task, int elements) {
    ReplyGuard* g = guard_of(task);
    if (g == nullptr || !g->admit(task, REDIS_REPLY_ARRAY, uint64_t(elements), {})) {
        return nullptr;
    }
    redisReply* r = g->new_reply(REDIS_REPLY_ARRAY);
    if (r == nullptr) {
        return nullptr;
    }
    if (elements > 0) {
        r->element = g->new_elements(size_t(elements));
        if (r->element == nullptr) {
            g->recycle(r);
            return nullptr;
        }
    }
    r->elements = size_t(elements > 0 ? elements : 0);
    link(task, r);
    return r;
}

void* ReplyGuard::create_integer(const redisReadTask* task, long long value) {
    ReplyGuard* g = guard_of(task);
    if (g == nullptr || !g->admit(task, REDIS_REPLY_INTEGER, 0, {})) {
        return nullptr;
    }
    redisReply* r = g->new_reply(REDIS_REPLY_INTEGER);
    if (r == nullptr) {
        return nullptr;
    }
    r->integer = value;
    link(task, r);
    return r;
}

void* ReplyGuard::create_nil(const redisReadTask* task) {
    ReplyGuard* g = guard_of(task);
    if (g == nullptr || !g->admit(task, REDIS_REPLY_NIL, 0, {})) {
        return nullptr;
    }
    redisReply* r = g->new_reply(REDIS_REPLY_NIL);
    if (r == nullptr) {
        return nullptr;
    }
    link(task, r);
    return r;
}

}  // namespace throttle::redis
