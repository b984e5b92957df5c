// The response cache's LOOKUP (single and batch), STORE, RELEASE, RENEW, ABANDON and INVALIDATE
// scripts, their arguments and replies; semantics in cache_scripts.hpp. No nginx header (layer:
// redis).
#include "redis/cache_scripts.hpp"

#include <charconv>
#include <cstring>
#include <system_error>
#include <utility>

namespace throttle::redis {
namespace {

// Helpers shared by the scripts:
//   int(s)   a non-negative integer argument below 2^53, or nil
//   genv(v)  a generation key's value (GET's: false when missing) as (number, canonical decimal
//            bytes); missing: 0, "0"; raises an error reply for anything that is not a canonical
//            decimal below 2^53
//   gen(k)   genv() of GET k
//   owner(s) a fill lock's owner token: 1 to 64 bytes (cache_fill_token_max)
constexpr std::string_view lua_helpers = R"lua(
local floor, find, sf = math.floor, string.find, string.format
local function int(s)
  local v = tonumber(s)
  if v == nil or v ~= v or v < 0 or v >= 9007199254740992 or v ~= floor(v) then
    return nil
  end
  return v
end
local function genv(v)
  if not v then
    return 0, '0'
  end
  if #v > 16 or not (v == '0' or find(v, '^[1-9]%d*$')) or tonumber(v) >= 9007199254740992 then
    error({err = 'ERR throttle cache: a generation key holds no generation'})
  end
  return tonumber(v), v
end
local function gen(k)
  return genv(redis.call('GET', k))
end
local function owner(s)
  return #s > 0 and #s <= 64
end
)lua";

constexpr std::string_view lua_lookup = R"lua(
local E = 'ERR throttle cache lookup: '
if #KEYS ~= 2 or #ARGV ~= 7 then
  return redis.error_reply(E .. 'expected 2 keys and 7 arguments')
end
local prefix, ns, id, hex, want, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[6], ARGV[7]
local tag = prefix .. '{' .. ns .. ':' .. id .. '}'
if KEYS[1] ~= tag .. ':g' or KEYS[2] ~= prefix .. '{' .. ns .. '}:g' then
  return redis.error_reply(E .. 'keys are not the generation keys of prefix, namespace, id')
end
if #hex ~= 64 or find(hex, '[^0-9a-f]') then
  return redis.error_reply(E .. 'the key is not 64 lowercase hex digits')
end
if want ~= '0' and want ~= '1' then
  return redis.error_reply(E .. 'want_lock is not 0 or 1')
end
local lt = int(ARGV[5])
if want == '1' and (lt == nil or lt < 1) then
  return redis.error_reply(E .. 'bad lock ttl')
end
if want == '1' and not owner(token) then
  return redis.error_reply(E .. 'bad owner token')
end
local ng, ns_text = gen(KEYS[2])
local ug, user_text = gen(KEYS[1])
local ek = tag .. ':e:' .. ns_text .. '.' .. user_text .. ':' .. hex
local entry = redis.call('GET', ek)
local lock = 0
if not entry and want == '1' then
  if redis.call('SET', ek .. ':l', token, 'NX', 'PX', sf('%d', lt)) then
    lock = 1
  else
    redis.call('SET', ek .. ':w', '1', 'PX', sf('%d', lt))
  end
end
return {ng, ug, entry, lock}
)lua";

// The batch: n LOOKUPs as if run one after another in one script. No lookup writes a key any
// lookup reads (generation keys end in ":g", entry keys in a hex digit, locks and waiter marks in
// ":l" and ":w"), so every read is hoisted: one MGET of all generation keys, one MGET of all
// entry keys, and, when either MGET found a key missing, one EXISTS of all 3n keys whose count
// must be what the MGETs found (MGET answers nil for a key of another type, where LOOKUP's GET
// raised WRONGTYPE). Then, in order, the SETs of the misses
// that want the lock, which is where one lookup sees another's: the order matters only there.
// Every check and every read comes before the first write: an error reply writes nothing.
// (64: cache_lookup_batch_max; 7: the arguments of one lookup.)
constexpr std::string_view lua_lookup_batch = R"lua(
local E = 'ERR throttle cache lookup batch: '
local n = #ARGV / 7
if n < 1 or n > 64 or n ~= floor(n) or #KEYS ~= 2 * n then
  return redis.error_reply(E .. 'expected 1 to 64 lookups of 2 keys and 7 arguments each')
end
local gv = redis.call('MGET', unpack(KEYS))
local ks, out, found = {unpack(ARGV, 1, 3 * n)}, {unpack(ARGV, 1, 4 * n)}, 0  -- sized once
for i = 1, n do
  local a, k = 7 * i - 7, 2 * i
  local prefix, ns, id, hex, want = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 6]
  if KEYS[k - 1] ~= prefix .. '{' .. ns .. ':' .. id .. '}:g' or
     KEYS[k] ~= prefix .. '{' .. ns .. '}:g' then
    return redis.error_reply(sf('%slookup %d: keys are not the generation keys of prefix, ' ..
                                'namespace, id', E, i))
  end
  if #hex ~= 64 or not find(hex, '^[0-9a-f]*$') then  -- 5 times cheaper than '[^0-9a-f]'
    return redis.error_reply(sf('%slookup %d: the key is not 64 lowercase hex digits', E, i))
  end
  if want == '1' then
    local lt = int(ARGV[a + 5])
    if lt == nil or lt < 1 then
      return redis.error_reply(sf('%slookup %d: bad lock ttl', E, i))
    end
    if not owner(ARGV[a + 7]) then
      return redis.error_reply(sf('%slookup %d: bad owner token', E, i))
    end
  elseif want ~= '0' then
    return redis.error_reply(sf('%slookup %d: want_lock is not 0 or 1', E, i))
  end
  local uv, nv = gv[k - 1], gv[k]
  if uv then found = found + 1 end
  if nv then found = found + 1 end
  local ng, ns_text = genv(nv)
  local ug, user_text = genv(uv)
  ks[i] = prefix .. '{' .. ns .. ':' .. id .. '}:e:' .. ns_text .. '.' .. user_text .. ':' .. hex
  out[4 * i - 3] = ng
  out[4 * i - 2] = ug
