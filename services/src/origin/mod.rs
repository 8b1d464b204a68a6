//! The origin: where data lives durably, behind one trait so the embedded store and
//! PostgreSQL (a primary with streaming replicas) plug in alike.
//!
//! Reads say which tier they may use, the least position they need and how far behind
//! the primary a replica's answer may be; every read returns the position it reflects
//! and the instant it shows the primary as of. Writes are acknowledged only once committed, and
//! return the new version of the item and a position at or after the commit.

mod embedded;
mod error;
mod postgres;
mod write_op;

use std::sync::Arc;
use std::time::Duration;

use edgecache_actors::{Doc, ItemKey, Position, Version};
use futures_util::future::BoxFuture;
use tokio::time::Instant;

use crate::purge::PurgeMessage;
use crate::shutdown::Shutdown;

pub use embedded::EmbeddedOrigin;
pub use error::{OriginError, WriteError};
pub use postgres::PostgresOrigin;
pub use write_op::{Committed, Idempotency, WriteOp, WriteOpKind};

/// Which tier of the origin a read may be served by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierPolicy {
    /// The primary only: the newest committed state (strict fields, fallbacks).
    Primary,
    /// Any tier whose replayed position is at least the request's `min_position`; a
    /// backend with one tier reads its primary.
    AtLeast,
}

/// The tier that served an origin read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginTier {
    Primary,
    Replica,
}

/// A read of one or more items.
#[derive(Debug, Clone, Copy)]
pub struct ReadRequest {
    pub policy: TierPolicy,
    /// The read must reflect at least this position.
    pub min_position: Position,
    /// Whether a replica behind `min_position` may be waited for (within the origin's
    /// replica-wait budget) before the primary is read instead.
    pub wait_for_replica: bool,
    /// How far behind the primary a replica's answer may be.
    pub max_staleness: MaxStaleness,
}

impl ReadRequest {
    /// A read of the primary: the newest committed state.
    pub const PRIMARY: ReadRequest = ReadRequest {
        policy: TierPolicy::Primary,
        min_position: Position(0),
        wait_for_replica: false,
        max_staleness: MaxStaleness::NONE,
    };

    /// A read from any tier at or past `min_position`, no further behind the primary
    /// than `max_staleness`.
    pub fn at_least(min_position: Position, wait_for_replica: bool, max_staleness: MaxStaleness) -> Self {
        Self {
            policy: TierPolicy::AtLeast,
            min_position,
            wait_for_replica,
            max_staleness,
        }
    }
}

/// How old a replica's answer may be, from the freshness classes of the fields it
/// serves. A replica's answer is as old as the replica is behind the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxStaleness {
    /// A replica further behind than this is passed over for the primary.
    pub fresh: Duration,
    /// While the primary fails, a replica up to this far behind stands in for it
    /// (stale-if-error); never less than `fresh`.
    pub on_error: Duration,
}

impl MaxStaleness {
    /// Only the primary will do.
    pub const NONE: MaxStaleness = MaxStaleness {
        fresh: Duration::ZERO,
        on_error: Duration::ZERO,
    };

    /// Any replica in rotation will do, however far behind.
    pub const ANY: MaxStaleness = MaxStaleness {
        fresh: Duration::MAX,
        on_error: Duration::MAX,
    };
}

/// What an origin read returns for one item: the item (absent items come back with
/// `fields: None` and their last version), the tier that served it, the instant it
/// shows the primary as of, and how long the read waited for a replica.
#[derive(Debug, Clone)]
pub struct OriginRead {
    pub doc: Doc,
    pub tier: OriginTier,
    /// The served state is the primary's as of this instant or later: when a primary
    /// read started, or when the primary was last seen at a position the replica
    /// has replayed. Its age never understates.
    pub as_of: Instant,
    /// Set when the read waited for a replica to replay `min_position`; `fell_back`
    /// when it then read the primary because the wait ran out.
    pub replica_wait: Option<ReplicaWait>,
}

/// A wait for a replica.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaWait {
    pub waited: Duration,
    pub fell_back: bool,
}

/// What a sweep of the idempotency records did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IdempotencySweep {
    /// Records past their retention, deleted.
    pub removed: u64,
    /// Records still kept.
    pub kept: u64,
}

