//! Where a client's requests go: the hub's URLs ([`HubUrl`]: one per `--url`, with the request targets of every
//! transport) and a client's turn through them ([`Route`]: its own URL, or the next URL for each request with
//! `--spread`).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use super::{hub_ws_url, url_authority, BenchError};

/// One node's hub URL, split for HTTP requests.
#[derive(Debug, Clone)]
pub(crate) struct HubUrl {
    /// `host[:port]` as given.
    authority: String,
    /// `host:port` to connect to.
    address: String,
    /// The hub's path, from `/`.
    path: String,
    /// The query string of the URL, if it has one (without `?`); every request keeps it.
    query: Option<String>,
}

impl HubUrl {
    /// Parses a `--url` (http:// or ws://, with or without a path; `hub_path` when it has none).
    pub(crate) fn parse(url: &str, hub_path: &str) -> Result<HubUrl, BenchError> {
        let ws = hub_ws_url(url, hub_path)?;
        let rest = ws.strip_prefix("ws://").unwrap_or(&ws);
        let (authority, path_and_query) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (path, query) = match path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query.to_owned())),
            None => (path_and_query, None),
        };
        let address = url_authority(url).ok_or_else(|| BenchError::Url {
            url: url.to_owned(),
            reason: "expected a host (and port)".to_owned(),
        })?;
        Ok(HubUrl {
            authority: authority.to_owned(),
            address,
            path: path.to_owned(),
            query,
        })
    }

    /// `host:port` to connect to.
    pub(crate) fn address(&self) -> &str {
        &self.address
    }

    /// The `Host` header.
    pub(crate) fn host(&self) -> &str {
        &self.authority
    }

    /// The WebSocket URL: with the connection's token after negotiate, without one for `skipNegotiation`.
    pub(crate) fn ws(&self, token: Option<&str>) -> String {
        format!("ws://{}{}", self.authority, self.target(token))
    }

    /// The URL for messages (`http://host:port/path`).
    pub(crate) fn http(&self) -> String {
        format!("http://{}{}", self.authority, self.path)
    }

    /// The request target of the transport requests: the path, the URL's query, and `id=<token>`.
    pub(crate) fn target(&self, token: Option<&str>) -> String {
        let mut target = self.path.clone();
        let mut separator = '?';
        if let Some(query) = &self.query {
            target.push('?');
            target.push_str(query);
            separator = '&';
        }
        if let Some(token) = token {
            target.push(separator);
            target.push_str("id=");
            target.push_str(&percent_encode(token));
        }
        target
    }

    /// The request target of negotiate (docs/protocol.md: `/negotiate` appended to the path, the query kept).
    pub(crate) fn negotiate_target(&self) -> String {
        let query = self
            .query
            .as_ref()
            .map_or_else(String::new, |query| format!("{query}&"));
        format!(
            "{}/negotiate?{query}negotiateVersion=1",
            self.path.trim_end_matches('/')
        )
    }
}

/// Percent-encodes everything but the unreserved characters (tokens are base64url, but need not be).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// One client's way through the URLs. Shared by the client and its transport's reader task, so that their
/// requests take turns together.
#[derive(Debug)]
pub(crate) struct Route {
    urls: Arc<[HubUrl]>,
    own: usize,
    spread: bool,
    next: AtomicUsize,
    /// Requests sent, counted over all the clients of a run.
    requests: Arc<AtomicU64>,
    /// The local address a WebSocket connects from (`--source-addresses`); the kernel's choice if `None`.
    source: Option<IpAddr>,
    /// `--stateful`: negotiate stateful reconnect.
    stateful: bool,
    /// `--negotiate`: a WebSocket negotiates at the client's own URL instead of skipping negotiation.
    negotiate: bool,
}

