//! A hubmesh node: the hubs it serves, its HTTP server, and its lifecycle (start, stop).
//!
//! [`Node::builder`] collects hubs and settings; [`NodeBuilder::start`] serves them over HTTP and returns a
//! [`NodeHandle`]. Applications that need their own actix-web `App` (extra routes, middleware) use
//! [`NodeBuilder::build`] (or [`NodeBuilder::build_and_join`], for a node in a cluster) and mount
//! [`Node::configure`] into it.
//!
//! Runtime shape: actix-web runs each HTTP worker on a single-threaded runtime, so connection tasks live on the
//! worker that accepted them. Group and user actors run on the multi-threaded runtime the node was built on
//! (captured in `build`), never on a worker. No state here is process-global: several nodes may run in one
//! process.
//!
//! Health: every node answers `GET /healthz` (200 while it serves HTTP) and `GET /readyz` (200 when ready, else
//! 503 with the reasons). A node is *ready* when its lifecycle is serving (built and joined, not stopping or
//! draining) and, in a cluster, its own view lists it live, the link to every live peer of that view is up, and
//! the router placed keys with that view, so it owns its share; the rule is in `readiness`
//! (docs/semantics.md#readiness). `GET /_hubmesh/status` reports the cluster as the node sees it ([`status`]),
//! `GET /metrics` gives its figures to Prometheus ([`metrics`]) and `GET /_hubmesh/` shows the cluster live.

mod admission;
mod cluster;
pub mod cors;
pub mod http;
pub mod metrics;
mod readiness;
pub mod server;
pub mod status;
pub mod tls;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::App;

use crate::auth::Authenticator;
use crate::cluster::{LinkConfig, MembershipConfig, MembershipView, NodeStatus};
use crate::connection::{Limits, WakeRelay, WakeRelays};
use crate::hub::{Hub, HubContext, NodeRouter};
use crate::mesh::RelayHost;
use cors::CorsOrigins;
use http::{DrainRequest, HubEndpoint, NodeRelays, TokenKeys, Tunnels};
use readiness::Lifecycle;
use tls::TlsConfig;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// `build` or `start` was called outside a tokio runtime.
    #[error("a node must be built inside a multi-threaded tokio runtime")]
    NoRuntime,
    /// The node could not join its cluster.
    #[error("could not join the cluster: {0}")]
    Cluster(String),
    /// [`NodeBuilder::build`] was given cluster settings: it cannot join a cluster (joining is async), and a node
    /// built without joining would silently serve alone.
    #[error("`NodeBuilder::build` does not join a cluster: with `.cluster(...)`, use `build_and_join().await` or `start().await`")]
    ClusterNotJoined,
    /// Two hubs were given the same path.
    #[error("two hubs are served at the path '{0}'")]
    DuplicatePath(String),
    /// The HTTP address could not be bound.
    #[error("could not listen on {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
}

/// How long a stopping node waits for its connections to take their Close message and go.
pub(crate) const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(3);
/// How long the end of a drain waits for the connections it closes at once to go.
const CLOSE_AT_DRAIN_END: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a draining node waits for the groups and users it owns to move to their next owners ([`Node::hand_over`]):
/// each moves as soon as this node's view says it hands over, so this bounds only a stuck actor.
const HAND_OVER_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// In how many even slices a draining node closes its connections over its window.
const DRAIN_STEPS: u32 = 20;

