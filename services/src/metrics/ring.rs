//! The snapshot ring behind the charts of `GET /admin/dashboard`: every
//! `admin.dashboard_interval` a background task ([`Snapshotter`]) reads the node's
//! counters into a [`Snapshot`], and the ring keeps the last
//! `dashboard_history / dashboard_interval` of them (360 by default: one per 10 s
//! for an hour). Counts are cumulative, as the counters are; the page turns two
//! neighbours into a rate. Latency quantiles are of the reads between two snapshots
//! (computed when the snapshot is taken, from the difference of the histograms), so
//! a chart shows the latency of each interval, not of the whole run.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

use edgecache_flags::Strategy;
use parking_lot::Mutex;

use super::checks::CHECK_OUTCOMES;
use super::histogram::LatencyCounts;
use super::Metrics;
use crate::Tier;

/// One arm of one strategy flag at one instant.
#[derive(Debug, Clone)]
pub struct ArmPoint {
    pub strategy: Strategy,
    /// `on`, `off`, a variant name or `other` (from Unleash: escape before showing).
    pub label: String,
    /// Distinct sessions seen in the arm so far (estimate).
    pub sessions: u64,
    /// Reads served so far.
    pub reads: u64,
    pub hits: u64,
    pub stale_own_reads: u64,
    pub regressions_served: u64,
    /// Read latency of the reads since the previous snapshot, in µs; `None` without
    /// reads in between.
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    /// Read latency since the node started, in µs.
    pub p50_total_us: Option<u64>,
    pub p99_total_us: Option<u64>,
    /// Consistency checks so far, by outcome ([`CHECK_OUTCOMES`] order).
    pub checks: [u64; CHECK_OUTCOMES.len()],
}

/// The node-wide figures of a snapshot: counts so far and gauges as of the instant.
#[derive(Debug, Clone, Copy, Default)]
pub struct NodePoint {
    pub cache_entries: usize,
    pub cache_bytes: u64,
    /// Reads served so far, and those served without an origin read.
    pub reads: u64,
    pub cache_hits: u64,
    pub live_sessions: usize,
    pub sessions_new: u64,
    pub sessions_rebuilt: u64,
    /// Reads whose non-strict fields came from the primary, from a replica.
    pub primary_reads: u64,
    pub replica_reads: u64,
    pub replica_waits: u64,
    pub primary_fallbacks: u64,
    /// The node's peers, and how many are in rotation.
    pub peers: usize,
    pub peers_in_rotation: usize,
    /// Requests forwarded to their session's owner, and forwards that failed.
    pub forwards: u64,
    pub forward_failures: u64,
}

impl NodePoint {
    /// The counts `metrics` hold; the gauges (cache, live sessions, peers, forwards)
    /// are left for the caller, who knows them.
    pub fn of(metrics: &Metrics) -> Self {
        let arms = metrics.experiments.arms_of(Strategy::ReadYourWrites);
        Self {
            reads: arms.iter().map(|a| a.reads).sum(),
            cache_hits: arms.iter().map(|a| a.hits).sum(),
            sessions_new: metrics.sessions_new.get(),
            sessions_rebuilt: metrics.sessions_rebuilt.get(),
            primary_reads: metrics.reads_from(Tier::Primary),
            replica_reads: metrics.reads_from(Tier::Replica),
            replica_waits: metrics.replica_waits.get(),
            primary_fallbacks: metrics.primary_fallbacks.get(),
            ..Self::default()
        }
    }
}

/// The node at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Every arm seen so far, per strategy in [`Strategy::ALL`] order.
    pub arms: Vec<ArmPoint>,
    pub node: NodePoint,
}

impl Snapshot {
    /// The arm `label` of `strategy`, if seen by then.
    pub fn arm(&self, strategy: Strategy, label: &str) -> Option<&ArmPoint> {
        self.arms
            .iter()
            .find(|a| a.strategy == strategy && a.label == label)
    }
}

/// Takes snapshots: keeps each arm's latency histogram as of the last one, to read
/// the quantiles of the interval from the difference.
#[derive(Default)]
pub struct Snapshotter {
    last_latency: HashMap<(Strategy, String), LatencyCounts>,
}

