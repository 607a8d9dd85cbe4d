//! Node configuration: TOML files, `HUBMESH_*` environment variables and command-line overrides, merged and
//! checked into the settings a [`NodeBuilder`] takes.
//!
//! # What this module owns
//!
//! * [`NodeConfig`]: what the configuration says, section by section (`[node]`, `[http]`, `[cluster]`, `[hubs]`,
//!   `[limits]`, `[auth]`; every key is listed in [`KEYS`] and documented in `cluster-config/README.md`), with the
//!   [`Origin`] of every value.
//! * [`NodeConfig::load`]: merges the sources, later ones winning: defaults < the file < `HUBMESH_*`
//!   environment variables (`__` between section and key: `HUBMESH_HTTP__LISTEN`) < [`Overrides`] (the command
//!   line's flags).
//! * [`NodeConfig::node_settings`]: checks every value and turns the configuration into [`NodeSettings`], whose
//!   [`NodeSettings::builder`] is a [`NodeBuilder`] ready to start. Every problem is reported as a
//!   [`SettingError`] that names the key and where its value came from.
//!
//! # Semantics
//!
//! * A node without cluster settings is a single node (no gossip, no links). It joins a cluster when any
//!   `cluster.*` key other than the secret is set (an exported `HUBMESH_CLUSTER__SECRET` alone does not make a node
//!   clustered). A clustered node needs `cluster.id`, `cluster.gossip`, `cluster.link`, a secret and an explicit
//!   `node.name`. Seeds may be empty: the node is then a cluster of one that others can join by naming it as a
//!   seed.
//! * The secret comes from `cluster.secret` or from `cluster.secret_file` (the file's content, surrounding
//!   whitespace trimmed). A relative `secret_file` given in a configuration file is relative to that file's
//!   directory; given anywhere else, to the working directory. If both keys are set, the one from the later source
//!   wins; both from the same source is an error.
//! * The secret is held as a [`Secret`], whose `Debug` prints `<redacted>`; nothing here logs it.
//! * `[auth]` configures bearer tokens ([`hubmesh::auth`]) when any of its keys is set: exactly one key, an HS256
//!   secret (`auth.secret` or `auth.secret_file`, read like the cluster secret) or an RS256 public key
//!   (`auth.public_key_file`, PEM; relative paths as for `secret_file`); optionally `auth.issuer`,
//!   `auth.audience` and `auth.user_claim` (default: the name-identifier claim, then `sub`).
//! * `http.tls_cert` and `http.tls_key` (PEM files: the certificate chain, leaf first, and its private key;
//!   relative paths as for `secret_file`) make the node serve HTTPS and WSS instead of plain HTTP. Both or
//!   neither.
//! * Environment variables are read only when named `HUBMESH_<SECTION>__<KEY>`; other `HUBMESH_*` variables (for
//!   tests or logging) are ignored. Values are strings, converted to the key's type (`"2048"`, `"false"`); a list
//!   (`cluster.seeds`) may be written as comma-separated addresses.
//! * Unknown keys are errors, so a typo is reported instead of silently ignored.
//!
//! # What it may call
//!
//! figment and serde for parsing, and the layers below it: [`crate::node`], [`crate::cluster`] (configuration
//! types only), [`crate::connection`] ([`Limits`]), [`hubmesh::auth`] ([`Authenticator`]) and [`crate::demo`]. No global state: the process environment
//! is read only by [`NodeConfig::load`], and [`NodeConfig::load_with_env`] takes it as an argument instead.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Deserializer};

use hubmesh::auth::Authenticator;
use hubmesh::demo::demo_hub;
use hubmesh::{ClusterSettings, Limits, LinkConfig, MembershipConfig, Node, NodeBuilder, TlsConfig, TlsError};

/// Every configuration key, as `section.key`. The environment variable of a key is [`env_name`] of it.
pub const KEYS: &[&str] = &[
    "node.name",
    "http.listen",
    "http.workers",
    "http.tls_cert",
    "http.tls_key",
    "cluster.id",
    "cluster.gossip",
    "cluster.gossip_advertise",
    "cluster.link",
    "cluster.link_advertise",
    "cluster.seeds",
    "cluster.secret",
    "cluster.secret_file",
    "cluster.gossip_interval",
    "cluster.phi_threshold",
    "hubs.demo",
    "limits.max_message",
    "limits.outbound_queue",
    "limits.keep_alive",
    "limits.client_timeout",
    "limits.write_coalesce",
    "auth.secret",
    "auth.secret_file",
    "auth.public_key_file",
    "auth.issuer",
    "auth.audience",
    "auth.user_claim",
];

