//! The Prometheus (OpenMetrics) rendering of a node's counts: a [`Scrape`] is a
//! `prometheus_client` [`Collector`] over the atomics, registered in a registry of its
//! own at scrape time, so the request path never touches a registry or a label map.
//! Every name has the `edgecache_` prefix; counters end in `_total`.

use std::fmt;
use std::sync::Arc;

use edgecache_flags::Strategy;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::{HttpCounts, LatencyCounts, Metrics, CHECK_OUTCOMES, HTTP_BOUNDS, STATUSES};
use crate::origin::FeedStatus;
use crate::{CacheStatus, Tier};

/// What a scrape reports besides the counters: the node's gauges, read when the
/// scrape starts.
#[derive(Debug, Clone, Copy)]
pub struct Gauges {
    /// The origin's change feed, if it follows one.
    pub change_feed: Option<FeedStatus>,
    /// Session actors live on the node.
    pub live_sessions: usize,
    /// Items in the node's cache.
    pub cache_entries: usize,
    /// Their weight, in bytes.
    pub cache_bytes: u64,
}

/// One scrape of a node: its counters and its gauges, rendered by [`Scrape::render`].
#[derive(Debug)]
pub struct Scrape {
    pub metrics: Arc<Metrics>,
    pub gauges: Gauges,
}

impl Scrape {
    /// The scrape in the OpenMetrics text format.
    pub fn render(self) -> Result<String, fmt::Error> {
        let mut registry = Registry::with_prefix("edgecache");
        registry.register_collector(Box::new(self));
        let mut body = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut body, &registry)?;
        Ok(body)
    }
}

/// A histogram read from atomics: its buckets are not cumulative.
struct Histogram {
    sum: f64,
    count: u64,
    buckets: Vec<(f64, u64)>,
}

impl Histogram {
    fn http(series: &HttpCounts) -> Self {
        let counts = series.buckets();
        let bounds = HTTP_BOUNDS.iter().copied().chain([f64::INFINITY]);
        Self {
            sum: series.sum_seconds(),
            count: counts.iter().sum(),
            buckets: bounds.zip(counts).collect(),
        }
    }

