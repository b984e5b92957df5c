// Numeric Redis addresses (layer: redis).
#include "redis/address.hpp"

#include <arpa/inet.h>

namespace throttle::redis {
namespace {

bool numeric_host(const std::string& host) noexcept {
    unsigned char buf[sizeof(in6_addr)];
    return inet_pton(AF_INET, host.c_str(), buf) == 1 ||
           inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

bool parse_port(std::string_view s, uint16_t& port) noexcept {
    if (s.empty() || s.size() > 5) {
        return false;
    }
    unsigned v = 0;
    for (char ch : s) {
        if (ch < '0' || ch > '9') {
            return false;
        }
        v = v * 10 + unsigned(ch - '0');
    }
    if (v == 0 || v > 65535) {
        return false;
    }
    port = uint16_t(v);
    return true;
}

}  // namespace

bool Address::valid() const noexcept {
    if (is_unix()) {
        return host.empty();
    }
    return port != 0 && numeric_host(host);
}

std::string Address::to_string() const {
    if (is_unix()) {
        return "unix:" + unix_path;
    }
    if (host.find(':') != std::string::npos) {
        return "[" + host + "]:" + std::to_string(port);
    }
    return host + ":" + std::to_string(port);
}

bool Address::parse(std::string_view text, Address& out) {
    Address a;
    if (text.substr(0, 5) == "unix:") {
        a.unix_path = std::string(text.substr(5));
        if (a.unix_path.empty()) {
            return false;
        }
        out = std::move(a);
        return true;
    }
    std::string_view host = text;
    std::string_view port;
    if (!text.empty() && text.front() == '[') {
        size_t close = text.find(']');
        if (close == std::string_view::npos) {
            return false;
        }
        host = text.substr(1, close - 1);
        std::string_view rest = text.substr(close + 1);
        if (!rest.empty()) {
            if (rest.front() != ':') {
                return false;
            }
            port = rest.substr(1);
            if (port.empty()) {
                return false;
            }
        }
    } else {
        size_t colon = text.rfind(':');
        if (colon != std::string_view::npos) {
            if (text.find(':') != colon) {
                return false;  // a bare IPv6 address needs brackets
            }
            host = text.substr(0, colon);
            port = text.substr(colon + 1);
            if (port.empty()) {
                return false;
            }
        }
    }
    a.host = std::string(host);
    if (!port.empty() && !parse_port(port, a.port)) {
        return false;
    }
    if (!a.valid()) {
        return false;
    }
    out = std::move(a);
    return true;
}

}  // namespace throttle::redis
