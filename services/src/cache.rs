//! The node's shared document cache: quick_cache weighted by bytes, read directly by
//! every request (no actor hop, no global lock: quick_cache shards its locks).
//!
//! quick_cache has no TTL, so each entry carries when it was fetched; the freshness
//! classes decide at read time what that age allows (see [`crate::freshness`]).
//! Entries only ever move forward: a fill or write never replaces a newer version.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgecache_actors::{Doc, ItemKey, KeyRef, Position, Version};
use parking_lot::Mutex;
use quick_cache::sync::EntryAction;
use quick_cache::sync::{Cache, DefaultLifecycle, EntryResult};
use quick_cache::{DefaultHashBuilder, OptionsBuilder, Weighter};
use tokio::time::Instant;

use crate::origin::OriginTier;
use crate::tags::{TagIndex, Tagged};

/// One cached item: the item as the origin had it, when it was fetched, and its JSON
/// body ready to send (so a whole-document hit is not serialised again).
#[derive(Debug)]
pub struct CacheEntry {
    pub doc: Doc,
    /// When the read that produced this entry started (so its age never
    /// understates).
    pub fetched_at: Instant,
    /// `{"id": …, fields…}`; empty for an absent item.
    pub body: Bytes,
    /// A marker left by the change feed: the item changed to `doc.version` through
    /// another node. It is never served; a read must fetch at least that version.
    pub invalidated: bool,
    /// The origin tier the entry was read from (a write's commit: the primary). A
    /// request that waited on another's fill learns it here.
    pub tier: OriginTier,
    /// Marked stale by a soft purge: served as past its TTL (within
    /// stale-while-revalidate, while one refresh runs), whatever its age.
    pub soft_purged: bool,
    /// Set once the entry is in the cache if the logical change feed had applied
    /// nothing past `doc.position` by then ([`CacheEntry::vouch`]): every later
    /// change to the item replaces the entry, so while it is in the cache its item
    /// is unchanged from `doc.position` up to the feed's applied position.
    vouched: AtomicBool,
}

impl CacheEntry {
    /// The entry of a committed write, as the primary now has it.
    pub fn new(key: &ItemKey, doc: Doc, fetched_at: Instant) -> Arc<Self> {
        Self::read(key, doc, fetched_at, OriginTier::Primary)
    }

    /// The entry of an origin read served by `tier`.
    pub fn read(key: &ItemKey, doc: Doc, fetched_at: Instant, tier: OriginTier) -> Arc<Self> {
        let body = match &doc.fields {
            Some(fields) => Bytes::from(document_json(key.id(), fields.iter())),
            None => Bytes::new(),
        };
        Arc::new(Self {
            doc,
            fetched_at,
            body,
            invalidated: false,
            tier,
            soft_purged: false,
            vouched: AtomicBool::new(false),
        })
    }

    /// This entry, marked stale by a soft purge.
    fn soft_purged(&self) -> Arc<Self> {
        Arc::new(Self {
            doc: self.doc.clone(),
            fetched_at: self.fetched_at,
            body: self.body.clone(),
            invalidated: false,
            tier: self.tier,
            soft_purged: true,
            // Never vouched for: a purge only ever makes a node more conservative.
            vouched: AtomicBool::new(false),
        })
    }

    /// The marker of a change to `version` made elsewhere.
    fn marker(version: Version) -> Arc<Self> {
        Arc::new(Self {
            doc: Doc {
                version,
                position: Default::default(),
                fields: None,
            },
            fetched_at: Instant::now(),
            body: Bytes::new(),
            invalidated: true,
            tier: OriginTier::Primary,
            soft_purged: false,
            vouched: AtomicBool::new(false),
        })
    }

    /// Called after the entry was offered to the cache, with the feed's applied
    /// position read after that: if the feed had applied nothing past the entry's
    /// position, no change it applied before the entry went in can be missing from
    /// it, and every change it applies later replaces it (a marker left meanwhile
    /// refuses it). An entry read from a replica behind the feed stays unvouched.
    pub fn vouch(&self, applied: Option<Position>) {
        self.vouch_if(applied, |_| false);
    }