    /// A read-latency histogram at power-of-two bounds from 32 µs to 4.2 s (bucket
    /// edges of the log-linear histogram, so the counts are exact; a bound counts the
    /// values below it).
    fn read_latency(latency: &LatencyCounts) -> Self {
        let bounds_us: Vec<u64> = (5..=22).map(|k| 1u64 << k).collect();
        let counts = latency.coarse(&bounds_us);
        let bounds = bounds_us.iter().map(|b| *b as f64 / 1e6).chain([f64::INFINITY]);
        Self {
            sum: latency.sum_micros() as f64 / 1e6,
            count: counts.iter().sum(),
            buckets: bounds.zip(counts).collect(),
        }
    }
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// One metric family: a descriptor, then one sample per label set.
fn family<L, M>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: impl IntoIterator<Item = (L, M)>,
) -> Result<(), fmt::Error>
where
    L: EncodeLabelSet,
    M: EncodeMetric,
{
    let mut series = series.into_iter().peekable();
    let Some((_, first)) = series.peek() else {
        return Ok(());
    };
    let mut metric = encoder.encode_descriptor(name, help, unit, first.metric_type())?;
    for (labels, value) in series {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One metric without labels.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: impl EncodeMetric,
) -> Result<(), fmt::Error> {
    value.encode(encoder.encode_descriptor(name, help, unit, value.metric_type())?)
}

fn counter(value: u64) -> ConstCounter<u64> {
    ConstCounter::new(value)
}

impl Collector for Scrape {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), fmt::Error> {
        let m = &*self.metrics;
        let arms = m.experiments.arms();
        let arms_of = |strategy| {
            arms.iter()
                .filter(move |(s, _)| *s == strategy)
                .map(|(_, arm)| arm)
        };

        family(
            &mut e,
            "http_requests",
            "HTTP requests answered, by route template, method and status class.",
            None,
            m.http
                .series()
                .map(|(labels, s)| (labels3(labels), counter(s.count()))),
        )?;
        family(
            &mut e,
            "http_request_duration",
            "HTTP request latency on this node, by route template, method and status class.",
            Some(&Unit::Seconds),
            m.http
                .series()
                .map(|(labels, s)| (labels3(labels), Histogram::http(&s))),
        )?;

        family(
            &mut e,
            "reads",
            "Item reads served, by the tier their non-strict fields came from and their cache status.",
            None,
            Tier::ALL.into_iter().flat_map(|tier| {
                STATUSES.into_iter().map(move |status| {
                    (
                        [("tier", tier.as_str()), ("cache_status", status.as_str())],
                        counter(m.reads_of(tier, status)),
                    )
                })
            }),
        )?;
        let (hits, misses) = STATUSES.into_iter().fold((0, 0), |(h, n), status| {
            let reads = m.reads_with(status);
            if status.is_hit() {
                (h + reads, n)
            } else {
                (h, n + reads)
            }
        });
        single(
            &mut e,
            "cache_hits",
            "Reads served from what the node held (cache, stale copy or the session's own write), without an origin read for their non-strict fields.",
            None,
            counter(hits),
        )?;
        single(
            &mut e,
            "cache_misses",
            "Reads whose non-strict fields were read from the origin (absent, expired, or older than the session's watermarks).",
            None,
            counter(misses),
        )?;
        family(
            &mut e,
            "stale_serves",
            "Reads served from a cache entry past its TTL: within stale-while-revalidate, or within stale-if-error because the origin failed.",
            None,
            [CacheStatus::Stale, CacheStatus::StaleIfError]
                .map(|status| ([("cache_status", status.as_str())], counter(m.reads_with(status)))),
        )?;
        single(
            &mut e,
            "strict_reads",
            "Reads whose strict fields were read from the primary.",
            None,
            counter(m.strict_reads.get()),
        )?;
        single(
            &mut e,
            "session_handover_reads",
            "Reads of a session copy rebuilt from a token on a node with peers, checked against the primary while the node it came from may still serve it (session.handover_window).",
            None,
            counter(m.handover_reads.get()),
        )?;
        family(
            &mut e,
            "stale_own_reads",
            "Reads that returned an item older than the session's own write of it, by the session's read-your-writes arm (0 in an arm with the strategy on).",
            None,
            arms_of(Strategy::ReadYourWrites).map(|arm| ([("arm", arm.label)], counter(arm.stale_own_reads))),
        )?;
        family(
            &mut e,
            "regressions_served",
            "Reads that returned an older version than the session had already read, by the session's monotonic-reads arm (0 in an arm with the strategy on).",
            None,
            arms_of(Strategy::MonotonicReads).map(|arm| ([("arm", arm.label)], counter(arm.regressions_served))),
        )?;
        single(
            &mut e,
            "regressions_prevented",
            "Cached items refused to a session because it had already read a newer version (monotonic reads).",
            None,
            counter(m.regressions_prevented.get()),
        )?;
        single(
            &mut e,
            "replica_waits",
            "Origin reads that waited for a replica to replay the session's position.",
            None,
            counter(m.replica_waits.get()),
        )?;
        single(
            &mut e,
            "replica_wait",
            "Total time origin reads waited for a replica.",
            Some(&Unit::Seconds),
            ConstCounter::new(m.replica_wait_micros.get() as f64 / 1e6),
        )?;
        single(
            &mut e,
            "primary_fallbacks",
            "Origin reads that went to the primary because no replica reached the session's position within the wait budget.",
            None,
            counter(m.primary_fallbacks.get()),
        )?;
        single(
            &mut e,
            "origin_errors",
            "Origin reads that failed.",
            None,
            counter(m.origin_errors.get()),
        )?;
        single(
            &mut e,
            "invalidations",
            "Cache entries replaced by a change-feed marker (written through another node).",
            None,
            counter(m.invalidations.get()),
        )?;
        single(
            &mut e,
            "not_modified",
            "Conditional GETs answered 304 Not Modified: If-None-Match named the version the session would be served.",
            None,
            counter(m.not_modified.get()),
        )?;
        single(
            &mut e,
            "negative_hits",
            "404s served from a cached absence, without an origin read (negative caching).",
            None,
            counter(m.negative_hits.get()),
        )?;
        single(
            &mut e,
            "negative_misses",
            "404s read from the origin; the absence is then cached under the collection's class.",
            None,
            counter(m.negative_misses.get()),
        )?;
        single(
            &mut e,
            "purges",
            "Purges applied on this node (from the admin API, a peer or the change feed; each once).",
            None,
            counter(m.purges.get()),
        )?;
        family(
            &mut e,
            "purged_entries",
            "Cache entries purged: dropped (hard purge) or marked stale (soft purge).",
            None,
            [
                ([("action", "dropped")], counter(m.purge_dropped.get())),
                ([("action", "marked")], counter(m.purge_marked.get())),
            ],
        )?;
        single(
            &mut e,
            "feed_vouched_hits",
            "Cache hits served to a session whose floors passed the entry's position, because the change feed vouches for it past them.",
            None,
            counter(m.feed_vouched.get()),
        )?;
        single(
            &mut e,
            "refreshes",
            "Background refreshes started (stale-while-revalidate).",
            None,
            counter(m.refreshes.get()),
        )?;
        single(
            &mut e,
            "writes",
            "Committed writes.",
            None,
            counter(m.writes.get()),
        )?;
        family(
            &mut e,
            "write_answers",
            "Writes not answered by a fresh commit: replayed from their Idempotency-Key, not started (not applied), outcome unknown.",
            None,
            [
                ([("answer", "replayed")], counter(m.writes_replayed.get())),
                ([("answer", "not_started")], counter(m.writes_not_started.get())),
                ([("answer", "unknown")], counter(m.writes_unknown.get())),
            ],
        )?;
        family(
            &mut e,
            "sessions_opened",
            "Sessions that were not live on this node: new (no token) or rebuilt from their token; \
             detached: a request that named a live session without a token of its lineage, \
             served by a session of its own.",
            None,
            [
                ([("start", "new")], counter(m.sessions_new.get())),
                ([("start", "rebuilt")], counter(m.sessions_rebuilt.get())),
                ([("start", "detached")], counter(m.sessions_detached.get())),
            ],
        )?;
        single(
            &mut e,
            "live_sessions",
            "Session actors live on this node.",
            None,
            ConstGauge::new(self.gauges.live_sessions as i64),
        )?;
        single(
            &mut e,
            "cache_entries",
            "Items in the node's cache.",
            None,
            ConstGauge::new(self.gauges.cache_entries as i64),
        )?;
        single(
            &mut e,
            "cache_size",
            "Weight of the items in the node's cache.",
            Some(&Unit::Bytes),
            ConstGauge::new(self.gauges.cache_bytes as i64),
        )?;
        if let Some(feed) = self.gauges.change_feed {
            single(
                &mut e,
                "change_feed_following",
                "1 while the change feed is connected and following.",
                None,
                ConstGauge::new(i64::from(feed.following)),
            )?;
            if let Some(applied) = feed.applied {
                single(
                    &mut e,
                    "change_feed_applied_lsn",
                    "The primary's WAL position up to which every change has been applied to the cache (logical feed).",
                    None,
                    ConstGauge::new(applied.0.min(i64::MAX as u64) as i64),
                )?;
            }
        }

        family(
            &mut e,
            "experiment_sessions",
            "Distinct sessions seen in each arm of each strategy flag (a HyperLogLog estimate, within about 2%).",
            None,
            arms.iter().map(|(s, arm)| (labels_arm(*s, arm.label), ConstGauge::new(arm.sessions as i64))),
        )?;
        family(
            &mut e,
            "experiment_reads",
            "Item reads served, per strategy flag and arm (each read counts once under every flag).",
            None,
            arms.iter()
                .map(|(s, arm)| (labels_arm(*s, arm.label), counter(arm.reads))),
        )?;
        family(
            &mut e,
            "experiment_cache_hits",
            "Reads served from what the node held, per strategy flag and arm.",
            None,
            arms.iter()
                .map(|(s, arm)| (labels_arm(*s, arm.label), counter(arm.hits))),
        )?;
        family(
            &mut e,
            "experiment_stale_own_reads",
            "Reads older than the session's own write, per strategy flag and arm.",
            None,
            arms.iter()
                .map(|(s, arm)| (labels_arm(*s, arm.label), counter(arm.stale_own_reads))),
        )?;
        family(
            &mut e,
            "experiment_regressions_served",
            "Reads older than a version the session had read, per strategy flag and arm.",
            None,
            arms.iter()
                .map(|(s, arm)| (labels_arm(*s, arm.label), counter(arm.regressions_served))),
        )?;
        family(
            &mut e,
            "experiment_read_duration",
            "Read latency on the node, per strategy flag and arm.",
            Some(&Unit::Seconds),
            arms.iter()
                .map(|(s, arm)| (labels_arm(*s, arm.label), Histogram::read_latency(&arm.latency))),
        )?;
        family(
            &mut e,
            "consistency_checks",
            "Sampled reads from the cache or a replica, read again from the primary in the background and judged against the session's needs when served, per strategy flag, arm and outcome (ok, stale_own, regression, over_bound; skipped: not judged).",
            None,
            arms.iter().flat_map(|(s, arm)| {
                CHECK_OUTCOMES.into_iter().map(move |outcome| {
                    (
                        [
                            ("flag", s.as_str()),
                            ("arm", arm.label),
                            ("outcome", outcome.as_str()),
                        ],
                        counter(arm.checks_with(outcome)),
                    )
                })
            }),
        )?;
        Ok(())
    }
}

fn labels3([route, method, status]: [&'static str; 3]) -> [(&'static str, &'static str); 3] {
    [("route", route), ("method", method), ("status", status)]
}

fn labels_arm(strategy: Strategy, arm: &str) -> [(&'static str, &str); 2] {
    [("flag", strategy.as_str()), ("arm", arm)]
}
