// Fuzz target: bytes a Redis server sends -> hiredis' reader behind our ReplyGuard -> Reply
// (convert_reply) -> every script reply parser, and a cache entry found by a lookup -> the
// entry decoder. What the owners (Client, Subscriber) rely on is checked here too: in Commands
// mode no reply reaches them when nobody waits for one, and in PubSub mode every reply nobody
// waits for is an error or a message shaped as Redis sends them.
//
// Input: two bytes of setup, then the stream.
//   byte 0  bit 0: PubSub mode (else Commands); bits 1-3: commands waiting for a reply (0..7);
//           bit 4: small limits (16 elements, 64 bytes per reply); bits 5-7: zone count for
//           the strict batch parser's first request (1..8)
//   byte 1  how the stream arrives: 0 all at once, else in reads of that many bytes
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#include <strings.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/cache_entry.hpp"
#include "redis/cache_scripts.hpp"
#include "redis/hiredis_reply.hpp"
#include "redis/loop.hpp"
#include "redis/reply_guard.hpp"
#include "redis/scripts.hpp"
#include "reply_checks.hpp"

using namespace throttle;
using namespace throttle::redis;
using namespace throttle::redis::fuzz;

namespace {

bool is_unsubscribe_c(const redisReply* r) {
    const char* s = r->str;
    if (s[0] == 'p' || s[0] == 'P') {
        s++;
    }
    return strcasecmp(s, "unsubscribe") == 0;
}

// What hiredis 0.14's pub/sub dispatch asserts about a message nobody waits for.
bool pubsub_survivable(const redisReply* r) {
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 2) {
        return false;
    }
    if (r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_STRING) {
        return false;
    }
    if (is_unsubscribe_c(r->element[0])) {
        return r->elements >= 3 && r->element[2]->type == REDIS_REPLY_INTEGER;
    }
    return true;
}

// What a turn that the guard let pass leaves buffered: at most max_bytes of an incomplete
// reply, and no bulk string header announcing more than that (hiredis would wait for, and
// buffer, all of it).
void check_buffered(const redisReader* r, const ReplyLimits& limits) {
    if (r->err != 0 || r->ridx < 0) {
        return;
    }
    const size_t buffered = r->len - r->pos;
    FUZZ_CHECK(buffered <= limits.max_bytes);
    if (r->rstack[r->ridx].type != REDIS_REPLY_STRING) {
        return;
    }
    // The reader stands after the '$'. hiredis 0.14.1 reads the length with string2ll():
    // a first digit 1-9, at most 19 digits, no sign (a negative length is a nil).
    const char* p = r->buf + r->pos;
    uint64_t announced = 0;
    size_t i = 0;
    for (; i < buffered && i < 19 && p[i] >= '0' && p[i] <= '9'; i++) {
        announced = announced * 10 + uint64_t(p[i] - '0');
    }
    if (i > 0 && p[0] != '0' && i < buffered && p[i] == '\r') {
        FUZZ_CHECK(announced <= limits.max_bytes);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 2) {
        return 0;
    }
    const bool pubsub = data[0] & 1;
    int pending = (data[0] >> 1) & 7;
    ReplyLimits limits;
    if (data[0] & 16) {
        limits.max_elements = 16;
        limits.max_bytes = 64;
    }
    const size_t first_zones = 1 + ((data[0] >> 5) & 7);
    const size_t step = data[1] == 0 ? size : data[1];
    const char* stream = reinterpret_cast<const char*>(data + 2);
    const size_t len = size - 2;

    redisReader* reader = redisReaderCreate();
    {
        ReplyGuard guard(pubsub ? ReplyGuard::Mode::PubSub : ReplyGuard::Mode::Commands, limits,
                         [&pending] { return pending > 0; });
        guard.attach(reader);
        bool open = true;
        bool refused = false;
        for (size_t off = 0; open && off < len; off += step) {
            size_t chunk = std::min(step, len - off);
            if (redisReaderFeed(reader, stream + off, chunk) != REDIS_OK) {
                break;
            }
            for (;;) {
                void* out = nullptr;
                if (redisReaderGetReply(reader, &out) != REDIS_OK) {
                    open = false;  // a protocol error, or the guard refused: disconnect
                    break;
                }
                if (out == nullptr) {
                    break;
                }
                auto* r = static_cast<redisReply*>(out);
                if (pending > 0) {
                    pending--;
                } else if (pubsub) {
                    if (r->type == REDIS_REPLY_ERROR) {
                        open = false;  // the subscriber disconnects
                    } else {
                        FUZZ_CHECK(pubsub_survivable(r));
                    }
                } else {
                    FUZZ_CHECK(false);  // the guard lets no reply through that nobody awaits
                }
                Reply reply;
                convert_reply(r, reply);
                freeReplyObject(r);
                FUZZ_CHECK(total_elements(reply) <= limits.max_elements);
                parse_all(reply, first_zones);
                if (!open) {
                    break;
                }
            }
            if (open && !guard.check_buffered()) {
                FUZZ_CHECK(!guard.violation().empty());
                refused = true;
                open = false;  // the connection drops the socket
            } else if (open) {
                check_buffered(reader, limits);
            }
        }
        // A violation makes hiredis' reader fail: its error and the guard's agree.
        if (!guard.violation().empty() && !refused) {
            FUZZ_CHECK(reader->err != 0);
        }
        guard.detach();
    }
    redisReaderFree(reader);
    return 0;
}
