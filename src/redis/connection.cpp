// One socket to a Redis server (layer: redis). See connection.hpp.
//
// Life: open() -> Connecting (the socket watched for write: connect completion) -> Open (read
// always wanted; write wanted only while the output buffer could not be written at once) ->
// Closed by lost(), which tells the owner. Callbacks run inside handle() or the flush
// Deferred; `dead_` points at a flag of that frame, which the destructor sets, so that an owner
// destroying the Connection from a callback is noticed and nothing is touched afterwards.
#include "redis/connection.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <new>
#include <utility>

#include "redis/message.hpp"

namespace throttle::redis {
namespace {

using message::cat;

// Keepalive on an idle TCP connection: a peer gone without a FIN/RST (a host down, a NAT entry
// dropped) is noticed after about 15 + 3 * 5 s. Best effort: a failure changes nothing else.
void keepalive(int fd) noexcept {
    int on = 1, idle = 15, interval = 5, count = 3;
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count));
}

std::string error_text(int err) {
    char buf[128];
    // GNU strerror_r: returns the message (maybe not in buf).
    return strerror_r(err, buf, sizeof(buf));
}

// Marks the frame of a callback: if the Connection is destroyed meanwhile, `dead` says so.
// The slot holds the address of `dead` only while the frame lives (the destructor puts the
// outer one back), which GCC 12's -Wdangling-pointer cannot see.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdangling-pointer"
#endif
class Frame {
   public:
    explicit Frame(bool*& slot) noexcept : slot_(slot), outer_(slot) { slot_ = &dead; }
    ~Frame() {
        if (dead) {
            if (outer_ != nullptr) {
                *outer_ = true;  // the slot is gone with its Connection
            }
        } else {
            slot_ = outer_;
        }
    }
    Frame(const Frame&) = delete;
    Frame& operator=(const Frame&) = delete;
    bool dead = false;

   private:
    bool*& slot_;
    bool* outer_;
};
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#pragma GCC diagnostic pop
#endif

size_t digits(size_t n) noexcept {
    size_t d = 1;
    while (n >= 10) {
        n /= 10;
        d++;
    }
    return d;
}

void put_number(std::string& out, char kind, size_t n) {
    char buf[24];
    buf[0] = kind;
    auto res = std::to_chars(buf + 1, buf + sizeof(buf) - 2, n);
    res.ptr[0] = '\r';
    res.ptr[1] = '\n';
    out.append(buf, size_t(res.ptr + 2 - buf));
}

}  // namespace

Connection::Connection(Loop& loop, Owner& owner, ReplyGuard::Mode mode, ReplyLimits limits)
    : loop_(loop), owner_(owner), guard_(mode, limits, [this] { return owner_.awaiting_reply(); }) {
    reader_ = redisReaderCreate();
    if (reader_ == nullptr) {
        throw std::bad_alloc();
    }
    guard_.attach(reader_);
    flush_ = loop_.create_deferred([this] {
        Frame frame(dead_);
        flush();
    });
}

Connection::~Connection() {
    if (dead_ != nullptr) {
        *dead_ = true;
    }
    watch_.reset();  // before the fd is closed
    if (fd_ >= 0) {
        ::close(fd_);
    }
    guard_.detach();
    redisReaderFree(reader_);
}

bool Connection::open(const Address& a, bool keep_alive, std::string& error) noexcept {
    sockaddr_storage ss{};
    socklen_t len = 0;
    int family = AF_UNIX;
    if (a.is_unix()) {
        auto* un = reinterpret_cast<sockaddr_un*>(&ss);
        if (a.unix_path.size() >= sizeof(un->sun_path)) {
            error = "the unix socket path is too long";
            return false;
        }
        un->sun_family = AF_UNIX;
        std::memcpy(un->sun_path, a.unix_path.c_str(), a.unix_path.size() + 1);
        len = socklen_t(sizeof(sockaddr_un));
    } else {
        auto* in4 = reinterpret_cast<sockaddr_in*>(&ss);
        auto* in6 = reinterpret_cast<sockaddr_in6*>(&ss);
        if (inet_pton(AF_INET, a.host.c_str(), &in4->sin_addr) == 1) {
            family = in4->sin_family = AF_INET;
            in4->sin_port = htons(a.port);
            len = sizeof(sockaddr_in);
        } else if (inet_pton(AF_INET6, a.host.c_str(), &in6->sin6_addr) == 1) {
            family = in6->sin6_family = AF_INET6;
            in6->sin6_port = htons(a.port);
            len = sizeof(sockaddr_in6);
        } else {
            error = "not a numeric address";
            return false;
        }
    }
    int fd = ::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        error = error_text(errno);
        return false;
    }
    if (family != AF_UNIX) {
        int on = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
        if (keep_alive) {
            keepalive(fd);
        }
    }
    int rc;
    do {
        rc = ::connect(fd, reinterpret_cast<sockaddr*>(&ss), len);
    } while (rc != 0 && errno == EINTR);
    if (rc != 0 && errno != EINPROGRESS) {
        error = error_text(errno);
        ::close(fd);
        return false;
    }
    try {
        watch_ = loop_.watch(fd, [this](int event) { handle(event); });
    } catch (...) {
        watch_.reset();
    }
    if (!watch_) {
        error = "the event loop did not take the socket";
        ::close(fd);
        return false;
    }
    fd_ = fd;
    state_ = State::Connecting;
    watch_->want_write(true);  // connect completion (also when connect() returned 0)
    return true;
}

