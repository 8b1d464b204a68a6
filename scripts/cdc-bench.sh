#!/usr/bin/env bash
# scripts/cdc-bench.sh — the change feeds compared (issue 17): LISTEN/NOTIFY, whose
# pg_notify runs inside every write, against logical replication, which adds nothing
# to the writing transaction.
#
#     bash scripts/cdc-bench.sh        # as root (PostgreSQL runs as postgres); ~3 min
#
# Starts its own PostgreSQL 15 primary and a streaming replica applying WAL 300 ms
# late (scripts/pg-cluster.sh, wal_level = logical), fsync = off on both, 10,000
# products with ids 1…10000. Then, CB_ROUNDS (3) rounds, each running both feeds in
# turn (the order alternating per round) for every kind of write in CB_MODES:
#
#   CB_NODES (3) edgecache nodes with `origin.change_feed` = notify or logical are
#   started (and stopped after the run, so no feed works in the other's runs);
#   `edgecache loadgen --write-bench MODE`: CB_CLIENTS (32) sessions write through the
#   first node for CB_SECS (10) s (as scripts/write-bench.sh: each session its own id
#   and token chain; a merge patch of `description`, or an increment of `stock`);
#   beside it, `edgecache loadgen --invalidation-probe`: a change written through the
#   first node every ~50 ms, from its acknowledgement until no node serves the old
#   version to a fresh session (invalidation latency under load); after it, 50 more
#   changes with no load (idle).
#
# The table: medians over rounds of writes/s, p50/p99, the logical ÷ notify ratio per
# round (then its median), CPU per write of the nodes and of PostgreSQL (primary and
# replica, the walsenders included), and invalidation latency p50/p99 under load and
# idle. "other CPU" is what the machine spent beside the nodes and PostgreSQL — the
# load generators and anything foreign — in % of its capacity.
#
# Knobs (environment): CB_SECS (10) CB_ROUNDS (3) CB_CLIENTS (32) CB_KEYS (10000)
# CB_NODES (3) CB_MODES ("patch incr") CB_SKIP_BUILD=1 (use the binary as built)
# CB_BIN (the edgecache binary; default target/release/edgecache, built first)
# CB_OUT (target/cdc-bench).
#
# Output: the table on stdout and in $CB_OUT/report.md, raw results in
# $CB_OUT/results.tsv, logs in $CB_OUT/logs/.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

SECS=${CB_SECS:-10}
ROUNDS=${CB_ROUNDS:-3}
CLIENTS=${CB_CLIENTS:-32}
KEYS=${CB_KEYS:-10000}
NODES=${CB_NODES:-3}
read -r -a MODES <<<"${CB_MODES:-patch incr}"
OUT=${CB_OUT:-$ROOT/target/cdc-bench}
T_START=$SECONDS

log() { printf '[cdc-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (the PostgreSQL servers run as postgres via runuser)"
command -v python3 >/dev/null || die "python3 is needed"
command -v curl >/dev/null || die "curl is needed"
for mode in "${MODES[@]}"; do
    case "$mode" in patch | put | incr) ;; *) die "CB_MODES: unknown mode $mode" ;; esac
done
[ "$NODES" -ge 2 ] || die "CB_NODES: at least 2 (invalidations go from one node to the others)"

if [ "${CB_SKIP_BUILD:-0}" != 1 ] && [ -z "${CB_BIN:-}" ]; then
    log "cargo build --release"
    cargo build --release --quiet --bin edgecache
fi
BIN=${CB_BIN:-$ROOT/target/release/edgecache}
[ -x "$BIN" ] || die "missing $BIN"

