//! The edge node's data plane: sessions, the read path and the write path. The REST
//! layer is a thin shell around [`Node`]; benches call it directly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::MailboxError;
use bytes::Bytes;
use edgecache_actors::{
    Doc, ItemKey, KeyRef, Position, Session, SessionHandle, SessionLimits, SessionRegistry, SessionStart,
    TokenError, TokenKeys, Write, WriteTicket, Written,
};
use edgecache_config::{Freshness, IdempotencySettings, Settings};
use edgecache_flags::{FlagContext, FlagSource, Strategies, Strategy};
use futures_util::future::FutureExt;
use secrecy::ExposeSecret;
use tokio::time::Instant;

use crate::cache::{document_json, CacheEntry, Fill, SharedCache};
use crate::freshness::Verdict;
use crate::metrics::{CellId, Gauges, Metrics, Scrape, ServedRead};
use crate::origin::{
    Change, Committed, Idempotency, MaxStaleness, OriginError, OriginTier, ReadRequest, SharedOrigin,
    TierPolicy, WriteError, WriteOp,
};
use crate::plan::{CollectionPlan, Collections};
use crate::{CacheStatus, Tier};

/// One edge node's data plane. Shared by every worker (`Arc<Node>`).
pub struct Node {
    collections: Collections,
    origin: SharedOrigin,
    cache: SharedCache,
    sessions: SessionRegistry,
    keys: TokenKeys,
    flags: Arc<dyn FlagSource>,
    metrics: Arc<Metrics>,
    node_id: String,
    region: String,
    /// The class strict fields get when the strict-fields strategy is off.
    plain: Freshness,
    write_timeout: Duration,
    idempotency: IdempotencySettings,
    /// Set while the origin holds `idempotency.max_records` records or more (as of
    /// the last sweep).
    idempotency_full: AtomicBool,
    limits: ApiLimits,
}

/// Bounds of what one request may carry.
#[derive(Debug, Clone, Copy)]
pub struct ApiLimits {
    pub max_id_bytes: usize,
    pub max_batch: usize,
    pub max_body_bytes: usize,
    /// Longest `X-User-Id` a session is opened with.
    pub max_user_id_bytes: usize,
    /// Most bytes of request headers (names and values).
    pub max_header_bytes: usize,
}

/// A request's session: its state, its actor when live, its strategy arms, and how it
/// was found.
pub struct SessionCtx {
    /// The state the request reads and records into, and whose token answers it.
    pub session: Arc<Session>,
    /// The session's actor and table entry; `None` for a session minted for a request
    /// that named none, which becomes live only when it writes.
    live: Option<SessionHandle>,
    pub strategies: Strategies,
    pub start: SessionStart,
    /// Where the request's reads are counted: the experiment cell of `strategies`.
    pub experiment: CellId,
}

impl SessionCtx {
    pub fn id(&self) -> &str {
        self.session.id()
    }

    /// Whether the session is in the node's table (a named one is; an anonymous
    /// request's is not until it writes).
    pub fn is_live(&self) -> bool {
        self.live.is_some()
    }
}

impl Drop for SessionCtx {
    fn drop(&mut self) {
        if let Some(live) = &self.live {
            live.release();
        }
    }
}

/// Why a request's session could not be opened (400).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the session id must be 1 to 64 characters of A-Z, a-z, 0-9, '-' and '_'")]
    InvalidId,
    #[error("a session token was sent without a session id")]
    TokenWithoutSession,
    /// The session would keep the user id: it is bounded like every string it holds.
    #[error("the user id must be at most {max} bytes")]
    UserIdTooLong { max: usize },
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// A read that could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("unknown collection `{0}`")]
    UnknownCollection(String),
    /// The origin failed and nothing the node holds may stand in (503).
    #[error("the origin could not serve the read")]
    Origin(#[from] OriginError),
}

