#!/usr/bin/env bash
# bench/strict_lua.sh: Redis' own CPU per call of the strict script (src/redis/scripts.cpp,
# lua_strict), measured with nothing else in the way: a redis-server of its own (free loopback
# port, no persistence), the script loaded exactly as the module sends it ("#!lua" and the
# body, extracted from the source), redis-benchmark sending EVALSHA, and Redis' own
# `INFO commandstats` usec_per_call of evalsha (the time spent inside the command: argument
# tables, the Lua, its redis.call()s and the reply; not the socket I/O or parsing).
#
# Cases: algorithm (sliding, gcra) x keys x batch (requests of one zone per call):
#   one       every request of the batch on the same key (KEYS = 1 key, refs -1 -1 ...)
#   distinct  each request on its own key (KEYS = m keys, refs -1 -2 ...); the same keys on
#             every call, so after the first call they exist (hot keys: INCRBY / SET)
#   new       like distinct, but keys redis-benchmark makes random per call (__rand_int__):
#             nearly every key is created by the call (SET ... PX)
# Rates so high that nothing is refused (1e9 per hour sliding; gcra burst 1e9).
#
# Knobs (environment):
#   STRICT_LUA_SCRIPT    a Lua file to measure instead (e.g. a variant that stops early);
#                        "#!lua" is prepended unless its first line is one
#   STRICT_LUA_BATCHES   batch sizes                  (1 4 16 32 64)
#   STRICT_LUA_ALGOS     sliding gcra                 (sliding gcra)
#   STRICT_LUA_KEYS      key modes                    (one distinct new)
#   STRICT_LUA_DECISIONS decisions per measurement    (100000; at least 2000 calls)
#   STRICT_LUA_CLIENTS   redis-benchmark -c           (4)
#   STRICT_LUA_ROUNDS    measurements per case; the lowest usec_per_call is printed (3)
#   STRICT_LUA_BASELINE  1: also measure `return 1` and `return {1, 1}` scripts (1)
#   STRICT_LUA_CALLGRIND 1: run redis-server under valgrind's callgrind and print Redis'
#                        instructions per call instead of µs (one client, 20000 decisions per
#                        case in 200 to 2000 calls, one round): the same on a busy machine,
#                        where µs are not
# Prints one line per case: algorithm, keys, batch, µs per call, µs per decision, and the
# inner Redis commands per call (from commandstats).
set -euo pipefail
prog=strict_lua
# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BATCHES=${STRICT_LUA_BATCHES:-1 4 16 32 64}
ALGOS=${STRICT_LUA_ALGOS:-sliding gcra}
KEYMODES=${STRICT_LUA_KEYS:-one distinct new}
DECISIONS=${STRICT_LUA_DECISIONS:-100000}
CLIENTS=${STRICT_LUA_CLIENTS:-4}
SROUNDS=${STRICT_LUA_ROUNDS:-3}
BASELINE=${STRICT_LUA_BASELINE:-1}
need_count STRICT_LUA_DECISIONS "$DECISIONS"
need_count STRICT_LUA_CLIENTS "$CLIENTS"
need_count STRICT_LUA_ROUNDS "$SROUNDS"
command -v redis-benchmark >/dev/null || die "redis-benchmark is needed (apt-get install redis-tools)"
need redis_check

CALLGRIND=${STRICT_LUA_CALLGRIND:-0}
start_tmp strict_lua
if [[ $CALLGRIND == 1 ]]; then
    if ! command -v valgrind >/dev/null || ! command -v callgrind_control >/dev/null; then
        die "valgrind is needed for STRICT_LUA_CALLGRIND=1 (apt-get install valgrind)"
    fi
    redis_port=$(free_ports 1)
    mkdir -p "$tmp/redis" "$tmp/cg"
    valgrind --tool=callgrind --callgrind-out-file="$tmp/cg/out.%p" \
        redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no \
        --dir "$tmp/redis" --logfile "$tmp/redis/redis.log" </dev/null >"$tmp/cg/valgrind.log" 2>&1 &
    redis_pid=$!
    cleanup_pid "$redis_pid"
    for ((i = 0; i < 300; i++)); do
        [[ $(redis_cli ping 2>/dev/null) == PONG ]] && break
        kill -0 "$redis_pid" 2>/dev/null || die "redis-server under valgrind exited: $(cat "$tmp/cg/valgrind.log")"
        sleep 0.1
    done
    [[ $(redis_cli ping 2>/dev/null) == PONG ]] || die "redis-server under valgrind does not answer"
    redis_version=$(redis-server --version | sed -n 's/.* v=\([^ ]*\).*/\1/p')
    SROUNDS=1 CLIENTS=1
else
    redis_start
fi

# The script as the module sends it: source_of(lua_strict, false) = "#!lua" + the raw string's
# bytes (which start and end with a newline).
script=$tmp/strict.lua
if [[ -n ${STRICT_LUA_SCRIPT:-} ]]; then
    if head -1 "$STRICT_LUA_SCRIPT" | grep -q '^#!lua'; then
        cp "$STRICT_LUA_SCRIPT" "$script"
    else
        { printf '#!lua\n'; cat "$STRICT_LUA_SCRIPT"; } >"$script"
    fi
else
    awk 'f && /^\)lua";$/ { exit } f { print } /^constexpr std::string_view lua_strict = R"lua\($/ { f = 1; printf "#!lua\n" }' \
        "$root/src/redis/scripts.cpp" >"$script"
    [[ -s $script ]] || die "lua_strict not found in src/redis/scripts.cpp"
fi

load() { redis_cli -x script load <"$1"; }
sha=$(load "$script")
[[ $sha =~ ^[0-9a-f]{40}$ ]] || die "SCRIPT LOAD failed: $sha"

