//! Terry et al.'s four session guarantees, per session, over item versions.
//!
//! A session's operations are ordered by real time, not by their index: operation
//! `b` comes after `a` when `b` started after `a` ended (`a.end_ns < b.start_ns`).
//! A session with `loadgen --parallel 1` issues one operation at a time, so every
//! pair is ordered and this is its issue order; with `--parallel N` some of them
//! overlap, and overlapping operations of one session are not ordered against each
//! other — neither has to see the other's effect. A write is an operation of all its
//! attempts (see [`super::operations`]): it spans from its first attempt's start to
//! the end of the attempt that was acknowledged, since the write may have applied
//! during any of them. Versions are per item and increase with every write, so
//! "newer" is "higher version"; a read that found no item observed version 0. Only
//! operations with a known outcome take part: a write whose outcome is unknown may or
//! may not have happened, so it neither sets an expectation nor breaks one.
//!
//! For each operation on item X, with `W` the highest version of X that the
//! session's acknowledged writes ended before it began got, and `R` the highest
//! version of X such earlier reads returned:
//!
//! | guarantee | violated by |
//! |---|---|
//! | read-your-writes | a read of X returning a version < `W` (a 404 after an acknowledged write included) |
//! | monotonic reads | a read of X returning a version < `R` |
//! | monotonic writes | an acknowledged write of X getting a version ≤ `W` |
//! | writes-follow-reads | an acknowledged write of X getting a version ≤ `R` |
//!
//! A read below a version the session *wrote* breaks read-your-writes, and is
//! counted there only; monotonic reads covers the versions it *read*.

use std::collections::{BTreeMap, HashMap};

use super::operations::operations;
use super::{Check, Report};
use crate::loadgen::history::OpRecord;

/// The highest versions of one item a session has written and read so far, with the
/// operation that wrote or read each.
#[derive(Default)]
struct Seen<'a> {
    written: Option<(u64, &'a OpRecord)>,
    read: Option<(u64, &'a OpRecord)>,
}

/// One operation of a session with a known effect: what it observed or wrote, and
/// when it may have taken effect.
struct Done<'a> {
    /// The answer: the read, or the acknowledged attempt of a write.
    op: &'a OpRecord,
    write: bool,
    version: u64,
    /// The start of its first attempt.
    start_ns: u64,
    /// The end of the answer.
    end_ns: u64,
}

/// Checks the four guarantees in every session of `ops`.
pub fn check_sessions(ops: &[OpRecord], report: &mut Report) {
    let mut sessions: BTreeMap<&str, Vec<Done>> = BTreeMap::new();
    for operation in operations(ops) {
        let Some(answer) = operation.acked() else { continue };
        let Some(version) = answer.observed_version() else {
            continue;
        };
        sessions.entry(&answer.session).or_default().push(Done {
            op: answer,
            write: operation.kind().is_write(),
            version,
            start_ns: operation.start_ns(),
            end_ns: answer.end_ns,
        });
    }
    for done in sessions.values() {
        check_session(done, report);
    }
}

/// Takes the operations in the order they started; before checking one, folds in
/// every operation that had ended by then.
fn check_session(done: &[Done], report: &mut Report) {
    let mut by_start: Vec<&Done> = done.iter().collect();
    by_start.sort_by_key(|d| (d.start_ns, d.end_ns));
    let mut by_end: Vec<&Done> = done.iter().collect();
    by_end.sort_by_key(|d| d.end_ns);
    let mut ended = by_end.into_iter().peekable();
    let mut items: HashMap<(&str, &str), Seen> = HashMap::new();
    for d in by_start {
        while let Some(e) = ended.next_if(|e| e.end_ns < d.start_ns) {
            let seen = items.entry(e.op.item()).or_default();
            let slot = if e.write {
                &mut seen.written
            } else {
                &mut seen.read
            };
            if slot.is_none_or(|(v, _)| e.version > v) {
                *slot = Some((e.version, e.op));
            }
        }
        let Some(seen) = items.get(&d.op.item()) else {
            continue;
        };
        let (op, version) = (d.op, d.version);
        if !d.write {
            if let Some((w, write)) = seen.written.filter(|(w, _)| version < *w) {
                report.add(
                    Check::ReadYourWrites,
                    format!(
                        "session {} read {} at version {version} after its own write of version {w}",
                        op.session,
                        item_name(op)
                    ),
                    vec![write, op],
                );
            }
            if let Some((r, earlier)) = seen.read.filter(|(r, _)| version < *r) {
                report.add(
                    Check::MonotonicReads,
                    format!(
                        "session {} read {} at version {version} after reading version {r}",
                        op.session,
                        item_name(op)
                    ),
                    vec![earlier, op],
                );
            }
        } else {
            if let Some((w, write)) = seen.written.filter(|(w, _)| version <= *w) {
                report.add(
                    Check::MonotonicWrites,
                    format!(
                        "session {}'s write of {} got version {version}, not above its earlier write's {w}",
                        op.session,
                        item_name(op)
                    ),
                    vec![write, op],
                );
            }
            if let Some((r, read)) = seen.read.filter(|(r, _)| version <= *r) {
                report.add(
                    Check::WritesFollowReads,
                    format!(
                        "session {}'s write of {} got version {version}, not above version {r} it had read",
                        op.session,
                        item_name(op)
                    ),
                    vec![read, op],
                );
            }
        }
    }
}

