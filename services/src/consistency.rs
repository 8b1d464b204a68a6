//! Online consistency checks: the node measures its own session guarantees from
//! outside its read path, per strategy flag and arm.
//!
//! A configurable fraction (`flags.consistency_checks.sample`) of the session reads
//! served from the cache or a replica is *sampled*: at serve time the read path hands
//! over what it served (the item's version, the copy's age) and what the session
//! needed at that moment — the version of its own last write of the item and the
//! version it had last read, taken from its watermarks before this read raised them
//! (one [`ConsistencyChecks::offer`] call, which costs an unsampled read one
//! thread-local random draw). The sample goes into a bounded queue; when it is full
//! the read is counted `skipped` and never waits. A background task under the node's
//! shutdown signal reads each sampled item from the primary and judges ([`judge`]):
//!
//! - **stale_own**: the served version was older than the session's own write, and
//!   the primary holds that write (so the write was real and committed).
//! - **regression**: the served version was older than one the session had already
//!   read, which the primary holds.
//! - **over_bound**: a bounded field's copy was older than its bound when served, and
//!   the primary holds a newer version (a copy past its bound that nothing replaced
//!   is still the current state).
//! - **ok** otherwise; **skipped** when the queue was full or the primary read failed.
//!
//! A primary version newer than the served one is not a violation by itself: other
//! sessions' writes may be served late within the item's class. A served version
//! older than the session's need is, whatever the session's arms: with a strategy off
//! the check still counts what the session would have been owed, so the arms compare.
//! The needs are the session's item marks; the floors that stand in for marks dropped
//! from a full token are not judged (they ask more of a source than the item's own
//! version, never less).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgecache_actors::{Doc, ItemKey, Version, Watermarks};
use edgecache_config::{ConsistencyCheckSettings, Freshness};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::metrics::{CellId, CheckOutcome, Metrics};
use crate::origin::SharedOrigin;
use crate::plan::CollectionPlan;
use crate::shutdown::Shutdown;
use crate::Tier;

/// What a sampled read served and what its session needed then.
#[derive(Debug, Clone)]
pub struct Sample {
    pub item: ItemKey,
    /// The version served.
    pub served: Version,
    /// The session's own last write of the item (read-your-writes); 0 if none.
    pub own_write: Version,
    /// The newest version of the item the session had read before (monotonic reads);
    /// 0 if none.
    pub read_before: Version,
    /// The tightest bound of the item's bounded fields, if it has any.
    pub bound: Option<Duration>,
    /// How old the served copy was when served.
    pub age: Duration,
}

impl Sample {
    /// The sample of serving `doc` of `id` in `plan`, `age` old, to a session with
    /// `marks` (as they were before this read was recorded).
    pub fn of(plan: &CollectionPlan, id: &str, doc: &Doc, age: Duration, marks: &Watermarks) -> Self {
        let item = ItemKey::new(plan.name.clone(), id);
        let hash = item.hash();
        Self {
            served: doc.version,
            own_write: marks.need(hash, true, false).version,
            read_before: marks.need(hash, false, true).version,
            bound: tightest_bound(plan),
            age,
            item,
        }
    }
}

/// The tightest `max_staleness` of the collection's bounded classes (its default and
/// its fields').
fn tightest_bound(plan: &CollectionPlan) -> Option<Duration> {
    let schema = &plan.schema;
    std::iter::once(schema.freshness)
        .chain(schema.fields.values().map(|f| schema.freshness_of(f)))
        .filter_map(|class| match class {
            Freshness::Bounded { max_staleness } => Some(max_staleness),
            _ => None,
        })
        .min()
}

/// Judges a sample against the primary's version of its item, read after it was
/// served.
pub fn judge(sample: &Sample, primary: Version) -> CheckOutcome {
    if sample.served < sample.own_write && primary >= sample.own_write {
        CheckOutcome::StaleOwn
    } else if sample.served < sample.read_before && primary >= sample.read_before {
        CheckOutcome::Regression
    } else if sample.bound.is_some_and(|bound| sample.age > bound) && primary > sample.served {
        CheckOutcome::OverBound
    } else {
        CheckOutcome::Ok
    }
}

/// A sample waiting for its primary read, with the experiment cell it counts in.
struct Queued {
    cell: CellId,
    sample: Sample,
}

/// The sampler on the read path and the queue to the background checker.
pub struct ConsistencyChecks {
    /// A read is sampled when a 53-bit random draw falls below this (2^53: every
    /// read; 0: none, and no draw).
    threshold: u64,
    queue: Option<mpsc::Sender<Queued>>,
    metrics: Arc<Metrics>,
    /// Whether the checker runs. A node built outside a runtime (a bench's) starts it
    /// with its first sampled read, from what `pending` keeps.
    started: AtomicBool,
    pending: Mutex<Option<Checker>>,
}

