#!/usr/bin/env bash
# scripts/write-bench.sh — the PostgreSQL write path against PostgreSQL doing the same
# writes directly (issue 18).
#
#     bash scripts/write-bench.sh        # as root (PostgreSQL runs as postgres); ~9 min
#
# Starts its own PostgreSQL 15 primary and a streaming replica applying WAL 300 ms
# late (scripts/pg-cluster.sh), with fsync = off on both (the cluster's other settings
# as the tests run them), 10,000 products with ids 1…10000, and one edgecache node on
# the primary (and the replica, as a deployment has it), then measures, per write kind:
#
#   edgecache   `edgecache loadgen --write-bench MODE`: WB_CLIENTS (32) sessions, each
#               with its own session id and token chain, one write after another to a
#               random product: patch (merge patch of `description`), put (the whole
#               document) or incr (increment of `stock` by one); no idempotency keys
#   pgbench     pgbench running exactly the statements the node sends for that write,
#               taken from the primary's statement log (log_statement = all) while
#               the node writes once of each kind: same SQL, a random id in place of
#               the one logged, the other parameters as logged; prepared statements
#               (-M prepared), WB_CLIENTS clients; in the node's transactions: the
#               write committed on its own, then the position read after the commit
#               (pgbench on PostgreSQL 15 cannot pipeline two Syncs, so it waits for
#               the write's answer first; WB_REPLAY=pipeline makes this column the
#               one-Sync form below instead)
#   pipeline    (WB_ALSO) the node's transactions under one Sync: \startpipeline
#               BEGIN; write; COMMIT; position read \endpipeline (COMMIT in a pipeline
#               commits at once) — pgbench's best replay of what the node does
#   one-txn     (WB_ALSO) the write and the position read under one Sync in one
#               transaction, the position read before the commit: less work than the
#               node does, and a position it could not use — a bound, not a replay
#   ceiling     loadgen's writes against the write ceiling (benches/write_ceiling.rs):
#               a bare actix-web server sending, per HTTP write, the pgbench column's
#               statements (the plain replay's when that column is another) on a
#               deadpool-postgres pool of WB_POOL (16) as the node sends them — the
#               most a server on this stack (actix-web, tokio-postgres) does with
#               them: "ceiling ÷ pgbench" is what the HTTP hop costs, "edgecache ÷
#               ceiling" what edgecache adds to it
#   no-notify   the same pgbench script without pg_notify (its share of the work);
#               only with WB_FEED=notify: the default logical feed sends none
#
# Every kind is run WB_ROUNDS (3) times, interleaved: each round runs edgecache,
# pgbench and no-notify for every kind, the order of the kinds rotating per round.
# The table shows medians over rounds: writes/s, p50/p99 (edgecache's from loadgen,
# pgbench's from its per-transaction log), the ratio to pgbench from the same round,
# and CPU per write — of the node, of PostgreSQL (every process of the primary and of
# the replica), of the client (loadgen or pgbench) — in µs, from /proc (as
# scripts/perf.sh measures it). "foreign" is what the machine spent beside these, in %
# of its capacity: the cores may be shared with other work.
#
# Knobs (environment): WB_SECS (10, per run) WB_ROUNDS (3) WB_CLIENTS (32) WB_KEYS
# (10000) WB_MODES ("patch put incr") WB_POOL (the node's origin.pool_size; default:
# the configuration's) WB_NODE_BIN (the edgecache binary that serves, e.g. an older
# build for a before/after; default target/release/edgecache, which always runs the
# load) WB_FEED (the node's origin.change_feed: logical, the default, adds nothing to
# the write's statement; notify puts pg_notify in it, as before issue 17)
# WB_REPLAY (exact: the pgbench column's form; or pipeline) WB_ALSO ("pipeline one-txn":
# the other replays to run beside it) WB_SKIP_BUILD=1 (use the built binary) WB_OUT (target/write-bench) WB_PROFILE=1
# (then a profile of the node, below) WB_PIN=1 (the pinned mode, below).
#
# Pinned mode (WB_PIN=1): PostgreSQL — primary and replica, every process — on core 0;
# the node, loadgen and pgbench on core 1. Shared cores (the default) measure what the
# machine does with the client, the node and the database on it together, where
# every µs the node or its HTTP client spends is taken from PostgreSQL. Pinned, the
# database has a core of its own, as it has a machine of its own in a deployment
# (edge nodes are regional, the primary is not): the ratio then says how much of
# PostgreSQL's capacity the node's writes get, against pgbench's.
#
# Output: the table on stdout and in $WB_OUT/report.md, the statements captured from
# the log and the pgbench scripts made of them in $WB_OUT/statements/, raw results in
# $WB_OUT/results.tsv, server logs in $WB_OUT/logs/.

