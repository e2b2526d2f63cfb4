//! Loading and validating the configuration (implemented by the configuration work; see
//! the module docs of [`crate::config`]).

use std::path::Path;

use super::Config;

/// Environment lookup: returns the value of a variable, `None` when unset.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// One configuration problem: the field, the value and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Every problem found, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// Loads `path` (or `./config.yml`, `./config.yaml`), applies the environment, validates.
pub fn load(path: Option<&Path>, env: Env<'_>) -> Result<Config, ConfigErrors> {
    let _ = (path, env);
    Err(ConfigErrors(vec![ConfigError(
        "configuration loading is not implemented yet".into(),
    )]))
}