end
local ev = redis.call('MGET', unpack(ks, 1, n))
for i = 1, n do
  if ev[i] then found = found + 1 end
  ks[n + i], ks[2 * n + i] = KEYS[2 * i - 1], KEYS[2 * i]
end
if found < 3 * n and redis.call('EXISTS', unpack(ks)) ~= found then
  return redis.error_reply(E .. 'a generation or entry key holds another type')
end
for i = 1, n do
  local entry, lock = ev[i], 0
  if not entry and ARGV[7 * i - 1] == '1' then
    local ek, px = ks[i], sf('%d', int(ARGV[7 * i - 2]))
    if redis.call('SET', ek .. ':l', ARGV[7 * i], 'NX', 'PX', px) then
      lock = 1
    else
      redis.call('SET', ek .. ':w', '1', 'PX', px)
    end
  end
  out[4 * i - 1] = entry
  out[4 * i] = lock
end
return out
)lua";

constexpr std::string_view lua_store = R"lua(
local E = 'ERR throttle cache store: '
if #KEYS ~= 5 or #ARGV ~= 7 then
  return redis.error_reply(E .. 'expected 5 keys and 7 arguments')
end
if KEYS[2] ~= KEYS[1] .. ':l' or KEYS[3] ~= KEYS[1] .. ':w' then
  return redis.error_reply(E .. 'keys 2 and 3 are not the lock and waiter mark of key 1')
end
local ttl, gttl = int(ARGV[2]), int(ARGV[5])
if #ARGV[1] == 0 or ttl == nil or ttl < 1 or gttl == nil or ttl > gttl then
  return redis.error_reply(E .. 'empty entry or bad ttl')
end
if #ARGV[6] == 0 then
  return redis.error_reply(E .. 'empty channel')
end
local token = ARGV[7]
if not owner(token) then
  return redis.error_reply(E .. 'bad owner token')
end
local _, user_text = gen(KEYS[4])
local _, ns_text = gen(KEYS[5])
local stored, flag = 0, '0'
if ns_text == ARGV[3] and user_text == ARGV[4] then
  local gx = sf('%d', gttl)
  redis.call('SET', KEYS[1], ARGV[1], 'PX', sf('%d', ttl))
  for k = 4, 5 do  -- a missing generation key is created as '0' (the fast lookup needs it)
    if not redis.call('SET', KEYS[k], '0', 'NX', 'PX', gx) then
      redis.call('PEXPIRE', KEYS[k], gx)
    end
  end
  stored, flag = 1, '1'
end
local holder = redis.call('GET', KEYS[2])
if holder == token then
  redis.call('DEL', KEYS[2])
end
if (stored == 1 or not holder or holder == token) and redis.call('DEL', KEYS[3]) == 1 then
  redis.call('PUBLISH', ARGV[6], flag .. KEYS[1])
end
return stored
)lua";

constexpr std::string_view lua_release = R"lua(
local E = 'ERR throttle cache release: '
if #KEYS ~= 2 or #ARGV ~= 3 then
  return redis.error_reply(E .. 'expected 2 keys and 3 arguments')
end
local channel, entry, token = ARGV[1], ARGV[2], ARGV[3]
if #channel == 0 or #entry == 0 then
  return redis.error_reply(E .. 'empty channel or entry key')
end
if not owner(token) then
  return redis.error_reply(E .. 'bad owner token')
end
if KEYS[1] ~= entry .. ':l' or KEYS[2] ~= entry .. ':w' then
  return redis.error_reply(E .. 'keys are not the lock and waiter mark of the entry key')
end
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= token then
  return 0
end
if holder then
  redis.call('DEL', KEYS[1])
end
if redis.call('DEL', KEYS[2]) == 1 then
  redis.call('PUBLISH', channel, '0' .. entry)
  return 1
end
return 0
)lua";

constexpr std::string_view lua_renew = R"lua(
local E = 'ERR throttle cache renew: '
if #KEYS ~= 1 or #ARGV ~= 2 then
  return redis.error_reply(E .. 'expected 1 key and 2 arguments')
end
local token, lease = ARGV[1], int(ARGV[2])
if not owner(token) or lease == nil or lease < 1 then
  return redis.error_reply(E .. 'bad owner token or lease')
end
if KEYS[1]:sub(-2) ~= ':l' then
  return redis.error_reply(E .. 'the key is not a fill lock')
end
if redis.call('GET', KEYS[1]) ~= token then
  return 0
end
redis.call('PEXPIRE', KEYS[1], sf('%d', lease))
return 1
)lua";

constexpr std::string_view lua_abandon = R"lua(
local E = 'ERR throttle cache abandon: '
if #KEYS ~= 2 or #ARGV ~= 6 then
  return redis.error_reply(E .. 'expected 2 keys and 6 arguments')
end
local prefix, ns, id, hex, channel, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local tag = prefix .. '{' .. ns .. ':' .. id .. '}'
if KEYS[1] ~= tag .. ':g' or KEYS[2] ~= prefix .. '{' .. ns .. '}:g' then
  return redis.error_reply(E .. 'keys are not the generation keys of prefix, namespace, id')
