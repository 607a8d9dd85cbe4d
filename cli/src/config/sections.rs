//! The configuration's schema: [`NodeConfig`] and its sections (`[node]`, `[http]`, `[cluster]`, `[hubs]`,
//! `[limits]`, `[auth]`, `[rest]`) as their sources say them, every key ([`KEYS`]), the defaults, and the [`Secret`] type
//! that keeps a secret out of logs.
//!
//! Types only, with their serde forms (the deserialisers are in [`super::de`]); loading is [`super::load`]'s job,
//! checking [`super::settings`]'s.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use hubmesh::Limits;

use super::{de, Origin};

/// Every configuration key, as `section.key`. The environment variable of a key is [`env_name`](super::env_name) of it.
pub const KEYS: &[&str] = &[
    "node.name",
    "node.drain_window",
    "http.listen",
    "http.workers",
    "http.tls_cert",
    "http.tls_key",
    "http.cors_origins",
    "cluster.id",
    "cluster.gossip",
    "cluster.gossip_advertise",
    "cluster.link",
    "cluster.link_advertise",
    "cluster.seeds",
    "cluster.secret",
    "cluster.secret_file",
    "cluster.previous_secrets",
    "cluster.previous_secret_file",
    "cluster.gossip_interval",
    "cluster.phi_threshold",
    "cluster.link_tls_cert",
    "cluster.link_tls_key",
    "cluster.link_tls_ca",
    "hubs.demo",
    "limits.max_message",
    "limits.outbound_queue",
    "limits.keep_alive",
    "limits.client_timeout",
    "limits.write_coalesce",
    "limits.max_queued_invocations",
    "limits.max_streams",
    "limits.max_pending_negotiations",
    "limits.max_connections",
    "limits.negotiates_per_second",
    "limits.rate_tracked_addresses",
    "limits.request_header_timeout",
    "auth.secret",
    "auth.secret_file",
    "auth.public_key_file",
    "auth.issuer",
    "auth.audience",
    "auth.user_claim",
    "rest.access_key",
    "rest.access_key_file",
];

/// The default node name of an unclustered node.
pub const DEFAULT_NAME: &str = "node-1";
/// The default HTTP address.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:5000";
/// The default number of HTTP worker threads.
pub const DEFAULT_WORKERS: usize = 2;
/// The default drain window: how long a node that is asked to leave (SIGTERM, `POST /_hubmesh/drain`) takes to
/// move its connections off.
pub const DEFAULT_DRAIN_WINDOW: Duration = Duration::from_secs(10);

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

/// A list of secrets: a TOML array, or comma-separated in one string.
fn secret_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Secret>, D::Error> {
    de::string_list(deserializer).map(|secrets| secrets.into_iter().map(Secret).collect())
}

/// `[node]`: who the node is.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    /// The node's name, unique in the cluster and stable across restarts (default `node-1`; a clustered node must
    /// set it).
    #[serde(deserialize_with = "de::lenient_string")]
    pub name: String,
    /// Over how long a draining node closes its connections, evenly spread (default 10 s; at most
    /// [`MAX_DRAIN_WINDOW`](super::MAX_DRAIN_WINDOW)); `0s` closes them all at once.
    #[serde(deserialize_with = "de::duration")]
    pub drain_window: Duration,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            name: DEFAULT_NAME.to_owned(),
            drain_window: DEFAULT_DRAIN_WINDOW,
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
    /// Origins (`scheme://host[:port]`, or `*` for any) whose pages may call the node cross-origin with
    /// credentials (default: none).
    #[serde(deserialize_with = "de::string_list")]
    pub cors_origins: Vec<String>,
}

