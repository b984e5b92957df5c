#!/usr/bin/env bash
# nginx variables in single-quoted config lines are meant literally:
# shellcheck disable=SC2016
# bench/run.sh: measure what ngx_http_throttle_module costs per request.
#
# nginx serves the same small static file on one loopback port per variant
# (no limit, nginx's own limit_req, our throttle in local, sync and strict
# mode, an OpenResty-style Lua + Redis peer), each with a rate so high that
# nothing is ever rejected. wrk is run against every variant in several
# interleaved rounds; the median requests/s and p99 latency per variant are
# printed with ratios against the peers measured in the same run, and, for the
# variants that use Redis, the Redis commands per request (INFO commandstats).
#
# Invoked by `make bench` after the module is built. Knobs (environment):
#   BENCH_VARIANTS     variants to run, in order  (plain limit_req throttle sync strict openresty)
#   BENCH_WORKERS      nginx worker_processes     (1)
#   BENCH_THREADS      wrk -t                     (1)
#   BENCH_CONNECTIONS  wrk -c                     (32)
#   BENCH_DURATION     wrk -d per measurement     (5s)
#   BENCH_WARMUP       wrk -d warm-up per variant (1s; 0 to skip)
#   BENCH_ROUNDS       interleaved rounds         (3)
#   BENCH_PIN          auto|0|1: pin nginx and wrk to disjoint CPUs (auto: only
#                      if a CPU is left over for the rest of the machine)
#   BENCH_BODY_BYTES   size of the served file    (100)
#   BENCH_MODULE       module path                (<repo>/build/ngx_http_throttle_module.so)
#   BENCH_NGINX        nginx binary               (/usr/sbin/nginx)
#   BENCH_OUT          also write the result table to this file
#   BENCH_KEEP=1       keep the temp directory (config, error log, raw wrk output)
#
# Missing Debian packages (wrk, curl, redis-server, and for the openresty peer
# libnginx-mod-http-lua, lua-nginx-redis, lua-resty-core) are installed with
# apt-get when run as root. All traffic goes to 127.0.0.1 (nginx and a
# redis-server the script starts on a free port) and is bounded by
# BENCH_DURATION.

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

NGINX=${BENCH_NGINX:-/usr/sbin/nginx}
MODULE=${BENCH_MODULE:-$root/build/ngx_http_throttle_module.so}
VARIANTS=${BENCH_VARIANTS:-plain limit_req throttle sync strict openresty}
WORKERS=${BENCH_WORKERS:-1}
THREADS=${BENCH_THREADS:-1}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
DURATION=${BENCH_DURATION:-5s}
WARMUP=${BENCH_WARMUP:-1s}
ROUNDS=${BENCH_ROUNDS:-3}
PIN=${BENCH_PIN:-auto}
BODY_BYTES=${BENCH_BODY_BYTES:-100}
OUT=${BENCH_OUT:-}
KEEP=${BENCH_KEEP:-0}

# Ratios are printed against these variants when they are part of the run.
PEERS="plain limit_req"
# Goals from the issues, "A B MIN": A/B req/s should be at least MIN. Printed
# (met or not) when both variants are part of the run.
GOALS="throttle plain 0.97
sync throttle 0.95
strict openresty 2.5"

die() {
    printf 'bench: error: %s\n' "$*" >&2
    exit 1
}
say() { printf 'bench: %s\n' "$*" >&2; }

# --------------------------------------------------------------------------
# Variants.
#
# A variant is a function `variant_NAME ACTION` that prints nginx
# configuration or does a job, by ACTION:
#   describe  one line: what this variant configures (printed under the table)
#   packages  Debian packages it needs (installed with apt-get when missing)
#   check     fail (non-zero, message on stderr) if it cannot run here
#   setup     start whatever it needs before nginx starts (e.g. a redis-server
#             on a free port; register its pid with `cleanup_pid PID`)
#   main      lines for nginx's main context (load_module ...); deduplicated
#   http      lines for the http context (zones)
#   location  lines inside the variant's own `location = /bench.txt`
#   verify    given the response headers file as $2, fail if the variant's
#             machinery visibly did not run
#   instance  the name of the nginx instance it runs in (default: main); a
#             variant that loads other modules (the Lua peer) gets its own
#             nginx, so the others are measured without them
#   redis     print "yes" if it talks to the benchmark's redis-server: its
#             Redis commands per request are measured
# Unknown actions print nothing. To add a variant, write one more function and
# add its name to BENCH_VARIANTS.
# --------------------------------------------------------------------------

variant_plain() {
    case $1 in
    describe) echo 'static file, no limit' ;;
    esac
}

variant_limit_req() {
    case $1 in
    describe)
        echo 'limit_req_zone $binary_remote_addr zone=bench_lr:10m rate=1000000r/s;' \
            'limit_req zone=bench_lr burst=1000000 nodelay;'
        ;;
    http) echo 'limit_req_zone $binary_remote_addr zone=bench_lr:10m rate=1000000r/s;' ;;
    location) echo 'limit_req zone=bench_lr burst=1000000 nodelay;' ;;
    esac
}

