//! `edgecache loadgen`: a workload generator that records a history.
//!
//! N sessions run concurrently, each a task with its own session id and token chain,
//! issuing M operations over K keys of one collection — one after another, or up to
//! `--parallel` of them at once (see [`session`] and, for the tokens of parallel
//! requests, [`client::SessionState`]):
//! reads, PUTs and merge PATCHes that write values unique in the run, plus reads and
//! bounded decrements of one shared strict counter that loadgen creates first. Each
//! operation goes to a target picked per operation (round-robin or at random), and
//! becomes one line of the history (see [`history`]), which `edgecache check` reads.
//!
//! ```text
//! edgecache loadgen --targets http://127.0.0.1:8080,http://127.0.0.1:8081 \
//!     --sessions 20 --ops 200 --keys 16 --out history.jsonl [--parallel 2] \
//!     [--retry-unknown 3] [--pg-url postgres://… [--busy-rows 0.3 --busy-hold 0.8]]
//! ```
//!
//! Every write carries an `Idempotency-Key` of its own (`<run>-s<session>-<seq>`). A
//! write whose outcome is unknown — no answer, 503 `write-outcome-unknown`, 409
//! `idempotency-key-in-flight`, a gateway's 502/504 — is sent again with the same key,
//! to the next target, up to `--retry-unknown` times after pauses that double from
//! `--retry-delay`, until an attempt is acknowledged (a replay, if an earlier one
//! applied) or retries run out; every attempt is a line of the history.
//!
//! After the sessions, loadgen records the origin's state of every key and of the
//! counter: straight from the PostgreSQL primary with `--pg-url` (and then also
//! before the sessions start), else through a node with a fresh session — after
//! `--settle` seconds when a write's outcome is still unknown, so that writes still
//! running in a node have ended. With `--pg-url`, `--busy-rows` holds rows locked
//! while the sessions run (see [`busy`]).
//!
//! With `--flood R`, R anonymous GETs a second run beside the sessions, recorded only
//! as counts (see [`flood`]).
//!
//! The run is bounded: N × M operations and their retries, a timeout on every
//! request, and `--duration-limit` after which sessions issue nothing more. A
//! transport error is recorded (its outcome is unknown) and the session goes on with
//! its last token.

pub mod busy;
pub mod client;
pub mod flood;
pub mod history;
pub mod invalidation;
pub mod outage;
pub mod postgres;
pub mod session;
pub mod workload;
pub mod writes;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use busy::{BusyPlan, BusyRows, BusyStats};
use client::{Client, SessionState};
use flood::{Flood, FloodPlan};
use history::{
    CounterInfo, FloodStats, Line, OpKind, OpRecord, OutageRecord, Outcome, RunInfo, CONNECT_ERROR,
};
use outage::{Outage, OutagePlan};
use session::{run_session, send_keyed, Retry, Shared};
use workload::{Mix, Request, Workload};

/// How a session picks the target of each operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Pick {
    /// Session `i`'s operation `j` goes to target `(i + j) mod T`.
    RoundRobin,
    /// A random target per operation.
    Random,
}

