// The strict and flush Lua scripts, their arguments and replies; semantics in scripts.hpp.
// No nginx header (layer: redis).
#include "redis/scripts.hpp"

#include <algorithm>
#include <charconv>
#include <climits>
#include <cstring>
#include <functional>
#include <type_traits>
#include <unordered_map>

namespace throttle::redis {
namespace {

// Lua 5.1 numbers are doubles. Helpers of the flush script:
//   int(s)     a non-negative integer argument below 2^53, or nil
//   fmt(x)     an integer below 2^53 as decimal bytes (tostring would print 1.7e+12; '%d'
//              converts to a C long, exact here, and costs half of '%.0f')
//   count(k)   the integer stored at k, 0 when missing; raises an error reply otherwise
constexpr std::string_view lua_helpers = R"lua(
local floor = math.floor
local function int(s)
  local v = tonumber(s)
  if v == nil or v ~= v or v < 0 or v >= 9007199254740992 or v ~= floor(v) then
    return nil
  end
  return v
end
local function fmt(x)
  return string.format('%d', x)
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

// The strict script, on its own (no helpers: every closure, table and tonumber() costs Redis
// about 0.1 µs per call, as much as the arithmetic of a whole decision). Semantics in
// scripts.hpp; decisions mirror core::sliding_window::evaluate and core::gcra::evaluate line by
// line. Divisions go through fmod, which is exact: floor(a / b) = (a - fmod(a, b)) / b, and
// ceil(a / b) = floor(a / b) + (fmod(a, b) > 0 and 1 or 0) for a >= 0. Where it saves Redis CPU
// it trades clarity for fewer calls: one MGET reads every key the call needs, counts live in
// val for the whole call (later requests see what earlier ones added), and each key the call
// changed is written once at the end, with numbers formatted by '%d' (Redis' own conversion of
// a Lua number is '%.17g', twice as slow).
constexpr std::string_view lua_strict = R"lua(
local KEYS, ARGV, tonumber, fmod = KEYS, ARGV, tonumber, math.fmod
local sf, E = string.format, 'ERR throttle strict: '
local nk, na = #KEYS, #ARGV
if nk == 0 or na < 7 then
  return redis.error_reply(E .. 'expected a clock, policies and requests')
end
local now = ARGV[1]
if now == '' then
  local t = redis.call('TIME')
  local u = tonumber(t[2])  -- below 1e6: u % 1000 is exact
  now = tonumber(t[1]) * 1000 + (u - u % 1000) / 1000
else
  now = tonumber(now)
  if not now or now < 0 or now >= 9007199254740992 or now % 1 ~= 0 then
    return redis.error_reply(E .. 'bad clock')
  end
end
local nowu = now * 1000

-- One key (a lone request, or a batch on one hot key): the same checks, reads, decisions and
-- writes as the general path below, on locals instead of tables (a table Redis' Lua grows
-- costs more than a decision). Every zone reference is then -1 or 1: all of a request's zones
-- see the same state, so they decide alike; counted, the request adds one per zone to a
-- sliding window and moves the TAT once (what the general path's commit does).
if nk == 1 then
  -- tonumber() (strtod) costs more than a comparison: the usual 0 and 1 are compared
  local a, L, P, B, c = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], ARGV[6]
  if a == '0' then a = 0 elseif a == '1' then a = 1 else a = tonumber(a) end
  if B == '0' then B = 0 else B = tonumber(B) end
  if c == '1' then c = 1 else c = tonumber(c) end
  if not (a and L and P and B and c) or (a ~= 0 and a ~= 1) or
      L < 0 or L >= 9007199254740992 or L % 1 ~= 0 or
      P < 0 or P >= 9007199254740992 or P % 1 ~= 0 or
      B < 0 or B >= 9007199254740992 or B % 1 ~= 0 or
      c < 1 or c % 1 ~= 0 or c > 1 then
    return redis.error_reply(E .. 'bad policy at argument 2')
  end
  if L < 1 then L = 1 end
  if P < 1 then P = 1 end
  local cur, prev, e, T, CT, name = 0, 0, 0, 0, 0, nil
  if a == 0 then
    e = fmod(now, P)
    name = KEYS[1] .. ':' .. sf('%d', now - e)
  else
    local C = B > 0 and B or L
    if C > 1000000000 then C = 1000000000 end
    local x = P * 1000
    T = (x - fmod(x, L)) / L
    if T < 1 then T = 1 end
    CT = C * T
    name = KEYS[1] .. ':gcra'
  end
  local v = redis.call('GET', name)
  if v then
    cur = tonumber(v)
    if not cur or cur < 0 or cur >= 9007199254740992 or cur % 1 ~= 0 then
      return redis.error_reply('ERR throttle: a counter key holds no integer')
    end
  end
  if a == 0 then
    v = redis.call('GET', KEYS[1] .. ':' .. sf('%d', now - e - P))
    if v then
      prev = tonumber(v)
      if not prev or prev < 0 or prev >= 9007199254740992 or prev % 1 ~= 0 then
        return redis.error_reply('ERR throttle: a counter key holds no integer')
      end
    end
  end
  local out, o = nil, 1
  if na < 2007 then
    out = {now, unpack(ARGV, 1, 2 * (na - 6))}  -- sized once; every slot is rewritten
  else
    out = {now}
  end
  -- cur: the window's count (sliding) or the TAT (gcra), as the requests before left it;
  -- added: what the call counted (sliding), or 1 once it moved the TAT (gcra); nz: zones of
  -- the request so far. v, reset: the decision at that state, once known (known). A refused
  -- request changes nothing, so the decision stays; a counted one moves it exactly: sliding,
  -- x = (L - cur - 1) * P - prev * (P - e) falls by nz * P, so v = floor(x / P) falls by nz
  -- and spent = cur + 1 + v (hence reset) stays; gcra, wait grows by T (the TAT is past now
  -- once moved), so v falls by 1 and x = wait + (v + 1) * T - C * T (hence reset) stays. Both
  -- admit again while that v >= 0; otherwise the decision is computed afresh.
  local left, added, nz, known, v, reset = P - e, 0, 0, false, 0, 0
  for q = 7, na + 1 do
    local s, z = ARGV[q], -1
    if s ~= '-1' then
      if s == '1' and q > 7 then
        z = 1
      elseif q <= na then
        z = tonumber(s)
        if not z or z % 1 ~= 0 or z == 0 or z > 1 or z < -1 or (q == 7 and z > 0) then
          return redis.error_reply(E .. 'bad zone reference at argument ' .. q)
        end
      end
    end
    if z < 0 then
      if nz > 0 and v >= 0 then
        if a == 0 then
          cur, added, v = cur + nz, added + nz, v - nz
        else
          if cur < nowu then cur = nowu end
          cur, added, v = cur + T, 1, v - 1
        end
        known = v >= 0
      end
      if q > na then break end
      nz = 0
    end
    if not known then
      known = true
      if a == 0 then
        local room = (L - cur - 1) * P
        if cur < L and prev * left <= room then
          local x = room - prev * left
          v = (x - fmod(x, P)) / P
          local spent = cur + 1 + v
          if spent < L then
            x = (L - spent - 1) * P
            reset = left - (x - fmod(x, prev)) / prev
          else
            x = (L - 1) * P
            reset = left + P - (x - fmod(x, spent)) / spent
          end
          if reset < 1 then reset = 1 end
        else
          local retry
          if cur < L then
            retry = left - (room - fmod(room, prev)) / prev
          else
            local x = (L - 1) * P
            retry = left + P - (x - fmod(x, cur)) / cur
          end
          if retry < 1 then retry = 1 end
          v, reset = -retry, retry
        end
      else
        local tat = cur
        if tat < nowu then tat = nowu end
        local wait = tat + T - nowu
        if wait <= CT then
          local x = CT - wait
          v = (x - fmod(x, T)) / T
          x = wait + (v + 1) * T - CT
          local r = fmod(x, 1000)
          reset = (x - r) / 1000 + (r > 0 and 1 or 0)
        else
          local x = wait - CT
          local r = fmod(x, 1000)
          reset = (x - r) / 1000 + (r > 0 and 1 or 0)
          v = -reset
        end
      end
    end
    nz = nz + 1
    out[o + 1], out[o + 2] = v, reset
    o = o + 2
  end
  if added > 0 then
    if a == 1 then
      local x = cur - nowu
      local r = fmod(x, 1000)
      redis.call('SET', name, sf('%d', cur), 'PX',
          sf('%d', (x - r) / 1000 + (r > 0 and 1 or 0) + 1000))
    elseif cur == added then
      redis.call('SET', name, added == 1 and '1' or sf('%d', added), 'PX', sf('%d', 2 * P + 1000))
    elseif added == 1 then
      redis.call('INCR', name)
    else
      redis.call('INCRBY', name, sf('%d', added))
    end
  end
  return out
end

-- Policies. A policy is a table: sliding {0, L, P, P - e, 2P + 1000}, gcra {1, T, C * T}.
-- Per key s: sp[s], its policy; nm[2s - 1], the name it is decided on (sliding: its window,
-- gcra: BASE:gcra); nm[2s], sliding: the previous window (gcra: BASE:gcra again, so nm is the
-- list MGET reads). val[name]: the count (or TAT) under each distinct name.
local sp, nm, val = {}, {}, {}
local j, s, cP, cs, ps = 2, 0, -1, nil, nil
while s < nk do
  if j + 4 > na then
    return redis.error_reply(E .. 'expected 5 arguments per policy')
  end
  local a, L, P, B, c = tonumber(ARGV[j]), tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2]),
      tonumber(ARGV[j + 3]), tonumber(ARGV[j + 4])
  if not (a and L and P and B and c) or (a ~= 0 and a ~= 1) or
      L < 0 or L >= 9007199254740992 or L % 1 ~= 0 or
      P < 0 or P >= 9007199254740992 or P % 1 ~= 0 or
      B < 0 or B >= 9007199254740992 or B % 1 ~= 0 or
      c < 1 or c % 1 ~= 0 or s + c > nk then
    return redis.error_reply(E .. 'bad policy at argument ' .. j)
  end
  j = j + 5
  if L < 1 then L = 1 end
  if P < 1 then P = 1 end
  if a == 0 then
    local e = fmod(now, P)
    if P ~= cP then
      cP, cs, ps = P, ':' .. sf('%d', now - e), ':' .. sf('%d', now - e - P)
    end
    local p = {0, L, P, P - e, 2 * P + 1000}
    for k = s + 1, s + c do
      local base = KEYS[k]
      sp[k], nm[2 * k - 1], nm[2 * k] = p, base .. cs, base .. ps
    end
  else
    local C = B > 0 and B or L
    if C > 1000000000 then C = 1000000000 end
    local x = P * 1000
    local T = (x - fmod(x, L)) / L
    if T < 1 then T = 1 end
    local p = {1, T, C * T}
    for k = s + 1, s + c do
      local gk = KEYS[k] .. ':gcra'
      sp[k], nm[2 * k - 1], nm[2 * k] = p, gk, gk
    end
  end
  s = s + c