WORK=$(mktemp -d /tmp/edgecache-cb.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/logs" "$OUT"
# A run copy: a build elsewhere during the run must not replace it.
cp "$BIN" "$WORK/edgecache"
BIN=$WORK/edgecache
NODE_PIDS=()
PG_STARTED=0

stop_nodes() {
    local pid i
    for pid in "${NODE_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${NODE_PIDS[@]}"; do
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    NODE_PIDS=()
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_nodes
    if [ "$PG_STARTED" = 1 ]; then
        cp "${EDGECACHE_TEST_PG_PRIMARY_DATA:-/nonexistent}/log" "$WORK/logs/primary.log" 2>/dev/null || true
        pg_cluster_stop 2>/dev/null
    fi
    rm -rf "$OUT/logs"
    cp -r "$WORK/logs" "$OUT/logs" 2>/dev/null || true
    rm -rf "$WORK"
    [ "$rc" -ne 0 ] && log "exit $rc; logs in $OUT/logs"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# -- PostgreSQL -------------------------------------------------------------------------

# shellcheck source=scripts/perf/pg-bench.sh
source "$ROOT/scripts/perf/pg-bench.sh"
bench_pg_start
write_config() {
    local feed=$1
    cat >"$WORK/node-$feed.toml" <<EOF
[origin]
kind = "postgres"
primary = "$EDGECACHE_TEST_PG_PRIMARY"
replicas = ["$EDGECACHE_TEST_PG_REPLICA"]
change_feed = "$feed"

[session]
idle_lease = "1h"
EOF
}
write_config notify
write_config logical
(cd "$WORK" && EDGECACHE_LOG=warn "$BIN" migrate --config "$WORK/node-logical.toml") >"$WORK/logs/migrate.log" 2>&1 ||
    { cat "$WORK/logs/migrate.log" >&2; die "edgecache migrate"; }
primary_sql -c "INSERT INTO products (id, version, deleted, name, description, price, stock, tags)
    SELECT g::text, 1, false, 'product ' || g, 'a product', 9.5, 1000, '[\"bench\"]'
    FROM generate_series(1, $KEYS) g" -c "ANALYZE products" >/dev/null

# Starts CB_NODES nodes following `feed`; sets TARGETS (comma-separated) and FIRST.
start_nodes() {
    local feed=$1 i port url urls=() ready
    for i in $(seq "$NODES"); do
        port=$(free_port)
        url=http://127.0.0.1:$port
        env -C "$WORK" EDGECACHE_LOG=warn EDGECACHE__SERVER__LISTEN="127.0.0.1:$port" \
            EDGECACHE__SERVER__SHUTDOWN_TIMEOUT=2s EDGECACHE__NODE__ID="bench-$feed-$i" \
            "$BIN" serve --config "$WORK/node-$feed.toml" >>"$WORK/logs/node-$feed-$i.log" 2>&1 &
        NODE_PIDS+=($!)
        urls+=("$url")
    done
    # Each answers and its feed follows (a logical slot waits for running transactions).
    for url in "${urls[@]}"; do
        for i in $(seq 300); do
            ready=$(curl -sf "$url/readyz" 2>/dev/null || true)
            grep -q '"following":true' <<<"$ready" && break
            [ "$i" = 300 ] && die "a $feed node did not follow its feed in 30 s: $ready"
            sleep 0.1
        done
    done
    FIRST=${urls[0]}
    TARGETS=$(IFS=,; echo "${urls[*]}")
}

# -- CPU accounting (as scripts/write-bench.sh) ----------------------------------------

NCPU=$(nproc)
TICK=$(getconf CLK_TCK)
sys_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
tree_ticks() {
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v roots="$*" '
        BEGIN { n = split(roots, r, " "); for (i = 1; i <= n; i++) root[r[i]] = 1 }
        { pid = $1; line = $0; sub(/^[0-9]+ \(.*\) /, "", line); split(line, f, " ")
          parent[pid] = f[2]; t[pid] = f[12] + f[13] + ((pid in root) ? f[14] + f[15] : 0) }
        END { for (p in t) { q = p; d = 0
                  while (!(q in root) && (q in parent) && q > 1 && d < 64) { q = parent[q]; d++ }
                  if (q in root) sum += t[p] }
              print sum + 0 }'
}
pg_roots() {
    head -n 1 "$EDGECACHE_TEST_PG_PRIMARY_DATA/postmaster.pid" "$EDGECACHE_TEST_PG_REPLICA_DATA/postmaster.pid" 2>/dev/null |
        grep -E '^[0-9]+$' | tr '\n' ' '
}

# -- runs -------------------------------------------------------------------------------

RESULTS=$OUT/results.tsv
echo "# round mode feed writes secs writes_per_s p50_us p99_us errors node_cpu_s pg_cpu_s other_pct load_n load_p50_us load_p99_us load_max_us load_missed idle_n idle_p50_us idle_p99_us idle_max_us idle_missed" >"$RESULTS"

# Changes the probe makes during a run: one every ~50 ms (20 ms pause, the polls).
PROBES=$((SECS * 20))
log "$ROUNDS rounds × ${#MODES[@]} kinds × (notify, logical), ${SECS}s each, $CLIENTS writers, $NODES nodes"
for round in $(seq "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then feeds=(notify logical); else feeds=(logical notify); fi
    for mode in "${MODES[@]}"; do
        for feed in "${feeds[@]}"; do
            start_nodes "$feed"
            # A short warm-up: connections, prepared statements, caches.
            "$BIN" loadgen --targets "$FIRST" --write-bench "$mode" --bench-secs 2 --sessions "$CLIENTS" \
                --keys "$KEYS" --collection products --field description --counter-field stock \
                >/dev/null 2>>"$WORK/logs/loadgen.log" || die "warm-up $feed $mode"
            n0=$(tree_ticks "${NODE_PIDS[*]}"); p0=$(tree_ticks "$(pg_roots)"); t0=$EPOCHREALTIME; b0=$(sys_busy)
            "$BIN" loadgen --targets "$TARGETS" --invalidation-probe "$PROBES" --probe-pause-ms 20 \
                --collection products --field description >"$WORK/probe.out" 2>>"$WORK/logs/loadgen.log" &
            probe_pid=$!
            r=$("$BIN" loadgen --targets "$FIRST" --write-bench "$mode" --bench-secs "$SECS" \
                --sessions "$CLIENTS" --keys "$KEYS" --collection products --field description \
                --counter-field stock 2>>"$WORK/logs/loadgen.log") || die "loadgen --write-bench $mode ($feed)"
            b1=$(sys_busy); t1=$EPOCHREALTIME; n1=$(tree_ticks "${NODE_PIDS[*]}"); p1=$(tree_ticks "$(pg_roots)")
            wait "$probe_pid" || die "the invalidation probe ($feed, under load)"
            load=$(sed -n 's/^INVALIDATION_RESULT //p' "$WORK/probe.out")
            idle=$("$BIN" loadgen --targets "$TARGETS" --invalidation-probe 50 --probe-pause-ms 20 \
                --collection products --field description 2>>"$WORK/logs/loadgen.log" |
                sed -n 's/^INVALIDATION_RESULT //p') || die "the invalidation probe ($feed, idle)"
            stop_nodes
            r=$(sed -n 's/^WRITE_RESULT [a-z]* //p' <<<"$r")
            [ -n "$r" ] && [ -n "$load" ] && [ -n "$idle" ] || die "no result from $feed $mode"
            # Other CPU: the machine's busy time beyond the nodes and PostgreSQL.
            cpu=$(awk -v b=$((b1 - b0)) -v n=$((n1 - n0)) -v p=$((p1 - p0)) -v t0="$t0" -v t1="$t1" \
                -v hz="$TICK" -v ncpu="$NCPU" 'BEGIN { printf "%.2f %.2f %.1f\n", n / hz, p / hz, 100 * (b - n - p) / hz / ((t1 - t0) * ncpu) }')
            echo "$round $mode $feed $r $cpu $load $idle" >>"$RESULTS"
            log "round $round $mode $feed: $(cut -d' ' -f3 <<<"$r") writes/s; invalidation p50 under load $(cut -d' ' -f2 <<<"$load") µs, idle $(cut -d' ' -f2 <<<"$idle") µs"
        done
    done
done

# -- report -----------------------------------------------------------------------------

{
    echo "Machine: $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)), $(uname -sr); the load, $NODES nodes and PostgreSQL share the cores."
    echo "Run: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' + uncommitted changes')."
    echo "Command: \`bash scripts/cdc-bench.sh\` (CB_SECS=$SECS CB_ROUNDS=$ROUNDS CB_CLIENTS=$CLIENTS CB_KEYS=$KEYS CB_NODES=$NODES CB_MODES=\"${MODES[*]}\"); PostgreSQL $("$EDGECACHE_TEST_PG_BIN/postgres" --version | awk '{print $3}'), fsync off, wal_level logical, a streaming replica 300 ms behind."
    echo "Total time of the run: $((SECONDS - T_START)) s."
} >"$WORK/meta.md"
python3 - "$RESULTS" "$OUT/report.md" "$WORK/meta.md" <<'EOF'
import statistics, sys
from collections import defaultdict

results, out, meta = sys.argv[1:4]
rows = defaultdict(dict)  # (mode, round) -> feed -> fields
names = None
for line in open(results):
    if line.startswith("#"):
        names = line[1:].split()
        continue
    f = dict(zip(names, line.split()))
    rows[(f["mode"], int(f["round"]))][f["feed"]] = {k: float(v) for k, v in f.items() if k not in ("mode", "feed")}
med = statistics.median
label = {"patch": "PATCH", "put": "PUT", "incr": "increment"}
modes = list(dict.fromkeys(m for m, _ in rows))
lines = [
    "| write | feed | writes/s | logical ÷ notify | p50 / p99 | CPU per write: nodes / PostgreSQL | invalidation under load p50 / p99 (missed) | idle p50 / p99 | other CPU (worst) |",
    "|---|---|---|---|---|---|---|---|---|",
]
for mode in modes:
    rounds = [v for (m, _), v in sorted(rows.items()) if m == mode and {"notify", "logical"} <= v.keys()]
    if not rounds:
        continue
    ratio = med([r["logical"]["writes_per_s"] / r["notify"]["writes_per_s"] for r in rounds])
    for feed in ("notify", "logical"):
        e = lambda k: med([r[feed][k] for r in rounds])
        per = lambda k: med([1e6 * r[feed][k] / max(1, r[feed]["writes"]) for r in rounds])
        lines.append(
            f"| {label.get(mode, mode)} | {feed} | {e('writes_per_s'):,.0f} | {f'**{ratio:.2f}**' if feed == 'logical' else ''} "
            f"| {e('p50_us') / 1000:.1f} / {e('p99_us') / 1000:.1f} ms | {per('node_cpu_s'):.0f} / {per('pg_cpu_s'):.0f} µs "
            f"| {e('load_p50_us') / 1000:.1f} / {e('load_p99_us') / 1000:.1f} ms ({sum(r[feed]['load_missed'] for r in rounds):.0f}) "
            f"| {e('idle_p50_us') / 1000:.1f} / {e('idle_p99_us') / 1000:.1f} ms "
            f"| {max(r[feed]['other_pct'] for r in rounds):.0f} % |"
        )
text = open(meta).read() + "\n" + "\n".join(lines) + "\n\nMedians over rounds; the ratio per round, then its median. Per round:\n\n"
text += "| round | write | notify writes/s | logical writes/s |\n|---|---|---|---|\n"
for (mode, rnd), v in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    g = lambda feed: v[feed]["writes_per_s"] if feed in v else 0
    text += f"| {rnd} | {mode} | {g('notify'):,.0f} | {g('logical'):,.0f} |\n"
open(out, "w").write(text)
print(text)
EOF