end
if #hex ~= 64 or find(hex, '[^0-9a-f]') then
  return redis.error_reply(E .. 'the key is not 64 lowercase hex digits')
end
if #channel == 0 then
  return redis.error_reply(E .. 'empty channel')
end
if not owner(token) then
  return redis.error_reply(E .. 'bad owner token')
end
local _, ns_text = gen(KEYS[2])
local _, user_text = gen(KEYS[1])
local ek = tag .. ':e:' .. ns_text .. '.' .. user_text .. ':' .. hex
local holder = redis.call('GET', ek .. ':l')
if holder and holder ~= token then
  return 0
end
local released = 0
if holder then
  released = redis.call('DEL', ek .. ':l')
end
if redis.call('DEL', ek .. ':w') == 1 then
  redis.call('PUBLISH', channel, '0' .. ek)
end
return released
)lua";

constexpr std::string_view lua_invalidate = R"lua(
local n = #KEYS
local gttl = int(ARGV[1])
local publish = #ARGV > 1
if n == 0 or gttl == nil or gttl < 1 or (#ARGV ~= 1 and #ARGV ~= n + 3) or
   (publish and (#ARGV[2] == 0 or #ARGV[3] == 0)) then
  return redis.error_reply('ERR throttle cache invalidate: expected keys and a generation ttl')
end
local out = {}
local msg = {}
for i = 1, n do
  local v = redis.call('INCR', KEYS[i])
  redis.call('PEXPIRE', KEYS[i], sf('%d', gttl))
  if v >= 9007199254740992 then
    return redis.error_reply('ERR throttle cache invalidate: generation at 2^53')
  end
  out[i] = v
  if publish then
    msg[i] = sf('%d:%s', v, ARGV[i + 3])
  end
end
if publish then
  redis.call('PUBLISH', ARGV[2], 'u' .. ARGV[3] .. ' ' .. table.concat(msg, ' '))
end
return out
)lua";

// ---- Redis Cluster variants (cache_scripts.hpp, "On a Redis Cluster") ----

// LOOKUP BATCH with the namespace generation as ARGV (the worker's mirror): KEYS = the user
// generation key of each lookup (all of one slot), ARGV = 8 per lookup (LOOKUP's 7, then NSGEN).
constexpr std::string_view lua_lookup_batch_cluster = R"lua(
local E = 'ERR throttle cache lookup batch: '
local n = #ARGV / 8
if n < 1 or n > 64 or n ~= floor(n) or #KEYS ~= n then
  return redis.error_reply(E .. 'expected 1 to 64 lookups of 1 key and 8 arguments each')
end
local gv = redis.call('MGET', unpack(KEYS))
local ks, out, found = {unpack(ARGV, 1, 2 * n)}, {unpack(ARGV, 1, 4 * n)}, 0  -- sized once
for i = 1, n do
  local a = 8 * i - 8
  local prefix, ns, id, hex, want = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], ARGV[a + 6]
  if KEYS[i] ~= prefix .. '{' .. ns .. ':' .. id .. '}:g' then
    return redis.error_reply(sf('%slookup %d: the key is not the generation key of prefix, ' ..
                                'namespace, id', E, i))
  end
  if #hex ~= 64 or not find(hex, '^[0-9a-f]*$') then
    return redis.error_reply(sf('%slookup %d: the key is not 64 lowercase hex digits', E, i))
  end
  if want == '1' then
    local lt = int(ARGV[a + 5])
    if lt == nil or lt < 1 then
      return redis.error_reply(sf('%slookup %d: bad lock ttl', E, i))
    end
    if not owner(ARGV[a + 7]) then
      return redis.error_reply(sf('%slookup %d: bad owner token', E, i))
    end
  elseif want ~= '0' then
    return redis.error_reply(sf('%slookup %d: want_lock is not 0 or 1', E, i))
  end
  local nt = ARGV[a + 8]
  if #nt > 16 or not (nt == '0' or find(nt, '^[1-9]%d*$')) or tonumber(nt) >= 9007199254740992 then
    return redis.error_reply(sf('%slookup %d: bad namespace generation', E, i))
  end
  local uv = gv[i]
  if uv then found = found + 1 end
  local ug, user_text = genv(uv)
  ks[i] = prefix .. '{' .. ns .. ':' .. id .. '}:e:' .. nt .. '.' .. user_text .. ':' .. hex
  out[4 * i - 3] = tonumber(nt)
  out[4 * i - 2] = ug
end
local ev = redis.call('MGET', unpack(ks, 1, n))
for i = 1, n do
  if ev[i] then found = found + 1 end
  ks[n + i] = KEYS[i]
end
if found < 2 * n and redis.call('EXISTS', unpack(ks)) ~= found then
  return redis.error_reply(E .. 'a generation or entry key holds another type')
end
for i = 1, n do
  local entry, lock = ev[i], 0
  if not entry and ARGV[8 * i - 2] == '1' then
    local ek, px = ks[i], sf('%d', int(ARGV[8 * i - 3]))
    if redis.call('SET', ek .. ':l', ARGV[8 * i - 1], 'NX', 'PX', px) then
      lock = 1
    else
      redis.call('SET', ek .. ':w', '1', 'PX', px)
    end
  end
  out[4 * i - 1] = entry
  out[4 * i] = lock
end
return out
)lua";

