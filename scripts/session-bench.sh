#!/usr/bin/env bash
# scripts/session-bench.sh — the session workload (issue 13): what users choose
# edgecache for, against the policies they pick instead, side by side in one run.
#
#     bash scripts/session-bench.sh     # as root (apt-get, PostgreSQL via runuser); ~6 min
#
# One PostgreSQL primary with a streaming replica 300 ms behind (scripts/pg-cluster.sh),
# a collection `bench` of SB_DOCS (100,000) product documents — in two databases of
# that server, one for edgecache and one for the origin of the others, so that each
# system sees its own writes only — and four systems:
#
#   edgecache     an edgecache node on the primary and the replica, the collection
#                 relaxed (TTL SB_TTL, 60 s, and as much stale-while-revalidate), every
#                 strategy on; clients send their session id and token chain
#   nginx-ttl     nginx proxy_cache (a plain TTL cache, SB_TTL) in front of an origin
#                 that reads every document from the primary (an edgecache node with
#                 the collection strict and no replica)
#   stick         the same nginx and origin, but a session that wrote in the last 30 s
#                 bypasses the cache and reads the primary (`proxy_cache_bypass` on the
#                 X-Recent-Write header the client sets): GitLab's database load
#                 balancer and ProxySQL's stickiness
#   read-through  the origin alone: every read from the primary
#
# Each is driven by `edgecache sessionbench` (a Rust client on hyper; see
# src/sessionbench/mod.rs): SB_SESSIONS (1,000) sessions over SB_CONNS (64) keep-alive
# connections, SB_WRITE_PCT (5) % merge patches of `description` and the rest reads,
# documents picked by Zipf (θ SB_ZIPF, 0.99), for SB_DURATION (10) s per run, after a
# SB_WARM (5) s warm-up of each system, and SB_RUN_WARM (3) s of it again right before
# each of its runs (0: none), so that no system is measured with a cache left idle
# while the others ran. SB_ROUNDS (3) rounds, interleaved, the order rotating per
# round; new sessions every run.
#
# Per run: requests/s, p50/p99 latency, hit ratio (nginx's $upstream_cache_status,
# edgecache's Cache-Status), stale own reads and regressions the sessions saw (from
# the documents' versions), and the primary's statements per 1,000 requests (from
# pg_stat_statements, loaded on the primary for the run: every statement, BEGIN and
# COMMIT included, less the background rate measured with every system idle) and its
# document reads per 1,000 requests (its SELECTs of the table). The foreign CPU of each run is
# recorded as scripts/perf.sh does (scripts/perf/lib.sh).
#
# Output: the table on stdout and in target/session-bench/report.md; raw lines in
# target/session-bench/results.jsonl; server logs in target/session-bench/logs/.
# Knobs (environment): SB_DURATION SB_ROUNDS SB_WARM SB_RUN_WARM SB_DOCS SB_SESSIONS SB_CONNS
# SB_WRITE_PCT SB_ZIPF SB_TTL SB_THREADS (client threads, 2) SB_PG_SYNC (the primary's
# synchronous_commit, off) SB_NODE_BIN (the edgecache node's binary, for a before/after) SB_SYSTEMS ("edgecache
# nginx-ttl stick read-through") SB_OUT PERF_SKIP_BUILD=1 PERF_QUIET_WAIT PERF_QUIET_MAX.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

DURATION=${SB_DURATION:-10}
ROUNDS=${SB_ROUNDS:-3}
WARM=${SB_WARM:-5}
RUN_WARM=${SB_RUN_WARM:-3}
DOCS=${SB_DOCS:-100000}
SESSIONS=${SB_SESSIONS:-1000}
CONNS=${SB_CONNS:-64}
WRITE_PCT=${SB_WRITE_PCT:-5}
ZIPF=${SB_ZIPF:-0.99}
TTL=${SB_TTL:-60s}
THREADS=${SB_THREADS:-2}
PG_SYNC=${SB_PG_SYNC:-off}
read -r -a SYSTEMS <<<"${SB_SYSTEMS:-edgecache nginx-ttl stick read-through}"
for s in "${SYSTEMS[@]}"; do
    case "$s" in edgecache | nginx-ttl | stick | read-through) ;; *) echo "SB_SYSTEMS: unknown system $s" >&2; exit 2 ;; esac