/// Collects what a node serves, then starts it ([`NodeBuilder::start`]) or builds it for an application's own
/// actix-web server ([`NodeBuilder::build`], [`NodeBuilder::build_and_join`]). Made by [`Node::builder`].
///
/// ```no_run
/// use std::net::SocketAddr;
///
/// use hubmesh::{ClusterSettings, Hub, LinkConfig, MembershipConfig, Node};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let gossip: SocketAddr = "10.0.0.1:7000".parse()?;
/// let link: SocketAddr = "10.0.0.1:7100".parse()?;
/// let membership = MembershipConfig::new("node-1", "chat-cluster", gossip).with_seeds(["10.0.0.2:7000"]);
/// let node = Node::builder()
///     .name("node-1")
///     .hub(Hub::new("chat"))
///     .listen("0.0.0.0:5000")
///     .cluster(ClusterSettings::real(membership, LinkConfig::new(link, "cluster secret")))
///     .start()
///     .await?;
/// node.wait().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct NodeBuilder {
    name: String,
    hubs: Vec<Hub>,
    listen: String,
    limits: Limits,
    workers: usize,
    cluster: Option<ClusterSettings>,
    /// Hubs this node sends to without serving them.
    send_only: Vec<String>,
    /// HTTPS instead of plain HTTP.
    tls: Option<TlsConfig>,
    /// Checks bearer tokens; without one, every request is anonymous.
    auth: Option<Authenticator>,
    /// The REST API with its access key; without one the REST API is off.
    rest: Option<Arc<http::RestApi>>,
    /// Origins whose pages may call the node cross-origin with credentials (none by default).
    cors_origins: CorsOrigins,
}

/// How a node joins a cluster: gossip membership and links to its peers. Made by [`ClusterSettings::real`];
/// given to [`NodeBuilder::cluster`].
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Gossip: cluster id, gossip address, seeds, failure detection.
    pub membership: MembershipConfig,
    /// Links: address, cluster secret, queues.
    pub link: LinkConfig,
    /// Where gossip and links travel: always UDP and ractor_cluster, except in test clusters.
    network: ClusterNetwork,
}

/// Where cluster traffic travels (not part of the public API: embedders always use real networking).
#[derive(Debug, Clone)]
enum ClusterNetwork {
    /// Gossip over UDP and links over ractor_cluster (TCP): one node per process.
    Real,
    /// Gossip and links over in-process networks shared by the nodes of a test cluster, with faults.
    #[cfg(feature = "test-util")]
    InMemory {
        /// The gossip network.
        gossip: crate::cluster::GossipNetwork,
        /// The link network.
        links: crate::cluster::link::memory::MemoryNetwork,
    },
}

impl ClusterSettings {
    /// Settings for a node of a real cluster (one node per process).
    pub fn real(membership: MembershipConfig, link: LinkConfig) -> Self {
        ClusterSettings {
            membership,
            link,
            network: ClusterNetwork::Real,
        }
    }

    /// Test clusters only (`test-util`): gossip and links over in-process networks shared by the nodes of one test
    /// cluster, in place of UDP and ractor_cluster, so several nodes can run in one process.
    #[cfg(feature = "test-util")]
    #[doc(hidden)]
    pub fn over_in_memory_networks(
        mut self,
        gossip: crate::cluster::GossipNetwork,
        links: crate::cluster::link::memory::MemoryNetwork,
    ) -> Self {
        self.network = ClusterNetwork::InMemory { gossip, links };
        self
    }
}

/// A node's hubs and settings, ready to be served: by its own server ([`NodeBuilder::start`], which returns a
/// [`NodeHandle`]) or mounted into an application's actix-web `App` with [`Node::configure`].
///
/// ```no_run
/// use actix_web::{web, App, HttpServer};
/// use hubmesh::{Hub, Node};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let node = Node::builder().hub(Hub::new("chat")).build()?;
/// let app_node = node.clone();
/// HttpServer::new(move || {
///     let node = app_node.clone();
///     App::new()
///         .route("/health", web::get().to(|| async { "ok" }))
///         .configure(move |config| node.configure(config))
/// })
/// .bind("127.0.0.1:5000")?
/// .run()
/// .await?;
/// node.shutdown().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

