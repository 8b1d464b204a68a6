#!/usr/bin/env bash
# scripts/perf.sh — edgecache's load benchmark (issue 6), side by side in one run.
#
#     bash scripts/perf.sh          # as root (apt-get, PostgreSQL via runuser); ~5–6 min
#
# Everything runs on loopback on this machine, client and servers on the same cores:
#
#   nginx      nginx proxy_cache in front of a static origin (nginx serving the
#              product document for every /v1/bench/<id>), warmed
#   ceiling    a bare actix-web + quick_cache server (benches/ceiling.rs): what an
#              actix-web cache hit costs with nothing of edgecache around it
#   edge       edgecache on the embedded origin, collection `bench` relaxed with a 1 h
#              TTL, 10,000 items seeded, warmed: session-consistent cache hits
#   edge-pg    edgecache on PostgreSQL (scripts/pg-cluster.sh; primary only, no
#              replicas) with every field of `bench` strict: each read goes to the
#              primary — the read-through baseline. `edgecache migrate` creates the
#              table and seeds k1; k2…k10000 are copies of k1's row (one INSERT)
#
# All serve the same ~300-byte JSON document (the static one is the bytes edgecache
# serves for k1). Each configuration is driven with the same wrk settings: 1 key and
# 10,000 keys (a random key per request), 32 and 64 connections, 2 threads,
# PERF_DURATION seconds (5 by default, to keep the whole run near 5 minutes on 2
# cores; the issue's 10 s is PERF_DURATION=10). edgecache requests carry
# X-Session-Id and a valid X-Session-Token: 1,000 sessions per node and key count,
# opened beforehand with one GET each (the 1-key runs' sessions read k1, so the token
# they send is the one the node issued); 10% of them first PUT an item, so their token
# carries a write watermark. wrk picks a session per request and sends the token it
# was given at creation (it does not follow the tokens in the responses).
#
# Pinned mode (PERF_PIN=1, the default, on ≥ 2 cores): nginx, the ceiling and edge run a
# second time as nginx-pin, ceiling-pin and edge-pin, each on core 0 with one worker
# (taskset), driven by one wrk thread pinned to core 1: the server's capacity with the
# client off its core, where the unpinned runs measure client and servers sharing both.
# Both modes are in every round and in the table, each compared with its own mode's
# nginx and ceiling. nginx runs at its measured best (scripts/perf/nginx.conf.in).
#
# Configurations are visited PERF_ROUNDS times (3), interleaved: each round runs every
# configuration × key count × connections once, the configuration order rotating per
# round. The table shows, per cell, the median requests/s over rounds, the median
# of the per-round ratios to nginx and to the ceiling, the median p50/p99 (wrk's),
# bytes per response and errors; and the machine's noise: (max − min) / median of
# nginx's and the ceiling's requests/s across rounds. The cores may be shared with
# other work (builds, tests): before each run the script waits (≤ 20 s) for a quiet
# half second, and for each run it records the *foreign* CPU — what the machine spent
# (/proc/stat) minus what our servers' process trees and wrk spent — and the steal,
# in % of the machine's capacity; the table shows the worst per cell and lists the
# disturbed runs. The same accounting gives each configuration's CPU per request:
# the server's (its process tree, PostgreSQL's backends included for edge-pg) and
# wrk's, in µs of CPU time.
#
# Memory: a separate edgecache node (embedded origin, session.max_live ≥ 2 ×
# PERF_MEM_SESSIONS, idle lease 1 h) is measured — VmRSS from /proc/PID/status — with
# its warm-up session only, then with PERF_MEM_SESSIONS (100,000) more live sessions,
# each opened by one GET of a cached item with a new X-Session-Id (wrk,
# scripts/perf/sessions-new.lua): (RSS after − RSS before) / sessions added.
#
# Profile: when `perf` can sample (cpu-clock), one extra 10,000-key / 64-connection
# run against `edge` is recorded and its top symbols written to
# target/perf/profile.txt (PERF_PROFILE=0 skips it; not part of the table).
#
# Output: the table on stdout and in target/perf/report.md; raw wrk results in
# target/perf/results.tsv; logs of every server in target/perf/logs/.
#
# Knobs (environment): PERF_DURATION (5) PERF_ROUNDS (3) PERF_WARM (2, seconds per
# warm-up) PERF_CONNS ("32 64") PERF_THREADS (2) PERF_KEYS (10000) PERF_SESSIONS (1000)
# PERF_WRITERS_PCT (10) PERF_MEM_SESSIONS (100000) PERF_PROFILE (1) PERF_CALLGRAPH (0; 1: a
# second profile with call stacks, the callers of memmove/memcmp in target/perf/callers.txt) PERF_EDGE_LOG
# (EDGECACHE_LOG of the nodes; default: edgecache's default, info) PERF_QUIET_WAIT
# (20) PERF_QUIET_MAX (15, % foreign CPU) PERF_OUT (target/perf) PERF_SKIP_BUILD=1
# (use the binaries already built) PERF_CONFIGS ("nginx ceiling edge edge-pg"; a
# subset for quick before/after comparisons while working on the hot path; ratios need
# nginx and the ceiling) PERF_MEMORY (1; 0 skips the memory measurement) PERF_PIN (1; 0 skips the
# pinned mode).
#
# Installs what is missing with apt-get (wrk, nginx-light, curl, python3; PostgreSQL
# 15 through scripts/pg-cluster.sh). Builds `cargo build --release` and the ceiling
# (`cargo bench --bench ceiling --no-run`). Stops everything it started on exit,
# including on failure or Ctrl-C (by PID; the PostgreSQL cluster with
# pg_cluster_stop).

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

