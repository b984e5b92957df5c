#!/usr/bin/env bash
# nginx variables in single-quoted config lines are meant literally:
# shellcheck disable=SC2016
# bench/callgrind.sh: nginx's instructions per request, counted by
# valgrind --tool=callgrind, for the variants of run.sh and cache.sh. Unlike
# requests/s, the count does not move with the load of the machine: it is the
# measure to back a claim that a change made a request cheaper or dearer.
#
# Method. Each measurement is one nginx (master_process off, daemon off: the
# process that answers is the one valgrind runs) under
#   valgrind --tool=callgrind --callgrind-out-file=FILE
# serving one variant on 127.0.0.1. It gets the first request of await_answer
# (and, for the cache, the requests that store the entry and show it a HIT),
# then one curl with keep-alive sends the same URL COUNT times, then nginx
# gets SIGQUIT and callgrind writes FILE. That is done with COUNT = N and with
# COUNT = N0; both runs have the same start-up, warm-up and shutdown, so
#   Ir/request = (Ir(N) - Ir(N0)) / (N - N0)
# is what one more keep-alive request costs nginx (Ir = instructions executed,
# the total of callgrind's out file). Redis and curl are not counted. Redis is
# emptied (FLUSHALL, SCRIPT FLUSH) before every run so that every run starts
# from the same state. throttle_redis gets timeout=10s: under valgrind nginx is
# ~50x slower, and the default 50 ms would drop Redis replies (an [error] in the
# log stops the run, as in run.sh and cache.sh).
#
# Variants (every nginx loads the module, as in run.sh, so plain and limit_req
# also pay what the loaded module costs a location that does not use it):
#   plain            static 100-byte file, no throttle directive
#   limit_req        nginx's limit_req, as in run.sh
#   throttle         throttle_zone (local mode) + throttle, as in run.sh
#   sync             throttle_zone mode=sync sync=250ms against a redis-server started here
#                    (not in the default set; in make bench-instr's)
#   strict           throttle_zone mode=strict against a redis-server started here
#   lease            (not in the default set) throttle_zone mode=lease (strict's rate, default
#                    lease=100) against the same redis-server: most requests spend a unit of the
#                    host's lease in shared memory, about one in 50 to 100 asks Redis
#   cache_hit        throttle_cache + throttle_cache_user $cookie_sessionid in front of
#                    an origin server block of the same nginx (~2 KB JSON, stored gzip'd),
#                    one user, Accept-Encoding: gzip; every measured request a HIT
#   cache_hit_vary   cache_hit, the origin answering "Vary: Accept" and the client sending
#                    Accept: application/json (the entry under its variant key; the worker's
#                    vary memo sends the lookup there at once)
#   cache_hit_plain  the same, the client sends no Accept-Encoding (the inflated body
#                    comes from the per-worker memo of inflated bodies)
#   plain_nomod      (not in the default set) plain without load_module
#   jwt              (not in the default set) throttle as above, keyed on
#                    $throttle_jwt_claim_user_id of a valid HS256 bearer token (throttle_jwt
#                    key=hs:file:...): the same token every request, so from the worker's
#                    cache of verified tokens
#   jwt_nocache      (not in the default set) the same with cache=0: every request parses the
#                    token and checks its HMAC (what a token's first sight costs)
#   identity         (not in the default set) throttle, but the zone keyed on $throttle_user_id:
#                    throttle_identity with the request's session cookie resolved (a hit in
#                    its shared memory: HMAC of the cookie and one lookup per request); compare
#                    with throttle (the same zone keyed on the address, no identity)
#   throttle_metrics (not in the default set) throttle, plus a location with throttle_metrics
#                    (never asked): the zone counts its outcomes (compare with throttle)
#   throttle_nohdr   (not in the default set) throttle with throttle_headers off: the limit
#                    without the RateLimit fields (limit_req sends none; compare with both)
#   strict_metrics   (not in the default set) strict, the same way
#   strict_tls       (not in the default set) strict over TLS: redis-server's --tls-port with a
#                    CA and server certificate made here by openssl (compare with strict)
#   strict_cluster   (not in the default set) strict against a 3-master Redis Cluster started
#                    here (lib.sh's cluster_start; throttle_redis cluster SEEDS): one key, so
#                    every EVALSHA goes to the one master of its slot (compare with strict)
#   cache_hit_cluster (not in the default set) cache_hit on that cluster: the namespace
#                    generation from the worker's mirror, the lookup on the user's master
#   static_json      (not in the default set) the cache's reference: the origin's JSON served as a
#                    static file at the cache's URL (plain nginx serving the same response); when
#                    measured, the cache variants' extra is counted against it
#   cache_hit_users  (not in the default set) cache_hit with BENCH_CG_USERS users' cookies in turn
#                    (one curl -K config of --next blocks, one connection): warmed with a pass
#                    of misses, then passes until every user's answer is a HIT
#   cache_hit_users_plain (not in the default set) cache_hit_users, the client sends no
#                    Accept-Encoding: every hit serves the stored gzip body inflated (from
#                    the worker's memo of inflated bodies when it holds it)
#   cache_hit_local  (not in the default set) one anonymous URL (no cookie sent) with
#                    throttle_cache_local zone=cg_local:4m: every measured request a local
#                    hit (shared memory, no Redis command), Accept-Encoding: gzip; compare
#                    with cache_hit (a Redis hit)
#
# The extra: after the table, each variant's Ir/request over plain nginx serving
# the same response (plain; static_json for the cache when measured), and the
# BENCH_CG_TOP functions with the most extra self Ir per request (the variant's
# per-function counts minus the reference's; the last module's). `make bench-instr`
# runs the set issue 14 asks for.
#
# Two modules: with BENCH_MODULE_B, every variant is measured with both, and
# the table gives both counts and B/A, plus, for each variant whose B/A is off by
# more than BENCH_CG_DIFF_PCT, the functions whose instructions per request
# changed most (self Ir, callgrind_annotate of the four out files).
#
# Knobs (environment):
#   BENCH_CG_VARIANTS      variants, in order   (plain limit_req throttle strict cache_hit cache_hit_vary cache_hit_plain)
#   BENCH_CG_REQUESTS      N                    (2000)
#   BENCH_CG_BASE          N0                   (1)
#   BENCH_MODULE           module A             (<repo>/build/ngx_http_throttle_module.so)
#   BENCH_MODULE_B         module B             (none: one column)
#   BENCH_CG_DIFF_PCT      per-function breakdown when |B/A - 1| exceeds this, in % (0.5; 0: always;
#                          two runs of one module differ by 0.2 % at most)
#   BENCH_CG_DIFF_LINES    functions listed per variant in the breakdown (12)
#   BENCH_CG_LAYOUTS       measure every variant in this many heap layouts (1): layout L > 1
#                          gives nginx one more environment variable, (L - 1) x 1000 bytes
#                          long (nginx copies its environment with malloc at start-up);
#                          the table then gives the median, and B/A per layout: how much of
#                          a B/A is the code and how much where malloc's chunks happened to
#                          lie (plain moved by up to 2.7 % between layouts)
#   BENCH_NGINX            nginx binary         (/usr/sbin/nginx)
#   BENCH_CG_OUT           also write the result table to this file
#   BENCH_CG_USERS         cache_hit_users' users (2000)
#   BENCH_CG_TOP           functions listed per variant for its extra over plain (5)
#   BENCH_CG_METRICS=1     every variant's server also has `location = /metrics { throttle_metrics; }`
#                          (never requested): the counters are on, so a request pays for counting
#                          (without it nothing is counted; each counter costs a null check)
#   BENCH_KEEP=1           keep the temp directory (configs, callgrind out files, logs)
# Needs valgrind, curl, redis-server (for strict and the cache variants); missing
# Debian packages are installed with apt-get when run as root. All traffic goes to
# 127.0.0.1. Two nginx runs per variant, module and layout, 3-10 s each: the six
# variants with two modules take 2-4 minutes.

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
prog=bench-callgrind
# Shared helpers and knobs (BENCH_MODULE, BENCH_NGINX, BENCH_KEEP are read there).
# shellcheck source=lib.sh
source "$here/lib.sh"

