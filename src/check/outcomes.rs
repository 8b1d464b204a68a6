//! Writes' outcomes against what the origin ended up holding, for the keys of the
//! run (the counter has its own accounting, see [`super::counter`]). Every write puts
//! a value unique in the run into the written field, so a value names its operation.
//! Operations are the attempts of one `Idempotency-Key` taken together (see
//! [`super::operations`]).
//!
//! - **not-applied-observed**: a write answered "not applied" on every attempt
//!   (`session-busy`, `origin-unavailable`, a 4xx) is absent: no read or answer ever
//!   shows its value, nor does the origin's final state.
//! - **item-exactly-once**: every acknowledged write applied once. No two
//!   acknowledged operations of one item got the same version; the origin's final
//!   value at version `f` is the value of the operation acknowledged at `f`, and the
//!   value of an operation acknowledged at another version is not final; and, when
//!   the origin's state was read straight from PostgreSQL before and after the run,
//!   the versions the item gained (each applied write adds one) lie between its
//!   acknowledged operations and those plus its unknown ones — an unknown first
//!   attempt settled by a retry counts once.
//! - **replay-mismatch**: an answer marked `Idempotent-Replayed` is the recorded
//!   answer of the operation's own write: it shows the value the operation wrote, its
//!   version is above every version of the item acknowledged before the operation's
//!   first attempt began, and every acknowledged attempt of one operation has the
//!   same version. The same request sent again with its key is never refused as
//!   another request (`idempotency-key-reused`).

use std::collections::{BTreeMap, HashMap};

use super::operations::Operation;
use super::{Check, History, Report};
use crate::loadgen::history::{OpRecord, Outcome, RunInfo, POSTGRES_TARGET};

/// Runs the three checks over the operations on `info.collection`.
pub fn check_outcomes(history: &History, ops: &[Operation], report: &mut Report) {
    let Some(info) = &history.info else { return };
    let writes: Vec<&Operation> = ops
        .iter()
        .filter(|op| op.kind().is_write() && op.first().collection == info.collection)
        .collect();
    not_applied_observed(info, history, &writes, report);
    acknowledged_versions(&writes, report);
    final_values(info, history, &writes, report);
    version_accounting(info, history, &writes, report);
    replays(info, &writes, report);
}

/// The field's string value in a document.
fn field<'a>(doc: Option<&'a serde_json::Value>, name: &str) -> Option<&'a str> {
    doc?.get(name)?.as_str()
}

/// No read, answer or final state shows the value of a write refused on every attempt.
fn not_applied_observed(info: &RunInfo, history: &History, writes: &[&Operation], report: &mut Report) {
    let refused: HashMap<&str, &Operation> = writes
        .iter()
        .filter(|op| op.outcome() == Outcome::Failed)
        .filter_map(|op| Some((op.written(&info.field)?, *op)))
        .collect();
    if refused.is_empty() {
        return;
    }
    let observers = history
        .ops
        .iter()
        .chain(&history.final_read)
        .chain(&history.origin_after)
        .filter(|op| op.outcome() == Outcome::Ok && op.collection == info.collection);
    let mut seen: BTreeMap<(u64, &str), (&Operation, Vec<&OpRecord>)> = BTreeMap::new();
    for observer in observers {
        let Some(op) = field(observer.value.as_ref(), &info.field).and_then(|v| refused.get(v)) else {
            continue;
        };
        let at = (op.start_ns(), op.first().session.as_str());
        seen.entry(at)
            .or_insert_with(|| (op, Vec::new()))
            .1
            .push(observer);
    }
    for (op, observers) in seen.into_values() {
        let value = op.written(&info.field).unwrap_or_default();
        let mut shown: Vec<&OpRecord> = op.attempts.clone();
        shown.extend(observers.iter().take(3));
        report.add(
            Check::NotAppliedObserved,
            format!(
                "{} {}/{} was answered \"not applied\" on all {} attempts, yet its value {value:?} was \
                 observed {} times{}",
                op.kind().as_str(),
                op.first().collection,
                op.first().key,
                op.attempts.len(),
                observers.len(),
                if observers.iter().any(|o| o.target == POSTGRES_TARGET) {
                    " (the origin holds it)"
                } else {
                    ""
                }
            ),
            shown,
        );
    }
}

