//! [`CorsOrigins`]: which browser pages on another origin may call a node, and the CORS layer that says so.
//!
//! The SignalR client sends credentials and custom headers, so a page on another origin makes preflighted,
//! credentialed requests (docs/protocol.md#cors-with-credentials); a browser lets it read the answers only if they
//! echo its origin with `Access-Control-Allow-Credentials: true`. Answering that for every origin lets any site a
//! user visits act as that user on the node, so the default names no origin. Requests from origins not allowed
//! are still served, without CORS headers: same-origin pages and non-browser clients are unaffected, and the
//! browser keeps a foreign page from reading the answer; a preflight from such an origin gets 400.
//!
//! Calls nothing in hubmesh; used by the node's server ([`super::NodeBuilder::start`]) and the test hub.

use actix_web::http::header::HeaderValue;

/// The origins whose pages may call a node cross-origin with credentials ([`super::NodeBuilder::cors_origins`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CorsOrigins {
    /// No origin (the default): only same-origin pages and non-browser clients can use the node's answers.
    #[default]
    None,
    /// Every origin, its `Origin` echoed: for local development (`hubmesh dev`) and the official test suite.
    Any,
    /// These origins, each `scheme://host[:port]` exactly as browsers send it (compared byte for byte).
    Only(Vec<String>),
}

impl CorsOrigins {
    /// The origins of a configuration list: `["*"]` (or any list containing `*`) is [`CorsOrigins::Any`], an
    /// empty list [`CorsOrigins::None`]. Trailing slashes are dropped, since browsers never send one.
    pub fn from_list<I, S>(origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list = Vec::new();
        for origin in origins {
            let origin = origin.as_ref().trim().trim_end_matches('/');
            if origin == "*" {
                return CorsOrigins::Any;
            }
            if !origin.is_empty() {
                list.push(origin.to_owned());
            }
        }
        if list.is_empty() {
            CorsOrigins::None
        } else {
            CorsOrigins::Only(list)
        }
    }

    /// Why `origin` (one entry of a configuration list) cannot be an origin, if it cannot: it must be `*` or
    /// `http(s)://host[:port]` with no path.
    pub fn check(origin: &str) -> Result<(), String> {
        let origin = origin.trim().trim_end_matches('/');
        if origin == "*" {
            return Ok(());
        }
        let host = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"))
            .ok_or_else(|| format!("`{origin}` is not an origin: it must start with http:// or https://"))?;
        if host.is_empty() || host.contains(['/', '?', '#', ' ', ',']) {
            return Err(format!("`{origin}` is not an origin of the form scheme://host[:port]"));
        }
        Ok(())
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        match self {
            CorsOrigins::None => false,
            CorsOrigins::Any => true,
            CorsOrigins::Only(list) => list.iter().any(|allowed| allowed.as_bytes() == origin.as_bytes()),
        }
    }
}

/// The CORS layer for `origins`: for an allowed origin, the origin echoed, credentials allowed, requested
/// methods and headers allowed, preflights answered; for others, no CORS headers.
pub fn cors(origins: &CorsOrigins) -> actix_cors::Cors {
    let cors = match origins {
        CorsOrigins::Any => return actix_cors::Cors::permissive(),
        // No CORS header at all (not even `Allow-Credentials`, which the layer adds for any origin once enabled).
        CorsOrigins::None => return actix_cors::Cors::default().block_on_origin_mismatch(false),
        CorsOrigins::Only(_) => {
            let origins = origins.clone();
            actix_cors::Cors::default().allowed_origin_fn(move |origin, _| origins.allows(origin))
        }
    };
    cors.allow_any_method()
        .allow_any_header()
        .expose_any_header()
        .supports_credentials()
        .block_on_origin_mismatch(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_becomes_origins() {
        assert_eq!(CorsOrigins::from_list(Vec::<String>::new()), CorsOrigins::None);
        assert_eq!(CorsOrigins::from_list(["https://a.example", "*"]), CorsOrigins::Any);
        assert_eq!(
            CorsOrigins::from_list(["https://a.example/", " http://b.example:8080"]),
            CorsOrigins::Only(vec!["https://a.example".into(), "http://b.example:8080".into()])
        );
    }

    #[test]
    fn only_origins_pass_the_check() {
        assert!(CorsOrigins::check("https://app.example").is_ok());
        assert!(CorsOrigins::check("http://127.0.0.1:5000/").is_ok());
        assert!(CorsOrigins::check("*").is_ok());
        assert!(CorsOrigins::check("app.example").is_err());
        assert!(CorsOrigins::check("https://app.example/path").is_err());
        assert!(CorsOrigins::check("https://").is_err());
    }
}
