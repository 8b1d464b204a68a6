//! Exponential back-off with full jitter, for the loops that reconnect or retry a
//! server that stopped answering (the change feed, the replica sampler, the cluster's
//! health checks).
//!
//! The n-th wait after a failure is uniform in `0..=min(max, base · 2^n)` ("full
//! jitter"): retries from many nodes spread over the window instead of arriving
//! together, as they would if every node started the same fixed schedule when the
//! server went away.

use std::hash::BuildHasher;
use std::time::Duration;

use tokio::time::Instant;

use crate::hash::splitmix64;

/// The waits between attempts at one server. Reset it once the server answers.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
    rng: u64,
}

impl Backoff {
    /// Waits growing from `base` (the first ceiling) to at most `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        // Seeded differently in every process (and every back-off): nodes must not
        // draw the same waits.
        let rng = std::collections::hash_map::RandomState::new().hash_one(0u64);
        Self {
            base,
            max: max.max(base),
            failures: 0,
            rng,
        }
    }

    /// The ceiling of the next wait: `base · 2^failures`, at most `max`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Counts a failure and returns how long to wait before the next attempt.
    pub fn next_wait(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        match nanos.checked_add(1) {
            Some(span) => Duration::from_nanos(splitmix64(&mut self.rng) % span),
            None => Duration::from_nanos(splitmix64(&mut self.rng)),
        }
    }

    /// The server answered: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures since the last reset.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// When to look at a server next, for a loop that looks at it on a fixed tick: every
/// tick while it answers, and once it has failed, on the [`Backoff`]'s schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    backoff: Backoff,
    not_before: Option<Instant>,
}

impl Schedule {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            backoff: Backoff::new(base, max),
            not_before: None,
        }
    }

    /// Whether to look at the server at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.not_before.is_none_or(|at| now >= at)
    }

    /// It answered: look again at every tick.
    pub fn answered(&mut self) {
        self.backoff.reset();
        self.not_before = None;
    }

    /// It failed at `now`: skip it until the next wait has passed.
    pub fn failed(&mut self, now: Instant) {
        self.not_before = Some(now + self.backoff.next_wait());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn waits_stay_under_a_doubling_ceiling_bounded_by_max() {
        let mut backoff = Backoff::new(MS(100), MS(2_000));
        let ceilings = [100, 200, 400, 800, 1_600, 2_000, 2_000, 2_000];
        for ceiling in ceilings {
            assert_eq!(backoff.ceiling(), MS(ceiling));
            let wait = backoff.next_wait();
            assert!(wait <= MS(ceiling), "{wait:?} over {ceiling} ms");
        }
        for _ in 0..1_000 {
            assert!(backoff.next_wait() <= MS(2_000));
        }
        assert_eq!(backoff.ceiling(), MS(2_000), "no overflow after many failures");
        backoff.reset();
        assert_eq!(backoff.ceiling(), MS(100));
        assert_eq!(backoff.failures(), 0);
    }

    #[test]
    fn waits_spread_over_the_whole_window() {
        let mut backoff = Backoff::new(MS(1_000), MS(1_000));
        let waits: Vec<Duration> = (0..1_000).map(|_| backoff.next_wait()).collect();
        let low = waits.iter().filter(|w| **w < MS(250)).count();
        let high = waits.iter().filter(|w| **w > MS(750)).count();
        assert!((150..350).contains(&low), "{low} of 1000 in the first quarter");
        assert!((150..350).contains(&high), "{high} of 1000 in the last quarter");
    }

    #[test]
    fn a_schedule_skips_a_failed_server_for_at_most_the_ceiling() {
        let start = Instant::now();
        let mut schedule = Schedule::new(MS(100), MS(400));
        assert!(schedule.due(start));
        for ceiling in [100, 200, 400, 400] {
            schedule.failed(start);
            assert!(schedule.due(start + MS(ceiling)), "due again within {ceiling} ms");
        }
        schedule.answered();
        assert!(schedule.due(start), "every tick once it answers");
    }

    #[test]
    fn two_nodes_do_not_draw_the_same_waits() {
        let (mut a, mut b) = (Backoff::new(MS(100), MS(2_000)), Backoff::new(MS(100), MS(2_000)));
        let same = (0..20).filter(|_| a.next_wait() == b.next_wait()).count();
        assert!(same < 3, "{same} of 20 waits equal: lockstep");
    }
}
