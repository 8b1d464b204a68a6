//! The dashboard page: server-rendered HTML with inline SVG charts, no script. It
//! reloads itself (`<meta http-equiv="refresh">`), carries its styles in one
//! `<style>` element allowed by the response's Content-Security-Policy nonce, and lays
//! its tables and charts out in a grid that folds to one column on a phone.

use std::fmt::Write;

use edgecache_flags::Strategy;

use super::html::Escaped;
use super::svg::{self, Series, Unit};
use crate::metrics::{ArmPoint, CheckOutcome, Snapshot, CHECK_OUTCOMES};

/// What a page shows.
pub struct PageData<'a> {
    pub node_id: &'a str,
    pub flag_source: &'a str,
    /// The counters as of this request (the tables).
    pub now: &'a Snapshot,
    /// The ring, oldest first (the charts).
    pub history: &'a [std::sync::Arc<Snapshot>],
    /// Seconds between reloads.
    pub refresh_secs: u64,
    /// The CSP nonce of the page's `<style>`.
    pub nonce: &'a str,
}

const STYLE: &str = "\
:root{color-scheme:light dark;--fg:#1b1f24;--muted:#5b6570;--bg:#fff;--card:#f5f7fa;--line:#d5dae0}\
@media (prefers-color-scheme:dark){:root{--fg:#e6e9ed;--muted:#9aa4ae;--bg:#111417;--card:#1b2026;--line:#333b44}}\
body{font:15px/1.4 system-ui,sans-serif;margin:0;padding:1rem;background:var(--bg);color:var(--fg)}\
h1{font-size:1.3rem;margin:0 0 .25rem}h2{font-size:1.1rem;margin:1.5rem 0 .5rem}h3{font-size:1rem;margin:1rem 0 .25rem}\
.meta{color:var(--muted);margin:0 0 1rem}\
.scroll{overflow-x:auto}table{border-collapse:collapse;min-width:100%;font-variant-numeric:tabular-nums}\
th,td{padding:.3rem .6rem;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}\
th:first-child,td:first-child{text-align:left}\
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:.75rem;margin-top:.75rem}\
figure{margin:0;background:var(--card);border-radius:6px;padding:.5rem}figcaption{font-size:.85rem;color:var(--muted)}\
svg.chart{width:100%;height:auto;display:block}\
.axis{fill:none;stroke:var(--line)}.tick{font-size:9px;fill:var(--muted);text-anchor:end}.tick.end{text-anchor:end}\
.line{fill:none;stroke-width:1.8;stroke-linecap:round;stroke-linejoin:round}\
.s0{stroke:#1f77b4}.s1{stroke:#ff7f0e}.s2{stroke:#2ca02c}.s3{stroke:#d62728}.s4{stroke:#9467bd}.s5{stroke:#8c564b}.s6{stroke:#e377c2}.s7{stroke:#7f7f7f}\
.k0{color:#1f77b4}.k1{color:#ff7f0e}.k2{color:#2ca02c}.k3{color:#d62728}.k4{color:#9467bd}.k5{color:#8c564b}.k6{color:#e377c2}.k7{color:#7f7f7f}\
.bad{color:#d62728;font-weight:600}\
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:.75rem}\
.card{background:var(--card);border-radius:6px;padding:.5rem .75rem}.card dl{display:grid;grid-template-columns:auto auto;gap:.1rem .75rem;margin:.25rem 0}\
.card dd{margin:0;text-align:right;font-variant-numeric:tabular-nums}\
form.logout{float:right}button{font:inherit}summary{cursor:pointer;color:var(--muted);margin:.25rem 0}\
@media (max-width:600px){body{padding:.5rem}th,td{padding:.25rem .4rem}}";

