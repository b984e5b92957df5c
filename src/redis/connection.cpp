// One socket to a Redis server (layer: redis). See connection.hpp.
//
// Life: open() -> Connecting (the socket watched for write: connect completion) -> [TLS:
// Handshake, the directions SSL_do_handshake asks for] -> Open (read always wanted; write
// wanted only while the output buffer could not be written at once, or TLS needs to write to
// read) -> Closed by lost(), which tells the owner. With TLS, every event on an open
// connection reads until TLS would block, then writes what is buffered: a read may need a
// write and a write a read (WANT_READ / WANT_WRITE), and one handler serves both. Callbacks run
// inside handle() or the flush Deferred; `dead_` points at a flag of that frame, which the
// destructor sets, so that an owner destroying the Connection from a callback is noticed and
// nothing is touched afterwards.
#include "redis/connection.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <hiredis/read.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
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

// KIND, n's decimal digits and CRLF at p, in [p, end); returns the end of what it wrote.
char* put_number(char* p, char* end, char kind, size_t n) noexcept {
    *p++ = kind;
    p = std::to_chars(p, end, n).ptr;
    *p++ = '\r';
    *p++ = '\n';
    return p;
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
    if (ssl_ != nullptr) {
        SSL_free(ssl_);  // no close_notify: Redis needs none, and the peer may be gone
    }
    if (fd_ >= 0) {
        ::close(fd_);
    }
    guard_.detach();
    redisReaderFree(reader_);
}

bool Connection::open(const Address& a, bool keep_alive, std::shared_ptr<const TlsContext> tls,
                      std::string& error) noexcept {
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
    tls_ = std::move(tls);
    if (tls_ != nullptr && !start_tls(a, error)) {
        watch_.reset();
        ::close(fd_);
        fd_ = -1;
        return false;
    }
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
        // `need` is exact: grow once, then write in place (one append per piece cost about
        // as much as the rest of the command's path).
        const size_t at = out_.size();
        out_.resize(at + need);
        char* p = &out_[at];
        char* end = out_.data() + out_.size();
        p = put_number(p, end, '*', argc);
        for (size_t i = 0; i < argc; i++) {
            p = put_number(p, end, '$', lens[i]);
            if (lens[i] > 0) {
                std::memcpy(p, argv[i], lens[i]);
                p += lens[i];
            }
            *p++ = '\r';
            *p++ = '\n';
        }
    } catch (...) {
        return false;  // resize() threw: nothing appended
    }
    if (state_ == State::Open) {
        flush_->post();
    }
    return true;
}

bool Connection::append_raw(std::string_view resp) noexcept {
    try {
        if (out_pos_ > 0 && out_pos_ == out_.size()) {
            out_.clear();
            out_pos_ = 0;
        }
        out_.append(resp);
    } catch (...) {
        return false;  // append() threw: nothing appended
    }
    if (state_ == State::Open) {
        flush_->post();
    }
    return true;
}

// The SSL object for the socket: SNI and the name to verify (tls.hpp says which).
bool Connection::start_tls(const Address& a, std::string& error) noexcept {
    ERR_clear_error();
    ssl_ = SSL_new(tls_->ctx());
    BIO* bio = ssl_ != nullptr ? tls_->socket_bio(fd_) : nullptr;
    if (bio == nullptr) {
        error = cat("TLS: ", tls_errors());
        return false;
    }
    SSL_set_bio(ssl_, bio, bio);  // the SSL owns it now
    SSL_set_connect_state(ssl_);
    const TlsSettings& t = tls_->settings();
    if (!t.server_name.empty() && SSL_set_tlsext_host_name(ssl_, t.server_name.c_str()) != 1) {
        error = cat("TLS: server name \"", t.server_name, "\": ", tls_errors());
        return false;
    }
    if (t.verify) {
        X509_VERIFY_PARAM* param = SSL_get0_param(ssl_);
        X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        int ok = 1;
        if (!t.server_name.empty()) {
            ok = X509_VERIFY_PARAM_set1_host(param, t.server_name.c_str(), 0);
        } else if (!a.is_unix()) {
            ok = X509_VERIFY_PARAM_set1_ip_asc(param, a.host.c_str());
        }
        if (ok != 1) {
            error = cat("TLS: cannot verify the name: ", tls_errors());
            return false;
        }
    }
    return true;
}