/// No two acknowledged operations of one item share a version.
fn acknowledged_versions(writes: &[&Operation], report: &mut Report) {
    let mut by_version: BTreeMap<(&str, &str, u64), Vec<&OpRecord>> = BTreeMap::new();
    for op in writes {
        if let Some(ack) = op.acked() {
            if let Some(version) = ack.version {
                by_version
                    .entry((&ack.collection, &ack.key, version))
                    .or_default()
                    .push(ack);
            }
        }
    }
    for ((collection, key, version), acks) in by_version.into_iter().filter(|(_, a)| a.len() > 1) {
        report.add(
            Check::ItemExactlyOnce,
            format!(
                "{} acknowledged writes of {collection}/{key} share version {version}",
                acks.len()
            ),
            acks,
        );
    }
}

/// The final state of each key agrees with the acknowledged writes: the one
/// acknowledged at the final version wrote the final value, and the final value was
/// not acknowledged at another version.
fn final_values(info: &RunInfo, history: &History, writes: &[&Operation], report: &mut Report) {
    let mut acked_at: HashMap<(&str, u64), &OpRecord> = HashMap::new();
    let mut acked_value: HashMap<&str, &OpRecord> = HashMap::new();
    for op in writes {
        let Some(ack) = op.acked() else { continue };
        if let Some(version) = ack.version {
            acked_at.insert((&ack.key, version), ack);
        }
        if let Some(value) = op.written(&info.field) {
            acked_value.insert(value, ack);
        }
    }
    for last in history
        .origin_after
        .iter()
        .filter(|r| r.collection == info.collection && r.outcome() == Outcome::Ok)
    {
        let (Some(version), Some(value)) = (last.version, field(last.value.as_ref(), &info.field)) else {
            continue;
        };
        if let Some(ack) = acked_at.get(&(last.key.as_str(), version)) {
            let wrote = field(ack.body.as_ref(), &info.field);
            if wrote != Some(value) {
                report.add(
                    Check::ItemExactlyOnce,
                    format!(
                        "{}/{} ends at version {version} with {value:?}, but the write acknowledged at \
                         version {version} wrote {wrote:?}",
                        last.collection, last.key
                    ),
                    vec![ack, last],
                );
            }
        }
        if let Some(ack) = acked_value.get(value) {
            if ack.key == last.key && ack.version.is_some_and(|v| v != version) {
                report.add(
                    Check::ItemExactlyOnce,
                    format!(
                        "{}/{} ends at version {version} with {value:?}, which was acknowledged at version {}",
                        last.collection,
                        last.key,
                        ack.version.unwrap_or(0)
                    ),
                    vec![ack, last],
                );
            }
        }
    }
}

/// With the origin read straight before and after: the versions each key gained are
/// the writes applied to it, between the acknowledged ones and those plus the unknown
/// ones.
fn version_accounting(info: &RunInfo, history: &History, writes: &[&Operation], report: &mut Report) {
    let exact =
        |records: &[OpRecord]| !records.is_empty() && records.iter().all(|r| r.target == POSTGRES_TARGET);
    if !exact(&history.origin_before) || !exact(&history.origin_after) {
        return;
    }
    let state = |records: &'_ [OpRecord]| -> HashMap<String, OpRecord> {
        records
            .iter()
            .filter(|r| r.collection == info.collection && r.error.is_none())
            .map(|r| (r.key.clone(), r.clone()))
            .collect()
    };
    let (before, after) = (state(&history.origin_before), state(&history.origin_after));
    let mut tally: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for op in writes {
        let counts = tally.entry(op.first().key.as_str()).or_default();
        match op.outcome() {
            Outcome::Ok => counts.0 += 1,
            Outcome::Unknown => counts.1 += 1,
            Outcome::Failed => {}
        }
    }
    for (key, last) in &after {
        let Some(first) = before.get(key) else { continue };
        let gained = last.version.unwrap_or(0) as i64 - first.version.unwrap_or(0) as i64;
        let (acked, unknown) = tally.get(key.as_str()).copied().unwrap_or_default();
        let (acked, unknown) = (acked as i64, unknown as i64);
        if gained < acked || gained > acked + unknown {
            report.add(
                Check::ItemExactlyOnce,
                format!(
                    "{}/{key} went from version {} to {} in the origin: {gained} writes applied, but {acked} \
                     were acknowledged and {unknown} unknown ({})",
                    info.collection,
                    first.version.unwrap_or(0),
                    last.version.unwrap_or(0),
                    if gained < acked {
                        "acknowledged writes lost"
                    } else {
                        "writes applied twice, or applied though answered \"not applied\""
                    }
                ),
                vec![first, last],
            );
        }
    }
}

