//! The history file: what `edgecache loadgen` records and `edgecache check` reads.
//!
//! One JSON object per line, told apart by `kind`:
//!
//! ```text
//! {"kind":"run", "run":"9f2c41d7", "seed":1, "targets":[…], "sessions":20, "ops":200, "parallel":2, "keys":16,
//!  "collection":"profiles", "field":"display_name", "max_staleness_ms":10000,
//!  "counter":{"collection":"products","key":"loadgen-stock","field":"stock","start":200,"min":0}}
//! {"kind":"setup", <an operation>}      the PUT that creates the counter
//! {"kind":"op", <an operation>}         one per operation of a session, in completion order
//! {"kind":"origin_before", <a read>}    each key and the counter as the origin holds them
//!                                       before the sessions start (with `--pg-url` only)
//! {"kind":"origin_after", <a read>}     each key and the counter once the run has settled
//! {"kind":"final", <an operation>}      the counter read by a fresh session after the run
//! {"kind":"flood", "rate":100.0, "named_share":0.25, "secs":41.2, "sent":4120, "named":1012,
//!  "skipped":0, "statuses":{"200":3050,"404":1070}}
//!                                       the anonymous flood beside the workload (`--flood`):
//!                                       counts only, its requests are not operations
//! {"kind":"outage", "stop_ns":…, "stopped_ns":…, "start_ns":…, "started_ns":…}
//!                                       the primary stopped and started by loadgen
//!                                       (`--stop-primary-after`), on the operations' clock
//! ```
//!
//! The `origin_*` reads come straight from PostgreSQL (`"target":"postgres"`, their
//! `value` holding only the written field) when loadgen was given `--pg-url`, else
//! through a node with a fresh session (which may serve a bounded field from its
//! cache: not exact, and `check` only uses such a state where staleness cannot make up
//! a violation).
//!
//! An operation:
//!
//! ```text
//! {"session":"9f2c41d7-s3", "index":17, "target":"http://127.0.0.1:8080", "served_by":"edge-1",
//!  "op":"patch", "collection":"profiles", "key":"lg-5",
//!  "body":{"display_name":"9f2c41d7:3:17"},          the request body (writes)
//!  "status":200, "version":12,                        the ETag seen or written
//!  "value":{"display_name":"9f2c41d7:3:17"},          the document returned, without its id
//!  "problem":"bound-crossed",                         the problem slug of an error response
//!  "token_in":"1f0a…", "token_out":"77c2…",           16 hex digits of SHA-256 of each token
//!  "start_ns":1200345, "end_ns":1904562,              monotonic, from the start of the run
//!  "error":"operation timed out",                    no answer: the outcome is unknown
//!  "idempotency_key":"9f2c41d7-s3-17",                sent with every write
//!  "attempt":1,                                       0 for the first send, 1… for retries
//!  "replayed":true}                                   the answer had Idempotent-Replayed: true
//! ```
//!
//! Absent fields are left out. `index` counts a session's requests from 0 in the order
//! it sent them. With `loadgen --parallel 1` (the default) a session never has two
//! requests in flight, so that is also their real-time order; with `--parallel N` up
//! to N overlap, and only `start_ns`/`end_ns` order them: one request precedes another
//! when it ended before the other started (`edgecache check` orders them so, in both
//! cases). A write whose outcome was unknown is sent again with the same
//! `idempotency_key` (`edgecache loadgen --retry-unknown`): each attempt is a line of
//! its own with the index of its sending, and the key links the attempts of one
//! logical operation. Histories written before keys and attempts existed read as operations of
//! one attempt each.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The problem `type` prefix of every edgecache error.
pub const PROBLEM_PREFIX: &str = "urn:problem:edgecache:";

/// The prefix of the `error` of a request whose connection could not be opened: it
/// was never sent, so it did nothing.
pub const CONNECT_ERROR: &str = "connect: ";

/// The `target` of a read made straight on the PostgreSQL primary rather than through
/// a node.
pub const POSTGRES_TARGET: &str = "postgres";

