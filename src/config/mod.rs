//! Configuration: the YAML model, `${NAME}` substitution, and validation.
//!
//! [`Config::from_yaml`] is pure (no sockets, no globals), so `tandem check` and startup share
//! it and tests build configs freely. Every error names the field it is about, in the form
//! `executors[1].mode`.

mod dsn;
mod env;
mod model;
mod units;
mod validate;

pub use validate::{parse_address, parse_listen_address, ListenAddress};

pub use dsn::Dsn;
pub use model::*;
pub use units::{ByteSize, Seconds};

use std::path::Path;

/// A configuration error, naming the offending field.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl Config {
    /// Parses and validates a configuration, substituting `${NAME}` from `lookup`.
    pub fn from_yaml_with_env(
        text: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut value: serde_norway::Value = serde_norway::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!("line {} column {}", l.line(), l.column()))
                .unwrap_or_else(|| "document".to_string());
            ConfigError::new(at, format!("invalid YAML: {e}"))
        })?;
        if value.is_null() {
            return Err(ConfigError::new("document", "the configuration is empty"));
        }
        env::substitute(&mut value, "", &lookup)?;
        let config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let field = if path == "." {
                "document".to_string()
            } else {
                path
            };
            ConfigError::new(field, e.into_inner().to_string())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates a configuration, substituting from the process environment.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Self::from_yaml_with_env(text, |name| std::env::var(name).ok())
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(path.display().to_string(), format!("cannot read: {e}"))
        })?;
        Self::from_yaml(&text)
    }
}
