-- bench/cache_users.lua: the wrk script of bench/cache.sh's *_users scenarios. Many users:
-- every request carries the next of N distinct session cookies, in turn,
--   Cookie: sessionid=u<i>-<suffix>      (i = 1 .. N)
-- against wrk's URL, with wrk's other -H headers (Accept-Encoding for throttle_gz_users).
--   wrk ... -s bench/cache_users.lua URL -- N SUFFIX [THREADS]
-- The N requests are formatted once in init(); request() only returns the next one, so
-- the script costs wrk as little as a dynamic request can. Each wrk thread cycles through
-- all N users on its own, starting N/THREADS further than the previous thread: every user
-- comes back once per N requests of a thread.
local threads = 0

function setup(thread)
    thread:set("id", threads)
    threads = threads + 1
end

local reqs, n, i = {}, 0, 0

function init(args)
    n = tonumber(args[1] or "")
    local suffix = args[2]
    local nthreads = tonumber(args[3] or "1") or 1
    if not n or n < 1 or n ~= math.floor(n) or not suffix or suffix == "" then
        error("cache_users.lua: arguments: N SUFFIX [THREADS], not: " .. table.concat(args, " "))
    end
    for u = 1, n do
        local h = {}
        for k, v in pairs(wrk.headers) do
            if k:lower() ~= "cookie" then
                h[k] = v
            end
        end
        h["Cookie"] = "sessionid=u" .. u .. "-" .. suffix
        reqs[u] = wrk.format(nil, nil, h)
    end
    i = ((id or 0) * math.floor(n / nthreads)) % n
end

function request()
    i = i % n + 1
    return reqs[i]
end