/// One line of a history file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Line {
    /// The first line: how the run was set up.
    Run(RunInfo),
    /// The PUT that created the counter before the sessions started.
    Setup(OpRecord),
    /// One operation of one session.
    Op(OpRecord),
    /// The counter, read by a fresh session once every session was done.
    Final(OpRecord),
    /// One key (or the counter) as the origin held it before the sessions started.
    OriginBefore(OpRecord),
    /// One key (or the counter) as the origin held it once the run had settled.
    OriginAfter(OpRecord),
    /// The anonymous flood that ran beside the sessions, in counts.
    Flood(FloodStats),
    /// The primary stopped and started again while the sessions ran.
    Outage(OutageRecord),
}

/// When loadgen stopped the PostgreSQL primary and started it again
/// (`--stop-primary-after`), on the operations' clock: the primary was down from
/// some time in `[stop_ns, stopped_ns]` to some time in `[start_ns, started_ns]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct OutageRecord {
    /// `pg_ctl stop` began.
    pub stop_ns: u64,
    /// `pg_ctl stop` returned: the primary was down.
    pub stopped_ns: u64,
    /// `pg_ctl start` began.
    pub start_ns: u64,
    /// `pg_ctl start` returned: the primary accepted connections again.
    pub started_ns: u64,
    /// What failed, if a `pg_ctl` did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl OutageRecord {
    /// Whether `[start, end]` overlaps the outage at all, counting the time the stop
    /// and the start took.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        start <= self.started_ns && end >= self.stop_ns
    }
}

/// What the anonymous flood (`loadgen --flood`) sent and got back. Its requests are
/// not operations of any session: they only load the nodes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FloodStats {
    /// The requests per second asked for.
    pub rate: f64,
    /// The share of requests that named a fresh session id of their own.
    pub named_share: f64,
    /// How long the flood ran.
    pub secs: f64,
    /// Requests sent.
    pub sent: u64,
    /// Of them, with a fresh `X-Session-Id`.
    pub named: u64,
    /// Ticks with no request sent because too many were still in flight.
    pub skipped: u64,
    /// Answers by status code, and `"error"` for no answer.
    pub statuses: BTreeMap<String, u64>,
}

/// How a run was set up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunInfo {
    /// The run's id: it prefixes session ids and every value written.
    pub run: String,
    pub seed: u64,
    pub targets: Vec<String>,
    pub sessions: usize,
    pub ops: usize,
    /// Operations of one session in flight at once (`--parallel`); 1 in histories
    /// written before it existed.
    #[serde(default = "one")]
    pub parallel: usize,
    pub keys: usize,
    /// The collection of the keys that are read, put and patched.
    pub collection: String,
    /// The string field that carries the unique value of each write.
    pub field: String,
    /// The bound of `field`'s freshness class (`max_staleness`) when it is bounded
    /// (`loadgen --bound`), in ms: `edgecache check` holds the reads to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_staleness_ms: Option<u64>,
    /// The shared counter, when the workload has increments or counter reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counter: Option<CounterInfo>,
}

/// The shared strict counter: an integer field of one item.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CounterInfo {
    pub collection: String,
    pub key: String,
    pub field: String,
    /// The value loadgen put before the sessions started.
    pub start: i64,
    /// The lower bound every decrement asks for.
    pub min: i64,
}

/// What an operation did.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// `GET /v1/{collection}/{id}`.
    #[default]
    Read,
    /// `PUT /v1/{collection}/{id}`.
    Put,
    /// `PATCH /v1/{collection}/{id}` with a merge patch.
    Patch,
    /// `POST /v1/{collection}/{id}/increment`.
    Incr,
}

impl OpKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Put => "put",
            OpKind::Patch => "patch",
            OpKind::Incr => "incr",
        }
    }

    pub fn is_write(self) -> bool {
        self != OpKind::Read
    }
}

