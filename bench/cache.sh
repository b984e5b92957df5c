#!/usr/bin/env bash
# nginx variables in single-quoted config lines are meant literally:
# shellcheck disable=SC2016
# bench/cache.sh: what a response-cache hit of ngx_http_throttle_module costs.
#
# One nginx binary, these scenarios on their own loopback ports, all answering
# GET /api/items?sort=name&page=2 (Cookie: sessionid=...) with the same ~2 KB
# JSON file (application/json):
#   upstream     proxy_pass (keepalive) to the "origin": a second server block of
#                the same nginx that serves the file -- what a miss costs at least
#   static       nginx serving the file itself -- "close to a static file"
#   throttle     throttle_cache + throttle_cache_user $cookie_sessionid +
#                throttle_cache_valid 200 1h in front of the same origin; warmed,
#                every measured request is a HIT. The entry is stored gzip'd (the
#                default, >= 1k) and wrk sends no Accept-Encoding: inflated once (memo)
#   throttle_gz  the same, the client sends Accept-Encoding: gzip (as browsers do):
#                the stored gzip body is sent as it is
#   throttle_plain  (not in the default set) as throttle with
#                throttle_cache_gzip_min_length 100m: stored and sent uncompressed
#   lua          the OpenResty peer (Debian's libnginx-mod-http-lua + lua-resty-redis,
#                own nginx instance): cache-aside in content_by_lua (bench/cache_peer.lua),
#                GET per request, SET EX on a miss; warmed, every request is a hit
#   throttle_local  one hot anonymous URL (throttle_cache without throttle_cache_user,
#                throttle_cache_credentials off: the cookie wrk sends is not an identity)
#                with throttle_cache_local zone=bench_local:32m: every measured request is a
#                local hit, no Redis command (the fill channel's heartbeat PINGs excepted)
#   lua_local    its OpenResty peer (lua instance): mlcache-style, a lua_shared_dict in
#                front of Redis in front of the upstream (bench/cache_local_peer.lua, 10 s in
#                the dict, as throttle_cache_local's default ttl), the same anonymous URL
# Many users: the scenarios above send one cookie, so the module's per-worker memos (the
# identity HMAC, the request key) always hit. These send BENCH_CACHE_USERS distinct cookies in
# turn (wrk -s bench/cache_users.lua: sessionid=u<i>-<suffix>, one after the other), same URL,
# same locations (every user's entry holds the same JSON: the memo of inflated bodies, found by
# the gzip bytes, inflates it once for all of them):
#   throttle_users, throttle_gz_users, lua_users   as throttle, throttle_gz, lua
#   static_users                                   as static: what the wrk script costs
#   throttle_plain_users (not in the default set)  as throttle_plain
# Redis Cluster (not in the default set: a 3-master cluster started here, lib.sh's
# cluster_start; one http{} has one throttle_redis, so a second nginx instance of the module
# of its own, "cluster", with throttle_redis cluster SEEDS and the same throttle location,
# its misses going to the same origin):
#   throttle_cluster, throttle_users_cluster       as throttle, throttle_users
# A worker's first lookup of a namespace on a cluster is BYPASS until its namespace-
# generation mirror is read: these are warmed with wrk passes (-t1 -c8, 1s) until a pass
# left the origin's count unchanged. Their Redis CPU and commands are summed over the
# masters (the cluster bus included); cluster/one-Redis ratios (req/s, CPU per request of
# nginx and of Redis, Redis commands per request) are printed next to each other.
# Every user's entry is stored before measuring: wrk passes of the same script at -c8 until
# a pass that sent every user at least once left the origin's request count unchanged.
# wrk runs against each in interleaved rounds; medians of req/s, p50 and p99 are
# printed with the ratios throttle/lua and throttle_gz/lua (goal >= 2x), throttle/static,
# throttle/upstream, the same for the *_users scenarios, many users / one user, CPU and
# Redis commands per request, and the origin's request count during the hit scenarios
# (must stay 0). Then Redis bytes per entry:
# a ~2 KB and a ~20 KB JSON stored with the default gzip (>= 1k) and with
# throttle_cache_gzip_min_length 100m (MEMORY USAGE and STRLEN of the entry keys).
#
# `make bench` runs it after bench/run.sh; alone: bash bench/cache.sh.
# Knobs (environment):
#   BENCH_CACHE_SCENARIOS   scenarios, in order           (upstream static throttle throttle_gz lua
#                                                          throttle_local lua_local static_users
#                                                          throttle_users throttle_gz_users lua_users)
#                           also known: throttle_plain throttle_plain_users throttle_cluster
#                           throttle_users_cluster
#   BENCH_CACHE_USERS       distinct users of *_users     (2000)
#   BENCH_WORKERS           nginx worker_processes        (1)
#   BENCH_THREADS           wrk -t                        (1)
#   BENCH_CONNECTIONS       wrk -c                        (32)
#   BENCH_CACHE_DURATION    wrk -d per measurement        (6s)
#   BENCH_WARMUP            wrk -d warm-up per scenario   (1s; 0 to skip)
#   BENCH_ROUNDS            interleaved rounds            (3)
#   BENCH_CACHE_BODY_BYTES  size of the JSON body, about  (2048)
#   BENCH_MODULE            module path                   (<repo>/build/ngx_http_throttle_module.so)
#   BENCH_NGINX             nginx binary                  (/usr/sbin/nginx)
#   BENCH_CACHE_OUT         also write the result table to this file
#   BENCH_KEEP=1            keep the temp directory (configs, logs, raw wrk output)
# Missing Debian packages (wrk, curl, redis-server, libnginx-mod-http-lua,
# lua-nginx-redis, lua-resty-core) are installed with apt-get when run as root.
# All traffic goes to 127.0.0.1: nginx and a redis-server started on a free port.

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prog=bench-cache
# The helpers and knobs shared with run.sh (BENCH_WORKERS, BENCH_THREADS,
# BENCH_CONNECTIONS, BENCH_WARMUP, BENCH_ROUNDS, BENCH_MODULE, BENCH_NGINX,
# BENCH_KEEP are read there).
# shellcheck source=lib.sh
source "$here/lib.sh"

