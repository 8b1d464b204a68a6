//! Bounded staleness of the written field, across sessions.
//!
//! The workload's field may have a bounded freshness class (`max_staleness`): a node
//! serves it from its cache or a replica only while that copy is younger than the
//! bound, an age counted from when the copy shows the primary as of. So a read that
//! started more than the bound after some write of the item was acknowledged — by any
//! session — must reflect that write: return its version or a newer one (a 404 is
//! version 0). Loadgen records the bound in the run line (`--bound`); without it this
//! check does nothing.
//!
//! A write is acknowledged when the answer of its acknowledged attempt arrived (a
//! replayed answer included): it had committed by then, so measuring from there
//! never blames a read for a write it could not have seen. Reads that failed (a 503
//! past the bound, an outage) observed nothing and are excused; every read that was
//! served is held to the bound.

use std::collections::HashMap;

use super::operations::Operation;
use super::{Check, History, Report};
use crate::loadgen::history::{OpKind, OpRecord};

/// Checks every served read of `info.collection` against the writes of its item
/// acknowledged more than the run's bound before it began.
pub fn check_staleness(history: &History, ops: &[Operation], report: &mut Report) {
    let Some(info) = &history.info else { return };
    let Some(bound_ms) = info.max_staleness_ms else {
        return;
    };
    let bound_ns = bound_ms.saturating_mul(1_000_000);
    // Per key: acknowledged writes as (acknowledged at, version), by time.
    let mut acked: HashMap<&str, Vec<(u64, u64, &OpRecord)>> = HashMap::new();
    for op in ops
        .iter()
        .filter(|op| op.kind().is_write() && op.first().collection == info.collection)
    {
        let Some(ack) = op.acked() else { continue };
        if let Some(version) = ack.version {
            acked
                .entry(&ack.key)
                .or_default()
                .push((ack.end_ns, version, ack));
        }
    }
    // With each write, the newest version acknowledged by then.
    let mut newest: HashMap<&str, Vec<(u64, u64, &OpRecord)>> = HashMap::new();
    for (key, mut writes) in acked {
        writes.sort_unstable_by_key(|(at, v, _)| (*at, *v));
        let mut best: Option<(u64, &OpRecord)> = None;
        let running = writes
            .into_iter()
            .map(|(at, v, op)| {
                if best.is_none_or(|(b, _)| v > b) {
                    best = Some((v, op));
                }
                let (v, op) = best.expect("set above");
                (at, v, op)
            })
            .collect();
        newest.insert(key, running);
    }
    let mut checked = 0u64;
    for read in history
        .ops
        .iter()
        .filter(|op| op.op == OpKind::Read && op.collection == info.collection)
    {
        let Some(version) = read.observed_version() else {
            continue;
        };
        checked += 1;
        let Some(writes) = newest.get(read.key.as_str()) else {
            continue;
        };
        let Some(cutoff) = read.start_ns.checked_sub(bound_ns) else {
            continue;
        };
        let before = writes.partition_point(|(at, _, _)| *at < cutoff);
        let Some(&(at, w, write)) = before.checked_sub(1).map(|i| &writes[i]) else {
            continue;
        };
        if version < w {
            report.add(
                Check::BoundedStaleness,
                format!(
                    "a read of {}/{} returned version {version} {:.0} ms after version {w} was acknowledged, \
                     past the field's bound of {bound_ms} ms",
                    read.collection,
                    read.key,
                    (read.start_ns - at) as f64 / 1e6
                ),
                vec![write, read],
            );
        }
    }
    report.notes.push(format!(
        "bounded staleness of {}.{}: {checked} served reads held to {bound_ms} ms behind the acknowledged writes",
        info.collection, info.field
    ));
}

#[cfg(test)]
mod tests {
    use super::super::operations::operations;
    use super::super::testing::*;
    use super::*;
    use crate::loadgen::history::RunInfo;

    const MS: u64 = 1_000_000;

    fn run(bound_ms: Option<u64>, ops: Vec<OpRecord>) -> Report {
        let history = History {
            info: Some(RunInfo {
                max_staleness_ms: bound_ms,
                ..run_info(2)
            }),
            ops,
            ..History::default()
        };
        let mut report = Report::default();
        check_staleness(&history, &operations(&history.ops), &mut report);
        report
    }

    /// Session a's write of x at version 5, acknowledged at 10 ms.
    fn write() -> OpRecord {
        at(put("a", 0, "x", 5), 5 * MS, 10 * MS)
    }

    #[test]
    fn a_read_past_the_bound_must_reflect_the_write() {
        // Another session, 1 s after the acknowledgement, with a 500 ms bound.
        let stale = at(read("b", 0, "x", 4), 1010 * MS, 1011 * MS);
        let report = run(Some(500), vec![write(), stale.clone()]);
        assert_eq!(
            report.count(Check::BoundedStaleness),
            1,
            "{:#?}",
            report.violations
        );
        assert_eq!(report.violations[0].ops[1].session, "b");
        // A 404 is older still.
        let gone = at(read("b", 1, "x", 0), 1010 * MS, 1011 * MS);
        assert_eq!(
            run(Some(500), vec![write(), gone]).count(Check::BoundedStaleness),
            1
        );
        // The same read with a 2 s bound, or none: within it.
        assert!(run(Some(2000), vec![write(), stale.clone()])
            .violations
            .is_empty());
        assert!(run(None, vec![write(), stale]).violations.is_empty());
    }

    #[test]
    fn reads_within_the_bound_or_newer_or_failed_are_clean() {
        let within = at(read("b", 0, "x", 4), 400 * MS, 401 * MS);
        let newer = at(read("b", 1, "x", 7), 2000 * MS, 2001 * MS);
        let same = at(read("b", 2, "x", 5), 2000 * MS, 2001 * MS);
        let other_key = at(read("b", 3, "y", 1), 2000 * MS, 2001 * MS);
        let failed = refused(
            at(read("b", 4, "x", 4), 2000 * MS, 2001 * MS),
            503,
            "origin-unavailable",
        );
        let report = run(Some(500), vec![write(), within, newer, same, other_key, failed]);
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
    }

    #[test]
    fn only_acknowledged_writes_set_the_floor_and_the_newest_counts() {
        // A write that got no answer may not have happened.
        let unknown = lost(at(put("a", 0, "x", 9), 5 * MS, 10 * MS));
        let old = at(read("b", 0, "x", 4), 1010 * MS, 1011 * MS);
        assert!(run(Some(500), vec![unknown, old]).violations.is_empty());
        // Two acknowledged writes, the newer first in the file: the read must reach
        // version 6, the newest acknowledged before its cutoff.
        let newer = at(put("c", 0, "x", 6), 20 * MS, 30 * MS);
        let five = at(read("b", 0, "x", 5), 1010 * MS, 1011 * MS);
        let report = run(Some(500), vec![newer, write(), five]);
        assert_eq!(report.count(Check::BoundedStaleness), 1);
        assert_eq!(report.violations[0].ops[0].version, Some(6));
    }
}
