//! `edgecache loadgen --write-bench MODE`: the load of `scripts/write-bench.sh`, which
//! compares the PostgreSQL write path with pgbench running the same statements.
//!
//! `--sessions` sessions (32 in the script), each a task with its own session id and
//! token chain (every write carries the token the previous answer gave), write one
//! after another for `--bench-secs` seconds, each to a random one of `--keys` items
//! of `--collection` named `1`…`K` (the script creates them): a merge patch of
//! `--field` to a new value, a PUT of the whole document, or an increment of
//! `--counter-field` by one. No idempotency keys: the benchmark measures the write
//! path that pgbench is compared with. No history is recorded. It prints one line,
//!
//! ```text
//! WRITE_RESULT <mode> <writes> <secs> <writes/s> <p50 µs> <p99 µs> <errors>
//! ```
//!
//! counting only acknowledged writes (2xx) in writes/s and latencies, and the answers
//! by status on stderr. Each session writes on a keep-alive HTTP/1.1 connection of its
//! own (hyper, [`crate::http1`]): the client shares the machine with the node and
//! PostgreSQL, so it should cost them as little as pgbench's client costs pgbench.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hyper::header::{HeaderMap, HeaderValue};
use serde_json::json;

use super::workload::Rng;
use super::LoadgenArgs;
use crate::http1::{Connection, Op};

/// What each write of the benchmark is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `PATCH` (merge patch) of the string field `--field`.
    Patch,
    /// `PUT` of the whole document.
    Put,
    /// `POST …/increment` of `--counter-field` by one.
    Incr,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Patch => "patch",
            Mode::Put => "put",
            Mode::Incr => "incr",
        }
    }
}

/// The benchmark's own flags; the sessions, keys, collection, fields, timeout and
/// seed are loadgen's.
#[derive(clap::Args, Debug, Clone)]
pub struct WriteBenchArgs {
    /// Instead of a workload with a history: write as fast as the sessions can, in
    /// this mode, for --bench-secs, against the first target, and print writes/s and
    /// latencies (scripts/write-bench.sh).
    #[arg(long, value_enum, value_name = "MODE")]
    pub write_bench: Option<Mode>,
    /// How long the write benchmark runs, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10.0, requires = "write_bench")]
    pub bench_secs: f64,
}

/// What one session did.
#[derive(Default)]
struct Tally {
    /// Latencies of acknowledged writes, in µs.
    latencies: Vec<u64>,
    /// Answers by status ("error" for no answer).
    statuses: BTreeMap<String, u64>,
}

/// Runs the write benchmark of `args` in `mode`.
pub fn run(args: &LoadgenArgs, mode: Mode) -> anyhow::Result<()> {
    let secs = args.writes.bench_secs;
    if !(secs.is_finite() && secs > 0.0) || args.sessions == 0 || args.keys == 0 {
        bail!("--bench-secs, --sessions and --keys must be positive");
    }
    let target = args.targets[0].trim().trim_end_matches('/');
    let authority = target
        .strip_prefix("http://")
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .with_context(|| format!("--write-bench needs a target http://host:port, not {target}"))?
        .to_owned();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let plan = Arc::new(Plan {
            timeout: Duration::from_secs_f64(args.timeout),
            mode,
            authority,
            collection: args.collection.clone(),
            field: args.field.clone(),
            counter_field: args.counter_field.clone(),
            keys: args.keys as u64,
            run: super::run_id(),
        });
        let seed = args.seed.unwrap_or_else(super::clock_seed);
        let started = Instant::now();
        let until = started + Duration::from_secs_f64(secs);
        let sessions: Vec<_> = (0..args.sessions)
            .map(|i| {
                tokio::spawn(session(
                    plan.clone(),
                    i,
                    Rng::new(seed ^ ((i as u64) << 32)),
                    until,
                ))
            })
            .collect();
        let mut all = Tally::default();
        for s in sessions {
            let tally = s.await?;
            all.latencies.extend(tally.latencies);
            for (status, n) in tally.statuses {
                *all.statuses.entry(status).or_default() += n;
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        all.latencies.sort_unstable();
        let ok = all.latencies.len();
        let errors: u64 = all.statuses.values().sum::<u64>() - ok as u64;
        let statuses: Vec<String> = all.statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        eprintln!("write bench {}: {}", mode.as_str(), statuses.join(", "));
        println!(
            "WRITE_RESULT {} {ok} {elapsed:.3} {:.1} {} {} {errors}",
            mode.as_str(),
            ok as f64 / elapsed,
            super::percentile(&all.latencies, 0.50),
            super::percentile(&all.latencies, 0.99),
        );
        Ok(())
    })
}

struct Plan {
    /// How long one write may take before it counts as an error.
    timeout: Duration,
    mode: Mode,
    authority: String,
    collection: String,
    field: String,
    counter_field: String,
    keys: u64,
    run: String,
}

/// One session writing until `until`, on a connection of its own (opened again after
/// an error: the answer to a write on it may still be on its way).
async fn session(plan: Arc<Plan>, index: usize, mut rng: Rng, until: Instant) -> Tally {
    let id = HeaderValue::from_str(&format!("wb-{}-{index}", plan.run)).expect("an ASCII session id");
    let mut token: Option<HeaderValue> = None;
    let mut tally = Tally::default();
    let mut connection: Option<Connection> = None;
    let mut seq = 0u64;
    while Instant::now() < until {
        seq += 1;
        let key = 1 + rng.below(plan.keys);
        let value = format!("w-{}-{index}-{seq}", plan.run);
        let path = format!("/v1/{}/{key}", plan.collection);
        let (path, op) = match plan.mode {
            Mode::Patch => (path, Op::Patch(json!({ plan.field.as_str(): value }).to_string())),
            Mode::Put => (
                path,
                Op::Put(
                    json!({
                        "name": format!("product {key}"),
                        plan.field.as_str(): value,
                        "price": 9.5,
                        plan.counter_field.as_str(): 1000,
                        "tags": ["bench"],
                    })
                    .to_string(),
                ),
            ),
            Mode::Incr => (
                format!("{path}/increment"),
                Op::Post(json!({"field": plan.counter_field, "by": 1}).to_string()),
            ),
        };
        let mut headers = HeaderMap::with_capacity(2);
        headers.insert("x-session-id", id.clone());
        if let Some(token) = &token {
            headers.insert("x-session-token", token.clone());
        }
        let start = Instant::now();
        let answer = tokio::time::timeout(plan.timeout, async {
            if connection.is_none() {
                connection = Some(Connection::open(&plan.authority).await?);
            }
            let open = connection.as_mut().expect("opened just above");
            open.send(&plan.authority, &path, op, headers).await
        })
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within the timeout")));
        let micros = start.elapsed().as_micros() as u64;
        let status = match answer {
            Ok(answer) => {
                if let Some(fresh) = answer.token {
                    token = Some(fresh);
                }
                if (200..300).contains(&answer.status) {
                    tally.latencies.push(micros);
                }
                answer.status.to_string()
            }
            Err(_) => {
                connection = None;
                "error".to_owned()
            }
        };
        *tally.statuses.entry(status).or_default() += 1;
    }
    tally
}
