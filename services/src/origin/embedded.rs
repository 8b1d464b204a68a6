//! The embedded origin: one SQLite file in WAL mode, shared by every edge-node
//! process on the host.
//!
//! The file holds two tables. `meta` has a single row with the origin-wide commit
//! `position`, a counter that every commit raises by one. `items` has one row per item
//! ever written, keyed by `(collection, id)`, with its `version`, the `position` of its
//! last commit, and its JSON `doc` (`NULL` once deleted: a tombstone that keeps the
//! version, so versions never go backwards across a delete and re-create).
//!
//! A third table, `idempotency`, holds the outcome of every write that carried an
//! `Idempotency-Key`, written in the write's own transaction (see [`WriteOp`]).
//!
//! Every write is one `BEGIN IMMEDIATE` transaction that reads the item, checks and
//! applies the operation in Rust, bumps `meta.position` and upserts the row. SQLite
//! takes the write lock at `BEGIN`, across processes, so writes from every node on the
//! host are serialized and positions are dense and shared. Every read is a single
//! statement (or, for several items, one read transaction), so an item and the
//! position it is returned with always come from the same snapshot.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgecache_actors::{Doc, Fields, ItemKey, Position, Version};
use futures_util::future::BoxFuture;
use parking_lot::{Mutex, MutexGuard};
use rusqlite::{Connection, ErrorCode, OpenFlags, OptionalExtension, TransactionBehavior};
use serde_json::Value;
use tokio::sync::Semaphore;

use super::write_op::increment_within;
use super::{
    Committed, Idempotency, IdempotencySweep, Origin, OriginError, OriginRead, OriginTier, ReadRequest,
    WriteError, WriteOp, WriteOpKind,
};

/// Creates the schema if absent. Idempotent, so every process runs it at open.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    id       INTEGER PRIMARY KEY CHECK (id = 0),
    position INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (id, position) VALUES (0, 0);
CREATE TABLE IF NOT EXISTS items (
    collection TEXT NOT NULL,
    id         TEXT NOT NULL,
    version    INTEGER NOT NULL,
    position   INTEGER NOT NULL,
    doc        TEXT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    key         TEXT PRIMARY KEY,
    fingerprint BLOB NOT NULL,
    recorded_at INTEGER NOT NULL,
    created     INTEGER NOT NULL,
    version     INTEGER NOT NULL,
    position    INTEGER NOT NULL,
    doc         TEXT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_recorded_at ON idempotency (recorded_at);
";

/// The record of an idempotency key, if any.
const SELECT_RECORD: &str = "
SELECT fingerprint, recorded_at, created, version, position, doc FROM idempotency WHERE key = ?1";

/// Records (or, past its retention, replaces) the outcome of a keyed write.
const UPSERT_RECORD: &str = "
INSERT OR REPLACE INTO idempotency (key, fingerprint, recorded_at, created, version, position, doc)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/// One item and the meta position, in one statement and so one snapshot. Always
/// returns exactly one row: `version` and `doc` are `NULL` when the item has no row.
const SELECT_ITEM: &str = "
SELECT (SELECT position FROM meta WHERE id = 0), i.version, i.doc
FROM (SELECT 1) LEFT JOIN items AS i ON i.collection = ?1 AND i.id = ?2";

const SELECT_VERSION: &str = "SELECT version FROM items WHERE collection = ?1 AND id = ?2";

const SELECT_POSITION: &str = "SELECT position FROM meta WHERE id = 0";

const UPDATE_POSITION: &str = "UPDATE meta SET position = ?1 WHERE id = 0";

const UPSERT_ITEM: &str = "
INSERT INTO items (collection, id, version, position, doc) VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (collection, id) DO UPDATE
SET version = excluded.version, position = excluded.position, doc = excluded.doc";

/// A durable origin in one SQLite file, shareable by several processes on one host.
///
/// Writes go through a single writer connection, one at a time per process (a
/// one-permit semaphore queues them without holding blocking threads) and one at a
/// time per file (SQLite's write lock, waited on for up to `busy_timeout`). Reads use
/// a pool of `read_connections` connections; WAL mode lets them run alongside the
/// writer and alongside other processes. All SQLite work runs on tokio's blocking
/// pool, and a read or write only takes a blocking thread once a connection is free
/// for it.
///
/// The store has one tier: every read is served by [`OriginTier::Primary`] and
/// reflects the newest commit, so [`TierPolicy`](super::TierPolicy) is ignored.
///
/// Commits use `synchronous=FULL`: a write is acknowledged only once its WAL frame is
/// on disk, so it survives a crash or power loss.
///
/// Cloning is cheap and shares the connections.
#[derive(Clone)]
pub struct EmbeddedOrigin {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// The one connection that writes. Only locked by a holder of a `write_gate`
    /// permit, or by `seed_if_fresh` at start-up.
    writer: Mutex<Connection>,
    /// One permit: queues writers asynchronously, before they take a blocking thread.
    write_gate: Arc<Semaphore>,
    /// At least one connection; `read_gate` has exactly as many permits.
    readers: Vec<Mutex<Connection>>,
    read_gate: Arc<Semaphore>,
    /// Where the next reader starts looking for a free connection.
    next_reader: AtomicUsize,
}

impl EmbeddedOrigin {
    /// Opens the store at `path`, creating its parent directory, the file and the
    /// schema if missing, with one writer and `read_connections` readers (at least
    /// one).
    ///
    /// Every connection waits up to `busy_timeout` for a lock held by another
    /// connection or process before failing with [`OriginError::Unavailable`]. This
    /// blocks the calling thread; call it at start-up.
    ///
    /// # Errors
    ///
    /// [`OriginError::Unavailable`] if the directory or file cannot be created or
    /// opened, or stays locked; [`OriginError::Internal`] if the file is not a usable
    /// database or its file system does not support WAL mode.
    pub fn open(path: &Path, read_connections: usize, busy_timeout: Duration) -> Result<Self, OriginError> {
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|err| {
                OriginError::unavailable(format!("creating directory {}", parent.display()), err)
            })?;
        }

        let mut writer = open_connection(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
            busy_timeout,
        )?;
        enable_wal(&writer, path, busy_timeout)?;
        let tx = writer
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|err| sql_error("locking the store to create its schema", err))?;
        tx.execute_batch(SCHEMA)
            .map_err(|err| sql_error("creating the schema", err))?;
        tx.commit()
            .map_err(|err| sql_error("committing the schema", err))?;

        let readers = (0..read_connections.max(1))
            .map(|_| {
                let conn = open_connection(path, OpenFlags::SQLITE_OPEN_READ_WRITE, busy_timeout)?;
                conn.pragma_update(None, "query_only", true)
                    .map_err(|err| sql_error("setting query_only on a read connection", err))?;
                Ok(Mutex::new(conn))
            })
            .collect::<Result<Vec<_>, OriginError>>()?;

        Ok(EmbeddedOrigin {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: Mutex::new(writer),
                write_gate: Arc::new(Semaphore::new(1)),
                read_gate: Arc::new(Semaphore::new(readers.len())),
                readers,
                next_reader: AtomicUsize::new(0),
            }),
        })
    }

    /// Writes `seed` (collection → id → fields) if the store has never committed
    /// anything (its position is 0), and returns whether it did.
    ///
    /// All documents go in one transaction, each as an ordinary commit: version 1 and
    /// its own position, in collection then id order. The check runs inside a
    /// `BEGIN IMMEDIATE` transaction, so when several processes start on a fresh file
    /// at once exactly one of them seeds. An empty seed writes nothing and returns
    /// `false`. Blocks the calling thread; call it at start-up.
    ///
    /// # Errors
    ///
    /// As for a write: [`OriginError::Unavailable`] if the store stays locked or the
    /// disk fails, [`OriginError::Internal`] otherwise. Nothing is written on error.
    pub fn seed_if_fresh(
        &self,
        seed: &BTreeMap<String, BTreeMap<String, Fields>>,
    ) -> Result<bool, OriginError> {
        let mut conn = self.inner.writer.lock();
        end_stray_transaction(&conn)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|err| sql_error("locking the store to seed it", err))?;
        if read_position(&tx)? != Position(0) {
            return Ok(false);
        }
        let mut wrote = false;
        for (collection, items) in seed {
            for (id, fields) in items {
                let put = WriteOpKind::Put(Arc::new(fields.clone()));
                apply(&tx, collection, id, None, &put).map_err(|err| match err {
                    WriteError::Origin(err) => err,
                    other => OriginError::internal(format!("seeding {collection}/{id}"), other),
                })?;
                wrote = true;
            }
        }
        if !wrote {
            return Ok(false);
        }
        tx.commit().map_err(|err| sql_error("committing the seed", err))?;
        Ok(true)
    }
}

