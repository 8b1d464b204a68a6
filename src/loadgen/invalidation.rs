//! `edgecache loadgen --invalidation-probe N`: how long a committed change takes to
//! reach every node (`scripts/cdc-bench.sh`, to compare the change feeds).
//!
//! A few items of `--collection` of its own (`probe-<run>-<i>`) are created through the
//! first target. Then, N times: every target reads the next item (so each caches it),
//! the first target writes it (a merge patch of `--field`), and from the moment the
//! write is acknowledged — it committed — every target is asked with a fresh session
//! (no session id, no token: nothing but the node's cache and feed decide) every
//! `--probe-poll-us` until none serves a version older than the write's. It prints
//!
//! ```text
//! INVALIDATION_RESULT <changes> <p50 µs> <p99 µs> <max µs> <missed>
//! ```
//!
//! where `missed` counts changes some node still served old after 10 s (not in the
//! latencies). It runs beside a load (the script runs it during the write benchmark),
//! so its figures are under that load.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;

use super::LoadgenArgs;

/// A node still serving the old version this long after the commit has missed it.
const GIVE_UP: Duration = Duration::from_secs(10);

/// The probe's own items, written in turn.
const ITEMS: usize = 8;

#[derive(clap::Args, Debug, Clone)]
pub struct InvalidationArgs {
    /// Instead of a workload: write N changes through the first target and measure,
    /// for each, the time from its acknowledgement until no target serves the old
    /// version to a fresh session (scripts/cdc-bench.sh).
    #[arg(long, value_name = "N")]
    pub invalidation_probe: Option<usize>,
    /// How often a target still serving the old version is asked again, in µs.
    #[arg(
        long,
        value_name = "MICROS",
        default_value_t = 500,
        requires = "invalidation_probe"
    )]
    pub probe_poll_us: u64,
    /// The pause between two changes, in ms.
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 20,
        requires = "invalidation_probe"
    )]
    pub probe_pause_ms: u64,
}

/// The version in an `ETag` (`"7"`).
fn version(response: &reqwest::Response) -> Option<u64> {
    response
        .headers()
        .get("etag")?
        .to_str()
        .ok()?
        .trim_matches('"')
        .parse()
        .ok()
}

/// Runs the probe of `args`: `changes` changes.
pub fn run(args: &LoadgenArgs, changes: usize) -> anyhow::Result<()> {
    let targets: Vec<String> = args
        .targets
        .iter()
        .map(|t| t.trim().trim_end_matches('/').to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    if targets.is_empty() || changes == 0 {
        bail!("--targets and --invalidation-probe must not be empty");
    }
    let probe = &args.probe;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs_f64(args.timeout))
            .build()?;
        let run = super::run_id();
        let url = |target: &str, i: usize| format!("{target}/v1/{}/probe-{run}-{i}", args.collection);
        for i in 0..ITEMS {
            let created = http
                .put(url(&targets[0], i))
                .json(&json!({ args.field.as_str(): "probe" }))
                .send()
                .await?;
            if !created.status().is_success() {
                bail!("creating probe item {i}: {}", created.status());
            }
        }
        let mut latencies = Vec::with_capacity(changes);
        let mut missed = 0;
        for n in 0..changes {
            let i = n % ITEMS;
            for target in &targets {
                http.get(url(target, i)).send().await?.bytes().await?;
            }
            let written = http
                .patch(url(&targets[0], i))
                .header("content-type", "application/merge-patch+json")
                .body(json!({ args.field.as_str(): format!("probe-{n}") }).to_string())
                .send()
                .await?;
            let committed = Instant::now();
            let new = version(&written).context("the probe's write answered no ETag")?;
            let mut pending: Vec<&String> = targets.iter().collect();
            while !pending.is_empty() && committed.elapsed() < GIVE_UP {
                let mut still = Vec::new();
                for target in pending {
                    let read = http.get(url(target, i)).send().await?;
                    if version(&read).is_none_or(|v| v < new) {
                        still.push(target);
                    }
                    read.bytes().await?;
                }
                pending = still;
                if !pending.is_empty() {
                    tokio::time::sleep(Duration::from_micros(probe.probe_poll_us)).await;
                }
            }
            if pending.is_empty() {
                latencies.push(committed.elapsed().as_micros() as u64);
            } else {
                missed += 1;
            }
            tokio::time::sleep(Duration::from_millis(probe.probe_pause_ms)).await;
        }
        latencies.sort_unstable();
        println!(
            "INVALIDATION_RESULT {} {} {} {} {missed}",
            latencies.len(),
            super::percentile(&latencies, 0.50),
            super::percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or(0),
        );
        Ok(())
    })
}
