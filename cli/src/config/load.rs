//! Loading: the sources of a configuration (a TOML file, `HUBMESH_*` environment variables, [`Overrides`] from
//! the command line) merged with figment, later sources winning, into a [`NodeConfig`] that remembers the
//! [`Origin`] of every key. figment's errors become [`ConfigError`]s here.
//!
//! The process environment is read only by [`NodeConfig::load`]; [`NodeConfig::load_with_env`] takes it as an
//! argument instead.

use std::path::Path;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::{ConfigError, NodeConfig, Origin, SettingError, KEYS};

/// The prefix of configuration environment variables.
pub const ENV_PREFIX: &str = "HUBMESH_";

/// The environment variable that sets `key` (`cluster.seeds` → `HUBMESH_CLUSTER__SEEDS`).
pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase().replace('.', "__"))
}

pub(super) const ENV_SOURCE: &str = "environment variable";
pub(super) const OVERRIDE_SOURCE: &str = "command line";

/// Values that override every other source: the command line's flags, by key.
///
/// Values are strings, converted like environment variables; [`Overrides::set_list`] sets a list key
/// (`cluster.seeds`), replacing the list from other sources.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    values: Vec<(String, Value)>,
}

impl Overrides {
    /// No overrides.
    pub fn new() -> Self {
        Self::default()
    }

    /// Overrides `key` (`section.key`, as in [`KEYS`]) with `value`.
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.values.push((key.to_owned(), Value::from(value.into())));
        self
    }

    /// Overrides the list `key` with `values`.
    pub fn set_list<I, S>(&mut self, key: &str, values: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let list: Vec<Value> = values.into_iter().map(|value| Value::from(value.into())).collect();
        self.values.push((key.to_owned(), Value::from(list)));
        self
    }

    /// Whether no key is overridden.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// A figment provider of nested values under one source name.
struct KeyValues {
    name: &'static str,
    dict: Dict,
}

impl KeyValues {
    fn new(name: &'static str) -> Self {
        KeyValues {
            name,
            dict: Dict::new(),
        }
    }

    /// Inserts `value` at the dotted `key`, replacing whatever was there.
    fn insert(&mut self, key: &str, value: Value) {
        let mut parts: Vec<&str> = key.split('.').filter(|part| !part.is_empty()).collect();
        let Some(last) = parts.pop() else {
            return;
        };
        let mut dict = &mut self.dict;
        for part in parts {
            let entry = dict.entry(part.to_owned()).or_insert_with(|| Value::from(Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::from(Dict::new());
            }
            let Value::Dict(_, inner) = entry else {
                return;
            };
            dict = inner;
        }
        dict.insert(last.to_owned(), value);
    }
}

impl Provider for KeyValues {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

impl NodeConfig {
    /// Loads the configuration from `file` (if any), the process's `HUBMESH_*` environment variables and
    /// `overrides`, later sources winning. The values are not checked beyond their types: see
    /// [`NodeConfig::node_settings`].
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<NodeConfig, ConfigError> {
        let mut env = Vec::new();
        let mut unreadable = Vec::new();
        for (name, value) in std::env::vars_os() {
            let Some(name) = name.to_str() else { continue };
            if !is_config_variable(name) {
                continue;
            }
            match value.into_string() {
                Ok(value) => env.push((name.to_owned(), value)),
                Err(_) => unreadable.push(SettingError {
                    key: env_key(name),
                    origin: Origin::Env(name.to_owned()),
                    reason: "the value is not valid UTF-8".to_owned(),
                }),
            }
        }
        if !unreadable.is_empty() {
            return Err(ConfigError::Invalid(unreadable));
        }
        Self::load_with_env(file, env, overrides)
    }

    /// [`NodeConfig::load`] with the environment given as `(name, value)` pairs instead of read from the process;
    /// variables other than `HUBMESH_<SECTION>__<KEY>` are ignored.
    pub fn load_with_env<I, K, V>(file: Option<&Path>, env: I, overrides: &Overrides) -> Result<NodeConfig, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let mut figment = Figment::new();
        if let Some(path) = file {
            // Read once to report a missing or unreadable file as such (figment treats a missing file as empty).
            std::fs::read(path).map_err(|source| ConfigError::File {
                path: path.to_owned(),
                source,
            })?;
            figment = figment.merge(Toml::file_exact(path));
        }
        let mut env_values = KeyValues::new(ENV_SOURCE);
        for (name, value) in env {
            let name = name.as_ref();
            if is_config_variable(name) {
                env_values.insert(&env_key(name), Value::from(value.into()));
            }
        }
        figment = figment.merge(env_values);
        let mut override_values = KeyValues::new(OVERRIDE_SOURCE);
        for (key, value) in &overrides.values {
            override_values.insert(key, value.clone());
        }
        figment = figment.merge(override_values);

        let mut config: NodeConfig = figment.extract_lossy().map_err(from_figment)?;
        config.origins = KEYS
            .iter()
            .map(|key| (*key, Origin::from_metadata(figment.find_metadata(key), key)))
            .collect();
        Ok(config)
    }
}

/// Whether `name` is a configuration variable: `HUBMESH_<SECTION>__<KEY>`.
fn is_config_variable(name: &str) -> bool {
    name.strip_prefix(ENV_PREFIX).is_some_and(|rest| rest.contains("__"))
}

/// `HUBMESH_HTTP__LISTEN` → `http.listen`.
fn env_key(name: &str) -> String {
    name.strip_prefix(ENV_PREFIX)
        .unwrap_or(name)
        .to_ascii_lowercase()
        .replace("__", ".")
}

fn from_figment(error: figment::Error) -> ConfigError {
    let errors = error
        .into_iter()
        .map(|error| {
            let mut path = error.path.clone();
            let reason = match &error.kind {
                figment::error::Kind::MissingField(field) => {
                    push_field(&mut path, field);
                    "missing".to_owned()
                }
                figment::error::Kind::UnknownField(field, expected) => {
                    push_field(&mut path, field);
                    format!("unknown setting (expected one of: {})", expected.join(", "))
                }
                kind => kind.to_string(),
            };
            let key = path.join(".");
            SettingError {
                origin: Origin::from_metadata(error.metadata.as_ref(), &key),
                key,
                reason,
            }
        })
        .collect();
    ConfigError::Invalid(errors)
}

/// Appends `field` to an error's key path unless figment already did.
fn push_field(path: &mut Vec<String>, field: &str) {
    if path.last().map(String::as_str) != Some(field) {
        path.push(field.to_owned());
    }
}
