//! `--flood R`: anonymous traffic beside the workload. R GETs a second, spread over
//! the targets round-robin, of the workload's keys (three in four) and of ids that do
//! not exist (misses that reach the origin). Most name no session — a node serves
//! them from a detached session that pins nothing — and a share (`--flood-named`)
//! name a fresh session id of their own, as a client's first request does: each of
//! those takes a place in the node's session table, pushing the workload's sessions
//! out of a small one (`session.max_live`). The flood is recorded only as counts (a
//! `flood` line, see [`super::history`]): its requests are no session's operations.
//!
//! Requests go out at the rate whatever the answers: at most [`MAX_IN_FLIGHT`] are in
//! flight, and a tick that finds that many counts as skipped.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;

use super::client::Client;
use super::history::FloodStats;
use super::workload::Rng;

/// Flood requests in flight at most.
pub const MAX_IN_FLIGHT: usize = 256;

/// Ids of missing items the flood reads: a few, so some of the misses coalesce.
const MISSING_IDS: u64 = 1000;

/// What to flood with.
#[derive(Debug, Clone)]
pub struct FloodPlan {
    /// Requests per second.
    pub rate: f64,
    /// The share of requests that name a fresh session id.
    pub named: f64,
    pub targets: Vec<String>,
    pub collection: String,
    pub keys: Vec<String>,
    /// The run id: it prefixes the fresh session ids.
    pub run: String,
    pub seed: u64,
}

/// A running flood.
pub struct Flood {
    stop: watch::Sender<bool>,
    task: JoinHandle<FloodStats>,
}

impl Flood {
    pub fn start(client: Client, plan: FloodPlan) -> Self {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(client, plan, stopped));
        Flood { stop, task }
    }

    /// Stops sending, waits for the requests in flight (each has the client's
    /// timeout) and returns the counts.
    pub async fn stop(self) -> FloodStats {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_default()
    }
}

async fn run(client: Client, plan: FloodPlan, mut stopped: watch::Receiver<bool>) -> FloodStats {
    let started = Instant::now();
    let mut stats = FloodStats {
        rate: plan.rate,
        named_share: plan.named,
        ..FloodStats::default()
    };
    let statuses: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut rng = Rng::new(plan.seed ^ 0xF100_D5EE_D000_0001);
    let mut in_flight = JoinSet::new();
    // A late tick is made up at once (Burst): the rate holds on average when the
    // machine is loaded, up to MAX_IN_FLIGHT at a time.
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / plan.rate));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped.changed() => break,
        }
        while in_flight.try_join_next().is_some() {}
        if in_flight.len() >= MAX_IN_FLIGHT {
            stats.skipped += 1;
            continue;
        }
        let n = stats.sent;
        stats.sent += 1;
        let target = plan.targets[(n % plan.targets.len() as u64) as usize].clone();
        let key = if rng.below(4) < 3 {
            plan.keys[rng.below(plan.keys.len() as u64) as usize].clone()
        } else {
            format!("flood-missing-{}", rng.below(MISSING_IDS))
        };
        let session = ((rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < plan.named;
        let session = session.then(|| format!("{}-f{n}", plan.run));
        stats.named += u64::from(session.is_some());
        let (client, collection, statuses) = (client.clone(), plan.collection.clone(), statuses.clone());
        in_flight.spawn(async move {
            let answer = client
                .get_anonymous(&target, &collection, &key, session.as_deref())
                .await;
            let status = answer.map_or_else(|_| "error".to_owned(), |s| s.to_string());
            *statuses
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(status)
                .or_default() += 1;
        });
    }
    while in_flight.join_next().await.is_some() {}
    stats.secs = started.elapsed().as_secs_f64();
    stats.statuses = std::mem::take(&mut *statuses.lock().unwrap_or_else(|e| e.into_inner()));
    stats
}
