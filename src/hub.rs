//! Hubs: the user's methods by name, their lifecycle hooks, and the proxies hub code sends through.
//!
//! This is the only user-facing layer with business logic. It implements the connection layer's
//! [`ConnectionHost`] (a hub serves connections), keeps the node-local registry of its connections (`hub/runtime.rs`),
//! and reaches other nodes, groups and users through the mesh ([`crate::mesh`]): it calls the node's router, and
//! implements the mesh's `LocalHub` so the mesh can deliver to its connections here. Mesh errors become
//! [`HubError`]s with the same text. It knows nothing of sockets or HTTP.
//!
//! ```no_run
//! use hubmesh::{Caller, Hub, HubError};
//!
//! async fn send_message(caller: Caller, user: String, text: String) -> Result<(), HubError> {
//!     caller.clients().all().send("ReceiveMessage", (user, text))
//! }
//! async fn echo(message: String) -> String {
//!     message
//! }
//!
//! let chat = Hub::new("chat")
//!     .method("SendMessage", send_message)
//!     .method("Echo", echo);
//! ```

mod caller;
mod clients;
mod groups;
mod moving;
pub mod handler;
mod runtime;

use std::any::Any;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;

pub(crate) use caller::url_query_value;
pub use caller::Caller;
pub use clients::{ClientProxy, Clients};
pub use groups::Groups;
pub use handler::{ClientStream, Handler, State, Streamed};

use crate::auth::Requirement;
use crate::connection::{
    Call, ClientResultError, ConnectionCounters, ConnectionHost, ConnectionId, Reply, RequestInfo, Session,
};
use crate::mesh::{GroupError, GroupKey, MeshError};
use crate::transport::TransportKind;
use handler::{HubReply, InvocationParts};
use runtime::HubRuntime;
pub(crate) use runtime::NodeRouter;