# usec_per_call and calls of one command, and the calls of all others, from commandstats
stats() {
    redis_cli info commandstats | tr -d '\r' | awk -F'[:,=]' -v cmd="cmdstat_$1" '
        $1 == cmd { usec = $7; calls = $3; next }
        /^cmdstat_/ && $1 != "cmdstat_config" && $1 != "cmdstat_info" { other += $3 }
        END { printf "%s %s %d\n", usec, calls, other }'
}

# measure SHA BATCH ARGS...: the best usec_per_call of SROUNDS runs, and the inner commands
# per call; prints "usec inner"
measure() {
    local sha=$1 batch=$2
    shift 2
    local calls=$((DECISIONS / batch)) best='' inner=0 r line usec ncalls other dump
    ((calls >= 2000)) || calls=2000
    if [[ $CALLGRIND == 1 ]]; then
        calls=$((20000 / batch))
        calls=$((calls < 200 ? 200 : calls > 2000 ? 2000 : calls))
        # a few calls first, so that the measured ones find the keys as a steady load does
        redis_cli flushall >/dev/null
        redis-benchmark -h 127.0.0.1 -p "$redis_port" -n 20 -c 1 -r 1000000000 -q \
            evalsha "$sha" "$@" >/dev/null 2>&1
        callgrind_control -z "$redis_pid" >/dev/null 2>&1
    fi
    for ((r = 0; r < SROUNDS; r++)); do
        if [[ $CALLGRIND != 1 ]]; then
            redis_cli flushall >/dev/null
        fi
        redis_cli config resetstat >/dev/null
        redis-benchmark -h 127.0.0.1 -p "$redis_port" -n "$calls" -c "$CLIENTS" -r 1000000000 -q \
            evalsha "$sha" "$@" >"$tmp/rb.out" 2>&1 || {
            cat "$tmp/rb.out" >&2
            die "redis-benchmark failed"
        }
        if grep -qi 'err' "$tmp/rb.out"; then
            cat "$tmp/rb.out" >&2
            die "the script answered an error"
        fi
        line=$(stats evalsha)
        read -r usec ncalls other <<<"$line"
        [[ -n $usec && $ncalls -gt 0 ]] || die "no evalsha in commandstats"
        if [[ $CALLGRIND == 1 ]]; then
            callgrind_control -d "$redis_pid" >/dev/null 2>&1
            for dump in "$tmp/cg/out.$redis_pid".*; do :; done  # the one dump (each is removed)
            # thousands of instructions per call (INFO and CONFIG counted too: a constant)
            usec=$(awk -v n="$calls" '/^(summary|totals):/ { printf "%.1f", $2 / n / 1000; exit }' "$dump")
            rm -f "$dump"
        fi
        if [[ -z $best ]] || awk -v a="$usec" -v b="$best" 'BEGIN { exit !(a < b) }'; then
            best=$usec
            inner=$(awk -v o="$other" -v c="$ncalls" 'BEGIN { printf "%.2f", o / c }')
        fi
    done
    echo "$best $inner"
}

printf '%s: redis-server %s%s, redis-benchmark -c %s, best of %s; script sha %s (%s)\n' \
    "$prog" "$redis_version" "$([[ $CALLGRIND == 1 ]] && echo ' under callgrind')" "$CLIENTS" \
    "$SROUNDS" "$sha" "${STRICT_LUA_SCRIPT:-lua_strict}"
unit=us
[[ $CALLGRIND != 1 ]] || unit=kIr
printf '%-8s %-9s %5s %12s %14s %12s\n' algo keys batch "$unit/call" "$unit/decision" 'cmds/call'

if [[ $BASELINE == 1 ]]; then
    for body in 'return 1' 'return {1, 1}'; do
        printf '#!lua\n%s\n' "$body" >"$tmp/base.lua"
        bsha=$(load "$tmp/base.lua")
        read -r usec inner <<<"$(measure "$bsha" 1 1 'p{z:k1}' '')"
        printf '%-18s %5s %12.2f %14s %12s\n' "\"$body\"" 1 "$usec" - "$inner"
    done
fi

for algo in $ALGOS; do
    case $algo in
    sliding) policy=(0 1000000000 3600000 0) ;;
    gcra) policy=(1 1000000 1000 1000000000) ;;
    *) die "unknown algorithm \"$algo\" (sliding, gcra)" ;;
    esac
    for keys in $KEYMODES; do
        for batch in $BATCHES; do
            need_count STRICT_LUA_BATCHES "$batch"
            args=()
            case $keys in
            one)
                args+=(1 'p{z:k1}' '' "${policy[@]}" 1)
                for ((i = 1; i <= batch; i++)); do args+=(-1); done
                ;;
            distinct | new)
                args+=("$batch")
                for ((i = 1; i <= batch; i++)); do
                    if [[ $keys == new ]]; then
                        args+=("p{z:n__rand_int__-$i}")
                    else
                        args+=("p{z:k$i}")
                    fi
                done
                args+=('' "${policy[@]}" "$batch")
                for ((i = 1; i <= batch; i++)); do args+=("-$i"); done
                ;;
            *) die "unknown key mode \"$keys\" (one, distinct, new)" ;;
            esac
            read -r usec inner <<<"$(measure "$sha" "$batch" "${args[@]}")"
            printf '%-8s %-9s %5s %12.2f %14.2f %12s\n' "$algo" "$keys" "$batch" "$usec" \
                "$(awk -v u="$usec" -v b="$batch" 'BEGIN { printf "%.3f", u / b }')" "$inner"
        done
    done
done
