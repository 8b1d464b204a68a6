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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use edgecache_actors::Position;

/// The first reconnect waits up to this long; each failure doubles it, up to
/// [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What the feed has done, shared with whoever reports it (metrics, `/readyz`).
#[derive(Debug, Default)]
pub struct FeedProgress {
    following: AtomicBool,
    /// The primary's position up to which every change has been applied to the
    /// sink; 0 before the first.
    applied: AtomicU64,
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
}
