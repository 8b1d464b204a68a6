//! Idempotency records on PostgreSQL: one row per `Idempotency-Key`, claimed at the
//! start of the keyed write's transaction and filled with its outcome before the
//! commit, so a key is recorded exactly when its write is.
//!
//! The claim is an `INSERT … ON CONFLICT` on the key: a second transaction with the
//! same key waits on the first one's uncommitted row (PostgreSQL's speculative
//! insertion), bounded by `lock_timeout`. When the first commits, the second finds its
//! record and replays it; when the first rolls back (it failed: nothing applied), the
//! second claims the key and writes.

use std::time::Duration;

use deadpool_postgres::GenericClient;
use edgecache_actors::{Fields, Version};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

use super::pg_error;
use crate::origin::{Idempotency, IdempotencySweep, OriginError, WriteError};

/// The table, created by `edgecache migrate`.
pub const CREATE: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS edgecache_idempotency (\
     key text PRIMARY KEY, fingerprint bytea NOT NULL, recorded_at timestamptz NOT NULL, \
     created boolean, version bigint, deleted boolean, doc text)",
    "CREATE INDEX IF NOT EXISTS edgecache_idempotency_recorded_at ON edgecache_idempotency (recorded_at)",
];

/// Claims `$1` for this transaction unless a record younger than `$3` seconds holds
/// it (an older one is taken over). Returns a row when claimed.
pub const CLAIM: &str =
    "INSERT INTO edgecache_idempotency (key, fingerprint, recorded_at) VALUES ($1, $2, now()) \
     ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint, recorded_at = excluded.recorded_at, \
     created = NULL, version = NULL, deleted = NULL, doc = NULL \
     WHERE edgecache_idempotency.recorded_at < now() - make_interval(secs => $3) RETURNING 1";

pub const SELECT: &str =
    "SELECT fingerprint, created, version, deleted, doc FROM edgecache_idempotency WHERE key = $1";

pub const RECORD: &str =
    "UPDATE edgecache_idempotency SET created = $2, version = $3, deleted = $4, doc = $5 WHERE key = $1";

/// What a write applied, before its position is known.
pub struct Applied {
    pub version: Version,
    pub fields: Option<Fields>,
    pub created: bool,
}

/// Claims `key` with the prepared [`CLAIM`] inside the open transaction, waiting up to
/// the transaction's `lock_timeout` (the key's `in_flight_wait`, set with `BEGIN`) for
/// a transaction that holds it. `true`: claimed, go on and write; `false`: the key has
/// a record ([`replayed`] reads it; write nothing).
pub async fn claim(
    client: &impl GenericClient,
    statement: &Statement,
    key: &Idempotency,
) -> Result<bool, WriteError> {
    let retention = key.retention.as_secs_f64();
    let claimed = client
        .query_opt(statement, &[&key.key, &&key.fingerprint[..], &retention])
        .await
        .map_err(|e| match e.code() {
            Some(code) if code == &SqlState::LOCK_NOT_AVAILABLE => WriteError::KeyInFlight,
            _ => pg_error("claiming the idempotency key", e).into(),
        })?;
    Ok(claimed.is_some())
}

/// The recorded outcome of `key`, from its row as [`SELECT`] reads it.
pub fn replayed(row: &Row, key: &Idempotency) -> Result<Applied, WriteError> {
    let unreadable = |e| OriginError::internal("unreadable idempotency record", e);
    let fingerprint: &[u8] = row.try_get(0).map_err(unreadable)?;
    if fingerprint != key.fingerprint {
        return Err(WriteError::KeyReused);
    }
    let version: Option<i64> = row.try_get(2).map_err(unreadable)?;
    let (Some(created), Some(version), Some(deleted)) = (
        row.try_get::<_, Option<bool>>(1).map_err(unreadable)?,
        version,
        row.try_get::<_, Option<bool>>(3).map_err(unreadable)?,
    ) else {
        // Claimed and committed without an outcome: cannot happen (both are written in
        // one transaction), so say so rather than guess.
        return Err(OriginError::Internal {
            reason: "an idempotency record without its outcome".into(),
            source: None,
        }
        .into());
    };
    let doc: Option<String> = row.try_get(4).map_err(unreadable)?;
    let fields = match doc.filter(|_| !deleted) {
        Some(text) => Some(
            serde_json::from_str::<Fields>(&text)
                .map_err(|e| OriginError::internal("corrupt idempotency record", e))?,
        ),
        None => None,
    };
    Ok(Applied {
        version: Version(version.max(0) as u64),
        fields,
        created,
    })
}

/// The parameters of [`RECORD`]: what a write applied, for its claimed key.
pub struct Record<'a> {
    key: &'a str,
    created: bool,
    version: i64,
    deleted: bool,
    doc: Option<String>,
}

impl<'a> Record<'a> {
    pub fn new(key: &'a Idempotency, applied: &Applied) -> Result<Self, OriginError> {
        let doc = applied
            .fields
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| OriginError::internal("serializing an idempotency record", e))?;
        Ok(Record {
            key: &key.key,
            created: applied.created,
            version: applied.version.0 as i64,
            deleted: applied.fields.is_none(),
            doc,
        })
    }

    pub fn params(&self) -> [&(dyn ToSql + Sync); 5] {
        [&self.key, &self.created, &self.version, &self.deleted, &self.doc]
    }
}

/// Deletes the records older than `retention` and counts the rest.
pub async fn sweep(
    client: &impl GenericClient,
    retention: Duration,
) -> Result<IdempotencySweep, OriginError> {
    let secs = retention.as_secs_f64();
    let removed = client
        .execute(
            "DELETE FROM edgecache_idempotency WHERE recorded_at < now() - make_interval(secs => $1)",
            &[&secs],
        )
        .await
        .map_err(|e| pg_error("sweeping idempotency records", e))?;
    let kept: i64 = client
        .query_one("SELECT count(*) FROM edgecache_idempotency", &[])
        .await
        .map_err(|e| pg_error("counting idempotency records", e))?
        .try_get(0)
        .map_err(|e| OriginError::internal("unreadable count", e))?;
    Ok(IdempotencySweep {
        removed,
        kept: kept.max(0) as u64,
    })
}
