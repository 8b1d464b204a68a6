//! The shared strict counter: no decrement applied twice or lost, the bound held, and
//! every `bound-crossed` possible.
//!
//! Loadgen puts the counter at `start` (its version then is `v0`), sessions decrement
//! it with `{"by": b, "min": m}` and read it, and a fresh session reads it once every
//! session is done. Every applied decrement, acknowledged or not, adds one to the
//! version, so when every decrement has the same `b`:
//!
//! - **exactly once**: the value at version `v` is `start + (v − v0) × b`, for every
//!   observation (write acknowledgements, reads, the final read), and no two
//!   acknowledged decrements got the same version;
//! - **none lost**: `applied = (final − start) / b` lies between the acknowledged
//!   decrements and those plus the ones whose outcome is unknown — the slack, which
//!   the summary reports;
//! - **bound**: no value below `m` was ever observed;
//! - **no spurious conflict**: a `bound-crossed` answer is possible only if, counting
//!   every decrement that started before the answer arrived (acknowledged or
//!   unknown), the counter could have been below `m − b`;
//! - **real-time order**: an operation that started after another ended observes a
//!   version at least as high (higher, for a decrement). Strict fields are read from
//!   the primary, so this is linearizability of the counter's reads and writes.
//!
//! A decrement is an operation: its attempts, sent with one `Idempotency-Key`, taken
//! together (see [`super::operations`]). It is acknowledged when one attempt was —
//! a first attempt of unknown outcome settled by a retry counts once — unknown when
//! none was but one left the outcome open, and not applied when every attempt was
//! refused; a replayed answer counts as having taken effect from the operation's
//! first attempt on. The final value is the origin's state after the run when loadgen
//! recorded it (`origin_after`), else the fresh session's read.

use std::collections::BTreeMap;

use super::operations::{operations, Operation};
use super::{Check, History, Report};
use crate::loadgen::history::{CounterInfo, OpKind, OpRecord, Outcome};

/// The counter's operations in a history.
struct CounterOps<'a> {
    info: &'a CounterInfo,
    /// The setup PUT, when it succeeded: version `v0`.
    setup: Option<&'a OpRecord>,
    /// Every decrement with its attempts, whatever its outcome.
    incrs: Vec<Operation<'a>>,
    /// Successful reads, the final ones included.
    reads: Vec<&'a OpRecord>,
    /// The counter once the run had settled: the origin's state when recorded, else
    /// the fresh session's read.
    final_read: Option<&'a OpRecord>,
}

/// An observation of a version and a value, with the earliest time the operation
/// behind it may have taken effect: a replayed answer reports a write made during
/// an earlier attempt.
#[derive(Clone, Copy)]
struct Observed<'a> {
    op: &'a OpRecord,
    start_ns: u64,
}

impl<'a> CounterOps<'a> {
    fn new(info: &'a CounterInfo, history: &'a History) -> Self {
        let on_counter = |op: &&OpRecord| op.collection == info.collection && op.key == info.key;
        let ok = |op: &&OpRecord| op.outcome() == Outcome::Ok;
        let settled_read = history.final_read.as_ref().filter(on_counter).filter(ok);
        let origin_after = history.origin_after.iter().filter(on_counter).find(ok);
        let mut reads: Vec<&OpRecord> = history
            .ops
            .iter()
            .filter(on_counter)
            .filter(|op| op.op == OpKind::Read)
            .filter(ok)
            .collect();
        reads.extend(settled_read);
        reads.extend(origin_after);
        CounterOps {
            info,
            setup: history.setup.as_ref().filter(on_counter).filter(ok),
            incrs: operations(&history.ops)
                .into_iter()
                .filter(|op| on_counter(&op.first()) && op.kind() == OpKind::Incr)
                .collect(),
            reads,
            final_read: origin_after.or(settled_read),
        }
    }

    fn by(&self, op: &OpRecord) -> i64 {
        op.body
            .as_ref()
            .and_then(|b| b.get("by"))
            .and_then(|b| b.as_i64())
            .unwrap_or(-1)
    }

    fn min(&self, op: &OpRecord) -> i64 {
        op.body
            .as_ref()
            .and_then(|b| b.get("min"))
            .and_then(|m| m.as_i64())
            .unwrap_or(self.info.min)
    }

    fn value(&self, op: &OpRecord) -> Option<i64> {
        op.int_field(&self.info.field)
    }

