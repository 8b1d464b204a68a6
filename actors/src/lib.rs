//! Sessions: per-session actors, their watermarks and the signed tokens that carry
//! them between nodes. No HTTP here.

mod model;
mod registry;
mod retired;
mod session;
mod token;
mod watermarks;

pub use model::{item_hash, Doc, Fields, ItemKey, KeyRef, Position, Version};
pub use registry::{LiveSession, SessionHandle, SessionRegistry, SessionStart, MAX_SESSION_ID_BYTES};
pub use retired::RetiredMarks;
pub use session::{
    Passivate, PendingBudget, PendingWrite, Session, SessionActor, SessionLimits, SessionState, Write,
    WriteFuture, WriteTicket, Written,
};
pub use token::{Carried, Lineage, TokenError, TokenKeys, MAX_TOKEN_LEN};
pub use watermarks::{Mark, Need, Watermarks};
