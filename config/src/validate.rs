//! What deserialisation cannot check: bounds, references between keys, the seed
//! against the data model. Every error names the dotted key it is about.

use std::collections::HashSet;
use std::fmt::Display;
use std::ops::RangeInclusive;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::Value;

use crate::schema::{Collection, Field, FieldType, Freshness};
use crate::settings::{
    ApiSettings, CacheSettings, IdempotencySettings, NodeSettings, OriginSettings, ServerSettings,
    SessionSettings,
};
use crate::Settings;

/// A setting whose value cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct InvalidSetting {
    /// The dotted key, e.g. `session.active_key`.
    pub key: String,
    pub message: String,
}

type Check = Result<(), InvalidSetting>;

/// A setting that works but probably not as meant: printed by `check-config` and
/// logged at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct SettingWarning {
    /// The dotted key, e.g. `collections.carts.freshness.max_staleness`.
    pub key: String,
    pub message: String,
}

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// Shortest token key or cluster secret, in bytes (HMAC-SHA256 wants at least its
/// output size).
pub(crate) const MIN_SECRET_BYTES: usize = 32;
/// Most per-item watermarks in a token: 24 keep an encoded token under 1 KiB.
pub(crate) const MAX_TOKEN_ITEMS: usize = 24;

impl Settings {
    /// Checks what deserialisation cannot: bounds, references between keys, the seed
    /// against the data model. The first problem found is returned.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        server(&self.server)?;
        node(&self.node)?;
        origin(&self.origin)?;
        cache(&self.cache)?;
        session(&self.session)?;
        idempotency(&self.idempotency)?;
        api(&self.api)?;
        flags(&self.flags)?;
        cluster(self)?;
        admin(&self.admin)?;
        collections(self)?;
        seed(self)
    }
}

/// The environments (`EDGECACHE_ENVIRONMENT`) in which the compiled-in development
/// token key is accepted.
pub const DEVELOPMENT_ENVIRONMENTS: [&str; 2] = ["local", "test"];

impl Settings {
    /// What depends on the environment the node runs in: outside
    /// [`DEVELOPMENT_ENVIRONMENTS`] no token key may be the compiled-in development
    /// key (whatever its id), whose secret anyone can read in the source. (Secrets
    /// shorter than 32 bytes are refused in every environment.)
    pub fn validate_for(&self, environment: &str) -> Result<(), InvalidSetting> {
        if DEVELOPMENT_ENVIRONMENTS.contains(&environment) {
            return Ok(());
        }
        let built_in = development_secrets();
        let Some(key) = self
            .session
            .keys
            .iter()
            .find(|k| built_in.iter().any(|s| s == k.secret.expose_secret()))
        else {
            return Ok(());
        };
        Err(invalid(
            "session.keys",
            format!(
                "key `{}` is the compiled-in development key, which only environments {} accept, \
                 not `{environment}` (EDGECACHE_ENVIRONMENT): set a key of your own, at least \
                 {MIN_SECRET_BYTES} random bytes, e.g. \
                 EDGECACHE__SESSION__KEYS='[{{id=\"k1\",secret=\"<openssl rand -hex 32>\"}}]' with \
                 EDGECACHE__SESSION__ACTIVE_KEY=k1, or [[session.keys]] and session.active_key in a \
                 --config file",
                key.id,
                DEVELOPMENT_ENVIRONMENTS.map(|e| format!("`{e}`")).join(" and "),
            ),
        ))
    }
}

/// The secrets of the token keys in the compiled-in base configuration.
fn development_secrets() -> Vec<String> {
    let base: toml::Table = crate::BASE.parse().expect("the compiled-in base is valid TOML");
    base.get("session")
        .and_then(|s| s.get("keys"))
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|key| key.get("secret")?.as_str().map(str::to_owned))
        .collect()
}

