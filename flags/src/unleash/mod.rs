//! Strategy flags from an Unleash server, behind [`FlagSource`].
//!
//! [`UnleashFlags::start`] builds an `unleash-api-client` client, loads the optional
//! bootstrap file and spawns a poll loop on the current Tokio runtime: every
//! `refresh_interval` it fetches `/client/features`, swaps the new definitions in
//! (so a change made in Unleash takes effect without a restart), registers the node
//! once and sends the evaluation metrics that the SDK counted since the last fetch.
//!
//! What a session's strategies are evaluated against (once per session, and again
//! when the flags change, see [`FlagSource::generation`]):
//! * before the first successful fetch and without a bootstrap file: the configured
//!   defaults ([`ConfigFlags`]). The SDK alone would answer `false` for every flag
//!   until then, whatever default it is given;
//! * with a bootstrap file, until the first successful fetch: the file's flags;
//! * after a fetch: the last fetched flags, also while Unleash is unreachable;
//! * a strategy whose flag Unleash does not have (or the token cannot see) follows its
//!   configured default, so connecting a node to an empty Unleash changes nothing.
//!
//! The context is Unleash's: `userId` ([`FlagContext::user_id`]), `sessionId`, and the
//! properties `node` and `region`. A flag with variants puts an enabled session in the
//! arm named by its variant ([`Arm::variant`]); a flag without is `on` or `off`.
//!
//! Two things the SDK does not do are done here: an HTTP status outside 2xx is an
//! error that says so (the SDK parses any body as JSON, so a rejected token would read
//! "missing field `version`"), and every request has a timeout. The state and the last
//! error are in [`UnleashFlags::status`], for `/readyz`.

mod plan;
mod settings;
mod status;
mod transport;

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use secrecy::ExposeSecret;
use unleash_api_client::api::{features_endpoint, Metrics};
use unleash_api_client::client::{ClientBuilder, FeatureKey};
use unleash_api_client::{Client, Context};
use unleash_types::client_features::ClientFeatures;

pub use settings::UnleashSettings;
pub use status::{UnleashState, UnleashStatus};

use crate::{Arm, ConfigFlags, FlagContext, FlagSource, Strategies, Strategy};
use plan::{Mode, Plan};
use status::StatusCell;
use transport::CheckedTransport;

impl FeatureKey for Strategy {
    fn name(self) -> &'static str {
        self.flag_name()
    }
}

/// Why the Unleash flag source could not start. Each message names its key.
#[derive(Debug, thiserror::Error)]
pub enum UnleashError {
    #[error(
        "flags.unleash: UnleashFlags::start must be called inside a Tokio runtime \
         (an actix System or #[tokio::main]); its poll loop runs there"
    )]
    NoRuntime,
    #[error("flags.unleash.bootstrap_file: cannot read {}: {source}", path.display())]
    BootstrapRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("flags.unleash.bootstrap_file: {} is not a /api/client/features document: {source}", path.display())]
    BootstrapParse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("flags.unleash.bootstrap_file: the flags of {} cannot be loaded: {message}", path.display())]
    BootstrapLoad { path: PathBuf, message: String },
    #[error("flags.unleash: cannot create the Unleash client: {0}")]
    Client(String),
}

/// Strategy flags from Unleash, falling back to configured defaults. Cheap to clone
/// (one `Arc`); every clone is the same source. The poll loop stops when the last
/// clone is dropped, or at once with [`UnleashFlags::stop`].
#[derive(Clone)]
pub struct UnleashFlags {
    shared: Arc<Shared>,
}

struct Shared {
    client: Client<Strategy>,
    defaults: ConfigFlags,
    /// How the fetched (or bootstrapped) flags are evaluated; `None` until there are
    /// some, and then the configured defaults apply.
    plan: ArcSwapOption<Plan>,
    /// Bumped after `plan` and the SDK's state changed ([`FlagSource::generation`]).
    generation: AtomicU64,
    status: StatusCell,
    app_name: String,
    features_url: String,
    metrics_url: String,
    interval: Duration,
    task: Mutex<Option<tokio::task::AbortHandle>>,
}