impl Route {
    /// A client whose own URL is `urls[own % len]`; with `spread`, each request goes to the next URL, starting there.
    /// Each request adds one to `requests`. `None` without URLs.
    pub(crate) fn new(urls: Arc<[HubUrl]>, own: usize, spread: bool, requests: Arc<AtomicU64>) -> Option<Route> {
        if urls.is_empty() {
            return None;
        }
        let own = own % urls.len();
        Some(Route {
            urls,
            own,
            spread,
            next: AtomicUsize::new(own),
            requests,
            source: None,
            stateful: false,
            negotiate: false,
        })
    }

    /// The same route, negotiating stateful reconnect if `stateful`.
    pub(crate) fn with_stateful(mut self, stateful: bool) -> Route {
        self.stateful = stateful;
        self
    }

    /// Whether the client negotiates stateful reconnect.
    pub(crate) fn stateful(&self) -> bool {
        self.stateful
    }

    /// The same route, a WebSocket negotiating at the client's own URL if `negotiate` (as stateful ones always do).
    pub(crate) fn with_negotiate(mut self, negotiate: bool) -> Route {
        self.negotiate = negotiate;
        self
    }

    /// Whether a WebSocket negotiates at the client's own URL before it connects there.
    pub(crate) fn negotiates_at_own_url(&self) -> bool {
        self.negotiate || self.stateful
    }

    /// The same route, its WebSocket connecting from `source`.
    pub(crate) fn with_source(mut self, source: Option<IpAddr>) -> Route {
        self.source = source;
        self
    }

    /// The local address a WebSocket connects from, if chosen.
    pub(crate) fn source(&self) -> Option<IpAddr> {
        self.source
    }

    /// The number of URLs.
    pub(crate) fn len(&self) -> usize {
        self.urls.len()
    }

    /// The client's own URL (the first of its turn).
    pub(crate) fn own(&self) -> &HubUrl {
        &self.urls[self.own]
    }

    /// Whether each request goes to the next URL.
    pub(crate) fn spread(&self) -> bool {
        self.spread
    }

    /// The URL (and its index) of the next request.
    pub(crate) fn next(&self) -> (usize, &HubUrl) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let index = if self.spread {
            self.next.fetch_add(1, Ordering::Relaxed) % self.urls.len()
        } else {
            self.own
        };
        (index, &self.urls[index])
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn targets_keep_the_query_and_encode_the_token() {
        let url = HubUrl::parse("http://127.0.0.1:5001/chat?x=1", "/hub").unwrap();
        assert_eq!(url.target(Some("a+b/c")), "/chat?x=1&id=a%2Bb%2Fc");
        assert_eq!(url.negotiate_target(), "/chat/negotiate?x=1&negotiateVersion=1");
        assert_eq!(url.ws(None), "ws://127.0.0.1:5001/chat?x=1");
        let url = HubUrl::parse("http://localhost", "hub").unwrap();
        assert_eq!(url.address(), "localhost:80");
        assert_eq!(url.target(Some("t-_.~")), "/hub?id=t-_.~");
        assert_eq!(url.negotiate_target(), "/hub/negotiate?negotiateVersion=1");
    }

    #[test]
    fn a_spread_route_takes_every_url_in_turn_from_its_own() {
        let urls: Arc<[HubUrl]> = ["http://a:1", "http://b:2", "http://c:3"]
            .iter()
            .map(|url| HubUrl::parse(url, "/hub").unwrap())
            .collect();
        let requests = Arc::new(AtomicU64::new(0));
        let spread = Route::new(urls.clone(), 4, true, requests.clone()).unwrap();
        let turns: Vec<usize> = (0..4).map(|_| spread.next().0).collect();
        assert_eq!(turns, [1, 2, 0, 1]);
        let own = Route::new(urls.clone(), 2, false, requests.clone()).unwrap();
        assert!((0..3).all(|_| own.next().0 == 2));
        assert_eq!(requests.load(Ordering::Relaxed), 7);
        assert!(Route::new(urls[..0].into(), 0, true, requests).is_none());
    }
}
