// Fuzz target: bytes a Redis server sends, over a real socket, to a real hiredis async context
// behind our ReplyGuard, as the Client and the Subscriber hold one. Unlike redis_reply.cpp,
// nothing of hiredis is modelled: its own dispatch (redisProcessCallbacks, the pub/sub
// callbacks) runs, and its assert()s abort the target if the guard lets through what hiredis
// cannot take. Every reply a callback receives goes through convert_reply() and every script
// reply parser.
//
// The "server" is the accepted end of a unix socket in this process: the target connects,
// sends the commands (GET k, or AUTH then SUBSCRIBE c, as the Subscriber does), writes the
// input to the socket in reads of the chosen size and lets hiredis read each one; the end of
// each turn runs the guard's check. On a violation the target drops the connection as the
// owner does.
//
// Input: two bytes of setup, then the stream.
//   byte 0  bit 0: pub/sub (AUTH, SUBSCRIBE) else commands; bits 1-3: commands sent (0..7;
//           pub/sub: bit 1 leaves AUTH out); bit 4: small limits (16 elements, 64 bytes);
//           bits 5-7: zone count for the strict batch parser's first request (1..8)
//   byte 1  how the stream arrives: 0 all at once, else in reads of that many bytes
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "redis/hiredis_reply.hpp"
#include "redis/reply_guard.hpp"
#include "reply_checks.hpp"

using namespace throttle::redis;
using namespace throttle::redis::fuzz;

namespace {

struct Listener {
    std::string path;
    int fd = -1;
    Listener() {
        path = "/tmp/throttle-fuzz-" + std::to_string(getpid()) + ".sock";
        unlink(path.c_str());
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un sa{};
        sa.sun_family = AF_UNIX;
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path.c_str());
        if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 ||
            listen(fd, 16) != 0) {
            perror("fuzz_redis_async: listen");
            std::abort();
        }
        atexit([] { unlink(listener().path.c_str()); });
    }
    static Listener& listener() {
        static Listener* l = new Listener();
        return *l;
    }
};

struct State {
    ReplyGuard* guard = nullptr;
    bool gone = false;      // hiredis freed the context
    bool violated = false;  // the guard asked its owner to drop the connection
    size_t first_zones = 1;
    uint64_t max_elements = 0;
};

void on_reply(redisAsyncContext* ac, void* r, void*) {
    auto* st = static_cast<State*>(ac->data);
    if (r == nullptr) {
        return;  // the context is being freed
    }
    Reply reply;
    convert_reply(static_cast<redisReply*>(r), reply);
    FUZZ_CHECK(total_elements(reply) <= st->max_elements);
    parse_all(reply, st->first_zones);
}

void on_disconnect(const redisAsyncContext* ac, int) {
    auto* st = static_cast<State*>(ac->data);
    st->guard->detach();  // before hiredis frees the context
    st->gone = true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 2) {
        return 0;
    }
    Listener& l = Listener::listener();
    const bool pubsub = data[0] & 1;
    const int commands = (data[0] >> 1) & 7;
    ReplyLimits limits;
    if (data[0] & 16) {
        limits.max_elements = 16;
        limits.max_bytes = 64;
    }
    State st;
    st.first_zones = 1 + ((data[0] >> 5) & 7);
    st.max_elements = limits.max_elements;
    const size_t step = data[1] == 0 ? size : data[1];
    const char* stream = reinterpret_cast<const char*>(data + 2);
    const size_t len = size - 2;

    redisAsyncContext* ac = redisAsyncConnectUnix(l.path.c_str());
    FUZZ_CHECK(ac != nullptr && ac->err == 0);
    const int server = accept(l.fd, nullptr, nullptr);
    FUZZ_CHECK(server >= 0);

    FuzzLoop loop;
    {
        ReplyGuard guard(loop, pubsub ? ReplyGuard::Mode::PubSub : ReplyGuard::Mode::Commands,
                         limits, [&](std::string_view) { st.violated = true; });
        st.guard = &guard;
        ac->data = &st;
        guard.attach(ac);
        redisAsyncSetDisconnectCallback(ac, &on_disconnect);
        if (pubsub) {
            if (!(data[0] & 2)) {
                redisAsyncCommand(ac, &on_reply, nullptr, "AUTH %s", "secret");
            }
            redisAsyncCommand(ac, &on_reply, nullptr, "SUBSCRIBE %s", "c");
        } else {
            for (int i = 0; i < commands; i++) {
                redisAsyncCommand(ac, &on_reply, nullptr, "GET %s", "k");
            }
        }
        redisAsyncHandleWrite(ac);

        for (size_t off = 0; !st.gone && !st.violated && off < len; off += step) {
            size_t chunk = std::min(step, len - off);
            FUZZ_CHECK(write(server, stream + off, chunk) == ssize_t(chunk));
            redisAsyncHandleRead(ac);  // hiredis may free the context here (on_disconnect)
            loop.end_turn();
        }
        if (!st.gone) {
            guard.detach();  // the owner lets go: a violation, or the end of the input
            redisAsyncFree(ac);
        }
    }
    close(server);
    return 0;
}
