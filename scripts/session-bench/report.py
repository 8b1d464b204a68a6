#!/usr/bin/env python3
"""The table of scripts/session-bench.sh (standard library only).

    report.py RESULTS OUT [--meta FILE]

RESULTS holds one JSON line per run (`edgecache sessionbench`'s line plus the round,
the primary's statements and document reads during the run and the run's foreign CPU). Per system:
medians over rounds of requests/s, p50/p99 and hit ratio; the primary's statements
and document reads per 1,000 requests (median over rounds); stale own reads, regressions and errors
summed over rounds; the worst foreign CPU. Then edgecache's per-round ratios to the
other systems (medians).
"""

import argparse
import json
import statistics
from collections import defaultdict

ORDER = ["edgecache", "nginx-ttl", "stick", "read-through"]
NAMES = {
    "edgecache": "edgecache (every strategy on)",
    "nginx-ttl": "nginx proxy_cache, plain TTL",
    "stick": "stick to the primary 30 s after a write",
    "read-through": "read-through (every read from the primary)",
}


def per_1000(r, what="primary_statements"):
    return 1000.0 * r[what] / max(1, r["requests"])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("results")
    p.add_argument("out")
    p.add_argument("--meta")
    a = p.parse_args()
    runs = defaultdict(dict)  # system -> round -> line
    with open(a.results) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                runs[r["label"]][r["round"]] = r
    systems = [s for s in ORDER if s in runs]
    med = lambda xs: statistics.median(xs) if xs else float("nan")
    out = []
    if a.meta:
        with open(a.meta) as f:
            out.append(f.read().rstrip())
        out.append("")
    out.append("| system | req/s | p50 ms | p99 ms | hit ratio | primary statements / 1,000 req | primary reads / 1,000 req | stale own reads | regressions | errors | foreign CPU (worst) |")
    out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in systems:
        rs = list(runs[s].values())
        errors = sum(r["read_errors"] + r["write_errors"] + r["transport_errors"] for r in rs)
        out.append(
            f"| {NAMES[s]} | {med([r['rps'] for r in rs]):,.0f} "
            f"| {med([r['p50_us'] for r in rs]) / 1000:.2f} | {med([r['p99_us'] for r in rs]) / 1000:.2f} "
            f"| {med([r['hit_ratio'] for r in rs]):.3f} | {med([per_1000(r) for r in rs]):.1f} "
            f"| {med([per_1000(r, 'primary_reads') for r in rs]):.1f} "
            f"| {sum(r['stale_own_reads'] for r in rs):,} | {sum(r['regressions'] for r in rs):,} "
            f"| {errors:,} | {max(r['foreign_pct'] for r in rs):.0f} % |"
        )
    if "edgecache" in runs:
        out.append("")
        out.append("edgecache against each (median of the per-round ratios):")
        out.append("")
        out.append("| against | throughput × | primary statements / 1,000 req × |")
        out.append("|---|---:|---:|")
        for s in systems:
            if s == "edgecache":
                continue
            rounds = sorted(set(runs["edgecache"]) & set(runs[s]))
            tput = [runs["edgecache"][k]["rps"] / runs[s][k]["rps"] for k in rounds if runs[s][k]["rps"]]
            prim = [per_1000(runs["edgecache"][k]) / per_1000(runs[s][k]) for k in rounds if per_1000(runs[s][k])]
            out.append(f"| {NAMES[s]} | {med(tput):.2f} | {med(prim):.3f} |")
    text = "\n".join(out) + "\n"
    with open(a.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
