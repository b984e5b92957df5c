// Fuzz target: bytes a Redis server sends, over a real socket, to the real connection layer
// (src/redis/connection.cpp: its reads, hiredis' reader behind our ReplyGuard, the replies
// handed to an owner in order), as the Client and the Subscriber use it. Unlike
// redis_reply.cpp, nothing of the connection is modelled: its own read loop, its handling of
// a refused reply and its destruction from inside its callbacks (the owner drops it on
// on_lost(), as the Client does) run. Every reply the owner receives goes through
// convert_reply() and every script reply parser, and must be one somebody awaited (Commands)
// or an error or a message shaped as Redis sends them (PubSub).
//
// The "server" is the accepted end of a unix socket in this process: the target connects,
// the owner appends the commands (GET k, or AUTH then SUBSCRIBE c, as the Subscriber does), the
// end of the turn writes them, then the input is written to the socket in writes of the
// chosen size, each followed by a readable event and the end of the turn.
//
// Input: two bytes of setup, then the stream.
//   byte 0  bit 0: pub/sub (AUTH, SUBSCRIBE) else commands; bits 1-3: commands sent (0..7;
//           pub/sub: bit 1 leaves AUTH out); bit 4: small limits (16 elements, 64 bytes);
//           bits 5-7: zone count for the strict batch parser's first request (1..8)
//   byte 1  how the stream arrives: 0 all at once, else in writes of that many bytes
#include <hiredis/hiredis.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "redis/connection.hpp"
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

bool is_unsubscribe_c(const redisReply* r) {
    const char* s = r->str;
    if (s[0] == 'p' || s[0] == 'P') {
        s++;
    }
    return strcasecmp(s, "unsubscribe") == 0;
}

// A reply nobody awaits on a subscribed connection, as the guard promises it.
bool pubsub_shaped(const redisReply* r) {
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 3 || r->elements > 4) {
        return false;
    }
    if (r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_STRING) {
        return false;
    }
    return !is_unsubscribe_c(r->element[0]) || r->element[2]->type == REDIS_REPLY_INTEGER;
}

struct Owner final : Connection::Owner {
    std::unique_ptr<Connection> conn;
    bool pubsub = false;
    bool auth = false;
    int commands = 0;
    int pending = 0;  // replies awaited
    bool connected = false;
    bool lost = false;
    size_t first_zones = 1;
    uint64_t max_elements = 0;

    void on_connected() noexcept override {
        connected = true;
        if (pubsub) {
            if (auth) {
                const char* argv[] = {"AUTH", "secret"};
                size_t lens[] = {4, 6};
                FUZZ_CHECK(conn->append(2, argv, lens));
                pending++;
            }
            const char* argv[] = {"SUBSCRIBE", "c"};
            size_t lens[] = {9, 1};
            FUZZ_CHECK(conn->append(2, argv, lens));
        } else {
            for (int i = 0; i < commands; i++) {
                const char* argv[] = {"GET", "k"};
                size_t lens[] = {3, 1};
                FUZZ_CHECK(conn->append(2, argv, lens));
                pending++;
            }
        }
    }
    void on_reply(redisReply* r) noexcept override {
        if (pending > 0) {
            pending--;
        } else if (pubsub) {
            FUZZ_CHECK(r->type == REDIS_REPLY_ERROR || pubsub_shaped(r));
        } else {
            FUZZ_CHECK(false);  // the guard lets no reply through that nobody awaits
        }
        Reply reply;
        convert_reply(r, reply);
        FUZZ_CHECK(total_elements(reply) <= max_elements);
        parse_all(reply, first_zones);
        if (pubsub && pending == 0 && r->type == REDIS_REPLY_ERROR) {
            conn.reset();  // the Subscriber drops the connection, from inside the callback
            lost = true;
        }
    }
    void on_lost(Connection::Loss, std::string_view message) noexcept override {
        FUZZ_CHECK(!message.empty());
        conn.reset();  // as the Client does, from inside the callback
        lost = true;
    }
    bool awaiting_reply() const noexcept override { return pending > 0; }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 2) {
        return 0;
    }
    Listener& l = Listener::listener();
    ReplyLimits limits;
    if (data[0] & 16) {
        limits.max_elements = 16;
        limits.max_bytes = 64;
    }
    Owner owner;
    owner.pubsub = data[0] & 1;
    owner.auth = !(data[0] & 2);
    owner.commands = (data[0] >> 1) & 7;
    owner.first_zones = 1 + ((data[0] >> 5) & 7);
    owner.max_elements = limits.max_elements;
    const size_t step = data[1] == 0 ? size : data[1];
    const char* stream = reinterpret_cast<const char*>(data + 2);
    const size_t len = size - 2;

    FuzzLoop loop;
    owner.conn = std::make_unique<Connection>(
        loop, owner, owner.pubsub ? ReplyGuard::Mode::PubSub : ReplyGuard::Mode::Commands, limits);
    Address a;
    a.unix_path = l.path;
    std::string error;
    FUZZ_CHECK(owner.conn->open(a, false, nullptr, error));
    const int server = accept(l.fd, nullptr, nullptr);
    FUZZ_CHECK(server >= 0);
    loop.fire(IoWatch::Writable);  // connect completion
    FUZZ_CHECK(owner.connected);
    loop.end_turn();  // the commands leave

    for (size_t off = 0; !owner.lost && off < len; off += step) {
        size_t chunk = std::min(step, len - off);
        FUZZ_CHECK(write(server, stream + off, chunk) == ssize_t(chunk));
        loop.fire(IoWatch::Readable);  // the connection may be destroyed here
        loop.end_turn();
    }
    owner.conn.reset();
    close(server);
    return 0;
}