/// `edgecache loadgen`.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadgenArgs {
    /// Base URLs of the nodes or the load balancer, comma-separated.
    #[arg(long, value_name = "URL[,URL…]", value_delimiter = ',', required = true)]
    pub targets: Vec<String>,
    /// Concurrent sessions.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub sessions: usize,
    /// Operations per session.
    #[arg(long, value_name = "M", default_value_t = 100)]
    pub ops: usize,
    /// Keys the sessions read and write.
    #[arg(long, value_name = "K", default_value_t = 16)]
    pub keys: usize,
    /// The collection of the keys.
    #[arg(long, value_name = "NAME", default_value = "profiles")]
    pub collection: String,
    /// The string field each write sets to a value unique in the run.
    #[arg(long, value_name = "FIELD", default_value = "display_name")]
    pub field: String,
    /// The bound of the field's freshness class when it is bounded (`max_staleness`
    /// in the nodes' configuration; `profiles` is bounded to 10 s by default), in
    /// seconds: recorded in the run line, and `edgecache check` then reports a read
    /// that began more than this after a write of its item was acknowledged and does
    /// not reflect it.
    #[arg(long, value_name = "SECS")]
    pub bound: Option<f64>,
    /// Key names are this prefix followed by 0..K.
    #[arg(long, value_name = "PREFIX", default_value = "lg-")]
    pub key_prefix: String,
    /// The collection of the shared counter.
    #[arg(long, value_name = "NAME", default_value = "products")]
    pub counter_collection: String,
    /// The id of the shared counter item (created, or replaced, at start).
    #[arg(long, value_name = "ID", default_value = "loadgen-stock")]
    pub counter_key: String,
    /// The counter's integer field.
    #[arg(long, value_name = "FIELD", default_value = "stock")]
    pub counter_field: String,
    /// The counter's value at start (default: half the decrements the mix should
    /// issue, so that it reaches its bound mid-run).
    #[arg(long, value_name = "S")]
    pub counter_start: Option<i64>,
    /// The bound every decrement asks for.
    #[arg(long, value_name = "MIN", default_value_t = 0)]
    pub counter_min: i64,
    /// Relative weights of the operations.
    #[arg(long, value_name = "MIX", default_value = Mix::DEFAULT)]
    pub mix: Mix,
    /// How each operation's target is picked.
    #[arg(long, value_enum, default_value_t = Pick::RoundRobin)]
    pub pick: Pick,
    /// Seed of the workload's choices (default: from the clock; printed).
    #[arg(long, value_name = "X")]
    pub seed: Option<u64>,
    /// Operations each session has in flight at once: a session starts its next
    /// operation as soon as one of its N ends. Each request carries the token the
    /// session holds when it is sent; each answer's token replaces it as it arrives
    /// (the last to arrive wins, as in a browser tab).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub parallel: usize,
    /// Beside the sessions, R anonymous GETs a second of the keys and of missing ids,
    /// spread over the targets, without X-Session-Id (see --flood-named); recorded
    /// only as counts.
    #[arg(long, value_name = "R")]
    pub flood: Option<f64>,
    /// The share of --flood requests that name a fresh session id of their own (each
    /// takes a place in a node's session table).
    #[arg(long, value_name = "SHARE", default_value_t = 0.25, requires = "flood")]
    pub flood_named: f64,
    /// At most this many requests in flight across sessions (default: --parallel per
    /// session).
    #[arg(long, value_name = "C")]
    pub concurrency: Option<usize>,
    /// The history file.
    #[arg(long, value_name = "FILE", default_value = "history.jsonl")]
    pub out: PathBuf,
    /// Stop issuing operations after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub duration_limit: Option<f64>,
    /// Timeout of each request, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub timeout: f64,
    /// Send a write whose outcome is unknown (no answer, 503 write-outcome-unknown,
    /// 409 idempotency-key-in-flight, a gateway's 502/504) again with the same
    /// Idempotency-Key, at most this many times.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub retry_unknown: u32,
    /// The pause before the first retry, in seconds; doubled before each next one.
    #[arg(long, value_name = "SECS", default_value_t = 0.1)]
    pub retry_delay: f64,
    /// The nodes' PostgreSQL primary: the state of the keys and the counter is then
    /// read from it before and after the run (else after the run only, through a node
    /// with a fresh session), and --busy-rows can hold its rows. The tables must be
    /// named and laid out as `edgecache migrate` does by default.
    #[arg(long, value_name = "URL")]
    pub pg_url: Option<String>,
    /// With --pg-url: every --busy-every, with probability P, lock a random key's row
    /// and the counter's row FOR UPDATE for --busy-hold (set it above the nodes'
    /// session.write_timeout, so that writes are given up after they started).
    #[arg(long, value_name = "P", requires = "pg_url")]
    pub busy_rows: Option<f64>,
    /// The pause between --busy-rows episodes, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 0.3)]
    pub busy_every: f64,
    /// How long a --busy-rows episode holds its locks, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub busy_hold: f64,
    /// The nodes' PostgreSQL primary's data directory, for --stop-primary-after.
    #[arg(long, value_name = "DIR")]
    pub pg_data: Option<PathBuf>,
    /// Where `pg_ctl` is.
    #[arg(long, value_name = "DIR", default_value = "/usr/lib/postgresql/15/bin")]
    pub pg_bin: PathBuf,
    /// Stop the primary (`pg_ctl stop -m fast` on --pg-data, as the postgres user when
    /// run as root) this many seconds after the sessions start ...
    #[arg(long, value_name = "SECS", requires_all = ["pg_data", "stop_primary_for"])]
    pub stop_primary_after: Option<f64>,
    /// ... and start it again this many seconds later (at once if the sessions end
    /// first). Recorded in the history: `edgecache check` excuses the requests that
    /// failed meanwhile, and holds every served read to every guarantee.
    #[arg(long, value_name = "SECS", requires = "stop_primary_after")]
    pub stop_primary_for: Option<f64>,
    /// When a write's outcome is still unknown after its retries (or rows were held
    /// busy), wait this long after the sessions end before reading the final state, so
    /// that writes still running in the nodes end first.
    #[arg(long, value_name = "SECS", default_value_t = 3.0)]
    pub settle: f64,
    #[command(flatten)]
    pub writes: writes::WriteBenchArgs,
    #[command(flatten)]
    pub probe: invalidation::InvalidationArgs,
}

