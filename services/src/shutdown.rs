//! One shutdown signal for a node's background tasks, as mini-redis has its
//! `Shutdown` broadcast.
//!
//! Every task the node runs beside its requests — the change feed, the replica
//! sampler, the readiness sampler, the idempotency sweeper, the cluster's health
//! checks — is started with [`Shutdown::spawn`], which runs it in a `select!` against
//! the signal: once fired, each task ends at its next await point, dropping what it
//! holds (the change feed's connection closes). [`Shutdown::stop`] fires the signal
//! and waits for the tasks, bounded; a task still running then is named in the log and
//! aborted.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The signal and the tasks that select on it. Cheap to clone; every clone is the
/// same signal.
#[derive(Clone, Default)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    signal: CancellationToken,
    tasks: Mutex<Vec<Task>>,
}

struct Task {
    name: &'static str,
    handle: JoinHandle<()>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` on the current Tokio runtime until it ends or the signal fires,
    /// whichever comes first. Panics outside a runtime.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn_on(&Handle::current(), name, task);
    }

    /// Like [`Shutdown::spawn`], on `runtime` (an origin's own runtime).
    pub fn spawn_on<F>(&self, runtime: &Handle, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let signal = self.inner.signal.clone();
        let handle = runtime.spawn(async move {
            tokio::select! {
                // A task started after the signal never runs.
                biased;
                () = signal.cancelled() => tracing::debug!(task = name, "background task stopped"),
                () = task => {}
            }
        });
        let mut tasks = self.inner.tasks.lock();
        tasks.retain(|t| !t.handle.is_finished());
        tasks.push(Task { name, handle });
    }

    /// Whether the signal has fired.
    pub fn is_fired(&self) -> bool {
        self.inner.signal.is_cancelled()
    }

    /// Completes once the signal fires.
    pub async fn fired(&self) {
        self.inner.signal.cancelled().await;
    }

    /// The names of the tasks still running.
    pub fn running(&self) -> Vec<&'static str> {
        self.inner
            .tasks
            .lock()
            .iter()
            .filter(|t| !t.handle.is_finished())
            .map(|t| t.name)
            .collect()
    }

    /// Fires the signal and waits, at most `within`, for every task to end. Returns
    /// (and logs) the names of those that did not; they are aborted. Idempotent.
    pub async fn stop(&self, within: Duration) -> Vec<&'static str> {
        self.inner.signal.cancel();
        let mut tasks = std::mem::take(&mut *self.inner.tasks.lock());
        let deadline = tokio::time::Instant::now() + within;
        let mut stuck = Vec::new();
        for task in &mut tasks {
            if tokio::time::timeout_at(deadline, &mut task.handle).await.is_err() {
                task.handle.abort();
                stuck.push(task.name);
            }
        }
        // Kept, so that `running` still tells whether an aborted task has ended.
        self.inner.tasks.lock().extend(tasks);
        if !stuck.is_empty() {
            tracing::warn!(tasks = ?stuck, ?within, "background tasks did not end at shutdown; aborted");
        }
        stuck
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn stop_ends_every_task_and_later_ones_never_run() {
        let shutdown = Shutdown::new();
        let ticks = Arc::new(AtomicU64::new(0));
        for name in ["a", "b"] {
            let ticks = ticks.clone();
            shutdown.spawn(name, async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    ticks.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(55)).await;
        assert_eq!(shutdown.running(), ["a", "b"]);
        assert!(ticks.load(Ordering::SeqCst) >= 8);

        assert!(shutdown.stop(Duration::from_secs(2)).await.is_empty());
        assert!(shutdown.is_fired());
        let after = ticks.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), after, "no task ticks after stop");

        let late = Arc::new(AtomicU64::new(0));
        let ran = late.clone();
        shutdown.spawn("late", async move {
            ran.fetch_add(1, Ordering::SeqCst);
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(late.load(Ordering::SeqCst), 0, "started after the signal");
        assert!(shutdown.running().is_empty());
    }

    #[test]
    fn a_task_that_never_yields_is_named() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let shutdown = Shutdown::new();
        let (started, is_started) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        shutdown.spawn_on(runtime.handle(), "stuck", async move {
            // Blocks its worker thread: the signal cannot reach it until released.
            started.send(()).unwrap();
            let _ = released.recv();
        });
        is_started.recv().unwrap();
        let stuck = runtime.block_on(shutdown.stop(Duration::from_millis(50)));
        assert_eq!(stuck, ["stuck"]);
        release.send(()).unwrap();
    }
}
