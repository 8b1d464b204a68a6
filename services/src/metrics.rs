//! Counters of the read and write paths, HTTP request counts and latencies, and the
//! per-experiment accounting behind `GET /admin/experiments`.
//!
//! Everything here is plain atomics, updated on the request path without a lock or an
//! allocation: the labels of a count (tier, cache status, route, strategy arm) are
//! resolved to a slot in a fixed table, never looked up by string in a map. `/metrics`
//! renders them at scrape time (`http::metrics`); tests read them to check what was
//! counted.
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

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use edgecache_flags::{Strategies, Strategy};

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

/// How many copies of the counters every request writes a node keeps. Each thread
/// counts in its own copy ([`stripe`]), so two workers never write the same cache
/// line (measured: the shared counters cost ≈ 4 % of a cache hit's throughput on two
/// cores); readers add the copies up.
const STRIPES: usize = 8;

/// The stripe of the calling thread: threads take stripes in turn as they first count.
fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
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

/// The cache statuses in the order of [`Metrics::reads_of`]'s table.
pub const STATUSES: [CacheStatus; 7] = [
    CacheStatus::Hit,
    CacheStatus::Stale,
    CacheStatus::StaleIfError,
    CacheStatus::Session,
    CacheStatus::Miss,
    CacheStatus::Expired,
    CacheStatus::Watermark,
];

fn status_index(status: CacheStatus) -> usize {
    match status {
        CacheStatus::Hit => 0,
        CacheStatus::Stale => 1,
        CacheStatus::StaleIfError => 2,
        CacheStatus::Session => 3,
        CacheStatus::Miss => 4,
        CacheStatus::Expired => 5,
        CacheStatus::Watermark => 6,
    }
}

/// What one served read was, as the counters see it.
#[derive(Debug, Clone, Copy)]
pub struct ServedRead {
    pub tier: Tier,
    pub status: CacheStatus,
    /// It returned an item older than the session's own write of it.
    pub stale_own: bool,
    /// It returned an older version than the session had already read.
    pub regression: bool,
    /// How long the read took on the node.
    pub took: Duration,
}

/// Counts of one node.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Reads that also read the strict fields from the primary.
    pub strict_reads: Counter,
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

// ------------------------------------------------------------------ experiments

/// Most named arms per strategy flag; the reads of any further arm are counted under
/// [`OTHER_ARM`]. `on` and `off` take two of them.
pub const MAX_ARMS: usize = 8;

/// The arm that holds what [`MAX_ARMS`] (or [`MAX_CELLS`]) cannot.
pub const OTHER_ARM: &str = "other";

/// Most distinct combinations of arms (one per strategy) counted apart; requests of
/// further combinations count under [`OTHER_ARM`] of every flag. Six flags of two arms
/// each make 64.
pub const MAX_CELLS: usize = 128;

/// The per-arm accounting of every strategy flag.
///
/// A request's arms (one per strategy) select one *cell*, which counts its reads by
/// tier and status, its stale own reads and regressions, its latency and its sessions.
/// A read thus costs the same few atomic additions however many flags there are; the
/// report of one flag's arm adds up the cells in that arm at scrape time (and merges
/// their HyperLogLogs, which gives the distinct sessions of the union).
pub struct Experiments {
    labels: [ArmLabels; Strategy::ALL.len()],
    cells: Box<[OnceLock<Box<Cell>>]>,
    /// The cell of every combination past [`MAX_CELLS`]: `other` in every flag.
    overflow: OnceLock<Box<Cell>>,
}

impl Default for Experiments {
    fn default() -> Self {
        Self {
            labels: Default::default(),
            cells: (0..MAX_CELLS).map(|_| OnceLock::new()).collect(),
            overflow: OnceLock::new(),
        }
    }
}

impl std::fmt::Debug for Experiments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Experiments")
            .field("cells", &self.cells().count())
            .finish()
    }
}

/// The labels of one flag's arms: `on` and `off` in slots 0 and 1, then variant names
/// in the order they were first seen. A request finds its arm's slot without a lock;
/// `on` and `off` without comparing more than their two or three bytes.
#[derive(Default)]
struct ArmLabels {
    variants: [OnceLock<Box<str>>; MAX_ARMS - 2],
}

