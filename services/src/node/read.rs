//! The read path: one item for a session, under its guarantees and the item's
//! freshness classes — the session's own pending write, the shared cache, or the
//! origin (coalesced on a miss, refreshed in the background when stale); strict
//! fields from the primary on every read.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgecache_actors::{Doc, ItemKey, KeyRef, Position};
use edgecache_flags::Strategy;
use futures_util::future::FutureExt;
use tokio::time::Instant;

use super::explain::{explain_fields, FieldSource};
use super::{Node, ReadError, SessionCtx};
use crate::cache::{document_json, CacheEntry, Fill};
use crate::consistency::Sample;
use crate::freshness::Verdict;
use crate::metrics::ServedRead;
use crate::origin::{MaxStaleness, OriginError, OriginTier, ReadRequest, TierPolicy};
use crate::plan::CollectionPlan;
use crate::projection::Projection;
use crate::{CacheStatus, Tier};

/// A read's answer.
pub struct ReadOutcome {
    /// The item as served; `fields: None` means it does not exist (404).
    pub doc: Doc,
    /// The JSON body of the document (empty when absent).
    pub body: Bytes,
    pub status: CacheStatus,
    /// Whether the strict fields were read from the primary for this read.
    pub strict_from_primary: bool,
    /// Age of the non-strict fields.
    pub age: Duration,
    pub tier: Tier,
    /// Per-field provenance, when asked for.
    pub explain: Option<Vec<FieldSource>>,
}

/// What a read asks for besides the item.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions<'a> {
    /// Per-field provenance (`?explain=true`).
    pub explain: bool,
    /// Only these fields (`?fields=`): their classes alone decide the tiers.
    pub projection: Option<&'a Projection>,
}

/// What the non-strict fields of a read come from.
enum Base {
    Cache(Arc<CacheEntry>),
    Session(Doc, Instant),
    Origin(Arc<CacheEntry>, OriginTier),
}

impl Node {
    /// Reads one item for the session, under its guarantees and the item's freshness
    /// classes.
    pub async fn read(
        &self,
        s: &SessionCtx,
        collection: &str,
        id: &str,
        explain: bool,
    ) -> Result<ReadOutcome, ReadError> {
        let options = ReadOptions {
            explain,
            projection: None,
        };
        self.read_with(s, collection, id, options).await
    }

