//! Layering: the compiled-in base, `config/<environment>.toml`, a `--config` file, a
//! TOML overrides string and `EDGECACHE__SECTION__KEY` environment variables, each
//! overriding the one before.
//!
//! The `config` crate reads each layer; the layers are merged here rather than by
//! `config::ConfigBuilder`, because three of its behaviours do not fit this schema:
//!
//! * its `Environment` source with `try_parsing` turns `node.id = "007"` into `7` and
//!   `"1e3"` into `1000`, and without it a number inside a tagged table (such as
//!   `origin.read_connections`) stays a string that serde then rejects; it cannot
//!   read the documented `EDGECACHE__SESSION__KEYS='[{id="k2",secret="…"}]'` at all;
//! * environment keys are lower-cased and cannot hold `-`, so
//!   `EDGECACHE__FLAGS__DEFAULTS__READ_YOUR_WRITES` is `read_your_writes` beside the
//!   base file's `read-your-writes`: two keys for one strategy, and which one wins
//!   would depend on hash-map order;
//! * tables are always deep-merged, so overriding a `relaxed` freshness with
//!   `{ class = "strict" }` would keep the relaxed `ttl` and fail as an unknown field.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use config::{File, FileFormat, Map, Source, Value, ValueKind};
use edgecache_flags::Strategy;

use crate::validate::InvalidSetting;
use crate::Settings;

/// The base configuration, compiled in so the binary runs from any directory.
pub const BASE: &str = include_str!("../base.toml");

/// The prefix of environment variables that override settings.
const ENV_PREFIX: &str = "EDGECACHE__";
/// Separates key segments in an environment variable's name.
const ENV_SEPARATOR: &str = "__";

/// Where configuration comes from, beyond the compiled-in base.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Directory holding `<environment>.toml`; `config` relative to the working
    /// directory by default. A missing directory or file is skipped.
    pub dir: Option<PathBuf>,
    /// The environment name; `EDGECACHE_ENVIRONMENT`, else `local`.
    pub environment: Option<String>,
    /// A file that must exist (`--config FILE`).
    pub file: Option<PathBuf>,
    /// Read `EDGECACHE__SECTION__KEY` variables (on except in tests that want isolation).
    pub skip_env: bool,
    /// Extra overrides as TOML text, applied after the files and before the
    /// environment variables (tests use this).
    pub overrides: Option<String>,
}

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: config::ConfigError,
    },
    #[error("configuration: environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("configuration: {0}")]
    Parse(#[from] config::ConfigError),
    #[error("configuration: {0}")]
    Invalid(#[from] InvalidSetting),
}

/// Builds and validates the effective [`Settings`] from `sources`.
///
/// Environment variables: `EDGECACHE__SERVER__LISTEN=0.0.0.0:8080` sets
/// `server.listen`; segments are lower-cased, and under `flags.defaults` a strategy
/// may be spelt with `_` (`EDGECACHE__FLAGS__DEFAULTS__READ_YOUR_WRITES=off`). A value
/// is a string unless it is `true`/`false`, a number written the way it would print
/// (`8`, `0.5`, not `007` or `1e3`), or a TOML array or inline table
/// (`EDGECACHE__SESSION__KEYS='[{id="k2",secret="…"}]'`). Typed settings convert
/// strings as needed, so `EDGECACHE__SERVER__WORKERS=8` and a rollout of `off` or
/// `25%` both work.
pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
    load_with_env(sources, std::env::vars_os())
}

