//! The `logical` change feed: each node follows the primary's logical replication
//! stream (pgoutput) through the publication `edgecache migrate` creates, on a
//! TEMPORARY slot of its own — the server drops it when the connection ends, so a
//! node that dies (even by SIGKILL) retains no WAL — and reports the position it
//! has applied in standby status updates, so the primary recycles WAL behind it.
//!
//! Every writer's rows reach every node (a psql UPDATE as well as another node's
//! write), and nothing runs inside the writing transaction. The transport is the
//! `pgwire-replication` crate (connection, `START_REPLICATION`, keepalives and
//! status updates); the few row messages needed are read by [`super::pgoutput`];
//! edgecache's own messages (`pg_logical_emit_message(false, 'edgecache', …)`) go
//! to [`super::message::decode`], as NOTIFY payloads do.
//!
//! The node tracks the primary's position up to which it has applied every change:
//! a transaction's commit end once its changes are in the sink, and, between
//! transactions, the server's keepalive position (everything before it has been
//! sent). After every connection — the first too: entries cached before the slot
//! existed may predate changes it will never send — the node clears its cache.

use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent};
use tokio_postgres::config::Host;
use tokio_postgres::Config;

use super::message::{self, PREFIX};
use super::pgoutput::{DecodeError, Decoder, Watched};
use super::{FeedProgress, BASE_BACKOFF, MAX_BACKOFF};
use crate::backoff::Backoff;
use crate::origin::{Change, ChangeSink};

