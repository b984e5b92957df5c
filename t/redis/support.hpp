// Test support for the Redis client: a real redis-server on a free loopback port (started,
// paused, killed and restarted by the test), a blocking control connection to inspect it, a
// libevent loop driven until a condition holds or a deadline passes, and a fake loop with a
// virtual clock for exact timing tests.
#pragma once

#include <arpa/inet.h>
#include <dirent.h>
#include <event2/event.h>
#include <gtest/gtest.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "redis/client.hpp"
#include "redis/libevent_loop.hpp"

namespace throttle::redis::test {

inline uint64_t mono_ms() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1000 + uint64_t(ts.tv_nsec) / 1000000;
}

inline std::string redis_server_bin() {
    if (const char* env = std::getenv("THROTTLE_REDIS_SERVER")) {
        return env;
    }
    return REDIS_SERVER_BIN;
}

inline bool have_redis_server() {
    std::string bin = redis_server_bin();
    return !bin.empty() && access(bin.c_str(), X_OK) == 0;
}

inline uint16_t free_port() {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = 0;
    bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin));
    socklen_t len = sizeof(sin);
    getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len);
    close(fd);
    return ntohs(sin.sin_port);
}

inline bool port_is_free(uint16_t port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = htons(port);
    bool ok = bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof(sin)) == 0;
    close(fd);
    return ok;
}

// A free port P for a cluster-enabled redis-server: its cluster bus listens on P + 10000,
// which must be free too and below 65536 (an ephemeral port above 55535 would not start).
inline uint16_t free_cluster_port() {
    for (int attempt = 0; attempt < 1000; attempt++) {
        uint16_t p = free_port();
        if (p <= 55535 && port_is_free(static_cast<uint16_t>(p + 10000))) {
            return p;
        }
    }
    return 0;
}

inline int count_open_fds() {
    int n = 0;
    DIR* d = opendir("/proc/self/fd");
    while (dirent* e = readdir(d)) {
        if (e->d_name[0] != '.') {
            n++;
        }
    }
    closedir(d);
    return n - 1;  // the DIR's own descriptor
}

// Polls `pred` every few milliseconds until it holds or `timeout_ms` passes.
inline bool wait_for(const std::function<bool()>& pred, uint64_t timeout_ms) {
    uint64_t deadline = mono_ms() + timeout_ms;
    while (!pred()) {
        if (mono_ms() >= deadline) {
            return false;
        }
        usleep(2000);
    }
    return true;
}

// A blocking connection to the server, for the test to look at what the client did.
class Control {
   public:
    Control(uint16_t port, const std::string& password = "") {
        timeval tv{1, 0};
        c_ = redisConnectWithTimeout("127.0.0.1", port, tv);
        if (c_ != nullptr && c_->err == 0) {
            redisSetTimeout(c_, tv);
            if (!password.empty()) {
                freeReplyObject(redisCommand(c_, "AUTH %s", password.c_str()));
            }
        }
    }
    ~Control() {
        if (c_ != nullptr) {
            redisFree(c_);
        }
    }
    bool ok() const { return c_ != nullptr && c_->err == 0; }

    // Runs argv; returns the reply as a string ("(nil)", the integer, the text).
    std::string run(const std::vector<std::string>& argv) {
        std::vector<const char*> p;
        std::vector<size_t> l;
        for (const std::string& a : argv) {
            p.push_back(a.data());
            l.push_back(a.size());
        }
        auto* r =
            static_cast<redisReply*>(redisCommandArgv(c_, int(argv.size()), p.data(), l.data()));
        if (r == nullptr) {
            return "(no reply)";
        }
        std::string out = text(r);
        freeReplyObject(r);
        return out;
    }

    // "(nil)", the integer, the string, or "[a,b,...]" for an array.
    static std::string text(const redisReply* r) {
        switch (r->type) {
            case REDIS_REPLY_NIL:
                return "(nil)";
            case REDIS_REPLY_INTEGER:
                return std::to_string(r->integer);
            case REDIS_REPLY_ARRAY: {
                std::string out = "[";
                for (size_t i = 0; i < r->elements; i++) {
                    out += (i ? "," : "") + text(r->element[i]);
                }
                return out + "]";
            }
            default:
                return std::string(r->str, r->len);
        }
    }

    // A numeric field of INFO section.
    long long info(const std::string& section, const std::string& field) {
        std::string text = run({"INFO", section});
        std::string key = "\r\n" + field + ":";
        size_t at = text.find(key);
        if (at == std::string::npos) {
            return -1;
        }
        return std::atoll(text.c_str() + at + key.size());
    }

   private:
    redisContext* c_ = nullptr;
};

// A redis-server child process on 127.0.0.1:port, no persistence.
class RedisServer {
   public:
    explicit RedisServer(std::vector<std::string> extra = {}, uint16_t port = 0)
        : extra_(std::move(extra)), port_(port != 0 ? port : free_port()) {
        char tmpl[] = "/tmp/throttle-redis-XXXXXX";
        dir_ = mkdtemp(tmpl);
    }
    ~RedisServer() {
        stop();
        std::string cmd = "rm -rf '" + dir_ + "'";
        if (std::system(cmd.c_str()) != 0) {
        }
    }
    RedisServer(const RedisServer&) = delete;
    RedisServer& operator=(const RedisServer&) = delete;

