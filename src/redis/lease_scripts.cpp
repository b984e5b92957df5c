// mode=lease scripts; semantics in lease_scripts.hpp.
#include "redis/lease_scripts.hpp"

#include <new>
#include <string>

namespace throttle::redis {
namespace {

// Mirrors the strict script's sliding-window arithmetic (scripts.cpp): every division through
// fmod, exact on doubles below 2^53. Both are built by source_of() (scripts.hpp): "#!lua" and
// the helpers int(s), count(k) of the flush script (floor comes with them).
constexpr std::string_view lua_lease = R"lua(
local fmod, sf = math.fmod, string.format
local E = 'ERR throttle lease: '
local n = #KEYS
if n == 0 or #ARGV ~= 4 * n + 1 then
  return redis.error_reply(E .. 'expected a clock and limit, period, want, host per key')
end
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
else
  now = int(ARGV[1])
  if now == nil then return redis.error_reply(E .. 'bad clock') end
end
local out = {}
for i = 1, n do
  local L, P, want, host = int(ARGV[4 * i - 2]), int(ARGV[4 * i - 1]), int(ARGV[4 * i]),
      ARGV[4 * i + 1]
  if L == nil or P == nil or want == nil then
    return redis.error_reply(E .. 'bad arguments for key ' .. i)
  end
  if L < 1 then L = 1 end
  if P < 1 then P = 1 end
  if want < 1 then want = 1 end
  local e = fmod(now, P)
  local W = now - e
  local left = P - e
  local ck = KEYS[i] .. ':' .. sf('%d', W)
  local cur, prev = count(ck), count(KEYS[i] .. ':' .. sf('%d', W - P))
  -- avail: the largest k with prev * left + (cur + k) * P <= L * P
  local avail = 0
  if cur < L then
    local x = (L - cur) * P - prev * left
    if x >= P then
      avail = (x - fmod(x, P)) / P
    end
  end
  if avail < 1 then
    local retry
    if cur < L then
      local room = (L - cur - 1) * P
      retry = left - (room - fmod(room, prev)) / prev
    else
      local x = (L - 1) * P
      retry = left + P - (x - fmod(x, cur)) / cur
    end
    if retry < 1 then retry = 1 end
    out[4 * i - 3], out[4 * i - 2], out[4 * i - 1], out[4 * i] = 0, W, left, retry
  else
    local share = (avail - fmod(avail, 8)) / 8
    if want > share and host ~= '' then
      -- The share bites: hosts that asked near the limit in the last 10 s, and with more
      -- than 4 of them, at most 1 / (2 x hosts) of what is left.
      local hk = KEYS[i] .. ':h'
      redis.call('ZADD', hk, sf('%d', now), host)
      redis.call('ZREMRANGEBYSCORE', hk, '-inf', sf('%d', now - 10000))
      redis.call('PEXPIRE', hk, '10000')
      local H = redis.call('ZCARD', hk)
      if H > 4 then
        share = (avail - fmod(avail, 2 * H)) / (2 * H)
      end
    end
    if share < 1 then share = 1 end
    local g = want
    if g > share then g = share end
    if redis.call('INCRBY', ck, sf('%d', g)) == g then
      redis.call('PEXPIRE', ck, sf('%d', 2 * P + 1000))
    end
    out[4 * i - 3], out[4 * i - 2], out[4 * i - 1], out[4 * i] = g, W, left, avail - g
  end
end
return out
)lua";

constexpr std::string_view lua_return = R"lua(
local nk = #KEYS
if nk == 0 or #ARGV ~= 2 * nk then
  return redis.error_reply('ERR throttle lease return: expected a window and units per key')
end
local total = 0
for i = 1, nk do
  local W, n = int(ARGV[2 * i - 1]), int(ARGV[2 * i])
  if W == nil or n == nil then
    return redis.error_reply('ERR throttle lease return: bad arguments for key ' .. i)
  end
  local k = KEYS[i] .. ':' .. string.format('%d', W)
  local v = redis.call('GET', k)
  if v then
    local c = int(v)
    if c == nil then
      return redis.error_reply('ERR throttle: a counter key holds no integer')
    end
    if n > c then n = c end
    if n > 0 then
      redis.call('DECRBY', k, string.format('%d', n))
      total = total + n
    end
  end
end
return total
)lua";

bool integer(const Reply& r, long long& v) noexcept {
    if (r.type != Reply::Type::Integer) {
        return false;
    }
    v = r.integer;
    return true;
}

}  // namespace

const Script& lease_script() {
    static const Script* s = new Script(source_of(lua_lease, true));
    return *s;
}

const Script& lease_return_script() {
    static const Script* s = new Script(source_of(lua_return, true));
    return *s;
}

bool build_lease_args(const LeaseAsk* asks, size_t n, int64_t clock_ms, EvalArgs& out) noexcept {
    if (n == 0) {
        return false;
    }
    try {
        out.clear();
        if (clock_ms < 0) {
            out.add_arg(std::string_view());
        } else {
            out.add_arg(clock_ms);
        }
        for (size_t i = 0; i < n; i++) {
            out.add_key(asks[i].base);
            out.add_arg(asks[i].limit);
            out.add_arg(asks[i].period_ms);
            out.add_arg(asks[i].want > 0 ? asks[i].want : uint64_t(1));
            out.add_arg(asks[i].host);
        }
        return true;
    } catch (...) {
        return false;
    }
}

bool parse_lease_reply(const Reply& reply, size_t n, std::vector<LeaseGrant>& out) noexcept {
    if (reply.type != Reply::Type::Array || n == 0 || reply.elements.size() != 4 * n) {
        return false;
    }
    try {
        out.assign(n, LeaseGrant{});
    } catch (...) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        long long g = 0, w = 0, left = 0, v = 0;
        const Reply* e = &reply.elements[4 * i];
        if (!integer(e[0], g) || !integer(e[1], w) || !integer(e[2], left) || !integer(e[3], v) ||
            g < 0 || w < 0 || left < 1 || v < 0 || (g == 0 && v < 1)) {
            return false;
        }
        LeaseGrant& o = out[i];
        o.units = static_cast<uint64_t>(g);
        o.window = w;
        o.left_ms = left;
        if (g > 0) {
            o.remaining = static_cast<uint64_t>(v);
        } else {
            o.retry_after_ms = v;
        }
    }
    return true;
}

bool build_lease_return_args(const LeaseReturn* returns, size_t n, EvalArgs& out) noexcept {
    if (n == 0) {
        return false;
    }
    try {
        out.clear();
        for (size_t i = 0; i < n; i++) {
            out.add_key(returns[i].base);
            out.add_arg(returns[i].window);
            out.add_arg(returns[i].units);
        }
        return true;
    } catch (...) {
        return false;
    }
}

bool parse_lease_return_reply(const Reply& reply, uint64_t& units) noexcept {
    long long n = 0;
    if (!integer(reply, n) || n < 0) {
        return false;
    }
    units = static_cast<uint64_t>(n);
    return true;
}

}  // namespace throttle::redis
