use edgecache_actors::Version;

/// An origin read that failed. Every variant is the origin's fault, never the client's.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// The origin cannot be reached or is overloaded (busy, timed out, down).
    #[error("origin unavailable: {reason}")]
    Unavailable {
        reason: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The origin answered with something the node cannot use (corrupt row, bug).
    #[error("origin internal error: {reason}")]
    Internal {
        reason: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl OriginError {
    pub fn unavailable(
        reason: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        OriginError::Unavailable {
            reason: reason.into(),
            source: Some(Box::new(source)),
        }
    }

    pub fn internal(
        reason: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        OriginError::Internal {
            reason: reason.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// A write that was not acknowledged. Every variant but [`WriteError::OutcomeUnknown`]
/// means that nothing of it was applied.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// `If-Match` named another version than the current one.
    #[error("version mismatch: expected {expected}, current {current}")]
    VersionMismatch { expected: Version, current: Version },
    /// The item does not exist (patch, delete, increment of an absent item).
    #[error("item not found")]
    NotFound,
    /// An increment would take the field past its bound; `current` is its value.
    #[error("bound crossed: {field} is {current}, adding {by} would pass {bound}")]
    BoundCrossed {
        field: String,
        current: i64,
        by: i64,
        bound: i64,
    },
    /// An increment of a field that is absent or not an integer.
    #[error("field {field} is not an integer")]
    NotAnInteger { field: String },
    /// The `Idempotency-Key` names a recorded write of another request.
    #[error("the idempotency key was used for another request")]
    KeyReused,
    /// A write with the same `Idempotency-Key` is still running.
    #[error("a write with the same idempotency key is still in flight")]
    KeyInFlight,
    /// The write failed before it could commit: the origin rolled it back.
    #[error(transparent)]
    Origin(#[from] OriginError),
    /// The write reached its commit and the answer was lost (connection lost during
    /// `COMMIT`, server shut down): it may or may not have been applied.
    #[error("the outcome of the write is unknown")]
    OutcomeUnknown(#[source] OriginError),
}
