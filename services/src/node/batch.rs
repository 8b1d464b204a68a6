//! Batch reads: the items the cache lacks are fetched in one origin round trip, then
//! each is read as on its own.

use edgecache_actors::{ItemKey, KeyRef, Position};
use edgecache_flags::Strategy;

use super::{Node, ReadError, ReadOptions, ReadOutcome, SessionCtx};
use crate::cache::CacheEntry;
use crate::origin::ReadRequest;
use crate::projection::Projection;

impl Node {
    /// Reads several items (only the fields of `projection`, when given); a missing
    /// one comes back with `fields: None`. Items the cache lacks are fetched in one
    /// origin round trip first.
    pub async fn read_batch(
        &self,
        s: &SessionCtx,
        collection: &str,
        ids: &[String],
        projection: Option<&Projection>,
    ) -> Result<Vec<ReadOutcome>, ReadError> {
        let plan = self
            .collections
            .get(collection)
            .ok_or_else(|| ReadError::UnknownCollection(collection.to_owned()))?;
        let absent: Vec<ItemKey> = ids
            .iter()
            .filter(|id| self.cache.get(KeyRef::new(&plan.name, id)).is_none())
            .map(|id| ItemKey::new(plan.name.clone(), id))
            .collect();
        if !absent.is_empty() {
            let strict = s.strategies.is_on(Strategy::StrictFields);
            let classes = projection.map_or(plan.classes(), Projection::classes);
            let request =
                ReadRequest::at_least(Position(0), false, classes.max_staleness(strict, self.plain));
            let epoch = self.cache.purge_epoch();
            match self.origin.read_many(absent.clone(), request).await {
                Ok(reads) => {
                    for (item, read) in absent.iter().zip(reads) {
                        let entry = CacheEntry::read(item, read.doc, read.as_of, read.tier);
                        self.cache.offer_read(item, entry, epoch);
                    }
                }
                // Each read below retries on its own and reports its own failure.
                Err(err) => tracing::warn!(cause = %err, "batch prefetch failed"),
            }
        }
        let options = ReadOptions {
            explain: false,
            projection,
        };
        let reads = ids.iter().map(|id| self.read_with(s, collection, id, options));
        futures_util::future::join_all(reads).await.into_iter().collect()
    }
}
