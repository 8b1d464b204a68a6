//! The typed configuration of an edge node. Every field is documented where it is
//! declared; `edgecache check-config` prints the effective values.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use edgecache_flags::{Rollout, Strategy};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::schema::Collection;
use crate::secret::redacted;

/// Everything an edge node is configured with.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub node: NodeSettings,
    pub origin: OriginSettings,
    pub cache: CacheSettings,
    pub session: SessionSettings,
    /// `Idempotency-Key` records: how long they are kept and their bounds.
    #[serde(default)]
    pub idempotency: IdempotencySettings,
    pub api: ApiSettings,
    /// The other edge nodes of this node's group (session affinity); none by default.
    #[serde(default)]
    pub cluster: ClusterSettings,
    pub flags: FlagSettings,
    /// The admin API (`/admin/...`): disabled unless a token is set.
    #[serde(default)]
    pub admin: AdminSettings,
    /// The data model: collection name → its fields and their freshness classes.
    pub collections: BTreeMap<String, Collection>,
    /// Documents written into a fresh store (one with no commit yet), per collection.
    #[serde(default)]
    pub seed: BTreeMap<String, BTreeMap<String, serde_json::Map<String, serde_json::Value>>>,
}

/// The HTTP listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// Largest request body accepted, in bytes; a larger one is answered 413.
    pub max_body_bytes: usize,
    /// How long a graceful shutdown waits for in-flight requests.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// How often a background task pings the origin for `/readyz`, which answers from
    /// the last ping (never querying the origin itself); a ping is bounded by this
    /// interval (at most 5 s).
    #[serde(default = "default_readiness_interval", with = "humantime_serde")]
    pub readiness_interval: Duration,
}

fn default_readiness_interval() -> Duration {
    Duration::from_secs(1)
}

/// Who this node is: its id names it to its peers (session ownership, forwarding
/// proofs) and, with its region, to the flags (Unleash context).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// This node's id, unique in the deployment.
    pub id: String,
    /// The region this node serves.
    pub region: String,
}

/// The origin: where data lives durably.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OriginSettings {
    /// SQLite in WAL mode in one file, shareable by several node processes on a host.
    Embedded {
        /// The database file; created with its tables (and the seed) when absent.
        path: PathBuf,
        /// Connections used for reads (writes use one connection of their own).
        read_connections: usize,
        /// How long a statement waits for SQLite's lock before the origin counts as
        /// unavailable (503).
        #[serde(with = "humantime_serde")]
        busy_timeout: Duration,
    },
    /// PostgreSQL: writes and strict reads on the primary, other reads on the
    /// regional streaming replicas when they have replayed the session's position.
    Postgres(PostgresSettings),
}

/// The PostgreSQL origin.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSettings {
    /// The primary's connection URL (`postgres://user:password@host:port/db`).
    #[serde(serialize_with = "redacted")]
    pub primary: SecretString,
    /// This region's hot-standby replicas; none means every read goes to the primary.
    #[serde(default, serialize_with = "redacted")]
    pub replicas: Vec<SecretString>,
    /// Connections per server (the primary and each replica). 16 by measurement
    /// (`scripts/write-bench.sh`, 32 sessions writing on a 2-core machine): 8 and 16
    /// wrote alike, 32 slower with a worse p99 (more backends than cores contend).
    /// A write holds one connection for one round trip (three when keyed).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// How long connecting, or waiting for a pooled connection, may take.
    #[serde(default = "default_pg_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Server-side `statement_timeout` of every statement.
    #[serde(default = "default_pg_timeout", with = "humantime_serde")]
    pub statement_timeout: Duration,
    /// The replica-wait budget: how long a read waits for a replica to replay the
    /// session's position before it reads the primary instead.
    #[serde(default = "default_replica_wait", with = "humantime_serde")]
    pub replica_wait: Duration,
    /// A replica further behind the primary than this leaves the rotation until it
    /// catches up (so does one that does not answer).
    #[serde(default = "default_replica_max_lag", with = "humantime_serde")]
    pub replica_max_lag: Duration,
    /// How often each replica's replay position and lag are sampled.
    #[serde(default = "default_health_interval", with = "humantime_serde")]
    pub health_interval: Duration,
    /// How this node learns of changes committed by any writer (another node,
    /// psql, a batch job): `logical` (the default) follows the primary's logical
    /// replication stream; `notify` is the earlier LISTEN/NOTIFY feed, in which only
    /// edgecache's own writes notify (and pay for it at commit), kept so the
    /// benchmark can compare the two; `off` follows nothing: other writers' changes
    /// then show when entries expire. All nodes of a deployment use the same one.
    #[serde(default)]
    pub change_feed: ChangeFeed,
    /// The publication `edgecache migrate` creates for the logical feed (every
    /// collection's table is added to it).
    #[serde(default = "default_publication")]
    pub publication: String,
    /// The LISTEN/NOTIFY channel of the `notify` feed.
    #[serde(default = "default_channel")]
    pub notify_channel: String,
}

