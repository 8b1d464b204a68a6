#!/usr/bin/env bash
# scripts/perf/lib.sh — what the benchmark scripts share (scripts/perf.sh,
# scripts/session-bench.sh): starting and stopping servers on loopback, accounting for
# the machine's other load, and seeding a PostgreSQL `bench` table. Sourced, not run.
# The sourcing script sets LOG_TAG, WORK (its temp directory, with logs/ in it), OUT,
# EDGE (the edgecache binary) and PIDS=() / PG_STARTED=0 before starting anything, and
# `trap cleanup EXIT`.

log() { printf '[%s %s] %s\n' "${LOG_TAG:-bench}" "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

# -- servers and teardown ---------------------------------------------------------------
cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    [ "$PG_STARTED" = 1 ] && pg_cluster_stop 2>/dev/null
    rm -rf "$OUT/logs" && cp -r "$WORK/logs" "$OUT/logs" 2>/dev/null || true
    rm -rf "$WORK"
    [ "$rc" -ne 0 ] && log "exit $rc; server logs in $OUT/logs"
    exit "$rc"
}
# Free TCP ports on 127.0.0.1, all bound at once so they differ.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
EOF
}

# Starts a server in the background, logging to logs/<name>.log; its PID in PID_<name>.
start() {
    local name=$1
    shift
    "$@" >"$WORK/logs/$name.log" 2>&1 &
    PIDS+=("$!")
    printf -v "PID_${name//-/_}" '%s' "$!"
}

# Waits (bounded) until URL answers 2xx; fails showing the server's log.
wait_http() {
    local name=$1 url=$2 pidvar="PID_${1//-/_}" i
    for i in $(seq 300); do
        curl -sf -o /dev/null "$url" && return 0
        kill -0 "${!pidvar}" 2>/dev/null || { tail -n 30 "$WORK/logs/$name.log" >&2; die "$name exited"; }
        sleep 0.1
    done
    tail -n 30 "$WORK/logs/$name.log" >&2
    die "$name does not answer $url"
}

# An edgecache node, run from the temp dir (so no config/<env>.toml of the checkout is
# layered in), pinned to core $EDGE_PIN when that is set. Args: name port config
# [VAR=value…]
start_edge() {
    local name=$1 port=$2 config=$3
    shift 3
    start "$name" ${EDGE_PIN:+taskset -c "$EDGE_PIN"} env -C "$WORK" \
        EDGECACHE_LOG="${PERF_EDGE_LOG:-${EDGECACHE_LOG:-info}}" \
        EDGECACHE__SERVER__LISTEN="127.0.0.1:$port" \
        EDGECACHE__SERVER__SHUTDOWN_TIMEOUT=2s \
        EDGECACHE__NODE__ID="$name" \
        "$@" "$EDGE" serve --config "$config"
    wait_http "$name" "http://127.0.0.1:$port/readyz"
}

