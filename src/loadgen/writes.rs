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
//! by status on stderr.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use super::workload::Rng;
use super::LoadgenArgs;

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
    let target = args.targets[0].trim().trim_end_matches('/').to_owned();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(args.timeout))
            .pool_max_idle_per_host(args.sessions)
            .build()?;
        let plan = Arc::new(Plan {
            http,
            mode,
            target,
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
    http: reqwest::Client,
    mode: Mode,
    target: String,
    collection: String,
    field: String,
    counter_field: String,
    keys: u64,
    run: String,
}

/// One session writing until `until`.
async fn session(plan: Arc<Plan>, index: usize, mut rng: Rng, until: Instant) -> Tally {
    let id = format!("wb-{}-{index}", plan.run);
    let mut token: Option<String> = None;
    let mut tally = Tally::default();
    let mut seq = 0u64;
    while Instant::now() < until {
        seq += 1;
        let key = 1 + rng.below(plan.keys);
        let url = format!("{}/v1/{}/{key}", plan.target, plan.collection);
        let value = format!("w-{}-{index}-{seq}", plan.run);
        let request = match plan.mode {
            Mode::Patch => plan
                .http
                .patch(&url)
                .header("content-type", "application/merge-patch+json")
                .body(json!({ plan.field.as_str(): value }).to_string()),
            Mode::Put => plan.http.put(&url).json(&json!({
                "name": format!("product {key}"),
                plan.field.as_str(): value,
                "price": 9.5,
                plan.counter_field.as_str(): 1000,
                "tags": ["bench"],
            })),
            Mode::Incr => plan
                .http
                .post(format!("{url}/increment"))
                .json(&json!({"field": plan.counter_field, "by": 1})),
        };
        let mut request = request.header("x-session-id", &id);
        if let Some(token) = &token {
            request = request.header("x-session-token", token);
        }
        let start = Instant::now();
        let answer = match request.send().await {
            Ok(response) => {
                let status = response.status();
                if let Some(fresh) = response
                    .headers()
                    .get("x-session-token")
                    .and_then(|v| v.to_str().ok())
                {
                    token = Some(fresh.to_owned());
                }
                response.bytes().await.map(|_| status)
            }
            Err(e) => Err(e),
        };
        let micros = start.elapsed().as_micros() as u64;
        let status = match answer {
            Ok(status) => {
                if status.is_success() {
                    tally.latencies.push(micros);
                }
                status.as_u16().to_string()
            }
            Err(_) => "error".to_owned(),
        };
        *tally.statuses.entry(status).or_default() += 1;
    }
    tally
}