set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

SECS=${WB_SECS:-10}
ROUNDS=${WB_ROUNDS:-3}
CLIENTS=${WB_CLIENTS:-32}
KEYS=${WB_KEYS:-10000}
read -r -a MODES <<<"${WB_MODES:-patch put incr}"
OUT=${WB_OUT:-$ROOT/target/write-bench}
PIN=${WB_PIN:-0}
REPLAY=${WB_REPLAY:-exact}
read -r -a ALSO <<<"${WB_ALSO:-pipeline one-txn}"
T_START=$SECONDS

log() { printf '[write-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (the PostgreSQL servers run as postgres via runuser)"
command -v python3 >/dev/null || die "python3 is needed"
for mode in "${MODES[@]}"; do
    case "$mode" in patch | put | incr) ;; *) die "WB_MODES: unknown mode $mode" ;; esac
done
case "$REPLAY" in exact | pipeline) ;; *) die "WB_REPLAY: exact or pipeline, not $REPLAY" ;; esac
for v in "${ALSO[@]}"; do
    case "$v" in pipeline | one-txn | exact) ;; *) die "WB_ALSO: unknown replay $v" ;; esac
done
# What runs the node and the clients: on core 1 when pinned, PostgreSQL on core 0.
ON_CLIENT_CORE=()
if [ "$PIN" = 1 ]; then
    [ "$(nproc)" -ge 2 ] || die "WB_PIN=1 needs two cores"
    command -v taskset >/dev/null || die "WB_PIN=1 needs taskset (util-linux)"
    ON_CLIENT_CORE=(taskset -c 1)
fi