/// The whole page.
pub fn render(data: &PageData<'_>) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let _ = write!(
        out,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1"><meta http-equiv="refresh" content="{refresh}"><title>edgecache · {node}</title><style nonce="{nonce}">{STYLE}</style></head><body>"#,
        refresh = data.refresh_secs,
        node = Escaped(data.node_id),
        nonce = Escaped(data.nonce),
    );
    let _ = write!(
        out,
        r#"<form class="logout" method="post" action="/admin/logout"><button type="submit">Log out</button></form><h1>edgecache <span id="node">{node}</span></h1><p class="meta">Flags from {source} · {n} snapshots over the last {span} · reloads every {refresh} s</p>"#,
        node = Escaped(data.node_id),
        source = Escaped(data.flag_source),
        n = data.history.len(),
        span = history_span(data.history),
        refresh = data.refresh_secs,
    );
    experiments(&mut out, data);
    node_figures(&mut out, data);
    out.push_str("</body></html>");
    out
}

fn history_span(history: &[std::sync::Arc<Snapshot>]) -> String {
    match (history.first(), history.last()) {
        (Some(first), Some(last)) => format!("{} s", (last.at_ms - first.at_ms) / 1000),
        _ => "0 s".to_owned(),
    }
}

/// Per strategy flag: a table of its arms, then a chart per metric with a line per
/// arm.
fn experiments(out: &mut String, data: &PageData<'_>) {
    out.push_str("<h2>Experiments</h2>");
    for strategy in Strategy::ALL {
        let arms: Vec<&ArmPoint> = data.now.arms.iter().filter(|a| a.strategy == strategy).collect();
        if arms.is_empty() {
            continue;
        }
        let flag = strategy.as_str();
        let _ = write!(
            out,
            r#"<section class="flag" data-flag="{f}"><h3>{f} <small>({name})</small></h3><div class="scroll"><table><thead><tr><th>arm</th><th>sessions</th><th>reads</th><th>hit ratio</th><th>stale own reads</th><th>regressions</th><th>p50</th><th>p99</th><th>checks</th><th>violations</th><th>nines</th></tr></thead><tbody>"#,
            f = Escaped(flag),
            name = Escaped(strategy.flag_name()),
        );
        for (i, arm) in arms.iter().enumerate() {
            arm_row(out, flag, i, arm);
        }
        // A flag with one arm compares nothing: its charts fold away.
        out.push_str(if arms.len() > 1 {
            "</tbody></table></div><div class=\"grid\">"
        } else {
            "</tbody></table></div><details><summary>Charts (one arm: nothing to compare)</summary><div class=\"grid\">"
        });
        let names: Vec<&str> = arms.iter().map(|a| a.label.as_str()).collect();
        for (metric, title, unit) in ARM_CHARTS {
            let series: Vec<Series<'_>> = names
                .iter()
                .map(|label| Series {
                    name: label,
                    points: arm_points(data.history, strategy, label, metric),
                })
                .collect();
            svg::chart(out, flag, metric, title, unit, &series);
        }
        out.push_str(if arms.len() > 1 {
            "</div></section>"
        } else {
            "</div></details></section>"
        });
    }
}

/// The charts of every flag, by metric name, title and unit.
const ARM_CHARTS: [(&str, &str, Unit); 7] = [
    ("reads", "Reads per second", Unit::Number),
    ("hit_ratio", "Hit ratio", Unit::Ratio),
    ("stale_own_rate", "Stale-own-read rate", Unit::Ratio),
    ("regressions", "Regressions per second", Unit::Number),
    ("p50", "p50 read latency", Unit::Micros),
    ("p99", "p99 read latency", Unit::Micros),
    (
        "violation_rate",
        "Consistency checks: violation rate",
        Unit::Ratio,
    ),
];