end
local first = j
if first > na then
  return redis.error_reply(E .. 'no request')
end

-- Every name at once (missing: 0). MGET reads a key of another type as missing, which must be
-- an error too: EXISTS tells them apart, when something was missing. For one or two names
-- (one request, one zone) GET is cheaper, and a key of another type is its own error.
local nn, missing, nm0 = 2 * nk, nil, 0
if nn <= 2 then
  for q = 1, nn do
    local name = nm[q]
    if val[name] == nil then
      local v, x = redis.call('GET', name), 0
      if v then
        x = tonumber(v)
        if not x or x < 0 or x >= 9007199254740992 or x % 1 ~= 0 then
          return redis.error_reply('ERR throttle: a counter key holds no integer')
        end
      end
      val[name] = x
    end
  end
  nn = 0
end
local i = 1
while i <= nn do
  local last = i + 999
  if last > nn then last = nn end
  local got = redis.call('MGET', unpack(nm, i, last))
  for q = i, last do
    local v = got[q - i + 1]
    if v then
      local x = tonumber(v)
      if not x or x < 0 or x >= 9007199254740992 or x % 1 ~= 0 then
        return redis.error_reply('ERR throttle: a counter key holds no integer')
      end
      val[nm[q]] = x
    else
      val[nm[q]] = 0
      if missing == nil then missing = {} end
      nm0 = nm0 + 1
      missing[nm0] = nm[q]
    end
  end
  i = last + 1