if [ "${WB_SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release"
    cargo build --release --quiet --bin edgecache
fi
mkdir -p "$OUT"
# shellcheck source=scripts/perf/bench-bin.sh
source "$ROOT/scripts/perf/bench-bin.sh"
CEILING=$(bench_executable write_ceiling "$OUT/write-ceiling-build.log") || exit 1
LOADGEN=$ROOT/target/release/edgecache
NODE=${WB_NODE_BIN:-$LOADGEN}
[ -x "$LOADGEN" ] && [ -x "$NODE" ] || die "missing $LOADGEN or $NODE"

WORK=$(mktemp -d /tmp/edgecache-wb.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK/logs" "$WORK/bin" "$WORK/statements" "$WORK/pgbench" "$OUT"
# Run copies: a build elsewhere during the run must not replace them.
cp "$LOADGEN" "$WORK/bin/loadgen"
cp "$NODE" "$WORK/bin/node"
cp "$CEILING" "$WORK/bin/write-ceiling"
LOADGEN=$WORK/bin/loadgen
NODE=$WORK/bin/node
CEILING=$WORK/bin/write-ceiling
NODE_PID=
CEILING_PID=
PG_STARTED=0

cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    if [ -n "$CEILING_PID" ]; then
        kill -TERM "$CEILING_PID" 2>/dev/null || true
        for i in $(seq 30); do kill -0 "$CEILING_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$CEILING_PID" 2>/dev/null || true
        wait "$CEILING_PID" 2>/dev/null || true
    fi
    if [ -n "$NODE_PID" ]; then
        kill -TERM "$NODE_PID" 2>/dev/null || true
        for i in $(seq 50); do kill -0 "$NODE_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$NODE_PID" 2>/dev/null || true
    fi
    if [ "$PG_STARTED" = 1 ]; then
        cp "${EDGECACHE_TEST_PG_PRIMARY_DATA:-/nonexistent}/log" "$WORK/logs/primary.log" 2>/dev/null || true
        pg_cluster_stop 2>/dev/null
    fi
    rm -rf "$OUT/logs" "$OUT/statements"
    cp -r "$WORK/logs" "$OUT/logs" 2>/dev/null || true
    cp -r "$WORK/statements" "$OUT/statements" 2>/dev/null || true
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
# The postmasters of the primary and the replica.
pg_roots() {
    head -n 1 "$EDGECACHE_TEST_PG_PRIMARY_DATA/postmaster.pid" "$EDGECACHE_TEST_PG_REPLICA_DATA/postmaster.pid" 2>/dev/null |
        grep -E '^[0-9]+$' | tr '\n' ' '
}
if [ "$PIN" = 1 ]; then
    # Every server process now; the backends forked later inherit the postmasters'.
    roots=$(pg_roots)
    [ "$(wc -w <<<"$roots")" = 2 ] || die "cannot find the postmasters to pin"
    for pid in $roots $(for root in $roots; do pgrep -P "$root"; done); do
        taskset -a -p -c 0 "$pid" >/dev/null
    done
    log "pinned: PostgreSQL on core 0; the node, loadgen and pgbench on core 1"
fi
PORT=$(free_port)
URL=http://127.0.0.1:$PORT
cat >"$WORK/node.toml" <<EOF
[origin]
kind = "postgres"
primary = "$EDGECACHE_TEST_PG_PRIMARY"
replicas = ["$EDGECACHE_TEST_PG_REPLICA"]
change_feed = "${WB_FEED:-logical}"
${WB_POOL:+pool_size = $WB_POOL}

[session]
idle_lease = "1h"
EOF
# The node's own tables (migrate seeds the three demo products), then the products.
(cd "$WORK" && EDGECACHE_LOG=warn "$NODE" migrate --config "$WORK/node.toml") >"$WORK/logs/migrate.log" 2>&1 ||
    { cat "$WORK/logs/migrate.log" >&2; die "edgecache migrate"; }
primary_sql -c "INSERT INTO products (id, version, deleted, name, description, price, stock, tags)
    SELECT g::text, 1, false, 'product ' || g, 'a product', 9.5, 1000, '[\"bench\"]'
    FROM generate_series(1, $KEYS) g" -c "ANALYZE products" >/dev/null

log "edgecache on :$PORT$([ -n "${WB_POOL:-}" ] && echo " (pool_size $WB_POOL)")"
env -C "$WORK" EDGECACHE_LOG=warn EDGECACHE__SERVER__LISTEN="127.0.0.1:$PORT" \
    EDGECACHE__SERVER__SHUTDOWN_TIMEOUT=2s "${ON_CLIENT_CORE[@]}" "$NODE" serve --config "$WORK/node.toml" \
    >"$WORK/logs/node.log" 2>&1 &
NODE_PID=$!
for i in $(seq 300); do
    curl -sf -o /dev/null "$URL/readyz" && break
    kill -0 "$NODE_PID" 2>/dev/null || { tail -n 30 "$WORK/logs/node.log" >&2; die "the node exited"; }
    [ "$i" = 300 ] && die "the node does not answer"
    sleep 0.1
done

# -- the statements the node sends ------------------------------------------------------

log "capturing the statements of one write of each kind (log_statement = all)"
PRIMARY_LOG=$EDGECACHE_TEST_PG_PRIMARY_DATA/log
primary_sql -c "ALTER SYSTEM SET log_statement = 'all'" -c "SELECT pg_reload_conf()" >/dev/null
sleep 0.5
offset=$(stat -c %s "$PRIMARY_LOG")
write_once() {
    local mode=$1 id=$2 status
    case "$mode" in
        patch) status=$(curl -s -o /dev/null -w '%{http_code}' -X PATCH "$URL/v1/products/$id" \
            -H 'content-type: application/merge-patch+json' -d '{"description": "captured"}') ;;
        put) status=$(curl -s -o /dev/null -w '%{http_code}' -X PUT "$URL/v1/products/$id" \
            -H 'content-type: application/json' \
            -d '{"name": "product", "description": "captured", "price": 9.5, "stock": 1000, "tags": ["bench"]}') ;;
        incr) status=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$URL/v1/products/$id/increment" \
            -H 'content-type: application/json' -d '{"field": "stock", "by": 1}') ;;
    esac
    [ "${status:0:1}" = 2 ] || die "the $mode of product $id was answered $status"
}
# Twice each: the first also prepares the statements on its connection.
CAPTURE_IDS=()
n=7
for mode in "${MODES[@]}"; do
    write_once "$mode" "$n"
    write_once "$mode" $((n + 1))
    CAPTURE_IDS+=("$mode=$((n + 1))")
    n=$((n + 2))