impl fmt::Debug for EmbeddedOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedOrigin")
            .field("path", &self.inner.path)
            .field("read_connections", &self.inner.readers.len())
            .finish()
    }
}

impl Origin for EmbeddedOrigin {
    /// Reads one item and the position of the same snapshot from a pooled reader.
    /// An absent item comes back with `fields: None` and version 0, or the version
    /// of its tombstone if it was deleted.
    fn read(
        &self,
        key: ItemKey,
        request: ReadRequest,
    ) -> BoxFuture<'static, Result<OriginRead, OriginError>> {
        let inner = Arc::clone(&self.inner);
        // The snapshot is taken after this instant.
        let as_of = tokio::time::Instant::now();
        Box::pin(async move {
            let (key, row) = inner
                .with_reader(move |conn| {
                    let row = read_row(conn, key.collection(), key.id())?;
                    Ok((key, row))
                })
                .await?;
            warn_if_behind(&key, row.position, &request);
            Ok(row.into_read(as_of))
        })
    }

    /// Reads every key in one read transaction, so all items reflect the same
    /// position; the result is in the order of `keys`.
    fn read_many(
        &self,
        keys: Vec<ItemKey>,
        request: ReadRequest,
    ) -> BoxFuture<'static, Result<Vec<OriginRead>, OriginError>> {
        let inner = Arc::clone(&self.inner);
        let as_of = tokio::time::Instant::now();
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let (keys, rows) = inner
                .with_reader(move |conn| {
                    let tx = conn
                        .transaction()
                        .map_err(|err| sql_error("starting a read transaction", err))?;
                    let rows = keys
                        .iter()
                        .map(|key| read_row(&tx, key.collection(), key.id()))
                        .collect::<Result<Vec<_>, _>>()?;
                    tx.commit()
                        .map_err(|err| sql_error("ending a read transaction", err))?;
                    Ok((keys, rows))
                })
                .await?;
            if let (Some(key), Some(row)) = (keys.first(), rows.first()) {
                warn_if_behind(key, row.position, &request);
            }
            Ok(rows.into_iter().map(|row| row.into_read(as_of)).collect())
        })
    }

    /// Reads only the version column of each key, in one read transaction.
    fn versions(&self, keys: Vec<ItemKey>) -> BoxFuture<'static, Result<Vec<Version>, OriginError>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            inner
                .with_reader(move |conn| {
                    let tx = conn
                        .transaction()
                        .map_err(|err| sql_error("starting a read transaction", err))?;
                    let versions = {
                        let mut stmt = tx
                            .prepare_cached(SELECT_VERSION)
                            .map_err(|err| sql_error("preparing a version read", err))?;
                        keys.iter()
                            .map(|key| {
                                let version = stmt
                                    .query_row((key.collection(), key.id()), |row| row.get::<_, i64>(0))
                                    .optional()
                                    .map_err(|err| sql_error(format!("reading the version of {key}"), err))?;
                                version.map_or(Ok(Version(0)), |v| to_u64(v, "item version").map(Version))
                            })
                            .collect::<Result<Vec<_>, _>>()?
                    };
                    tx.commit()
                        .map_err(|err| sql_error("ending a read transaction", err))?;
                    Ok(versions)
                })
                .await
        })
    }

    /// Applies `op` in one `BEGIN IMMEDIATE` transaction on the writer connection
    /// and returns once it is durably committed. On any error nothing is changed.
    fn write(&self, op: WriteOp) -> BoxFuture<'static, Result<Committed, WriteError>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            inner
                .with_writer(move |conn| write_in_transaction(conn, &op))
                .await
        })
    }

    fn sweep_idempotency(
        &self,
        retention: Duration,
    ) -> BoxFuture<'static, Result<IdempotencySweep, OriginError>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            inner
                .with_writer(move |conn| {
                    end_stray_transaction(conn)?;
                    sweep(conn, retention)
                })
                .await
        })
    }

    /// Returns the current commit position.
    fn ping(&self) -> BoxFuture<'static, Result<Position, OriginError>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { inner.with_reader(|conn| read_position(conn)).await })
    }

    fn kind(&self) -> &'static str {
        "embedded"
    }
}