VARIANTS=${BENCH_CG_VARIANTS:-plain limit_req throttle strict cache_hit cache_hit_vary cache_hit_plain}
N=${BENCH_CG_REQUESTS:-2000}
N0=${BENCH_CG_BASE:-1}
MODULE_B=${BENCH_MODULE_B:-}
DIFF_PCT=${BENCH_CG_DIFF_PCT:-0.5}
DIFF_LINES=${BENCH_CG_DIFF_LINES:-12}
LAYOUTS=${BENCH_CG_LAYOUTS:-1}
OUT=${BENCH_CG_OUT:-}
METRICS=${BENCH_CG_METRICS:-}

BODY_BYTES=100         # plain & co: the static file, as run.sh
CACHE_BYTES=2048       # cache: the origin's JSON, about (as cache.sh: stored gzip'd, >= 1k)
SESSION='sessionid=b3f1c0de5eed4a11'
REQ_PATH='/api/items?sort=name&page=2'
KNOWN='plain limit_req throttle sync strict cache_hit cache_hit_vary cache_hit_plain plain_nomod jwt jwt_nocache identity throttle_metrics throttle_nohdr strict_metrics strict_tls strict_cluster cache_hit_cluster cache_hit_local cache_hit_users cache_hit_users_plain static_json lease'
USERS=${BENCH_CG_USERS:-2000} # cache_hit_users(_plain): the users' cookies, in turn
TOP=${BENCH_CG_TOP:-5}         # functions listed per variant for its extra over the reference

# --------------------------------------------------------------------------
# Checks.
# --------------------------------------------------------------------------

