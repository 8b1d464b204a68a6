//! The tier a read was served from: in logs, metrics and `?explain=true` alike.

/// The tier a read's non-strict fields were served from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// The session's own pending write.
    Session,
    /// The node's shared cache.
    Cache,
    /// The origin's primary.
    Primary,
    /// One of the origin's replicas.
    Replica,
}

impl Tier {
    pub const ALL: [Tier; 4] = [Tier::Session, Tier::Cache, Tier::Primary, Tier::Replica];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Session => "session",
            Tier::Cache => "cache",
            Tier::Primary => "primary",
            Tier::Replica => "replica",
        }
    }
}
