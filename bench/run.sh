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
#   BENCH_VARIANTS     variants to run, in order  (plain limit_req throttle throttle_metrics sync strict openresty)
#   BENCH_WORKERS      nginx worker_processes     (1)
#   BENCH_THREADS      wrk -t                     (1)
#   BENCH_CONNECTIONS  wrk -c                     (32)
#   BENCH_DURATION     wrk -d per measurement     (5s)
#   BENCH_WARMUP       wrk -d warm-up per variant (1s; 0 to skip)
#   BENCH_ROUNDS       interleaved rounds         (3)
#   BENCH_PIN          auto|0|1: pin nginx and wrk to disjoint CPUs (auto: only
#                      if a CPU is left over for the rest of the machine)
#   BENCH_BODY_BYTES   size of the served file    (100)
#   BENCH_KEYS         keys of the *_1k variants  (1000; bench/keys.lua sends them in turn)
#   BENCH_MODULE       module path                (<repo>/build/ngx_http_throttle_module.so)
#   BENCH_NGINX        nginx binary               (/usr/sbin/nginx)
#   BENCH_OUT          also write the result table to this file
#   BENCH_KEEP=1       keep the temp directory (config, error log, raw wrk output)
#   BENCH_LOG_LEVEL    nginx error_log level      (warn; info shows sync flushes' longest lock hold)
#
# Missing Debian packages (wrk, curl, redis-server, and for the openresty peer
# libnginx-mod-http-lua, lua-nginx-redis, lua-resty-core) are installed with
# apt-get when run as root. All traffic goes to 127.0.0.1 (nginx and a
# redis-server the script starts on a free port; for the *_cluster variants, a
# 3-master Redis Cluster it starts, lib.sh's cluster_start) and is bounded by
# BENCH_DURATION. Not in the default set: strict_cluster, sync_cluster (the
# same zones on `throttle_redis cluster`), and strict_1k, sync_1k,
# strict_cluster_1k, sync_cluster_1k (zones keyed on $http_x_bench_key, wrk
# sending BENCH_KEYS keys in turn), sync_100k, strict_100k (the same with
# 100,000 keys): a cluster variant is printed next to its one-Redis twin when
# both ran. Also not in the default set: lease, lease_1k, lease_10k (mode=lease,
# one key / BENCH_KEYS keys / 10,000 keys) and strict_10k, sync_10k (10,000
# keys) to compare them with, and strict_unix (strict's zone with Redis through
# its unix socket, an nginx of its own).

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prog=bench
# The helpers and knobs shared with cache.sh (BENCH_WORKERS, BENCH_THREADS,
# BENCH_CONNECTIONS, BENCH_WARMUP, BENCH_ROUNDS, BENCH_MODULE, BENCH_NGINX,
# BENCH_KEEP are read there).
# shellcheck source=lib.sh
source "$here/lib.sh"

VARIANTS=${BENCH_VARIANTS:-plain limit_req throttle throttle_metrics sync strict openresty}
DURATION=${BENCH_DURATION:-5s}
PIN=${BENCH_PIN:-auto}
BODY_BYTES=${BENCH_BODY_BYTES:-100}
OUT=${BENCH_OUT:-}

# Ratios are printed against these variants when they are part of the run.
PEERS="plain limit_req"
# Goals from the issues, "A B MIN": A/B req/s should be at least MIN. Printed
# (met or not) when both variants are part of the run.
GOALS="throttle plain 0.97
sync throttle 0.95
strict openresty 2.5"

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
#   redis     print "yes" if it talks to the benchmark's redis-server, "cluster"
#             if to its Redis Cluster: its Redis commands per request (summed
#             over the masters) and Redis CPU are measured
#   script    "PATH ARG..." to run wrk with -s PATH URL -- ARG... BENCH_THREADS
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

# module_check and module_setup (the private copy of the module) are in lib.sh.
# Without the module, the variants that do not need it still run:
module_missing_hint=", or leave it out: BENCH_VARIANTS='plain limit_req'"

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

