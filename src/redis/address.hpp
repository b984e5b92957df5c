// Where the Redis server is: a numeric IPv4/IPv6 address and port, or a unix socket path
// (layer: redis). Host names are resolved by the owner at configuration time (hiredis 0.14 would
// block in getaddrinfo), so only numeric addresses are accepted here.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace throttle::redis {

struct Address {
    std::string host;       // numeric IPv4 or IPv6, no brackets; empty for a unix socket
    uint16_t port = 6379;   // TCP only
    std::string unix_path;  // non-empty: a unix socket

    bool is_unix() const noexcept { return !unix_path.empty(); }
    bool valid() const noexcept;    // a numeric host and a port, or a unix path
    std::string to_string() const;  // "127.0.0.1:6379", "[::1]:6379", "unix:/run/redis.sock"

    // Parses the forms to_string() prints; "IPv4" or "[IPv6]" alone means port 6379.
    static bool parse(std::string_view text, Address& out);
};

}  // namespace throttle::redis