/// [`load`] with the environment given, so tests need not touch the process's.
pub(crate) fn load_with_env(
    sources: &Sources,
    env: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Settings, ConfigError> {
    let env: Vec<(OsString, OsString)> = env.into_iter().collect();
    let environment = environment(sources, &env)?;
    let mut tree = Map::new();
    for layer in layers(sources, &environment, &env)? {
        merge(&mut tree, canonical_strategy_keys(layer)?, &mut Vec::new());
    }
    let mut settings: Settings = Value::new(None, ValueKind::Table(tree)).try_deserialize()?;
    settings.validate()?;
    settings.validate_for(&environment)?;
    canonical_seed(&mut settings);
    Ok(settings)
}

/// Puts every seed value into the form the origins store
/// ([`FieldType::canonicalize`](crate::FieldType::canonicalize)), so both origins seed
/// the same documents (`price = 12` is `12.0`). Runs after validation, which refuses
/// a value without one; such a value would be left as it is.
fn canonical_seed(settings: &mut Settings) {
    for (collection, documents) in &mut settings.seed {
        let Some(collection) = settings.collections.get(collection) else {
            continue;
        };
        for (name, value) in documents.values_mut().flat_map(|document| document.iter_mut()) {
            if let Some(field) = collection.fields.get(name) {
                let _checked_by_validate = field.kind.canonicalize(value);
            }
        }
    }
}

/// The effective configuration as TOML, secrets redacted, for `edgecache
/// check-config`.
pub fn effective_toml(settings: &Settings) -> String {
    // Fails only on a null seed value, which `validate` rejects.
    toml::to_string(settings)
        .unwrap_or_else(|error| format!("# the effective configuration cannot be shown as TOML: {error}\n"))
}

/// The environment's name: `sources.environment`, else `EDGECACHE_ENVIRONMENT`, else
/// `local`.
fn environment(sources: &Sources, env: &[(OsString, OsString)]) -> Result<String, ConfigError> {
    let environment = match &sources.environment {
        Some(name) => name.clone(),
        None => env_var(env, "EDGECACHE_ENVIRONMENT").unwrap_or_else(|| "local".to_owned()),
    };
    if environment.is_empty()
        || !environment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    {
        return Err(ConfigError::Env {
            var: "EDGECACHE_ENVIRONMENT".to_owned(),
            message: format!("`{environment}` is not an environment name (letters, digits, `_`, `-`)"),
        });
    }
    Ok(environment)
}

/// Every layer, lowest first, each as a tree of tables.
fn layers(
    sources: &Sources,
    environment: &str,
    env: &[(OsString, OsString)],
) -> Result<Vec<Map<String, Value>>, ConfigError> {
    let dir = sources.dir.clone().unwrap_or_else(|| PathBuf::from("config"));
    let env_file = dir.join(format!("{environment}.toml"));

    let mut layers = vec![File::from_str(BASE, FileFormat::Toml).collect()?];
    if env_file.is_file() {
        layers.push(read_file(&env_file)?);
    }
    if let Some(file) = &sources.file {
        layers.push(read_file(file)?);
    }
    if let Some(text) = &sources.overrides {
        layers.push(File::from_str(text, FileFormat::Toml).collect()?);
    }
    if !sources.skip_env {
        layers.push(env_layer(env)?);
    }
    Ok(layers)
}

/// Reads one TOML file, naming it in any error.
fn read_file(path: &Path) -> Result<Map<String, Value>, ConfigError> {
    File::from(path)
        .format(FileFormat::Toml)
        .collect()
        .map_err(|source| ConfigError::File {
            path: path.to_owned(),
            source,
        })
}

fn env_var(env: &[(OsString, OsString)], name: &str) -> Option<String> {
    env.iter()
        .find(|(key, _)| key == name)
        .and_then(|(_, value)| value.to_str())
        .map(str::to_owned)
}

/// The `EDGECACHE__SECTION__KEY` variables as a tree.
fn env_layer(env: &[(OsString, OsString)]) -> Result<Map<String, Value>, ConfigError> {
    let mut settings = Vec::new();
    for (var, value) in env {
        let Some(var) = var.to_str() else { continue };
        let Some(rest) = strip_prefix_ignore_case(var, ENV_PREFIX) else {
            continue;
        };
        let error = |message: String| ConfigError::Env {
            var: var.to_owned(),
            message,
        };
        let path: Vec<String> = rest.split(ENV_SEPARATOR).map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            return Err(error("empty key segment (separate segments with `__`)".into()));
        }
        let text = value
            .to_str()
            .ok_or_else(|| error("the value is not valid UTF-8".into()))?;
        let origin = format!("environment variable {var}");
        let value = env_value(text, &origin).map_err(error)?;
        settings.push((path, value));
    }
    // A variable for a table first, so one for a key inside it refines it.
    settings.sort_by(|a, b| a.0.cmp(&b.0));

    let mut tree = Map::new();
    for (path, value) in settings {
        let mut nested = value;
        for segment in path.iter().skip(1).rev() {
            let table = Map::from([(segment.clone(), nested)]);
            nested = Value::new(None, ValueKind::Table(table));
        }
        merge(&mut tree, Map::from([(path[0].clone(), nested)]), &mut Vec::new());
    }
    Ok(tree)
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix).then(|| &s[prefix.len()..])
}

