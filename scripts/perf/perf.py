#!/usr/bin/env python3
"""Helpers of scripts/perf.sh (standard library only).

    perf.py config OUT --kind embedded|postgres [--primary URL] [--replica URL…]
                       [--keys N] [--ttl DURATION]
        writes an edgecache --config file: a collection `bench` with the fields of
        product.json (relaxed, ttl 1h, for the embedded origin; every field strict —
        read from the primary on every read — for PostgreSQL unless --ttl makes it
        relaxed with that TTL and stale-while-revalidate) and a seed of N items
        k1..kN (written by the node into a fresh embedded store, or by `migrate`).
        Used by scripts/session-bench.sh too.
    perf.py sessions URL OUT --prefix P --count N --writers-pct W --keys K
        opens N sessions on the node at URL: session P-i GETs k1 (the key the 1-key
        runs read), and W% of them first PUT one of k2..kK (so their token carries a
        write watermark); writes `sessions = { {id, token}, … }` to OUT (Lua).
    perf.py report RESULTS MEMORY OUT [--meta FILE]
        prints the table (markdown) and writes it to OUT.
"""

import argparse
import http.client
import json
import os
import statistics
import sys
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
FIELD_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}


def product():
    with open(os.path.join(HERE, "product.json")) as f:
        return json.load(f)


def toml_value(v):
    # JSON and TOML agree on strings (json.dumps escapes), numbers, booleans and arrays
    # of those.
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(v)


def cmd_config(a):
    doc = product()
    out = []
    if a.kind == "postgres":
        out += [
            "[origin]",
            'kind = "postgres"',
            f"primary = {json.dumps(a.primary)}",
            f"replicas = {json.dumps(a.replica or [])}",
            "",
            "[cache]",
            "capacity_bytes = 268435456",
            "estimated_items = 200000",
            "",
        ]
    out += [
        "[session]",
        'idle_lease = "1h"',
        "",
        "[collections.bench]",
    ]
    if a.ttl:
        out.append(
            f'freshness = {{ class = "relaxed", ttl = "{a.ttl}", stale_while_revalidate = "{a.ttl}", stale_if_error = "1h" }}'
        )
        strict = ""
    elif a.kind == "postgres":
        out.append('freshness = { class = "strict" }')
        strict = ', freshness = { class = "strict" }'
    else:
        out.append(
            'freshness = { class = "relaxed", ttl = "1h", stale_while_revalidate = "1h", stale_if_error = "1h" }'
        )
        strict = ""
    out += ["", "[collections.bench.fields]"]
    for name, value in doc.items():
        kind = "json" if isinstance(value, (list, dict)) else FIELD_TYPES[type(value)]
        out.append(f'{name} = {{ type = "{kind}"{strict} }}')
    out.append("")
    fields = ", ".join(f"{k} = {toml_value(v)}" for k, v in doc.items())
    out.append("[seed.bench]")
    for i in range(1, a.keys + 1):
        out.append(f"k{i} = {{ {fields} }}")
    with open(a.out, "w") as f:
        f.write("\n".join(out) + "\n")


