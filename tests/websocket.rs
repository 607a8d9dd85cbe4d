//! Wire tests of the WebSocket transport: a real node on `127.0.0.1:0`, driven by tokio-tungstenite with
//! hand-written JSON and MessagePack bytes (so they test the codec as much as the connection).
//!
//! Covered (docs/protocol.md, all but SSE, long polling and auth): negotiate, the handshake, every hub message type in
//! both protocols, keep-alive and timeouts, Close in both directions, client results, framing (several records
//! per frame, a record split across frames), and bad input. Every bad-input test checks that only the offending
//! connection ends, with a Close message that says why, while a healthy client on the same node keeps working.
//!
//! Every test is bounded by `tokio::time::timeout`, every read by a step timeout, and every loop by a count.

use std::error::Error;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hubmesh::testing::client::{http_request, varint, Event, Outcome, Protocol, TestClient, TestClientError, STEP};
use hubmesh::{
    Caller, CancellationToken, ClientStream, ConnectionId, Hub, HubContext, HubError, Limits, Node, NodeHandle, State,
    Streamed,
};
use serde_json::{json, Value};
use tokio::time::{timeout, Instant};

type BoxError = Box<dyn Error + Send + Sync>;
type TestResult<T = ()> = Result<T, BoxError>;

/// The bound of a whole test (a few take longer and say so).
const TEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The hub's name and the path it is served at (mapped with mixed case, requested in any case).
const HUB: &str = "wire";
const HUB_PATH: &str = "/wireHub";

// ---------------------------------------------------------------------------------------------------------------
// The test hub
// ---------------------------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Flags {
    /// Set when the `Ticks` stream's cancellation token fires.
    cancelled: Arc<AtomicBool>,
    /// Set when the token of a `Hang` call fires.
    hang_cancelled: Arc<AtomicBool>,
    /// `Watched` calls whose body ran.
    watched_started: Count,
    /// `Watched` calls whose token was cancelled already when their body ran.
    watched_started_cancelled: Arc<AtomicUsize>,
    /// `Watched` calls whose token fired.
    watched_cancelled: Count,
}

/// A counter a test can wait on, with a deadline, until it reaches a value.
#[derive(Clone)]
struct Count(Arc<tokio::sync::watch::Sender<usize>>);

impl Default for Count {
    fn default() -> Count {
        Count(Arc::new(tokio::sync::watch::Sender::new(0)))
    }
}

impl Count {
    fn add_one(&self) {
        self.0.send_modify(|count| *count += 1);
    }

    fn get(&self) -> usize {
        *self.0.borrow()
    }

    /// Whether the count reaches `expected` within `within`.
    async fn reaches(&self, expected: usize, within: Duration) -> bool {
        let mut count = self.0.subscribe();
        timeout(within, count.wait_for(|count| *count >= expected))
            .await
            .is_ok_and(|reached| reached.is_ok())
    }
}

async fn echo(text: String) -> String {
    text
}

async fn add(a: i64, b: i64) -> i64 {
    a + b
}

async fn nothing() {}

async fn fail() -> Result<(), HubError> {
    Err(HubError::hub("boom"))
}

async fn fail_plain() -> Result<i64, HubError> {
    Err(HubError::exception("InvalidOperationException", "secret"))
}

async fn connection_id(caller: Caller) -> String {
    caller.connection_id().as_str().to_owned()
}

async fn counter(count: u32) -> Streamed {
    Streamed::new(futures_util::stream::iter(0..count))
}

async fn ticks(cancel: CancellationToken, State(flags): State<Flags>) -> Streamed {
    tokio::spawn(async move {
        cancel.cancelled().await;
        flags.cancelled.store(true, Ordering::SeqCst);
    });
    Streamed::new(futures_util::stream::unfold(0u64, |n| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Some((n, n + 1))
    }))
}

/// A stream that never yields: counts that its body ran and (on a task of its own, as a method that must react
/// to a cancel does) that its token fired.
async fn watched(cancel: CancellationToken, State(flags): State<Flags>) -> Streamed {
    flags.watched_started.add_one();
    if cancel.is_cancelled() {
        flags.watched_started_cancelled.fetch_add(1, Ordering::SeqCst);
    }
    tokio::spawn(async move {
        cancel.cancelled().await;
        flags.watched_cancelled.add_one();
    });
    Streamed::new(futures_util::stream::pending::<u64>())
}

/// Never answers; its token fires when the call is dropped with its connection.
async fn hang(cancel: CancellationToken, State(flags): State<Flags>) {
    tokio::spawn(async move {
        cancel.cancelled().await;
        flags.hang_cancelled.store(true, Ordering::SeqCst);
    });
    std::future::pending::<()>().await;
}

async fn was_cancelled(State(flags): State<Flags>) -> bool {
    flags.cancelled.load(Ordering::SeqCst)
}

async fn sum(mut items: ClientStream<i64>) -> Result<i64, HubError> {
    let mut total = 0;
    while let Some(item) = items.next().await {
        total += item?;
    }
    Ok(total)
}

async fn ask_client(caller: Caller, question: String) -> Result<String, HubError> {
    caller.clients().caller().invoke::<String, _>("Ask", (question,)).await
}

async fn close_me(caller: Caller, reason: String) {
    caller.handle().close(Some(reason), false);
}

fn wire_hub(flags: Flags) -> Hub {
    Hub::new(HUB)
        .path(HUB_PATH)
        .method("Echo", echo)
        .method("Add", add)
        .method("Nothing", nothing)
        .method("Fail", fail)
        .method("FailPlain", fail_plain)
        .method("ConnectionId", connection_id)
        .method("Counter", counter)
        .method("Ticks", ticks)
        .method("WasCancelled", was_cancelled)
        .method("Watched", watched)
        .method("Hang", hang)
        .method("Sum", sum)
        .method("AskClient", ask_client)
        .method("CloseMe", close_me)
        .with_state(flags)
}

