//! The change feed: how a node learns of every change committed at the primary, so
//! it drops cache entries older than that (`origin.change_feed`).
//!
//! * [`logical`] (the default) follows the primary's logical replication stream
//!   (pgoutput) on a temporary slot of the node's own: every writer's rows, with no
//!   work inside the writing transaction.
//! * [`notify`] LISTENs on a channel that edgecache's own writes notify inside their
//!   transactions.
//!
//! Both hand edgecache's own feed messages to one decoder ([`message::decode`]).
//! After every (re)connection a node cannot know what it missed, so it drops
//! everything (`Change::Reset`).

pub mod logical;
pub mod message;
pub mod notify;
pub mod pgoutput;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use edgecache_actors::Position;
use parking_lot::Mutex;

/// The first reconnect waits up to this long; each failure doubles it, up to
/// [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How many recent changes the feed remembers ([`RecentChanges`]): at 3,000 writes a
/// second, 20 s of them — far more than a replica within its bounds is behind.
pub const RECENT_CHANGES: usize = 65_536;

/// The items the logical feed saw change lately, each with the end of its last
/// committing transaction, and a floor below which it knows nothing. An entry read
/// from a replica at position `p` is current through the feed's applied position `A`
/// when no change to its item committed in `(p, A]`: what [`FeedProgress::unchanged_since`]
/// tells, conservatively (an item hash shared by two items, or a change forgotten
/// past the bound, only says "changed").
#[derive(Debug)]
pub struct RecentChanges {
    last: HashMap<u64, u64>,
    order: VecDeque<(u64, u64)>,
    /// Changes that ended at or below it may be forgotten; 0 before the feed follows.
    floor: u64,
    bound: usize,
}

impl RecentChanges {
    fn new(bound: usize) -> Self {
        Self {
            last: HashMap::new(),
            order: VecDeque::new(),
            floor: u64::MAX,
            bound: bound.max(1),
        }
    }

    /// Nothing is known before `floor` (the feed (re)connected there, or a change it
    /// could not follow committed there).
    fn reset(&mut self, floor: u64) {
        self.last.clear();
        self.order.clear();
        self.floor = floor;
    }

    /// `item` changed in a transaction whose commit ended at `end`.
    fn record(&mut self, item: u64, end: u64) {
        self.last.insert(item, end);
        self.order.push_back((item, end));
        while self.order.len() > self.bound {
            let Some((old, at)) = self.order.pop_front() else {
                break;
            };
            if self.last.get(&old) == Some(&at) {
                self.last.remove(&old);
            }
            self.floor = self.floor.max(at);
        }
    }

    /// Whether every change to `item` the feed has recorded committed at or below
    /// `position` (so a read that reflects `position` reflects them all).
    fn unchanged_since(&self, item: u64, position: u64) -> bool {
        position >= self.floor && self.last.get(&item).is_none_or(|&end| end <= position)
    }
}

/// What the feed has done, shared with whoever reports it (metrics, `/readyz`).
#[derive(Debug)]
pub struct FeedProgress {
    following: AtomicBool,
    /// The primary's position up to which every change has been applied to the
    /// sink; 0 before the first.
    applied: AtomicU64,
    /// Recorded before `applied` moves past them.
    recent: Mutex<RecentChanges>,
}

impl Default for FeedProgress {
    fn default() -> Self {
        Self {
            following: AtomicBool::new(false),
            applied: AtomicU64::new(0),
            recent: Mutex::new(RecentChanges::new(RECENT_CHANGES)),
        }
    }
}

impl FeedProgress {
    /// Whether the feed is connected and following now.
    pub fn following(&self) -> bool {
        self.following.load(Ordering::Acquire)
    }

    /// The position up to which every committed change has been applied (the
    /// logical feed only; `None` before the first).
    pub fn applied(&self) -> Option<Position> {
        match self.applied.load(Ordering::Acquire) {
            0 => None,
            lsn => Some(Position(lsn)),
        }
    }

    fn set_following(&self, following: bool) {
        self.following.store(following, Ordering::Release);
    }

    /// Raises the applied position (never lowers it).
    fn applied_through(&self, lsn: u64) {
        self.applied.fetch_max(lsn, Ordering::AcqRel);
    }

    /// Forgets every recorded change: nothing before `floor` is known.
    fn forget_before(&self, floor: u64) {
        self.recent.lock().reset(floor);
    }

    /// Records the items a transaction that ended at `end` changed; call before
    /// raising the applied position past it.
    fn record(&self, items: &[u64], end: u64) {
        let mut recent = self.recent.lock();
        for &item in items {
            recent.record(item, end);
        }
    }

    /// Whether no change to `item` (its [`edgecache_actors::item_hash`]) that the
    /// feed applied committed after `position`, as far as the feed can tell. Read
    /// the applied position first: every change it covers is recorded by then.
    pub fn unchanged_since(&self, item: u64, position: Position) -> bool {
        self.recent.lock().unchanged_since(item, position.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_changes_tell_whether_an_item_changed_after_a_position() {
        let mut recent = RecentChanges::new(3);
        assert!(
            !recent.unchanged_since(1, 100),
            "nothing known before the feed follows"
        );
        recent.reset(50);
        assert!(!recent.unchanged_since(1, 40), "below the floor: unknown");
        assert!(recent.unchanged_since(1, 60));
        recent.record(1, 70);
        assert!(!recent.unchanged_since(1, 60), "changed at 70");
        assert!(recent.unchanged_since(1, 70));
        assert!(recent.unchanged_since(2, 60), "another item");
        recent.record(2, 80);
        recent.record(3, 90);
        recent.record(4, 100); // forgets item 1's change: the floor rises to 70
        assert!(!recent.unchanged_since(1, 65), "below the raised floor");
        assert!(recent.unchanged_since(1, 75));
        assert!(!recent.unchanged_since(4, 95));
        recent.record(4, 110);
        recent.record(4, 120); // forgets 2@80, 3@90; 4's later changes stay
        assert!(!recent.unchanged_since(4, 110));
        assert!(recent.unchanged_since(4, 120));
        assert!(recent.unchanged_since(2, 90) && !recent.unchanged_since(2, 85));
    }
}