# The same zone with a throttle_metrics location somewhere (in a server of its own on a unix
# socket): the zone's counters are on. Compare with throttle. Its own nginx instance: the
# counters are on for every zone of an nginx that has throttle_metrics anywhere.
variant_throttle_metrics() {
    case $1 in
    describe)
        echo 'throttle as above, zone=bench_m, and a throttle_metrics location (counters on)'
        ;;
    check) module_check ;;
    setup) module_setup ;;
    main) echo "load_module $module_loaded;" ;;
    http)
        echo 'throttle_zone $binary_remote_addr zone=bench_m:10m rate=1000000000r/s;'
        echo "server { listen unix:$tmp/metrics.sock; location = /metrics { throttle_metrics; } }"
        ;;
    location) echo 'throttle zone=bench_m;' ;;
    verify) module_verify "$2" ;;
    instance) echo metrics ;;
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
# a free port (no persistence) and stopped on exit (redis_start, lib.sh). Their
# Redis commands per request are read from INFO commandstats around each
# measured run.
# --------------------------------------------------------------------------

redis_info=''
redis_setup() {
    redis_start
    [[ -z $redis_info ]] || return 0
    redis_info="redis-server $redis_version on 127.0.0.1:$redis_port, --save '' --appendonly no, not pinned. "
}

cluster_info=''
cluster_setup() {
    cluster_start
    cluster_info="Redis Cluster: $CLUSTER_MASTERS masters (redis-server $redis_version, --cluster-enabled yes,"
    cluster_info+=" no replicas) on 127.0.0.1:${cluster_ports[*]}, --save '' --appendonly no, not pinned;"
    cluster_info+=" cluster variants: commands summed over the masters, redis us = the three processes"
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

# The Redis variants are one function, by mode (strict, sync), target (one Redis,
# or the 3-master Redis Cluster of lib.sh's cluster_start) and key shape: one key
# ($binary_remote_addr: wrk has one address, so one hot key, one hash slot, one
# master), or BENCH_KEYS keys (the zone keyed on $http_x_bench_key, wrk's script
# bench/keys.lua sending k1 .. kN in turn: N keys, spread over the slots and so over
# the cluster's masters). The cluster variants run in an nginx of their own (one
# throttle_redis per http{}).
# The *_100k variants: the same with 100,000 keys (sync at scale: each key sees a
# request every 100,000 / (requests/s) seconds, so most flushes carry a key per request).
KEYS_N=${BENCH_KEYS:-1000}
KEYS_100K=100000

# mode=lease (lease, lease_1k, lease_10k): the zone of strict's rate with
# mode=lease (default lease=100); the 10k shape (and strict_10k, sync_10k) sends
# 10,000 keys in turn whatever BENCH_KEYS says.
KEYS_10K=10000

# redis_variant MODE TARGET SHAPE ZONE ACTION [ARG]: MODE strict|sync|lease, TARGET
# single|unix|cluster (unix: the same Redis through its unix socket, an nginx of its own), SHAPE 1|n|m|100k (m: 10,000 keys, 100k: 100,000 keys)
redis_variant() {
    local mode=$1 target=$2 shape=$3 zone=$4 key zone_line redis_line nkeys=1
    shift 4
    case $shape in
        n) nkeys=$KEYS_N ;;
        m) nkeys=$KEYS_10K ;;
        100k) nkeys=$KEYS_100K ;;
    esac
    if [[ $shape != 1 ]]; then key='$http_x_bench_key'; else key='$binary_remote_addr'; fi
    if [[ $mode == lease ]]; then
        # strict's rate: every unit granted is counted in Redis' window, as strict counts
        zone_line="throttle_zone $key zone=$zone:10m rate=100000000r/d mode=lease;"
    elif [[ $mode == strict ]]; then
        # 1e8r/d is the largest sliding rate strict mode takes exactly
        # (N x period_ms < 2^53: Redis' Lua computes in doubles).
        zone_line="throttle_zone $key zone=$zone:10m rate=100000000r/d mode=strict;"
    else
        zone_line="throttle_zone $key zone=$zone:10m rate=1000000000r/s mode=sync sync=250ms;"
    fi
    if [[ $target == cluster ]]; then
        redis_line="throttle_redis cluster $(cluster_seeds);"
    elif [[ $target == unix ]]; then
        redis_line="throttle_redis unix:${tmp:-}/redis/redis.sock;"
    else
        redis_line="throttle_redis 127.0.0.1:$redis_port;"
    fi
    case $1 in
    describe)
        printf '%s throttle zone=%s;  (%s; %s)\n' "$zone_line" "$zone" \
            "$(case $target in cluster) echo "throttle_redis cluster: $CLUSTER_MASTERS masters" ;; unix) echo 'throttle_redis: one Redis, unix socket' ;; *) echo 'throttle_redis: one Redis' ;; esac)" \
            "$([[ $shape != 1 ]] && echo "$nkeys keys, bench/keys.lua" || echo 'one key')"
        ;;
    packages) echo redis-server ;;
    check) module_check && redis_check ;;
    setup)
        module_setup
        if [[ $target == cluster ]]; then cluster_setup; else redis_setup; fi
        ;;
    redis) if [[ $target == cluster ]]; then echo cluster; else echo yes; fi ;;
    instance) [[ $target == single ]] || echo "$target" ;;
    main) echo "load_module $module_loaded;" ;;
    http)
        echo "$redis_line"
        echo "$zone_line"
        echo 'throttle_secret "bench-secret-0123456789abcdef";'
        ;;
    location) echo "throttle zone=$zone;" ;;
    script) [[ $shape == 1 ]] || echo "$here/keys.lua $nkeys" ;;
    verify) # strict: the first request's EVALSHA; sync: the first flush, within 250 ms
        module_verify "$2" || return 1
        if [[ $target == cluster ]]; then cluster_calls evalsha; else redis_calls evalsha; fi
        ;;
    esac
}

