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

use std::sync::atomic::Ordering;

use hubmesh::testing::client::{http_request, http_request_with_body, HttpReply, TestClient};
use hubmesh::{CorsOrigins, Hub, Limits, Node, NodeHandle};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

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

async fn echo(text: String) -> String {
    text
}

async fn start(limits: Limits, origins: CorsOrigins) -> TestResult<NodeHandle> {
    Ok(Node::builder()
        .hub(Hub::new("hostileHub").method("Echo", echo))
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
            let cors_headers = reply
                .headers
                .iter()
                .any(|(name, _)| name.starts_with("access-control-"));
            if reply.status != 200 || cors_headers {
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

/// How long a test waits for a condition that follows from what it did (a window passing, a socket closing).
const WAIT: Duration = Duration::from_secs(10);

fn ws_url(node: &NodeHandle) -> String {
    format!("ws://{}{HUB_PATH}", node.local_addr())
}

/// A negotiated token (version 1), or the refusal.
async fn negotiate_token(addr: SocketAddr) -> TestResult<Result<String, HttpReply>> {
    let reply = negotiate_from(addr, None).await?;
    if reply.status != 200 {
        return Ok(Err(reply));
    }
    let body: serde_json::Value = serde_json::from_slice(&reply.body)?;
    let token = body["connectionToken"].as_str().ok_or("no connectionToken")?;
    Ok(Ok(token.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_node_refuses_new_connections_and_keeps_its_own() -> TestResult {
    bounded(async {
        let limits = Limits {
            max_connections: 2,
            ..Limits::default()
        };
        let hit = limits.bounds_hit.clone();
        let node = start(limits, CorsOrigins::None).await?;
        let addr = node.local_addr();
        let spare = negotiate_token(addr)
            .await?
            .map_err(|reply| format!("negotiate: {reply:?}"))?;
        let mut first = TestClient::to(&ws_url(&node)).connect().await?;
        let mut second = TestClient::to(&ws_url(&node)).connect().await?;

        let negotiate = negotiate_from(addr, None).await?;
        if negotiate.status != 503 || !negotiate.text().contains("maximum of 2 connections") {
            return Err(format!("a negotiate on a full node: {negotiate:?}").into());
        }
        let websocket = TestClient::to(&ws_url(&node)).refused_status().await?;
        if websocket != 503 {
            return Err(format!("a WebSocket on a full node got {websocket}").into());
        }
        let sse = http_request(
            addr,
            "GET",
            &format!("{HUB_PATH}?id={spare}"),
            &[("Accept", "text/event-stream")],
        )
        .await?;
        if sse.status != 503 {
            return Err(format!("an SSE stream on a full node: {sse:?}").into());
        }
        if hit.connections.load(Ordering::Relaxed) != 3 {
            return Err(format!("refusals counted: {}", hit.connections.load(Ordering::Relaxed)).into());
        }
        let metrics = http_request(addr, "GET", "/metrics", &[]).await?.text();
        if !metrics.contains(r#"hubmesh_bounds_hit_total{bound="connections"} 3"#) {
            return Err(format!("the refusals are not in /metrics: {metrics}").into());
        }
        // The connections it holds are served as before.
        for client in [&mut first, &mut second] {
            let answer = client.invoke_ok("Echo", json!(["still here"])).await?;
            if answer != json!("still here") {
                return Err(format!("an open connection got {answer}").into());
            }
        }
        // One leaves: a new client gets in again.
        first.close_socket().await;
        let deadline = Instant::now() + WAIT;
        let mut third = loop {
            match negotiate_token(addr).await? {
                Ok(_) => break TestClient::to(&ws_url(&node)).connect().await?,
                Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(reply) => return Err(format!("the node stayed full after a client left: {reply:?}").into()),
            }
        };
        third.invoke_ok("Echo", json!(["in"])).await?;
        node.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiates_above_the_rate_of_an_address_get_429() -> TestResult {
    bounded(async {
        let limits = Limits {
            negotiates_per_second: 5,
            ..Limits::default()
        };
        let hit = limits.bounds_hit.clone();
        let node = start(limits, CorsOrigins::None).await?;
        let addr = node.local_addr();
        let mut statuses = Vec::new();
        for _ in 0..8 {
            statuses.push(negotiate_from(addr, None).await?.status);
        }
        // Eight requests within one window (each takes far less than a second here): five pass. Should the window
        // turn during them, more pass, never fewer.
        let passed = statuses.iter().filter(|status| **status == 200).count();
        let limited = statuses.iter().filter(|status| **status == 429).count();
        if passed < 5 || limited == 0 || passed + limited != 8 {
            return Err(format!("statuses: {statuses:?}").into());
        }
        if hit.negotiate_rate.load(Ordering::Relaxed) != u64::try_from(limited)? {
            return Err("the refusals were not counted".into());
        }
        let refused = negotiate_from(addr, None).await?;
        if refused.status == 429 && !refused.text().contains("5 negotiates per second") {
            return Err(format!("the refusal does not say why: {refused:?}").into());
        }
        // The next window lets the address negotiate again.
        let deadline = Instant::now() + WAIT;
        while negotiate_from(addr, None).await?.status != 200 {
            if Instant::now() > deadline {
                return Err("the address stayed limited".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        node.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_that_skip_negotiation_count_as_negotiates() -> TestResult {
    bounded(async {
        let limits = Limits {
            negotiates_per_second: 3,
            ..Limits::default()
        };
        let hit = limits.bounds_hit.clone();
        let node = start(limits, CorsOrigins::None).await?;
        let mut open = Vec::new();
        let mut refused = 0;
        // Ten attempts take far less than a second here: three pass, then 429 (more pass only if a window turns).
        for _ in 0..10 {
            match TestClient::to(&ws_url(&node)).connect().await {
                Ok(client) => open.push(client),
                Err(_) => {
                    let status = TestClient::to(&ws_url(&node)).refused_status().await?;
                    if status != 429 {
                        return Err(format!("a refused WebSocket got {status}").into());
                    }
                    refused += 1;
                    break;
                }
            }
        }
        if open.len() < 3 || refused == 0 || hit.negotiate_rate.load(Ordering::Relaxed) < 1 {
            return Err(format!("{} WebSockets opened, {refused} refused", open.len()).into());
        }
        for client in &mut open {
            client.invoke_ok("Echo", json!(["open"])).await?;
        }
        node.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_bounded_on_every_route() -> TestResult {
    bounded(async {
        let limits = Limits {
            max_frame: 4096,
            ..Limits::default()
        };
        let hit = limits.bounds_hit.clone();
        let node = start(limits, CorsOrigins::None).await?;
        let addr = node.local_addr();
        // Negotiate never reads a body: one declared as a gigabyte, never sent, is answered at once.
        let mut stream = TcpStream::connect(addr).await?;
        let head = format!(
            "POST {HUB_PATH}/negotiate?negotiateVersion=1 HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 1000000000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await?;
        let mut answer = vec![0u8; 4096];
        let read = timeout(WAIT, stream.read(&mut answer)).await??;
        let answer = String::from_utf8_lossy(&answer[..read]);
        if !answer.starts_with("HTTP/1.1 200") {
            return Err(format!("negotiate with an unsent body: {answer}").into());
        }
        drop(stream);
        // The send half of long polling and SSE: past `max_frame`, 413.
        let token = negotiate_token(addr).await?.map_err(|reply| format!("negotiate: {reply:?}"))?;
        let path = format!("{HUB_PATH}?id={token}");
        let poll = http_request(addr, "GET", &path, &[]).await?;
        if poll.status != 200 {
            return Err(format!("the first poll: {poll:?}").into());
        }
        let huge = vec![b' '; 4097];
        let post = http_request_with_body(addr, "POST", &path, &[], &huge).await?;
        if post.status != 413 || hit.bodies.load(Ordering::Relaxed) != 1 {
            return Err(format!("an oversized POST: {post:?}").into());
        }
        // Other routes do not read bodies; a large one does not change their answer.
        let health = http_request_with_body(addr, "GET", "/healthz", &[], &huge).await?;
        if health.status != 200 {
            return Err(format!("a health check with a body: {health:?}").into());
        }
        node.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trickles_its_headers_is_closed() -> TestResult {
    bounded(async {
        let limits = Limits {
            request_header_timeout: Duration::from_millis(500),
            ..Limits::default()
        };
        let node = start(limits, CorsOrigins::None).await?;
        let addr = node.local_addr();
        let mut slow = TcpStream::connect(addr).await?;
        slow.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n").as_bytes())
            .await?;
        let started = Instant::now();
        let mut answer = Vec::new();
        let mut buffer = [0u8; 1024];
        // One header line every 100 ms, for at most 100 lines (10 s): the node must give up first.
        let mut closed = false;
        for line in 0..100 {
            match timeout(Duration::from_millis(100), slow.read(&mut buffer)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed = true;
                    break;
                }
                Ok(Ok(read)) => answer.extend_from_slice(&buffer[..read]),
                Err(_) => {}
            }
            if slow
                .write_all(format!("X-Slow-{line}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                closed = true;
                break;
            }
        }
        if !closed {
            return Err(format!("a client trickling headers was held for {:?}", started.elapsed()).into());
        }
        let answer = String::from_utf8_lossy(&answer);
        if !answer.is_empty() && !answer.starts_with("HTTP/1.1 408") {
            return Err(format!("the slow client got: {answer}").into());
        }
        // A head too large for the server's buffer is refused, however fast it comes: on a node with the default
        // header timeout, which a loaded machine's 256 KiB write may pass 500 ms into (408, not 431: one CI run).
        let roomy = start(Limits::default(), CorsOrigins::None).await?;
        let huge = "a".repeat(256 * 1024);
        let large = http_request(roomy.local_addr(), "GET", "/healthz", &[("X-Large", huge.as_str())]).await;
        if let Ok(reply) = &large {
            if reply.status != 431 {
                return Err(format!("a 256 KiB header: {reply:?}").into());
            }
        }
        roomy.stop().await;
        // A client that sends its request at once is served.
        let health = http_request(addr, "GET", "/healthz", &[]).await?;
        if health.status != 200 {
            return Err(format!("a prompt client: {health:?}").into());
        }
        node.stop().await;
        Ok(())
    })
    .await
}

#[test]
fn the_limits_are_configured_by_file_and_environment() -> TestResult {
    use hubmesh_cli::config::{NodeConfig, Overrides};
    let env = [
        ("HUBMESH_LIMITS__MAX_CONNECTIONS", "7"),
        ("HUBMESH_LIMITS__NEGOTIATES_PER_SECOND", "0"),
        ("HUBMESH_LIMITS__RATE_TRACKED_ADDRESSES", "9"),
        ("HUBMESH_LIMITS__REQUEST_HEADER_TIMEOUT", "2s"),
    ];
    let settings = NodeConfig::load_with_env(None, env.iter().copied(), &Overrides::new())?.node_settings()?;
    let limits = &settings.limits;
    let loaded = (
        limits.max_connections,
        limits.negotiates_per_second,
        limits.rate_tracked_addresses,
        limits.request_header_timeout,
    );
    if loaded != (7, 0, 9, Duration::from_secs(2)) {
        return Err(format!("the environment was not applied: {loaded:?}").into());
    }
    let defaults = NodeConfig::load_with_env(None, std::iter::empty::<(&str, &str)>(), &Overrides::new())?
        .node_settings()?
        .limits;
    if (defaults.max_connections, defaults.negotiates_per_second) != (100_000, 100) {
        return Err(format!("the defaults: {defaults:?}").into());
    }
    let zero = [
        ("HUBMESH_LIMITS__MAX_CONNECTIONS", "0"),
        ("HUBMESH_LIMITS__RATE_TRACKED_ADDRESSES", "0"),
        ("HUBMESH_LIMITS__REQUEST_HEADER_TIMEOUT", "0s"),
    ];
    let Err(error) = NodeConfig::load_with_env(None, zero.iter().copied(), &Overrides::new())?.node_settings() else {
        return Err("zero limits were accepted".into());
    };
    let keys: Vec<&str> = error.settings().iter().map(|error| error.key.as_str()).collect();
    if keys
        != [
            "limits.max_connections",
            "limits.rate_tracked_addresses",
            "limits.request_header_timeout",
        ]
    {
        return Err(format!("unexpected errors: {error}").into());
    }
    Ok(())
}