done
sleep 0.5
primary_sql -c "ALTER SYSTEM RESET log_statement" -c "SELECT pg_reload_conf()" >/dev/null
tail -c +$((offset + 1)) "$PRIMARY_LOG" >"$WORK/statements/log.txt"

# Makes, per mode, the pgbench script of the logged write of its product: the
# statements of that backend from the first that names the product (with the BEGIN or
# START TRANSACTION just before it) to the position read that ends the write.
python3 - "$WORK/statements" "$KEYS" "$REPLAY" "${CAPTURE_IDS[@]}" <<'EOF'
import re, sys

out, keys, replay, captures = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
line_re = re.compile(r"^\S+ \S+ \S+ \[(\d+)\] (LOG|DETAIL):  (.*)$")
entries = []  # (pid, sql, params or None)
for line in open(f"{out}/log.txt", encoding="utf-8", errors="replace"):
    m = line_re.match(line.rstrip("\n"))
    if not m:
        continue
    pid, kind, text = m.groups()
    if kind == "LOG":
        s = re.match(r"(?:statement|execute [^:]+): (.*)$", text)
        if s:
            entries.append([pid, s.group(1), None])
    elif text.startswith("parameters: ") and entries and entries[-1][0] == pid:
        params = {}
        for p in re.finditer(r"\$(\d+) = (NULL|'(?:[^']|'')*')", text):
            params[int(p.group(1))] = p.group(2)
        entries[-1][2] = params

def is_position(sql):
    # The position read that ends a write (pg_current_wal_lsn(), or the insert
    # position in a session with synchronous_commit = off) — not the node's probe of
    # the primary's position (a bare SELECT pg_current_wal_lsn()), which may run on
    # the write's connection between two writes.
    return sql.startswith("SELECT CASE") and "pg_current_wal_lsn()" in sql


def names(params, id_):
    return params and any(v == f"'{id_}'" for v in params.values())


def statements(id_):
    for i, (pid, sql, params) in enumerate(entries):
        if names(params, id_):
            own = [e for e in entries[i:] if e[0] == pid]
            write = []
            for e in own:
                write.append(e)
                if is_position(e[1]):
                    break
            before = [e for e in entries[:i] if e[0] == pid]
            if before and before[-1][1].upper().startswith(("BEGIN", "START TRANSACTION")):
                write.insert(0, before[-1])
            return write
    sys.exit(f"no logged statement names product {id_}")


def pgbench_safe(literal):
    # pgbench reads `:name` anywhere in a statement as a variable: keep a colon in a
    # literal (JSON) from touching a name.
    return re.sub(r":(?=[A-Za-z0-9_])", ": ", literal)


def bench_sql(sql, params, id_):
    if not params:
        return sql
    for n in sorted(params, reverse=True):
        value = params[n]
        sub = ":id" if value == f"'{id_}'" else pgbench_safe(value)
        sql = re.sub(rf"\${n}(?!\d)", sub, sql)
    return sql


def strip_notify(sql):
    # pg_notify(…) with its nested parentheses → NULL; a statement that is only a
    # notification goes.
    if re.fullmatch(r"SELECT pg_notify\([^()]*\)", sql.strip()):
        return None
    i = sql.find("pg_notify(")
    while i >= 0:
        depth, j = 0, i + len("pg_notify")
        while True:
            depth += {"(": 1, ")": -1}.get(sql[j], 0)
            j += 1
            if depth == 0:
                break
        sql = sql[:i] + "NULL" + sql[j:]
        i = sql.find("pg_notify(")
    return sql