impl Inner {
    /// Runs `f` on the writer connection on the blocking pool, once this process's
    /// earlier writes are done (the permit is taken before the blocking thread).
    async fn with_writer<T, E, F>(self: &Arc<Self>, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<OriginError> + Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
    {
        let permit = Arc::clone(&self.write_gate)
            .acquire_owned()
            .await
            .map_err(|err| OriginError::unavailable("the origin's writer is closed", err))?;
        let inner = Arc::clone(self);
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut conn = inner.writer.lock();
            f(&mut conn)
        });
        task.await
            .map_err(|err| OriginError::unavailable("the origin's write task failed", err))?
    }

    /// Runs `f` on a free read connection on the blocking pool. The permit is taken
    /// before the blocking thread, so waiting readers cost no threads.
    async fn with_reader<T, F>(self: &Arc<Self>, f: F) -> Result<T, OriginError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, OriginError> + Send + 'static,
    {
        let permit = Arc::clone(&self.read_gate)
            .acquire_owned()
            .await
            .map_err(|err| OriginError::unavailable("the origin's read pool is closed", err))?;
        let inner = Arc::clone(self);
        let task = tokio::task::spawn_blocking(move || {
            // Declared first, dropped last: the connection is free before the permit.
            let _permit = permit;
            let mut conn = inner.reader();
            f(&mut conn)
        });
        task.await
            .map_err(|err| OriginError::unavailable("the origin's read task failed", err))?
    }

    /// A free read connection. With a permit held one is always free; the blocking
    /// `lock` is only a fallback.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        let count = self.readers.len();
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed) % count;
        for offset in 0..count {
            if let Some(conn) = self.readers[(start + offset) % count].try_lock() {
                return conn;
            }
        }
        self.readers[start].lock()
    }
}

/// An item as read inside a snapshot.
struct Row {
    /// The meta position of the snapshot.
    position: Position,
    /// The row's version, or 0 without a row. A tombstone keeps its version.
    version: Version,
    /// `None`: no row, or a tombstone.
    fields: Option<Fields>,
}

impl Row {
    /// The read of this row, from a snapshot taken after `as_of`.
    fn into_read(self, as_of: tokio::time::Instant) -> OriginRead {
        OriginRead {
            doc: Doc {
                version: self.version,
                position: self.position,
                fields: self.fields.map(Arc::new),
            },
            tier: OriginTier::Primary,
            as_of,
            replica_wait: None,
        }
    }
}

/// Begins, applies and commits one write. The transaction rolls back when dropped
/// uncommitted, so every error path before the commit leaves the store as it was.
///
/// A keyed write whose key is recorded is answered from the record (or refused, if
/// the record is another request's) without writing. Writes are serialised by the
/// write lock, so a second request with the key of one in flight waits for it and
/// then finds its record.
fn write_in_transaction(conn: &mut Connection, op: &WriteOp) -> Result<Committed, WriteError> {
    end_stray_transaction(conn)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|err| sql_error("locking the store for a write", err))?;
    if let Some(key) = &op.idempotency {
        if let Some(replay) = recorded(&tx, key)? {
            return Ok(replay);
        }
    }
    let committed = apply(&tx, op.key.collection(), op.key.id(), op.if_match, &op.kind)?;
    if let Some(key) = &op.idempotency {
        record(&tx, key, &committed)?;
    }
    tx.commit().map_err(|err| {
        let failed = sql_error(format!("committing a write of {}", op.key), err);
        // A busy commit leaves the transaction open, and dropping it rolls back: not
        // applied. Any other failure (I/O) may have reached the file.
        match &failed {
            OriginError::Unavailable {
                source: Some(source), ..
            } if source.downcast_ref::<rusqlite::Error>().is_some_and(is_busy) => WriteError::Origin(failed),
            _ => WriteError::OutcomeUnknown(failed),
        }
    })?;
    Ok(committed)
}

/// Milliseconds since the Unix epoch (idempotency records' age; every process on the
/// host shares the clock).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The recorded outcome of `key`, if it names a write younger than its retention:
/// the outcome when the fingerprints match, [`WriteError::KeyReused`] otherwise.
fn recorded(conn: &Connection, key: &Idempotency) -> Result<Option<Committed>, WriteError> {
    let row = conn
        .prepare_cached(SELECT_RECORD)
        .and_then(|mut stmt| {
            stmt.query_row([&key.key], |row| {
                Ok((
                    row.get::<_, Vec<u8>>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, bool>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, i64>(4)?,
                    row.get::<_, Option<String>>(5)?,
                ))
            })
            .optional()
        })
        .map_err(|err| sql_error("reading an idempotency record", err))?;
    let Some((fingerprint, recorded_at, created, version, position, doc)) = row else {
        return Ok(None);
    };
    let retention = i64::try_from(key.retention.as_millis()).unwrap_or(i64::MAX);
    if recorded_at < now_ms().saturating_sub(retention) {
        return Ok(None);
    }
    if fingerprint != key.fingerprint {
        return Err(WriteError::KeyReused);
    }
    let fields = doc
        .map(|text| serde_json::from_str::<Fields>(&text))
        .transpose()
        .map_err(|err| OriginError::internal("corrupt idempotency record", err))?;
    Ok(Some(Committed {
        doc: Doc {
            version: Version(to_u64(version, "item version")?),
            position: Position(to_u64(position, "commit position")?),
            fields: fields.map(Arc::new),
        },
        created,
        replayed: true,
    }))
}