impl ArmLabels {
    /// The slot of `label`: 0 for `on`, 1 for `off`, then the variants', or
    /// [`MAX_ARMS`] for `other`.
    fn slot(&self, label: &str) -> u8 {
        match label {
            "on" => 0,
            "off" => 1,
            OTHER_ARM => MAX_ARMS as u8,
            _ => {
                for (i, slot) in self.variants.iter().enumerate() {
                    // Two threads may race to fill a slot with different labels: the
                    // loser moves on to the next slot, so each label has one slot.
                    if &**slot.get_or_init(|| label.into()) == label {
                        return i as u8 + 2;
                    }
                }
                MAX_ARMS as u8
            }
        }
    }

    fn label(&self, slot: u8) -> &str {
        match slot {
            0 => "on",
            1 => "off",
            _ => self
                .variants
                .get(usize::from(slot) - 2)
                .and_then(OnceLock::get)
                .map_or(OTHER_ARM, |label| label),
        }
    }
}

/// The counts of one combination of arms.
struct Cell {
    /// The arm slot of each strategy ([`Strategy::index`] order).
    arms: [u8; Strategy::ALL.len()],
    /// The slots packed four bits each, compared on look-up.
    key: u32,
    /// The read counts, one copy per stripe.
    counts: Box<[CellCounts]>,
    sessions: Hll,
}

/// One stripe of a cell's read counts (cache-line aligned: stripes never share a line).
#[repr(align(128))]
struct CellCounts {
    /// Reads by `[Tier as usize][position in STATUSES]`.
    reads: [[Counter; STATUSES.len()]; Tier::ALL.len()],
    stale_own: Counter,
    regressions: Counter,
    latency: LogHistogram,
}

impl Cell {
    fn new(arms: [u8; Strategy::ALL.len()]) -> Self {
        Self {
            arms,
            key: arms.iter().fold(0, |key, slot| (key << 4) | u32::from(*slot)),
            counts: (0..STRIPES)
                .map(|_| CellCounts {
                    reads: Default::default(),
                    stale_own: Counter::default(),
                    regressions: Counter::default(),
                    latency: LogHistogram::new(),
                })
                .collect(),
            sessions: Hll::new(),
        }
    }
}

/// The cell of a request's arms in [`Experiments`]: found once when its session is
/// opened, so each read counts itself with no look-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CellId(u16);

impl Experiments {
    /// The cell of a request's arms.
    fn cell_id(&self, arms: &Strategies) -> CellId {
        let mut slots = [0u8; Strategy::ALL.len()];
        let mut key = 0u32;
        for strategy in Strategy::ALL {
            let slot = self.labels[strategy.index()].slot(arms.arm(strategy).label());
            slots[strategy.index()] = slot;
            key = (key << 4) | u32::from(slot);
        }
        let start = (key.wrapping_mul(0x9e37_79b9) >> 16) as usize;
        for probe in 0..MAX_CELLS {
            let i = (start + probe) % MAX_CELLS;
            let cell = self.cells[i].get_or_init(|| Box::new(Cell::new(slots)));
            if cell.key == key {
                return CellId(i as u16);
            }
        }
        CellId(MAX_CELLS as u16)
    }

    fn cell(&self, id: CellId) -> &Cell {
        match self.cells.get(usize::from(id.0)).and_then(OnceLock::get) {
            Some(cell) => cell,
            None => self
                .overflow
                .get_or_init(|| Box::new(Cell::new([MAX_ARMS as u8; Strategy::ALL.len()]))),
        }
    }

    fn cells(&self) -> impl Iterator<Item = &Cell> {
        self.cells
            .iter()
            .chain(std::iter::once(&self.overflow))
            .filter_map(|slot| slot.get().map(|cell| &**cell))
    }

    /// Records that `session_id` made a request with `arms`; the cell of the arms
    /// counts the request's reads. `last` is the session's memory of the cell it was
    /// last counted in: a session counted there already is not hashed into the
    /// cell's distinct count again (which would change nothing).
    pub fn session_seen(&self, session_id: &str, arms: &Strategies, last: &AtomicU32) -> CellId {
        let id = self.cell_id(arms);
        let tag = u32::from(id.0) + 1;
        if last.swap(tag, Ordering::Relaxed) != tag {
            self.cell(id).sessions.insert(session_hash(session_id));
        }
        id
    }