end
i = 1
while i <= nm0 do
  local last = i + 999
  if last > nm0 then last = nm0 end
  if redis.call('EXISTS', unpack(missing, i, last)) > 0 then
    return redis.error_reply('ERR throttle: a counter key holds no integer')
  end
  i = last + 1
end

-- The requests, in order; q = na + 1 only counts the last one. Each zone is decided on val;
-- zs holds the request's zones (key, new TAT). When all admit, the request is counted in val,
-- where the next requests see it, and dirty[name] says what the end must write: sliding, how
-- many were added; gcra, -1. dl lists those names (and their windows' expiry) in order.
local out, o = nil, 1
if na - first < 2000 then
  out = {now, unpack(ARGV, 1, 2 * (na - first + 1))}  -- sized once; every slot is rewritten
else
  out = {now}
end
local dirty, dl, nd = {}, {}, 0
local zs, nz, all = {}, 0, true
for q = first, na + 1 do
  local z = -1
  if q <= na then
    z = tonumber(ARGV[q])
    if not z or z % 1 ~= 0 or z == 0 or z > nk or z < -nk or (q == first and z > 0) then
      return redis.error_reply(E .. 'bad zone reference at argument ' .. q)
    end
  end
  if z < 0 then
    if all then
      for k = 1, nz, 2 do
        local y = zs[k]
        local p, name = sp[y], nm[2 * y - 1]
        local d = dirty[name]
        if p[1] == 0 then
          val[name] = val[name] + 1
          if d then
            dirty[name] = d + 1
          else
            dirty[name] = 1
            dl[nd + 1], dl[nd + 2] = name, p[5]
            nd = nd + 2
          end
        else
          val[name] = zs[k + 1]
          if not d then
            dirty[name] = -1
            dl[nd + 1], dl[nd + 2] = name, 0
            nd = nd + 2
          end
        end
      end
    end
    if q > na then break end
    nz, all, z = 0, true, -z
  end
  local p = sp[z]
  local v, reset
  if p[1] == 0 then
    -- sliding window: weighted = prev * (P - e) + (cur + 1) * P <= L * P
    local cur, prev = val[nm[2 * z - 1]], val[nm[2 * z]]
    local L, P, left = p[2], p[3], p[4]
    local room = (L - cur - 1) * P
    if cur < L and prev * left <= room then
      local x = room - prev * left
      v = (x - fmod(x, P)) / P
      -- reset: when the next is admitted once this one and the v after it are counted
      local spent = cur + 1 + v
      if spent < L then
        x = (L - spent - 1) * P
        reset = left - (x - fmod(x, prev)) / prev
      else
        x = (L - 1) * P
        reset = left + P - (x - fmod(x, spent)) / spent
      end
      if reset < 1 then reset = 1 end
    else
      all = false
      local retry
      if cur < L then
        -- later in this window, as prev's weight decays (prev > 0 here)
        retry = left - (room - fmod(room, prev)) / prev
      else
        -- in the next window, where cur becomes prev (cur >= L >= 1 here)
        local x = (L - 1) * P
        retry = left + P - (x - fmod(x, cur)) / cur
      end
      if retry < 1 then retry = 1 end
      v, reset = -retry, retry
    end
    zs[nz + 1], zs[nz + 2] = z, 0
  else
    -- gcra, in microseconds
    local T, CT = p[2], p[3]
    local tat = val[nm[2 * z - 1]]
    if tat < nowu then tat = nowu end
    local wait = tat + T - nowu
    if wait <= CT then
      local x = CT - wait
      v = (x - fmod(x, T)) / T
      -- reset: the next token once the v after this one are counted too (0 < x <= T)
      x = wait + (v + 1) * T - CT
      local r = fmod(x, 1000)
      reset = (x - r) / 1000 + (r > 0 and 1 or 0)
    else
      all = false
      local x = wait - CT
      local r = fmod(x, 1000)
      reset = (x - r) / 1000 + (r > 0 and 1 or 0)
      v = -reset
    end
    zs[nz + 1], zs[nz + 2] = z, tat + T
  end
  nz = nz + 2
  out[o + 1], out[o + 2] = v, reset
  o = o + 2
end

-- Each changed name, once. A window the call created (it held 0) gets its expiry; one that
-- existed keeps its own (INCR, INCRBY): what one INCR per request would have left.
local lt, ls = -1, nil
for k = 1, nd, 2 do
  local name = dl[k]
  local d = dirty[name]
  if d < 0 then
    local tat = val[name]
    local x = tat - nowu
    local r = fmod(x, 1000)
    redis.call('SET', name, sf('%d', tat), 'PX',
        sf('%d', (x - r) / 1000 + (r > 0 and 1 or 0) + 1000))
  elseif val[name] == d then
    if dl[k + 1] ~= lt then
      lt = dl[k + 1]
      ls = sf('%d', lt)
    end
    redis.call('SET', name, d == 1 and '1' or sf('%d', d), 'PX', ls)
  elseif d == 1 then
    redis.call('INCR', name)
  else
    redis.call('INCRBY', name, sf('%d', d))
  end
end
return out
)lua";