/// What the checker task needs, until it is spawned.
struct Checker {
    queue: mpsc::Receiver<Queued>,
    origin: SharedOrigin,
    metrics: Arc<Metrics>,
    concurrency: usize,
    shutdown: Shutdown,
}

impl Checker {
    /// Runs the checker under its shutdown signal, on the current runtime.
    fn spawn(self) {
        let Checker {
            queue,
            origin,
            metrics,
            concurrency,
            shutdown,
        } = self;
        shutdown.spawn(
            "consistency checks",
            check_all(queue, origin, metrics, concurrency),
        );
    }
}

const DRAW_BITS: u32 = 53;

thread_local! {
    /// Each thread's SplitMix64 state, seeded from its own address and the clock.
    static DRAW: Cell<u64> = Cell::new({
        let local = 0u8;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        crate::hash::fmix64((&local as *const u8 as u64) ^ nanos)
    });
}

fn draw() -> u64 {
    DRAW.with(|state| {
        let mut s = state.get();
        let r = crate::hash::splitmix64(&mut s);
        state.set(s);
        r >> (64 - DRAW_BITS)
    })
}

impl ConsistencyChecks {
    /// The checks `settings` ask for, their checker started under `shutdown` on the
    /// current runtime (none when `sample` is 0; outside a runtime, by the first
    /// sampled read).
    pub fn start(
        settings: &ConsistencyCheckSettings,
        origin: SharedOrigin,
        metrics: Arc<Metrics>,
        shutdown: &Shutdown,
    ) -> Self {
        let threshold = (settings.sample.clamp(0.0, 1.0) * (1u64 << DRAW_BITS) as f64) as u64;
        let mut pending = None;
        let queue = (threshold > 0).then(|| {
            let (tx, rx) = mpsc::channel(settings.queue.max(1));
            pending = Some(Checker {
                queue: rx,
                origin,
                metrics: metrics.clone(),
                concurrency: settings.concurrency.max(1),
                shutdown: shutdown.clone(),
            });
            tx
        });
        let started = pending.is_none() || tokio::runtime::Handle::try_current().is_ok();
        if started {
            if let Some(checker) = pending.take() {
                checker.spawn();
            }
        }
        Self {
            threshold,
            queue,
            metrics,
            started: AtomicBool::new(started),
            pending: Mutex::new(pending),
        }
    }

    /// Offers a read served from `tier` in `cell` for checking: reads from the cache
    /// or a replica are sampled at the configured rate; `sample` is made only for a
    /// sampled read. Never waits: a full queue counts the read `skipped`.
    #[inline]
    pub fn offer(&self, cell: CellId, tier: Tier, sample: impl FnOnce() -> Sample) {
        if self.threshold == 0 || !matches!(tier, Tier::Cache | Tier::Replica) || draw() >= self.threshold {
            return;
        }
        let Some(queue) = &self.queue else { return };
        if !self.started.load(Ordering::Acquire) {
            self.start_pending();
        }
        let queued = Queued {
            cell,
            sample: sample(),
        };
        if queue.try_send(queued).is_err() {
            self.metrics.experiments.checked(cell, CheckOutcome::Skipped);
        }
    }

    /// Spawns the checker a node built outside a runtime could not (a read runs in
    /// one).
    #[cold]
    fn start_pending(&self) {
        if let Some(checker) = self.pending.lock().take() {
            checker.spawn();
        }
        self.started.store(true, Ordering::Release);
    }

    /// Samples waiting for their primary read.
    pub fn queued(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.max_capacity() - q.capacity())
    }
}

/// Most samples judged by one primary read.
const BATCH: usize = 256;

/// How long the first sample of a batch waits for others to join it.
const BATCH_WAIT: Duration = Duration::from_millis(20);