/// Records the outcome of a keyed write, in its transaction.
fn record(conn: &Connection, key: &Idempotency, committed: &Committed) -> Result<(), OriginError> {
    let doc = committed
        .doc
        .fields
        .as_deref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|err| OriginError::internal("serializing an idempotency record", err))?;
    conn.prepare_cached(UPSERT_RECORD)
        .and_then(|mut stmt| {
            stmt.execute((
                &key.key,
                &key.fingerprint[..],
                now_ms(),
                committed.created,
                to_i64(committed.doc.version.0)?,
                to_i64(committed.doc.position.0)?,
                doc,
            ))
        })
        .map_err(|err| sql_error("recording the idempotency key", err))?;
    Ok(())
}

/// Deletes the records older than `retention` and counts the rest.
fn sweep(conn: &Connection, retention: Duration) -> Result<IdempotencySweep, OriginError> {
    let retention = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    let removed = conn
        .prepare_cached("DELETE FROM idempotency WHERE recorded_at < ?1")
        .and_then(|mut stmt| stmt.execute([now_ms().saturating_sub(retention)]))
        .map_err(|err| sql_error("sweeping idempotency records", err))?;
    let kept = conn
        .prepare_cached("SELECT count(*) FROM idempotency")
        .and_then(|mut stmt| stmt.query_row([], |row| row.get::<_, i64>(0)))
        .map_err(|err| sql_error("counting idempotency records", err))?;
    Ok(IdempotencySweep {
        removed: removed as u64,
        kept: kept.max(0) as u64,
    })
}

/// Checks and applies one write inside an open write transaction: reads the item,
/// checks `if_match`, computes the new document, raises the meta position and
/// upserts the row. Writes nothing unless every check passed.
fn apply(
    conn: &Connection,
    collection: &str,
    id: &str,
    if_match: Option<Version>,
    kind: &WriteOpKind,
) -> Result<Committed, WriteError> {
    let row = read_row(conn, collection, id)?;
    let exists = row.fields.is_some();
    let current = if exists { row.version } else { Version(0) };
    if let Some(expected) = if_match {
        if expected != current {
            return Err(WriteError::VersionMismatch { expected, current });
        }
    }

    let (fields, created) = match kind {
        WriteOpKind::Put(fields) => (Some(Arc::clone(fields)), !exists),
        WriteOpKind::Patch(patch) => {
            let mut doc = row.fields.ok_or(WriteError::NotFound)?;
            merge_patch(&mut doc, patch);
            (Some(Arc::new(doc)), false)
        }
        WriteOpKind::Delete => {
            if !exists {
                return Err(WriteError::NotFound);
            }
            (None, false)
        }
        WriteOpKind::Increment { field, by, min, max } => {
            let mut doc = row.fields.ok_or(WriteError::NotFound)?;
            let value = doc
                .get(field)
                .and_then(Value::as_i64)
                .ok_or_else(|| WriteError::NotAnInteger { field: field.clone() })?;
            let value = increment_within(field, value, *by, *min, *max)?;
            doc.insert(field.clone(), Value::from(value));
            (Some(Arc::new(doc)), false)
        }
    };

    let position = next(row.position.0, "commit position")?;
    let version = next(row.version.0, "item version")?;
    let doc_text = fields
        .as_deref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|err| OriginError::internal(format!("serializing {collection}/{id}"), err))?;

    let updated = conn
        .prepare_cached(UPDATE_POSITION)
        .and_then(|mut stmt| stmt.execute([to_i64(position)?]))
        .map_err(|err| sql_error("raising the commit position", err))?;
    if updated != 1 {
        return Err(internal("the meta row is missing").into());
    }
    conn.prepare_cached(UPSERT_ITEM)
        .and_then(|mut stmt| stmt.execute((collection, id, to_i64(version)?, to_i64(position)?, doc_text)))
        .map_err(|err| sql_error(format!("writing {collection}/{id}"), err))?;

    Ok(Committed {
        doc: Doc {
            version: Version(version),
            position: Position(position),
            fields,
        },
        created,
        replayed: false,
    })
}

/// RFC 7396 merge of `patch` into `doc`: `null` removes a field, objects merge
/// recursively, anything else replaces. Top-level by hand so the patch is not cloned.
fn merge_patch(doc: &mut Fields, patch: &Fields) {
    for (name, value) in patch {
        if value.is_null() {
            doc.remove(name);
        } else {
            json_patch::merge(doc.entry(name.as_str()).or_insert(Value::Null), value);
        }
    }
}

/// Reads one item and the meta position in one statement (one snapshot).
fn read_row(conn: &Connection, collection: &str, id: &str) -> Result<Row, OriginError> {
    let (position, version, doc) = conn
        .prepare_cached(SELECT_ITEM)
        .and_then(|mut stmt| {
            stmt.query_row((collection, id), |row| {
                Ok((
                    row.get::<_, Option<i64>>(0)?,
                    row.get::<_, Option<i64>>(1)?,
                    row.get::<_, Option<String>>(2)?,
                ))
            })
        })
        .map_err(|err| sql_error(format!("reading {collection}/{id}"), err))?;
    let position = position.ok_or_else(|| internal("the meta row is missing"))?;
    let fields = doc
        .map(|text| serde_json::from_str::<Fields>(&text))
        .transpose()
        .map_err(|err| OriginError::internal(format!("corrupt document {collection}/{id}"), err))?;
    Ok(Row {
        position: Position(to_u64(position, "commit position")?),
        version: Version(version.map_or(Ok(0), |version| to_u64(version, "item version"))?),
        fields,
    })
}