impl Settings {
    /// Settings that work but probably not as meant, for the operator to look at.
    ///
    /// A bound tighter than `origin.replica_max_lag`: a replica that far behind
    /// stays in rotation but cannot serve those fields (their answers would be past
    /// the bound), so they are read from the primary whenever a replica lags more.
    pub fn warnings(&self) -> Vec<SettingWarning> {
        let max_lag = match &self.origin {
            OriginSettings::Postgres(pg) if !pg.replicas.is_empty() => pg.replica_max_lag,
            _ => return Vec::new(),
        };
        let mut warnings = Vec::new();
        let mut check = |key: String, freshness: Freshness| {
            if let Freshness::Bounded { max_staleness } = freshness {
                if max_staleness < max_lag {
                    warnings.push(SettingWarning {
                        key: join(&key, "max_staleness"),
                        message: format!(
                            "{} is less than origin.replica_max_lag ({}): while a replica is more \
                             than {} behind it stays in rotation, but these fields are read from \
                             the primary",
                            max_staleness.show(),
                            max_lag.show(),
                            max_staleness.show()
                        ),
                    });
                }
            }
        };
        for (name_, collection) in &self.collections {
            let key = join("collections", name_);
            check(join(&key, "freshness"), collection.freshness);
            for (field_name, f) in &collection.fields {
                if let Some(freshness) = f.freshness {
                    check(
                        join(&join(&join(&key, "fields"), field_name), "freshness"),
                        freshness,
                    );
                }
            }
        }
        warnings
    }
}

// ------------------------------------------------------------------ sections

fn server(s: &ServerSettings) -> Check {
    in_range("server.max_body_bytes", s.max_body_bytes, 64..=16 * MIB)?;
    positive("server.shutdown_timeout", s.shutdown_timeout)?;
    at_least(
        "server.readiness_interval",
        s.readiness_interval,
        Duration::from_millis(10),
    )?;
    at_most(
        "server.readiness_interval",
        s.readiness_interval,
        Duration::from_secs(3600),
    )
}

fn node(n: &NodeSettings) -> Check {
    name("node.id", &n.id, &NODE_NAME)?;
    name("node.region", &n.region, &NODE_NAME)
}

fn origin(o: &OriginSettings) -> Check {
    match o {
        OriginSettings::Embedded {
            path,
            read_connections,
            busy_timeout,
        } => {
            if path.as_os_str().is_empty() {
                return Err(invalid("origin.path", "must not be empty"));
            }
            in_range("origin.read_connections", *read_connections, 1..=64)?;
            positive("origin.busy_timeout", *busy_timeout)
        }
        OriginSettings::Postgres(pg) => {
            let url = |key: &str, value: &str| {
                if value.starts_with("postgres://") || value.starts_with("postgresql://") {
                    Ok(())
                } else {
                    Err(invalid(key, "must be a postgres:// URL"))
                }
            };
            url("origin.primary", pg.primary.expose_secret())?;
            for (i, replica) in pg.replicas.iter().enumerate() {
                url(&format!("origin.replicas[{i}]"), replica.expose_secret())?;
            }
            in_range("origin.pool_size", pg.pool_size, 1..=256)?;
            positive("origin.connect_timeout", pg.connect_timeout)?;
            positive("origin.statement_timeout", pg.statement_timeout)?;
            at_most("origin.replica_wait", pg.replica_wait, Duration::from_secs(30))?;
            positive("origin.replica_max_lag", pg.replica_max_lag)?;
            positive("origin.health_interval", pg.health_interval)?;
            name("origin.publication", &pg.publication, &SQL_NAME)?;
            name("origin.notify_channel", &pg.notify_channel, &SQL_NAME)
        }
    }
}