/// The change feed a node follows (`origin.change_feed`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeFeed {
    /// Logical replication (pgoutput) from the primary, on a temporary slot per
    /// node: every writer's changes, no cost inside the writing transaction.
    #[default]
    Logical,
    /// LISTEN/NOTIFY: edgecache's writes notify inside their transactions.
    Notify,
    /// No feed: entries live out their freshness class.
    Off,
}

impl ChangeFeed {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeFeed::Logical => "logical",
            ChangeFeed::Notify => "notify",
            ChangeFeed::Off => "off",
        }
    }
}

fn default_first_requests_window() -> Duration {
    Duration::from_secs(2)
}

fn default_handover_window() -> Duration {
    Duration::from_secs(5)
}

fn default_retired_marks_slots() -> usize {
    1 << 17
}

fn default_max_pending_bytes() -> u64 {
    64 * 1024 * 1024
}

fn default_pool_size() -> usize {
    16
}

fn default_pg_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_replica_wait() -> Duration {
    Duration::from_millis(500)
}

fn default_replica_max_lag() -> Duration {
    Duration::from_secs(5)
}

fn default_health_interval() -> Duration {
    Duration::from_millis(100)
}

fn default_publication() -> String {
    "edgecache".to_owned()
}

fn default_channel() -> String {
    "edgecache_changes".to_owned()
}

/// The shared, byte-weighted document cache of the node.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Capacity in bytes of cached documents (their JSON size plus overhead).
    pub capacity_bytes: u64,
    /// Expected number of cached items (sizes the cache's tables).
    pub estimated_items: usize,
    /// TTL of the plain edge cache: how long an entry is served to a session with the
    /// strict-fields strategy off, for its strict fields.
    #[serde(with = "humantime_serde")]
    pub plain_ttl: Duration,
    /// How long a read waits on another request's fetch of the same key (coalescing)
    /// before it reads the origin itself.
    #[serde(with = "humantime_serde")]
    pub fill_deadline: Duration,
    /// Most (tag, item) pairs the tag index of the cache keeps for purges by tag
    /// (`collections.*.surrogate_keys`). Past it, items of a collection are cached
    /// without their tags, and a purge by tag drops (or marks) that whole collection:
    /// more than asked, never less.
    #[serde(default = "default_max_tag_entries")]
    pub max_tag_entries: usize,
}

fn default_max_tag_entries() -> usize {
    1_000_000
}

/// Sessions: tokens, live actors and their bounds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SessionSettings {
    /// A session actor with no request for this long is passivated (its state lives
    /// on in the token the client holds).
    #[serde(with = "humantime_serde")]
    pub idle_lease: Duration,
    /// Most live session actors on this node; past it the table evicts a cold one
    /// (quick_cache's S3-FIFO policy, not strictly the least recently used).
    pub max_live: usize,
    /// Most written values a session keeps to answer its own reads.
    pub max_pending_writes: usize,
    /// Most bytes of such values all sessions of the node keep together; a value
    /// past it is not kept (the session's next read of the item goes to the cache or
    /// the origin instead: never stale, a little slower).
    #[serde(default = "default_max_pending_bytes")]
    pub max_pending_bytes: u64,
    /// Slots of the table that keeps what retired copies of sessions recorded, so a
    /// copy rebuilt from an older token (parallel requests of one session while it
    /// was evicted) never asks less of a source: 24 bytes each.
    /// Smaller only raises needs by collisions (extra origin reads), never lowers one.
    #[serde(default = "default_retired_marks_slots")]
    pub retired_marks_slots: usize,
    /// How long after a session starts on a node its requests without a token share
    /// it, until one sends a token back: a client's first requests, sent in parallel
    /// before any answer brought a token. Past it (or once a token came back) such a
    /// request gets a detached session of its own (docs/decisions/0008).
    #[serde(default = "default_first_requests_window", with = "humantime_serde")]
    pub first_requests_window: Duration,
    /// How long a session copy rebuilt from a token on a node with peers checks its
    /// reads against the primary: the copy on the node the session came from may
    /// still be answering requests with marks this copy lacks. At least the longest a
    /// request runs; 0 turns it off (docs/decisions/0008).
    #[serde(default = "default_handover_window", with = "humantime_serde")]
    pub handover_window: Duration,
    /// Most per-item watermarks a token carries before it compacts to a position
    /// floor (more conservative: an extra origin read, never a stale one).
    pub max_token_items: usize,
    /// How long a write waits for the session's earlier writes (its mailbox).
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// The key id tokens are signed with; must name one of `keys`.
    pub active_key: String,
    /// Token signing keys. Tokens signed with any listed key are accepted, so a key
    /// can be rotated by adding the new one, making it active, then removing the old.
    pub keys: Vec<TokenKey>,
}