    /// Reads one item for the session with `options`: a projection is served by the
    /// classes of its fields alone, and answers only them.
    #[tracing::instrument(level = "debug", skip(self, s, options), fields(session_id = %s.id()))]
    pub async fn read_with(
        &self,
        s: &SessionCtx,
        collection: &str,
        id: &str,
        options: ReadOptions<'_>,
    ) -> Result<ReadOutcome, ReadError> {
        let plan = self
            .collections
            .get(collection)
            .ok_or_else(|| ReadError::UnknownCollection(collection.to_owned()))?;
        let classes = options.projection.map_or(plan.classes(), Projection::classes);
        let key = KeyRef::new(&plan.name, id);
        let arms = &s.strategies;
        let ryw = arms.is_on(Strategy::ReadYourWrites);
        let monotonic = arms.is_on(Strategy::MonotonicReads);
        let swr = arms.is_on(Strategy::StaleWhileRevalidate);
        let strict = arms.is_on(Strategy::StrictFields);
        let session = &s.session;
        let now = Instant::now();

        let (need, handover) = {
            let state = session.state();
            (state.need(key.hash, ryw, monotonic), state.in_handover(now))
        };
        // Read before the cache: every change committed up to it has reached the
        // cache by now, so an entry the feed vouches for is current through it.
        let applied = self.feed_applied();
        let cached = self.cache.get(key);
        let mut base = None;
        let mut fallback = None;
        let mut status = CacheStatus::Miss;
        // A change-feed marker is never served: the origin read must reach its version.
        let (cached, changed_to) = match cached {
            Some(entry) if entry.invalidated => (None, Some(entry.doc.version)),
            other => (other, None),
        };
        if let Some(entry) = &cached {
            // A session whose floors passed the entry's position may still be served
            // it when the feed vouches for it up to a position past them (compacted
            // tokens hold floors; the entry is not older than what they stand for).
            let own = need.admits(&entry.doc);
            let vouched = !own
                && entry
                    .vouched_through(applied)
                    .is_some_and(|through| need.admits_through(&entry.doc, through));
            if vouched {
                self.metrics.feed_vouched.inc();
            }
            if own || vouched {
                // A cached absence (negative caching) is judged by the collection's
                // class alone: no field of it is served. A soft-purged entry is judged
                // as past its TTL, whatever its age.
                let mut age = entry.age(now);
                if entry.soft_purged {
                    age = age.max(soft_purged_age(
                        plan,
                        classes,
                        entry.doc.exists(),
                        strict,
                        self.plain,
                    ));
                }
                let verdict = if entry.doc.exists() {
                    classes.verdict(age, swr, strict, self.plain)
                } else {
                    plan.absence_verdict(age, swr, strict, self.plain)
                };
                match verdict {
                    Verdict::Fresh => {
                        status = CacheStatus::Hit;
                        base = Some(Base::Cache(entry.clone()));
                    }
                    Verdict::Revalidate => {
                        status = CacheStatus::Stale;
                        base = Some(Base::Cache(entry.clone()));
                        self.refresh_in_background(plan, id, classes.max_staleness(strict, self.plain));
                    }
                    Verdict::Expired => {
                        status = CacheStatus::Expired;
                        fallback = Some(entry.clone());
                    }
                }
            } else {
                status = CacheStatus::Watermark;
                if monotonic && session.state().watermarks().is_regression(key.hash, &entry.doc) {
                    self.metrics.regressions_prevented.inc();
                }
            }
        }
        if base.is_none() && ryw {
            let state = session.state();
            if let Some(own) = state.pending(key) {
                let newer = cached.as_ref().is_none_or(|c| own.doc.version > c.doc.version);
                let age = now.saturating_duration_since(own.committed_at);
                if newer
                    && need.admits(&own.doc)
                    && classes.verdict(age, false, strict, self.plain) == Verdict::Fresh
                {
                    status = CacheStatus::Session;
                    base = Some(Base::Session(own.doc.clone(), own.committed_at));
                }
            }
        }
        let mut base = match base {
            Some(base) => base,
            None => {
                let item = ItemKey::new(plan.name.clone(), id);
                let wait = arms.is_on(Strategy::ReplicaWait);
                let mut need = need;
                if let Some(version) = changed_to {
                    need.version = need.version.max(version);
                    status = CacheStatus::Expired;
                }
                let absent = cached.is_none() && changed_to.is_none();
                let max_staleness = classes.max_staleness(strict, self.plain);
                match self.read_origin(&item, need, absent, wait, max_staleness).await {
                    Ok((entry, tier)) => Base::Origin(entry, tier),
                    Err(err) => {
                        self.metrics.origin_errors.inc();
                        let usable = fallback.filter(|f| {
                            if f.doc.exists() {
                                classes.usable_on_error(f.age(now)) && !(strict && classes.has_strict())
                            } else {
                                plan.absence_usable_on_error(f.age(now), strict, self.plain)
                            }
                        });
                        match usable {
                            Some(entry) => {
                                tracing::warn!(cause = %err, item = %item, "origin failed; serving stale-if-error");
                                status = CacheStatus::StaleIfError;
                                Base::Cache(entry)
                            }
                            None => return Err(ReadError::Origin(err)),
                        }
                    }
                }
            }
        };

        // Strict fields come from the primary on every read. If the primary has moved
        // past what the base holds, the primary's answer becomes the base.
        let mut strict_from_primary = false;
        // A cached absence has no strict field to read: the collection's class
        // bounds it (a create through any node replaces it through the change feed).
        let negative_hit = matches!(&base, Base::Cache(entry) if !entry.doc.exists());
        // So is the whole item while another copy of the session may still be serving
        // (a handover, decision 0008): the primary holds what any copy served.
        let strict_fields = strict && classes.has_strict() && !negative_hit;
        let read_strict =
            (handover || strict_fields) && !matches!(base, Base::Origin(_, OriginTier::Primary));
        if read_strict {
            let item = ItemKey::new(plan.name.clone(), id);
            let request = ReadRequest::PRIMARY;
            let epoch = self.cache.purge_epoch();
            let read = self
                .origin
                .read(item.clone(), request)
                .await
                .inspect_err(|_| self.metrics.origin_errors.inc())?;
            if strict_fields {
                self.metrics.strict_reads.inc();
            }
            if handover {
                self.metrics.handover_reads.inc();
            }
            if read.doc.version == base_doc(&base).version {
                strict_from_primary = true;
            } else {
                let entry = CacheEntry::new(&item, read.doc, read.as_of);
                self.cache.offer_read(&item, entry.clone(), epoch);
                base = Base::Origin(entry, OriginTier::Primary);
            }
        }

        // Ages as of when the answer leaves, after any origin read this request made
        // (an answer that needed none takes the request's own instant).
        let asked_origin =
            read_strict || matches!(base, Base::Origin(..)) || status == CacheStatus::StaleIfError;
        let served = if asked_origin { Instant::now() } else { now };
        let (doc, body, age, tier) = match &base {
            Base::Cache(entry) => (
                entry.doc.clone(),
                entry.body.clone(),
                entry.age(served),
                Tier::Cache,
            ),
            Base::Session(doc, at) => {
                let body = doc
                    .fields
                    .as_ref()
                    .map(|f| Bytes::from(document_json(id, f.iter())))
                    .unwrap_or_default();
                (
                    doc.clone(),
                    body,
                    served.saturating_duration_since(*at),
                    Tier::Session,
                )
            }
            // An origin answer is as old as the tier that gave it was behind.
            Base::Origin(entry, t) => (
                entry.doc.clone(),
                entry.body.clone(),
                entry.age(served),
                match t {
                    OriginTier::Primary => Tier::Primary,
                    OriginTier::Replica => Tier::Replica,
                },
            ),
        };
        if matches!(base, Base::Origin(..)) && status.is_hit() {
            // The primary had moved past what the node held.
            status = CacheStatus::Expired;
        }

        let (stale_own, regression) = {
            let mut state = session.state();
            let stale_own = state.watermarks().is_stale_own(key.hash, &doc);
            if stale_own {
                tracing::info!(item = %key.id, ryw, version = doc.version.0, "stale read of the session's own write");
            }
            let regression = state.watermarks().is_regression(key.hash, &doc);
            if regression {
                tracing::info!(item = %key.id, monotonic, version = doc.version.0, "read older than one the session read");
            }
            self.checks.offer(s.experiment, tier, || {
                Sample::of(plan, id, &doc, age, state.watermarks())
            });
            state.record_read(key.hash, &doc, session.limits());
            (stale_own, regression)
        };
        if !doc.exists() {
            if negative_hit {
                self.metrics.negative_hits.inc();
            } else if matches!(base, Base::Origin(..)) {
                self.metrics.negative_misses.inc();
            }
        }
        self.metrics.read_served(
            arms,
            s.experiment,
            &ServedRead {
                tier,
                status,
                stale_own,
                regression,
                took: now.elapsed(),
            },
        );

        let body = match options.projection {
            Some(projection) => projection.cut(id, &doc),
            None => body,
        };
        let explain = options
            .explain
            .then(|| explain_fields(plan, options.projection, &doc, tier, age, strict_from_primary));
        Ok(ReadOutcome {
            doc,
            body,
            status,
            strict_from_primary,
            age,
            tier,
            explain,
        })
    }