fn cluster(settings: &Settings) -> Check {
    let c = &settings.cluster;
    for (id, address) in &c.peers {
        let key = join("cluster.peers", id);
        name(&key, id, &NODE_NAME)?;
        if *id == settings.node.id {
            return Err(invalid(key, "lists this node itself (node.id)"));
        }
        if address.parse::<std::net::SocketAddr>().is_err()
            && !address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        {
            return Err(invalid(key, format!("`{address}` is not host:port")));
        }
    }
    positive("cluster.health_interval", c.health_interval)?;
    positive("cluster.health_timeout", c.health_timeout)?;
    in_range("cluster.failure_threshold", c.failure_threshold, 1..=100)?;
    positive("cluster.forward_timeout", c.forward_timeout)?;

    if c.secrets.is_empty() {
        if c.peers.is_empty() {
            return Ok(());
        }
        return Err(invalid(
            "cluster.secrets",
            format!(
                "a node with peers needs a cluster secret to authenticate its calls to them and \
                 theirs to it: set EDGECACHE__CLUSTER__SECRETS='[{{id=\"c1\",secret=\"…\"}}]' \
                 (at least {MIN_SECRET_BYTES} random bytes, e.g. `openssl rand -hex 32`; the same \
                 on every node of the group), or [[cluster.secrets]] in a --config file"
            ),
        ));
    }
    keyed_secrets(
        "cluster.secrets",
        c.secrets
            .iter()
            .map(|s| (s.id.as_str(), s.secret.expose_secret())),
    )?;
    match &c.active_secret {
        Some(id) if !c.secrets.iter().any(|s| s.id == *id) => Err(invalid(
            "cluster.active_secret",
            format!(
                "`{id}` names no secret in `cluster.secrets` (known: {})",
                c.secrets
                    .iter()
                    .map(|s| s.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        None if c.secrets.len() > 1 => Err(invalid(
            "cluster.active_secret",
            "must name the secret this node signs with when `cluster.secrets` holds several",
        )),
        _ => Ok(()),
    }
}

/// A list of `(id, secret)` pairs under `key`: ids of [`KEY_ID`], unique, secrets of at
/// least [`MIN_SECRET_BYTES`]. The message never shows a secret.
fn keyed_secrets<'a>(key: &str, secrets: impl Iterator<Item = (&'a str, &'a str)>) -> Check {
    let mut ids = HashSet::new();
    for (i, (id, secret)) in secrets.enumerate() {
        name(&format!("{key}[{i}].id"), id, &KEY_ID)?;
        if !ids.insert(id) {
            return Err(invalid(format!("{key}[{i}].id"), format!("duplicate id `{id}`")));
        }
        if secret.len() < MIN_SECRET_BYTES {
            return Err(invalid(
                format!("{key}[{i}].secret"),
                format!("must be at least {MIN_SECRET_BYTES} bytes, is {}", secret.len()),
            ));
        }
    }
    Ok(())
}

fn cache(c: &CacheSettings) -> Check {
    at_least("cache.capacity_bytes", c.capacity_bytes, 64 * KIB as u64)?;
    at_least("cache.estimated_items", c.estimated_items, 1)?;
    at_least("cache.max_tag_entries", c.max_tag_entries, 1)?;
    positive("cache.fill_deadline", c.fill_deadline)?;
    at_most("cache.fill_deadline", c.fill_deadline, Duration::from_secs(60))
}

fn session(s: &SessionSettings) -> Check {
    at_least("session.idle_lease", s.idle_lease, Duration::from_secs(1))?;
    at_least("session.max_live", s.max_live, 1)?;
    at_least("session.retired_marks_slots", s.retired_marks_slots, 64)?;
    at_most("session.retired_marks_slots", s.retired_marks_slots, 1 << 26)?;
    at_most(
        "session.first_requests_window",
        s.first_requests_window,
        Duration::from_secs(60),
    )?;
    at_most(
        "session.handover_window",
        s.handover_window,
        Duration::from_secs(600),
    )?;
    at_most("session.max_pending_writes", s.max_pending_writes, 1024)?;
    at_most("session.max_token_items", s.max_token_items, MAX_TOKEN_ITEMS)?;
    positive("session.write_timeout", s.write_timeout)?;

    if s.keys.is_empty() {
        return Err(invalid("session.keys", "at least one token key is required"));
    }
    keyed_secrets(
        "session.keys",
        s.keys.iter().map(|k| (k.id.as_str(), k.secret.expose_secret())),
    )?;
    if !s.keys.iter().any(|k| k.id == s.active_key) {
        let known = s.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>();
        return Err(invalid(
            "session.active_key",
            format!(
                "`{}` names no key in `session.keys` (known: {})",
                s.active_key,
                known.join(", ")
            ),
        ));
    }
    Ok(())
}

fn idempotency(i: &IdempotencySettings) -> Check {
    at_least("idempotency.retention", i.retention, Duration::from_secs(1))?;
    in_range("idempotency.max_key_bytes", i.max_key_bytes, 16..=1024)?;
    at_least("idempotency.max_records", i.max_records, 1)?;
    at_least(
        "idempotency.sweep_interval",
        i.sweep_interval,
        Duration::from_millis(100),
    )?;
    positive("idempotency.in_flight_wait", i.in_flight_wait)
}

fn api(a: &ApiSettings) -> Check {
    in_range("api.max_id_bytes", a.max_id_bytes, 1..=512)?;
    in_range("api.max_batch", a.max_batch, 1..=1000)?;
    in_range("api.max_user_id_bytes", a.max_user_id_bytes, 1..=4 * KIB)?;
    in_range("api.max_header_bytes", a.max_header_bytes, 4 * KIB..=64 * KIB)
}

/// The admin and metrics tokens, when set, must be long enough not to be guessed and
/// fit an `Authorization: Bearer` header (RFC 6750's `b64token`). The message never
/// shows them.
fn admin(a: &crate::settings::AdminSettings) -> Check {
    if let Some(token) = &a.token {
        bearer_token("admin.token", token, "the admin API")?;
    }
    if let Some(token) = &a.metrics_token {
        bearer_token("admin.metrics_token", token, "the token of /metrics")?;
    }
    at_least(
        "admin.dashboard_interval",
        a.dashboard_interval,
        Duration::from_millis(100),
    )?;
    at_most(
        "admin.dashboard_interval",
        a.dashboard_interval,
        Duration::from_secs(3600),
    )?;
    at_least(
        "admin.dashboard_history",
        a.dashboard_history,
        a.dashboard_interval,
    )?;
    at_most(
        "admin.dashboard_history",
        a.dashboard_history,
        a.dashboard_interval * 10_000,
    )
}

fn bearer_token(key: &str, token: &secrecy::SecretString, what: &str) -> Check {
    let token = token.expose_secret();
    let len = token.len();
    if len < MIN_SECRET_BYTES {
        return Err(invalid(
            key,
            format!(
                "must be at least {MIN_SECRET_BYTES} characters, is {len} (remove the key to disable {what})"
            ),
        ));
    }
    let body = token.trim_end_matches('=');
    let b64token = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/'));
    if !b64token {
        return Err(invalid(
            key,
            "may hold only A-Z, a-z, 0-9, '-', '.', '_', '~', '+' and '/', optionally followed by '='",
        ));
    }
    Ok(())
}

fn flags(f: &crate::settings::FlagSettings) -> Check {
    let checks = &f.consistency_checks;
    if !(0.0..=1.0).contains(&checks.sample) {
        return Err(invalid(
            "flags.consistency_checks.sample",
            format!(
                "must be a fraction between 0 and 1 (0.01 is 1 %), is {}",
                checks.sample
            ),
        ));
    }
    in_range("flags.consistency_checks.queue", checks.queue, 1..=1_000_000)?;
    in_range("flags.consistency_checks.concurrency", checks.concurrency, 1..=64)?;
    let Some(u) = &f.unleash else { return Ok(()) };
    let rest = u
        .url
        .strip_prefix("http://")
        .or_else(|| u.url.strip_prefix("https://"));
    if !rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/')) || u.url.chars().any(char::is_whitespace) {
        return Err(invalid(
            "flags.unleash.url",
            format!(
                "`{}` must be an http:// or https:// URL, the Unleash API base (e.g. https://unleash.example.com/api/)",
                u.url
            ),
        ));
    }
    name("flags.unleash.app_name", &u.app_name, &NODE_NAME)?;
    if let Some(id) = &u.instance_id {
        name("flags.unleash.instance_id", id, &NODE_NAME)?;
    }
    at_least(
        "flags.unleash.refresh_interval",
        u.refresh_interval,
        Duration::from_millis(100),
    )?;
    at_most(
        "flags.unleash.refresh_interval",
        u.refresh_interval,
        Duration::from_secs(3600),
    )?;
    positive("flags.unleash.request_timeout", u.request_timeout)?;
    at_most(
        "flags.unleash.request_timeout",
        u.request_timeout,
        Duration::from_secs(60),
    )?;
    let token = u.client_token.expose_secret();
    if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            "flags.unleash.client_token",
            "must be a non-empty Unleash client token without spaces",
        ));
    }
    if u.bootstrap_file
        .as_ref()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        return Err(invalid("flags.unleash.bootstrap_file", "must not be empty"));
    }
    Ok(())
}

