//! What the fetched flag definitions say about each strategy, worked out once per
//! fetch so that a request's evaluation does no more than it must.

use std::collections::HashSet;
use std::sync::OnceLock;

use parking_lot::Mutex;
use unleash_types::client_features::{ClientFeature, ClientFeatures};

use crate::Strategy;

/// How one strategy is evaluated under the current definitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Unleash has no flag of this name (or the token does not see it): the
    /// configured default applies.
    Absent,
    /// A flag without variants: its arm is `on` or `off`.
    Plain,
    /// A flag with variants: an enabled session's arm is its variant's name.
    Variants {
        /// Every enabled session gets a variant (every strategy has variants, or the
        /// flag has flag-level ones), so "no variant" means "disabled".
        always: bool,
        /// The variant names, interned.
        names: Box<[&'static str]>,
    },
}

/// The mode of every strategy, indexed by [`Strategy::index`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) modes: [Mode; Strategy::ALL.len()],
}

impl Plan {
    pub(crate) fn new(features: &ClientFeatures) -> Self {
        let modes = Strategy::ALL.map(|strategy| {
            features
                .features
                .iter()
                .find(|f| f.name == strategy.flag_name())
                .map_or(Mode::Absent, mode)
        });
        Plan { modes }
    }

    pub(crate) fn mode(&self, strategy: Strategy) -> &Mode {
        &self.modes[strategy.index()]
    }
}

fn mode(feature: &ClientFeature) -> Mode {
    let strategies = feature.strategies.as_deref().unwrap_or_default();
    let flag_variants = feature.variants.as_deref().unwrap_or_default();
    let mut names: Vec<&'static str> = Vec::new();
    let mut add = |name: &str| {
        if let Some(interned) = intern(name) {
            if !names.contains(&interned) {
                names.push(interned);
            }
        }
    };
    for v in flag_variants {
        add(&v.name);
    }
    let mut every_strategy_has_variants = !strategies.is_empty();
    for s in strategies {
        let variants = s.variants.as_deref().unwrap_or_default();
        every_strategy_has_variants &= !variants.is_empty();
        for v in variants {
            add(&v.name);
        }
    }
    if flag_variants.is_empty() && !strategies.iter().any(has_variants) {
        return Mode::Plain;
    }
    Mode::Variants {
        always: !flag_variants.is_empty() || every_strategy_has_variants,
        names: names.into_boxed_slice(),
    }
}

fn has_variants(s: &unleash_types::client_features::Strategy) -> bool {
    s.variants.as_ref().is_some_and(|v| !v.is_empty())
}

/// Most distinct variant names ever interned: they are leaked to be `&'static str` (so
/// that [`crate::Arm`] stays `Copy`), so their number is bounded. Past it, a new
/// name is not interned and the session's arm is labelled `on`.
pub(crate) const MAX_INTERNED: usize = 256;

/// The `&'static` copy of a variant name, made once per distinct name.
pub(crate) fn intern(name: &str) -> Option<&'static str> {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES.get_or_init(Default::default).lock();
    if let Some(existing) = names.get(name) {
        return Some(existing);
    }
    if names.len() >= MAX_INTERNED {
        tracing::warn!(
            variant = name,
            "unleash: more than {MAX_INTERNED} distinct variant names; this one is reported as `on`"
        );
        return None;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    Some(leaked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(features: serde_json::Value) -> Plan {
        Plan::new(&serde_json::from_value(json!({ "version": 2, "features": features })).unwrap())
    }

    fn rollout(variants: serde_json::Value) -> serde_json::Value {
        json!({ "name": "flexibleRollout", "constraints": [],
                "parameters": { "rollout": "50", "stickiness": "sessionId", "groupId": "g" },
                "variants": variants })
    }

    #[test]
    fn absent_plain_and_variant_flags() {
        let variant = |name: &str| json!({ "name": name, "weight": 500, "weightType": "variable", "stickiness": "sessionId" });
        let p = plan(json!([
            { "name": "edgecache.read-your-writes", "enabled": true, "strategies": [rollout(json!([]))] },
            { "name": "edgecache.monotonic-reads", "enabled": true,
              "strategies": [rollout(json!([variant("fast"), variant("safe")]))] },
            { "name": "edgecache.strict-fields", "enabled": true,
              "strategies": [rollout(json!([variant("x")])), rollout(json!([]))] },
            { "name": "edgecache.replica-wait", "enabled": true, "strategies": [],
              "variants": [variant("legacy")] },
            { "name": "unrelated", "enabled": true, "strategies": [] }
        ]));
        assert_eq!(p.mode(Strategy::ReadYourWrites), &Mode::Plain);
        assert_eq!(
            p.mode(Strategy::MonotonicReads),
            &Mode::Variants {
                always: true,
                names: vec!["fast", "safe"].into_boxed_slice()
            }
        );
        assert!(matches!(
            p.mode(Strategy::StrictFields),
            Mode::Variants { always: false, .. }
        ));
        assert!(matches!(
            p.mode(Strategy::ReplicaWait),
            Mode::Variants { always: true, .. }
        ));
        assert_eq!(p.mode(Strategy::SessionAffinity), &Mode::Absent);
        assert_eq!(p.mode(Strategy::StaleWhileRevalidate), &Mode::Absent);
    }

    #[test]
    fn interning_returns_one_copy_per_name() {
        let a = intern("treatment-a").unwrap();
        let b = intern(&String::from("treatment-a")).unwrap();
        assert_eq!(a, "treatment-a");
        assert!(std::ptr::eq(a, b));
    }
}