/// One HMAC-SHA256 token key.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenKey {
    /// Short id carried in every token (1 to 16 characters: letters, digits, `-`, `_`).
    pub id: String,
    /// The secret, at least 32 bytes.
    #[serde(serialize_with = "redacted")]
    pub secret: SecretString,
}

/// The peers of this node, for session affinity: the owner of a session is chosen by
/// rendezvous hashing of its id over this node and the healthy peers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// Peer node id → its `host:port` (this node is not listed).
    pub peers: BTreeMap<String, String>,
    /// How often each peer's `/healthz` is checked.
    #[serde(with = "humantime_serde")]
    pub health_interval: Duration,
    /// How long a health check or a forwarded request may take before it counts as
    /// a failure.
    #[serde(with = "humantime_serde")]
    pub health_timeout: Duration,
    /// Consecutive failures that take a peer out (the circuit opens); one success
    /// puts it back.
    pub failure_threshold: u32,
    /// How long a forwarded request may take in all.
    #[serde(with = "humantime_serde")]
    pub forward_timeout: Duration,
    /// The secrets node-to-node calls are authenticated with (`/cluster/...` and
    /// forwarded requests carry an HMAC-SHA256 proof made with one of them): every
    /// node of the group accepts a proof made with any listed secret, so a secret is
    /// rotated like a token key — add the new one everywhere, make it active
    /// everywhere, then remove the old. Required when `peers` is not empty; each at
    /// least 32 bytes. Better set by `EDGECACHE__CLUSTER__SECRETS='[{id="c1",secret="…"}]'`
    /// than in a file.
    pub secrets: Vec<ClusterSecret>,
    /// The id of the secret this node signs with; must name one of `secrets`. May be
    /// left out when `secrets` holds exactly one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_secret: Option<String>,
}

/// One cluster secret (HMAC-SHA256 key of node-to-node proofs).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSecret {
    /// Short id carried in every proof (1 to 16 characters: letters, digits, `-`, `_`).
    pub id: String,
    /// The secret, at least 32 bytes, the same on every node of the group.
    #[serde(serialize_with = "redacted")]
    pub secret: SecretString,
}

impl ClusterSettings {
    /// The secret this node signs its calls to peers with: the one `active_secret`
    /// names, or the only one; `None` without secrets (validation makes sure a node
    /// with peers has one).
    pub fn active(&self) -> Option<&ClusterSecret> {
        match &self.active_secret {
            Some(id) => self.secrets.iter().find(|s| s.id == *id),
            None if self.secrets.len() == 1 => self.secrets.first(),
            None => None,
        }
    }
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            peers: BTreeMap::new(),
            health_interval: Duration::from_millis(500),
            health_timeout: Duration::from_millis(300),
            failure_threshold: 2,
            forward_timeout: Duration::from_secs(5),
            secrets: Vec::new(),
            active_secret: None,
        }
    }
}

/// `Idempotency-Key` on writes: the origin keeps each key's outcome, written in the
/// write's own transaction, for `retention`; the same request with the same key in
/// that time is answered from the record, on any node.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdempotencySettings {
    /// How long a key's record is kept; a client's retries must fall within it.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Longest key, in bytes (visible ASCII); a longer one is answered 400.
    pub max_key_bytes: usize,
    /// Most records kept; while the origin holds more (counted at each sweep), writes
    /// with a key are refused before they start (503), never applied unrecorded.
    pub max_records: u64,
    /// How often expired records are deleted (and the rest counted).
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// How long a write waits for a write with the same key that is still running
    /// (then answered 409 `idempotency-key-in-flight`). On PostgreSQL it also bounds
    /// the wait for the item's row lock.
    #[serde(with = "humantime_serde")]
    pub in_flight_wait: Duration,
}

