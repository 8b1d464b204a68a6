//! The write path on the primary, in as few round trips as its promises allow.
//!
//! Every statement is prepared once per connection (deadpool-postgres' statement
//! cache), and requests issued together on one connection go out together
//! (tokio-postgres pipelines them; the server answers them in order):
//!
//! * **Unkeyed PUT, PATCH, DELETE and increments: one round trip.** The write is one
//!   statement committed on its own — the precondition checked on the row, the new
//!   version computed in SQL, with the `notify` feed the notification ([`TableDef::upsert`],
//!   [`TableDef::update`], [`TableDef::increment`]) — and the position read goes out
//!   right behind it: it runs after the statement's implicit transaction committed.
//! * **Keyed writes: three, in one transaction.** `BEGIN; SET LOCAL lock_timeout`
//!   with the claim of the key; the write's statement; the record of its outcome with
//!   `COMMIT` and the position read.
//! * **A merge patch of an object into a `json` field: one more,** the row read
//!   `FOR UPDATE` in the transaction and merged here (RFC 7396 merges recursively).
//!
//! A statement that changed nothing costs one more round trip, to say why (the
//! precondition, an absent item, a bound).
//!
//! Outcomes stay honest ([decision 0001](../../../../docs/decisions/0001-honest-outcomes-and-idempotency.md)):
//! a write is "not applied" only when it provably was not, and a committed write
//! whose position cannot be read is a success at `Position(u64::MAX)`.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use deadpool_postgres::GenericClient;
use edgecache_actors::{Doc, Fields, Position, Version};
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::idempotency::{self, Applied, Record};
use super::table::{Stored, TableDef};
use super::{lsn, pg_error, pool_error, position, table, Inner, COMMITTED_LSN};
use crate::origin::write_op::increment_within;
use crate::origin::{Committed, OriginError, WriteError, WriteOp, WriteOpKind};

/// How often a statement that changed nothing, while nothing now stops it (the row
/// changed between the statement and the look at why), runs again.
const ATTEMPTS: usize = 3;

/// Applies `op` on the primary.
pub(super) async fn write(inner: &Inner, op: WriteOp) -> Result<Committed, WriteError> {
    let def = table(inner, &op.key)?;
    let statement = plan(inner, def, &op)?;
    let client = inner.primary.get().await.map_err(pool_error)?;
    let (applied, replayed, position) = match (&op.idempotency, statement) {
        (None, Some(statement)) => {
            let (applied, position) = alone(inner, &client, def, &op, &statement).await?;
            (applied, false, position)
        }
        (_, statement) => in_transaction(inner, client, def, &op, statement).await?,
    };
    Ok(Committed {
        doc: Doc {
            version: applied.version,
            position,
            fields: applied.fields.map(Arc::new),
        },
        created: applied.created,
        replayed,
    })
}

/// A write's statement and its parameters.
struct Statement<'a> {
    sql: &'a str,
    params: Vec<Box<dyn ToSql + Sync + Send>>,
    answer: Answer,
}

/// What the row of a write's statement holds.
enum Answer {
    /// [`TableDef::upsert`]: the new version and whether the item was created; the
    /// document is the PUT's.
    Upserted(Arc<Fields>),
    /// [`TableDef::update`] of a whole document: the new version first; the document
    /// is this one.
    Replaced(Arc<Fields>),
    /// [`TableDef::update`] or [`TableDef::increment`]: the row as written.
    Row,
}

impl Statement<'_> {
    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect()
    }

    /// What the write applied, from its row.
    fn applied(&self, def: &TableDef, row: &Row) -> Result<Applied, OriginError> {
        let unreadable = |e| OriginError::internal("unreadable answer of a write", e);
        let version = |row: &Row| -> Result<Version, OriginError> {
            Ok(Version(
                row.try_get::<_, i64>(0).map_err(unreadable)?.max(0) as u64
            ))
        };
        Ok(match &self.answer {
            Answer::Upserted(fields) => Applied {
                version: version(row)?,
                created: row.try_get(1).map_err(unreadable)?,
                fields: Some((**fields).clone()),
            },
            Answer::Replaced(fields) => Applied {
                version: version(row)?,
                created: false,
                fields: Some((**fields).clone()),
            },
            Answer::Row => {
                let stored = def.stored(row, 0)?;
                Applied {
                    version: stored.version,
                    fields: stored.fields,
                    created: false,
                }
            }
        })
    }
}

