# bench/lib.sh: the helpers bench/run.sh and bench/cache.sh share. Sourced, not
# run: the script sets `set -euo pipefail` and `prog` (the prefix of its messages)
# first, and calls start_tmp before anything that writes into $tmp or starts a
# process. One copy here, so that a fix to how a port is picked, a process is
# stopped or wrk's output is read reaches both benchmarks.
# The variables set here for the scripts (ROUNDS, clk_tck, ...) look unused
# when this file is checked alone:
# shellcheck shell=bash disable=SC2034

: "${prog:=bench}"
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# --------------------------------------------------------------------------
# Knobs both scripts read (the rest are their own; see the top of each).
# --------------------------------------------------------------------------

NGINX=${BENCH_NGINX:-/usr/sbin/nginx}
MODULE=${BENCH_MODULE:-$root/build/ngx_http_throttle_module.so}
WORKERS=${BENCH_WORKERS:-1}
THREADS=${BENCH_THREADS:-1}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
WARMUP=${BENCH_WARMUP:-1s}
ROUNDS=${BENCH_ROUNDS:-3}
KEEP=${BENCH_KEEP:-0}

die() {
    printf '%s: error: %s\n' "$prog" "$*" >&2
    exit 1
}
say() { printf '%s: %s\n' "$prog" "$*" >&2; }

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# need_count KNOB VALUE: VALUE is a positive integer, or the run stops
need_count() {
    if ! is_uint "$2" || (($2 == 0)); then
        die "$1 must be a positive integer, not \"$2\""
    fi
}

# need_duration KNOB VALUE: VALUE is a wrk duration that is not 0
need_duration() {
    [[ $2 =~ ^[1-9][0-9]*[smh]?$ ]] || die "$1 must look like 5s, not \"$2\""
}

# check_shared_knobs: the knobs above are sane
check_shared_knobs() {
    local n
    for n in WORKERS THREADS CONNECTIONS ROUNDS; do
        need_count "BENCH_$n" "${!n}"
    done
    [[ $WARMUP =~ ^[0-9]+[smh]?$ ]] || die "BENCH_WARMUP must look like 1s or 0, not \"$WARMUP\""
    ((CONNECTIONS >= THREADS)) || die "BENCH_CONNECTIONS ($CONNECTIONS) must be >= BENCH_THREADS ($THREADS)"
}

# --------------------------------------------------------------------------
# Debian packages.
# --------------------------------------------------------------------------