module_check() {
    [[ -r $MODULE ]] || {
        echo "module not found: $MODULE (build it with \`make\`, or leave it out:" \
            "BENCH_VARIANTS='plain limit_req')" >&2
        return 1
    }
}

# The module is copied into the temp dir and loaded from there: a rebuild
# that rewrites build/*.so in place while nginx has it mapped kills the workers
# (SIGBUS), and the copy also pins the exact binary that was measured.
module_loaded='' module_info=''
module_setup() {
    [[ -z $module_loaded ]] || return 0
    module_loaded=$tmp/$(basename "$MODULE")
    cp "$MODULE" "$module_loaded"
    module_info="$MODULE (built $(stat -c %y "$MODULE" | cut -d. -f1),"
    module_info+=" sha256 $(sha256sum "$module_loaded" | cut -c1-12))"
}

module_verify() {
    # throttle_headers is on by default: a response that went through the
    # module carries RateLimit-Policy; without it we would be measuring nothing.
    grep -qi '^RateLimit-Policy:' "$1" || {
        echo "no RateLimit-Policy header: the throttle handler did not run" >&2
        return 1
    }
}

variant_throttle() {
    case $1 in
    describe)
        echo 'throttle_zone $binary_remote_addr zone=bench:10m rate=1000000000r/s;' \
            'throttle zone=bench;  (sliding window, local mode)'
        ;;
    check) module_check ;;
    setup) module_setup ;;
    main) echo "load_module $module_loaded;" ;;
    http) echo 'throttle_zone $binary_remote_addr zone=bench:10m rate=1000000000r/s;' ;;
    location) echo 'throttle zone=bench;' ;;
    verify) module_verify "$2" ;;
    esac
}

variant_throttle_gcra() {
    case $1 in
    describe)
        echo 'throttle_zone $binary_remote_addr zone=bench_gcra:10m rate=1000000000r/s' \
            'algorithm=gcra burst=1000000;  throttle zone=bench_gcra;  (local mode)'
        ;;
    check) module_check ;;
    setup) module_setup ;;
    main) echo "load_module $module_loaded;" ;;
    http)
        echo 'throttle_zone $binary_remote_addr zone=bench_gcra:10m rate=1000000000r/s' \
            'algorithm=gcra burst=1000000;'
        ;;
    location) echo 'throttle zone=bench_gcra;' ;;
    verify) module_verify "$2" ;;
    esac
}

# Not in the default set: the same as `throttle` without the RateLimit
# response headers, to tell the cost of the headers from the cost of the limit.
variant_throttle_nohdr() {
    case $1 in
    describe) echo 'as throttle, plus throttle_headers off;' ;;
    check) module_check ;;
    setup) module_setup ;;
    main) echo "load_module $module_loaded;" ;;
    http) echo 'throttle_zone $binary_remote_addr zone=bench_nohdr:10m rate=1000000000r/s;' ;;
    location) printf '%s\n' 'throttle zone=bench_nohdr;' 'throttle_headers off;' ;;
    esac
}

# --------------------------------------------------------------------------
# Redis variants. They share one redis-server, started by the first of them on
# a free port (no persistence) and stopped on exit. Their Redis commands per
# request are read from INFO commandstats around each measured run.
# --------------------------------------------------------------------------

redis_port='' redis_pid='' redis_info=''
redis_check() {
    if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
        echo "redis-server and redis-cli are needed (apt-get install redis-server)" >&2
        return 1
    fi
}

redis_cli() { redis-cli -h 127.0.0.1 -p "$redis_port" "$@"; }

redis_setup() {
    [[ -z $redis_port ]] || return 0
    local i pid
    redis_port=$(free_ports 1)
    mkdir -p "$tmp/redis"
    redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
        --dir "$tmp/redis" --logfile "$tmp/redis/redis.log" --daemonize no </dev/null &
    pid=$!
    redis_pid=$pid
    cleanup_pid "$pid"
    for ((i = 0; i < 100; i++)); do
        [[ $(redis_cli ping 2>/dev/null) == PONG ]] && break
        kill -0 "$pid" 2>/dev/null || {
            cat "$tmp/redis/redis.log" >&2
            die "redis-server exited during startup"
        }
        sleep 0.05
    done
    [[ $(redis_cli ping 2>/dev/null) == PONG ]] || die "redis-server on port $redis_port does not answer"
    redis_info="redis-server $(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')"
    redis_info+=" on 127.0.0.1:$redis_port, --save '' --appendonly no, not pinned"
}

# redis_snapshot FILE: "COMMAND CALLS" per command since redis-server started,
# plus "connections N" (connections accepted).
redis_snapshot() {
    redis_cli info everything | tr -d '\r' | awk -F'[:,=]' '
        /^cmdstat_/ { sub(/^cmdstat_/, "", $1); print $1, $3 }
        /^total_connections_received:/ { print "connections", $2 }' >"$1"
}

