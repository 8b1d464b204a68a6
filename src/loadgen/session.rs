//! One session of the workload: its operations, up to `--parallel` of them at once,
//! each recorded — a write with its own `Idempotency-Key` and its retries.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::client::{Client, SessionState};
use super::history::{Line, OpRecord, Outcome};
use super::workload::{Request, Rng, Workload};
use super::Pick;

/// What every session task shares.
pub struct Shared {
    pub client: Client,
    pub workload: Workload,
    pub targets: Vec<String>,
    pub pick: Pick,
    pub seed: u64,
    pub ops: usize,
    /// Operations of one session in flight at once.
    pub parallel: usize,
    pub retry: Retry,
    pub deadline: Option<Instant>,
    pub in_flight: Semaphore,
    pub lines: mpsc::Sender<Line>,
    /// Writes whose every attempt left the outcome open.
    pub unsettled: AtomicU64,
}

/// How a write of unknown outcome is sent again.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Retries after the first attempt.
    pub max: u32,
    /// The pause before the first retry; doubled before each next one.
    pub delay: Duration,
}

/// What the attempts of one write came to.
pub struct Attempts {
    /// The last attempt's record.
    pub last: OpRecord,
    /// Some attempt left the outcome open, and none was acknowledged.
    pub unsettled: bool,
}

/// Sends a write with `Idempotency-Key: key`, and again with the same key while its
/// outcome is open (see [`OpRecord::unsettled`]) and retries remain, after a pause
/// that doubles each time; attempt `n` goes to `target(n)` and carries the token the
/// session holds when it is sent. Each attempt is handed to `record` as it ends; it
/// returns false when the history is closed, which ends the retries.
pub async fn send_keyed<'t>(
    client: &Client,
    session: &SessionState,
    request: &Request,
    key: &str,
    retry: Retry,
    mut target: impl FnMut(u32) -> &'t str,
    mut record: impl FnMut(OpRecord) -> bool,
) -> Attempts {
    let mut open = false;
    let mut delay = retry.delay;
    let mut attempt = 0;
    loop {
        let mut sent = client
            .send(target(attempt), session, request.clone(), Some(key))
            .await;
        sent.attempt = attempt;
        let ok = sent.outcome() == Outcome::Ok;
        open |= sent.unsettled();
        let more = !ok && open && attempt < retry.max;
        let kept = record(sent.clone());
        if !more || !kept {
            return Attempts {
                last: sent,
                unsettled: open && !ok,
            };
        }
        tokio::time::sleep(delay).await;
        delay = delay.saturating_mul(2);
        attempt += 1;
    }
}

/// Session `index`: its `ops` operations in order, at most `parallel` in flight — a
/// new one starts as soon as one ends. Returns whether the run was cut short (the
/// duration limit, or the history closed).
pub async fn run_session(shared: Arc<Shared>, index: usize) -> bool {
    let mut rng = Rng::new(shared.seed ^ (index as u64).wrapping_mul(0xA076_1D64_78BD_642F));
    let session = Arc::new(SessionState::new(format!("{}-s{index}", shared.workload.run)));
    let mut running = JoinSet::new();
    let mut cut_short = false;
    for seq in 0..shared.ops {
        while running.len() >= shared.parallel.max(1) {
            cut_short |= running
                .join_next()
                .await
                .is_some_and(|ended| ended.unwrap_or(true));
        }
        if cut_short || shared.deadline.is_some_and(|d| Instant::now() >= d) {
            cut_short = true;
            break;
        }
        let request = shared.workload.next(&mut rng, index, seq);
        // Attempt n of this operation goes to the target after the one of attempt 0.
        let first = match shared.pick {
            Pick::RoundRobin => index + seq,
            Pick::Random => rng.below(shared.targets.len() as u64) as usize,
        };
        running.spawn(run_op(shared.clone(), session.clone(), request, seq, first));
    }
    while let Some(ended) = running.join_next().await {
        cut_short |= ended.unwrap_or(true);
    }
    cut_short
}

/// Operation `seq` of a session, first sent to target `first`. Returns whether the
/// history was closed.
async fn run_op(
    shared: Arc<Shared>,
    session: Arc<SessionState>,
    request: Request,
    seq: usize,
    first: usize,
) -> bool {
    let targets = &shared.targets;
    let target = |attempt: u32| targets[(first + attempt as usize) % targets.len()].as_str();
    let _permit = shared
        .in_flight
        .acquire()
        .await
        .expect("the semaphore is never closed");
    if !request.op.is_write() {
        let record = shared.client.send(target(0), &session, request, None).await;
        return shared.lines.send(Line::Op(record)).is_err();
    }
    let key = format!("{}-{seq}", session.id);
    let mut closed = false;
    let attempts = send_keyed(
        &shared.client,
        &session,
        &request,
        &key,
        shared.retry,
        target,
        |record| {
            closed = shared.lines.send(Line::Op(record)).is_err();
            !closed
        },
    )
    .await;
    if attempts.unsettled {
        shared.unsettled.fetch_add(1, Ordering::Relaxed);
    }
    closed
}
