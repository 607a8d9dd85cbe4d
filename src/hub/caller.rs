//! The caller of a hub method: who it is, the request it came from, and proxies relative to it
//! (`others`, `others_in_group`).

use std::sync::Arc;

use super::{Clients, Groups, HubContext};
use crate::auth::Claims;
use crate::connection::{ConnectionId, RequestHeaders, Session};
use crate::protocol::Protocol;
use crate::transport::TransportKind;

/// The connection that called a hub method (SignalR's `Context` plus `Clients` and `Groups`): a method gets it by
/// taking a `Caller` parameter, and hooks ([`crate::Hub::on_connected`]) receive one.
///
/// ```no_run
/// use hubmesh::{Caller, HubError};
///
/// async fn whoami(caller: Caller) -> Result<String, HubError> {
///     let Some(user) = caller.user() else {
///         caller.close(Some("Sign in first.".into()), false);
///         return Err(HubError::hub("anonymous"));
///     };
///     let room = caller.query_param("room").unwrap_or_default();
///     Ok(format!("{user} in '{room}' over {}", caller.transport().name()))
/// }
/// ```
#[derive(Clone)]
pub struct Caller {
    session: Arc<Session>,
    context: HubContext,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("connection_id", &self.session.id)
            .finish()
    }
}

impl Caller {
    pub(crate) fn new(session: Arc<Session>, context: HubContext) -> Self {
        Caller { session, context }
    }

    /// The connection's id (`Context.ConnectionId`).
    pub fn connection_id(&self) -> &ConnectionId {
        &self.session.id
    }

    /// The authenticated user's id (`Context.UserIdentifier`).
    pub fn user(&self) -> Option<&str> {
        self.session.user.as_deref()
    }

    /// The claims of the bearer token the connection authenticated with (`Context.User.Claims`); `None` for an
    /// anonymous connection.
    pub fn claims(&self) -> Option<&Claims> {
        self.session.claims.as_deref()
    }

    /// Whether the connection authenticated with a valid bearer token.
    pub fn is_authenticated(&self) -> bool {
        self.session.claims.is_some()
    }

    /// The transport in use.
    pub fn transport(&self) -> TransportKind {
        self.session.transport
    }

    /// The hub protocol in use.
    pub fn protocol(&self) -> Protocol {
        self.session.protocol
    }

    /// The query string of the request that opened the connection (without `?`).
    pub fn query(&self) -> &str {
        &self.session.query
    }

    /// The first value of query parameter `name`, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        url_query_value(&self.session.query, name)
    }

    /// The first value of header `name` (case-insensitive) of that request.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.session.header(name)
    }

    /// Every header of that request, names in lower case.
    pub fn headers(&self) -> &RequestHeaders {
        &self.session.headers
    }

    /// The value of cookie `name` sent with that request.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.session
            .headers
            .iter()
            .filter(|(key, _)| *key == "cookie")
            .flat_map(|(_, value)| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }

    /// A handle to the caller's connection (this repository's tests only: the handle speaks the connection
    /// layer's internal types; hub code closes the connection with [`Caller::close`]).
    #[cfg(feature = "internals")]
    #[doc(hidden)]
    pub fn handle(&self) -> &crate::connection::ConnectionHandle {
        &self.session.handle
    }

    /// Closes the caller's connection with a Close message carrying `error` (if any), telling a client with
    /// automatic reconnect whether to reconnect (SignalR's `Context.Abort()`, with a reason). Returns at once: the
    /// Close message follows what was already queued for the connection (if its mailbox is full, the connection
    /// ends at once).
    pub fn close(&self, error: Option<String>, allow_reconnect: bool) {
        self.session.handle.close(error, allow_reconnect);
    }

    /// Sends to clients, relative to the caller.
    pub fn clients(&self) -> Clients {
        Clients::new(self.context.clone(), Some(self.session.id.clone()))
    }

    /// Manages group membership.
    pub fn groups(&self) -> Groups {
        self.context.groups()
    }

    /// The hub's context, for use after the method returns (a spawned task, for example).
    pub fn context(&self) -> &HubContext {
        &self.context
    }
}

/// The first value of `name` in a query string, percent-decoded (`+` as space).
pub(crate) fn url_query_value(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}