    /// The decrements whose operation (all its attempts together) had `outcome`.
    fn with_outcome(&self, outcome: Outcome) -> impl Iterator<Item = &Operation<'a>> + '_ {
        self.incrs.iter().filter(move |op| op.outcome() == outcome)
    }

    /// Every attempt of every decrement.
    fn attempts(&self) -> impl Iterator<Item = &'a OpRecord> + '_ {
        self.incrs.iter().flat_map(|op| op.attempts.iter().copied())
    }

    /// Every answer that showed a version and a value: the setup, acknowledged
    /// decrement attempts (replays included), successful reads.
    fn observations(&self) -> Vec<Observed<'a>> {
        let at = |op: &'a OpRecord| Observed {
            op,
            start_ns: op.start_ns,
        };
        let mut all: Vec<Observed> = self.setup.into_iter().map(at).collect();
        for incr in &self.incrs {
            all.extend(incr.acks().map(|op| Observed {
                op,
                start_ns: incr.start_ns(),
            }));
        }
        all.extend(self.reads.iter().copied().map(at));
        all.retain(|o| o.op.version.is_some());
        all
    }

    /// The `by` all decrements share, if they do.
    fn uniform_by(&self) -> Option<i64> {
        let mut bys = self.incrs.iter().map(|op| self.by(op.first()));
        let first = bys.next().unwrap_or(-1);
        bys.all(|b| b == first).then_some(first)
    }
}

/// Runs the counter checks; adds the counter's accounting to the report's notes.
pub fn check_counter(info: &CounterInfo, history: &History, report: &mut Report) {
    let c = CounterOps::new(info, history);
    let acked = c.with_outcome(Outcome::Ok).count() as i64;
    let unknown = c.with_outcome(Outcome::Unknown).count() as i64;
    let settled = c
        .with_outcome(Outcome::Ok)
        .filter(|op| op.first_unsettled())
        .count();
    let conflicts = c
        .attempts()
        .filter(|op| op.problem.as_deref() == Some("bound-crossed"))
        .count();
    report.notes.push(format!(
        "counter {}/{}: start {}, bound {}; {} decrements acknowledged ({settled} of them after a first \
         attempt of unknown outcome), {} bound-crossed answers, {} of unknown outcome",
        info.collection, info.key, info.start, info.min, acked, conflicts, unknown
    ));

    duplicate_versions(&c, report);
    values_per_version(&c, report);
    final_accounting(&c, acked, unknown, report);
    bound(&c, report);
    spurious_conflicts(&c, report);
    real_time_order(&c, report);
}

/// Two acknowledged decrements with the same version: one application acknowledged
/// twice, or two applied as one. (The attempts of one decrement are one operation:
/// a replay of its version is not a second decrement.)
fn duplicate_versions(c: &CounterOps, report: &mut Report) {
    let mut by_version: BTreeMap<u64, Vec<&OpRecord>> = BTreeMap::new();
    for op in c.with_outcome(Outcome::Ok) {
        let ack = op.acked().expect("an acknowledged operation");
        if let Some(v) = ack.version {
            by_version.entry(v).or_default().push(ack);
        }
    }
    for (version, ops) in by_version.into_iter().filter(|(_, ops)| ops.len() > 1) {
        report.add(
            Check::CounterExactlyOnce,
            format!("{} acknowledged decrements share version {version}", ops.len()),
            ops,
        );
    }
}

/// With one `by` for every decrement, the value at version `v` must be
/// `start + (v − v0) × by`.
fn values_per_version(c: &CounterOps, report: &mut Report) {
    let (Some(setup), Some(by)) = (c.setup, c.uniform_by()) else {
        report
            .notes
            .push("  (values per version not checked: no setup, or decrements of different sizes)".into());
        return;
    };
    let Some(v0) = setup.version else { return };
    for Observed { op, .. } in c.observations() {
        let (Some(version), Some(value)) = (op.version, c.value(op)) else {
            continue;
        };
        let applied = version as i64 - v0 as i64;
        let expected = c.info.start + applied * by;
        if version < v0 || value != expected {
            report.add(
                Check::CounterExactlyOnce,
                format!(
                    "the counter is {value} at version {version}: {applied} decrements of {by} after \
                     the setup's version {v0} make {expected}"
                ),
                vec![setup, op],
            );
        }
    }
}

