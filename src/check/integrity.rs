//! Versions name values: every observation of one version of an item (a write's
//! answer, a read) shows the same document, and a value carrying this run's id was
//! written by some operation of the run. A node serving a body under the wrong ETag
//! would break the session checks silently; this catches it.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::{Check, History, Report};
use crate::loadgen::history::{OpRecord, Outcome};

pub fn check_integrity(history: &History, report: &mut Report) {
    let all = || {
        history
            .setup
            .iter()
            .chain(&history.ops)
            .chain(&history.final_read)
    };

    let mut first_seen: HashMap<(&str, &str, u64), &OpRecord> = HashMap::new();
    for op in all().filter(|op| op.outcome() == Outcome::Ok) {
        let (Some(version), Some(value)) = (op.version, &op.value) else {
            continue;
        };
        let (collection, key) = op.item();
        match first_seen.get(&(collection, key, version)) {
            None => {
                first_seen.insert((collection, key, version), op);
            }
            Some(first) if first.value.as_ref() != Some(value) => report.add(
                Check::Integrity,
                format!("two different values of {collection}/{key} at version {version}"),
                vec![first, op],
            ),
            Some(_) => {}
        }
    }

    // Values of this run in the written field must come from a write of the run
    // (whatever its outcome).
    let Some(info) = &history.info else { return };
    let field = info.field.as_str();
    let prefix = format!("{}:", info.run);
    let unique = |op: &OpRecord, doc: Option<&Value>| -> Option<String> {
        let doc = doc?;
        let value = doc.get(field)?.as_str()?;
        (op.collection == info.collection && value.starts_with(&prefix)).then(|| value.to_owned())
    };
    let written: HashSet<String> = all()
        .filter(|op| op.op.is_write())
        .filter_map(|op| unique(op, op.body.as_ref()))
        .collect();
    for op in all().filter(|op| op.outcome() == Outcome::Ok) {
        if let Some(value) = unique(op, op.value.as_ref()).filter(|v| !written.contains(v)) {
            report.add(
                Check::Integrity,
                format!(
                    "{}/{} shows {value:?}, which no operation of the run wrote",
                    op.collection, op.key
                ),
                vec![op],
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::*;
    use super::*;

    fn run(ops: Vec<OpRecord>) -> Report {
        let history = History {
            info: Some(run_info(1)),
            ops,
            ..History::default()
        };
        let mut report = Report::default();
        check_integrity(&history, &mut report);
        report
    }

    #[test]
    fn one_version_one_value() {
        let report = run(vec![
            put("a", 0, "x", 2),
            read("b", 0, "x", 2),
            read("b", 1, "x", 3),
        ]);
        assert!(report.violations.is_empty(), "{:#?}", report.violations);

        let mut wrong = read("b", 0, "x", 2);
        wrong.value = Some(json!({"display_name": "something else"}));
        let report = run(vec![put("a", 0, "x", 2), wrong]);
        assert_eq!(report.count(Check::Integrity), 1);
    }

    #[test]
    fn a_value_of_the_run_nobody_wrote() {
        let mut w = put("a", 0, "x", 2);
        w.body = Some(json!({"display_name": "r1:0:0"}));
        w.value = w.body.clone();
        let mut seen = read("b", 0, "x", 2);
        seen.value = w.body.clone();
        let mut ghost = read("b", 1, "x", 3);
        ghost.value = Some(json!({"display_name": "r1:7:7"}));
        let mut older_run = read("b", 2, "y", 1);
        older_run.value = Some(json!({"display_name": "r0:7:7"}));
        let report = run(vec![w, seen, ghost, older_run]);
        assert_eq!(report.count(Check::Integrity), 1, "{:#?}", report.violations);
        assert_eq!(report.violations[0].ops[0].index, 1);
    }
}