need_count BENCH_CG_REQUESTS "$N"
need_count BENCH_CG_BASE "$N0"
((N > N0)) || die "BENCH_CG_REQUESTS ($N) must be larger than BENCH_CG_BASE ($N0)"
[[ $DIFF_PCT =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "BENCH_CG_DIFF_PCT must be a number of percent, not \"$DIFF_PCT\""
need_count BENCH_CG_DIFF_LINES "$DIFF_LINES"
need_count BENCH_CG_LAYOUTS "$LAYOUTS"
need_count BENCH_CG_USERS "$USERS"
need_count BENCH_CG_TOP "$TOP"

read -r -a variants <<<"$VARIANTS"
((${#variants[@]})) || die "BENCH_CG_VARIANTS is empty"
declare -A seen=()
for v in "${variants[@]}"; do
    [[ " $KNOWN " == *" $v "* ]] || die "unknown variant \"$v\" (known: $KNOWN)"
    [[ -z ${seen[$v]:-} ]] || die "variant \"$v\" is listed twice"
    seen[$v]=1
done
uses_redis() { [[ $1 == sync || $1 == strict || $1 == strict_metrics || $1 == strict_tls || $1 == lease || $1 == cache_* ]]; }
# has_metrics VARIANT: the variant's server has a throttle_metrics location
has_metrics() { [[ $1 == *_metrics ]]; }
is_cache() { [[ $1 == cache_* ]]; }
uses_cluster() { [[ $1 == strict_cluster || $1 == cache_hit_cluster ]]; }
want_redis='' want_cluster=''
for v in "${variants[@]}"; do uses_redis "$v" && want_redis=1; done
for v in "${variants[@]}"; do uses_cluster "$v" && want_cluster=1; done
for v in "${variants[@]}"; do [[ $v != strict_tls ]] || redis_tls=1; done

packages=(valgrind curl)
[[ -z $want_redis$want_cluster ]] || packages+=(redis-server)
install_missing "${packages[@]}"
need_nginx
command -v callgrind_annotate >/dev/null || die "callgrind_annotate not found (apt-get install valgrind)"
[[ -z $want_redis$want_cluster ]] || need redis_check

modules=(A)
[[ -z $MODULE_B ]] || modules+=(B)
declare -A module_src=([A]=$MODULE [B]=$MODULE_B)
for m in "${modules[@]}"; do
    MODULE=${module_src[$m]} need module_check
done

# --------------------------------------------------------------------------
# Temp dir; everything started from here on is stopped on exit (lib.sh).
# Each module is copied into a directory of its own (module_setup names the copy
# after the file, and A and B are usually both ngx_http_throttle_module.so).
#
# Every string nginx sees is the same in the runs of A and of B: its environment,
# its command line, the config's paths (one config file, one instance name, the
# module at $tmp/module-A|B/ngx_http_throttle_module.so). They decide what malloc
# did before the first request, which shows in every request after it: a longer
# environment moved plain by 1.6 %, a longer TMPDIR moved throttle by 1.5 %, all
# of it in _int_malloc. Counts are comparable within one run of this script; and
# the two modules allocate differently at start-up themselves, so a B/A within
# about 1 % of 1 says little unless it holds over several layouts
# (BENCH_CG_LAYOUTS).
# --------------------------------------------------------------------------

start_tmp throttle-bench-callgrind
mkdir -p "$tmp/cg" "$tmp/conf" "$tmp/html/api"

declare -A module_path=() module_about=()
copy_module() { # copy_module A|B
    local MODULE=${module_src[$1]} tmp=$tmp/module-$1 module_loaded='' module_info=''
    mkdir -p "$tmp"
    module_setup
    if [[ $(basename "$module_loaded") != ngx_http_throttle_module.so ]]; then
        mv "$module_loaded" "$tmp/ngx_http_throttle_module.so"
        module_loaded=$tmp/ngx_http_throttle_module.so
    fi
    module_path[$1]=$module_loaded
    module_about[$1]=$module_info
}
for m in "${modules[@]}"; do copy_module "$m"; done

[[ -z $want_redis ]] || redis_start
[[ -z $want_cluster ]] || cluster_start

head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x' >"$tmp/html/bench.txt"
# an API-like JSON list, deterministic, about CACHE_BYTES
perl -e 'my ($n, $s, @items) = ($ARGV[0]);
    do {
        my $i = @items + 1;
        push @items, sprintf(q({"id":%d,"sku":"%08x","name":"item %d","price":%d.%02d,"stock":%d}),
            $i, ($i * 2654435761) % 2**32, $i, ($i * 37) % 500, ($i * 13) % 100, ($i * 7) % 1000);
        $s = sprintf(q({"page":2,"per_page":%d,"items":[%s]}), scalar(@items), join(",", @items));
    } while (length($s) < $n);
    print $s, "\n";' "$CACHE_BYTES" >"$tmp/html/api/items.json"
json_bytes=$(wc -c <"$tmp/html/api/items.json")

# jwt: an HS256 token for user 42, valid for a day, as an application would mint it
JWT_SECRET=bench-jwt-secret-0123456789-abcdefghijklmnop
printf '%s\n' "$JWT_SECRET" >"$tmp/jwt.secret"
b64url() { basenc --base64url -w0 | tr -d '='; }
jwt_input="$(printf '{"alg":"HS256","typ":"JWT"}' | b64url).$(printf '{"user_id":42,"exp":%d,"jti":"bench"}' $(($(date +%s) + 86400)) | b64url)"
JWT="$jwt_input.$(printf '%s' "$jwt_input" | openssl dgst -sha256 -hmac "$JWT_SECRET" -binary | b64url)"

# One pair of ports for every run (a run's nginx is gone before the next starts):
# the variant's server, and the cache's origin.
read -r port origin_port <<<"$(free_ports 2)"

# --------------------------------------------------------------------------
# Configuration: one nginx per measurement, serving one variant. The shapes
# are run.sh's (plain .. strict) and cache.sh's (the cache).
# --------------------------------------------------------------------------

# http_lines VARIANT: the variant's lines in the http context
http_lines() {
    case $1 in
    limit_req) echo 'limit_req_zone $binary_remote_addr zone=bench_lr:10m rate=1000000r/s;' ;;
    throttle | throttle_metrics | throttle_nohdr) echo 'throttle_zone $binary_remote_addr zone=bench:10m rate=1000000000r/s;' ;;
    jwt | jwt_nocache)
        echo "throttle_jwt key=hs:file:$tmp/jwt.secret alg=HS256$([[ $1 == jwt ]] || echo ' cache=0');"
        echo 'throttle_zone $throttle_jwt_claim_user_id zone=bjwt:10m rate=1000000000r/s;'
        ;;
    identity)
        echo 'throttle_cache_secret "bench-cache-secret-0123456789abcdef";'
        echo 'throttle_identity $cookie_sessionid resolve=/_identity zone=bench_ids:10m;'
        echo 'throttle_zone $throttle_user_id zone=bench:10m rate=1000000000r/s;'
        ;;
    strict | strict_metrics)
        echo "throttle_redis 127.0.0.1:$redis_port connect_timeout=10s timeout=10s;  # valgrind is slow"
        # 1e8r/d: the largest sliding rate strict mode takes exactly (run.sh)
        echo 'throttle_zone $binary_remote_addr zone=bstrict:10m rate=100000000r/d mode=strict;'
        echo 'throttle_secret "bench-secret-0123456789abcdef";'
        ;;
    sync)
        echo "throttle_redis 127.0.0.1:$redis_port connect_timeout=10s timeout=10s;  # valgrind is slow"
        echo 'throttle_zone $binary_remote_addr zone=bsync:10m rate=1000000000r/s mode=sync sync=250ms;'
        echo 'throttle_secret "bench-secret-0123456789abcdef";'
        ;;
    lease)
        echo "throttle_redis 127.0.0.1:$redis_port connect_timeout=10s timeout=10s;  # valgrind is slow"
        echo 'throttle_zone $binary_remote_addr zone=blease:10m rate=100000000r/d mode=lease;'
        echo 'throttle_secret "bench-secret-0123456789abcdef";'
        ;;
    strict_cluster)
        echo "throttle_redis cluster $(cluster_seeds) connect_timeout=10s timeout=10s;  # valgrind is slow"
        echo 'throttle_zone $binary_remote_addr zone=bstrict:10m rate=100000000r/d mode=strict;'
        echo 'throttle_secret "bench-secret-0123456789abcdef";'
        ;;
    strict_tls)
        echo "throttle_redis 127.0.0.1:$redis_tls_port tls tls_ca=$tmp/tls/ca.pem connect_timeout=10s timeout=10s;  # valgrind is slow"
        echo 'throttle_zone $binary_remote_addr zone=bstrict:10m rate=100000000r/d mode=strict;'
        echo 'throttle_secret "bench-secret-0123456789abcdef";'
        ;;
    cache_hit_cluster)
        echo "throttle_redis cluster $(cluster_seeds) connect_timeout=10s timeout=10s;  # valgrind is slow"
        echo 'throttle_cache_secret "bench-cache-secret-0123456789abcdef";'
        echo "upstream origin { server 127.0.0.1:$origin_port; keepalive 64; }"
        ;;
    cache_*)
        echo "throttle_redis 127.0.0.1:$redis_port connect_timeout=10s timeout=10s;  # valgrind is slow"
        echo 'throttle_cache_secret "bench-cache-secret-0123456789abcdef";'
        echo "upstream origin { server 127.0.0.1:$origin_port; keepalive 64; }"
        ;;
    esac
}

