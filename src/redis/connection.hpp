// One socket to a Redis server (layer: redis): the connection layer under Client and
// Subscriber. It owns the socket (non-blocking connect over TCP or a unix socket, TCP_NODELAY,
// optional TCP keepalive), an output buffer of RESP-formatted commands written at the end of
// the loop turn they were issued in (one write for a turn's commands: pipelining), and the
// reply parser: hiredis' redisReader behind a ReplyGuard (reply_guard.hpp; the guard parses the
// common shapes itself while the reader holds nothing: ReplyGuard::quick_reply), each complete
// reply handed to the owner in order; optionally TLS (tls.hpp: OpenSSL on the fd, a non-blocking
// handshake with SNI, certificate and host name verification; WANT_READ / WANT_WRITE in both
// directions). It watches the socket through the Loop (loop.hpp) and reads until the socket
// (or TLS) would block, so either loop (nginx's, libevent's) drives the same code.
//
// hiredis 0.14's async context is not used: it does its own read()/write() on the fd, which
// leaves no room for TLS (Debian 12's hiredis has none). Doing the I/O here keeps hiredis for
// what it is good at (parsing RESP) and keeps src/redis independent of nginx.
//
// The owner's callbacks come from the loop, never from inside open() or append(). Any of them
// may destroy the Connection: nothing touches it afterwards. on_lost() is the last callback of
// a connection (it is closed then; the owner destroys it). Single-threaded, like the Loop.
// Writes never raise SIGPIPE (send() with MSG_NOSIGNAL, TLS included: TlsContext::socket_bio).
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "redis/address.hpp"
#include "redis/loop.hpp"
#include "redis/reply_guard.hpp"
#include "redis/tls.hpp"

struct redisReader;
struct redisReply;
typedef struct ssl_st SSL;

namespace throttle::redis {

class Connection {
   public:
    // Why a connection ended: it never connected (Connect), the socket failed or the server
    // closed it (Io), or the server broke the protocol (Protocol: garbage, a reply beyond the
    // limits, a reply nobody awaits).
    enum class Loss : uint8_t { Connect, Io, Protocol };

    class Owner {
       public:
        // Connected (with TLS: the handshake done, the server verified): commands may be appended.
        virtual void on_connected() noexcept = 0;
        // One complete reply, in the order of the commands; freed after the call.
        virtual void on_reply(redisReply* reply) noexcept = 0;
        // The connection is closed; `message` says why, for the log ("cannot connect: ...",
        // "connection lost: ...", "connection dropped: ...").
        virtual void on_lost(Loss loss, std::string_view message) noexcept = 0;
        // Whether a command awaits a reply now (for the ReplyGuard).
        virtual bool awaiting_reply() const noexcept = 0;

       protected:
        ~Owner() = default;
    };

    // May throw std::bad_alloc.
    Connection(Loop& loop, Owner& owner, ReplyGuard::Mode mode, ReplyLimits limits);
    ~Connection();  // closes the socket; no callback
    Connection(const Connection&) = delete;
    Connection& operator=(const Connection&) = delete;

    // Starts connecting to `address` (a valid one), over TLS with `tls` (nullptr: plain). False,
    // with `error` saying why (e.g. "No such file or directory"), when that failed at once:
    // nothing is watched, no callback.
    bool open(const Address& address, bool keepalive, std::shared_ptr<const TlsContext> tls,
              std::string& error) noexcept;

    // Appends one command (argv[0] is its name) to the output buffer, sent at the end of the
    // turn once connected. False (nothing appended) when out of memory.
    bool append(size_t argc, const char* const* argv, const size_t* lens) noexcept;
    // Appends commands already in RESP (whole commands). False (nothing appended) when out of
    // memory.
    bool append_raw(std::string_view resp) noexcept;

    bool connected() const noexcept { return state_ == State::Open; }
    // Connected, the TLS handshake under way.
    bool handshaking() const noexcept { return state_ == State::Handshake; }

   private:
    enum class State : uint8_t { Idle, Connecting, Handshake, Open, Closed };

    void handle(int event) noexcept;
    void connect_done() noexcept;
    bool start_tls(const Address& address, std::string& error) noexcept;
    void handshake() noexcept;
    void opened() noexcept;
    ssize_t read_some(char* buf, size_t len, std::string& why) noexcept;
    ssize_t write_some(const char* buf, size_t len, std::string& why) noexcept;
    bool read_all() noexcept;
    bool quick(const char* buf, size_t n, size_t& used) noexcept;
    bool drain() noexcept;
    bool flush() noexcept;
    void lost(Loss loss, std::string_view message) noexcept;

    Loop& loop_;
    Owner& owner_;
    ReplyGuard guard_;
    redisReader* reader_ = nullptr;
    std::unique_ptr<IoWatch> watch_;
    std::unique_ptr<Deferred> flush_;
    int fd_ = -1;
    std::shared_ptr<const TlsContext> tls_;
    SSL* ssl_ = nullptr;
    bool read_wants_write_ = false;   // TLS: SSL_read needs the socket writable
    bool write_wants_write_ = false;  // SSL_write (or send) needs the socket writable
    State state_ = State::Idle;
    bool* dead_ = nullptr;  // set while a callback runs: the destructor marks it
    std::string out_;       // RESP to write, from out_pos_
    size_t out_pos_ = 0;
};

}  // namespace throttle::redis