/// The checker: takes the queued samples in batches — what arrives within
/// [`BATCH_WAIT`] of the first, up to [`BATCH`] — reads their items' versions from
/// the primary in one read ([`crate::origin::Origin::versions`]), `concurrency`
/// batches at a time, and counts each verdict in its sample's cell. Batching is what
/// keeps a sample cheap: a read per sample (a hop to the origin's threads and back)
/// cost the hits a third of their time at 1 %, though the read itself is small.
async fn check_all(
    queue: mpsc::Receiver<Queued>,
    origin: SharedOrigin,
    metrics: Arc<Metrics>,
    concurrency: usize,
) {
    let batches = futures_util::stream::unfold(queue, |mut queue| async move {
        let first = queue.recv().await?;
        tokio::time::sleep(BATCH_WAIT).await;
        let mut batch = Vec::with_capacity(BATCH);
        batch.push(first);
        while batch.len() < BATCH {
            match queue.try_recv() {
                Ok(queued) => batch.push(queued),
                Err(_) => break,
            }
        }
        Some((batch, queue))
    });
    batches
        .for_each_concurrent(concurrency, |batch| {
            let origin = origin.clone();
            let metrics = metrics.clone();
            async move {
                let keys = batch.iter().map(|q| q.sample.item.clone()).collect();
                match origin.versions(keys).await {
                    Ok(versions) => {
                        for (Queued { cell, sample }, primary) in batch.into_iter().zip(versions) {
                            let outcome = judge(&sample, primary);
                            if outcome.is_violation() {
                                tracing::info!(
                                    item = %sample.item,
                                    outcome = outcome.as_str(),
                                    served = sample.served.0,
                                    own_write = sample.own_write.0,
                                    read_before = sample.read_before.0,
                                    primary = primary.0,
                                    "consistency check found a violation"
                                );
                            }
                            metrics.experiments.checked(cell, outcome);
                        }
                    }
                    Err(err) => {
                        tracing::debug!(cause = %err, samples = batch.len(), "consistency check: the primary read failed");
                        for Queued { cell, .. } in batch {
                            metrics.experiments.checked(cell, CheckOutcome::Skipped);
                        }
                    }
                }
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(served: u64, own_write: u64, read_before: u64) -> Sample {
        Sample {
            item: ItemKey::new("notes".into(), "n1"),
            served: Version(served),
            own_write: Version(own_write),
            read_before: Version(read_before),
            bound: Some(Duration::from_millis(300)),
            age: Duration::from_millis(10),
        }
    }

    #[test]
    fn a_read_is_judged_against_the_need_it_was_served_under() {
        // Newer on the primary is not a violation by itself.
        assert_eq!(judge(&sample(3, 3, 2), Version(7)), CheckOutcome::Ok);
        assert_eq!(judge(&sample(2, 3, 0), Version(3)), CheckOutcome::StaleOwn);
        assert_eq!(judge(&sample(2, 0, 3), Version(4)), CheckOutcome::Regression);
        assert_eq!(
            judge(&sample(2, 3, 3), Version(3)),
            CheckOutcome::StaleOwn,
            "read-your-writes is judged first"
        );
        // A need the primary does not hold proves nothing about the served copy.
        assert_eq!(judge(&sample(2, 5, 0), Version(4)), CheckOutcome::Ok);

        let mut old = sample(2, 0, 0);
        old.age = Duration::from_millis(400);
        assert_eq!(judge(&old, Version(3)), CheckOutcome::OverBound);
        assert_eq!(
            judge(&old, Version(2)),
            CheckOutcome::Ok,
            "an old copy that is still the current version is within any bound"
        );
        old.bound = None;
        assert_eq!(judge(&old, Version(3)), CheckOutcome::Ok, "no bounded field");
    }

    #[test]
    fn a_checker_built_outside_a_runtime_starts_with_the_first_sampled_read() {
        use std::sync::atomic::AtomicU32;

        use edgecache_flags::Strategies;

        let dir = tempfile::tempdir().unwrap();
        let origin: SharedOrigin = Arc::new(
            crate::origin::EmbeddedOrigin::open(&dir.path().join("db"), 1, Duration::from_millis(200))
                .unwrap(),
        );
        let metrics = Arc::new(Metrics::default());
        let settings = ConsistencyCheckSettings {
            sample: 1.0,
            queue: 8,
            concurrency: 1,
        };
        let shutdown = Shutdown::new();
        let checks = ConsistencyChecks::start(&settings, origin, metrics.clone(), &shutdown);
        assert!(
            !checks.started.load(Ordering::SeqCst),
            "no runtime to start it on"
        );

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let judged = runtime.block_on(async {
            let cell = metrics
                .experiments
                .session_seen("s1", &Strategies::ALL_ON, &AtomicU32::new(0));
            checks.offer(cell, Tier::Primary, || {
                unreachable!("a primary read is not sampled")
            });
            checks.offer(cell, Tier::Cache, || sample(0, 0, 0));
            for _ in 0..200 {
                let arm = &metrics
                    .experiments
                    .arms_of(edgecache_flags::Strategy::ReadYourWrites)[0];
                if arm.checks_with(CheckOutcome::Ok) == 1 {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            false
        });
        assert!(
            judged,
            "the first sampled read started the checker, which judged it"
        );
        assert_eq!(shutdown.running(), ["consistency checks"]);
    }

    #[test]
    fn draws_sample_about_the_configured_fraction() {
        let threshold = (0.01 * (1u64 << DRAW_BITS) as f64) as u64;
        let sampled = (0..200_000).filter(|_| draw() < threshold).count();
        assert!((1_600..=2_400).contains(&sampled), "{sampled} of 200,000 at 1 %");
        assert!(
            (0..1000).all(|_| draw() < 1 << DRAW_BITS),
            "every draw is below 2^53"
        );
    }
}
