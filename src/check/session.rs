//! Terry et al.'s four session guarantees, per session, over item versions.
//!
//! A session issues its operations one after another, so its operation index is its
//! real-time order: every earlier operation was acknowledged before a later one
//! started. Versions are per item and increase with every write, so "newer" is
//! "higher version"; a read that found no item observed version 0. Only operations
//! with a known outcome take part: a write whose outcome is unknown may or may not
//! have happened, so it neither sets an expectation nor breaks one.
//!
//! For each item X, with `W` the highest version of X the session's acknowledged
//! writes got and `R` the highest version of X it read, so far:
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

use super::{Check, Report};
use crate::loadgen::history::{OpKind, OpRecord};

/// The highest versions of one item a session has written and read so far, with the
/// operation that wrote or read each.
#[derive(Default)]
struct Seen<'a> {
    written: Option<(u64, &'a OpRecord)>,
    read: Option<(u64, &'a OpRecord)>,
}

/// Checks the four guarantees in every session of `ops`.
pub fn check_sessions(ops: &[OpRecord], report: &mut Report) {
    let mut sessions: BTreeMap<&str, Vec<&OpRecord>> = BTreeMap::new();
    for op in ops {
        sessions.entry(&op.session).or_default().push(op);
    }
    for ops in sessions.values_mut() {
        ops.sort_by_key(|op| op.index);
        check_session(ops, report);
    }
}

fn check_session(ops: &[&OpRecord], report: &mut Report) {
    let mut items: HashMap<(&str, &str), Seen> = HashMap::new();
    for &op in ops {
        let Some(version) = op.observed_version() else {
            continue;
        };
        let seen = items.entry(op.item()).or_default();
        if op.op == OpKind::Read {
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
            if seen.read.is_none_or(|(r, _)| version > r) {
                seen.read = Some((version, op));
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
            if seen.written.is_none_or(|(w, _)| version > w) {
                seen.written = Some((version, op));
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
    fn the_index_orders_a_session_not_the_file() {
        let report = violations(vec![read("a", 1, "x", 4), put("a", 0, "x", 5)]);
        assert_eq!(counts(&report), [1, 0, 0, 0]);
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