variant_sync() { redis_variant sync single 1 bsync "$@"; }
variant_strict() { redis_variant strict single 1 bstrict "$@"; }
variant_strict_unix() { redis_variant strict unix 1 bstrict "$@"; }
variant_sync_cluster() { redis_variant sync cluster 1 bsync "$@"; }
variant_strict_cluster() { redis_variant strict cluster 1 bstrict "$@"; }
variant_sync_1k() { redis_variant sync single n bsync_k "$@"; }
variant_strict_1k() { redis_variant strict single n bstrict_k "$@"; }
variant_sync_cluster_1k() { redis_variant sync cluster n bsync_k "$@"; }
variant_sync_100k() { redis_variant sync single 100k bsync_h "$@"; }
variant_strict_100k() { redis_variant strict single 100k bstrict_h "$@"; }
variant_strict_cluster_1k() { redis_variant strict cluster n bstrict_k "$@"; }
variant_lease() { redis_variant lease single 1 blease "$@"; }
variant_lease_1k() { redis_variant lease single n blease_k "$@"; }
variant_lease_10k() { redis_variant lease single m blease_m "$@"; }
variant_strict_10k() { redis_variant strict single m bstrict_m "$@"; }
variant_sync_10k() { redis_variant sync single m bsync_m "$@"; }

# The peer: the common OpenResty rate-limit pattern, one INCR per request on a
# per-client key (EXPIRE when the INCR created it: a fixed window of 1 s),
# through Debian's libnginx-mod-http-lua and lua-nginx-redis (lua-resty-redis,
# installed as nginx.redis), connections kept in the cosocket pool. It runs in
# an nginx of its own so that the other variants are measured without LuaJIT.
# Redis errors are logged ([error] fails the run) and let the request through.
# The pool per worker is lua_pool_size (lib.sh).
variant_openresty() {
    case $1 in
    describe)
        echo "access_by_lua_block: resty.redis connect, INCR rl:\$binary_remote_addr" \
            "(+ EXPIRE 1 when 1), set_keepalive(60000, $(lua_pool_size)), 429 over 1000000000 per s" \
            "(libnginx-mod-http-lua $(lua_module_version), own nginx instance)"
        ;;
    packages) printf '%s\n' redis-server "${LUA_PACKAGES[@]}" ;;
    check) redis_check && lua_check ;;
    setup) redis_setup ;;
    instance) echo lua ;;
    redis) echo yes ;;
    main) printf 'load_module %s;\n' "${LUA_MODULES[@]}" ;;
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

# --------------------------------------------------------------------------
# Checks.
# --------------------------------------------------------------------------

check_shared_knobs
need_count BENCH_BODY_BYTES "$BODY_BYTES"
need_duration BENCH_DURATION "$DURATION"
[[ $PIN =~ ^(auto|0|1)$ ]] || die "BENCH_PIN must be auto, 0 or 1, not \"$PIN\""