    uint16_t port() const { return port_; }
    Address address() const {
        Address a;
        a.host = "127.0.0.1";
        a.port = port_;
        return a;
    }
    const std::string& password() const { return password_; }
    void set_password(const std::string& p) { password_ = p; }
    // Makes this a Sentinel (redis-server CONF --sentinel) monitoring 127.0.0.1:`primary` as
    // `name` (quorum 1); call before start().
    void make_sentinel(uint16_t primary, const std::string& name = "mymaster") {
        sentinel_conf_ = dir_ + "/sentinel.conf";
        FILE* f = std::fopen(sentinel_conf_.c_str(), "w");
        if (f != nullptr) {
            std::fprintf(f, "sentinel monitor %s 127.0.0.1 %u 1\n", name.c_str(),
                         unsigned(primary));
            std::fclose(f);
        }
    }

    // Starts it and waits until it answers.
    bool start() {
        std::vector<std::string> args = {redis_server_bin(),
                                         "--port",
                                         std::to_string(port_),
                                         "--bind",
                                         "127.0.0.1",
                                         "--save",
                                         "",
                                         "--appendonly",
                                         "no",
                                         "--dir",
                                         dir_,
                                         "--logfile",
                                         dir_ + "/redis.log"};
        args.insert(args.end(), extra_.begin(), extra_.end());
        if (!sentinel_conf_.empty()) {
            args.insert(args.begin() + 1, {sentinel_conf_, "--sentinel"});
        }
        pid_ = fork();
        if (pid_ == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            std::vector<char*> argv;
            for (std::string& a : args) {
                argv.push_back(a.data());
            }
            argv.push_back(nullptr);
            execv(argv[0], argv.data());
            _exit(127);
        }
        if (pid_ < 0) {
            return false;
        }
        return wait_for(
            [this] {
                Control c(port_, password_);
                return c.ok() && c.run({"PING"}) == "PONG";
            },
            10000);
    }
    void pause() { kill(pid_, SIGSTOP); }
    void resume() { kill(pid_, SIGCONT); }
    void kill9() {
        if (pid_ > 0) {
            kill(pid_, SIGKILL);
            waitpid(pid_, nullptr, 0);
            pid_ = -1;
        }
    }
    void stop() {
        if (pid_ <= 0) {
            return;
        }
        kill(pid_, SIGCONT);
        kill(pid_, SIGTERM);
        bool gone = wait_for([this] { return waitpid(pid_, nullptr, WNOHANG) == pid_; }, 5000);
        if (!gone) {
            kill9();
        }
        pid_ = -1;
    }

   private:
    std::vector<std::string> extra_;
    uint16_t port_;
    std::string dir_;
    std::string password_;
    std::string sentinel_conf_;
    pid_t pid_ = -1;
};

// A libevent loop the test drives.
class EventLoop {
   public:
    // Precise timers: the tests measure them against CLOCK_MONOTONIC.
    EventLoop() : base_(precise_base()), loop_(base_) {
        tick_ = evtimer_new(
            base_, [](evutil_socket_t, short, void*) {}, nullptr);
    }
    ~EventLoop() {
        event_free(tick_);
        event_base_free(base_);
    }
    LibeventLoop& loop() { return loop_; }

    // Runs the loop until `pred` holds (true) or `timeout_ms` passes (false).
    bool run_until(const std::function<bool()>& pred, uint64_t timeout_ms) {
        uint64_t deadline = mono_ms() + timeout_ms;
        while (!pred()) {
            uint64_t now = mono_ms();
            if (now >= deadline) {
                return false;
            }
            run_once(std::min<uint64_t>(deadline - now, 10));
        }
        return true;
    }
    // Runs the loop for `ms` whatever happens.
    void run_for(uint64_t ms) {
        uint64_t deadline = mono_ms() + ms;
        run_until([&] { return mono_ms() >= deadline; }, ms + 1000);
    }
    // One loop turn, waiting at most `max_wait_ms` for something to happen.
    void run_once(uint64_t max_wait_ms) {
        timeval tv{time_t(max_wait_ms / 1000), suseconds_t((max_wait_ms % 1000) * 1000)};
        evtimer_add(tick_, &tv);
        event_base_loop(base_, EVLOOP_ONCE);
    }

   private:
    static event_base* precise_base() {
        event_config* cfg = event_config_new();
        event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
        event_base* base = event_base_new_with_config(cfg);
        event_config_free(cfg);
        return base;
    }

    event_base* base_;
    LibeventLoop loop_;
    event* tick_;
};