/// The longest `limits.write_coalesce`: a message may wait this long for company, no longer.
const MAX_WRITE_COALESCE: Duration = Duration::from_secs(1);

/// The prefix of configuration environment variables.
pub const ENV_PREFIX: &str = "HUBMESH_";

/// The environment variable that sets `key` (`cluster.seeds` → `HUBMESH_CLUSTER__SEEDS`).
pub fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase().replace('.', "__"))
}

/// The default node name of an unclustered node.
pub const DEFAULT_NAME: &str = "node-1";
/// The default HTTP address.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:5000";
/// The default number of HTTP worker threads.
pub const DEFAULT_WORKERS: usize = 2;
/// The most HTTP worker threads accepted.
pub const MAX_WORKERS: usize = 1024;

const ENV_SOURCE: &str = "environment variable";
const OVERRIDE_SOURCE: &str = "command line";

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// Nobody set it: the built-in default.
    Default,
    /// A configuration file.
    File(PathBuf),
    /// An environment variable (its name).
    Env(String),
    /// An [`Overrides`] entry: a command-line flag.
    CommandLine,
    /// Another figment provider (its name).
    Other(String),
}

impl Origin {
    /// The precedence of the source: a later source overrides an earlier one.
    fn rank(&self) -> u8 {
        match self {
            Origin::Default => 0,
            Origin::File(_) | Origin::Other(_) => 1,
            Origin::Env(_) => 2,
            Origin::CommandLine => 3,
        }
    }

    fn from_metadata(metadata: Option<&Metadata>, key: &str) -> Origin {
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

/// The cluster secret. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(secret.into())
    }

    /// The secret itself: pass it on, never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        de::lenient_string(deserializer).map(Secret)
    }
}

/// `[node]`: who the node is.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// The node's name, unique in the cluster and stable across restarts (default `node-1`; a clustered node must
    /// set it).
    #[serde(deserialize_with = "de::lenient_string")]
    pub name: String,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            name: DEFAULT_NAME.to_owned(),
        }
    }
}

/// `[http]`: where clients connect.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// The HTTP address, `ip:port` (default `127.0.0.1:5000`; port 0 picks a free port).
    #[serde(deserialize_with = "de::address")]
    pub listen: SocketAddr,
    /// HTTP worker threads (default 2).
    pub workers: usize,
    /// A PEM file with the certificate chain to serve HTTPS with (leaf first); needs `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// A PEM file with the private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            workers: DEFAULT_WORKERS,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// `[cluster]`: gossip membership and links to the other nodes. Unset keys are `None`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// The cluster id: nodes gossip only with nodes of the same id (required).
    #[serde(deserialize_with = "de::optional_lenient_string")]
    pub id: Option<String>,
    /// The UDP address gossip binds, `ip:port` (required).
    #[serde(deserialize_with = "de::optional_address")]
    pub gossip: Option<SocketAddr>,
    /// The gossip address other nodes reach this one at (default: `gossip`).
    #[serde(deserialize_with = "de::optional_address")]
    pub gossip_advertise: Option<SocketAddr>,
    /// The TCP address links from other nodes are accepted on, `ip:port` (required).
    #[serde(deserialize_with = "de::optional_address")]
    pub link: Option<SocketAddr>,
    /// The link address other nodes dial (default: `link`).
    #[serde(deserialize_with = "de::optional_address")]
    pub link_advertise: Option<SocketAddr>,
    /// Gossip addresses of seed nodes (`ip:port` or `host:port`); any live seed suffices (default: none).
    #[serde(deserialize_with = "de::string_list")]
    pub seeds: Vec<String>,
    /// The shared cluster secret (prefer `secret_file` or `HUBMESH_CLUSTER__SECRET`).
    pub secret: Option<Secret>,
    /// A file holding the cluster secret.
    pub secret_file: Option<PathBuf>,
    /// Time between gossip rounds, as `"200ms"` (default: [`MembershipConfig`]'s).
    #[serde(deserialize_with = "de::optional_duration")]
    pub gossip_interval: Option<Duration>,
    /// Phi above which a peer is declared dead (default: [`MembershipConfig`]'s).
    pub phi_threshold: Option<f64>,
}