// STORE without the namespace generation key: KEYS = E, E":l", E":w", the user generation key;
// ARGV as STORE's (NSGEN is the mirror's, only part of E). Checks the user generation only.
constexpr std::string_view lua_store_cluster = R"lua(
local E = 'ERR throttle cache store: '
if #KEYS ~= 4 or #ARGV ~= 7 then
  return redis.error_reply(E .. 'expected 4 keys and 7 arguments')
end
if KEYS[2] ~= KEYS[1] .. ':l' or KEYS[3] ~= KEYS[1] .. ':w' then
  return redis.error_reply(E .. 'keys 2 and 3 are not the lock and waiter mark of key 1')
end
local ttl, gttl = int(ARGV[2]), int(ARGV[5])
if #ARGV[1] == 0 or ttl == nil or ttl < 1 or gttl == nil or ttl > gttl then
  return redis.error_reply(E .. 'empty entry or bad ttl')
end
if #ARGV[6] == 0 then
  return redis.error_reply(E .. 'empty channel')
end
local token = ARGV[7]
if not owner(token) then
  return redis.error_reply(E .. 'bad owner token')
end
local _, user_text = gen(KEYS[4])
local stored, flag = 0, '0'
if user_text == ARGV[4] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', sf('%d', ttl))
  redis.call('PEXPIRE', KEYS[4], sf('%d', gttl))
  stored, flag = 1, '1'
end
local holder = redis.call('GET', KEYS[2])
if holder == token then
  redis.call('DEL', KEYS[2])
end
if (stored == 1 or not holder or holder == token) and redis.call('DEL', KEYS[3]) == 1 then
  redis.call('PUBLISH', ARGV[6], flag .. KEYS[1])
end
return stored
)lua";

// ABANDON with the namespace generation as ARGV[7]: KEYS = the user generation key.
constexpr std::string_view lua_abandon_cluster = R"lua(
local E = 'ERR throttle cache abandon: '
if #KEYS ~= 1 or #ARGV ~= 7 then
  return redis.error_reply(E .. 'expected 1 key and 7 arguments')
end
local prefix, ns, id, hex, channel, token = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local tag = prefix .. '{' .. ns .. ':' .. id .. '}'
if KEYS[1] ~= tag .. ':g' then
  return redis.error_reply(E .. 'the key is not the generation key of prefix, namespace, id')
end
if #hex ~= 64 or find(hex, '[^0-9a-f]') then
  return redis.error_reply(E .. 'the key is not 64 lowercase hex digits')
end
if #channel == 0 then
  return redis.error_reply(E .. 'empty channel')
end
if not owner(token) then
  return redis.error_reply(E .. 'bad owner token')
end
local _, ns_text = genv(ARGV[7])
local _, user_text = gen(KEYS[1])
local ek = tag .. ':e:' .. ns_text .. '.' .. user_text .. ':' .. hex
local holder = redis.call('GET', ek .. ':l')
if holder and holder ~= token then
  return 0
end
local released = 0
if holder then
  released = redis.call('DEL', ek .. ':l')
end
if redis.call('DEL', ek .. ':w') == 1 then
  redis.call('PUBLISH', channel, '0' .. ek)
end
return released
)lua";

// PURGE on a cluster: INVALIDATE of one namespace generation key, then PUBLISH CHANNEL
// "g" GEN ":" NS (classic PUBLISH reaches the subscribers of every node).
//   KEYS = namespace_generation_key(PREFIX, NS)   ARGV = generation_ttl_ms, CHANNEL, NS
constexpr std::string_view lua_purge_cluster = R"lua(
local gttl = int(ARGV[1])
if #KEYS ~= 1 or #ARGV ~= 3 or gttl == nil or gttl < 1 or #ARGV[2] == 0 or #ARGV[3] == 0 then
  return redis.error_reply('ERR throttle cache purge: expected 1 key, a ttl, a channel, a namespace')
end
local v = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], sf('%d', gttl))
if v >= 9007199254740992 then
  return redis.error_reply('ERR throttle cache purge: generation at 2^53')
end
redis.call('PUBLISH', ARGV[2], sf('g%d:%s', v, ARGV[3]))
return {v}
)lua";

// The mirror's read of a namespace generation: GET it, and when it exists push its expiry to
// ARGV[1] (a generation outlives every entry stored under it while any worker reads it).
//   KEYS = namespace_generation_key(PREFIX, NS)   ARGV = ttl_ms   Reply: the generation.
constexpr std::string_view lua_ns_generation = R"lua(
local ttl = int(ARGV[1])
if #KEYS ~= 1 or #ARGV ~= 1 or ttl == nil or ttl < 1 then
  return redis.error_reply('ERR throttle cache namespace generation: expected 1 key and a ttl')
end
local g = genv(redis.call('GET', KEYS[1]))
if g > 0 then
  redis.call('PEXPIRE', KEYS[1], sf('%d', ttl))
end
return g
)lua";

std::string source_of(std::string_view body) {
    constexpr std::string_view shebang = "#!lua";
    std::string s;
    s.reserve(shebang.size() + lua_helpers.size() + body.size());
    s.append(shebang);
    s.append(lua_helpers);  // starts with a newline
    s.append(body);         // starts with a newline
    return s;
}

// An integer in [lo, cache_generation_limit).
bool generation_of(const Reply& e, uint64_t lo, uint64_t& v) noexcept {
    if (e.type != Reply::Type::Integer || e.integer < 0 || uint64_t(e.integer) < lo ||
        uint64_t(e.integer) >= cache_generation_limit) {
        return false;
    }
    v = uint64_t(e.integer);
    return true;
}

bool generation_at(const Reply& r, size_t i, uint64_t lo, uint64_t& v) noexcept {
    return generation_of(r.elements[i], lo, v);
}