/// The statement of `op`, or `None` for a merge patch that must read the item first
/// ([`TableDef::patch_params`]).
fn plan<'a>(inner: &Inner, def: &'a TableDef, op: &WriteOp) -> Result<Option<Statement<'a>>, WriteError> {
    let id = || -> Box<dyn ToSql + Sync + Send> { Box::new(op.key.id().to_owned()) };
    let if_match = op.if_match.map(|v| v.0 as i64);
    let update = |deleted: bool, columns: Vec<Box<dyn ToSql + Sync + Send>>, answer: Answer| {
        let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![id(), Box::new(if_match), Box::new(deleted)];
        params.extend(columns);
        params.extend(def.notify_params(&inner.channel));
        Statement {
            sql: def.update(),
            params,
            answer,
        }
    };
    Ok(Some(match &op.kind {
        // No version to match, or `If-None-Match: *`: create or replace.
        WriteOpKind::Put(fields) if if_match.is_none_or(|v| v == 0) => {
            let mut params = vec![id(), Box::new(if_match.is_some())];
            params.extend(def.values(Some(fields))?);
            params.extend(def.notify_params(&inner.channel));
            Statement {
                sql: def.upsert(),
                params,
                answer: Answer::Upserted(fields.clone()),
            }
        }
        WriteOpKind::Put(fields) => update(
            false,
            def.replace_params(Some(fields))?,
            Answer::Replaced(fields.clone()),
        ),
        WriteOpKind::Patch(patch) => match def.patch_params(patch)? {
            Some(columns) => update(false, columns, Answer::Row),
            None => return Ok(None),
        },
        WriteOpKind::Delete => update(true, def.replace_params(None)?, Answer::Row),
        WriteOpKind::Increment { field, by, min, max } => {
            let sql = def.increment(field).ok_or_else(|| WriteError::NotAnInteger {
                field: field.to_owned(),
            })?;
            let mut params = vec![
                id(),
                Box::new(*by),
                Box::new(if_match),
                Box::new(*min),
                Box::new(*max),
            ];
            params.extend(def.notify_params(&inner.channel));
            Statement {
                sql,
                params,
                answer: Answer::Row,
            }
        }
    }))
}

/// An unkeyed write: its one statement, committed on its own, with the position read
/// right behind it in the same round trip.
async fn alone(
    inner: &Inner,
    client: &deadpool_postgres::Client,
    def: &TableDef,
    op: &WriteOp,
    statement: &Statement<'_>,
) -> Result<(Applied, Position), WriteError> {
    let prepared = futures_util::try_join!(
        client.prepare_cached(statement.sql),
        client.prepare_cached(COMMITTED_LSN)
    );
    let (prepared, position_sql) = prepared.map_err(|e| pg_error("write failed", e))?;
    let params = statement.params();
    for _ in 0..ATTEMPTS {
        let (row, position) = futures_util::join!(
            client.query_opt(&prepared, &params),
            client.query_one(&position_sql, &[])
        );
        match row.map_err(lone_statement_error)? {
            Some(row) => {
                // Committed: from here on nothing may answer "not applied".
                let applied = statement.applied(def, &row).map_err(WriteError::OutcomeUnknown)?;
                return Ok((applied, settle(inner, position).await));
            }
            None => {
                if let Some(why) = diagnose(client, def, op).await? {
                    return Err(why);
                }
            }
        }
    }
    Err(kept_changing())
}

/// The write changed nothing each time, and each time nothing stopped it any more
/// when we looked: not applied, and worth sending again.
fn kept_changing() -> WriteError {
    OriginError::Unavailable {
        reason: "the item kept changing under the write".into(),
        source: None,
    }
    .into()
}

/// An error of a statement that commits on its own. It rolled back when the server
/// said why it failed — every error raised while a statement runs, up to and
/// including its commit (a serialization failure, a deferred constraint), rolls it
/// back. A connection lost, or a server terminating the session (which it may do
/// after the commit record is durable), leaves the outcome unknown.
fn lone_statement_error(e: tokio_postgres::Error) -> WriteError {
    let unknown = match e.code() {
        None => true,
        Some(code) => {
            let code = code.code();
            // connection_exception, system_error, internal_error; admin_shutdown,
            // crash_shutdown, idle_session_timeout (FATAL: the session ends).
            matches!(&code[..2], "08" | "58" | "XX") || matches!(code, "57P01" | "57P02" | "57P05")
        }
    };
    let error = pg_error("write failed", e);
    if unknown {
        WriteError::OutcomeUnknown(error)
    } else {
        error.into()
    }
}