for capture in captures:
    mode, id_ = capture.split("=")
    write = statements(id_)
    with open(f"{out}/{mode}.log.txt", "w") as f:
        for pid, sql, params in write:
            f.write(sql + "\n")
            if params:
                f.write("  -- " + ", ".join(f"${n} = {v}" for n, v in sorted(params.items())) + "\n")
    sqls = [bench_sql(sql, params, id_) for _, sql, params in write]
    # What the node pipelines: a write committed on its own with the position read
    # behind it (one round trip).
    pipelined = len(sqls) == 2 and is_position(sqls[1]) and not sqls[0].upper().startswith(("BEGIN", "START"))

    def script(body, form="exact"):
        body = [s + ";" for s in body if s is not None]
        if pipelined and form == "pipeline":
            # The node's two transactions under one Sync: COMMIT executed in a
            # pipeline commits at once, the position read runs after it.
            body = ["\\startpipeline", "BEGIN;", body[0], "COMMIT;", *body[1:], "\\endpipeline"]
        elif pipelined and form == "one-txn":
            # Both statements in one implicit transaction: the position read runs
            # before the commit (less work, and a position the node could not use).
            body = ["\\startpipeline", *body, "\\endpipeline"]
        return f"\\set id random(1, {keys})\n" + "\n".join(body) + "\n"

    variants = {"": script(sqls, replay), "-nonotify": script([strip_notify(s) for s in sqls], replay)}
    if pipelined:
        variants["-exact"] = script(sqls, "exact")
        variants["-pipeline"] = script(sqls, "pipeline")
        variants["-one-txn"] = script(sqls, "one-txn")
    for variant, text in variants.items():
        with open(f"{out}/{mode}{variant}.sql", "w") as f:
            f.write(text)
    print(f"{mode}: {len(write)} statements{' (pipelined)' if pipelined else ''}", file=sys.stderr)
EOF

# -- the write ceiling -------------------------------------------------------------------

# benches/write_ceiling.rs: actix-web + deadpool-postgres sending, per HTTP write, the
# statements of the plain replay (the node's own) as the node sends them — the most a
# server on this stack does with them; what the HTTP hop costs against pgbench, and
# what edgecache adds to it. Beside the node, on the node's core when pinned.
CEILING_PORT=$(free_port)
CEILING_URL=http://127.0.0.1:$CEILING_PORT
ceiling_args=()
for mode in "${MODES[@]}"; do
    script=$WORK/statements/$mode-exact.sql
    [ -f "$script" ] || script=$WORK/statements/$mode.sql
    ceiling_args+=(--statements "$mode=$script")
done
"${ON_CLIENT_CORE[@]}" "$CEILING" --port "$CEILING_PORT" --primary "$EDGECACHE_TEST_PG_PRIMARY" \
    --pool "${WB_POOL:-16}" "${ceiling_args[@]}" >"$WORK/logs/write-ceiling.log" 2>&1 &
CEILING_PID=$!
for i in $(seq 100); do
    curl -s -o /dev/null "$CEILING_URL/" && break
    kill -0 "$CEILING_PID" 2>/dev/null || { cat "$WORK/logs/write-ceiling.log" >&2; die "the write ceiling exited"; }
    [ "$i" = 100 ] && die "the write ceiling does not answer"
    sleep 0.1
done

# -- CPU accounting (the idea of scripts/perf.sh) ---------------------------------------

