//! The test harness's round-robin proxy (`hubmesh::testing::proxy`): each request of a keep-alive connection goes
//! to the next node; with one node behind it, it is transparent to every transport (WebSockets in both
//! protocols, Server-Sent Events, long polling); `cut_connections` closes upgraded and streaming connections so
//! that the node notices; a backend with nothing listening is skipped, and none answering gives 502.
//!
//! The official client conformance files (`tests/node`, as `tests/official_client.rs` runs them) run through the
//! proxy in front of three test servers forming one cluster, every request to the next node (the raw `/echo`
//! endpoint, which is not a hub, pinned to one): any node serves any connection. They need Node.js and npm like
//! that test.
//!
//! Everything runs on 127.0.0.1; every test, read and loop is bounded, and conditions are awaited with deadlines.

#[path = "common/npm.rs"]
mod npm;
#[path = "common/process.rs"]
mod process;

use std::error::Error;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hubmesh::testing::client::{
    http_request_with_body as request, json_invocation, open_event_stream, parse_http_response, read_until, HttpReply,
    Protocol,
};
use hubmesh::testing::proxy::{RoundRobinProxy, Routed};
use hubmesh::testing::testhub::test_hub;
use hubmesh::testing::{TestClient, TestHubCluster};
use hubmesh::transport::TransportKind;
use hubmesh::{Limits, Node, NodeHandle};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{timeout, timeout_at, Instant};

type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const STEP: Duration = Duration::from_secs(5);
const RS: char = '\u{1e}';

async fn bounded<F: Future<Output = TestResult>>(body: F) -> TestResult {
    timeout(TEST_TIMEOUT, body)
        .await
        .map_err(|_| format!("the test did not finish within {TEST_TIMEOUT:?}"))?
}

/// A node named `name` serving the test hub at `/testhub` over every transport; each connection that ends sends
/// its id to the returned receiver.
async fn start_node(name: &str) -> TestResult<(NodeHandle, mpsc::Receiver<String>)> {
    let (ended_tx, ended_rx) = mpsc::channel::<String>(64);
    let all = [
        TransportKind::WebSockets,
        TransportKind::ServerSentEvents,
        TransportKind::LongPolling,
    ];
    let hub = test_hub("TestHub", "/testhub", &all).on_disconnected(move |caller| {
        let ended = ended_tx.clone();
        async move {
            let _ = ended.try_send(caller.connection_id().to_string());
            Ok(())
        }
    });
    let limits = Limits {
        keep_alive: Duration::from_secs(60),
        client_timeout: Duration::from_secs(120),
        poll_timeout: Duration::from_secs(20),
        poll_disconnect_timeout: Duration::from_secs(15),
        ..Limits::default()
    };
    let node = Node::builder()
        .name(name)
        .hub(hub)
        .listen("127.0.0.1:0")
        .limits(limits)
        .start()
        .await?;
    Ok((node, ended_rx))
}

async fn stop(node: NodeHandle) {
    let _ = timeout(Duration::from_secs(10), node.stop()).await;
}

/// An address with nothing listening: a port bound and released.
async fn dead_address() -> TestResult<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    drop(listener);
    Ok(addr)
}

/// One HTTP/1.1 client connection that stays open across requests (keep-alive).
struct KeepAliveClient {
    stream: TcpStream,
}

impl KeepAliveClient {
    async fn connect(addr: SocketAddr) -> TestResult<Self> {
        Ok(KeepAliveClient {
            stream: timeout(STEP, TcpStream::connect(addr)).await??,
        })
    }