/// An error of `COMMIT`. Only an answer that says the transaction rolled back
/// (serialization failure, deferred constraint) means "not applied"; a lost
/// connection or a server going down may come after the commit record is durable.
fn commit_error(e: tokio_postgres::Error) -> WriteError {
    let rolled_back = e
        .code()
        .is_some_and(|code| matches!(&code.code()[..2], "40" | "23"));
    let error = pg_error("commit failed", e);
    if rolled_back {
        error.into()
    } else {
        WriteError::OutcomeUnknown(error)
    }
}

/// The position of a write whose commit returned, from the position read sent right
/// behind it; if that failed, read on another connection. If neither answers, the
/// write still stands (it committed) and its position is the most conservative one:
/// no replica reaches it, so the session's reads of the item go to the primary.
async fn settle(inner: &Inner, read: Result<Row, tokio_postgres::Error>) -> Position {
    let first = match read
        .map_err(|e| pg_error("reading the primary's position", e))
        .and_then(|row| lsn(&row))
    {
        Ok(position) => return position,
        Err(e) => e,
    };
    let second = match inner.primary.get().await {
        Ok(other) => position(&other, COMMITTED_LSN).await,
        Err(e) => Err(pool_error(e)),
    };
    second.unwrap_or_else(|e| {
        tracing::warn!(cause = %first, retry = %e, "committed, but the position after the commit is unknown; the session reads the item from the primary");
        Position(u64::MAX)
    })
}

/// Why a write's statement changed nothing; `None`: nothing stops it now (the row
/// changed between the statement and this look), run it again.
async fn diagnose(
    client: &impl GenericClient,
    def: &TableDef,
    op: &WriteOp,
) -> Result<Option<WriteError>, WriteError> {
    if let WriteOpKind::Increment { field, by, min, max } = &op.kind {
        return Ok(Some(
            diagnose_increment(client, def, op, field, *by, *min, *max).await,
        ));
    }
    let stored = read_row(client, &def.select, def, op).await?;
    let visible = stored.as_ref().map_or(Version(0), Stored::visible);
    if let Some(expected) = op.if_match {
        if expected != visible {
            return Ok(Some(WriteError::VersionMismatch {
                expected,
                current: visible,
            }));
        }
    }
    let exists = stored.is_some_and(|s| s.fields.is_some());
    let needs_item = matches!(op.kind, WriteOpKind::Patch(_) | WriteOpKind::Delete);
    Ok((needs_item && !exists).then_some(WriteError::NotFound))
}

/// The item's row, read with `sql` ([`TableDef::select`] or [`TableDef::lock`]).
async fn read_row(
    client: &impl GenericClient,
    sql: &str,
    def: &TableDef,
    op: &WriteOp,
) -> Result<Option<Stored>, OriginError> {
    let failed = |e| pg_error("write failed", e);
    let statement = client.prepare_cached(sql).await.map_err(failed)?;
    let row = client
        .query_opt(&statement, &[&op.key.id()])
        .await
        .map_err(failed)?;
    row.map(|row| def.stored(&row, 0)).transpose()
}

/// Why an increment changed nothing: read the row and say.
async fn diagnose_increment(
    client: &impl GenericClient,
    def: &TableDef,
    op: &WriteOp,
    field: &str,
    by: i64,
    min: Option<i64>,
    max: Option<i64>,
) -> WriteError {
    let stored = match read_row(client, &def.select, def, op).await {
        Ok(stored) => stored,
        Err(e) => return e.into(),
    };
    let Some(Stored {
        version,
        fields: Some(fields),
    }) = stored
    else {
        return WriteError::NotFound;
    };
    if let Some(expected) = op.if_match {
        if expected != version {
            return WriteError::VersionMismatch {
                expected,
                current: version,
            };
        }
    }
    let Some(current) = fields.get(field).and_then(Value::as_i64) else {
        return WriteError::NotAnInteger {
            field: field.to_owned(),
        };
    };
    match increment_within(field, current, by, min, max) {
        Err(crossed) => crossed,
        // The row changed between the increment and this look: report it as a
        // version mismatch.
        Ok(_) => WriteError::VersionMismatch {
            expected: op.if_match.unwrap_or(version),
            current: version,
        },
    }
}

