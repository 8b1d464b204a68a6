//! Counters of the read and write paths, HTTP request counts and latencies, and the
//! per-experiment accounting behind `GET /admin/experiments`.
//!
//! Everything here is plain atomics, updated on the request path without a lock or an
//! allocation: the labels of a count (tier, cache status, route, strategy arm) are
//! resolved to a slot in a fixed table, never looked up by string in a map. `/metrics`
//! renders them at scrape time ([`Scrape`], served by `http::metrics`); tests read
//! them to check what was counted.
//!
//! Per strategy and arm, [`Experiments`] keeps the sessions seen in the arm (a
//! HyperLogLog: distinct sessions in bounded memory), the reads served by tier and
//! cache status, stale own reads and regressions, and a log-linear latency histogram
//! from which p50 and p99 are read. It counts per combination of arms (a *cell*,
//! found once per request when its session is opened), so a read costs three atomic
//! additions and one clock read however many flags there are; a flag's arm is the
//! sum of its cells at scrape time. A flag has at most [`MAX_ARMS`] named arms;
//! further arms (more Unleash variants), and combinations past [`MAX_CELLS`], are
//! counted under [`OTHER_ARM`].
//!
//! One concept a file: [`Counter`] (`counter`), the per-thread stripes (`stripe`), the
//! experiment cells (`experiments`), distinct counting (`hll`), latency histograms
//! (`histogram`), the HTTP series (`http_series`) and the Prometheus rendering
//! (`prometheus`); [`Metrics`], the node's counters, is here.

mod checks;
mod counter;
mod experiments;
mod histogram;
mod hll;
mod http_series;
mod prometheus;
mod ring;
mod stripe;

use edgecache_flags::{Strategies, Strategy};

pub use checks::{CheckOutcome, CHECK_OUTCOMES};
pub use counter::Counter;
pub use experiments::{ArmStats, CellId, Experiments, ServedRead, MAX_ARMS, MAX_CELLS, OTHER_ARM, STATUSES};
pub use histogram::LatencyCounts;
pub use http_series::{HttpCounts, HttpMetrics, HTTP_BOUNDS, METHODS, ROUTES, STATUS_CLASSES, UNMATCHED};
pub use prometheus::{Gauges, Scrape};
pub use ring::{ArmPoint, NodePoint, Snapshot, SnapshotRing, Snapshotter};
// The route templates live next to the router, the tier next to the cache status;
// both are named here too for callers that know them as metrics labels.
pub use crate::http::route;
pub use crate::Tier;

use crate::origin::OriginRead;
use crate::CacheStatus;

/// Counts of one node.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Reads that also read the strict fields from the primary.
    pub strict_reads: Counter,
    /// Reads of a session copy in its handover (decision 0008), checked against the
    /// primary: what a session's move between nodes costs the primary.
    pub handover_reads: Counter,
    /// Reads that returned an item older than the session's own write of it, by
    /// whether read-your-writes was on for the session (`[off, on]`). With the
    /// strategy on, the `on` count must stay 0; the `off` count is what the strategy
    /// prevents. Per arm label: [`Experiments`].
    pub stale_own_reads: [Counter; 2],
    /// Cached items refused to a session because it had already read a newer version.
    pub regressions_prevented: Counter,
    /// Reads that returned an older version than the session had already read, by
    /// whether monotonic reads was on (`[off, on]`); `on` must stay 0.
    pub regressions_served: [Counter; 2],
    /// Background refreshes started (stale-while-revalidate).
    pub refreshes: Counter,
    /// Origin reads that failed.
    pub origin_errors: Counter,
    /// Committed writes.
    pub writes: Counter,
    /// Writes answered from their `Idempotency-Key`'s record (nothing written).
    pub writes_replayed: Counter,
    /// Writes given up before they started (503 `session-busy`: not applied).
    pub writes_not_started: Counter,
    /// Writes answered 503 `write-outcome-unknown` (started, not seen to finish).
    pub writes_unknown: Counter,
    /// Sessions rebuilt from a token (not live on this node).
    pub sessions_rebuilt: Counter,
    /// Sessions started with no token.
    pub sessions_new: Counter,
    /// Requests that named a live session without a token of its lineage, served by
    /// a detached session of their own.
    pub sessions_detached: Counter,
    /// Reads that waited for a replica to replay the session's position.
    pub replica_waits: Counter,
    /// Their total wait, in microseconds.
    pub replica_wait_micros: Counter,
    /// Reads that went to the primary because no replica reached the position in
    /// time.
    pub primary_fallbacks: Counter,
    /// Cache entries dropped by the change feed (written through another node).
    pub invalidations: Counter,
    /// Conditional GETs answered 304 Not Modified (`If-None-Match` named the version
    /// served).
    pub not_modified: Counter,
    /// 404s served from a cached absence (negative caching): no origin read.
    pub negative_hits: Counter,
    /// 404s read from the origin (the absence is then cached under the collection's
    /// class, with the position it was read at).
    pub negative_misses: Counter,
    /// Purges applied on this node (`POST /admin/purge`, from a peer or the change
    /// feed; each purge once).
    pub purges: Counter,
    /// Cache entries a hard purge dropped (left as markers of their versions).
    pub purge_dropped: Counter,
    /// Cache entries a soft purge marked stale.
    pub purge_marked: Counter,
    /// Cache hits that a session's floors alone would have sent to the origin,
    /// served because the logical change feed vouches for the entry past them.
    pub feed_vouched: Counter,
    /// Reads by tier and cache status, stale reads, latency and sessions, per
    /// strategy and arm.
    pub experiments: Experiments,
    /// Requests and their latency per route, method and status class.
    pub http: HttpMetrics,
}

