// The strict and flush Lua scripts, their arguments and replies; semantics in scripts.hpp.
// No nginx header (layer: redis).
#include "redis/scripts.hpp"

#include <charconv>

namespace throttle::redis {
namespace {

// Lua 5.1 numbers are doubles. Helpers shared by both scripts:
//   int(s)     a non-negative integer argument below 2^53, or nil
//   fmt(x)     an integer as decimal bytes (tostring would print 1.7e+12)
//   idiv(a, b) floor(a / b) for integers 0 <= a < 2^53, b >= 1, exactly: fmod is exact, and
//              a - fmod(a, b) is a multiple of b, whose quotient by b is exact too
//   cdiv(a, b) ceil(a / b), 0 for a <= 0
//   count(k)   the integer stored at k, 0 when missing; raises an error reply otherwise
constexpr std::string_view lua_helpers = R"lua(
local floor, fmod = math.floor, math.fmod
local function int(s)
  local v = tonumber(s)
  if v == nil or v ~= v or v < 0 or v >= 9007199254740992 or v ~= floor(v) then
    return nil
  end
  return v
end
local function fmt(x)
  return string.format('%.0f', x)
end
local function idiv(a, b)
  return (a - fmod(a, b)) / b
end
local function cdiv(a, b)
  if a <= 0 then
    return 0
  end
  local r = fmod(a, b)
  local q = (a - r) / b
  if r > 0 then
    q = q + 1
  end
  return q
end
local function count(k)
  local v = redis.call('GET', k)
  if not v then
    return 0
  end
  local n = int(v)
  if n == nil then
    error({err = 'ERR throttle: a counter key holds no integer'})
  end
  return n
end
)lua";

// The strict script's own part; see scripts.hpp. Decisions mirror
// core::sliding_window::evaluate and core::gcra::evaluate line by line.
constexpr std::string_view lua_strict = R"lua(
local n = #KEYS
if n == 0 or (#ARGV ~= 4 * n and #ARGV ~= 4 * n + 1) then
  return redis.error_reply('ERR throttle strict: expected 4 arguments per key')
end
local zones = {}
for i = 1, n do
  local a, L, P, B = int(ARGV[4 * i - 3]), int(ARGV[4 * i - 2]), int(ARGV[4 * i - 1]),
      int(ARGV[4 * i])
  if (a ~= 0 and a ~= 1) or L == nil or P == nil or B == nil then
    return redis.error_reply('ERR throttle strict: bad arguments for key ' .. i)
  end
  if L < 1 then L = 1 end
  if P < 1 then P = 1 end
  zones[i] = {a = a, L = L, P = P, B = B}
end
local now
if #ARGV == 4 * n + 1 then
  now = int(ARGV[4 * n + 1])
  if now == nil then
    return redis.error_reply('ERR throttle strict: bad clock')
  end
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
end

local out = {now}
local all = true
for i = 1, n do
  local z = zones[i]
  local base, L, P = KEYS[i], z.L, z.P
  local allowed, remaining, reset, retry
  if z.a == 0 then
    -- sliding window: weighted = prev * (P - e) + (cur + 1) * P <= L * P
    local e = fmod(now, P)
    local w = now - e
    z.key = base .. ':' .. fmt(w)
    local cur = count(z.key)
    local prev = count(base .. ':' .. fmt(w - P))
    local left = P - e
    if cur + 1 <= L and prev * left <= (L - cur - 1) * P then
      allowed = 1
      remaining = idiv((L - cur - 1) * P - prev * left, P)
      reset = 2 * P - e
      retry = 0
    else
      allowed = 0
      remaining = 0
      if cur > 0 then
        reset = 2 * P - e
      elseif prev > 0 then
        reset = P - e
      else
        reset = 0
      end
      if cur + 1 <= L then
        -- later in this window, as prev's weight decays (prev > 0 here)
        retry = left - idiv((L - cur - 1) * P, prev)
      else
        -- in the next window, where cur becomes prev (cur >= L >= 1 here)
        retry = left + P - idiv((L - 1) * P, cur)
      end
      if retry < 1 then retry = 1 end
    end
    z.ttl = 2 * P + 1000
  else
    -- gcra, in microseconds
    local C = z.B > 0 and z.B or L
    if C > 1000000000 then C = 1000000000 end
    local T = idiv(P * 1000, L)
    if T < 1 then T = 1 end
    local CT = C * T
    z.key = base .. ':gcra'
    local nowu = now * 1000
    local tat = count(z.key)
    if tat < nowu then tat = nowu end
    local new_tat = tat + T
    local wait = new_tat - nowu
    if wait <= CT then
      allowed = 1
      remaining = idiv(CT - wait, T)
      reset = cdiv(wait, 1000)
      retry = 0
    else
      allowed = 0
      remaining = 0
      reset = cdiv(tat - nowu, 1000)
      retry = cdiv(wait - CT, 1000)
      if retry < 1 then retry = 1 end
    end
    z.tat = new_tat
    z.ttl = cdiv(wait, 1000) + 1000
  end
  if allowed == 0 then all = false end
  out[#out + 1] = allowed
  out[#out + 1] = remaining
  out[#out + 1] = reset
  out[#out + 1] = retry
end

if all then
  for i = 1, n do
    local z = zones[i]
    if z.a == 0 then
      if redis.call('INCR', z.key) == 1 then
        redis.call('PEXPIRE', z.key, fmt(z.ttl))
      end
    else
      redis.call('SET', z.key, fmt(z.tat), 'PX', fmt(z.ttl))
    end
  end
end
return out
)lua";

constexpr std::string_view lua_flush = R"lua(
local n = #KEYS
local P = int(ARGV[1])
if n == 0 or #ARGV ~= 3 * n + 1 or P == nil then
  return redis.error_reply('ERR throttle flush: expected period and 3 arguments per key')
end
if P < 1 then P = 1 end
local out = {}
for i = 1, n do
  local w, dc, dp = int(ARGV[3 * i - 1]), int(ARGV[3 * i]), int(ARGV[3 * i + 1])
  if w == nil or dc == nil or dp == nil then
    return redis.error_reply('ERR throttle flush: bad arguments for key ' .. i)
  end
  local ck = KEYS[i] .. ':' .. fmt(w)
  local pk = KEYS[i] .. ':' .. fmt(w - P)
  if dc > 0 and redis.call('INCRBY', ck, fmt(dc)) == dc then
    redis.call('PEXPIREAT', ck, fmt(w + 2 * P + 1000))
  end
  if dp > 0 and redis.call('INCRBY', pk, fmt(dp)) == dp then
    redis.call('PEXPIREAT', pk, fmt(w - P + 2 * P + 1000))
  end
  out[2 * i - 1] = count(ck)
  out[2 * i] = count(pk)
end
return out
)lua";

// "#!lua" makes it a Redis 7 function-flags script with no flags: in a cluster Redis then
// refuses any key outside the slot of its KEYS (which the key layout guarantees never happens),
// and refuses the script when it is out of memory (it writes).
std::string source_of(std::string_view body) {
    constexpr std::string_view shebang = "#!lua";
    std::string s;
    s.reserve(shebang.size() + lua_helpers.size() + body.size());
    s.append(shebang);
    s.append(lua_helpers);  // starts with a newline
    s.append(body);
    return s;
}

int64_t at_least_one(int64_t v) noexcept {
    return v > 0 ? v : 1;
}

// A non-negative integer element of an array reply.
bool integer_at(const Reply& r, size_t i, uint64_t& v) noexcept {
    const Reply& e = r.elements[i];
    if (e.type != Reply::Type::Integer || e.integer < 0) {
        return false;
    }
    v = static_cast<uint64_t>(e.integer);
    return true;
}

constexpr uint64_t two_pow_52 = uint64_t(1) << 52;
constexpr uint64_t two_pow_53 = uint64_t(1) << 53;
constexpr uint64_t capacity_max = 1000000000;  // core::max_rate_limit

}  // namespace

std::string base_key(std::string_view prefix, std::string_view zone, std::string_view key) {
    std::string s;
    s.reserve(prefix.size() + zone.size() + key.size() + 3);
    s.append(prefix);
    s.push_back('{');
    s.append(zone);
    s.push_back(':');
    s.append(key);
    s.push_back('}');
    return s;
}

// ---- EvalArgs ----

void EvalArgs::add_key(std::string_view key) {
    bytes_.emplace_back(key);  // if the push_back below throws, these bytes are only unused
    keys_.push_back(bytes_.back());
}

void EvalArgs::add_arg(std::string_view arg) {
    bytes_.emplace_back(arg);
    args_.push_back(bytes_.back());
}

void EvalArgs::add_arg(int64_t value) {
    char buf[24];
    auto res = std::to_chars(buf, buf + sizeof(buf), value);
    add_arg(std::string_view(buf, static_cast<size_t>(res.ptr - buf)));
}

void EvalArgs::add_arg(uint64_t value) {
    char buf[24];
    auto res = std::to_chars(buf, buf + sizeof(buf), value);
    add_arg(std::string_view(buf, static_cast<size_t>(res.ptr - buf)));
}

void EvalArgs::clear() noexcept {
    keys_.clear();
    args_.clear();
    bytes_.clear();
}

// ---- STRICT ----

const Script& strict_script() {
    static const Script* script = new Script(source_of(lua_strict));
    return *script;
}

bool strict_exact(uint8_t algorithm, uint64_t limit, int64_t period_ms, uint64_t burst) noexcept {
    const uint64_t L = limit > 0 ? limit : 1;
    const uint64_t P = static_cast<uint64_t>(at_least_one(period_ms));
    if (algorithm == 0) {
        // L * P < 2^53 without overflowing: L < 2^53 / P, rounded up.
        return P < two_pow_53 && L <= (two_pow_53 - 1) / P;
    }
    if (algorithm != 1 || P >= two_pow_53 / 1000) {
        return false;
    }
    uint64_t T = P * 1000 / L;
    if (T < 1) {
        T = 1;
    }
    uint64_t C = burst > 0 ? burst : L;
    if (C > capacity_max) {
        C = capacity_max;
    }
    return C <= two_pow_52 / T;
}

bool build_strict_args(const StrictZone* zones, size_t n, EvalArgs& out) noexcept {
    out.clear();
    if (n == 0) {
        return false;
    }
    try {
        for (size_t i = 0; i < n; i++) {
            const StrictZone& z = zones[i];
            out.add_key(z.base);
            out.add_arg(static_cast<uint64_t>(z.algorithm == 1 ? 1 : 0));
            out.add_arg(z.limit > 0 ? z.limit : 1);
            out.add_arg(at_least_one(z.period_ms));
            out.add_arg(z.burst);
        }
    } catch (...) {
        out.clear();
        return false;
    }
    return true;
}

bool parse_strict_reply(const Reply& reply, size_t n, int64_t& now_ms,
                        std::vector<StrictDecision>& out) noexcept {
    if (reply.type != Reply::Type::Array || n == 0 || reply.elements.size() != 1 + 4 * n) {
        return false;
    }
    try {
        out.resize(n);
    } catch (...) {
        return false;
    }
    uint64_t now = 0;
    if (!integer_at(reply, 0, now)) {
        return false;
    }
    now_ms = static_cast<int64_t>(now);
    for (size_t i = 0; i < n; i++) {
        uint64_t allowed, remaining, reset, retry;
        if (!integer_at(reply, 1 + 4 * i, allowed) || !integer_at(reply, 2 + 4 * i, remaining) ||
            !integer_at(reply, 3 + 4 * i, reset) || !integer_at(reply, 4 + 4 * i, retry)) {
            return false;
        }
        if (allowed > 1 || (allowed == 1 && retry != 0) ||
            (allowed == 0 && (remaining != 0 || retry == 0))) {
            return false;
        }
        StrictDecision& d = out[i];
        d.allowed = allowed == 1;
        d.remaining = remaining;
        d.reset_ms = static_cast<int64_t>(reset);
        d.retry_after_ms = static_cast<int64_t>(retry);
    }
    return true;
}

// ---- FLUSH ----

const Script& flush_script() {
    static const Script* script = new Script(source_of(lua_flush));
    return *script;
}

bool build_flush_args(int64_t period_ms, const FlushEntry* entries, size_t n,
                      EvalArgs& out) noexcept {
    out.clear();
    if (n == 0) {
        return false;
    }
    try {
        out.add_arg(at_least_one(period_ms));
        for (size_t i = 0; i < n; i++) {
            const FlushEntry& e = entries[i];
            out.add_key(e.base);
            out.add_arg(e.window);
            out.add_arg(e.delta_cur);
            out.add_arg(e.delta_prev);
        }
    } catch (...) {
        out.clear();
        return false;
    }
    return true;
}

bool parse_flush_reply(const Reply& reply, size_t n,
                       std::vector<std::pair<uint64_t, uint64_t>>& totals) noexcept {
    if (reply.type != Reply::Type::Array || n == 0 || reply.elements.size() != 2 * n) {
        return false;
    }
    try {
        totals.resize(n);
    } catch (...) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (!integer_at(reply, 2 * i, totals[i].first) ||
            !integer_at(reply, 2 * i + 1, totals[i].second)) {
            return false;
        }
    }
    return true;
}

}  // namespace throttle::redis
