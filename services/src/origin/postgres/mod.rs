//! The PostgreSQL origin: writes and strict reads on the primary, other reads on the
//! region's hot-standby replicas, gated by the session's position (a WAL LSN).
//!
//! * A write's position is read after its commit returned, at or after the commit
//!   record, so any server that replayed it shows the write: `pg_current_wal_lsn()`
//!   (what is written out) — or, in a session with `synchronous_commit = off`, whose
//!   commits return before their record is written, `pg_current_wal_insert_lsn()`
//!   ([`COMMITTED_LSN`]).
//! * A read's position is the server's LSN read *before* the row, in an earlier
//!   statement (`pg_current_wal_lsn()` on the primary, `pg_last_wal_replay_lsn()` on
//!   a replica): the row's snapshot is taken later, so it reflects at least that
//!   position. The position never overstates what a read shows.
//! * A replica read is used only when the replica has replayed the position the read
//!   needs; otherwise the read waits (polling the replica) within the replica-wait
//!   budget, then reads the primary.
//!
//! All database work runs on a small runtime of the origin's own, so connections do
//! not belong to any HTTP worker.

mod feed;
mod idempotency;
mod jsonb;
mod replicas;
mod table;
mod write;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use edgecache_actors::{Doc, ItemKey, Position, Version};
use edgecache_config::{ChangeFeed, PostgresSettings, Settings};
use futures_util::future::BoxFuture;
use postgres_protocol::escape::escape_identifier;
use secrecy::ExposeSecret;
use tokio::time::Instant;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{PgLsn, ToSql};
use tokio_postgres::{Config, NoTls};

use self::feed::FeedProgress;
use self::replicas::{Replica, Replicas};
use self::table::{Stored, TableDef};
use crate::shutdown::Shutdown;

use super::{
    ChangeSink, Committed, FeedStatus, IdempotencySweep, Origin, OriginError, OriginRead, OriginTier,
    ReadRequest, ReplicaWait, TierPolicy, WriteError, WriteOp, WriteOpKind,
};

/// The advisory lock that serialises migrations ("edgecach" in ASCII).
const MIGRATION_LOCK: i64 = 0x6564_6765_6361_6368;

/// How often a read waiting for a replica asks it again.
const REPLICA_POLL: Duration = Duration::from_millis(5);

struct Inner {
    primary: Pool,
    primary_config: Config,
    replicas: Arc<Replicas>,
    tables: HashMap<Arc<str>, TableDef>,
    replica_wait: Duration,
    channel: String,
    change_feed: ChangeFeed,
    publication: String,
    /// The slot names of this node's logical feed start with it.
    slot_prefix: String,
    connect_timeout: Duration,
    feed: Arc<FeedProgress>,
    /// How often the replica sampler looks, and the lag past which a replica leaves
    /// the rotation.
    health_interval: Duration,
    replica_max_lag: Duration,
}

/// A PostgreSQL primary and its replicas. Cheap to clone.
#[derive(Clone)]
pub struct PostgresOrigin {
    inner: Arc<Inner>,
    runtime: Arc<OriginRuntime>,
}

/// The origin's own runtime, shut down without blocking when the origin is dropped
/// (it may be dropped inside another runtime).
struct OriginRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OriginRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl OriginRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("runtime lives until drop").handle()
    }
}

fn server_config(url: &str, pg: &PostgresSettings) -> Result<Config, OriginError> {
    let mut config = Config::from_str(url).map_err(|e| OriginError::internal("invalid PostgreSQL URL", e))?;
    config
        .application_name("edgecache")
        .connect_timeout(pg.connect_timeout)
        .options(format!(
            "-c statement_timeout={}",
            pg.statement_timeout.as_millis()
        ));
    Ok(config)
}

fn pool(config: Config, pg: &PostgresSettings) -> Result<Pool, OriginError> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(pg.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(pg.connect_timeout))
        .create_timeout(Some(pg.connect_timeout))
        .recycle_timeout(Some(pg.connect_timeout))
        .build()
        .map_err(|e| OriginError::internal("cannot build the connection pool", e))
}

