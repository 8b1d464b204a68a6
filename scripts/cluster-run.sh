#!/usr/bin/env bash
# The longer multi-node run: three release-built edge nodes behind nginx over
# PostgreSQL with a replica 300 ms behind, session affinity rolled out to 50% of
# sessions, a recorded workload, one node SIGKILLed and restarted mid-run, the history
# checked, and the figures the README quotes:
#
#   * per arm of session-affinity: reads, cache hit ratio, p50/p99 read latency on the
#     nodes (from each node's GET /admin/experiments);
#   * requests forwarded to their session's owner (from /readyz);
#   * sessions rebuilt from their tokens (edgecache_sessions_opened_total{start="rebuilt"}).
#
#   scripts/cluster-run.sh                       # 200 sessions x 200 operations
#   SESSIONS=400 OPS=300 KILL_AFTER=20 scripts/cluster-run.sh
#
# Runs as root (PostgreSQL runs as `postgres`; nginx-light is installed if missing).
# Everything listens on 127.0.0.1 and is stopped at exit. Output: a summary on stdout,
# the history and logs under target/cluster-run/.
set -euo pipefail
cd "$(dirname "$0")/.."

SESSIONS="${SESSIONS:-200}"
OPS="${OPS:-200}"
KEYS="${KEYS:-64}"
KILL_AFTER="${KILL_AFTER:-10}"
out=target/cluster-run
rm -rf "$out" && mkdir -p "$out"
admin_token="cluster-run-admin-token-0123456789abcdef"
# The group's cluster secret and a token key, from the environment as in production.
EDGECACHE__CLUSTER__SECRETS="[{id=\"c1\",secret=\"$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')\"}]"
EDGECACHE__SESSION__KEYS="[{id=\"k1\",secret=\"$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')\"}]"
export EDGECACHE__CLUSTER__SECRETS EDGECACHE__SESSION__KEYS EDGECACHE__SESSION__ACTIVE_KEY=k1

if [ ! -x /usr/sbin/nginx ]; then
    timeout 120 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq --no-install-recommends nginx-light
fi
cargo build --release --locked
bin=target/release/edgecache

# shellcheck source=scripts/pg-cluster.sh
source scripts/pg-cluster.sh
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    [ -f "$out/nginx.pid" ] && kill -TERM "$(cat "$out/nginx.pid")" 2>/dev/null || true
    sleep 0.5
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    pg_cluster_stop
}
trap cleanup EXIT
pg_cluster_start

db="cluster_run_$$"
psql "$EDGECACHE_TEST_PG_PRIMARY" -q -c "CREATE DATABASE $db"
primary="${EDGECACHE_TEST_PG_PRIMARY%/*}/$db"
replica="${EDGECACHE_TEST_PG_REPLICA%/*}/$db"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ports=("$(free_port)" "$(free_port)" "$(free_port)")
lb_port="$(free_port)"

for i in 0 1 2; do
    {
        printf '[server]\nlisten = "127.0.0.1:%s"\n[node]\nid = "n%s"\nregion = "run"\n' "${ports[$i]}" "$i"
        printf '[origin]\nkind = "postgres"\nprimary = "%s"\nreplicas = ["%s"]\nreplica_wait = "1s"\n' "$primary" "$replica"
        printf '[admin]\ntoken = "%s"\n' "$admin_token"
        printf '[flags.defaults]\nsession-affinity = "50%%"\n'
        printf '[cluster.peers]\n'
        for j in 0 1 2; do [ "$j" != "$i" ] && printf 'n%s = "127.0.0.1:%s"\n' "$j" "${ports[$j]}"; done
    } > "$out/n$i.toml"
done
"$bin" migrate --config "$out/n0.toml"

start_node() {
    EDGECACHE_LOG=warn "$bin" serve --config "$out/n$1.toml" >> "$out/n$1.log" 2>&1 &
    pids[$1]=$!
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:${ports[$1]}/readyz" > /dev/null && return 0
        sleep 0.1
    done
    echo "node n$1 did not start" >&2
    return 1
}
for i in 0 1 2; do start_node "$i"; done

abs_out="$(realpath "$out")"
sed -e "s|^pid nginx.pid;|pid $abs_out/nginx.pid;|" \
    -e "s|127.0.0.1:8000|127.0.0.1:$lb_port|" \
    -e "s|127.0.0.1:8081|127.0.0.1:${ports[0]}|" \
    -e "s|127.0.0.1:8082|127.0.0.1:${ports[1]}|" \
    -e "s|127.0.0.1:8083|127.0.0.1:${ports[2]}|" deploy/nginx.conf > "$out/nginx.conf"
nginx -c "$abs_out/nginx.conf" -p "$abs_out"
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$lb_port/healthz" > /dev/null && break; sleep 0.1; done

echo "== workload: $SESSIONS sessions x $OPS operations over $KEYS keys through nginx; n1 killed after ${KILL_AFTER}s"
"$bin" loadgen --targets "http://127.0.0.1:$lb_port" --sessions "$SESSIONS" --ops "$OPS" --keys "$KEYS" \
    --out "$out/history.jsonl" --duration-limit 600 2> "$out/loadgen.log" &
loadgen=$!
sleep "$KILL_AFTER"
kill -KILL "${pids[1]}"
wait "${pids[1]}" 2>/dev/null || true
sleep 1
start_node 1
wait "$loadgen"
tail -n 8 "$out/loadgen.log"

echo "== history"
"$bin" check "$out/history.jsonl" | tail -n 16 || true

echo "== figures"
for i in 0 1 2; do
    curl -fs -H "authorization: Bearer $admin_token" "http://127.0.0.1:${ports[$i]}/admin/experiments" > "$out/experiments-n$i.json"
    curl -fs "http://127.0.0.1:${ports[$i]}/readyz" > "$out/readyz-n$i.json"
    curl -fs "http://127.0.0.1:${ports[$i]}/metrics" > "$out/metrics-n$i.txt"
done
python3 - "$out" <<'PY'
import json, re, sys, pathlib
out = pathlib.Path(sys.argv[1])
arms = {}
for i in range(3):
    report = json.loads((out / f"experiments-n{i}.json").read_text())
    for arm, a in report["experiments"]["session-affinity"]["arms"].items():
        agg = arms.setdefault(arm, {"reads": 0, "hits": 0, "p50": [], "p99": []})
        agg["reads"] += a["reads"]
        agg["hits"] += a["cache_hits"]
        if a["latency_us"]["p50"] is not None:
            agg["p50"].append(a["latency_us"]["p50"]); agg["p99"].append(a["latency_us"]["p99"])
print("| session-affinity arm | reads | hit ratio | p50 (µs, worst node) | p99 (µs, worst node) |")
print("|---|---|---|---|---|")
for arm, a in sorted(arms.items()):
    ratio = a["hits"] / a["reads"] if a["reads"] else float("nan")
    print(f"| {arm} | {a['reads']} | {ratio:.3f} | {max(a['p50'], default='-')} | {max(a['p99'], default='-')} |")
forwarded = sum(json.loads((out / f"readyz-n{i}.json").read_text())["forwarded"] for i in range(3))
rebuilt = 0
for i in range(3):
    m = re.search(r'sessions_opened_total\{start="rebuilt"\} (\d+)', (out / f"metrics-n{i}.txt").read_text())
    rebuilt += int(m.group(1)) if m else 0
print(f"\nrequests forwarded to their owner: {forwarded}")
print(f"sessions rebuilt from their tokens (all nodes, whole run): {rebuilt}")
PY
