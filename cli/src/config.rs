//! Node configuration: TOML files, `HUBMESH_*` environment variables and command-line overrides, merged and
//! checked into the settings a [`NodeBuilder`](hubmesh::NodeBuilder) takes.
//!
//! # What this module owns
//!
//! * [`NodeConfig`]: what the configuration says, section by section (`[node]`, `[http]`, `[cluster]`, `[hubs]`,
//!   `[limits]`, `[auth]`, `[rest]`; every key is listed in [`KEYS`] and documented in `cluster-config/README.md`), with the
//!   [`Origin`] of every value.
//! * [`NodeConfig::load`]: merges the sources, later ones winning: defaults < the file < `HUBMESH_*`
//!   environment variables (`__` between section and key: `HUBMESH_HTTP__LISTEN`) < [`Overrides`] (the command
//!   line's flags).
//! * [`NodeConfig::node_settings`]: checks every value and turns the configuration into [`NodeSettings`], whose
//!   [`NodeSettings::builder`] is a [`NodeBuilder`](hubmesh::NodeBuilder) ready to start. Every problem is
//!   reported as a [`SettingError`] that names the key and where its value came from.
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
//! * `cluster.previous_secrets` (a list; comma-separated in its variable) and `cluster.previous_secret_file` (one
//!   per line) name secrets being rotated away from: gossip still accepts them, links do not. Both may be set (their
//!   union is taken); each must be non-empty and differ from the current secret; they are held as [`Secret`]s too.
//! * `[auth]` configures bearer tokens ([`hubmesh::auth`]) when any of its keys is set: exactly one key, an HS256
//!   secret (`auth.secret` or `auth.secret_file`, read like the cluster secret) or an RS256 public key
//!   (`auth.public_key_file`, PEM; relative paths as for `secret_file`); optionally `auth.issuer`,
//!   `auth.audience` and `auth.user_claim` (default: the name-identifier claim, then `sub`).
//! * `node.drain_window` (default 10 s, at most [`MAX_DRAIN_WINDOW`]) is how long the `hubmesh node` process takes
//!   to drain on SIGTERM or `POST /_hubmesh/drain`; the library's `Node::drain` takes it as its argument.
//! * `[rest]` turns on the Azure SignalR-style REST API when an access key is set (`rest.access_key` or
//!   `rest.access_key_file`, read like the cluster secret); without one the API is off.
//! * `cluster.link_tls_cert`, `cluster.link_tls_key` and `cluster.link_tls_ca` (PEM files; relative paths as for
//!   `secret_file`) make links between nodes use mutual TLS: all three or none.
//! * `http.tls_cert` and `http.tls_key` (PEM files: the certificate chain, leaf first, and its private key;
//!   relative paths as for `secret_file`) make the node serve HTTPS and WSS instead of plain HTTP. Both or
//!   neither.
//! * Environment variables are read only when named `HUBMESH_<SECTION>__<KEY>`; other `HUBMESH_*` variables (for
//!   tests or logging) are ignored. Values are strings, converted to the key's type (`"2048"`, `"false"`); a list
//!   (`cluster.seeds`) may be written as comma-separated addresses.
//! * Unknown keys are errors, so a typo is reported instead of silently ignored.
//!
//! # How it is split
//!
//! * `sections`: the schema, [`NodeConfig`] and its sections, [`KEYS`], the defaults and [`Secret`].
//! * `origin`: where a value came from ([`Origin`]) and the errors that name it ([`SettingError`], [`ConfigError`]).
//! * `load`: the sources merged into a [`NodeConfig`] ([`NodeConfig::load`], [`Overrides`], [`env_name`]).
//! * `settings`: the checks that turn a [`NodeConfig`] into [`NodeSettings`].
//! * `link_tls`: reading the link TLS files of `[cluster]`.
//! * `de`: the serde deserialisers that accept TOML values and strings alike.
//!
//! # What it may call
//!
//! figment and serde for parsing, and the `hubmesh` library's public API: node and cluster configuration types,
//! [`Limits`](hubmesh::Limits), [`hubmesh::auth`] ([`Authenticator`](hubmesh::auth::Authenticator)) and
//! [`hubmesh::demo`]. No global state: the process environment is read only by [`NodeConfig::load`], and
//! [`NodeConfig::load_with_env`] takes it as an argument instead.

mod de;
mod link_tls;
mod load;
mod origin;
mod sections;
mod settings;

pub use load::{env_name, Overrides, ENV_PREFIX};
pub use origin::{ConfigError, Origin, SettingError};
pub use sections::{
    AuthSection, ClusterSection, HttpSection, HubsSection, LimitsSection, NodeConfig, NodeSection, RestSection, Secret,
    DEFAULT_DRAIN_WINDOW, DEFAULT_HTTP_LISTEN, DEFAULT_NAME, DEFAULT_WORKERS, KEYS,
};
pub use settings::{NodeSettings, MAX_DRAIN_WINDOW, MAX_WORKERS};