/// Runs the workload and writes the history. Fails only when the run cannot start:
/// bad arguments, an output file that cannot be created, a counter that cannot be
/// created, a `--pg-url` that cannot be reached.
pub fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    if let Some(mode) = args.writes.write_bench {
        return writes::run(&args, mode);
    }
    if let Some(changes) = args.probe.invalidation_probe {
        return invalidation::run(&args, changes);
    }
    if args.sessions == 0
        || args.keys == 0
        || args.parallel == 0
        || args.targets.iter().all(|t| t.trim().is_empty())
    {
        bail!("--sessions, --keys, --parallel and --targets must not be empty");
    }
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !positive(args.timeout) {
        bail!("--timeout must be positive");
    }
    let at_least_zero = |x: f64| x.is_finite() && x >= 0.0;
    if !at_least_zero(args.retry_delay) || !at_least_zero(args.settle) {
        bail!("--retry-delay and --settle must be 0 or more");
    }
    let non_negative = |x: Option<f64>| x.is_none_or(|x| x.is_finite() && x >= 0.0);
    if !non_negative(args.stop_primary_after) || !non_negative(args.stop_primary_for) {
        bail!("--stop-primary-after and --stop-primary-for must be 0 or more");
    }
    if args.bound.is_some_and(|b| !(b.is_finite() && b >= 0.0)) {
        bail!("--bound must be 0 or more");
    }
    if args.flood.is_some_and(|r| !positive(r)) || !(0.0..=1.0).contains(&args.flood_named) {
        bail!("--flood must be positive, --flood-named lie in [0, 1]");
    }
    if let Some(p) = args.busy_rows {
        if !(0.0..=1.0).contains(&p) || !positive(args.busy_every) || !positive(args.busy_hold) {
            bail!("--busy-rows must lie in [0, 1], --busy-every and --busy-hold be positive");
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: LoadgenArgs) -> anyhow::Result<()> {
    let epoch = Instant::now();
    let seed = args.seed.unwrap_or_else(clock_seed);
    let run = run_id();
    let targets: Vec<String> = args
        .targets
        .iter()
        .map(|t| t.trim().trim_end_matches('/').to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    let counter = args.mix.uses_counter().then(|| {
        let expected = (args.sessions * args.ops) as f64 * args.mix.incr_share();
        CounterInfo {
            collection: args.counter_collection.clone(),
            key: args.counter_key.clone(),
            field: args.counter_field.clone(),
            start: args
                .counter_start
                .unwrap_or(args.counter_min + (expected / 2.0).ceil().max(1.0) as i64),
            min: args.counter_min,
        }
    });
    let info = RunInfo {
        run: run.clone(),
        seed,
        targets: targets.clone(),
        sessions: args.sessions,
        ops: args.ops,
        parallel: args.parallel,
        keys: args.keys,
        collection: args.collection.clone(),
        field: args.field.clone(),
        max_staleness_ms: args.bound.map(|secs| (secs * 1000.0).round() as u64),
        counter: counter.clone(),
    };
    let keys: Vec<String> = (0..args.keys)
        .map(|i| format!("{}{i}", args.key_prefix))
        .collect();
    let retry = Retry {
        max: args.retry_unknown,
        delay: Duration::from_secs_f64(args.retry_delay),
    };
    // Connect before anything is written: a bad URL stops the run at once.
    if let Some(url) = &args.pg_url {
        drop(postgres::connect(url).await?);
    }

    let file = File::create(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let (lines, received) = mpsc::channel();
    let writer = std::thread::spawn(move || write_history(BufWriter::new(file), received));
    lines.send(Line::Run(info)).ok();

    let client = Client::new(Duration::from_secs_f64(args.timeout), epoch)?;
    if let Some(counter) = &counter {
        let request = Request {
            op: OpKind::Put,
            collection: counter.collection.clone(),
            key: counter.key.clone(),
            body: Some(json!({ counter.field.clone(): counter.start })),
        };
        let record = create_counter(&client, &targets, &run, request, retry, &lines).await;
        if record.outcome() != Outcome::Ok {
            drop(lines);
            writer.join().ok();
            bail!(
                "could not create the counter {}/{} on {}: status {:?}, problem {:?}, error {:?}",
                counter.collection,
                counter.key,
                targets.join(", "),
                record.status,
                record.problem,
                record.error
            );
        }
    }
    let state = StateReader {
        client: &client,
        pg_url: args.pg_url.as_deref(),
        targets: &targets,
        collection: &args.collection,
        field: &args.field,
        keys: &keys,
        counter: counter.as_ref(),
        epoch,
    };
    if args.pg_url.is_some() {
        for record in state.read(&format!("{run}-before")).await? {
            lines.send(Line::OriginBefore(record)).ok();
        }
    }
    let busy = match (args.busy_rows, &args.pg_url) {
        (Some(probability), Some(url)) if probability > 0.0 => {
            let plan = BusyPlan {
                probability,
                every: Duration::from_secs_f64(args.busy_every),
                hold: Duration::from_secs_f64(args.busy_hold),
                collection: args.collection.clone(),
                keys: keys.clone(),
                counter: counter.as_ref().map(|c| (c.collection.clone(), c.key.clone())),
                seed,
            };
            Some(BusyRows::start(postgres::connect(url).await?, url.clone(), plan))
        }
        _ => None,
    };

    eprintln!(
        "loadgen: run {run}, seed {seed}: {} sessions × {} ops over {} keys of {}, mix {}, against {}{}{}",
        args.sessions,
        args.ops,
        args.keys,
        args.collection,
        args.mix,
        targets.join(", "),
        match args.flood {
            Some(rate) => format!(
                "; {} per session in flight; an anonymous flood of {rate} GETs/s ({:.0} % with fresh session ids)",
                args.parallel,
                args.flood_named * 100.0
            ),
            None => format!("; {} per session in flight", args.parallel),
        },
        match (&busy, args.busy_rows) {
            (Some(_), Some(p)) => format!(
                "; rows held busy for {} s with probability {p} every {} s",
                args.busy_hold, args.busy_every
            ),
            _ => String::new(),
        }
    );
    let shared = Arc::new(Shared {
        client: client.clone(),
        workload: Workload {
            run: run.clone(),
            mix: args.mix,
            collection: args.collection.clone(),
            field: args.field.clone(),
            key_prefix: args.key_prefix.clone(),
            keys: args.keys,
            counter: counter.clone(),
        },
        targets: targets.clone(),
        pick: args.pick,
        seed,
        ops: args.ops,
        retry,
        deadline: args
            .duration_limit
            .map(|secs| Instant::now() + Duration::from_secs_f64(secs.max(0.0))),
        parallel: args.parallel,
        in_flight: Semaphore::new(args.concurrency.unwrap_or(args.sessions * args.parallel).max(1)),
        lines: lines.clone(),
        unsettled: AtomicU64::new(0),
    });
    let flood = args.flood.map(|rate| {
        Flood::start(
            client.clone(),
            FloodPlan {
                rate,
                named: args.flood_named,
                targets: targets.clone(),
                collection: args.collection.clone(),
                keys: keys.clone(),
                run: run.clone(),
                seed,
            },
        )
    });
    let outage = match (&args.pg_data, args.stop_primary_after, args.stop_primary_for) {
        (Some(data), Some(after), Some(length)) => Some(Outage::start(
            OutagePlan {
                pg_ctl: args.pg_bin.join("pg_ctl"),
                data: data.clone(),
                after: Duration::from_secs_f64(after),
                length: Duration::from_secs_f64(length),
            },
            epoch,
        )),
        _ => None,
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.sessions)
        .map(|i| tokio::spawn(run_session(shared.clone(), i)))
        .collect();
    let mut cut_short = false;
    for task in tasks {
        cut_short |= task.await.unwrap_or(true);
    }
    let elapsed = started.elapsed();
    if let Some(outage) = outage {
        if let Some(record) = outage.stop().await {
            lines.send(Line::Outage(record)).ok();
        }
    }
    if let Some(flood) = flood {
        lines.send(Line::Flood(flood.stop().await)).ok();
    }
    let busy = match busy {
        Some(busy) => Some(busy.stop().await),
        None => None,
    };
    // A write given up while it ran goes on in its node until it commits or fails:
    // give those time to end before the final state is read.
    let unsettled = shared.unsettled.load(Ordering::Relaxed);
    if unsettled > 0 || busy.is_some() {
        tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    }

    // The counter as a fresh session sees it, once every session is done.
    if let Some(counter) = &counter {
        let last = SessionState::new(format!("{run}-final"));
        let request = Request {
            op: OpKind::Read,
            collection: counter.collection.clone(),
            key: counter.key.clone(),
            body: None,
        };
        let mut record = None;
        for target in &targets {
            let read = client.send(target, &last, request.clone(), None).await;
            let done = read.outcome() == Outcome::Ok;
            record = Some(read);
            if done {
                break;
            }
        }
        lines.send(Line::Final(record.expect("there is a target"))).ok();
    }
    match state.read(&format!("{run}-after")).await {
        Ok(records) => {
            for record in records {
                lines.send(Line::OriginAfter(record)).ok();
            }
        }
        Err(e) => eprintln!("loadgen: the final state could not be read: {e:#}"),
    }
    drop(shared);
    drop(lines);
    let summary = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the history writer panicked"))??;
    summary.print(&args, elapsed, cut_short, busy.as_ref());
    Ok(())
}

/// Creates the counter with a keyed PUT: sent to the first target that accepts a
/// connection (a refused connection carried no request, so trying the next one cannot
/// apply it twice), and sent again with its key while its outcome is unknown. Every
/// attempt is a setup line; returns the last.
async fn create_counter(
    client: &Client,
    targets: &[String],
    run: &str,
    request: Request,
    retry: Retry,
    lines: &mpsc::Sender<Line>,
) -> OpRecord {
    let session = SessionState::new(format!("{run}-setup"));
    let key = format!("{run}-setup");
    let mut last = None;
    for target in targets {
        let attempts = send_keyed(
            client,
            &session,
            &request,
            &key,
            retry,
            |_| target.as_str(),
            |r| lines.send(Line::Setup(r)).is_ok(),
        )
        .await;
        let refused = attempts
            .last
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with(CONNECT_ERROR));
        last = Some(attempts.last);
        if !refused {
            break;
        }
    }
    last.expect("there is a target")
}

/// Reads the run's keys and its counter as the origin holds them: straight from the
/// primary when loadgen has a PostgreSQL connection, else through the first target
/// that answers, in a fresh session.
struct StateReader<'a> {
    client: &'a Client,
    /// The primary, connected to afresh for each read (it may have restarted).
    pg_url: Option<&'a str>,
    targets: &'a [String],
    collection: &'a str,
    field: &'a str,
    keys: &'a [String],
    counter: Option<&'a CounterInfo>,
    epoch: Instant,
}

impl StateReader<'_> {
    async fn read(&self, session: &str) -> anyhow::Result<Vec<OpRecord>> {
        let mut items = vec![postgres::Items {
            collection: self.collection,
            field: self.field,
            ids: self.keys.to_vec(),
        }];
        if let Some(c) = self.counter {
            items.push(postgres::Items {
                collection: &c.collection,
                field: &c.field,
                ids: vec![c.key.clone()],
            });
        }
        let mut records = Vec::new();
        if let Some(url) = self.pg_url {
            let pg = postgres::connect(url).await?;
            for items in &items {
                let mut read = postgres::read_items(&pg, items, session, self.epoch).await?;
                // One index per record across collections.
                for r in &mut read {
                    r.index += records.len() as u64;
                }
                records.extend(read);
            }
            return Ok(records);
        }
        let fresh = SessionState::new(session.to_owned());
        for items in &items {
            for id in &items.ids {
                let request = Request {
                    op: OpKind::Read,
                    collection: items.collection.to_owned(),
                    key: id.clone(),
                    body: None,
                };
                let mut record = None;
                for target in self.targets {
                    let read = self.client.send(target, &fresh, request.clone(), None).await;
                    let done = read.outcome() == Outcome::Ok;
                    record = Some(read);
                    if done {
                        break;
                    }
                }
                records.extend(record);
            }
        }
        Ok(records)
    }
}