// ------------------------------------------------------------------ data model

fn collections(settings: &Settings) -> Check {
    if settings.collections.is_empty() {
        return Err(invalid("collections", "at least one collection is required"));
    }
    for (name_, collection) in &settings.collections {
        let key = join("collections", name_);
        name(&key, name_, &SCHEMA_NAME)?;
        freshness(&join(&key, "freshness"), collection.freshness)?;
        if collection.fields.is_empty() {
            return Err(invalid(join(&key, "fields"), "at least one field is required"));
        }
        for (field_name, f) in &collection.fields {
            field(&join(&join(&key, "fields"), field_name), field_name, f)?;
        }
        table(&join(&key, "table"), collection)?;
        for (i, tag_field) in collection.surrogate_keys.iter().enumerate() {
            if !collection.fields.contains_key(tag_field) {
                return Err(invalid(
                    format!("{key}.surrogate_keys[{i}]"),
                    format!("`{tag_field}` names no field of the collection"),
                ));
            }
        }
    }
    Ok(())
}

/// A collection's table mapping: SQL identifiers only, columns of declared fields.
fn table(key: &str, collection: &Collection) -> Check {
    let t = &collection.table;
    if !t.name.is_empty() {
        name(&join(key, "name"), &t.name, &SQL_NAME)?;
    }
    name(&join(key, "key"), &t.key, &SQL_NAME)?;
    name(&join(key, "version"), &t.version, &SQL_NAME)?;
    name(&join(key, "tombstone"), &t.tombstone, &SQL_NAME)?;
    for (field_name, column) in &t.columns {
        let column_key = join(&join(key, "columns"), field_name);
        if !collection.fields.contains_key(field_name) {
            return Err(invalid(column_key, "names no field of the collection"));
        }
        name(&column_key, column, &SQL_NAME)?;
    }
    Ok(())
}