# redis_delta BEFORE AFTER: "COMMAND DELTA" for what changed in between, and
# "connections DELTA"; the INFO command and the connection of the second
# snapshot left out.
redis_delta() {
    awk 'NR == FNR { b[$1] = $2; next }
         $1 == "connections" { print $1, $2 - b[$1] - 1; next }
         $1 != "info" && $2 - b[$1] > 0 { print $1, $2 - b[$1] }' "$1" "$2"
}

# redis_calls NAME: wait up to 3 s until redis-server has seen NAME at least once
redis_calls() {
    local i
    for ((i = 0; i < 60; i++)); do
        redis_cli info commandstats | grep -q "^cmdstat_$1:calls=" && return 0
        sleep 0.05
    done
    echo "redis-server never saw $1" >&2
    return 1
}

variant_sync() {
    case $1 in
    describe)
        echo 'throttle_zone $binary_remote_addr zone=bsync:10m rate=1000000000r/s mode=sync' \
            'sync=250ms;  throttle zone=bsync;  (throttle_redis on the benchmark'"'"'s redis-server)'
        ;;
    packages) echo redis-server ;;
    check) module_check && redis_check ;;
    setup) module_setup && redis_setup ;;
    redis) echo yes ;;
    main) echo "load_module $module_loaded;" ;;
    http)
        echo "throttle_redis 127.0.0.1:$redis_port;"
        echo 'throttle_zone $binary_remote_addr zone=bsync:10m rate=1000000000r/s mode=sync sync=250ms;'
        ;;
    location) echo 'throttle zone=bsync;' ;;
    verify) module_verify "$2" && redis_calls evalsha ;; # the first flush, within 250 ms
    esac
}

variant_strict() {
    case $1 in
    describe)
        # 1e8r/d is the largest sliding rate strict mode takes exactly
        # (N x period_ms < 2^53: Redis' Lua computes in doubles).
        echo 'throttle_zone $binary_remote_addr zone=bstrict:10m rate=100000000r/d mode=strict;' \
            'throttle zone=bstrict;  (one EVALSHA per request)'
        ;;
    packages) echo redis-server ;;
    check) module_check && redis_check ;;
    setup) module_setup && redis_setup ;;
    redis) echo yes ;;
    main) echo "load_module $module_loaded;" ;;
    http)
        echo "throttle_redis 127.0.0.1:$redis_port;"
        echo 'throttle_zone $binary_remote_addr zone=bstrict:10m rate=100000000r/d mode=strict;'
        ;;
    location) echo 'throttle zone=bstrict;' ;;
    verify) module_verify "$2" && redis_calls evalsha ;;
    esac
}

# The peer: the common OpenResty rate-limit pattern, one INCR per request on a
# per-client key (EXPIRE when the INCR created it: a fixed window of 1 s),
# through Debian's libnginx-mod-http-lua and lua-nginx-redis (lua-resty-redis,
# installed as nginx.redis), connections kept in the cosocket pool. It runs in
# an nginx of its own so that the other variants are measured without LuaJIT.
# Redis errors are logged ([error] fails the run) and let the request through.
LUA_POOL_SIZE=100 # set_keepalive pool per worker; raised to BENCH_CONNECTIONS if below
variant_openresty() {
    case $1 in
    describe)
        echo "access_by_lua_block: resty.redis connect, INCR rl:\$binary_remote_addr" \
            "(+ EXPIRE 1 when 1), set_keepalive(60000, $(lua_pool_size)), 429 over 1000000000 per s" \
            "(libnginx-mod-http-lua $(lua_module_version), own nginx instance)"
        ;;
    packages) printf '%s\n' redis-server libnginx-mod-http-lua lua-nginx-redis lua-resty-core ;;
    check)
        redis_check || return 1
        local f
        for f in /usr/lib/nginx/modules/ndk_http_module.so /usr/lib/nginx/modules/ngx_http_lua_module.so \
            /usr/share/lua/5.1/nginx/redis.lua /usr/share/lua/5.1/resty/core.lua; do
            [[ -r $f ]] || {
                echo "$f not found (apt-get install libnginx-mod-http-lua lua-nginx-redis lua-resty-core)" >&2
                return 1
            }
        done
        ;;
    setup) redis_setup ;;
    instance) echo lua ;;
    redis) echo yes ;;
    main)
        echo 'load_module /usr/lib/nginx/modules/ndk_http_module.so;'
        echo 'load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;'
        ;;
    http) echo 'lua_package_path "/usr/share/lua/5.1/?.lua;;";' ;;
    location)
        cat <<LUA
access_by_lua_block {
    local redis = require "nginx.redis"  -- Debian's name for resty.redis
    local red = redis:new()
    red:set_timeout(1000)
    local ok, err = red:connect("127.0.0.1", $redis_port)
    if not ok then
        ngx.log(ngx.ERR, "redis connect: ", err)
        return
    end
    local key = "rl:" .. ngx.var.binary_remote_addr
    local n, err = red:incr(key)
    if not n then
        ngx.log(ngx.ERR, "redis incr: ", err)
        return
    end
    if n == 1 then
        red:expire(key, 1)
    end
    local ok, err = red:set_keepalive(60000, $(lua_pool_size))
    if not ok then
        ngx.log(ngx.ERR, "redis set_keepalive: ", err)
    end
    if n > 1000000000 then
        return ngx.exit(429)
    end
}
LUA
        ;;
    verify) redis_calls incr ;;
    esac
}