/// A change committed through any node, from the origin's change feed.
#[derive(Debug, Clone)]
pub enum Change {
    /// The item was written at `version`.
    Item {
        collection: String,
        id: String,
        version: Version,
    },
    /// Changes may have been missed (the feed reconnected): drop everything.
    Reset,
    /// A purge taken by some node (`POST /admin/purge`), published on the feed.
    Purge(PurgeMessage),
}

/// What a node's change feed has done (metrics, `/readyz`).
#[derive(Debug, Clone, Copy)]
pub struct FeedStatus {
    /// `logical` or `notify`.
    pub kind: &'static str,
    /// Connected and following now.
    pub following: bool,
    /// The primary's position up to which every committed change has been applied
    /// to the node's cache (the logical feed; `None` before the first).
    pub applied: Option<Position>,
}

/// Receives the change feed.
pub type ChangeSink = Arc<dyn Fn(Change) + Send + Sync>;

/// A durable origin. Implementations are cheap to clone behind an `Arc` and never
/// block the calling thread: blocking work runs on a blocking pool.
pub trait Origin: Send + Sync + 'static {
    /// Reads one item.
    fn read(&self, key: ItemKey, request: ReadRequest)
        -> BoxFuture<'static, Result<OriginRead, OriginError>>;

    /// Reads several items in one round trip; the result is in the order of `keys`.
    fn read_many(
        &self,
        keys: Vec<ItemKey>,
        request: ReadRequest,
    ) -> BoxFuture<'static, Result<Vec<OriginRead>, OriginError>>;

    /// The primary's current version of each of `keys` (0: no row), in the order of
    /// `keys`: what a background consistency check compares a served read with. Only
    /// the version is read, in as few round trips as the origin allows; the default
    /// reads whole items.
    fn versions(&self, keys: Vec<ItemKey>) -> BoxFuture<'static, Result<Vec<Version>, OriginError>> {
        let reads = self.read_many(keys, ReadRequest::PRIMARY);
        Box::pin(async move { Ok(reads.await?.into_iter().map(|read| read.doc.version).collect()) })
    }

    /// Applies one write atomically and returns once it is committed.
    fn write(&self, op: WriteOp) -> BoxFuture<'static, Result<Committed, WriteError>>;

    /// Deletes the idempotency records older than `retention` and counts the rest.
    fn sweep_idempotency(
        &self,
        retention: Duration,
    ) -> BoxFuture<'static, Result<IdempotencySweep, OriginError>>;

    /// Whether the origin answers at all (`/readyz`).
    fn ping(&self) -> BoxFuture<'static, Result<Position, OriginError>>;

    /// A short name for logs and `/readyz` (`embedded`, `postgres`).
    fn kind(&self) -> &'static str;

    /// Publishes `message` (a purge's JSON, [`PurgeMessage::encode`]) on the origin's
    /// change feed, so every node following it receives it. `false`: this origin has
    /// no feed to publish on.
    fn publish(&self, message: String) -> BoxFuture<'static, Result<bool, OriginError>> {
        let _ = message;
        Box::pin(async { Ok(false) })
    }

    /// Starts the origin's background work, every task under `shutdown`: delivering
    /// every change committed through any node to `sink`, and the origin's own upkeep
    /// (the PostgreSQL origin samples its replicas, which enter the rotation only
    /// then). An origin without a change feed drops the sink: other nodes' writes then
    /// show when cache entries expire.
    fn start(&self, sink: ChangeSink, shutdown: &Shutdown) {
        let _ = (sink, shutdown);
    }

    /// The change feed's state; `None` when the origin follows none.
    fn change_feed(&self) -> Option<FeedStatus> {
        None
    }

    /// Whether the change feed can tell that no change to `key` it has applied
    /// committed after `position` — so an entry read at `position` (from a replica
    /// behind the feed) is as current as the feed's applied position, read before
    /// this call. `false` when it cannot tell (the default: no such feed).
    fn unchanged_since(&self, key: &ItemKey, position: Position) -> bool {
        let _ = (key, position);
        false
    }
}

/// A shared origin.
pub type SharedOrigin = Arc<dyn Origin>;