/// Writes every line as it arrives and counts the operations.
fn write_history(mut out: BufWriter<File>, lines: mpsc::Receiver<Line>) -> anyhow::Result<Summary> {
    let mut summary = Summary::default();
    for line in lines {
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
        summary.add(&line);
    }
    out.flush()?;
    Ok(summary)
}

/// Requests by kind and answer, latencies by kind, and how the writes' outcomes
/// settled.
#[derive(Default)]
struct Summary {
    /// (kind, status and problem, or "error") → count.
    counts: BTreeMap<(OpKind, String), u64>,
    latencies: BTreeMap<OpKind, Vec<u64>>,
    /// Requests sent: first attempts and retries.
    requests: u64,
    /// Operations: first attempts.
    ops: u64,
    retries: u64,
    replayed: u64,
    /// Attempts whose outcome was unknown.
    unknown: u64,
    /// Each write's attempts so far, by idempotency key.
    writes: HashMap<String, WriteTally>,
    counter: Option<(i64, i64)>,
    counter_final: Option<String>,
    /// Where the final state was read, and how many items.
    state: Option<(String, usize)>,
    flood: Option<FloodStats>,
    outage: Option<OutageRecord>,
}

/// How one write's attempts went.
#[derive(Default, Clone, Copy)]
struct WriteTally {
    first_open: bool,
    open: bool,
    ok: bool,
}

