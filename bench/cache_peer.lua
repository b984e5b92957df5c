-- bench/cache_peer.lua: the OpenResty peer of bench/cache.sh, the usual cache-aside
-- in Lua without srcache: key = md5(user cookie, path, sorted query args); GET it
-- from Redis (lua-resty-redis, connections kept in the cosocket pool); on a hit
-- print the stored body with its Content-Type; on a miss fetch the upstream with a
-- subrequest (ngx.location.capture) and SET the entry with EX.
--
-- Entry format: "<content-type>\n<body>", one string value (one GET per hit, no
-- JSON decoding: the cheapest layout). Debian packages lua-resty-redis as
-- nginx.redis (lua-nginx-redis). cache.sh substitutes the %%NAMES%%.
local redis = require "nginx.redis"

local REDIS_PORT = %%REDIS_PORT%%
local POOL_SIZE = %%POOL_SIZE%%
local TTL = 3600

-- The key: the user, the path and the query arguments sorted by name.
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
local key = "luacache:" .. ngx.md5((ngx.var.cookie_sessionid or "") .. "\0" .. ngx.var.uri
    .. "\0" .. table.concat(parts, "&"))

local red = redis:new()
red:set_timeout(1000)
local ok, err = red:connect("127.0.0.1", REDIS_PORT)
if not ok then
    ngx.log(ngx.ERR, "redis connect: ", err)
else
    local v
    v, err = red:get(key)
    if v and v ~= ngx.null then
        red:set_keepalive(60000, POOL_SIZE)
        local nl = v:find("\n", 1, true)
        local body = v:sub(nl + 1)
        ngx.header["Content-Type"] = v:sub(1, nl - 1)
        ngx.header["Content-Length"] = #body
        ngx.header["X-Cache"] = "HIT"
        ngx.print(body)
        return
    end
    if err then
        ngx.log(ngx.ERR, "redis get: ", err)
        ok = false
    end
end

-- Miss: the upstream, through the internal location /_origin.
local res = ngx.location.capture("/_origin" .. ngx.var.uri, { args = ngx.var.args })
local ct = res.header["Content-Type"] or "application/octet-stream"
if ok then
    if res.status == 200 then
        local stored
        stored, err = red:set(key, ct .. "\n" .. res.body, "EX", TTL)
        if not stored then
            ngx.log(ngx.ERR, "redis set: ", err)
        end
    end
    red:set_keepalive(60000, POOL_SIZE)
end
ngx.status = res.status
ngx.header["Content-Type"] = ct
ngx.header["Content-Length"] = #res.body
ngx.header["X-Cache"] = "MISS"
ngx.print(res.body)
