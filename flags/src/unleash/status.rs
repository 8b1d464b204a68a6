use std::fmt;
use std::time::Instant;

use parking_lot::Mutex;
use serde::Serialize;

/// Where the flags a node evaluates come from right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnleashState {
    /// Fetched from Unleash at least once: the last fetched flags are in force (also
    /// during an outage that followed; see [`UnleashStatus::last_error`]).
    Ready,
    /// Loaded from the bootstrap file; no fetch has succeeded yet.
    Bootstrapped,
    /// Neither fetched nor bootstrapped: the configured defaults (`flags.defaults`).
    Defaults,
}

/// A snapshot of the Unleash client's health, for `/readyz` and logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnleashStatus {
    pub state: UnleashState,
    /// Why the last fetch failed, when it did (cleared by the next success). A
    /// rejected token reads `HTTP 401 Unauthorized from …: …`.
    pub last_error: Option<String>,
    /// Fetches that failed in a row.
    pub consecutive_failures: u32,
    /// How long ago flags were last fetched, in milliseconds; none before the first.
    pub last_fetch_ms_ago: Option<u64>,
    /// Whether the registration with Unleash succeeded (retried until it does).
    pub registered: bool,
    /// Metrics reports Unleash accepted (one per fetch that follows evaluations).
    pub metrics_sent: u64,
}

impl fmt::Display for UnleashStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.state {
            UnleashState::Ready => f.write_str("unleash: ready")?,
            UnleashState::Bootstrapped => f.write_str("unleash: bootstrap file's flags (no fetch yet)")?,
            UnleashState::Defaults => f.write_str("unleash: configured defaults (no fetch yet)")?,
        }
        if let Some(ms) = self.last_fetch_ms_ago {
            write!(f, ", last fetch {ms} ms ago")?;
        }
        if let Some(error) = &self.last_error {
            write!(
                f,
                ", {} failed fetch(es) in a row: {error}",
                self.consecutive_failures
            )?;
        }
        Ok(())
    }
}

/// The status shared between the poll loop (writer, once per interval) and readers.
#[derive(Debug)]
pub(crate) struct StatusCell {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: UnleashState,
    last_error: Option<String>,
    consecutive_failures: u32,
    last_fetch: Option<Instant>,
    registered: bool,
    metrics_sent: u64,
}

impl StatusCell {
    pub(crate) fn new(state: UnleashState) -> Self {
        Self {
            inner: Mutex::new(Inner {
                state,
                last_error: None,
                consecutive_failures: 0,
                last_fetch: None,
                registered: false,
                metrics_sent: 0,
            }),
        }
    }

    pub(crate) fn get(&self) -> UnleashStatus {
        let inner = self.inner.lock();
        UnleashStatus {
            state: inner.state,
            last_error: inner.last_error.clone(),
            consecutive_failures: inner.consecutive_failures,
            last_fetch_ms_ago: inner
                .last_fetch
                .map(|at| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX)),
            registered: inner.registered,
            metrics_sent: inner.metrics_sent,
        }
    }

    pub(crate) fn set_registered(&self) {
        self.inner.lock().registered = true;
    }

    pub(crate) fn metrics_sent(&self) {
        self.inner.lock().metrics_sent += 1;
    }

    /// A fetch succeeded. Returns the failures it ends and the error before it, if any.
    pub(crate) fn fetched(&self) -> Option<(u32, String)> {
        let mut inner = self.inner.lock();
        inner.state = UnleashState::Ready;
        inner.last_fetch = Some(Instant::now());
        let failures = std::mem::take(&mut inner.consecutive_failures);
        inner.last_error.take().map(|error| (failures, error))
    }

    /// A fetch failed. Returns whether the error differs from the previous one (worth
    /// logging at warn), and the failures in a row.
    pub(crate) fn failed(&self, error: String) -> (bool, u32) {
        let mut inner = self.inner.lock();
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        let new = inner.last_error.as_deref() != Some(error.as_str());
        inner.last_error = Some(error);
        (new, inner.consecutive_failures)
    }
}
