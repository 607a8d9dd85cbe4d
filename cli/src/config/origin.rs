//! Where a configuration value came from ([`Origin`]) and what is wrong with one ([`SettingError`],
//! [`ConfigError`]): every error names the key and the source of its value, so a user can find and fix it.
//!
//! It may call only `figment`'s metadata (to tell sources apart) and the source names of [`super::load`].

use std::fmt;
use std::path::PathBuf;

use figment::Metadata;

use super::load::{env_name, ENV_SOURCE, OVERRIDE_SOURCE};

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Nobody set it: the built-in default.
    Default,
    /// A configuration file.
    File(PathBuf),
    /// An environment variable (its name).
    Env(String),
    /// An [`Overrides`](super::Overrides) entry: a command-line flag.
    CommandLine,
    /// Another figment provider (its name).
    Other(String),
}

impl Origin {
    /// The precedence of the source: a later source overrides an earlier one.
    pub(super) fn rank(&self) -> u8 {
        match self {
            Origin::Default => 0,
            Origin::File(_) | Origin::Other(_) => 1,
            Origin::Env(_) => 2,
            Origin::CommandLine => 3,
        }
    }

    pub(super) fn from_metadata(metadata: Option<&Metadata>, key: &str) -> Origin {
        let Some(metadata) = metadata else {
            return Origin::Default;
        };
        if let Some(path) = metadata.source.as_ref().and_then(|source| source.file_path()) {
            return Origin::File(path.to_owned());
        }
        match metadata.name.as_ref() {
            ENV_SOURCE => Origin::Env(env_name(key)),
            OVERRIDE_SOURCE => Origin::CommandLine,
            other => Origin::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(path) => write!(f, "file `{}`", path.display()),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::CommandLine => f.write_str("command line"),
            Origin::Other(name) => f.write_str(name),
        }
    }
}

/// One bad or missing setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingError {
    /// The key, as `section.key` (`http.listen`).
    pub key: String,
    /// Where the offending value came from ([`Origin::Default`] for a missing one).
    pub origin: Origin,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for SettingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.origin == Origin::Default {
            write!(f, "setting `{}`: {}", self.key, self.reason)
        } else {
            write!(f, "setting `{}` (from {}): {}", self.key, self.origin, self.reason)
        }
    }
}

/// Why a configuration could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read the configuration file `{}`", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// One or more settings are bad or missing.
    #[error("{}", describe(.0))]
    Invalid(Vec<SettingError>),
}

impl ConfigError {
    /// The bad or missing settings (none for [`ConfigError::File`]).
    pub fn settings(&self) -> &[SettingError] {
        match self {
            ConfigError::Invalid(errors) => errors,
            ConfigError::File { .. } => &[],
        }
    }
}

fn describe(errors: &[SettingError]) -> String {
    match errors {
        [one] => format!("invalid {one}"),
        many => {
            let mut text = format!("{} invalid settings:", many.len());
            for error in many {
                text.push_str("\n  ");
                text.push_str(&error.to_string());
            }
            text
        }
    }
}