/// Whether `flag` is set within 2 seconds.
async fn becomes_set(flag: &AtomicBool) -> bool {
    for _ in 0..100 {
        if flag.load(Ordering::SeqCst) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    flag.load(Ordering::SeqCst)
}

/// Limits for tests that do not exercise a timer: nothing fires during a test.
fn quiet_limits() -> Limits {
    timers(Duration::from_secs(60), Duration::from_secs(120))
}

/// Limits with these keep-alive interval and client timeout, the rest default.
fn timers(keep_alive: Duration, client_timeout: Duration) -> Limits {
    Limits {
        keep_alive,
        client_timeout,
        ..Limits::default()
    }
}

struct TestNode {
    node: NodeHandle,
    flags: Flags,
}

impl TestNode {
    async fn start(limits: Limits) -> TestResult<TestNode> {
        let flags = Flags::default();
        let node = Node::builder()
            .hub(wire_hub(flags.clone()))
            .listen("127.0.0.1:0")
            .limits(limits)
            .start()
            .await?;
        Ok(TestNode { node, flags })
    }

    fn addr(&self) -> SocketAddr {
        self.node.local_addr()
    }

    /// `ws://127.0.0.1:<port><path_and_query>`.
    fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr(), path_and_query)
    }

    fn context(&self) -> TestResult<HubContext> {
        Ok(self
            .node
            .hub_context(HUB)
            .ok_or("the node has no context for the test hub")?)
    }

    /// A client of `protocol` on the hub path (no negotiate), handshake done.
    async fn client(&self, protocol: Protocol) -> Result<TestClient, TestClientError> {
        TestClient::to(&self.ws_url("/wirehub"))
            .protocol(protocol)
            .connect()
            .await
    }

    /// A socket of `protocol` on the hub path, no handshake yet.
    async fn socket(&self, protocol: Protocol) -> Result<TestClient, TestClientError> {
        TestClient::to(&self.ws_url("/wirehub")).protocol(protocol).open().await
    }

    /// Waits (bounded) until the hub has `expected` connections on this node.
    async fn wait_for_connections(&self, expected: usize, within: Duration) -> TestResult {
        let context = self.context()?;
        let deadline = Instant::now() + within;
        loop {
            let count = context.local_connection_count();
            if count == expected {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("the hub has {count} connection(s), expected {expected}").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the node once the test's clients are gone (callers drop them first). Bounded: how `stop` treats
    /// open connections is the business of `stopping_the_node_closes_connections_with_a_close_message`.
    async fn stop(self) {
        let _ = self.wait_for_connections(0, Duration::from_secs(2)).await;
        let _ = timeout(Duration::from_secs(10), self.node.stop()).await;
    }
}

/// Runs a test body under [`TEST_TIMEOUT`].
async fn bounded<F: Future<Output = TestResult>>(limit: Duration, body: F) -> TestResult {
    timeout(limit, body)
        .await
        .map_err(|_| format!("the test did not finish within {limit:?}"))?
}

/// Runs `body` once per protocol, naming the protocol in any error.
async fn each_protocol<F, Fut>(body: F) -> TestResult
where
    F: Fn(Protocol) -> Fut,
    Fut: Future<Output = TestResult>,
{
    for protocol in Protocol::ALL {
        body(protocol)
            .await
            .map_err(|error| format!("[{}] {error}", protocol.name()))?;
    }
    Ok(())
}

/// Runs `body` against one node started with `limits`, under [`TEST_TIMEOUT`]; stops the node after it.
async fn on_node<F, Fut>(limits: Limits, body: F) -> TestResult
where
    F: FnOnce(Arc<TestNode>) -> Fut,
    Fut: Future<Output = TestResult>,
{
    bounded(TEST_TIMEOUT, async {
        let server = Arc::new(TestNode::start(limits).await?);
        body(server.clone()).await?;
        stop_shared(server).await
    })
    .await
}

/// Runs `body` once per protocol against one node started with `limits`, under [`TEST_TIMEOUT`].
async fn each_protocol_on<F, Fut>(limits: Limits, body: F) -> TestResult
where
    F: Fn(Arc<TestNode>, Protocol) -> Fut,
    Fut: Future<Output = TestResult>,
{
    on_node(limits, |server| async move {
        each_protocol(|protocol| body(server.clone(), protocol)).await
    })
    .await
}

/// As [`each_protocol_on`], beside a healthy client of `healthy_protocol`: after each run the healthy client must
/// still work and be the node's only connection (only the connections the run offended with have ended).
async fn each_protocol_beside_healthy<F, Fut>(limits: Limits, healthy_protocol: Protocol, body: F) -> TestResult
where
    F: Fn(Arc<TestNode>, Protocol) -> Fut,
    Fut: Future<Output = TestResult>,
{
    bounded(TEST_TIMEOUT, async {
        let server = Arc::new(TestNode::start(limits).await?);
        let mut healthy = server.client(healthy_protocol).await?;
        for protocol in Protocol::ALL {
            let run = async {
                body(server.clone(), protocol).await?;
                healthy.assert_healthy().await?;
                server.wait_for_connections(1, STEP).await
            };
            run.await.map_err(|error| format!("[{}] {error}", protocol.name()))?;
        }
        drop(healthy);
        stop_shared(server).await
    })
    .await
}

/// Stops a node the test bodies shared, once they are done with it.
async fn stop_shared(server: Arc<TestNode>) -> TestResult {
    let server = Arc::try_unwrap(server).map_err(|_| "a test body kept the node")?;
    server.stop().await;
    Ok(())
}

/// Checks that `completion` failed with exactly `expected`.
fn check_error(completion: &Value, expected: &str, what: &str) -> TestResult {
    check(completion["error"] == json!(expected), || {
        format!("{what}: {completion}")
    })
}

fn check(condition: bool, what: impl FnOnce() -> String) -> TestResult {
    if condition {
        Ok(())
    } else {
        Err(what().into())
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Negotiate and endpoints (docs/protocol.md#endpoints, #negotiate, #websockets)
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiate_then_websocket_with_the_token() -> TestResult {
    on_node(quiet_limits(), |server| async move {
        let reply = http_request(server.addr(), "POST", "/wirehub/negotiate?negotiateVersion=1", &[]).await?;
        check(reply.status == 200, || {
            format!("negotiate answered {}: {}", reply.status, reply.text())
        })?;
        check(
            reply
                .header("content-type")
                .is_some_and(|kind| kind.starts_with("application/json")),
            || format!("negotiate content type {:?}", reply.header("content-type")),
        )?;
        let body: Value = serde_json::from_slice(&reply.body)?;
        let id = body["connectionId"].as_str().ok_or("no connectionId")?.to_owned();
        let token = body["connectionToken"].as_str().ok_or("no connectionToken")?.to_owned();
        check(!id.is_empty() && !token.is_empty() && id != token, || {
            format!("connectionId and connectionToken must be set and differ: {body}")
        })?;
        check(body["negotiateVersion"] == json!(1), || {
            format!("negotiateVersion: {body}")
        })?;
        check(body.get("ProtocolVersion").is_none(), || {
            "negotiate must never carry ProtocolVersion".into()
        })?;
        let transports = body["availableTransports"].as_array().ok_or("no availableTransports")?;
        let websockets = transports
            .iter()
            .find(|transport| transport["transport"] == json!("WebSockets"))
            .ok_or_else(|| format!("WebSockets is not offered: {body}"))?;
        check(websockets["transferFormats"] == json!(["Text", "Binary"]), || {
            format!("WebSockets formats: {websockets}")
        })?;

        // The token addresses the connection; its public id is what hub code sees.
        let url = server.ws_url(&format!("/wirehub?id={token}"));
        let mut client = TestClient::to(&url).open().await?;
        client.handshake().await?;
        let seen = client.invoke_ok("ConnectionId", json!([])).await?;
        check(seen == json!(id), || {
            format!("Context.ConnectionId is {seen}, negotiate said {id}")
        })?;

        // A second socket for a token with an open socket: 409. An unknown id: 404.
        check(TestClient::to(&url).refused_status().await? == 409, || {
            "a second WebSocket for one token must get 409".into()
        })?;
        let unknown = server.ws_url("/wirehub?id=no-such-token");
        check(TestClient::to(&unknown).refused_status().await? == 404, || {
            "an unknown id must get 404".into()
        })?;
        // Addressing the connection by its public id must not work either.
        let by_id = server.ws_url(&format!("/wirehub?id={id}"));
        check(TestClient::to(&by_id).refused_status().await? == 404, || {
            "the public connectionId must not address it".into()
        })?;
        client.assert_healthy().await?;

        // Once the connection has ended, its token is gone (docs/protocol.md#finished-connections).
        client.send_close_message().await?;
        client.expect_ws_close().await?;
        let mut status = 0;
        for _ in 0..100 {
            status = TestClient::to(&url).refused_status().await?;
            if status == 404 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        check(status == 404, || {
            format!("a finished connection's token got {status}, not 404")
        })?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_paths_are_case_insensitive_and_negotiate_v0_uses_the_id() -> TestResult {
    on_node(quiet_limits(), |server| async move {
        let reply = http_request(server.addr(), "POST", "/WIREHUB/Negotiate?negotiateVersion=1", &[]).await?;
        check(reply.status == 200, || {
            format!("upper-case negotiate answered {}", reply.status)
        })?;
        let body: Value = serde_json::from_slice(&reply.body)?;
        let token = body["connectionToken"].as_str().ok_or("no connectionToken")?.to_owned();
        let mut client = TestClient::to(&server.ws_url(&format!("/WireHub?id={token}")))
            .protocol(Protocol::MessagePack)
            .open()
            .await?;
        client.handshake().await?;
        client.assert_healthy().await?;

        // Version 0 (no negotiateVersion): no token; the client uses the connectionId as id.
        let reply = http_request(server.addr(), "POST", "/wirehub/negotiate", &[]).await?;
        check(reply.status == 200, || {
            format!("v0 negotiate answered {}", reply.status)
        })?;
        let body: Value = serde_json::from_slice(&reply.body)?;
        check(body.get("connectionToken").is_none(), || {
            format!("a v0 negotiate has no token: {body}")
        })?;
        let id = body["connectionId"].as_str().ok_or("no connectionId")?.to_owned();
        let mut old = TestClient::to(&server.ws_url(&format!("/wirehub?id={id}")))
            .protocol(Protocol::Json)
            .open()
            .await?;
        old.handshake().await?;
        let seen = old.invoke_ok("ConnectionId", json!([])).await?;
        check(seen == json!(id), || {
            format!("v0 connection id {seen}, negotiated {id}")
        })?;

        // Unknown hub paths are 404.
        let reply = http_request(server.addr(), "POST", "/nohub/negotiate?negotiateVersion=1", &[]).await?;
        check(reply.status == 404, || {
            format!("negotiate on an unknown path answered {}", reply.status)
        })?;
        check(
            TestClient::to(&server.ws_url("/nohub")).refused_status().await? == 404,
            || "an unknown hub path must get 404".into(),
        )?;
        client.assert_healthy().await?;
        old.assert_healthy().await?;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------------
// Handshake (docs/protocol.md#handshake)
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_then_messages_in_both_protocols() -> TestResult {
    each_protocol_on(quiet_limits(), |server, protocol| async move {
        for version in [1, 2] {
            let mut client = server.socket(protocol).await?;
            client.send_frame(protocol.handshake(version)).await?;
            let response = client.handshake_response().await?;
            check(response == json!({}), || {
                format!("version {version} refused: {response}")
            })?;
            // The response is complete within one transport message, and exactly `{}` RS.
            let first = client.first_frame().unwrap_or_default().to_vec();
            check(first == b"{}\x1e", || format!("the handshake frame was {first:02x?}"))?;
            // Like the JS client: a Ping right after the handshake; the server does not answer Pings.
            client.send_ping().await?;
            let result = client.invoke_ok("Echo", json!(["hello"])).await?;
            check(result == json!("hello"), || format!("Echo returned {result}"))?;
            client.assert_frame_kinds()?;
        }

        // Byte-exact: MessagePack [3, {}, "1", 3, "hello"]; JSON exactly the Completion's three keys.
        let mut client = server.client(protocol).await?;
        client.send_invocation_with_id("1", "Echo", json!(["hello"])).await?;
        let record = client.completion("1").await?;
        if protocol == Protocol::MessagePack {
            let expected = [0x95, 0x03, 0x80, 0xa1, b'1', 0x03, 0xa5, b'h', b'e', b'l', b'l', b'o'];
            check(record.raw == expected, || {
                format!("completion bytes {:02x?}", record.raw)
            })?;
        } else {
            let expected = json!({ "type": 3, "invocationId": "1", "result": "hello" });
            check(record.value == expected, || format!("completion {}", record.value))?;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_handshakes_get_an_error_and_a_clean_close() -> TestResult {
    on_node(quiet_limits(), |server| async move {
        let mut healthy = server.client(Protocol::Json).await?;
        let cases: [(&str, &[u8], Option<&str>); 6] = [
            ("malformed JSON", b"{\"protocol\":\x1e", None),
            ("not an object", b"[1,2]\x1e", None),
            ("a hub message first", b"{\"type\":6}\x1e", None),
            (
                "unknown protocol",
                b"{\"protocol\":\"xml\",\"version\":1}\x1e",
                Some("The protocol 'xml' is not supported."),
            ),
            (
                "unsupported version",
                b"{\"protocol\":\"json\",\"version\":3}\x1e",
                Some("The server does not support version 3 of the 'json' protocol."),
            ),
            (
                "unsupported msgpack version",
                b"{\"protocol\":\"messagepack\",\"version\":99}\x1e",
                Some("The server does not support version 99 of the 'messagepack' protocol."),
            ),
        ];
        for (name, request, expected) in cases {
            let mut client = server.socket(Protocol::Json).await?;
            client.send_text_frame(request.to_vec()).await?;
            let response = client
                .handshake_response()
                .await
                .map_err(|error| format!("{name}: {error}"))?;
            let error = response["error"].as_str().unwrap_or_default();
            check(!error.is_empty() && error.is_ascii(), || {
                format!("{name}: response {response}")
            })?;
            check(response.get("type").is_none(), || {
                format!("{name}: a `type` key in {response}")
            })?;
            if let Some(expected) = expected {
                check(error == expected, || {
                    format!("{name}: error {error:?}, expected {expected:?}")
                })?;
            }
            let code = client.expect_ws_close().await?;
            check(code == Some(1000), || format!("{name}: closed with {code:?}, not 1000"))?;
            healthy
                .assert_healthy()
                .await
                .map_err(|error| format!("after {name}: {error}"))?;
        }
        server.wait_for_connections(1, STEP).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_closes_only_that_socket() -> TestResult {
    let limits = Limits {
        handshake_timeout: Duration::from_millis(400),
        ..quiet_limits()
    };
    on_node(limits, |server| async move {
        let mut healthy = server.client(Protocol::MessagePack).await?;
        // One sends nothing; one sends half a handshake.
        let started = Instant::now();
        let mut silent = server.socket(Protocol::Json).await?;
        let mut partial = server.socket(Protocol::Json).await?;
        partial.send_text_frame(b"{\"protocol\":\"json\"".to_vec()).await?;
        for (name, client) in [("silent", &mut silent), ("partial", &mut partial)] {
            let code = client
                .expect_ws_close()
                .await
                .map_err(|error| format!("{name}: {error}"))?;
            let elapsed = started.elapsed();
            check(code == Some(1000), || format!("{name}: closed with {code:?}"))?;
            check(elapsed >= Duration::from_millis(300), || {
                format!("{name}: closed after only {elapsed:?}")
            })?;
            check(client.text_frames() + client.binary_frames() == 0, || {
                format!("{name}: got data before the handshake: {:?}", client.first_frame())
            })?;
        }
        healthy.assert_healthy().await?;
        server.wait_for_connections(1, STEP).await?;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------------
// RPC (docs/protocol.md#json-hub-protocol, #messagepack-hub-protocol, #invocations)
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invocations_complete_with_value_void_and_error() -> TestResult {
    each_protocol_on(quiet_limits(), |server, protocol| async move {
        let mut client = server.client(protocol).await?;
        let sum = client.invoke("Add", json!([2, 3])).await?;
        check(sum == json!({ "type": 3, "invocationId": "1", "result": 5 }), || {
            format!("Add: {sum}")
        })?;

        // Void: no result at all (MessagePack kind 2, checked to be 4 elements by the reader).
        let void = client.invoke("Nothing", json!([])).await?;
        check(void == json!({ "type": 3, "invocationId": "2" }), || {
            format!("Nothing: {void}")
        })?;

        // Method names are case-insensitive.
        let echoed = client.invoke_ok("eCHo", json!(["x"])).await?;
        check(echoed == json!("x"), || format!("eCHo: {echoed}"))?;

        let failed = client.invoke("Fail", json!([])).await?;
        let expected = "An unexpected error occurred invoking 'Fail' on the server. HubException: boom";
        check_error(&failed, expected, "Fail")?;
        check(failed.get("result").is_none(), || {
            format!("an error with a result: {failed}")
        })?;

        // Not a HubException and no detailed errors: the type and message stay on the server.
        let failed = client.invoke("FailPlain", json!([])).await?;
        let expected = "An unexpected error occurred invoking 'FailPlain' on the server.";
        check_error(&failed, expected, "FailPlain")?;

        // Without an id nothing comes back, not even for an error or an unknown method.
        client.send_invocation("Echo", json!(["quiet"])).await?;
        client.send_invocation("Fail", json!([])).await?;
        client.send_invocation("NoSuchMethod", json!([])).await?;
        if protocol == Protocol::MessagePack {
            // An empty id is non-blocking too.
            client.send_invocation_with_id("", "Fail", json!([])).await?;
        }
        let after = client.invoke("Add", json!([1, 1])).await?;
        check(after["result"] == json!(2), || {
            format!("the next record was not Add's: {after}")
        })?;
        Ok(client.assert_frame_kinds()?)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_to_client_streams() -> TestResult {
    each_protocol_on(quiet_limits(), |server, protocol| async move {
        let mut client = server.client(protocol).await?;
        client.send_stream_invocation("7", "Counter", json!([3])).await?;
        for expected in 0..3 {
            let item = client.record().await?;
            check(
                item.value == json!({ "type": 2, "invocationId": "7", "item": expected }),
                || format!("item {expected}: {}", item.value),
            )?;
        }
        let end = client.completion("7").await?;
        check(end.value == json!({ "type": 3, "invocationId": "7" }), || {
            format!("a stream's Completion carries no result: {}", end.value)
        })?;

        // An empty stream: just the Completion.
        client.send_stream_invocation("8", "Counter", json!([0])).await?;
        let end = client.completion("8").await?;
        check(
            end.value.get("result").is_none() && end.value.get("error").is_none(),
            || format!("empty stream end: {}", end.value),
        )?;

        // Streaming method with Invoke, and a plain method with StreamInvocation.
        let wrong = client.invoke("Counter", json!([3])).await?;
        let expected = "The client attempted to invoke the streaming 'Counter' method with a non-streaming invocation.";
        check_error(&wrong, expected, "Counter via invoke")?;
        client.send_stream_invocation("9", "Echo", json!(["x"])).await?;
        let wrong = client.completion("9").await?;
        let expected = "The client attempted to invoke the non-streaming 'Echo' method with a streaming invocation.";
        check_error(&wrong.value, expected, "Echo via stream")?;
        Ok(client.assert_healthy().await?)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_invocation_stops_a_stream() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        for protocol in [Protocol::Json, Protocol::MessagePack] {
            // One node per protocol: the cancellation flag is the hub's.
            let server = TestNode::start(quiet_limits()).await?;
            let mut client = server.client(protocol).await?;
            client.send_stream_invocation("s1", "Ticks", json!([])).await?;
            for _ in 0..3 {
                let item = client.record().await?;
                check(item.kind() == 2 && item.id() == Some("s1"), || {
                    format!("tick: {}", item.value)
                })?;
            }
            client.send_frame(protocol.cancel("s1")).await?;

            // The method's cancellation token fires.
            let cancelled = becomes_set(&server.flags.cancelled).await;
            check(cancelled, || {
                format!("[{}] the stream's token was not cancelled", protocol.name())
            })?;

            // Items in flight may still arrive, then a Completion at most; then nothing more for s1.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut drained = 0;
            while let Some(event) = client.event_within(Duration::from_millis(100)).await? {
                drained += 1;
                check(drained < 100, || "the stream keeps going after CancelInvocation".into())?;
                if let Event::Closed(code) = event {
                    return Err(format!("the connection closed after a cancel ({code:?})").into());
                }
            }
            if let Some(Event::Record(record)) = client.event_within(Duration::from_millis(400)).await? {
                return Err(format!("[{}] after cancel: {}", protocol.name(), record.value).into());
            }
            let was = client.invoke_ok("WasCancelled", json!([])).await?;
            check(was == json!(true), || format!("WasCancelled: {was}"))?;
            drop(client);
            server.stop().await;
        }
        Ok(())
    })
    .await
}

/// A StreamInvocation and its CancelInvocation in one WebSocket message, as a client that cancels at once may
/// send them: the method still runs (ASP.NET starts it, then cancels its token), sees its token fire, and the
/// client gets the stream's Completion, without an error, as ASP.NET sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_cancelled_in_the_same_frame_still_runs_its_method() -> TestResult {
    const ROUNDS: usize = 200;
    bounded(TEST_TIMEOUT, async {
        for protocol in Protocol::ALL {
            let name = protocol.name();
            // One node per protocol: the counters are the hub's.
            let server = TestNode::start(quiet_limits()).await?;
            let flags = server.flags.clone();
            let mut client = server.client(protocol).await?;
            for round in 0..ROUNDS {
                let id = format!("w{round}");
                let mut frame = protocol.stream_invocation(&id, "Watched", json!([]));
                frame.extend(protocol.cancel(&id));
                client.send_frame(frame).await?;
            }
            let started = flags.watched_started.reaches(ROUNDS, STEP).await;
            check(started, || {
                format!(
                    "[{name}] {} of {ROUNDS} cancelled stream invocations ran their method",
                    flags.watched_started.get()
                )
            })?;
            let cancelled = flags.watched_cancelled.reaches(ROUNDS, STEP).await;
            check(cancelled, || {
                format!(
                    "[{name}] {} of {ROUNDS} started methods saw their token fire",
                    flags.watched_cancelled.get()
                )
            })?;
            let early = flags.watched_started_cancelled.load(Ordering::SeqCst);
            check(early == 0, || {
                format!("[{name}] {early} of {ROUNDS} methods started with their token cancelled already")
            })?;
            // One Completion per stream, without an error, in order; nothing else.
            for round in 0..ROUNDS {
                let id = format!("w{round}");
                let completion = client
                    .completion(&id)
                    .await
                    .map_err(|error| format!("[{name}] {error}"))?;
                check(completion.value.get("error").is_none_or(Value::is_null), || {
                    format!("[{name}] a cancelled stream ended with {}", completion.value)
                })?;
            }
            client.assert_healthy().await?;
            if let Some(record) = client.record_within(Duration::from_millis(100)).await? {
                return Err(format!("[{name}] after the cancelled streams: {}", record.value).into());
            }
            drop(client);
            server.stop().await;
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_calls_token_fires_when_its_connection_ends() -> TestResult {
    on_node(quiet_limits(), |server| async move {
        let mut client = server.client(Protocol::Json).await?;
        client.send_invocation_with_id("1", "Hang", json!([])).await?;
        // Queued behind the hanging call (invocations run one at a time): dropped unanswered as well.
        client.send_invocation_with_id("2", "Echo", json!(["x"])).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        check(!server.flags.hang_cancelled.load(Ordering::SeqCst), || {
            "the token fired while the call was running".into()
        })?;
        client.send_close_message().await?;
        drop(client);
        let cancelled = becomes_set(&server.flags.hang_cancelled).await;
        check(cancelled, || {
            "the hanging call's token did not fire when its connection ended".into()
        })?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_to_server_streams() -> TestResult {
    each_protocol_on(quiet_limits(), |server, protocol| async move {
        let mut client = server.client(protocol).await?;
        // As the JS client numbers them: the stream id is taken before the invocation id.
        client
            .send_frame(protocol.invocation(Some("1"), "Sum", json!([]), &["0"]))
            .await?;
        for item in [1, 2, 39] {
            client.send_frame(protocol.stream_item("0", json!(item))).await?;
        }
        client.send_frame(protocol.completion("0", Outcome::Void)).await?;
        let total = client.completion("1").await?;
        check(total.value["result"] == json!(42), || format!("Sum: {}", total.value))?;

        // A client-side error ends the upload and fails the method as a HubException.
        client
            .send_frame(protocol.invocation(Some("3"), "Sum", json!([]), &["2"]))
            .await?;
        client.send_frame(protocol.stream_item("2", json!(5))).await?;
        client
            .send_frame(protocol.completion("2", Outcome::Error("Something bad")))
            .await?;
        let failed = client.completion("3").await?;
        let expected = "An unexpected error occurred invoking 'Sum' on the server. HubException: Something bad";
        check_error(&failed.value, expected, "Sum with error")?;

        // A plain method given a stream: a binding error, and the connection goes on.
        client
            .send_frame(protocol.invocation(Some("5"), "Echo", json!(["x"]), &["4"]))
            .await?;
        let failed = client.completion("5").await?;
        let expected = "Failed to invoke 'Echo' due to an error on the server.";
        check_error(&failed.value, expected, "Echo with a stream")?;
        Ok(client.assert_healthy().await?)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_results_route_the_answer_back() -> TestResult {
    each_protocol_on(quiet_limits(), |server, protocol| async move {
        let mut client = server.client(protocol).await?;
        for (answer, expected) in [
            (Outcome::Result(json!("forty-two")), json!({ "result": "forty-two" })),
            (
                Outcome::Error("Error: from callback"),
                json!({ "error": "An unexpected error occurred invoking 'AskClient' on the server." }),
            ),
        ] {
            let id = client.next_invocation_id();
            client
                .send_invocation_with_id(&id, "AskClient", json!(["question"]))
                .await?;
            let ask = client.record().await?;
            check(ask.kind() == 1, || {
                format!("expected the server's Invocation, got {}", ask.value)
            })?;
            check(ask.value["target"] == json!("Ask"), || format!("target: {}", ask.value))?;
            check(ask.value["arguments"] == json!(["question"]), || {
                format!("arguments: {}", ask.value)
            })?;
            let server_id = ask.id().unwrap_or_default().to_owned();
            check(!server_id.is_empty(), || {
                format!("a client-result Invocation needs an id: {}", ask.value)
            })?;
            client.send_frame(protocol.completion(&server_id, answer)).await?;
            let done = client.completion(&id).await?;
            for (key, value) in expected.as_object().into_iter().flatten() {
                check(done.value.get(key) == Some(value), || {
                    format!("AskClient: {}", done.value)
                })?;
            }
        }
        Ok(client.assert_healthy().await?)
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------------
// Ping, Close, keep-alive and timeouts (docs/protocol.md#keep-alive-and-timeouts, #close-from-the-server)
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_pings_an_idle_client_and_client_pings_are_accepted() -> TestResult {
    each_protocol_on(
        timers(Duration::from_millis(200), Duration::from_secs(10)),
        |server, protocol| async move {
            let mut client = server.client(protocol).await?;
            let started = Instant::now();
            let Some(Event::Record(ping)) = client.event_within(Duration::from_secs(2)).await? else {
                return Err("no keep-alive Ping within 2 s (keep_alive is 200 ms)".into());
            };
            check(ping.kind() == 6, || format!("expected a Ping, got {}", ping.value))?;
            check(started.elapsed() >= Duration::from_millis(100), || {
                "the Ping came too early".into()
            })?;
            // Pings keep coming while the client only sends Pings of its own.
            let mut pings = 0;
            for _ in 0..8 {
                client.send_ping().await?;
                if let Some(Event::Record(record)) = client.event_within(Duration::from_millis(150)).await? {
                    check(record.kind() == 6, || format!("unexpected {}", record.value))?;
                    pings += 1;
                }
            }
            check(pings >= 2, || format!("only {pings} keep-alive Pings in 1.2 s"))?;
            client.assert_healthy().await?;
            Ok(client.assert_frame_kinds()?)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_timeout_closes_a_silent_client_only() -> TestResult {
    each_protocol_on(
        timers(Duration::from_millis(150), Duration::from_millis(800)),
        |server, protocol| async move {
            let mut healthy = server.client(Protocol::Json).await?;
            let mut silent = server.client(protocol).await?;
            let started = Instant::now();
            let mut pings = 0;
            let mut close = None;
            for _ in 0..40 {
                // The healthy client talks (a Ping) more often than the timeout; the silent one never.
                healthy.send_ping().await?;
                match silent.event_within(Duration::from_millis(100)).await? {
                    None => {}
                    Some(Event::Record(record)) if record.kind() == 6 => pings += 1,
                    Some(Event::Record(record)) if record.kind() == 7 => {
                        close = Some(record.value);
                        break;
                    }
                    Some(other) => return Err(format!("unexpected {other:?}").into()),
                }
            }
            let elapsed = started.elapsed();
            let close = close.ok_or("the silent client was never closed")?;
            check(elapsed >= Duration::from_millis(600), || {
                format!("closed after only {elapsed:?}")
            })?;
            check(pings >= 2, || {
                format!("only {pings} keep-alive Pings before the timeout")
            })?;
            let error = close["error"].as_str().unwrap_or_default();
            check(error.to_ascii_lowercase().contains("timeout"), || {
                format!("the Close does not say why: {close}")
            })?;
            let code = silent.expect_ws_close().await?;
            check(code == Some(1000), || format!("closed with {code:?}"))?;
            healthy.assert_healthy().await?;
            server.wait_for_connections(1, STEP).await
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_message_from_the_client_ends_with_1000() -> TestResult {
    each_protocol_beside_healthy(quiet_limits(), Protocol::MessagePack, |server, protocol| async move {
        let mut client = server.client(protocol).await?;
        client.assert_healthy().await?;
        server.wait_for_connections(2, STEP).await?;
        client.send_close_message().await?;
        let code = client.expect_ws_close().await?;
        check(code == Some(1000), || format!("closed with {code:?}"))?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_message_from_the_server_then_1000() -> TestResult {
    each_protocol_beside_healthy(quiet_limits(), Protocol::Json, |server, protocol| async move {
        let mut client = server.client(protocol).await?;
        client.send_invocation("CloseMe", json!(["bye"])).await?;
        let close = client.expect_close_message().await?;
        check(close["error"] == json!("bye"), || format!("Close: {close}"))?;
        check(
            close.get("allowReconnect").is_none_or(|allow| *allow == json!(false)),
            || format!("Close allows a reconnect: {close}"),
        )?;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------------
// Framing (docs/protocol.md#many-records-per-message, #whole-records-per-message, #messagepack-framing)
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_records_in_one_frame() -> TestResult {
    each_protocol_on(quiet_limits(), |server, protocol| async move {
        // The handshake, a Ping, two invocations and a whole upload, all in one WebSocket message.
        let mut client = server.socket(protocol).await?;
        let mut frame = protocol.handshake(1);
        frame.extend(protocol.ping());
        frame.extend(protocol.invocation(Some("1"), "Add", json!([1, 2]), &[]));
        frame.extend(protocol.invocation(Some("2"), "Echo", json!(["two"]), &[]));
        frame.extend(protocol.invocation(Some("4"), "Sum", json!([]), &["3"]));
        frame.extend(protocol.stream_item("3", json!(10)));
        frame.extend(protocol.stream_item("3", json!(20)));
        frame.extend(protocol.completion("3", Outcome::Void));
        client.send_frame(frame).await?;
        let response = client.handshake_response().await?;
        check(response == json!({}), || format!("handshake: {response}"))?;
        let one = client.completion("1").await?;
        check(one.value["result"] == json!(3), || format!("Add: {}", one.value))?;
        let two = client.completion("2").await?;
        check(two.value["result"] == json!("two"), || format!("Echo: {}", two.value))?;
        let four = client.completion("4").await?;
        check(four.value["result"] == json!(30), || format!("Sum: {}", four.value))?;
        Ok(client.assert_healthy().await?)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_split_across_frames() -> TestResult {
    each_protocol_on(quiet_limits(), |server, protocol| async move {
        let mut client = server.client(protocol).await?;
        let text = "split ".repeat(40);
        // Across two WebSocket messages, cut inside the record (and for MessagePack right after the
        // length prefix too).
        let record = protocol.invocation(Some("1"), "Echo", json!([text]), &[]);
        let cuts = match protocol {
            Protocol::Json => vec![record.len() / 2],
            Protocol::MessagePack => vec![1, 2, record.len() / 2],
        };
        let mut id: u64 = 0;
        for cut in cuts {
            id += 1;
            let record = protocol.invocation(Some(&id.to_string()), "Echo", json!([text]), &[]);
            let (head, tail) = record.split_at(cut);
            client.send_frame(head.to_vec()).await?;
            // Nothing may come back for half a record.
            if let Some(event) = client.event_within(Duration::from_millis(100)).await? {
                return Err(format!("a reply to half a record: {event:?}").into());
            }
            client.send_frame(tail.to_vec()).await?;
            let done = client.completion(&id.to_string()).await?;
            check(done.value["result"] == json!(text), || {
                format!("split at {cut}: {}", done.value)
            })?;
        }
        // One WebSocket message in two fragments (a continuation frame).
        id += 1;
        let record = protocol.invocation(Some(&id.to_string()), "Echo", json!([text]), &[]);
        let half = record.len() / 2;
        client.send_fragmented(record, half).await?;
        let done = client.completion(&id.to_string()).await?;
        check(done.value["result"] == json!(text), || {
            format!("fragmented: {}", done.value)
        })?;
        client.invocation_ids_used_up_to(id);
        Ok(client.assert_healthy().await?)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_frame_kind_is_accepted_and_replies_keep_the_protocols_kind() -> TestResult {
    // docs/protocol.md does not reject a frame of the other kind (ASP.NET reads both into one pipe), so neither does
    // hubmesh; it always sends Text for JSON and Binary for MessagePack (docs/protocol.md#websocket-frame-types).
    on_node(quiet_limits(), |server| async move {
        let mut json_client = server.client(Protocol::Json).await?;
        let invocation = Protocol::Json.invocation(Some("1"), "Echo", json!(["in binary"]), &[]);
        json_client.send_binary_frame(invocation).await?;
        let done = json_client.completion("1").await?;
        check(done.value["result"] == json!("in binary"), || format!("{}", done.value))?;
        json_client.invocation_ids_used_up_to(1);
        json_client.assert_healthy().await?;
        json_client.assert_frame_kinds()?;

        // (MessagePack records always start with an array marker, never valid UTF-8, so they cannot travel in a
        // Text frame at all.)
        let mut msgpack_client = server.client(Protocol::MessagePack).await?;
        msgpack_client.assert_healthy().await?;
        msgpack_client.assert_frame_kinds()?;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------------
// Bad input: only the offending connection ends, with a Close message that says why
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_types_are_ignored() -> TestResult {
    each_protocol_on(quiet_limits(), |server, protocol| async move {
        let mut client = server.client(protocol).await?;
        let unknown = protocol.record(json!({ "type": 99, "foo": 1 }), json!([99, {}, "foo"]));
        client.send_frame(unknown).await?;
        // Ack and Sequence without stateful reconnect carry nothing to act on either.
        for kind in [8, 9] {
            let record = protocol.record(json!({ "type": kind, "sequenceId": 1 }), json!([kind, 1]));
            client.send_frame(record).await?;
        }
        Ok(client.assert_healthy().await?)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_methods_and_bad_arguments_fail_the_call_not_the_connection() -> TestResult {
    each_protocol_on(quiet_limits(), |server, protocol| async move {
        let mut client = server.client(protocol).await?;
        let unknown = client.invoke("NoSuchMethod", json!([1])).await?;
        let expected =
            "Failed to invoke 'NoSuchMethod' due to an error on the server. HubException: Method does not exist.";
        check_error(&unknown, expected, "unknown method")?;
        let binding = "Failed to invoke 'Add' due to an error on the server.";
        for args in [json!([1]), json!([1, 2, 3]), json!(["a", "b"]), json!([])] {
            let wrong = client.invoke("Add", args.clone()).await?;
            check_error(&wrong, binding, &format!("Add{args}"))?;
        }
        Ok(client.assert_healthy().await?)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_close_only_that_connection() -> TestResult {
    let limits = Limits {
        max_message: 1024,
        ..quiet_limits()
    };
    each_protocol_beside_healthy(limits, Protocol::Json, |server, protocol| async move {
        // Just under the limit works.
        let mut client = server.client(protocol).await?;
        let fits = "a".repeat(900);
        let echoed = client.invoke_ok("Echo", json!([fits])).await?;
        check(echoed == json!(fits), || "a message under the limit failed".into())?;

        // A whole record over the limit.
        let big = protocol.invocation(Some("9"), "Echo", json!(["b".repeat(2000)]), &[]);
        client.send_frame(big).await?;
        let error = client.expect_close_error().await?;
        check(error.contains("maximum message size"), || {
            format!("Close says: {error}")
        })?;

        // Part of a record that is already over the limit (no end, or a prefix announcing too much).
        let mut client = server.client(protocol).await?;
        let partial = match protocol {
            Protocol::Json => {
                format!("{{\"type\":1,\"target\":\"Echo\",\"arguments\":[\"{}", "c".repeat(2000)).into_bytes()
            }
            Protocol::MessagePack => {
                let mut prefix = Vec::new();
                varint(1_000_000, &mut prefix);
                prefix.extend_from_slice(&[0x95, 0x01, 0x80]);
                prefix
            }
        };
        client.send_frame(partial).await?;
        let error = client.expect_close_error().await?;
        check(error.contains("maximum message size"), || {
            format!("Close says: {error}")
        })?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_frames_over_max_frame_close_only_that_connection() -> TestResult {
    let limits = Limits {
        max_frame: 4096,
        max_message: 1024,
        ..quiet_limits()
    };
    each_protocol_beside_healthy(limits, Protocol::MessagePack, |server, protocol| async move {
        let mut client = server.client(protocol).await?;
        // Many small, valid records in one WebSocket message bigger than max_frame.
        let mut frame = Vec::new();
        for _ in 0..2000 {
            frame.extend(protocol.ping());
        }
        client.send_frame(frame).await?;
        match client.event().await? {
            Event::Record(record) if record.kind() == 7 => {
                let error = record.value["error"].as_str().unwrap_or_default().to_owned();
                check(!error.is_empty(), || {
                    format!("a Close that does not say why: {}", record.value)
                })?;
                client.expect_ws_close().await?;
            }
            Event::Closed(code) => {
                // A WebSocket-level refusal (1009 Message Too Big) is fine too.
                check(
                    code.is_some_and(|code| code == 1009 || code == 1000 || code == 1002),
                    || format!("closed with {code:?}"),
                )?;
            }
            Event::Record(record) => return Err(format!("unexpected {}", record.value).into()),
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_records_close_only_that_connection() -> TestResult {
    on_node(quiet_limits(), |server| async move {
        let mut healthy = server.client(Protocol::Json).await?;
        let json_cases: Vec<(&str, Vec<u8>)> = vec![
            ("not JSON", b"{bad\x1e".to_vec()),
            ("not an object", b"[1,2]\x1e".to_vec()),
            ("a string type", b"{\"type\":\"x\"}\x1e".to_vec()),
            ("no type", b"{\"target\":\"Echo\"}\x1e".to_vec()),
            (
                "an invocation without target",
                b"{\"type\":1,\"invocationId\":\"1\",\"arguments\":[]}\x1e".to_vec(),
            ),
            (
                "arguments not an array",
                b"{\"type\":1,\"target\":\"Echo\",\"arguments\":5}\x1e".to_vec(),
            ),
            ("a stream item without id", b"{\"type\":2,\"item\":1}\x1e".to_vec()),
            ("a cancel without id", b"{\"type\":5}\x1e".to_vec()),
        ];
        let msgpack_cases: Vec<(&str, Vec<u8>)> = vec![
            ("a never-used byte", vec![0x01, 0xc1]),
            ("a string, not an array", vec![0x04, 0xa3, b'a', b'b', b'c']),
            ("an empty array", vec![0x01, 0x90]),
            ("a string type", vec![0x03, 0x91, 0xa1, b'x']),
            ("an invocation of one element", vec![0x02, 0x91, 0x01]),
            ("truncated inside the body", vec![0x03, 0x95, 0x01, 0x80]),
            ("a varint of six bytes", vec![0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0x90]),
            ("a varint over 2 GB", vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x90]),
            ("a zero-length record", vec![0x00]),
        ];
        for (protocol, cases) in [(Protocol::Json, json_cases), (Protocol::MessagePack, msgpack_cases)] {
            for (name, bytes) in cases {
                let context = |error: TestClientError| format!("[{}] {name}: {error}", protocol.name());
                let mut client = server.client(protocol).await.map_err(context)?;
                client.send_frame(bytes).await.map_err(context)?;
                let error = client.expect_close_error().await.map_err(context)?;
                check(error.starts_with("Connection closed with an error."), || {
                    format!("[{}] {name}: Close says {error:?}", protocol.name())
                })?;
                healthy.assert_healthy().await.map_err(context)?;
            }
        }
        server.wait_for_connections(1, STEP).await?;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------------
// Slow consumers (the outbound policy)
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_dropped_while_others_get_everything() -> TestResult {
    // As fast as the healthy client reads: the slow client's mailbox overflows before its socket fills.
    slow_consumer_flood(None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_socket_does_not_keep_a_slow_consumer_alive() -> TestResult {
    // Paced: the slow connection drains its mailbox into the socket until the socket (kernel buffers and the
    // WebSocket writer's queue) is full and its write waits; only then does the mailbox overflow.
    slow_consumer_flood(Some(Duration::from_millis(2))).await
}

/// Floods every client of a node with 1000 broadcasts of 32 KB (about 32 MB, more than loopback socket buffers
/// hold) while one client reads everything and another reads nothing. `pause` paces the flood.
async fn slow_consumer_flood(pause: Option<Duration>) -> TestResult {
    bounded(Duration::from_secs(120), async {
        const FLOOD: u64 = 1000;
        const WINDOW: u64 = 8;
        let limits = Limits {
            outbound_queue: 16,
            ..quiet_limits()
        };
        let server = TestNode::start(limits).await?;
        let context = server.context()?;
        let mut slow = server.client(Protocol::Json).await?;
        let healthy = server.client(Protocol::MessagePack).await?;
        server.wait_for_connections(2, STEP).await?;

        // The healthy client reads everything, in order, and reports its progress.
        let (progress, mut progress_seen) = tokio::sync::watch::channel(0u64);
        let reader = tokio::spawn(async move {
            let mut healthy = healthy;
            let mut next = 0u64;
            while next < FLOOD {
                let record = healthy.record().await?;
                check(record.kind() == 1 && record.value["target"] == json!("flood"), || {
                    format!("healthy client got {}", record.value)
                })?;
                let index = record.value["arguments"][0].as_u64();
                check(index == Some(next), || {
                    format!("healthy client got item {index:?}, expected {next}")
                })?;
                next += 1;
                let _ = progress.send(next);
            }
            Ok::<TestClient, BoxError>(healthy)
        });

        // A broadcast flood from outside any hub method, paced by the healthy reader (so only a client that
        // does not read can fall behind); the slow client reads nothing at all.
        let payload = "x".repeat(32 * 1024);
        for index in 0..FLOOD {
            // (The watch guard is dropped at the end of this statement, before anything else awaits.)
            let paced = matches!(
                timeout(STEP, progress_seen.wait_for(|received| *received + WINDOW > index)).await,
                Ok(Ok(_))
            );
            if !paced {
                let why = match timeout(STEP, reader).await {
                    Ok(Ok(Err(error))) => error.to_string(),
                    Ok(Ok(Ok(_))) => "it stopped early".to_owned(),
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => "it is stuck".to_owned(),
                };
                return Err(format!("the healthy client stalled at item {index}: {why}").into());
            }
            context.clients().all().send("flood", (index, payload.clone()))?;
            if let Some(pause) = pause {
                tokio::time::sleep(pause).await;
            }
        }
        let mut healthy = reader.await??;

        // The slow client is dropped while it still reads nothing.
        server
            .wait_for_connections(1, Duration::from_secs(10))
            .await
            .map_err(|error| format!("the slow consumer was not dropped: {error}"))?;
        healthy.assert_healthy().await?;

        // What the slow client finds when it reads: a prefix of the flood, a Close saying why if it got through,
        // and the end of the socket.
        let mut seen = 0u64;
        let mut ended = false;
        for _ in 0..FLOOD + 100 {
            match slow.event().await? {
                Event::Record(record) if record.kind() == 1 => {
                    let index = record.value["arguments"][0].as_u64();
                    check(index == Some(seen), || {
                        format!("slow client got item {index:?}, expected {seen}")
                    })?;
                    seen += 1;
                }
                Event::Record(record) if record.kind() == 7 => {
                    let error = record.value["error"].as_str().unwrap_or_default();
                    check(error.contains("Slow consumer"), || {
                        format!("the Close says {}", record.value)
                    })?;
                }
                Event::Record(record) => return Err(format!("slow client got {}", record.value).into()),
                Event::Closed(_) => {
                    ended = true;
                    break;
                }
            }
        }
        check(ended, || "the slow client's socket never ended".into())?;
        check(seen < FLOOD, || {
            "the slow client got the whole flood: it was never slow".into()
        })?;
        healthy.assert_healthy().await?;
        drop((healthy, slow));
        server.stop().await;
        Ok(())
    })
    .await
}

// ---------------------------------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_node_closes_connections_with_a_close_message() -> TestResult {
    // NodeHandle::stop promises that open connections are closed; a graceful shutdown SHOULD tell clients with a
    // Close message that allows a reconnect (docs/protocol.md#close-from-the-server), then end the socket with 1000,
    // and not wait for clients.
    bounded(TEST_TIMEOUT, async {
        let server = TestNode::start(quiet_limits()).await?;
        let mut json_client = server.client(Protocol::Json).await?;
        let mut msgpack_client = server.client(Protocol::MessagePack).await?;
        json_client.assert_healthy().await?;
        msgpack_client.assert_healthy().await?;
        let started = Instant::now();
        let stop = timeout(Duration::from_secs(10), server.node.stop());
        let watch = async {
            for client in [&mut json_client, &mut msgpack_client] {
                let close = client
                    .expect_close_message()
                    .await
                    .map_err(|error| format!("[{}] on stop: {error}", client.protocol().name()))?;
                check(close["allowReconnect"] == json!(true), || {
                    format!("a shutdown Close should allow a reconnect: {close}")
                })?;
            }
            Ok::<(), BoxError>(())
        };
        let (stopped, watched) = tokio::join!(stop, watch);
        watched?;
        check(stopped.is_ok(), || "stop did not return within 10 s".into())?;
        let elapsed = started.elapsed();
        check(elapsed < STEP, || {
            format!("stop took {elapsed:?} with two clients open")
        })
    })
    .await
}

/// A hub mounted with `Node::configure` in an application's own actix-web `HttpServer` (where the socket stays with
/// actix-web, and actix-ws carries the messages) serves the same WebSocket protocol as a node's own server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_in_an_applications_own_http_server_serves_websockets() -> TestResult {
    bounded(TEST_TIMEOUT, async {
        let node = Node::builder()
            .hub(wire_hub(Flags::default()))
            .limits(quiet_limits())
            .build()?;
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let app_node = node.clone();
        let server = actix_web::HttpServer::new(move || {
            let node = app_node.clone();
            actix_web::App::new().configure(move |config| node.configure(config))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)?
        .run();
        let handle = server.handle();
        let task = tokio::spawn(server);
        let url = format!("ws://{addr}/wirehub");
        each_protocol(|protocol| {
            let url = url.clone();
            async move {
                let mut client = TestClient::to(&url).protocol(protocol).open().await?;
                client.handshake().await?;
                client.send_ping().await?;
                let result = client.invoke_ok("Echo", json!(["from an app's own server"])).await?;
                check(result == json!("from an app's own server"), || {
                    format!("Echo returned {result}")
                })?;
                client.assert_frame_kinds()?;
                Ok(())
            }
        })
        .await?;
        handle.stop(false).await;
        let _ = timeout(Duration::from_secs(5), task).await;
        Ok(())
    })
    .await
}

/// Write coalescing (`Limits::write_coalesce`): a connection that receives broadcasts often gets them in fewer,
/// larger writes, in order, none later than the window after the previous write; its own replies are never held
/// and carry what is held with them; a connection that receives them rarely gets each at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frequent_broadcasts_are_coalesced_and_replies_are_not_held() -> TestResult {
    let window = Duration::from_millis(400);
    let limits = Limits {
        write_coalesce: window,
        ..quiet_limits()
    };
    on_node(limits, |server| async move {
        let context = server.context()?;
        let mut client = server.client(Protocol::Json).await?;
        server.wait_for_connections(1, STEP).await?;

        // Rare: 3 broadcasts a full window apart each arrive in their own frame, within a fraction of the window.
        let frames_before = client.text_frames();
        for index in 0..3 {
            let sent = Instant::now();
            context.clients().all().send("tick", (index,))?;
            let record = client.record().await?;
            check(record.value["arguments"] == json!([index]), || {
                format!("got {}", record.value)
            })?;
            check(sent.elapsed() < window, || {
                format!("a rare broadcast took {:?}", sent.elapsed())
            })?;
            tokio::time::sleep(window).await;
        }
        check(client.text_frames() - frames_before == 3, || {
            format!(
                "3 rare broadcasts came in {} frames",
                client.text_frames() - frames_before
            )
        })?;

        // Frequent: 12 broadcasts 20 ms apart (a twentieth of the window) come in order, in fewer frames.
        let frames_before = client.text_frames();
        for index in 0..12 {
            context.clients().all().send("tick", (100 + index,))?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for index in 0..12 {
            let record = client.record().await?;
            check(record.value["arguments"] == json!([100 + index]), || {
                format!("expected tick {}, got {}", 100 + index, record.value)
            })?;
        }
        let frames = client.text_frames() - frames_before;
        check(frames < 12, || {
            format!("12 frequent broadcasts came in {frames} frames")
        })?;

        // Messages to this connection by id, as often as the broadcasts above: each comes at once.
        let id = client.invoke_ok("ConnectionId", json!([])).await?;
        let id = ConnectionId::new(id.as_str().ok_or("ConnectionId returned no string")?);
        for index in 0..8 {
            let sent = Instant::now();
            context.clients().client(&id).send("direct", (index,))?;
            let record = client.record().await?;
            check(record.value["arguments"] == json!([index]), || {
                format!("got {}", record.value)
            })?;
            check(sent.elapsed() < window / 2, || {
                format!("a message to one connection took {:?}: it was held", sent.elapsed())
            })?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // A reply while broadcasts are held: it comes at once, after them.
        for index in 0..6 {
            context.clients().all().send("tick", (200 + index,))?;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let asked = Instant::now();
        let id = client.next_invocation_id();
        client.send_invocation_with_id(&id, "Echo", json!(["now"])).await?;
        for index in 0..6 {
            let record = client.record().await?;
            check(record.value["arguments"] == json!([200 + index]), || {
                format!("expected tick {} before the reply, got {}", 200 + index, record.value)
            })?;
        }
        let reply = client.completion(&id).await?;
        check(reply.value["result"] == json!("now"), || {
            format!("the reply was {}", reply.value)
        })?;
        check(asked.elapsed() < window, || {
            format!("the reply took {:?}, as long as a held broadcast", asked.elapsed())
        })?;
        Ok(())
    })
    .await
}
