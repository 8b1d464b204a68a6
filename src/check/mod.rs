//! `edgecache check`: verifies a history recorded by `edgecache loadgen`.
//!
//! ```text
//! edgecache check history.jsonl [--counter-start S] [--max-print N]
//! ```
//!
//! Per session, Terry et al.'s four session guarantees over item versions (see
//! [`session`]); for the shared strict counter, that every acknowledged decrement was
//! applied exactly once, none was lost, the bound held and every `bound-crossed` was
//! possible (see [`counter`]); for every item, that one version always has one value
//! (see [`integrity`]); and for the writes' outcomes, that a write answered "not
//! applied" never shows, an acknowledged one applied once, and a replayed answer is
//! its operation's own (see [`outcomes`]); and, when the run line carries the bound
//! of the written field's class, that every read served more than the bound after a
//! write was acknowledged reflects it, whichever session wrote (see [`staleness`]).
//! A session's operations are ordered by real time, so sessions that ran operations
//! in parallel (`loadgen --parallel`) are checked too. Each violation is printed with the
//! operations involved, then a summary. The exit status is 1 when there is a
//! violation, 0 otherwise (2 when the history cannot be read).
//!
//! A write is an operation of one or more attempts — retries with its
//! `Idempotency-Key` (see [`operations`]). An operation whose outcome stayed unknown
//! (no answer, `write-outcome-unknown`, a gateway error, on every attempt that was
//! not refused) is neither counted as applied nor as lost: it gives the accounting
//! its slack, and the summary says how much of it was used. The origin's state
//! after the run (and before it, with `loadgen --pg-url`) anchors the accounting;
//! histories without it, or without keys, are checked with what they hold.

pub mod counter;
pub mod integrity;
pub mod operations;
pub mod outcomes;
pub mod session;
pub mod staleness;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::loadgen::history::{FloodStats, Line, OpKind, OpRecord, OutageRecord, Outcome, RunInfo};

/// `edgecache check`.
#[derive(clap::Args, Debug, Clone)]
pub struct CheckArgs {
    /// The history file written by `edgecache loadgen`.
    #[arg(value_name = "HISTORY")]
    pub history: PathBuf,
    /// The counter's value at start (default: the one in the history's run line).
    #[arg(long, value_name = "S")]
    pub counter_start: Option<i64>,
    /// Print at most this many violations of each kind (0: all of them).
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub max_print: usize,
}

/// A parsed history.
#[derive(Debug, Default, Clone)]
pub struct History {
    pub info: Option<RunInfo>,
    /// The PUT that created the counter.
    pub setup: Option<OpRecord>,
    /// The sessions' operations, in file order.
    pub ops: Vec<OpRecord>,
    /// The counter read after the run.
    pub final_read: Option<OpRecord>,
    /// The keys and the counter as the origin held them before the run.
    pub origin_before: Vec<OpRecord>,
    /// The keys and the counter as the origin held them once the run had settled.
    pub origin_after: Vec<OpRecord>,
    /// The anonymous flood beside the sessions, if there was one.
    pub flood: Option<FloodStats>,
    /// When loadgen had the primary stopped, if it did.
    pub outage: Option<OutageRecord>,
}