    /// Reads `item` from the origin at or past `need`, no further behind the primary
    /// than `max_staleness`, and stores it in the cache. A miss (`absent`) is
    /// coalesced with other requests' reads of the item.
    async fn read_origin(
        &self,
        item: &ItemKey,
        need: edgecache_actors::Need,
        absent: bool,
        wait_for_replica: bool,
        max_staleness: MaxStaleness,
    ) -> Result<(Arc<CacheEntry>, OriginTier), OriginError> {
        let load = |policy| {
            let origin = self.origin.clone();
            let metrics = self.metrics.clone();
            let item = item.clone();
            async move {
                let request = ReadRequest {
                    policy,
                    min_position: need.origin_position,
                    wait_for_replica,
                    max_staleness,
                };
                let read = origin.read(item.clone(), request).await?;
                metrics.origin_read(&read);
                // A replica's copy is as old as the replica is behind.
                Ok::<_, OriginError>(CacheEntry::read(&item, read.doc, read.as_of, read.tier))
            }
        };
        if absent {
            // A request that waited on another's fill gets its entry, and the tier it
            // came from with it (strict fields of a replica's answer are read again).
            let loaded_here = std::cell::Cell::new(false);
            let fill = self
                .cache
                .fill(item, || {
                    load(TierPolicy::AtLeast).inspect(|r| loaded_here.set(r.is_ok()))
                })
                .await;
            // Another request's load may have had a looser bound (another strict arm).
            let fresh =
                |entry: &CacheEntry| loaded_here.get() || entry.age(Instant::now()) <= max_staleness.fresh;
            match fill {
                Fill::Loaded(entry) if !entry.invalidated && need.admits(&entry.doc) && fresh(&entry) => {
                    if loaded_here.get() {
                        self.vouch(item, &entry);
                    }
                    let tier = entry.tier;
                    return Ok((entry, tier));
                }
                Fill::Loaded(_) => {}
                Fill::Failed(err) => return Err(err),
            }
        }
        let epoch = self.cache.purge_epoch();
        let entry = load(TierPolicy::AtLeast).await?;
        let entry = if need.admits(&entry.doc) || entry.tier == OriginTier::Primary {
            entry
        } else {
            load(TierPolicy::Primary).await?
        };
        self.cache.offer_read(item, entry.clone(), epoch);
        self.vouch(item, &entry);
        let tier = entry.tier;
        Ok((entry, tier))
    }

