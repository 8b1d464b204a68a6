//! `--busy-rows`: adversity from the origin's side. A connection of its own to the
//! primary (`--pg-url`) that, every `--busy-every`, with probability P, locks a random
//! key's row and the counter's row `FOR UPDATE` and holds them for `--busy-hold`
//! before it commits. Set the hold above the nodes' `session.write_timeout`: the
//! nodes' writes of those rows then start, wait on the lock, and are given up while
//! they run — `503 write-outcome-unknown` — which is what `--retry-unknown` and
//! `edgecache check` are there to settle. The session's next writes queue behind the
//! one that waits and are refused before they start (`session-busy`).
//!
//! Bounded: one lock at a time, the hold never longer than asked, the server ends the
//! transaction itself if loadgen stops answering (`idle_in_transaction_session_timeout`),
//! and [`BusyRows::stop`] ends it at once and waits for the task.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::postgres::quote;
use super::workload::Rng;

/// What to hold busy, and how.
#[derive(Debug, Clone)]
pub struct BusyPlan {
    /// The chance, at each tick, of an episode.
    pub probability: f64,
    /// The pause between episodes.
    pub every: Duration,
    /// How long an episode holds its locks.
    pub hold: Duration,
    /// The collection of the keys, and the keys one is picked from.
    pub collection: String,
    pub keys: Vec<String>,
    /// The counter's collection and key, locked in every episode.
    pub counter: Option<(String, String)>,
    pub seed: u64,
}

/// What the task did.
#[derive(Debug, Default, Clone)]
pub struct BusyStats {
    /// Episodes that held their locks.
    pub episodes: u64,
    /// Episodes that could not take a lock in time (a node's write held it).
    pub missed: u64,
    /// Why the task stopped early, if it did.
    pub error: Option<String>,
}

/// The running task.
pub struct BusyRows {
    stop: watch::Sender<bool>,
    task: JoinHandle<BusyStats>,
    hold: Duration,
}

impl BusyRows {
    /// Starts holding rows busy on `client`, a connection of its own.
    pub fn start(client: tokio_postgres::Client, plan: BusyPlan) -> Self {
        let (stop, stopped) = watch::channel(false);
        let hold = plan.hold;
        let task = tokio::spawn(run(client, plan, stopped));
        BusyRows { stop, task, hold }
    }

    /// Ends the current episode (its transaction commits) and the task, and returns
    /// what it did.
    pub async fn stop(self) -> BusyStats {
        self.stop.send(true).ok();
        let bound = self.hold + Duration::from_secs(10);
        match tokio::time::timeout(bound, self.task).await {
            Ok(Ok(stats)) => stats,
            Ok(Err(e)) => BusyStats {
                error: Some(format!("the busy-rows task failed: {e}")),
                ..BusyStats::default()
            },
            Err(_) => BusyStats {
                error: Some("the busy-rows task did not stop in time".into()),
                ..BusyStats::default()
            },
        }
    }
}

async fn run(
    mut client: tokio_postgres::Client,
    plan: BusyPlan,
    mut stopped: watch::Receiver<bool>,
) -> BusyStats {
    let mut stats = BusyStats::default();
    // The server ends a transaction loadgen forgot; a lock a node's write holds is
    // waited for at most a second (the episode is then missed, not delayed).
    let limits = format!(
        "SET lock_timeout = '1s'; SET statement_timeout = '5s'; \
         SET idle_in_transaction_session_timeout = '{}ms'",
        (plan.hold + Duration::from_secs(5)).as_millis()
    );
    if let Err(e) = client.batch_execute(&limits).await {
        stats.error = Some(format!("setting up the busy-rows connection: {e}"));
        return stats;
    }
    let lock = |collection: &str| format!("SELECT 1 FROM {} WHERE id = $1 FOR UPDATE", quote(collection));
    let key_lock = lock(&plan.collection);
    let counter_lock = plan.counter.as_ref().map(|(c, key)| (lock(c), key.clone()));
    let mut rng = Rng::new(plan.seed ^ 0xB05E_B05E);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(plan.every) => {}
            _ = stopped.changed() => break,
        }
        // Stopped, or the handle is gone (then `changed` would return at once).
        if *stopped.borrow() || stopped.has_changed().is_err() {
            break;
        }
        if (rng.below(1_000_000) as f64) >= plan.probability * 1e6 || plan.keys.is_empty() {
            continue;
        }
        let key = &plan.keys[rng.below(plan.keys.len() as u64) as usize];
        let tx = match client.transaction().await {
            Ok(tx) => tx,
            Err(e) => {
                stats.error = Some(format!("busy rows: {e}"));
                break;
            }
        };
        let mut locked = tx.query(&key_lock, &[key]).await.map(drop);
        if let (Ok(()), Some((sql, counter))) = (&locked, &counter_lock) {
            locked = tx.query(sql, &[counter]).await.map(drop);
        }
        match locked {
            Ok(()) => {
                stats.episodes += 1;
                tokio::select! {
                    _ = tokio::time::sleep(plan.hold) => {}
                    _ = stopped.changed() => {}
                }
                if let Err(e) = tx.commit().await {
                    stats.error = Some(format!("busy rows: commit: {e}"));
                    break;
                }
            }
            Err(e) if e.code().is_some() => {
                // Lock timeout (or the like): the transaction is aborted; end it.
                stats.missed += 1;
                if let Err(e) = tx.rollback().await {
                    stats.error = Some(format!("busy rows: rollback: {e}"));
                    break;
                }
            }
            Err(e) => {
                stats.error = Some(format!("busy rows: {e}"));
                break;
            }
        }
    }
    stats
}