/// A write that was not acknowledged. Only [`WriteFailure::OutcomeUnknown`] and
/// [`WriteError::OutcomeUnknown`] leave open whether it was applied; every other
/// failure means it provably was not.
#[derive(Debug, thiserror::Error)]
pub enum WriteFailure {
    #[error("unknown collection `{0}`")]
    UnknownCollection(String),
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The write did not start within the write timeout (the session's earlier
    /// writes were still running), or the session stopped before its turn: it never
    /// started and never will.
    #[error("the session's earlier writes did not finish in time")]
    SessionBusy,
    /// The write started and did not finish within the write timeout, or the session
    /// stopped while it ran: it goes on, and may or may not commit.
    #[error("the write started and did not finish in time")]
    OutcomeUnknown,
    /// The origin holds `idempotency.max_records` records: a keyed write is refused
    /// before it starts.
    #[error("the idempotency store is full")]
    IdempotencyFull,
}

/// Where one field of a response came from (`?explain=true`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct FieldSource {
    pub field: String,
    pub class: &'static str,
    pub tier: &'static str,
    pub version: u64,
    pub age_ms: u64,
}

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

/// What the non-strict fields of a read come from.
enum Base {
    Cache(Arc<CacheEntry>),
    Session(Doc, Instant),
    Origin(Arc<CacheEntry>, OriginTier),
}

impl Node {
    /// A node over `origin`, configured by `settings`, with strategies from `flags`.
    /// It follows the origin's change feed: an entry older than a change committed
    /// through another node is dropped.
    pub fn new(settings: &Settings, origin: SharedOrigin, flags: Arc<dyn FlagSource>) -> Self {
        let session = &settings.session;
        let keys = TokenKeys::new(
            session
                .keys
                .iter()
                .map(|k| (k.id.as_str(), k.secret.expose_secret().as_bytes())),
            &session.active_key,
        )
        .expect("validated: the active key is among the keys");
        let cache = SharedCache::new(
            settings.cache.capacity_bytes,
            settings.cache.estimated_items,
            settings.cache.fill_deadline,
        );
        let metrics = Arc::new(Metrics::default());
        origin.subscribe({
            let cache = cache.clone();
            let metrics = metrics.clone();
            Arc::new(move |change| match change {
                Change::Item {
                    collection,
                    id,
                    version,
                } => {
                    if cache.invalidate_older(&ItemKey::new(collection.into(), &id), version) {
                        metrics.invalidations.inc();
                    }
                }
                Change::Reset => {
                    tracing::warn!("the change feed may have missed changes; clearing the cache");
                    cache.clear();
                }
            })
        });
        let limits = SessionLimits {
            max_items: session.max_token_items,
            max_pending: session.max_pending_writes,
        };
        Self {
            collections: Collections::new(&settings.collections),
            origin,
            cache,
            sessions: SessionRegistry::new(session.max_live, session.idle_lease, limits)
                .with_pending_budget(session.max_pending_bytes),
            keys,
            flags,
            metrics,
            node_id: settings.node.id.clone(),
            region: settings.node.region.clone(),
            plain: Freshness::Relaxed {
                ttl: settings.cache.plain_ttl,
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
            },
            write_timeout: session.write_timeout,
            idempotency: settings.idempotency.clone(),
            idempotency_full: AtomicBool::new(false),
            limits: ApiLimits {
                max_id_bytes: settings.api.max_id_bytes,
                max_batch: settings.api.max_batch,
                max_body_bytes: settings.server.max_body_bytes,
                max_user_id_bytes: settings.api.max_user_id_bytes,
                max_header_bytes: settings.api.max_header_bytes,
            },
        }
    }

    /// Whether session affinity is on for this session (forwarding to its owner).
    pub fn affinity_on(&self, session_id: &str, user_id: &str) -> bool {
        let ctx = FlagContext {
            session_id,
            user_id,
            node: &self.node_id,
            region: &self.region,
        };
        self.flags.arm(Strategy::SessionAffinity, &ctx).enabled
    }

    /// Where the strategy flags come from now (`/readyz`).
    pub fn flag_status(&self) -> Option<String> {
        self.flags.status()
    }