fn field(key: &str, field_name: &str, f: &Field) -> Check {
    name(key, field_name, &SCHEMA_NAME)?;
    if field_name == "id" {
        return Err(invalid(
            key,
            "`id` is reserved for the item id and cannot be a field",
        ));
    }
    if let Some(fr) = f.freshness {
        freshness(&join(key, "freshness"), fr)?;
    }
    let numeric = matches!(f.kind, FieldType::Integer | FieldType::Number);
    for (bound, value) in [("min", f.min), ("max", f.max)] {
        let Some(value) = value else { continue };
        let key = join(key, bound);
        if !numeric {
            return Err(invalid(
                key,
                format!(
                    "bounds apply only to integer and number fields, this one is {}",
                    f.kind.as_str()
                ),
            ));
        }
        if !value.is_finite() {
            return Err(invalid(key, "must be a finite number"));
        }
        if f.kind == FieldType::Integer && value.fract() != 0.0 {
            return Err(invalid(key, "must be a whole number on an integer field"));
        }
    }
    if let (Some(min), Some(max)) = (f.min, f.max) {
        if min > max {
            return Err(invalid(
                join(key, "min"),
                format!("{min} is greater than max {max}"),
            ));
        }
    }
    Ok(())
}

fn freshness(key: &str, f: Freshness) -> Check {
    match f {
        Freshness::Strict => Ok(()),
        Freshness::Bounded { max_staleness } => positive(&join(key, "max_staleness"), max_staleness),
        // A zero ttl means always revalidate; zero grace periods mean none.
        Freshness::Relaxed { .. } => Ok(()),
    }
}

// ------------------------------------------------------------------ seed

fn seed(settings: &Settings) -> Check {
    for (collection_name, documents) in &settings.seed {
        let key = join("seed", collection_name);
        let Some(collection) = settings.collections.get(collection_name) else {
            return Err(invalid(
                key,
                format!("no collection `{collection_name}` in `collections`"),
            ));
        };
        for (id, document) in documents {
            let key = join(&key, id);
            item_id(&key, id, settings.api.max_id_bytes)?;
            for (field_name, value) in document {
                seed_value(&join(&key, field_name), collection, field_name, value)?;
            }
        }
    }
    Ok(())
}

fn item_id(key: &str, id: &str, max_bytes: usize) -> Check {
    if id.is_empty() || id.len() > max_bytes {
        return Err(invalid(
            key,
            format!(
                "item id must be 1 to {max_bytes} bytes (api.max_id_bytes), is {}",
                id.len()
            ),
        ));
    }
    if let Some(c) = id.chars().find(|c| !(ITEM_ID.allows)(*c)) {
        return Err(invalid(
            key,
            format!("item id contains {c:?}; allowed: {}", ITEM_ID.describe),
        ));
    }
    Ok(())
}