impl Default for IdempotencySettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(24 * 3600),
            max_key_bytes: 255,
            max_records: 10_000_000,
            sweep_interval: Duration::from_secs(60),
            in_flight_wait: Duration::from_secs(2),
        }
    }
}

/// Limits of the REST API.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSettings {
    /// Longest item id, in bytes. Ids are 1..=max characters of `[A-Za-z0-9_.:-]`.
    pub max_id_bytes: usize,
    /// Most ids in one `batch-get`.
    pub max_batch: usize,
    /// Longest `X-User-Id`, in bytes: a live session keeps the user its strategies
    /// were evaluated for, so the header is bounded like every string a session holds
    /// (a longer one is answered 400 `user-id-too-long`, and no session is opened).
    pub max_user_id_bytes: usize,
    /// Most bytes of a request's headers (names and values together); more is
    /// answered 431 `headers-too-large` before anything reads them.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
}

fn default_max_header_bytes() -> usize {
    16 * 1024
}

/// Strategy flags.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlagSettings {
    /// Rollout of each strategy when no flag server says otherwise: `on`, `off` or a
    /// percentage of sessions (`"50%"`), sticky per session id. Unnamed ones are on.
    #[serde(default)]
    pub defaults: BTreeMap<Strategy, Rollout>,
    /// The Unleash server whose flags the node follows (`url`, `client_token`,
    /// `app_name`, `instance_id`, `refresh_interval`, `request_timeout`,
    /// `bootstrap_file`); absent, strategies come from `defaults` only. Until the first
    /// fetch the bootstrap file's flags apply, else `defaults`; during an outage the
    /// last fetched flags; a strategy Unleash has no flag for follows its default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unleash: Option<edgecache_flags::UnleashSettings>,
    /// Online consistency checks: a sample of the session reads served from the cache
    /// or a replica is read again from the primary in the background and judged
    /// against the session's needs at serve time, per strategy flag and arm.
    #[serde(default)]
    pub consistency_checks: ConsistencyCheckSettings,
}

/// The online consistency checks (`edgecache_consistency_checks_total`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsistencyCheckSettings {
    /// The fraction of session reads served from the cache or a replica that are
    /// checked, in every arm alike (0 to 1; 0.01, the default, is 1 %; 0 turns the
    /// checks off and costs the read path one comparison). The checker reads the
    /// versions of the samples that arrive within 20 ms of each other (up to 256) in
    /// one primary read.
    pub sample: f64,
    /// Most checks waiting for their primary read; a sampled read that finds the queue
    /// full is counted `skipped` and never waits.
    pub queue: usize,
    /// Primary reads (each a batch of samples) the checker runs at once.
    pub concurrency: usize,
}

impl Default for ConsistencyCheckSettings {
    fn default() -> Self {
        Self {
            sample: 0.01,
            queue: 1024,
            concurrency: 4,
        }
    }
}

/// The operator routes: the admin API (`GET /admin/experiments`,
/// `GET /admin/dashboard`) and `/metrics`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// The bearer token every `/admin/...` request must carry
    /// (`Authorization: Bearer <token>`; at least 32 characters of `A-Z a-z 0-9 - . _ ~
    /// + /`, optionally ending in `=`), compared in constant time. Absent, the admin
    /// routes answer 404: the admin API is disabled. Better set by
    /// `EDGECACHE__ADMIN__TOKEN` than in a file.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "redacted")]
    pub token: Option<SecretString>,
    /// The bearer token `GET /metrics` must carry (same rules as `token`; a scraper
    /// gets its own, not the admin token). Absent, `/metrics` is open to whoever
    /// reaches the node's port. Better set by `EDGECACHE__ADMIN__METRICS_TOKEN`.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "redacted")]
    pub metrics_token: Option<SecretString>,
    /// How often the node takes a snapshot of its counters for the charts of
    /// `GET /admin/dashboard`.
    #[serde(with = "humantime_serde")]
    pub dashboard_interval: Duration,
    /// How far back the dashboard's charts go: the snapshot ring keeps
    /// `dashboard_history / dashboard_interval` snapshots (at most 10,000).
    #[serde(with = "humantime_serde")]
    pub dashboard_history: Duration,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            token: None,
            metrics_token: None,
            dashboard_interval: Duration::from_secs(10),
            dashboard_history: Duration::from_secs(3600),
        }
    }
}
