use std::collections::BTreeMap;

use crate::{FlagContext, Rollout, Strategy};

/// The arm of one strategy for one session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arm {
    /// Whether the strategy is on for the session.
    pub enabled: bool,
    /// The variant name, when the flag source has one (an Unleash variant); else the
    /// arm is named by `enabled`.
    pub variant: Option<&'static str>,
}

impl Arm {
    pub const ON: Arm = Arm {
        enabled: true,
        variant: None,
    };
    pub const OFF: Arm = Arm {
        enabled: false,
        variant: None,
    };

    /// `on` or `off`, without a variant.
    pub const fn from_enabled(enabled: bool) -> Arm {
        if enabled {
            Arm::ON
        } else {
            Arm::OFF
        }
    }

    /// The label of this arm in logs and metrics: the variant, else `on`/`off`.
    pub fn label(self) -> &'static str {
        match (self.variant, self.enabled) {
            (Some(v), _) => v,
            (None, true) => "on",
            (None, false) => "off",
        }
    }
}

/// Evaluates strategies for a request. Implementations must be cheap and must not
/// block: they run on the request path of every read.
pub trait FlagSource: Send + Sync + 'static {
    /// The arm of `strategy` for the session in `ctx`.
    fn arm(&self, strategy: Strategy, ctx: &FlagContext<'_>) -> Arm;

    /// Changes whenever evaluating the same context may give another arm (new flag
    /// definitions, fetched or bootstrapped). A caller may keep the [`Strategies`] it
    /// evaluated for a session and a context while this number is unchanged, instead of
    /// evaluating on every request. Sources whose answers never change return 0, the
    /// default. (Unleash strategies that depend on the time or on chance, such as
    /// `currentTime` constraints or `random` stickiness, are then fixed per session
    /// until the definitions change.)
    fn generation(&self) -> u64 {
        0
    }

    /// A one-line account of where the flags come from now, for `/readyz`
    /// (`None`: configuration only, nothing to report).
    fn status(&self) -> Option<String> {
        None
    }

    /// Stops whatever the source runs in the background (a poll loop); the flags
    /// known now stay in force. Nothing to stop by default.
    fn stop(&self) {}

    /// Every strategy evaluated once for this request.
    fn strategies(&self, ctx: &FlagContext<'_>) -> Strategies {
        let mut arms = [Arm::OFF; Strategy::ALL.len()];
        for s in Strategy::ALL {
            arms[s.index()] = self.arm(s, ctx);
        }
        Strategies { arms }
    }
}

/// The arms of every strategy for one request, evaluated once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strategies {
    arms: [Arm; Strategy::ALL.len()],
}

impl Strategies {
    /// Every strategy on (what a session gets when nothing is configured).
    pub const ALL_ON: Strategies = Strategies {
        arms: [Arm::ON; Strategy::ALL.len()],
    };

    pub(crate) fn from_arms(arms: [Arm; Strategy::ALL.len()]) -> Self {
        Strategies { arms }
    }

    pub fn arm(&self, strategy: Strategy) -> Arm {
        self.arms[strategy.index()]
    }

    pub fn is_on(&self, strategy: Strategy) -> bool {
        self.arms[strategy.index()].enabled
    }

    /// A copy with one strategy set to `arm`.
    pub fn with(mut self, strategy: Strategy, arm: Arm) -> Self {
        self.arms[strategy.index()] = arm;
        self
    }
}

/// Rollouts from configuration: `flags.defaults` maps a strategy to `on`, `off` or a
/// percentage. A strategy not named is on.
#[derive(Debug, Clone)]
pub struct ConfigFlags {
    rollouts: [Rollout; Strategy::ALL.len()],
}

impl ConfigFlags {
    pub fn new(defaults: &BTreeMap<Strategy, Rollout>) -> Self {
        let mut rollouts = [Rollout::On; Strategy::ALL.len()];
        for (strategy, rollout) in defaults {
            rollouts[strategy.index()] = *rollout;
        }
        Self { rollouts }
    }
}

impl FlagSource for ConfigFlags {
    fn arm(&self, strategy: Strategy, ctx: &FlagContext<'_>) -> Arm {
        Arm::from_enabled(self.rollouts[strategy.index()].is_enabled(strategy.flag_name(), ctx.session_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(session_id: &str) -> FlagContext<'_> {
        FlagContext {
            session_id,
            user_id: session_id,
            node: "n1",
            region: "r1",
        }
    }

    #[test]
    fn unnamed_strategies_default_to_on() {
        let mut defaults = BTreeMap::new();
        defaults.insert(Strategy::ReadYourWrites, Rollout::Off);
        let flags = ConfigFlags::new(&defaults);
        let arms = flags.strategies(&ctx("abc"));
        assert!(!arms.is_on(Strategy::ReadYourWrites));
        assert!(arms.is_on(Strategy::MonotonicReads));
        assert_eq!(arms.arm(Strategy::ReadYourWrites).label(), "off");
    }
}
