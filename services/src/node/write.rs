//! The write path: a write runs in its session's order (through the session's actor),
//! bounded by the write timeout, and the committed item goes into the cache before
//! the session's next write starts; the idempotency store is swept here too.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::MailboxError;
use edgecache_actors::{ItemKey, SessionHandle, Version, Write, WriteTicket, Written};
use futures_util::future::FutureExt;
use tokio::time::Instant;

use super::{Node, SessionCtx, WriteFailure};
use crate::cache::CacheEntry;
use crate::origin::{Committed, Idempotency, OriginError, ReadRequest, WriteError, WriteOp};

impl Node {
    /// The idempotency binding of a write: the client's `key` and the request's
    /// `fingerprint`, with the configured retention and in-flight wait.
    pub fn idempotency(&self, key: String, fingerprint: [u8; 32]) -> Idempotency {
        Idempotency {
            key,
            fingerprint,
            retention: self.idempotency.retention,
            in_flight_wait: self.idempotency.in_flight_wait,
        }
    }

    /// The longest `Idempotency-Key` accepted.
    pub fn max_idempotency_key_bytes(&self) -> usize {
        self.idempotency.max_key_bytes
    }

    /// Sweeps the origin's expired idempotency records every `sweep_interval`, and
    /// refuses keyed writes while the rest exceed `max_records`. Runs until dropped.
    pub async fn sweep_idempotency(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.idempotency.sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.origin.sweep_idempotency(self.idempotency.retention).await {
                Ok(sweep) => {
                    let full = sweep.kept >= self.idempotency.max_records;
                    if full != self.idempotency_full.swap(full, Ordering::Relaxed) {
                        tracing::warn!(
                            kept = sweep.kept,
                            full,
                            "idempotency store full: keyed writes refused"
                        );
                    }
                    tracing::debug!(
                        removed = sweep.removed,
                        kept = sweep.kept,
                        "idempotency records swept"
                    );
                }
                Err(err) => tracing::warn!(cause = %err, "sweeping idempotency records failed"),
            }
        }
    }

    /// Applies one write in the session's order and returns once it is committed.
    /// The node's cache is updated with the committed item before the session's next
    /// write starts.
    ///
    /// The write waits for its turn for at most the write timeout. Given up before
    /// it started, it never starts ([`WriteFailure::SessionBusy`]: not applied); given
    /// up while it runs, it runs on to its end and is recorded in the session, and
    /// the answer is [`WriteFailure::OutcomeUnknown`].
    pub async fn write(&self, s: &SessionCtx, op: WriteOp) -> Result<Committed, WriteFailure> {
        if self.collections.get(op.key.collection()).is_none() {
            return Err(WriteFailure::UnknownCollection(op.key.collection().to_owned()));
        }
        if op.idempotency.is_some() && self.idempotency_full.load(Ordering::Relaxed) {
            return Err(WriteFailure::IdempotencyFull);
        }
        let key = op.key.clone();
        let origin = self.origin.clone();
        let cache = self.cache.clone();
        let start = Box::new(move || {
            async move {
                let key = op.key.clone();
                let committed = origin.write(op).await?;
                // A replay is the outcome of an earlier write: its value is as old as
                // that write, so it is neither cached as fresh nor kept as the
                // session's own value; it only raises the watermarks.
                let mut bytes = 0;
                if !committed.replayed {
                    let entry = CacheEntry::new(&key, committed.doc.clone(), Instant::now());
                    bytes = entry.body.len();
                    cache.offer(&key, entry);
                }
                Ok::<_, WriteError>(Written {
                    key,
                    doc: committed.doc,
                    own_value: !committed.replayed,
                    bytes,
                    extra: (committed.created, committed.replayed),
                })
            }
            .boxed_local()
        });
        // An actor that stopped since the look-up (evicted, passivated) is revived
        // first. Once sent, a write is never sent again: a lost answer could hide a
        // commit, and an increment must not apply twice.
        let handle = match &s.live {
            Some(live) if live.addr.connected() && !live.session.is_retired() => live.clone(),
            Some(stopped) => self.sessions.revive(stopped.session.clone()),
            // An anonymous request's session gets an actor for this write only: a
            // client that writes without naming a session pins nothing in the table
            // (its answer's token carries the write, should it come back with it).
            None => self.sessions.serve_once(s.session.clone()),
        };
        // A detached or anonymous session's actor serves this write only.
        let _revived = Released(handle.clone());
        let ticket = WriteTicket::new();
        let sent = handle
            .addr
            .send(Write {
                start,
                ticket: ticket.clone(),
            })
            .timeout(self.write_timeout)
            .await;
        let (doc, (created, replayed)) = match sent {
            Ok(Some(Ok(written))) => written,
            Ok(Some(Err(err))) => {
                if matches!(err, WriteError::OutcomeUnknown(_)) {
                    self.metrics.writes_unknown.inc();
                }
                return Err(err.into());
            }
            // Only a ticket given up on is dropped unstarted, and this one was not.
            Ok(None) => return Err(WriteFailure::SessionBusy),
            Err(MailboxError::Timeout | MailboxError::Closed) if ticket.abandon() => {
                self.metrics.writes_not_started.inc();
                return Err(WriteFailure::SessionBusy);
            }
            Err(MailboxError::Timeout | MailboxError::Closed) => {
                self.metrics.writes_unknown.inc();
                return Err(WriteFailure::OutcomeUnknown);
            }
        };
        if !Arc::ptr_eq(&handle.session, &s.session) {
            // The write ran on a revived session; the answer's token is signed from
            // the request's, which must hold the write too (its watermark; the value
            // is kept by the revived session).
            let written = Written {
                key,
                doc: doc.clone(),
                own_value: false,
                bytes: 0,
                extra: (),
            };
            s.session.state().record_write(&written, s.session.limits());
        }
        if replayed {
            self.metrics.writes_replayed.inc();
        } else {
            self.metrics.writes.inc();
        }
        Ok(Committed {
            doc,
            created,
            replayed,
        })
    }

    /// The version of `key` the primary holds now (0: the item does not exist): what
    /// a write conditioned on `If-Match: *` must find.
    pub async fn current_version(&self, key: &ItemKey) -> Result<Version, OriginError> {
        let read = self.origin.read(key.clone(), ReadRequest::PRIMARY).await?;
        Ok(if read.doc.exists() {
            read.doc.version
        } else {
            Version(0)
        })
    }
}

/// Ends a detached session when dropped ([`edgecache_actors::LiveSession::release`]);
/// a kept one stays live. (The request's own detached session is released once more
/// by its [`SessionCtx`], which changes nothing.)
struct Released(SessionHandle);

impl Drop for Released {
    fn drop(&mut self) {
        self.0.release();
    }
}