NCPU=$(nproc)
TICK=$(getconf CLK_TCK)
sys_busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
# utime+stime ticks of the process trees under the given root pids, with what the
# roots' children that ended spent (cutime+cstime: PostgreSQL's backends of pgbench's
# connections end with the run, and the postmaster reaps them).
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
# Children CPU seconds of this shell (the clients, once reaped).
child_secs() {
    times >"$WORK/times.txt"
    CHILD_SECS=$(tail -n 1 "$WORK/times.txt" |
        awk '{ s = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); s += a[1] * 60 + a[2] } print s }')
}
window_start() {
    W_BUSY=$(sys_busy)
    W_NODE=$(tree_ticks "$NODE_PID")
    W_CEIL=$(tree_ticks "$CEILING_PID")
    W_PG=$(tree_ticks "$(pg_roots)")
    child_secs
    W_CHILD=$CHILD_SECS
    W_T0=$EPOCHREALTIME
}
# Sets LOAD to "node_cpu_s pg_cpu_s client_cpu_s foreign_pct ceiling_cpu_s".
window_end() {
    local busy node ceil pg t1=$EPOCHREALTIME
    busy=$(sys_busy)
    node=$(tree_ticks "$NODE_PID")
    ceil=$(tree_ticks "$CEILING_PID")
    pg=$(tree_ticks "$(pg_roots)")
    child_secs
    LOAD=$(awk -v b=$((busy - W_BUSY)) -v n=$((node - W_NODE)) -v p=$((pg - W_PG)) -v c0="$W_CHILD" \
        -v w=$((ceil - W_CEIL)) -v c1="$CHILD_SECS" -v t0="$W_T0" -v t1="$t1" -v hz="$TICK" -v ncpu="$NCPU" '
        BEGIN { c = c1 - c0; f = b / hz - n / hz - w / hz - p / hz - c; if (f < 0) f = 0
                printf "%.2f %.2f %.2f %.1f %.2f\n", n / hz, p / hz, c, 100 * f / ((t1 - t0) * ncpu), w / hz }')
}

# -- runs -------------------------------------------------------------------------------

RESULTS=$OUT/results.tsv
echo "# round mode what writes secs writes_per_s p50_us p99_us errors node_cpu_s pg_cpu_s client_cpu_s foreign_pct ceiling_cpu_s" >"$RESULTS"

# run_edge MODE [URL]: loadgen's writes against the node (or the write ceiling).
run_edge() {
    local mode=$1 url=${2:-$URL} r
    r=$("${ON_CLIENT_CORE[@]}" "$LOADGEN" loadgen --targets "$url" --write-bench "$mode" --bench-secs "$SECS" \
        --sessions "$CLIENTS" --keys "$KEYS" --collection products --field description \
        --counter-field stock 2>>"$WORK/logs/loadgen.log") || die "loadgen --write-bench $mode"
    sed -n 's/^WRITE_RESULT [a-z]* //p' <<<"$r"
}

run_pgbench() {
    local script=$1 prefix=$2 out
    rm -f "$prefix".*
    out=$("${ON_CLIENT_CORE[@]}" pgbench -n -M prepared -c "$CLIENTS" -j 2 -T "$SECS" -f "$script" -l --log-prefix="$prefix" \
        "$EDGECACHE_TEST_PG_PRIMARY" 2>&1) || { echo "$out" >&2; die "pgbench $script"; }
    echo "$out" >>"$WORK/logs/pgbench.log"
    echo "$out" >"$prefix.summary"
    # Transactions, seconds, tps, p50, p99 from the per-transaction log (latency in µs
    # is its third column); failures from the summary.
    python3 - "$prefix" <<'EOF'
import glob, re, sys
lat = []
for path in glob.glob(sys.argv[1] + ".[0-9]*"):
    for line in open(path):
        f = line.split()
        if len(f) >= 3 and f[2].isdigit():
            lat.append(int(f[2]))
lat.sort()
text = open(sys.argv[1] + ".summary").read()
tps = float(re.search(r"tps = ([0-9.]+)", text).group(1))
failed = re.search(r"number of failed transactions: (\d+)", text)
pct = lambda q: lat[round((len(lat) - 1) * q)] if lat else 0
secs = len(lat) / tps if tps else 0
print(len(lat), f"{secs:.3f}", f"{tps:.1f}", pct(0.5), pct(0.99), failed.group(1) if failed else 0)
EOF
}

log "warming up: 2s of each kind through the node and through the write ceiling"
for mode in "${MODES[@]}"; do
    for url in "$URL" "$CEILING_URL"; do
        "$LOADGEN" loadgen --targets "$url" --write-bench "$mode" --bench-secs 2 --sessions "$CLIENTS" \
            --keys "$KEYS" --collection products --field description --counter-field stock \
            >/dev/null 2>>"$WORK/logs/loadgen.log" || die "warm-up $mode ($url)"
    done
done

log "$ROUNDS rounds × ${#MODES[@]} kinds × (edgecache, pgbench, the write ceiling[, pgbench without pg_notify][, other replays]), ${SECS}s each, $CLIENTS clients"
for round in $(seq "$ROUNDS"); do
    order=()
    for i in "${!MODES[@]}"; do order+=("${MODES[$(((i + round - 1) % ${#MODES[@]}))]}"); done
    for mode in "${order[@]}"; do
        whats=(edgecache pgbench ceiling)
        grep -q pg_notify "$WORK/statements/$mode.sql" && whats+=(no-notify)
        for v in "${ALSO[@]}"; do
            [ "$v" != "$REPLAY" ] && [ -f "$WORK/statements/$mode-$v.sql" ] && whats+=("$v")
        done
        for what in "${whats[@]}"; do
            window_start
            case "$what" in
                edgecache) r=$(run_edge "$mode") ;;
                ceiling) r=$(run_edge "$mode" "$CEILING_URL") ;;
                pgbench) r=$(run_pgbench "$WORK/statements/$mode.sql" "$WORK/pgbench/$round-$mode") ;;
                no-notify) r=$(run_pgbench "$WORK/statements/$mode-nonotify.sql" "$WORK/pgbench/$round-$mode-nn") ;;
                *) r=$(run_pgbench "$WORK/statements/$mode-$what.sql" "$WORK/pgbench/$round-$mode-$what") ;;
            esac
            window_end
            [ -n "$r" ] || die "no result from $what $mode"
            echo "$round $mode $what $r $LOAD" >>"$RESULTS"
            log "round $round $mode $what: $(cut -d' ' -f3 <<<"$r") writes/s (node, PostgreSQL, client CPU s; foreign %; write ceiling CPU s: $LOAD)"
        done
    done