// Everything of a lookup's 4 elements e[0..4) but the entry's bytes.
bool parse_lookup_elements(const Reply* e, CacheLookup& out) noexcept {
    if (!generation_of(e[0], 0, out.ns_gen) || !generation_of(e[1], 0, out.user_gen)) {
        return false;
    }
    const Reply& entry = e[2];
    const Reply& lock = e[3];
    if (entry.type == Reply::Type::Nil) {
        out.hit = false;
    } else if (entry.type == Reply::Type::String && !entry.str.empty()) {
        out.hit = true;
    } else {
        return false;
    }
    if (lock.type != Reply::Type::Integer || (lock.integer != 0 && lock.integer != 1) ||
        (out.hit && lock.integer == 1)) {
        return false;
    }
    out.lock_taken = lock.integer == 1;
    return true;
}

// Everything of a single lookup's reply but the entry's bytes.
bool parse_lookup_shape(const Reply& reply, CacheLookup& out) noexcept {
    return reply.type == Reply::Type::Array && reply.elements.size() == 4 &&
           parse_lookup_elements(reply.elements.data(), out);
}

// A lookup's KEYS and ARGV, appended to `out` (single and batch alike). May throw
// std::bad_alloc.
bool add_lookup_args(const CacheTarget& t, int64_t lock_ttl_ms, bool want_lock,
                     std::string_view token, EvalArgs& out) {
    if (!core::cache::valid_namespace(t.ns) ||
        (want_lock && (lock_ttl_ms < 1 || !valid_fill_token(token)))) {
        return false;
    }
    out.add_key(core::cache::generation_key(t.prefix, t.ns, t.id));
    out.add_key(core::cache::namespace_generation_key(t.prefix, t.ns));
    out.add_arg(t.prefix);
    out.add_arg(t.ns);
    out.add_arg(t.id);
    out.add_arg(core::hex(t.key));
    out.add_arg(want_lock ? lock_ttl_ms : int64_t(0));
    out.add_arg(std::string_view(want_lock ? "1" : "0"));
    out.add_arg(want_lock ? token : std::string_view());
    return true;
}

}  // namespace

const Script& cache_lookup_script() {
    static const Script* script = new Script(source_of(lua_lookup));
    return *script;
}

const Script& cache_lookup_batch_script() {
    static const Script* script = new Script(source_of(lua_lookup_batch));
    return *script;
}

const Script& cache_store_script() {
    static const Script* script = new Script(source_of(lua_store));
    return *script;
}

const Script& cache_release_script() {
    static const Script* script = new Script(source_of(lua_release));
    return *script;
}

const Script& cache_renew_script() {
    static const Script* script = new Script(source_of(lua_renew));
    return *script;
}

const Script& cache_abandon_script() {
    static const Script* script = new Script(source_of(lua_abandon));
    return *script;
}

const Script& cache_lookup_batch_cluster_script() {
    static const Script* script = new Script(source_of(lua_lookup_batch_cluster));
    return *script;
}

const Script& cache_store_cluster_script() {
    static const Script* script = new Script(source_of(lua_store_cluster));
    return *script;
}

const Script& cache_abandon_cluster_script() {
    static const Script* script = new Script(source_of(lua_abandon_cluster));
    return *script;
}

const Script& cache_purge_cluster_script() {
    static const Script* script = new Script(source_of(lua_purge_cluster));
    return *script;
}

const Script& cache_ns_generation_script() {
    static const Script* script = new Script(source_of(lua_ns_generation));
    return *script;
}

const Script& cache_invalidate_script() {
    static const Script* script = new Script(source_of(lua_invalidate));
    return *script;
}

// ---- LOOKUP ----

bool valid_fill_token(std::string_view token) noexcept {
    return !token.empty() && token.size() <= cache_fill_token_max;
}

bool build_cache_lookup_args(const CacheTarget& t, int64_t lock_ttl_ms, bool want_lock,
                             std::string_view token, EvalArgs& out) noexcept {
    out.clear();
    try {
        if (add_lookup_args(t, lock_ttl_ms, want_lock, token, out)) {
            return true;
        }
    } catch (...) {
    }
    out.clear();
    return false;
}

bool parse_cache_lookup_reply(const Reply& reply, CacheLookup& out) noexcept {
    if (!parse_lookup_shape(reply, out)) {
        return false;
    }
    try {
        out.entry = out.hit ? reply.elements[2].str : std::string();
    } catch (...) {
        return false;
    }
    return true;
}

bool parse_cache_lookup_reply(Reply&& reply, CacheLookup& out) noexcept {
    if (!parse_lookup_shape(reply, out)) {
        return false;
    }
    out.entry = out.hit ? std::move(reply.elements[2].str) : std::string();
    return true;
}

bool build_cache_lookup_batch_args(const CacheLookupRequest* reqs, size_t n,
                                   EvalArgs& out) noexcept {
    out.clear();
    if (n == 0 || n > cache_lookup_batch_max) {
        return false;
    }
    try {
        size_t i = 0;
        while (i < n && add_lookup_args(reqs[i].target, reqs[i].lock_ttl_ms, reqs[i].want_lock,
                                        reqs[i].token, out)) {
            i++;
        }
        if (i == n) {
            return true;
        }
    } catch (...) {
    }
    out.clear();
    return false;
}

bool parse_cache_lookup_batch_reply(Reply&& reply, size_t n,
                                    std::vector<CacheLookup>& out) noexcept {
    if (reply.type != Reply::Type::Array || n == 0 || n > cache_lookup_batch_max ||
        reply.elements.size() != 4 * n) {
        return false;
    }
    try {
        out.resize(n);
    } catch (...) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        Reply* e = reply.elements.data() + 4 * i;
        CacheLookup& l = out[i];
        if (!parse_lookup_elements(e, l)) {
            return false;
        }
        if (l.hit) {
            l.entry = std::move(e[2].str);
        } else {
            l.entry.clear();
        }
    }
    return true;
}