    /// Records a read served in `cell`.
    pub fn read(&self, cell: CellId, read: &ServedRead) {
        let cell = &self.cell(cell).counts[stripe()];
        cell.reads[read.tier as usize][status_index(read.status)].inc();
        cell.latency
            .record(read.took.as_micros().min(u128::from(u64::MAX)) as u64);
        if read.stale_own {
            cell.stale_own.inc();
        }
        if read.regression {
            cell.regressions.inc();
        }
    }

    /// Reads served from `tier` with `status`, in every arm.
    pub fn reads_of(&self, tier: Tier, status: CacheStatus) -> u64 {
        let i = status_index(status);
        self.cells()
            .flat_map(|cell| cell.counts.iter())
            .map(|counts| counts.reads[tier as usize][i].get())
            .sum()
    }

    /// The arms of `strategy` seen so far, in the order they were first seen, with
    /// their counts (summed over the cells in the arm).
    pub fn arms_of(&self, strategy: Strategy) -> Vec<ArmStats<'_>> {
        let i = strategy.index();
        (0..=MAX_ARMS as u8)
            .filter_map(|slot| {
                let cells: Vec<&Cell> = self.cells().filter(|cell| cell.arms[i] == slot).collect();
                (!cells.is_empty()).then(|| ArmStats::sum(self.labels[i].label(slot), &cells))
            })
            .collect()
    }

    /// Every arm seen so far, per strategy in [`Strategy::ALL`] order.
    pub fn arms(&self) -> Vec<(Strategy, ArmStats<'_>)> {
        Strategy::ALL
            .into_iter()
            .flat_map(|s| self.arms_of(s).into_iter().map(move |arm| (s, arm)))
            .collect()
    }
}

/// The counts of one arm of one strategy, as of when they were read.
#[derive(Debug, Clone)]
pub struct ArmStats<'a> {
    /// `on`, `off`, a variant name or [`OTHER_ARM`].
    pub label: &'a str,
    /// Distinct sessions that made a request in this arm (an estimate: exact in
    /// practice for a few dozen, within about 2% beyond).
    pub sessions: u64,
    /// Reads served.
    pub reads: u64,
    /// Reads served without an origin read for their non-strict fields
    /// ([`CacheStatus::is_hit`]).
    pub hits: u64,
    pub stale_own_reads: u64,
    pub regressions_served: u64,
    /// Read latency.
    pub latency: LatencyCounts,
}

impl<'a> ArmStats<'a> {
    fn sum(label: &'a str, cells: &[&Cell]) -> Self {
        let mut latency = LatencyCounts::default();
        let mut reads = 0;
        let mut hits = 0;
        let (mut stale_own_reads, mut regressions_served) = (0, 0);
        for counts in cells.iter().flat_map(|cell| cell.counts.iter()) {
            latency.add(&counts.latency);
            stale_own_reads += counts.stale_own.get();
            regressions_served += counts.regressions.get();
            for by_status in &counts.reads {
                for (status, count) in STATUSES.iter().zip(by_status) {
                    let n = count.get();
                    reads += n;
                    if status.is_hit() {
                        hits += n;
                    }
                }
            }
        }
        Self {
            label,
            sessions: Hll::estimate_union(cells.iter().map(|cell| &cell.sessions)),
            reads,
            hits,
            stale_own_reads,
            regressions_served,
            latency,
        }
    }
}

/// The hash a session id is counted under in the HyperLogLogs: eight bytes at a time,
/// then murmur3's 64-bit finaliser, so every bit of the result depends on every byte.
fn session_hash(session_id: &str) -> u64 {
    let bytes = session_id.as_bytes();
    let mut h = 0x9e37_79b9_7f4a_7c15_u64 ^ bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        h = (h ^ word).wrapping_mul(0xbf58_476d_1ce4_e5b9).rotate_left(31);
    }
    let tail = chunks
        .remainder()
        .iter()
        .enumerate()
        .fold(0u64, |word, (i, b)| word | (u64::from(*b) << (8 * i)));
    h ^= tail;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A HyperLogLog of 2^12 one-byte registers (4 KiB): a count of distinct sessions in
