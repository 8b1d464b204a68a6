//! `edgecache loadgen`: a workload generator that records a history.
//!
//! N sessions run concurrently, each a task with its own session id and token chain,
//! issuing M operations strictly one after another over K keys of one collection:
//! reads, PUTs and merge PATCHes that write values unique in the run, plus reads and
//! bounded decrements of one shared strict counter that loadgen creates first. Each
//! operation goes to a target picked per operation (round-robin or at random), and
//! becomes one line of the history (see [`history`]), which `edgecache check` reads.
//!
//! ```text
//! edgecache loadgen --targets http://127.0.0.1:8080,http://127.0.0.1:8081 \
//!     --sessions 20 --ops 200 --keys 16 --out history.jsonl
//! ```
//!
//! The run is bounded: N × M operations, a timeout on every request, and
//! `--duration-limit` after which sessions issue nothing more. A transport error is
//! recorded (its outcome is unknown) and the session goes on with its last token.

pub mod client;
pub mod history;
pub mod workload;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use client::{Client, SessionState};
use history::{CounterInfo, Line, OpKind, OpRecord, Outcome, RunInfo, CONNECT_ERROR};
use workload::{Mix, Request, Rng, Workload};

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
    /// At most this many requests in flight across sessions (default: one per session).
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
}

/// What every session task shares.
struct Shared {
    client: Client,
    workload: Workload,
    targets: Vec<String>,
    pick: Pick,
    seed: u64,
    ops: usize,
    deadline: Option<Instant>,
    in_flight: Semaphore,
    lines: mpsc::Sender<Line>,
}

/// Runs the workload and writes the history. Fails only when the run cannot start:
/// bad arguments, an output file that cannot be created, a counter that cannot be
/// created.
pub fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    if args.sessions == 0 || args.keys == 0 || args.targets.iter().all(|t| t.trim().is_empty()) {
        bail!("--sessions, --keys and --targets must not be empty");
    }
    if args.timeout.is_nan() || args.timeout <= 0.0 {
        bail!("--timeout must be positive");
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
        keys: args.keys,
        collection: args.collection.clone(),
        field: args.field.clone(),
        counter: counter.clone(),
    };

    let file = File::create(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let (lines, received) = mpsc::channel();
    let writer = std::thread::spawn(move || write_history(BufWriter::new(file), received));
    lines.send(Line::Run(info)).ok();

    let client = Client::new(Duration::from_secs_f64(args.timeout), epoch)?;
    if let Some(counter) = &counter {
        let mut setup = SessionState::new(format!("{run}-setup"));
        let request = Request {
            op: OpKind::Put,
            collection: counter.collection.clone(),
            key: counter.key.clone(),
            body: Some(json!({ counter.field.clone(): counter.start })),
        };
        let record = send_to_first_reachable(&client, &targets, &mut setup, request).await;
        let created = record.outcome() == Outcome::Ok;
        let failure = format!(
            "status {:?}, problem {:?}, error {:?}",
            record.status, record.problem, record.error
        );
        lines.send(Line::Setup(record)).ok();
        if !created {
            drop(lines);
            writer.join().ok();
            bail!(
                "could not create the counter {}/{} on {}: {failure}",
                counter.collection,
                counter.key,
                targets.join(", ")
            );
        }
    }

    eprintln!(
        "loadgen: run {run}, seed {seed}: {} sessions × {} ops over {} keys of {}, mix {}, against {}",
        args.sessions,
        args.ops,
        args.keys,
        args.collection,
        args.mix,
        targets.join(", ")
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
        deadline: args
            .duration_limit
            .map(|secs| Instant::now() + Duration::from_secs_f64(secs.max(0.0))),
        in_flight: Semaphore::new(args.concurrency.unwrap_or(args.sessions).max(1)),
        lines: lines.clone(),
    });
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.sessions)
        .map(|i| tokio::spawn(run_session(shared.clone(), i)))
        .collect();
    let mut cut_short = false;
    for task in tasks {
        cut_short |= task.await.unwrap_or(true);
    }
    let elapsed = started.elapsed();

    // The counter as a fresh session sees it, once every session is done.
    if let Some(counter) = &counter {
        let mut last = SessionState::new(format!("{run}-final"));
        let request = Request {
            op: OpKind::Read,
            collection: counter.collection.clone(),
            key: counter.key.clone(),
            body: None,
        };
        let mut record = None;
        for target in &targets {
            let read = client.send(target, &mut last, request.clone()).await;
            let done = read.outcome() == Outcome::Ok;
            record = Some(read);
            if done {
                break;
            }
        }
        lines.send(Line::Final(record.expect("there is a target"))).ok();
    }
    drop(shared);
    drop(lines);
    let summary = writer
        .join()
        .map_err(|_| anyhow::anyhow!("the history writer panicked"))??;
    summary.print(&args, elapsed, cut_short);
    Ok(())
}

