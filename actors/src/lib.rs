//! Sessions: per-session actors, their watermarks and the signed tokens that carry
//! them between nodes. No HTTP here.

mod model;

pub use model::{item_hash, Doc, Fields, ItemKey, KeyRef, Position, Version};