/// An explicit transaction on a pooled connection, begun by a `BEGIN` sent with its
/// first statement. Every ordinary path ends it with `COMMIT` or `ROLLBACK`; dropped
/// while still open (a panic, the origin's runtime shutting down), it takes its
/// connection out of the pool and closes it, which rolls the transaction back on the
/// server — a connection is never handed on inside a transaction.
struct Tx {
    client: Option<deadpool_postgres::Client>,
    open: AtomicBool,
}

impl Tx {
    fn new(client: deadpool_postgres::Client) -> Self {
        Tx {
            client: Some(client),
            open: AtomicBool::new(true),
        }
    }

    fn client(&self) -> &deadpool_postgres::Client {
        self.client.as_ref().expect("the connection lives until drop")
    }

    /// The server answered `COMMIT` or `ROLLBACK`: the connection is idle again.
    fn ended(&self) {
        self.open.store(false, Ordering::Release);
    }

    /// Rolls back what is still open; a connection that cannot is closed on drop.
    async fn rollback(self) {
        if self.open.load(Ordering::Acquire) && self.client().batch_execute("ROLLBACK").await.is_ok() {
            self.ended();
        }
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if self.open.load(Ordering::Acquire) {
                drop(deadpool_postgres::Object::take(client));
            }
        }
    }
}

/// A keyed write, or a merge patch that reads the item first, in one transaction:
/// with a key, its record is written with the write and commits with it, or neither
/// does. Returns what was applied, whether it is the key's recorded outcome (a
/// replay: nothing written), and the position after the commit.
async fn in_transaction(
    inner: &Inner,
    client: deadpool_postgres::Client,
    def: &TableDef,
    op: &WriteOp,
    statement: Option<Statement<'_>>,
) -> Result<(Applied, bool, Position), WriteError> {
    let tx = Tx::new(client);
    let result = transaction(inner, &tx, def, op, statement).await;
    if result.is_err() {
        tx.rollback().await;
    }
    result
}