/// An error from a hub method or a hub operation.
///
/// What the client sees is ASP.NET's (docs/protocol.md#errors-sent-to-clients): a [`HubError::Hub`] message always
/// reaches the client; other errors show their type and message only when the hub has detailed errors on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// SignalR's `HubException`: a message meant for the client.
    #[error("{0}")]
    Hub(String),
    /// Any other failure, named like a .NET exception type (`InvalidOperationException`).
    #[error("{message}")]
    Exception {
        /// The exception type name shown with detailed errors.
        kind: String,
        /// The message.
        message: String,
    },
    /// The call's arguments did not fit the method.
    #[error("{0}")]
    Binding(String),
    /// A client result failed.
    #[error(transparent)]
    ClientResult(#[from] ClientResultError),
    /// No connection with this id exists.
    #[error("Connection '{0}' does not exist.")]
    UnknownConnection(String),
    /// A group could not be reached.
    #[error("{0}")]
    Group(#[from] GroupError),
    /// The operation needs a single connection as its target.
    #[error("{0}")]
    InvalidTarget(&'static str),
}

/// A mesh operation's error, as hub code sees it: the same variant and text.
impl From<MeshError> for HubError {
    fn from(error: MeshError) -> Self {
        match error {
            MeshError::UnknownConnection(id) => HubError::UnknownConnection(id),
            MeshError::Group(error) => HubError::Group(error),
            MeshError::ClientResult(error) => HubError::ClientResult(error),
            error @ (MeshError::Busy(_) | MeshError::NodeGone(_) | MeshError::TooLarge { .. }) => {
                HubError::Group(GroupError::Unavailable(error.to_string()))
            }
        }
    }
}

impl HubError {
    /// A `HubException` with this message.
    pub fn hub(message: impl Into<String>) -> Self {
        HubError::Hub(message.into())
    }

    /// An exception of type `kind` (for example `"InvalidOperationException"`).
    pub fn exception(kind: impl Into<String>, message: impl Into<String>) -> Self {
        HubError::Exception {
            kind: kind.into(),
            message: message.into(),
        }
    }

    fn kind(&self) -> &str {
        match self {
            HubError::Hub(_) => "HubException",
            HubError::Exception { kind, .. } => kind,
            HubError::Binding(_) => "InvalidDataException",
            HubError::ClientResult(_) => "Exception",
            HubError::UnknownConnection(_) | HubError::Group(_) | HubError::InvalidTarget(_) => {
                "InvalidOperationException"
            }
        }
    }

    /// The text a client sees when method `method` failed with this error.
    pub fn client_text(&self, method: &str, detailed: bool) -> String {
        let (head, always) = match self {
            HubError::Binding(_) => (
                format!("Failed to invoke '{method}' due to an error on the server."),
                false,
            ),
            HubError::Hub(_) => (
                format!("An unexpected error occurred invoking '{method}' on the server."),
                true,
            ),
            _ => (
                format!("An unexpected error occurred invoking '{method}' on the server."),
                false,
            ),
        };
        if always || detailed {
            format!("{head} {}: {self}", self.kind())
        } else {
            head
        }
    }
}

type MethodFn = Arc<dyn Fn(InvocationParts) -> BoxFuture<'static, HubReply> + Send + Sync>;
type UserIdFn = Arc<dyn Fn(&RequestInfo) -> Option<String> + Send + Sync>;
type HookFn = Arc<dyn Fn(Caller) -> BoxFuture<'static, Result<(), HubError>> + Send + Sync>;

struct Method {
    name: String,
    streaming: bool,
    call: MethodFn,
    /// What a caller must prove to invoke it, besides the hub's own requirement.
    requirement: Option<Requirement>,
}

/// A hub: a name, the path it is served at, and methods clients call by name (see [`crate::handler`] for what a
/// method may take and return), with its lifecycle hooks and settings. Served by a [`crate::Node`].
///
/// ```no_run
/// use hubmesh::{Caller, Hub, HubError};
///
/// async fn send_message(caller: Caller, user: String, text: String) -> Result<(), HubError> {
///     caller.clients().all().send("ReceiveMessage", (user, text))
/// }
/// async fn join(caller: Caller, room: String) -> Result<(), HubError> {
///     caller.groups().add(caller.connection_id(), &room).await
/// }
/// async fn echo(message: String) -> String {
///     message
/// }
///
/// let chat = Hub::new("chat")
///     .path("/hubs/chat")
///     .method("SendMessage", send_message)
///     .method("Join", join)
///     .method("Echo", echo)
///     .on_connected(|caller: Caller| async move {
///         caller.clients().others().send("UserJoined", (caller.connection_id().to_string(),))
///     });
/// ```
pub struct Hub {
    name: String,
    path: String,
    methods: HashMap<String, Method>,
    detailed_errors: bool,
    transports: Vec<TransportKind>,
    client_result_timeout: Duration,
    on_connected: Option<HookFn>,
    on_disconnected: Option<HookFn>,
    user_id: Option<UserIdFn>,
    state: Option<Arc<dyn Any + Send + Sync>>,
    /// What every request and connection to the hub must prove (`None`: anonymous callers welcome).
    requirement: Option<Requirement>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("name", &self.name)
            .field("path", &self.path)
            .field(
                "methods",
                &self.methods.values().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub named `name`, served at `/{name}`.
    pub fn new(name: &str) -> Self {
        Hub {
            name: name.to_owned(),
            path: format!("/{}", name.trim_start_matches('/')),
            methods: HashMap::new(),
            detailed_errors: false,
            transports: vec![
                TransportKind::WebSockets,
                TransportKind::ServerSentEvents,
                TransportKind::LongPolling,
            ],
            client_result_timeout: Duration::from_secs(30),
            on_connected: None,
            on_disconnected: None,
            user_id: None,
            state: None,
            requirement: None,
        }
    }

    /// Serves the hub at `path` instead (matched case-insensitively, as ASP.NET routing does).
    pub fn path(mut self, path: &str) -> Self {
        self.path = format!("/{}", path.trim_matches('/'));
        self
    }

    /// Registers method `name` (matched case-insensitively). See [`crate::handler`] for what a method may take
    /// and return.
    pub fn method<H, T>(self, name: &str, handler: H) -> Self
    where
        H: Handler<T>,
        T: 'static,
    {
        self.add_method(name, handler, None)
    }

    /// Registers method `name` like [`Hub::method`], callable only by callers that meet `requirement` (ASP.NET's
    /// `[Authorize]` on a hub method). Others get the error "Failed to invoke '`name`' because user is
    /// unauthorized"; the connection stays open.
    pub fn method_authorized<H, T>(self, name: &str, handler: H, requirement: Requirement) -> Self
    where
        H: Handler<T>,
        T: 'static,
    {
        self.add_method(name, handler, Some(requirement))
    }

    fn add_method<H, T>(mut self, name: &str, handler: H, requirement: Option<Requirement>) -> Self
    where
        H: Handler<T>,
        T: 'static,
    {
        let call: MethodFn = Arc::new(move |parts| handler.call(parts));
        self.methods.insert(
            name.to_ascii_lowercase(),
            Method {
                name: name.to_owned(),
                streaming: H::STREAMING,
                call,
                requirement,
            },
        );
        self
    }

    /// Requires an authenticated user (a valid bearer token, see [`crate::auth`]) for every request to the hub
    /// (ASP.NET's `[Authorize]` on a hub): negotiate and transport requests without one get 401 with an empty
    /// body. The node needs an authenticator ([`crate::NodeBuilder::auth`]), or no one gets in.
    pub fn authorize(self) -> Self {
        self.require(Requirement::authenticated())
    }

    /// Requires an authenticated user whose claim `name` has value `value` (implies [`Hub::authorize`]).
    /// Authenticated users without it get 403 with an empty body.
    pub fn require_claim(self, name: &str, value: &str) -> Self {
        self.require(Requirement::claim(name, value))
    }

    /// Adds `requirement` to what every caller of the hub must meet.
    pub fn require(mut self, requirement: Requirement) -> Self {
        self.requirement = Some(match self.requirement.take() {
            Some(existing) => existing.and(&requirement),
            None => requirement,
        });
        self
    }

    /// What every caller of the hub must meet, if anything.
    pub fn requirement(&self) -> Option<&Requirement> {
        self.requirement.as_ref()
    }

    /// Shows error types and messages of failed methods to clients (ASP.NET's `EnableDetailedErrors`).
    pub fn detailed_errors(mut self, on: bool) -> Self {
        self.detailed_errors = on;
        self
    }

    /// The transports this hub offers (default: all three, WebSockets, Server-Sent Events and long polling).
    pub fn transports(mut self, transports: &[TransportKind]) -> Self {
        self.transports = transports.to_vec();
        self
    }

    /// How long a client result may take before it fails (default 30 s).
    pub fn client_result_timeout(mut self, timeout: Duration) -> Self {
        self.client_result_timeout = timeout;
        self
    }

    /// Shared state for the [`State`] extractor.
    pub fn with_state<S: Clone + Send + Sync + 'static>(mut self, state: S) -> Self {
        self.state = Some(Arc::new(state));
        self
    }

    /// Runs when a connection has completed its handshake; an error closes it with that error.
    pub fn on_connected<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Caller) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HubError>> + Send + 'static,
    {
        self.on_connected = Some(Arc::new(move |caller| Box::pin(hook(caller))));
        self
    }

    /// Runs when a connection has ended (after it left its groups).
    pub fn on_disconnected<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Caller) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HubError>> + Send + 'static,
    {
        self.on_disconnected = Some(Arc::new(move |caller| Box::pin(hook(caller))));
        self
    }

    /// Decides the user id of each new connection from its request (SignalR's `IUserIdProvider`), which
    /// `Clients.user` routes by. Without one, the user is the authenticated user, if any.
    pub fn user_id_provider<F>(mut self, provider: F) -> Self
    where
        F: Fn(&RequestInfo) -> Option<String> + Send + Sync + 'static,
    {
        self.user_id = Some(Arc::new(provider));
        self
    }

    /// The hub's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The path it is served at.
    pub fn route(&self) -> &str {
        &self.path
    }

    /// The transports it offers.
    pub fn offered_transports(&self) -> &[TransportKind] {
        &self.transports
    }
}