constexpr std::string_view lua_flush = R"lua(
local n = #KEYS
local P, id, ttl = int(ARGV[1]), ARGV[2], int(ARGV[3])
if n == 0 or #ARGV ~= 3 * n + 3 or P == nil or ttl == nil or ttl < 1 or #id == 0 or #id > 64 then
  return redis.error_reply('ERR throttle flush: expected period, batch id, id ttl and 3 arguments per key')
end
if P < 1 then P = 1 end
local w, dc, dp = {}, {}, {}
for i = 1, n do
  w[i], dc[i], dp[i] = int(ARGV[3 * i + 1]), int(ARGV[3 * i + 2]), int(ARGV[3 * i + 3])
  if w[i] == nil or dc[i] == nil or dp[i] == nil then
    return redis.error_reply('ERR throttle flush: bad arguments for key ' .. i)
  end
end
-- The server's clock in ms, read once and only when a window was created: a window whose
-- expiry time has passed is deleted by its PEXPIREAT and reads 0.
local clock
local function now()
  if clock == nil then
    local t = redis.call('TIME')
    clock = tonumber(t[1]) * 1000 + floor(tonumber(t[2]) / 1000)
  end
  return clock
end
local applied = 1
if not redis.call('SET', KEYS[1] .. ':flush:' .. id, '1', 'NX', 'PX', fmt(ttl)) then
  applied = 0
end
local out = {}
for i = 1, n do
  local ck = KEYS[i] .. ':' .. fmt(w[i])
  local pk = KEYS[i] .. ':' .. fmt(w[i] - P)
  local c, p
  if applied == 1 and dc[i] > 0 then
    c = redis.call('INCRBY', ck, fmt(dc[i]))
    if c == dc[i] then
      local at = w[i] + 2 * P + 1000
      redis.call('PEXPIREAT', ck, fmt(at))
      if at <= now() then c = 0 end
    end
  end
  if applied == 1 and dp[i] > 0 then
    p = redis.call('INCRBY', pk, fmt(dp[i]))
    if p == dp[i] then
      local at = w[i] - P + 2 * P + 1000
      redis.call('PEXPIREAT', pk, fmt(at))
      if at <= now() then p = 0 end
    end
  end
  out[2 * i - 1] = c or count(ck)
  out[2 * i] = p or count(pk)
end
out[2 * n + 1] = applied
return out
)lua";

