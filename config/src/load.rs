use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};

use crate::validate::InvalidSetting;
use crate::Settings;

/// The base configuration, compiled in so the binary runs from any directory.
pub const BASE: &str = include_str!("../base.toml");

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
    /// Extra overrides as TOML text, applied last (tests use this).
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
    #[error("configuration: {0}")]
    Parse(#[from] config::ConfigError),
    #[error("configuration: {0}")]
    Invalid(#[from] InvalidSetting),
}

/// Builds and validates the effective [`Settings`] from `sources`.
pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
    let environment = sources
        .environment
        .clone()
        .or_else(|| std::env::var("EDGECACHE_ENVIRONMENT").ok())
        .unwrap_or_else(|| "local".to_owned());
    let dir = sources.dir.clone().unwrap_or_else(|| PathBuf::from("config"));
    let env_file = dir.join(format!("{environment}.toml"));

    let mut builder = Config::builder().add_source(File::from_str(BASE, FileFormat::Toml));
    if env_file.is_file() {
        check_file(&env_file)?;
        builder = builder.add_source(File::from(env_file.as_path()).format(FileFormat::Toml));
    }
    if let Some(file) = &sources.file {
        check_file(file)?;
        builder = builder.add_source(File::from(file.as_path()).format(FileFormat::Toml));
    }
    if let Some(text) = &sources.overrides {
        builder = builder.add_source(File::from_str(text, FileFormat::Toml));
    }
    if !sources.skip_env {
        builder = builder.add_source(
            Environment::with_prefix("EDGECACHE")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true),
        );
    }
    let settings: Settings = builder.build()?.try_deserialize()?;
    settings.validate()?;
    Ok(settings)
}

/// Reads a file on its own first, so a syntax error names the file.
fn check_file(path: &Path) -> Result<(), ConfigError> {
    Config::builder()
        .add_source(File::from(path).format(FileFormat::Toml))
        .build()
        .map(drop)
        .map_err(|source| ConfigError::File {
            path: path.to_owned(),
            source,
        })
}
