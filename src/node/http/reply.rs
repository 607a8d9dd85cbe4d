//! [`Reply`]: the response to a request of a connection's transport (long polls, POSTs, DELETEs, claims), as
//! plain data, so that the node that took the request and the node that answered it may differ: a relayed
//! request's reply crosses the links as it is (`super::relay`).

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A status, a content type and a body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Reply {
    status: u16,
    content_type: Option<String>,
    body: Bytes,
}

impl Reply {
    /// A `text/plain` reply (a transport error's text, as ASP.NET words it).
    pub(super) fn text(status: StatusCode, body: impl Into<String>) -> Self {
        Reply {
            status: status.as_u16(),
            content_type: Some("text/plain".to_owned()),
            body: Bytes::from(body.into()),
        }
    }

    /// A reply with no body and no content type.
    pub(super) fn empty(status: StatusCode) -> Self {
        Reply {
            status: status.as_u16(),
            content_type: None,
            body: Bytes::new(),
        }
    }

    /// A reply with this content type and body.
    pub(super) fn with_body(status: StatusCode, content_type: &str, body: Bytes) -> Self {
        Reply {
            status: status.as_u16(),
            content_type: Some(content_type.to_owned()),
            body,
        }
    }

    /// The 404 of a token that addresses no connection.
    pub(super) fn no_connection() -> Self {
        Reply::text(StatusCode::NOT_FOUND, "No Connection with that ID")
    }

    /// The 503 of a request that could not be relayed now.
    pub(super) fn unavailable(why: impl std::fmt::Display) -> Self {
        Reply::text(StatusCode::SERVICE_UNAVAILABLE, format!("The connection's node cannot be reached now: {why}"))
    }

    /// The status.
    pub(super) fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_GATEWAY)
    }

    /// As the HTTP response.
    pub(super) fn into_response(self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status());
        if let Some(content_type) = self.content_type {
            response.content_type(content_type);
        }
        response.body(self.body)
    }
}
