//! A hubmesh node: the hubs it serves, its HTTP server, and its lifecycle (start, stop).
//!
//! [`Node::builder`] collects hubs and settings; [`NodeBuilder::start`] serves them over HTTP and returns a
//! [`NodeHandle`]. Applications that need their own actix-web `App` (extra routes, middleware) use
//! [`NodeBuilder::build`] and mount [`Node::configure`] into it.
//!
//! Runtime shape: actix-web runs each HTTP worker on a single-threaded runtime, so connection tasks live on the
//! worker that accepted them. Group and user actors run on the multi-threaded runtime the node was built on
//! (captured in `build`), never on a worker. No state here is process-global: several nodes may run in one
//! process.

pub mod http;

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::{App, HttpServer};

use crate::connection::Limits;
use crate::hub::{Hub, HubContext};
use http::HubEndpoint;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// `build` or `start` was called outside a tokio runtime.
    #[error("a node must be built inside a multi-threaded tokio runtime")]
    NoRuntime,
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

/// Collects what a node serves.
#[derive(Debug)]
pub struct NodeBuilder {
    name: String,
    hubs: Vec<Hub>,
    listen: String,
    limits: Limits,
    workers: usize,
}

/// A node's hubs and settings, ready to be served.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    name: String,
    /// By lower-cased path.
    endpoints: HashMap<String, Arc<HubEndpoint>>,
    limits: Limits,
    span: tracing::Span,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts describing a node.
    pub fn builder() -> NodeBuilder {
        NodeBuilder {
            name: "node".into(),
            hubs: Vec::new(),
            listen: "127.0.0.1:0".into(),
            limits: Limits::default(),
            workers: 2,
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
    }

    /// Mounts the node's hub routes into an actix-web `App` (or a scope): hub paths are matched
    /// case-insensitively by a default service, so the app's own routes take precedence.
    pub fn configure(&self, config: &mut actix_web::web::ServiceConfig) {
        http::configure(self.clone(), config)
    }

    pub(crate) fn endpoint(&self, path: &str) -> Option<&Arc<HubEndpoint>> {
        self.inner.endpoints.get(path)
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    pub(crate) fn span(&self) -> &tracing::Span {
        &self.inner.span
    }

    pub(crate) fn shutdown_hubs(&self) {
        for endpoint in self.inner.endpoints.values() {
            endpoint.context.shutdown();
        }
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

    /// The number of HTTP worker threads.
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// Builds the node without serving it; group actors will run on the current tokio runtime.
    pub fn build(self) -> Result<Node, NodeError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NodeError::NoRuntime)?;
        let span = tracing::info_span!("node", node = %self.name);
        let mut endpoints = HashMap::new();
        for hub in self.hubs {
            let path = http::normalize_path(hub.route());
            if endpoints.contains_key(&path) {
                return Err(NodeError::DuplicatePath(path));
            }
            let context = HubContext::start(hub, runtime.clone());
            endpoints.insert(path, Arc::new(HubEndpoint::new(context)));
        }
        Ok(Node {
            inner: Arc::new(NodeInner {
                name: self.name,
                endpoints,
                limits: self.limits,
                span,
            }),
        })
    }

    /// Builds the node and serves it over HTTP.
    pub async fn start(self) -> Result<NodeHandle, NodeError> {
        let workers = self.workers;
        let address = self.listen.clone();
        let node = self.build()?;
        let listener = TcpListener::bind(&address).map_err(|source| NodeError::Bind {
            address: address.clone(),
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| NodeError::Bind {
            address: address.clone(),
            source,
        })?;
        let app_node = node.clone();
        let server = HttpServer::new(move || {
            let node = app_node.clone();
            App::new()
                .wrap(http::cors())
                .configure(move |config| node.configure(config))
        })
        .workers(workers)
        .disable_signals()
        .listen(listener)
        .map_err(|source| NodeError::Bind { address, source })?
        .run();
        let handle = server.handle();
        let task = tokio::spawn(server);
        node.span().in_scope(|| tracing::info!(%local_addr, "serving"));
        Ok(NodeHandle {
            node,
            local_addr,
            server: handle,
            task,
        })
    }
}

/// A running node.
pub struct NodeHandle {
    node: Node,
    local_addr: SocketAddr,
    server: ServerHandle,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl NodeHandle {
    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The address the HTTP server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://<local_addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// The context of hub `name`.
    pub fn hub_context(&self, name: &str) -> Option<HubContext> {
        self.node.hub_context(name)
    }

    /// Stops serving: open connections are closed and group actors stopped.
    pub async fn stop(self) {
        self.server.stop(true).await;
        let _ = self.task.await;
        self.node.shutdown_hubs();
    }

    /// Waits until the server stops (for example after `stop` from another handle).
    pub async fn wait(self) -> std::io::Result<()> {
        let result = self.task.await.unwrap_or(Ok(()));
        self.node.shutdown_hubs();
        result
    }
}