pub(crate) struct NodeInner {
    name: String,
    /// What connection tokens are issued and checked with (`http::TokenKeys`).
    token_keys: TokenKeys,
    /// Serves the requests peers relay to this node; the router holds it weakly.
    relays: Arc<NodeRelays>,
    /// Tunnel ends open on this node (`http::Tunnels`).
    tunnels: Tunnels,
    /// Its stateful connections kept on other nodes, and the copies it keeps for them (`http::Keeping`).
    keeping: http::Keeping,
    router: Arc<NodeRouter>,
    cluster: tokio::sync::Mutex<Option<cluster::ClusterRuntime>>,
    /// By lower-cased path.
    endpoints: HashMap<String, Arc<HubEndpoint>>,
    /// Contexts of hubs this node sends to but does not serve.
    send_only: Vec<HubContext>,
    limits: Arc<Limits>,
    auth: Option<Arc<Authenticator>>,
    /// The REST API (`/api/...`), when an access key is configured.
    rest: Option<Arc<http::RestApi>>,
    span: tracing::Span,
    /// Per HTTP worker, where fan-outs hand their members' wake-ups.
    wake_relays: WakeRelays,
    /// Joining, serving or draining: what readiness starts from (a later drain flips it).
    lifecycle: Lifecycle,
    /// When the node was built, for its uptime.
    started: std::time::SystemTime,
    /// Its metrics registry (`GET /metrics`).
    metrics: metrics::NodeMetrics,
    /// The connection bound and the negotiate rate per client address.
    admission: admission::Admission,
    /// Whether an operator asked for a drain (`POST /_hubmesh/drain`, `http::admin`).
    drain_request: DrainRequest,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts describing a node (named `node`, listening on `127.0.0.1:0`, two HTTP workers, default
    /// [`Limits`], no cluster, no authentication).
    pub fn builder() -> NodeBuilder {
        NodeBuilder {
            name: "node".into(),
            hubs: Vec::new(),
            listen: "127.0.0.1:0".into(),
            limits: Limits::default(),
            workers: 2,
            cluster: None,
            send_only: Vec::new(),
            tls: None,
            auth: None,
            rest: None,
            cors_origins: CorsOrigins::None,
        }
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The context of hub `name` (by name, or by path), to send from outside hub methods.
    pub fn hub_context(&self, name: &str) -> Option<HubContext> {
        self.inner
            .endpoints
            .values()
            .find(|endpoint| endpoint.context.hub().name() == name)
            .or_else(|| self.inner.endpoints.get(&http::normalize_path(name)))
            .map(|endpoint| endpoint.context.clone())
            .or_else(|| {
                self.inner
                    .send_only
                    .iter()
                    .find(|context| context.hub().name() == name)
                    .cloned()
            })
    }

    /// Mounts the node's hub routes into an actix-web `App` (or a scope): hub paths are matched
    /// case-insensitively by a default service, so the app's own routes take precedence. See [`Node`] for an
    /// example.
    pub fn configure(&self, config: &mut actix_web::web::ServiceConfig) {
        http::configure(self.clone(), config)
    }

    pub(crate) fn endpoint(&self, path: &str) -> Option<&Arc<HubEndpoint>> {
        self.inner.endpoints.get(path)
    }

    /// The hubs this node serves over HTTP.
    pub(crate) fn endpoints(&self) -> impl Iterator<Item = &Arc<HubEndpoint>> {
        self.inner.endpoints.values()
    }

    pub(crate) fn from_inner(inner: Arc<NodeInner>) -> Node {
        Node { inner }
    }

    /// A weak reference to this node, for what it owns that must not keep it alive.
    pub(crate) fn downgrade(&self) -> std::sync::Weak<NodeInner> {
        Arc::downgrade(&self.inner)
    }

    /// Its stateful connections kept elsewhere, and what it keeps for others.
    pub(crate) fn keeping(&self) -> &http::Keeping {
        &self.inner.keeping
    }

    pub(crate) fn router(&self) -> &NodeRouter {
        &self.inner.router
    }

    pub(crate) fn token_keys(&self) -> &TokenKeys {
        &self.inner.token_keys
    }

    /// How often this node passed sends on to connections it negotiated that run elsewhere (location hints make
    /// that rare), for tests.
    #[cfg(feature = "internals")]
    #[doc(hidden)]
    pub fn relay_counts(&self) -> crate::mesh::RelayCounts {
        self.inner.router.relay_counts()
    }

    pub(crate) fn tunnels(&self) -> &Tunnels {
        &self.inner.tunnels
    }

    pub(crate) fn admission(&self) -> &admission::Admission {
        &self.inner.admission
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The limits, shared: every connection of the node points to the same ones.
    pub(crate) fn shared_limits(&self) -> Arc<Limits> {
        self.inner.limits.clone()
    }

    pub(crate) fn authenticator(&self) -> Option<&Authenticator> {
        self.inner.auth.as_deref()
    }

    /// The REST API, if an access key is configured.
    pub(crate) fn rest_api(&self) -> Option<&http::RestApi> {
        self.inner.rest.as_deref()
    }

    /// The wake relay of the calling worker thread, for a connection that starts here.
    pub(crate) fn wake_relay(&self) -> Option<Arc<WakeRelay>> {
        self.inner.wake_relays.current()
    }

    pub(crate) fn span(&self) -> &tracing::Span {
        &self.inner.span
    }

    /// Asks every connection to close (allowing reconnects) and waits up to `grace` for them to end.
    pub(crate) async fn close_connections(&self, grace: std::time::Duration) {
        self.set_lifecycle_status(NodeStatus::Draining);
        for endpoint in self.inner.endpoints.values() {
            endpoint.context.close_all(true);
        }
        self.wait_for_connections_to_end(grace).await;
    }

    /// Waits at most `limit` until this node holds no connection.
    async fn wait_for_connections_to_end(&self, limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline
            && self
                .inner
                .endpoints
                .values()
                .any(|endpoint| endpoint.context.local_connection_count() > 0)
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Drains the node before it leaves on purpose (docs/semantics.md, "Drain"): it turns unready at once
    /// (`/readyz` answers 503, and the draining status is gossiped, so status reports and the live page show it);
    /// then its connections are moved to other nodes or asked to close, allowing reconnects, once the calls of
    /// their clients have finished, spread evenly over `window` so that the other nodes see no reconnect storm; it
    /// waits (at most `window` plus 3 s) for them to end, and closes at once those it asked to close that are still
    /// open. It keeps owning its groups and users meanwhile (a connection that moves keeps its memberships through
    /// them). Then it hands them over to their next owners while it is still live and linked, so that nothing
    /// is left to move when it leaves. Stop it afterwards ([`NodeHandle::stop`], [`Node::shutdown`]), or use
    /// [`NodeHandle::drain`], which does both.
    pub async fn drain(&self, window: std::time::Duration) {
        self.set_lifecycle_status(NodeStatus::Draining);
        if let Some(cluster) = self.inner.cluster.lock().await.as_ref() {
            cluster.membership().set_status(NodeStatus::Draining).await;
        }
        let connections: Vec<_> = self
            .inner
            .endpoints
            .values()
            .map(|endpoint| {
                let movable = http::movable(self, endpoint);
                (endpoint, endpoint.context.local_connection_ids(), movable)
            })
            .collect();
        let total: usize = connections.iter().map(|(_, ids, _)| ids.len()).sum();
        if total > 0 {
            // In DRAIN_STEPS even slices over the window.
            let pause = window / DRAIN_STEPS;
            for step in 0..DRAIN_STEPS as usize {
                let started = tokio::time::Instant::now();
                for (endpoint, ids, movable) in &connections {
                    let per_step = ids.len().div_ceil(DRAIN_STEPS as usize);
                    let start = (step * per_step).min(ids.len());
                    let end = ((step + 1) * per_step).min(ids.len());
                    // Stateful WebSocket connections move to other nodes (docs/any-node-design.md, section 5a);
                    // the others are closed, allowing reconnects.
                    http::move_or_close(self, endpoint, &ids[start..end], movable).await;
                }
                tokio::time::sleep_until(started + pause).await;
            }
        }
        self.wait_for_connections_to_end(STOP_GRACE).await;
        // Those it asked to close once their client's calls finished end now, calls or not. Not the connections
        // that reached it during the drain (a load balancer slow to see it unready): those are closed when it
        // stops, as before.
        let mut cut_off = false;
        for (endpoint, ids, movable) in &connections {
            let closing: Vec<_> = ids.iter().filter(|id| !movable.contains_key(*id)).cloned().collect();
            cut_off |= !closing.is_empty();
            endpoint.context.close_local(&closing, true);
        }
        if cut_off {
            self.wait_for_connections_to_end(CLOSE_AT_DRAIN_END).await;
        }
        self.hand_over().await;
    }

    /// Hands the groups and users this node owns to their next owners (docs/semantics.md, "Drain"): it says so in
    /// gossip, its peers (and it) place nothing on it from then on, and each group's actor here fans out the sends
    /// it has and tells the member nodes it released the group, which hold the new owner's first sends until then.
    /// Waits (at most [`HAND_OVER_LIMIT`]) until it owns nothing, then for its peers to have heard, so that few
    /// sends still come to it when it leaves. Nothing moves when no peer stays (every node drains).
    async fn hand_over(&self) {
        let heard_in = {
            let cluster = self.inner.cluster.lock().await;
            let Some(cluster) = cluster.as_ref() else {
                return;
            };
            let membership = cluster.membership();
            if !membership.view().peers().any(|peer| !peer.hands_over()) {
                return;
            }
            membership.announce_handing_over().await
        };
        let deadline = tokio::time::Instant::now() + HAND_OVER_LIMIT;
        while !self.inner.router.owned_groups().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tokio::time::sleep(heard_in).await;
    }

    /// Stops a node that the application serves itself ([`NodeBuilder::build`], [`Node::configure`]): closes its
    /// connections (allowing reconnects, so clients with automatic reconnect go to another node), waits up to
    /// 3 s for them to go, then leaves the cluster and stops the group actors. Call it before stopping the
    /// application's server; a node started with [`NodeBuilder::start`] stops with [`NodeHandle::stop`] instead.
    pub async fn shutdown(&self) {
        self.close_connections(STOP_GRACE).await;
        self.shutdown_hubs().await;
    }

    pub(crate) async fn shutdown_hubs(&self) {
        self.set_lifecycle_status(NodeStatus::Draining);
        if let Some(cluster) = self.inner.cluster.lock().await.take() {
            cluster.leave().await;
        }
        self.inner.router.shutdown();
    }

    /// The address this node gossips on, if it is in a cluster.
    pub async fn gossip_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner
            .cluster
            .lock()
            .await
            .as_ref()
            .map(|cluster| cluster.membership().gossip_addr())
    }

    /// The cluster as this node sees it now, if it is in one.
    /// The peers that serve (neither joining nor draining) as the membership view says now; `None` when the view
    /// is busy this instant (or there is no cluster): callers that cannot wait take every live peer then.
    pub(crate) fn serving_peers_now(&self) -> Option<Vec<crate::cluster::NodeId>> {
        let cluster = self.inner.cluster.try_lock().ok()?;
        let view = cluster.as_ref()?.membership().view();
        Some(
            view.peers()
                .filter(|member| member.status() == Some(crate::cluster::NodeStatus::Serving))
                .map(|member| member.id.clone())
                .collect(),
        )
    }

    pub(crate) async fn cluster_view(&self) -> Option<MembershipView> {
        self.inner
            .cluster
            .lock()
            .await
            .as_ref()
            .map(|cluster| cluster.membership().view())
    }
}

impl NodeBuilder {
    /// The node's name, used in logs.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_owned();
        self
    }

    /// Serves a hub.
    pub fn hub(mut self, hub: Hub) -> Self {
        self.hubs.push(hub);
        self
    }

    /// The HTTP address to listen on (`127.0.0.1:0` picks a free port).
    pub fn listen(mut self, address: &str) -> Self {
        self.listen = address.to_owned();
        self
    }

    /// Connection limits and timers.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// A context for hub `name` without serving it: for a backend node (`hubs = []`) that only sends to the
    /// clients other nodes serve. Get it with [`Node::hub_context`].
    pub fn send_only_hub(mut self, name: &str) -> Self {
        self.send_only.push(name.to_owned());
        self
    }

    /// Joins a cluster: the node's hubs become one hub runtime with every other node of the cluster. The join
    /// happens in [`NodeBuilder::start`] or [`NodeBuilder::build_and_join`]; [`NodeBuilder::build`] refuses
    /// cluster settings ([`NodeError::ClusterNotJoined`]).
    pub fn cluster(mut self, settings: ClusterSettings) -> Self {
        self.cluster = Some(settings);
        self
    }

    /// Checks bearer tokens with `authenticator` (see [`crate::auth`]): a valid token makes the connection's user
    /// (which `Clients.user` routes by) and claims; hubs that [`Hub::authorize`] refuse requests without one.
    pub fn auth(mut self, authenticator: Authenticator) -> Self {
        self.auth = Some(authenticator);
        self
    }

    /// Serves the Azure SignalR-style REST API (`/api/hubs/...`, see the README's "REST API") to callers whose
    /// bearer token is signed (HS256) with `key`. Without a key the REST API is off: its paths get 404.
    pub fn rest_access_key(mut self, key: &str) -> Self {
        self.rest = Some(Arc::new(http::RestApi::new(key.as_bytes())));
        self
    }

    /// Serves HTTPS (and WSS) with `tls` instead of plain HTTP ([`NodeBuilder::start`] only: an application that
    /// serves the node itself configures TLS on its own server).
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The origins whose pages may call the node cross-origin with credentials ([`NodeBuilder::start`] only; an
    /// application that serves the node itself wraps its `App` in [`crate::cors`]). The default allows none:
    /// same-origin pages and non-browser clients are served either way ([`crate::cors`] says why).
    pub fn cors_origins(mut self, origins: CorsOrigins) -> Self {
        self.cors_origins = origins;
        self
    }

    /// The number of HTTP worker threads ([`NodeBuilder::start`] only).
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// Builds the node without serving it, for [`Node::configure`]; group actors will run on the current tokio
    /// runtime. The listen address, workers and TLS settings are [`NodeBuilder::start`]'s and are not used here.
    ///
    /// Fails with [`NodeError::ClusterNotJoined`] if cluster settings were given: joining is async, so a node of
    /// a cluster is built with [`NodeBuilder::build_and_join`].
    pub fn build(self) -> Result<Node, NodeError> {
        if self.cluster.is_some() {
            return Err(NodeError::ClusterNotJoined);
        }
        let node = self.build_alone(TokenKeys::random())?;
        node.set_lifecycle_status(NodeStatus::Serving);
        Ok(node)
    }

    /// Builds the node without serving it, as [`NodeBuilder::build`] does, and joins its cluster if
    /// [`NodeBuilder::cluster`] was given.
    ///
    /// ```no_run
    /// use std::net::SocketAddr;
    ///
    /// use hubmesh::{ClusterSettings, Hub, LinkConfig, MembershipConfig, Node};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let gossip: SocketAddr = "10.0.0.1:7000".parse()?;
    /// let link: SocketAddr = "10.0.0.1:7100".parse()?;
    /// let membership = MembershipConfig::new("node-1", "chat-cluster", gossip).with_seeds(["10.0.0.2:7000"]);
    /// let node = Node::builder()
    ///     .name("node-1")
    ///     .hub(Hub::new("chat"))
    ///     .cluster(ClusterSettings::real(membership, LinkConfig::new(link, "cluster secret")))
    ///     .build_and_join()
    ///     .await?;
    /// // Mount `node.configure` into an actix-web App (see `Node`), serve it, then `node.shutdown().await`.
    /// # Ok(())
    /// # }
    /// ```
    pub async fn build_and_join(mut self) -> Result<Node, NodeError> {
        let cluster_settings = self.cluster.take();
        // Every node of a cluster checks the tokens any of them issued (`http::TokenKeys`).
        let token_keys = match &cluster_settings {
            Some(settings) => TokenKeys::from_secrets(&settings.link.secret, &settings.link.previous_secrets),
            None => TokenKeys::random(),
        };
        let node = self.build_alone(token_keys)?;
        if let Some(settings) = cluster_settings {
            let hubs = node
                .inner
                .endpoints
                .values()
                .map(|endpoint| endpoint.context.hub().name().to_owned())
                .collect();
            let joined = cluster::join(
                &node.inner.name,
                hubs,
                settings,
                node.inner.router.clone(),
                node.inner.span.clone(),
                status::unix_ms(node.inner.started),
            )
            .await?;
            *node.inner.cluster.lock().await = Some(joined);
            metrics::publish_load(&node);
        }
        node.set_lifecycle_status(NodeStatus::Serving);
        Ok(node)
    }

    /// Builds the node's hubs, without a cluster.
    fn build_alone(self, token_keys: TokenKeys) -> Result<Node, NodeError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NodeError::NoRuntime)?;
        let span = tracing::info_span!("node", node = %self.name);
        let router = NodeRouter::new(&self.name, runtime.clone(), span.clone());
        let mut endpoints = HashMap::new();
        for hub in self.hubs {
            let path = http::normalize_path(hub.route());
            if endpoints.contains_key(&path) {
                return Err(NodeError::DuplicatePath(path));
            }
            if hub.requirement().is_some() && self.auth.is_none() {
                span.in_scope(|| {
                    tracing::warn!(hub = hub.name(), "the hub requires an authenticated user but the node has no authenticator: every request will get 401")
                });
            }
            let context = HubContext::start(hub, router.clone(), self.limits.counters.clone());
            endpoints.insert(path.clone(), Arc::new(HubEndpoint::new(context, path)));
        }
        let send_only = self
            .send_only
            .iter()
            .map(|name| HubContext::start(Hub::new(name), router.clone(), self.limits.counters.clone()))
            .collect();
        let inner = Arc::new_cyclic(|inner| NodeInner {
            name: self.name,
            token_keys,
            relays: Arc::new(NodeRelays(inner.clone())),
            tunnels: Tunnels::default(),
            keeping: http::Keeping::default(),
            router,
            cluster: tokio::sync::Mutex::new(None),
            endpoints,
            send_only,
            metrics: metrics::NodeMetrics::new(&self.limits),
            limits: Arc::new(self.limits),
            auth: self.auth.map(Arc::new),
            rest: self.rest,
            span,
            wake_relays: WakeRelays::default(),
            lifecycle: Lifecycle::joining(),
            started: std::time::SystemTime::now(),
            admission: admission::Admission::default(),
            drain_request: DrainRequest::default(),
        });
        let relays: Arc<dyn RelayHost> = inner.relays.clone();
        inner.router.set_relay_host(Arc::downgrade(&relays));
        runtime.spawn(http::keeping_flusher(Arc::downgrade(&inner), inner.keeping.wake()));
        Ok(Node { inner })
    }

    /// Builds the node, joins its cluster (if [`NodeBuilder::cluster`] was given) and serves it over HTTP (or
    /// HTTPS, see [`NodeBuilder::tls`]).
    pub async fn start(mut self) -> Result<NodeHandle, NodeError> {
        let workers = self.workers;
        let address = self.listen.clone();
        let tls = self.tls.take();
        let cors_origins = std::mem::take(&mut self.cors_origins);
        let node = self.build_and_join().await?;
        let listener = TcpListener::bind(&address).map_err(|source| NodeError::Bind {
            address: address.clone(),
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| NodeError::Bind {
            address: address.clone(),
            source,
        })?;
        let app_node = node.clone();
        let listener = match &tls {
            Some(tls) => server::Listener::https(listener, tls.server_config()),
            None => server::Listener::http(listener),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let server = server::serve(
            move |_https| {
                let node = app_node.clone();
                App::new()
                    .wrap(cors::cors(&cors_origins))
                    .configure(move |config| node.configure(config))
            },
            server::Upgrades::new(node.clone()),
            vec![listener],
            workers,
        )
        .map_err(|source| NodeError::Bind { address, source })?;
        node.span().in_scope(|| tracing::info!(%local_addr, scheme, "serving"));
        Ok(NodeHandle {
            serving: server::Serving::spawn(node, server),
            local_addr,
            scheme,
        })
    }
}

/// A running node, served by its own HTTP server; made by [`NodeBuilder::start`].
///
/// ```no_run
/// use hubmesh::{Hub, Node};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let node = Node::builder().hub(Hub::new("chat")).start().await?;
/// let chat = node.hub_context("chat").ok_or("no hub")?;
/// chat.clients().all().send("ServerStarted", (node.url(),))?;
/// node.stop().await;
/// # Ok(())
/// # }
/// ```
pub struct NodeHandle {
    serving: server::Serving,
    local_addr: SocketAddr,
    /// `http` or `https`.
    scheme: &'static str,
}

impl NodeHandle {
    /// The node.
    pub fn node(&self) -> &Node {
        self.serving.node()
    }

    /// The address the HTTP server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://<local_addr>`, or `https://<local_addr>` when the node serves TLS.
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.local_addr)
    }

    /// The context of hub `name`.
    pub fn hub_context(&self, name: &str) -> Option<HubContext> {
        self.node().hub_context(name)
    }

    /// Drains the node ([`Node::drain`]: unready, its groups handed over, its connections closed over `window`),
    /// then stops it.
    pub async fn drain(self, window: std::time::Duration) {
        self.node().drain(window).await;
        self.stop().await;
    }

    /// Stops serving: open connections are closed and group actors stopped.
    pub async fn stop(self) {
        self.serving.stop(STOP_GRACE).await;
    }

    /// Waits until the server stops (for example after `stop` from another handle).
    pub async fn wait(self) -> std::io::Result<()> {
        self.serving.wait().await
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::{ClusterNetwork, ClusterSettings, Node, NodeError};
    use crate::cluster::link::memory::MemoryNetwork;
    use crate::cluster::{GossipNetwork, LinkConfig, MembershipConfig};
    use crate::hub::Hub;

    fn in_memory_settings(name: &str) -> ClusterSettings {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        ClusterSettings {
            membership: MembershipConfig::new(name, "test", loopback),
            link: LinkConfig::new(loopback, "secret"),
            network: ClusterNetwork::InMemory {
                gossip: GossipNetwork::in_memory(),
                links: MemoryNetwork::new(),
            },
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn build_refuses_cluster_settings_rather_than_dropping_them() {
        let built = Node::builder()
            .hub(Hub::new("chat"))
            .cluster(in_memory_settings("alone"))
            .build();
        assert!(matches!(built, Err(NodeError::ClusterNotJoined)), "{built:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn build_and_join_joins_the_cluster() -> Result<(), NodeError> {
        let node = Node::builder()
            .name("joined")
            .hub(Hub::new("chat"))
            .cluster(in_memory_settings("joined"))
            .build_and_join()
            .await?;
        let live = node.cluster_view().await.map(|view| view.live.len());
        assert_eq!(live, Some(1));
        assert!(node.gossip_addr().await.is_some());
        node.shutdown().await;
        assert!(node.cluster_view().await.is_none());
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn build_and_join_without_settings_builds_a_node_alone() -> Result<(), NodeError> {
        let node = Node::builder().hub(Hub::new("chat")).build_and_join().await?;
        assert!(node.cluster_view().await.is_none());
        assert!(node.hub_context("chat").is_some());
        node.shutdown().await;
        Ok(())
    }
}