# location_lines VARIANT: inside the variant's location
location_lines() {
    case $1 in
    limit_req) echo 'limit_req zone=bench_lr burst=1000000 nodelay;' ;;
    throttle | throttle_metrics) echo 'throttle zone=bench;' ;;
    throttle_nohdr) printf '%s\n' 'throttle zone=bench;' 'throttle_headers off;' ;;
    jwt | jwt_nocache) echo 'throttle zone=bjwt;' ;;
    identity) printf '%s\n' 'throttle_identity_resolve on;' 'throttle zone=bench;' ;;
    strict | strict_metrics | strict_tls | strict_cluster) echo 'throttle zone=bstrict;' ;;
    lease) echo 'throttle zone=blease;' ;;
    sync) echo 'throttle zone=bsync;' ;;
    cache_*)
        echo 'throttle_cache bench;'
        [[ $1 != cache_hit_local ]] || echo 'throttle_cache_local zone=cg_local:4m;'
        echo 'proxy_pass http://origin;'
        ;;
    esac
}

# origin_lines VARIANT: the origin's extra lines
origin_lines() {
    case $1 in
    cache_hit_vary) printf '%s' 'add_header Vary Accept; ' ;;
    esac
}

# write_conf VARIANT MODULE_LABEL
write_conf() {
    local v=$1 m=$2
    conf_head cg
    echo "master_process off;  # the process valgrind runs answers the requests"
    [[ $v == plain_nomod ]] || echo "load_module ${module_path[$m]};"
    echo
    echo "events { worker_connections 256; }"
    echo
    echo "http {"
    echo "    access_log off;"
    echo "    default_type text/plain;"
    echo "    types { application/json json; }"
    echo "    keepalive_requests 1000000;  # one connection for all N requests"
    conf_temp_paths cg
    http_lines "$v" | sed 's/^/    /'
    echo
    echo "    server {  # $v"
    echo "        listen 127.0.0.1:$port;"
    echo "        root $tmp/html;"
    [[ -z $METRICS || $v == plain_nomod ]] || echo "        location = /metrics { throttle_metrics; }"
    if is_cache "$v"; then
        cat <<EOF
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        add_header X-Cache \$throttle_cache_status always;
        throttle_cache_user \$cookie_sessionid;
        throttle_cache_valid 200 1h;
        location /api/ {
$(location_lines "$v" | sed 's/^/            /')
        }
    }

    server {  # the origin: nginx serving the JSON file
        listen 127.0.0.1:$origin_port;
        root $tmp/html;
        location = /api/items { $(origin_lines "$v")try_files /api/items.json =404; }
    }