    /// `GET path` on this connection; reads the response (which must have a `Content-Length`) to its end.
    async fn get(&mut self, path: &str) -> TestResult<HttpReply> {
        let head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        self.stream.write_all(head.as_bytes()).await?;
        let deadline = Instant::now() + STEP;
        let mut raw = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(position) = raw.windows(4).position(|window| window == b"\r\n\r\n") {
                break position + 4;
            }
            let read = timeout_at(deadline, self.stream.read(&mut chunk)).await??;
            if read == 0 {
                return Err("the proxy closed the keep-alive connection".into());
            }
            raw.extend_from_slice(&chunk[..read]);
        };
        let length: usize = parse_http_response(&raw[..head_end])?
            .header("content-length")
            .ok_or("a response without Content-Length")?
            .parse()?;
        while raw.len() < head_end + length {
            let read = timeout_at(deadline, self.stream.read(&mut chunk)).await??;
            if read == 0 {
                return Err("the proxy closed the connection mid-body".into());
            }
            raw.extend_from_slice(&chunk[..read]);
        }
        if raw.len() > head_end + length {
            return Err("more bytes than one response".into());
        }
        Ok(parse_http_response(&raw)?)
    }
}

/// Which node answered `GET /_hubmesh/cluster`.
fn answering_node(reply: &HttpReply) -> TestResult<String> {
    let body: Value = serde_json::from_slice(&reply.body)?;
    Ok(body["node"].as_str().ok_or("no node in the cluster view")?.to_owned())
}