// Gives back one request per key that a strict call counted (a Redis Cluster request another
// slot rejected); semantics in scripts.hpp.
constexpr std::string_view lua_refund = R"lua(
local n = #KEYS
local now = int(ARGV[1])
if n == 0 or #ARGV ~= 3 * n + 1 or now == nil then
  return redis.error_reply('ERR throttle refund: expected a time and 3 arguments per key')
end
local fmod = math.fmod
for i = 1, n do
  local a, L, P = int(ARGV[3 * i - 1]), int(ARGV[3 * i]), int(ARGV[3 * i + 1])
  if a == nil or L == nil or P == nil or a > 1 then
    return redis.error_reply('ERR throttle refund: bad arguments for key ' .. i)
  end
  if L < 1 then L = 1 end
  if P < 1 then P = 1 end
  if a == 0 then
    local k = KEYS[i] .. ':' .. fmt(now - fmod(now, P))
    if count(k) > 0 then
      redis.call('DECR', k)
    end
  else
    local x = P * 1000
    local T = (x - fmod(x, L)) / L
    if T < 1 then T = 1 end
    local k = KEYS[i] .. ':gcra'
    local tat = count(k)
    if tat > 0 then
      tat = tat - T
      if tat < 0 then tat = 0 end
      redis.call('SET', k, fmt(tat), 'KEEPTTL')
    end
  end
end
return 1
)lua";

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

// "#!lua" makes it a Redis 7 function-flags script with no flags: in a cluster Redis then
// refuses any key outside the slot of its KEYS (which the key layout guarantees never happens),
// and refuses the script when it is out of memory (it writes).
std::string source_of(std::string_view body, bool helpers) {
    constexpr std::string_view shebang = "#!lua";
    std::string s;
    s.reserve(shebang.size() + lua_helpers.size() + body.size());
    s.append(shebang);
    if (helpers) {
        s.append(lua_helpers);  // starts with a newline
    }
    s.append(body);  // starts with a newline
    return s;
}

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

std::string_view EvalArgs::store(std::string_view bytes) {
    if (bytes.empty()) {
        return {};
    }
    if (bytes.size() > block_size / 4) {
        large_.emplace_back();  // the slot first: if the copy's allocation throws, no leak
        large_.back().reset(new char[bytes.size()]);
        std::memcpy(large_.back().get(), bytes.data(), bytes.size());
        return {large_.back().get(), bytes.size()};
    }
    for (;;) {
        if (block_ < blocks_.size()) {
            if (block_size - used_ >= bytes.size()) {
                char* at = blocks_[block_].get() + used_;
                std::memcpy(at, bytes.data(), bytes.size());
                used_ += bytes.size();
                return {at, bytes.size()};
            }
            block_++;
            used_ = 0;
            continue;
        }
        std::unique_ptr<char[]> block(new char[block_size]);
        blocks_.push_back(std::move(block));
        block_ = blocks_.size() - 1;
        used_ = 0;
    }
}

void EvalArgs::add_key(std::string_view key) {
    keys_.push_back(store(key));  // if the push_back throws, the bytes are only unused
}

void EvalArgs::add_arg(std::string_view arg) {
    args_.push_back(store(arg));
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
    large_.clear();
    if (blocks_.size() > max_kept_blocks) {
        blocks_.resize(max_kept_blocks);
    }
    block_ = 0;
    used_ = 0;
}

// ---- EvalResp ----

void EvalResp::Buffer::grow(size_t n) {
    size_t want = std::max<size_t>(2 * capacity, 256);
    if (want - size < n) {
        want = size + n;
    }
    std::unique_ptr<char[]> more(new char[want]);
    if (size > 0) {
        std::memcpy(more.get(), bytes.get(), size);
    }
    bytes = std::move(more);
    capacity = want;
}

void EvalResp::put(Buffer& to, std::string_view bytes) {
    char* const start = to.room(1 + 20 + 2 + bytes.size() + 2);
    char* at = start;
    *at++ = '$';
    at = std::to_chars(at, at + 20, bytes.size()).ptr;
    *at++ = '\r';
    *at++ = '\n';
    if (!bytes.empty()) {
        std::memcpy(at, bytes.data(), bytes.size());
        at += bytes.size();
    }
    *at++ = '\r';
    *at++ = '\n';
    to.size += size_t(at - start);
}

// "$<digits>\r\n<digits>\r\n" of an integer.
template <typename Int>
void EvalResp::put_integer(Buffer& to, Int value) {
    char* const start = to.room(5 + 20 + 2);
    if (value >= 0 && value < 10) {  // most of them: "$1\r\nD\r\n"
        std::memcpy(start, "$1\r\n0\r\n", 7);
        start[4] = char('0' + value);
        to.size += 7;
        return;
    }
    if constexpr (std::is_signed_v<Int>) {
        if (value < 0 && value > -10) {  // a request's first zone: "$2\r\n-D\r\n"
            std::memcpy(start, "$2\r\n-0\r\n", 8);
            start[5] = char('0' - value);
            to.size += 8;
            return;
        }
    }
    char* digits = start + 4;  // after "$N\r\n"; moved up by one for 10 digits or more
    char* end = std::to_chars(digits, digits + 20, value).ptr;
    const size_t d = size_t(end - digits);
    if (d >= 10) {
        std::memmove(digits + 1, digits, d);
        digits++;
        end++;
        start[1] = char('0' + d / 10);
        start[2] = char('0' + d % 10);
    } else {
        start[1] = char('0' + d);
    }
    start[0] = '$';
    digits[-2] = '\r';
    digits[-1] = '\n';
    *end++ = '\r';
    *end++ = '\n';
    to.size += size_t(end - start);
}

