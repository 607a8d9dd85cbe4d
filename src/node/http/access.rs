//! Who makes a hub request and whether the hub lets them: bearer-token authentication, the 401 and 403 refusals,
//! and the [`RequestInfo`] hub code sees of the request that opens a connection.

use actix_web::dev::RequestHead;
use actix_web::http::header;
use actix_web::HttpResponse;

use super::super::Node;
use super::endpoint::HubEndpoint;
use crate::auth::{self, AuthError, Authenticated};
use crate::connection::RequestInfo;

/// Why a hub request is refused: its response has an empty body (docs/protocol.md#error-bodies).
pub(super) enum Refusal {
    /// No valid token (with why a token that was sent is not accepted): 401.
    Unauthorized(Option<AuthError>),
    /// A valid token without a claim the hub requires: 403.
    Forbidden,
}

impl Refusal {
    pub(super) fn response(self) -> HttpResponse {
        match self {
            Refusal::Unauthorized(refused) => {
                // RFC 6750: name the scheme, and say why a token that was sent is not accepted.
                let challenge = match refused {
                    Some(error) => {
                        let description: String = error
                            .to_string()
                            .chars()
                            .filter(|c| (c.is_ascii_graphic() || *c == ' ') && *c != '"' && *c != '\\')
                            .collect();
                        format!("Bearer error=\"invalid_token\", error_description=\"{description}\"")
                    }
                    None => "Bearer".to_owned(),
                };
                HttpResponse::Unauthorized()
                    .insert_header((header::WWW_AUTHENTICATE, challenge))
                    .finish()
            }
            Refusal::Forbidden => HttpResponse::Forbidden().finish(),
        }
    }
}

/// Authenticates a hub request: `Ok` with the user of a valid bearer token (or `None`, anonymous), or why a hub
/// whose requirement the request does not meet refuses it.
pub(super) fn authenticate(
    node: &Node,
    endpoint: &HubEndpoint,
    head: &RequestHead,
) -> Result<Option<Authenticated>, Refusal> {
    let header = head
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let token = auth::bearer_token(header, query_string(head));
    let mut refused = None;
    let user = match (node.authenticator(), &token) {
        (Some(authenticator), Some(token)) => match authenticator.authenticate(token) {
            Ok(user) => Some(user),
            Err(error) => {
                tracing::debug!(%error, path = head.uri.path(), "bearer token refused");
                refused = Some(error);
                None
            }
        },
        _ => None,
    };
    let Some(requirement) = endpoint.context.hub().requirement() else {
        return Ok(user);
    };
    match &user {
        None => Err(Refusal::Unauthorized(refused)),
        Some(user) if !requirement.allows(Some(&user.claims)) => Err(Refusal::Forbidden),
        Some(_) => Ok(user),
    }
}

/// The query of a request, without the `?` (empty if none).
pub(super) fn query_string(head: &RequestHead) -> &str {
    head.uri.query().unwrap_or_default()
}

/// What hub code may read of the request that opens a connection, and who made it.
pub(super) fn request_info(head: &RequestHead, user: Option<Authenticated>) -> RequestInfo {
    let (user, claims) = match user {
        Some(authenticated) => (authenticated.user, Some(authenticated.claims)),
        None => (None, None),
    };
    RequestInfo {
        user,
        claims,
        query: query_string(head).to_owned(),
        headers: head
            .headers()
            .iter()
            .map(|(name, value)| (name.as_str(), String::from_utf8_lossy(value.as_bytes())))
            .collect(),
    }
}