/// A handle to a hub, usable inside hub methods and from anywhere else (a background task, an HTTP route): the
/// same `Clients` and `Groups` a method has, without a caller. Sends reach clients on every node of the cluster.
/// Get one from [`crate::NodeHandle::hub_context`] or [`crate::Node::hub_context`], or as a method parameter.
///
/// ```no_run
/// use std::time::Duration;
///
/// use hubmesh::{Hub, Node};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let node = Node::builder().hub(Hub::new("clock")).start().await?;
/// let clock = node.hub_context("clock").ok_or("no hub")?;
/// tokio::spawn(async move {
///     let mut tick = tokio::time::interval(Duration::from_secs(1));
///     loop {
///         tick.tick().await;
///         let connected = clock.local_connection_count();
///         if clock.clients().group("subscribers").send("Tick", (connected,)).is_err() {
///             break;
///         }
///     }
/// });
/// node.wait().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct HubContext {
    runtime: Arc<HubRuntime>,
}

impl std::fmt::Debug for HubContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubContext")
            .field("hub", &self.runtime.hub.name)
            .finish()
    }
}

impl HubContext {
    /// Starts `hub` on this node, routed by `router`.
    pub(crate) fn start(hub: Hub, router: Arc<NodeRouter>, counters: Arc<ConnectionCounters>) -> HubContext {
        HubContext {
            runtime: HubRuntime::start(hub, router, counters),
        }
    }

