//! The caller of a hub method: who it is, the request it came from, and proxies relative to it
//! (`others`, `others_in_group`).

use std::sync::Arc;

use super::{Clients, Groups, HubContext};
use crate::auth::Claims;
use crate::connection::{ConnectionHandle, ConnectionId, RequestHeaders, Session};
use crate::protocol::Protocol;
use crate::transport::TransportKind;

/// The connection that called a hub method (SignalR's `Context` plus `Clients` and `Groups`).
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

    /// A handle to the caller's connection.
    pub fn handle(&self) -> &ConnectionHandle {
        &self.session.handle
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