impl UnleashFlags {
    /// Starts following the Unleash server of `settings`: loads the bootstrap file
    /// when there is one, then spawns the poll loop, which fetches at once and then
    /// every `refresh_interval`. `defaults` (from `flags.defaults`) apply until flags
    /// are known, and to strategies Unleash has no flag for. `node` is the node id, the
    /// instance id when `settings.instance_id` is absent.
    ///
    /// Must be called inside a Tokio runtime that lives as long as the node, since the
    /// poll loop is spawned on it: in `main` under `#[actix_web::main]` (the System's
    /// runtime), not in an HTTP worker's factory closure. Returns at once; it does not
    /// wait for the first fetch ([`UnleashFlags::status`] tells when it succeeded).
    pub fn start(
        settings: &UnleashSettings,
        defaults: ConfigFlags,
        node: &str,
    ) -> Result<Self, UnleashError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| UnleashError::NoRuntime)?;
        let instance_id = settings.instance_id.as_deref().unwrap_or(node);
        let interval_ms = u64::try_from(settings.refresh_interval.as_millis()).unwrap_or(u64::MAX);
        let transport = Arc::new(CheckedTransport::new(
            unleash_api_client::http::default_transport(),
            settings.request_timeout,
        ));
        let client = ClientBuilder::default()
            .interval(interval_ms)
            .into_client_with_transport::<Strategy>(
                &settings.url,
                &settings.app_name,
                instance_id,
                Some(settings.client_token.expose_secret().to_owned()),
                transport,
            )
            .map_err(|e| UnleashError::Client(format!("{e:#}")))?;

        let mut plan = None;
        let mut state = UnleashState::Defaults;
        if let Some(path) = &settings.bootstrap_file {
            let features = read_bootstrap(path)?;
            let bootstrap_plan = Plan::new(&features);
            let count = features.features.len();
            client
                .memoize(features)
                .map_err(|e| UnleashError::BootstrapLoad {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            tracing::info!(
                file = %path.display(),
                flags = count,
                "unleash: bootstrap flags loaded; they apply until the first fetch"
            );
            plan = Some(Arc::new(bootstrap_plan));
            state = UnleashState::Bootstrapped;
        }

        let shared = Arc::new(Shared {
            client,
            defaults,
            generation: AtomicU64::new(u64::from(plan.is_some())),
            plan: ArcSwapOption::new(plan),
            status: StatusCell::new(state),
            app_name: settings.app_name.clone(),
            features_url: features_endpoint(&settings.url),
            metrics_url: Metrics::endpoint(&settings.url),
            interval: settings.refresh_interval,
            task: Mutex::new(None),
        });
        let task = runtime.spawn(poll(Arc::downgrade(&shared)));
        *shared.task.lock() = Some(task.abort_handle());
        tracing::info!(
            url = %settings.url,
            app_name = %settings.app_name,
            instance_id,
            refresh_interval = ?settings.refresh_interval,
            "unleash: following flags"
        );
        Ok(Self { shared })
    }

    /// Where the flags come from now, and the last fetch error if the last fetch
    /// failed. Cheap (one short lock); meant for `/readyz`.
    pub fn status(&self) -> UnleashStatus {
        self.shared.status.get()
    }

    /// Stops the poll loop; the flags known now stay in force. Idempotent.
    pub fn stop(&self) {
        if let Some(task) = self.shared.task.lock().take() {
            task.abort();
        }
    }
}

impl fmt::Debug for UnleashFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnleashFlags")
            .field("features_url", &self.shared.features_url)
            .field("status", &self.status())
            .finish()
    }
}