bool Connection::append(size_t argc, const char* const* argv, const size_t* lens) noexcept {
    size_t need = 1 + digits(argc) + 2;
    for (size_t i = 0; i < argc; i++) {
        need += 1 + digits(lens[i]) + 2 + lens[i] + 2;
    }
    try {
        if (out_pos_ > 0 && out_pos_ == out_.size()) {
            out_.clear();
            out_pos_ = 0;
        }
        out_.reserve(out_.size() + need);
        put_number(out_, '*', argc);
        for (size_t i = 0; i < argc; i++) {
            put_number(out_, '$', lens[i]);
            out_.append(argv[i], lens[i]);
            out_.append("\r\n", 2);
        }
    } catch (...) {
        return false;  // reserve() threw: nothing appended
    }
    if (state_ == State::Open) {
        flush_->post();
    }
    return true;
}

void Connection::handle(int event) noexcept {
    Frame frame(dead_);
    switch (state_) {
        case State::Connecting:
            connect_done();
            return;
        case State::Open:
            if (event == IoWatch::Readable) {
                read_all();
            } else {
                flush();
            }
            return;
        case State::Idle:
        case State::Closed:
            return;
    }
}

void Connection::connect_done() noexcept {
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len) != 0) {
        err = errno;
    }
    if (err == EINPROGRESS) {
        return;  // not yet (a read event before the write one)
    }
    if (err != 0) {
        lost(Loss::Connect, cat("cannot connect: ", error_text(err)));
        return;
    }
    state_ = State::Open;
    watch_->want_read(true);
    watch_->want_write(false);
    if (out_pos_ < out_.size()) {
        flush_->post();
    }
    owner_.on_connected();
}

// Reads until the socket would block, handing each complete reply to the owner as soon as it
// is parsed (a reply's handling may append commands: they leave at the end of the turn).
bool Connection::read_all() noexcept {
    char buf[16384];
    bool* dead = dead_;
    for (;;) {
        ssize_t n = ::read(fd_, buf, sizeof(buf));
        if (n > 0) {
            if (redisReaderFeed(reader_, buf, size_t(n)) != REDIS_OK) {
                lost(Loss::Io, "connection lost: out of memory");
                return false;
            }
            if (!drain() || *dead) {
                return false;
            }
            if (!guard_.check_buffered()) {
                lost(Loss::Protocol, cat("connection dropped: ", guard_.violation()));
                return false;
            }
            continue;
        }
        if (n == 0) {
            lost(Loss::Io, "connection lost: Server closed the connection");
            return false;
        }
        if (errno == EINTR) {
            continue;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return true;
        }
        lost(Loss::Io, cat("connection lost: ", error_text(errno)));
        return false;
    }
}

// The complete replies the reader holds, to the owner in order. False when the connection
// ended (or the Connection is gone).
bool Connection::drain() noexcept {
    bool* dead = dead_;
    for (;;) {
        void* reply = nullptr;
        if (redisReaderGetReply(reader_, &reply) != REDIS_OK) {
            if (!guard_.violation().empty()) {
                lost(Loss::Protocol, cat("connection dropped: ", guard_.violation()));
            } else {
                lost(reader_->err == REDIS_ERR_PROTOCOL ? Loss::Protocol : Loss::Io,
                     cat("connection lost: ", reader_->errstr));
            }
            return false;
        }
        if (reply == nullptr) {
            return true;
        }
        owner_.on_reply(static_cast<redisReply*>(reply));
        freeReplyObject(reply);
        if (*dead || state_ != State::Open) {
            return false;
        }
    }
}

bool Connection::flush() noexcept {
    if (state_ != State::Open) {
        return false;
    }
    while (out_pos_ < out_.size()) {
        ssize_t n = ::send(fd_, out_.data() + out_pos_, out_.size() - out_pos_, MSG_NOSIGNAL);
        if (n > 0) {
            out_pos_ += size_t(n);
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            watch_->want_write(true);
            return true;
        }
        lost(Loss::Io, cat("connection lost: ", error_text(n < 0 ? errno : EPIPE)));
        return false;
    }
    if (out_.capacity() > (1u << 20)) {
        std::string().swap(out_);  // a big burst once: give the memory back
    } else {
        out_.clear();
    }
    out_pos_ = 0;
    watch_->want_write(false);
    return true;
}

void Connection::lost(Loss loss, std::string_view message) noexcept {
    state_ = State::Closed;
    flush_->cancel();
    if (watch_) {
        watch_->want_read(false);
        watch_->want_write(false);
    }
    owner_.on_lost(loss, message);  // may destroy this
}

}  // namespace throttle::redis