// A loop with a virtual clock: timers fire only when the test advances time, deferred work
// when the test ends the turn (end_turn(), or advance_to()). It takes no socket (watch()
// fails), so it suits clients whose every connection attempt fails at once.
class FakeLoop final : public Loop {
   public:
    std::unique_ptr<Deferred> create_deferred(std::function<void()> handler) override {
        auto d = std::make_unique<FakeDeferred>(this, std::move(handler));
        deferred_.push_back(d.get());
        return d;
    }
    // The end of the turn: runs posted work, in posting order, until none is posted.
    void end_turn() {
        for (;;) {
            FakeDeferred* next = nullptr;
            for (FakeDeferred* d : deferred_) {
                if (d->is_posted && (next == nullptr || d->seq < next->seq)) {
                    next = d;
                }
            }
            if (next == nullptr) {
                return;
            }
            next->is_posted = false;
            next->handler();
        }
    }

    uint64_t now_ms() noexcept override { return now_; }
    std::unique_ptr<IoWatch> watch(int, std::function<void(int)>) override {
        watches++;
        return nullptr;
    }
    std::unique_ptr<Timer> create_timer(std::function<void()> handler) override {
        auto t = std::make_unique<FakeTimer>(this, std::move(handler));
        timers_.push_back(t.get());
        return t;
    }

    // The earliest armed expiry, or UINT64_MAX.
    uint64_t next_expiry() const {
        uint64_t at = UINT64_MAX;
        for (const FakeTimer* t : timers_) {
            if (t->armed) {
                at = std::min(at, t->at);
            }
        }
        return at;
    }
    // Fires, in order, every timer due by `t` (each its own turn); the clock ends at `t`.
    void advance_to(uint64_t t) {
        end_turn();
        for (;;) {
            FakeTimer* next = nullptr;
            for (FakeTimer* timer : timers_) {
                if (timer->armed && timer->at <= t && (next == nullptr || timer->at < next->at)) {
                    next = timer;
                }
            }
            if (next == nullptr) {
                break;
            }
            now_ = std::max(now_, next->at);
            next->armed = false;
            next->handler();
            end_turn();
        }
        now_ = std::max(now_, t);
    }

    int watches = 0;

   private:
    struct FakeTimer final : Timer {
        FakeTimer(FakeLoop* l, std::function<void()> h) : loop(l), handler(std::move(h)) {}
        ~FakeTimer() override {
            auto& v = loop->timers_;
            v.erase(std::remove(v.begin(), v.end(), this), v.end());
        }
        void start(uint64_t ms) noexcept override {
            armed = true;
            at = loop->now_ + ms;
        }
        void stop() noexcept override { armed = false; }
        bool active() const noexcept override { return armed; }

        FakeLoop* loop;
        std::function<void()> handler;
        bool armed = false;
        uint64_t at = 0;
    };

    struct FakeDeferred final : Deferred {
        FakeDeferred(FakeLoop* l, std::function<void()> h) : loop(l), handler(std::move(h)) {}
        ~FakeDeferred() override {
            auto& v = loop->deferred_;
            v.erase(std::remove(v.begin(), v.end(), this), v.end());
        }
        void post() noexcept override {
            if (!is_posted) {
                is_posted = true;
                seq = ++loop->posts_;
            }
        }
        void cancel() noexcept override { is_posted = false; }
        bool posted() const noexcept override { return is_posted; }

        FakeLoop* loop;
        std::function<void()> handler;
        bool is_posted = false;
        uint64_t seq = 0;
    };

    uint64_t now_ = 0;
    uint64_t posts_ = 0;
    std::vector<FakeTimer*> timers_;
    std::vector<FakeDeferred*> deferred_;
};

// Records what a command's callback got, how often, and whether it came from inside the call.
struct Outcome {
    int calls = 0;
    bool synchronous = false;
    uint64_t at_ms = 0;
    Result result;
};

// Tracks whether the test is inside a client call, to catch synchronous callbacks.
inline bool& inside_call() {
    static bool inside = false;
    return inside;
}

inline Callback track(Outcome& o) {
    return [&o](Result&& r) {
        o.calls++;
        o.synchronous = o.synchronous || inside_call();
        o.at_ms = mono_ms();
        o.result = std::move(r);
    };
}

inline void issue(Client& c, std::initializer_list<std::string_view> argv, Outcome& o) {
    inside_call() = true;
    c.command(argv, track(o));
    inside_call() = false;
}

// What a client logged, for a fixture to derive from: logger() collects, logged() counts the
// lines of a level (containing `text`), all_logs() prints them for a failure message.
struct LogCapture {
    std::vector<std::pair<LogLevel, std::string>> logs;

    Logger logger() {
        return [this](LogLevel level, std::string_view msg) {
            logs.emplace_back(level, std::string(msg));
        };
    }
    int logged(LogLevel level, const std::string& text = "") const {
        return int(std::count_if(logs.begin(), logs.end(), [&](const auto& l) {
            return l.first == level && l.second.find(text) != std::string::npos;
        }));
    }
    std::string all_logs() const {
        std::string out;
        for (const auto& l : logs) {
            out += std::to_string(int(l.first)) + " " + l.second + "\n";
        }
        return out;
    }
};

// One command, run until its callback (10 s at most).
inline Outcome call(EventLoop& ev, Client& c, std::initializer_list<std::string_view> argv) {
    Outcome o;
    issue(c, argv, o);
    EXPECT_TRUE(ev.run_until([&] { return o.calls > 0; }, 10000));
    return o;
}

}  // namespace throttle::redis::test