fn backends_of(routes: &[Routed]) -> Vec<SocketAddr> {
    routes.iter().map(|routed| routed.backend).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_of_a_keep_alive_connection_goes_to_the_next_node() -> TestResult {
    bounded(async {
        let mut nodes = Vec::new();
        for name in ["node-a", "node-b", "node-c"] {
            nodes.push(start_node(name).await?.0);
        }
        let addrs: Vec<SocketAddr> = nodes.iter().map(NodeHandle::local_addr).collect();
        let proxy = RoundRobinProxy::start(addrs.clone()).await?;
        let mut client = KeepAliveClient::connect(proxy.addr()).await?;
        let mut answered = Vec::new();
        for _ in 0..6 {
            let reply = client.get("/_hubmesh/cluster").await?;
            assert_eq!(reply.status, 200, "{}", reply.text());
            answered.push(answering_node(&reply)?);
        }
        assert_eq!(
            answered,
            ["node-a", "node-b", "node-c", "node-a", "node-b", "node-c"],
            "one keep-alive connection's requests did not rotate over the nodes"
        );
        let routes = proxy.take_routes();
        let expected: Vec<SocketAddr> = addrs.iter().chain(addrs.iter()).copied().collect();
        assert_eq!(backends_of(&routes), expected);
        assert!(routes
            .iter()
            .all(|routed| routed.method == "GET" && routed.target == "/_hubmesh/cluster" && !routed.upgrade));
        // Changing the rotation takes effect at the next request, on the same connection.
        proxy.set_backends([addrs[1]])?;
        for _ in 0..2 {
            assert_eq!(answering_node(&client.get("/_hubmesh/cluster").await?)?, "node-b");
        }
        // A cut closes an idle keep-alive connection too.
        proxy.cut_connections();
        assert!(
            client.get("/_hubmesh/cluster").await.is_err(),
            "a keep-alive connection outlived the cut"
        );
        let mut client = KeepAliveClient::connect(proxy.addr()).await?;
        assert_eq!(client.get("/_hubmesh/cluster").await?.status, 200);
        drop(client);
        drop(proxy);
        for node in nodes {
            stop(node).await;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_through_the_proxy_in_both_protocols() -> TestResult {
    bounded(async {
        let (node, _ended) = start_node("node-a").await?;
        let proxy = RoundRobinProxy::start([node.local_addr()]).await?;
        let hub_url = format!("{}/testhub", proxy.url());
        for protocol in Protocol::ALL {
            let mut client = TestClient::to(&hub_url)
                .protocol(protocol)
                .negotiate()
                .await?
                .connect()
                .await?;
            assert_eq!(client.invoke_ok("Echo", json!(["through"])).await?, json!("through"));
            client.send_invocation("InvokeWithString", json!(["pushed"])).await?;
            let pushed = client
                .next_invocation_of("Message", STEP)
                .await?
                .ok_or("no Message pushed through the proxy")?;
            assert_eq!(pushed.value["arguments"], json!(["pushed"]), "{}", protocol.name());
            // Several records each way in a row, all in order.
            for index in 0..20 {
                client
                    .send_invocation_with_id(&format!("n{index}"), "Echo", json!([index.to_string()]))
                    .await?;
            }
            for index in 0..20 {
                let completion = client.completion(&format!("n{index}")).await?;
                assert_eq!(completion.value["result"], json!(index.to_string()));
            }
            client.close_socket().await;
        }
        let routes = proxy.take_routes();
        let kinds: Vec<(&str, bool)> = routes
            .iter()
            .map(|routed| (routed.method.as_str(), routed.upgrade))
            .collect();
        assert_eq!(kinds, [("POST", false), ("GET", true), ("POST", false), ("GET", true)]);
        drop(proxy);
        stop(node).await;
        Ok(())
    })
    .await
}

async fn negotiate(addr: SocketAddr) -> TestResult<String> {
    let response = request(addr, "POST", "/testhub/negotiate?negotiateVersion=1", &[], b"").await?;
    assert_eq!(response.status, 200, "negotiate: {}", response.text());
    let body: Value = serde_json::from_slice(&response.body)?;
    Ok(body["connectionToken"].as_str().ok_or("no connectionToken")?.to_owned())
}

/// Opens an SSE stream through `addr` and reads its response head.
async fn open_sse(addr: SocketAddr, path: &str) -> TestResult<(TcpStream, Vec<u8>)> {
    let (events, raw) = open_event_stream(addr, path, &[]).await?;
    let head_end = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or("no head")?
        + 4;
    let head = parse_http_response(&raw[..head_end])?;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    Ok((events, raw))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_stream_through_the_proxy() -> TestResult {
    bounded(async {
        let (node, _ended) = start_node("node-a").await?;
        let proxy = RoundRobinProxy::start([node.local_addr()]).await?;
        let addr = proxy.addr();
        let token = negotiate(addr).await?;
        let path = format!("/testhub?id={token}");
        let (mut events, mut raw) = open_sse(addr, &path).await?;
        let handshake = format!("{{\"protocol\":\"json\",\"version\":1}}{RS}");
        assert_eq!(
            request(addr, "POST", &path, &[], handshake.as_bytes()).await?.status,
            200
        );
        read_until(&mut events, &mut raw, format!("data: {{}}{RS}\n\n").as_bytes()).await?;
        // Each event arrives while the stream stays open: nothing waits for the response to end.
        for index in 0..5 {
            let invoke = json_invocation(&index.to_string(), "Echo", json!([format!("event {index}")]));
            assert_eq!(request(addr, "POST", &path, &[], invoke.as_bytes()).await?.status, 200);
            read_until(
                &mut events,
                &mut raw,
                format!("\"result\":\"event {index}\"}}{RS}\n\n").as_bytes(),
            )
            .await?;
        }
        drop(events);
        drop(proxy);
        stop(node).await;
        Ok(())
    })
    .await
}

/// `POST path` with a chunked body of `chunks`, each written on its own, on a connection of its own.
async fn post_chunked(addr: SocketAddr, path: &str, chunks: &[&[u8]]) -> TestResult<HttpReply> {
    let mut stream = timeout(STEP, TcpStream::connect(addr)).await??;
    let head =
        format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;
    for chunk in chunks {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(chunk);
        framed.extend_from_slice(b"\r\n");
        stream.write_all(&framed).await?;
        stream.flush().await?;
    }
    stream.write_all(b"0\r\n\r\n").await?;
    let mut raw = Vec::new();
    timeout(STEP, stream.read_to_end(&mut raw)).await??;
    Ok(parse_http_response(&raw)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polling_through_the_proxy() -> TestResult {
    bounded(async {
        let (node, _ended) = start_node("node-a").await?;
        let proxy = RoundRobinProxy::start([node.local_addr()]).await?;
        let addr = proxy.addr();
        let token = negotiate(addr).await?;
        let path = format!("/testhub?id={token}");
        let first = request(addr, "GET", &path, &[], b"").await?;
        assert_eq!((first.status, first.body.len()), (200, 0));
        // The handshake as a chunked body in two chunks, written one after the other: forwarded as it comes.
        let handshake = format!("{{\"protocol\":\"json\",\"version\":1}}{RS}");
        let (part_one, part_two) = handshake.as_bytes().split_at(10);
        assert_eq!(post_chunked(addr, &path, &[part_one, part_two]).await?.status, 200);
        let answer = request(addr, "GET", &path, &[], b"").await?;
        assert_eq!((answer.status, answer.text()), (200, format!("{{}}{RS}")));
        // A poll waits at the node, through the proxy, until a message for it arrives.
        let pending = tokio::spawn({
            let path = path.clone();
            async move {
                request(addr, "GET", &path, &[], b"")
                    .await
                    .map(|reply| (reply.status, reply.text()))
            }
        });
        let invoke = json_invocation("1", "Echo", json!(["polled"]));
        assert_eq!(request(addr, "POST", &path, &[], invoke.as_bytes()).await?.status, 200);
        let (status, text) = timeout(STEP, pending).await???;
        assert_eq!(status, 200);
        assert!(text.contains("\"result\":\"polled\""), "the poll carried {text:?}");
        // DELETE ends the connection.
        assert_eq!(request(addr, "DELETE", &path, &[], b"").await?.status, 202);
        assert_eq!(
            request(addr, "POST", &path, &[], b"{\"type\":6}\x1e").await?.status,
            404
        );
        drop(proxy);
        stop(node).await;
        Ok(())
    })
    .await
}

/// Waits for the node to report a connection ended.
async fn ended_within(ended: &mut mpsc::Receiver<String>) -> TestResult<String> {
    Ok(timeout(Duration::from_secs(10), ended.recv())
        .await
        .map_err(|_| "the node did not notice the cut within 10 s")?
        .ok_or("the node's hook is gone")?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_closes_websockets_and_event_streams() -> TestResult {
    bounded(async {
        let (node, mut ended) = start_node("node-a").await?;
        let hub = node.hub_context("TestHub").ok_or("no TestHub")?;
        let proxy = RoundRobinProxy::start([node.local_addr()]).await?;
        let hub_url = format!("{}/testhub", proxy.url());

        // A WebSocket through the proxy: cut, the client sees its socket end and the node ends the connection.
        let mut client = TestClient::to(&hub_url).negotiate().await?.connect().await?;
        assert_eq!(client.invoke_ok("Echo", json!(["before"])).await?, json!("before"));
        assert_eq!(hub.local_connection_count(), 1);
        proxy.cut_connections();
        match client.event_within(STEP).await {
            Ok(Some(hubmesh::testing::client::Event::Closed(_))) | Err(_) => {}
            Ok(other) => return Err(format!("the client's socket outlived the cut: {other:?}").into()),
        }
        ended_within(&mut ended).await?;
        assert_eq!(hub.local_connection_count(), 0);

        // The proxy serves new connections after a cut.
        let mut client = TestClient::to(&hub_url).negotiate().await?.connect().await?;
        assert_eq!(client.invoke_ok("Echo", json!(["after"])).await?, json!("after"));
        client.close_socket().await;
        ended_within(&mut ended).await?;

        // An SSE stream through the proxy: cut, and the node ends the connection too.
        let addr = proxy.addr();
        let token = negotiate(addr).await?;
        let path = format!("/testhub?id={token}");
        let (mut events, mut raw) = open_sse(addr, &path).await?;
        let handshake = format!("{{\"protocol\":\"json\",\"version\":1}}{RS}");
        assert_eq!(
            request(addr, "POST", &path, &[], handshake.as_bytes()).await?.status,
            200
        );
        read_until(&mut events, &mut raw, format!("data: {{}}{RS}\n\n").as_bytes()).await?;
        proxy.cut_connections();
        let mut rest = Vec::new();
        let read = timeout(STEP, events.read_to_end(&mut rest)).await?;
        assert!(read.is_err() || rest.is_empty(), "events after the cut: {rest:?}");
        ended_within(&mut ended).await?;
        assert_eq!(hub.local_connection_count(), 0);
        drop(proxy);
        stop(node).await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_with_nothing_listening_is_skipped() -> TestResult {
    bounded(async {
        let (node, _ended) = start_node("node-a").await?;
        let live = node.local_addr();
        let dead = dead_address().await?;
        let proxy = RoundRobinProxy::start([dead, live, dead]).await?;
        let mut client = KeepAliveClient::connect(proxy.addr()).await?;
        for _ in 0..4 {
            let reply = client.get("/_hubmesh/cluster").await?;
            assert_eq!(reply.status, 200, "{}", reply.text());
            assert_eq!(answering_node(&reply)?, "node-a");
        }
        assert_eq!(backends_of(&proxy.take_routes()), [live; 4]);
        // A WebSocket upgrade skips it too.
        let mut ws = TestClient::to(&format!("{}/testhub", proxy.url()))
            .negotiate()
            .await?
            .connect()
            .await?;
        assert_eq!(ws.invoke_ok("Echo", json!(["alive"])).await?, json!("alive"));
        ws.close_socket().await;
        // With no backend answering, the client gets 502 and the connection stays usable.
        proxy.set_backends([dead])?;
        assert_eq!(client.get("/_hubmesh/cluster").await?.status, 502);
        proxy.set_backends([])?;
        assert_eq!(client.get("/_hubmesh/cluster").await?.status, 502);
        proxy.set_backends([dead, live])?;
        assert_eq!(client.get("/_hubmesh/cluster").await?.status, 200);
        drop(proxy);
        stop(node).await;
        Ok(())
    })
    .await
}

/// Many requests at once while a backend refuses (a node that stopped, and a burst of clients reconnecting): each
/// tries every backend at most once from its own place in the rotation, so none gets 502 while one answers.
/// Drawing a place per try let concurrent requests draw the refusing backend each time (the rolling-restart
/// test's failed stateful reconnects).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_requests_skips_a_refusing_backend() -> TestResult {
    bounded(async {
        let (node, _ended) = start_node("node-a").await?;
        let live = node.local_addr();
        let dead = dead_address().await?;
        let proxy = RoundRobinProxy::start([dead, live]).await?;
        const CLIENTS: usize = 64;
        const REQUESTS: usize = 4;
        let clients = (0..CLIENTS).map(|_| async {
            let mut client = KeepAliveClient::connect(proxy.addr()).await?;
            let mut statuses = Vec::new();
            for _ in 0..REQUESTS {
                statuses.push(client.get("/_hubmesh/cluster").await?.status);
            }
            TestResult::Ok(statuses)
        });
        let mut refused = 0;
        for statuses in futures_util::future::join_all(clients).await {
            refused += statuses?.iter().filter(|status| **status != 200).count();
        }
        assert_eq!(refused, 0, "requests of {} answered other than 200", CLIENTS * REQUESTS);
        assert!(backends_of(&proxy.take_routes()).iter().all(|backend| *backend == live));
        drop(proxy);
        stop(node).await;
        Ok(())
    })
    .await
}

/// Upper bound on each `node --test` run of the conformance files through the proxy.
const NODE_TIMEOUT: Duration = Duration::from_secs(600);

/// The conformance files whose endpoints serve every transport: they run over all three (every transport ×
/// protocol combination of the official suite; SSE is JSON only, which `common.mjs` knows), every other
/// `*.test.mjs` over WebSockets, as `tests/official_client.rs` runs them.
const ALL_TRANSPORT_FILES: &[&str] = &[
    "auth.test.mjs",
    "connection.test.mjs",
    "hub-connection.test.mjs",
    "negotiate.test.mjs",
];

/// One `node --test` run: the transports it covers and its files.
type NodeRun = (&'static str, Vec<String>);

/// The `node --test` runs: [`ALL_TRANSPORT_FILES`] over all three transports, the other
/// `*.test.mjs` files of `dir` over WebSockets.
fn conformance_runs(dir: &std::path::Path) -> Result<Vec<NodeRun>, Box<dyn Error>> {
    let mut others = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".test.mjs") && !ALL_TRANSPORT_FILES.contains(&name.as_str()) {
            others.push(name);
        }
    }
    others.sort();
    let all = ALL_TRANSPORT_FILES.iter().map(|file| (*file).to_owned()).collect();
    Ok(vec![
        ("WebSockets,ServerSentEvents,LongPolling", all),
        ("WebSockets", others),
    ])
}

#[test]
fn official_client_conformance_through_the_proxy() -> Result<(), Box<dyn Error>> {
    let version = std::process::Command::new("node").arg("--version").output();
    if !version.is_ok_and(|output| output.status.success()) {
        return Err("Node.js >= 18 is needed to run the official SignalR client through the proxy".into());
    }
    let dir = npm::ensure_installed()?;
    // Three test servers forming one cluster, each request to the next: no stickiness anywhere.
    let server = TestHubCluster::start(3)?;
    let nodes = server.addrs()?;
    // The proxy's own runtime: this test waits on Node synchronously.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let proxy = runtime.block_on(RoundRobinProxy::start(nodes.clone()))?;
    // The raw `/echo` endpoint is upstream's test-only connection handler, not a hub: it is not clustered.
    proxy.pin("/echo", nodes[0]);
    println!(
        "official client through the proxy {} to three clustered test hubs {}",
        proxy.url(),
        server.urls().join(" ")
    );
    let mut failures = Vec::new();
    for (transports, files) in conformance_runs(&dir)? {
        println!("through the proxy over {transports}: {}", files.join(" "));
        // No HTTPS base URL: the proxy speaks plain HTTP, so the HTTPS-only rows are skipped here.
        let mut child = process::own_process_group(
            std::process::Command::new("node")
                .args(["--test", "--test-concurrency=1", "--test-reporter=spec"])
                .args(&files)
                .current_dir(&dir)
                .env("HUBMESH_TEST_URL", proxy.url())
                .env_remove("HUBMESH_TEST_HTTPS_URL")
                .env("HUBMESH_TEST_TRANSPORTS", transports),
        )
        .spawn()?;
        let status = process::wait_bounded(&mut child, NODE_TIMEOUT, "`node --test` through the proxy")?;
        if !status.success() {
            failures.push(format!("over {transports}: {status}"));
        }
    }
    let routes = proxy.take_routes();
    drop(proxy);
    drop(runtime);
    drop(server);
    assert!(
        failures.is_empty(),
        "the official client failed through the proxy ({}); see the node output above",
        failures.join("; ")
    );
    let upgrades = routes.iter().filter(|routed| routed.upgrade).count();
    let per_node: Vec<usize> = nodes
        .iter()
        .map(|node| routes.iter().filter(|routed| routed.backend == *node).count())
        .collect();
    println!(
        "the proxy forwarded {} requests ({per_node:?} per node), {upgrades} of them WebSocket upgrades",
        routes.len()
    );
    assert!(upgrades > 0, "no WebSocket went through the proxy");
    assert!(
        per_node.iter().all(|&count| count > 0),
        "a node got no request: {per_node:?}"
    );
    Ok(())
}