DURATION=${PERF_DURATION:-5}
ROUNDS=${PERF_ROUNDS:-3}
WARM=${PERF_WARM:-2}
CONNS=${PERF_CONNS:-"32 64"}
THREADS=${PERF_THREADS:-2}
KEYS=${PERF_KEYS:-10000}
SESSIONS=${PERF_SESSIONS:-1000}
WRITERS_PCT=${PERF_WRITERS_PCT:-10}
MEM_SESSIONS=${PERF_MEM_SESSIONS:-100000}
PROFILE=${PERF_PROFILE:-1}
MEMORY=${PERF_MEMORY:-1}
read -r -a CONFIGS <<<"${PERF_CONFIGS:-nginx ceiling edge edge-pg}"
want() { [[ " ${CONFIGS[*]} " == *" $1 "* ]]; }
for cfg in "${CONFIGS[@]}"; do
    case "$cfg" in nginx | ceiling | edge | edge-pg) ;; *) echo "PERF_CONFIGS: unknown configuration $cfg" >&2; exit 2 ;; esac
done
# The pinned mode: a second instance of nginx, the ceiling and edge, each on core 0 with
# one worker, driven by one wrk thread on core 1 (the server's capacity without the
# client on its core). Configuration names end in -pin.
PIN=${PERF_PIN:-1}
if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
    for cfg in nginx ceiling edge; do want "$cfg" && CONFIGS+=("$cfg-pin"); done
fi
OUT=${PERF_OUT:-$ROOT/target/perf}
HELPERS=$ROOT/scripts/perf
T_START=$SECONDS

LOG_TAG=perf
# shellcheck source=scripts/perf/lib.sh
source "$HELPERS/lib.sh"

# -- install ----------------------------------------------------------------------------