    /// [`CacheEntry::vouch`], and for an entry read behind the feed (from a replica)
    /// also when `unchanged_since(doc.position)`: the feed tells no change to the item
    /// it applied committed after the entry's position, so the entry is as current
    /// as the applied position read before.
    pub fn vouch_if(&self, applied: Option<Position>, unchanged_since: impl FnOnce(Position) -> bool) {
        let Some(applied) = applied else { return };
        if applied <= self.doc.position || (!self.invalidated && unchanged_since(self.doc.position)) {
            self.vouched.store(true, Ordering::Release);
        }
    }

    /// The position up to which the change feed vouches for this entry, given the
    /// feed's applied position read *before* the entry was looked up; `None`: it
    /// does not.
    pub fn vouched_through(&self, applied: Option<Position>) -> Option<Position> {
        applied.filter(|_| !self.invalidated && self.vouched.load(Ordering::Acquire))
    }

    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.fetched_at)
    }

    /// Whether this entry is a newer view of its item than `other`.
    fn supersedes(&self, other: &CacheEntry) -> bool {
        (self.doc.version, self.doc.position, self.fetched_at)
            > (other.doc.version, other.doc.position, other.fetched_at)
    }
}

/// Serialises a document as `{"id": id, …fields}`.
pub fn document_json<'a>(
    id: &str,
    fields: impl Iterator<Item = (&'a String, &'a serde_json::Value)>,
) -> Vec<u8> {
    use serde::ser::{SerializeMap, Serializer};
    let mut out = Vec::with_capacity(256);
    let mut ser = serde_json::Serializer::new(&mut out);
    let result = (|| {
        let mut map = ser.serialize_map(None)?;
        map.serialize_entry("id", id)?;
        for (k, v) in fields {
            map.serialize_entry(k, v)?;
        }
        map.end()
    })();
    // Serialising JSON values into a Vec cannot fail.
    debug_assert!(result.is_ok());
    out
}

#[derive(Clone, Copy, Default)]
struct ByBytes;

impl Weighter<ItemKey, Arc<CacheEntry>> for ByBytes {
    fn weight(&self, key: &ItemKey, entry: &Arc<CacheEntry>) -> u64 {
        // The body stands for the parsed fields too; 160 bytes of fixed overhead.
        (key.collection().len() + key.id().len() + 2 * entry.body.len() + 160) as u64
    }
}

/// quick_cache's default lifecycle: up to two entries evicted by an insert are
/// dropped after the shard's lock is released, not under it (freeing a body is then
/// no other request's wait). Reads (`get`) never involve the lifecycle.
type Lifecycle = DefaultLifecycle<ItemKey, Arc<CacheEntry>>;

type Inner = Cache<ItemKey, Arc<CacheEntry>, ByBytes, DefaultHashBuilder, Lifecycle>;

/// The outcome of waiting on a coalesced fill.
pub enum Fill<E> {
    /// The entry, loaded by this request or by the one it waited on.
    Loaded(Arc<CacheEntry>),
    /// The loader failed.
    Failed(E),
}

/// The shared cache of one node. Cheap to clone.
#[derive(Clone)]
pub struct SharedCache {
    inner: Arc<Inner>,
    /// Which cached items carry which tag, for purges by tag.
    tags: Arc<TagIndex>,
    refreshing: Arc<Mutex<HashSet<ItemKey>>>,
    max_refreshes: usize,
    fill_deadline: Duration,
    /// Bumped by every purge (and a clear) before it touches an entry: an origin read
    /// that started before a purge may hold what the purge meant to drop, so what it
    /// stores is purged again ([`SharedCache::offer_read`]).
    purges: Arc<AtomicU64>,
}