impl Summary {
    fn add(&mut self, line: &Line) {
        match line {
            Line::Run(info) => self.counter = info.counter.as_ref().map(|c| (c.start, c.min)),
            Line::Op(op) => {
                self.requests += 1;
                if op.attempt == 0 {
                    self.ops += 1;
                } else {
                    self.retries += 1;
                }
                self.replayed += u64::from(op.replayed);
                let status = match (op.status, &op.error, &op.problem) {
                    (Some(s), None, Some(p)) if s >= 500 || s == 409 => format!("{s} {p}"),
                    (Some(s), None, _) => s.to_string(),
                    _ => "error".into(),
                };
                *self.counts.entry((op.op, status)).or_default() += 1;
                self.latencies
                    .entry(op.op)
                    .or_default()
                    .push(op.end_ns.saturating_sub(op.start_ns));
                if op.outcome() == Outcome::Unknown {
                    self.unknown += 1;
                }
                if let Some(key) = &op.idempotency_key {
                    let tally = self.writes.entry(key.clone()).or_default();
                    if op.attempt == 0 {
                        tally.first_open = op.unsettled();
                    }
                    tally.open |= op.unsettled();
                    tally.ok |= op.outcome() == Outcome::Ok;
                }
            }
            Line::Final(op) => {
                self.counter_final = Some(match (op.value.as_ref(), op.version) {
                    (Some(v), Some(version)) => format!("{v} at version {version}"),
                    _ => format!("unread (status {:?}, error {:?})", op.status, op.error),
                })
            }
            Line::OriginAfter(op) => {
                let state = self.state.get_or_insert_with(|| (op.target.clone(), 0));
                state.1 += 1;
            }
            Line::Flood(stats) => self.flood = Some(stats.clone()),
            Line::Outage(record) => self.outage = Some(record.clone()),
            Line::Setup(_) | Line::OriginBefore(_) => {}
        }
    }