read -r -a variants <<<"$VARIANTS"
((${#variants[@]})) || die "BENCH_VARIANTS is empty"
for v in "${variants[@]}"; do
    if ! [[ $v =~ ^[a-z][a-z0-9_]*$ ]] || ! declare -F "variant_$v" >/dev/null; then
        die "unknown variant \"$v\" (known:$(declare -F | awk '$3 ~ /^variant_/ { sub(/^variant_/, "", $3); printf " %s", $3 }'))"
    fi
done

# Debian packages: wrk and curl, and what the variants need; the variants'
# own checks say what is still missing.
packages=(wrk curl)
for v in "${variants[@]}"; do
    read -r -a p <<<"$("variant_$v" packages | xargs)"
    packages+=("${p[@]}")
done
install_missing "${packages[@]}"
need_nginx

declare -A seen=()
for v in "${variants[@]}"; do
    [[ -z ${seen[$v]:-} ]] || die "variant \"$v\" is listed twice"
    seen[$v]=1
    "variant_$v" check || die "variant \"$v\" cannot run"
done

# --------------------------------------------------------------------------
# Temp dir; everything started from here on is stopped on exit (lib.sh).
# --------------------------------------------------------------------------

start_tmp throttle-bench

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
# command prefixes (lib.sh); not functions, so that `$!` is nginx itself
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
    local inst=$1 v
    shift
    conf_head "$inst"
    for v in "$@"; do "variant_$v" main; done | awk '!seen[$0]++'
    echo
    echo "events { worker_connections $((CONNECTIONS * 2 + 512)); }"
    echo
    echo "http {"
    echo "    access_log off;"
    echo "    default_type text/plain;"
    conf_temp_paths "$inst"
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

for inst in "${instances[@]}"; do
    members=()
    for v in "${variants[@]}"; do
        [[ ${instance_of[$v]} == "$inst" ]] && members+=("$v")
    done
    conf=$(conf_of "$inst")
    write_conf "$inst" "${members[@]}" >"$conf"
    nginx_start "$inst" "$conf"
done

url() { echo "http://127.0.0.1:${port[$1]}/bench.txt"; }

# Every variant must answer 200 with the whole file before we measure (with the
# first key of the many-keys variants' header; the others ignore it).
for v in "${variants[@]}"; do
    code=$(await_answer "${instance_of[$v]}" \
        curl -s -o "$tmp/body.$v" -D "$tmp/headers.$v" -H 'X-Bench-Key: k1' -w '%{http_code}' "$(url "$v")")
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
    local script=() script_args=() s
    read -r -a s <<<"$("variant_$3" script)"
    if ((${#s[@]})); then # "PATH ARG...": wrk -s PATH URL -- ARG... THREADS
        script=(-s "${s[0]}")
        script_args=(-- "${s[@]:1}" "$THREADS")
    fi
    wrk_to "$1" "$3" -t"$THREADS" -c"$CONNECTIONS" -d"$2" --latency "${script[@]}" "$(url "$3")" "${script_args[@]}"
}
# A 429 or 503 in wrk's report means a limit kicked in.
wrk_non2xx_why=' -- a limit rejected requests (429/503) or the file was not served; the numbers would be meaningless'

warm_up variant "${variants[@]}"

# uses_redis[V]: yes (the one redis-server) or cluster (the Redis Cluster's masters)
declare -A uses_redis=()
for v in "${variants[@]}"; do
    x=$("variant_$v" redis)
    [[ -z $x ]] || uses_redis[$v]=$x
done
# snapshot V FILE: the Redis commands so far of what V talks to
snapshot() {
    case ${uses_redis[$1]:-} in
    yes) redis_snapshot "$2" ;;
    cluster) cluster_snapshot "$2" ;;
    esac
}
# redis_pids_of V: the redis-server processes whose CPU time V's requests cost
redis_pids_of() {
    case ${uses_redis[$1]:-} in
    cluster) echo "${cluster_pids[*]}" ;;
    *) echo "${redis_pid:-}" ;;
    esac
}
# nodes_of V: how many servers a snapshot of V asks (its own connections, left out)
nodes_of() { if [[ ${uses_redis[$1]:-} == cluster ]]; then echo "$CLUSTER_MASTERS"; else echo 1; fi; }

load_before=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')
declare -A rps_all=() p99_all=() requests=() cpu_nginx=() cpu_redis=()
for ((r = 1; r <= ROUNDS; r++)); do
    # Rotate the order each round so no variant always runs first or last.
    mapfile -t order < <(rotated "$r" "${variants[@]}")
    say "round $r/$ROUNDS: ${order[*]}"
    for v in "${order[@]}"; do
        f=$tmp/wrk.$v.$r
        snapshot "$v" "$f.redis-before"
        read -r -a workers <<<"$(nginx_workers "${instance_of[$v]}")"
        read -r -a rpids <<<"$(redis_pids_of "$v")"
        ng0=$(cpu_ticks "${workers[@]}") rd0=$(cpu_ticks "${rpids[@]}")
        run_wrk "$f" "$DURATION" "$v"
        ng1=$(cpu_ticks "${workers[@]}") rd1=$(cpu_ticks "${rpids[@]}")
        snapshot "$v" "$f.redis-after"
        res=$(parse_wrk "$f" "$v (round $r)") || exit 1
        read -r rps _ p99 n <<<"$res"
        requests[$v]=$((${requests[$v]:-0} + n))
        cpu_nginx[$v]=$((${cpu_nginx[$v]:-0} + ng1 - ng0))
        cpu_redis[$v]=$((${cpu_redis[$v]:-0} + rd1 - rd0))
        extra=''
        if [[ -n ${uses_redis[$v]:-} ]]; then
            redis_delta "$f.redis-before" "$f.redis-after" "$(nodes_of "$v")" >>"$tmp/redis-calls.$v"
            echo "requests $n" >>"$tmp/redis-calls.$v"
            extra=$(redis_delta "$f.redis-before" "$f.redis-after" "$(nodes_of "$v")" |
                awk -v n="$n" '$1 != "connections" { c += $2 } END {
                    x = c / n; printf "  redis %s cmd/req", (x >= 0.01 || x == 0) ? sprintf("%.3f", x) : sprintf("%.2g", x) }')
        fi
        say "  $(printf '%-18s %10.0f req/s  p99 %7.3f ms' "$v" "$rps" "$p99")$extra"
        rps_all[$v]+="$rps "
        p99_all[$v]+="$p99 "
    done
done

no_nginx_errors

# --------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------

declare -A rps_med=() p99_med=() rps_spread=()
for v in "${variants[@]}"; do
    rps_med[$v]=$(median "${rps_all[$v]}")
    p99_med[$v]=$(median "${p99_all[$v]}")
    rps_spread[$v]=$(spread "${rps_all[$v]}")
done

peers=()
for p in $PEERS; do
    [[ -n ${seen[$p]:-} ]] && peers+=("$p")
done

# stats_of V: "NGINX_US REDIS_US TRIPS CMDS" per request of a Redis variant, over
# all its measured runs (trips: its EVALSHAs, or every command when it sends no script)
stats_of() {
    awk -v n="${requests[$1]}" -v a="${cpu_nginx[$1]}" -v b="${cpu_redis[$1]}" -v hz="$clk_tck" '
        $1 == "requests" || $1 == "connections" { next }
        { all += $2 }
        $1 ~ /^(eval|evalsha|eval_ro|evalsha_ro|fcall|fcall_ro)$/ { scripted += $2 }
        END {
            trips = scripted > 0 ? scripted : all
            printf "%.3f %.3f %.6g %.6g\n", a * 1e6 / hz / n, b * 1e6 / hz / n, trips / n, all / n
        }' "$tmp/redis-calls.$1"
}

# cluster_vs_single: each cluster variant next to its one-Redis twin (the name
# without "_cluster"), when both ran: per request, one Redis -> cluster (ratio)
cluster_vs_single() {
    local v b lines='' a_s b_s
    for v in "${variants[@]}"; do
        [[ ${uses_redis[$v]:-} == cluster && -n ${seen[${v/_cluster/}]:-} ]] || continue
        b=${v/_cluster/}
        a_s=$(stats_of "$b") b_s=$(stats_of "$v")
        lines+=$(awk -v v="$v" -v b="$b" -v x="$a_s" -v y="$b_s" -v ra="${rps_med[$b]}" -v rb="${rps_med[$v]}" \
            -v rr="$(paired_ratios "${rps_all[$v]}" "${rps_all[$b]}")" '
            function r(p, q) { return q > 0 ? sprintf("%.2fx", p / q) : "-" }
            function f(p) { return (p >= 0.01 || p == 0) ? sprintf("%.3f", p) : sprintf("%.2g", p) }
            BEGIN {
                split(x, s, " "); split(y, c, " ")
                printf "  %-20s %-18s %6s   %6.2f -> %6.2f %6s   %6.2f -> %6.2f %6s   %s -> %s   %s -> %s   (req/s by round: %s)\n",
                    v, "vs " b, r(rb, ra), s[1], c[1], r(c[1], s[1]), s[2], c[2], r(c[2], s[2]),
                    f(s[3]), f(c[3]), f(s[4]), f(c[4]), rr
            }')$'\n'
    done
    [[ -n $lines ]] || return 0
    echo
    echo "Redis Cluster ($CLUSTER_MASTERS masters) vs one Redis, the same zones and key shape, per request"
    echo "(one Redis -> cluster; redis us summed over the masters' processes; trips = script calls):"
    printf '  %-20s %-18s %6s   %-22s   %-22s   %-14s   %s\n' variant '' 'req/s' 'nginx us/req' \
        'redis us/req' 'trips/req' 'cmds/req'
    printf '%s' "$lines"
}

{
    echo "ngx_http_throttle_module benchmark ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo "machine: $(machine)"
    echo "load:    $load_before (1/5/15-min load average before measuring; other busy processes add noise)"
    echo "nginx:   worker_processes $WORKERS, ${nginx_cpus:+pinned to CPU $nginx_cpus}${nginx_cpus:-not pinned}," \
        "static file of $BODY_BYTES bytes, access_log off"
    [[ -z $module_info ]] || echo "module:  $module_info"
    echo "wrk:     wrk ${wrk_args[*]} http://127.0.0.1:PORT/bench.txt${wrk_cpus:+ (pinned to CPU $wrk_cpus)}"
    for v in "${variants[@]}"; do
        [[ -z $("variant_$v" script) ]] || {
            echo "         (*_1k variants: wrk ... -s bench/keys.lua URL -- $KEYS_N $THREADS: $KEYS_N keys in turn;"
            echo "          *_10k: the same with $KEYS_10K keys)"
            break
        }
    done
    echo "method:  ${WARMUP/#0/no} warm-up per variant, $ROUNDS interleaved round(s) of $DURATION each, median per variant"
    echo
    # req/s and p99 columns, then one req/s ratio and one p99 ratio per peer
    header=$(printf '%-18s %10s %8s %7s' variant 'req/s' 'p99 ms' spread)
    for p in "${peers[@]}"; do header+=$(printf '  %*s' $((${#p} + 8)) "req/s vs $p"); done
    for p in "${peers[@]}"; do header+=$(printf '  %*s' $((${#p} + 7)) "p99 vs $p"); done
    echo "$header"
    for v in "${variants[@]}"; do
        line=$(printf '%-18s %10.0f %8.3f %6s%%' "$v" "${rps_med[$v]}" "${p99_med[$v]}" "${rps_spread[$v]}")
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
    printf '  %-18s %13s %13s %13s\n' variant 'nginx us/req' 'redis us/req' 'total us/req'
    for v in "${variants[@]}"; do
        awk -v v="$v" -v n="${requests[$v]}" -v a="${cpu_nginx[$v]}" -v b="${cpu_redis[$v]}" \
            -v hz="$clk_tck" -v redis="${uses_redis[$v]:-}" 'BEGIN {
                ng = a * 1e6 / hz / n; rd = b * 1e6 / hz / n
                printf "  %-18s %13.2f %13s %13.2f\n", v, ng, redis ? sprintf("%.2f", rd) : "-", ng + (redis ? rd : 0)
            }'
    done
    if ((${#uses_redis[@]})); then
        echo
        echo "Redis commands per request (INFO commandstats before and after every measured run):"
        printf '  %-18s %10s %10s %10s %6s  %s\n' variant requests 'trips/req' 'cmds/req' conns \
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
                    printf "  %-18s %10d %10s %10s %6d %s\n", v, n, f(trips / n), f(all / n), conns, by
                }' "$tmp/redis-calls.$v"
        done
        echo "  trips = commands nginx sent (for a variant that calls scripts, its EVALSHAs; the"
        echo "  commands the scripts run inside Redis count in cmds/req and in the breakdown);"
        echo "  conns = connections Redis accepted during the measured runs."
        echo "  $redis_info$cluster_info"
        cluster_vs_single
    fi
    echo
    echo "spread = (max - min) / median of req/s over the rounds; ratios are of medians."
    echo "A ratio closer to 1.00x than the spread is noise; the round-by-round ratios"
    echo "show whether it holds in every round."
    echo "per-round req/s:"
    for v in "${variants[@]}"; do
        round_row 18 "$v" "${rps_all[$v]}"
    done
    echo "variants:"
    for v in "${variants[@]}"; do
        printf '  %-18s %s\n' "$v" "$("variant_$v" describe)"
    done
} >"$tmp/results.txt"

show_results "$OUT"

# `make bench` goes on with the response-cache benchmark (bench/cache.sh) once
# this run's nginx and redis-server are stopped; BENCH_CACHE=1 runs it after a
# plain `bash bench/run.sh` too, BENCH_CACHE=0 never.
if [[ ${BENCH_CACHE:-${MAKELEVEL:+1}} == 1 ]]; then
    stop_started
    bash "$here/cache.sh"
fi