impl SharedCache {
    /// A cache of `capacity_bytes`, sized for about `estimated_items`; a read waits at
    /// most `fill_deadline` for another request's fill of the same key.
    pub fn new(capacity_bytes: u64, estimated_items: usize, fill_deadline: Duration) -> Self {
        let options = OptionsBuilder::new()
            .estimated_items_capacity(estimated_items.max(16))
            .weight_capacity(capacity_bytes)
            .build()
            .expect("valid cache options");
        Self {
            inner: Arc::new(Cache::with_options(
                options,
                ByBytes,
                DefaultHashBuilder::default(),
                Lifecycle::default(),
            )),
            tags: Arc::new(TagIndex::new(Default::default(), 1)),
            refreshing: Arc::new(Mutex::new(HashSet::new())),
            max_refreshes: 256,
            fill_deadline,
            purges: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The purge epoch: read it before an origin read whose answer goes to
    /// [`SharedCache::offer_read`].
    pub fn purge_epoch(&self) -> u64 {
        self.purges.load(Ordering::SeqCst)
    }

    fn bump_purges(&self) {
        self.purges.fetch_add(1, Ordering::SeqCst);
    }

    /// After `key`'s entry from an origin read that started at purge epoch `epoch`
    /// was stored: if a purge came in between, it may have missed the entry (stored
    /// after it looked) while the read saw the origin before what the purge was for,
    /// so the entry is purged now. Either the purge saw the stored entry, or this
    /// check sees the purge's bump (made before it looked): never neither.
    fn repurge_if_raced(&self, key: &ItemKey, epoch: u64) {
        if self.purge_epoch() != epoch {
            // Without a bump of its own: that would send every read in flight now
            // to purge what it stores in turn.
            self.purge_entry(key, false);
        }
    }

    /// [`SharedCache::offer`] for the answer of an origin read that started at purge
    /// epoch `epoch` ([`SharedCache::purge_epoch`]).
    pub fn offer_read(&self, key: &ItemKey, entry: Arc<CacheEntry>, epoch: u64) {
        self.offer(key, entry);
        self.repurge_if_raced(key, epoch);
    }

    /// The cache with `tags` as its tag index (collections with surrogate keys).
    pub fn with_tags(mut self, tags: TagIndex) -> Self {
        self.tags = Arc::new(tags);
        self
    }

    pub fn get(&self, key: KeyRef<'_>) -> Option<Arc<CacheEntry>> {
        self.inner.get(&key)
    }

    /// Indexes the tags of an entry entering the cache (before it is stored, so a
    /// purge by tag never misses a stored entry; an entry not stored after all only
    /// costs an extra drop).
    fn index(&self, key: &ItemKey, entry: &CacheEntry) {
        if let Some(fields) = &entry.doc.fields {
            self.tags.record(key, fields);
        }
    }

    /// Stores `entry` unless the cache already holds a newer view of the item.
    pub fn offer(&self, key: &ItemKey, entry: Arc<CacheEntry>) {
        self.index(key, &entry);
        let result = self.inner.entry(key, Some(Duration::ZERO), |_, current| {
            if entry.supersedes(current) {
                *current = entry.clone();
            }
            EntryAction::Retain(())
        });
        match result {
            EntryResult::Vacant(guard) | EntryResult::Replaced(guard, _) => {
                let _ = guard.insert(entry);
            }
            // A fill of this key is under way; it may be older than `entry`, so
            // store over it (the fill's own offer then keeps the newer one).
            EntryResult::Timeout => self.inner.insert(key.clone(), entry),
            EntryResult::Retained(()) | EntryResult::Removed(..) => {}
        }
    }

    /// Records that the item changed to `version` through another node: an older
    /// entry — or none — becomes a marker that makes the next read fetch at least
    /// that version (from the primary while the replicas lag), so a lagging replica
    /// cannot put the old version back. Returns whether it left a marker.
    pub fn invalidate_older(&self, key: &ItemKey, version: Version) -> bool {
        let result = self.inner.entry(key, Some(Duration::ZERO), |_, current| {
            if current.doc.version < version {
                *current = CacheEntry::marker(version);
                EntryAction::Retain(true)
            } else {
                EntryAction::Retain(false)
            }
        });
        match result {
            EntryResult::Retained(marked) => marked,
            EntryResult::Vacant(guard) => guard.insert(CacheEntry::marker(version)).is_ok(),
            // A fill is under way: it may read the old version; mark over it.
            EntryResult::Timeout => {
                self.inner.insert(key.clone(), CacheEntry::marker(version));
                true
            }
            EntryResult::Removed(..) | EntryResult::Replaced(..) => false,
        }
    }

    /// Drops every entry.
    pub fn clear(&self) {
        self.bump_purges();
        self.inner.clear();
        self.tags.clear();
    }

    /// Purges `key`'s entry: `soft` marks it stale, otherwise it becomes a marker of
    /// its version, so the next read goes to the origin and fetches at least what the
    /// node held (a hard purge is never a step back). Returns whether an entry with
    /// content was there (markers of the change feed are left as they are).
    pub fn purge(&self, key: &ItemKey, soft: bool) -> bool {
        self.bump_purges();
        self.purge_entry(key, soft)
    }

    /// [`SharedCache::purge`] of one entry, the epoch left alone.
    fn purge_entry(&self, key: &ItemKey, soft: bool) -> bool {
        let result = self.inner.entry(key, Some(Duration::ZERO), |_, current| {
            if current.invalidated || (soft && current.soft_purged) {
                return EntryAction::Retain(None);
            }
            let old = if soft {
                std::mem::replace(current, current.soft_purged())
            } else {
                std::mem::replace(current, CacheEntry::marker(current.doc.version))
            };
            EntryAction::Retain(Some(old))
        });
        match result {
            EntryResult::Retained(Some(old)) => {
                if let (false, Some(fields)) = (soft, &old.doc.fields) {
                    self.tags.forget(key, fields);
                }
                true
            }
            // Nothing cached (the guard is dropped unused), or a fill under way: it
            // reads the origin anyway.
            _ => false,
        }
    }

    /// Purges every entry of `collection` ([`SharedCache::purge`]); returns how many
    /// had content.
    pub fn purge_collection(&self, collection: &str, soft: bool) -> u64 {
        self.bump_purges();
        let keys: Vec<ItemKey> = self
            .inner
            .iter()
            .filter(|(key, entry)| key.collection() == collection && !entry.invalidated)
            .map(|(key, _)| key)
            .collect();
        let purged = keys.iter().filter(|key| self.purge_entry(key, soft)).count() as u64;
        if !soft {
            self.tags.forget_collection(collection);
        }
        purged
    }

    /// What a purge of `tag` acts on ([`TagIndex::tagged`]).
    pub fn tagged(&self, tag: &str, collection: Option<&str>, soft: bool) -> Tagged {
        self.tags.tagged(tag, collection, !soft)
    }

    /// Whether `collection` has surrogate keys (tags).
    pub fn tags_collection(&self, collection: &str) -> bool {
        self.tags.tags_collection(collection)
    }

    /// A read of an item the cache does not hold, coalesced: the first request loads
    /// it with `load`, the others wait for that load — at most the fill deadline,
    /// then they load on their own.
    pub async fn fill<E, F>(&self, key: &ItemKey, load: impl FnOnce() -> F) -> Fill<E>
    where
        F: Future<Output = Result<Arc<CacheEntry>, E>>,
    {
        let epoch = self.purge_epoch();
        let waited = tokio::time::timeout(self.fill_deadline, self.inner.get_value_or_guard_async(key)).await;
        match waited {
            Ok(Ok(entry)) => Fill::Loaded(entry),
            Ok(Err(guard)) => match load().await {
                Ok(entry) => {
                    self.index(key, &entry);
                    let _ = guard.insert(entry.clone());
                    self.repurge_if_raced(key, epoch);
                    Fill::Loaded(entry)
                }
                Err(e) => Fill::Failed(e),
            },
            Err(_elapsed) => match load().await {
                Ok(entry) => {
                    self.offer_read(key, entry.clone(), epoch);
                    Fill::Loaded(entry)
                }
                Err(e) => Fill::Failed(e),
            },
        }
    }

    /// Claims the background refresh of `key`: `None` when one is already running or
    /// too many are. The claim is released when the ticket drops.
    pub fn claim_refresh(&self, key: &ItemKey) -> Option<RefreshTicket> {
        let mut running = self.refreshing.lock();
        if running.len() >= self.max_refreshes || !running.insert(key.clone()) {
            return None;
        }
        Some(RefreshTicket {
            key: key.clone(),
            refreshing: self.refreshing.clone(),
        })
    }

    /// Number of entries and their weight in bytes.
    pub fn usage(&self) -> (usize, u64) {
        (self.inner.len(), self.inner.weight())
    }
}

/// The right to run the one background refresh of a key.
pub struct RefreshTicket {
    key: ItemKey,
    refreshing: Arc<Mutex<HashSet<ItemKey>>>,
}

impl Drop for RefreshTicket {
    fn drop(&mut self) {
        self.refreshing.lock().remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgecache_actors::Position;

    fn key(id: &str) -> ItemKey {
        ItemKey::new("products".into(), id)
    }

    fn entry(k: &ItemKey, version: u64) -> Arc<CacheEntry> {
        let mut fields = serde_json::Map::new();
        fields.insert("v".into(), version.into());
        CacheEntry::new(
            k,
            Doc {
                version: Version(version),
                position: Position(version * 10),
                fields: Some(Arc::new(fields)),
            },
            Instant::now(),
        )
    }

    #[tokio::test]
    async fn an_older_version_never_replaces_a_newer_one() {
        let cache = SharedCache::new(1 << 20, 100, Duration::from_secs(1));
        let k = key("p1");
        cache.offer(&k, entry(&k, 2));
        cache.offer(&k, entry(&k, 1));
        assert_eq!(cache.get(k.as_ref()).unwrap().doc.version, Version(2));
        cache.offer(&k, entry(&k, 3));
        assert_eq!(cache.get(k.as_ref()).unwrap().doc.version, Version(3));
        assert_eq!(&cache.get(k.as_ref()).unwrap().body[..], br#"{"id":"p1","v":3}"#);
    }

    #[tokio::test]
    async fn concurrent_misses_load_once() {
        let cache = SharedCache::new(1 << 20, 100, Duration::from_secs(5));
        let k = key("p1");
        let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (cache, k, loads) = (cache.clone(), k.clone(), loads.clone());
                tokio::spawn(async move {
                    let fill = cache
                        .fill(&k, || async {
                            loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok::<_, ()>(entry(&k, 1))
                        })
                        .await;
                    matches!(fill, Fill::Loaded(_))
                })
            })
            .collect();
        for t in tasks {
            assert!(t.await.unwrap());
        }
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_fill_is_waited_on_only_until_the_deadline() {
        let cache = SharedCache::new(1 << 20, 100, Duration::from_millis(100));
        let k = key("p1");
        let (c2, k2) = (cache.clone(), k.clone());
        let stuck = tokio::spawn(async move {
            c2.fill(&k2, || async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, ()>(entry(&k2, 1))
            })
            .await;
        });
        tokio::task::yield_now().await;
        let started = Instant::now();
        let fill = cache.fill(&k, || async { Ok::<_, ()>(entry(&k, 2)) }).await;
        assert!(matches!(fill, Fill::Loaded(e) if e.doc.version == Version(2)));
        assert!(started.elapsed() < Duration::from_secs(1));
        stuck.abort();
    }

    #[tokio::test]
    async fn a_hard_purge_leaves_a_marker_of_the_version_and_a_soft_one_marks_stale() {
        let tags = TagIndex::new([("products".to_owned(), vec!["t".to_owned()])].into(), 100);
        let cache = SharedCache::new(1 << 20, 100, Duration::from_secs(1)).with_tags(tags);
        let (k1, k2) = (key("p1"), key("p2"));
        cache.offer(&k1, entry(&k1, 3));
        let mut tagged = serde_json::Map::new();
        tagged.insert("t".into(), "red".into());
        let doc = Doc {
            version: Version(5),
            position: Position(50),
            fields: Some(Arc::new(tagged)),
        };
        cache.offer(&k2, CacheEntry::new(&k2, doc, Instant::now()));
        assert!(cache.purge(&k1, true));
        let soft = cache.get(k1.as_ref()).unwrap();
        assert!(soft.soft_purged && !soft.invalidated);
        assert_eq!(&soft.body[..], br#"{"id":"p1","v":3}"#, "still served, as stale");
        assert!(!cache.purge(&k1, true), "already marked");
        assert!(cache.purge(&k1, false));
        let hard = cache.get(k1.as_ref()).unwrap();
        assert!(hard.invalidated, "a marker: the next read goes to the origin");
        assert_eq!(hard.doc.version, Version(3), "for at least the version held");
        assert!(!cache.purge(&k1, false), "a marker has nothing to drop");
        assert!(!cache.purge(&key("absent"), false));
        assert!(cache.get(key("absent").as_ref()).is_none(), "nothing left behind");
        // Tags: offered entries are indexed; the collection purge takes the rest.
        assert_eq!(cache.tagged("red", None, true).items, vec![k2.clone()]);
        assert_eq!(cache.purge_collection("products", false), 1);
        assert!(cache.get(k2.as_ref()).unwrap().invalidated);
        assert!(cache.tagged("red", None, false).items.is_empty());
    }

    /// A read of the origin that started before a purge (it may have seen the origin
    /// before the change the purge is for) stores its answer after the purge looked:
    /// the answer is still served to its request, but the cache keeps a marker, so
    /// the next read goes to the origin. A read that starts after the purge caches.
    #[tokio::test]
    async fn an_origin_read_that_started_before_a_purge_does_not_stay_cached_after_it() {
        for (how, purge) in [
            (
                "by key",
                Box::new(|c: &SharedCache, k: &ItemKey| {
                    c.purge(k, false);
                }) as Box<dyn Fn(&SharedCache, &ItemKey)>,
            ),
            (
                "by collection",
                Box::new(|c: &SharedCache, _: &ItemKey| {
                    c.purge_collection("products", true);
                }),
            ),
            ("a feed reset", Box::new(|c: &SharedCache, _: &ItemKey| c.clear())),
        ] {
            let cache = SharedCache::new(1 << 20, 100, Duration::from_secs(5));
            let k = key("p1");
            let (read_done, release) = (
                tokio::sync::oneshot::channel(),
                tokio::sync::oneshot::channel::<()>(),
            );
            let (done_tx, done_rx) = read_done;
            let (release_tx, release_rx) = release;
            let fill = {
                let (cache, k) = (cache.clone(), k.clone());
                tokio::spawn(async move {
                    cache
                        .fill(&k, || async {
                            // The origin answered (the old version); the store waits.
                            let _ = done_tx.send(());
                            let _ = release_rx.await;
                            Ok::<_, ()>(entry(&k, 1))
                        })
                        .await
                })
            };
            done_rx.await.unwrap();
            purge(&cache, &k);
            release_tx.send(()).unwrap();
            let Fill::Loaded(served) = fill.await.unwrap() else {
                panic!("{how}: the read is answered")
            };
            assert_eq!(served.doc.version, Version(1), "{how}: its own request is served");
            assert!(
                cache.get(k.as_ref()).is_none_or(|left| left.invalidated),
                "{how}: not cached past the purge (a marker, or nothing)"
            );

            // The same through offer_read; and a read after the purge caches.
            let k2 = key("p2");
            let epoch = cache.purge_epoch();
            purge(&cache, &k2);
            cache.offer_read(&k2, entry(&k2, 1), epoch);
            assert!(cache.get(k2.as_ref()).is_none_or(|e| e.invalidated), "{how}");
            let k3 = key("p3");
            let epoch = cache.purge_epoch();
            cache.offer_read(&k3, entry(&k3, 1), epoch);
            assert!(
                !cache.get(k3.as_ref()).unwrap().invalidated,
                "{how}: no purge since"
            );
        }
    }

    #[test]
    fn one_refresh_per_key() {
        let cache = SharedCache::new(1 << 20, 100, Duration::from_secs(1));
        let k = key("p1");
        let ticket = cache.claim_refresh(&k).unwrap();
        assert!(cache.claim_refresh(&k).is_none());
        drop(ticket);
        assert!(cache.claim_refresh(&k).is_some());
    }
}