impl History {
    /// Reads a history file; a line that does not parse is an error naming it.
    pub fn load(path: &std::path::Path) -> anyhow::Result<Self> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut history = History::default();
        for (n, line) in BufReader::new(file).lines().enumerate() {
            let line = line.with_context(|| format!("reading {}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let parsed: Line = serde_json::from_str(&line)
                .with_context(|| format!("{}:{}: not a history line", path.display(), n + 1))?;
            match parsed {
                Line::Run(info) => history.info = Some(info),
                // With retries, the last attempt.
                Line::Setup(op) => history.setup = Some(op),
                Line::Op(op) => history.ops.push(op),
                Line::Final(op) => history.final_read = Some(op),
                Line::OriginBefore(op) => history.origin_before.push(op),
                Line::OriginAfter(op) => history.origin_after.push(op),
                Line::Flood(stats) => history.flood = Some(stats),
                Line::Outage(record) => history.outage = Some(record),
            }
        }
        Ok(history)
    }
}

/// The properties the checker verifies, each counted on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    /// A read of X returns at least the version of the session's acknowledged writes
    /// of X.
    ReadYourWrites,
    /// A read of X returns at least the versions of X the session read before.
    MonotonicReads,
    /// The session's acknowledged writes of X get increasing versions.
    MonotonicWrites,
    /// A write of X gets a version above every version of X the session read before.
    WritesFollowReads,
    /// The counter's value at each version follows from the decrements applied before
    /// it, and no two acknowledged decrements share a version.
    CounterExactlyOnce,
    /// The final counter value accounts for every acknowledged decrement.
    CounterLost,
    /// No counter value below the bound was ever observed.
    CounterBound,
    /// A `bound-crossed` answer only when the counter could have been at its bound.
    CounterSpuriousConflict,
    /// Counter versions respect real time: an operation that started after another
    /// ended observes at least its version (strict fields are read from the primary).
    CounterOrder,
    /// One item version, one value; and no value of the run that nobody wrote.
    Integrity,
    /// A write answered "not applied" on every attempt is never observed: no read
    /// shows its value, nor does the origin's final state.
    NotAppliedObserved,
    /// Every acknowledged write of a key applied once: one version each, the final
    /// value that of the write acknowledged at the final version, and the versions
    /// the origin gained within the acknowledged writes plus the unknown ones.
    ItemExactlyOnce,
    /// A replayed answer (`Idempotent-Replayed`) is the operation's own outcome: its
    /// value, a version not older than writes acknowledged before the operation
    /// began, and the same version as any other acknowledgement of the operation.
    ReplayMismatch,
    /// A read of the workload's field (of a bounded class) that began more than the
    /// bound after a write of its item was acknowledged, by any session, returns that
    /// write's version or a newer one.
    BoundedStaleness,
}

impl Check {
    pub const ALL: [Check; 14] = [
        Check::ReadYourWrites,
        Check::MonotonicReads,
        Check::MonotonicWrites,
        Check::WritesFollowReads,
        Check::CounterExactlyOnce,
        Check::CounterLost,
        Check::CounterBound,
        Check::CounterSpuriousConflict,
        Check::CounterOrder,
        Check::Integrity,
        Check::NotAppliedObserved,
        Check::ItemExactlyOnce,
        Check::ReplayMismatch,
        Check::BoundedStaleness,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Check::ReadYourWrites => "read-your-writes",
            Check::MonotonicReads => "monotonic-reads",
            Check::MonotonicWrites => "monotonic-writes",
            Check::WritesFollowReads => "writes-follow-reads",
            Check::CounterExactlyOnce => "counter-exactly-once",
            Check::CounterLost => "counter-lost-decrement",
            Check::CounterBound => "counter-bound",
            Check::CounterSpuriousConflict => "counter-spurious-conflict",
            Check::CounterOrder => "counter-real-time-order",
            Check::Integrity => "integrity",
            Check::NotAppliedObserved => "not-applied-observed",
            Check::ItemExactlyOnce => "item-exactly-once",
            Check::ReplayMismatch => "replay-mismatch",
            Check::BoundedStaleness => "bounded-staleness",
        }
    }
}

/// One violation: what was broken and the operations that show it.
#[derive(Debug, Clone)]
pub struct Violation {
    pub check: Check,
    pub message: String,
    pub ops: Vec<OpRecord>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {}", self.check.name(), self.message)?;
        for op in &self.ops {
            writeln!(f, "    {}", describe(op))?;
        }
        Ok(())
    }
}

/// One operation on one line: who, which, when, where, and what came back.
pub fn describe(op: &OpRecord) -> String {
    let answer = match (&op.error, op.status) {
        (Some(e), _) => format!("error: {e}"),
        (None, Some(status)) => {
            let mut s = status.to_string();
            if let Some(v) = op.version {
                s.push_str(&format!(" version {v}"));
            }
            if let Some(p) = &op.problem {
                s.push_str(&format!(" {p}"));
            }
            if let Some(value) = &op.value {
                s.push_str(&format!(" {value}"));
            }
            s
        }
        (None, None) => "no answer".into(),
    };
    let served = if op.served_by == op.target {
        op.target.clone()
    } else {
        format!("{} (served by {})", op.target, op.served_by)
    };
    format!(
        "{} #{} {} {}/{} [{:.3}–{:.3} ms] via {served}, token {}→{}: {answer}",
        op.session,
        op.index,
        op.op.as_str(),
        op.collection,
        op.key,
        op.start_ns as f64 / 1e6,
        op.end_ns as f64 / 1e6,
        op.token_in.as_deref().unwrap_or("-"),
        op.token_out.as_deref().unwrap_or("-"),
    )
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    pub violations: Vec<Violation>,
    /// Lines about the counter for the summary (its accounting and slack).
    pub notes: Vec<String>,
}

