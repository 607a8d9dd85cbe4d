//! The Azure SignalR Service data-plane REST API (version 2022-06-01 paths) on every node: an application in any
//! language sends into hubs, manages group membership and closes connections over plain HTTP, as it would with
//! Azure SignalR Service. Every call is location-transparent like [`HubContext`]: the members, users and
//! connections it addresses may live on any node of the cluster.
//!
//! The API is on only when the node has an access key ([`crate::NodeBuilder::rest_access_key`]); without one its
//! paths are not answered here (404). Each call but the health check needs a bearer token signed with the key
//! (`auth`); then the hub must exist (404), the query must be valid (400), and a send's body must be a message of
//! at most [`MAX_BODY`] bytes (413, 400). What each call answers is in the README's "REST API".
//!
//! Bounds: a body is read up to [`MAX_BODY`]; `excluded` and `excludedUsers` are capped
//! ([`routes::MAX_EXCLUDED`], [`routes::MAX_EXCLUDED_USERS`]); refused tokens and bodies are counted per node
//! ([`RestApi`]). This module calls the hub layer ([`HubContext`]) and, for user groups, the node's router.
//!
//! # Files
//!
//! * `routes`: which call a request is (path, method, query);
//! * `auth`: the access key and Azure's token rule (HS256, `exp`, `aud` = the request URL);
//! * `body`: a send's message, read within its bound, and the Close message of a closed connection.

mod auth;
mod body;
mod routes;

use std::sync::atomic::{AtomicU64, Ordering};

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::super::Node;
use crate::connection::ConnectionId;
use crate::hub::{HubContext, HubError};
use crate::mesh::GroupKey;
use auth::AccessKey;
use body::{BodyError, MAX_BODY};
use routes::{Call, NotACall, Query};

/// A group no one joins: removing a connection from it answers, without changing anything, whether the
/// connection exists (its own node says so), wherever it lives.
const PROBE_GROUP: &str = "\u{0}hubmesh.rest.probe";

/// A node's REST API: its access key and what it refused.
pub(crate) struct RestApi {
    key: AccessKey,
    /// Requests refused with 401.
    refused_tokens: AtomicU64,
    /// Bodies refused with 413.
    refused_bodies: AtomicU64,
}

impl std::fmt::Debug for RestApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestApi")
            .field("key", &self.key)
            .field("refused_tokens", &self.refused_tokens)
            .field("refused_bodies", &self.refused_bodies)
            .finish()
    }
}

impl RestApi {
    /// The REST API with tokens signed by `key`.
    pub(crate) fn new(key: &[u8]) -> Self {
        RestApi {
            key: AccessKey::new(key),
            refused_tokens: AtomicU64::new(0),
            refused_bodies: AtomicU64::new(0),
        }
    }
}

/// Whether the REST API answers `request`: it is on, and the path is under `/api/`'s calls.
pub(super) fn serves(node: &Node, request: &HttpRequest) -> bool {
    node.rest_api().is_some() && routes::is_rest_path(request.path())
}

fn reply(status: StatusCode, code: &str, message: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::build(status).json(json!({ "code": code, "message": message.to_string() }))
}

