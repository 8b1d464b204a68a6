//! Consistency strategies as feature flags, evaluated per session.
//!
//! Every consistency mechanism of the edge node is a [`Strategy`]. A request asks a
//! [`FlagSource`] for the [`Arm`] its session is in, given a [`FlagContext`] (user id,
//! session id, node, region). Evaluation is sticky: the same session always lands in
//! the same arm for a given rollout, on every node, so an A/B comparison is per session.
//!
//! [`ConfigFlags`] evaluates rollouts from configuration. [`UnleashFlags`] follows an
//! Unleash server behind the same [`FlagSource`] trait and falls back to it.

mod context;
mod rollout;
mod source;
mod strategy;
mod unleash;

pub use context::FlagContext;
pub use rollout::{Rollout, RolloutError};
pub use source::{Arm, ConfigFlags, FlagSource, Strategies};
pub use strategy::Strategy;
pub use unleash::{UnleashError, UnleashFlags, UnleashSettings, UnleashState, UnleashStatus};