/// Maps a PostgreSQL error: the server being unreachable, shutting down, overloaded
/// or cancelling a statement is `Unavailable`; anything else is `Internal`.
fn pg_error(context: &str, e: tokio_postgres::Error) -> OriginError {
    let unavailable = match e.code() {
        None => true,
        Some(code) => {
            let class = &code.code()[..2];
            code == &SqlState::QUERY_CANCELED
                || code == &SqlState::LOCK_NOT_AVAILABLE
                || code == &SqlState::T_R_SERIALIZATION_FAILURE
                || code == &SqlState::T_R_DEADLOCK_DETECTED
                || matches!(class, "08" | "53" | "57" | "58")
        }
    };
    if unavailable {
        OriginError::unavailable(context.to_owned(), e)
    } else {
        OriginError::internal(context.to_owned(), e)
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> OriginError {
    OriginError::unavailable("no connection to PostgreSQL", e)
}

impl PostgresOrigin {
    /// Connects lazily to the primary and replicas of `pg` (nothing is dialled until
    /// the first use), for the collections of `settings`. The replica sampler and the
    /// change feed start with [`Origin::start`]; until then no replica is in rotation.
    pub fn open(settings: &Settings, pg: &PostgresSettings) -> Result<Self, OriginError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("edgecache-origin")
            .enable_all()
            .build()
            .map_err(|e| OriginError::internal("cannot start the origin runtime", e))?;
        let runtime = Arc::new(OriginRuntime(Some(runtime)));
        let primary_config = server_config(pg.primary.expose_secret(), pg)?;
        let primary = pool(primary_config.clone(), pg)?;
        let mut all = Vec::new();
        for (i, url) in pg.replicas.iter().enumerate() {
            let config = server_config(url.expose_secret(), pg)?;
            let name = format!("replica-{i}@{}", describe(&config));
            all.push(Arc::new(Replica::new(name, pool(config, pg)?)));
        }
        let replicas = Arc::new(Replicas::new(all));
        let tables = settings
            .collections
            .iter()
            .map(|(name, collection)| {
                let def = TableDef::new(name, collection, pg.change_feed == ChangeFeed::Notify);
                (def.collection.clone(), def)
            })
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                primary,
                primary_config,
                replicas,
                tables,
                replica_wait: pg.replica_wait,
                channel: pg.notify_channel.clone(),
                change_feed: pg.change_feed,
                publication: pg.publication.clone(),
                slot_prefix: feed::logical::slot_prefix(&settings.node.id),
                connect_timeout: pg.connect_timeout,
                feed: Arc::new(FeedProgress::default()),
                health_interval: pg.health_interval,
                replica_max_lag: pg.replica_max_lag,
            }),
            runtime,
        })
    }

    /// Creates the tables of the configured collections (adding missing columns)
    /// with the trigger that versions every writer's rows ([`TableDef::trigger`]),
    /// and the publication of those tables that the logical change feed follows
    /// (created if missing; tables are only ever added to it, as several
    /// deployments may share one), and writes the seed documents if every table is empty. Returns whether it
    /// seeded.
    pub async fn migrate(&self, settings: &Settings) -> Result<bool, OriginError> {
        let inner = self.inner.clone();
        let seed = settings.seed.clone();
        let migrated = self
            .run(async move {
                let mut client = inner.primary.get().await.map_err(pool_error)?;
                let failed = |e| pg_error("migration failed", e);
                // Concurrent migrations (several nodes starting at once) would race on
                // CREATE TABLE IF NOT EXISTS: one at a time, under an advisory lock.
                let tx = client.transaction().await.map_err(failed)?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                    .await
                    .map_err(failed)?;
                for statement in idempotency::CREATE {
                    tx.batch_execute(statement).await.map_err(failed)?;
                }
                let mut empty = true;
                for def in inner.tables.values() {
                    for statement in def.create().iter().chain(&def.trigger()) {
                        tx.batch_execute(statement).await.map_err(failed)?;
                    }
                    let row = tx.query_one(&def.is_empty_sql(), &[]).await.map_err(failed)?;
                    empty &= row.get::<_, bool>(0);
                }
                let publication = escape_identifier(&inner.publication);
                let exists = tx
                    .query_opt(
                        "SELECT 1 FROM pg_publication WHERE pubname = $1",
                        &[&inner.publication],
                    )
                    .await
                    .map_err(failed)?;
                if exists.is_none() {
                    tx.batch_execute(&format!("CREATE PUBLICATION {publication}"))
                        .await
                        .map_err(failed)?;
                }
                for def in inner.tables.values() {
                    let published = tx
                        .query_opt(
                            "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND tablename = $2 \
                             AND schemaname = current_schema()",
                            &[&inner.publication, &def.table_name],
                        )
                        .await
                        .map_err(failed)?;
                    if published.is_none() {
                        let add = format!(
                            "ALTER PUBLICATION {publication} ADD TABLE {}",
                            escape_identifier(&def.table_name)
                        );
                        tx.batch_execute(&add).await.map_err(failed)?;
                    }
                }
                tx.commit().await.map_err(failed)?;
                Ok::<_, OriginError>(empty)
            })
            .await??;
        if !migrated {
            return Ok(false);
        }
        for (collection, docs) in &seed {
            let Some(def) = self.inner.tables.get(collection.as_str()) else {
                continue;
            };
            for (id, fields) in docs {
                let op = WriteOp {
                    key: ItemKey::new(def.collection.clone(), id),
                    if_match: None,
                    kind: WriteOpKind::Put(Arc::new(fields.clone())),
                    idempotency: None,
                };
                self.write(op).await.map_err(|e| match e {
                    WriteError::Origin(e) => e,
                    other => OriginError::Internal {
                        reason: format!("seeding {collection}/{id}: {other}"),
                        source: None,
                    },
                })?;
            }
        }
        Ok(true)
    }

    /// Runs `work` on the origin's runtime.
    fn run<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> BoxFuture<'static, Result<T, OriginError>> {
        let task = self.runtime.handle().spawn(work);
        Box::pin(async move {
            task.await
                .map_err(|e| OriginError::internal("origin task failed", e))
        })
    }
}