SCENARIOS=${BENCH_CACHE_SCENARIOS:-upstream static throttle throttle_gz lua throttle_local lua_local static_users throttle_users throttle_gz_users lua_users}
USERS=${BENCH_CACHE_USERS:-2000}
DURATION=${BENCH_CACHE_DURATION:-6s}
BODY_BYTES=${BENCH_CACHE_BODY_BYTES:-2048}
OUT=${BENCH_CACHE_OUT:-}

SESSION='sessionid=b3f1c0de5eed4a11'
USER_SUFFIX='9c41e07a2d5fb863' # *_users: Cookie: sessionid=u<i>-$USER_SUFFIX, i = 1 .. USERS
USERS_SCRIPT=$here/cache_users.lua
REQ_PATH='/api/items?sort=name&page=2'
GOAL_LUA=2 # throttle/lua req/s
GOAL_LOCAL_STATIC=0.95 # throttle_local/static req/s
GOAL_LOCAL_COMMANDS=0.001 # throttle_local: Redis commands per request, at most

# --------------------------------------------------------------------------
# Checks, packages.
# --------------------------------------------------------------------------

check_shared_knobs
need_count BENCH_CACHE_BODY_BYTES "$BODY_BYTES"
need_count BENCH_CACHE_USERS "$USERS"
need_duration BENCH_CACHE_DURATION "$DURATION"

