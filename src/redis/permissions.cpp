// The permission probe (see permissions.hpp).
#include "redis/permissions.hpp"

#include <algorithm>
#include <cctype>

namespace throttle::redis {
namespace {

// acl_check_cmd checks a command line as Redis would run it: its name, then keys and channels
// where the command has them. pcall: a command this Redis does not know is not ours to judge.
constexpr std::string_view lua_probe = R"lua(
local refused = {}
if redis.acl_check_cmd == nil then return refused end
local i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  local argv = {}
  for j = 1, n do argv[j] = ARGV[i + j] end
  local ok, allowed = pcall(redis.acl_check_cmd, unpack(argv))
  if ok and not allowed then refused[#refused + 1] = table.concat(argv, ' ') end
  i = i + n + 1
end
return refused
)lua";

std::string upper(std::string_view s) {
    std::string out(s);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
    return out;
}

}  // namespace

std::vector<std::string> script_commands(std::string_view source) {
    std::vector<std::string> names;
    for (std::string_view call : {"redis.call(", "redis.pcall("}) {
        for (size_t at = source.find(call); at != std::string_view::npos;
             at = source.find(call, at + 1)) {
            size_t open = at + call.size();
            if (open >= source.size() || (source[open] != '\'' && source[open] != '"')) {
                continue;  // a name computed at run time: not ours (none today)
            }
            size_t close = source.find(source[open], open + 1);
            if (close == std::string_view::npos) {
                break;
            }
            std::string name = upper(source.substr(open + 1, close - open - 1));
            if (std::find(names.begin(), names.end(), name) == names.end()) {
                names.push_back(std::move(name));
            }
        }
    }
    return names;
}

std::vector<Argv> permission_checks(std::string_view source, std::string_view key,
                                    std::string_view channel) {
    const std::string k(key);
    std::vector<Argv> out;
    for (const std::string& name : script_commands(source)) {
        if (name == "TIME") {
            out.push_back({name});
        } else if (name == "PUBLISH") {
            out.push_back({name, std::string(channel), "0"});
        } else if (name == "INCRBY" || name == "PEXPIRE" || name == "PEXPIREAT" || name == "SET") {
            out.push_back({name, k, "1"});
        } else if (name == "GET" || name == "MGET" || name == "EXISTS" || name == "DEL" ||
                   name == "INCR") {
            out.push_back({name, k});
        } else {
            out.push_back({name});
        }
    }
    return out;
}

const Script& permission_probe_script() {
    static const Script script{std::string(lua_probe)};
    return script;
}

std::vector<std::string> permission_probe_args(const std::vector<Argv>& checks) {
    std::vector<std::string> args;
    for (const Argv& argv : checks) {
        args.push_back(std::to_string(argv.size()));
        args.insert(args.end(), argv.begin(), argv.end());
    }
    return args;
}

bool parse_permission_probe(const Reply& reply, std::vector<std::string>& refused) {
    if (reply.type != Reply::Type::Array) {
        return false;
    }
    refused.clear();
    for (const Reply& e : reply.elements) {
        if (e.type != Reply::Type::String) {
            return false;
        }
        refused.push_back(e.str);
    }
    return true;
}

}  // namespace throttle::redis