    /// The hub definition.
    pub fn hub(&self) -> &Hub {
        &self.runtime.hub
    }

    /// Sends to clients of this hub.
    pub fn clients(&self) -> Clients {
        Clients::new(self.clone(), None)
    }

    /// Manages group membership.
    pub fn groups(&self) -> Groups {
        Groups::new(self.clone())
    }

    /// The number of connections to this hub on this node.
    pub fn local_connection_count(&self) -> usize {
        self.runtime.connection_count()
    }

    /// The number of group memberships (named groups and users) that connections of this hub hold on this node.
    pub(crate) fn local_membership_count(&self) -> usize {
        self.runtime.membership_count()
    }

    /// The ids of this hub's connections on this node.
    pub(crate) fn local_connection_ids(&self) -> Vec<ConnectionId> {
        self.runtime.connection_ids()
    }

    /// Asks these connections of this hub on this node (those still here) to close with a Close message.
    pub(crate) fn close_local(&self, ids: &[ConnectionId], allow_reconnect: bool) {
        self.runtime.close_these(ids, allow_reconnect);
    }

    /// Asks these connections on this node to close, allowing reconnects, once the calls of their clients have
    /// finished (a drain); [`Self::close_local`] ends them at once.
    pub(crate) fn close_local_after_calls(&self, ids: &[ConnectionId]) {
        self.runtime.close_these_after_calls(ids);
    }

    /// Drops connection `id` here: its keeper took it over after this node was declared dead (`src/node`).
    pub(crate) fn drop_for_keeper(&self, id: &ConnectionId, reason: &str) {
        self.runtime.drop_for_keeper(id, reason);
    }

    /// Asks every connection of this hub on this node to close with a Close message.
    pub(crate) fn close_all(&self, allow_reconnect: bool) {
        self.runtime.close_all(allow_reconnect);
    }

    /// A fresh connection id, naming this node.
    pub(crate) fn new_connection_id(&self, random: &str) -> ConnectionId {
        self.runtime.router.new_connection_id(random)
    }

    pub(crate) fn name(&self) -> &Arc<str> {
        &self.runtime.name
    }

    pub(crate) fn router(&self) -> &Arc<NodeRouter> {
        &self.runtime.router
    }

    /// Whether the hub's requirement (if any) allows this connection's user.
    fn admits(&self, session: &Session) -> bool {
        self.runtime
            .hub
            .requirement
            .as_ref()
            .is_none_or(|requirement| requirement.allows(session.claims.as_deref()))
    }

    fn caller(&self, session: &Arc<Session>) -> Caller {
        Caller::new(session.clone(), self.clone())
    }
}

impl ConnectionHost for HubContext {
    fn user_id(&self, request: &RequestInfo) -> Option<String> {
        match &self.runtime.hub.user_id {
            Some(provider) => provider(request),
            None => request.user.clone(),
        }
    }

