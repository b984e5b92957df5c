// A fake Redis server for tests of what the client does when the server misbehaves: a thread
// accepting connections on a free loopback port. It reads commands (RESP arrays of bulk
// strings, as hiredis sends them) and answers PING, AUTH, SELECT, ROLE, INFO and SCRIPT LOAD as
// a standalone Redis primary does (unless set_handshake() takes them over); every other command
// goes to the test's answer function, whose bytes are sent verbatim -- a reply too many, an array
// header announcing 2^31 elements, garbage -- and after which the connection may be closed.
// set_greeting() bytes are sent to each new connection before anything else. Answer functions run
// on the server's thread.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "redis/address.hpp"
#include "redis/script.hpp"

namespace throttle::redis::test {

class FakeServer {
   public:
    struct Answer {
        std::string bytes;   // sent as they are (may be empty: no reply at all)
        bool close = false;  // then close the connection
    };
    using Handler = std::function<Answer(const std::vector<std::string>& argv)>;

    explicit FakeServer(Handler handler) : handler_(std::move(handler)) {
        listen_ = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(listen_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        sockaddr_in sin{};
        sin.sin_family = AF_INET;
        sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        bind(listen_, reinterpret_cast<sockaddr*>(&sin), sizeof(sin));
        socklen_t len = sizeof(sin);
        getsockname(listen_, reinterpret_cast<sockaddr*>(&sin), &len);
        port_ = ntohs(sin.sin_port);
        listen(listen_, 64);
        if (pipe(wake_) != 0) {
            wake_[0] = wake_[1] = -1;
        }
        thread_ = std::thread([this] { run(); });
    }
    ~FakeServer() {
        stop_ = true;
        if (write(wake_[1], "x", 1) != 1) {
        }
        thread_.join();
        for (Conn& c : conns_) {
            close(c.fd);
        }
        close(listen_);
        close(wake_[0]);
        close(wake_[1]);
    }
    FakeServer(const FakeServer&) = delete;
    FakeServer& operator=(const FakeServer&) = delete;

    uint16_t port() const { return port_; }
    Address address() const {
        Address a;
        a.host = "127.0.0.1";
        a.port = port_;
        return a;
    }
    // Connections accepted so far.
    int connections() const { return connections_; }
    // Commands received so far with this name (any case), handshake ones included.
    int received(const std::string& name) const {
        std::lock_guard<std::mutex> lock(mu_);
        auto it = received_.find(upper(name));
        return it == received_.end() ? 0 : it->second;
    }
    void set_handler(Handler handler) {
        std::lock_guard<std::mutex> lock(mu_);
        handler_ = std::move(handler);
    }
    // Answers PING, AUTH, SELECT, ROLE, INFO and SCRIPT LOAD too (nullptr: as Redis does).
    void set_handshake(Handler handler) {
        std::lock_guard<std::mutex> lock(mu_);
        handshake_ = std::move(handler);
    }
    void set_greeting(std::string bytes) {
        std::lock_guard<std::mutex> lock(mu_);
        greeting_ = std::move(bytes);
    }

   private:
    struct Conn {
        int fd;
        std::string in;
    };

    static std::string upper(std::string s) {
        for (char& c : s) {
            c = char(std::toupper(static_cast<unsigned char>(c)));
        }
        return s;
    }

    // One command from the front of `in`, if complete: argv, and how many bytes it took.
    static bool parse(const std::string& in, std::vector<std::string>& argv, size_t& used) {
        argv.clear();
        size_t pos = 0;
        auto line = [&](long long& n, char type) {
            if (pos >= in.size() || in[pos] != type) {
                return false;
            }
            size_t end = in.find("\r\n", pos);
            if (end == std::string::npos) {
                return false;
            }
            n = std::atoll(in.c_str() + pos + 1);
            pos = end + 2;
            return true;
        };
        long long n = 0;
        if (!line(n, '*')) {
            return false;
        }
        for (long long i = 0; i < n; i++) {
            long long len = 0;
            if (!line(len, '$') || in.size() < pos + size_t(len) + 2) {
                return false;
            }
            argv.push_back(in.substr(pos, size_t(len)));
            pos += size_t(len) + 2;
        }
        used = pos;
        return true;
    }

   public:
    // ROLE and INFO (the client's role check) as a standalone Redis primary answers them: for
    // handshake functions that script the rest.
    static Answer as_primary(const std::vector<std::string>& argv) {
        if (upper(argv[0]) == "ROLE") {
            return {"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n"};
        }
        return {bulk("# Cluster\r\ncluster_enabled:0\r\n")};
    }

   private:
    static std::string bulk(const std::string& s) {
        return "$" + std::to_string(s.size()) + "\r\n" + s + "\r\n";
    }

    Answer answer(const std::vector<std::string>& argv) {
        std::string name = argv.empty() ? "" : upper(argv[0]);
        Handler handler, handshake;
        {
            std::lock_guard<std::mutex> lock(mu_);
            received_[name]++;
            handler = handler_;
            handshake = handshake_;
        }
        bool is_handshake = name == "PING" || name == "AUTH" || name == "SELECT" ||
                            name == "ROLE" || name == "INFO" ||
                            (name == "SCRIPT" && argv.size() == 3 && upper(argv[1]) == "LOAD");
        if (is_handshake && handshake) {
            return handshake(argv);
        }
        if (name == "ROLE" || name == "INFO") {
            return as_primary(argv);
        }
        if (name == "PING") {
            return {"+PONG\r\n"};
        }
        if (name == "AUTH" || name == "SELECT") {
            return {"+OK\r\n"};
        }
        if (name == "SCRIPT" && argv.size() == 3 && upper(argv[1]) == "LOAD") {
            return {bulk(Script(argv[2]).sha())};
        }
        return handler(argv);
    }

    static bool send_all(int fd, const std::string& bytes) {
        size_t off = 0;
        while (off < bytes.size()) {
            ssize_t n = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
            if (n <= 0) {
                return false;
            }
            off += size_t(n);
        }
        return true;
    }

    // Reads what a connection sent and answers every complete command; false: close it.
    bool serve(Conn& c) {
        char buf[65536];
        ssize_t n = ::recv(c.fd, buf, sizeof(buf), 0);
        if (n <= 0) {
            return false;
        }
        c.in.append(buf, size_t(n));
        std::vector<std::string> argv;
        size_t used = 0;
        while (parse(c.in, argv, used)) {
            c.in.erase(0, used);
            Answer a = answer(argv);
            if (!send_all(c.fd, a.bytes) || a.close) {
                return false;
            }
        }
        return true;
    }

    void run() {
        while (!stop_) {
            std::vector<pollfd> fds = {{wake_[0], POLLIN, 0}, {listen_, POLLIN, 0}};
            for (const Conn& c : conns_) {
                fds.push_back({c.fd, POLLIN, 0});
            }
            if (poll(fds.data(), fds.size(), 1000) <= 0) {
                continue;
            }
            for (size_t i = fds.size(); i-- > 2;) {
                if (fds[i].revents != 0 && !serve(conns_[i - 2])) {
                    close(conns_[i - 2].fd);
                    conns_.erase(conns_.begin() + long(i - 2));
                }
            }
            if (fds[1].revents & POLLIN) {
                int fd = accept(listen_, nullptr, nullptr);
                if (fd >= 0) {
                    timeval tv{5, 0};  // a client that stops reading cannot hang the server
                    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
                    std::string greeting;
                    {
                        std::lock_guard<std::mutex> lock(mu_);
                        greeting = greeting_;
                    }
                    if (send_all(fd, greeting)) {
                        conns_.push_back(Conn{fd, {}});
                    } else {
                        close(fd);
                    }
                    connections_++;
                }
            }
        }
    }

    int listen_ = -1;
    int wake_[2] = {-1, -1};
    uint16_t port_ = 0;
    std::atomic<bool> stop_{false};
    std::atomic<int> connections_{0};
    mutable std::mutex mu_;
    Handler handler_;
    Handler handshake_;
    std::string greeting_;
    std::map<std::string, int> received_;
    std::vector<Conn> conns_;  // the server thread's
    std::thread thread_;
};

}  // namespace throttle::redis::test