EOF
    else
        # static_json: the cache's reference, the origin's JSON as a static file at the cache's URL
        [[ $v != static_json ]] || echo "        location = /api/items { try_files /api/items.json =404; }"
        echo "        location = /bench.txt {"
        location_lines "$v" | sed 's/^/            /'
        echo "        }"
        if has_metrics "$v" && [[ -z $METRICS ]]; then  # (BENCH_CG_METRICS added one already)
            echo "        location = /metrics { throttle_metrics; }"
        fi
        if [[ $v == identity ]]; then  # the application's answer (add_header skips subrequests)
            echo "        location = /_identity { internal; proxy_pass http://127.0.0.1:$origin_port; }"
            echo "    }"
            echo "    server {  # the application: user 42"
            echo "        listen 127.0.0.1:$origin_port;"
            echo "        location / { add_header X-User-Id 42; return 204; }"
        fi
        echo "    }"
    fi
    echo "}"
}

# --------------------------------------------------------------------------
# One measurement.
# --------------------------------------------------------------------------

# The URL each variant is asked for. curl expands the glob in the fragment and
# does not send the fragment: COUNT requests for the very same URL, one keep-alive
# connection.
url() {
    if is_cache "$1" || [[ $1 == static_json ]]; then echo "http://127.0.0.1:$port$REQ_PATH"; else echo "http://127.0.0.1:$port/bench.txt"; fi
}
# client_args VARIANT: curl's request headers for the variant
client_args() {
    case $1 in
    cache_hit_users) printf '%s\n' -H "Cookie: $(user_cookie 0)" -H 'Accept-Encoding: gzip' ;;
    cache_hit_users_plain) printf '%s\n' -H "Cookie: $(user_cookie 0)" ;;
    cache_hit | cache_hit_cluster) printf '%s\n' -H "Cookie: $SESSION" -H 'Accept-Encoding: gzip' ;;
    cache_hit_local) printf '%s\n' -H 'Accept-Encoding: gzip' ;; # anonymous: the local tier
    cache_hit_vary) printf '%s\n' -H "Cookie: $SESSION" -H 'Accept-Encoding: gzip' -H 'Accept: application/json' ;;
    cache_hit_plain | identity) printf '%s\n' -H "Cookie: $SESSION" ;;
    jwt | jwt_nocache) printf '%s\n' -H "Authorization: Bearer $JWT" ;;
    esac
}
# What curl's -w prints for each answer; every measured answer must print the
# same line, and the variant's (expected).
WRITE_OUT='%{http_code} x-cache=%header{x-cache} content-encoding=%header{content-encoding} ratelimit-policy=%header{ratelimit-policy} bytes=%{size_download}\n'
expected() {
    case $1 in
    plain | plain_nomod | limit_req | throttle_nohdr) echo "200 x-cache= content-encoding= ratelimit-policy= bytes=$BODY_BYTES" ;;
    static_json) echo "200 x-cache= content-encoding= ratelimit-policy= bytes=$json_bytes" ;;
    throttle | sync | strict | strict_tls | strict_cluster | lease | jwt | jwt_nocache | identity | *_metrics) echo "200 x-cache= content-encoding= ratelimit-policy=?* bytes=$BODY_BYTES" ;;
    cache_hit | cache_hit_vary | cache_hit_cluster | cache_hit_local | cache_hit_users) echo "200 x-cache=HIT content-encoding=gzip ratelimit-policy= bytes=?*" ;;
    cache_hit_plain | cache_hit_users_plain) echo "200 x-cache=HIT content-encoding= ratelimit-policy= bytes=$json_bytes" ;;
    esac
}

# user_cookie I: user I's session cookie (cache_hit_users, cache_hit_users_plain)
user_cookie() { printf 'sessionid=u%06d5eed4a11' "$1"; }
# is_users VARIANT: whether the variant sends many users' cookies
is_users() { [[ $1 == cache_hit_users || $1 == cache_hit_users_plain ]]; }

# ask_users VARIANT FIRST COUNT OUTFILE: COUNT requests on one connection (curl --next in a
# config file: curl keeps the connection between them), users FIRST, FIRST + 1, ..
# in turn modulo USERS, Accept-Encoding: gzip unless VARIANT is cache_hit_users_plain;
# -w lines to OUTFILE
ask_users() {
    local i cfg=$tmp/cg/users.$1.$2.$3.curl
    if [[ ! -s $cfg ]]; then
        for ((i = 0; i < $3; i++)); do
            printf 'url = "%s"\nheader = "Cookie: %s"\n' "$(url "$1")" "$(user_cookie $((($2 + i) % USERS)))"
            [[ $1 == cache_hit_users_plain ]] || printf 'header = "Accept-Encoding: gzip"\n'
            printf 'silent\noutput = "/dev/null"\nwrite-out = "%s"\n' "${WRITE_OUT%\\n}\\n"
            ((i + 1 == $3)) || echo next
        done >"$cfg"
    fi
    curl -K "$cfg" >"$4" || true
}

# ask VARIANT COUNT OUTFILE: COUNT requests on one connection, -w lines to OUTFILE
ask() {
    local args
    if is_users "$1"; then
        ask_users "$1" 0 "$2" "$3"
        return
    fi
    mapfile -t args < <(client_args "$1")
    curl -s -o /dev/null "${args[@]}" -w "$WRITE_OUT" "$(url "$1")#[1-$2]" >"$3" || true
}

# evalsha_calls VARIANT: EVALSHAs Redis (the cluster's masters, summed, for
# strict_cluster) ran since the run's CONFIG RESETSTAT
evalsha_calls() {
    local i
    if uses_cluster "$1"; then
        for ((i = 0; i < CLUSTER_MASTERS; i++)); do cluster_cli "$i" info commandstats; done
    else
        redis_cli info commandstats
    fi | tr -d '\r' | awk -F'[:=,]' '$1 == "cmdstat_evalsha" { n += $3 } END { print n + 0 }'
}