/// Answers a request [`serves`] accepted.
pub(super) async fn answer(node: &Node, request: &HttpRequest, payload: web::Payload) -> HttpResponse {
    let Some(api) = node.rest_api() else {
        return HttpResponse::NotFound().finish();
    };
    let call = match routes::route(request.method(), request.path()) {
        Ok(call) => call,
        Err(NotACall::NoRoute) => return reply(StatusCode::NOT_FOUND, "NotFound", "no such call"),
        Err(NotACall::Method) => return reply(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "method not allowed"),
        Err(NotACall::BadSegment) => return reply(StatusCode::BAD_REQUEST, "BadRequest", "a path segment is invalid"),
        Err(NotACall::LongGroupName) => {
            let message = format!("a group name has at most {} characters", routes::MAX_GROUP_NAME);
            return reply(StatusCode::BAD_REQUEST, "BadRequest", message);
        }
    };
    if call == Call::Health {
        return HttpResponse::Ok().finish();
    }
    if let Err(error) = authenticate(api, request) {
        let refused = api.refused_tokens.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(parent: node.span(), %error, refused, "a REST call was refused");
        return HttpResponse::build(StatusCode::UNAUTHORIZED)
            .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
            .json(json!({ "code": "Unauthorized", "message": error.to_string() }));
    }
    let query = match routes::query(request.query_string()) {
        Ok(query) => query,
        Err(error) => return reply(StatusCode::BAD_REQUEST, "BadRequest", error),
    };
    let Some(context) = call.hub().and_then(|hub| node.hub_context(&query.hub_name(hub))) else {
        return reply(StatusCode::NOT_FOUND, "NotFound", "no such hub");
    };
    let message = if call.is_send() {
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok());
        let parsed = match body::read(declared, payload).await {
            Ok(bytes) => body::message(&bytes),
            Err(error) => Err(error),
        };
        match parsed {
            Ok(message) => Some(message),
            Err(BodyError::TooLarge) => {
                let refused = api.refused_bodies.fetch_add(1, Ordering::Relaxed) + 1;
                tracing::debug!(parent: node.span(), refused, max = MAX_BODY, "a REST body was too large");
                return reply(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge", BodyError::TooLarge);
            }
            Err(error) => return reply(StatusCode::BAD_REQUEST, "BadRequest", error),
        }
    } else {
        None
    };
    match perform(&context, call, query, message).await {
        Ok(response) => response,
        Err(HubError::UnknownConnection(id)) => {
            reply(StatusCode::NOT_FOUND, "NotFound", format!("connection '{id}' does not exist"))
        }
        Err(error) => reply(StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError", error),
    }
}

/// Checks the request's bearer token against the access key and the request's URL (scheme, host as the client
/// named it, path as sent). The operator's routes (`super::admin`) use it too.
pub(super) fn authenticate(api: &RestApi, request: &HttpRequest) -> Result<(), crate::auth::AuthError> {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
        .filter(|token| !token.trim().is_empty())
        .ok_or(crate::auth::AuthError::Missing)?;
    let info = request.connection_info();
    let url = format!("{}://{}{}", info.scheme(), info.host(), request.path());
    api.key.check(token, &url)
}

/// Does what `call` asks of hub `context`.
async fn perform(
    context: &HubContext,
    call: Call,
    query: Query,
    message: Option<body::Message>,
) -> Result<HttpResponse, HubError> {
    let found = |yes: bool| {
        if yes {
            HttpResponse::Ok().finish()
        } else {
            HttpResponse::NotFound().finish()
        }
    };
    let accepted = || HttpResponse::Accepted().finish();
    let clients = context.clients();
    let groups = context.groups();
    Ok(match (call, message) {
        (Call::SendAll { .. }, Some(message)) => {
            let except = excluded(context, &query).await?;
            clients.all_except(except).send(&message.target, message.arguments)?;
            accepted()
        }
        (Call::SendGroup { group, .. }, Some(message)) => {
            let except = excluded(context, &query).await?;
            clients
                .group_except(&group, except)
                .send(&message.target, message.arguments)?;
            accepted()
        }
        (Call::SendUser { user, .. }, Some(message)) => {
            clients.user(&user).send(&message.target, message.arguments)?;
            accepted()
        }
        (Call::SendConnection { connection, .. }, Some(message)) => {
            clients
                .client(&ConnectionId::new(connection))
                .send(&message.target, message.arguments)?;
            accepted()
        }
        (
            Call::GroupConnection {
                group, connection, add, ..
            },
            _,
        ) => {
            let id = ConnectionId::new(connection);
            if add {
                groups.add(&id, &group).await?;
            } else {
                groups.remove(&id, &group).await?;
            }
            HttpResponse::Ok().finish()
        }
        (Call::UserGroup { user, group, add, .. }, _) => {
            for id in user_connections(context, &user).await? {
                let changed = if add {
                    groups.add(&id, &group).await
                } else {
                    groups.remove(&id, &group).await
                };
                match changed {
                    // The connection ended meanwhile: it is in no group any more.
                    Ok(()) | Err(HubError::UnknownConnection(_)) => {}
                    Err(error) => return Err(error),
                }
            }
            HttpResponse::Ok().finish()
        }
        (Call::ConnectionLeaveAll { connection, .. }, _) => {
            let id = ConnectionId::new(connection);
            context.router().group_leave_all(context.name().clone(), id).await?;
            HttpResponse::Ok().finish()
        }
        (Call::UserLeaveAll { user, .. }, _) => {
            for id in user_connections(context, &user).await? {
                match context.router().group_leave_all(context.name().clone(), id).await {
                    // The connection ended meanwhile: it is in no group any more.
                    Ok(()) | Err(crate::mesh::MeshError::UnknownConnection(_)) => {}
                    Err(error) => return Err(error.into()),
                }
            }
            HttpResponse::Ok().finish()
        }
        (Call::UserInGroup { user, group, .. }, _) => {
            let members = groups.members(&group).await?;
            let connections = user_connections(context, &user).await?;
            found(connections.iter().any(|id| members.contains(id)))
        }
        (Call::ConnectionExists { connection, .. }, _) => {
            match groups.remove(&ConnectionId::new(connection), PROBE_GROUP).await {
                Ok(()) => found(true),
                Err(HubError::UnknownConnection(_)) => found(false),
                Err(error) => return Err(error),
            }
        }
        (Call::CloseConnection { connection, .. }, _) => {
            clients
                .client(&ConnectionId::new(connection))
                .send_frame(body::close_frame(query.reason));
            HttpResponse::Ok().finish()
        }
        (Call::CloseAll { .. }, _) => {
            let except = excluded(context, &query).await?;
            clients.all_except(except).send_frame(body::close_frame(query.reason));
            HttpResponse::NoContent().finish()
        }
        (Call::CloseGroup { group, .. }, _) => {
            let except = excluded(context, &query).await?;
            clients
                .group_except(&group, except)
                .send_frame(body::close_frame(query.reason));
            HttpResponse::NoContent().finish()
        }
        (Call::CloseUser { user, .. }, _) => {
            let except = excluded(context, &query).await?;
            let mut connections = user_connections(context, &user).await?;
            connections.retain(|id| !except.contains(id));
            clients.clients(connections).send_frame(body::close_frame(query.reason));
            HttpResponse::NoContent().finish()
        }
        (Call::GroupExists { group, .. }, _) => found(groups.count(&group).await? > 0),
        (Call::UserExists { user, .. }, _) => found(!user_connections(context, &user).await?.is_empty()),
        // Sends always carry a message (read in `answer`); the health check is answered there too.
        (Call::Health, _)
        | (Call::SendAll { .. } | Call::SendGroup { .. } | Call::SendUser { .. } | Call::SendConnection { .. }, None) => {
            HttpResponse::BadRequest().finish()
        }
    })
}

/// The connections of `user` to the hub, cluster-wide (asked of the user's group's owner).
async fn user_connections(context: &HubContext, user: &str) -> Result<Vec<ConnectionId>, HubError> {
    let key = GroupKey::user(context.name(), user);
    Ok(context.router().group_members(key).await?)
}

/// The connections a send skips: `excluded`, and every connection of each of `excludedUsers`.
async fn excluded(context: &HubContext, query: &Query) -> Result<Vec<ConnectionId>, HubError> {
    let mut except: Vec<ConnectionId> = query.excluded.iter().cloned().map(ConnectionId::new).collect();
    for user in &query.excluded_users {
        except.extend(user_connections(context, user).await?);
    }
    Ok(except)
}
