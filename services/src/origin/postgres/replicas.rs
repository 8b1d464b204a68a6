//! The region's replicas: their replay positions, how far behind the primary each is,
//! and a circuit breaker that takes a replica out of rotation while it is down or
//! lags past the threshold, and puts it back once it has caught up.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use edgecache_actors::Position;
use tokio::time::Instant;
use tokio_postgres::types::PgLsn;

/// One replica.
pub struct Replica {
    pub name: String,
    pub pool: Pool,
    /// The last replay position seen.
    replayed: AtomicU64,
    /// How far behind the primary it was at the last sample, in microseconds.
    staleness_micros: AtomicU64,
    in_rotation: AtomicBool,
}

impl Replica {
    pub fn new(name: String, pool: Pool) -> Self {
        Self {
            name,
            pool,
            replayed: AtomicU64::new(0),
            staleness_micros: AtomicU64::new(u64::MAX),
            in_rotation: AtomicBool::new(false),
        }
    }

    pub fn replayed(&self) -> Position {
        Position(self.replayed.load(Ordering::Acquire))
    }

    /// Raises the known replay position (a read saw it further along).
    pub fn saw(&self, position: Position) {
        self.replayed.fetch_max(position.0, Ordering::AcqRel);
    }

    /// An upper bound of how far behind the primary the replica is.
    pub fn staleness(&self) -> Duration {
        Duration::from_micros(self.staleness_micros.load(Ordering::Acquire))
    }

    pub fn in_rotation(&self) -> bool {
        self.in_rotation.load(Ordering::Acquire)
    }

    /// Takes the replica out of rotation now (a read on it failed); the health
    /// sampler puts it back when it answers and has caught up.
    pub fn trip(&self) {
        if self.in_rotation.swap(false, Ordering::AcqRel) {
            tracing::warn!(replica = %self.name, "replica out of rotation: a read failed");
        }
    }
}

/// The replicas of the region, chosen round-robin among those in rotation.
pub struct Replicas {
    pub all: Vec<Arc<Replica>>,
    next: AtomicUsize,
}

impl Replicas {
    pub fn new(all: Vec<Arc<Replica>>) -> Self {
        Self {
            all,
            next: AtomicUsize::new(0),
        }
    }

    /// A replica in rotation, preferring one known to have replayed `position`.
    pub fn pick(&self, position: Position) -> Option<Arc<Replica>> {
        let live: Vec<&Arc<Replica>> = self.all.iter().filter(|r| r.in_rotation()).collect();
        if live.is_empty() {
            return None;
        }
        if let Some(ready) = live.iter().find(|r| r.replayed() >= position) {
            return Some((*ready).clone());
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % live.len();
        Some(live[i].clone())
    }
}

/// Samples of the primary's position over time, to tell how old a replay position is.
struct History {
    samples: VecDeque<(Instant, u64)>,
    span: Duration,
}

impl History {
    fn push(&mut self, at: Instant, position: u64) {
        self.samples.push_back((at, position));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| at.duration_since(*t) > self.span)
        {
            self.samples.pop_front();
        }
    }

    /// How far behind the primary a server that replayed `replayed` is, as of `now`:
    /// the time since the newest sample the replay covers; past the history's span
    /// when it covers none.
    fn staleness(&self, replayed: u64, now: Instant) -> Duration {
        self.samples
            .iter()
            .rev()
            .find(|(_, p)| *p <= replayed)
            .map(|(t, _)| now.duration_since(*t))
            .unwrap_or(self.span + Duration::from_secs(1))
    }
}

/// Samples the primary's and every replica's position each `interval`, forever.
pub async fn sample(primary: Pool, replicas: Arc<Replicas>, interval: Duration, max_lag: Duration) {
    let mut history = History {
        samples: VecDeque::new(),
        span: max_lag * 2,
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let deadline = interval.max(Duration::from_millis(200));
        let primary_lsn = tokio::time::timeout(deadline, lsn(&primary, "SELECT pg_current_wal_lsn()")).await;
        if let Ok(Some(p)) = primary_lsn {
            history.push(Instant::now(), p);
        }
        for replica in &replicas.all {
            let replayed =
                tokio::time::timeout(deadline, lsn(&replica.pool, "SELECT pg_last_wal_replay_lsn()")).await;
            let now = Instant::now();
            match replayed {
                Ok(Some(position)) => {
                    replica.saw(Position(position));
                    let staleness = history.staleness(position, now);
                    replica
                        .staleness_micros
                        .store(staleness.as_micros() as u64, Ordering::Release);
                    let healthy = staleness <= max_lag;
                    if replica.in_rotation.swap(healthy, Ordering::AcqRel) != healthy {
                        if healthy {
                            tracing::info!(replica = %replica.name, ?staleness, "replica in rotation");
                        } else {
                            tracing::warn!(replica = %replica.name, ?staleness, "replica out of rotation: lagging");
                        }
                    }
                }
                _ => {
                    replica.staleness_micros.store(u64::MAX, Ordering::Release);
                    if replica.in_rotation.swap(false, Ordering::AcqRel) {
                        tracing::warn!(replica = %replica.name, "replica out of rotation: not answering");
                    }
                }
            }
        }
    }
}

/// An LSN from a one-value query, or `None` if the server does not answer.
async fn lsn(pool: &Pool, sql: &str) -> Option<u64> {
    let client = pool.get().await.ok()?;
    let row = client.query_one(sql, &[]).await.ok()?;
    row.try_get::<_, Option<PgLsn>>(0).ok().flatten().map(u64::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_is_the_age_of_the_newest_sample_the_replay_covers() {
        let start = Instant::now();
        let mut history = History {
            samples: VecDeque::new(),
            span: Duration::from_secs(10),
        };
        history.push(start, 100);
        history.push(start + Duration::from_secs(1), 200);
        history.push(start + Duration::from_secs(2), 300);
        let now = start + Duration::from_secs(3);
        assert_eq!(history.staleness(300, now), Duration::from_secs(1));
        assert_eq!(history.staleness(250, now), Duration::from_secs(2));
        assert!(
            history.staleness(50, now) > Duration::from_secs(10),
            "older than every sample"
        );
    }
}