fn read_bootstrap(path: &Path) -> Result<ClientFeatures, UnleashError> {
    let text = std::fs::read(path).map_err(|source| UnleashError::BootstrapRead {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_slice(&text).map_err(|source| UnleashError::BootstrapParse {
        path: path.to_owned(),
        source,
    })
}

// ------------------------------------------------------------------ evaluation

impl FlagSource for UnleashFlags {
    fn arm(&self, strategy: Strategy, ctx: &FlagContext<'_>) -> Arm {
        let shared = &*self.shared;
        match shared.plan.load().as_deref() {
            None => shared.defaults.arm(strategy, ctx),
            Some(plan) => with_context(&shared.app_name, ctx, |uctx| {
                shared.eval(plan, strategy, uctx, ctx)
            }),
        }
    }

    fn status(&self) -> Option<String> {
        Some(UnleashFlags::status(self).to_string())
    }

    fn stop(&self) {
        UnleashFlags::stop(self);
    }

    fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    fn strategies(&self, ctx: &FlagContext<'_>) -> Strategies {
        let shared = &*self.shared;
        match shared.plan.load().as_deref() {
            None => shared.defaults.strategies(ctx),
            Some(plan) => with_context(&shared.app_name, ctx, |uctx| {
                let mut arms = [Arm::OFF; Strategy::ALL.len()];
                for s in Strategy::ALL {
                    arms[s.index()] = shared.eval(plan, s, uctx, ctx);
                }
                Strategies::from_arms(arms)
            }),
        }
    }
}

impl Shared {
    fn eval(&self, plan: &Plan, strategy: Strategy, uctx: &Context, ctx: &FlagContext<'_>) -> Arm {
        match plan.mode(strategy) {
            Mode::Absent => self.defaults.arm(strategy, ctx),
            Mode::Plain => Arm::from_enabled(self.client.is_enabled(strategy, Some(uctx), false)),
            Mode::Variants { always, names } => {
                let variant = self.client.get_variant(strategy, uctx);
                if variant.enabled {
                    Arm {
                        enabled: true,
                        variant: names.iter().copied().find(|n| *n == variant.name),
                    }
                } else if *always {
                    // Every enabled session gets a variant: none means disabled.
                    Arm::OFF
                } else {
                    // Enabled through a strategy without variants, or disabled. (The
                    // SDK then counts this evaluation twice in its metrics.)
                    Arm::from_enabled(self.client.is_enabled(strategy, Some(uctx), false))
                }
            }
        }
    }
}

thread_local! {
    /// One Unleash context per thread, refilled for each request: the SDK wants owned
    /// strings and a map of properties, and reusing them allocates nothing.
    static CONTEXT: RefCell<Context> = RefCell::new(Context::default());
}

fn with_context<R>(app_name: &str, ctx: &FlagContext<'_>, f: impl FnOnce(&Context) -> R) -> R {
    CONTEXT.with(|cell| match cell.try_borrow_mut() {
        Ok(mut uctx) => {
            fill_context(&mut uctx, app_name, ctx);
            f(&uctx)
        }
        Err(_) => {
            let mut uctx = Context::default();
            fill_context(&mut uctx, app_name, ctx);
            f(&uctx)
        }
    })
}

/// Makes `uctx` the Unleash context of `ctx`, reusing its allocations.
fn fill_context(uctx: &mut Context, app_name: &str, ctx: &FlagContext<'_>) {
    set_opt(&mut uctx.user_id, ctx.user_id);
    set_opt(&mut uctx.session_id, ctx.session_id);
    set_property(&mut uctx.properties, "node", ctx.node);
    set_property(&mut uctx.properties, "region", ctx.region);
    if uctx.app_name != app_name {
        app_name.clone_into(&mut uctx.app_name);
    }
}

fn set_opt(slot: &mut Option<String>, value: &str) {
    if value.is_empty() {
        *slot = None;
    } else if let Some(s) = slot {
        s.clear();
        s.push_str(value);
    } else {
        *slot = Some(value.to_owned());
    }
}

fn set_property(properties: &mut HashMap<String, String>, key: &str, value: &str) {
    match properties.get_mut(key) {
        Some(v) if v == value => {}
        Some(v) => value.clone_into(v),
        None => {
            properties.insert(key.to_owned(), value.to_owned());
        }
    }
}

// ------------------------------------------------------------------ the poll loop

/// What the poll loop remembers between rounds.
#[derive(Default)]
struct PollState {
    registered: bool,
    metrics_failing: bool,
    fetched_once: bool,
    /// Our flags and the segments, as last fetched: a new generation when they change.
    fingerprint: Vec<u8>,
}

/// Fetches, then waits [`next_wait`], until stopped or until every [`UnleashFlags`] is
/// dropped (it holds only a weak reference between rounds).
async fn poll(shared: Weak<Shared>) {
    let mut state = PollState::default();
    // Seeded differently in every process (std's hasher keys are random), which is
    // all the spread needs.
    let mut rng = SmallRng::seed_from_u64(std::hash::BuildHasher::hash_one(
        &std::collections::hash_map::RandomState::new(),
        std::process::id(),
    ));
    loop {
        let Some(s) = shared.upgrade() else { return };
        s.poll_once(&mut state).await;
        let wait = next_wait(s.interval, s.status.get().consecutive_failures, rng.random());
        drop(s);
        tokio::time::sleep(wait).await;
    }
}

/// The longest wait between fetches while they fail (unless the interval is longer):
/// how late a node may notice that Unleash is back.
const MAX_FAILING_WAIT: Duration = Duration::from_secs(30);

/// The wait before the next fetch, with `unit` uniform in [0, 1). While fetches
/// succeed: the interval, shortened by up to a fifth, so that nodes started together
/// do not poll together and a flag change still takes effect within the interval.
/// After `failures` failed fetches in a row: the interval doubled per failure, up to
/// [`MAX_FAILING_WAIT`], drawn from the upper half of that (a fleet does not hammer an
/// Unleash that is down or overloaded, nor come back to it in step).
fn next_wait(interval: Duration, failures: u32, unit: f64) -> Duration {
    if failures == 0 {
        return interval.mul_f64(1.0 - 0.2 * unit);
    }
    let cap = MAX_FAILING_WAIT.max(interval);
    let grown = interval.saturating_mul(1u32 << failures.min(16)).min(cap);
    grown.mul_f64(0.5 + 0.5 * unit)
}

impl Shared {
    async fn poll_once(&self, state: &mut PollState) {
        let interval_ms = u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX);
        let features = match self
            .client
            .http
            .get_json::<ClientFeatures>(&self.features_url, Some(interval_ms))
            .await
        {
            Ok(features) => features,
            Err(e) => {
                let message = if let Some(json) = e.downcast_ref::<serde_json::Error>() {
                    format!(
                        "the answer of {} is not a flags document: {json}",
                        self.features_url
                    )
                } else {
                    format!("{e:#}")
                };
                return self.fetch_failed(message);
            }
        };
        let plan = Plan::new(&features);
        let count = features.features.len();
        let fingerprint = fingerprint(&features);
        let metrics = match self.client.memoize(features) {
            Ok(metrics) => metrics,
            Err(e) => return self.fetch_failed(format!("the fetched flags cannot be loaded: {e}")),
        };
        let ours = plan.modes.iter().filter(|m| **m != Mode::Absent).count();
        self.plan.store(Some(Arc::new(plan)));
        if !state.fetched_once || fingerprint != state.fingerprint {
            self.generation.fetch_add(1, Ordering::AcqRel);
            state.fingerprint = fingerprint;
        }
        match self.status.fetched() {
            Some((failures, error)) => tracing::info!(
                failures,
                last_error = %error,
                "unleash: flags fetched again after failures"
            ),
            None if !state.fetched_once => tracing::info!(
                flags = count,
                strategies = ours,
                "unleash: flags fetched; strategies without a flag keep their configured default"
            ),
            None => {}
        }
        state.fetched_once = true;

        if !state.registered {
            match self.client.register().await {
                Ok(()) => {
                    state.registered = true;
                    self.status.set_registered();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "unleash: registration failed; retried at the next fetch")
                }
            }
        }
        if let Some(metrics) = metrics {
            match self
                .client
                .http
                .post_json(&self.metrics_url, metrics, Some(interval_ms))
                .await
            {
                Ok(_) => {
                    self.status.metrics_sent();
                    if state.metrics_failing {
                        state.metrics_failing = false;
                        tracing::info!("unleash: metrics sent again");
                    }
                }
                Err(e) if !state.metrics_failing => {
                    state.metrics_failing = true;
                    tracing::warn!(error = %format!("{e:#}"), "unleash: sending metrics failed");
                }
                Err(_) => {}
            }
        }
    }

    fn fetch_failed(&self, message: String) {
        let (new, failures) = self.status.failed(message.clone());
        let in_force = match self.status.get().state {
            UnleashState::Ready => "the last fetched flags stay in force",
            UnleashState::Bootstrapped => "the bootstrap file's flags stay in force",
            UnleashState::Defaults => "the configured defaults apply",
        };
        let rejected = message.starts_with("HTTP 401") || message.starts_with("HTTP 403");
        if rejected && new {
            tracing::error!(error = %message, failures, "unleash: the client token is rejected; {in_force}");
        } else if new || failures % 60 == 0 {
            tracing::warn!(error = %message, failures, "unleash: fetching flags failed; {in_force}");
        } else {
            tracing::debug!(error = %message, failures, "unleash: fetching flags failed");
        }
    }
}