/// The decrements the final value shows applied: at least every acknowledged one, at
/// most those plus the unknown ones. A decrement is one operation, however many
/// attempts it took: an unknown first attempt settled by a retry counts once.
fn final_accounting(c: &CounterOps, acked: i64, unknown: i64, report: &mut Report) {
    let Some(last) = c.final_read else {
        report
            .notes
            .push("  (no final read of the counter: lost decrements not checked)".into());
        return;
    };
    let Some(value) = c.value(last) else { return };
    let start = c.info.start;
    match c.uniform_by() {
        Some(by) if by != 0 => {
            let delta = value - start;
            if delta % by != 0 {
                report.add(
                    Check::CounterLost,
                    format!(
                        "the counter went from {start} to {value}: not a whole number of decrements of {by}"
                    ),
                    vec![last],
                );
                return;
            }
            let applied = delta / by;
            report.notes.push(format!(
                "  final {value} (version {}, read from {}): {applied} decrements applied = {acked} acknowledged + {} of the {unknown} unknown",
                last.version.unwrap_or(0),
                last.served_by,
                applied - acked
            ));
            if applied < acked {
                report.add(
                    Check::CounterLost,
                    format!(
                        "the counter went from {start} to {value}, {applied} decrements, but {acked} were acknowledged: {} lost",
                        acked - applied
                    ),
                    vec![last],
                );
            } else if applied > acked + unknown {
                report.add(
                    Check::CounterLost,
                    format!(
                        "the counter went from {start} to {value}, {applied} decrements, but only {acked} were \
                         acknowledged and {unknown} unknown: some applied twice, or applied though answered \
                         \"not applied\""
                    ),
                    vec![last],
                );
            }
        }
        _ => {
            // Different sizes: the change must lie within what the acknowledged ones
            // make plus any subset of the unknown ones.
            let known: i64 = c.with_outcome(Outcome::Ok).map(|op| c.by(op.first())).sum();
            let bys: Vec<i64> = c
                .with_outcome(Outcome::Unknown)
                .map(|op| c.by(op.first()))
                .collect();
            let low = known + bys.iter().filter(|b| **b < 0).sum::<i64>();
            let high = known + bys.iter().filter(|b| **b > 0).sum::<i64>();
            let delta = value - start;
            if delta < low || delta > high {
                report.add(
                    Check::CounterLost,
                    format!(
                        "the counter went from {start} to {value}; the acknowledged and unknown increments allow a \
                         change in [{low}, {high}]"
                    ),
                    vec![last],
                );
            }
        }
    }
}

/// No observed value below the bound.
fn bound(c: &CounterOps, report: &mut Report) {
    for Observed { op, .. } in c.observations() {
        if let Some(value) = c.value(op).filter(|v| *v < c.info.min) {
            report.add(
                Check::CounterBound,
                format!(
                    "the counter was observed at {value}, below its bound {}",
                    c.info.min
                ),
                vec![op],
            );
        }
    }
}

/// A `bound-crossed` decrement is possible only if enough decrements could have
/// applied by the time it was answered.
fn spurious_conflicts(c: &CounterOps, report: &mut Report) {
    // Decrements that may have applied (acknowledged or unknown), by the start of
    // their first attempt, with running sums of their (negative) amounts.
    let mut applied: Vec<(u64, i64)> = c
        .incrs
        .iter()
        .filter(|op| op.outcome() != Outcome::Failed)
        .map(|op| (op.start_ns(), c.by(op.first()).min(0)))
        .collect();
    applied.sort_unstable();
    let mut running = Vec::with_capacity(applied.len());
    let mut sum = 0;
    for (_, by) in &applied {
        sum += by;
        running.push(sum);
    }
    for op in c
        .attempts()
        .filter(|op| op.problem.as_deref() == Some("bound-crossed"))
    {
        let (by, min) = (c.by(op), c.min(op));
        if by >= 0 {
            continue;
        }
        let started_before = applied.partition_point(|(start, _)| *start < op.end_ns);
        let lowest = c.info.start
            + if started_before == 0 {
                0
            } else {
                running[started_before - 1]
            };
        if lowest + by >= min {
            report.add(
                Check::CounterSpuriousConflict,
                format!(
                    "bound-crossed, but with every decrement that started before the answer applied the \
                     counter was still {lowest}: adding {by} stays at or above {min}"
                ),
                vec![op],
            );
        }
    }
}