    fn print(&self, args: &LoadgenArgs, elapsed: Duration, cut_short: bool, busy: Option<&BusyStats>) {
        let secs = elapsed.as_secs_f64().max(1e-9);
        eprintln!(
            "loadgen: {} ops ({} requests, {} of them retries) in {:.2} s ({:.0} ops/s){}; history in {}",
            self.ops,
            self.requests,
            self.retries,
            secs,
            self.ops as f64 / secs,
            if cut_short {
                ", cut short by --duration-limit"
            } else {
                ""
            },
            args.out.display()
        );
        for (kind, latencies) in &self.latencies {
            let statuses: Vec<String> = self
                .counts
                .iter()
                .filter(|((k, _), _)| k == kind)
                .map(|((_, status), n)| format!("{status}: {n}"))
                .collect();
            let mut sorted = latencies.clone();
            sorted.sort_unstable();
            eprintln!(
                "  {:<6} {:>6}   {:<48} p50 {:.2} ms, p99 {:.2} ms",
                kind.as_str(),
                latencies.len(),
                statuses.join(", "),
                percentile(&sorted, 0.50) as f64 / 1e6,
                percentile(&sorted, 0.99) as f64 / 1e6,
            );
        }
        let tallies = self.writes.values();
        let first_open = tallies.clone().filter(|t| t.first_open).count();
        let resolved = tallies.clone().filter(|t| t.first_open && t.ok).count();
        let still_open = tallies.filter(|t| t.open && !t.ok).count();
        eprintln!(
            "  requests of unknown outcome (no answer, 5xx): {}; writes left open by their first attempt: \
             {first_open}, settled by a retry: {resolved}, still unknown: {still_open}; replayed answers: {}",
            self.unknown, self.replayed
        );
        if let Some(flood) = &self.flood {
            eprintln!("  {}", flood_summary(flood));
        }
        if let Some(outage) = &self.outage {
            eprintln!("  {}", outage_summary(outage));
        }
        if let Some(busy) = busy {
            eprintln!(
                "  busy rows: {} episodes held, {} missed, {} connections opened again{}",
                busy.episodes,
                busy.missed,
                busy.reconnects,
                busy.error
                    .as_deref()
                    .map(|e| format!("; without a connection at the end: {e}"))
                    .unwrap_or_default()
            );
        }
        if let (Some((start, min)), Some(last)) = (self.counter, &self.counter_final) {
            eprintln!("  counter: start {start}, bound {min}; final {last}");
        }
        if let Some((source, n)) = &self.state {
            eprintln!("  final state: {n} items read from {source}");
        }
    }
}

