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
const CLAIM: &str =
    "INSERT INTO edgecache_idempotency (key, fingerprint, recorded_at) VALUES ($1, $2, now()) \
     ON CONFLICT (key) DO UPDATE SET fingerprint = excluded.fingerprint, recorded_at = excluded.recorded_at, \
     created = NULL, version = NULL, deleted = NULL, doc = NULL \
     WHERE edgecache_idempotency.recorded_at < now() - make_interval(secs => $3) RETURNING 1";

const SELECT: &str =
    "SELECT fingerprint, created, version, deleted, doc FROM edgecache_idempotency WHERE key = $1";

const RECORD: &str =
    "UPDATE edgecache_idempotency SET created = $2, version = $3, deleted = $4, doc = $5 WHERE key = $1";

/// What a write applied, before its position is known.
pub struct Applied {
    pub version: Version,
    pub fields: Option<Fields>,
    pub created: bool,
}

/// Claims `key` inside the open transaction `tx`, waiting up to the key's
/// `in_flight_wait` for a transaction that holds it. `Ok(None)`: claimed, go on and
/// write; `Ok(Some(_))`: the key's recorded outcome (write nothing).
pub async fn claim(tx: &impl GenericClient, key: &Idempotency) -> Result<Option<Applied>, WriteError> {
    // The bound covers the claim and, after it, the item's row lock: a busy row past
    // it fails the write before anything is applied.
    let wait = key.in_flight_wait.as_millis().max(1);
    tx.batch_execute(&format!("SET LOCAL lock_timeout = {wait}"))
        .await
        .map_err(|e| pg_error("write failed", e))?;
    let retention = key.retention.as_secs_f64();
    let claimed = tx
        .query_opt(CLAIM, &[&key.key, &&key.fingerprint[..], &retention])
        .await
        .map_err(|e| match e.code() {
            Some(code) if code == &SqlState::LOCK_NOT_AVAILABLE => WriteError::KeyInFlight,
            _ => pg_error("claiming the idempotency key", e).into(),
        })?;
    if claimed.is_some() {
        return Ok(None);
    }
    let row = tx
        .query_one(SELECT, &[&key.key])
        .await
        .map_err(|e| pg_error("reading the idempotency record", e))?;
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
    Ok(Some(Applied {
        version: Version(version.max(0) as u64),
        fields,
        created,
    }))
}

/// Fills the claimed record of `key` with what the write applied.
pub async fn record(
    tx: &impl GenericClient,
    key: &Idempotency,
    applied: &Applied,
) -> Result<(), OriginError> {
    let doc = applied
        .fields
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| OriginError::internal("serializing an idempotency record", e))?;
    let version = applied.version.0 as i64;
    let deleted = applied.fields.is_none();
    tx.execute(RECORD, &[&key.key, &applied.created, &version, &deleted, &doc])
        .await
        .map_err(|e| pg_error("recording the idempotency key", e))?;
    Ok(())
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
