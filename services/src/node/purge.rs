//! Applying a purge on this node: by ids, a whole collection or a tag, hard (the
//! entries become markers of their versions: the next read goes to the origin for at
//! least what the node held) or soft (marked stale: served within
//! stale-while-revalidate while one refresh runs). Each purge, named by its id, is
//! applied once, however many ways it arrives (the request itself, a peer, the change
//! feed).
//!
//! A purge touches the cache only, never a session: every read is still held to the
//! session's need, so a purge can cost origin reads but never lowers a guarantee.

use std::collections::VecDeque;
use std::sync::Arc;

use edgecache_actors::ItemKey;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::Node;
use crate::cache::SharedCache;
use crate::metrics::Metrics;
use crate::origin::OriginError;
use crate::purge::{PurgeMessage, Target};

/// Purge ids remembered, to apply each purge once.
const REMEMBERED: usize = 1024;

/// What a purge did on one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PurgeCount {
    /// Entries dropped (hard purge).
    pub dropped: u64,
    /// Entries marked stale (soft purge).
    pub marked: u64,
    /// The node had already applied this purge (it arrived another way first).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub repeated: bool,
}

/// Applies purges to one node's cache; shared with the change feed's sink.
#[derive(Clone)]
pub struct Purger {
    cache: SharedCache,
    metrics: Arc<Metrics>,
    /// The ids of the purges applied last, and what each did.
    applied: Arc<Mutex<VecDeque<(String, PurgeCount)>>>,
}

impl Purger {
    pub fn new(cache: SharedCache, metrics: Arc<Metrics>) -> Self {
        Self {
            cache,
            metrics,
            applied: Arc::new(Mutex::new(VecDeque::with_capacity(REMEMBERED))),
        }
    }

    /// Applies `message` unless this node already did; a repeat answers what the
    /// first application did. Purges apply one at a time (they are rare; a purge of a
    /// collection walks the cache), so a repeat that arrives while the first still
    /// runs waits for it.
    pub fn apply(&self, message: &PurgeMessage) -> PurgeCount {
        let mut applied = self.applied.lock();
        if let Some((_, count)) = applied.iter().find(|(id, _)| *id == message.id) {
            return PurgeCount {
                repeated: true,
                ..*count
            };
        }
        let count = self.apply_once(message);
        if applied.len() == REMEMBERED {
            applied.pop_front();
        }
        applied.push_back((message.id.clone(), count));
        count
    }

    fn apply_once(&self, message: &PurgeMessage) -> PurgeCount {
        let purge = &message.purge;
        let soft = purge.soft;
        let purged = match purge.target() {
            Ok(Target::Ids { collection, ids }) => {
                let collection: Arc<str> = collection.into();
                ids.iter()
                    .filter(|id| self.cache.purge(&ItemKey::new(collection.clone(), id), soft))
                    .count() as u64
            }
            Ok(Target::Collection(collection)) => self.cache.purge_collection(collection, soft),
            Ok(Target::Tag { tag, collection }) => {
                let tagged = self.cache.tagged(tag, collection, soft);
                let mut purged = 0;
                for whole in &tagged.whole_collections {
                    tracing::info!(collection = %whole, tag, "tag index overflowed: purging the whole collection");
                    purged += self.cache.purge_collection(whole, soft);
                }
                purged
                    + tagged
                        .items
                        .iter()
                        .filter(|key| !tagged.whole_collections.iter().any(|c| c == key.collection()))
                        .filter(|key| self.cache.purge(key, soft))
                        .count() as u64
            }
            Err(shape) => {
                // Checked where the request was taken; a malformed message from the
                // feed is logged and changes nothing.
                tracing::warn!(cause = %shape, id = %message.id, "purge without a scope ignored");
                0
            }
        };
        self.metrics.purges.inc();
        let count = if soft {
            self.metrics.purge_marked.add(purged);
            PurgeCount {
                marked: purged,
                ..PurgeCount::default()
            }
        } else {
            self.metrics.purge_dropped.add(purged);
            PurgeCount {
                dropped: purged,
                ..PurgeCount::default()
            }
        };
        tracing::info!(id = %message.id, from = %message.node, soft, purged, "purge applied");
        count
    }
}

impl Node {
    /// Applies a purge on this node (once per purge id).
    pub fn purge(&self, message: &PurgeMessage) -> PurgeCount {
        self.purger.apply(message)
    }

    /// Publishes a purge on the origin's change feed (PostgreSQL), so nodes outside
    /// this one's cluster get it too. `false`: the origin has no feed.
    pub async fn publish_purge(&self, message: &PurgeMessage) -> Result<bool, OriginError> {
        self.origin.publish(message.encode()).await
    }

    /// Whether `collection` has surrogate keys (can be purged by tag).
    pub fn has_tags(&self, collection: &str) -> bool {
        self.cache.tags_collection(collection)
    }
}