# layout_env LAYOUT: the extra environment variable of that heap layout, if any
layout_env() {
    (($1 > 1)) || return 0
    printf 'BENCH_CG_LAYOUT=%s\n' "$(head -c $((($1 - 1) * 1000)) /dev/zero | tr '\0' x)"
}

# measure VARIANT MODULE_LABEL LAYOUT COUNT: one nginx under callgrind; sets
# measured_ir to the total Ir of the run. Not in a subshell: nginx is stopped on
# exit if it fails.
measured_ir=''
measure() {
    local v=$1 m=$2 layout=$3 count=$4 name=$1.$2.L$3.$4 code pid i got want args pad
    local conf=$tmp/conf/$v.$m.conf out=$tmp/cg/$name.out
    [[ -s $conf ]] || write_conf "$v" "$m" >"$conf"
    cp "$conf" "$tmp/nginx.conf" # the same path in every run
    if [[ -n $want_redis ]]; then
        redis_cli flushall >/dev/null
        redis_cli script flush >/dev/null
        redis_cli config resetstat >/dev/null
    fi
    if [[ -n $want_cluster ]]; then
        for ((i = 0; i < CLUSTER_MASTERS; i++)); do
            cluster_cli "$i" flushall >/dev/null
            cluster_cli "$i" script flush >/dev/null
            cluster_cli "$i" config resetstat >/dev/null
        done
    fi
    mapfile -t args < <(client_args "$v")
    : >"$tmp/error.log"
    # A fixed environment (see above), plus the layout's padding.
    mapfile -t pad < <(layout_env "$layout")
    nginx_on_cpus=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "${pad[@]}"
        valgrind --tool=callgrind "--callgrind-out-file=$out" "--log-file=$tmp/cg/$name.valgrind.log")
    nginx_start cg "$tmp/nginx.conf"
    pid=${nginx_pid_of[cg]}

    # the first request: nginx is up (valgrind's start-up takes seconds)
    code=$(await_answer cg curl -s -o /dev/null -D "$tmp/cg/$name.headers" "${args[@]}" \
        -w '%{http_code}' "$(url "$v")")
    [[ $code == 200 ]] || {
        cat "$tmp/cg/$name.headers" "$tmp/error.log" >&2 2>/dev/null || true
        die "$name: GET $(url "$v") answered $code"
    }
    # the cache: the first request stored the entry (MISS); ask until it is a HIT
    if is_users "$v"; then
        # every user's entry: one pass of misses (user 0's was the first request),
        # then passes until every user's answer is a HIT
        ask_users "$v" 1 $((USERS - 1)) "$tmp/cg/$name.warm"
        for ((i = 1; i <= 20; i++)); do
            ask_users "$v" 0 "$USERS" "$tmp/cg/$name.warm"
            ! grep -qv x-cache=HIT "$tmp/cg/$name.warm" && break
            sleep 0.2
        done
        ! grep -qv x-cache=HIT "$tmp/cg/$name.warm" || die "$name: not every user's answer was a HIT after $i passes"
        echo "$i" >"$tmp/cg/$name.warm-requests"
    elif is_cache "$v"; then
        for ((i = 1; i <= 50; i++)); do
            ask "$v" 1 "$tmp/cg/$name.warm"
            [[ $(cat "$tmp/cg/$name.warm") == *x-cache=HIT* ]] && break
            sleep 0.1
        done
        [[ $(cat "$tmp/cg/$name.warm") == *x-cache=HIT* ]] || die "$name: never answered X-Cache: HIT"
        echo "$i" >"$tmp/cg/$name.warm-requests"
    fi

    ask "$v" "$count" "$tmp/cg/$name.answers"
    got=$(sort "$tmp/cg/$name.answers" | uniq -c | awk '{ $1 = $1 " x"; print }')
    want=$(expected "$v")
    # shellcheck disable=SC2053 # $want is a pattern
    if [[ $(wc -l <"$tmp/cg/$name.answers") != "$count" || $(sort -u "$tmp/cg/$name.answers" | wc -l) != 1 ||
        $(head -1 "$tmp/cg/$name.answers") != $want ]]; then
        die "$name: the $count answers were not all \"$want\": $got"
    fi
    [[ $v != strict* || $(evalsha_calls "$v") -gt 0 ]] || die "$name: Redis saw no EVALSHA: strict did not ask Redis"
    [[ $v != lease || $(evalsha_calls "$v") -gt 0 ]] || die "$name: Redis saw no EVALSHA: lease took no lease"
    # the local tier: the warm-up's lookups and store only, none per measured request
    [[ $v != cache_hit_local || $(evalsha_calls "$v") -lt 20 ]] ||
        die "$name: Redis saw $(evalsha_calls "$v") EVALSHAs: the hits were not local"

    # let nginx see curl's connection close, then stop it: callgrind writes $out
    sleep 0.3
    kill -QUIT "$pid"
    for ((i = 0; i < 1200; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && die "$name: nginx did not exit within 120 s of SIGQUIT"
    wait "$pid" || true
    nginx_pids=() # this one is gone; nothing left to stop
    no_nginx_errors
    measured_ir=$(awk '$1 == "summary:" || $1 == "totals:" { print $2; exit }' "$out")
    is_uint "$measured_ir" || die "$name: no total in $out (see $tmp/cg/$name.valgrind.log)"
}

# --------------------------------------------------------------------------
# Per-function breakdown: (self Ir(N) - self Ir(N0)) / (N - N0) per function,
# names without their file and object (they differ between two builds).
# --------------------------------------------------------------------------

# per_function FILE_N FILE_N0: "IR_PER_REQUEST FUNCTION" lines
per_function() {
    local f
    for f in "$1" "$2"; do
        # the table of functions only (--auto=no: no annotated source after it)
        callgrind_annotate --threshold=100 --inclusive=no --auto=no "$f" 2>/dev/null |
            awk -v sign="$([[ $f == "$1" ]] && echo 1 || echo -1)" '
                / file:function$/ { table = 1; next }
                table && /^ *[0-9][0-9,]* / {
                    n = $1; gsub(/,/, "", n)
                    line = $0
                    sub(/^ *[0-9,]+ +(\([ 0-9.]+%\) +)?/, "", line)
                    sub(/ \[[^]]*\]$/, "", line)   # the object
                    sub(/^[^:]*:/, "", line)
                    print n * sign "\t" line
                }'
    done | awk -F'\t' -v span=$((N - N0)) '{ s[$2] += $1 } END { for (k in s) printf "%.2f\t%s\n", s[k] / span, k }'
}