def cmd_sessions(a):
    url = urllib.parse.urlsplit(a.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    body = json.dumps(product()).encode()
    writers = round(a.count * a.writers_pct / 100)
    lines = ["sessions = {"]
    wrote = 0
    for i in range(1, a.count + 1):
        sid = f"{a.prefix}-{i:05d}"
        token = None
        # Writers spread over the run: every (count/writers)-th session.
        if writers and i % max(1, a.count // writers) == 0 and wrote < writers:
            key = 2 + (i * 7919) % max(1, a.keys - 1)
            conn.request("PUT", f"/v1/bench/k{key}", body=body,
                         headers={"content-type": "application/json", "x-session-id": sid})
            r = conn.getresponse()
            r.read()
            if r.status not in (200, 201):
                sys.exit(f"PUT k{key} for {sid}: HTTP {r.status}")
            token = r.getheader("x-session-token")
            wrote += 1
        headers = {"x-session-id": sid}
        if token:
            headers["x-session-token"] = token
        conn.request("GET", "/v1/bench/k1", headers=headers)
        r = conn.getresponse()
        r.read()
        if r.status != 200:
            sys.exit(f"GET k1 for {sid}: HTTP {r.status}")
        token = r.getheader("x-session-token")
        lines.append(f'{{"{sid}", "{token}"}},')
    lines.append("}")
    with open(a.out, "w") as f:
        f.write("\n".join(lines) + "\n")
    print(f"{a.count} sessions ({wrote} wrote first) on {a.url} -> {a.out}")


CONFIGS = [
    ("nginx", "nginx proxy_cache"),
    ("ceiling", "actix-web + quick_cache (ceiling)"),
    ("edge", "edgecache, embedded origin (cache hits)"),
    ("edge-pg", "edgecache, PostgreSQL read-through"),
    ("nginx-pin", "pinned: nginx proxy_cache, 1 worker"),
    ("ceiling-pin", "pinned: ceiling, 1 worker"),
    ("edge-pin", "pinned: edgecache, 1 worker"),
]


def base_of(cfg, base):
    """The baseline configuration of cfg's mode: `nginx` or `nginx-pin`."""
    return base + ("-pin" if cfg.endswith("-pin") else "")


def fmt_us(us):
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def cmd_report(a):
    rows = []
    with open(a.results) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            f = line.split()
            rnd, cfg, keys, conns, reqs, dur, rps, p50, p90, p99, nbytes, errors = f[:12]
            foreign, steal = (float(f[12]), float(f[13])) if len(f) >= 14 else (0.0, 0.0)
            srv, cli = (float(f[14]), float(f[15])) if len(f) >= 16 else (float("nan"),) * 2
            rows.append(dict(round=int(rnd), cfg=cfg, keys=int(keys), conns=int(conns),
                             reqs=int(reqs), rps=float(rps), p50=int(p50), p99=int(p99),
                             bytes=int(nbytes), errors=int(errors), foreign=foreign, steal=steal,
                             srv_us=1e6 * srv / max(1, int(reqs)), cli_us=1e6 * cli / max(1, int(reqs))))
    meta = ""
    if a.meta and os.path.exists(a.meta):
        with open(a.meta) as f:
            meta = f.read().rstrip() + "\n\n"
    out = ["# edgecache load benchmark (scripts/perf.sh)", "", meta.rstrip(), ""]
    by = {}
    for r in rows:
        by.setdefault((r["cfg"], r["keys"], r["conns"]), []).append(r)
    rps_of = lambda c: {(r["round"], r["keys"], r["conns"]): r["rps"] for r in rows if r["cfg"] == c}
    nginx_by = {m: rps_of(m) for m in ("nginx", "nginx-pin")}
    ceiling_by = {m: rps_of(m) for m in ("ceiling", "ceiling-pin")}
    pg = {(r["round"], r["keys"], r["conns"]): r["rps"] for r in rows if r["cfg"] == "edge-pg"}
    rounds = sorted({r["round"] for r in rows})
    out += [
        f"Requests/s: median of {len(rounds)} rounds; ratios: median over rounds of the ratio "
        "within the same round; p50/p99: median over rounds of wrk's percentiles; "
        "B/resp: bytes received per response (headers + body); foreign: the highest, over "
        "rounds, CPU share (of the machine) used by processes other than these servers and wrk "
        "during the run; CPU/req: median CPU time per request of the server (its process tree, "
        "PostgreSQL included for the read-through) and of wrk.",
        "",
        "| configuration | keys | conns | req/s | × nginx | × ceiling | p50 | p99 | B/resp | "
        "server CPU/req | wrk CPU/req | errors | foreign |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    groups = sorted({(r["keys"], r["conns"]) for r in rows})
    names = dict(CONFIGS)
    for keys, conns in groups:
        for cfg, _ in CONFIGS:
            rs = by.get((cfg, keys, conns))
            if not rs:
                continue
            rps = statistics.median(r["rps"] for r in rs)
            nginx = nginx_by[base_of(cfg, "nginx")]
            ceiling = ceiling_by[base_of(cfg, "ceiling")]

            def ratio(base):
                vals = [r["rps"] / base[(r["round"], keys, conns)] for r in rs
                        if base.get((r["round"], keys, conns))]
                return f"{statistics.median(vals):.2f}" if vals else "–"

            p50 = statistics.median(r["p50"] for r in rs)
            p99 = statistics.median(r["p99"] for r in rs)
            bpr = sum(r["bytes"] for r in rs) / max(1, sum(r["reqs"] for r in rs))
            errs = sum(r["errors"] for r in rs)
            foreign = max(r["foreign"] for r in rs)
            srv = statistics.median(r["srv_us"] for r in rs)
            cli = statistics.median(r["cli_us"] for r in rs)
            out.append(f"| {names[cfg]} | {keys:,} | {conns} | {rps:,.0f} | {ratio(nginx)} | "
                       f"{ratio(ceiling)} | {fmt_us(p50)} | {fmt_us(p99)} | {bpr:.0f} | "
                       f"{srv:.1f} µs | {cli:.1f} µs | {errs} | {foreign:.0f}% |")
    out.append("")
    # Targets of issue 6, on the 10,000-key / 64-connection row.
    out.append("Targets (issue 13), per keys × conns: unpinned edgecache ÷ nginx ≥ 1.3; pinned ÷ nginx "
               "≥ 1.4 and ÷ ceiling ≥ 0.75; p99 ≤ nginx's (issue 6: ÷ PostgreSQL read-through ≥ 4):")
    out.append("")
    for mode in ("", "-pin"):
        nginx, ceiling = nginx_by["nginx" + mode], ceiling_by["ceiling" + mode]
        for keys, conns in groups:
            e = {r["round"]: r for r in by.get(("edge" + mode, keys, conns), [])}
            n = {r["round"]: r for r in by.get(("nginx" + mode, keys, conns), [])}
            vs_pg = [e[k]["rps"] / pg[(k, keys, conns)] for k in e if pg.get((k, keys, conns))]
            vs_n = [e[k]["rps"] / nginx[(k, keys, conns)] for k in e if nginx.get((k, keys, conns))]
            vs_c = [e[k]["rps"] / ceiling[(k, keys, conns)] for k in e if ceiling.get((k, keys, conns))]
            if not e:
                continue
            p99e = statistics.median(r["p99"] for r in e.values())
            p99n = statistics.median(r["p99"] for r in n.values()) if n else float("nan")
            med = lambda v: f"{statistics.median(v):.2f}" if v else "–"
            label = "pinned (servers on core 0, 1 worker; wrk on core 1)" if mode else "unpinned"
            out.append(f"- {label}, {keys:,} keys, {conns} conns: × nginx {med(vs_n)}, × ceiling {med(vs_c)}"
                       + (f", × PG read-through {med(vs_pg)}" if vs_pg else "")
                       + f"; p99 {fmt_us(p99e)} vs nginx {fmt_us(p99n)}")
    out.append("")
    # Noise: the spread of nginx's (and the ceiling's) requests/s across rounds.
    out.append("Machine noise: (max − min) / median of requests/s across rounds, per configuration:")
    out.append("")
    for cfg in ("nginx", "ceiling", "nginx-pin", "ceiling-pin"):
        parts = []
        for keys, conns in groups:
            rs = by.get((cfg, keys, conns), [])
            if len(rs) >= 2:
                v = [r["rps"] for r in rs]
                parts.append(f"{keys:,} keys/{conns} conns {100 * (max(v) - min(v)) / statistics.median(v):.1f}%")
        if parts:
            out.append(f"- {names[cfg]}: " + ", ".join(parts))
    busy = [r for r in rows if r["foreign"] >= 10 or r["steal"] >= 5]
    out.append(f"- runs with ≥ 10% foreign CPU or ≥ 5% steal: {len(busy)} of {len(rows)}"
               + (": " + ", ".join(f"round {r['round']} {r['cfg']} {r['keys']:,}/{r['conns']} "
                                   f"({r['foreign']:.0f}%/{r['steal']:.0f}%)" for r in busy)
                  if busy else ""))
    out.append("")
    if a.memory and os.path.exists(a.memory):
        with open(a.memory) as f:
            m = dict(line.split("=", 1) for line in f.read().split() if "=" in line)
        rss0, rss1 = int(m["rss0_kb"]), int(m["rss1_kb"])
        live0, live1 = int(m["live0"]), int(m["live1"])
        n = live1 - live0
        per = (rss1 - rss0) * 1024 / n if n > 0 else float("nan")
        out += [
            "Memory per live session (one embedded-origin node; each session opened by one GET "
            "of a cached item, so it holds one read watermark):",
            "",
            f"- VmRSS with {live0:,} live session(s): {rss0 / 1024:.1f} MiB; with {live1:,}: "
            f"{rss1 / 1024:.1f} MiB → **{per:,.0f} bytes per live session** "
            f"({n:,} sessions in {m.get('secs', '?')} s)",
            "",
        ]
    text = "\n".join(out)
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(text)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("config")
    c.add_argument("out")
    c.add_argument("--kind", choices=["embedded", "postgres"], required=True)
    c.add_argument("--primary")
    c.add_argument("--keys", type=int, default=10000)
    c.add_argument("--replica", action="append")
    c.add_argument("--ttl")
    s = sub.add_parser("sessions")
    s.add_argument("url")
    s.add_argument("out")
    s.add_argument("--prefix", required=True)
    s.add_argument("--count", type=int, default=1000)
    s.add_argument("--writers-pct", type=float, default=10)
    s.add_argument("--keys", type=int, default=10000)
    r = sub.add_parser("report")
    r.add_argument("results")
    r.add_argument("memory")
    r.add_argument("out")
    r.add_argument("--meta")
    a = p.parse_args()
    {"config": cmd_config, "sessions": cmd_sessions, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    main()
