//! Counters of the read and write paths. Plain atomics: the Prometheus exporter reads
//! them; tests read them to check what was counted.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::origin::OriginRead;
use crate::CacheStatus;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The tier a read's non-strict fields were served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// The session's own pending write.
    Session,
    /// The node's shared cache.
    Cache,
    /// The origin's primary.
    Primary,
    /// One of the origin's replicas.
    Replica,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Session, Tier::Cache, Tier::Primary, Tier::Replica];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Session => "session",
            Tier::Cache => "cache",
            Tier::Primary => "primary",
            Tier::Replica => "replica",
        }
    }
}

/// Counts of one node.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Reads, by the tier of their non-strict fields (index: `Tier as usize`).
    pub reads_by_tier: [Counter; 4],
    /// Reads, by cache status (index: position in [`STATUSES`]).
    pub reads_by_status: [Counter; 7],
    /// Reads that also read the strict fields from the primary.
    pub strict_reads: Counter,
    /// Reads that returned an item older than the session's own write of it, by the
    /// read-your-writes arm of the session (`[off, on]`). With the strategy on, the
    /// `on` count must stay 0; the `off` count is what the strategy prevents.
    pub stale_own_reads: [Counter; 2],
    /// Cached items refused to a session because it had already read a newer version.
    pub regressions_prevented: Counter,
    /// Reads that returned an older version than the session had already read, by
    /// the monotonic-reads arm (`[off, on]`); `on` must stay 0.
    pub regressions_served: [Counter; 2],
    /// Background refreshes started (stale-while-revalidate).
    pub refreshes: Counter,
    /// Origin reads that failed.
    pub origin_errors: Counter,
    /// Committed writes.
    pub writes: Counter,
    /// Sessions rebuilt from a token (not live on this node).
    pub sessions_rebuilt: Counter,
    /// Sessions started with no token.
    pub sessions_new: Counter,
    /// Reads that waited for a replica to replay the session's position.
    pub replica_waits: Counter,
    /// Their total wait, in microseconds.
    pub replica_wait_micros: Counter,
    /// Reads that went to the primary because no replica reached the position in
    /// time.
    pub primary_fallbacks: Counter,
    /// Cache entries dropped by the change feed (written through another node).
    pub invalidations: Counter,
}

/// The cache statuses in the order of [`Metrics::reads_by_status`].
pub const STATUSES: [CacheStatus; 7] = [
    CacheStatus::Hit,
    CacheStatus::Stale,
    CacheStatus::StaleIfError,
    CacheStatus::Session,
    CacheStatus::Miss,
    CacheStatus::Expired,
    CacheStatus::Watermark,
];

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

    pub fn read(&self, tier: Tier, status: CacheStatus) {
        self.reads_by_tier[tier as usize].inc();
        let i = STATUSES.iter().position(|s| *s == status).unwrap_or(0);
        self.reads_by_status[i].inc();
    }

    pub fn reads_from(&self, tier: Tier) -> u64 {
        self.reads_by_tier[tier as usize].get()
    }

    pub fn reads_with(&self, status: CacheStatus) -> u64 {
        STATUSES
            .iter()
            .position(|s| *s == status)
            .map_or(0, |i| self.reads_by_status[i].get())
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