/// What of a features document can change our evaluations: our flags (in full: the
/// SDK's types compare flags by name only) and the segments they may use.
fn fingerprint(features: &ClientFeatures) -> Vec<u8> {
    let ours: Vec<_> = features
        .features
        .iter()
        .filter(|f| f.name.parse::<Strategy>().is_ok_and(|s| s.flag_name() == f.name))
        .collect();
    serde_json::to_vec(&(ours, &features.segments)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_polls_spread_within_the_interval_and_failing_ones_back_off_to_a_cap() {
        let second = Duration::from_secs(1);
        for unit in [0.0, 0.3, 0.999] {
            let wait = next_wait(second, 0, unit);
            assert!(wait <= second && wait >= second.mul_f64(0.8), "{wait:?}");
        }
        assert!(next_wait(second, 0, 0.0) > next_wait(second, 0, 0.9));
        // Doubling per failure, drawn from the upper half.
        assert_eq!(next_wait(second, 1, 0.0), second);
        assert_eq!(next_wait(second, 3, 0.0), Duration::from_secs(4));
        assert!(next_wait(second, 3, 0.99) < Duration::from_secs(8));
        // Capped, however long the outage.
        for failures in [5, 6, 40, u32::MAX] {
            let wait = next_wait(second, failures, 0.999);
            assert!(
                wait <= MAX_FAILING_WAIT && wait >= MAX_FAILING_WAIT / 2,
                "{failures}: {wait:?}"
            );
        }
        // An interval beyond the cap is never shortened below half of it.
        let minute = Duration::from_secs(60);
        assert!(next_wait(minute, 10, 0.0) >= Duration::from_secs(30));
        assert!(next_wait(minute, 10, 0.999) <= minute);
    }

    #[test]
    fn the_context_is_refilled_without_stale_values() {
        let mut uctx = Context::default();
        let ctx = FlagContext {
            session_id: "s1",
            user_id: "u1",
            node: "edge-1",
            region: "eu",
        };
        fill_context(&mut uctx, "edgecache", &ctx);
        assert_eq!(uctx.user_id.as_deref(), Some("u1"));
        assert_eq!(uctx.session_id.as_deref(), Some("s1"));
        assert_eq!(uctx.properties["node"], "edge-1");
        assert_eq!(uctx.properties["region"], "eu");
        assert_eq!(uctx.app_name, "edgecache");

        let ctx = FlagContext {
            session_id: "s2",
            user_id: "",
            node: "edge-2",
            region: "eu",
        };
        fill_context(&mut uctx, "edgecache", &ctx);
        assert_eq!(uctx.user_id, None, "an empty user id is no user id");
        assert_eq!(uctx.session_id.as_deref(), Some("s2"));
        assert_eq!(uctx.properties["node"], "edge-2");
        assert_eq!(uctx.properties.len(), 2);
    }

    #[test]
    fn the_fingerprint_covers_our_flags_only() {
        let doc = |other: bool, ours: bool, revision: u32| -> ClientFeatures {
            serde_json::from_value(serde_json::json!({
                "version": 2,
                "features": [
                    { "name": "someone-elses", "enabled": other, "strategies": [] },
                    { "name": "edgecache.strict-fields", "enabled": ours, "strategies": [] }
                ],
                "meta": { "revisionId": revision, "etag": format!("\"x:{revision}:v1\"") }
            }))
            .unwrap()
        };
        let base = fingerprint(&doc(true, true, 1));
        assert_eq!(
            base,
            fingerprint(&doc(false, true, 2)),
            "another flag, another revision"
        );
        assert_ne!(base, fingerprint(&doc(true, false, 3)), "our flag switched");
    }

    #[test]
    fn starting_outside_a_runtime_is_an_error() {
        let settings = UnleashSettings::new("http://127.0.0.1:9/api/", "t");
        let err = UnleashFlags::start(&settings, ConfigFlags::new(&Default::default()), "n").unwrap_err();
        assert!(matches!(err, UnleashError::NoRuntime), "{err}");
    }
}
