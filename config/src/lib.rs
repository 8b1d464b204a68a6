//! The layered configuration of an edge node: the base file compiled into the binary,
//! an environment file, an optional `--config` file and `EDGECACHE__SECTION__KEY`
//! environment variables, deserialised into a typed [`Settings`] and validated.

mod load;
mod schema;
mod secret;
mod settings;
#[cfg(test)]
mod tests;
mod validate;

pub use load::{effective_toml, load, ConfigError, Sources, BASE};
pub use schema::{Collection, Field, FieldType, Freshness, Reason, Table, Unrepresentable, MAX_JSON_DEPTH};
pub use settings::{
    AdminSettings, ApiSettings, CacheSettings, ChangeFeed, ClusterSecret, ClusterSettings,
    ConsistencyCheckSettings, FlagSettings, IdempotencySettings, NodeSettings, OriginSettings,
    PostgresSettings, ServerSettings, SessionSettings, Settings, TokenKey,
};
pub use validate::{InvalidSetting, SettingWarning, DEVELOPMENT_ENVIRONMENTS};
