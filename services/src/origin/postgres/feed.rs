//! The change feed: a LISTEN connection to the primary. Every write notifies, in its
//! own transaction, `{"c": collection, "i": id, "v": version}` on the channel; every
//! node drops cache entries older than that; a purge is published on the same channel
//! (`crate::purge`). After a reconnect the node cannot know
//! what it missed, so it drops everything (`Change::Reset`).

use std::time::Duration;

use edgecache_actors::Version;
use futures_util::future::poll_fn;
use postgres_protocol::escape::escape_identifier;
use serde::Deserialize;
use tokio_postgres::{AsyncMessage, Config, NoTls};

use crate::backoff::Backoff;
use crate::origin::{Change, ChangeSink};
use crate::purge::PurgeMessage;

#[derive(Deserialize)]
struct Payload {
    c: String,
    i: String,
    v: u64,
}

/// A notification's change: an item's `{"c","i","v"}`, or a purge ([`PurgeMessage`]).
pub fn decode(payload: &str) -> Result<Change, serde_json::Error> {
    match serde_json::from_str::<Payload>(payload) {
        Ok(p) => Ok(Change::Item {
            collection: p.c,
            id: p.i,
            version: Version(p.v),
        }),
        Err(not_an_item) => PurgeMessage::decode(payload)
            .map(Change::Purge)
            .map_err(|_| not_an_item),
    }
}

/// The first reconnect waits up to this long; each failure doubles it, up to
/// [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Follows the channel until the task is dropped (at shutdown), reconnecting with a
/// bounded, jittered back-off: every node lost its connection at the same instant
/// when the primary went away, and they must not all come back at the same instant.
pub async fn follow(config: Config, channel: String, sink: ChangeSink) {
    let mut backoff = Backoff::new(BASE_BACKOFF, MAX_BACKOFF);
    let mut connected_before = false;
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                // Quoted as libpq's PQescapeIdentifier does: the channel is configured,
                // not ours to trust blindly (settings validate it too).
                let sql = format!("LISTEN {}", escape_identifier(&channel));
                let listen = client.batch_execute(&sql);
                // The connection must be driven for the LISTEN to complete.
                let mut listen = std::pin::pin!(listen);
                let listened = loop {
                    tokio::select! {
                        result = &mut listen => break result,
                        message = poll_fn(|cx| connection.poll_message(cx)) => {
                            if !matches!(message, Some(Ok(_))) {
                                break Ok(());
                            }
                        }
                    }
                };
                if let Err(e) = listened {
                    tracing::warn!(cause = %e, "change feed: LISTEN failed");
                } else {
                    if connected_before {
                        sink(Change::Reset);
                    }
                    connected_before = true;
                    backoff.reset();
                    tracing::info!(%channel, "change feed following");
                    while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
                        match message {
                            Ok(AsyncMessage::Notification(n)) => match decode(n.payload()) {
                                Ok(change) => sink(change),
                                Err(e) => {
                                    tracing::warn!(cause = %e, "change feed: unreadable notification")
                                }
                            },
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(cause = %e, "change feed: connection lost");
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(
                cause = %e,
                failures = backoff.failures() + 1,
                "change feed: cannot connect to the primary"
            ),
        }
        tokio::time::sleep(backoff.next_wait()).await;
    }
}
