//! Latency histograms: log-linear buckets in atomics, from which quantiles are read
//! without keeping samples.

use std::sync::atomic::{AtomicU64, Ordering};

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
pub(super) struct LogHistogram {
    buckets: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
}

impl LogHistogram {
    pub(super) fn new() -> Self {
        Self {
            buckets: (0..LOG_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    #[inline]
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

    #[inline]
    pub(super) fn record(&self, micros: u64) {
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
    pub(super) fn add(&mut self, histogram: &LogHistogram) {
        self.buckets.resize(LOG_BUCKETS, 0);
        for (total, bucket) in self.buckets.iter_mut().zip(histogram.buckets.iter()) {
            *total += bucket.load(Ordering::Relaxed);
        }
        self.sum_micros += histogram.sum_micros.load(Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The counts recorded after `earlier` was read (of the same histograms).
    pub fn since(&self, earlier: &LatencyCounts) -> LatencyCounts {
        let mut buckets = self.buckets.clone();
        for (bucket, before) in buckets.iter_mut().zip(&earlier.buckets) {
            *bucket = bucket.saturating_sub(*before);
        }
        LatencyCounts {
            buckets,
            sum_micros: self.sum_micros.saturating_sub(earlier.sum_micros),
        }
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

#[cfg(test)]
mod tests {
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

        let later = counts((1..=100).map(|v| v * 10).chain([5000; 10]));
        let interval = later.since(&c);
        assert_eq!((interval.count(), interval.sum_micros()), (10, 50_000));
        assert!((5000..=5000 * 9 / 8).contains(&interval.quantile(0.5).unwrap()));
        assert_eq!(c.since(&LatencyCounts::default()).count(), 100);
    }
}