/// The table of `key`'s collection.
fn table<'a>(inner: &'a Inner, key: &ItemKey) -> Result<&'a TableDef, OriginError> {
    inner
        .tables
        .get(key.collection())
        .ok_or_else(|| OriginError::Internal {
            reason: format!("no table for collection {}", key.collection()),
            source: None,
        })
}

fn describe(config: &Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_default();
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// Reads `id` and, first, the position the read reflects at least.
async fn read_at(
    client: &deadpool_postgres::Client,
    lsn_sql: &str,
    def: &TableDef,
    id: &str,
) -> Result<(Position, Stored), OriginError> {
    let lsn = client.prepare_cached(lsn_sql);
    let select = client.prepare_cached(&def.select);
    let (lsn, select) = futures_util::try_join!(lsn, select).map_err(|e| pg_error("read failed", e))?;
    // Both go out in this order on one connection: the LSN is read before the row's
    // snapshot is taken.
    let params: [&(dyn ToSql + Sync); 1] = [&id];
    let (position, row) =
        futures_util::try_join!(client.query_one(&lsn, &[]), client.query_opt(&select, &params))
            .map_err(|e| pg_error("read failed", e))?;
    let position = position
        .try_get::<_, Option<PgLsn>>(0)
        .map_err(|e| OriginError::internal("unreadable LSN", e))?
        .map_or(Position(0), |l| Position(u64::from(l)));
    let stored = match row {
        Some(row) => def.stored(&row, 0)?,
        None => Stored {
            version: Version(0),
            fields: None,
        },
    };
    Ok((position, stored))
}

const PRIMARY_LSN: &str = "SELECT pg_current_wal_lsn()";
/// The position of a commit that returned in this session: past its commit record.
/// A synchronous commit (`local` and up) returns once its record is written, so what
/// is written out is past it. An asynchronous one (`synchronous_commit = off`)
/// returns before, and then only the insert position is: it may name the first data
/// byte of a page where a replica reports the page's start, and then no replica
/// reaches it before the next record — an extra primary read, never a stale one.
const COMMITTED_LSN: &str = "SELECT CASE WHEN current_setting('synchronous_commit') = 'off' \
     THEN pg_current_wal_insert_lsn() ELSE pg_current_wal_lsn() END";
const REPLAY_LSN: &str = "SELECT pg_last_wal_replay_lsn()";

fn doc(position: Position, stored: Stored) -> Doc {
    Doc {
        version: stored.version,
        position,
        fields: stored.fields.map(Arc::new),
    }
}

async fn read_primary(inner: &Inner, def: &TableDef, id: &str) -> Result<OriginRead, OriginError> {
    let client = inner.primary.get().await.map_err(pool_error)?;
    // The row's snapshot is taken after this instant.
    let as_of = Instant::now();
    let (position, stored) = read_at(&client, PRIMARY_LSN, def, id).await?;
    Ok(OriginRead {
        doc: doc(position, stored),
        tier: OriginTier::Primary,
        as_of,
        replica_wait: None,
    })
}

/// How old a read's answer is now.
fn age(read: &OriginRead) -> Duration {
    Instant::now().saturating_duration_since(read.as_of)
}

/// Reads from a replica no further behind the primary than `max_staleness` that has
/// replayed `request.min_position`, waiting for one within the budget if asked;
/// `None` means: read the primary. The answer may have aged past `max_staleness`
/// while it was read: the caller looks.
async fn read_replica(
    inner: &Inner,
    def: &TableDef,
    id: &str,
    request: ReadRequest,
    max_staleness: Duration,
) -> Result<Option<OriginRead>, ReplicaWait> {
    let Some(replica) = inner.replicas.pick(request.min_position, max_staleness) else {
        return Err(ReplicaWait {
            waited: Duration::ZERO,
            fell_back: false,
        });
    };
    let started = Instant::now();
    let budget = if request.wait_for_replica {
        inner.replica_wait
    } else {
        Duration::ZERO
    };
    let client = match replica.pool.get().await {
        Ok(client) => client,
        Err(_) => {
            replica.trip();
            return Ok(None);
        }
    };
    let mut waited = None;
    loop {
        // Taken before the read: the replica has replayed at least what it had when
        // this was sampled, so the answer shows the primary as of then or later.
        let Some(as_of) = replica.as_of() else {
            return Ok(None);
        };
        match read_at(&client, REPLAY_LSN, def, id).await {
            Ok((position, stored)) if position >= request.min_position => {
                replica.saw(position);
                return Ok(Some(OriginRead {
                    doc: doc(position, stored),
                    tier: OriginTier::Replica,
                    as_of,
                    replica_wait: waited.map(|waited| ReplicaWait {
                        waited,
                        fell_back: false,
                    }),
                }));
            }
            Ok((position, _)) => {
                replica.saw(position);
                let elapsed = started.elapsed();
                if elapsed >= budget {
                    return Err(ReplicaWait {
                        waited: elapsed,
                        fell_back: request.wait_for_replica,
                    });
                }
                waited = Some(elapsed);
                tokio::time::sleep(REPLICA_POLL.min(budget - elapsed)).await;
            }
            Err(e) => {
                tracing::warn!(replica = %replica.name, cause = %e, "replica read failed");
                replica.trip();
                return Ok(None);
            }
        }
    }
}

impl Origin for PostgresOrigin {
    fn read(
        &self,
        key: ItemKey,
        request: ReadRequest,
    ) -> BoxFuture<'static, Result<OriginRead, OriginError>> {
        let inner = self.inner.clone();
        let run = self.run(async move {
            let def = table(&inner, &key)?;
            if request.policy == TierPolicy::Primary {
                return read_primary(&inner, def, key.id()).await;
            }
            // A replica within the fresh bound serves; past it, the primary does.
            let bound = request.max_staleness;
            let mut late = None;
            let mut wait = None;
            match read_replica(&inner, def, key.id(), request, bound.fresh).await {
                Ok(Some(read)) if age(&read) <= bound.fresh => return Ok(read),
                Ok(Some(read)) => late = Some(read),
                Ok(None) => {}
                Err(w) => wait = Some(w).filter(|w| w.fell_back),
            }
            match read_primary(&inner, def, key.id()).await {
                Ok(mut read) => {
                    read.replica_wait = wait;
                    Ok(read)
                }
                // The primary cannot answer: a replica within the on-error bound stands
                // in (its answer is as old as the replica is behind, which grows while
                // the primary is down).
                Err(err @ OriginError::Unavailable { .. }) => {
                    let stand_in = match late {
                        Some(read) => Some(read),
                        None => read_replica(&inner, def, key.id(), request, bound.on_error)
                            .await
                            .ok()
                            .flatten(),
                    };
                    match stand_in.filter(|read| age(read) <= bound.on_error) {
                        Some(read) => {
                            tracing::debug!(cause = %err, item = %key, "primary unavailable; a replica stands in");
                            Ok(read)
                        }
                        None => Err(err),
                    }
                }
                Err(err) => Err(err),
            }
        });
        Box::pin(async move { run.await? })
    }

    fn read_many(
        &self,
        keys: Vec<ItemKey>,
        request: ReadRequest,
    ) -> BoxFuture<'static, Result<Vec<OriginRead>, OriginError>> {
        // Batches are prefetches: each key in its own read keeps the tier logic in one
        // place, and they run concurrently on the origin's pools.
        let reads: Vec<_> = keys.into_iter().map(|key| self.read(key, request)).collect();
        Box::pin(async move { futures_util::future::try_join_all(reads).await })
    }

    /// One `= ANY($1)` query per collection on one primary connection.
    fn versions(&self, keys: Vec<ItemKey>) -> BoxFuture<'static, Result<Vec<Version>, OriginError>> {
        let inner = self.inner.clone();
        let run = self.run(async move {
            let mut versions = vec![Version(0); keys.len()];
            if keys.is_empty() {
                return Ok(versions);
            }
            let client = inner.primary.get().await.map_err(pool_error)?;
            let mut groups: HashMap<&str, Vec<usize>> = HashMap::new();
            for (i, key) in keys.iter().enumerate() {
                groups.entry(key.collection()).or_default().push(i);
            }
            for at in groups.into_values() {
                let def = table(&inner, &keys[at[0]])?;
                let statement = client
                    .prepare_cached(&def.versions)
                    .await
                    .map_err(|e| pg_error("version read failed", e))?;
                let ids: Vec<&str> = at.iter().map(|&i| keys[i].id()).collect();
                let rows = client
                    .query(&statement, &[&ids])
                    .await
                    .map_err(|e| pg_error("version read failed", e))?;
                let mut found = HashMap::with_capacity(rows.len());
                for row in &rows {
                    let bad = |e| OriginError::internal(format!("unreadable row in {}", def.table_name), e);
                    let id: String = row.try_get(0).map_err(bad)?;
                    let version: i64 = row.try_get(1).map_err(bad)?;
                    found.insert(id, Version(version.max(0) as u64));
                }
                for i in at {
                    if let Some(version) = found.get(keys[i].id()) {
                        versions[i] = *version;
                    }
                }
            }
            Ok(versions)
        });
        Box::pin(async move { run.await? })
    }

    fn write(&self, op: WriteOp) -> BoxFuture<'static, Result<Committed, WriteError>> {
        let inner = self.inner.clone();
        let run = self.run(async move { write::write(&inner, op).await });
        Box::pin(async move { run.await? })
    }

    fn sweep_idempotency(
        &self,
        retention: Duration,
    ) -> BoxFuture<'static, Result<IdempotencySweep, OriginError>> {
        let inner = self.inner.clone();
        let run = self.run(async move {
            let client = inner.primary.get().await.map_err(pool_error)?;
            idempotency::sweep(&client, retention).await
        });
        Box::pin(async move { run.await? })
    }

    fn ping(&self) -> BoxFuture<'static, Result<Position, OriginError>> {
        let inner = self.inner.clone();
        let run = self.run(async move {
            let client = inner.primary.get().await.map_err(pool_error)?;
            primary_lsn(&client).await
        });
        Box::pin(async move { run.await? })
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }

    /// Publishes `message` on the change feed through the primary, so that every node
    /// following it receives it, also nodes outside this one's cluster: a logical
    /// decoding message with prefix `edgecache` (the `logical` feed), or a NOTIFY on
    /// the channel (the `notify` feed). `false`: no feed to publish on.
    fn publish(&self, message: String) -> BoxFuture<'static, Result<bool, OriginError>> {
        let inner = self.inner.clone();
        let run = self.run(async move {
            let (sql, channel_or_prefix) = match inner.change_feed {
                ChangeFeed::Logical => (
                    "SELECT pg_logical_emit_message(false, $1::text, $2::text)::text",
                    feed::message::PREFIX,
                ),
                ChangeFeed::Notify => ("SELECT pg_notify($1, $2)::text", inner.channel.as_str()),
                ChangeFeed::Off => return Ok(false),
            };
            let client = inner.primary.get().await.map_err(pool_error)?;
            client
                .execute(sql, &[&channel_or_prefix, &message])
                .await
                .map_err(|e| pg_error("publishing on the change feed", e))?;
            Ok(true)
        });
        Box::pin(async move { run.await? })
    }

    fn start(&self, sink: ChangeSink, shutdown: &Shutdown) {
        let inner = &self.inner;
        if !inner.replicas.all.is_empty() {
            let sampler = replicas::sample(
                inner.primary.clone(),
                inner.replicas.clone(),
                inner.health_interval,
                inner.replica_max_lag,
            );
            shutdown.spawn_on(self.runtime.handle(), "replica sampler", sampler);
        }
        match inner.change_feed {
            ChangeFeed::Logical => {
                let stream = feed::logical::Stream {
                    primary: inner.primary_config.clone(),
                    publication: inner.publication.clone(),
                    slot_prefix: inner.slot_prefix.clone(),
                    watched: inner
                        .tables
                        .values()
                        .map(|def| (def.table_name.clone(), def.watched.clone()))
                        .collect(),
                    connect_timeout: inner.connect_timeout,
                };
                let follow = feed::logical::follow(stream, sink, inner.feed.clone());
                shutdown.spawn_on(self.runtime.handle(), "change feed", follow);
            }
            ChangeFeed::Notify => {
                let follow = feed::notify::follow(
                    inner.primary_config.clone(),
                    inner.channel.clone(),
                    sink,
                    inner.feed.clone(),
                );
                shutdown.spawn_on(self.runtime.handle(), "change feed", follow);
            }
            ChangeFeed::Off => {}
        }
    }

    fn unchanged_since(&self, key: &ItemKey, position: Position) -> bool {
        self.inner.change_feed == ChangeFeed::Logical && self.inner.feed.unchanged_since(key.hash(), position)
    }

    fn change_feed(&self) -> Option<FeedStatus> {
        let inner = &self.inner;
        (inner.change_feed != ChangeFeed::Off).then(|| FeedStatus {
            kind: inner.change_feed.as_str(),
            following: inner.feed.following(),
            applied: inner.feed.applied(),
        })
    }
}

/// The primary's current WAL position.
async fn primary_lsn(client: &deadpool_postgres::Client) -> Result<Position, OriginError> {
    position(client, PRIMARY_LSN).await
}

/// A position the primary reports with `sql` ([`PRIMARY_LSN`], [`COMMITTED_LSN`]).
async fn position(client: &deadpool_postgres::Client, sql: &str) -> Result<Position, OriginError> {
    let statement = client
        .prepare_cached(sql)
        .await
        .map_err(|e| pg_error("reading the primary's position", e))?;
    let row = client
        .query_one(&statement, &[])
        .await
        .map_err(|e| pg_error("reading the primary's position", e))?;
    lsn(&row)
}

/// The LSN in the first column of `row`, as a position.
fn lsn(row: &tokio_postgres::Row) -> Result<Position, OriginError> {
    let lsn: PgLsn = row
        .try_get(0)
        .map_err(|e| OriginError::internal("unreadable LSN", e))?;
    Ok(Position(u64::from(lsn)))
}