known='upstream static throttle throttle_gz throttle_plain lua throttle_local lua_local'
known+=' static_users throttle_users throttle_gz_users throttle_plain_users lua_users'
known+=' throttle_cluster throttle_users_cluster'
read -r -a scenarios <<<"$SCENARIOS"
((${#scenarios[@]})) || die "BENCH_CACHE_SCENARIOS is empty"
declare -A seen=()
for s in "${scenarios[@]}"; do
    [[ " $known " == *" $s "* ]] || die "unknown scenario \"$s\" (known: $known)"
    [[ -z ${seen[$s]:-} ]] || die "scenario \"$s\" is listed twice"
    seen[$s]=1
done
want_lua=${seen[lua]:-}${seen[lua_users]:-}${seen[lua_local]:-}
want_cluster=${seen[throttle_cluster]:-}${seen[throttle_users_cluster]:-}

packages=(wrk curl redis-server)
[[ -z $want_lua ]] || packages+=("${LUA_PACKAGES[@]}")
install_missing "${packages[@]}"
need_nginx
need module_check
need redis_check
[[ -z $want_lua ]] || need lua_check

# --------------------------------------------------------------------------
# Temp dir; everything started from here on is stopped on exit (lib.sh). The
# module is copied into it (module_setup); redis-server, no persistence.
# --------------------------------------------------------------------------

start_tmp throttle-bench-cache
module_setup
redis_start
[[ -z $want_cluster ]] || cluster_start

# --------------------------------------------------------------------------
# The JSON bodies: an API-like list of items, deterministic, about N bytes.
# --------------------------------------------------------------------------

make_json() { # make_json BYTES
    perl -e '
        srand(7);
        my @w = qw(alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima
                   mike november oscar papa quebec romeo sierra tango uniform victor whiskey);
        my ($target, @items, $s) = ($ARGV[0]);
        do {
            push @items, sprintf(q({"id":%d,"sku":"%08x","name":"%s %s","price":%.2f,) .
                q("stock":%d,"tags":["%s","%s"],"updated":"2026-11-%02dT%02d:%02d:00Z"}),
                scalar(@items) + 1, int(rand(2**32)), $w[rand @w], $w[rand @w], rand(500),
                int(rand(1000)), $w[rand @w], $w[rand @w], 1 + int(rand(28)), int(rand(24)),
                int(rand(60)));
            $s = sprintf(q({"page":2,"per_page":%d,"items":[%s]}), scalar(@items), join(",", @items));
        } while (length($s) < $target);
        print $s, "\n";' "$1"
}
mkdir -p "$tmp/html/api"
make_json "$BODY_BYTES" >"$tmp/html/api/items.json"
make_json 20480 >"$tmp/html/api/items20k.json"
body_bytes=$(wc -c <"$tmp/html/api/items.json")
gz_bytes=$(gzip -6 -c "$tmp/html/api/items.json" | wc -c)

# --------------------------------------------------------------------------
# nginx configs. Ports: the origin's two listeners (one for the "upstream"
# scenario, one only the caches use on a miss: its access log counts those),
# and one per scenario.
# --------------------------------------------------------------------------

read -r p_origin p_origin_cache p_upstream p_static p_throttle p_plain p_lua p_cluster p_local p_lua_local <<<"$(free_ports 10)"
declare -A port=([upstream]=$p_upstream [static]=$p_static [throttle]=$p_throttle
    [throttle_local]=$p_local [lua_local]=$p_lua_local
    [throttle_gz]=$p_throttle [throttle_plain]=$p_plain [lua]=$p_lua [static_users]=$p_static
    [throttle_users]=$p_throttle [throttle_gz_users]=$p_throttle [throttle_plain_users]=$p_plain
    [lua_users]=$p_lua [throttle_cluster]=$p_cluster [throttle_users_cluster]=$p_cluster)
declare -A instance_of=([upstream]=main [static]=main [throttle]=main [throttle_gz]=main
    [throttle_plain]=main [lua]=lua [static_users]=main [throttle_users]=main
    [throttle_gz_users]=main [throttle_plain_users]=main [lua_users]=lua
    [throttle_cluster]=cluster [throttle_users_cluster]=cluster [throttle_local]=main
    [lua_local]=lua)
# request headers besides the cookie
declare -A accept=([throttle_gz]='Accept-Encoding: gzip' [throttle_gz_users]='Accept-Encoding: gzip')
is_cache() { [[ $1 == throttle* || $1 == lua* ]]; }
is_users() { [[ $1 == *_users || $1 == *_users_cluster ]]; }
is_cluster() { [[ $1 == *_cluster ]]; }
# cookie NAME: the session cookie of the first request (*_users: of user 1)
cookie() { if is_users "$1"; then echo "sessionid=u1-$USER_SUFFIX"; else echo "$SESSION"; fi; }
origin_log=$tmp/origin-cache.log
: >"$origin_log"

conf_http_head() { # conf_http_head INSTANCE
    echo "events { worker_connections $((CONNECTIONS * 4 + 512)); }"
    echo "http {"
    echo "    access_log off;"
    echo "    default_type application/octet-stream;"
    echo "    types { application/json json; }"
    conf_temp_paths "$1"
    echo "    upstream origin_cache { server 127.0.0.1:$p_origin_cache; keepalive 64; }"
}

{
    conf_head main
    echo "load_module $module_loaded;"
    conf_http_head main
    cat <<EOF
    upstream origin { server 127.0.0.1:$p_origin; keepalive 64; }
    log_format origin '\$request';
    map \$server_port \$origin_logged { $p_origin_cache 1; default 0; }

    throttle_redis 127.0.0.1:$redis_port;
    throttle_cache_secret "bench-cache-secret-0123456789abcdef";

    server {  # the origin: a fast upstream, nginx serving the JSON files
        listen 127.0.0.1:$p_origin;
        listen 127.0.0.1:$p_origin_cache;
        access_log $origin_log origin if=\$origin_logged;
        root $tmp/html;
        location = /api/items { try_files /api/items.json =404; }
        location = /api/items20k { try_files /api/items20k.json =404; }
    }

    server {  # upstream: proxy_pass alone
        listen 127.0.0.1:$p_upstream;
        location /api/ {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }

    server {  # static: the file itself
        listen 127.0.0.1:$p_static;
        root $tmp/html;
        location = /api/items { try_files /api/items.json =404; }
    }

    server {  # throttle_plain: the same, entries stored uncompressed
        listen 127.0.0.1:$p_plain;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        add_header X-Cache \$throttle_cache_status always;
        throttle_cache_user \$cookie_sessionid;
        throttle_cache_valid 200 1h;
        throttle_cache_gzip_min_length 100m;
        location /api/ {
            throttle_cache bench_plain;
            proxy_pass http://origin_cache;
        }
    }

    server {  # throttle_local: one hot anonymous URL, the local tier in front of Redis
        listen 127.0.0.1:$p_local;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        add_header X-Cache \$throttle_cache_status always;
        add_header X-Cache-Tier \$throttle_cache_tier always;
        throttle_cache_valid 200 1h;
        throttle_cache_credentials off;
        location /api/ {
            throttle_cache bench_local;
            throttle_cache_local zone=bench_local:32m;
            proxy_pass http://origin_cache;
        }
    }

    server {  # throttle, throttle_gz: the response cache in front of the origin
        listen 127.0.0.1:$p_throttle;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        add_header X-Cache \$throttle_cache_status always;
        throttle_cache_user \$cookie_sessionid;
        throttle_cache_valid 200 1h;
        location /api/ {
            throttle_cache bench;
            proxy_pass http://origin_cache;
        }
EOF
    # entry sizes: default compression (gzip >= 1k) and none, one namespace each
    for item in items items20k; do
        cat <<EOF
        location = /sizes/gz/$item {
            throttle_cache size_gz_$item;
            proxy_pass http://origin_cache/api/$item;
        }
        location = /sizes/plain/$item {
            throttle_cache size_plain_$item;
            throttle_cache_gzip_min_length 100m;
            proxy_pass http://origin_cache/api/$item;
        }
EOF
    done
    echo "    }"
    echo "}"
} >"$tmp/nginx-main.conf"

if [[ -n $want_lua ]]; then
    sed -e "s/%%REDIS_PORT%%/$redis_port/" -e "s/%%POOL_SIZE%%/$(lua_pool_size)/" \
        "$here/cache_peer.lua" >"$tmp/cache_peer.lua"
    sed -e "s/%%REDIS_PORT%%/$redis_port/" -e "s/%%POOL_SIZE%%/$(lua_pool_size)/" \
        "$here/cache_local_peer.lua" >"$tmp/cache_local_peer.lua"
    {
        conf_head lua
        for f in "${LUA_MODULES[@]}"; do echo "load_module $f;"; done
        conf_http_head lua
        cat <<EOF
    lua_package_path "/usr/share/lua/5.1/?.lua;;";
    lua_shared_dict cache_local 32m;

    server {  # lua_local: mlcache-style, a shared dict in front of Redis
        listen 127.0.0.1:$p_lua_local;
        location /api/ {
            content_by_lua_file $tmp/cache_local_peer.lua;
        }
        location /_origin/ {
            internal;
            rewrite ^/_origin(/.*)\$ \$1 break;
            proxy_pass http://origin_cache;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }

    server {  # lua: cache-aside in content_by_lua, lua-resty-redis
        listen 127.0.0.1:$p_lua;
        location /api/ {
            content_by_lua_file $tmp/cache_peer.lua;
        }
        location /_origin/ {
            internal;
            rewrite ^/_origin(/.*)\$ \$1 break;
            proxy_pass http://origin_cache;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    } >"$tmp/nginx-lua.conf"
fi

if [[ -n $want_cluster ]]; then
    {
        conf_head cluster
        echo "load_module $module_loaded;"
        conf_http_head cluster
        cat <<EOF
    throttle_redis cluster $(cluster_seeds);
    throttle_cache_secret "bench-cache-secret-0123456789abcdef";

    server {  # throttle_cluster, throttle_users_cluster: as throttle, the cache on the cluster
        listen 127.0.0.1:$p_cluster;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        add_header X-Cache \$throttle_cache_status always;
        throttle_cache_user \$cookie_sessionid;
        throttle_cache_valid 200 1h;
        location /api/ {
            throttle_cache bench;
            proxy_pass http://origin_cache;
        }
    }
}
EOF
    } >"$tmp/nginx-cluster.conf"
fi

nginx_start main "$tmp/nginx-main.conf"
[[ -z $want_cluster ]] || nginx_start cluster "$tmp/nginx-cluster.conf"
[[ -z $want_lua ]] || nginx_start lua "$tmp/nginx-lua.conf"

url() { echo "http://127.0.0.1:${port[$1]}$REQ_PATH"; }

# get NAME URL: GET with the session cookie; headers to $tmp/h.NAME, body to
# $tmp/b.NAME; prints the status code
get() {
    curl -s -H "Cookie: $(cookie "$1")" ${accept[$1]:+-H "${accept[$1]}"} -D "$tmp/h.$1" -o "$tmp/b.$1" \
        -w '%{http_code}' "$2" || true
}
# same_body NAME: the body is the JSON file (gunzipped if it came gzip'd)
same_body() {
    if tr -d '\r' <"$tmp/h.$1" | grep -qi '^content-encoding: *gzip'; then
        gzip -dc <"$tmp/b.$1" | cmp -s - "$tmp/html/api/items.json"
    else
        cmp -s "$tmp/b.$1" "$tmp/html/api/items.json"
    fi
}
xcache() { tr -d '\r' <"$tmp/h.$1" | awk 'tolower($1) == "x-cache:" { print $2 }'; }

# Every scenario answers 200 with the file; the caches are warmed (MISS, then HIT).
for s in "${scenarios[@]}"; do
    code=$(await_answer "${instance_of[$s]}" get "$s" "$(url "$s")")
    [[ $code == 200 ]] || {
        cat "$tmp/h.$s" "$tmp/error.log" >&2 2>/dev/null || true
        die "$s: GET $(url "$s") answered $code"
    }
    same_body "$s" || die "$s: the body is not the JSON file"
    if is_cache "$s"; then
        for ((i = 0; i < 100; i++)); do
            get "$s" "$(url "$s")" >/dev/null
            [[ $(xcache "$s") == HIT ]] && break
            sleep 0.02
        done
        [[ $(xcache "$s") == HIT ]] || { cat "$tmp/h.$s" >&2; die "$s: never answered X-Cache: HIT"; }
        same_body "$s" || die "$s: the HIT body is not the JSON file"
        if [[ $s == throttle_gz* ]] && ! grep -qi '^content-encoding: *gzip' <(tr -d '\r' <"$tmp/h.$s"); then
            die "$s: the hit was not sent gzip'd"
        fi
        tr -d '\r' <"$tmp/h.$s" >"$tmp/sample.$s"
    fi
done

# --------------------------------------------------------------------------
# Measure.
# --------------------------------------------------------------------------

run_wrk() { # run_wrk OUTFILE DURATION SCENARIO [THREADS CONNECTIONS]
    local t=${4:-$THREADS} c=${5:-$CONNECTIONS}
    if is_users "$3"; then
        wrk_to "$1" "$3" -t"$t" -c"$c" -d"$2" --latency -s "$USERS_SCRIPT" ${accept[$3]:+-H "${accept[$3]}"} \
            "$(url "$3")" -- "$USERS" "$USER_SUFFIX" "$t"
    else
        wrk_to "$1" "$3" -t"$t" -c"$c" -d"$2" --latency -H "Cookie: $SESSION" \
            ${accept[$3]:+-H "${accept[$3]}"} "$(url "$3")"
    fi
}
origin_count() { wc -l <"$origin_log"; }

# Many users: every user's entry is stored (the first pass sends the misses), then a pass
# that sent every user at least once (-t1: one wrk thread goes through the users in turn)
# must leave the origin's count unchanged. A scenario sharing its cache with an earlier
# one (throttle_gz_users: throttle_users' location) only has to pass the check.
users_warm_s=$SECONDS
users_list=()
for s in "${scenarios[@]}"; do is_users "$s" && users_list+=("$s"); done
for s in "${scenarios[@]}"; do
    if ! is_cache "$s" || ! { is_users "$s" || is_cluster "$s"; }; then continue; fi
    # one user on a cluster: every worker's first lookup is BYPASS (to the origin) until
    # its namespace-generation mirror is read; a pass without origin requests = all HITs
    need_n=1
    is_users "$s" && need_n=$USERS
    ok=
    for ((pass = 1; pass <= 12; pass++)); do
        f=$tmp/wrk.$s.fill.$pass
        o0=$(origin_count)
        run_wrk "$f" 1s "$s" 1 8
        o1=$(origin_count)
        read -r _ _ _ n <<<"$(parse_wrk "$f" "$s (users warm-up, pass $pass)")"
        say "$(printf 'warm-up: %-22s pass %2d: %6d requests, origin +%d' "$s" "$pass" "$n" $((o1 - o0)))"
        if ((n >= need_n && o1 == o0)); then ok=1; break; fi
    done
    [[ -n $ok ]] || die "$s: still not all hits (origin requests) after $((pass - 1)) warm-up passes"
done
users_warm_s=$((SECONDS - users_warm_s))

warm_up scenario "${scenarios[@]}"

load_before=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')
declare -A rps_all=() p50_all=() p99_all=() requests=() cpu_nginx=() cpu_redis=() origin_hits=()
for ((r = 1; r <= ROUNDS; r++)); do
    mapfile -t order < <(rotated "$r" "${scenarios[@]}")
    say "round $r/$ROUNDS: ${order[*]}"
    for s in "${order[@]}"; do
        f=$tmp/wrk.$s.$r
        read -r -a workers <<<"$(nginx_workers "${instance_of[$s]}")"
        if is_cluster "$s"; then
            snapshot=cluster_snapshot nodes=$CLUSTER_MASTERS rpids=("${cluster_pids[@]}")
        else
            snapshot=redis_snapshot nodes=1 rpids=("$redis_pid")
        fi
        "$snapshot" "$f.redis-before"
        o0=$(origin_count)
        ng0=$(cpu_ticks "${workers[@]}") rd0=$(cpu_ticks "${rpids[@]}")
        run_wrk "$f" "$DURATION" "$s"
        ng1=$(cpu_ticks "${workers[@]}") rd1=$(cpu_ticks "${rpids[@]}")
        o1=$(origin_count)
        "$snapshot" "$f.redis-after"
        read -r rps p50 p99 n <<<"$(parse_wrk "$f" "$s (round $r)")"
        requests[$s]=$((${requests[$s]:-0} + n))
        cpu_nginx[$s]=$((${cpu_nginx[$s]:-0} + ng1 - ng0))
        cpu_redis[$s]=$((${cpu_redis[$s]:-0} + rd1 - rd0))
        origin_hits[$s]=$((${origin_hits[$s]:-0} + o1 - o0))
        # commands only: this table does not list the connections Redis accepted
        redis_delta "$f.redis-before" "$f.redis-after" "$nodes" | awk '$1 != "connections"' >>"$tmp/redis-calls.$s"
        echo "requests $n" >>"$tmp/redis-calls.$s"
        say "  $(printf '%-20s %9.0f req/s  p50 %6.3f ms  p99 %6.3f ms  origin +%d' "$s" "$rps" "$p50" "$p99" $((o1 - o0)))"
        rps_all[$s]+="$rps "
        p50_all[$s]+="$p50 "
        p99_all[$s]+="$p99 "
    done
done

no_nginx_errors
for s in "${scenarios[@]}"; do
    is_cache "$s" || continue
    # every measured request must have been a hit: the origin saw (about) none
    ((${origin_hits[$s]} * 1000 <= ${requests[$s]})) ||
        die "$s: the origin served ${origin_hits[$s]} of ${requests[$s]} requests: not all hits"
done

# --------------------------------------------------------------------------
# Redis bytes per entry, with and without compression.
# --------------------------------------------------------------------------

# entry_key NAMESPACE: the entry key of this namespace (waits for the store)
entry_key() {
    local k i
    for ((i = 0; i < 100; i++)); do
        k=$(redis_cli --scan --pattern "throttle:cache:{$1:*}:e:*" | grep -vE ':[lw]$' | head -1 || true)
        [[ -n $k ]] && { echo "$k"; return 0; }
        sleep 0.02
    done
    die "no entry key for namespace $1 in Redis"
}
sizes=''
size_row() { # size_row LABEL BODY_BYTES KEY
    local mem len
    mem=$(redis_cli memory usage "$3")
    len=$(redis_cli strlen "$3")
    sizes+=$(printf '  %-46s %7s %8s %8s' "$1" "$2" "$mem" "$len")$'\n'
}
for item in items items20k; do
    b=$(wc -c <"$tmp/html/api/$item.json")
    for mode in gz plain; do
        code=$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: $SESSION" \
            "http://127.0.0.1:$p_throttle/sizes/$mode/$item")
        [[ $code == 200 ]] || die "GET /sizes/$mode/$item answered $code"
        if [[ $mode == gz ]]; then label="throttle, default (gzip >= 1k)"; else label="throttle, gzip_min_length 100m"; fi
        size_row "$label" "$b" "$(entry_key "size_${mode}_$item")"
    done
done
if [[ -n $want_lua ]]; then
    lua_key=$(redis_cli --scan --pattern 'luacache:*' | head -1 || true) # head may cut --scan short (SIGPIPE)
    [[ -z $lua_key ]] || size_row "lua peer (content type + body)" "$body_bytes" "$lua_key"
fi

# --------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------

declare -A rps_med=() p50_med=() p99_med=() rps_spread=()
for s in "${scenarios[@]}"; do
    rps_med[$s]=$(median "${rps_all[$s]}")
    p50_med[$s]=$(median "${p50_all[$s]}")
    p99_med[$s]=$(median "${p99_all[$s]}")
    rps_spread[$s]=$(spread "${rps_all[$s]}")
done

describe() {
    case $1 in
    upstream) echo "proxy_pass (keepalive 64) to the origin, a second server block of the same nginx serving the JSON file" ;;
    static) echo "the same nginx serving the JSON file directly (try_files)" ;;
    throttle) echo "throttle_cache bench; throttle_cache_user \$cookie_sessionid; throttle_cache_valid 200 1h; proxy_pass to the origin; add_header X-Cache \$throttle_cache_status; entry stored gzip'd (default gzip_min_length 1k), inflated for this client (once per worker: the memo of inflated bodies)" ;;
    throttle_gz) echo "the same location, the client sends Accept-Encoding: gzip: the stored gzip body is sent as it is (its Content-Length in the sample below)" ;;
    throttle_plain) echo "as throttle, plus throttle_cache_gzip_min_length 100m: entry stored uncompressed, nothing to inflate" ;;
    lua) echo "content_by_lua_file bench/cache_peer.lua: md5(cookie, uri, sorted args) -> GET (set_keepalive 60s, pool $(lua_pool_size)); miss: location.capture + SET EX (libnginx-mod-http-lua $(lua_module_version), own nginx instance)" ;;
    static_users) echo "static, requested with the $USERS users' cookies in turn (the cost of wrk's script)" ;;
    throttle_users) echo "throttle, $USERS users in turn: one entry per user, each stored gzip'd; the users' bodies are equal, so the memo of inflated bodies (found by the gzip bytes) inflates once; the identity and key memos (8,192 slots in sets of 4) hold every user" ;;
    throttle_gz_users) echo "throttle_gz, $USERS users in turn: the stored gzip body sent as it is; the identity memo misses" ;;
    throttle_plain_users) echo "throttle_plain, $USERS users in turn: entries stored uncompressed, nothing to inflate; the identity memo misses" ;;
    lua_users) echo "lua, $USERS users in turn: one key per user" ;;
    throttle_local) echo "throttle_cache bench_local (anonymous: no throttle_cache_user, throttle_cache_credentials off); throttle_cache_local zone=bench_local:32m (ttl 10s): every measured request a local hit, entry stored gzip'd, inflated once per worker (the memo of inflated bodies)" ;;
    lua_local) echo "content_by_lua_file bench/cache_local_peer.lua: lua_shared_dict (10 s) -> Redis GET -> location.capture, the anonymous key md5(uri, sorted args) (lua instance)" ;;
    throttle_cluster) echo "throttle, the cache on a $CLUSTER_MASTERS-master Redis Cluster (throttle_redis cluster SEEDS; own nginx instance of the module); Redis CPU and commands summed over the masters" ;;
    throttle_users_cluster) echo "throttle_users ($USERS users in turn), the cache on the $CLUSTER_MASTERS-master Redis Cluster" ;;
    esac
}