/// The current meta position.
fn read_position(conn: &Connection) -> Result<Position, OriginError> {
    let position = conn
        .prepare_cached(SELECT_POSITION)
        .and_then(|mut stmt| stmt.query_row([], |row| row.get::<_, i64>(0)).optional())
        .map_err(|err| sql_error("reading the commit position", err))?
        .ok_or_else(|| internal("the meta row is missing"))?;
    Ok(Position(to_u64(position, "commit position")?))
}

/// Opens one connection with the settings every connection needs.
fn open_connection(path: &Path, flags: OpenFlags, busy_timeout: Duration) -> Result<Connection, OriginError> {
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(|err| sql_error(format!("opening {}", path.display()), err))?;
    conn.busy_timeout(busy_timeout)
        .map_err(|err| sql_error("setting busy_timeout", err))?;
    // Per connection, not stored in the file. FULL: a commit syncs the WAL first.
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|err| sql_error("setting synchronous=FULL", err))?;
    Ok(conn)
}

/// Switches the file to WAL mode (persistent, so a no-op after the first open).
/// Changing the journal mode may report busy without calling the busy handler when
/// another process opens the file at the same time, so it is retried until
/// `busy_timeout` has passed.
fn enable_wal(conn: &Connection, path: &Path, busy_timeout: Duration) -> Result<(), OriginError> {
    let deadline = Instant::now() + busy_timeout;
    loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get::<_, String>(0)) {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
            Ok(mode) => {
                return Err(internal(format!(
                    "{} cannot use WAL mode (journal_mode is {mode})",
                    path.display()
                )))
            }
            Err(err) if is_busy(&err) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(err) => return Err(sql_error("setting journal_mode=WAL", err)),
        }
    }
}

/// Rolls back a transaction a previous user of the connection left open. Cannot
/// happen through this module (every transaction is a guard that rolls back when
/// dropped), but a connection stuck in a transaction would block every other
/// process, so it is checked before each write.
fn end_stray_transaction(conn: &Connection) -> Result<(), OriginError> {
    if conn.is_autocommit() {
        return Ok(());
    }
    conn.execute_batch("ROLLBACK")
        .map_err(|err| sql_error("rolling back a stray transaction", err))
}

/// Logs a read whose snapshot is older than the request needs. With one tier nothing
/// newer exists: the position came from elsewhere (another store, a restored backup).
fn warn_if_behind(key: &ItemKey, position: Position, request: &ReadRequest) {
    if position < request.min_position {
        tracing::warn!(
            %key,
            %position,
            min_position = %request.min_position,
            "embedded origin is behind the requested position; serving its newest state"
        );
    }
}

/// Maps a SQLite error: contention and the environment (busy, locked, I/O, disk full,
/// permissions) are `Unavailable`; everything else (corruption, constraint and type
/// errors, bugs) is `Internal`.
fn sql_error(reason: impl Into<String>, err: rusqlite::Error) -> OriginError {
    let unavailable = matches!(
        err.sqlite_error_code(),
        Some(
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::DiskFull
                | ErrorCode::FileLockingProtocolFailed
                | ErrorCode::PermissionDenied
                | ErrorCode::ReadOnly
                | ErrorCode::OutOfMemory
                | ErrorCode::OperationInterrupted
        )
    );
    if unavailable {
        OriginError::unavailable(reason, err)
    } else {
        OriginError::internal(reason, err)
    }
}

