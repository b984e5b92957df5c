// What the module's scripts need a Redis ACL user to allow, checked once per connection
// (layer: redis). A user without `evalsha`, without a command one of our scripts calls, or
// without the keys or channels it calls them on would make every script call fail with an
// error reply; the handshake asks Redis (redis.acl_check_cmd, Redis 7) instead and the client
// fails the connection naming exactly what is refused.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "redis/reply.hpp"
#include "redis/script.hpp"

namespace throttle::redis {

using Argv = std::vector<std::string>;

// The commands `source` calls (redis.call / redis.pcall with a literal name), uppercased, each
// once, in order of first use.
std::vector<std::string> script_commands(std::string_view source);

// One command line per command `source` calls, shaped as the script calls it (arity), on
// `key` (PUBLISH on `channel`). A command without a known shape is checked by name alone.
std::vector<Argv> permission_checks(std::string_view source, std::string_view key,
                                    std::string_view channel);

// The probe: ARGV is, per check, its length then its words; it answers the refused ones,
// each as one string of its words joined by spaces ({} on a Redis without acl_check_cmd).
const Script& permission_probe_script();
std::vector<std::string> permission_probe_args(const std::vector<Argv>& checks);

// The probe's reply: false unless it is an array of strings.
bool parse_permission_probe(const Reply& reply, std::vector<std::string>& refused);

}  // namespace throttle::redis