/// How often the applied position is reported to the primary, also on an idle
/// stream.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// Creating a logical slot waits for the transactions running at that moment to
/// end; past this the attempt is given up and made again.
const SLOT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the feed follows.
#[derive(Debug, Clone)]
pub struct Stream {
    /// The primary (the same connection settings as the pool's).
    pub primary: Config,
    /// The publication of the collections' tables.
    pub publication: String,
    /// The slot names' prefix (`edgecache_<node id>`); a random suffix makes each
    /// connection's slot its own.
    pub slot_prefix: String,
    /// The collections' tables, by table name.
    pub watched: Vec<(String, Watched)>,
    /// How long connecting may take.
    pub connect_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
enum FeedError {
    #[error(transparent)]
    Replication(#[from] PgWireError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("{0}")]
    Setup(String),
}

/// Follows the stream until the task is dropped (at shutdown), reconnecting with a
/// bounded, jittered back-off.
pub async fn follow(stream: Stream, sink: ChangeSink, progress: Arc<FeedProgress>) {
    let mut backoff = Backoff::new(BASE_BACKOFF, MAX_BACKOFF);
    loop {
        let outcome = session(&stream, &sink, &progress, &mut backoff).await;
        progress.set_following(false);
        match outcome {
            Ok(()) => tracing::warn!("change feed: the replication stream ended"),
            Err(e) => tracing::warn!(
                cause = %e,
                failures = backoff.failures() + 1,
                "change feed: replication stream lost or not started"
            ),
        }
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

/// The slot name prefix for node `node_id`: lowercase letters, digits and `_`.
pub fn slot_prefix(node_id: &str) -> String {
    let node: String = node_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    format!("edgecache_{node}")
}

fn replication_config(
    primary: &Config,
    slot: &str,
    publication: &str,
) -> Result<ReplicationConfig, FeedError> {
    let host = match primary.get_hosts().first() {
        Some(Host::Tcp(name)) => name.clone(),
        #[cfg(unix)]
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = primary.get_ports().first().copied().unwrap_or(5432);
    let user = primary
        .get_user()
        .ok_or_else(|| FeedError::Setup("the primary's URL names no user".into()))?;
    let password = primary
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    let database = primary.get_dbname().unwrap_or(user);
    Ok(
        ReplicationConfig::new(host, user, password, database, slot, publication)
            .with_port(port)
            .with_application_name("edgecache-feed")
            .with_status_interval(STATUS_INTERVAL)
            .with_wakeup_interval(STATUS_INTERVAL),
    )
}

/// One replication session: a temporary slot, then the stream until it ends.
async fn session(
    stream: &Stream,
    sink: &ChangeSink,
    progress: &FeedProgress,
    backoff: &mut Backoff,
) -> Result<(), FeedError> {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let slot = format!("{}_{}", stream.slot_prefix, &suffix[..12]);
    let config = replication_config(&stream.primary, &slot, &stream.publication)?;
    let mut client = ReplicationClient::connect_gated(config).await?;
    // The slot is the session's: TEMPORARY, dropped by the server when the
    // connection ends. No snapshot: the node reads rows on its own connections.
    let create = format!("CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput (SNAPSHOT 'nothing')");
    let rows = tokio::time::timeout(
        stream.connect_timeout + SLOT_TIMEOUT,
        client.simple_query(&create),
    )
    .await
    .map_err(|_| FeedError::Setup("creating the replication slot timed out".into()))??;
    let consistent = rows
        .first()
        .and_then(|row| row.get(1).cloned().flatten())
        .and_then(|lsn| Lsn::parse(&String::from_utf8_lossy(&lsn)).ok())
        .ok_or_else(|| FeedError::Setup("CREATE_REPLICATION_SLOT answered no consistent point".into()))?;
    client.start().await?;
    tokio::time::timeout(stream.connect_timeout, client.wait_started())
        .await
        .map_err(|_| FeedError::Setup("START_REPLICATION was not answered in time".into()))??;

    // Whatever was cached before the slot's consistent point may have changed
    // unannounced (before the first connection, or while disconnected). In this
    // order: the cache is cleared, then the position is raised, then the feed
    // follows — the read plan trusts the position only while the feed follows.
    sink(Change::Reset);
    progress.forget_before(consistent.as_u64());
    progress.applied_through(consistent.as_u64());
    progress.set_following(true);
    backoff.reset();
    tracing::info!(%slot, publication = %stream.publication, at = %consistent.to_pg_string(), "change feed following");

    let mut decoder = Decoder::new(stream.watched.iter().cloned());
    let mut in_transaction = false;
    // The items the transaction being received changed, recorded at its commit.
    let mut changed: Vec<u64> = Vec::new();
    while let Some(event) = client.recv().await? {
        match event {
            ReplicationEvent::Begin { .. } => {
                in_transaction = true;
                changed.clear();
            }
            ReplicationEvent::XLogData { data, .. } => {
                if let Some(change) = decoder.decode(&data)? {
                    if let Change::Item { collection, id, .. } = &change {
                        changed.push(edgecache_actors::item_hash(collection, id));
                    }
                    sink(change);
                }
            }
            ReplicationEvent::Message { prefix, content, .. } if prefix == PREFIX => {
                match std::str::from_utf8(&content) {
                    Ok(payload) => match message::decode(payload) {
                        Ok(change) => sink(change),
                        Err(e) => tracing::warn!(cause = %e, "change feed: unreadable message"),
                    },
                    Err(e) => tracing::warn!(cause = %e, "change feed: a message that is not UTF-8"),
                }
            }
            ReplicationEvent::Message { .. } => {}
            ReplicationEvent::Commit { end_lsn, .. } => {
                in_transaction = false;
                if decoder.commit() {
                    tracing::warn!(
                        "change feed: a row was deleted past the version trigger; clearing the cache"
                    );
                    sink(Change::Reset);
                    progress.forget_before(end_lsn.as_u64());
                }
                progress.record(&changed, end_lsn.as_u64());
                changed.clear();
                progress.applied_through(end_lsn.as_u64());
                client.update_applied_lsn(end_lsn);
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                // Between transactions, everything the server read before this
                // position has been sent: no change of ours lies before it unseen.
                if !in_transaction {
                    progress.applied_through(wal_end.as_u64());
                    client.update_applied_lsn(wal_end);
                }
            }
            ReplicationEvent::StoppedAt { .. } => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_plain_identifiers() {
        assert_eq!(slot_prefix("Edge-1.eu"), "edgecache_edge_1_eu");
        let long = slot_prefix(&"x".repeat(100));
        // Prefix, node (at most 32) and `_` + 12 hex digits stay within 63 bytes.
        assert!(long.len() + 13 <= 63, "{long}");
    }
}
