//! Why a node operation failed, one enum per operation, classified so the REST edge
//! can tell the client's fault from the origin's (`http::error` maps them).

use edgecache_actors::TokenError;

use crate::origin::{OriginError, WriteError};

/// Why a request's session could not be opened (400).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("the session id must be 1 to 64 characters of A-Z, a-z, 0-9, '-' and '_'")]
    InvalidId,
    #[error("a session token was sent without a session id")]
    TokenWithoutSession,
    /// The session would keep the user id: it is bounded like every string it holds.
    #[error("the user id must be at most {max} bytes")]
    UserIdTooLong { max: usize },
    #[error(transparent)]
    Token(#[from] TokenError),
}

/// A read that could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("unknown collection `{0}`")]
    UnknownCollection(String),
    /// The origin failed and nothing the node holds may stand in (503).
    #[error("the origin could not serve the read")]
    Origin(#[from] OriginError),
}

/// A write that was not acknowledged. Only [`WriteFailure::OutcomeUnknown`] and
/// [`WriteError::OutcomeUnknown`] leave open whether it was applied; every other
/// failure means it provably was not.
#[derive(Debug, thiserror::Error)]
pub enum WriteFailure {
    #[error("unknown collection `{0}`")]
    UnknownCollection(String),
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The write did not start within the write timeout (the session's earlier
    /// writes were still running), or the session stopped before its turn: it never
    /// started and never will.
    #[error("the session's earlier writes did not finish in time")]
    SessionBusy,
    /// The write started and did not finish within the write timeout, or the session
    /// stopped while it ran: it goes on, and may or may not commit.
    #[error("the write started and did not finish in time")]
    OutcomeUnknown,
    /// The origin holds `idempotency.max_records` records: a keyed write is refused
    /// before it starts.
    #[error("the idempotency store is full")]
    IdempotencyFull,
}