/// Versions follow real time: if `a` ended before `b` started, `b` observes at least
/// `a`'s version, and more if `b` is a write.
fn real_time_order(c: &CounterOps, report: &mut Report) {
    let ops = c.observations();
    let mut by_end: Vec<Observed> = ops.clone();
    by_end.sort_by_key(|o| o.op.end_ns);
    let mut by_start = ops;
    by_start.sort_by_key(|o| o.start_ns);
    let mut newest: Option<(u64, &OpRecord)> = None;
    let mut ended = by_end.iter().peekable();
    for Observed { op: b, start_ns } in by_start {
        while let Some(a) = ended.next_if(|a| a.op.end_ns < start_ns) {
            let v = a.op.version.unwrap_or(0);
            if newest.is_none_or(|(n, _)| v > n) {
                newest = Some((v, a.op));
            }
        }
        let (Some((v, a)), Some(vb)) = (newest, b.version) else {
            continue;
        };
        let write = b.op != OpKind::Read;
        if vb < v || (write && vb == v) {
            report.add(
                Check::CounterOrder,
                format!(
                    "{} {} version {vb} after {} {} version {v} had ended",
                    b.op.as_str(),
                    if write { "wrote" } else { "saw" },
                    a.op.as_str(),
                    if a.op == OpKind::Read { "saw" } else { "wrote" },
                ),
                vec![a, b],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::*;
    use super::*;

    fn info(start: i64) -> CounterInfo {
        CounterInfo {
            collection: "products".into(),
            key: "c".into(),
            field: "stock".into(),
            start,
            min: 0,
        }
    }

    fn on_counter(mut op: OpRecord) -> OpRecord {
        op.collection = "products".into();
        op.key = "c".into();
        op
    }

    /// A decrement by 1 answered with `(version, value)`, or 409 when `None`.
    fn decr(session: &str, index: u64, answer: Option<(u64, i64)>) -> OpRecord {
        let mut d = on_counter(op(session, index, OpKind::Incr, "c"));
        d.body = Some(json!({"field": "stock", "by": -1, "min": 0}));
        match answer {
            Some((version, value)) => {
                d.status = Some(200);
                d.version = Some(version);
                d.value = Some(json!({ "stock": value }));
            }
            None => {
                d.status = Some(409);
                d.problem = Some("bound-crossed".into());
            }
        }
        d
    }

    fn stock_read(session: &str, index: u64, version: u64, value: i64) -> OpRecord {
        let mut r = on_counter(read(session, index, "c", version));
        r.value = Some(json!({ "stock": value }));
        r
    }

    /// A history: the setup puts `start` at version 1 (at 0–5 ns), then `ops`, then a
    /// final read of `last = (version, value)` long after.
    fn history(start: i64, ops: Vec<OpRecord>, last: (u64, i64)) -> (CounterInfo, History) {
        let mut setup = on_counter(at(put("setup", 0, "c", 1), 0, 5));
        setup.value = Some(json!({ "stock": start }));
        let final_read = at(stock_read("final", 0, last.0, last.1), 1_000_000, 1_000_010);
        let h = History {
            info: None,
            setup: Some(setup),
            ops,
            final_read: Some(final_read),
            ..History::default()
        };
        (info(start), h)
    }

    fn run(start: i64, ops: Vec<OpRecord>, last: (u64, i64)) -> Report {
        let (info, h) = history(start, ops, last);
        let mut report = Report::default();
        check_counter(&info, &h, &mut report);
        report
    }

    fn only(report: &Report, check: Check) {
        assert!(
            report.violations.iter().all(|v| v.check == check) && report.count(check) > 0,
            "expected only {check:?}: {:#?}",
            report.violations
        );
    }

    #[test]
    fn a_counter_run_down_to_its_bound_is_clean() {
        let report = run(
            2,
            vec![
                at(decr("a", 0, Some((2, 1))), 10, 20),
                at(stock_read("b", 0, 2, 1), 30, 40),
                at(decr("b", 1, Some((3, 0))), 50, 60),
                at(decr("a", 1, None), 70, 80),
            ],
            (3, 0),
        );
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
    }

    #[test]
    fn an_unknown_decrement_is_slack_either_way() {
        let maybe = at(lost(decr("a", 0, Some((0, 0)))), 10, 20);
        for last in [(1, 3), (2, 2)] {
            let report = run(
                3,
                vec![maybe.clone(), at(stock_read("b", 0, last.0, last.1), 30, 40)],
                last,
            );
            assert!(report.violations.is_empty(), "{last:?}: {:#?}", report.violations);
        }
        let report = run(3, vec![maybe], (3, 1));
        only(&report, Check::CounterLost);
    }

    #[test]
    fn a_lost_decrement_is_found() {
        // Acknowledged at version 2, but the final value shows none applied.
        let report = run(5, vec![at(decr("a", 0, Some((2, 4))), 10, 20)], (1, 5));
        assert_eq!(report.count(Check::CounterLost), 1, "{:#?}", report.violations);
    }

    #[test]
    fn a_decrement_applied_twice_is_found() {
        // Two acknowledgements of one version, and a value that skipped a step.
        let report = run(
            5,
            vec![
                at(decr("a", 0, Some((2, 4))), 10, 20),
                at(decr("b", 0, Some((2, 4))), 10, 20),
            ],
            (2, 4),
        );
        assert!(
            report.count(Check::CounterExactlyOnce) >= 1,
            "{:#?}",
            report.violations
        );
        let report = run(5, vec![at(decr("a", 0, Some((2, 3))), 10, 20)], (2, 3));
        assert!(report.count(Check::CounterExactlyOnce) >= 1);
        assert_eq!(
            report.count(Check::CounterLost),
            1,
            "2 applied for 1 acknowledged"
        );
    }

    #[test]
    fn a_value_below_the_bound_is_found() {
        let report = run(0, vec![at(decr("a", 0, Some((2, -1))), 10, 20)], (2, -1));
        assert!(report.count(Check::CounterBound) >= 1, "{:#?}", report.violations);
    }

    #[test]
    fn a_conflict_far_from_the_bound_is_spurious() {
        let report = run(5, vec![at(decr("a", 0, None), 10, 20)], (1, 5));
        only(&report, Check::CounterSpuriousConflict);
        // Concurrent with the decrement that reached the bound: possible.
        let report = run(
            1,
            vec![
                at(decr("a", 0, Some((2, 0))), 10, 30),
                at(decr("b", 0, None), 20, 25),
            ],
            (2, 0),
        );
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
    }

    #[test]
    fn a_stale_read_after_a_decrement_breaks_real_time_order() {
        let report = run(
            5,
            vec![
                at(decr("a", 0, Some((2, 4))), 10, 20),
                at(stock_read("b", 0, 1, 5), 30, 40),
            ],
            (2, 4),
        );
        only(&report, Check::CounterOrder);
        // Overlapping: either order is possible.
        let report = run(
            5,
            vec![
                at(decr("a", 0, Some((2, 4))), 10, 40),
                at(stock_read("b", 0, 1, 5), 30, 50),
            ],
            (2, 4),
        );
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
    }

    #[test]
    fn a_decrement_settled_by_its_retry_counts_once() {
        // Attempt 0 gets no answer; attempt 1 is answered from its record: version 2,
        // applied while attempt 0 ran. A read in between already saw it.
        let first = keyed(at(lost(decr("a", 0, Some((0, 0)))), 10, 20), "a-0", 0);
        let retry = keyed(at(replayed(decr("a", 1, Some((2, 4)))), 40, 50), "a-0", 1);
        let seen = at(stock_read("b", 0, 2, 4), 25, 30);
        let ops = vec![first.clone(), seen.clone(), retry.clone()];
        let report = run(5, ops.clone(), (2, 4));
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
        // Counted as two (one acknowledged, one unknown), a final 3 would pass; as the
        // one operation it is, it was applied twice.
        let report = run(5, ops, (3, 3));
        only(&report, Check::CounterLost);
    }

    #[test]
    fn a_decrement_refused_on_every_attempt_is_not_counted() {
        let busy = |index, attempt| {
            let mut d = decr("a", index, None);
            d.status = Some(503);
            d.problem = Some("session-busy".into());
            keyed(at(d, 10 + 100 * index, 20 + 100 * index), "a-0", attempt)
        };
        let report = run(5, vec![busy(0, 0)], (1, 5));
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
        let report = run(5, vec![busy(0, 0)], (2, 4));
        only(&report, Check::CounterLost);
        // After an attempt of unknown outcome, a refused retry settles nothing.
        let open = keyed(at(lost(decr("a", 0, Some((0, 0)))), 10, 20), "a-0", 0);
        let report = run(5, vec![open, busy(1, 1)], (2, 4));
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
    }

    #[test]
    fn the_origins_final_state_is_the_final_value() {
        let (info, mut h) = history(5, vec![at(decr("a", 0, Some((2, 4))), 10, 20)], (2, 4));
        let mut origin = at(stock_read("origin", 0, 1, 5), 2_000_000, 2_000_010);
        origin.target = crate::loadgen::history::POSTGRES_TARGET.into();
        h.origin_after.push(origin);
        let mut report = Report::default();
        check_counter(&info, &h, &mut report);
        assert!(report.count(Check::CounterLost) >= 1, "{:#?}", report.violations);
    }
}
