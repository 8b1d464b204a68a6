//! Freshness decisions: given a field's class and the age of what a tier holds, may it
//! be served, served while refreshing, or served only when the origin fails? Pure
//! functions of the age, so they are tested without clocks.

use std::time::Duration;

use edgecache_config::Freshness;

/// What the age of a cached value allows for a group of fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Past every window: read the origin.
    Expired,
    /// Past the TTL but within stale-while-revalidate: serve, and refresh once in the
    /// background.
    Revalidate,
    /// Within the TTL (or the staleness bound).
    Fresh,
}

/// The verdict of one class at `age`. `swr` is the stale-while-revalidate strategy.
pub fn judge(freshness: Freshness, age: Duration, swr: bool) -> Verdict {
    match freshness {
        Freshness::Strict => Verdict::Expired,
        Freshness::Bounded { max_staleness } if age <= max_staleness => Verdict::Fresh,
        Freshness::Bounded { .. } => Verdict::Expired,
        Freshness::Relaxed { ttl, .. } if age <= ttl => Verdict::Fresh,
        Freshness::Relaxed {
            ttl,
            stale_while_revalidate,
            ..
        } if swr && age <= ttl.saturating_add(stale_while_revalidate) => Verdict::Revalidate,
        Freshness::Relaxed { .. } => Verdict::Expired,
    }
}

/// Whether a value of this age may be served because the origin failed.
pub fn usable_on_error(freshness: Freshness, age: Duration) -> bool {
    freshness != Freshness::Strict && age <= on_error_for(freshness)
}

/// The oldest a value of this class is served as fresh: its bound, or its TTL.
pub fn fresh_for(freshness: Freshness) -> Duration {
    match freshness {
        Freshness::Strict => Duration::ZERO,
        Freshness::Bounded { max_staleness } => max_staleness,
        Freshness::Relaxed { ttl, .. } => ttl,
    }
}

/// The oldest a value of this class may be served when the origin fails: its bound,
/// or its TTL and stale-if-error window.
pub fn on_error_for(freshness: Freshness) -> Duration {
    match freshness {
        Freshness::Strict => Duration::ZERO,
        Freshness::Bounded { max_staleness } => max_staleness,
        Freshness::Relaxed {
            ttl, stale_if_error, ..
        } => ttl.saturating_add(stale_if_error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn relaxed() -> Freshness {
        Freshness::Relaxed {
            ttl: S(10),
            stale_while_revalidate: S(5),
            stale_if_error: S(60),
        }
    }

    #[test]
    fn relaxed_windows() {
        assert_eq!(judge(relaxed(), S(10), true), Verdict::Fresh);
        assert_eq!(judge(relaxed(), S(12), true), Verdict::Revalidate);
        assert_eq!(
            judge(relaxed(), S(12), false),
            Verdict::Expired,
            "swr switched off"
        );
        assert_eq!(judge(relaxed(), S(16), true), Verdict::Expired);
        assert!(usable_on_error(relaxed(), S(70)));
        assert!(!usable_on_error(relaxed(), S(71)));
        assert_eq!((fresh_for(relaxed()), on_error_for(relaxed())), (S(10), S(70)));
    }

    #[test]
    fn bounded_and_strict() {
        let bounded = Freshness::Bounded { max_staleness: S(5) };
        assert_eq!(judge(bounded, S(5), true), Verdict::Fresh);
        assert_eq!(judge(bounded, S(6), true), Verdict::Expired);
        assert!(!usable_on_error(bounded, S(6)));
        assert_eq!((fresh_for(bounded), on_error_for(bounded)), (S(5), S(5)));
        assert_eq!(judge(Freshness::Strict, Duration::ZERO, true), Verdict::Expired);
        assert!(!usable_on_error(Freshness::Strict, Duration::ZERO));
    }
}