lua_pool_size() { echo $((CONNECTIONS > LUA_POOL_SIZE ? CONNECTIONS : LUA_POOL_SIZE)); }
lua_module_version() { dpkg-query -W -f='${Version}' libnginx-mod-http-lua 2>/dev/null || echo '?'; }

# --------------------------------------------------------------------------
# Helpers.
# --------------------------------------------------------------------------

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# free_ports N: N distinct free TCP ports on 127.0.0.1, held open together
# while chosen so they differ.
free_ports() {
    perl -MIO::Socket::INET -e '
        my @s = map { IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 0,
                                            Proto => "tcp", Listen => 1, ReuseAddr => 1)
                      or die "bind: $!\n" } 1 .. $ARGV[0];
        print join(" ", map { $_->sockport } @s), "\n";' "$1"
}

# median of the numbers on stdin
median() {
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# spread of the numbers on stdin, (max - min) / median, in percent
spread() {
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "%.1f\n", (m > 0) ? (v[NR] - v[1]) * 100 / m : 0 }'
}

# paired_ratios "A1 A2 .." "B1 B2 ..": "A1/B1 A2/B2 .." formatted as 0.98
paired_ratios() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        n = split(a, x, " "); split(b, y, " ")
        for (i = 1; i <= n; i++) printf "%s%.2f", (i > 1 ? " " : ""), (y[i] > 0 ? x[i] / y[i] : 0)
    }'
}

# ratio A B, formatted as 0.98
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

# cpu_ticks PID...: user + system CPU time of these processes, in clock ticks
cpu_ticks() {
    local pid sum=0 t
    for pid; do
        # fields after the ") " that closes the command name: utime is the 12th, stime the 13th
        t=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{ print $12 + $13 }') || t=0
        sum=$((sum + ${t:-0}))
    done
    echo "$sum"
}

# nginx_trouble: show what nginx's error log says went wrong, if anything
nginx_trouble() {
    if grep -qE '\[(crit|alert|emerg)\]' "$tmp/error.log" 2>/dev/null; then
        echo "nginx's error log says:" >&2
        grep -E '\[(crit|alert|emerg)\]' "$tmp/error.log" | head -5 >&2
    fi
}

# parse_wrk FILE: prints "RPS P99_MS REQUESTS"; fails loudly on non-2xx
# responses or socket errors.
parse_wrk() {
    local f=$1 what=$2
    if grep -q 'Non-2xx or 3xx responses' "$f"; then
        cat "$f" >&2
        nginx_trouble
        die "$what: $(grep 'Non-2xx or 3xx responses' "$f" | xargs) -- a limit rejected" \
            "requests (429/503) or the file was not served; the numbers would be meaningless"
    fi
    if grep -q 'Socket errors' "$f"; then
        cat "$f" >&2
        nginx_trouble
        die "$what: $(grep 'Socket errors' "$f" | xargs)"
    fi
    awk '
        /^Requests\/sec:/ { rps = $2 }
        $1 == "99%" {
            v = $2; unit = v; sub(/^[0-9.]+/, "", unit); sub(/[a-z]+$/, "", v)
            if (unit == "us") p99 = v / 1000; else if (unit == "ms") p99 = v
            else if (unit == "s") p99 = v * 1000; else if (unit == "m") p99 = v * 60000
            else bad = 1
        }
        / requests in / { n = $1 }
        END {
            if (rps == "" || p99 == "" || n == "" || n == 0 || bad) exit 1
            printf "%s %.3f %s\n", rps, p99, n
        }' "$f" || {
        cat "$f" >&2
        die "$what: could not read requests/s and p99 from wrk's output"
    }
}

# --------------------------------------------------------------------------
# Checks.
# --------------------------------------------------------------------------

for n in WORKERS THREADS CONNECTIONS ROUNDS BODY_BYTES; do
    if ! is_uint "${!n}" || ((${!n} == 0)); then
        die "BENCH_$n must be a positive integer, not \"${!n}\""
    fi
done
[[ $DURATION =~ ^[1-9][0-9]*[smh]?$ ]] || die "BENCH_DURATION must look like 5s, not \"$DURATION\""
[[ $WARMUP =~ ^[0-9]+[smh]?$ ]] || die "BENCH_WARMUP must look like 1s or 0, not \"$WARMUP\""
((CONNECTIONS >= THREADS)) || die "BENCH_CONNECTIONS ($CONNECTIONS) must be >= BENCH_THREADS ($THREADS)"
[[ $PIN =~ ^(auto|0|1)$ ]] || die "BENCH_PIN must be auto, 0 or 1, not \"$PIN\""