fn arm_row(out: &mut String, flag: &str, i: usize, arm: &ArmPoint) {
    let ratio = |n: u64| {
        if arm.reads == 0 {
            "–".to_owned()
        } else {
            svg::percent(n as f64 / arm.reads as f64)
        }
    };
    let latency = |v: Option<u64>| v.map_or("–".to_owned(), |v| svg::micros(v as f64));
    let violations = violations_of(arm);
    let judged = violations + arm.checks[CheckOutcome::Ok as usize];
    let bad = |n: u64| if n > 0 { " bad" } else { "" };
    let _ = write!(
        out,
        r#"<tr class="arm" data-flag="{flag}" data-arm="{label}"><td><span class="k{k}">■</span> {label}</td><td class="sessions">{sessions}</td><td class="reads">{reads}</td><td class="hit-ratio">{hits}</td><td class="stale-own{so_bad}">{stale} ({stale_rate})</td><td class="regressions{re_bad}">{regressions}</td><td class="p50">{p50}</td><td class="p99">{p99}</td><td class="checks">{judged}</td><td class="violations{v_bad}" title="{detail}">{violations}</td><td class="nines">{nines}</td></tr>"#,
        flag = Escaped(flag),
        label = Escaped(&arm.label),
        k = i % 8,
        sessions = arm.sessions,
        reads = arm.reads,
        hits = ratio(arm.hits),
        stale = arm.stale_own_reads,
        stale_rate = ratio(arm.stale_own_reads),
        so_bad = bad(arm.stale_own_reads),
        regressions = arm.regressions_served,
        re_bad = bad(arm.regressions_served),
        p50 = latency(arm.p50_total_us),
        p99 = latency(arm.p99_total_us),
        v_bad = bad(violations),
        detail = check_detail(arm),
        nines = nines(violations, judged),
    );
}

/// The checks of `arm` that found a violation, so far.
fn violations_of(arm: &ArmPoint) -> u64 {
    CHECK_OUTCOMES
        .iter()
        .filter(|o| o.is_violation())
        .map(|o| arm.checks[*o as usize])
        .sum()
}