/// One line on what the flood sent and got back.
pub fn flood_summary(flood: &FloodStats) -> String {
    let statuses: Vec<String> = flood.statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
    format!(
        "anonymous flood: {} GETs in {:.1} s ({:.0}/s of {}/s asked), {} with fresh session ids, {} ticks \
         skipped; {}",
        flood.sent,
        flood.secs,
        flood.sent as f64 / flood.secs.max(1e-9),
        flood.rate,
        flood.named,
        flood.skipped,
        statuses.join(", ")
    )
}

/// One line on when the primary was down.
pub fn outage_summary(outage: &OutageRecord) -> String {
    let s = |ns: u64| ns as f64 / 1e9;
    format!(
        "the primary stopped: pg_ctl stop {:.2}–{:.2} s, start {:.2}–{:.2} s into the run{}",
        s(outage.stop_ns),
        s(outage.stopped_ns),
        s(outage.start_ns),
        s(outage.started_ns),
        outage
            .error
            .as_deref()
            .map(|e| format!("; {e}"))
            .unwrap_or_default()
    )
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn clock_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// 8 hex digits, different for every run: session ids and values carry it, so two
/// runs over the same store never share a session or a written value.
fn run_id() -> String {
    let digest = Sha256::digest(format!("{}:{}", clock_seed(), std::process::id()));
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}