{
    echo "ngx_http_throttle_module response-cache benchmark ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo "machine: $(machine)"
    echo "load:    $load_before (1/5/15-min load average before measuring)"
    echo "nginx:   worker_processes $WORKERS in every instance, not pinned, access_log off; body $body_bytes bytes of JSON ($gz_bytes gzip'd)"
    echo "module:  $module_info"
    echo "redis:   redis-server $redis_version on 127.0.0.1:$redis_port, --save '' --appendonly no, not pinned"
    [[ -z $want_cluster ]] || echo "cluster: $CLUSTER_MASTERS masters ($(cluster_seeds)), no replicas, --save '' --appendonly no, not pinned"
    echo "wrk:     wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency -H 'Cookie: $SESSION' 'http://127.0.0.1:PORT$REQ_PATH'"
    echo "         (one user; no Accept-Encoding, so every scenario sends the same $body_bytes-byte body,"
    echo "         except throttle_gz: wrk ... -H 'Accept-Encoding: gzip', answered with the stored gzip body)"
    if ((${#users_list[@]})); then
        echo "users:   ${users_list[*]}: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency -s bench/cache_users.lua ['-H Accept-Encoding: gzip'] URL -- $USERS $USER_SUFFIX $THREADS"
        echo "         ($USERS users: Cookie: sessionid=u<i>-$USER_SUFFIX, i = 1 .. $USERS in turn; every user's entry"
        echo "         stored and checked first: ${users_warm_s}s of wrk -t1 -c8 passes, the last one all hits)"
    fi
    echo "method:  ${WARMUP/#0/no} warm-up per scenario, $ROUNDS interleaved round(s) of $DURATION each, median per scenario"
    echo
    printf '%-22s %8s %7s %7s %7s %9s %9s %9s %6s\n' scenario 'req/s' 'p50 ms' 'p99 ms' spread \
        'nginx us' 'redis us' 'total us' 'trips'
    for s in "${scenarios[@]}"; do
        # trips: commands nginx sent (EVALSHA for a script; the GETs it runs inside do not count)
        trips=$(awk '$1 == "requests" { n += $2; next } { c += $2 }
            $1 ~ /^eval/ { e += $2 } END { printf "%.2f", n ? (e ? e : c) / n : 0 }' "$tmp/redis-calls.$s")
        awk -v s="$s" -v rps="${rps_med[$s]}" -v p50="${p50_med[$s]}" -v p99="${p99_med[$s]}" \
            -v sp="${rps_spread[$s]}" -v n="${requests[$s]}" -v a="${cpu_nginx[$s]}" \
            -v b="${cpu_redis[$s]}" -v hz="$clk_tck" -v trips="$trips" 'BEGIN {
                x = a * 1e6 / hz / n; y = b * 1e6 / hz / n
                printf "%-22s %8.0f %7.3f %7.3f %6s%% %9.2f %9.2f %9.2f %6s\n", s, rps, p50, p99, sp,
                    x, y, x + y, trips }'
    done
    echo
    for pair in "throttle lua" "throttle static" "throttle upstream" "throttle_gz lua" "throttle_gz static" \
        "throttle_gz throttle" "throttle_plain lua" "throttle_plain throttle" "lua static" "lua upstream" \
        "static upstream" "throttle_users lua_users" "throttle_gz_users lua_users" "throttle_users static" \
        "throttle_gz_users static" "lua_users static" "static_users static" "throttle_users throttle" \
        "throttle_gz_users throttle_gz" "throttle_plain_users lua_users" "throttle_plain_users throttle_users" \
        "throttle_plain_users throttle_plain" "lua_users lua" "throttle_local static" "lua_local static" \
        "throttle_local lua_local" "throttle_local throttle" "lua_local lua"; do
        read -r a b <<<"$pair"
        [[ -n ${seen[$a]:-} && -n ${seen[$b]:-} ]] || continue
        line="$a/$b = $(ratio "${rps_med[$a]}" "${rps_med[$b]}")x req/s"
        line+=" (round by round: $(paired_ratios "${rps_all[$a]}" "${rps_all[$b]}"))"
        line+=", p50 $(ratio "${p50_med[$a]}" "${p50_med[$b]}")x, p99 $(ratio "${p99_med[$a]}" "${p99_med[$b]}")x"
        if [[ $a == throttle_local && $b == static ]]; then
            x=$(ratio "${rps_med[$a]}" "${rps_med[$b]}")
            line+=$(awk -v x="$x" -v g="$GOAL_LOCAL_STATIC" 'BEGIN { printf "; goal >= %.2fx: %s", g, (x >= g) ? "met" : "NOT met" }')
        elif [[ $b == lua* && $a == throttle* && $a != throttle_local ]]; then
            x=$(ratio "${rps_med[$a]}" "${rps_med[$b]}")
            line+=$(awk -v x="$x" -v g="$GOAL_LUA" 'BEGIN { printf "; goal >= %.2fx: %s", g, (x >= g) ? "met" : "NOT met" }')
        fi
        echo "$line"
    done
    # CPU per request moves far less than req/s on a busy machine
    for pair in "lua throttle" "lua throttle_gz" "lua throttle_plain" "throttle static" "throttle_gz static" \
        "lua_users throttle_users" "lua_users throttle_gz_users" "throttle_users static" \
        "throttle_gz_users static" "throttle_users throttle" "throttle_gz_users throttle_gz" \
        "lua_users throttle_plain_users" "throttle_plain_users throttle_users" "lua_users lua" \
        "lua_local throttle_local" "throttle_local static" "throttle_local throttle"; do
        read -r a b <<<"$pair"
        [[ -n ${seen[$a]:-} && -n ${seen[$b]:-} ]] || continue
        awk -v a="$a" -v b="$b" -v na="${requests[$a]}" -v nb="${requests[$b]}" -v hz="$clk_tck" \
            -v ga="${cpu_nginx[$a]}" -v ra="${cpu_redis[$a]}" -v gb="${cpu_nginx[$b]}" -v rb="${cpu_redis[$b]}" 'BEGIN {
                x = (ga + ra) * 1e6 / hz / na; y = (gb + rb) * 1e6 / hz / nb
                u = ga * 1e6 / hz / na; v = gb * 1e6 / hz / nb
                printf "CPU per request %s/%s = %.2fx nginx + redis (%.1f / %.1f us), %.2fx nginx alone\n",
                    a, b, x / y, x, y, u / v }'
    done
    # cluster / one Redis, next to each other: req/s, CPU per request, Redis commands per request
    for pair in "throttle_cluster throttle" "throttle_users_cluster throttle_users"; do
        read -r a b <<<"$pair"
        [[ -n ${seen[$a]:-} && -n ${seen[$b]:-} ]] || continue
        ca=$(awk '$1 == "requests" { n += $2; next } { c += $2 } END { printf "%.3f", n ? c / n : 0 }' "$tmp/redis-calls.$a")
        cb=$(awk '$1 == "requests" { n += $2; next } { c += $2 } END { printf "%.3f", n ? c / n : 0 }' "$tmp/redis-calls.$b")
        awk -v a="$a" -v b="$b" -v na="${requests[$a]}" -v nb="${requests[$b]}" -v hz="$clk_tck" \
            -v ga="${cpu_nginx[$a]}" -v ra="${cpu_redis[$a]}" -v gb="${cpu_nginx[$b]}" -v rb="${cpu_redis[$b]}" \
            -v rps="$(ratio "${rps_med[$a]}" "${rps_med[$b]}")" -v ca="$ca" -v cb="$cb" 'BEGIN {
                u = ga * 1e6 / hz / na; v = gb * 1e6 / hz / nb
                x = ra * 1e6 / hz / na; y = rb * 1e6 / hz / nb
                printf "cluster/one Redis %s/%s: req/s %sx | nginx us/req %.2f/%.2f = %.2fx | redis us/req %.2f/%.2f = %s | redis commands/req %s/%s = %s\n",
                    a, b, rps, u, v, u / v, x, y, (y > 0 ? sprintf("%.2fx", x / y) : "n/a"), ca, cb,
                    (cb > 0 ? sprintf("%.2fx", ca / cb) : "n/a") }'
    done
    echo
    for s in throttle_local lua_local throttle lua; do
        [[ -n ${seen[$s]:-} ]] || continue
        awk -v s="$s" -v g="$GOAL_LOCAL_COMMANDS" '$1 == "requests" { n += $2; next } { c += $2 }
            END { x = n ? c / n : 0
                  printf "redis commands per request %-14s %.5f (every command, heartbeat PINGs included)%s\n", s, x,
                      (s == "throttle_local") ? sprintf("; goal <= %s: %s", g, (x <= g) ? "met" : "NOT met") : "" }' \
            "$tmp/redis-calls.$s"
    done
    echo
    for s in "${scenarios[@]}"; do
        is_cache "$s" || continue
        echo "$s: the origin served ${origin_hits[$s]} of ${requests[$s]} measured requests;" \
            "redis commands per request:$(awk '$1 == "requests" { n += $2; next } { c[$1] += $2 }
                END { for (k in c) printf " %s %.3f", k, c[k] / n }' "$tmp/redis-calls.$s")"
        echo "  sample response: $(grep -iE '^(HTTP/|x-cache|content-type|content-length|age|vary|content-encoding)' "$tmp/sample.$s" | paste -sd'|' | sed 's/|/ | /g')"
    done
    echo
    echo "Redis bytes per entry (one entry per row, read after the run):"
    printf '  %-46s %7s %8s %8s\n' 'entry' 'body B' 'MEMORY' 'STRLEN'
    printf '%s' "$sizes"
    echo "  MEMORY = MEMORY USAGE of the key (value, key name and Redis overhead); STRLEN = the stored value"
    echo
    echo "spread = (max - min) / median of req/s over the rounds; nginx us, redis us = CPU time (user +"
    echo "system) per request of the scenario's nginx workers (the origin included) and of redis-server,"
    echo "over all measured requests (wrk's own CPU not counted); trips = Redis commands sent per request"
    echo "per-round req/s:"
    for s in "${scenarios[@]}"; do
        round_row 22 "$s" "${rps_all[$s]}"
    done
    echo "scenarios:"
    for s in "${scenarios[@]}"; do printf '  %-22s %s\n' "$s" "$(describe "$s")"; done
} >"$tmp/results.txt"

show_results "$OUT"
