//! Hostile and cross-origin clients against a real node: CORS as a setting (only the configured origins get CORS
//! headers; the default names none), and the limits on what a client can hold or send that it cannot get around
//! (docs/semantics.md#bounds).
//!
//! Every test is bounded by `tokio::time::timeout`, every request by the client's step timeout, every loop by a
//! count.

use std::error::Error;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hubmesh::testing::client::{http_request, HttpReply};
use hubmesh::{CorsOrigins, Hub, Limits, Node, NodeHandle};
use tokio::time::timeout;

type BoxError = Box<dyn Error + Send + Sync>;
type TestResult<T = ()> = Result<T, BoxError>;

const TEST_TIMEOUT: Duration = Duration::from_secs(30);
const HUB_PATH: &str = "/hostileHub";
const ALLOWED: &str = "https://app.example";
const OTHER: &str = "https://evil.example";

async fn bounded<T>(test: impl Future<Output = TestResult<T>>) -> TestResult<T> {
    timeout(TEST_TIMEOUT, test)
        .await
        .map_err(|_| -> BoxError { "the test did not finish in time".into() })?
}

async fn start(limits: Limits, origins: CorsOrigins) -> TestResult<NodeHandle> {
    Ok(Node::builder()
        .hub(Hub::new("hostileHub"))
        .limits(limits)
        .cors_origins(origins)
        .start()
        .await?)
}

/// A browser's preflight for the client's negotiate, from `origin`.
async fn preflight(addr: SocketAddr, origin: &str) -> TestResult<HttpReply> {
    let headers = [
        ("Origin", origin),
        ("Access-Control-Request-Method", "POST"),
        (
            "Access-Control-Request-Headers",
            "x-requested-with,x-signalr-user-agent",
        ),
    ];
    Ok(http_request(
        addr,
        "OPTIONS",
        &format!("{HUB_PATH}/negotiate?negotiateVersion=1"),
        &headers,
    )
    .await?)
}

/// The client's credentialed negotiate, from `origin` (or with no `Origin`, as a non-browser client).
async fn negotiate_from(addr: SocketAddr, origin: Option<&str>) -> TestResult<HttpReply> {
    let mut headers = vec![("X-Requested-With", "XMLHttpRequest"), ("Cookie", "session=1")];
    if let Some(origin) = origin {
        headers.push(("Origin", origin));
    }
    Ok(http_request(
        addr,
        "POST",
        &format!("{HUB_PATH}/negotiate?negotiateVersion=1"),
        &headers,
    )
    .await?)
}

fn allows(reply: &HttpReply, origin: &str) -> bool {
    reply.header("access-control-allow-origin") == Some(origin)
        && reply.header("access-control-allow-credentials") == Some("true")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_configured_origins_get_cors_headers() -> TestResult {
    bounded(async {
        let node = start(Limits::default(), CorsOrigins::from_list([ALLOWED])).await?;
        let addr = node.local_addr();
        let allowed_preflight = preflight(addr, ALLOWED).await?;
        if allowed_preflight.status != 200 || !allows(&allowed_preflight, ALLOWED) {
            return Err(format!("the allowed origin's preflight: {allowed_preflight:?}").into());
        }
        let allowed = negotiate_from(addr, Some(ALLOWED)).await?;
        if allowed.status != 200 || !allows(&allowed, ALLOWED) {
            return Err(format!("the allowed origin's negotiate: {allowed:?}").into());
        }
        let other_preflight = preflight(addr, OTHER).await?;
        if other_preflight.status == 200 || other_preflight.header("access-control-allow-origin").is_some() {
            return Err(format!("another origin's preflight was allowed: {other_preflight:?}").into());
        }
        // Served (a browser keeps the page from reading it), without CORS headers.
        let other = negotiate_from(addr, Some(OTHER)).await?;
        if other.status != 200 || other.header("access-control-allow-origin").is_some() {
            return Err(format!("another origin's negotiate: {other:?}").into());
        }
        node.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_no_origin_gets_cors_headers_and_other_clients_are_served() -> TestResult {
    bounded(async {
        let node = start(Limits::default(), CorsOrigins::default()).await?;
        let addr = node.local_addr();
        let url = node.url();
        for origin in [ALLOWED, OTHER, url.as_str()] {
            let reply = preflight(addr, origin).await?;
            if reply.status == 200 || reply.header("access-control-allow-origin").is_some() {
                return Err(format!("a preflight from {origin} was allowed by default: {reply:?}").into());
            }
            let reply = negotiate_from(addr, Some(origin)).await?;
            if reply.status != 200 || reply.header("access-control-allow-origin").is_some() {
                return Err(format!("a negotiate from {origin}: {reply:?}").into());
            }
        }
        let plain = negotiate_from(addr, None).await?;
        if plain.status != 200 {
            return Err(format!("a non-browser negotiate: {plain:?}").into());
        }
        node.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_origin_is_echoed_when_allowed() -> TestResult {
    bounded(async {
        let node = start(Limits::default(), CorsOrigins::Any).await?;
        let addr = node.local_addr();
        for origin in [ALLOWED, OTHER] {
            let reply = preflight(addr, origin).await?;
            if reply.status != 200 || !allows(&reply, origin) {
                return Err(format!("a preflight from {origin}: {reply:?}").into());
            }
        }
        node.stop().await;
        Ok(())
    })
    .await
}

#[test]
fn the_cors_origins_are_configured_by_file_environment_and_flag() -> TestResult {
    use hubmesh_cli::config::{NodeConfig, Overrides};
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("node.toml");
    std::fs::write(
        &file,
        "[http]\ncors_origins = [\"https://app.example\", \"http://localhost:8080/\"]\n",
    )?;
    let settings = NodeConfig::load_with_env(Some(&file), std::iter::empty::<(&str, &str)>(), &Overrides::new())?
        .node_settings()?;
    let expected = CorsOrigins::Only(vec!["https://app.example".into(), "http://localhost:8080".into()]);
    if settings.cors_origins != expected {
        return Err(format!("the file's origins: {:?}", settings.cors_origins).into());
    }
    let env = [("HUBMESH_HTTP__CORS_ORIGINS", "https://a.example, https://b.example")];
    let settings = NodeConfig::load_with_env(Some(&file), env.iter().copied(), &Overrides::new())?.node_settings()?;
    if settings.cors_origins != CorsOrigins::Only(vec!["https://a.example".into(), "https://b.example".into()]) {
        return Err(format!("the environment's origins: {:?}", settings.cors_origins).into());
    }
    let mut any = Overrides::new();
    any.set_list("http.cors_origins", ["*"]);
    let settings = NodeConfig::load_with_env(Some(&file), env.iter().copied(), &any)?.node_settings()?;
    if settings.cors_origins != CorsOrigins::Any {
        return Err(format!("the flag's origins: {:?}", settings.cors_origins).into());
    }
    let unset =
        NodeConfig::load_with_env(None, std::iter::empty::<(&str, &str)>(), &Overrides::new())?.node_settings()?;
    if unset.cors_origins != CorsOrigins::None {
        return Err(format!("the default origins: {:?}", unset.cors_origins).into());
    }
    let bad = [("HUBMESH_HTTP__CORS_ORIGINS", "app.example")];
    let Err(error) = NodeConfig::load_with_env(None, bad.iter().copied(), &Overrides::new())?.node_settings() else {
        return Err("an origin without a scheme was accepted".into());
    };
    let keys: Vec<&str> = error.settings().iter().map(|error| error.key.as_str()).collect();
    if keys != ["http.cors_origins"] {
        return Err(format!("unexpected errors: {error}").into());
    }
    Ok(())
}
