use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize, Serializer};

/// How a node reaches its Unleash server: the `[flags.unleash]` section of the
/// configuration. Absent, strategies come from `flags.defaults` only.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UnleashSettings {
    /// The API base of the Unleash server, e.g. `https://unleash.example.com/api/`; the
    /// client reads `<url>/client/features` and posts to `<url>/client/register` and
    /// `<url>/client/metrics`.
    pub url: String,
    /// The application name this node registers under.
    #[serde(default = "default_app_name")]
    pub app_name: String,
    /// This node's instance id in Unleash; absent, the node id (`node.id`).
    #[serde(default)]
    pub instance_id: Option<String>,
    /// How often the flags are fetched (and metrics sent). A change made in Unleash
    /// takes effect within this interval, without a restart.
    #[serde(default = "default_refresh_interval", with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Longest one request to Unleash may take before it counts as failed.
    #[serde(default = "default_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A client (backend) API token, sent as `Authorization`; it picks the project and
    /// environment whose flags the node follows. Printed as `[redacted]`.
    #[serde(serialize_with = "redacted")]
    pub client_token: SecretString,
    /// A saved `/api/client/features` document, loaded at start: the node follows its
    /// flags until the first successful fetch, so it can start while Unleash is
    /// unreachable. A file that cannot be read or parsed stops start-up.
    #[serde(default)]
    pub bootstrap_file: Option<PathBuf>,
}

fn default_app_name() -> String {
    "edgecache".to_owned()
}

fn default_refresh_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(5)
}

fn redacted<S: Serializer>(_: &SecretString, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str("[redacted]")
}

impl UnleashSettings {
    /// Settings with the defaults for everything but the server and its token.
    pub fn new(url: impl Into<String>, client_token: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            app_name: default_app_name(),
            instance_id: None,
            refresh_interval: default_refresh_interval(),
            request_timeout: default_request_timeout(),
            client_token: SecretString::from(client_token.into()),
            bootstrap_file: None,
        }
    }
}