fn seed_value(key: &str, collection: &Collection, field_name: &str, value: &Value) -> Check {
    let Some(f) = collection.fields.get(field_name) else {
        let known = collection.fields.keys().map(String::as_str);
        return Err(invalid(
            key,
            format!(
                "unknown field (the collection has: {})",
                known.collect::<Vec<_>>().join(", ")
            ),
        ));
    };
    if value.is_null() {
        return Err(invalid(key, "a seed value cannot be null"));
    }
    if !f.kind.admits(value) {
        return Err(invalid(
            key,
            format!("expected a {} value, got {value}", f.kind.as_str()),
        ));
    }
    // What the origins could not store exactly; `load` then rewrites the seed into
    // the canonical form checked here.
    f.kind
        .canonicalize(&mut value.clone())
        .map_err(|e| invalid(key, format!("{value} cannot be stored exactly: {e}")))?;
    if let Some(n) = value.as_f64() {
        if let Some(min) = f.min.filter(|min| n < *min) {
            return Err(invalid(key, format!("{value} is below min {min}")));
        }
        if let Some(max) = f.max.filter(|max| n > *max) {
            return Err(invalid(key, format!("{value} is above max {max}")));
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ helpers

/// The characters a kind of name may hold.
struct Charset {
    max_len: usize,
    allows: fn(char) -> bool,
    /// Whether the first character must be a lowercase letter.
    letter_first: bool,
    describe: &'static str,
}

const NODE_NAME: Charset = Charset {
    max_len: 64,
    allows: |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'),
    letter_first: false,
    describe: "letters, digits, `_`, `.`, `-`",
};

const KEY_ID: Charset = Charset {
    max_len: 16,
    allows: |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'),
    letter_first: false,
    describe: "letters, digits, `_`, `-`",
};

const SCHEMA_NAME: Charset = Charset {
    max_len: 64,
    allows: |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_',
    letter_first: true,
    describe: "lowercase letters, digits, `_`, starting with a letter",
};

/// An unquoted PostgreSQL identifier (at most 63 bytes).
const SQL_NAME: Charset = Charset {
    max_len: 63,
    allows: |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_',
    letter_first: true,
    describe: "lowercase letters, digits, `_`, starting with a letter",
};

const ITEM_ID: Charset = Charset {
    max_len: usize::MAX, // bounded by api.max_id_bytes
    allows: |c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'),
    letter_first: false,
    describe: "letters, digits, `_`, `.`, `:`, `-`",
};

/// `value` is 1..=`max_len` characters of `charset`.
fn name(key: &str, value: &str, charset: &Charset) -> Check {
    let len = value.chars().count();
    if len == 0 || len > charset.max_len {
        return Err(invalid(
            key,
            format!(
                "`{value}` must be 1 to {} characters ({})",
                charset.max_len, charset.describe
            ),
        ));
    }
    let bad_first = charset.letter_first && !value.starts_with(|c: char| c.is_ascii_lowercase());
    if bad_first || !value.chars().all(charset.allows) {
        return Err(invalid(
            key,
            format!("`{value}` may only hold {}", charset.describe),
        ));
    }
    Ok(())
}

fn in_range<T: PartialOrd + Display>(key: &str, value: T, range: RangeInclusive<T>) -> Check {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!(
                "must be between {} and {}, is {value}",
                range.start(),
                range.end()
            ),
        ))
    }
}

fn at_least<T: PartialOrd + Show>(key: &str, value: T, min: T) -> Check {
    if value >= min {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("must be at least {}, is {}", min.show(), value.show()),
        ))
    }
}

fn at_most<T: PartialOrd + Show>(key: &str, value: T, max: T) -> Check {
    if value <= max {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("must be at most {}, is {}", max.show(), value.show()),
        ))
    }
}

fn positive(key: &str, value: Duration) -> Check {
    if value.is_zero() {
        Err(invalid(key, "must be greater than zero"))
    } else {
        Ok(())
    }
}

/// How a bound is written in a message: durations as in the configuration files.
trait Show {
    fn show(&self) -> String;
}

impl Show for Duration {
    fn show(&self) -> String {
        humantime_serde::re::humantime::format_duration(*self).to_string()
    }
}

macro_rules! show_display {
    ($($t:ty),*) => {$(
        impl Show for $t {
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
show_display!(usize, u64);

fn invalid(key: impl Into<String>, message: impl Into<String>) -> InvalidSetting {
    InvalidSetting {
        key: key.into(),
        message: message.into(),
    }
}

/// Appends `segment` to a dotted key, quoting it as TOML does when it is not a bare key.
fn join(key: &str, segment: &str) -> String {
    let bare = !segment.is_empty()
        && segment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    if bare {
        format!("{key}.{segment}")
    } else {
        format!("{key}.{segment:?}")
    }
}