done

# -- profile ----------------------------------------------------------------------------

# WB_PROFILE=1: one more edgecache run of the first kind under `perf record` (cpu-clock)
# of the node; its top symbols in $WB_OUT/profile.txt (not part of the table).
if [ "${WB_PROFILE:-0}" = 1 ] && command -v perf >/dev/null; then
    log "profiling the node during ${SECS}s of ${MODES[0]}"
    perf record -q -e cpu-clock -F 999 -g -p "$NODE_PID" -o "$WORK/perf.data" -- sleep "$SECS" \
        >"$WORK/logs/perf-record.log" 2>&1 &
    perf_pid=$!
    run_edge "${MODES[0]}" >/dev/null
    wait "$perf_pid" || true
    {
        echo "## by shared object"
        perf report -i "$WORK/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep '%' | grep -v '^#' || true
        echo "## top symbols (self)"
        perf report -i "$WORK/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null |
            grep '%' | grep -v '^#' | head -n 60 || true
        echo "## top symbols (with children)"
        perf report -i "$WORK/perf.data" --children --sort symbol --stdio -g none 2>/dev/null |
            grep '%' | grep -v '^#' | head -n 80 || true
    } >"$OUT/profile.txt"
fi

# -- report -----------------------------------------------------------------------------

{
    if [ "$PIN" = 1 ]; then
        where="pinned: PostgreSQL (primary and replica) on core 0; the node, loadgen and pgbench on core 1"
    else
        where="client, node and PostgreSQL share the cores"
    fi
    echo "Machine: $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n 1)), $(uname -sr); $where."
    echo "Run: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)$(git -C "$ROOT" diff --quiet 2>/dev/null || echo ' + uncommitted changes'); node binary $(sha256sum "$NODE" | cut -c1-12)${WB_NODE_BIN:+ ($WB_NODE_BIN)}."
    echo "Command: \`bash scripts/write-bench.sh\` (WB_SECS=$SECS WB_ROUNDS=$ROUNDS WB_CLIENTS=$CLIENTS WB_KEYS=$KEYS${WB_POOL:+ WB_POOL=$WB_POOL}${WB_FEED:+ WB_FEED=$WB_FEED}$([ "$PIN" = 1 ] && echo " WB_PIN=1") WB_REPLAY=$REPLAY WB_ALSO=\"${ALSO[*]}\"); PostgreSQL $("$EDGECACHE_TEST_PG_BIN/postgres" --version | awk '{print $3}'), fsync off, a streaming replica 300 ms behind."
    echo "Total time of the run: $((SECONDS - T_START)) s."
} >"$WORK/meta.md"
python3 - "$RESULTS" "$OUT/report.md" "$WORK/meta.md" <<'EOF'
import statistics, sys
from collections import defaultdict

results, out, meta = sys.argv[1:4]
rows = defaultdict(dict)  # (mode, round) -> what -> fields
for line in open(results):
    if line.startswith("#"):
        continue
    f = line.split()
    rnd, mode, what = f[0], f[1], f[2]
    writes, secs, wps, p50, p99, errors, node, pg, client, foreign = f[3:13]
    ceiling = f[13] if len(f) > 13 else "0"
    rows[(mode, rnd)][what] = dict(writes=int(writes), wps=float(wps), p50=int(p50), p99=int(p99),
                                   errors=int(errors), node=float(node), pg=float(pg),
                                   client=float(client), foreign=float(foreign), ceiling=float(ceiling))
med = statistics.median
modes = []
for mode, _ in rows:
    if mode not in modes:
        modes.append(mode)