impl Metrics {
    /// Counts what an origin read did besides reading: waits and fallbacks.
    pub fn origin_read(&self, read: &OriginRead) {
        if let Some(wait) = read.replica_wait {
            self.replica_waits.inc();
            self.replica_wait_micros.add(wait.waited.as_micros() as u64);
            if wait.fell_back {
                self.primary_fallbacks.inc();
            }
        }
    }

    /// Counts a read served to a session in `arms`, whose cell is `cell`
    /// ([`Experiments::session_seen`]): by tier and status, its stale own read or
    /// regression, its latency, all in the experiment of every strategy.
    pub fn read_served(&self, arms: &Strategies, cell: CellId, read: &ServedRead) {
        if read.stale_own {
            self.stale_own_reads[usize::from(arms.is_on(Strategy::ReadYourWrites))].inc();
        }
        if read.regression {
            self.regressions_served[usize::from(arms.is_on(Strategy::MonotonicReads))].inc();
        }
        self.experiments.read(cell, read);
    }

    /// Reads served from `tier` with `status`.
    pub fn reads_of(&self, tier: Tier, status: CacheStatus) -> u64 {
        self.experiments.reads_of(tier, status)
    }

    pub fn reads_from(&self, tier: Tier) -> u64 {
        STATUSES.iter().map(|status| self.reads_of(tier, *status)).sum()
    }

    pub fn reads_with(&self, status: CacheStatus) -> u64 {
        Tier::ALL.iter().map(|tier| self.reads_of(*tier, status)).sum()
    }

    /// Regressions served to sessions with monotonic reads `on` or off.
    pub fn regressions(&self, monotonic_on: bool) -> u64 {
        self.regressions_served[usize::from(monotonic_on)].get()
    }

    /// Stale own reads of sessions with read-your-writes `on` or off.
    pub fn stale_own(&self, ryw_on: bool) -> u64 {
        self.stale_own_reads[usize::from(ryw_on)].get()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    use edgecache_flags::Arm;

    use super::experiments::tests::read;
    use super::stripe::STRIPES;
    use super::*;

    #[test]
    fn a_read_is_counted_in_the_arm_of_every_strategy() {
        let metrics = Metrics::default();
        let off = Strategies::ALL_ON.with(Strategy::ReadYourWrites, Arm::OFF);
        let on = Strategies::ALL_ON;
        let (s1, s2) = (AtomicU32::new(0), AtomicU32::new(0));
        let off_cell = metrics.experiments.session_seen("s1", &off, &s1);
        metrics.experiments.session_seen("s1", &off, &s1);
        let on_cell = metrics.experiments.session_seen("s2", &on, &s2);
        metrics.read_served(&off, off_cell, &read(CacheStatus::Hit, true));
        metrics.read_served(&on, on_cell, &read(CacheStatus::Watermark, false));
        metrics.read_served(&on, on_cell, &read(CacheStatus::Hit, false));
        assert_eq!((metrics.stale_own(false), metrics.stale_own(true)), (1, 0));
        assert_eq!(metrics.reads_from(Tier::Cache), 3);
        assert_eq!(metrics.reads_with(CacheStatus::Hit), 2);

        let ryw: Vec<_> = metrics
            .experiments
            .arms_of(Strategy::ReadYourWrites)
            .into_iter()
            .map(|a| (a.label, a.sessions, a.reads, a.hits, a.stale_own_reads))
            .collect();
        assert_eq!(ryw, [("on", 1, 2, 1, 0), ("off", 1, 1, 1, 1)]);
        let monotonic: Vec<_> = metrics
            .experiments
            .arms_of(Strategy::MonotonicReads)
            .into_iter()
            .map(|a| (a.label, a.sessions, a.reads, a.hits, a.stale_own_reads))
            .collect();
        assert_eq!(monotonic, [("on", 2, 3, 2, 1)], "both cells are in its `on` arm");
        assert_eq!(metrics.experiments.arms().len(), Strategy::ALL.len() + 1);

        // A session whose arm flips is counted in each arm it was in, once.
        for arms in [&on, &off, &on] {
            metrics.experiments.session_seen("s1", arms, &s1);
        }
        let sessions: Vec<_> = metrics
            .experiments
            .arms_of(Strategy::ReadYourWrites)
            .into_iter()
            .map(|a| (a.label, a.sessions))
            .collect();
        assert_eq!(sessions, [("on", 2), ("off", 1)]);
    }

    #[test]
    fn counts_from_many_threads_add_up_across_stripes() {
        let metrics = Metrics::default();
        let arms = Strategies::ALL_ON;
        let cell = metrics.experiments.session_seen("s1", &arms, &AtomicU32::new(0));
        std::thread::scope(|scope| {
            for _ in 0..(2 * STRIPES + 1) {
                scope.spawn(|| {
                    for _ in 0..100 {
                        metrics.read_served(&arms, cell, &read(CacheStatus::Hit, false));
                        metrics.http.record(
                            Some(ROUTES[0]),
                            &actix_web::http::Method::GET,
                            200,
                            Duration::from_micros(300),
                        );
                    }
                });
            }
        });
        let total = (2 * STRIPES as u64 + 1) * 100;
        assert_eq!(metrics.reads_with(CacheStatus::Hit), total);
        let arm = &metrics.experiments.arms_of(Strategy::ReadYourWrites)[0];
        assert_eq!((arm.reads, arm.hits, arm.latency.count()), (total, total, total));
        let series: Vec<_> = metrics.http.series().map(|(_, s)| s.count()).collect();
        assert_eq!(series, [total]);
    }
}