// ---- FAST LOOKUP ----

bool build_cache_fast_lookup_argv(const CacheTarget* targets,
                                  const core::cache::Generation* guesses, size_t n,
                                  EvalArgs& out) noexcept {
    out.clear();
    if (n == 0 || n > cache_lookup_batch_max) {
        return false;
    }
    try {
        out.add_arg(std::string_view("MGET"));
        for (size_t i = 0; i < n; i++) {
            const CacheTarget& t = targets[i];
            if (!core::cache::valid_namespace(t.ns) || guesses[i].ns >= cache_generation_limit ||
                guesses[i].user >= cache_generation_limit) {
                out.clear();
                return false;
            }
            out.add_arg(core::cache::generation_key(t.prefix, t.ns, t.id));
            out.add_arg(core::cache::namespace_generation_key(t.prefix, t.ns));
            out.add_arg(cache_entry_key(t, guesses[i]));
        }
    } catch (...) {
        out.clear();
        return false;
    }
    return true;
}

namespace {

// Whether a generation key's value read by MGET is exactly `g` as LOOKUP writes it in the entry
// key (a canonical decimal); nil is never a match.
bool holds_generation(const Reply& e, uint64_t g) noexcept {
    if (e.type != Reply::Type::String) {
        return false;
    }
    char buf[24];
    auto [end, ec] = std::to_chars(buf, buf + sizeof buf, g);
    return ec == std::errc() && e.str == std::string_view(buf, size_t(end - buf));
}

}  // namespace

bool parse_cache_fast_lookup_reply(Reply&& reply, const core::cache::Generation* guesses, size_t n,
                                   std::vector<CacheLookup>& out) noexcept {
    if (reply.type != Reply::Type::Array || n == 0 || n > cache_lookup_batch_max ||
        reply.elements.size() != 3 * n) {
        return false;
    }
    for (const Reply& e : reply.elements) {
        if (e.type != Reply::Type::Nil && e.type != Reply::Type::String) {
            return false;
        }
    }
    try {
        out.resize(n);
    } catch (...) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        Reply* e = reply.elements.data() + 3 * i;
        CacheLookup& l = out[i];
        l.ns_gen = guesses[i].ns;
        l.user_gen = guesses[i].user;
        l.lock_taken = false;
        l.hit = holds_generation(e[0], guesses[i].user) && holds_generation(e[1], guesses[i].ns) &&
                e[2].type == Reply::Type::String && !e[2].str.empty();
        if (l.hit) {
            l.entry = std::move(e[2].str);
        } else {
            l.entry.clear();
        }
    }
    return true;
}

std::string cache_entry_key(const CacheTarget& t, const core::cache::Generation& gen) {
    return core::cache::entry_key(t.prefix, t.ns, t.id, gen, t.key);
}

std::vector<std::string> cache_fill_lock_argv(const CacheTarget& t,
                                              const core::cache::Generation& gen,
                                              std::string_view token, int64_t lock_ttl_ms) {
    if (lock_ttl_ms < 1 || !valid_fill_token(token)) {
        return {};
    }
    return {"SET",
            core::cache::fill_lock_key(cache_entry_key(t, gen)),
            std::string(token),
            "NX",
            "PX",
            std::to_string(lock_ttl_ms)};
}

bool parse_cache_fill_lock_reply(const Reply& reply, bool& taken) noexcept {
    if (reply.type == Reply::Type::Nil) {
        taken = false;
        return true;
    }
    if (reply.type == Reply::Type::Status && reply.str == "OK") {
        taken = true;
        return true;
    }
    return false;
}

// ---- STORE ----

bool build_cache_store_args(const CacheTarget& t, const core::cache::Generation& gen,
                            std::string_view token, std::string_view entry, int64_t ttl_ms,
                            std::string_view channel, EvalArgs& out) noexcept {
    out.clear();
    if (!core::cache::valid_namespace(t.ns) || entry.empty() || ttl_ms < 1 ||
        ttl_ms > cache_generation_ttl_ms || channel.empty() || !valid_fill_token(token)) {
        return false;
    }
    try {
        const std::string key = cache_entry_key(t, gen);
        out.add_key(key);
        out.add_key(core::cache::fill_lock_key(key));
        out.add_key(core::cache::fill_waiter_key(key));
        out.add_key(core::cache::generation_key(t.prefix, t.ns, t.id));
        out.add_key(core::cache::namespace_generation_key(t.prefix, t.ns));
        out.add_arg(entry);
        out.add_arg(ttl_ms);
        out.add_arg(gen.ns);
        out.add_arg(gen.user);
        out.add_arg(cache_generation_ttl_ms);
        out.add_arg(channel);
        out.add_arg(token);
    } catch (...) {
        out.clear();
        return false;
    }
    return true;
}

bool parse_cache_store_reply(const Reply& reply, bool& stored) noexcept {
    if (reply.type != Reply::Type::Integer || (reply.integer != 0 && reply.integer != 1)) {
        return false;
    }
    stored = reply.integer == 1;
    return true;
}

// ---- RELEASE ----

