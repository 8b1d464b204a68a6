use std::fmt;
use std::str::FromStr;

/// A consistency strategy that can be switched per session.
///
/// The names are stable: they are the configuration keys (`flags.defaults.<key>`) and,
/// prefixed with `edgecache.`, the Unleash flag names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Strategy {
    /// A read reflects every write this session had acknowledged.
    ReadYourWrites,
    /// A read never returns an older version than one this session already read.
    MonotonicReads,
    /// Requests of a session are served by the node that owns it (forwarding).
    SessionAffinity,
    /// Relaxed fields past their TTL are served stale while one refresh runs.
    StaleWhileRevalidate,
    /// Fields of the strict class are read from the primary on every read.
    StrictFields,
    /// A replica that lags the session's watermark is waited for, within a budget.
    ReplicaWait,
}

impl Strategy {
    /// Every strategy, in a fixed order (the index is [`Strategy::index`]).
    pub const ALL: [Strategy; 6] = [
        Strategy::ReadYourWrites,
        Strategy::MonotonicReads,
        Strategy::SessionAffinity,
        Strategy::StaleWhileRevalidate,
        Strategy::StrictFields,
        Strategy::ReplicaWait,
    ];

    /// The configuration key of this strategy.
    pub const fn as_str(self) -> &'static str {
        match self {
            Strategy::ReadYourWrites => "read-your-writes",
            Strategy::MonotonicReads => "monotonic-reads",
            Strategy::SessionAffinity => "session-affinity",
            Strategy::StaleWhileRevalidate => "stale-while-revalidate",
            Strategy::StrictFields => "strict-fields",
            Strategy::ReplicaWait => "replica-wait",
        }
    }

    /// The Unleash flag name of this strategy.
    pub const fn flag_name(self) -> &'static str {
        match self {
            Strategy::ReadYourWrites => "edgecache.read-your-writes",
            Strategy::MonotonicReads => "edgecache.monotonic-reads",
            Strategy::SessionAffinity => "edgecache.session-affinity",
            Strategy::StaleWhileRevalidate => "edgecache.stale-while-revalidate",
            Strategy::StrictFields => "edgecache.strict-fields",
            Strategy::ReplicaWait => "edgecache.replica-wait",
        }
    }

    /// Position of this strategy in [`Strategy::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name given is not a strategy.
#[derive(Debug, thiserror::Error)]
#[error("unknown strategy `{0}` (known: read-your-writes, monotonic-reads, session-affinity, stale-while-revalidate, strict-fields, replica-wait)")]
pub struct UnknownStrategy(pub String);

impl FromStr for Strategy {
    type Err = UnknownStrategy;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let key = s.strip_prefix("edgecache.").unwrap_or(s).replace('_', "-");
        Strategy::ALL
            .into_iter()
            .find(|strategy| strategy.as_str() == key)
            .ok_or_else(|| UnknownStrategy(s.to_owned()))
    }
}

impl serde::Serialize for Strategy {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Strategy {
    /// Accepts the key with dashes or underscores (environment variables cannot hold
    /// dashes), with or without the `edgecache.` prefix.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_index_matches_all() {
        for (i, s) in Strategy::ALL.into_iter().enumerate() {
            assert_eq!(s.index(), i);
            assert_eq!(s.as_str().parse::<Strategy>().unwrap(), s);
            assert_eq!(s.flag_name().parse::<Strategy>().unwrap(), s);
        }
        assert!("read-your-write".parse::<Strategy>().is_err());
    }
}
