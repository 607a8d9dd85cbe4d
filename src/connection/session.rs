//! What hub code may know about a connection: its [`Session`], and the [`RequestInfo`] (with its
//! [`RequestHeaders`]) it started from.

use std::sync::Arc;

use crate::protocol::Protocol;
use crate::transport::TransportKind;

use super::{ConnectionHandle, ConnectionId};

/// What hub code may know about a connection: SignalR's `HubCallerContext` and the request it came from.
#[derive(Debug)]
pub struct Session {
    /// The connection's public id.
    pub id: ConnectionId,
    /// The authenticated user's id, if any.
    pub user: Option<String>,
    /// The claims of the bearer token the connection authenticated with; `None` for an anonymous connection.
    pub claims: Option<Arc<crate::auth::Claims>>,
    /// The transport in use.
    pub transport: TransportKind,
    /// The hub protocol chosen in the handshake.
    pub protocol: Protocol,
    /// The query string of the request that opened the connection (without `?`).
    pub query: String,
    /// Its headers, names in lower case, in order.
    pub headers: RequestHeaders,
    /// The handle to this connection.
    pub handle: ConnectionHandle,
}

impl Session {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

/// The headers of the request a connection came from, names in lower case, in order.
///
/// Kept for the connection's whole life, so they are stored compactly: all names and values in one string, with
/// their ends in a second allocation (owned `(String, String)` pairs would cost two allocations per header, a few
/// hundred bytes per idle connection).
#[derive(Debug, Clone, Default)]
pub struct RequestHeaders {
    text: Box<str>,
    /// For each header, where its name ends and where its value ends in `text`.
    ends: Box<[(u32, u32)]>,
}

impl RequestHeaders {
    /// Each header as owned strings (to cross a link).
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        self.iter().map(|(name, value)| (name.to_owned(), value.to_owned())).collect()
    }

    /// Every header as (name, value), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(name_end, value_end)| {
            let (name_end, value_end) = (name_end as usize, value_end as usize);
            let name = self.text.get(start..name_end).unwrap_or_default();
            let value = self.text.get(name_end..value_end).unwrap_or_default();
            start = value_end;
            (name, value)
        })
    }

    /// The first value of header `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for RequestHeaders {
    /// Names are stored in lower case. Headers beyond 4 GiB in all (which no HTTP server accepts) are left out.
    fn from_iter<I: IntoIterator<Item = (N, V)>>(headers: I) -> Self {
        let mut text = String::new();
        let mut ends = Vec::new();
        for (name, value) in headers {
            let (name, value) = (name.as_ref(), value.as_ref());
            let Ok(value_end) = u32::try_from(text.len() + name.len() + value.len()) else {
                break;
            };
            text.extend(name.chars().map(|c| c.to_ascii_lowercase()));
            let name_end = text.len() as u32;
            text.push_str(value);
            ends.push((name_end, value_end));
        }
        RequestHeaders {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }
    }
}

/// The request a connection starts from, captured by the HTTP layer before the transport opens.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    /// The authenticated user's id, if any.
    pub user: Option<String>,
    /// The claims of a valid bearer token, if the request carried one.
    pub claims: Option<Arc<crate::auth::Claims>>,
    /// The query string (without `?`).
    pub query: String,
    /// Its headers, names in lower case, in order.
    pub headers: RequestHeaders,
}

#[cfg(test)]
mod tests {
    use super::RequestHeaders;

    #[test]
    fn request_headers_keep_order_lower_case_names_and_values() {
        let headers: RequestHeaders = [
            ("Host", "example.test"),
            ("cookie", "a=1; b=2"),
            ("X-Empty", ""),
            ("Cookie", "c=3"),
        ]
        .into_iter()
        .collect();
        let all: Vec<(&str, &str)> = headers.iter().collect();
        assert_eq!(
            all,
            [
                ("host", "example.test"),
                ("cookie", "a=1; b=2"),
                ("x-empty", ""),
                ("cookie", "c=3")
            ]
        );
        assert_eq!(headers.len(), 4);
        assert_eq!(headers.get("HOST"), Some("example.test"));
        assert_eq!(headers.get("cookie"), Some("a=1; b=2"), "the first of repeated headers");
        assert_eq!(headers.get("x-empty"), Some(""));
        assert_eq!(headers.get("missing"), None);
        let none = RequestHeaders::default();
        assert!(none.is_empty());
        assert_eq!(none.iter().count(), 0);
    }
}