    pub fn limits(&self) -> ApiLimits {
        self.limits
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The node's counters and gauges as of now, for `/metrics`.
    pub fn scrape(&self) -> Scrape {
        let (cache_entries, cache_bytes) = self.cache.usage();
        Scrape {
            metrics: self.metrics.clone(),
            gauges: Gauges {
                live_sessions: self.sessions.len(),
                cache_entries,
                cache_bytes,
            },
        }
    }

    pub fn sessions(&self) -> &SessionRegistry {
        &self.sessions
    }

    pub fn origin(&self) -> &SharedOrigin {
        &self.origin
    }

    pub fn cache(&self) -> &SharedCache {
        &self.cache
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    pub fn collection(&self, name: &str) -> Option<&Arc<CollectionPlan>> {
        self.collections.get(name)
    }

    /// Opens the request's session: the live one (taking in a newer token), else one
    /// rebuilt from the token, else a new one; a request with no session id gets a
    /// new id. Then evaluates its strategies. A user id longer than
    /// `api.max_user_id_bytes` opens nothing: the session would keep it.
    ///
    /// A session id is a name anyone may send; a token is what a request proves with
    /// that it holds the session. A request that names a live session without a token
    /// of its lineage ([`edgecache_actors::Lineage`]: none, or one issued to another
    /// holder of the name) is served by a detached session of its own, from its token
    /// if any: it sees none of the live session's marks (nor, through `Cache-Status`,
    /// their effect), adds nothing to them, and its answer's token carries only what
    /// it did itself. Clients that send their tokens keep every guarantee; one that
    /// sends none has nothing to carry guarantees with from request to request.
    pub fn open_session(
        &self,
        session_id: Option<&str>,
        user_id: Option<&str>,
        token: Option<&str>,
    ) -> Result<SessionCtx, SessionError> {
        let max = self.limits.max_user_id_bytes;
        if user_id.is_some_and(|user| user.len() > max) {
            return Err(SessionError::UserIdTooLong { max });
        }
        let (session, live, start) = match session_id {
            Some(id) if valid_session_id(id) => {
                let (handle, start) = self.open_named(id, token)?;
                (handle.session.clone(), Some(handle), start)
            }
            Some(_) => return Err(SessionError::InvalidId),
            None if token.is_some() => return Err(SessionError::TokenWithoutSession),
            // Nothing to look up or keep: the session lives in this request (and in
            // the token it answers with) until it writes.
            None => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                (self.sessions.anonymous(&id), None, SessionStart::New)
            }
        };
        match start {
            SessionStart::Rebuilt => self.metrics.sessions_rebuilt.inc(),
            SessionStart::New => self.metrics.sessions_new.inc(),
            SessionStart::Detached => self.metrics.sessions_detached.inc(),
            SessionStart::Live => {}
        }
        session.touch();
        // Evaluated once per session while the flags and the user stay the same.
        let generation = self.flags.generation();
        let kept = session.state().strategies(generation, user_id);
        let strategies = match kept {
            Some(strategies) => strategies,
            None => {
                let strategies = self.flags.strategies(&FlagContext {
                    session_id: session.id(),
                    user_id: user_id.unwrap_or(session.id()),
                    node: &self.node_id,
                    region: &self.region,
                });
                session.state().keep_strategies(generation, user_id, strategies);
                strategies
            }
        };
        let experiment =
            self.metrics
                .experiments
                .session_seen(session.id(), &strategies, session.counted_in());
        Ok(SessionCtx {
            session,
            live,
            strategies,
            start,
            experiment,
        })
    }

    /// The named session `id`: the live one (taking in a newer token), else one
    /// rebuilt from the token, else a new one, live in the table.
    fn open_named(
        &self,
        id: &str,
        token: Option<&str>,
    ) -> Result<(SessionHandle, SessionStart), SessionError> {
        Ok(match (self.sessions.get(id), token) {
            // No token of the live session: a session of its own, so the request
            // learns nothing of the live one's marks.
            (Some(_), None) => (self.sessions.detached(id, None), SessionStart::Detached),
            (Some(live), Some(token)) => self.take_in(id, live, token, None)?,
            (None, token) => {
                let carried = token.map(|t| self.keys.verify(id, t)).transpose()?;
                let (handle, start) = self.sessions.open(id, carried.as_ref());
                match (start, token, carried) {
                    // Rebuilt from this token: remembered, so it is not merged again.
                    (SessionStart::Rebuilt, Some(token), Some(carried)) => {
                        handle.session.state().merge_token(
                            token,
                            &carried.watermarks,
                            self.sessions.limits(),
                        );
                        (handle, start)
                    }
                    // A parallel request of the session opened it first, from its own
                    // token: this one's is taken in all the same, if of its lineage.
                    (SessionStart::Live, Some(token), Some(carried)) => {
                        self.take_in(id, handle, token, Some(carried))?
                    }
                    (SessionStart::Live, None, _) => {
                        (self.sessions.detached(id, None), SessionStart::Detached)
                    }
                    _ => (handle, start),
                }
            }
        })
    }

    /// A request's `token` for the `live` session `id` (`carried`: what it carries,
    /// if already verified): taken in when it is of the session's lineage (or is the
    /// last one issued or taken in), else the request gets a detached session of its
    /// own, from its token.
    fn take_in(
        &self,
        id: &str,
        live: SessionHandle,
        token: &str,
        carried: Option<edgecache_actors::Carried>,
    ) -> Result<(SessionHandle, SessionStart), SessionError> {
        let mut state = live.session.state();
        if state.contains(token) {
            drop(state);
            return Ok((live, SessionStart::Live));
        }
        let carried = match carried {
            Some(carried) => carried,
            None => self.keys.verify(id, token)?,
        };
        if carried.lineage == Some(state.lineage()) {
            state.merge_token(token, &carried.watermarks, self.sessions.limits());
            drop(state);
            return Ok((live, SessionStart::Live));
        }
        drop(state);
        Ok((self.sessions.detached(id, Some(&carried)), SessionStart::Detached))
    }

    /// The token to send back: the session's current watermarks, signed.
    pub fn token(&self, s: &SessionCtx) -> Bytes {
        s.session.state().token(s.id(), &self.keys)
    }

    /// Reads one item for the session, under its guarantees and the item's freshness
    /// classes.
    #[tracing::instrument(level = "debug", skip(self, s), fields(session_id = %s.id()))]
    pub async fn read(
        &self,
        s: &SessionCtx,
        collection: &str,
        id: &str,
        explain: bool,
    ) -> Result<ReadOutcome, ReadError> {
        let plan = self
            .collections
            .get(collection)
            .ok_or_else(|| ReadError::UnknownCollection(collection.to_owned()))?;
        let key = KeyRef::new(&plan.name, id);
        let arms = &s.strategies;
        let ryw = arms.is_on(Strategy::ReadYourWrites);
        let monotonic = arms.is_on(Strategy::MonotonicReads);
        let swr = arms.is_on(Strategy::StaleWhileRevalidate);
        let strict = arms.is_on(Strategy::StrictFields);
        let session = &s.session;
        let now = Instant::now();

        let need = session.state().need(key.hash, ryw, monotonic);
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
            if need.admits(&entry.doc) {
                match plan.verdict(entry.age(now), swr, strict, self.plain) {
                    Verdict::Fresh => {
                        status = CacheStatus::Hit;
                        base = Some(Base::Cache(entry.clone()));
                    }
                    Verdict::Revalidate => {
                        status = CacheStatus::Stale;
                        base = Some(Base::Cache(entry.clone()));
                        self.refresh_in_background(plan, id, plan.max_staleness(strict, self.plain));
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
                    && plan.verdict(age, false, strict, self.plain) == Verdict::Fresh
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
                let max_staleness = plan.max_staleness(strict, self.plain);
                match self.read_origin(&item, need, absent, wait, max_staleness).await {
                    Ok((entry, tier)) => Base::Origin(entry, tier),
                    Err(err) => {
                        self.metrics.origin_errors.inc();
                        let usable = fallback
                            .filter(|f| plan.usable_on_error(f.age(now)) && !(strict && plan.has_strict()));
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
        let read_strict =
            strict && plan.has_strict() && !matches!(base, Base::Origin(_, OriginTier::Primary));
        if read_strict {
            let item = ItemKey::new(plan.name.clone(), id);
            let request = ReadRequest::PRIMARY;
            let read = self
                .origin
                .read(item.clone(), request)
                .await
                .inspect_err(|_| self.metrics.origin_errors.inc())?;
            self.metrics.strict_reads.inc();
            if read.doc.version == base_doc(&base).version {
                strict_from_primary = true;
            } else {
                let entry = CacheEntry::new(&item, read.doc, read.as_of);
                self.cache.offer(&item, entry.clone());
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
            state.record_read(key.hash, &doc, session.limits());
            (stale_own, regression)
        };
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

        let explain = explain.then(|| explain_fields(plan, &doc, tier, age, strict_from_primary));
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
                    let tier = entry.tier;
                    return Ok((entry, tier));
                }
                Fill::Loaded(_) => {}
                Fill::Failed(err) => return Err(err),
            }
        }
        let entry = load(TierPolicy::AtLeast).await?;
        let entry = if need.admits(&entry.doc) || entry.tier == OriginTier::Primary {
            entry
        } else {
            load(TierPolicy::Primary).await?
        };
        self.cache.offer(item, entry.clone());
        let tier = entry.tier;
        Ok((entry, tier))
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
            match origin
                .read(
                    item.clone(),
                    ReadRequest::at_least(Position(0), false, max_staleness),
                )
                .await
            {
                Ok(read) => cache.offer(&item, CacheEntry::read(&item, read.doc, read.as_of, read.tier)),
                Err(err) => {
                    metrics.origin_errors.inc();
                    tracing::warn!(cause = %err, item = %item, "background refresh failed");
                }
            }
        });
    }

    /// Reads several items; a missing one comes back with `fields: None`. Items the
    /// cache lacks are fetched in one origin round trip first.
    pub async fn read_batch(
        &self,
        s: &SessionCtx,
        collection: &str,
        ids: &[String],
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
            let request = ReadRequest::at_least(Position(0), false, plan.max_staleness(strict, self.plain));
            match self.origin.read_many(absent.clone(), request).await {
                Ok(reads) => {
                    for (item, read) in absent.iter().zip(reads) {
                        self.cache
                            .offer(item, CacheEntry::read(item, read.doc, read.as_of, read.tier));
                    }
                }
                // Each read below retries on its own and reports its own failure.
                Err(err) => tracing::warn!(cause = %err, "batch prefetch failed"),
            }
        }
        let reads = ids.iter().map(|id| self.read(s, collection, id, false));
        futures_util::future::join_all(reads).await.into_iter().collect()
    }

    /// The idempotency binding of a write: the client's `key` and the request's
    /// `fingerprint`, with the configured retention and in-flight wait.
    pub fn idempotency(&self, key: String, fingerprint: [u8; 32]) -> Idempotency {
        Idempotency {
            key,
            fingerprint,
            retention: self.idempotency.retention,
            in_flight_wait: self.idempotency.in_flight_wait,
        }
    }

    /// The longest `Idempotency-Key` accepted.
    pub fn max_idempotency_key_bytes(&self) -> usize {
        self.idempotency.max_key_bytes
    }

    /// Sweeps the origin's expired idempotency records every `sweep_interval`, and
    /// refuses keyed writes while the rest exceed `max_records`. Runs until dropped.
    pub async fn sweep_idempotency(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.idempotency.sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.origin.sweep_idempotency(self.idempotency.retention).await {
                Ok(sweep) => {
                    let full = sweep.kept >= self.idempotency.max_records;
                    if full != self.idempotency_full.swap(full, Ordering::Relaxed) {
                        tracing::warn!(
                            kept = sweep.kept,
                            full,
                            "idempotency store full: keyed writes refused"
                        );
                    }
                    tracing::debug!(
                        removed = sweep.removed,
                        kept = sweep.kept,
                        "idempotency records swept"
                    );
                }
                Err(err) => tracing::warn!(cause = %err, "sweeping idempotency records failed"),
            }
        }
    }