void EvalResp::add_arg(int64_t value) {
    put_integer(args_, value);
    nargs_++;
}

void EvalResp::add_arg(uint64_t value) {
    put_integer(args_, value);
    nargs_++;
}

void EvalResp::clear() noexcept {
    for (Buffer* b : {&keys_, &args_}) {
        if (b->capacity > max_kept) {
            b->bytes.reset();
            b->capacity = 0;
        }
        b->size = 0;
    }
    nkeys_ = 0;
    nargs_ = 0;
}

namespace {

// The strings of `resp` (put()'s "$<len>\r\n<bytes>\r\n" ...) appended to `out`.
void resp_views(std::string_view resp, std::vector<std::string_view>& out) {
    size_t at = 0;
    while (at < resp.size()) {
        size_t len = 0;
        at++;  // '$'
        while (resp[at] != '\r') {
            len = len * 10 + size_t(resp[at] - '0');
            at++;
        }
        at += 2;
        out.push_back(resp.substr(at, len));
        at += len + 2;
    }
}

}  // namespace

void EvalResp::views(std::vector<std::string_view>& keys,
                     std::vector<std::string_view>& args) const {
    keys.clear();
    args.clear();
    keys.reserve(nkeys_);
    args.reserve(nargs_);
    resp_views(keys_.view(), keys);
    resp_views(args_.view(), args);
}

// ---- STRICT ----

namespace {

// One request's zones.
struct ZoneSpan {
    const StrictZone* zones = nullptr;
    size_t n = 0;
};

// A zone's policy as the script receives it.
struct WirePolicy {
    uint64_t algorithm = 0;  // 0 sliding, 1 gcra (anything else: sliding, like core)
    uint64_t limit = 1;      // >= 1
    int64_t period_ms = 1;   // >= 1
    uint64_t burst = 0;      // gcra only; 0 for sliding, which ignores it

    bool operator==(const WirePolicy& o) const noexcept {
        return algorithm == o.algorithm && limit == o.limit && period_ms == o.period_ms &&
               burst == o.burst;
    }
};

WirePolicy wire_policy(const StrictZone& z) noexcept {
    WirePolicy p;
    p.algorithm = z.algorithm == 1 ? 1 : 0;
    p.limit = z.limit > 0 ? z.limit : 1;
    p.period_ms = at_least_one(z.period_ms);
    p.burst = p.algorithm == 1 ? z.burst : 0;
    return p;
}

// A distinct (base, policy): one of the call's KEYS.
struct SlotId {
    std::string_view base;
    uint32_t policy = 0;

    bool operator==(const SlotId& o) const noexcept { return policy == o.policy && base == o.base; }
};

struct SlotIdHash {
    size_t operator()(const SlotId& s) const noexcept {
        return std::hash<std::string_view>()(s.base) ^ (size_t(s.policy) * 0x9e3779b97f4a7c15u);
    }
};

// Up to this many distinct zones a linear search finds them faster than a hash table.
constexpr size_t linear_slots_max = 16;

// fill_strict_args()' working vectors, kept from call to call (their capacity: no allocation
// once they have held a batch that large). Single-threaded, like the Loop; never destroyed.
struct StrictScratch {
    std::vector<WirePolicy> policies;
    std::vector<SlotId> slots;
    std::vector<uint32_t> refs;
    std::vector<uint8_t> starts;
    std::vector<uint32_t> per_policy;
    std::vector<uint32_t> next;
    std::vector<uint32_t> number;
    std::vector<std::string_view> keys;

