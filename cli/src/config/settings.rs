//! Checking: [`NodeConfig::node_settings`] turns what the sources say into [`NodeSettings`], what a node needs,
//! reporting every bad or missing setting at once. It reads the files settings name (secrets, keys,
//! certificates) and builds the library's configuration types; [`NodeSettings::builder`] makes the
//! [`NodeBuilder`] that starts the node.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hubmesh::auth::Authenticator;
use hubmesh::demo::demo_hub;
use hubmesh::{
    ClusterSettings, CorsOrigins, Limits, LinkConfig, MembershipConfig, Node, NodeBuilder, TlsConfig, TlsError,
};

use super::{env_name, ClusterSection, ConfigError, NodeConfig, Origin, Secret, SettingError};

/// The longest `limits.write_coalesce`: a message may wait this long for company, no longer.
const MAX_WRITE_COALESCE: Duration = Duration::from_secs(1);

/// The most HTTP worker threads accepted.
pub const MAX_WORKERS: usize = 1024;

/// The longest `node.drain_window`: an orchestrator kills a node that takes longer anyway (Kubernetes after
/// `terminationGracePeriodSeconds`), and a drain that never ends would hold a rolling restart forever.
pub const MAX_DRAIN_WINDOW: Duration = Duration::from_secs(600);

impl NodeConfig {
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
        if self.node.drain_window > MAX_DRAIN_WINDOW {
            problem(
                "node.drain_window",
                format!(
                    "must be at most {}, not {}",
                    humantime::format_duration(MAX_DRAIN_WINDOW),
                    humantime::format_duration(self.node.drain_window)
                ),
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
            max_queued_invocations: self.limits.max_queued_invocations,
            max_streams: self.limits.max_streams,
            max_pending_negotiations: self.limits.max_pending_negotiations,
            max_connections: self.limits.max_connections,
            negotiates_per_second: self.limits.negotiates_per_second,
            rate_tracked_addresses: self.limits.rate_tracked_addresses,
            request_header_timeout: self.limits.request_header_timeout,
            ..limits_defaults
        };
        if limits.max_message == 0 {
            problem("limits.max_message", "must be at least 1 byte".into());
        }
        if limits.outbound_queue == 0 {
            problem("limits.outbound_queue", "must be at least 1".into());
        }
        if limits.max_streams == 0 {
            problem("limits.max_streams", "must be at least 1".into());
        }
        if limits.max_pending_negotiations == 0 {
            problem("limits.max_pending_negotiations", "must be at least 1".into());
        }
        if limits.max_connections == 0 {
            problem("limits.max_connections", "must be at least 1".into());
        }
        if limits.rate_tracked_addresses == 0 {
            problem("limits.rate_tracked_addresses", "must be at least 1".into());
        }
        if limits.request_header_timeout.is_zero() {
            problem("limits.request_header_timeout", "must be longer than zero".into());
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
        for origin in &self.http.cors_origins {
            if let Err(reason) = CorsOrigins::check(origin) {
                problem("http.cors_origins", reason);
            }
        }
        let rest_access_key = self.pick_secret(
            ("rest.access_key", self.rest.access_key.as_ref()),
            ("rest.access_key_file", self.rest.access_key_file.as_deref()),
            &mut problem,
        );
        if errors.is_empty() {
            Ok(NodeSettings {
                name: name.to_owned(),
                drain_window: self.node.drain_window,
                listen: self.http.listen,
                workers: self.http.workers,
                limits,
                demo: self.hubs.demo,
                cluster,
                auth,
                tls,
                rest_access_key,
                cors_origins: CorsOrigins::from_list(&self.http.cors_origins),
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
        let previous_secrets = self.previous_secrets(section, secret.as_ref(), problem);

        let (Some(gossip), Some(link), Some(secret)) = (section.gossip, section.link, secret) else {
            return None;
        };
        let membership = MembershipConfig {
            gossip_advertise: section.gossip_advertise.unwrap_or(gossip),
            gossip_interval,
            phi_threshold,
            ..MembershipConfig::new(name, id, gossip).with_seeds(section.seeds.iter().map(|seed| seed.trim()))
        };
        let link_tls = self.link_tls(section, problem);
        let mut link = LinkConfig::new(link, secret.expose());
        link.previous_secrets = previous_secrets;
        link.tls = link_tls?;
        if let Some(advertise) = section.link_advertise {
            link.advertise = advertise;
        }
        Some(ClusterSettings::real(membership, link))
    }

    /// The path of file setting `key`: a relative path given in a configuration file is relative to that file.
    pub(super) fn config_relative(&self, key: &str, path: &Path) -> PathBuf {
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

    /// The secrets being rotated away from, from `cluster.previous_secrets` and `cluster.previous_secret_file`
    /// (one per line), both if both are set; each must be non-empty and differ from the current secret.
    fn previous_secrets(
        &self,
        section: &ClusterSection,
        current: Option<&Secret>,
        problem: &mut impl FnMut(&str, String),
    ) -> Vec<String> {
        let mut previous = Vec::new();
        let mut check = |key: &str, secret: &str, problem: &mut dyn FnMut(&str, String)| {
            if current.is_some_and(|current| current.expose() == secret) {
                problem(
                    key,
                    "lists the current secret: give only secrets being rotated away from".into(),
                );
            } else if !previous.iter().any(|known| known == secret) {
                previous.push(secret.to_owned());
            }
        };
        for secret in &section.previous_secrets {
            let secret = secret.expose().trim();
            if secret.is_empty() {
                problem("cluster.previous_secrets", "must not hold an empty secret".into());
            } else {
                check("cluster.previous_secrets", secret, problem);
            }
        }
        if let Some(path) = &section.previous_secret_file {
            let key = "cluster.previous_secret_file";
            let path = self.config_relative(key, path);
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let secrets: Vec<&str> = text.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
                    if secrets.is_empty() {
                        problem(key, format!("`{}` is empty", path.display()));
                    }
                    for secret in secrets {
                        check(key, secret, problem);
                    }
                }
                Err(error) => problem(key, format!("cannot read `{}`: {error}", path.display())),
            }
        }
        previous
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
    /// Over how long a drain (SIGTERM, `POST /_hubmesh/drain`) closes the node's connections.
    pub drain_window: Duration,
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
    /// The REST API's access key; `None` (the API off) unless `[rest]` sets one.
    pub rest_access_key: Option<Secret>,
    /// The origins whose pages may call the node cross-origin with credentials.
    pub cors_origins: CorsOrigins,
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
            .field("drain_window", &self.drain_window)
            .field("listen", &self.listen)
            .field("workers", &self.workers)
            .field("limits", &self.limits)
            .field("demo", &self.demo)
            .field("cluster (id, gossip, seeds, link)", &cluster)
            .field("auth", &self.auth)
            .field("tls", &self.tls.is_some())
            .field("rest_api", &self.rest_access_key.is_some())
            .field("cors_origins", &self.cors_origins)
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
            .workers(self.workers)
            .cors_origins(self.cors_origins.clone());
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
        if let Some(key) = &self.rest_access_key {
            builder = builder.rest_access_key(key.expose());
        }
        builder
    }
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
