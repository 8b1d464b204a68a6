#!/usr/bin/env bash
# scripts/sampling-ab.sh — what the online consistency checks cost cache hits over
# HTTP, in one run: two release nodes on the embedded store, one sampling 0 and one
# AB_SAMPLE (1 %) of their reads, both pinned to core 0 (one worker each), driven in
# turn by one wrk thread on core 1 (32 connections, AB_SECS s, one live session that
# sends its token, a relaxed document fresh in the cache), AB_ROUNDS rounds with the
# order alternating. Prints requests/s per run and the per-round ratio on ÷ off, and
# the server CPU per request (user + system time of the node process over the run,
# from /proc, divided by the requests wrk counted): on a shared VM throughput moves by
# ±20 % between rounds with neighbours' load, CPU time per request much less.
#
#     bash scripts/sampling-ab.sh     # needs target/release/edgecache and wrk
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${AB_BIN:-$ROOT/target/release/edgecache}
SAMPLE=${AB_SAMPLE:-0.01}
ROUNDS=${AB_ROUNDS:-5}
SECS=${AB_SECS:-5}
WORK=$(mktemp -d /tmp/sampling-ab.XXXXXX)
trap 'kill $(cat "$WORK"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$WORK"' EXIT
start() { # name port sample
  mkdir -p "$WORK/$1"
  taskset -c 0 env -C $WORK/$1 EDGECACHE_LOG=warn EDGECACHE__SERVER__WORKERS=1 EDGECACHE__ORIGIN__PATH=$WORK/$1/db.sqlite \
    EDGECACHE__FLAGS__CONSISTENCY_CHECKS__SAMPLE=$3 EDGECACHE__NODE__ID=$1 $BIN serve --listen 127.0.0.1:$2 > $WORK/$1.log 2>&1 &
  echo $! > $WORK/$1.pid
}
start off 18201 0
start on 18202 "$SAMPLE"
sleep 2
for p in 18201 18202; do
  curl -s -o /dev/null -X PUT -H 'content-type: application/json' -H 'x-session-id: w' localhost:$p/v1/profiles/u1 -d '{"display_name":"x"}'
  T=$(curl -s -D - -o /dev/null -H 'x-session-id: ab-user' localhost:$p/v1/profiles/u1 | grep -i '^x-session-token' | cut -d' ' -f2 | tr -d '\r')
  echo "$T" > $WORK/token-$p
  curl -s -D - -o /dev/null -H 'x-session-id: ab-user' -H "x-session-token: $T" localhost:$p/v1/profiles/u1 | grep -i cache-status
done
# CPU ticks (user + system) of the node with pid $1.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
ratios=() cpu_ratios=()
for round in $(seq "$ROUNDS"); do
  declare -A rps=() cpu=()
  for p in 18201 18202; do
    [ $((round % 2)) = 0 ] && p=$((18201 + 18202 - p))
    T=$(cat "$WORK/token-$p")
    name=$([ $p = 18201 ] && echo off || echo on)
    pid=$(cat "$WORK/$name.pid")
    before=$(ticks "$pid")
    out=$(taskset -c 1 wrk -t1 -c32 -d"${SECS}s" -H 'x-session-id: ab-user' -H "x-session-token: $T" \
        "http://127.0.0.1:$p/v1/profiles/u1")
    after=$(ticks "$pid")
    requests=$(echo "$out" | awk '/requests in/ {print $1}')
    rps[$p]=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    cpu[$p]=$(python3 -c "print(round(($after - $before) / $HZ * 1e6 / $requests, 2))")
  done
  ratio=$(python3 -c "print(round(${rps[18202]} / ${rps[18201]}, 3))")
  cpu_ratio=$(python3 -c "print(round(${cpu[18202]} / ${cpu[18201]}, 3))")
  ratios+=("$ratio") cpu_ratios+=("$cpu_ratio")
  echo "round $round: off ${rps[18201]} req/s ${cpu[18201]} us CPU/req, sampling $SAMPLE ${rps[18202]} req/s ${cpu[18202]} us CPU/req; throughput on/off $ratio, CPU per request on/off $cpu_ratio"
  unset rps cpu
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
echo "median: throughput on/off $(median "${ratios[@]}"), CPU per request on/off $(median "${cpu_ratios[@]}") ($(lscpu | sed -n 's/^Model name: *//p'))"
