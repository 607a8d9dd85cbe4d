//! Serving the test server: where it listens ([`Listen`], HTTP, HTTPS with a self-signed certificate, or both),
//! the app that routes the hubs, `/echo`, the client bundles and the other routes, and the handle of a running
//! server.

use std::sync::Arc;

use actix_web::{web, App};

use super::bundles::bundle;
use super::echo::{echo_delete, echo_get, echo_negotiate, echo_post, echo_socket, EchoConnections};
use super::hub::test_node;
pub(super) use super::routes::RedirectCounter;
use super::routes::{client_result, deployment, generate_jwt_token, upstream_middleware, Https};
use super::tokens::TestTokens;
use crate::node::cors::{cors, CorsOrigins};
use crate::node::server;
use crate::node::tls::TlsConfig;
use crate::node::{Node, NodeError, STOP_GRACE};

/// A running test server.
pub struct TestHubHandle {
    url: String,
    https_url: Option<String>,
    serving: server::Serving,
}

impl TestHubHandle {
    /// `http://127.0.0.1:<port>`, or the HTTPS URL when the server listens on HTTPS only.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// `https://127.0.0.1:<port>` when the server also listens on HTTPS (a self-signed certificate).
    pub fn https_url(&self) -> Option<String> {
        self.https_url.clone()
    }

    /// Stops serving and waits for the server to end.
    pub async fn stop(self) {
        self.serving.stop(STOP_GRACE).await;
    }

    /// Waits until the server stops.
    pub async fn wait(self) -> std::io::Result<()> {
        self.serving.wait().await
    }
}

/// Why the test server could not start.
#[derive(Debug, thiserror::Error)]
pub enum TestHubError {
    /// The node could not be built.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The address could not be bound.
    #[error("could not listen on {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The self-signed certificate or the TLS configuration could not be made.
    #[error("could not set up HTTPS: {0}")]
    Tls(String),
    /// Neither an HTTP nor an HTTPS address was given.
    #[error("nothing to listen on: give an http:// or https:// URL")]
    NoAddress,
    /// A URL the server cannot serve.
    #[error("cannot serve '{0}': only http:// and https:// URLs with a host and port")]
    BadUrl(String),
}

/// Where the test server listens: plain HTTP, HTTPS with a self-signed certificate, or both (as upstream's test
/// server does, `ASPNETCORE_URLS=https://127.0.0.1:0;http://127.0.0.1:0`).
#[derive(Debug, Clone, Default)]
pub struct Listen {
    /// `host:port` for plain HTTP.
    pub http: Option<String>,
    /// `host:port` for HTTPS.
    pub https: Option<String>,
}

impl Listen {
    /// Parses an ASP.NET-style `;`-separated URL list; the first URL of each scheme is used.
    pub fn from_urls(urls: &str) -> Result<Listen, TestHubError> {
        let mut listen = Listen::default();
        for url in urls.split(';').map(str::trim).filter(|url| !url.is_empty()) {
            let (slot, address) = if let Some(address) = url.strip_prefix("http://") {
                (&mut listen.http, address)
            } else if let Some(address) = url.strip_prefix("https://") {
                (&mut listen.https, address)
            } else {
                return Err(TestHubError::BadUrl(url.to_owned()));
            };
            let address = address.trim_end_matches('/');
            if address.is_empty() || address.contains('/') {
                return Err(TestHubError::BadUrl(url.to_owned()));
            }
            slot.get_or_insert_with(|| address.to_owned());
        }
        if listen.http.is_none() && listen.https.is_none() {
            return Err(TestHubError::NoAddress);
        }
        Ok(listen)
    }
}

/// A TLS configuration with a fresh self-signed certificate for `127.0.0.1` and `localhost`.
fn self_signed_tls() -> Result<rustls::ServerConfig, TestHubError> {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .map_err(|error| TestHubError::Tls(error.to_string()))?;
    let tls = TlsConfig::from_pem(
        certified.cert.pem().as_bytes(),
        certified.signing_key.serialize_pem().as_bytes(),
    )
    .map_err(|error| TestHubError::Tls(error.to_string()))?;
    Ok(tls.server_config())
}