/// Types an environment variable's text: structured values are TOML, `true`/`false`
/// are booleans, numbers that print back as written are numbers, the rest strings.
fn env_value(text: &str, origin: &str) -> Result<Value, String> {
    let origin = origin.to_owned();
    let trimmed = text.trim_start();
    let kind = if trimmed.starts_with('[') || trimmed.starts_with('{') {
        // The parser's message quotes the text, which may hold a secret: not shown.
        let invalid = || "not a valid TOML array or inline table (value not shown)".to_owned();
        let mut table = File::from_str(&format!("value = {text}"), FileFormat::Toml)
            .collect()
            .map_err(|_| invalid())?;
        return match (table.remove("value"), table.is_empty()) {
            (Some(value), true) => Ok(value),
            _ => Err(invalid()),
        };
    } else if let Ok(b) = text.parse::<bool>() {
        ValueKind::Boolean(b)
    } else if let Some(i) = text.parse::<i64>().ok().filter(|i| i.to_string() == text) {
        ValueKind::I64(i)
    } else if let Some(f) = text
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite() && f.to_string() == text)
    {
        ValueKind::Float(f)
    } else {
        ValueKind::String(text.to_owned())
    };
    Ok(Value::new(Some(&origin), kind))
}

/// Merges `layer` into `tree`, whose key is `path`: tables merge key by key, anything
/// else replaces what is below, and so does a variant of a tagged enum (an origin, a
/// freshness class) whose tag differs from the one below.
fn merge(tree: &mut Map<String, Value>, layer: Map<String, Value>, path: &mut Vec<String>) {
    for (key, value) in layer {
        path.push(key);
        let key = path.last().expect("just pushed");
        let origin = value.origin().map(str::to_owned);
        match (tree.get_mut(key), value.kind) {
            (Some(below), ValueKind::Table(above)) if same_variant(below, &above, path) => {
                let ValueKind::Table(below) = &mut below.kind else {
                    unreachable!("same_variant holds only for tables")
                };
                merge(below, above, path);
            }
            (_, kind) => {
                tree.insert(key.clone(), Value::new(origin.as_ref(), kind));
            }
        }
        path.pop();
    }
}

/// Whether `above` may merge into `below`, at `path`: both are tables and, if they
/// are variants of a tagged enum, of the same variant.
fn same_variant(below: &Value, above: &Map<String, Value>, path: &[String]) -> bool {
    let ValueKind::Table(below) = &below.kind else {
        return false;
    };
    let Some(tag) = tag_at(path) else {
        return true;
    };
    let variant = |table: &Map<String, Value>| table.get(tag).and_then(|v| v.clone().into_string().ok());
    match (variant(below), variant(above)) {
        (Some(b), Some(a)) => a == b,
        _ => true,
    }
}

/// The tag key of the tagged enum stored at `path`, if one is.
fn tag_at(path: &[String]) -> Option<&'static str> {
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    match path.as_slice() {
        ["origin"] => Some("kind"),
        ["collections", _, "freshness"] | ["collections", _, "fields", _, "freshness"] => Some("class"),
        _ => None,
    }
}

/// Rewrites the keys of `flags.defaults` to the strategies' canonical names, so
/// `read_your_writes` (all an environment variable can spell) overrides
/// `read-your-writes`.
fn canonical_strategy_keys(mut layer: Map<String, Value>) -> Result<Map<String, Value>, ConfigError> {
    let Some(defaults) = layer
        .get_mut("flags")
        .and_then(|flags| table_mut(flags)?.get_mut("defaults"))
        .and_then(table_mut)
    else {
        return Ok(layer);
    };
    let mut canonical: HashMap<String, (String, Value)> = HashMap::new();
    for (key, value) in defaults.drain() {
        let name = key
            .parse::<Strategy>()
            .map_or_else(|_| key.clone(), |s| s.as_str().to_owned());
        if let Some((other, _)) = canonical.get(&name) {
            return Err(InvalidSetting {
                key: format!("flags.defaults.{key}"),
                message: format!("names the same strategy as `{other}` in the same layer"),
            }
            .into());
        }
        canonical.insert(name, (key, value));
    }
    defaults.extend(canonical.into_iter().map(|(name, (_, value))| (name, value)));
    Ok(layer)
}

fn table_mut(value: &mut Value) -> Option<&mut Map<String, Value>> {
    match &mut value.kind {
        ValueKind::Table(table) => Some(table),
        _ => None,
    }
}