fn is_busy(err: &rusqlite::Error) -> bool {
    matches!(
        err.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

fn internal(reason: impl Into<String>) -> OriginError {
    OriginError::Internal {
        reason: reason.into(),
        source: None,
    }
}

fn to_u64(value: i64, what: &str) -> Result<u64, OriginError> {
    u64::try_from(value)
        .map_err(|err| OriginError::internal(format!("negative {what} {value} in the store"), err))
}

/// Converts for binding; SQLite integers are `i64`.
fn to_i64(value: u64) -> rusqlite::Result<i64> {
    i64::try_from(value).map_err(|err| rusqlite::Error::ToSqlConversionFailure(Box::new(err)))
}

/// `value + 1`, as long as it still fits in a SQLite integer.
fn next(value: u64, what: &str) -> Result<u64, OriginError> {
    value
        .checked_add(1)
        .filter(|&next| i64::try_from(next).is_ok())
        .ok_or_else(|| internal(format!("{what} {value} cannot advance")))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use serde_json::json;
    use tempfile::TempDir;

    use super::super::TierPolicy;
    use super::*;

    type Seed = BTreeMap<String, BTreeMap<String, Fields>>;

    const ANY: ReadRequest = ReadRequest {
        policy: TierPolicy::AtLeast,
        min_position: Position(0),
        wait_for_replica: false,
        max_staleness: super::super::MaxStaleness::ANY,
    };

    fn key(collection: &str, id: &str) -> ItemKey {
        ItemKey::new(collection.into(), id)
    }

    fn fields(value: Value) -> Fields {
        match value {
            Value::Object(fields) => fields,
            other => panic!("not an object: {other}"),
        }
    }

    fn db_path(dir: &TempDir) -> PathBuf {
        dir.path().join("nested/dir/origin.db")
    }

    fn open(dir: &TempDir) -> EmbeddedOrigin {
        EmbeddedOrigin::open(&db_path(dir), 2, Duration::from_secs(10)).expect("open")
    }

    fn op(key: ItemKey, if_match: Option<Version>, kind: WriteOpKind) -> WriteOp {
        WriteOp {
            key,
            if_match,
            kind,
            idempotency: None,
        }
    }

    async fn put(origin: &EmbeddedOrigin, key: ItemKey, value: Value) -> Committed {
        let kind = WriteOpKind::Put(Arc::new(fields(value)));
        origin.write(op(key, None, kind)).await.expect("put")
    }

    fn increment(field: &str, by: i64, min: Option<i64>, max: Option<i64>) -> WriteOpKind {
        WriteOpKind::Increment {
            field: field.into(),
            by,
            min,
            max,
        }
    }

    async fn get(origin: &EmbeddedOrigin, key: ItemKey) -> Doc {
        let read = origin.read(key, ANY).await.expect("read");
        assert_eq!(read.tier, OriginTier::Primary);
        read.doc
    }

    fn body(doc: &Doc) -> Value {
        Value::Object(doc.fields.as_deref().cloned().expect("item exists"))
    }

    #[tokio::test]
    async fn put_then_read_round_trips() {
        let dir = TempDir::new().unwrap();
        let origin = open(&dir);
        assert_eq!(origin.kind(), "embedded");
        assert!(db_path(&dir).exists(), "parent directories and file created");
        assert_eq!(origin.ping().await.unwrap(), Position(0));

        let absent = get(&origin, key("products", "p1")).await;
        assert_eq!(
            absent,
            Doc {
                version: Version(0),
                position: Position(0),
                fields: None
            }
        );

        let doc = json!({"name": "kettle", "stock": 3, "tags": ["a", "b"], "dims": {"h": 1.5}});
        let committed = put(&origin, key("products", "p1"), doc.clone()).await;
        assert!(committed.created);
        assert_eq!(committed.doc.version, Version(1));
        assert_eq!(committed.doc.position, Position(1));
        assert_eq!(body(&committed.doc), doc);

        let read = get(&origin, key("products", "p1")).await;
        assert_eq!(read, committed.doc);

        let replaced = put(&origin, key("products", "p1"), json!({"name": "pot"})).await;
        assert!(!replaced.created, "replacing is not creating");
        assert_eq!(
            body(&get(&origin, key("products", "p1")).await),
            json!({"name": "pot"})
        );
    }

    /// The store keeps documents as JSON text: every double must read back bit for
    /// bit (serde_json's `float_roundtrip`; its default parse is off by an ulp for
    /// about a third of all doubles).
    #[tokio::test]
    async fn doubles_read_back_bit_for_bit() {
        let dir = TempDir::new().unwrap();
        let origin = open(&dir);
        let doubles = [
            1.0715660391465826e-75,
            -1.6039646154281832e143,
            f64::MAX,
            5e-324,
            2.2250738585072014e-308,
            -0.0,
            0.1,
        ];
        put(&origin, key("products", "d"), json!({ "price": doubles })).await;
        let read = body(&get(&origin, key("products", "d")).await);
        let bits = |v: &Value| -> Vec<u64> {
            v["price"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap().to_bits())
                .collect()
        };
        assert_eq!(bits(&read), doubles.map(f64::to_bits).to_vec());
    }

    #[tokio::test]
    async fn versions_and_positions_are_monotonic() {
        let dir = TempDir::new().unwrap();
        let origin = open(&dir);
        let mut last_position = Position(0);
        for round in 1..=5u64 {
            for id in ["a", "b"] {
                let committed = put(&origin, key("c", id), json!({"round": round})).await;
                assert_eq!(committed.doc.version, Version(round));
                assert_eq!(committed.doc.position.0, last_position.0 + 1);
                last_position = committed.doc.position;
            }
        }
        assert_eq!(origin.ping().await.unwrap(), last_position);
        // A read reflects the newest commit, not the item's own.
        let a = get(&origin, key("c", "a")).await;
        assert_eq!((a.version, a.position), (Version(5), last_position));
    }

    #[tokio::test]
    async fn if_match_mismatch_changes_nothing() {
        let dir = TempDir::new().unwrap();
        let origin = open(&dir);
        let k = key("c", "x");

        // Version(0) means "must be absent".
        let kind = WriteOpKind::Put(Arc::new(fields(json!({"v": 1}))));
        let created = origin
            .write(op(k.clone(), Some(Version(0)), kind.clone()))
            .await
            .unwrap();
        assert!(created.created);
        let before = get(&origin, k.clone()).await;

        for (if_match, kind) in [
            (Version(0), kind.clone()),
            (Version(7), kind.clone()),
            (Version(2), WriteOpKind::Patch(Arc::new(fields(json!({"v": 2}))))),
            (Version(2), WriteOpKind::Delete),
            (Version(2), increment("v", 1, None, None)),
        ] {
            match origin.write(op(k.clone(), Some(if_match), kind)).await {
                Err(WriteError::VersionMismatch { expected, current }) => {
                    assert_eq!((expected, current), (if_match, Version(1)));
                }
                other => panic!("expected a version mismatch, got {other:?}"),
            }
        }
        assert_eq!(get(&origin, k.clone()).await, before);
        assert_eq!(origin.ping().await.unwrap(), Position(1));

        let matched = origin
            .write(op(k, Some(Version(1)), increment("v", 1, None, None)))
            .await
            .unwrap();
        assert_eq!(body(&matched.doc), json!({"v": 2}));
        assert_eq!(matched.doc.version, Version(2));
    }

    #[tokio::test]
    async fn increment_checks_bounds_and_types() {
        let dir = TempDir::new().unwrap();
        let origin = open(&dir);
        let k = key("products", "p1");
        put(
            &origin,
            k.clone(),
            json!({"stock": 3, "name": "x", "price": 1.5, "big": i64::MAX}),
        )
        .await;
        let before = get(&origin, k.clone()).await;

        let cases = [
            (increment("stock", -5, Some(0), None), ("stock", 3, -5, 0)),
            (increment("stock", 8, Some(0), Some(10)), ("stock", 3, 8, 10)),
            (increment("big", 1, None, None), ("big", i64::MAX, 1, i64::MAX)),
        ];
        for (kind, (field, current, by, bound)) in cases {
            match origin.write(op(k.clone(), None, kind)).await {
                Err(WriteError::BoundCrossed {
                    field: f,
                    current: c,
                    by: b,
                    bound: n,
                }) => {
                    assert_eq!((f.as_str(), c, b, n), (field, current, by, bound));
                }
                other => panic!("expected a crossed bound, got {other:?}"),
            }
        }
        for field in ["name", "price", "missing"] {
            match origin
                .write(op(k.clone(), None, increment(field, 1, None, None)))
                .await
            {
                Err(WriteError::NotAnInteger { field: f }) => assert_eq!(f, field),
                other => panic!("expected not-an-integer, got {other:?}"),
            }
        }
        assert!(matches!(
            origin
                .write(op(
                    key("products", "nope"),
                    None,
                    increment("stock", 1, None, None)
                ))
                .await,
            Err(WriteError::NotFound)
        ));
        assert_eq!(
            get(&origin, k.clone()).await,
            before,
            "failed increments change nothing"
        );

        let done = origin
            .write(op(k.clone(), None, increment("stock", -3, Some(0), None)))
            .await
            .unwrap();
        assert_eq!(done.doc.fields.as_ref().unwrap()["stock"], json!(0));
        assert_eq!(done.doc.version, Version(2));
    }

    #[tokio::test]
    async fn patch_merges_per_rfc_7396() {
        let dir = TempDir::new().unwrap();
        let origin = open(&dir);
        let k = key("c", "x");
        put(
            &origin,
            k.clone(),
            json!({"a": 1, "b": {"x": 1, "y": 2}, "c": [1, 2], "d": "keep"}),
        )
        .await;
        let patch = json!({"a": null, "b": {"y": null, "z": {"deep": true}}, "c": [3], "e": 5, "gone": null});
        let patched = origin
            .write(op(k.clone(), None, WriteOpKind::Patch(Arc::new(fields(patch)))))
            .await
            .unwrap();
        let expected = json!({"b": {"x": 1, "z": {"deep": true}}, "c": [3], "d": "keep", "e": 5});
        assert_eq!(body(&patched.doc), expected);
        assert!(!patched.created);
        assert_eq!(body(&get(&origin, k).await), expected);

        let absent = WriteOpKind::Patch(Arc::new(fields(json!({"a": 1}))));
        assert!(matches!(
            origin.write(op(key("c", "nope"), None, absent)).await,
            Err(WriteError::NotFound)
        ));
    }

    #[tokio::test]
    async fn delete_then_recreate_keeps_versions_monotonic() {
        let dir = TempDir::new().unwrap();
        let origin = open(&dir);
        let k = key("c", "x");
        put(&origin, k.clone(), json!({"v": 1})).await;

        let deleted = origin
            .write(op(k.clone(), None, WriteOpKind::Delete))
            .await
            .unwrap();
        assert_eq!(
            deleted.doc,
            Doc {
                version: Version(2),
                position: Position(2),
                fields: None
            }
        );
        assert_eq!(
            get(&origin, k.clone()).await,
            deleted.doc,
            "tombstone keeps its version"
        );

        for kind in [
            WriteOpKind::Delete,
            WriteOpKind::Patch(Arc::new(fields(json!({"v": 2})))),
            increment("v", 1, None, None),
        ] {
            assert!(matches!(
                origin.write(op(k.clone(), None, kind)).await,
                Err(WriteError::NotFound)
            ));
        }
        // A tombstone counts as absent for If-Match.
        let stale = WriteOpKind::Put(Arc::new(fields(json!({"v": 3}))));
        assert!(matches!(
            origin.write(op(k.clone(), Some(Version(2)), stale.clone())).await,
            Err(WriteError::VersionMismatch {
                current: Version(0),
                ..
            })
        ));
        let recreated = origin
            .write(op(k.clone(), Some(Version(0)), stale))
            .await
            .unwrap();
        assert!(recreated.created);
        assert_eq!(
            (recreated.doc.version, recreated.doc.position),
            (Version(3), Position(3))
        );
    }

    #[tokio::test]
    async fn versions_are_what_whole_reads_from_the_primary_say() {
        let dir = TempDir::new().unwrap();
        let origin = open(&dir);
        put(&origin, key("c", "a"), json!({"n": "a"})).await;
        put(&origin, key("c", "a"), json!({"n": "a2"})).await;
        put(&origin, key("c", "b"), json!({"n": "b"})).await;
        put(&origin, key("d", "a"), json!({"n": "other collection"})).await;
        origin
            .write(op(key("c", "b"), None, WriteOpKind::Delete))
            .await
            .unwrap();
        let keys = vec![key("c", "missing"), key("c", "b"), key("c", "a"), key("d", "a")];
        let versions = origin.versions(keys.clone()).await.unwrap();
        let whole: Vec<Version> = origin
            .read_many(keys, ReadRequest::PRIMARY)
            .await
            .unwrap()
            .iter()
            .map(|r| r.doc.version)
            .collect();
        assert_eq!(versions, whole);
        assert_eq!(versions, [Version(0), Version(2), Version(2), Version(1)]);
        assert!(origin.versions(vec![]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn read_many_keeps_order_and_snapshot() {
        let dir = TempDir::new().unwrap();
        let origin = open(&dir);
        put(&origin, key("c", "a"), json!({"n": "a"})).await;
        put(&origin, key("c", "b"), json!({"n": "b"})).await;
        origin
            .write(op(key("c", "b"), None, WriteOpKind::Delete))
            .await
            .unwrap();

        let reads = origin
            .read_many(vec![key("c", "missing"), key("c", "b"), key("c", "a")], ANY)
            .await
            .unwrap();
        let summary: Vec<_> = reads
            .iter()
            .map(|r| (r.doc.version, r.doc.exists(), r.doc.position))
            .collect();
        assert_eq!(
            summary,
            [
                (Version(0), false, Position(3)),
                (Version(2), false, Position(3)),
                (Version(1), true, Position(3))
            ]
        );
        assert!(origin.read_many(Vec::new(), ANY).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn writes_survive_reopen() {
        let dir = TempDir::new().unwrap();
        {
            let origin = open(&dir);
            put(&origin, key("c", "x"), json!({"v": 1})).await;
            put(&origin, key("c", "x"), json!({"v": 2})).await;
        }
        let origin = open(&dir);
        assert_eq!(origin.ping().await.unwrap(), Position(2));
        let doc = get(&origin, key("c", "x")).await;
        assert_eq!((doc.version, body(&doc)), (Version(2), json!({"v": 2})));
        let next = put(&origin, key("c", "y"), json!({})).await;
        assert_eq!(next.doc.position, Position(3));
    }

    #[tokio::test]
    async fn two_instances_share_the_file() {
        let dir = TempDir::new().unwrap();
        let a = open(&dir);
        let b = open(&dir);
        put(&a, key("c", "x"), json!({"from": "a"})).await;
        assert_eq!(body(&get(&b, key("c", "x")).await), json!({"from": "a"}));

        let from_b = put(&b, key("c", "x"), json!({"from": "b"})).await;
        assert_eq!(
            (from_b.doc.version, from_b.doc.position),
            (Version(2), Position(2))
        );
        assert_eq!(get(&a, key("c", "x")).await, from_b.doc);
        assert_eq!(a.ping().await.unwrap(), Position(2));
    }

    #[tokio::test]
    async fn seed_if_fresh_writes_once() {
        let dir = TempDir::new().unwrap();
        let seed: Seed = [
            (
                "products".to_owned(),
                [("p1", json!({"stock": 5})), ("p2", json!({"stock": 1}))],
            ),
            (
                "profiles".to_owned(),
                [("u1", json!({"name": "ann"})), ("u2", json!({"name": "bo"}))],
            ),
        ]
        .into_iter()
        .map(|(collection, items)| {
            (
                collection,
                items
                    .into_iter()
                    .map(|(id, v)| (id.to_owned(), fields(v)))
                    .collect(),
            )
        })
        .collect();

        // Two "processes" start on a fresh file at once: exactly one seeds.
        let path = db_path(&dir);
        let starts: Vec<_> = (0..2)
            .map(|_| {
                let (path, seed) = (path.clone(), seed.clone());
                std::thread::spawn(move || {
                    let origin = EmbeddedOrigin::open(&path, 1, Duration::from_secs(10)).expect("open");
                    origin.seed_if_fresh(&seed).expect("seed")
                })
            })
            .collect();
        let seeded: Vec<bool> = starts.into_iter().map(|start| start.join().unwrap()).collect();
        assert_eq!(seeded.iter().filter(|&&s| s).count(), 1, "{seeded:?}");

        let origin = open(&dir);
        assert!(!origin.seed_if_fresh(&seed).unwrap());
        assert_eq!(origin.ping().await.unwrap(), Position(4));
        let reads = origin
            .read_many(
                vec![
                    key("products", "p1"),
                    key("products", "p2"),
                    key("profiles", "u2"),
                ],
                ANY,
            )
            .await
            .unwrap();
        for read in &reads {
            assert_eq!(read.doc.version, Version(1));
        }
        assert_eq!(body(&reads[2].doc), json!({"name": "bo"}));
        assert!(!open(&TempDir::new().unwrap())
            .seed_if_fresh(&Seed::new())
            .unwrap());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_increments_lose_nothing_and_respect_min() {
        let dir = TempDir::new().unwrap();
        let origins = [open(&dir), open(&dir)];
        put(
            &origins[0],
            key("products", "p1"),
            json!({"stock": 50, "sold": 0}),
        )
        .await;

        let succeeded = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..120)
            .map(|i| {
                let origin = origins[i % 2].clone();
                let succeeded = Arc::clone(&succeeded);
                tokio::spawn(async move {
                    let take = op(key("products", "p1"), None, increment("stock", -1, Some(0), None));
                    match origin.write(take).await {
                        Ok(committed) => {
                            succeeded.fetch_add(1, Ordering::Relaxed);
                            let sold = op(key("products", "p1"), None, increment("sold", 1, None, None));
                            origin.write(sold).await.expect("sold");
                            assert!(committed.doc.fields.unwrap()["stock"].as_i64().unwrap() >= 0);
                        }
                        Err(WriteError::BoundCrossed {
                            current: 0, bound: 0, ..
                        }) => {}
                        Err(other) => panic!("unexpected {other:?}"),
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(succeeded.load(Ordering::Relaxed), 50);
        let doc = get(&origins[1], key("products", "p1")).await;
        assert_eq!(body(&doc), json!({"stock": 0, "sold": 50}));
        assert_eq!(doc.version, Version(101));
        assert_eq!(origins[0].ping().await.unwrap(), Position(101));
    }

    #[tokio::test]
    async fn corrupt_rows_are_internal_errors() {
        let dir = TempDir::new().unwrap();
        let origin = open(&dir);
        let raw = Connection::open(db_path(&dir)).unwrap();
        raw.execute(
            "INSERT INTO items VALUES ('c', 'bad', 1, 1, '{not json'), ('c', 'arr', 1, 1, '[1]')",
            [],
        )
        .unwrap();
        for id in ["bad", "arr"] {
            assert!(matches!(
                origin.read(key("c", id), ANY).await,
                Err(OriginError::Internal { .. })
            ));
            let patch = WriteOpKind::Patch(Arc::new(fields(json!({"a": 1}))));
            assert!(matches!(
                origin.write(op(key("c", id), None, patch)).await,
                Err(WriteError::Origin(OriginError::Internal { .. }))
            ));
        }
        assert!(matches!(
            origin.read_many(vec![key("c", "ok"), key("c", "bad")], ANY).await,
            Err(OriginError::Internal { .. })
        ));
        assert_eq!(origin.ping().await.unwrap(), Position(0));
    }

    #[tokio::test]
    async fn a_locked_store_is_unavailable() {
        let dir = TempDir::new().unwrap();
        let origin = EmbeddedOrigin::open(&db_path(&dir), 1, Duration::from_millis(50)).unwrap();
        let mut other = Connection::open(db_path(&dir)).unwrap();
        let held = other
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();

        let write = origin.write(op(key("c", "x"), None, WriteOpKind::Delete)).await;
        assert!(
            matches!(write, Err(WriteError::Origin(OriginError::Unavailable { .. }))),
            "{write:?}"
        );
        // WAL readers are not blocked by a writer.
        assert_eq!(origin.ping().await.unwrap(), Position(0));

        drop(held);
        assert!(matches!(
            origin.write(op(key("c", "x"), None, WriteOpKind::Delete)).await,
            Err(WriteError::NotFound)
        ));
    }
}