/// Replayed answers are the operation's own outcome.
fn replays(info: &RunInfo, writes: &[&Operation], report: &mut Report) {
    // Per item, acknowledged versions by the time their answer arrived, to tell a
    // replay older than a write that had ended before its operation began.
    let mut ended: HashMap<&str, Vec<(u64, u64, &OpRecord)>> = HashMap::new();
    for op in writes {
        for ack in op.acks() {
            if let Some(v) = ack.version {
                ended.entry(&ack.key).or_default().push((ack.end_ns, v, ack));
            }
        }
    }
    for list in ended.values_mut() {
        list.sort_unstable_by_key(|(end, v, _)| (*end, *v));
    }
    for op in writes {
        let acks: Vec<&OpRecord> = op.acks().collect();
        if let Some(first) = acks.first() {
            if let Some(other) = acks.iter().find(|a| a.version != first.version) {
                report.add(
                    Check::ReplayMismatch,
                    format!(
                        "one operation acknowledged at version {} and at version {}",
                        first.version.unwrap_or(0),
                        other.version.unwrap_or(0)
                    ),
                    op.attempts.clone(),
                );
            }
        }
        if let Some(reused) = op
            .attempts
            .iter()
            .find(|a| a.problem.as_deref() == Some("idempotency-key-reused"))
        {
            report.add(
                Check::ReplayMismatch,
                "the same request sent again with its key was refused as another request".into(),
                vec![op.first(), reused],
            );
        }
        for replay in acks.iter().filter(|a| a.replayed) {
            let wrote = op.written(&info.field);
            let shows = field(replay.value.as_ref(), &info.field);
            if wrote.is_some() && shows != wrote {
                report.add(
                    Check::ReplayMismatch,
                    format!("a replayed answer shows {shows:?}, but the operation wrote {wrote:?}"),
                    op.attempts.clone(),
                );
            }
            let Some(version) = replay.version else { continue };
            let newer = ended.get(replay.key.as_str()).and_then(|list| {
                list.iter()
                    .take_while(|(end, _, _)| *end < op.start_ns())
                    .filter(|(_, v, _)| *v >= version)
                    .max_by_key(|(_, v, _)| *v)
            });
            if let Some((_, v, earlier)) = newer {
                let mut shown = vec![*earlier];
                shown.extend(op.attempts.iter().copied());
                report.add(
                    Check::ReplayMismatch,
                    format!(
                        "a replayed answer has version {version}, but version {v} of {}/{} had been \
                         acknowledged before the operation's first attempt began",
                        replay.collection, replay.key
                    ),
                    shown,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::operations::operations;
    use super::super::testing::*;
    use super::*;
    use crate::loadgen::history::OpKind;

    fn info() -> RunInfo {
        super::super::testing::run_info(1)
    }

    /// A PUT of `key` writing `value`, acknowledged at `version`, as attempt 0 of the
    /// write keyed `value`.
    fn write(session: &str, index: u64, key: &str, value: &str, version: u64) -> OpRecord {
        let mut w = put(session, index, key, version);
        w.body = Some(json!({ "display_name": value }));
        w.value = w.body.clone();
        keyed(w, value, 0)
    }

    /// A read of `key` at `version` showing `value`.
    fn sees(session: &str, index: u64, key: &str, value: &str, version: u64) -> OpRecord {
        let mut r = read(session, index, key, version);
        r.value = Some(json!({ "display_name": value }));
        r
    }

    /// The origin's state of `key`: `value` at `version`, read straight from PostgreSQL.
    fn origin(key: &str, value: &str, version: u64) -> OpRecord {
        let mut r = sees("r1-origin", 0, key, value, version);
        r.target = POSTGRES_TARGET.into();
        r.served_by = POSTGRES_TARGET.into();
        r
    }

    fn run(ops: Vec<OpRecord>, before: Vec<OpRecord>, after: Vec<OpRecord>) -> Report {
        let history = History {
            info: Some(info()),
            ops,
            origin_before: before,
            origin_after: after,
            ..History::default()
        };
        let mut report = Report::default();
        check_outcomes(&history, &operations(&history.ops), &mut report);
        report
    }

    fn only(report: &Report, check: Check) {
        assert!(
            report.count(check) > 0 && report.violations.iter().all(|v| v.check == check),
            "expected only {check:?}: {:#?}",
            report.violations
        );
    }

    /// `a`'s write of `x` is unknown, then replayed at version 3 on its retry; `b`'s
    /// write of `x` is acknowledged at 2; `c`'s write of `y` is refused; `x` ends at 3.
    fn clean_run() -> (Vec<OpRecord>, Vec<OpRecord>, Vec<OpRecord>) {
        let unknown = lost(write("a", 0, "x", "r1:a:0", 0));
        let mut replay = replayed(write("a", 1, "x", "r1:a:0", 3));
        replay.attempt = 1;
        let ops = vec![
            write("b", 0, "x", "r1:b:0", 2),
            unknown,
            refused(write("c", 0, "y", "r1:c:0", 0), 503, "session-busy"),
            replay,
            sees("b", 1, "x", "r1:a:0", 3),
        ];
        let before = vec![origin("x", "old", 1), origin("y", "old", 5)];
        let after = vec![origin("x", "r1:a:0", 3), origin("y", "old", 5)];
        (ops, before, after)
    }

    #[test]
    fn retried_replayed_and_refused_writes_that_behave_are_clean() {
        let (ops, before, after) = clean_run();
        let report = run(ops, before, after);
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
    }

    #[test]
    fn a_refused_write_seen_by_a_read_or_in_the_origin_is_found() {
        let (mut ops, before, mut after) = clean_run();
        ops.push(sees("b", 2, "y", "r1:c:0", 6));
        let report = run(ops.clone(), before.clone(), after.clone());
        only(&report, Check::NotAppliedObserved);
        ops.pop();
        after[1] = origin("y", "r1:c:0", 6);
        let report = run(ops, before, after);
        assert_eq!(
            report.count(Check::NotAppliedObserved),
            1,
            "{:#?}",
            report.violations
        );
        // The same write refused after an attempt of unknown outcome may have applied.
        let (mut ops, before, mut after) = clean_run();
        ops.insert(2, lost(write("c", 0, "y", "r1:c:0", 0)));
        ops[3] = keyed(
            refused(write("c", 1, "y", "r1:c:0", 0), 503, "session-busy"),
            "r1:c:0",
            1,
        );
        after[1] = origin("y", "r1:c:0", 6);
        let report = run(ops, before, after);
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
    }

    #[test]
    fn a_write_applied_twice_or_lost_is_found() {
        // Two acknowledgements of one version.
        let (mut ops, before, after) = clean_run();
        ops.push(write("d", 0, "x", "r1:d:0", 2));
        let report = run(ops, before, after);
        assert!(
            report.count(Check::ItemExactlyOnce) >= 1,
            "{:#?}",
            report.violations
        );
        // The origin gained more versions than acknowledged plus unknown writes.
        let (ops, before, mut after) = clean_run();
        after[1] = origin("y", "old", 6);
        let report = run(ops, before, after);
        only(&report, Check::ItemExactlyOnce);
        // Or fewer than were acknowledged: the unknown write settled by its retry
        // counts once, so version 2 is one short.
        let (ops, before, mut after) = clean_run();
        after[0] = origin("x", "r1:b:0", 2);
        let report = run(ops, before, after);
        only(&report, Check::ItemExactlyOnce);
        // A final value other than the one acknowledged at the final version.
        let (ops, before, mut after) = clean_run();
        after[0] = origin("x", "r1:b:0", 3);
        let report = run(ops, before, after);
        only(&report, Check::ItemExactlyOnce);
    }

    #[test]
    fn a_replay_that_is_not_the_operations_outcome_is_found() {
        // It shows another write's value.
        let (mut ops, before, after) = clean_run();
        ops[3].value = Some(json!({"display_name": "r1:b:0"}));
        let report = run(ops, before, after);
        assert!(
            report.count(Check::ReplayMismatch) >= 1,
            "{:#?}",
            report.violations
        );
        // Its version is older than a write acknowledged before the operation began.
        let (mut ops, before, after) = clean_run();
        ops[0] = at(ops[0].clone(), 0, 5);
        ops[1] = at(ops[1].clone(), 10, 20);
        ops[3].version = Some(2);
        let report = run(ops, before, after);
        assert!(
            report.count(Check::ReplayMismatch) >= 1,
            "{:#?}",
            report.violations
        );
        // Two acknowledgements of one operation at different versions.
        let (mut ops, before, after) = clean_run();
        let mut again = replayed(write("a", 2, "x", "r1:a:0", 4));
        again.attempt = 2;
        ops.push(again);
        let report = run(ops, before, after);
        assert!(
            report.count(Check::ReplayMismatch) >= 1,
            "{:#?}",
            report.violations
        );
        // The same request refused as another one.
        let (mut ops, before, after) = clean_run();
        let mut reused = refused(write("c", 1, "y", "r1:c:0", 0), 422, "idempotency-key-reused");
        reused.attempt = 1;
        ops.push(reused);
        let report = run(ops, before, after);
        only(&report, Check::ReplayMismatch);
        assert_eq!(ops_of(&report), vec![OpKind::Put, OpKind::Put]);
    }

    fn ops_of(report: &Report) -> Vec<OpKind> {
        report.violations[0].ops.iter().map(|o| o.op).collect()
    }
}
