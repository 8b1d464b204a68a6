//! The edge node's data plane: sessions, the read path and the write path. The REST
//! layer is a thin shell around [`Node`]; benches call it directly.
//!
//! Split along the data's way through a node, one file each: `session` opens a
//! request's session (live, merged with its token, rebuilt, new or detached);
//! `read` serves one item (session, cache, origin; strict fields from the primary);
//! `batch` prefetches a batch's misses in one origin round trip, then reads each;
//! `write` applies a write in the session's order and keeps the idempotency store;
//! `explain` says where each field came from; `error` names why an operation failed.
//! Handlers ask [`Node`] questions; they do not reach into its origin, cache or
//! session table.

mod batch;
mod error;
mod explain;
mod purge;
mod read;
mod session;
mod write;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header::HeaderValue;
use edgecache_actors::{ItemKey, Position, SessionLimits, SessionRegistry, TokenKeys};
use edgecache_config::{Freshness, IdempotencySettings, Settings};
use edgecache_flags::{FlagContext, FlagSource, Strategy};
use secrecy::ExposeSecret;

pub use error::{ReadError, SessionError, WriteFailure};
pub use explain::FieldSource;
pub use purge::{PurgeCount, Purger};
pub use read::{ReadOptions, ReadOutcome};
pub use session::{valid_session_id, SessionCtx};

use crate::cache::SharedCache;
use crate::cache_status::{CacheStatus, CacheStatusHeaders};
use crate::consistency::ConsistencyChecks;
use crate::metrics::{Gauges, Metrics, Scrape};
use crate::origin::{Change, ChangeSink, FeedStatus, SharedOrigin};
use crate::plan::{CollectionPlan, Collections};
use crate::shutdown::Shutdown;
use crate::tags::TagIndex;

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
    /// The Cache-Status values, naming this node.
    cache_status: CacheStatusHeaders,
    region: String,
    /// The class strict fields get when the strict-fields strategy is off.
    plain: Freshness,
    write_timeout: Duration,
    /// How long after a session starts here its tokenless requests share it
    /// (`session.first_requests_window`).
    first_requests_window: Duration,
    /// How long a session copy rebuilt from a token reads through the primary
    /// (`session.handover_window`, decision 0008); `None` on a node without peers.
    handover_window: Option<Duration>,
    idempotency: IdempotencySettings,
    /// Set while the origin holds `idempotency.max_records` records or more (as of
    /// the last sweep).
    idempotency_full: AtomicBool,
    limits: ApiLimits,
    /// The signal the node's background tasks select on.
    shutdown: Shutdown,
    /// Applies purges to the cache (also those the change feed brings).
    purger: Purger,
    /// The online consistency checks of sampled reads.
    checks: ConsistencyChecks,
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