    /// Vouches for `entry` of `item`, just offered to the cache, if the change feed
    /// can ([`CacheEntry::vouch_if`]): it had applied nothing past the entry's
    /// position, or (an entry read from a replica behind it) no change to the item
    /// it applied committed after that position.
    fn vouch(&self, item: &ItemKey, entry: &CacheEntry) {
        entry.vouch_if(self.feed_applied(), |position| {
            self.origin.unchanged_since(item, position)
        });
    }

    /// Starts the one background refresh of an item served stale, if none runs; a
    /// replica further behind than `max_staleness` is passed over for the primary.
    fn refresh_in_background(&self, plan: &CollectionPlan, id: &str, max_staleness: MaxStaleness) {
        let item = ItemKey::new(plan.name.clone(), id);
        let Some(ticket) = self.cache.claim_refresh(&item) else {
            return;
        };
        self.metrics.refreshes.inc();
        let origin = self.origin.clone();
        let cache = self.cache.clone();
        let metrics = self.metrics.clone();
        actix_web::rt::spawn(async move {
            let _ticket = ticket;
            let epoch = cache.purge_epoch();
            match origin
                .read(
                    item.clone(),
                    ReadRequest::at_least(Position(0), false, max_staleness),
                )
                .await
            {
                Ok(read) => cache.offer_read(
                    &item,
                    CacheEntry::read(&item, read.doc, read.as_of, read.tier),
                    epoch,
                ),
                Err(err) => {
                    metrics.origin_errors.inc();
                    tracing::warn!(cause = %err, item = %item, "background refresh failed");
                }
            }
        });
    }
}

/// The age a soft-purged entry is judged at: just past the tightest of its classes'
/// fresh windows, so it is served only within stale-while-revalidate, while one
/// refresh runs (or not at all, for a class without that window).
fn soft_purged_age(
    plan: &CollectionPlan,
    classes: &crate::plan::Classes,
    exists: bool,
    strict: bool,
    plain: edgecache_config::Freshness,
) -> Duration {
    let fresh = if exists {
        classes.max_staleness(strict, plain).fresh
    } else {
        plan.absence_fresh_for(strict, plain)
    };
    fresh.saturating_add(Duration::from_nanos(1))
}

/// The doc a base holds.
fn base_doc(base: &Base) -> &Doc {
    match base {
        Base::Cache(entry) | Base::Origin(entry, _) => &entry.doc,
        Base::Session(doc, _) => doc,
    }
}

#[cfg(test)]
mod tests {
    //! The read path when the origin fails, over the real embedded store behind a
    //! switch that makes it refuse every call (an origin outage, which the embedded
    //! store cannot have on its own).

    use std::sync::atomic::{AtomicBool, Ordering};

    use edgecache_flags::ConfigFlags;
    use futures_util::future::BoxFuture;

    use super::*;
    use crate::origin::{Committed, EmbeddedOrigin, Origin, OriginRead, WriteError, WriteOp, WriteOpKind};

    struct Switchable {
        inner: EmbeddedOrigin,
        down: AtomicBool,
    }

    impl Switchable {
        fn check(&self) -> Result<(), OriginError> {
            if self.down.load(Ordering::SeqCst) {
                Err(OriginError::Unavailable {
                    reason: "switched off".into(),
                    source: None,
                })
            } else {
                Ok(())
            }
        }
    }

    impl Origin for Switchable {
        fn read(
            &self,
            key: ItemKey,
            request: ReadRequest,
        ) -> BoxFuture<'static, Result<OriginRead, OriginError>> {
            match self.check() {
                Ok(()) => self.inner.read(key, request),
                Err(e) => Box::pin(async move { Err(e) }),
            }
        }

