// Reply helpers (layer: redis).
#include "redis/reply.hpp"

namespace throttle::redis {

bool Reply::is_error(std::string_view code) const noexcept {
    if (type != Type::Error || str.size() < code.size() || str.compare(0, code.size(), code) != 0) {
        return false;
    }
    return str.size() == code.size() || str[code.size()] == ' ';
}

const char* to_string(Failure f) noexcept {
    switch (f) {
        case Failure::None:
            return "ok";
        case Failure::Timeout:
            return "timeout";
        case Failure::Disconnected:
            return "disconnected";
        case Failure::CircuitOpen:
            return "circuit open";
        case Failure::Shutdown:
            return "shutdown";
        case Failure::Invalid:
            return "invalid command";
    }
    return "unknown";
}

const char* to_string(Reply::Type t) noexcept {
    switch (t) {
        case Reply::Type::Nil:
            return "nil";
        case Reply::Type::Integer:
            return "integer";
        case Reply::Type::String:
            return "string";
        case Reply::Type::Status:
            return "status";
        case Reply::Type::Error:
            return "error";
        case Reply::Type::Array:
            return "array";
    }
    return "unknown";
}

}  // namespace throttle::redis

#include "redis/hiredis_reply.hpp"

namespace throttle::redis {

void convert_reply(const redisReply* r, Reply& out) {
    // Every field is set: `out` may be a reply used before (its buffers' capacity reused,
    // elements included).
    out.integer = 0;
    switch (r->type) {
        case REDIS_REPLY_STRING:
        case REDIS_REPLY_STATUS:
        case REDIS_REPLY_ERROR:
            out.type = r->type == REDIS_REPLY_STRING   ? Reply::Type::String
                       : r->type == REDIS_REPLY_STATUS ? Reply::Type::Status
                                                       : Reply::Type::Error;
            out.str.assign(r->str, r->len);
            out.elements.clear();
            break;
        case REDIS_REPLY_INTEGER:
            out.type = Reply::Type::Integer;
            out.integer = r->integer;
            out.str.clear();
            out.elements.clear();
            break;
        case REDIS_REPLY_ARRAY:
            out.type = Reply::Type::Array;
            out.str.clear();
            out.elements.resize(r->elements);
            for (size_t i = 0; i < r->elements; i++) {
                convert_reply(r->element[i], out.elements[i]);
            }
            break;
        default:
            out.type = Reply::Type::Nil;
            out.str.clear();
            out.elements.clear();
            break;
    }
}

}  // namespace throttle::redis