fn item_name(op: &OpRecord) -> String {
    format!("{}/{}", op.collection, op.key)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::loadgen::history::OpKind;

    fn violations(ops: Vec<OpRecord>) -> Report {
        let mut report = Report::default();
        check_sessions(&ops, &mut report);
        report
    }

    fn counts(report: &Report) -> [usize; 4] {
        [
            report.count(Check::ReadYourWrites),
            report.count(Check::MonotonicReads),
            report.count(Check::MonotonicWrites),
            report.count(Check::WritesFollowReads),
        ]
    }

    #[test]
    fn a_session_that_sees_its_writes_and_moves_forward_is_clean() {
        let report = violations(vec![
            read("a", 0, "x", 0),
            put("a", 1, "x", 1),
            read("a", 2, "x", 1),
            read("a", 3, "x", 3), // another session wrote 2 and 3
            put("a", 4, "x", 4),
            read("a", 5, "x", 4),
            // Other items and sessions do not interfere.
            read("a", 6, "y", 7),
            read("b", 0, "x", 1),
            read("b", 1, "y", 2),
        ]);
        assert_eq!(counts(&report), [0; 4], "{:?}", report.violations);
    }

    #[test]
    fn read_your_writes_violated_by_an_old_version_or_a_404() {
        let report = violations(vec![put("a", 0, "x", 5), read("a", 1, "x", 4)]);
        assert_eq!(counts(&report), [1, 0, 0, 0]);
        let v = &report.violations[0];
        assert_eq!(
            (v.ops[0].index, v.ops[1].index),
            (0, 1),
            "the write, then the read"
        );

        let report = violations(vec![put("a", 0, "x", 1), read("a", 1, "x", 0)]);
        assert_eq!(counts(&report), [1, 0, 0, 0], "a 404 after the session's PUT");

        // Another session's write does not count.
        let report = violations(vec![put("b", 0, "x", 5), read("a", 0, "x", 4)]);
        assert_eq!(counts(&report), [0; 4]);
    }

    #[test]
    fn monotonic_reads_violated_by_going_back() {
        let report = violations(vec![
            read("a", 0, "x", 3),
            read("a", 1, "x", 3),
            read("a", 2, "x", 2),
        ]);
        assert_eq!(counts(&report), [0, 1, 0, 0]);
        let report = violations(vec![read("a", 0, "x", 3), read("a", 1, "x", 0)]);
        assert_eq!(counts(&report), [0, 1, 0, 0], "an item that disappears");
    }

    #[test]
    fn monotonic_writes_violated_by_a_later_write_with_a_lower_version() {
        let report = violations(vec![put("a", 0, "x", 6), put("a", 1, "x", 7)]);
        assert_eq!(counts(&report), [0; 4]);
        let report = violations(vec![put("a", 0, "x", 6), put("a", 1, "x", 5)]);
        assert_eq!(counts(&report), [0, 0, 1, 0]);
    }

    #[test]
    fn writes_follow_reads_violated_by_a_write_not_above_a_read() {
        let report = violations(vec![read("a", 0, "x", 9), put("a", 1, "x", 10)]);
        assert_eq!(counts(&report), [0; 4]);
        let report = violations(vec![read("a", 0, "x", 9), put("a", 1, "x", 9)]);
        assert_eq!(counts(&report), [0, 0, 0, 1]);
    }

    #[test]
    fn real_time_orders_a_session_not_the_file() {
        let report = violations(vec![read("a", 1, "x", 4), put("a", 0, "x", 5)]);
        assert_eq!(counts(&report), [1, 0, 0, 0]);
        // Nor the index: a parallel session's later-issued operation may end first.
        let report = violations(vec![
            at(put("a", 1, "x", 5), 0, 10),
            at(read("a", 0, "x", 4), 20, 30),
        ]);
        assert_eq!(counts(&report), [1, 0, 0, 0]);
    }

    #[test]
    fn overlapping_operations_of_a_session_are_not_ordered() {
        // A read that began before the write's answer arrived need not see it; one
        // that began after must.
        let write = at(put("a", 0, "x", 5), 0, 100);
        let during = at(read("a", 1, "x", 4), 50, 150);
        let after = at(read("a", 2, "x", 4), 101, 120);
        let report = violations(vec![write.clone(), during.clone()]);
        assert_eq!(counts(&report), [0; 4]);
        let report = violations(vec![write.clone(), during, after]);
        assert_eq!(counts(&report), [1, 0, 0, 0]);
        assert_eq!(report.violations[0].ops[1].index, 2);

        // Reads: only one that began after the newer read ended must not go back.
        let newer = at(read("a", 0, "y", 5), 0, 100);
        let overlapping = at(read("a", 1, "y", 3), 50, 120);
        let later = at(read("a", 2, "y", 3), 130, 140);
        assert_eq!(counts(&violations(vec![newer.clone(), overlapping])), [0; 4]);
        assert_eq!(counts(&violations(vec![newer, later])), [0, 1, 0, 0]);

        // Writes: two overlapping writes of one item may commit in either order.
        let first = at(put("a", 0, "z", 7), 0, 100);
        let second = at(put("a", 1, "z", 6), 10, 50);
        assert_eq!(counts(&violations(vec![first.clone(), second])), [0; 4]);
        let second = at(put("a", 1, "z", 6), 110, 150);
        assert_eq!(counts(&violations(vec![first, second])), [0, 0, 1, 0]);
        // A write that began after a read ended must get a higher version.
        let read_first = at(read("a", 0, "w", 9), 0, 10);
        let write = at(put("a", 1, "w", 9), 20, 30);
        assert_eq!(counts(&violations(vec![read_first, write])), [0, 0, 0, 1]);
    }

    #[test]
    fn a_retried_write_spans_all_its_attempts() {
        // The first attempt got no answer; a write issued beside it got version 8;
        // the retry's replayed answer says the first attempt applied, at version 7.
        // The two writes overlapped, so version 7 after 8 breaks nothing ...
        let first = keyed(lost(at(put("a", 0, "x", 0), 0, 10)), "a-0", 0);
        let beside = at(put("a", 1, "x", 8), 20, 30);
        let retry = keyed(replayed(at(put("a", 2, "x", 7), 40, 50)), "a-0", 1);
        let report = violations(vec![first.clone(), beside.clone(), retry.clone()]);
        assert_eq!(counts(&report), [0; 4], "{:#?}", report.violations);
        // ... but a read after both must see version 8, the higher of the two.
        let report = violations(vec![first, beside, retry, at(read("a", 3, "x", 7), 60, 70)]);
        assert_eq!(counts(&report), [1, 0, 0, 0]);
        assert_eq!(report.violations[0].ops[0].version, Some(8));
    }

    #[test]
    fn unknown_and_rejected_operations_set_no_expectation() {
        let mut rejected = op("a", 1, OpKind::Patch, "x");
        rejected.status = Some(422);
        rejected.problem = Some("wrong-type".into());
        let report = violations(vec![
            read("a", 0, "x", 2),
            rejected,
            lost(put("a", 2, "x", 9)),
            read("a", 3, "x", 2),
            lost(read("a", 4, "x", 1)),
        ]);
        assert_eq!(counts(&report), [0; 4]);
    }
}