    /// Applies one write in the session's order and returns once it is committed.
    /// The node's cache is updated with the committed item before the session's next
    /// write starts.
    ///
    /// The write waits for its turn for at most the write timeout. Given up before
    /// it started, it never starts ([`WriteFailure::SessionBusy`]: not applied); given
    /// up while it runs, it runs on to its end and is recorded in the session, and
    /// the answer is [`WriteFailure::OutcomeUnknown`].
    pub async fn write(&self, s: &SessionCtx, op: WriteOp) -> Result<Committed, WriteFailure> {
        if self.collections.get(op.key.collection()).is_none() {
            return Err(WriteFailure::UnknownCollection(op.key.collection().to_owned()));
        }
        if op.idempotency.is_some() && self.idempotency_full.load(Ordering::Relaxed) {
            return Err(WriteFailure::IdempotencyFull);
        }
        let key = op.key.clone();
        let origin = self.origin.clone();
        let cache = self.cache.clone();
        let start = Box::new(move || {
            async move {
                let key = op.key.clone();
                let committed = origin.write(op).await?;
                // A replay is the outcome of an earlier write: its value is as old as
                // that write, so it is neither cached as fresh nor kept as the
                // session's own value; it only raises the watermarks.
                let mut bytes = 0;
                if !committed.replayed {
                    let entry = CacheEntry::new(&key, committed.doc.clone(), Instant::now());
                    bytes = entry.body.len();
                    cache.offer(&key, entry);
                }
                Ok::<_, WriteError>(Written {
                    key,
                    doc: committed.doc,
                    own_value: !committed.replayed,
                    bytes,
                    extra: (committed.created, committed.replayed),
                })
            }
            .boxed_local()
        });
        // An actor that stopped since the look-up (evicted, passivated) is revived
        // first. Once sent, a write is never sent again: a lost answer could hide a
        // commit, and an increment must not apply twice.
        let handle = match &s.live {
            Some(live) if live.addr.connected() && !live.session.is_retired() => live.clone(),
            Some(stopped) => self.sessions.revive(stopped.session.clone()),
            // An anonymous request's session becomes live with its first write.
            None => self.sessions.adopt(s.session.clone()),
        };
        // A detached session revived here serves this write only.
        let _revived = Released(handle.clone());
        let ticket = WriteTicket::new();
        let sent = handle
            .addr
            .send(Write {
                start,
                ticket: ticket.clone(),
            })
            .timeout(self.write_timeout)
            .await;
        let (doc, (created, replayed)) = match sent {
            Ok(Some(Ok(written))) => written,
            Ok(Some(Err(err))) => {
                if matches!(err, WriteError::OutcomeUnknown(_)) {
                    self.metrics.writes_unknown.inc();
                }
                return Err(err.into());
            }
            // Only a ticket given up on is dropped unstarted, and this one was not.
            Ok(None) => return Err(WriteFailure::SessionBusy),
            Err(MailboxError::Timeout | MailboxError::Closed) if ticket.abandon() => {
                self.metrics.writes_not_started.inc();
                return Err(WriteFailure::SessionBusy);
            }
            Err(MailboxError::Timeout | MailboxError::Closed) => {
                self.metrics.writes_unknown.inc();
                return Err(WriteFailure::OutcomeUnknown);
            }
        };
        if !Arc::ptr_eq(&handle.session, &s.session) {
            // The write ran on a revived session; the answer's token is signed from
            // the request's, which must hold the write too (its watermark; the value
            // is kept by the revived session).
            let written = Written {
                key,
                doc: doc.clone(),
                own_value: false,
                bytes: 0,
                extra: (),
            };
            s.session.state().record_write(&written, s.session.limits());
        }
        if replayed {
            self.metrics.writes_replayed.inc();
        } else {
            self.metrics.writes.inc();
        }
        Ok(Committed {
            doc,
            created,
            replayed,
        })
    }
}