    void clear() noexcept {
        policies.clear();
        slots.clear();
        refs.clear();
        starts.clear();
        per_policy.clear();
        next.clear();
        number.clear();
        keys.clear();
    }
};

StrictScratch& strict_scratch() {
    static StrictScratch* scratch = new StrictScratch();
    return *scratch;
}

// A policy's four arguments: algorithm, limit, period_ms, burst.
void add_policy(EvalArgs& out, const WirePolicy& p) {
    out.add_arg(p.algorithm);
    out.add_arg(p.limit);
    out.add_arg(p.period_ms);
    out.add_arg(p.burst);
}

// The same in RESP, from a per-worker memo of the policies written last (a zone's policy does
// not change from call to call: its digits are written once). Never destroyed.
void add_policy(EvalResp& out, const WirePolicy& p) {
    struct Written {
        WirePolicy policy;
        EvalResp resp;
        bool valid = false;  // false while it is written (should that throw)
    };
    static constexpr size_t memo_size = 4;
    static auto* memo = new Written[memo_size];
    static size_t used = 0;
    static size_t next = 0;  // the one to replace (round robin)
    for (size_t i = 0; i < used; i++) {
        if (memo[i].valid && memo[i].policy == p) {
            out.add_args_resp(memo[i].resp.args_resp(), 4);
            return;
        }
    }
    Written& w = memo[used < memo_size ? used++ : next++ % memo_size];
    w.valid = false;
    w.resp.clear();
    w.resp.add_arg(p.algorithm);
    w.resp.add_arg(p.limit);
    w.resp.add_arg(p.period_ms);
    w.resp.add_arg(p.burst);
    w.policy = p;
    w.valid = true;
    out.add_args_resp(w.resp.args_resp(), 4);
}

// KEYS and ARGV of one strict call deciding requests 0 .. m-1 (request_at(i) gives a ZoneSpan):
// see scripts.hpp for the layout. May throw std::bad_alloc.
template <typename RequestAt, typename Out>
bool fill_strict_args(size_t m, RequestAt request_at, Out& out) {
    if (m == 0) {
        return false;
    }
    if (m == 1) {  // one request of one zone (a turn of one request): no grouping to do
        const ZoneSpan r = request_at(0);
        if (r.zones != nullptr && r.n == 1) {
            const WirePolicy p = wire_policy(r.zones[0]);
            out.add_key(r.zones[0].base);
            out.add_arg(std::string_view());  // the clock: Redis' TIME
            add_policy(out, p);
            out.add_arg(uint64_t(1));
            out.add_arg(int64_t(-1));
            return true;
        }
    }
    StrictScratch& scratch = strict_scratch();
    scratch.clear();
    std::vector<WirePolicy>& policies = scratch.policies;
    std::vector<SlotId>& slots = scratch.slots;
    std::vector<uint32_t>& refs = scratch.refs;              // slot index of each zone, in order
    std::vector<uint8_t>& starts = scratch.starts;           // 1 where a request starts
    std::unordered_map<SlotId, uint32_t, SlotIdHash> index;  // once slots outgrow linear search
    for (size_t i = 0; i < m; i++) {
        const ZoneSpan r = request_at(i);
        if (r.zones == nullptr || r.n == 0) {
            return false;
        }
        for (size_t k = 0; k < r.n; k++) {
            const StrictZone& z = r.zones[k];
            const WirePolicy p = wire_policy(z);
            uint32_t pi = 0;
            while (pi < policies.size() && !(policies[pi] == p)) {
                pi++;
            }
            if (pi == policies.size()) {
                policies.push_back(p);
            }
            const SlotId id{z.base, pi};
            uint32_t si = 0;
            if (slots.size() <= linear_slots_max) {
                while (si < slots.size() && !(slots[si] == id)) {
                    si++;
                }
            } else {
                if (index.empty()) {
                    index.reserve(2 * slots.size());
                    for (uint32_t q = 0; q < slots.size(); q++) {
                        index.emplace(slots[q], q);
                    }
                }
                si = index.emplace(id, uint32_t(slots.size())).first->second;
            }
            if (si == slots.size()) {
                slots.push_back(id);
            }
            refs.push_back(si);
            starts.push_back(k == 0 ? 1 : 0);
        }
    }
    // KEYS grouped by policy, each group in order of first use.
    std::vector<uint32_t>& per_policy = scratch.per_policy;
    per_policy.assign(policies.size(), 0);
    for (const SlotId& id : slots) {
        per_policy[id.policy]++;
    }
    std::vector<uint32_t>& next = scratch.next;
    next.assign(policies.size(), 0);
    for (size_t pi = 1; pi < policies.size(); pi++) {
        next[pi] = next[pi - 1] + per_policy[pi - 1];
    }
    std::vector<uint32_t>& number = scratch.number;
    number.resize(slots.size());
    std::vector<std::string_view>& keys = scratch.keys;
    keys.resize(slots.size());
    for (size_t si = 0; si < slots.size(); si++) {
        number[si] = next[slots[si].policy]++;
        keys[number[si]] = slots[si].base;
    }
    for (std::string_view k : keys) {
        out.add_key(k);
    }
    out.add_arg(std::string_view());  // the clock: Redis' TIME
    for (size_t pi = 0; pi < policies.size(); pi++) {
        add_policy(out, policies[pi]);
        out.add_arg(per_policy[pi]);
    }
    for (size_t q = 0; q < refs.size(); q++) {
        const int64_t ref = int64_t(number[refs[q]]) + 1;
        out.add_arg(starts[q] ? -ref : ref);
    }
    return true;
}

// Zone decisions n from element `at` on: pairs (v, reset_ms), v = remaining when admitted,
// -retry_after_ms when refused.
bool parse_decisions(const Reply& reply, size_t at, size_t n, StrictDecision* out) noexcept {
    for (size_t k = 0; k < n; k++) {
        const Reply& v = reply.elements[at + 2 * k];
        uint64_t reset = 0;
        if (v.type != Reply::Type::Integer || v.integer == LLONG_MIN ||
            !integer_at(reply, at + 2 * k + 1, reset)) {
            return false;
        }
        StrictDecision& d = out[k];
        d.allowed = v.integer >= 0;
        d.remaining = d.allowed ? uint64_t(v.integer) : 0;
        d.retry_after_ms = d.allowed ? 0 : -v.integer;
        d.reset_ms = static_cast<int64_t>(reset);
    }
    return true;
}

bool parse_now(const Reply& reply, size_t zones, int64_t& now_ms) noexcept {
    uint64_t now = 0;
    if (reply.type != Reply::Type::Array || zones == 0 || reply.elements.size() != 1 + 2 * zones ||
        !integer_at(reply, 0, now)) {
        return false;
    }
    now_ms = static_cast<int64_t>(now);
    return true;
}

}  // namespace