impl Report {
    pub fn add(&mut self, check: Check, message: String, ops: Vec<&OpRecord>) {
        self.violations.push(Violation {
            check,
            message,
            ops: ops.into_iter().cloned().collect(),
        });
    }

    pub fn count(&self, check: Check) -> usize {
        self.violations.iter().filter(|v| v.check == check).count()
    }
}

/// Options of a check.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Overrides the counter's start value of the run line.
    pub counter_start: Option<i64>,
}

/// Runs every check over `history`.
pub fn check(history: &History, options: &Options) -> Report {
    let mut report = Report::default();
    session::check_sessions(&history.ops, &mut report);
    if let Some(counter) = history.info.as_ref().and_then(|i| i.counter.as_ref()) {
        let mut counter = counter.clone();
        if let Some(start) = options.counter_start {
            counter.start = start;
        }
        counter::check_counter(&counter, history, &mut report);
    }
    integrity::check_integrity(history, &mut report);
    let operations = operations::operations(&history.ops);
    outcomes::check_outcomes(history, &operations, &mut report);
    staleness::check_staleness(history, &operations, &mut report);
    report
}

/// `edgecache check HISTORY`: prints the violations and a summary; returns whether
/// the history is free of violations.
pub fn run(args: CheckArgs) -> anyhow::Result<bool> {
    let history = History::load(&args.history)?;
    if history.ops.is_empty() {
        bail!("{}: no operations", args.history.display());
    }
    let report = check(
        &history,
        &Options {
            counter_start: args.counter_start,
        },
    );

    let mut printed: BTreeMap<Check, usize> = BTreeMap::new();
    for violation in &report.violations {
        let n = printed.entry(violation.check).or_default();
        *n += 1;
        if args.max_print == 0 || *n <= args.max_print {
            print!("{violation}");
        }
    }
    for (check, n) in &printed {
        if args.max_print != 0 && *n > args.max_print {
            println!("{}: … and {} more", check.name(), n - args.max_print);
        }
    }

    print_summary(&history, &report);
    Ok(report.violations.is_empty())
}

fn print_summary(history: &History, report: &Report) {
    let ops = &history.ops;
    let operations = operations::operations(ops);
    let sessions: std::collections::HashSet<&str> = ops.iter().map(|o| o.session.as_str()).collect();
    let kinds: BTreeMap<OpKind, usize> = operations.iter().fold(BTreeMap::new(), |mut m, o| {
        *m.entry(o.kind()).or_default() += 1;
        m
    });
    let errors = ops.iter().filter(|o| o.error.is_some()).count();
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {}", k.as_str())).collect();
    let writes: Vec<&operations::Operation> = operations.iter().filter(|o| o.kind().is_write()).collect();
    let count = |f: &dyn Fn(&operations::Operation) -> bool| writes.iter().filter(|o| f(o)).count();
    let first_open = count(&|o| o.first_unsettled());
    println!();
    let parallel = history.info.as_ref().map_or(1, |i| i.parallel);
    println!(
        "checked {} operations ({}) in {} sessions{}: {} requests, {} of them retries, {} without an answer",
        operations.len(),
        kinds.join(", "),
        sessions.len(),
        if parallel > 1 {
            format!(" (up to {parallel} operations of a session at once)")
        } else {
            String::new()
        },
        ops.len(),
        ops.iter().filter(|o| o.attempt > 0).count(),
        errors,
    );
    println!(
        "writes: {} acknowledged, {} not applied, {} of unknown outcome; {first_open} left open by their \
         first attempt: {} settled by a retry, {} still unknown; {} replayed answers",
        count(&|o| o.outcome() == Outcome::Ok),
        count(&|o| o.outcome() == Outcome::Failed),
        count(&|o| o.outcome() == Outcome::Unknown),
        count(&|o| o.first_unsettled() && o.outcome() == Outcome::Ok),
        count(&|o| o.first_unsettled() && o.outcome() == Outcome::Unknown),
        ops.iter().filter(|o| o.replayed).count(),
    );
    match (history.origin_before.first(), history.origin_after.first()) {
        (_, None) => println!(
            "the origin's final state was not recorded: not-applied writes checked against reads only"
        ),
        (before, Some(after)) => println!(
            "the origin's state: {} items after the run (from {}){}",
            history.origin_after.len(),
            after.target,
            if before.is_some() && after.target == crate::loadgen::history::POSTGRES_TARGET {
                ", and before it: versions accounted"
            } else {
                ""
            }
        ),
    }
    if let Some(flood) = &history.flood {
        println!("beside the sessions, an {}", crate::loadgen::flood_summary(flood));
    }
    if let Some(outage) = &history.outage {
        // Failures while the primary was down are expected, and excused (no check
        // counts a failure); what was served meanwhile is held to every check.
        let during: Vec<&OpRecord> = ops
            .iter()
            .filter(|o| outage.overlaps(o.start_ns, o.end_ns))
            .collect();
        let failed = during.iter().filter(|o| o.outcome() != Outcome::Ok).count();
        let reads = during
            .iter()
            .filter(|o| o.op == OpKind::Read && o.outcome() == Outcome::Ok)
            .count();
        println!(
            "{}: {} requests overlapped it — {failed} failed (excused), {reads} reads served (checked like the rest)",
            crate::loadgen::outage_summary(outage),
            during.len()
        );
    }
    for note in &report.notes {
        println!("{note}");
    }
    println!("violations:");
    for check in Check::ALL {
        println!("  {:<26} {}", check.name(), report.count(check));
    }
    println!("  {:<26} {}", "total", report.violations.len());
}

