use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How much of the sessions a strategy is on for: `on`, `off`, or a percentage such as
/// `"25%"`. A percentage is sticky per session id and uses Unleash's normalisation
/// (murmur3 of `"<flag>:<session id>"`), so a configured rollout picks the same
/// sessions that a `flexibleRollout` with `stickiness = sessionId` would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollout {
    On,
    Off,
    /// On for this many percent of sessions (0..=100).
    Percent(u8),
}

impl Rollout {
    /// Whether the session with this stickiness value is in the enabled arm.
    pub fn is_enabled(self, group: &str, stickiness: &str) -> bool {
        match self {
            Rollout::On => true,
            Rollout::Off => false,
            Rollout::Percent(p) => normalized_hash(group, stickiness) <= u32::from(p),
        }
    }
}

/// Unleash's `normalizedHash(groupId:stickiness, 100)`: a number in 1..=100.
fn normalized_hash(group: &str, stickiness: &str) -> u32 {
    let mut input = Vec::with_capacity(group.len() + stickiness.len() + 1);
    input.extend_from_slice(group.as_bytes());
    input.push(b':');
    input.extend_from_slice(stickiness.as_bytes());
    let hash = murmur3::murmur3_32(&mut input.as_slice(), 0).unwrap_or(0);
    hash % 100 + 1
}

/// A rollout that is neither `on`, `off` nor a percentage from 0% to 100%.
#[derive(Debug, thiserror::Error)]
#[error("invalid rollout `{0}`: expected `on`, `off` or a percentage such as `25%`")]
pub struct RolloutError(String);

impl FromStr for Rollout {
    type Err = RolloutError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "on" | "true" => Ok(Rollout::On),
            "off" | "false" => Ok(Rollout::Off),
            other => other
                .strip_suffix('%')
                .and_then(|n| n.trim().parse::<u8>().ok())
                .filter(|n| *n <= 100)
                .map(Rollout::Percent)
                .ok_or_else(|| RolloutError(s.to_owned())),
        }
    }
}

impl fmt::Display for Rollout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rollout::On => f.write_str("on"),
            Rollout::Off => f.write_str("off"),
            Rollout::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Rollout {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rollout {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Text(String),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Bool(true) => Ok(Rollout::On),
            Raw::Bool(false) => Ok(Rollout::Off),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!("on".parse::<Rollout>().unwrap(), Rollout::On);
        assert_eq!("off".parse::<Rollout>().unwrap(), Rollout::Off);
        assert_eq!("25%".parse::<Rollout>().unwrap(), Rollout::Percent(25));
        assert!("101%".parse::<Rollout>().is_err());
        assert!("sometimes".parse::<Rollout>().is_err());
    }

    #[test]
    fn percentage_is_sticky_and_roughly_proportional() {
        let rollout = Rollout::Percent(30);
        let on = (0..10_000)
            .filter(|i| rollout.is_enabled("edgecache.read-your-writes", &format!("s{i}")))
            .count();
        assert!(
            (2_500..3_500).contains(&on),
            "{on} of 10000 sessions enabled at 30%"
        );
        for i in 0..100 {
            let id = format!("s{i}");
            assert_eq!(
                rollout.is_enabled("g", &id),
                rollout.is_enabled("g", &id),
                "evaluation must be sticky"
            );
        }
        assert!(!Rollout::Percent(0).is_enabled("g", "any"));
        assert!(Rollout::Percent(100).is_enabled("g", "any"));
    }
}