/// Sends `request` to the first target that accepts a connection: a refused
/// connection carried no request, so trying the next one cannot apply it twice.
async fn send_to_first_reachable(
    client: &Client,
    targets: &[String],
    session: &mut SessionState,
    request: Request,
) -> OpRecord {
    let mut record = client.send(&targets[0], session, request.clone()).await;
    for target in &targets[1..] {
        if !record
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with(CONNECT_ERROR))
        {
            break;
        }
        session.next_index = 0;
        record = client.send(target, session, request.clone()).await;
    }
    record
}

/// One session: its operations one after another, each recorded. Returns whether the
/// duration limit cut it short.
async fn run_session(shared: Arc<Shared>, index: usize) -> bool {
    let mut rng = Rng::new(shared.seed ^ (index as u64).wrapping_mul(0xA076_1D64_78BD_642F));
    let mut session = SessionState::new(format!("{}-s{index}", shared.workload.run));
    for seq in 0..shared.ops {
        if shared.deadline.is_some_and(|d| Instant::now() >= d) {
            return true;
        }
        let request = shared.workload.next(&mut rng, index, seq);
        let target = match shared.pick {
            Pick::RoundRobin => &shared.targets[(index + seq) % shared.targets.len()],
            Pick::Random => &shared.targets[rng.below(shared.targets.len() as u64) as usize],
        };
        let record = {
            let _permit = shared
                .in_flight
                .acquire()
                .await
                .expect("the semaphore is never closed");
            shared.client.send(target, &mut session, request).await
        };
        if shared.lines.send(Line::Op(record)).is_err() {
            return true;
        }
    }
    false
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

/// Operation counts by kind and status, and latencies by kind.
#[derive(Default)]
struct Summary {
    /// (kind, status or "error") → count.
    counts: BTreeMap<(OpKind, String), u64>,
    latencies: BTreeMap<OpKind, Vec<u64>>,
    ops: u64,
    unknown: u64,
    counter: Option<(i64, i64)>,
    counter_final: Option<String>,
}

impl Summary {
    fn add(&mut self, line: &Line) {
        match line {
            Line::Run(info) => self.counter = info.counter.as_ref().map(|c| (c.start, c.min)),
            Line::Op(op) => {
                self.ops += 1;
                let status = match (op.status, &op.error) {
                    (Some(s), None) => s.to_string(),
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
            }
            Line::Final(op) => {
                self.counter_final = Some(match (op.value.as_ref(), op.version) {
                    (Some(v), Some(version)) => format!("{v} at version {version}"),
                    _ => format!("unread (status {:?}, error {:?})", op.status, op.error),
                })
            }
            Line::Setup(_) => {}
        }
    }

    fn print(&self, args: &LoadgenArgs, elapsed: Duration, cut_short: bool) {
        let secs = elapsed.as_secs_f64().max(1e-9);
        eprintln!(
            "loadgen: {} ops in {:.2} s ({:.0} ops/s){}; history in {}",
            self.ops,
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
                "  {:<6} {:>6}   {:<40} p50 {:.2} ms, p99 {:.2} ms",
                kind.as_str(),
                latencies.len(),
                statuses.join(", "),
                percentile(&sorted, 0.50) as f64 / 1e6,
                percentile(&sorted, 0.99) as f64 / 1e6,
            );
        }
        eprintln!("  outcome unknown (no answer, 5xx): {}", self.unknown);
        if let (Some((start, min)), Some(last)) = (self.counter, &self.counter_final) {
            eprintln!("  counter: start {start}, bound {min}; final {last}");
        }
    }
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
