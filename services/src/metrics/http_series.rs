//! HTTP series: requests and their latency per route, method and status class, one
//! histogram per combination in a fixed table per stripe.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::stripe::{stripe, STRIPES};
pub use crate::http::route::ROUTES;

/// The route label of a request that matched no route.
pub const UNMATCHED: &str = "unmatched";

/// The `method` label values; methods the API does not serve count as `other`.
pub const METHODS: [&str; 7] = ["GET", "PUT", "PATCH", "DELETE", "POST", "HEAD", "other"];

/// The `status` label values.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Upper bounds of the HTTP latency buckets, in seconds (and +Inf).
pub const HTTP_BOUNDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

const HTTP_BOUNDS_NANOS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The latency histogram of one (route, method, status class) in one stripe.
struct HttpSeries {
    buckets: [AtomicU64; HTTP_BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl HttpSeries {
    fn observe(&self, took: Duration) {
        let nanos = took.as_nanos().min(u128::from(u64::MAX)) as u64;
        let i = HTTP_BOUNDS_NANOS.partition_point(|b| *b < nanos);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// The latency histogram of one (route, method, status class), read at one time (all
/// stripes added); its count is the number of requests.
#[derive(Debug, Clone, Default)]
pub struct HttpCounts {
    buckets: [u64; HTTP_BOUNDS.len() + 1],
    sum_nanos: u64,
}

impl HttpCounts {
    fn add(&mut self, series: &HttpSeries) {
        for (total, bucket) in self.buckets.iter_mut().zip(&series.buckets) {
            *total += bucket.load(Ordering::Relaxed);
        }
        self.sum_nanos += series.sum_nanos.load(Ordering::Relaxed);
    }

    /// Requests counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Their total duration, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanos as f64 / 1e9
    }

    /// Counts per bucket of [`HTTP_BOUNDS`] then +Inf (not cumulative).
    pub fn buckets(&self) -> [u64; HTTP_BOUNDS.len() + 1] {
        self.buckets
    }
}

const HTTP_SERIES: usize = (ROUTES.len() + 1) * METHODS.len() * STATUS_CLASSES.len();

/// Requests and their latency by route, method and status class: one histogram per
/// combination, in a fixed table per stripe ([`STRIPES`] tables, one after the other).
pub struct HttpMetrics {
    series: Box<[HttpSeries]>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            series: (0..HTTP_SERIES * STRIPES)
                .map(|_| HttpSeries {
                    buckets: Default::default(),
                    sum_nanos: AtomicU64::new(0),
                })
                .collect(),
        }
    }
}

impl std::fmt::Debug for HttpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let requests: u64 = self.series().map(|(_, counts)| counts.count()).sum();
        f.debug_struct("HttpMetrics")
            .field("requests", &requests)
            .finish()
    }
}

impl HttpMetrics {
    /// Counts one request: `route` is the matched resource's name (its template),
    /// `None` when no route matched.
    pub fn record(&self, route: Option<&str>, method: &actix_web::http::Method, status: u16, took: Duration) {
        use actix_web::http::Method;
        let route = route
            // `http::v1` hands out the constants themselves: compare addresses first.
            .and_then(|name| {
                ROUTES
                    .iter()
                    .position(|r| std::ptr::eq(r.as_ptr(), name.as_ptr()) || *r == name)
            })
            .unwrap_or(ROUTES.len());
        let method = match *method {
            Method::GET => 0,
            Method::PUT => 1,
            Method::PATCH => 2,
            Method::DELETE => 3,
            Method::POST => 4,
            Method::HEAD => 5,
            _ => 6,
        };
        let class = usize::from((status / 100).clamp(1, 5) - 1);
        let index = (route * METHODS.len() + method) * STATUS_CLASSES.len() + class;
        self.series[stripe() * HTTP_SERIES + index].observe(took);
    }

    /// Every series with at least one request: its route, method and status class
    /// labels, and its counts.
    pub fn series(&self) -> impl Iterator<Item = ([&'static str; 3], HttpCounts)> + '_ {
        (0..HTTP_SERIES)
            .map(|i| {
                let mut counts = HttpCounts::default();
                for stripe in 0..STRIPES {
                    counts.add(&self.series[stripe * HTTP_SERIES + i]);
                }
                (i, counts)
            })
            .filter(|(_, counts)| counts.count() > 0)
            .map(|(i, counts)| {
                let class = i % STATUS_CLASSES.len();
                let method = (i / STATUS_CLASSES.len()) % METHODS.len();
                let route = i / (STATUS_CLASSES.len() * METHODS.len());
                let route = ROUTES.get(route).copied().unwrap_or(UNMATCHED);
                ([route, METHODS[method], STATUS_CLASSES[class]], counts)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_series_are_found_by_route_method_and_class() {
        let http = HttpMetrics::default();
        let get = actix_web::http::Method::GET;
        http.record(Some(ROUTES[0]), &get, 200, Duration::from_micros(300));
        http.record(Some(ROUTES[0]), &get, 204, Duration::from_millis(20));
        http.record(None, &actix_web::http::Method::OPTIONS, 404, Duration::ZERO);
        let series: Vec<_> = http.series().map(|(labels, s)| (labels, s.count())).collect();
        assert_eq!(
            series,
            vec![
                (["/v1/{collection}/{id}", "GET", "2xx"], 2),
                (["unmatched", "other", "4xx"], 1)
            ]
        );
        let (_, first) = http.series().next().unwrap();
        assert_eq!(first.buckets()[2], 1, "300 µs is in the 500 µs bucket");
        assert_eq!(first.buckets()[7], 1, "20 ms is in the 25 ms bucket");
    }
}