bool build_cache_release_args(const CacheTarget& t, const core::cache::Generation& gen,
                              std::string_view token, std::string_view channel,
                              EvalArgs& out) noexcept {
    out.clear();
    if (!core::cache::valid_namespace(t.ns) || channel.empty() || !valid_fill_token(token)) {
        return false;
    }
    try {
        const std::string key = cache_entry_key(t, gen);
        out.add_key(core::cache::fill_lock_key(key));
        out.add_key(core::cache::fill_waiter_key(key));
        out.add_arg(channel);
        out.add_arg(key);
        out.add_arg(token);
    } catch (...) {
        out.clear();
        return false;
    }
    return true;
}

bool build_cache_abandon_args(const CacheTarget& t, std::string_view token,
                              std::string_view channel, EvalArgs& out) noexcept {
    out.clear();
    if (!core::cache::valid_namespace(t.ns) || channel.empty() || !valid_fill_token(token)) {
        return false;
    }
    try {
        out.add_key(core::cache::generation_key(t.prefix, t.ns, t.id));
        out.add_key(core::cache::namespace_generation_key(t.prefix, t.ns));
        out.add_arg(t.prefix);
        out.add_arg(t.ns);
        out.add_arg(t.id);
        out.add_arg(core::hex(t.key));
        out.add_arg(channel);
        out.add_arg(token);
    } catch (...) {
        out.clear();
        return false;
    }
    return true;
}

bool parse_cache_abandon_reply(const Reply& reply, bool& released) noexcept {
    if (reply.type != Reply::Type::Integer || (reply.integer != 0 && reply.integer != 1)) {
        return false;
    }
    released = reply.integer == 1;
    return true;
}

bool parse_cache_release_reply(const Reply& reply, bool& had_waiters) noexcept {
    if (reply.type != Reply::Type::Integer || (reply.integer != 0 && reply.integer != 1)) {
        return false;
    }
    had_waiters = reply.integer == 1;
    return true;
}

// ---- RENEW ----

bool build_cache_renew_args(std::string_view entry_key, std::string_view token, int64_t lease_ms,
                            EvalArgs& out) noexcept {
    out.clear();
    if (entry_key.empty() || !valid_fill_token(token) || lease_ms < 1) {
        return false;
    }
    try {
        out.add_key(core::cache::fill_lock_key(entry_key));
        out.add_arg(token);
        out.add_arg(lease_ms);
    } catch (...) {
        out.clear();
        return false;
    }
    return true;
}

bool parse_cache_renew_reply(const Reply& reply, bool& held) noexcept {
    if (reply.type != Reply::Type::Integer || (reply.integer != 0 && reply.integer != 1)) {
        return false;
    }
    held = reply.integer == 1;
    return true;
}

// ---- wake-up messages ----

std::string cache_fill_channel(std::string_view prefix) {
    constexpr std::string_view suffix = "cache:filled";
    std::string s;
    s.reserve(prefix.size() + suffix.size());
    s.append(prefix);
    s.append(suffix);
    return s;
}

bool parse_cache_fill_message(std::string_view msg, bool& stored,
                              std::string_view& entry_key) noexcept {
    if (msg.size() < 2 || (msg[0] != '0' && msg[0] != '1')) {
        return false;
    }
    stored = msg[0] == '1';
    entry_key = msg.substr(1);
    return true;
}

// ---- Redis Cluster variants ----

bool build_cache_lookup_batch_cluster_args(const CacheLookupRequest* reqs, const uint64_t* ns_gens,
                                           size_t n, EvalArgs& out) noexcept {
    out.clear();
    if (n == 0 || n > cache_lookup_batch_max) {
        return false;
    }
    try {
        for (size_t i = 0; i < n; i++) {
            const CacheLookupRequest& r = reqs[i];
            if (!core::cache::valid_namespace(r.target.ns) ||
                ns_gens[i] >= cache_generation_limit ||
                (r.want_lock && (r.lock_ttl_ms < 1 || !valid_fill_token(r.token)))) {
                out.clear();
                return false;
            }
            out.add_key(core::cache::generation_key(r.target.prefix, r.target.ns, r.target.id));
            out.add_arg(r.target.prefix);
            out.add_arg(r.target.ns);
            out.add_arg(r.target.id);
            out.add_arg(core::hex(r.target.key));
            out.add_arg(r.want_lock ? r.lock_ttl_ms : int64_t(0));
            out.add_arg(std::string_view(r.want_lock ? "1" : "0"));
            out.add_arg(r.want_lock ? r.token : std::string_view());
            out.add_arg(ns_gens[i]);
        }
        return true;
    } catch (...) {
    }
    out.clear();
    return false;
}

bool build_cache_store_cluster_args(const CacheTarget& t, const core::cache::Generation& gen,
                                    std::string_view token, std::string_view entry, int64_t ttl_ms,
                                    std::string_view channel, EvalArgs& out) noexcept {
    if (!build_cache_store_args(t, gen, token, entry, ttl_ms, channel, out)) {
        return false;
    }
    try {
        std::vector<std::string> keys(out.keys().begin(), out.keys().end() - 1);
        std::vector<std::string> args(out.args().begin(), out.args().end());
        out.clear();
        for (const std::string& k : keys) {
            out.add_key(k);
        }
        for (const std::string& a : args) {
            out.add_arg(a);
        }
    } catch (...) {
        out.clear();
        return false;
    }
    return true;
}

bool build_cache_abandon_cluster_args(const CacheTarget& t, uint64_t ns_gen, std::string_view token,
                                      std::string_view channel, EvalArgs& out) noexcept {
    out.clear();
    if (!core::cache::valid_namespace(t.ns) || channel.empty() || !valid_fill_token(token) ||
        ns_gen >= cache_generation_limit) {
        return false;
    }
    try {
        out.add_key(core::cache::generation_key(t.prefix, t.ns, t.id));
        out.add_arg(t.prefix);
        out.add_arg(t.ns);
        out.add_arg(t.id);
        out.add_arg(core::hex(t.key));
        out.add_arg(channel);
        out.add_arg(token);
        out.add_arg(ns_gen);
    } catch (...) {
        out.clear();
        return false;
    }
    return true;
}