impl Node {
    /// A node over `origin`, configured by `settings`, with strategies from `flags`.
    /// It starts the origin's background tasks under the node's [`Shutdown`] and
    /// follows its change feed: an entry older than a change committed through another
    /// node is dropped.
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
        let surrogate_keys = settings
            .collections
            .iter()
            .map(|(name, c)| (name.clone(), c.surrogate_keys.clone()))
            .collect();
        let cache = SharedCache::new(
            settings.cache.capacity_bytes,
            settings.cache.estimated_items,
            settings.cache.fill_deadline,
        )
        .with_tags(TagIndex::new(surrogate_keys, settings.cache.max_tag_entries));
        let metrics = Arc::new(Metrics::default());
        let purger = Purger::new(cache.clone(), metrics.clone());
        let shutdown = Shutdown::new();
        let sink: ChangeSink = {
            let cache = cache.clone();
            let metrics = metrics.clone();
            let purger = purger.clone();
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
                Change::Purge(message) => {
                    purger.apply(&message);
                }
            })
        };
        origin.start(sink, &shutdown);
        let checks = ConsistencyChecks::start(
            &settings.flags.consistency_checks,
            origin.clone(),
            metrics.clone(),
            &shutdown,
        );
        let limits = SessionLimits {
            max_items: session.max_token_items,
            max_pending: session.max_pending_writes,
        };
        Self {
            collections: Collections::new(&settings.collections),
            origin,
            cache,
            sessions: SessionRegistry::new(session.max_live, session.idle_lease, limits)
                .with_pending_budget(session.max_pending_bytes)
                .with_retired_marks(session.retired_marks_slots),
            keys,
            flags,
            metrics,
            node_id: settings.node.id.clone(),
            cache_status: CacheStatusHeaders::new(&settings.node.id),
            region: settings.node.region.clone(),
            plain: Freshness::Relaxed {
                ttl: settings.cache.plain_ttl,
                stale_while_revalidate: Duration::ZERO,
                stale_if_error: Duration::ZERO,
            },
            write_timeout: session.write_timeout,
            first_requests_window: session.first_requests_window,
            handover_window: (!settings.cluster.peers.is_empty() && !session.handover_window.is_zero())
                .then_some(session.handover_window),
            idempotency: settings.idempotency.clone(),
            idempotency_full: AtomicBool::new(false),
            shutdown,
            purger,
            checks,
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
                change_feed: self.origin.change_feed(),
            },
        }
    }

    // The node's parts, for start-up, tests and benches; handlers ask the narrow
    // questions below and above instead.

    /// The session table.
    pub fn sessions(&self) -> &SessionRegistry {
        &self.sessions
    }

    /// The origin.
    pub fn origin(&self) -> &SharedOrigin {
        &self.origin
    }

    /// The shared cache.
    pub fn cache(&self) -> &SharedCache {
        &self.cache
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The `Cache-Status` header of a read served as `status` (`strict`: its strict
    /// fields came from the primary), naming this node.
    pub fn cache_status_header(&self, status: CacheStatus, strict: bool) -> HeaderValue {
        self.cache_status.get(status, strict)
    }

    /// [`Node::cache_status_header`] with `extra` in its `detail` (a projection).
    pub fn cache_status_header_with(&self, status: CacheStatus, strict: bool, extra: &str) -> HeaderValue {
        self.cache_status.with_detail(status, strict, extra)
    }

    pub fn collection(&self, name: &str) -> Option<&Arc<CollectionPlan>> {
        self.collections.get(name)
    }

    /// The kind of origin the node reads and writes (`embedded`, `postgres`).
    pub fn origin_kind(&self) -> &'static str {
        self.origin.kind()
    }

    /// The origin's change feed, if it follows one (`/readyz`, metrics, tests).
    pub fn change_feed(&self) -> Option<FeedStatus> {
        self.origin.change_feed()
    }

    /// The position up to which the logical change feed has applied every change
    /// to the cache; `None` without one, and while it does not follow: a feed that
    /// reconnects clears the cache before it follows again, and an entry read in
    /// between is not vouched for.
    pub(crate) fn feed_applied(&self) -> Option<Position> {
        self.origin
            .change_feed()
            .filter(|feed| feed.following)
            .and_then(|feed| feed.applied)
    }

    /// The signal the node's background tasks select on; start-up spawns its own
    /// tasks under it.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Stops the node's background work: the flag source's poll loop, then every task
    /// under [`Node::shutdown`], waiting for them at most `within`. Returns the names
    /// of the tasks that did not end in time (aborted, and logged).
    pub async fn stop_background(&self, within: Duration) -> Vec<&'static str> {
        self.flags.stop();
        self.shutdown.stop(within).await
    }

    /// The online consistency checks (tests wait for their queue to drain).
    pub fn consistency_checks(&self) -> &ConsistencyChecks {
        &self.checks
    }

    /// Sessions live on this node now.
    pub fn live_sessions(&self) -> usize {
        self.sessions.len()
    }
}
