-- bench/keys.lua: the wrk script of bench/run.sh's many-keys variants (*_1k). Every
-- request carries the next of N distinct keys, in turn,
--   X-Bench-Key: k<i>      (i = 1 .. N)
-- against wrk's URL; the variants' zones are keyed on $http_x_bench_key, so the
-- requests spread over N zone keys (N Redis hash slots, almost always distinct:
-- on a Redis Cluster, over all the masters).
--   wrk ... -s bench/keys.lua URL -- N [THREADS]
-- The N requests are formatted once in init(); request() only returns the next one.
-- Each wrk thread cycles through all N keys, starting N/THREADS further than the
-- previous thread.
local threads = 0

function setup(thread)
    thread:set("id", threads)
    threads = threads + 1
end

local reqs, n, i = {}, 0, 0

function init(args)
    n = tonumber(args[1] or "")
    local nthreads = tonumber(args[2] or "1") or 1
    if not n or n < 1 or n ~= math.floor(n) then
        error("keys.lua: arguments: N [THREADS], not: " .. table.concat(args, " "))
    end
    for k = 1, n do
        local h = {}
        for name, v in pairs(wrk.headers) do
            h[name] = v
        end
        h["X-Bench-Key"] = "k" .. k
        reqs[k] = wrk.format(nil, nil, h)
    end
    i = ((id or 0) * math.floor(n / nthreads)) % n
end

function request()
    i = i % n + 1
    return reqs[i]
end