bool build_cache_purge_cluster_args(std::string_view prefix, std::string_view ns,
                                    std::string_view channel, EvalArgs& out) noexcept {
    out.clear();
    if (!core::cache::valid_namespace(ns) || channel.empty()) {
        return false;
    }
    try {
        out.add_key(core::cache::namespace_generation_key(prefix, ns));
        out.add_arg(cache_generation_ttl_ms);
        out.add_arg(channel);
        out.add_arg(ns);
    } catch (...) {
        out.clear();
        return false;
    }
    return true;
}

bool build_cache_ns_generation_args(std::string_view prefix, std::string_view ns,
                                    EvalArgs& out) noexcept {
    out.clear();
    if (!core::cache::valid_namespace(ns)) {
        return false;
    }
    try {
        out.add_key(core::cache::namespace_generation_key(prefix, ns));
        out.add_arg(cache_ns_generation_ttl_ms);
    } catch (...) {
        out.clear();
        return false;
    }
    return true;
}

bool parse_cache_ns_generation_reply(const Reply& reply, uint64_t& gen) noexcept {
    return generation_of(reply, 0, gen);
}

bool parse_cache_purge_message(std::string_view msg, uint64_t& gen, std::string_view& ns) noexcept {
    if (msg.size() < 4 || msg[0] != 'g') {
        return false;
    }
    size_t colon = msg.find(':', 1);
    if (colon == std::string_view::npos || colon == 1 || colon > 17 || colon + 1 == msg.size()) {
        return false;
    }
    uint64_t v = 0;
    for (size_t i = 1; i < colon; i++) {
        if (msg[i] < '0' || msg[i] > '9' || (i == 1 && msg[i] == '0')) {
            return false;
        }
        v = v * 10 + uint64_t(msg[i] - '0');
    }
    if (v >= cache_generation_limit) {
        return false;
    }
    gen = v;
    ns = msg.substr(colon + 1);
    return true;
}

bool parse_cache_user_message(std::string_view msg, std::string_view& id,
                              std::string_view& rest) noexcept {
    if (msg.size() < 2 || msg[0] != 'u') {
        return false;
    }
    size_t sp = msg.find(' ');
    if (sp == std::string_view::npos || sp == 1 || sp + 1 >= msg.size()) {
        return false;
    }
    id = msg.substr(1, sp - 1);
    rest = msg.substr(sp + 1);
    return true;
}

bool next_cache_user_generation(std::string_view& rest, uint64_t& gen,
                                std::string_view& ns) noexcept {
    if (rest.empty()) {
        return false;
    }
    size_t sp = rest.find(' ');
    std::string_view item = rest.substr(0, sp);
    rest = sp == std::string_view::npos ? std::string_view() : rest.substr(sp + 1);
    // "GEN:NS" is a purge message without its "g".
    if (item.size() < 3 || item.size() > 100) {
        rest = {};
        return false;
    }
    char buf[128];
    buf[0] = 'g';
    std::memcpy(buf + 1, item.data(), item.size());
    std::string_view as_purge(buf, item.size() + 1);
    std::string_view n;
    if (!parse_cache_purge_message(as_purge, gen, n)) {
        rest = {};
        return false;
    }
    ns = item.substr(n.data() - buf - 1);
    return true;
}

// ---- INVALIDATE ----

bool build_cache_invalidate_args(std::string_view prefix, std::string_view id,
                                 const std::string_view* namespaces, size_t n,
                                 EvalArgs& out) noexcept {
    return build_cache_invalidate_args(prefix, id, namespaces, n, {}, out);
}

bool build_cache_invalidate_args(std::string_view prefix, std::string_view id,
                                 const std::string_view* namespaces, size_t n,
                                 std::string_view channel, EvalArgs& out) noexcept {
    out.clear();
    if (n == 0 || (!channel.empty() && id.empty())) {
        return false;
    }
    try {
        for (size_t i = 0; i < n; i++) {
            if (!core::cache::valid_namespace(namespaces[i])) {
                out.clear();
                return false;
            }
            out.add_key(core::cache::generation_key(prefix, namespaces[i], id));
        }
        out.add_arg(cache_generation_ttl_ms);
        if (!channel.empty()) {
            out.add_arg(channel);
            out.add_arg(id);
            for (size_t i = 0; i < n; i++) {
                out.add_arg(namespaces[i]);
            }
        }
    } catch (...) {
        out.clear();
        return false;
    }
    return true;
}

bool build_cache_invalidate_namespace_args(std::string_view prefix, std::string_view ns,
                                           EvalArgs& out) noexcept {
    out.clear();
    if (!core::cache::valid_namespace(ns)) {
        return false;
    }
    try {
        out.add_key(core::cache::namespace_generation_key(prefix, ns));
        out.add_arg(cache_generation_ttl_ms);
    } catch (...) {
        out.clear();
        return false;
    }
    return true;
}

bool parse_cache_invalidate_reply(const Reply& reply, size_t n,
                                  std::vector<uint64_t>& generations) noexcept {
    if (reply.type != Reply::Type::Array || n == 0 || reply.elements.size() != n) {
        return false;
    }
    try {
        generations.resize(n);
    } catch (...) {
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        if (!generation_at(reply, i, 1, generations[i])) {
            return false;
        }
    }
    return true;
}

}  // namespace throttle::redis