        fn read_many(
            &self,
            keys: Vec<ItemKey>,
            request: ReadRequest,
        ) -> BoxFuture<'static, Result<Vec<OriginRead>, OriginError>> {
            match self.check() {
                Ok(()) => self.inner.read_many(keys, request),
                Err(e) => Box::pin(async move { Err(e) }),
            }
        }

        fn write(&self, op: WriteOp) -> BoxFuture<'static, Result<Committed, WriteError>> {
            match self.check() {
                Ok(()) => self.inner.write(op),
                Err(e) => Box::pin(async move { Err(e.into()) }),
            }
        }

        fn sweep_idempotency(
            &self,
            retention: Duration,
        ) -> BoxFuture<'static, Result<crate::origin::IdempotencySweep, OriginError>> {
            self.inner.sweep_idempotency(retention)
        }

        fn ping(&self) -> BoxFuture<'static, Result<Position, OriginError>> {
            self.inner.ping()
        }

        fn kind(&self) -> &'static str {
            "switchable"
        }
    }

    const WINDOWS: &str = r#"
[collections.notes]
freshness = { class = "relaxed", ttl = "100ms", stale_while_revalidate = "0s", stale_if_error = "1h" }
[collections.notes.fields]
text = { type = "string" }
[collections.counters]
freshness = { class = "relaxed", ttl = "100ms", stale_while_revalidate = "0s", stale_if_error = "1h" }
[collections.counters.fields]
count = { type = "integer", freshness = { class = "strict" } }
"#;

    fn node(dir: &std::path::Path) -> (Node, Arc<Switchable>) {
        let settings = edgecache_config::load(&edgecache_config::Sources {
            dir: Some("/nonexistent".into()),
            skip_env: true,
            overrides: Some(WINDOWS.into()),
            ..Default::default()
        })
        .unwrap();
        let inner = EmbeddedOrigin::open(&dir.join("db"), 1, Duration::from_millis(200)).unwrap();
        let origin = Arc::new(Switchable {
            inner,
            down: AtomicBool::new(false),
        });
        let flags = Arc::new(ConfigFlags::new(&settings.flags.defaults));
        (Node::new(&settings, origin.clone(), flags), origin)
    }

    async fn put(node: &Node, collection: &str, id: &str, fields: serde_json::Value) {
        let s = node.open_session(None, None, None).unwrap();
        let op = WriteOp {
            key: ItemKey::new(node.collection(collection).unwrap().name.clone(), id),
            if_match: None,
            kind: WriteOpKind::Put(Arc::new(fields.as_object().unwrap().clone())),
            idempotency: None,
        };
        node.write(&s, op).await.unwrap();
    }

    #[actix_rt::test]
    async fn relaxed_fields_are_served_stale_when_the_origin_fails_strict_ones_never() {
        let dir = tempfile::tempdir().unwrap();
        let (node, origin) = node(dir.path());
        put(&node, "notes", "n1", serde_json::json!({"text": "kept"})).await;
        put(&node, "counters", "c1", serde_json::json!({"count": 1})).await;
        let reader = node.open_session(None, None, None).unwrap();
        node.read(&reader, "notes", "n1", false).await.unwrap();
        node.read(&reader, "counters", "c1", false).await.unwrap();

        tokio::time::sleep(Duration::from_millis(150)).await;
        origin.down.store(true, Ordering::SeqCst);
        let s = node.open_session(None, None, None).unwrap();
        let stale = node.read(&s, "notes", "n1", false).await.unwrap();
        assert_eq!(stale.status, CacheStatus::StaleIfError);
        assert_eq!(&stale.body[..], br#"{"id":"n1","text":"kept"}"#);
        assert!(stale.age >= Duration::from_millis(150));

        let strict = node.read(&s, "counters", "c1", false).await;
        assert!(
            matches!(strict, Err(ReadError::Origin(_))),
            "a strict field is never guessed"
        );
        let never_cached = node.read(&s, "notes", "n2", false).await;
        assert!(matches!(never_cached, Err(ReadError::Origin(_))));

        origin.down.store(false, Ordering::SeqCst);
        let back = node.read(&s, "notes", "n1", false).await.unwrap();
        assert_eq!(back.status, CacheStatus::Expired);
        assert!(node.metrics().origin_errors.get() >= 3);
    }
}