/// fixed memory, with a standard error of 1.6%. Below about 10,000 sessions it counts
/// by linear counting, which is exact for small counts unless two sessions share a
/// register. Inserting an already-seen session is one load.
struct Hll {
    registers: Box<[AtomicU8]>,
}

const HLL_BITS: u32 = 12;
const HLL_REGISTERS: usize = 1 << HLL_BITS;

impl Hll {
    fn new() -> Self {
        Self {
            registers: (0..HLL_REGISTERS).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    fn insert(&self, hash: u64) {
        let index = (hash >> (64 - HLL_BITS)) as usize;
        // The rank of the first 1 bit after the index bits (a guard bit bounds it).
        let rest = (hash << HLL_BITS) | (1 << (HLL_BITS - 1));
        let rank = rest.leading_zeros() as u8 + 1;
        let register = &self.registers[index];
        if register.load(Ordering::Relaxed) < rank {
            register.fetch_max(rank, Ordering::Relaxed);
        }
    }

    /// The distinct count of the union of `sets` (register-wise maximum).
    fn estimate_union<'a>(sets: impl Iterator<Item = &'a Hll>) -> u64 {
        let mut merged = vec![0u8; HLL_REGISTERS];
        for set in sets {
            for (m, register) in merged.iter_mut().zip(set.registers.iter()) {
                *m = (*m).max(register.load(Ordering::Relaxed));
            }
        }
        let m = HLL_REGISTERS as f64;
        let zeros = merged.iter().filter(|r| **r == 0).count();
        let sum: f64 = merged.iter().map(|r| (-f64::from(*r)).exp2()).sum();
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / sum;
        let estimate = if raw <= 2.5 * m && zeros > 0 {
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        estimate.round() as u64
    }
}

// ------------------------------------------------------------------ histograms

/// Sub-buckets per power of two of [`LogHistogram`]: 2^3, so a bucket spans 1/8 of
/// its octave and a quantile read from it is at most 12.5% over the true value.
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// The highest octave kept apart: values of 2^27 µs (134 s) and more share the last
/// bucket.
const MAX_OCTAVE: u32 = 26;
const LOG_BUCKETS: usize = (SUB + (MAX_OCTAVE - SUB_BITS + 1) as u64 * SUB) as usize;

/// A log-linear histogram of microseconds in atomics (200 buckets, 1.6 KiB): exact
/// below 8 µs, then 8 buckets per power of two up to 134 s. Quantiles are read from
/// it ([`LatencyCounts`]) without keeping samples.
struct LogHistogram {
    buckets: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
}

impl LogHistogram {
    fn new() -> Self {
        Self {
            buckets: (0..LOG_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn index(micros: u64) -> usize {
        if micros < SUB {
            return micros as usize;
        }
        let octave = 63 - micros.leading_zeros();
        if octave > MAX_OCTAVE {
            return LOG_BUCKETS - 1;
        }
        let sub = (micros >> (octave - SUB_BITS)) & (SUB - 1);
        (SUB + u64::from(octave - SUB_BITS) * SUB + sub) as usize
    }

    /// The smallest value past bucket `i`.
    fn end(i: usize) -> u64 {
        let i = i as u64;
        if i < SUB {
            return i + 1;
        }
        let j = i - SUB;
        let shift = j / SUB;
        (SUB + j % SUB + 1) << shift
    }

    fn record(&self, micros: u64) {
        self.buckets[Self::index(micros)].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

/// The bucket counts of one or more [`LogHistogram`]s, read at one time.
#[derive(Debug, Clone, Default)]
pub struct LatencyCounts {
    buckets: Vec<u64>,
    sum_micros: u64,
}

impl LatencyCounts {
    fn add(&mut self, histogram: &LogHistogram) {
        self.buckets.resize(LOG_BUCKETS, 0);
        for (total, bucket) in self.buckets.iter_mut().zip(histogram.buckets.iter()) {
            *total += bucket.load(Ordering::Relaxed);
        }
        self.sum_micros += histogram.sum_micros.load(Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    pub fn sum_micros(&self) -> u64 {
        self.sum_micros
    }

    /// The `q` quantile (0 < q ≤ 1) in microseconds: the highest value of the bucket
    /// it falls in, so never less than the true quantile and at most 12.5% more.
    /// `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(LogHistogram::end(i) - 1);
            }
        }
        None
    }

    /// The counts per bucket ending at each of `bounds` (µs, ascending powers of two
    /// from 8 on, which are bucket edges, so no bucket straddles one), and past the
    /// last one. Not cumulative.
    pub fn coarse(&self, bounds: &[u64]) -> Vec<u64> {
        let mut out = vec![0; bounds.len() + 1];
        for (i, count) in self.buckets.iter().enumerate() {
            let k = bounds.partition_point(|b| *b < LogHistogram::end(i));
            out[k] += count;
        }
        out
    }
}

/// The route templates of the REST API.
pub mod route {
    pub const ITEM: &str = "/v1/{collection}/{id}";
    pub const BATCH_GET: &str = "/v1/{collection}/batch-get";
    pub const INCREMENT: &str = "/v1/{collection}/{id}/increment";
    pub const HEALTHZ: &str = "/healthz";
    pub const READYZ: &str = "/readyz";
    pub const CLUSTER_HEALTH: &str = "/cluster/health";
    pub const CLUSTER_LEAVE: &str = "/cluster/leave";
    pub const METRICS: &str = "/metrics";
    pub const ADMIN_EXPERIMENTS: &str = "/admin/experiments";
}

/// The `route` label values of the HTTP metrics. `http::routes` names every resource
/// by its template, so a request's route is read from the match without building its
/// pattern. Requests that match no named resource count as [`UNMATCHED`].
pub const ROUTES: [&str; 9] = [
    route::ITEM,
    route::BATCH_GET,
    route::INCREMENT,
    route::HEALTHZ,
    route::READYZ,
    route::CLUSTER_HEALTH,
    route::CLUSTER_LEAVE,
    route::METRICS,
    route::ADMIN_EXPERIMENTS,
];

/// The route label of a request that matched no route.
pub const UNMATCHED: &str = "unmatched";

/// The `method` label values; methods the API does not serve count as `other`.
pub const METHODS: [&str; 7] = ["GET", "PUT", "PATCH", "DELETE", "POST", "HEAD", "other"];

/// The `status` label values.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Upper bounds of the HTTP latency buckets, in seconds (and +Inf).
pub const HTTP_BOUNDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const HTTP_BOUNDS_NANOS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The latency histogram of one (route, method, status class) in one stripe.
struct HttpSeries {
    buckets: [AtomicU64; HTTP_BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl HttpSeries {
    fn observe(&self, took: Duration) {
        let nanos = took.as_nanos().min(u128::from(u64::MAX)) as u64;
        let i = HTTP_BOUNDS_NANOS.partition_point(|b| *b < nanos);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// The latency histogram of one (route, method, status class), read at one time (all
/// stripes added); its count is the number of requests.
#[derive(Debug, Clone, Default)]
pub struct HttpCounts {
    buckets: [u64; HTTP_BOUNDS.len() + 1],
    sum_nanos: u64,
}

impl HttpCounts {
    fn add(&mut self, series: &HttpSeries) {
        for (total, bucket) in self.buckets.iter_mut().zip(&series.buckets) {
            *total += bucket.load(Ordering::Relaxed);
        }
        self.sum_nanos += series.sum_nanos.load(Ordering::Relaxed);
    }

    /// Requests counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Their total duration, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanos as f64 / 1e9
    }

    /// Counts per bucket of [`HTTP_BOUNDS`] then +Inf (not cumulative).
    pub fn buckets(&self) -> [u64; HTTP_BOUNDS.len() + 1] {
        self.buckets
    }
}

const HTTP_SERIES: usize = (ROUTES.len() + 1) * METHODS.len() * STATUS_CLASSES.len();

/// Requests and their latency by route, method and status class: one histogram per
/// combination, in a fixed table per stripe ([`STRIPES`] tables, one after the other).
pub struct HttpMetrics {
    series: Box<[HttpSeries]>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            series: (0..HTTP_SERIES * STRIPES)
                .map(|_| HttpSeries {
                    buckets: Default::default(),
                    sum_nanos: AtomicU64::new(0),
                })
                .collect(),
        }
    }
}

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let requests: u64 = self.series().map(|(_, counts)| counts.count()).sum();
        f.debug_struct("HttpMetrics")
            .field("requests", &requests)
            .finish()
    }
}

impl HttpMetrics {
    /// Counts one request: `route` is the matched resource's name (its template),
    /// `None` when no route matched.
    pub fn record(&self, route: Option<&str>, method: &actix_web::http::Method, status: u16, took: Duration) {
        use actix_web::http::Method;
        let route = route
            // `http::v1` hands out the constants themselves: compare addresses first.
            .and_then(|name| {
                ROUTES
                    .iter()
                    .position(|r| std::ptr::eq(r.as_ptr(), name.as_ptr()) || *r == name)
            })
            .unwrap_or(ROUTES.len());
        let method = match *method {
            Method::GET => 0,
            Method::PUT => 1,
            Method::PATCH => 2,
            Method::DELETE => 3,
            Method::POST => 4,
            Method::HEAD => 5,
            _ => 6,
        };
        let class = usize::from((status / 100).clamp(1, 5) - 1);
        let index = (route * METHODS.len() + method) * STATUS_CLASSES.len() + class;
        self.series[stripe() * HTTP_SERIES + index].observe(took);
    }

    /// Every series with at least one request: its route, method and status class
    /// labels, and its counts.
    pub fn series(&self) -> impl Iterator<Item = ([&'static str; 3], HttpCounts)> + '_ {
        (0..HTTP_SERIES)
            .map(|i| {
                let mut counts = HttpCounts::default();
                for stripe in 0..STRIPES {
                    counts.add(&self.series[stripe * HTTP_SERIES + i]);
                }
                (i, counts)
            })
            .filter(|(_, counts)| counts.count() > 0)
            .map(|(i, counts)| {
                let class = i % STATUS_CLASSES.len();
                let method = (i / STATUS_CLASSES.len()) % METHODS.len();
                let route = i / (STATUS_CLASSES.len() * METHODS.len());
                let route = ROUTES.get(route).copied().unwrap_or(UNMATCHED);
                ([route, METHODS[method], STATUS_CLASSES[class]], counts)
            })
    }
}

#[cfg(test)]
mod tests {
    use edgecache_flags::Arm;

    use super::*;

    fn counts(values: impl IntoIterator<Item = u64>) -> LatencyCounts {
        let h = LogHistogram::new();
        for v in values {
            h.record(v);
        }
        let mut counts = LatencyCounts::default();
        counts.add(&h);
        counts
    }

    #[test]
    fn log_buckets_cover_their_values_and_quantiles_never_understate() {
        for v in (0..5000).chain([1 << 20, (1 << 27) - 1]) {
            let i = LogHistogram::index(v);
            assert!(
                LogHistogram::end(i) > v,
                "{v} lies before the end of its bucket {i}"
            );
            if i > 0 {
                assert!(
                    LogHistogram::end(i - 1) <= v,
                    "{v} lies past the bucket before {i}"
                );
            }
            // A bucket is at most an eighth of its lower edge wide.
            let start = if i == 0 { 0 } else { LogHistogram::end(i - 1) };
            assert!((LogHistogram::end(i) - start) * 8 <= start.max(8), "bucket {i}");
        }
        assert_eq!(LogHistogram::index(u64::MAX), LOG_BUCKETS - 1);

        assert_eq!(counts([]).quantile(0.5), None);
        let c = counts((1..=100).map(|v| v * 10));
        assert_eq!(c.count(), 100);
        assert_eq!(c.sum_micros(), 50_500);
        let p50 = c.quantile(0.5).unwrap();
        let p99 = c.quantile(0.99).unwrap();
        assert!((500..=500 * 9 / 8).contains(&p50), "p50 {p50}");
        assert!((990..=990 * 9 / 8).contains(&p99), "p99 {p99}");
        assert_eq!(c.coarse(&[64, 128, 256, 512, 1024]), vec![6, 6, 13, 26, 49, 0]);
    }

    #[test]
    fn hyperloglog_counts_small_sets_exactly_and_large_ones_closely() {
        let (a, b) = (Hll::new(), Hll::new());
        for i in 0..20 {
            for _ in 0..3 {
                a.insert(session_hash(&format!("session-{i}")));
            }
        }
        assert_eq!(Hll::estimate_union([&a].into_iter()), 20);
        for i in 10..30 {
            b.insert(session_hash(&format!("session-{i}")));
        }
        assert_eq!(
            Hll::estimate_union([&a, &b].into_iter()),
            30,
            "a union counts each once"
        );
        for i in 30..50_000 {
            a.insert(session_hash(&format!("{i:032x}")));
        }
        let estimate = Hll::estimate_union([&a].into_iter()) as f64;
        assert!((estimate / 50_000.0 - 1.0).abs() < 0.05, "{estimate}");
    }

    #[test]
    fn arms_beyond_the_limit_fold_into_other() {
        let labels = ArmLabels::default();
        let slots: Vec<u8> = (0..9).map(|i| labels.slot(&format!("v{i}"))).collect();
        assert_eq!(slots, [2, 3, 4, 5, 6, 7, 8, 8, 8]);
        assert_eq!(
            (labels.slot("on"), labels.slot("off"), labels.slot("v3")),
            (0, 1, 5)
        );
        assert_eq!(labels.slot(OTHER_ARM), MAX_ARMS as u8);
        assert_eq!(
            (labels.label(0), labels.label(1), labels.label(5)),
            ("on", "off", "v3")
        );
        assert_eq!(labels.label(MAX_ARMS as u8), OTHER_ARM);
    }

    fn read(status: CacheStatus, stale_own: bool) -> ServedRead {
        ServedRead {
            tier: Tier::Cache,
            status,
            stale_own,
            regression: false,
            took: Duration::from_micros(40),
        }
    }

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
    fn combinations_past_the_cell_limit_count_as_other() {
        let experiments = Experiments::default();
        let variant = |i: usize| -> &'static str { Box::leak(format!("v{i}").into_boxed_str()) };
        // 6 × 6 × 6 = 216 combinations of named arms: more than MAX_CELLS.
        for i in 0..6 {
            for j in 0..6 {
                for k in 0..6 {
                    let arms = Strategies::ALL_ON
                        .with(
                            Strategy::ReadYourWrites,
                            Arm {
                                enabled: true,
                                variant: Some(variant(i)),
                            },
                        )
                        .with(
                            Strategy::MonotonicReads,
                            Arm {
                                enabled: true,
                                variant: Some(variant(j)),
                            },
                        )
                        .with(
                            Strategy::StrictFields,
                            Arm {
                                enabled: true,
                                variant: Some(variant(k)),
                            },
                        );
                    experiments.read(experiments.cell_id(&arms), &read(CacheStatus::Miss, false));
                }
            }
        }
        assert_eq!(experiments.reads_of(Tier::Cache, CacheStatus::Miss), 216);
        let ryw = experiments.arms_of(Strategy::ReadYourWrites);
        assert_eq!(ryw.iter().map(|a| a.reads).sum::<u64>(), 216, "nothing is lost");
        let other = ryw.iter().find(|a| a.label == OTHER_ARM).expect("an `other` arm");
        assert_eq!(other.reads, 216 - MAX_CELLS as u64);
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

    #[test]
    fn http_series_are_found_by_route_method_and_class() {
        let http = HttpMetrics::default();
        let get = actix_web::http::Method::GET;
        http.record(Some(ROUTES[0]), &get, 200, Duration::from_micros(300));
        http.record(Some(ROUTES[0]), &get, 204, Duration::from_millis(20));
        http.record(None, &actix_web::http::Method::OPTIONS, 404, Duration::ZERO);
        let series: Vec<_> = http.series().map(|(labels, s)| (labels, s.count())).collect();
        assert_eq!(
            series,
            vec![
                (["/v1/{collection}/{id}", "GET", "2xx"], 2),
                (["unmatched", "other", "4xx"], 1)
            ]
        );
        let (_, first) = http.series().next().unwrap();
        assert_eq!(first.buckets()[2], 1, "300 µs is in the 500 µs bucket");
        assert_eq!(first.buckets()[7], 1, "20 ms is in the 25 ms bucket");
    }
}
