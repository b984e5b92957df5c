#!/usr/bin/env bash
# nginx variables in single-quoted config lines are meant literally:
# shellcheck disable=SC2016
# bench/run.sh: measure what ngx_http_throttle_module costs per request.
#
# One nginx serves the same small static file on one loopback port per variant
# (no limit, nginx's own limit_req, our throttle, ...), each with a rate so high
# that nothing is ever rejected. wrk is run against every variant in several
# interleaved rounds; the median requests/s and p99 latency per variant are
# printed with ratios against the peers measured in the same run.
#
# Invoked by `make bench` after the module is built. Knobs (environment):
#   BENCH_VARIANTS     variants to run, in order  (plain limit_req throttle throttle_gcra)
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
# All traffic goes to 127.0.0.1 and is bounded by BENCH_DURATION.

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

NGINX=${BENCH_NGINX:-/usr/sbin/nginx}
MODULE=${BENCH_MODULE:-$root/build/ngx_http_throttle_module.so}
VARIANTS=${BENCH_VARIANTS:-plain limit_req throttle throttle_gcra}
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
#   check     fail (non-zero, message on stderr) if it cannot run here
#   setup     start whatever it needs before nginx starts (e.g. a redis-server
#             on a free port; register its pid with `cleanup_pid PID`)
#   main      lines for nginx's main context (load_module ...); deduplicated
#   http      lines for the http context (zones)
#   location  lines inside the variant's own `location = /bench.txt`
#   verify    given the response headers file as $2, fail if the variant's
#             machinery visibly did not run
# Unknown actions print nothing. To add a variant (Redis sync/strict modes,
# an OpenResty Lua+Redis peer via libnginx-mod-http-lua), write one more
# function and add its name to BENCH_VARIANTS.
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

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        say "installing ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 ||
            die "could not install ${missing[*]}"
    else
        die "missing ${missing[*]} (apt-get install ${missing[*]})"
    fi
fi
[[ -x $NGINX ]] || die "nginx not found at $NGINX (apt-get install nginx, or set BENCH_NGINX)"

read -r -a variants <<<"$VARIANTS"
((${#variants[@]})) || die "BENCH_VARIANTS is empty"
declare -A seen=()
for v in "${variants[@]}"; do
    if ! [[ $v =~ ^[a-z][a-z0-9_]*$ ]] || ! declare -F "variant_$v" >/dev/null; then
        die "unknown variant \"$v\" (known:$(declare -F | awk '$3 ~ /^variant_/ { sub(/^variant_/, "", $3); printf " %s", $3 }'))"
    fi
    [[ -z ${seen[$v]:-} ]] || die "variant \"$v\" is listed twice"
    seen[$v]=1
    "variant_$v" check || die "variant \"$v\" cannot run"
done

# --------------------------------------------------------------------------
# Temp dir, cleanup.
# --------------------------------------------------------------------------

tmp=$(mktemp -d "${TMPDIR:-/tmp}/throttle-bench.XXXXXX")
nginx_pid=
extra_pids=()
cleanup_pid() { extra_pids+=("$1"); }

cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    for pid in $nginx_pid "${extra_pids[@]}"; do
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

mkdir -p "$tmp/html" "$tmp/tmp"
head -c "$BODY_BYTES" /dev/zero | tr '\0' 'x' >"$tmp/html/bench.txt"

indent() { sed 's/^/    /'; }
{
    echo "# generated by bench/run.sh"
    echo "user root;"
    echo "daemon off;"
    echo "worker_processes $WORKERS;"
    echo "pid $tmp/nginx.pid;"
    echo "error_log $tmp/error.log warn;"
    for v in "${variants[@]}"; do "variant_$v" main; done | awk '!seen[$0]++'
    echo
    echo "events { worker_connections $((CONNECTIONS * 2 + 512)); }"
    echo
    echo "http {"
    echo "    access_log off;"
    echo "    default_type text/plain;"
    for t in client_body proxy fastcgi uwsgi scgi; do
        echo "    ${t}_temp_path $tmp/tmp/$t;"
    done
    for v in "${variants[@]}"; do "variant_$v" http; done | indent
    for v in "${variants[@]}"; do
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
} >"$tmp/nginx.conf"

"$NGINX" -t -q -p "$tmp/" -e "$tmp/error.log" -c "$tmp/nginx.conf" 2>"$tmp/nginx-t.err" || {
    cat "$tmp/nginx-t.err" >&2
    cat -n "$tmp/nginx.conf" >&2
    die "nginx -t failed on the generated config (above)"
}

"${nginx_on_cpus[@]}" "$NGINX" -p "$tmp/" -e "$tmp/error.log" -c "$tmp/nginx.conf" \
    </dev/null >>"$tmp/nginx.stderr" 2>&1 &
nginx_pid=$!

url() { echo "http://127.0.0.1:${port[$1]}/bench.txt"; }

# Every variant must answer 200 with the whole file before we measure.
for v in "${variants[@]}"; do
    code=000
    for ((i = 0; i < 100; i++)); do
        kill -0 "$nginx_pid" 2>/dev/null || {
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

load_before=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')
declare -A rps_all=() p99_all=()
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
        run_wrk "$f" "$DURATION" "$v"
        res=$(parse_wrk "$f" "$v (round $r)") || exit 1
        read -r rps p99 _ <<<"$res"
        say "  $(printf '%-14s %10.0f req/s  p99 %7.3f ms' "$v" "$rps" "$p99")"
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
