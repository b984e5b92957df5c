// What a Redis command's callback receives (layer: redis): either a reply, copied out of
// hiredis into plain C++ values, or the reason there is none. Callers never see hiredis types.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace throttle::redis {

struct Reply {
    enum class Type : uint8_t { Nil, Integer, String, Status, Error, Array };

    Type type = Type::Nil;
    long long integer = 0;        // Integer
    std::string str;              // String (binary safe), Status, Error
    std::vector<Reply> elements;  // Array (elements may be Nil, nested arrays, ...)

    bool is_nil() const noexcept { return type == Type::Nil; }
    bool is_error() const noexcept { return type == Type::Error; }
    // An error reply whose first word is `code` ("NOSCRIPT", "WRONGTYPE", ...).
    bool is_error(std::string_view code) const noexcept;
};

// Why a command got no reply. None: the reply is valid (it may still be an error reply).
enum class Failure : uint8_t {
    None,
    Timeout,       // no reply before the command's deadline (the server may still run it)
    Disconnected,  // the connection failed or was lost, or is being re-established (backoff)
    CircuitOpen,   // the circuit breaker is open: the network was not touched
    Shutdown,      // the client was closed or destroyed
    Invalid,       // the command was refused locally (no arguments, (P)SUBSCRIBE, MONITOR)
};

const char* to_string(Failure f) noexcept;
const char* to_string(Reply::Type t) noexcept;

struct Result {
    Failure failure = Failure::None;
    Reply reply;          // meaningful only when ok()
    bool unsent = false;  // failed before it was written to a connection: it cannot have run

    bool ok() const noexcept { return failure == Failure::None; }
};

}  // namespace throttle::redis