/// One request and what came back.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct OpRecord {
    pub session: String,
    pub index: u64,
    /// The address the request was sent to.
    pub target: String,
    /// `X-Edgecache-Node` of the response, else the target.
    pub served_by: String,
    pub op: OpKind,
    pub collection: String,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// The HTTP status; absent when no response arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The version (ETag) read or written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The document of a successful response, without its `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// The problem slug of an error response (`bound-crossed`, `not-found`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_in: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_out: Option<String>,
    pub start_ns: u64,
    pub end_ns: u64,
    /// A transport error (timeout, connection reset, body cut short): the operation
    /// may or may not have taken effect — unless it starts with [`CONNECT_ERROR`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The `Idempotency-Key` of a write: every attempt of one operation carries the
    /// same one, and no other operation of the run does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// 0 for an operation's first attempt, then 1, 2, … for its retries.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// The answer carried `Idempotent-Replayed: true`: the recorded outcome of an
    /// earlier attempt, nothing written now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
}

fn one() -> usize {
    1
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What an operation is known to have done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It took effect (a write) or observed the item (a read; a 404 observes its
    /// absence, version 0).
    Ok,
    /// It was rejected and wrote nothing (a 4xx, or a 503 `session-busy`,
    /// `origin-unavailable` or `idempotency-store-full`), could not connect, or a read
    /// that observed nothing.
    Failed,
    /// A write whose effect is unknown: no response, a 5xx without a problem saying
    /// nothing was written (a gateway error, `internal`), or `write-outcome-unknown`.
    Unknown,
}

impl OpRecord {
    /// Classifies the operation. Reads are never `Unknown`: a read that got no
    /// answer observed nothing and changed nothing.
    pub fn outcome(&self) -> Outcome {
        let answered = self.error.is_none();
        if self
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with(CONNECT_ERROR))
        {
            return Outcome::Failed;
        }
        match (self.status, answered) {
            (Some(status), true) if (200..300).contains(&status) => Outcome::Ok,
            (Some(404), true) if self.op == OpKind::Read && self.problem.as_deref() == Some("not-found") => {
                Outcome::Ok
            }
            _ if self.op == OpKind::Read => Outcome::Failed,
            (Some(status), true) if status < 500 => Outcome::Failed,
            // The problems that say the write was not attempted.
            (Some(_), true)
                if matches!(
                    self.problem.as_deref(),
                    Some("origin-unavailable" | "session-busy" | "idempotency-store-full")
                ) =>
            {
                Outcome::Failed
            }
            _ => Outcome::Unknown,
        }
    }

    /// Whether this answer leaves the operation's outcome open, so that sending the
    /// write again with its key may settle it: an unknown outcome, or a 409
    /// `idempotency-key-in-flight` (an earlier attempt is still running).
    pub fn unsettled(&self) -> bool {
        self.op.is_write()
            && (self.outcome() == Outcome::Unknown
                || self.problem.as_deref() == Some("idempotency-key-in-flight"))
    }

    /// The version the operation observed or wrote, when it is `Ok`: the ETag, or 0
    /// for a read that found no item.
    pub fn observed_version(&self) -> Option<u64> {
        match self.outcome() {
            Outcome::Ok if self.status == Some(404) => Some(0),
            Outcome::Ok => self.version,
            _ => None,
        }
    }

    /// The `(collection, key)` the operation touched.
    pub fn item(&self) -> (&str, &str) {
        (&self.collection, &self.key)
    }

    /// An integer field of the returned document.
    pub fn int_field(&self, field: &str) -> Option<i64> {
        self.value.as_ref()?.get(field)?.as_i64()
    }
}