const Script& strict_script() {
    static const Script* script = new Script(source_of(lua_strict, false));
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
    try {
        const auto at = [&](size_t) { return ZoneSpan{zones, n}; };
        if (n > 0 && fill_strict_args(1, at, out)) {
            return true;
        }
    } catch (...) {
    }
    out.clear();
    return false;
}

bool build_strict_batch_args(const std::vector<const std::vector<StrictZone>*>& requests,
                             EvalArgs& out) noexcept {
    out.clear();
    try {
        const auto at = [&](size_t i) {
            const std::vector<StrictZone>* r = requests[i];
            return r == nullptr ? ZoneSpan{} : ZoneSpan{r->data(), r->size()};
        };
        if (fill_strict_args(requests.size(), at, out)) {
            return true;
        }
    } catch (...) {
    }
    out.clear();
    return false;
}

bool build_strict_batch_args(const std::vector<const std::vector<StrictZone>*>& requests,
                             EvalResp& out) noexcept {
    out.clear();
    try {
        const auto at = [&](size_t i) {
            const std::vector<StrictZone>* r = requests[i];
            return r == nullptr ? ZoneSpan{} : ZoneSpan{r->data(), r->size()};
        };
        if (fill_strict_args(requests.size(), at, out)) {
            return true;
        }
    } catch (...) {
    }
    out.clear();
    return false;
}

bool parse_strict_reply(const Reply& reply, size_t n, int64_t& now_ms,
                        std::vector<StrictDecision>& out) noexcept {
    if (!parse_now(reply, n, now_ms)) {
        return false;
    }
    try {
        out.resize(n);
    } catch (...) {
        return false;
    }
    return parse_decisions(reply, 1, n, out.data());
}

bool parse_strict_batch_reply(const Reply& reply, const std::vector<size_t>& zone_counts,
                              int64_t& now_ms,
                              std::vector<std::vector<StrictDecision>>& out) noexcept {
    size_t zones = 0;
    for (size_t c : zone_counts) {
        if (c == 0 || c > reply.elements.size() - zones) {  // zones <= size(): no overflow
            return false;
        }
        zones += c;
    }
    if (!parse_now(reply, zones, now_ms)) {
        return false;
    }
    try {
        out.resize(zone_counts.size());
        for (size_t i = 0; i < zone_counts.size(); i++) {
            out[i].resize(zone_counts[i]);
        }
    } catch (...) {
        return false;
    }
    size_t at = 1;
    for (size_t i = 0; i < zone_counts.size(); i++) {
        if (!parse_decisions(reply, at, zone_counts[i], out[i].data())) {
            return false;
        }
        at += 2 * zone_counts[i];
    }
    return true;
}

// ---- FLUSH ----

const Script& flush_script() {
    static const Script* script = new Script(source_of(lua_flush, true));
    return *script;
}

const Script& refund_script() {
    static const Script* script = new Script(source_of(lua_refund, true));
    return *script;
}

bool build_refund_args(int64_t now_ms, const std::vector<const StrictZone*>& zones,
                       EvalArgs& out) noexcept {
    out.clear();
    if (zones.empty() || now_ms < 0) {
        return false;
    }
    try {
        out.add_arg(now_ms);
        for (const StrictZone* z : zones) {
            out.add_key(z->base);
            out.add_arg(static_cast<uint64_t>(z->algorithm));
            out.add_arg(z->limit);
            out.add_arg(at_least_one(z->period_ms));
        }
    } catch (...) {
        out.clear();
        return false;
    }
    return true;
}

bool build_flush_args(int64_t period_ms, std::string_view batch_id, uint32_t id_ttl_ms,
                      const FlushEntry* entries, size_t n, EvalArgs& out) noexcept {
    out.clear();
    if (n == 0 || batch_id.empty() || batch_id.size() > flush_id_max) {
        return false;
    }
    try {
        out.add_arg(at_least_one(period_ms));
        out.add_arg(batch_id);
        out.add_arg(std::max<uint32_t>(id_ttl_ms, 1));
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
                       std::vector<std::pair<uint64_t, uint64_t>>& totals, bool* applied) noexcept {
    if (reply.type != Reply::Type::Array || n == 0 || reply.elements.size() != 2 * n + 1) {
        return false;
    }
    uint64_t flag = 0;
    if (!integer_at(reply, 2 * n, flag) || flag > 1) {
        return false;
    }
    if (applied != nullptr) {
        *applied = flag == 1;
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