# diff_functions VARIANT: the functions whose Ir per request changed most, B - A
# (layout 1)
diff_functions() {
    local v=$1
    LC_ALL=C join -t $'\t' -1 2 -2 2 -a 1 -a 2 -e 0 -o 0,1.1,2.1 \
        <(per_function "$tmp/cg/$v.A.L1.$N.out" "$tmp/cg/$v.A.L1.$N0.out" | LC_ALL=C sort -t $'\t' -k2,2) \
        <(per_function "$tmp/cg/$v.B.L1.$N.out" "$tmp/cg/$v.B.L1.$N0.out" | LC_ALL=C sort -t $'\t' -k2,2) |
        awk -F'\t' '{ d = $3 - $2; print (d < 0 ? -d : d) "\t" d "\t" $2 "\t" $3 "\t" $1 }' |
        sort -t $'\t' -k1,1gr |
        awk -F'\t' -v n="$DIFF_LINES" 'NR <= n {
            f = $5; if (length(f) > 150) f = substr(f, 1, 147) "..." # C++ names can be very long
            printf "    %+9.1f %9.1f %9.1f  %s\n", $2, $3, $4, f }'
}

# ref_of VARIANT: the variant its extra cost is counted against: plain nginx
# serving the same response (static_json for the cache, if measured; else plain)
ref_of() {
    if is_cache "$1" && [[ -n ${seen[static_json]:-} ]]; then echo static_json; else echo plain; fi
}

# extra_functions VARIANT REF MODULE: the functions that make most of VARIANT's
# extra Ir per request over REF (self Ir per request, VARIANT - REF, layout 1),
# TOP lines "    +EXTRA  FUNCTION"
extra_functions() {
    LC_ALL=C join -t $'\t' -1 2 -2 2 -a 1 -a 2 -e 0 -o 0,1.1,2.1 \
        <(per_function "$tmp/cg/$2.$3.L1.$N.out" "$tmp/cg/$2.$3.L1.$N0.out" | LC_ALL=C sort -t $'\t' -k2,2) \
        <(per_function "$tmp/cg/$1.$3.L1.$N.out" "$tmp/cg/$1.$3.L1.$N0.out" | LC_ALL=C sort -t $'\t' -k2,2) |
        awk -F'\t' '{ print $3 - $2 "\t" $1 }' | sort -t $'\t' -k1,1gr |
        awk -F'\t' -v n="$TOP" 'NR <= n {
            f = $2; if (length(f) > 110) f = substr(f, 1, 107) "..."
            printf "      %+8.0f  %s\n", $1, f }'
}

# --------------------------------------------------------------------------
# Measure.
# --------------------------------------------------------------------------

load_before=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')
started=$SECONDS
# ir[VARIANT.MODULE.LAYOUT.COUNT]: total Ir of a run; per_layout[VARIANT.MODULE]:
# "IR/REQ IR/REQ ..", one per layout; per_req[VARIANT.MODULE]: their median
declare -A ir=() per_layout=() per_req=()
for v in "${variants[@]}"; do
    for m in "${modules[@]}"; do
        for ((l = 1; l <= LAYOUTS; l++)); do
            k=$v.$m.L$l
            for count in "$N0" "$N"; do
                say "$(printf '%-16s module %s, layout %d, %5d requests ...' "$v" "$m" "$l" "$count")"
                measure "$v" "$m" "$l" "$count"
                ir[$k.$count]=$measured_ir
            done
            if is_cache "$v" && ! cmp -s "$tmp/cg/$k.$N0.warm-requests" "$tmp/cg/$k.$N.warm-requests"; then
                say "warning: $k: the runs needed a different number of warm-up requests" \
                    "($(cat "$tmp/cg/$k.$N0.warm-requests") and $(cat "$tmp/cg/$k.$N.warm-requests")): the difference counts"
            fi
            x=$(awk -v a="${ir[$k.$N]}" -v b="${ir[$k.$N0]}" -v n=$((N - N0)) 'BEGIN { printf "%.0f", (a - b) / n }')
            per_layout[$v.$m]+="$x "
            say "$(printf '%-16s module %s, layout %d: %s Ir/request' "$v" "$m" "$l" "$x")"
        done
        per_req[$v.$m]=$(median "${per_layout[$v.$m]}" | awk '{ printf "%.0f", $1 }')
    done
done
elapsed=$((SECONDS - started))

# --------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------

# fmt_ratio A B: A/B as 1.234
fmt_ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "-" }'; }
# off_by_more RATIO PCT: |RATIO - 1| > PCT %
off_by_more() { awk -v r="$1" -v p="$2" 'BEGIN { d = r - 1; exit !(p == 0 || (d < 0 ? -d : d) * 100 > p) }'; }