# -- the machine's other load -----------------------------------------------------------
#
# The cores are shared (other builds and tests): for each run, the CPU time the whole
# machine spent (/proc/stat) minus what our servers (their process trees, PostgreSQL
# included) and wrk spent is the *foreign* load, in % of the machine's capacity over
# the run; steal (hypervisor) likewise. Before each run we wait (at most
# PERF_QUIET_WAIT s, default 20) for a 0.5 s window with foreign load under
# PERF_QUIET_MAX % (default 15).
NCPU=$(nproc)
TICK=$(getconf CLK_TCK)
QUIET_WAIT=${PERF_QUIET_WAIT:-20}
QUIET_MAX=${PERF_QUIET_MAX:-15}
# "busy steal" ticks of the whole machine.
sys_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $9}' /proc/stat; }
# utime+stime ticks of our servers' process trees (live processes).
our_ticks() {
    local roots="${PIDS[*]}" f
    for f in "${EDGECACHE_TEST_PG_PRIMARY_DATA:-}" "${EDGECACHE_TEST_PG_REPLICA_DATA:-}"; do
        [ -n "$f" ] && [ -f "$f/postmaster.pid" ] && roots+=" $(head -n 1 "$f/postmaster.pid")"
    done
    # (A process may exit between the glob and the read: cat's failure is expected.)
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v roots="$roots" '
        BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) root[r[i]] = 1 }
        { pid = $1; line = $0; sub(/^[0-9]+ \(.*\) /, "", line); split(line, f, " ")
          parent[pid] = f[2]; t[pid] = f[12] + f[13] }
        END { for (p in t) { q = p; d = 0
                  while (!(q in root) && (q in parent) && q > 1 && d < 64) { q = parent[q]; d++ }
                  if (q in root) sum += t[p] }
              print sum + 0 }'
}
# Children CPU seconds of this shell so far (wrk, once reaped), from `times` — run in
# this shell, not a $(…) subshell, whose counters start at zero.
child_secs() {
    times >"$WORK/times.txt"
    CHILD_SECS=$(tail -n 1 "$WORK/times.txt" |
        awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); s += a[1] * 60 + a[2] } print s }')
}
# Start of a measured window: sets W_* globals.
window_start() {
    read -r W_BUSY W_STEAL <<<"$(sys_ticks)"
    W_OURS=$(our_ticks)
    child_secs
    W_CHILD=$CHILD_SECS
    W_T0=$EPOCHREALTIME
}
# End of a window: sets LOAD to "foreign_pct steal_pct servers_cpu_s wrk_cpu_s" (the
# servers' CPU is the servers' trees together: idle ones add next to nothing).
window_end() {
    local busy steal ours t1=$EPOCHREALTIME
    read -r busy steal <<<"$(sys_ticks)"
    ours=$(our_ticks)
    child_secs
    LOAD=$(awk -v b=$((busy - W_BUSY)) -v s=$((steal - W_STEAL)) -v o=$((ours - W_OURS)) \
        -v c0="$W_CHILD" -v c1="$CHILD_SECS" -v t0="$W_T0" -v t1="$t1" -v hz="$TICK" -v n="$NCPU" '
        BEGIN { cap = (t1 - t0) * n; f = (b - o) / hz - (c1 - c0); if (f < 0) f = 0
                printf "%.1f %.1f %.2f %.2f\n", 100 * f / cap, 100 * s / hz / cap, o / hz, c1 - c0 }')
}
# Waits (bounded) for a quiet half second.
wait_quiet() {
    local deadline=$((SECONDS + QUIET_WAIT)) foreign
    while :; do
        window_start
        sleep 0.5
        window_end
        read -r foreign _ _ _ <<<"$LOAD"
        awk -v f="$foreign" -v m="$QUIET_MAX" 'BEGIN { exit !(f < m) }' && break
        [ "$SECONDS" -ge "$deadline" ] && { log "machine still busy (${foreign}% foreign CPU); running anyway"; break; }
    done
}

# -- a PostgreSQL `bench` table of N documents ----------------------------------------

# `edgecache migrate` with CONFIG (its collection `bench`, seeded with k1) on the
# database at URL, then k2…kN as copies of k1's row in one statement (`migrate` writes
# a seed one committed write at a time: 10,000 items took 34 s). Args: config url n
seed_bench() {
    local config=$1 url=$2 n=$3
    (cd "$WORK" && EDGECACHE_LOG=warn "$EDGE" migrate --config "$config") >>"$WORK/logs/migrate.log" 2>&1 ||
        { cat "$WORK/logs/migrate.log" >&2; die "edgecache migrate ($config)"; }
    "$EDGECACHE_TEST_PG_BIN/psql" "$url" -X -q -v ON_ERROR_STOP=1 >>"$WORK/logs/migrate.log" 2>&1 <<SQL ||
DO \$\$
DECLARE cols text;
BEGIN
    SELECT string_agg(quote_ident(column_name), ', ') INTO cols
      FROM information_schema.columns
     WHERE table_schema = current_schema() AND table_name = 'bench' AND column_name <> 'id';
    EXECUTE format('INSERT INTO bench (id, %s) SELECT ''k'' || g, %s FROM bench, generate_series(2, %s) g WHERE bench.id = ''k1''',
                   cols, cols, $n);
END
\$\$;
ANALYZE bench;
SQL
        { cat "$WORK/logs/migrate.log" >&2; die "copying k1 to k2…k$n ($url)"; }
}