impl ClusterSection {
    /// Whether any setting other than the secret is given: the node is then clustered.
    fn is_requested(&self) -> bool {
        self.id.is_some()
            || self.gossip.is_some()
            || self.gossip_advertise.is_some()
            || self.link.is_some()
            || self.link_advertise.is_some()
            || !self.seeds.is_empty()
            || self.gossip_interval.is_some()
            || self.phi_threshold.is_some()
    }
}

/// `[hubs]`: what the node serves.
///
/// Written as a table (`[hubs]` with `demo = false`) or as the list of hubs served (`hubs = ["demo"]`, or
/// `hubs = []` for a backend node that serves no clients and only sends).
#[derive(Debug, Clone)]
pub struct HubsSection {
    /// Serve the demo hub at `/hub` (default true).
    pub demo: bool,
}

impl<'de> Deserialize<'de> for HubsSection {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(de::Hubs)
    }
}

impl Default for HubsSection {
    fn default() -> Self {
        HubsSection { demo: true }
    }
}

/// `[limits]`: per-connection limits and timers (defaults: [`Limits::default`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// The largest hub message a client may send: bytes, or a size such as `"64KiB"` or `"1MiB"`.
    #[serde(deserialize_with = "de::size")]
    pub max_message: usize,
    /// A connection's mailbox capacity, in messages.
    pub outbound_queue: usize,
    /// Ping a client after this long without writing to it, as `"15s"`.
    #[serde(deserialize_with = "de::duration")]
    pub keep_alive: Duration,
    /// Close a client that sent nothing for this long, as `"30s"`.
    #[serde(deserialize_with = "de::duration")]
    pub client_timeout: Duration,
    /// Coalescing of group and broadcast messages for connections that receive them often, as `"30ms"`; `"0s"`
    /// writes each at once ([`Limits::write_coalesce`]).
    #[serde(deserialize_with = "de::duration")]
    pub write_coalesce: Duration,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let limits = Limits::default();
        LimitsSection {
            max_message: limits.max_message,
            outbound_queue: limits.outbound_queue,
            keep_alive: limits.keep_alive,
            client_timeout: limits.client_timeout,
            write_coalesce: limits.write_coalesce,
        }
    }
}

/// `[auth]`: bearer tokens (see [`hubmesh::auth`]). Unset keys are `None`; no key set means no authentication.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSection {
    /// The HS256 shared secret (prefer `secret_file` or `HUBMESH_AUTH__SECRET`).
    pub secret: Option<Secret>,
    /// A file holding the HS256 secret.
    pub secret_file: Option<PathBuf>,
    /// A PEM file with the RS256 public key.
    pub public_key_file: Option<PathBuf>,
    /// The issuer (`iss`) tokens must name.
    #[serde(deserialize_with = "de::optional_lenient_string")]
    pub issuer: Option<String>,
    /// The audience (`aud`) tokens must name.
    #[serde(deserialize_with = "de::optional_lenient_string")]
    pub audience: Option<String>,
    /// The claim the user id is read from (default: the name-identifier claim, then `sub`).
    #[serde(deserialize_with = "de::optional_lenient_string")]
    pub user_claim: Option<String>,
}

impl AuthSection {
    fn is_requested(&self) -> bool {
        self.secret.is_some()
            || self.secret_file.is_some()
            || self.public_key_file.is_some()
            || self.issuer.is_some()
            || self.audience.is_some()
            || self.user_claim.is_some()
    }
}