/// A short, stable digest of a token: 16 hex digits of its SHA-256.
pub fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_with_their_kind() {
        let op = OpRecord {
            session: "r-s1".into(),
            op: OpKind::Patch,
            collection: "profiles".into(),
            key: "k1".into(),
            status: Some(200),
            version: Some(3),
            ..OpRecord::default()
        };
        let text = serde_json::to_string(&Line::Op(op.clone())).unwrap();
        assert!(text.starts_with(r#"{"kind":"op","session":"r-s1""#), "{text}");
        assert!(!text.contains("error"), "absent fields are left out: {text}");
        assert_eq!(serde_json::from_str::<Line>(&text).unwrap(), Line::Op(op));
    }

    #[test]
    fn a_line_without_key_or_attempt_still_reads() {
        // As written before writes carried keys.
        let old = r#"{"kind":"op","session":"r-s1","index":4,"target":"t","served_by":"t","op":"put","collection":"profiles","key":"k","status":200,"version":2,"start_ns":1,"end_ns":2}"#;
        let Line::Op(op) = serde_json::from_str::<Line>(old).unwrap() else {
            panic!("an op line")
        };
        assert_eq!((op.idempotency_key, op.attempt, op.replayed), (None, 0, false));
        let retry = OpRecord {
            idempotency_key: Some("r-s1-4".into()),
            attempt: 2,
            replayed: true,
            ..OpRecord::default()
        };
        let text = serde_json::to_string(&Line::OriginAfter(retry.clone())).unwrap();
        assert!(text.starts_with(r#"{"kind":"origin_after""#), "{text}");
        assert_eq!(
            serde_json::from_str::<Line>(&text).unwrap(),
            Line::OriginAfter(retry)
        );
    }

    #[test]
    fn an_outage_overlaps_what_ran_while_the_primary_stopped_was_down_or_started() {
        let outage = OutageRecord {
            stop_ns: 100,
            stopped_ns: 150,
            start_ns: 900,
            started_ns: 1000,
            error: None,
        };
        assert!(!outage.overlaps(10, 99));
        assert!(outage.overlaps(10, 100));
        assert!(outage.overlaps(400, 500));
        assert!(outage.overlaps(1000, 1100));
        assert!(!outage.overlaps(1001, 1100));
        let line = serde_json::to_string(&Line::Outage(outage.clone())).unwrap();
        assert!(line.starts_with(r#"{"kind":"outage","stop_ns":100"#), "{line}");
        assert_eq!(serde_json::from_str::<Line>(&line).unwrap(), Line::Outage(outage));
    }

    #[test]
    fn outcomes() {
        let rec = |op, status, problem: Option<&str>, error: Option<&str>| OpRecord {
            op,
            status,
            problem: problem.map(Into::into),
            error: error.map(Into::into),
            ..OpRecord::default()
        };
        use OpKind::*;
        assert_eq!(rec(Read, Some(200), None, None).outcome(), Outcome::Ok);
        assert_eq!(
            rec(Read, Some(404), Some("not-found"), None).outcome(),
            Outcome::Ok
        );
        assert_eq!(rec(Read, None, None, Some("timeout")).outcome(), Outcome::Failed);
        assert_eq!(
            rec(Incr, Some(409), Some("bound-crossed"), None).outcome(),
            Outcome::Failed
        );
        assert_eq!(
            rec(Put, Some(503), Some("origin-unavailable"), None).outcome(),
            Outcome::Failed
        );
        assert_eq!(
            rec(Put, Some(503), Some("write-outcome-unknown"), None).outcome(),
            Outcome::Unknown
        );
        assert_eq!(rec(Put, Some(502), None, None).outcome(), Outcome::Unknown);
        assert_eq!(
            rec(Incr, None, None, Some("connection reset")).outcome(),
            Outcome::Unknown
        );
        let refused = format!("{CONNECT_ERROR}tcp connect error: Connection refused");
        assert_eq!(rec(Incr, None, None, Some(&refused)).outcome(), Outcome::Failed);
        assert_eq!(
            rec(Put, Some(503), Some("idempotency-store-full"), None).outcome(),
            Outcome::Failed
        );
        let in_flight = rec(Patch, Some(409), Some("idempotency-key-in-flight"), None);
        assert_eq!(in_flight.outcome(), Outcome::Failed, "this attempt wrote nothing");
        assert!(in_flight.unsettled(), "but an earlier one may still be running");
        assert!(rec(Put, Some(504), None, None).unsettled());
        assert!(!rec(Put, Some(503), Some("session-busy"), None).unsettled());
        assert!(!rec(Read, None, None, Some("timeout")).unsettled());
        assert_eq!(token_hash("abc").len(), 16);
    }
}
