//! The `notify` change feed: a LISTEN connection to the primary. Every edgecache
//! write notifies, in its own transaction, `{"c": collection, "i": id, "v": version}`
//! on the channel ([`super::message`]); every node drops cache entries older than
//! that. Only edgecache's writes notify: other writers change nothing here.

use std::sync::Arc;

use futures_util::future::poll_fn;
use postgres_protocol::escape::escape_identifier;
use tokio_postgres::{AsyncMessage, Config, NoTls};

use super::{message, FeedProgress, BASE_BACKOFF, MAX_BACKOFF};
use crate::backoff::Backoff;
use crate::origin::{Change, ChangeSink};

/// Follows the channel until the task is dropped (at shutdown), reconnecting with a
/// bounded, jittered back-off: every node lost its connection at the same instant
/// when the primary went away, and they must not all come back at the same instant.
pub async fn follow(config: Config, channel: String, sink: ChangeSink, progress: Arc<FeedProgress>) {
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
                    progress.set_following(true);
                    tracing::info!(%channel, "change feed following");
                    while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
                        match message {
                            Ok(AsyncMessage::Notification(n)) => match message::decode(n.payload()) {
                                Ok(change) => sink(change),
                                Err(e) => tracing::warn!(cause = %e, "change feed: unreadable notification"),
                            },
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(cause = %e, "change feed: connection lost");
                                break;
                            }
                        }
                    }
                    progress.set_following(false);
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