/// A node's configuration as its sources say it, before it is checked.
///
/// Load it with [`NodeConfig::load`], check it with [`NodeConfig::validate`], and turn it into a node with
/// [`NodeConfig::node_settings`]. `NodeConfig::default()` is a single node serving the demo hub on
/// 127.0.0.1:5000.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// `[node]`.
    pub node: NodeSection,
    /// `[http]`.
    pub http: HttpSection,
    /// `[cluster]`; `None` when no cluster key is set at all.
    pub cluster: Option<ClusterSection>,
    /// `[hubs]`.
    pub hubs: HubsSection,
    /// `[limits]`.
    pub limits: LimitsSection,
    /// `[auth]`.
    pub auth: AuthSection,
    #[serde(skip)]
    origins: BTreeMap<&'static str, Origin>,
}

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

    /// Where the value of `key` came from ([`Origin::Default`] if no source set it, or for an unknown key).
    pub fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }

    /// Whether the node joins a cluster (see the module docs).
    pub fn is_clustered(&self) -> bool {
        self.cluster.as_ref().is_some_and(ClusterSection::is_requested)
    }

    /// Checks every setting, reading the secret file if one is named. Same checks as
    /// [`NodeConfig::node_settings`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.node_settings().map(|_| ())
    }

    /// Checks every setting and returns what a node needs; all problems are reported at once.
    pub fn node_settings(&self) -> Result<NodeSettings, ConfigError> {
        let mut errors = Vec::new();
        let mut problem = |key: &str, reason: String| {
            errors.push(SettingError {
                key: key.to_owned(),
                origin: self.origin(key),
                reason,
            })
        };

        let name = self.node.name.trim();
        if name.is_empty() {
            problem("node.name", "must not be empty".into());
        } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            problem(
                "node.name",
                format!("`{name}` contains whitespace or control characters"),
            );
        }
        if self.http.workers == 0 || self.http.workers > MAX_WORKERS {
            problem(
                "http.workers",
                format!("must be between 1 and {MAX_WORKERS}, not {}", self.http.workers),
            );
        }
        let limits_defaults = Limits::default();
        let limits = Limits {
            max_message: self.limits.max_message,
            // A transport frame must be able to carry the largest message.
            max_frame: limits_defaults
                .max_frame
                .max(self.limits.max_message.saturating_add(16)),
            outbound_queue: self.limits.outbound_queue,
            keep_alive: self.limits.keep_alive,
            client_timeout: self.limits.client_timeout,
            write_coalesce: self.limits.write_coalesce,
            ..limits_defaults
        };
        if limits.max_message == 0 {
            problem("limits.max_message", "must be at least 1 byte".into());
        }
        if limits.outbound_queue == 0 {
            problem("limits.outbound_queue", "must be at least 1".into());
        }
        if limits.keep_alive.is_zero() {
            problem("limits.keep_alive", "must be longer than zero".into());
        }
        if limits.client_timeout.is_zero() {
            problem("limits.client_timeout", "must be longer than zero".into());
        }
        if limits.write_coalesce > MAX_WRITE_COALESCE {
            problem(
                "limits.write_coalesce",
                format!("must be at most {}", humantime::format_duration(MAX_WRITE_COALESCE)),
            );
        }

        let cluster = match self.cluster.as_ref().filter(|cluster| cluster.is_requested()) {
            Some(section) => self.cluster_settings(section, name, &mut problem),
            None => None,
        };
        let auth = if self.auth.is_requested() {
            self.auth_settings(&mut problem)
        } else {
            None
        };
        let tls = self.tls_settings(&mut problem);
        if errors.is_empty() {
            Ok(NodeSettings {
                name: name.to_owned(),
                listen: self.http.listen,
                workers: self.http.workers,
                limits,
                demo: self.hubs.demo,
                cluster,
                auth,
                tls,
            })
        } else {
            Err(ConfigError::Invalid(errors))
        }
    }

    /// HTTPS from `http.tls_cert` and `http.tls_key`; `None` when neither is set.
    fn tls_settings(&self, problem: &mut impl FnMut(&str, String)) -> Option<TlsConfig> {
        let (cert, key) = match (&self.http.tls_cert, &self.http.tls_key) {
            (None, None) => return None,
            (Some(cert), Some(key)) => (cert, key),
            (Some(_), None) => {
                problem("http.tls_key", "missing: `http.tls_cert` needs its private key".into());
                return None;
            }
            (None, Some(_)) => {
                problem("http.tls_cert", "missing: `http.tls_key` needs its certificate".into());
                return None;
            }
        };
        let mut read = |key: &str, path: &Path| {
            let path = self.config_relative(key, path);
            std::fs::read(&path)
                .map_err(|error| problem(key, format!("cannot read `{}`: {error}", path.display())))
                .ok()
        };
        let cert_pem = read("http.tls_cert", cert);
        let key_pem = read("http.tls_key", key);
        let (cert_pem, key_pem) = (cert_pem?, key_pem?);
        match TlsConfig::from_pem(&cert_pem, &key_pem) {
            Ok(tls) => Some(tls),
            Err(error @ TlsError::Key(_)) => {
                problem("http.tls_key", error.to_string());
                None
            }
            Err(error) => {
                problem("http.tls_cert", error.to_string());
                None
            }
        }
    }

    fn cluster_settings(
        &self,
        section: &ClusterSection,
        name: &str,
        problem: &mut impl FnMut(&str, String),
    ) -> Option<ClusterSettings> {
        const NEEDED: &str = "required for a node that joins a cluster";
        if self.origin("node.name") == Origin::Default {
            problem(
                "node.name",
                format!("missing: {NEEDED} (names are unique in a cluster)"),
            );
        }
        let id = section.id.as_deref().map(str::trim).unwrap_or_default();
        if section.id.is_none() {
            problem("cluster.id", format!("missing: {NEEDED}"));
        } else if id.is_empty() {
            problem("cluster.id", "must not be empty".into());
        }
        if section.gossip.is_none() {
            problem("cluster.gossip", format!("missing: {NEEDED}"));
        }
        if section.link.is_none() {
            problem("cluster.link", format!("missing: {NEEDED}"));
        }
        let unadvertised = |listen: Option<SocketAddr>, advertise: Option<SocketAddr>| {
            advertise.is_none() && listen.is_some_and(|listen| listen.ip().is_unspecified())
        };
        if unadvertised(section.gossip, section.gossip_advertise) {
            problem(
                "cluster.gossip_advertise",
                "missing: required when `cluster.gossip` listens on an unspecified address (0.0.0.0 or [::])".into(),
            );
        }
        if unadvertised(section.link, section.link_advertise) {
            problem(
                "cluster.link_advertise",
                "missing: required when `cluster.link` listens on an unspecified address (0.0.0.0 or [::])".into(),
            );
        }
        if let Some(link) = section.link {
            if link.port() != 0 && link == self.http.listen {
                problem("cluster.link", format!("{link} is also `http.listen`"));
            }
        }
        for seed in &section.seeds {
            if let Err(reason) = check_seed(seed) {
                problem("cluster.seeds", reason);
            }
        }
        let defaults = MembershipConfig::new(name, id, SocketAddr::from(([127, 0, 0, 1], 0)));
        let gossip_interval = section.gossip_interval.unwrap_or(defaults.gossip_interval);
        if gossip_interval.is_zero() || gossip_interval > defaults.max_interval {
            problem(
                "cluster.gossip_interval",
                format!(
                    "must be longer than zero and at most {}, not {}",
                    humantime::format_duration(defaults.max_interval),
                    humantime::format_duration(gossip_interval)
                ),
            );
        }
        let phi_threshold = section.phi_threshold.unwrap_or(defaults.phi_threshold);
        if !(phi_threshold.is_finite() && phi_threshold > 0.0) {
            problem(
                "cluster.phi_threshold",
                format!("must be a positive number, not {phi_threshold}"),
            );
        }
        let secret = self.secret(section, problem);

        let (Some(gossip), Some(link), Some(secret)) = (section.gossip, section.link, secret) else {
            return None;
        };
        let membership = MembershipConfig {
            gossip_advertise: section.gossip_advertise.unwrap_or(gossip),
            gossip_interval,
            phi_threshold,
            ..MembershipConfig::new(name, id, gossip).with_seeds(section.seeds.iter().map(|seed| seed.trim()))
        };
        let mut link = LinkConfig::new(link, secret.expose());
        if let Some(advertise) = section.link_advertise {
            link.advertise = advertise;
        }
        Some(ClusterSettings::real(membership, link))
    }

    /// The path of file setting `key`: a relative path given in a configuration file is relative to that file.
    fn config_relative(&self, key: &str, path: &Path) -> PathBuf {
        match self.origin(key) {
            Origin::File(config) if path.is_relative() => config
                .parent()
                .map(|dir| dir.join(path))
                .unwrap_or_else(|| path.to_owned()),
            _ => path.to_owned(),
        }
    }

    /// The authenticator `[auth]` describes.
    fn auth_settings(&self, problem: &mut impl FnMut(&str, String)) -> Option<Authenticator> {
        let section = &self.auth;
        let non_empty = |key: &str, value: &Option<String>, problem: &mut dyn FnMut(&str, String)| {
            let value = value.as_deref().map(str::trim)?;
            if value.is_empty() {
                problem(key, "must not be empty".into());
                return None;
            }
            Some(value.to_owned())
        };
        let issuer = non_empty("auth.issuer", &section.issuer, problem);
        let audience = non_empty("auth.audience", &section.audience, problem);
        let user_claim = non_empty("auth.user_claim", &section.user_claim, problem);
        let secret_given = section.secret.is_some() || section.secret_file.is_some();
        let authenticator = match (&section.public_key_file, secret_given) {
            (Some(_), true) => {
                problem(
                    "auth.public_key_file",
                    "set either an HS256 secret (`auth.secret` / `auth.secret_file`) or an RS256 public key, not both"
                        .into(),
                );
                None
            }
            (None, false) => {
                problem(
                    "auth.secret",
                    format!(
                        "missing: authentication needs `auth.secret`, `auth.secret_file`, {} or `auth.public_key_file`",
                        env_name("auth.secret")
                    ),
                );
                None
            }
            (Some(path), false) => {
                let path = self.config_relative("auth.public_key_file", path);
                match std::fs::read(&path) {
                    Err(error) => {
                        problem(
                            "auth.public_key_file",
                            format!("cannot read `{}`: {error}", path.display()),
                        );
                        None
                    }
                    Ok(pem) => match Authenticator::rs256_pem(&pem) {
                        Ok(authenticator) => Some(authenticator),
                        Err(error) => {
                            problem(
                                "auth.public_key_file",
                                format!("`{}` is not an RSA public key in PEM: {error}", path.display()),
                            );
                            None
                        }
                    },
                }
            }
            (None, true) => self
                .pick_secret(
                    ("auth.secret", section.secret.as_ref()),
                    ("auth.secret_file", section.secret_file.as_deref()),
                    problem,
                )
                .map(|secret| Authenticator::hs256(secret.expose())),
        };
        let mut authenticator = authenticator?;
        if let Some(issuer) = issuer {
            authenticator = authenticator.issuer(&issuer);
        }
        if let Some(audience) = audience {
            authenticator = authenticator.audience(&audience);
        }
        if let Some(claim) = user_claim {
            authenticator = authenticator.user_claim(&claim);
        }
        Some(authenticator)
    }

    /// The cluster secret, from `cluster.secret` or `cluster.secret_file`, whichever comes from the later source.
    fn secret(&self, section: &ClusterSection, problem: &mut impl FnMut(&str, String)) -> Option<Secret> {
        if section.secret.is_none() && section.secret_file.is_none() {
            problem(
                "cluster.secret",
                format!(
                    "missing: a node that joins a cluster needs `cluster.secret`, `cluster.secret_file` or {}",
                    env_name("cluster.secret")
                ),
            );
            return None;
        }
        self.pick_secret(
            ("cluster.secret", section.secret.as_ref()),
            ("cluster.secret_file", section.secret_file.as_deref()),
            problem,
        )
    }

    /// A secret given as a value or as a file (at least one of them is set), whichever comes from the later source;
    /// the file's content is trimmed. `None` after reporting a problem.
    fn pick_secret(
        &self,
        (value_key, value): (&str, Option<&Secret>),
        (file_key, file): (&str, Option<&Path>),
        problem: &mut impl FnMut(&str, String),
    ) -> Option<Secret> {
        let from_file = |path: &Path| -> Result<Secret, String> {
            let path = self.config_relative(file_key, path);
            let text =
                std::fs::read_to_string(&path).map_err(|error| format!("cannot read `{}`: {error}", path.display()))?;
            let secret = text.trim();
            if secret.is_empty() {
                return Err(format!("`{}` is empty", path.display()));
            }
            Ok(Secret::new(secret))
        };
        let from_value = |secret: &Secret| -> Result<Secret, String> {
            let trimmed = secret.expose().trim();
            if trimmed.is_empty() {
                return Err("must not be empty".into());
            }
            Ok(Secret::new(trimmed))
        };
        let result = match (value, file) {
            (None, None) => return None,
            (Some(secret), None) => (value_key, from_value(secret)),
            (None, Some(path)) => (file_key, from_file(path)),
            (Some(secret), Some(path)) => {
                let value_rank = self.origin(value_key).rank();
                let file_rank = self.origin(file_key).rank();
                if value_rank == file_rank {
                    problem(
                        value_key,
                        format!("set only one of `{value_key}` and `{file_key}` in one source"),
                    );
                    return None;
                } else if value_rank > file_rank {
                    (value_key, from_value(secret))
                } else {
                    (file_key, from_file(path))
                }
            }
        };
        match result {
            (_, Ok(secret)) => Some(secret),
            (key, Err(reason)) => {
                problem(key, reason);
                None
            }
        }
    }
}