done
OUT=${SB_OUT:-$ROOT/target/session-bench}
HELPERS=$ROOT/scripts/perf
T_START=$SECONDS

LOG_TAG=session-bench
# shellcheck source=scripts/perf/lib.sh
source "$HELPERS/lib.sh"

[ "$(id -u)" -eq 0 ] || die "run as root (apt-get, and the PostgreSQL servers run as postgres via runuser)"
pkgs=()
command -v nginx >/dev/null || pkgs+=(nginx-light)
command -v curl >/dev/null || pkgs+=(curl)
command -v python3 >/dev/null || pkgs+=(python3)
if [ "${#pkgs[@]}" -gt 0 ]; then
    log "installing ${pkgs[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -q </dev/null >/dev/null || die "apt-get update"
    timeout 900 apt-get install -y -q --no-install-recommends "${pkgs[@]}" </dev/null >/dev/null ||
        die "apt-get install ${pkgs[*]}"
fi

if [ "${PERF_SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release"
    cargo build --release --quiet
fi
[ -x "$ROOT/target/release/edgecache" ] || die "missing target/release/edgecache"

# -- the run's directory and teardown ---------------------------------------------------

WORK=$(mktemp -d /tmp/edgecache-sb.XXXXXX)
chmod 755 "$WORK"
# nginx's caches on tmpfs, as a deployment that wants its best would.
CACHE_DIR=$(mktemp -d /dev/shm/edgecache-sb.XXXXXX)
mkdir -p "$WORK/logs" "$WORK/nginx" "$WORK/bin" "$OUT"
cp "$ROOT/target/release/edgecache" "$WORK/bin/"
EDGE=$WORK/bin/edgecache
# SB_NODE_BIN: another build for the edgecache system only (a before/after); the
# origin of the others and the load generator stay target/release/edgecache.
NODE_EDGE=$EDGE
if [ -n "${SB_NODE_BIN:-}" ]; then
    cp "$SB_NODE_BIN" "$WORK/bin/node" || die "SB_NODE_BIN: cannot copy $SB_NODE_BIN"
    NODE_EDGE=$WORK/bin/node
fi
PIDS=()
PG_STARTED=0
trap 'cleanup_all' EXIT
trap 'exit 130' INT TERM
cleanup_all() {
    rm -rf "$CACHE_DIR"
    cleanup
}
read -r P_EDGE P_ORIGIN P_TTL P_STICK <<<"$(free_ports 4)"

# -- PostgreSQL and the nodes -----------------------------------------------------------

log "PostgreSQL: a primary and a replica 300 ms behind (scripts/pg-cluster.sh)"
# shellcheck source=scripts/pg-cluster.sh
source "$ROOT/scripts/pg-cluster.sh"
PG_STARTED=1
EDGECACHE_TEST_REPLICA_DELAY=300ms EDGECACHE_TEST_PG_PRELOAD=pg_stat_statements pg_cluster_start ||
    die "starting PostgreSQL"
PSQL=("$EDGECACHE_TEST_PG_BIN/psql" "$EDGECACHE_TEST_PG_PRIMARY" -X -q -t -A -v ON_ERROR_STOP=1)
"${PSQL[@]}" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" >/dev/null ||
    die "CREATE EXTENSION pg_stat_statements"
# Commits wait for the WAL flush or not (SB_PG_SYNC, default off: every system's writes
# go through the same PostgreSQL, and the run compares caching policies, not disks).
"${PSQL[@]}" -c "ALTER SYSTEM SET synchronous_commit = '$PG_SYNC'" -c "SELECT pg_reload_conf()" >/dev/null ||
    die "setting synchronous_commit"

# Two databases on the one server: `edgecache` for the edgecache node, `origin` for the
# origin behind nginx (and read-through). Each system then sees only its own writes —
# the nginx systems' writes do not invalidate edgecache's cache between its runs, nor
# the other way round — while sharing the server, its CPU and its replica.
"${PSQL[@]}" -c "CREATE DATABASE origin" >/dev/null || die "CREATE DATABASE origin"
ORIGIN_URL=${EDGECACHE_TEST_PG_PRIMARY%/*}/origin
python3 "$HELPERS/perf.py" config "$WORK/edge.toml" --kind postgres --keys 1 --ttl "$TTL" \
    --primary "$EDGECACHE_TEST_PG_PRIMARY" --replica "$EDGECACHE_TEST_PG_REPLICA"
python3 "$HELPERS/perf.py" config "$WORK/origin.toml" --kind postgres --keys 1 --primary "$ORIGIN_URL"
log "seeding k1…k$DOCS in both databases"
seed_bench "$WORK/edge.toml" "$EDGECACHE_TEST_PG_PRIMARY" "$DOCS"
seed_bench "$WORK/origin.toml" "$ORIGIN_URL" "$DOCS"
# Until the replica has replayed the seed (its 300 ms delay, and the copy itself).
for _ in $(seq 300); do
    n=$("$EDGECACHE_TEST_PG_BIN/psql" "$EDGECACHE_TEST_PG_REPLICA" -X -q -t -A -c "SELECT count(*) FROM bench" 2>/dev/null || echo 0)
    [ "$n" = "$DOCS" ] && break
    sleep 0.2
done
[ "$n" = "$DOCS" ] || die "the replica holds $n of $DOCS documents"

log "edgecache (:$P_EDGE) on the primary and the replica; the origin (:$P_ORIGIN) on the primary (database origin)"
EDGE=$NODE_EDGE start_edge edgecache "$P_EDGE" "$WORK/edge.toml"
start_edge origin "$P_ORIGIN" "$WORK/origin.toml"

log "nginx: the TTL cache (:$P_TTL) and the sticky one (:$P_STICK)"
sed -e "s|@WORK@|$WORK|g" -e "s|@CACHE_DIR@|$CACHE_DIR|g" -e "s|@ORIGIN_PORT@|$P_ORIGIN|g" \
    -e "s|@TTL_PORT@|$P_TTL|g" -e "s|@STICK_PORT@|$P_STICK|g" -e "s|@TTL@|$TTL|g" \
    "$ROOT/scripts/session-bench/nginx.conf.in" >"$WORK/nginx.conf"
nginx -t -q -c "$WORK/nginx.conf" -p "$WORK/nginx" 2>"$WORK/logs/nginx-t.log" ||
    { cat "$WORK/logs/nginx-t.log" >&2; die "nginx -t"; }
start nginx nginx -c "$WORK/nginx.conf" -p "$WORK/nginx"
wait_http nginx "http://127.0.0.1:$P_TTL/v1/bench/k1"

declare -A URL=(
    [edgecache]="http://127.0.0.1:$P_EDGE"
    [nginx-ttl]="http://127.0.0.1:$P_TTL"
    [stick]="http://127.0.0.1:$P_STICK"
    [read-through]="http://127.0.0.1:$P_ORIGIN"
)
declare -A POLICY=([edgecache]=edgecache [nginx-ttl]=ttl [stick]=stick [read-through]=read-through)

# -- runs -------------------------------------------------------------------------------

# The primary's statements so far, and those of them that read a document (a SELECT of
# the collection's table without FOR UPDATE), from pg_stat_statements: it counts every
# statement (BEGIN and COMMIT included) as it ends, so a count read after a run is
# exact. Its own queries are left out.
statements() {
    "${PSQL[@]}" -F ' ' -c "
        SELECT coalesce(sum(calls), 0),
               coalesce(sum(calls) FILTER (WHERE query ILIKE 'select%bench%' AND query NOT ILIKE '%for update%'), 0)
          FROM pg_stat_statements WHERE query NOT ILIKE '%pg_stat_statements%'" 2>/dev/null ||
        die "reading pg_stat_statements"
}

# Runs the workload against a system. Args: system secs; prints the result line.
run_bench() {
    local system=$1 secs=$2
    "$EDGE" sessionbench --target "${URL[$system]}" --policy "${POLICY[$system]}" --label "$system" \
        --sessions "$SESSIONS" --connections "$CONNS" --threads "$THREADS" --docs "$DOCS" \
        --zipf "$ZIPF" --write-pct "$WRITE_PCT" --duration "$secs" 2>>"$WORK/logs/sessionbench.log"
}

log "warming up each system (${WARM}s)"
for system in "${SYSTEMS[@]}"; do
    run_bench "$system" "$WARM" >"$WORK/logs/warm-$system.json" || die "warm-up of $system"
done

log "the primary's background rate (every system idle, 5 s)"
read -r s0 _ <<<"$(statements)"
t0=$EPOCHREALTIME
sleep 5
read -r s1 _ <<<"$(statements)"
BACKGROUND=$(awk -v a="$s0" -v b="$s1" -v t0="$t0" -v t1="$EPOCHREALTIME" 'BEGIN { printf "%.2f", (b - a) / (t1 - t0) }')
log "background: $BACKGROUND primary statements/s (health checks, replica sampling)"

RESULTS=$OUT/results.jsonl
: >"$RESULTS"
for round in $(seq "$ROUNDS"); do
    order=()
    for i in "${!SYSTEMS[@]}"; do order+=("${SYSTEMS[$(((i + round - 1) % ${#SYSTEMS[@]}))]}"); done
    for system in "${order[@]}"; do
        wait_quiet
        # A warm-up of its own right before the run: otherwise a system is measured
        # with a cache that sat idle while the others ran (up to 40 s of a 60 s TTL),
        # and which system that is depends on the round's order.
        if [ "$RUN_WARM" != 0 ]; then
            run_bench "$system" "$RUN_WARM" >/dev/null || die "warm-up of $system"
        fi
        read -r s0 r0 <<<"$(statements)"
        t0=$EPOCHREALTIME
        window_start
        line=$(run_bench "$system" "$DURATION") || die "sessionbench against $system"
        window_end
        read -r s1 r1 <<<"$(statements)"
        t1=$EPOCHREALTIME
        read -r foreign steal servers_cpu client_cpu <<<"$LOAD"
        python3 - "$line" "$round" "$s0" "$s1" "$r0" "$r1" "$t0" "$t1" "$BACKGROUND" \
            "$foreign" "$steal" "$servers_cpu" "$client_cpu" >>"$RESULTS" <<'PY'
import json, sys
line, rnd, s0, s1, r0, r1, t0, t1, bg, foreign, steal, scpu, ccpu = sys.argv[1:]
r = json.loads(line)
r.update(round=int(rnd),
         primary_statements=max(0.0, int(s1) - int(s0) - float(bg) * (float(t1) - float(t0))),
         primary_reads=int(r1) - int(r0),
         foreign_pct=float(foreign), steal_pct=float(steal),
         servers_cpu_s=float(scpu), client_cpu_s=float(ccpu))
print(json.dumps(r))
print(f"  {r['label']}: {r['rps']:.0f} req/s, hit ratio {r['hit_ratio']:.3f}, "
      f"{r['primary_statements']:.0f} primary statements, stale own reads {r['stale_own_reads']}, "
      f"regressions {r['regressions']}", file=sys.stderr)
PY
        log "round $round: $system done (foreign CPU $foreign %)"
    done
done

# -- report -----------------------------------------------------------------------------

# The nodes' own counters (tiers, waits, hits), for a look at where reads went.
curl -sf "${URL[edgecache]}/metrics" -o "$WORK/logs/metrics-edgecache.txt" || true
curl -sf "${URL[read-through]}/metrics" -o "$WORK/logs/metrics-origin.txt" || true

{
    echo "Machine: $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)), $(uname -sr); client, servers and PostgreSQL share the cores."
    echo "Run: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' + uncommitted changes'); total $((SECONDS - T_START)) s."
    echo "Command: \`bash scripts/session-bench.sh\` (SB_DURATION=$DURATION SB_ROUNDS=$ROUNDS SB_RUN_WARM=$RUN_WARM SB_DOCS=$DOCS SB_SESSIONS=$SESSIONS SB_CONNS=$CONNS SB_WRITE_PCT=$WRITE_PCT SB_ZIPF=$ZIPF SB_TTL=$TTL)."
    echo "Workload: $SESSIONS sessions over $CONNS connections, $WRITE_PCT % merge patches, Zipf θ $ZIPF over $DOCS documents, ${DURATION} s per run, $ROUNDS interleaved rounds. PostgreSQL 15 primary (synchronous_commit $PG_SYNC) + replica 300 ms behind. $(nginx -v 2>&1). Background: $BACKGROUND primary statements/s with every system idle, subtracted."
} >"$WORK/meta.md"
python3 "$ROOT/scripts/session-bench/report.py" "$RESULTS" "$OUT/report.md" --meta "$WORK/meta.md"
