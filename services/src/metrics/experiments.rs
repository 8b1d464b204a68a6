//! Per-experiment accounting: the reads of every combination of strategy arms (a
//! *cell*), counted without a look-up on the request path and added up per arm at
//! scrape time (`GET /admin/experiments`, `/metrics`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use edgecache_flags::{Strategies, Strategy};

use super::checks::{CheckOutcome, CHECK_OUTCOMES};
use super::counter::Counter;
use super::histogram::{LatencyCounts, LogHistogram};
use super::hll::{session_hash, Hll};
use super::stripe::{stripe, STRIPES};
use crate::{CacheStatus, Tier};

/// The cache statuses in the order of [`super::Metrics::reads_of`]'s table.
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
    /// Consistency checks of the cell's reads, by [`CheckOutcome`] (counted off the
    /// request path, but for `skipped`: not striped).
    checks: [Counter; CHECK_OUTCOMES.len()],
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
            checks: Default::default(),
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
    #[inline]
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

    /// Records the outcome of a consistency check of a read served in `cell`.
    pub fn checked(&self, cell: CellId, outcome: CheckOutcome) {
        self.cell(cell).checks[outcome as usize].inc();
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
    /// Consistency checks of the arm's reads, by outcome ([`CHECK_OUTCOMES`] order).
    pub checks: [u64; CHECK_OUTCOMES.len()],
}

impl<'a> ArmStats<'a> {
    fn sum(label: &'a str, cells: &[&Cell]) -> Self {
        let mut latency = LatencyCounts::default();
        let mut reads = 0;
        let mut hits = 0;
        let (mut stale_own_reads, mut regressions_served) = (0, 0);
        let mut checks = [0; CHECK_OUTCOMES.len()];
        for cell in cells {
            for (total, count) in checks.iter_mut().zip(&cell.checks) {
                *total += count.get();
            }
        }
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
            checks,
        }
    }

    /// The checks of this arm with `outcome`.
    pub fn checks_with(&self, outcome: CheckOutcome) -> u64 {
        self.checks[outcome as usize]
    }
}

#[cfg(test)]
pub(super) mod tests {
    use edgecache_flags::Arm;

    use super::*;

    pub(crate) fn read(status: CacheStatus, stale_own: bool) -> ServedRead {
        ServedRead {
            tier: Tier::Cache,
            status,
            stale_own,
            regression: false,
            took: Duration::from_micros(40),
        }
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
}
