//! `--stop-primary-after SECS --stop-primary-for SECS`: adversity from the origin's
//! side. Loadgen stops the nodes' PostgreSQL primary (`--pg-data`, its data
//! directory) with `pg_ctl stop -m fast` while the sessions run, and starts it again
//! after the given time — as the `postgres` user through `runuser` when loadgen runs as
//! root, since PostgreSQL refuses to run as root. Meanwhile the nodes answer what they
//! can from their caches and replicas, within each field's class, and 503 the rest.
//!
//! The outage is recorded in the history (an `outage` line, see [`super::history`])
//! on the operations' clock, so that `edgecache check` can tell which failures it
//! excuses: a request that failed while the primary was down is expected, but every
//! read that was served, during the outage or not, is held to every guarantee.
//!
//! Bounded: each `pg_ctl` waits at most 30 s; the sessions ending before the outage
//! cancel it, and ending during it start the primary at once — loadgen never leaves
//! it stopped (unless it is killed).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::history::OutageRecord;

/// When and how to stop the primary.
#[derive(Debug, Clone)]
pub struct OutagePlan {
    /// The `pg_ctl` to run.
    pub pg_ctl: PathBuf,
    /// The primary's data directory.
    pub data: PathBuf,
    /// From the start of the sessions to the stop.
    pub after: Duration,
    /// How long the primary stays stopped (from the end of the stop to the start).
    pub length: Duration,
}

/// The outage task: waiting, the primary down, or done.
pub struct Outage {
    stop: watch::Sender<bool>,
    task: JoinHandle<Option<OutageRecord>>,
}

impl Outage {
    /// Schedules the outage; `epoch` is the history's clock.
    pub fn start(plan: OutagePlan, epoch: Instant) -> Self {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(plan, epoch, stopped));
        Outage { stop, task }
    }

    /// Cancels an outage that has not begun, ends one under way (the primary starts
    /// at once), and returns its record — `None` when it never began.
    pub async fn stop(self) -> Option<OutageRecord> {
        let _ = self.stop.send(true);
        self.task.await.unwrap_or_else(|e| {
            Some(OutageRecord {
                error: Some(format!("the outage task failed: {e}")),
                ..OutageRecord::default()
            })
        })
    }
}

async fn run(plan: OutagePlan, epoch: Instant, mut stopped: watch::Receiver<bool>) -> Option<OutageRecord> {
    let now = || epoch.elapsed().as_nanos() as u64;
    tokio::select! {
        _ = tokio::time::sleep(plan.after) => {}
        _ = stopped.changed() => return None,
    }
    let mut record = OutageRecord {
        stop_ns: now(),
        ..OutageRecord::default()
    };
    if let Err(e) = pg_ctl(&plan, "stop").await {
        record.error = Some(e);
    }
    record.stopped_ns = now();
    // However the stop went, the primary is started again.
    tokio::select! {
        _ = tokio::time::sleep(plan.length) => {}
        _ = stopped.changed() => {}
    }
    record.start_ns = now();
    if let Err(e) = pg_ctl(&plan, "start").await {
        record.error.get_or_insert(e);
    }
    record.started_ns = now();
    Some(record)
}

/// `pg_ctl -D DATA -w -t 30 -m fast -l DATA/log ACTION`, as `postgres` when loadgen
/// runs as root; on a blocking thread (pg_ctl waits up to 30 s).
async fn pg_ctl(plan: &OutagePlan, action: &'static str) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    use std::process::{Command, Stdio};
    let as_root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let mut command = if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&plan.pg_ctl);
        c
    } else {
        Command::new(&plan.pg_ctl)
    };
    command
        .arg("-D")
        .arg(&plan.data)
        .args(["-w", "-t", "30", "-m", "fast", "-l"])
        .arg(plan.data.join("log"))
        .arg(action)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .map_err(|e| format!("pg_ctl {action}: {e}"))?
        .map_err(|e| format!("pg_ctl {action}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "pg_ctl {action}: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}