# install_missing PACKAGE...: install the packages that are not installed yet.
# Checked with dpkg-query, so that `make bench` works on a fresh machine;
# without dpkg only wrk and curl are looked for, and the scripts' own checks
# say what else is missing.
install_missing() {
    local p missing=()
    for p in $(printf '%s\n' "$@" | awk '!seen[$0]++'); do
        if command -v dpkg-query >/dev/null; then
            dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
        elif [[ $p == wrk || $p == curl ]]; then
            command -v "$p" >/dev/null || missing+=("$p")
        fi
    done
    ((${#missing[@]})) || return 0
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
}

# need CHECK [ARG...]: run a check that says on stderr what is missing
# (module_check, redis_check, lua_check); if it fails, stop the run with that
need() {
    local msg
    msg=$("$@" 2>&1) || die "$msg"
}

need_nginx() {
    [[ -x $NGINX ]] || die "nginx not found at $NGINX (apt-get install nginx, or set BENCH_NGINX)"
}

# --------------------------------------------------------------------------
# Temp dir, cleanup: every process started here is stopped on exit.
# --------------------------------------------------------------------------

nginx_pids=()
extra_pids=()
cleanup_pid() { extra_pids+=("$1"); }

# stop_started: stop every nginx and every process given to cleanup_pid
stop_started() {
    local pid i
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
    nginx_pids=() extra_pids=()
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_started
    if [[ $KEEP == 1 ]]; then
        say "kept $tmp"
    else
        rm -rf "$tmp"
    fi
    exit "$rc"
}

# start_tmp NAME: the run's temp dir ($tmp, ${TMPDIR:-/tmp}/NAME.XXXXXX), removed
# on exit with everything started
start_tmp() {
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# free_ports N: N distinct free TCP ports on 127.0.0.1, held open together
# while chosen so they differ.
free_ports() {
    perl -MIO::Socket::INET -e '
        my @s = map { IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => 0,
                                            Proto => "tcp", Listen => 1, ReuseAddr => 1)
                      or die "bind: $!\n" } 1 .. $ARGV[0];
        print join(" ", map { $_->sockport } @s), "\n";' "$1"
}

# --------------------------------------------------------------------------
# The module. It is copied into the temp dir and loaded from there: a rebuild
# that rewrites build/*.so in place while nginx has it mapped kills the workers
# (SIGBUS), and the copy also pins the exact binary that was measured.
# --------------------------------------------------------------------------

# module_check: fail (message on stderr) if there is no module to load;
# module_missing_hint is said after "build it with `make`"
module_missing_hint=''
module_check() {
    [[ -r $MODULE ]] || {
        echo "module not found: $MODULE (build it with \`make\`$module_missing_hint)" >&2
        return 1
    }
}

module_loaded='' module_info=''
module_setup() {
    [[ -z $module_loaded ]] || return 0
    module_loaded=$tmp/$(basename "$MODULE")
    cp "$MODULE" "$module_loaded"
    module_info="$MODULE (built $(stat -c %y "$MODULE" | cut -d. -f1),"
    module_info+=" sha256 $(sha256sum "$module_loaded" | cut -c1-12))"
}

# --------------------------------------------------------------------------
# redis-server: one per run, on a free port (and the unix socket $tmp/redis/redis.sock), no
# persistence, stopped on exit.
# --------------------------------------------------------------------------

redis_port='' redis_pid='' redis_version=''
redis_check() {
    if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
        echo "redis-server and redis-cli are needed (apt-get install redis-server)" >&2
        return 1
    fi
}

redis_cli() { redis-cli -h 127.0.0.1 -p "$redis_port" "$@"; }

# redis_start: start it (once) and wait until it answers
redis_start() {
    [[ -z $redis_port ]] || return 0
    local i
    redis_port=$(free_ports 1)
    mkdir -p "$tmp/redis"
    local tls_args=()
    if [[ -n ${redis_tls:-} ]]; then
        redis_tls_start_certs
        redis_tls_port=$(free_ports 1)
        tls_args=(--tls-port "$redis_tls_port" --tls-cert-file "$tmp/tls/server.pem"
            --tls-key-file "$tmp/tls/server.key" --tls-ca-cert-file "$tmp/tls/ca.pem"
            --tls-auth-clients no)
    fi
    redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
        --unixsocket "$tmp/redis/redis.sock" --unixsocketperm 777 \
        --dir "$tmp/redis" --logfile "$tmp/redis/redis.log" --daemonize no "${tls_args[@]}" </dev/null &
    redis_pid=$!
    cleanup_pid "$redis_pid"
    for ((i = 0; i < 100; i++)); do
        [[ $(redis_cli ping 2>/dev/null) == PONG ]] && break
        kill -0 "$redis_pid" 2>/dev/null || {
            cat "$tmp/redis/redis.log" >&2
            die "redis-server exited during startup"
        }
        sleep 0.05
    done
    [[ $(redis_cli ping 2>/dev/null) == PONG ]] || die "redis-server on port $redis_port does not answer"
    redis_version=$(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')
}

# redis_tls=1 before redis_start: the server also listens with TLS on
# $redis_tls_port (plaintext stays on $redis_port for redis_cli), with a CA and
# a server certificate (SAN IP:127.0.0.1) made here with openssl in $tmp/tls.
redis_tls='' redis_tls_port=''
redis_tls_start_certs() {
    command -v openssl >/dev/null || die "openssl is needed for a TLS Redis (apt-get install openssl)"
    mkdir -p "$tmp/tls"
    (
        cd "$tmp/tls"
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=bench-ca \
            -keyout ca.key -out ca.pem
        openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key -out server.csr
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >san.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
            -extfile san.ext -out server.pem
    ) >"$tmp/tls/openssl.log" 2>&1 || {
        cat "$tmp/tls/openssl.log" >&2
        die "openssl could not make the test certificates"
    }
}

# redis_snapshot FILE: "COMMAND CALLS" per command since redis-server started,
# plus "connections N" (connections accepted).
redis_snapshot() {
    redis_cli info everything | tr -d '\r' | awk -F'[:,=]' '
        /^cmdstat_/ { sub(/^cmdstat_/, "", $1); print $1, $3 }
        /^total_connections_received:/ { print "connections", $2 }' >"$1"
}

# redis_delta BEFORE AFTER [NODES]: "COMMAND DELTA" for what changed in between,
# and "connections DELTA"; the INFO command and the connections of the second
# snapshot (one per node: NODES, 1 by default; a cluster_snapshot asks each master)
# left out.
redis_delta() {
    awk -v nodes="${3:-1}" 'NR == FNR { b[$1] = $2; next }
         $1 == "connections" { print $1, $2 - b[$1] - nodes; next }
         $1 != "info" && $2 - b[$1] > 0 { print $1, $2 - b[$1] }' "$1" "$2"
}

# --------------------------------------------------------------------------
# The OpenResty peers: Debian's libnginx-mod-http-lua and lua-nginx-redis
# (lua-resty-redis, installed as nginx.redis), in an nginx instance of their
# own so that the rest is measured without LuaJIT.
# --------------------------------------------------------------------------

LUA_PACKAGES=(libnginx-mod-http-lua lua-nginx-redis lua-resty-core)
LUA_MODULES=(/usr/lib/nginx/modules/ndk_http_module.so /usr/lib/nginx/modules/ngx_http_lua_module.so)
LUA_POOL_SIZE=100 # set_keepalive pool per worker; raised to BENCH_CONNECTIONS if below

lua_check() {
    local f
    for f in "${LUA_MODULES[@]}" /usr/share/lua/5.1/nginx/redis.lua /usr/share/lua/5.1/resty/core.lua; do
        [[ -r $f ]] || {
            echo "$f not found (apt-get install ${LUA_PACKAGES[*]})" >&2
            return 1
        }
    done
}

lua_pool_size() { echo $((CONNECTIONS > LUA_POOL_SIZE ? CONNECTIONS : LUA_POOL_SIZE)); }
lua_module_version() { dpkg-query -W -f='${Version}' libnginx-mod-http-lua 2>/dev/null || echo '?'; }

# --------------------------------------------------------------------------
# nginx.
# --------------------------------------------------------------------------

# conf_head INSTANCE: the main context every generated config starts with
conf_head() {
    mkdir -p "$tmp/tmp/$1"
    cat <<EOF
# generated by bench/$(basename "$0"): nginx instance "$1"
user root;
daemon off;
worker_processes $WORKERS;
pid $tmp/nginx-$1.pid;
error_log $tmp/error.log ${BENCH_LOG_LEVEL:-warn};
EOF
}

# conf_temp_paths INSTANCE: the http context's temp paths, each instance its own
conf_temp_paths() {
    local t
    for t in client_body proxy fastcgi uwsgi scgi; do
        echo "    ${t}_temp_path $tmp/tmp/$1/$t;"
    done
}

# Command prefixes (taskset -c CPUS when run.sh pins); not functions, so that
# `$!` is nginx itself.
nginx_on_cpus=() wrk_on_cpus=()

# nginx_start INSTANCE CONF: check CONF with nginx -t, then start an nginx on it
# (daemon off, in the background; the instances share the error log)
declare -A nginx_pid_of=()
nginx_start() {
    "$NGINX" -t -q -p "$tmp/" -e "$tmp/error.log" -c "$2" 2>"$tmp/nginx-t.err" || {
        cat "$tmp/nginx-t.err" >&2
        cat -n "$2" >&2
        die "nginx -t failed on the generated config (above)"
    }
    "${nginx_on_cpus[@]}" "$NGINX" -p "$tmp/" -e "$tmp/error.log" -c "$2" \
        </dev/null >>"$tmp/nginx.stderr" 2>&1 &
    nginx_pid_of[$1]=$!
    nginx_pids+=("$!")
}

# nginx_workers INSTANCE: the pids of its workers
nginx_workers() { pgrep -P "${nginx_pid_of[$1]}" | xargs; }

# await_answer INSTANCE CMD...: run CMD, which prints an HTTP status (curl -w
# '%{http_code}'), until it is not 000 (nothing listening yet), for up to 10 s;
# prints the last status. Stops the run if the instance's nginx exits meanwhile.
await_answer() {
    local inst=$1 code=000 i
    shift
    for ((i = 0; i < 200; i++)); do
        kill -0 "${nginx_pid_of[$inst]}" 2>/dev/null || {
            cat "$tmp/nginx.stderr" "$tmp/error.log" >&2 2>/dev/null || true
            die "nginx exited during startup"
        }
        code=$("$@") || true
        [[ $code == 000 ]] || break
        sleep 0.05
    done
    echo "$code"
}

# nginx_trouble: show what nginx's error log says went wrong, if anything
nginx_trouble() {
    if grep -qE '\[(crit|alert|emerg)\]' "$tmp/error.log" 2>/dev/null; then
        echo "nginx's error log says:" >&2
        grep -E '\[(crit|alert|emerg)\]' "$tmp/error.log" | head -5 >&2
    fi
}

# no_nginx_errors: nothing may have been limited or gone wrong on nginx's side
# either (a Redis timeout, a Lua error): the numbers would not be of what they say.
no_nginx_errors() {
    if grep -E '\[(error|crit|alert|emerg)\]' "$tmp/error.log" >"$tmp/error.bad"; then
        head -20 "$tmp/error.bad" >&2
        die "nginx logged errors during the run (first lines above)"
    fi
}

# --------------------------------------------------------------------------
# wrk.
# --------------------------------------------------------------------------

# wrk_to OUTFILE WHAT WRK_ARGS...: run wrk (on $wrk_on_cpus when pinned), its
# report to OUTFILE; a failed wrk stops the run with its output.
wrk_to() {
    local out=$1 what=$2
    shift 2
    "${wrk_on_cpus[@]}" wrk "$@" >"$out" 2>&1 || {
        cat "$out" >&2
        die "$what: wrk failed"
    }
}

# Said after "Non-2xx or 3xx responses: N" when a script knows why that happens.
wrk_non2xx_why=''

# parse_wrk FILE WHAT: prints "RPS P50_MS P99_MS REQUESTS"; fails loudly on
# non-2xx responses or socket errors.
parse_wrk() {
    local f=$1 what=$2
    if grep -q 'Non-2xx or 3xx responses' "$f"; then
        cat "$f" >&2
        nginx_trouble
        die "$what: $(grep 'Non-2xx or 3xx responses' "$f" | xargs)$wrk_non2xx_why"
    fi
    if grep -q 'Socket errors' "$f"; then
        cat "$f" >&2
        nginx_trouble
        die "$what: $(grep 'Socket errors' "$f" | xargs)"
    fi
    awk '
        function ms(v,   unit) {
            unit = v; sub(/^[0-9.]+/, "", unit); sub(/[a-z]+$/, "", v)
            if (unit == "us") return v / 1000; if (unit == "ms") return v
            if (unit == "s") return v * 1000; if (unit == "m") return v * 60000
            bad = 1; return 0
        }
        /^Requests\/sec:/ { rps = $2 }
        $1 == "50%" { p50 = ms($2) }
        $1 == "99%" { p99 = ms($2) }
        / requests in / { n = $1 }
        END {
            if (rps == "" || p50 == "" || p99 == "" || n == "" || n == 0 || bad) exit 1
            printf "%s %.3f %.3f %s\n", rps, p50, p99, n
        }' "$f" || {
        cat "$f" >&2
        die "$what: could not read requests/s and latencies from wrk's output"
    }
}

# warm_up WORD NAME...: BENCH_WARMUP of wrk against each NAME (with the script's
# run_wrk OUTFILE DURATION NAME), unless BENCH_WARMUP is 0; WORD names them
warm_up() {
    local word=$1 s
    shift
    [[ ! $WARMUP =~ ^0+[smh]?$ ]] || return 0
    say "warm-up: $WARMUP per $word"
    for s; do
        run_wrk "$tmp/wrk.$s.warmup" "$WARMUP" "$s"
        parse_wrk "$tmp/wrk.$s.warmup" "$s (warm-up)" >/dev/null
    done
}

# rotated R NAME...: the names, one a line, rotated by R - 1, so that over the
# rounds no one always runs first or last
rotated() {
    local r=$1 i
    shift
    local names=("$@")
    for ((i = 0; i < $#; i++)); do
        echo "${names[$(((i + r - 1) % $#))]}"
    done
}

# --------------------------------------------------------------------------
# CPU time, numbers.
# --------------------------------------------------------------------------

clk_tck=$(getconf CLK_TCK 2>/dev/null || echo 100)

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

# median "X1 X2 ..": the median of the numbers
median() {
    tr -s ' ' '\n' <<<"$1" | sort -g | awk 'NF { v[++n] = $1 } END {
        if (n == 0) { print "nan"; exit }
        if (n % 2) print v[(n + 1) / 2]; else print (v[n / 2] + v[n / 2 + 1]) / 2 }'
}

# spread "X1 X2 ..": (max - min) / median of the numbers, in percent
spread() {
    tr -s ' ' '\n' <<<"$1" | sort -g | awk 'NF { v[++n] = $1 } END {
        if (n == 0) { print "nan"; exit }
        m = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
        printf "%.1f\n", (m > 0) ? (v[n] - v[1]) * 100 / m : 0 }'
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

# --------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------

# machine: "nproc=N (CPU), kernel, nginx version, wrk version" for the header
machine() {
    local cpu_model nginx_version wrk_version
    cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
    nginx_version=$("$NGINX" -v 2>&1 | sed 's/^nginx version: //')
    wrk_version=$(wrk -v 2>&1 | awk 'NR == 1 { print $2 }' || true)
    echo "nproc=$(nproc)${cpu_model:+ ($cpu_model)}, $(uname -sr), $nginx_version, wrk $wrk_version"
}

# round_row WIDTH NAME "RPS1 RPS2 ..": one line of the per-round req/s
round_row() {
    local x
    printf '  %-*s %s\n' "$1" "$2" "$(for x in $3; do printf '%.0f ' "$x"; done)"
}

# show_results [OUT]: the table ($tmp/results.txt) to stdout, and to OUT if given
show_results() {
    echo
    cat "$tmp/results.txt"
    if [[ -n ${1:-} ]]; then
        mkdir -p "$(dirname "$1")"
        cp "$tmp/results.txt" "$1"
        say "table written to $1"
    fi
}

# --------------------------------------------------------------------------
# A Redis Cluster of 3 masters (no replicas), for the variants that use
# `throttle_redis cluster`: three redis-servers with --cluster-enabled yes on
# free ports, joined by `redis-cli --cluster create --cluster-replicas 0`, as
# t/lib/Throttle/Redis.pm's cluster() does. Started once, stopped on exit.
# Commands per request are summed over the masters, CPU over their processes
# (the cluster bus included: it is part of what a cluster costs).
# --------------------------------------------------------------------------

CLUSTER_MASTERS=3
cluster_ports=() cluster_pids=()

# cluster_cli I ARGS...: redis-cli against master I (0-based)
cluster_cli() {
    local i=$1
    shift
    redis-cli -h 127.0.0.1 -p "${cluster_ports[$i]}" "$@"
}

# cluster_seeds: "127.0.0.1:P1 127.0.0.1:P2 127.0.0.1:P3", for throttle_redis cluster
cluster_seeds() {
    local p seeds=()
    for p in "${cluster_ports[@]}"; do seeds+=("127.0.0.1:$p"); done
    echo "${seeds[*]}"
}

# cluster_up: every node says cluster_state:ok, all 16384 slots assigned, every
# node known
cluster_up() {
    local i info
    for ((i = 0; i < CLUSTER_MASTERS; i++)); do
        info=$(cluster_cli "$i" cluster info 2>/dev/null | tr -d '\r') || return 1
        grep -qx 'cluster_state:ok' <<<"$info" || return 1
        grep -qx 'cluster_slots_assigned:16384' <<<"$info" || return 1
        grep -qx "cluster_known_nodes:$CLUSTER_MASTERS" <<<"$info" || return 1
    done
}

# cluster_start: start the cluster (once) and wait until it is up
cluster_start() {
    ((${#cluster_ports[@]} == 0)) || return 0
    local i j dir addrs=()
    read -r -a cluster_ports <<<"$(free_ports "$CLUSTER_MASTERS")"
    for ((i = 0; i < CLUSTER_MASTERS; i++)); do
        dir=$tmp/cluster/$i
        mkdir -p "$dir"
        redis-server --bind 127.0.0.1 --port "${cluster_ports[$i]}" --save '' --appendonly no \
            --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" \
            --cluster-node-timeout 5000 --dir "$dir" --logfile "$dir/redis.log" \
            --daemonize no </dev/null &
        cluster_pids+=("$!")
        cleanup_pid "$!"
        addrs+=("127.0.0.1:${cluster_ports[$i]}")
    done
    for ((i = 0; i < CLUSTER_MASTERS; i++)); do
        for ((j = 0; j < 100; j++)); do
            [[ $(cluster_cli "$i" ping 2>/dev/null) == PONG ]] && break
            kill -0 "${cluster_pids[$i]}" 2>/dev/null || {
                cat "$tmp/cluster/$i/redis.log" >&2
                die "cluster node $i (redis-server) exited during startup"
            }
            sleep 0.05
        done
        [[ $(cluster_cli "$i" ping 2>/dev/null) == PONG ]] ||
            die "cluster node on port ${cluster_ports[$i]} does not answer"
    done
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 0 --cluster-yes \
        </dev/null >"$tmp/cluster/create.log" 2>&1 || {
        cat "$tmp/cluster/create.log" >&2
        die "redis-cli --cluster create failed"
    }
    for ((j = 0; j < 400; j++)); do
        cluster_up && break
        sleep 0.05
    done
    cluster_up || {
        for ((i = 0; i < CLUSTER_MASTERS; i++)); do cluster_cli "$i" cluster info >&2 || true; done
        die "the Redis Cluster did not come up within 20 s"
    }
    redis_version=$(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')
}

# cluster_snapshot FILE: as redis_snapshot, summed over the masters
cluster_snapshot() {
    local i
    for ((i = 0; i < CLUSTER_MASTERS; i++)); do
        cluster_cli "$i" info everything | tr -d '\r'
    done | awk -F'[:,=]' '
        /^cmdstat_/ { sub(/^cmdstat_/, "", $1); c[$1] += $3 }
        /^total_connections_received:/ { conns += $2 }
        END { for (k in c) print k, c[k]; print "connections", conns }' >"$1"
}

# cluster_calls NAME: wait up to 3 s until some master has seen NAME at least once
cluster_calls() {
    local i j
    for ((j = 0; j < 60; j++)); do
        for ((i = 0; i < CLUSTER_MASTERS; i++)); do
            cluster_cli "$i" info commandstats | grep -q "^cmdstat_$1:calls=" && return 0
        done
        sleep 0.05
    done
    echo "no master of the Redis Cluster saw $1" >&2
    return 1
}