/// What a node needs, checked: the result of [`NodeConfig::node_settings`].
#[derive(Clone)]
pub struct NodeSettings {
    /// The node's name.
    pub name: String,
    /// The HTTP address.
    pub listen: SocketAddr,
    /// HTTP worker threads.
    pub workers: usize,
    /// Connection limits and timers.
    pub limits: Limits,
    /// Whether the demo hub is served at `/hub`.
    pub demo: bool,
    /// Gossip and link settings; `None` for a single node.
    pub cluster: Option<ClusterSettings>,
    /// Checks bearer tokens; `None` when `[auth]` is not configured.
    pub auth: Option<Authenticator>,
    /// HTTPS instead of plain HTTP; `None` unless `http.tls_cert` and `http.tls_key` are set.
    pub tls: Option<TlsConfig>,
}

impl fmt::Debug for NodeSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // By hand: `LinkConfig`'s own `Debug` would show the cluster secret.
        let cluster = self.cluster.as_ref().map(|cluster| {
            (
                &cluster.membership.cluster_id,
                cluster.membership.gossip_listen,
                &cluster.membership.seeds,
                cluster.link.listen,
            )
        });
        f.debug_struct("NodeSettings")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("workers", &self.workers)
            .field("limits", &self.limits)
            .field("demo", &self.demo)
            .field("cluster (id, gossip, seeds, link)", &cluster)
            .field("auth", &self.auth)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl NodeSettings {
    /// A [`NodeBuilder`] with these settings, serving the demo hub if `demo`, and joining the cluster if any. Add
    /// your own hubs with [`NodeBuilder::hub`], then start it.
    pub fn builder(&self) -> NodeBuilder {
        let mut builder = Node::builder()
            .name(&self.name)
            .listen(&self.listen.to_string())
            .limits(self.limits.clone())
            .workers(self.workers);
        if self.demo {
            builder = builder.hub(demo_hub());
        }
        if let Some(cluster) = &self.cluster {
            builder = builder.cluster(cluster.clone());
        }
        if let Some(auth) = &self.auth {
            builder = builder.auth(auth.clone());
        }
        if let Some(tls) = &self.tls {
            builder = builder.tls(tls.clone());
        }
        builder
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

fn check_seed(seed: &str) -> Result<(), String> {
    let seed = seed.trim();
    if seed.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    match seed.rsplit_once(':') {
        Some((host, port))
            if !host.is_empty() && !host.contains(char::is_whitespace) && port.parse::<u16>().is_ok() =>
        {
            Ok(())
        }
        _ => Err(format!("`{seed}` is not an address of the form ip:port or host:port")),
    }
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

/// Deserializers that accept the forms the sources produce: TOML values, and strings from the environment and
/// the command line.
mod de {
    use std::fmt;
    use std::marker::PhantomData;
    use std::net::SocketAddr;
    use std::time::Duration;

    use serde::de::{Error, MapAccess, SeqAccess, Visitor};
    use serde::Deserializer;

    /// A visitor that accepts a string (and, if `scalars`, a number or boolean, as text) and parses it.
    struct Parse<T> {
        expecting: &'static str,
        scalars: bool,
        parse: fn(&str) -> Result<T, String>,
        _marker: PhantomData<T>,
    }

    impl<T> Parse<T> {
        fn new(expecting: &'static str, scalars: bool, parse: fn(&str) -> Result<T, String>) -> Self {
            Parse {
                expecting,
                scalars,
                parse,
                _marker: PhantomData,
            }
        }

        fn scalar<E: Error>(&self, text: String) -> Result<T, E> {
            if self.scalars {
                (self.parse)(&text).map_err(E::custom)
            } else {
                Err(E::custom(format!("expected {}, found `{text}`", self.expecting)))
            }
        }
    }

    impl<'de, T> Visitor<'de> for Parse<T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }

        fn visit_str<E: Error>(self, value: &str) -> Result<T, E> {
            (self.parse)(value).map_err(E::custom)
        }

        fn visit_u64<E: Error>(self, value: u64) -> Result<T, E> {
            self.scalar(value.to_string())
        }

        fn visit_i64<E: Error>(self, value: i64) -> Result<T, E> {
            self.scalar(value.to_string())
        }

        fn visit_f64<E: Error>(self, value: f64) -> Result<T, E> {
            self.scalar(value.to_string())
        }

        fn visit_bool<E: Error>(self, value: bool) -> Result<T, E> {
            self.scalar(value.to_string())
        }
    }

    /// Optional values: `Some` of the inner parse.
    struct Optional<T>(Parse<T>);

    impl<'de, T> Visitor<'de> for Optional<T> {
        type Value = Option<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0.expecting)
        }

        fn visit_none<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
            deserializer.deserialize_any(self.0).map(Some)
        }
    }

    fn text(value: &str) -> Result<String, String> {
        Ok(value.to_owned())
    }

    fn parse_address(value: &str) -> Result<SocketAddr, String> {
        value
            .trim()
            .parse()
            .map_err(|_| format!("`{value}` is not an address of the form ip:port (such as 127.0.0.1:5000)"))
    }

    fn parse_duration(value: &str) -> Result<Duration, String> {
        humantime::parse_duration(value.trim())
            .map_err(|error| format!("`{value}` is not a duration such as \"200ms\" or \"15s\": {error}"))
    }

    /// Bytes, or a number with a unit: B, KB, KiB, MB, MiB, GB, GiB.
    fn parse_size(value: &str) -> Result<usize, String> {
        let trimmed = value.trim();
        let digits = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(digits);
        let multiplier: usize = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1000,
            "kib" => 1 << 10,
            "mb" => 1000 * 1000,
            "mib" => 1 << 20,
            "gb" => 1000 * 1000 * 1000,
            "gib" => 1 << 30,
            _ => return Err(format!("`{value}` is not a size such as 65536, \"64KiB\" or \"1MiB\"")),
        };
        number
            .parse::<usize>()
            .ok()
            .and_then(|number| number.checked_mul(multiplier))
            .ok_or_else(|| format!("`{value}` is not a size such as 65536, \"64KiB\" or \"1MiB\""))
    }

    pub(super) fn lenient_string<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_any(Parse::new("a string", true, text))
    }

    pub(super) fn optional_lenient_string<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<String>, D::Error> {
        deserializer.deserialize_option(Optional(Parse::new("a string", true, text)))
    }

    pub(super) fn address<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
        deserializer.deserialize_any(Parse::new(
            "an address such as \"127.0.0.1:5000\"",
            false,
            parse_address,
        ))
    }

    pub(super) fn optional_address<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<SocketAddr>, D::Error> {
        deserializer.deserialize_option(Optional(Parse::new(
            "an address such as \"127.0.0.1:7001\"",
            false,
            parse_address,
        )))
    }

    pub(super) fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        deserializer.deserialize_any(Parse::new("a duration such as \"15s\"", false, parse_duration))
    }

    pub(super) fn optional_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        deserializer.deserialize_option(Optional(Parse::new(
            "a duration such as \"200ms\"",
            false,
            parse_duration,
        )))
    }

    pub(super) fn size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_any(Parse::new("a size such as 65536 or \"64KiB\"", true, parse_size))
    }

    /// The hubs of a node: a table `{ demo = bool }` or a list of hub names.
    pub(super) struct Hubs;

    /// The hubs the configuration can name.
    const HUB_NAMES: &[&str] = &["demo"];

    impl<'de> Visitor<'de> for Hubs {
        type Value = super::HubsSection;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a table such as `{ demo = true }` or a list of hub names such as `[\"demo\"]`")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut hubs = super::HubsSection { demo: false };
            while let Some(name) = seq.next_element::<String>()? {
                match name.as_str() {
                    "demo" => hubs.demo = true,
                    other => return Err(A::Error::unknown_variant(other, HUB_NAMES)),
                }
            }
            Ok(hubs)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut hubs = super::HubsSection::default();
            while let Some(key) = map.next_key::<String>()? {
                match key.as_str() {
                    "demo" => hubs.demo = map.next_value()?,
                    other => return Err(A::Error::unknown_field(other, HUB_NAMES)),
                }
            }
            Ok(hubs)
        }
    }

    /// A list of strings: a sequence, or one string of comma-separated items (as from the environment).
    pub(super) fn string_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
        struct List;

        impl<'de> Visitor<'de> for List {
            type Value = Vec<String>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of strings, or comma-separated strings")
            }

            fn visit_str<E: Error>(self, value: &str) -> Result<Vec<String>, E> {
                let value = value.trim();
                let value = value
                    .strip_prefix('[')
                    .and_then(|inner| inner.strip_suffix(']'))
                    .unwrap_or(value);
                Ok(value
                    .split(',')
                    .map(|item| item.trim().trim_matches('"').trim().to_owned())
                    .filter(|item| !item.is_empty())
                    .collect())
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(items)
            }
        }

        deserializer.deserialize_any(List)
    }
}
