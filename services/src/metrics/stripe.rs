//! Per-thread stripes: the counters every request writes are kept in several copies,
//! one per stripe, so that two workers never write the same cache line.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How many copies of the counters every request writes a node keeps. Each thread
/// counts in its own copy ([`stripe`]), so two workers never write the same cache
/// line (measured: the shared counters cost ≈ 4 % of a cache hit's throughput on two
/// cores); readers add the copies up.
pub(super) const STRIPES: usize = 8;

/// The stripe of the calling thread: threads take stripes in turn as they first count.
#[inline]
pub(super) fn stripe() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
    }
    STRIPE.with(|s| *s)
}