void Connection::handle(int event) noexcept {
    Frame frame(dead_);
    switch (state_) {
        case State::Connecting:
            connect_done();
            return;
        case State::Handshake:
            handshake();
            return;
        case State::Open:
            if (ssl_ == nullptr) {
                if (event == IoWatch::Readable) {
                    read_all();
                } else {
                    flush();
                }
                return;
            }
            if (read_all() && state_ == State::Open) {
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
    if (ssl_ != nullptr) {
        state_ = State::Handshake;
        handshake();
        return;
    }
    opened();
}

void Connection::opened() noexcept {
    state_ = State::Open;
    watch_->want_read(true);
    watch_->want_write(false);
    if (out_pos_ < out_.size()) {
        flush_->post();
    }
    owner_.on_connected();
}

// One step of the TLS handshake; the directions it waits for are watched.
void Connection::handshake() noexcept {
    ERR_clear_error();
    errno = 0;
    int rc = SSL_do_handshake(ssl_);
    if (rc == 1) {
        opened();
        return;
    }
    int err = SSL_get_error(ssl_, rc);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
        watch_->want_read(err == SSL_ERROR_WANT_READ);
        watch_->want_write(err == SSL_ERROR_WANT_WRITE);
        return;
    }
    int saved = errno;
    std::string why;
    long verify = SSL_get_verify_result(ssl_);
    if (verify != X509_V_OK) {
        ERR_clear_error();
        why = cat("certificate verify failed: ", X509_verify_cert_error_string(verify));
    } else {
        why = tls_errors();
        if (why.empty()) {
            why = err == SSL_ERROR_SYSCALL && saved != 0 ? error_text(saved)
                                                         : "the server closed the connection";
        }
    }
    lost(Loss::Connect, cat("cannot connect: TLS handshake failed: ", why));
}

// Bytes read (> 0); 0: would block; -1: the connection ended, `why` says how.
ssize_t Connection::read_some(char* buf, size_t len, std::string& why) noexcept {
    if (ssl_ == nullptr) {
        for (;;) {
            ssize_t n = ::read(fd_, buf, len);
            if (n > 0) {
                return n;
            }
            if (n == 0) {
                why = "Server closed the connection";
                return -1;
            }
            if (errno == EINTR) {
                continue;
            }
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                return 0;
            }
            why = error_text(errno);
            return -1;
        }
    }
    ERR_clear_error();
    errno = 0;
    int n = SSL_read(ssl_, buf, int(len));
    read_wants_write_ = false;
    if (n > 0) {
        return n;
    }
    int saved = errno;
    switch (SSL_get_error(ssl_, n)) {
        case SSL_ERROR_WANT_READ:
            return 0;
        case SSL_ERROR_WANT_WRITE:
            read_wants_write_ = true;
            return 0;
        case SSL_ERROR_ZERO_RETURN:
            why = "Server closed the connection (TLS close_notify)";
            return -1;
        case SSL_ERROR_SYSCALL:
            why = tls_errors();
            if (why.empty()) {
                why = saved != 0 ? error_text(saved) : "Server closed the connection";
            }
            return -1;
        default:
            why = cat("TLS: ", tls_errors());
            return -1;
    }
}

// Bytes written (> 0); 0: would block; -1: the connection failed, `why` says how.
ssize_t Connection::write_some(const char* buf, size_t len, std::string& why) noexcept {
    write_wants_write_ = false;
    if (ssl_ == nullptr) {
        for (;;) {
            ssize_t n = ::send(fd_, buf, len, MSG_NOSIGNAL);
            if (n > 0) {
                return n;
            }
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                write_wants_write_ = true;
                return 0;
            }
            why = error_text(n < 0 ? errno : EPIPE);
            return -1;
        }
    }
    ERR_clear_error();
    errno = 0;
    int chunk = len > (1u << 30) ? 1 << 30 : int(len);
    int n = SSL_write(ssl_, buf, chunk);
    if (n > 0) {
        return n;
    }
    int saved = errno;
    switch (SSL_get_error(ssl_, n)) {
        case SSL_ERROR_WANT_READ:
            return 0;  // read is always wanted: the next readable event writes again
        case SSL_ERROR_WANT_WRITE:
            write_wants_write_ = true;
            return 0;
        case SSL_ERROR_SYSCALL:
            why = tls_errors();
            if (why.empty()) {
                why = error_text(saved != 0 ? saved : EPIPE);
            }
            return -1;
        default:
            why = cat("TLS: ", tls_errors());
            return -1;
    }
}

// Reads until the socket would block, handing each complete reply to the owner as soon as it
// is parsed (a reply's handling may append commands: they leave at the end of the turn).
bool Connection::read_all() noexcept {
    char buf[16384];
    bool* dead = dead_;
    for (;;) {
        std::string why;
        ssize_t n = read_some(buf, sizeof(buf), why);
        if (n > 0) {
            size_t used = 0;
            if (!quick(buf, size_t(n), used)) {
                return false;
            }
            if (used == size_t(n)) {
                continue;
            }
            if (redisReaderFeed(reader_, buf + used, size_t(n) - used) != REDIS_OK) {
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
            return true;
        }
        lost(Loss::Io, cat("connection lost: ", why));
        return false;
    }
}

// The replies at the start of buf[0..n) the guard parses without the reader (quick_reply()),
// to the owner in order; `used` their bytes, the rest is for the reader. False when the
// connection ended (or the Connection is gone).
bool Connection::quick(const char* buf, size_t n, size_t& used) noexcept {
    bool* dead = dead_;
    used = 0;
    for (;;) {
        size_t len = 0;
        redisReply* reply = guard_.quick_reply(buf + used, n - used, len);
        if (reply == nullptr) {
            return true;
        }
        used += len;
        owner_.on_reply(reply);
        if (*dead) {
            freeReplyObject(reply);  // the guard went with the Connection
            return false;
        }
        guard_.recycle(reply);
        if (state_ != State::Open) {
            return false;
        }
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
        if (*dead) {
            freeReplyObject(reply);  // the guard went with the Connection
            return false;
        }
        guard_.recycle(static_cast<redisReply*>(reply));  // its objects serve the next replies
        if (state_ != State::Open) {
            return false;
        }
    }
}

bool Connection::flush() noexcept {
    if (state_ != State::Open) {
        return false;
    }
    while (out_pos_ < out_.size()) {
        std::string why;
        ssize_t n = write_some(out_.data() + out_pos_, out_.size() - out_pos_, why);
        if (n > 0) {
            out_pos_ += size_t(n);
            continue;
        }
        if (n == 0) {
            watch_->want_write(write_wants_write_ || read_wants_write_);
            return true;
        }
        lost(Loss::Io, cat("connection lost: ", why));
        return false;
    }
    if (out_.capacity() > (1u << 20)) {
        std::string().swap(out_);  // a big burst once: give the memory back
    } else {
        out_.clear();
    }
    out_pos_ = 0;
    watch_->want_write(read_wants_write_);
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