label = {"patch": "PATCH (merge patch of `description`)", "put": "PUT (whole document)", "incr": "increment"}
lines = [
    "| write | edgecache writes/s | pgbench, same statements | ÷ pgbench | pgbench without pg_notify | pg_notify's share | p50 / p99 edgecache | p50 / p99 pgbench | p99 ÷ pgbench | CPU per write: node / PG (edgecache) / PG (pgbench) / loadgen / pgbench | write ceiling: writes/s (÷ pgbench; edgecache ÷ it), CPU per write: server / PG | errors | worst foreign CPU | other replays by pgbench: writes/s (edgecache ÷ it, PG CPU per write) |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
]
for mode in modes:
    rounds = [v for (m, _), v in sorted(rows.items()) if m == mode and {"edgecache", "pgbench"} <= v.keys()]
    if not rounds:
        continue
    e = lambda k, w="edgecache": med([r[w][k] for r in rounds])
    cpu = lambda r, w, k: 1e6 * r[w][k] / max(1, r[w]["writes"])
    ratio = med([r["edgecache"]["wps"] / r["pgbench"]["wps"] for r in rounds])
    p99r = med([r["edgecache"]["p99"] / max(1, r["pgbench"]["p99"]) for r in rounds])
    notify = all("no-notify" in r for r in rounds)
    share = med([1 - r["pgbench"]["wps"] / r["no-notify"]["wps"] for r in rounds]) if notify else None
    others = sorted({w for r in rounds for w in r} - {"edgecache", "pgbench", "no-notify", "ceiling"})
    has_ceiling = all("ceiling" in r for r in rounds)
    ceiling = (
        f"{e('wps', 'ceiling'):,.0f} ({med([r['ceiling']['wps'] / r['pgbench']['wps'] for r in rounds]):.2f}×; "
        f"**{med([r['edgecache']['wps'] / r['ceiling']['wps'] for r in rounds]):.2f}**), "
        f"{med([cpu(r, 'ceiling', 'ceiling') for r in rounds]):.0f} / {med([cpu(r, 'ceiling', 'pg') for r in rounds]):.0f} µs"
        if has_ceiling else "—")
    others = [w for w in others if all(w in r for r in rounds)]
    also = "; ".join(
        f"{w}: {e('wps', w):,.0f} ({med([r['edgecache']['wps'] / r[w]['wps'] for r in rounds]):.2f}×, "
        f"PG {med([cpu(r, w, 'pg') for r in rounds]):.0f} µs)" for w in others) or "—"
    lines.append(
        f"| {label.get(mode, mode)} | {e('wps'):,.0f} | {e('wps', 'pgbench'):,.0f} | **{ratio:.2f}** "
        + (f"| {e('wps', 'no-notify'):,.0f} | {100 * share:.0f} % " if notify else "| — (none sent) | — ")
        + f"| {e('p50') / 1000:.1f} / {e('p99') / 1000:.1f} ms | {e('p50', 'pgbench') / 1000:.1f} / {e('p99', 'pgbench') / 1000:.1f} ms "
        f"| {p99r:.2f} "
        f"| {med([cpu(r, 'edgecache', 'node') for r in rounds]):.0f} / {med([cpu(r, 'edgecache', 'pg') for r in rounds]):.0f} "
        f"/ {med([cpu(r, 'pgbench', 'pg') for r in rounds]):.0f} / {med([cpu(r, 'edgecache', 'client') for r in rounds]):.0f} "
        f"/ {med([cpu(r, 'pgbench', 'client') for r in rounds]):.0f} µs "
        f"| {ceiling} "
        f"| {sum(r[w]['errors'] for r in rounds for w in r)} "
        f"| {max(r[w]['foreign'] for r in rounds for w in r):.0f} % | {also} |"
    )
text = open(meta).read() + "\n" + "\n".join(lines) + "\n\nMedians over rounds; ratios per round, then their median. Per round:\n\n"
text += "| round | write | edgecache | pgbench | write ceiling | no pg_notify | foreign CPU % (e / p / n) |\n|---|---|---|---|---|---|---|\n"
for (mode, rnd), v in sorted(rows.items(), key=lambda kv: (int(kv[0][1]), kv[0][0])):
    g = lambda w, k: v[w][k] if w in v else 0
    nn = f"{g('no-notify', 'wps'):,.0f}" if "no-notify" in v else "—"
    text += (f"| {rnd} | {mode} | {g('edgecache', 'wps'):,.0f} | {g('pgbench', 'wps'):,.0f} | {g('ceiling', 'wps'):,.0f} | {nn} "
             f"| {g('edgecache', 'foreign')} / {g('pgbench', 'foreign')} / {g('no-notify', 'foreign')} |\n")
open(out, "w").write(text)
print(text)
EOF