impl Snapshotter {
    /// A snapshot of `metrics` now, with the node-wide figures `node`.
    pub fn take(&mut self, metrics: &Metrics, node: NodePoint) -> Snapshot {
        let arms = metrics
            .experiments
            .arms()
            .into_iter()
            .map(|(strategy, arm)| {
                let key = (strategy, arm.label.to_owned());
                let interval = match self.last_latency.get(&key) {
                    Some(before) => arm.latency.since(before),
                    None => arm.latency.clone(),
                };
                let point = ArmPoint {
                    strategy,
                    label: key.1.clone(),
                    sessions: arm.sessions,
                    reads: arm.reads,
                    hits: arm.hits,
                    stale_own_reads: arm.stale_own_reads,
                    regressions_served: arm.regressions_served,
                    p50_us: interval.quantile(0.5),
                    p99_us: interval.quantile(0.99),
                    p50_total_us: arm.latency.quantile(0.5),
                    p99_total_us: arm.latency.quantile(0.99),
                    checks: arm.checks,
                };
                self.last_latency.insert(key, arm.latency);
                point
            })
            .collect();
        let at_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Snapshot { at_ms, arms, node }
    }
}

/// The last `capacity` snapshots, oldest first.
pub struct SnapshotRing {
    capacity: usize,
    snapshots: Mutex<VecDeque<Arc<Snapshot>>>,
}

impl SnapshotRing {
    /// A ring of at most `capacity` snapshots (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            capacity,
            snapshots: Mutex::new(VecDeque::with_capacity(capacity)),
        }
    }

    /// Adds `snapshot`, dropping the oldest when full.
    pub fn push(&self, snapshot: Snapshot) {
        let mut snapshots = self.snapshots.lock();
        if snapshots.len() == self.capacity {
            snapshots.pop_front();
        }
        snapshots.push_back(Arc::new(snapshot));
    }

    /// The snapshots held, oldest first.
    pub fn all(&self) -> Vec<Arc<Snapshot>> {
        self.snapshots.lock().iter().cloned().collect()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    use edgecache_flags::{Arm, Strategies};

    use super::super::ServedRead;
    use super::*;
    use crate::CacheStatus;

    fn read(micros: u64) -> ServedRead {
        ServedRead {
            tier: Tier::Cache,
            status: CacheStatus::Hit,
            stale_own: false,
            regression: false,
            took: Duration::from_micros(micros),
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_and_quantiles_are_per_interval() {
        let ring = SnapshotRing::new(3);
        let metrics = Metrics::default();
        let arms = Strategies::ALL_ON.with(Strategy::ReadYourWrites, Arm::OFF);
        let cell = metrics.experiments.session_seen("s1", &arms, &AtomicU32::new(0));
        let mut snapshotter = Snapshotter::default();
        for round in 0..5u64 {
            // Each interval's reads are ten times slower than the last's.
            for _ in 0..100 {
                metrics.read_served(&arms, cell, &read(10u64.pow(round as u32 + 1)));
            }
            ring.push(snapshotter.take(&metrics, NodePoint::of(&metrics)));
        }
        let all = ring.all();
        assert_eq!(all.len(), 3, "bounded");
        let off: Vec<_> = all
            .iter()
            .map(|s| s.arm(Strategy::ReadYourWrites, "off").expect("the off arm"))
            .collect();
        assert_eq!(
            off.iter().map(|a| a.reads).collect::<Vec<_>>(),
            [300, 400, 500],
            "the oldest two were dropped"
        );
        for (arm, micros) in off.iter().zip([1000, 10_000, 100_000]) {
            let p50 = arm.p50_us.unwrap();
            assert!((micros..=micros * 9 / 8).contains(&p50), "{p50} for {micros}");
        }
        assert!(off[2].p50_total_us.unwrap() < 100_000, "over the whole run");
        assert_eq!(all[2].node.reads, 500);
        assert_eq!(all[2].node.cache_hits, 500);
    }
}