async fn transaction(
    inner: &Inner,
    tx: &Tx,
    def: &TableDef,
    op: &WriteOp,
    statement: Option<Statement<'_>>,
) -> Result<(Applied, bool, Position), WriteError> {
    let c = tx.client();
    let failed = |e| pg_error("write failed", e);
    let position_sql = c.prepare_cached(COMMITTED_LSN).await.map_err(failed)?;
    let statement = match &op.idempotency {
        Some(key) => {
            // Round trip 1: BEGIN with the wait for a key in flight — it bounds the
            // claim and, after it, the item's row lock: a busy row past it fails the
            // write before anything is applied — and the claim.
            let claim = c.prepare_cached(idempotency::CLAIM).await.map_err(failed)?;
            let begin = format!(
                "BEGIN; SET LOCAL lock_timeout = {}",
                key.in_flight_wait.as_millis().max(1)
            );
            let (begun, claimed) =
                futures_util::join!(c.batch_execute(&begin), idempotency::claim(c, &claim, key));
            begun.map_err(failed)?;
            if !claimed? {
                // Recorded: nothing was written; the record is read, the transaction
                // ends and the position (after the record's commit) is read at once.
                let select = c.prepare_cached(idempotency::SELECT).await.map_err(failed)?;
                let params: [&(dyn ToSql + Sync); 1] = [&key.key];
                let (row, rolled_back, position) = futures_util::join!(
                    c.query_one(&select, &params),
                    c.batch_execute("ROLLBACK"),
                    c.query_one(&position_sql, &[])
                );
                if rolled_back.is_ok() {
                    tx.ended();
                }
                let row = row.map_err(|e| pg_error("reading the idempotency record", e))?;
                let recorded = idempotency::replayed(&row, key)?;
                return Ok((recorded, true, settle(inner, position).await));
            }
            match statement {
                Some(statement) => statement,
                None => merged(inner, def, op, read_row(c, &def.lock, def, op).await?)?,
            }
        }
        None => {
            // Round trip 1: BEGIN and the row, locked, to merge the patch into.
            let lock = c.prepare_cached(&def.lock).await.map_err(failed)?;
            let id = op.key.id();
            let params: [&(dyn ToSql + Sync); 1] = [&id];
            let (begun, row) = futures_util::join!(c.batch_execute("BEGIN"), c.query_opt(&lock, &params));
            begun.map_err(failed)?;
            let stored = row.map_err(failed)?.map(|row| def.stored(&row, 0)).transpose()?;
            match statement {
                Some(statement) => statement,
                None => merged(inner, def, op, stored)?,
            }
        }
    };

    // The write.
    let prepared = c.prepare_cached(statement.sql).await.map_err(failed)?;
    let params = statement.params();
    let mut applied = None;
    for _ in 0..ATTEMPTS {
        let row = c.query_opt(&prepared, &params).await.map_err(failed)?;
        match row {
            Some(row) => {
                applied = Some(statement.applied(def, &row)?);
                break;
            }
            None => {
                if let Some(why) = diagnose(c, def, op).await? {
                    return Err(why);
                }
            }
        }
    }
    let applied = applied.ok_or_else(kept_changing)?;

    // The last round trip: the record, COMMIT and the position read.
    let committed = match &op.idempotency {
        None => {
            let (committed, position) =
                futures_util::join!(c.batch_execute("COMMIT"), c.query_one(&position_sql, &[]));
            committed.map_err(commit_error)?;
            tx.ended();
            position
        }
        Some(key) => {
            let record_sql = c.prepare_cached(idempotency::RECORD).await.map_err(failed)?;
            let record = Record::new(key, &applied)?;
            let params = record.params();
            let mut recorded = pin!(c.execute(&record_sql, &params));
            // The record is sent on its first poll. A record that fails before it is
            // sent must not be followed by a COMMIT, which would commit the claim
            // without its outcome.
            if let Poll::Ready(result) = futures_util::poll!(recorded.as_mut()) {
                result.map_err(|e| pg_error("recording the idempotency key", e))?;
                return Err(OriginError::Internal {
                    reason: "the idempotency record was answered before it was sent".into(),
                    source: None,
                }
                .into());
            }
            let (recorded, committed, position) = futures_util::join!(
                recorded,
                c.batch_execute("COMMIT"),
                c.query_one(&position_sql, &[])
            );
            match (recorded, committed) {
                // The server refused the record: the transaction was aborted, and the
                // COMMIT behind it rolled back.
                (Err(e), committed) if e.code().is_some() => {
                    if committed.is_ok() {
                        tx.ended();
                    }
                    return Err(pg_error("recording the idempotency key", e).into());
                }
                (_, Err(e)) => return Err(commit_error(e)),
                (Err(e), Ok(())) => {
                    tx.ended();
                    return Err(WriteError::OutcomeUnknown(pg_error(
                        "recording the idempotency key",
                        e,
                    )));
                }
                (Ok(_), Ok(())) => {
                    tx.ended();
                    position
                }
            }
        }
    };
    Ok((applied, false, settle(inner, committed).await))
}

/// A merge patch applied here to the row read `FOR UPDATE` in the transaction: the
/// precondition checked, the patch merged (RFC 7396), and the statement that writes
/// the merged document at the locked version.
fn merged<'a>(
    inner: &Inner,
    def: &'a TableDef,
    op: &WriteOp,
    stored: Option<Stored>,
) -> Result<Statement<'a>, WriteError> {
    let WriteOpKind::Patch(patch) = &op.kind else {
        return Err(OriginError::Internal {
            reason: "only a merge patch is merged before it is written".into(),
            source: None,
        }
        .into());
    };
    let visible = stored.as_ref().map_or(Version(0), Stored::visible);
    if let Some(expected) = op.if_match {
        if expected != visible {
            return Err(WriteError::VersionMismatch {
                expected,
                current: visible,
            });
        }
    }
    let Some(existing) = stored.and_then(|s| s.fields) else {
        return Err(WriteError::NotFound);
    };
    let mut merged = Value::Object(existing);
    json_patch::merge(&mut merged, &Value::Object((**patch).clone()));
    let Value::Object(merged) = merged else {
        unreachable!("a merge onto an object with an object patch is an object")
    };
    let merged = Arc::new(merged);
    let mut params: Vec<Box<dyn ToSql + Sync + Send>> = vec![
        Box::new(op.key.id().to_owned()),
        Box::new(Some(visible.0 as i64)),
        Box::new(false),
    ];
    params.extend(def.replace_params(Some(&merged))?);
    params.extend(def.notify_params(&inner.channel));
    Ok(Statement {
        sql: def.update(),
        params,
        answer: Answer::Replaced(merged),
    })
}
