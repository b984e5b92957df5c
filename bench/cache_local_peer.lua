-- bench/cache_local_peer.lua: the OpenResty peer of the local tier (bench/cache.sh lua_local),
-- the usual mlcache-style layering without the library: a lua_shared_dict (all workers of the
-- host) in front of Redis, in front of the upstream. Anonymous data: key = md5(path, sorted
-- query args), no cookie. L1 hit: the shared dict's value, no Redis command. L1 miss: GET from
-- Redis (lua-resty-redis, pooled connections); a Redis hit is copied into the dict for
-- LOCAL_TTL; a Redis miss fetches the upstream (ngx.location.capture), SETs Redis with EX and
-- fills the dict. Entry format as bench/cache_peer.lua: "<content-type>\n<body>".
--
-- What it does not do (and the module's local tier does): invalidate the dict when the entry
-- changes (mlcache needs its own ipc/pub-sub channel for that); here the dict copy lives its
-- LOCAL_TTL whatever happens in Redis.
local redis = require "nginx.redis"

local REDIS_PORT = %%REDIS_PORT%%
local POOL_SIZE = %%POOL_SIZE%%
local TTL = 3600
local LOCAL_TTL = 10 -- seconds, as throttle_cache_local's default ttl
local dict = ngx.shared.cache_local

local function send(v, status)
    local nl = v:find("\n", 1, true)
    local body = v:sub(nl + 1)
    ngx.status = 200
    ngx.header["Content-Type"] = v:sub(1, nl - 1)
    ngx.header["Content-Length"] = #body
    ngx.header["X-Cache"] = status
    ngx.print(body)
end

local args = ngx.req.get_uri_args()
local names = {}
for k in pairs(args) do
    names[#names + 1] = k
end
table.sort(names)
local parts = {}
for i, k in ipairs(names) do
    local v = args[k]
    if type(v) == "table" then
        v = table.concat(v, ",")
    elseif v == true then
        v = ""
    end
    parts[i] = k .. "=" .. v
end
local key = "luacache:anon:" .. ngx.md5(ngx.var.uri .. "\0" .. table.concat(parts, "&"))

-- L1: the shared dict.
local v = dict:get(key)
if v then
    send(v, "HIT")
    return
end

-- L2: Redis.
local red = redis:new()
red:set_timeout(1000)
local ok, err = red:connect("127.0.0.1", REDIS_PORT)
if not ok then
    ngx.log(ngx.ERR, "redis connect: ", err)
else
    v, err = red:get(key)
    if v and v ~= ngx.null then
        red:set_keepalive(60000, POOL_SIZE)
        dict:set(key, v, LOCAL_TTL)
        send(v, "HIT")
        return
    end
    if err then
        ngx.log(ngx.ERR, "redis get: ", err)
        ok = false
    end
end

-- L3: the upstream, through the internal location /_origin.
local res = ngx.location.capture("/_origin" .. ngx.var.uri, { args = ngx.var.args })
local ct = res.header["Content-Type"] or "application/octet-stream"
if res.status == 200 then
    local entry = ct .. "\n" .. res.body
    if ok then
        local stored
        stored, err = red:set(key, entry, "EX", TTL)
        if not stored then
            ngx.log(ngx.ERR, "redis set: ", err)
        end
    end
    dict:set(key, entry, LOCAL_TTL)
end
if ok then
    red:set_keepalive(60000, POOL_SIZE)
end
ngx.status = res.status
ngx.header["Content-Type"] = ct
ngx.header["Content-Length"] = #res.body
ngx.header["X-Cache"] = "MISS"
ngx.print(res.body)