#[cfg(test)]
pub(crate) mod testing {
    //! Building small histories by hand.

    use serde_json::json;

    use crate::loadgen::history::{OpKind, OpRecord, RunInfo};

    /// The run line of a one-key run over `profiles.display_name` with `sessions`
    /// sessions, no bound and no counter.
    pub fn run_info(sessions: usize) -> RunInfo {
        RunInfo {
            run: "r1".into(),
            seed: 0,
            targets: vec![],
            sessions,
            ops: 1,
            parallel: 1,
            keys: 1,
            collection: "profiles".into(),
            field: "display_name".into(),
            max_staleness_ms: None,
            counter: None,
        }
    }

    /// An operation of `session` at `index`, taking 10 ns from `index * 100` ns.
    pub fn op(session: &str, index: u64, op: OpKind, key: &str) -> OpRecord {
        OpRecord {
            session: session.into(),
            index,
            target: "http://n1".into(),
            served_by: "edge-1".into(),
            op,
            collection: "profiles".into(),
            key: key.into(),
            start_ns: index * 100,
            end_ns: index * 100 + 10,
            ..OpRecord::default()
        }
    }

    /// A successful read of `key` at `version` (0: a 404).
    pub fn read(session: &str, index: u64, key: &str, version: u64) -> OpRecord {
        let mut r = op(session, index, OpKind::Read, key);
        if version == 0 {
            r.status = Some(404);
            r.problem = Some("not-found".into());
        } else {
            r.status = Some(200);
            r.version = Some(version);
            r.value = Some(json!({"display_name": format!("v{version}")}));
        }
        r
    }

    /// An acknowledged PUT of `key` that wrote `version`.
    pub fn put(session: &str, index: u64, key: &str, version: u64) -> OpRecord {
        let mut w = op(session, index, OpKind::Put, key);
        w.status = Some(if version == 1 { 201 } else { 200 });
        w.version = Some(version);
        w.body = Some(json!({"display_name": format!("v{version}")}));
        w.value = w.body.clone();
        w
    }

    /// Moves an operation to `[start, end]` ns.
    pub fn at(mut op: OpRecord, start: u64, end: u64) -> OpRecord {
        op.start_ns = start;
        op.end_ns = end;
        op
    }

    /// The same operation without an answer.
    pub fn lost(mut op: OpRecord) -> OpRecord {
        op.status = None;
        op.version = None;
        op.value = None;
        op.error = Some("operation timed out".into());
        op
    }

    /// The same operation answered with `status` and problem `slug`.
    pub fn refused(mut op: OpRecord, status: u16, slug: &str) -> OpRecord {
        op.status = Some(status);
        op.version = None;
        op.value = None;
        op.problem = Some(slug.into());
        op
    }

    /// The same operation as attempt `attempt` of the write with `key`.
    pub fn keyed(mut op: OpRecord, key: &str, attempt: u32) -> OpRecord {
        op.idempotency_key = Some(key.into());
        op.attempt = attempt;
        op
    }

    /// The same answer marked `Idempotent-Replayed`.
    pub fn replayed(mut op: OpRecord) -> OpRecord {
        op.replayed = true;
        op
    }
}
