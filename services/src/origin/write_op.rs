use std::sync::Arc;

use edgecache_actors::{Doc, Fields, ItemKey, Version};

/// One write of one item, applied atomically by the origin.
#[derive(Debug, Clone)]
pub struct WriteOp {
    pub key: ItemKey,
    /// `If-Match`: apply only if the item is at this version (`Version(0)`: absent).
    pub if_match: Option<Version>,
    pub kind: WriteOpKind,
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

/// A committed write: the item as it now is, at its new version, with a position at
/// or after the commit.
#[derive(Debug, Clone)]
pub struct Committed {
    pub doc: Doc,
    /// Whether the item did not exist before (PUT answers 201).
    pub created: bool,
}
