//! The region's replicas: their replay positions, how far behind the primary each is,
//! and a circuit breaker that takes a replica out of rotation while it is down or
//! lags past the threshold, and puts it back once it has caught up.
//!
//! How far behind a replica is comes from samples of the primary's position: a
//! replica that has replayed the position the primary was seen at, at instant `t`,
//! shows the primary as of `t` at least. So its answers are as old as the time since
//! the newest such `t` — a figure that keeps growing while the replica stands still,
//! and while the primary cannot be seen at all.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use edgecache_actors::Position;
use tokio::time::Instant;
use tokio_postgres::types::PgLsn;

use crate::backoff::Schedule;

/// One replica.
pub struct Replica {
    pub name: String,
    pub pool: Pool,
    /// The last replay position seen.
    replayed: AtomicU64,
    /// Microseconds after `epoch` of the newest instant the primary was seen at a
    /// position the replica has replayed; 0 until there is one.
    as_of_micros: AtomicU64,
    epoch: Instant,
    in_rotation: AtomicBool,
}

impl Replica {
    pub fn new(name: String, pool: Pool) -> Self {
        Self {
            name,
            pool,
            replayed: AtomicU64::new(0),
            as_of_micros: AtomicU64::new(0),
            epoch: Instant::now(),
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

    /// What a read started now shows at least: the primary as of this instant
    /// (`None` while the replica has never been seen to replay a sampled position).
    pub fn as_of(&self) -> Option<Instant> {
        match self.as_of_micros.load(Ordering::Acquire) {
            0 => None,
            micros => Some(self.epoch + Duration::from_micros(micros)),
        }
    }

    /// Records that the replica has replayed what the primary had at `at`.
    fn caught_up_to(&self, at: Instant) {
        let micros = at.saturating_duration_since(self.epoch).as_micros() as u64;
        self.as_of_micros.fetch_max(micros.max(1), Ordering::AcqRel);
    }

    /// How far behind the primary the replica is, at most, as of `now`.
    pub fn staleness(&self, now: Instant) -> Duration {
        self.as_of()
            .map_or(Duration::MAX, |as_of| now.saturating_duration_since(as_of))
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

    /// A replica in rotation no further behind the primary than `max_staleness`,
    /// preferring one known to have replayed `position`.
    pub fn pick(&self, position: Position, max_staleness: Duration) -> Option<Arc<Replica>> {
        let now = Instant::now();
        let live: Vec<&Arc<Replica>> = self
            .all
            .iter()
            .filter(|r| r.in_rotation() && r.staleness(now) <= max_staleness)
            .collect();
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
    /// The primary was seen at `position` at `at` (or later).
    fn push(&mut self, at: Instant, position: u64) {
        match self.samples.back_mut() {
            // An idle primary: the newer sighting of the same position is all we need.
            Some(last) if last.1 == position => last.0 = at,
            _ => self.samples.push_back((at, position)),
        }
        while self.samples.len() > 1
            && self
                .samples
                .front()
                .is_some_and(|(t, _)| at.duration_since(*t) > self.span)
        {
            self.samples.pop_front();
        }
    }

    /// The newest instant the primary was seen at a position a server that replayed
    /// `replayed` has: that server shows the primary as of then, at least.
    fn covered(&self, replayed: u64) -> Option<Instant> {
        self.samples
            .iter()
            .rev()
            .find(|(_, p)| *p <= replayed)
            .map(|(t, _)| *t)
    }

    /// The primary's last known position.
    fn last(&self) -> Option<u64> {
        self.samples.back().map(|(_, p)| *p)
    }
}

/// A server that does not answer is sampled again at least once every this many
/// intervals (on a jittered back-off, so that nodes do not all reconnect at once).
const MAX_BACKOFF_INTERVALS: u32 = 4;

/// Samples the primary's and every replica's position each `interval`, until the task
/// is dropped (at shutdown). A server that did not answer is sampled again on a
/// jittered back-off, at most [`MAX_BACKOFF_INTERVALS`] intervals apart.
///
/// A replica further behind than `max_lag` leaves the rotation; so does one that does
/// not answer. While the primary does not answer, a replica is judged against the
/// primary's last known position instead: one that has replayed it holds everything
/// the primary was last seen with, and stays (its answers still age with the outage).
pub async fn sample(primary: Pool, replicas: Arc<Replicas>, interval: Duration, max_lag: Duration) {
    let mut history = History {
        samples: VecDeque::new(),
        span: max_lag * 2,
    };
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let schedule = || Schedule::new(interval, interval * MAX_BACKOFF_INTERVALS);
    let mut primary_schedule = schedule();
    let mut replica_schedules: Vec<Schedule> = replicas.all.iter().map(|_| schedule()).collect();
    loop {
        ticker.tick().await;
        let deadline = interval.max(Duration::from_millis(200));
        // Taken before the question: the primary was at the answer then or later.
        let asked = Instant::now();
        let mut primary_seen = false;
        if primary_schedule.due(asked) {
            let primary_lsn =
                tokio::time::timeout(deadline, lsn(&primary, "SELECT pg_current_wal_lsn()")).await;
            if let Ok(Some(p)) = primary_lsn {
                history.push(asked, p);
                primary_seen = true;
                primary_schedule.answered();
            } else {
                primary_schedule.failed(asked);
            }
        }
        for (replica, schedule) in replicas.all.iter().zip(&mut replica_schedules) {
            if !schedule.due(Instant::now()) {
                continue; // out of rotation since it stopped answering
            }
            let replayed =
                tokio::time::timeout(deadline, lsn(&replica.pool, "SELECT pg_last_wal_replay_lsn()")).await;
            match replayed {
                Ok(Some(position)) => {
                    schedule.answered();
                    replica.saw(Position(position));
                    if let Some(at) = history.covered(position) {
                        replica.caught_up_to(at);
                    }
                    let staleness = replica.staleness(Instant::now());
                    let primary_last = (!primary_seen).then(|| history.last()).flatten();
                    let healthy = keeps_rotation(staleness, max_lag, position, primary_last);
                    if replica.in_rotation.swap(healthy, Ordering::AcqRel) != healthy {
                        if healthy {
                            tracing::info!(replica = %replica.name, ?staleness, primary_seen, "replica in rotation");
                        } else {
                            tracing::warn!(replica = %replica.name, ?staleness, "replica out of rotation: lagging");
                        }
                    }
                }
                _ => {
                    schedule.failed(Instant::now());
                    if replica.in_rotation.swap(false, Ordering::AcqRel) {
                        tracing::warn!(replica = %replica.name, "replica out of rotation: not answering");
                    }
                }
            }
        }
    }
}

/// Whether a replica answering at `replayed`, `staleness` behind, belongs in
/// rotation. `primary_last` is the primary's last known position while the primary
/// does not answer: a replica that has replayed it is current, however long ago the
/// primary was last seen.
fn keeps_rotation(staleness: Duration, max_lag: Duration, replayed: u64, primary_last: Option<u64>) -> bool {
    staleness <= max_lag || primary_last.is_some_and(|last| replayed >= last)
}

/// An LSN from a one-value query (prepared once per connection), or `None` if the
/// server does not answer.
async fn lsn(pool: &Pool, sql: &str) -> Option<u64> {
    let client = pool.get().await.ok()?;
    let statement = client.prepare_cached(sql).await.ok()?;
    let row = client.query_one(&statement, &[]).await.ok()?;
    row.try_get::<_, Option<PgLsn>>(0).ok().flatten().map(u64::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_replay_shows_the_primary_as_of_the_newest_sample_it_covers() {
        let start = Instant::now();
        let mut history = History {
            samples: VecDeque::new(),
            span: S(10),
        };
        history.push(start, 100);
        history.push(start + S(1), 200);
        history.push(start + S(2), 300);
        assert_eq!(history.covered(300), Some(start + S(2)));
        assert_eq!(history.covered(250), Some(start + S(1)));
        assert_eq!(history.covered(50), None, "older than every sample");
        // An idle primary: one sample, seen again and again.
        history.push(start + S(3), 300);
        history.push(start + S(4), 300);
        assert_eq!(history.samples.len(), 3);
        assert_eq!(history.covered(300), Some(start + S(4)));
        // Past the span, old samples go; the newest always stays.
        history.push(start + S(30), 400);
        assert_eq!(history.samples.len(), 1);
        assert_eq!(history.last(), Some(400));
    }

    #[test]
    fn with_the_primary_unseen_a_replica_that_replayed_its_last_position_stays() {
        let max_lag = S(5);
        assert!(keeps_rotation(S(4), max_lag, 100, None));
        assert!(!keeps_rotation(S(6), max_lag, 100, None), "lagging");
        assert!(keeps_rotation(S(60), max_lag, 300, Some(300)), "current");
        assert!(
            !keeps_rotation(S(60), max_lag, 250, Some(300)),
            "behind the primary's last known position"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_replicas_staleness_grows_until_it_catches_up_and_only_moves_forward() {
        let pool = deadpool_postgres::Config {
            url: Some("postgres://nobody@127.0.0.1:1/none".into()),
            ..Default::default()
        }
        .create_pool(Some(deadpool_postgres::Runtime::Tokio1), tokio_postgres::NoTls)
        .unwrap();
        let replica = Replica::new("r".into(), pool);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(replica.staleness(Instant::now()), Duration::MAX, "never seen");
        let seen = Instant::now();
        replica.caught_up_to(seen);
        tokio::time::advance(S(2)).await;
        assert_eq!(replica.staleness(Instant::now()), S(2));
        replica.caught_up_to(seen - S(1));
        assert_eq!(replica.as_of(), Some(seen), "never back");
        replica.caught_up_to(seen + S(2));
        assert_eq!(replica.staleness(Instant::now()), Duration::ZERO);
    }
}
