use std::sync::Arc;
use std::time::Duration;

use edgecache_actors::{Doc, Fields, ItemKey, Version};

use super::WriteError;

/// One write of one item, applied atomically by the origin.
#[derive(Debug, Clone)]
pub struct WriteOp {
    pub key: ItemKey,
    /// `If-Match`: apply only if the item is at this version (`Version(0)`: absent).
    pub if_match: Option<Version>,
    pub kind: WriteOpKind,
    /// The request's `Idempotency-Key`: recorded with the write's outcome in the same
    /// transaction, so the same request again replays the outcome instead of writing.
    pub idempotency: Option<Idempotency>,
}

#[derive(Debug, Clone)]
pub enum WriteOpKind {
    /// Create or replace the whole document.
    Put(Arc<Fields>),
    /// An RFC 7396 JSON merge patch of an existing document; `null` removes a field.
    /// The patch is validated field by field before it is sent.
    Patch(Arc<Fields>),
    /// Delete the item (its version still advances: a tombstone).
    Delete,
    /// Add `by` to the integer `field`, failing with `BoundCrossed` if the result
    /// would fall below `min` or rise above `max`.
    Increment {
        field: String,
        by: i64,
        min: Option<i64>,
        max: Option<i64>,
    },
}

/// An `Idempotency-Key` and what it is bound to.
///
/// The origin keeps one record per key, written in the transaction of the write it
/// names, holding the fingerprint of the request and the write's outcome. Only applied
/// writes are recorded: a write that failed (a precondition, a bound, an outage before
/// commit) changed nothing, so repeating it is safe, and its key stays unused.
#[derive(Debug, Clone)]
pub struct Idempotency {
    /// The client's key (validated: 1 to 255 visible ASCII characters).
    pub key: String,
    /// SHA-256 of everything that makes the request what it is (method, collection,
    /// id, preconditions, body): the same key with another fingerprint is refused.
    pub fingerprint: [u8; 32],
    /// A record older than this counts as absent (and is swept).
    pub retention: Duration,
    /// How long a write waits for an in-flight write with the same key to finish
    /// before it is refused as in flight.
    pub in_flight_wait: Duration,
}

/// A committed write: the item as it now is, at its new version, with a position at
/// or after the commit.
#[derive(Debug, Clone)]
pub struct Committed {
    pub doc: Doc,
    /// Whether the item did not exist before (PUT answers 201).
    pub created: bool,
    /// Whether this is the recorded outcome of an earlier request with the same
    /// `Idempotency-Key` (nothing was written now). `doc` is the item as that write
    /// left it; its position is at or after that write's commit.
    pub replayed: bool,
}

/// `current + by`, unless that overflows or falls outside `[min, max]`: the one
/// bound check of an increment, whichever origin applies it. An overflow reports the
/// bound it passed, or `i64::MIN`/`i64::MAX` without one.
pub(super) fn increment_within(
    field: &str,
    current: i64,
    by: i64,
    min: Option<i64>,
    max: Option<i64>,
) -> Result<i64, WriteError> {
    let crossed = |bound| WriteError::BoundCrossed {
        field: field.to_owned(),
        current,
        by,
        bound,
    };
    let Some(value) = current.checked_add(by) else {
        return Err(crossed(if by > 0 {
            max.unwrap_or(i64::MAX)
        } else {
            min.unwrap_or(i64::MIN)
        }));
    };
    if let Some(min) = min.filter(|&min| value < min) {
        return Err(crossed(min));
    }
    if let Some(max) = max.filter(|&max| value > max) {
        return Err(crossed(max));
    }
    Ok(value)
}
