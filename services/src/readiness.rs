//! Readiness: whether the origin answers, from a sample a background task takes every
//! `server.readiness_interval`, so `/readyz` costs the origin nothing however often it
//! is asked (a load balancer's probes, or anyone's).
//!
//! Each sample is one `ping` of the origin, bounded by the interval (at most
//! [`MAX_PING_TIMEOUT`]). The node is ready while its last sample succeeded and is
//! recent: a sampler that stopped producing samples (a ping that never returns is cut
//! off, but a stuck runtime is not) makes the node not ready rather than ready forever.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edgecache_actors::Position;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::origin::SharedOrigin;
use crate::shutdown::Shutdown;

/// The longest a readiness ping may take before it counts as failed.
pub const MAX_PING_TIMEOUT: Duration = Duration::from_secs(5);

/// One look at the origin.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the ping started.
    pub at: Instant,
    /// The origin's position, or why it did not answer.
    pub outcome: Result<Position, String>,
}

/// Whether the node can serve, as last sampled.
#[derive(Debug, Clone)]
pub enum Ready {
    /// The last ping succeeded, `age` ago, at `position`.
    Yes { position: Position, age: Duration },
    /// Not ready, and why (no secret in it, but possibly the origin's error).
    No(String),
}

/// The latest sample of the origin, kept by a background task.
pub struct Readiness {
    samples: watch::Receiver<Option<Sample>>,
    interval: Duration,
    timeout: Duration,
    pings: Arc<AtomicU64>,
}

impl Readiness {
    /// Starts sampling `origin` every `interval` on the current runtime; the task
    /// ends when `shutdown` fires, or at its next sample once the returned value is
    /// dropped.
    pub fn start(origin: SharedOrigin, interval: Duration, shutdown: &Shutdown) -> Self {
        let (tx, samples) = watch::channel(None);
        let timeout = interval.min(MAX_PING_TIMEOUT);
        let pings = Arc::new(AtomicU64::new(0));
        let sampler = sample_forever(origin, interval, timeout, tx, pings.clone());
        shutdown.spawn("readiness sampler", sampler);
        Self {
            samples,
            interval,
            timeout,
            pings,
        }
    }

    /// Pings of the origin so far.
    pub fn pings(&self) -> u64 {
        self.pings.load(Ordering::Relaxed)
    }

    /// Whether the node is ready, from the last sample. Before the first one, waits
    /// for it (at most the ping timeout); never pings the origin itself.
    pub async fn check(&self) -> Ready {
        let mut samples = self.samples.clone();
        let sample = match tokio::time::timeout(self.timeout, samples.wait_for(Option::is_some)).await {
            Ok(Ok(sample)) => sample.clone().expect("waited for a sample"),
            _ => return Ready::No("the origin has not been checked yet".into()),
        };
        let age = sample.at.elapsed();
        let stale_after = 2 * self.interval + self.timeout;
        match sample.outcome {
            _ if age > stale_after => Ready::No(format!(
                "the origin was last checked {} ms ago (checks every {} ms)",
                age.as_millis(),
                self.interval.as_millis()
            )),
            Ok(position) => Ready::Yes { position, age },
            Err(cause) => Ready::No(cause),
        }
    }
}