/// Serves the test server on `address` (`127.0.0.1:0` picks a free port), plain HTTP, on the current tokio runtime.
pub async fn serve(address: &str) -> Result<TestHubHandle, TestHubError> {
    serve_on(&Listen {
        http: Some(address.to_owned()),
        https: None,
    })
    .await
}

/// Serves the test server on the addresses of `listen` (port 0 picks a free port) on the current tokio runtime.
pub async fn serve_on(listen: &Listen) -> Result<TestHubHandle, TestHubError> {
    let tokens = TestTokens::random();
    let node = test_node(&tokens)?;
    serve_node(node, tokens, RedirectCounter::shared(), listen).await
}

/// Serves the test server's routes around `node` (built from [`super::test_node_builder`] with `tokens`' key) on
/// the addresses of `listen`, on the current tokio runtime.
/// `counter` numbers the `/redirect` answers; the servers of one cluster share it, as upstream's one process does.
pub(super) async fn serve_node(
    node: Node,
    tokens: TestTokens,
    counter: web::Data<RedirectCounter>,
    listen: &Listen,
) -> Result<TestHubHandle, TestHubError> {
    let tokens = web::Data::new(tokens);
    let test_hub = node
        .hub_context("TestHub")
        .ok_or_else(|| NodeError::DuplicatePath("/testhub".into()))?;
    let echo = web::Data::new(EchoConnections::new(node.limits().clone()));
    let bind = |address: &str| -> Result<(std::net::TcpListener, std::net::SocketAddr), TestHubError> {
        let bind_error = |source| TestHubError::Bind {
            address: address.to_owned(),
            source,
        };
        let listener = std::net::TcpListener::bind(address).map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        Ok((listener, local_addr))
    };
    let http = listen.http.as_deref().map(bind).transpose()?;
    let https = listen.https.as_deref().map(bind).transpose()?;
    let app_node = node.clone();
    let test_hub = web::Data::new(test_hub);
    let app = move |https: bool| {
        let node = app_node.clone();
        // Outermost first, as upstream's pipeline: CORS, then its path-prefix middleware, then the routes.
        App::new()
            .wrap(actix_web::middleware::from_fn(upstream_middleware))
            .wrap(cors(&CorsOrigins::Any))
            .app_data(web::Data::new(Https(https)))
            .app_data(test_hub.clone())
            .app_data(counter.clone())
            .app_data(tokens.clone())
            .app_data(echo.clone())
            .route("/echo/negotiate", web::post().to(echo_negotiate))
            .route("/echo", web::get().to(echo_get))
            .route("/echo", web::post().to(echo_post))
            .route("/echo", web::delete().to(echo_delete))
            .route("/clientresult/{id}", web::get().to(client_result))
            .route("/generateJwtToken", web::get().to(generate_jwt_token))
            .route("/deployment", web::get().to(deployment))
            .route(
                "/lib/{folder}/{name}",
                web::route()
                    .guard(actix_web::guard::Any(actix_web::guard::Get()).or(actix_web::guard::Head()))
                    .to(bundle),
            )
            .configure(move |config| node.configure(config))
    };
    let mut listeners = Vec::new();
    let mut http_url = None;
    if let Some((listener, local_addr)) = http {
        listeners.push(server::Listener::http(listener));
        http_url = Some(format!("http://{local_addr}"));
    }
    let mut https_url = None;
    if let Some((listener, local_addr)) = https {
        listeners.push(server::Listener::https(listener, self_signed_tls()?));
        https_url = Some(format!("https://{local_addr}"));
    }
    let Some(url) = http_url.clone().or_else(|| https_url.clone()) else {
        return Err(TestHubError::NoAddress);
    };
    let upgrades = server::Upgrades::new(node.clone()).route("/echo", Arc::new(|socket| Box::pin(echo_socket(socket))));
    let server = server::serve(app, upgrades, listeners, 2).map_err(|source| TestHubError::Bind {
        address: url.clone(),
        source,
    })?;
    Ok(TestHubHandle {
        url,
        https_url,
        serving: server::Serving::spawn(node, server),
    })
}