    fn method_kind(&self, target: &str) -> Option<bool> {
        self.runtime
            .hub
            .methods
            .get(&target.to_ascii_lowercase())
            .map(|method| method.streaming)
    }

    fn invoke(&self, session: &Arc<Session>, call: Call) -> BoxFuture<'static, Reply> {
        let hub = &self.runtime.hub;
        let Some(method) = hub.methods.get(&call.target.to_ascii_lowercase()) else {
            let target = call.target;
            return Box::pin(async move {
                Reply::Error(format!(
                    "Failed to invoke '{target}' due to an error on the server. HubException: Method does not exist."
                ))
            });
        };
        let claims = session.claims.as_deref();
        let allowed = [hub.requirement.as_ref(), method.requirement.as_ref()]
            .into_iter()
            .flatten()
            .all(|requirement| requirement.allows(claims));
        if !allowed {
            // ASP.NET's text; the connection stays open.
            let text = format!("Failed to invoke '{}' because user is unauthorized", call.target);
            return Box::pin(async move { Reply::Error(text) });
        }
        let parts = InvocationParts {
            caller: self.caller(session),
            arguments: call.arguments.into_iter(),
            uploads: call.uploads.into_iter(),
            cancel: call.cancel,
            state: hub.state.clone(),
        };
        let name = method.name.clone();
        let detailed = hub.detailed_errors;
        let reply = (method.call)(parts);
        Box::pin(async move {
            match reply.await {
                HubReply::Void => Reply::Void,
                HubReply::Value(value) => Reply::Value(value),
                HubReply::Error(error) => Reply::Error(error.client_text(&name, detailed)),
                HubReply::Stream(items) => Reply::Stream(
                    items
                        .map(move |item| item.map_err(|error| error.client_text(&name, detailed)))
                        .boxed(),
                ),
            }
        })
    }

    fn connected(&self, session: &Arc<Session>) -> BoxFuture<'static, Result<(), String>> {
        // The HTTP layer refuses unauthorized requests before a connection starts; this keeps a hub that requires
        // a user safe from any other way in.
        if !self.admits(session) {
            return Box::pin(async { Err("Connection closed with an error. The user is unauthorized.".to_owned()) });
        }
        self.runtime.add_connection(session.id.clone(), session.handle.clone());
        let context = self.clone();
        let caller = self.caller(session);
        Box::pin(async move {
            match &context.runtime.hub.on_connected {
                Some(hook) => hook(caller)
                    .await
                    .map_err(|error| error.client_text("OnConnectedAsync", context.runtime.hub.detailed_errors)),
                None => Ok(()),
            }
        })
    }

    /// Joins a connection with a user to its user's group, at the group's owner, before the handshake response:
    /// a send to the user from anywhere once the client has its response reaches it. Nothing to do without a user
    /// (or when `connected` refused the connection); no cluster round trip when this node owns the group.
    fn admit(&self, session: &Arc<Session>) -> Option<BoxFuture<'static, Result<(), String>>> {
        let user = session.user.as_deref().filter(|_| self.admits(session))?;
        let key = GroupKey::user(self.name(), user);
        let router = self.router().clone();
        let id = session.id.clone();
        Some(Box::pin(async move {
            router.group_add(key, id).await.map_err(|error| {
                format!(
                    "Connection closed with an error. The user's group could not be joined: {}",
                    HubError::from(error)
                )
            })
        }))
    }

    fn disconnected(&self, session: &Arc<Session>, _error: Option<String>) -> BoxFuture<'static, ()> {
        let groups = self.runtime.remove_connection(&session.id);
        let context = self.clone();
        let caller = self.caller(session);
        let session = session.clone();
        Box::pin(async move {
            for key in groups {
                if let Err(error) = context.router().unregister(key, session.id.clone()).await {
                    tracing::warn!(%error, "a group could not drop a disconnected member");
                }
            }
            if let Some(hook) = &context.runtime.hub.on_disconnected {
                if let Err(error) = hook(caller).await {
                    tracing::debug!(%error, "on_disconnected failed");
                }
            }
        })
    }
}
