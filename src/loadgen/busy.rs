//! `--busy-rows`: adversity from the origin's side. A connection of its own to the
//! primary (`--pg-url`) that, every `--busy-every`, with probability P, locks a random
//! key's row and the counter's row `FOR UPDATE` and holds them for `--busy-hold`
//! before it commits. Set the hold above the nodes' `session.write_timeout`: the
//! nodes' writes of those rows then start, wait on the lock, and are given up while
//! they run — `503 write-outcome-unknown` — which is what `--retry-unknown` and
//! `edgecache check` are there to settle. The session's next writes queue behind the
//! one that waits and are refused before they start (`session-busy`).
//!
//! The connection lost (the primary stopped, `--stop-primary-after`), the task opens
//! a new one at its next tick, and goes on once the primary answers again.
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
    /// Connections lost and opened again.
    pub reconnects: u64,
    /// Why the task had no connection when it stopped (or could not start), if so.
    pub error: Option<String>,
}

/// The running task.
pub struct BusyRows {
    stop: watch::Sender<bool>,
    task: JoinHandle<BusyStats>,
    hold: Duration,
}

impl BusyRows {
    /// Starts holding rows busy on `client`, a connection of its own to `url`.
    pub fn start(client: tokio_postgres::Client, url: String, plan: BusyPlan) -> Self {
        let (stop, stopped) = watch::channel(false);
        let hold = plan.hold;
        let task = tokio::spawn(run(client, url, plan, stopped));
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

/// Why an episode ended early.
enum Broken {
    /// The connection is gone: open another.
    Connection(String),
}

async fn run(
    client: tokio_postgres::Client,
    url: String,
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
    let mut client = Some(client);
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
        let connection = match client.as_mut() {
            Some(c) => c,
            None => match connect(&url, &limits).await {
                Ok(c) => {
                    stats.reconnects += 1;
                    client.insert(c)
                }
                Err(_) => continue, // still down: try again next tick
            },
        };
        let episode = Episode {
            key,
            key_lock: &key_lock,
            counter_lock: counter_lock.as_ref(),
            hold: plan.hold,
        };
        if let Err(Broken::Connection(e)) = episode.run(connection, &mut stats, &mut stopped).await {
            // Reported only if the task ends without a connection.
            stats.error = Some(e);
            client = None;
        } else {
            stats.error = None;
        }
    }
    stats
}

/// A new connection with the episode limits set.
async fn connect(url: &str, limits: &str) -> anyhow::Result<tokio_postgres::Client> {
    let client = super::postgres::connect(url).await?;
    client.batch_execute(limits).await?;
    Ok(client)
}

/// One episode: lock the key's row and the counter's, hold them, commit.
struct Episode<'a> {
    key: &'a str,
    key_lock: &'a str,
    counter_lock: Option<&'a (String, String)>,
    hold: Duration,
}

impl Episode<'_> {
    async fn run(
        &self,
        client: &mut tokio_postgres::Client,
        stats: &mut BusyStats,
        stopped: &mut watch::Receiver<bool>,
    ) -> Result<(), Broken> {
        let broken =
            |what: &str, e: tokio_postgres::Error| Broken::Connection(format!("busy rows: {what}{e}"));
        let tx = client.transaction().await.map_err(|e| broken("", e))?;
        let mut locked = tx.query(self.key_lock, &[&self.key]).await.map(drop);
        if let (Ok(()), Some((sql, counter))) = (&locked, self.counter_lock) {
            locked = tx.query(sql, &[counter]).await.map(drop);
        }
        match locked {
            Ok(()) => {
                stats.episodes += 1;
                tokio::select! {
                    _ = tokio::time::sleep(self.hold) => {}
                    _ = stopped.changed() => {}
                }
                tx.commit().await.map_err(|e| broken("commit: ", e))
            }
            Err(e) if e.code().is_some() => {
                // Lock timeout (or the like): the transaction is aborted; end it.
                stats.missed += 1;
                tx.rollback().await.map_err(|e| broken("rollback: ", e))
            }
            Err(e) => Err(broken("", e)),
        }
    }
}