read -r -a variants <<<"$VARIANTS"
((${#variants[@]})) || die "BENCH_VARIANTS is empty"
for v in "${variants[@]}"; do
    if ! [[ $v =~ ^[a-z][a-z0-9_]*$ ]] || ! declare -F "variant_$v" >/dev/null; then
        die "unknown variant \"$v\" (known:$(declare -F | awk '$3 ~ /^variant_/ { sub(/^variant_/, "", $3); printf " %s", $3 }'))"
    fi
done

# Debian packages: wrk and curl, and what the variants need. Checked with
# dpkg-query, so that `make bench` works on a fresh machine; elsewhere the
# variants' own checks say what is missing.
packages=(wrk curl)
for v in "${variants[@]}"; do
    read -r -a p <<<"$("variant_$v" packages | xargs)"
    packages+=("${p[@]}")
done
missing=()
for p in $(printf '%s\n' "${packages[@]}" | awk '!seen[$0]++'); do
    if command -v dpkg-query >/dev/null; then
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    elif [[ $p == wrk || $p == curl ]]; then
        command -v "$p" >/dev/null || missing+=("$p")
    fi
done
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        # lua-nginx-redis depends on nginx-extras, which also installs Debian's
        # other dynamic modules and enables them in /etc/nginx/modules-enabled
        # (the benchmark's own configs load only what they name).
        say "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2 || true
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 ||
            die "could not install ${missing[*]}"
    else
        die "missing ${missing[*]} (apt-get install ${missing[*]})"
    fi
fi
[[ -x $NGINX ]] || die "nginx not found at $NGINX (apt-get install nginx, or set BENCH_NGINX)"

declare -A seen=()
for v in "${variants[@]}"; do
    [[ -z ${seen[$v]:-} ]] || die "variant \"$v\" is listed twice"
    seen[$v]=1
    "variant_$v" check || die "variant \"$v\" cannot run"
done

# --------------------------------------------------------------------------
# Temp dir, cleanup.
# --------------------------------------------------------------------------

tmp=$(mktemp -d "${TMPDIR:-/tmp}/throttle-bench.XXXXXX")
nginx_pids=()
extra_pids=()
cleanup_pid() { extra_pids+=("$1"); }

cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    # nginx first: its workers flush sync counts to Redis when they exit
    for pid in "${nginx_pids[@]}" "${extra_pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || continue
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $KEEP == 1 ]]; then
        say "kept $tmp"
    else
        rm -rf "$tmp"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --------------------------------------------------------------------------
# CPU placement: when there is a CPU to spare for everything else, nginx and
# wrk get disjoint CPUs so they do not fight over one core (less noise between
# rounds). On a 2-core machine pinning both would leave any other busy process
# (a build, a test) stuck on one of them, which is worse than no pinning.
# --------------------------------------------------------------------------

# cpu_range FIRST COUNT: "0", "2-3"
cpu_range() { if (($2 == 1)); then echo "$1"; else echo "$1-$(($1 + $2 - 1))"; fi; }

ncpu=$(nproc)
nginx_cpus='' wrk_cpus=''
if [[ $PIN == 1 || ($PIN == auto && $ncpu -gt $((WORKERS + THREADS))) ]]; then
    ((ncpu >= WORKERS + THREADS)) || die "BENCH_PIN=1 needs $((WORKERS + THREADS)) CPUs, have $ncpu"
    if command -v taskset >/dev/null; then
        nginx_cpus=$(cpu_range 0 "$WORKERS")
        wrk_cpus=$(cpu_range "$WORKERS" "$THREADS")
    elif [[ $PIN == 1 ]]; then
        die "BENCH_PIN=1 needs taskset (util-linux)"
    fi
fi
# command prefixes; not functions, so that `$!` is nginx itself
nginx_on_cpus=() wrk_on_cpus=()
[[ -z $nginx_cpus ]] || nginx_on_cpus=(taskset -c "$nginx_cpus")
[[ -z $wrk_cpus ]] || wrk_on_cpus=(taskset -c "$wrk_cpus")

# --------------------------------------------------------------------------
# Backends, nginx config, nginx.
# --------------------------------------------------------------------------

for v in "${variants[@]}"; do
    "variant_$v" setup
done

read -r -a ports <<<"$(free_ports "${#variants[@]}")"
declare -A port=()
for i in "${!variants[@]}"; do
    port[${variants[$i]}]=${ports[$i]}
done

mkdir -p "$tmp/html"
head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x' >"$tmp/html/bench.txt"

# One nginx per instance (main, and lua for the OpenResty peer); they share the
# error log.
declare -A instance_of=()
instances=()
for v in "${variants[@]}"; do
    i=$("variant_$v" instance)
    instance_of[$v]=${i:-main}
    [[ " ${instances[*]} " == *" ${instance_of[$v]} "* ]] || instances+=("${instance_of[$v]}")
done
conf_of() { if [[ $1 == main ]]; then echo "$tmp/nginx.conf"; else echo "$tmp/nginx-$1.conf"; fi; }

indent() { sed 's/^/    /'; }
write_conf() { # write_conf INSTANCE VARIANT...
    local inst=$1 v t
    shift
    mkdir -p "$tmp/tmp/$inst"
    echo "# generated by bench/run.sh: nginx instance \"$inst\""
    echo "user root;"
    echo "daemon off;"
    echo "worker_processes $WORKERS;"
    echo "pid $tmp/nginx-$inst.pid;"
    echo "error_log $tmp/error.log warn;"
    for v in "$@"; do "variant_$v" main; done | awk '!seen[$0]++'
    echo
    echo "events { worker_connections $((CONNECTIONS * 2 + 512)); }"
    echo
    echo "http {"
    echo "    access_log off;"
    echo "    default_type text/plain;"
    for t in client_body proxy fastcgi uwsgi scgi; do
        echo "    ${t}_temp_path $tmp/tmp/$inst/$t;"
    done
    # shared directives (throttle_redis) once; closing braces are not directives
    for v in "$@"; do "variant_$v" http; done | awk '!/;$/ || !seen[$0]++' | indent
    for v in "$@"; do
        echo
        echo "    server {  # $v"
        echo "        listen 127.0.0.1:${port[$v]};"
        echo "        root $tmp/html;"
        echo "        location = /bench.txt {"
        "variant_$v" location | sed 's/^/            /'
        echo "        }"
        echo "    }"
    done
    echo "}"
}

declare -A nginx_pid_of=()
for inst in "${instances[@]}"; do
    members=()
    for v in "${variants[@]}"; do
        [[ ${instance_of[$v]} == "$inst" ]] && members+=("$v")
    done
    conf=$(conf_of "$inst")
    write_conf "$inst" "${members[@]}" >"$conf"

    "$NGINX" -t -q -p "$tmp/" -e "$tmp/error.log" -c "$conf" 2>"$tmp/nginx-t.err" || {
        cat "$tmp/nginx-t.err" >&2
        cat -n "$conf" >&2
        die "nginx -t failed on the generated config (above)"
    }

    "${nginx_on_cpus[@]}" "$NGINX" -p "$tmp/" -e "$tmp/error.log" -c "$conf" \
        </dev/null >>"$tmp/nginx.stderr" 2>&1 &
    nginx_pid_of[$inst]=$!
    nginx_pids+=("$!")
done

url() { echo "http://127.0.0.1:${port[$1]}/bench.txt"; }

# Every variant must answer 200 with the whole file before we measure.
for v in "${variants[@]}"; do
    code=000
    for ((i = 0; i < 100; i++)); do
        kill -0 "${nginx_pid_of[${instance_of[$v]}]}" 2>/dev/null || {
            cat "$tmp/nginx.stderr" "$tmp/error.log" >&2 2>/dev/null || true
            die "nginx exited during startup"
        }
        code=$(curl -s -o "$tmp/body.$v" -D "$tmp/headers.$v" -w '%{http_code}' "$(url "$v")") || true
        [[ $code == 000 ]] || break
        sleep 0.05
    done
    [[ $code == 200 ]] || {
        cat "$tmp/headers.$v" >&2 2>/dev/null || true
        die "$v: GET $(url "$v") answered $code, expected 200"
    }
    size=$(wc -c <"$tmp/body.$v")
    ((size == BODY_BYTES)) || die "$v: body is $size bytes, expected $BODY_BYTES"
    tr -d '\r' <"$tmp/headers.$v" >"$tmp/headers.$v.lf"
    "variant_$v" verify "$tmp/headers.$v.lf" || die "$v: check of the response failed"
done

# --------------------------------------------------------------------------
# Measure.
# --------------------------------------------------------------------------

wrk_args=(-t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency)
run_wrk() { # run_wrk OUTFILE DURATION VARIANT
    "${wrk_on_cpus[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$2" --latency "$(url "$3")" >"$1" 2>&1 ||
        {
            cat "$1" >&2
            die "$3: wrk failed"
        }
}

if [[ ! $WARMUP =~ ^0+[smh]?$ ]]; then
    say "warm-up: $WARMUP per variant"
    for v in "${variants[@]}"; do
        run_wrk "$tmp/wrk.$v.warmup" "$WARMUP" "$v"
        parse_wrk "$tmp/wrk.$v.warmup" "$v (warm-up)" >/dev/null
    done
fi

declare -A uses_redis=()
for v in "${variants[@]}"; do
    [[ $("variant_$v" redis) != yes ]] || uses_redis[$v]=1
done

load_before=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')
declare -A rps_all=() p99_all=() requests=() cpu_nginx=() cpu_redis=()
clk_tck=$(getconf CLK_TCK 2>/dev/null || echo 100)
nv=${#variants[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    # Rotate the order each round so no variant always runs first or last.
    order=()
    for ((i = 0; i < nv; i++)); do
        order+=("${variants[$(((i + r - 1) % nv))]}")
    done
    say "round $r/$ROUNDS: ${order[*]}"
    for v in "${order[@]}"; do
        f=$tmp/wrk.$v.$r
        [[ -z ${uses_redis[$v]:-} ]] || redis_snapshot "$f.redis-before"
        read -r -a workers <<<"$(pgrep -P "${nginx_pid_of[${instance_of[$v]}]}" | xargs)"
        ng0=$(cpu_ticks "${workers[@]}") rd0=$(cpu_ticks ${redis_pid:+"$redis_pid"})
        run_wrk "$f" "$DURATION" "$v"
        ng1=$(cpu_ticks "${workers[@]}") rd1=$(cpu_ticks ${redis_pid:+"$redis_pid"})
        [[ -z ${uses_redis[$v]:-} ]] || redis_snapshot "$f.redis-after"
        res=$(parse_wrk "$f" "$v (round $r)") || exit 1
        read -r rps p99 n <<<"$res"
        requests[$v]=$((${requests[$v]:-0} + n))
        cpu_nginx[$v]=$((${cpu_nginx[$v]:-0} + ng1 - ng0))
        cpu_redis[$v]=$((${cpu_redis[$v]:-0} + rd1 - rd0))
        extra=''
        if [[ -n ${uses_redis[$v]:-} ]]; then
            redis_delta "$f.redis-before" "$f.redis-after" >>"$tmp/redis-calls.$v"
            echo "requests $n" >>"$tmp/redis-calls.$v"
            extra=$(redis_delta "$f.redis-before" "$f.redis-after" |
                awk -v n="$n" '$1 != "connections" { c += $2 } END {
                    x = c / n; printf "  redis %s cmd/req", (x >= 0.01 || x == 0) ? sprintf("%.3f", x) : sprintf("%.2g", x) }')
        fi
        say "  $(printf '%-14s %10.0f req/s  p99 %7.3f ms' "$v" "$rps" "$p99")$extra"
        rps_all[$v]+="$rps "
        p99_all[$v]+="$p99 "
    done
done

# Nothing may have been limited or gone wrong on the nginx side either.
if grep -E '\[(error|crit|alert|emerg)\]' "$tmp/error.log" >"$tmp/error.bad"; then
    head -20 "$tmp/error.bad" >&2
    die "nginx logged errors during the run (first lines above)"
fi

# --------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------

declare -A rps_med=() p99_med=() rps_spread=()
for v in "${variants[@]}"; do
    rps_med[$v]=$(tr ' ' '\n' <<<"${rps_all[$v]}" | grep . | median)
    p99_med[$v]=$(tr ' ' '\n' <<<"${p99_all[$v]}" | grep . | median)
    rps_spread[$v]=$(tr ' ' '\n' <<<"${rps_all[$v]}" | grep . | spread)
done

peers=()
for p in $PEERS; do
    [[ -n ${seen[$p]:-} ]] && peers+=("$p")
done

cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
nginx_version=$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')
wrk_version=$(wrk -v 2>&1 | awk 'NR == 1 { print $2 }' || true)

{
    echo "ngx_http_throttle_module benchmark ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo "machine: nproc=$ncpu${cpu_model:+ ($cpu_model)}, $(uname -sr), $nginx_version, wrk $wrk_version"
    echo "load:    $load_before (1/5/15-min load average before measuring; other busy processes add noise)"
    echo "nginx:   worker_processes $WORKERS, ${nginx_cpus:+pinned to CPU $nginx_cpus}${nginx_cpus:-not pinned}," \
        "static file of $BODY_BYTES bytes, access_log off"
    [[ -z $module_info ]] || echo "module:  $module_info"
    echo "wrk:     wrk ${wrk_args[*]} http://127.0.0.1:PORT/bench.txt${wrk_cpus:+ (pinned to CPU $wrk_cpus)}"
    echo "method:  ${WARMUP/#0/no} warm-up per variant, $ROUNDS interleaved round(s) of $DURATION each, median per variant"
    echo
    # req/s and p99 columns, then one req/s ratio and one p99 ratio per peer
    header=$(printf '%-14s %10s %8s %7s' variant 'req/s' 'p99 ms' spread)
    for p in "${peers[@]}"; do header+=$(printf '  %*s' $((${#p} + 8)) "req/s vs $p"); done
    for p in "${peers[@]}"; do header+=$(printf '  %*s' $((${#p} + 7)) "p99 vs $p"); done
    echo "$header"
    for v in "${variants[@]}"; do
        line=$(printf '%-14s %10.0f %8.3f %6s%%' "$v" "${rps_med[$v]}" "${p99_med[$v]}" "${rps_spread[$v]}")
        for p in "${peers[@]}"; do
            line+=$(printf '  %*sx' $((${#p} + 7)) "$(ratio "${rps_med[$v]}" "${rps_med[$p]}")")
        done
        for p in "${peers[@]}"; do
            line+=$(printf '  %*sx' $((${#p} + 6)) "$(ratio "${p99_med[$v]}" "${p99_med[$p]}")")
        done
        echo "$line"
    done
    echo
    for v in "${variants[@]}"; do
        [[ $v == "${peers[0]:-}" ]] && continue
        for p in "${peers[@]}"; do
            [[ $v == "$p" ]] && continue
            echo "$v/$p = $(ratio "${rps_med[$v]}" "${rps_med[$p]}")x req/s" \
                "(round by round: $(paired_ratios "${rps_all[$v]}" "${rps_all[$p]}"))"
        done
    done
    goal_lines=$(while read -r a b min; do
        [[ -n $a && -n ${seen[$a]:-} && -n ${seen[$b]:-} ]] || continue
        x=$(ratio "${rps_med[$a]}" "${rps_med[$b]}")
        met=$(awk -v x="$x" -v m="$min" 'BEGIN { print (x >= m) ? "met" : "NOT met" }')
        printf '  %s/%s = %sx req/s, goal >= %sx: %s (round by round: %s)\n' "$a" "$b" "$x" \
            "$(awk -v m="$min" 'BEGIN { printf "%.2f", m }')" "$met" "$(paired_ratios "${rps_all[$a]}" "${rps_all[$b]}")"
    done <<<"$GOALS")
    if [[ -n $goal_lines ]]; then
        echo
        echo "goals:"
        echo "$goal_lines"
    fi
    echo
    echo "CPU time per request (user + system time of the nginx workers, and of redis-server,"
    echo "during the measured runs, over all requests; wrk's own time is not counted):"
    printf '  %-12s %13s %13s %13s\n' variant 'nginx us/req' 'redis us/req' 'total us/req'
    for v in "${variants[@]}"; do
        awk -v v="$v" -v n="${requests[$v]}" -v a="${cpu_nginx[$v]}" -v b="${cpu_redis[$v]}" \
            -v hz="$clk_tck" -v redis="${uses_redis[$v]:-}" 'BEGIN {
                ng = a * 1e6 / hz / n; rd = b * 1e6 / hz / n
                printf "  %-12s %13.2f %13s %13.2f\n", v, ng, redis ? sprintf("%.2f", rd) : "-", ng + (redis ? rd : 0)
            }'
    done
    if ((${#uses_redis[@]})); then
        echo
        echo "Redis commands per request (INFO commandstats before and after every measured run):"
        printf '  %-12s %10s %10s %10s %6s  %s\n' variant requests 'trips/req' 'cmds/req' conns \
            'by command, per request'
        for v in "${variants[@]}"; do
            [[ -n ${uses_redis[$v]:-} ]] || continue
            awk -v v="$v" '
                function f(x) { return (x >= 0.01 || x == 0) ? sprintf("%.3f", x) : sprintf("%.2g", x) }
                $1 == "requests" { n += $2; next }
                $1 == "connections" { conns += $2; next }
                { c[$1] += $2; all += $2 }
                $1 ~ /^(eval|evalsha|eval_ro|evalsha_ro|fcall|fcall_ro)$/ { scripted += $2 }
                END {
                    trips = scripted > 0 ? scripted : all
                    by = ""
                    for (;;) { # most frequent first
                        best = ""
                        for (k in c) if (best == "" || c[k] > c[best]) best = k
                        if (best == "") break
                        by = by sprintf(" %s %s", best, f(c[best] / n))
                        delete c[best]
                    }
                    printf "  %-12s %10d %10s %10s %6d %s\n", v, n, f(trips / n), f(all / n), conns, by
                }' "$tmp/redis-calls.$v"
        done
        echo "  trips = commands nginx sent (for a variant that calls scripts, its EVALSHAs; the"
        echo "  commands the scripts run inside Redis count in cmds/req and in the breakdown);"
        echo "  conns = connections Redis accepted during the measured runs."
        echo "  $redis_info"
    fi
    echo
    echo "spread = (max - min) / median of req/s over the rounds; ratios are of medians."
    echo "A ratio closer to 1.00x than the spread is noise; the round-by-round ratios"
    echo "show whether it holds in every round."
    echo "per-round req/s:"
    for v in "${variants[@]}"; do
        printf '  %-14s %s\n' "$v" "$(for x in ${rps_all[$v]}; do printf '%.0f ' "$x"; done)"
    done
    echo "variants:"
    for v in "${variants[@]}"; do
        printf '  %-14s %s\n' "$v" "$("variant_$v" describe)"
    done
} >"$tmp/results.txt"

echo
cat "$tmp/results.txt"
if [[ -n $OUT ]]; then
    mkdir -p "$(dirname "$OUT")"
    cp "$tmp/results.txt" "$OUT"
    say "table written to $OUT"
fi

# `make bench` goes on with the response-cache benchmark (bench/cache.sh) once
# this run's nginx and redis-server are stopped; BENCH_CACHE=1 runs it after a
# plain `bash bench/run.sh` too, BENCH_CACHE=0 never.
if [[ ${BENCH_CACHE:-${MAKELEVEL:+1}} == 1 ]]; then
    for pid in "${nginx_pids[@]}" "${extra_pids[@]}"; do
        if kill -TERM "$pid" 2>/dev/null; then wait "$pid" 2>/dev/null || true; fi
    done
    bash "$here/cache.sh"
fi