/// `stale_own 3, regression 0, …` for a tooltip.
fn check_detail(arm: &ArmPoint) -> String {
    CHECK_OUTCOMES
        .iter()
        .map(|o| format!("{} {}", o.as_str(), arm.checks[*o as usize]))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The share of judged checks without a violation, in nines: `-log10(violations /
/// judged)`; with no violation, at least `log10(judged)`.
pub fn nines(violations: u64, judged: u64) -> String {
    if judged == 0 {
        return "–".to_owned();
    }
    if violations == 0 {
        return format!("≥ {:.1}", (judged as f64).log10());
    }
    let nines = -(violations as f64 / judged as f64).log10();
    // Every check a violation: zero nines (not "-0.00").
    format!("{:.2}", nines.max(0.0).abs())
}

/// One arm's points of `metric` over the ring: rates between neighbours, latency of
/// each interval.
fn arm_points(
    history: &[std::sync::Arc<Snapshot>],
    strategy: Strategy,
    label: &str,
    metric: &str,
) -> Vec<(f64, Option<f64>)> {
    let Some(last) = history.last() else {
        return Vec::new();
    };
    let x = |s: &Snapshot| (s.at_ms as f64 - last.at_ms as f64) / 1000.0;
    history
        .windows(2)
        .map(|pair| {
            let (before, after) = (&pair[0], &pair[1]);
            let a = after.arm(strategy, label);
            let b = before.arm(strategy, label);
            let seconds = (after.at_ms.saturating_sub(before.at_ms)) as f64 / 1000.0;
            let delta = |f: fn(&ArmPoint) -> u64| match (a, b) {
                (Some(a), Some(b)) => f(a).saturating_sub(f(b)),
                (Some(a), None) => f(a),
                _ => 0,
            };
            let reads = delta(|p| p.reads);
            let per_read = |n: u64| (reads > 0).then(|| n as f64 / reads as f64);
            let value = match metric {
                "reads" => a.map(|_| reads as f64 / seconds.max(0.001)),
                "hit_ratio" => per_read(delta(|p| p.hits)),
                "stale_own_rate" => per_read(delta(|p| p.stale_own_reads)),
                "regressions" => a.map(|_| delta(|p| p.regressions_served) as f64 / seconds.max(0.001)),
                "p50" => a.and_then(|a| a.p50_us).map(|v| v as f64),
                "p99" => a.and_then(|a| a.p99_us).map(|v| v as f64),
                "violation_rate" => {
                    let violations = delta(violations_of);
                    let judged = violations + delta(|p| p.checks[CheckOutcome::Ok as usize]);
                    (judged > 0).then(|| violations as f64 / judged as f64)
                }
                _ => None,
            };
            (x(after), value)
        })
        .collect()
}

/// The node-wide figures: cache, sessions, origin tiers, cluster; a card each with
/// its numbers now and a chart over the ring.
fn node_figures(out: &mut String, data: &PageData<'_>) {
    let n = &data.now.node;
    let hit_ratio = if n.reads == 0 {
        "–".to_owned()
    } else {
        svg::percent(n.cache_hits as f64 / n.reads as f64)
    };
    out.push_str("<h2>Node</h2><div class=\"cards\">");
    card(
        out,
        "cache",
        "Cache",
        &[
            ("entries", n.cache_entries.to_string()),
            ("size", svg::bytes(n.cache_bytes as f64)),
            ("hit ratio", hit_ratio),
        ],
    );
    card(
        out,
        "sessions",
        "Sessions",
        &[
            ("live", n.live_sessions.to_string()),
            ("opened (new)", n.sessions_new.to_string()),
            ("rebuilt from tokens", n.sessions_rebuilt.to_string()),
        ],
    );
    card(
        out,
        "origin",
        "Origin tiers",
        &[
            ("reads from the primary", n.primary_reads.to_string()),
            ("reads from a replica", n.replica_reads.to_string()),
            ("replica waits", n.replica_waits.to_string()),
            ("primary fallbacks", n.primary_fallbacks.to_string()),
        ],
    );
    card(
        out,
        "cluster",
        "Cluster",
        &[
            (
                "peers in rotation",
                format!("{} of {}", n.peers_in_rotation, n.peers),
            ),
            ("forwards", n.forwards.to_string()),
            ("forward failures", n.forward_failures.to_string()),
        ],
    );
    out.push_str("</div><div class=\"grid\">");
    let h = data.history;
    let node_chart = |out: &mut String, metric: &str, title: &str, unit: Unit, lines: &[(&str, NodeLine)]| {
        let series: Vec<Series<'_>> = lines
            .iter()
            .map(|(name, f)| Series {
                name,
                points: node_points(h, *f),
            })
            .collect();
        svg::chart(out, "node", metric, title, unit, &series);
    };
    node_chart(
        out,
        "cache_hit_ratio",
        "Cache hit ratio",
        Unit::Ratio,
        &[("hit ratio", |a, b, _| {
            let reads = a.node.reads.saturating_sub(b.node.reads);
            (reads > 0).then(|| a.node.cache_hits.saturating_sub(b.node.cache_hits) as f64 / reads as f64)
        })],
    );
    node_chart(
        out,
        "cache_bytes",
        "Cache size",
        Unit::Bytes,
        &[("bytes", |a, _, _| Some(a.node.cache_bytes as f64))],
    );
    node_chart(
        out,
        "live_sessions",
        "Live sessions",
        Unit::Number,
        &[("live", |a, _, _| Some(a.node.live_sessions as f64))],
    );
    node_chart(
        out,
        "origin_reads",
        "Origin reads per second",
        Unit::Number,
        &[
            ("primary", |a, b, s| {
                Some(a.node.primary_reads.saturating_sub(b.node.primary_reads) as f64 / s)
            }),
            ("replica", |a, b, s| {
                Some(a.node.replica_reads.saturating_sub(b.node.replica_reads) as f64 / s)
            }),
            ("replica waits", |a, b, s| {
                Some(a.node.replica_waits.saturating_sub(b.node.replica_waits) as f64 / s)
            }),
            ("fallbacks", |a, b, s| {
                Some(a.node.primary_fallbacks.saturating_sub(b.node.primary_fallbacks) as f64 / s)
            }),
        ],
    );
    node_chart(
        out,
        "forwards",
        "Forwards per second",
        Unit::Number,
        &[("forwards", |a, b, s| {
            Some(a.node.forwards.saturating_sub(b.node.forwards) as f64 / s)
        })],
    );
    out.push_str("</div>");
}

/// A node-wide value between two neighbouring snapshots: `f(after, before, seconds
/// between)`.
type NodeLine = fn(&Snapshot, &Snapshot, f64) -> Option<f64>;

fn card(out: &mut String, id: &str, title: &str, rows: &[(&str, String)]) {
    let _ = write!(
        out,
        r#"<div class="card" id="{}"><h3>{}</h3><dl>"#,
        Escaped(id),
        Escaped(title)
    );
    for (name, value) in rows {
        let _ = write!(out, "<dt>{}</dt><dd>{}</dd>", Escaped(name), Escaped(value));
    }
    out.push_str("</dl></div>");
}

/// A node-wide line over the ring: `f(after, before, seconds between)` per pair of
/// neighbours.
fn node_points(
    history: &[std::sync::Arc<Snapshot>],
    f: fn(&Snapshot, &Snapshot, f64) -> Option<f64>,
) -> Vec<(f64, Option<f64>)> {
    let Some(last) = history.last() else {
        return Vec::new();
    };
    history
        .windows(2)
        .map(|pair| {
            let seconds = (pair[1].at_ms.saturating_sub(pair[0].at_ms) as f64 / 1000.0).max(0.001);
            (
                (pair[1].at_ms as f64 - last.at_ms as f64) / 1000.0,
                f(&pair[1], &pair[0], seconds),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::metrics::NodePoint;

    fn arm(strategy: Strategy, label: &str, reads: u64) -> ArmPoint {
        ArmPoint {
            strategy,
            label: label.to_owned(),
            sessions: 2,
            reads,
            hits: reads / 2,
            stale_own_reads: 1,
            regressions_served: 0,
            p50_us: Some(100),
            p99_us: Some(900),
            p50_total_us: Some(100),
            p99_total_us: Some(900),
            checks: [10, 1, 0, 0, 2],
        }
    }

    #[test]
    fn the_page_has_a_row_per_arm_a_chart_per_metric_and_escapes_what_it_shows() {
        let snapshots: Vec<Arc<Snapshot>> = (0..3u64)
            .map(|i| {
                Arc::new(Snapshot {
                    at_ms: 1_000_000 + i * 10_000,
                    arms: vec![
                        arm(Strategy::ReadYourWrites, "on", 100 * i),
                        arm(Strategy::ReadYourWrites, "<img src=x>", 50 * i),
                    ],
                    node: NodePoint::default(),
                })
            })
            .collect();
        let page = render(&PageData {
            node_id: "edge-\"1\"",
            flag_source: "unleash",
            now: &snapshots[2],
            history: &snapshots,
            refresh_secs: 10,
            nonce: "abc",
        });
        assert_eq!(page.matches("<tr class=\"arm\"").count(), 2);
        assert!(!page.contains("<img"), "arm labels are escaped");
        assert!(page.contains("data-arm=\"&lt;img src=x&gt;\""));
        assert!(page.contains("edge-&quot;1&quot;"));
        for (metric, _, _) in ARM_CHARTS {
            assert!(
                page.contains(&format!(
                    "data-flag=\"read-your-writes\" data-metric=\"{metric}\""
                )),
                "{metric}"
            );
        }
        assert!(page.contains("<style nonce=\"abc\">"));
        assert!(!page.contains("<script"));
        assert!(
            page.contains("<td class=\"nines\">1.04</td>"),
            "1 violation in 11 judged"
        );
    }

    #[test]
    fn nines_count_the_share_without_violations() {
        assert_eq!(nines(0, 0), "–");
        assert_eq!(nines(1, 1000), "3.00");
        assert_eq!(nines(0, 1000), "≥ 3.0");
        assert_eq!(nines(500, 1000), "0.30");
        assert_eq!(nines(7, 7), "0.00");
    }
}