# range "X1 X2 ..": "MIN..MAX"
range() { tr -s ' ' '\n' <<<"$1" | sort -g | awk 'NF { v[++n] = $1 } END { print v[1] ".." v[n] }'; }
# by_layout VARIANT: B/A in each layout, "0.995 0.988 .."
by_layout() {
    awk -v a="${per_layout[$1.A]}" -v b="${per_layout[$1.B]}" 'BEGIN {
        n = split(a, x, " "); split(b, y, " ")
        for (i = 1; i <= n; i++) printf "%s%.3f", (i > 1 ? " " : ""), (x[i] > 0 ? y[i] / x[i] : 0) }'
}

ref=''
[[ -z ${seen[plain]:-} ]] || ref=plain
layouts_note=''
((LAYOUTS == 1)) || layouts_note=", median of $LAYOUTS heap layouts"
{
    echo "ngx_http_throttle_module: nginx instructions per request under callgrind ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo "machine:  nproc=$(nproc), $(uname -sr), $("$NGINX" -v 2>&1 | sed 's/^nginx version: //'), $(valgrind --version)"
    echo "load:     $load_before (does not change the counts)"
    for m in "${modules[@]}"; do
        echo "module $m: ${module_about[$m]}"
    done
    echo "method:   nginx master_process off under valgrind --tool=callgrind; curl -s -o /dev/null URL#[1-COUNT]"
    echo "          (one keep-alive connection, the same URL COUNT times) after the first request"
    echo "          (cache: until a HIT); SIGQUIT; Ir/request = (Ir($N) - Ir($N0)) / $((N - N0))$layouts_note;"
    echo "          ${elapsed}s in all"
    echo
    if [[ -z $MODULE_B ]]; then
        printf '%-21s %11s %9s' variant 'Ir/request' "${ref:+vs plain}"
        ((LAYOUTS == 1)) && echo || printf '  %s\n' 'range over the layouts'
        for v in "${variants[@]}"; do
            printf '%-21s %11s %9s' "$v" "${per_req[$v.A]}" "${ref:+$(ratio "${per_req[$v.A]}" "${per_req[$ref.A]}")x}"
            ((LAYOUTS == 1)) && echo || printf '  %s\n' "$(range "${per_layout[$v.A]}")"
        done
    else
        printf '%-21s %11s %11s %8s %10s %10s' variant 'A Ir/req' 'B Ir/req' 'B/A' \
            "${ref:+A vs plain}" "${ref:+B vs plain}"
        ((LAYOUTS == 1)) && echo || printf '  %s\n' 'B/A in each layout'
        for v in "${variants[@]}"; do
            printf '%-21s %11s %11s %8s %10s %10s' "$v" "${per_req[$v.A]}" "${per_req[$v.B]}" \
                "$(fmt_ratio "${per_req[$v.B]}" "${per_req[$v.A]}")" \
                "${ref:+$(ratio "${per_req[$v.A]}" "${per_req[$ref.A]}")x}" \
                "${ref:+$(ratio "${per_req[$v.B]}" "${per_req[$ref.B]}")x}"
            ((LAYOUTS == 1)) && echo || printf '  %s\n' "$(by_layout "$v")"
        done
    fi
    if [[ -n $ref ]]; then
        # the extra over plain nginx serving the same response, and where it goes
        m=${modules[-1]}
        echo
        echo "extra over plain nginx serving the same response (module $m; ref = plain, or static_json for"
        echo "the cache when measured), and the $TOP functions with the most extra self Ir per request:"
        printf '%-21s %11s %11s %9s %9s\n' variant 'Ir/request' ref 'vs ref' 'extra Ir'
        for v in "${variants[@]}"; do
            r=$(ref_of "$v")
            printf '%-21s %11s %11s %9s %+9d\n' "$v" "${per_req[$v.$m]}" "$r" \
                "$(fmt_ratio "${per_req[$v.$m]}" "${per_req[$r.$m]}")x" $((per_req[$v.$m] - per_req[$r.$m]))
        done
        for v in "${variants[@]}"; do
            r=$(ref_of "$v")
            [[ $v != "$r" && $v != plain && $v != static_json ]] || continue
            echo "  $v - $r:"
            extra_functions "$v" "$r" "$m"
        done
    fi
    echo
    echo "Ir/request of each layout, and the total Ir of each run (start-up, warm-up and shutdown included):"
    for v in "${variants[@]}"; do
        for m in "${modules[@]}"; do
            read -r -a xs <<<"${per_layout[$v.$m]}"
            for ((l = 1; l <= LAYOUTS; l++)); do
                printf '  %-21s %s L%d %7s   Ir(%d) = %s  Ir(%d) = %s\n' "$v" "$m" "$l" "${xs[l - 1]}" \
                    "$N0" "${ir[$v.$m.L$l.$N0]}" "$N" "${ir[$v.$m.L$l.$N]}"
            done
        done
    done
    if [[ -n $MODULE_B ]]; then
        for v in "${variants[@]}"; do
            r=$(fmt_ratio "${per_req[$v.B]}" "${per_req[$v.A]}")
            off_by_more "$r" "$DIFF_PCT" || continue
            echo
            echo "$v: B/A = $r; self Ir per request of the functions that changed most (layout 1):"
            printf '    %9s %9s %9s  %s\n' 'B - A' A B function
            diff_functions "$v"
        done
    fi
} >"$tmp/results.txt"

show_results "$OUT"