install_missing() {
    local pkgs=()
    command -v wrk >/dev/null || pkgs+=(wrk)
    command -v nginx >/dev/null || pkgs+=(nginx-light)
    command -v curl >/dev/null || pkgs+=(curl)
    command -v python3 >/dev/null || pkgs+=(python3)
    [ "${#pkgs[@]}" -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "missing ${pkgs[*]} and not root to install them"
    log "installing ${pkgs[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -q </dev/null >/dev/null || die "apt-get update"
    timeout 900 apt-get install -y -q --no-install-recommends "${pkgs[@]}" </dev/null >/dev/null ||
        die "apt-get install ${pkgs[*]}"
    # Debian's nginx package starts a default server on :80; we never use it.
}

[ "$(id -u)" -eq 0 ] || die "run as root (apt-get, and the PostgreSQL servers run as postgres via runuser)"
install_missing

# -- build ------------------------------------------------------------------------------

if [ "${PERF_SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release"
    cargo build --release --quiet
    log "cargo bench --bench ceiling --no-run"
fi
mkdir -p "$OUT"
# shellcheck source=scripts/perf/bench-bin.sh
source "$HELPERS/bench-bin.sh"
CEILING=$(bench_executable ceiling "$OUT/ceiling-build.log") || exit 1
EDGE=$ROOT/target/release/edgecache
[ -x "$EDGE" ] && [ -x "$CEILING" ] || die "missing $EDGE or $CEILING"

# -- the run's directory and teardown ---------------------------------------------------

WORK=$(mktemp -d /tmp/edgecache-perf.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/logs" "$WORK/www" "$WORK/nginx" "$WORK/bin" "$OUT"
# Run copies: target/ is shared, and a build elsewhere during the run would replace the
# binaries under the running servers (and leave perf without their symbols).
cp "$EDGE" "$CEILING" "$WORK/bin/"
EDGE=$WORK/bin/edgecache
CEILING=$WORK/bin/$(basename "$CEILING")
PIDS=()
PG_STARTED=0
trap cleanup EXIT
trap 'exit 130' INT TERM
read -r P_ORIGIN P_NGINX P_CEILING P_EDGE P_EDGE_PG P_MEM P_ORIGIN_PIN P_NGINX_PIN P_CEILING_PIN P_EDGE_PIN \
    <<<"$(free_ports 10)"


# -- servers ----------------------------------------------------------------------------

log "edgecache on the embedded origin (:$P_EDGE), $KEYS items seeded"
python3 "$HELPERS/perf.py" config "$WORK/edge.toml" --kind embedded --keys "$KEYS"
start_edge edge "$P_EDGE" "$WORK/edge.toml" EDGECACHE__ORIGIN__PATH="$WORK/embedded/edgecache.db"
if want edge-pin; then
    log "edgecache pinned to core 0 with one worker (:$P_EDGE_PIN)"
    EDGE_PIN=0 start_edge edge-pin "$P_EDGE_PIN" "$WORK/edge.toml" \
        EDGECACHE__ORIGIN__PATH="$WORK/embedded-pin/edgecache.db" EDGECACHE__SERVER__WORKERS=1
fi

if want edge-pg; then
    log "PostgreSQL (scripts/pg-cluster.sh) and edgecache reading through to it (:$P_EDGE_PG)"
    # shellcheck source=scripts/pg-cluster.sh
    source "$ROOT/scripts/pg-cluster.sh"
    PG_STARTED=1
    pg_cluster_start || die "starting PostgreSQL"
    python3 "$HELPERS/perf.py" config "$WORK/edge-pg.toml" --kind postgres \
        --primary "$EDGECACHE_TEST_PG_PRIMARY" --keys 1
    seed_bench "$WORK/edge-pg.toml" "$EDGECACHE_TEST_PG_PRIMARY" "$KEYS"
    start_edge edge-pg "$P_EDGE_PG" "$WORK/edge-pg.toml"
fi

# The static document: exactly the body edgecache serves for k1.
curl -sf "http://127.0.0.1:$P_EDGE/v1/bench/k1" -o "$WORK/www/product.json" -H 'x-session-id: perf-doc'
DOC_BYTES=$(wc -c <"$WORK/www/product.json")

# Starts nginx. Args: name origin_port cache_port workers [taskset prefix…]
start_nginx() {
    local name=$1 origin=$2 cache=$3 workers=$4
    shift 4
    mkdir -p "$WORK/$name"
    sed -e "s|@WORK@|$WORK|g" -e "s|@DIR@|$WORK/$name|g" -e "s|@ORIGIN_PORT@|$origin|g" \
        -e "s|@CACHE_PORT@|$cache|g" -e "s|@WORKERS@|$workers|g" \
        "$HELPERS/nginx.conf.in" >"$WORK/$name.conf"
    nginx -t -q -c "$WORK/$name.conf" -p "$WORK/$name" 2>"$WORK/logs/$name-t.log" ||
        { cat "$WORK/logs/$name-t.log" >&2; die "nginx -t ($name)"; }
    start "$name" "$@" nginx -c "$WORK/$name.conf" -p "$WORK/$name"
    wait_http "$name" "http://127.0.0.1:$cache/v1/bench/k1"
}
if want nginx; then
    log "nginx proxy_cache (:$P_NGINX) in front of a static origin (:$P_ORIGIN)"
    start_nginx nginx "$P_ORIGIN" "$P_NGINX" auto
fi
if want nginx-pin; then
    log "nginx pinned to core 0 with one worker (:$P_NGINX_PIN)"
    start_nginx nginx-pin "$P_ORIGIN_PIN" "$P_NGINX_PIN" 1 taskset -c 0
fi

if want ceiling; then
    log "ceiling: actix-web + quick_cache (:$P_CEILING)"
    start ceiling "$CEILING" --port "$P_CEILING" --body "$WORK/www/product.json" --keys "$KEYS"
    wait_http ceiling "http://127.0.0.1:$P_CEILING/v1/bench/k1"
fi
if want ceiling-pin; then
    log "ceiling pinned to core 0 with one worker (:$P_CEILING_PIN)"
    start ceiling-pin taskset -c 0 "$CEILING" --port "$P_CEILING_PIN" --body "$WORK/www/product.json" \
        --keys "$KEYS" --workers 1
    wait_http ceiling-pin "http://127.0.0.1:$P_CEILING_PIN/v1/bench/k1"
fi

declare -A URL=(
    [nginx]="http://127.0.0.1:$P_NGINX"
    [ceiling]="http://127.0.0.1:$P_CEILING"
    [edge]="http://127.0.0.1:$P_EDGE"
    [edge-pg]="http://127.0.0.1:$P_EDGE_PG"
    [nginx-pin]="http://127.0.0.1:$P_NGINX_PIN"
    [ceiling-pin]="http://127.0.0.1:$P_CEILING_PIN"
    [edge-pin]="http://127.0.0.1:$P_EDGE_PIN"
)

# -- sessions ---------------------------------------------------------------------------

# Session files per configuration and key count: "-" (none) for nginx and the ceiling.
declare -A SESS
for cfg in nginx ceiling nginx-pin ceiling-pin; do SESS[$cfg,1]=-; SESS[$cfg,$KEYS]=-; done
for cfg in edge edge-pg edge-pin; do
    want "$cfg" || continue
    for keys in 1 "$KEYS"; do
        prefix=$([ "$keys" = 1 ] && echo one || echo many)
        SESS[$cfg,$keys]=$WORK/sessions-$cfg-$keys.lua
        python3 "$HELPERS/perf.py" sessions "${URL[$cfg]}" "${SESS[$cfg,$keys]}" --prefix "$prefix" \
            --count "$SESSIONS" --writers-pct "$WRITERS_PCT" --keys "$KEYS" >&2
    done
done

# -- wrk --------------------------------------------------------------------------------

# Runs wrk; prints its PERF_RESULT fields. Args: cfg keys conns secs [mode]. A pinned
# configuration's wrk runs one thread on core 1.
run_wrk() {
    local cfg=$1 keys=$2 conns=$3 secs=$4 mode=${5:-random} out threads=$THREADS pin=()
    [[ "$cfg" == *-pin ]] && { threads=1; pin=(taskset -c 1); }
    out=$("${pin[@]}" wrk -t "$threads" -c "$conns" -d "${secs}s" -s "$HELPERS/load.lua" "${URL[$cfg]}" \
        -- "$keys" "${SESS[$cfg,$keys]}" "$mode" bench "$threads" 2>&1) || { echo "$out" >&2; die "wrk against $cfg"; }
    echo "$out" | sed -n 's/^PERF_RESULT //p'
}


log "warming up: every key once or more per configuration (${WARM}s each), then 1 s on k1"
# `seq` splits the keys evenly over wrk's threads, so ≥ KEYS requests touch them all;
# a warm-up too short for that (cold misses are slow) is repeated, longer.
for cfg in "${CONFIGS[@]}"; do
    secs=$WARM
    for attempt in 1 2 3; do
        r=$(run_wrk "$cfg" "$KEYS" 32 "$secs" seq)
        read -r reqs _ rps _ _ _ _ errs <<<"$r"
        [ "$errs" = 0 ] || die "warm-up of $cfg: $errs errors"
        [ "$reqs" -ge $((KEYS + KEYS / 5)) ] && break
        secs=$(python3 -c "import math; print(max($WARM, math.ceil(1.5 * $KEYS / max(1.0, $rps))))")
        log "warm-up of $cfg: $reqs requests for $KEYS keys; again for ${secs}s"
    done
    run_wrk "$cfg" 1 32 1 >/dev/null
done
# What each answers (and that edgecache's are cache hits).
{
    for cfg in "${CONFIGS[@]}"; do
        echo "--- $cfg: GET /v1/bench/k$((KEYS / 2))"
        curl -s -D - -o /dev/null "${URL[$cfg]}/v1/bench/k$((KEYS / 2))" -H "x-session-id: perf-check-$cfg" | tr -d '\r' || true
    done
} >"$WORK/logs/responses.txt"
grep -A20 -- '--- edge:' "$WORK/logs/responses.txt" | grep -qi '^cache-status: edge; hit' ||
    log "warning: edge's check read was not a cache hit (see target/perf/logs/responses.txt)"

RESULTS=$OUT/results.tsv
echo "# round cfg keys conns requests duration_us rps p50_us p90_us p99_us bytes errors foreign_pct steal_pct servers_cpu_s wrk_cpu_s" >"$RESULTS"
ncells=$((${#CONFIGS[@]} * 2 * $(wc -w <<<"$CONNS")))
log "$ROUNDS rounds × $ncells runs of ${DURATION}s (wrk -t$THREADS, connections: $CONNS)"
for round in $(seq "$ROUNDS"); do
    # Rotate the configuration order every round.
    order=()
    for i in "${!CONFIGS[@]}"; do order+=("${CONFIGS[$(((i + round - 1) % ${#CONFIGS[@]}))]}"); done
    for keys in 1 "$KEYS"; do
        for conns in $CONNS; do
            for cfg in "${order[@]}"; do
                wait_quiet
                window_start
                r=$(run_wrk "$cfg" "$keys" "$conns" "$DURATION")
                window_end
                [ -n "$r" ] || die "no result from wrk against $cfg"
                echo "$round $cfg $keys $conns $r $LOAD" >>"$RESULTS"
                log "round $round: $cfg keys=$keys conns=$conns: $(cut -d' ' -f3 <<<"$r") req/s (foreign %, steal %, servers' CPU s, wrk's CPU s: $LOAD)"
            done
        done
    done
done

# -- profile ----------------------------------------------------------------------------

if [ "$PROFILE" = 1 ] && want edge && command -v perf >/dev/null &&
    perf record -q -e cpu-clock -o /dev/null -- true >/dev/null 2>&1; then
    log "profiling edge (${DURATION}s, $KEYS keys, 64 connections) with perf record -e cpu-clock"
    perf record -q -e cpu-clock -F 999 -p "$PID_edge" -o "$WORK/perf.data" -- sleep "$DURATION" \
        >"$WORK/logs/perf-record.log" 2>&1 &
    perf_pid=$!
    run_wrk edge "$KEYS" 64 "$DURATION" >/dev/null
    wait "$perf_pid" || true
    perf report -i "$WORK/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null |
        grep '%' | grep -v '^#' | sed 's/  */ /g' >"$WORK/symbols.txt" || true
    {
        echo "# perf record -e cpu-clock of the edge node during a ${DURATION}s wrk run ($KEYS keys, 64 conns)"
        echo "## by shared object"
        perf report -i "$WORK/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null |
            grep '%' | grep -v '^#' | sed 's/  */ /g' || true
        echo "## self time by kind (first matching pattern of the symbol; see scripts/perf.sh)"
        awk '{
            pct = $1 + 0; line = $0; kind = "other (edgecache dso)"
            if (line ~ /\[k\]/) kind = "kernel (sockets, scheduling, TCP on loopback)"
            else if (line ~ /tracing|nu_ansi_term|DefaultVisitor|EnvFilter|Instrumented|sharded::Registry/) kind = "tracing: spans, field formatting, ANSI"
            else if (line ~ /core::fmt|fmt::Write|Formatter|to_string/) kind = "core::fmt formatting (tracing fields, headers, ids)"
            else if (line ~ /regex/) kind = "regex (router / filters)"
            else if (line ~ /sha2|hmac|Hmac|digest|subtle/) kind = "SHA-256 / HMAC (tokens, session binding)"
            else if (line ~ /malloc|free|_int_|realloc|unlink_chunk|consolidate|tcache/) kind = "malloc / free"
            else if (line ~ /__mem|memcpy|memmove|memset|memcmp|strlen/) kind = "memcpy / memcmp / memset"
            else if (line ~ /quick_cache/) kind = "quick_cache (cache, session table)"
            else if (line ~ /edgecache_/) kind = "edgecache code"
            else if (line ~ /actix|tokio|futures|mio|h1::|http::|bytes::/) kind = "actix-web / tokio / http"
            else if (line ~ /serde|json/) kind = "serde / JSON"
            else if (line ~ /uuid|rand|getrandom/) kind = "uuid / random"
            else if (line ~ /libc\.so/) kind = "libc (other)"
            sum[kind] += pct
        } END { for (k in sum) printf "%6.2f%%  %s\n", sum[k], k }' "$WORK/symbols.txt" | sort -rn || true
        echo "## top symbols (self)"
        cut -c1-200 "$WORK/symbols.txt" | head -n 80 || true
    } >"$OUT/profile.txt"
    if [ "${PERF_CALLGRAPH:-0}" = 1 ]; then
        # Who calls the copies and the allocator: a second run with stacks (DWARF
        # unwinding, sampled more sparsely; it costs the node more than the first).
        log "profiling edge again with call graphs (PERF_CALLGRAPH=1)"
        perf record -q -e cpu-clock -F 299 --call-graph dwarf,16384 -p "$PID_edge" -o "$WORK/perf-g.data" \
            -- sleep "$DURATION" >>"$WORK/logs/perf-record.log" 2>&1 &
        perf_pid=$!
        run_wrk edge "$KEYS" 64 "$DURATION" >/dev/null
        wait "$perf_pid" || true
        {
            # Each stack folded (callee first), cut to the copy and its nearest callers.
            for sym in memmove memcpy memcmp malloc; do
                echo "## $sym: share of the samples, by its nearest callers"
                perf script -i "$WORK/perf-g.data" -F ip,sym 2>/dev/null | awk -v want="$sym" '
                    function flush() { if (n > 0) { total++; if (stack[1] ~ want) { key = stack[2] " < " stack[3] " < " stack[4]; hits[key]++; all++ } } n = 0 }
                    /^$/ { flush(); next }
                    { sub(/^[ \t]*[0-9a-f]+ /, ""); sub(/ \(inlined\)$/, ""); sub(/\+0x[0-9a-f]+$/, ""); stack[++n] = substr($0, 1, 70) }
                    END { flush(); printf "%.2f%% of all samples\n", 100 * all / (total ? total : 1)
                          for (k in hits) printf "%6.2f%%  %s\n", 100 * hits[k] / total, k }' | sort -rn | head -n 12 || true
            done
        } >"$OUT/callers.txt"
        log "callers in $OUT/callers.txt"
    fi
    log "profile in $OUT/profile.txt"
else
    log "perf cannot sample here (or PERF_PROFILE=0): no profile"
fi

# -- memory per live session ------------------------------------------------------------

if [ "$MEMORY" = 1 ]; then
    log "memory: $MEM_SESSIONS live sessions on a fresh node (:$P_MEM)"
    python3 "$HELPERS/perf.py" config "$WORK/mem.toml" --kind embedded --keys 1
    start_edge mem "$P_MEM" "$WORK/mem.toml" \
        EDGECACHE__ORIGIN__PATH="$WORK/mem/edgecache.db" \
        EDGECACHE__SESSION__MAX_LIVE=$((2 * MEM_SESSIONS)) EDGECACHE__SESSION__IDLE_LEASE=1h
    live() { { curl -sf "http://127.0.0.1:$P_MEM/readyz" || true; } | sed -n 's/.*"live_sessions":\([0-9]*\).*/\1/p'; }
    rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$PID_mem/status"; }
    # Warm the node up with one session (worker threads, allocator arenas, the cache entry).
    token=$(curl -sf -D - -o /dev/null -H 'x-session-id: mem-warm' "http://127.0.0.1:$P_MEM/v1/bench/k1" |
        tr -d '\r' | sed -n 's/^x-session-token: //Ip') || die "opening the memory node's warm-up session"
    printf 'sessions = { {"mem-warm", "%s"} }\n' "$token" >"$WORK/sessions-mem-warm.lua"
    URL[mem]="http://127.0.0.1:$P_MEM"
    SESS[mem,1]=$WORK/sessions-mem-warm.lua
    run_wrk mem 1 16 2 >/dev/null
    sleep 1
    live0=$(live)
    rss0=$(rss_kb)
    t0=$SECONDS
    per_thread=$(((MEM_SESSIONS + THREADS - 1) / THREADS))
    wrk -t "$THREADS" -c 16 -d 120s -s "$HELPERS/sessions-new.lua" "http://127.0.0.1:$P_MEM" -- "$per_thread" \
        >"$WORK/logs/wrk-sessions.log" 2>&1 &
    wrk_pid=$!
    # Until the node holds them all, or (each wrk thread stops itself after its share)
    # the count stops growing for 2 s.
    last=-1
    stable=0
    while kill -0 "$wrk_pid" 2>/dev/null; do
        n=$(live)
        [ -n "$n" ] && [ "$n" -ge $((live0 + MEM_SESSIONS)) ] && break
        if [ "$n" = "$last" ]; then stable=$((stable + 1)); else stable=0; fi
        [ "$stable" -ge 10 ] && break
        last=$n
        sleep 0.2
    done
    kill -INT "$wrk_pid" 2>/dev/null || true
    wait "$wrk_pid" || true
    secs=$((SECONDS - t0))
    sleep 1
    live1=$(live)
    rss1=$(rss_kb)
    echo "rss0_kb=$rss0 rss1_kb=$rss1 live0=$live0 live1=$live1 secs=$secs" >"$OUT/memory.txt"
    log "memory: $live0 → $live1 live sessions, VmRSS $rss0 → $rss1 kB"
else
    rm -f "$OUT/memory.txt"
fi

# -- report -----------------------------------------------------------------------------

{
    echo "Machine: $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)), $(uname -sr), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); client and servers share the cores."
    echo "Run: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' + uncommitted changes')."
    echo "Command: \`bash scripts/perf.sh\` (PERF_DURATION=$DURATION PERF_ROUNDS=$ROUNDS PERF_THREADS=$THREADS PERF_CONNS=\"$CONNS\" PERF_KEYS=$KEYS PERF_SESSIONS=$SESSIONS PERF_WRITERS_PCT=$WRITERS_PCT PERF_MEM_SESSIONS=$MEM_SESSIONS)."
    echo "wrk: \`wrk -t$THREADS -c{32,64} -d${DURATION}s -s scripts/perf/load.lua\`, a random key per request (1 or $KEYS keys); edgecache requests carry one of $SESSIONS sessions per node and key count (id + token), $WRITERS_PCT% of which wrote before; ${ROUNDS} interleaved rounds."
    echo "Document: $DOC_BYTES bytes of JSON. $(nginx -v 2>&1), edgecache log level ${PERF_EDGE_LOG:-${EDGECACHE_LOG:-info}}, unpinned: edgecache and the ceiling with one actix worker per core, nginx worker_processes auto, wrk -t$THREADS; pinned (-pin): each server on core 0 with one worker, wrk -t1 on core 1."
} >"$WORK/meta.md"
log "total time $((SECONDS - T_START)) s"
echo "Total time of the run: $((SECONDS - T_START)) s (build included)." >>"$WORK/meta.md"
python3 "$HELPERS/perf.py" report "$RESULTS" "$OUT/memory.txt" "$OUT/report.md" --meta "$WORK/meta.md"
