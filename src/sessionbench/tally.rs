//! What `sessionbench` counts, per connection and then merged.

use std::time::Duration;

use serde_json::json;

use super::Policy;

#[derive(Default)]
pub struct Tally {
    reads: u64,
    writes: u64,
    hits: u64,
    stale_own: u64,
    regressions: u64,
    /// Answers outside 2xx, per kind.
    read_errors: u64,
    write_errors: u64,
    /// No answer (connect, reset, timeout).
    transport_errors: u64,
    /// Latencies in µs, of successful reads and of successful writes.
    read_us: Vec<u32>,
    write_us: Vec<u32>,
}

impl Tally {
    pub fn with_capacity(n: usize) -> Self {
        Tally {
            read_us: Vec::with_capacity(n),
            ..Default::default()
        }
    }

    pub fn read(&mut self, latency: Duration, hit: bool, stale_own: bool, regression: bool, max: usize) {
        self.reads += 1;
        self.hits += u64::from(hit);
        self.stale_own += u64::from(stale_own);
        self.regressions += u64::from(regression);
        if self.read_us.len() < max {
            self.read_us.push(micros(latency));
        }
    }

    pub fn write(&mut self, latency: Duration, max: usize) {
        self.writes += 1;
        if self.write_us.len() < max {
            self.write_us.push(micros(latency));
        }
    }

    pub fn status_error(&mut self, write: bool) {
        if write {
            self.write_errors += 1;
        } else {
            self.read_errors += 1;
        }
    }

    pub fn transport_error(&mut self) {
        self.transport_errors += 1;
    }

    pub fn merge(&mut self, other: Tally) {
        self.reads += other.reads;
        self.writes += other.writes;
        self.hits += other.hits;
        self.stale_own += other.stale_own;
        self.regressions += other.regressions;
        self.read_errors += other.read_errors;
        self.write_errors += other.write_errors;
        self.transport_errors += other.transport_errors;
        self.read_us.extend(other.read_us);
        self.write_us.extend(other.write_us);
    }

    /// The result line.
    pub fn summary(mut self, label: &str, policy: Policy, secs: f64) -> String {
        let ok = self.reads + self.writes;
        let errors = self.read_errors + self.write_errors + self.transport_errors;
        let mut all: Vec<u32> = self.read_us.iter().chain(&self.write_us).copied().collect();
        all.sort_unstable();
        self.read_us.sort_unstable();
        self.write_us.sort_unstable();
        json!({
            "label": label,
            "policy": format!("{policy:?}").to_lowercase(),
            "secs": secs,
            "requests": ok + errors,
            "ok": ok,
            "rps": ok as f64 / secs,
            "reads": self.reads,
            "writes": self.writes,
            "hits": self.hits,
            "hit_ratio": if self.reads == 0 { 0.0 } else { self.hits as f64 / self.reads as f64 },
            "stale_own_reads": self.stale_own,
            "regressions": self.regressions,
            "read_errors": self.read_errors,
            "write_errors": self.write_errors,
            "transport_errors": self.transport_errors,
            "p50_us": percentile(&all, 0.50),
            "p99_us": percentile(&all, 0.99),
            "read_p50_us": percentile(&self.read_us, 0.50),
            "read_p99_us": percentile(&self.read_us, 0.99),
            "write_p50_us": percentile(&self.write_us, 0.50),
            "write_p99_us": percentile(&self.write_us, 0.99),
        })
        .to_string()
    }
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u128::from(u32::MAX)) as u32
}

/// The nearest-rank percentile of sorted samples (0 when there are none).
fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&samples, 0.50), 50);
        assert_eq!(percentile(&samples, 0.99), 99);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