/// Ends a detached session when dropped ([`edgecache_actors::LiveSession::release`]);
/// a kept one stays live. (The request's own detached session is released once more
/// by its [`SessionCtx`], which changes nothing.)
struct Released(SessionHandle);

impl Drop for Released {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// The doc a base holds.
fn base_doc(base: &Base) -> &Doc {
    match base {
        Base::Cache(entry) | Base::Origin(entry, _) => &entry.doc,
        Base::Session(doc, _) => doc,
    }
}

fn explain_fields(
    plan: &CollectionPlan,
    doc: &Doc,
    tier: Tier,
    age: Duration,
    strict_from_primary: bool,
) -> Vec<FieldSource> {
    let Some(fields) = &doc.fields else {
        return Vec::new();
    };
    fields
        .keys()
        .map(|name| {
            let class = plan.class_of(name);
            let from_primary = strict_from_primary && class == Freshness::Strict;
            FieldSource {
                field: name.clone(),
                class: class.as_str(),
                tier: if from_primary {
                    Tier::Primary.as_str()
                } else {
                    tier.as_str()
                },
                version: doc.version.0,
                age_ms: if from_primary { 0 } else { age.as_millis() as u64 },
            }
        })
        .collect()
}

/// Session ids: 1 to 64 characters of `[A-Za-z0-9_-]`.
pub fn valid_session_id(id: &str) -> bool {
    (1..=edgecache_actors::MAX_SESSION_ID_BYTES).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    //! The read path when the origin fails, over the real embedded store behind a
    //! switch that makes it refuse every call (an origin outage, which the embedded
    //! store cannot have on its own).

    use std::sync::atomic::{AtomicBool, Ordering};

    use edgecache_actors::Position;
    use edgecache_flags::ConfigFlags;
    use futures_util::future::BoxFuture;

    use super::*;
    use crate::origin::{EmbeddedOrigin, Origin, OriginRead, WriteOpKind};

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