impl Default for HttpSection {
    fn default() -> Self {
        HttpSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            workers: DEFAULT_WORKERS,
            tls_cert: None,
            tls_key: None,
            cors_origins: Vec::new(),
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
    /// Secrets being rotated away from: gossip signed with them is still accepted (prefer
    /// `previous_secret_file` or `HUBMESH_CLUSTER__PREVIOUS_SECRETS`, comma-separated).
    #[serde(deserialize_with = "secret_list")]
    pub previous_secrets: Vec<Secret>,
    /// A file holding previous secrets, one per line (blank lines ignored).
    pub previous_secret_file: Option<PathBuf>,
    /// Time between gossip rounds, as `"200ms"` (default: [`MembershipConfig`](hubmesh::MembershipConfig)'s).
    #[serde(deserialize_with = "de::optional_duration")]
    pub gossip_interval: Option<Duration>,
    /// Phi above which a peer is declared dead (default: [`MembershipConfig`](hubmesh::MembershipConfig)'s).
    pub phi_threshold: Option<f64>,
    /// A PEM file with this node's link certificate chain (leaf first, naming the node as a DNS name): links use
    /// mutual TLS. Needs `link_tls_key` and `link_tls_ca`.
    pub link_tls_cert: Option<PathBuf>,
    /// A PEM file with the private key of `link_tls_cert`.
    pub link_tls_key: Option<PathBuf>,
    /// A PEM file with the certificates peers' link certificates must chain to: the cluster CA, or every node's
    /// own certificate (pinned).
    pub link_tls_ca: Option<PathBuf>,
}

impl ClusterSection {
    /// Whether any setting other than the secrets is given: the node is then clustered.
    pub(super) fn is_requested(&self) -> bool {
        self.id.is_some()
            || self.gossip.is_some()
            || self.gossip_advertise.is_some()
            || self.link.is_some()
            || self.link_advertise.is_some()
            || !self.seeds.is_empty()
            || self.gossip_interval.is_some()
            || self.phi_threshold.is_some()
            || self.link_tls_cert.is_some()
            || self.link_tls_key.is_some()
            || self.link_tls_ca.is_some()
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
    /// Blocking invocations a connection may queue behind the running one; more closes it
    /// ([`Limits::max_queued_invocations`]).
    pub max_queued_invocations: usize,
    /// Streams a connection may have open at once in each direction ([`Limits::max_streams`]).
    pub max_streams: usize,
    /// Negotiated tokens not yet used by a transport, per hub ([`Limits::max_pending_negotiations`]).
    pub max_pending_negotiations: usize,
    /// Connections the node holds at once ([`Limits::max_connections`]).
    pub max_connections: usize,
    /// Negotiates per second per client address; `0` is off ([`Limits::negotiates_per_second`]).
    pub negotiates_per_second: u32,
    /// Client addresses the negotiate rate is tracked for ([`Limits::rate_tracked_addresses`]).
    pub rate_tracked_addresses: usize,
    /// How long a client may take to send a request's headers, as `"5s"` ([`Limits::request_header_timeout`]).
    #[serde(deserialize_with = "de::duration")]
    pub request_header_timeout: Duration,
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
            max_queued_invocations: limits.max_queued_invocations,
            max_streams: limits.max_streams,
            max_pending_negotiations: limits.max_pending_negotiations,
            max_connections: limits.max_connections,
            negotiates_per_second: limits.negotiates_per_second,
            rate_tracked_addresses: limits.rate_tracked_addresses,
            request_header_timeout: limits.request_header_timeout,
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
    pub(super) fn is_requested(&self) -> bool {
        self.secret.is_some()
            || self.secret_file.is_some()
            || self.public_key_file.is_some()
            || self.issuer.is_some()
            || self.audience.is_some()
            || self.user_claim.is_some()
    }
}

/// `[rest]`: the Azure SignalR-style REST API (`/api/hubs/...`). It is on only when an access key is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RestSection {
    /// The access key REST tokens are signed with (HS256; prefer `access_key_file` or `HUBMESH_REST__ACCESS_KEY`).
    pub access_key: Option<Secret>,
    /// A file holding the access key.
    pub access_key_file: Option<PathBuf>,
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
    /// `[rest]`.
    pub rest: RestSection,
    #[serde(skip)]
    pub(super) origins: BTreeMap<&'static str, Origin>,
}

impl NodeConfig {
    /// Where the value of `key` came from ([`Origin::Default`] if no source set it, or for an unknown key).
    pub fn origin(&self, key: &str) -> Origin {
        self.origins.get(key).cloned().unwrap_or(Origin::Default)
    }

    /// Whether the node joins a cluster (see the module docs).
    pub fn is_clustered(&self) -> bool {
        self.cluster.as_ref().is_some_and(ClusterSection::is_requested)
    }
}