async fn sample_forever(
    origin: SharedOrigin,
    interval: Duration,
    timeout: Duration,
    tx: watch::Sender<Option<Sample>>,
    pings: Arc<AtomicU64>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_ready = None;
    loop {
        ticker.tick().await;
        let at = Instant::now();
        pings.fetch_add(1, Ordering::Relaxed);
        let outcome = match tokio::time::timeout(timeout, origin.ping()).await {
            Ok(Ok(position)) => Ok(position),
            Ok(Err(e)) => Err(crate::http::ErrorChain(&e).to_string()),
            Err(_) => Err(format!(
                "the origin did not answer a ping within {} ms",
                timeout.as_millis()
            )),
        };
        let ready = outcome.is_ok();
        match (&outcome, was_ready) {
            (Err(cause), Some(true) | None) => {
                tracing::warn!(%cause, "not ready: the origin does not answer")
            }
            (Ok(_), Some(false)) => tracing::info!("ready: the origin answers again"),
            _ => {}
        }
        was_ready = Some(ready);
        if tx.send(Some(Sample { at, outcome })).is_err() {
            return; // nobody asks any more
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use edgecache_actors::ItemKey;
    use futures_util::future::BoxFuture;

    use super::*;
    use crate::origin::{
        Committed, IdempotencySweep, Origin, OriginError, OriginRead, ReadRequest, WriteError, WriteOp,
    };

    /// An origin that only answers pings, and counts them.
    #[derive(Default)]
    struct Pinged {
        pings: AtomicU64,
        down: AtomicBool,
        hangs: AtomicBool,
    }

    impl Origin for Pinged {
        fn read(&self, _: ItemKey, _: ReadRequest) -> BoxFuture<'static, Result<OriginRead, OriginError>> {
            unimplemented!("readiness only pings")
        }
        fn read_many(
            &self,
            _: Vec<ItemKey>,
            _: ReadRequest,
        ) -> BoxFuture<'static, Result<Vec<OriginRead>, OriginError>> {
            unimplemented!("readiness only pings")
        }
        fn write(&self, _: WriteOp) -> BoxFuture<'static, Result<Committed, WriteError>> {
            unimplemented!("readiness only pings")
        }
        fn sweep_idempotency(
            &self,
            _: Duration,
        ) -> BoxFuture<'static, Result<IdempotencySweep, OriginError>> {
            unimplemented!("readiness only pings")
        }
        fn ping(&self) -> BoxFuture<'static, Result<Position, OriginError>> {
            let n = self.pings.fetch_add(1, Ordering::SeqCst) + 1;
            let (down, hangs) = (
                self.down.load(Ordering::SeqCst),
                self.hangs.load(Ordering::SeqCst),
            );
            Box::pin(async move {
                if hangs {
                    std::future::pending::<()>().await;
                }
                if down {
                    Err(OriginError::Unavailable {
                        reason: "switched off".into(),
                        source: None,
                    })
                } else {
                    Ok(Position(n))
                }
            })
        }
        fn kind(&self) -> &'static str {
            "pinged"
        }
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_answers_from_the_last_sample_and_pings_once_per_interval() {
        let origin = Arc::new(Pinged::default());
        let readiness = Readiness::start(origin.clone(), Duration::from_secs(1), &Shutdown::new());
        for _ in 0..100 {
            assert!(matches!(
                readiness.check().await,
                Ready::Yes {
                    position: Position(1),
                    ..
                }
            ));
        }
        assert_eq!(origin.pings.load(Ordering::SeqCst), 1, "100 checks, one ping");

        tokio::time::sleep(Duration::from_millis(1500)).await;
        settle().await;
        assert_eq!(origin.pings.load(Ordering::SeqCst), 2);
        let Ready::Yes { position, age } = readiness.check().await else {
            panic!("ready")
        };
        assert_eq!(position, Position(2));
        assert_eq!(age, Duration::from_millis(500));

        origin.down.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        settle().await;
        let Ready::No(cause) = readiness.check().await else {
            panic!("not ready while the origin fails")
        };
        assert!(cause.contains("switched off"), "{cause}");
        origin.down.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(1)).await;
        settle().await;
        assert!(matches!(readiness.check().await, Ready::Yes { .. }));
        assert_eq!(origin.pings.load(Ordering::SeqCst), readiness.pings());
    }

    #[tokio::test(start_paused = true)]
    async fn a_ping_that_never_returns_makes_the_node_not_ready() {
        let origin = Arc::new(Pinged::default());
        let readiness = Readiness::start(origin.clone(), Duration::from_millis(200), &Shutdown::new());
        assert!(matches!(readiness.check().await, Ready::Yes { .. }));
        origin.hangs.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(500)).await;
        settle().await;
        let Ready::No(cause) = readiness.check().await else {
            panic!("not ready while pings hang")
        };
        assert!(cause.contains("within 200 ms"), "{cause}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_sample_that_is_too_old_does_not_count() {
        let (tx, samples) = watch::channel(Some(Sample {
            at: Instant::now(),
            outcome: Ok(Position(7)),
        }));
        let readiness = Readiness {
            samples,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            pings: Arc::default(),
        };
        assert!(matches!(
            readiness.check().await,
            Ready::Yes {
                position: Position(7),
                ..
            }
        ));
        tokio::time::sleep(Duration::from_millis(3001)).await;
        assert!(
            matches!(readiness.check().await, Ready::No(_)),
            "no sample for 3 s"
        );
        drop(tx);
    }
}
