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

/// How many recent commits the logical feed remembers the end of, by transaction id
/// ([`CommitEnds`]): a write whose commit the feed delivered before the write asked
/// finds it here. Seconds of commits at any rate the node writes at.
pub const RECENT_COMMITS: usize = 65_536;

/// Where recent transactions' commit records ended, by transaction id (the low 32
/// bits: pgoutput's `Begin` carries those), as the logical feed delivered them, and
/// the writes waiting for theirs
/// ([decision 0010](../../../../../docs/decisions/0010-a-write-positioned-by-the-feed.md)).
#[derive(Debug)]
struct CommitEnds {
    ends: HashMap<u32, u64>,
    order: VecDeque<u32>,
    waiting: HashMap<u32, tokio::sync::oneshot::Sender<u64>>,
    bound: usize,
}

impl CommitEnds {
    fn new(bound: usize) -> Self {
        Self {
            ends: HashMap::new(),
            order: VecDeque::new(),
            waiting: HashMap::new(),
            bound: bound.max(1),
        }
    }

    /// Transaction `xid`'s commit record ended at `end`: its waiter learns it, and it
    /// is kept for a write that asks later.
    fn committed(&mut self, xid: u32, end: u64) {
        if let Some(waiter) = self.waiting.remove(&xid) {
            // The waiter may have given up since: nothing to tell then.
            let _ = waiter.send(end);
        }
        if self.ends.insert(xid, end).is_none() {
            self.order.push_back(xid);
        }
        while self.order.len() > self.bound {
            if let Some(old) = self.order.pop_front() {
                self.ends.remove(&old);
            }
        }
    }

    /// The end of `xid`'s commit if delivered already, or a receiver of it. A second
    /// waiter for the same transaction replaces the first (whose receiver then
    /// closes: it falls back).
    fn end_or_wait(&mut self, xid: u32) -> Result<u64, tokio::sync::oneshot::Receiver<u64>> {
        if let Some(&end) = self.ends.get(&xid) {
            return Ok(end);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiting.insert(xid, tx);
        Err(rx)
    }

    /// A waiter that gave up (or never got an answer) leaves no entry behind.
    fn give_up(&mut self, xid: u32) {
        if self.waiting.get(&xid).is_some_and(|tx| tx.is_closed()) {
            self.waiting.remove(&xid);
        }
    }

    /// The feed stopped: what it will not deliver (the commits while it reconnects)
    /// nobody waits for; every waiter falls back now.
    fn abandon_waiters(&mut self) {
        self.waiting.clear();
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
    /// The logical feed's recent commits, for writes that wait for theirs.
    commits: Mutex<CommitEnds>,
    /// Writes told their position by [`FeedProgress::commit_end`], and those it
    /// could not tell.
    told: AtomicU64,
    missed: AtomicU64,
}

impl Default for FeedProgress {
    fn default() -> Self {
        Self {
            following: AtomicBool::new(false),
            applied: AtomicU64::new(0),
            recent: Mutex::new(RecentChanges::new(RECENT_CHANGES)),
            commits: Mutex::new(CommitEnds::new(RECENT_COMMITS)),
            told: AtomicU64::new(0),
            missed: AtomicU64::new(0),
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
        if !following {
            self.commits.lock().abandon_waiters();
        }
    }

    /// Transaction `xid` (its low 32 bits) committed, its commit record ending at
    /// `end`.
    fn committed(&self, xid: u32, end: u64) {
        self.commits.lock().committed(xid, end);
    }

    /// The position past the commit record of transaction `xid` (the low 32 bits of
    /// its `txid_current()`), as the logical feed delivers it: at once if delivered
    /// already, else within `wait`. `None` when the feed does not deliver it in time
    /// (it stopped, lags, or the transaction changed nothing it follows): the caller
    /// reads the position instead.
    pub async fn commit_end(&self, xid: u32, wait: Duration) -> Option<Position> {
        let waiting = match self.commits.lock().end_or_wait(xid) {
            Ok(end) => {
                self.told.fetch_add(1, Ordering::Relaxed);
                return Some(Position(end));
            }
            Err(rx) => rx,
        };
        let end = match tokio::time::timeout(wait, waiting).await {
            Ok(Ok(end)) => Some(Position(end)),
            // Gave up, or the feed stopped and dropped the waiter.
            Ok(Err(_)) | Err(_) => None,
        };
        match end {
            Some(_) => self.told.fetch_add(1, Ordering::Relaxed),
            None => {
                self.commits.lock().give_up(xid);
                self.missed.fetch_add(1, Ordering::Relaxed)
            }
        };
        end
    }

    /// Writes [`FeedProgress::commit_end`] told their position.
    pub fn write_positions(&self) -> u64 {
        self.told.load(Ordering::Relaxed)
    }

    /// Writes [`FeedProgress::commit_end`] could not tell it in time.
    pub fn write_positions_missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
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
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_commit_is_found_whether_it_came_before_or_after_the_question() {
        let mut commits = CommitEnds::new(2);
        commits.committed(7, 700);
        assert_eq!(
            commits.end_or_wait(7).ok(),
            Some(700),
            "delivered before the question"
        );
        let mut rx = commits.end_or_wait(8).expect_err("not delivered yet");
        commits.committed(8, 800);
        assert_eq!(rx.try_recv().ok(), Some(800), "delivered after the question");
        assert!(commits.waiting.is_empty());
        commits.committed(9, 900); // forgets 7: the bound is 2
        assert!(commits.end_or_wait(7).is_err(), "forgotten past the bound");
    }

    #[test]
    fn waiters_of_a_stopped_feed_fall_back_and_given_up_waiters_leave_nothing() {
        let mut commits = CommitEnds::new(4);
        let mut rx = commits.end_or_wait(1).expect_err("nothing delivered");
        commits.abandon_waiters();
        assert!(rx.try_recv().is_err(), "the feed stopped: the waiter falls back");
        let rx = commits.end_or_wait(2).expect_err("nothing delivered");
        drop(rx);
        commits.give_up(2);
        assert!(commits.waiting.is_empty());
        commits.committed(2, 20); // delivered after the waiter gave up: kept, told nobody
        assert_eq!(commits.end_or_wait(2).ok(), Some(20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_waits_for_its_commit_at_most_the_bound() {
        let progress = Arc::new(FeedProgress::default());
        let wait = Duration::from_millis(20);
        let feed = progress.clone();
        let delivered = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            feed.committed(3, 300);
        });
        assert_eq!(progress.commit_end(3, wait).await, Some(Position(300)));
        delivered.await.unwrap();
        assert_eq!(progress.commit_end(4, wait).await, None, "never delivered");
        assert!(progress.commits.lock().waiting.is_empty());
        progress.set_following(true);
        let feed = progress.clone();
        let stopped = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            feed.set_following(false);
        });
        let started = tokio::time::Instant::now();
        assert_eq!(progress.commit_end(5, Duration::from_secs(60)).await, None);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a stopped feed ends the wait at once"
        );
        stopped.await.unwrap();
    }

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
