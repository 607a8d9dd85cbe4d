//! Wire behaviour of the Server-Sent Events and long-polling transports over raw HTTP/1.1
//! (docs/protocol.md#transports, #server-sent-events and #long-polling): status codes and bodies, the first poll
//! answering at once, poll supersession, the poll timeout, liveness by the gap between polls, DELETE, SSE `data:`
//! framing, and the request context taken from the first request. Everything runs on 127.0.0.1 with bounded waits.

use std::error::Error;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

// One request on its own connection, read to the end; a response as read, parsed.
use hubmesh::testing::client::{
    http_request_with_body as request, json_invocation, open_event_stream, parse_http_response as parse_response,
    read_until, HttpReply,
};
use hubmesh::testing::testhub::test_hub;
use hubmesh::transport::TransportKind;
use hubmesh::{Limits, Node, NodeHandle};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

const TEST_TIMEOUT: Duration = Duration::from_secs(30);
const STEP: Duration = Duration::from_secs(5);
const RS: char = '\u{1e}';

async fn bounded<F: Future<Output = TestResult>>(body: F) -> TestResult {
    timeout(TEST_TIMEOUT, body)
        .await
        .map_err(|_| format!("the test did not finish within {TEST_TIMEOUT:?}"))?
}

/// Limits with quiet connection timers and the given long-polling timers.
fn limits(poll_timeout: Duration, disconnect: Duration) -> Limits {
    Limits {
        keep_alive: Duration::from_secs(60),
        client_timeout: Duration::from_secs(120),
        poll_timeout,
        poll_disconnect_timeout: disconnect,
        max_frame: 64 * 1024,
        ..Limits::default()
    }
}

async fn start(limits: Limits) -> TestResult<NodeHandle> {
    let all = [
        TransportKind::WebSockets,
        TransportKind::ServerSentEvents,
        TransportKind::LongPolling,
    ];
    Ok(Node::builder()
        .hub(test_hub("TestHub", "/testhub", &all))
        .hub(test_hub("WsOnly", "/wsonly", &[TransportKind::WebSockets]))
        .listen("127.0.0.1:0")
        .limits(limits)
        .start()
        .await?)
}

async fn stop(node: NodeHandle) {
    let _ = timeout(Duration::from_secs(10), node.stop()).await;
}

/// The head of a request written by hand, for a stream that stays open (SSE) or a body sent in parts.
fn request_head(method: &str, path: &str, headers: &[(&str, &str)], content_length: usize) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" || content_length > 0 {
        head.push_str(&format!("Content-Length: {content_length}\r\n"));
    }
    head.push_str("\r\n");
    head
}

async fn negotiate(addr: SocketAddr, path: &str) -> TestResult<(String, Value)> {
    let response = request(addr, "POST", &format!("{path}/negotiate?negotiateVersion=1"), &[], b"").await?;
    assert_eq!(response.status, 200, "negotiate: {}", response.text());
    let body: Value = serde_json::from_slice(&response.body)?;
    let token = body["connectionToken"].as_str().ok_or("no connectionToken")?.to_owned();
    Ok((token, body))
}

/// A long-polling client: negotiated, first poll done, handshake sent and answered.
async fn long_polling_client(addr: SocketAddr, protocol: &str) -> TestResult<String> {
    let (token, _) = negotiate(addr, "/testhub").await?;
    let started = Instant::now();
    let first = request(addr, "GET", &format!("/testhub?id={token}&_=1"), &[], b"").await?;
    assert_eq!(first.status, 200);
    assert!(first.body.is_empty(), "the first poll carried {:?}", first.text());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the first poll did not answer at once"
    );
    let handshake = format!("{{\"protocol\":\"{protocol}\",\"version\":1}}{RS}");
    let sent = request(addr, "POST", &format!("/testhub?id={token}"), &[], handshake.as_bytes()).await?;
    assert_eq!(sent.status, 200);
    let answer = request(addr, "GET", &format!("/testhub?id={token}&_=2"), &[], b"").await?;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.text(), format!("{{}}{RS}"));
    Ok(token)
}

/// Polls until a response carries data (bounded), returning it.
async fn poll_data(addr: SocketAddr, token: &str) -> TestResult<HttpReply> {
    for _ in 0..20 {
        let response = request(addr, "GET", &format!("/testhub?id={token}"), &[], b"").await?;
        if response.status != 200 || !response.body.is_empty() {
            return Ok(response);
        }
    }
    Err("no poll carried data".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiate_offers_sse_as_text_only_and_all_three_transports() -> TestResult {
    bounded(async {
        let node = start(limits(Duration::from_secs(30), Duration::from_secs(15))).await?;
        let (_, body) = negotiate(node.local_addr(), "/testhub").await?;
        let transports = body["availableTransports"].as_array().ok_or("no availableTransports")?;
        let names: Vec<&str> = transports.iter().filter_map(|t| t["transport"].as_str()).collect();
        assert_eq!(names, ["WebSockets", "ServerSentEvents", "LongPolling"]);
        assert_eq!(transports[1]["transferFormats"], serde_json::json!(["Text"]));
        assert_eq!(transports[2]["transferFormats"], serde_json::json!(["Text", "Binary"]));
        stop(node).await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_unknown_ids_and_unoffered_transports() -> TestResult {
    bounded(async {
        let node = start(limits(Duration::from_secs(30), Duration::from_secs(15))).await?;
        let addr = node.local_addr();
        for method in ["GET", "POST", "DELETE"] {
            let response = request(addr, method, "/testhub", &[], b"").await?;
            assert_eq!(
                (response.status, response.text().as_str()),
                (400, "Connection ID required")
            );
            let response = request(addr, method, "/testhub?id=nope", &[], b"x").await?;
            assert_eq!(
                (response.status, response.text().as_str()),
                (404, "No Connection with that ID"),
                "{method} with an unknown id"
            );
        }
        let sse = [("Accept", "text/event-stream")];
        let response = request(addr, "GET", "/testhub?id=nope", &sse, b"").await?;
        assert_eq!(
            (response.status, response.text().as_str()),
            (404, "No Connection with that ID")
        );
        let (token, _) = negotiate(addr, "/wsonly").await?;
        let response = request(addr, "GET", &format!("/wsonly?id={token}"), &[], b"").await?;
        assert_eq!(
            (response.status, response.text().as_str()),
            (404, "LongPolling transport not supported by this end point type")
        );
        let response = request(addr, "GET", &format!("/wsonly?id={token}"), &sse, b"").await?;
        assert_eq!(
            (response.status, response.text().as_str()),
            (404, "ServerSentEvents transport not supported by this end point type")
        );
        // A POST before any transport is open has nowhere to go.
        let (token, _) = negotiate(addr, "/testhub").await?;
        let response = request(addr, "POST", &format!("/testhub?id={token}"), &[], b"x").await?;
        assert_eq!(response.status, 400);
        stop(node).await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polling_round_trip_supersession_and_delete() -> TestResult {
    bounded(async {
        let node = start(limits(Duration::from_secs(20), Duration::from_secs(15))).await?;
        let addr = node.local_addr();
        let token = long_polling_client(addr, "json").await?;
        let sent = request(
            addr,
            "POST",
            &format!("/testhub?id={token}"),
            &[],
            json_invocation("1", "Echo", serde_json::json!(["hello"])).as_bytes(),
        )
        .await?;
        assert_eq!(sent.status, 200);
        let answer = poll_data(addr, &token).await?;
        assert_eq!(answer.status, 200);
        assert!(
            answer.text().ends_with(RS),
            "a poll ended mid-record: {:?}",
            answer.text()
        );
        assert!(answer.text().contains("\"result\":\"hello\""), "{:?}", answer.text());
        // A second poll while one is pending ends the older with 204; the connection lives on.
        let poll = |path: String| tokio::spawn(async move { request(addr, "GET", &path, &[], b"").await });
        let older = poll(format!("/testhub?id={token}&_=3"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let newer = poll(format!("/testhub?id={token}&_=4"));
        let older = older.await??;
        assert_eq!(older.status, 204);
        // DELETE ends the connection: the pending poll gets 204, the DELETE 202.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let deleted = request(addr, "DELETE", &format!("/testhub?id={token}"), &[], b"").await?;
        assert_eq!(deleted.status, 202);
        let newer = newer.await??;
        assert_eq!(newer.status, 204);
        // Then the id is gone.
        let mut last = 0;
        for _ in 0..50 {
            last = request(addr, "GET", &format!("/testhub?id={token}"), &[], b"")
                .await?
                .status;
            if last == 404 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(last, 404);
        stop(node).await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_timeout_and_liveness_by_gap_between_polls() -> TestResult {
    bounded(async {
        let node = start(limits(Duration::from_millis(300), Duration::from_millis(600))).await?;
        let addr = node.local_addr();
        let token = long_polling_client(addr, "json").await?;
        let started = Instant::now();
        let empty = request(addr, "GET", &format!("/testhub?id={token}"), &[], b"").await?;
        assert_eq!((empty.status, empty.body.len()), (200, 0));
        assert!(started.elapsed() >= Duration::from_millis(250), "the poll did not wait");
        // No Pings are sent on long polling and none are expected: polls keep the connection alive past the
        // disconnect timeout.
        for _ in 0..4 {
            let response = request(addr, "GET", &format!("/testhub?id={token}"), &[], b"").await?;
            assert_eq!((response.status, response.text()), (200, String::new()));
        }
        // A client that stops polling is gone after the disconnect timeout.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let response = request(addr, "GET", &format!("/testhub?id={token}"), &[], b"").await?;
        assert_eq!(
            (response.status, response.text().as_str()),
            (404, "No Connection with that ID")
        );
        stop(node).await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_and_oversized_posts_are_refused() -> TestResult {
    bounded(async {
        let node = start(limits(Duration::from_secs(20), Duration::from_secs(15))).await?;
        let addr = node.local_addr();
        let (token, _) = negotiate(addr, "/testhub").await?;
        assert_eq!(
            request(addr, "GET", &format!("/testhub?id={token}"), &[], b"")
                .await?
                .status,
            200
        );
        // A POST whose body is still arriving is in flight.
        let handshake = format!("{{\"protocol\":\"json\",\"version\":1}}{RS}");
        let (first_half, second_half) = handshake.as_bytes().split_at(10);
        let mut slow = TcpStream::connect(addr).await?;
        slow.write_all(request_head("POST", &format!("/testhub?id={token}"), &[], handshake.len()).as_bytes())
            .await?;
        slow.write_all(first_half).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let second = request(addr, "POST", &format!("/testhub?id={token}"), &[], b"{}").await?;
        assert_eq!(second.status, 409);
        slow.write_all(second_half).await?;
        let mut raw = Vec::new();
        timeout(STEP, slow.read_to_end(&mut raw)).await??;
        assert_eq!(parse_response(&raw)?.status, 200);
        let answer = poll_data(addr, &token).await?;
        assert_eq!(answer.text(), format!("{{}}{RS}"));
        let huge = vec![b' '; 64 * 1024 + 1];
        let response = request(addr, "POST", &format!("/testhub?id={token}"), &[], &huge).await?;
        assert_eq!(response.status, 413);
        stop(node).await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polling_carries_messagepack_as_binary() -> TestResult {
    bounded(async {
        let node = start(limits(Duration::from_secs(20), Duration::from_secs(15))).await?;
        let addr = node.local_addr();
        let token = long_polling_client(addr, "messagepack").await?;
        // [1, {}, "1", "Echo", ["hi"]] with its varint length prefix.
        let record: &[u8] = &[
            0x95, 0x01, 0x80, 0xa1, b'1', 0xa4, b'E', b'c', b'h', b'o', 0x91, 0xa2, b'h', b'i',
        ];
        let mut body = vec![u8::try_from(record.len())?];
        body.extend_from_slice(record);
        assert_eq!(
            request(addr, "POST", &format!("/testhub?id={token}"), &[], &body)
                .await?
                .status,
            200
        );
        let answer = poll_data(addr, &token).await?;
        assert_eq!(answer.header("content-type"), Some("application/octet-stream"));
        assert_eq!(
            usize::from(answer.body[0]),
            answer.body.len() - 1,
            "not one whole frame"
        );
        assert!(answer.body.ends_with(b"\xa2hi"), "{:?}", answer.body);
        stop(node).await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_context_is_the_first_poll() -> TestResult {
    bounded(async {
        let node = start(limits(Duration::from_secs(20), Duration::from_secs(15))).await?;
        let addr = node.local_addr();
        let (token, _) = negotiate(addr, "/testhub").await?;
        let first = request(
            addr,
            "GET",
            &format!("/testhub?id={token}&x=1"),
            &[("X-Test", "first")],
            b"",
        )
        .await?;
        assert_eq!(first.status, 200);
        let handshake = format!("{{\"protocol\":\"json\",\"version\":1}}{RS}");
        request(
            addr,
            "POST",
            &format!("/testhub?id={token}"),
            &[("X-Test", "post")],
            handshake.as_bytes(),
        )
        .await?;
        poll_data(addr, &token).await?;
        let invoke = json_invocation("7", "GetHeader", serde_json::json!(["X-Test"]));
        request(
            addr,
            "POST",
            &format!("/testhub?id={token}"),
            &[("X-Test", "post")],
            invoke.as_bytes(),
        )
        .await?;
        let answer = request(
            addr,
            "GET",
            &format!("/testhub?id={token}"),
            &[("X-Test", "later")],
            b"",
        )
        .await?;
        assert!(answer.text().contains("\"result\":\"first\""), "{:?}", answer.text());
        stop(node).await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_framing_and_conflicts() -> TestResult {
    bounded(async {
        // Keep-alive Pings a minute apart: the dropped event stream below must be noticed from the closed socket
        // itself, not from a failed write.
        let node = start(limits(Duration::from_secs(20), Duration::from_secs(15))).await?;
        let addr = node.local_addr();
        let (token, _) = negotiate(addr, "/testhub").await?;
        let path = format!("/testhub?id={token}");
        let (mut events, mut raw) = open_event_stream(addr, &path, &[("X-Test", "sse")]).await?;
        let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no head")? + 4;
        let head = parse_response(&raw[..head_end])?;
        assert_eq!(head.status, 200);
        assert_eq!(head.header("content-type"), Some("text/event-stream"));
        assert_eq!(head.header("cache-control"), Some("no-cache"));
        // A second stream, a poll, and a DELETE on an SSE connection are refused.
        let sse = [("Accept", "text/event-stream")];
        assert_eq!(request(addr, "GET", &path, &sse, b"").await?.status, 409);
        assert_eq!(request(addr, "GET", &path, &[], b"").await?.status, 400);
        assert_eq!(request(addr, "DELETE", &path, &[], b"").await?.status, 400);
        let handshake = format!("{{\"protocol\":\"json\",\"version\":1}}{RS}");
        assert_eq!(
            request(addr, "POST", &path, &[], handshake.as_bytes()).await?.status,
            200
        );
        read_until(&mut events, &mut raw, format!("data: {{}}{RS}\n\n").as_bytes()).await?;
        let invoke = json_invocation("1", "GetHeader", serde_json::json!(["X-Test"]));
        assert_eq!(request(addr, "POST", &path, &[], invoke.as_bytes()).await?.status, 200);
        read_until(
            &mut events,
            &mut raw,
            format!("\"result\":\"sse\"}}{RS}\n\n").as_bytes(),
        )
        .await?;
        // Closing the event stream ends the connection: its id is gone (well before any keep-alive is written).
        let hub = node.hub_context("TestHub").ok_or("no TestHub")?;
        assert_eq!(hub.local_connection_count(), 1);
        let dropped = Instant::now();
        drop(events);
        let mut last = 0;
        for _ in 0..100 {
            last = request(addr, "POST", &path, &[], b"{\"type\":6}\x1e").await?.status;
            if last == 404 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(last, 404, "the connection outlived its event stream");
        assert_eq!(hub.local_connection_count(), 0);
        println!("an abandoned event stream was noticed within {:?}", dropped.elapsed());
        stop(node).await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messagepack_over_sse_gets_a_handshake_error() -> TestResult {
    bounded(async {
        let node = start(limits(Duration::from_secs(20), Duration::from_secs(15))).await?;
        let addr = node.local_addr();
        let (token, _) = negotiate(addr, "/testhub").await?;
        let path = format!("/testhub?id={token}");
        let (mut events, mut raw) = open_event_stream(addr, &path, &[]).await?;
        let handshake = format!("{{\"protocol\":\"messagepack\",\"version\":1}}{RS}");
        assert_eq!(
            request(addr, "POST", &path, &[], handshake.as_bytes()).await?.status,
            200
        );
        read_until(&mut events, &mut raw, b"data: {\"error\":").await?;
        stop(node).await;
        Ok(())
    })
    .await
}

/// The address of a test server (`hubmesh::testing::testhub::serve`), for the raw `/echo` endpoint.
async fn echo_server() -> TestResult<(hubmesh::testing::testhub::TestHubHandle, SocketAddr)> {
    let server = hubmesh::testing::testhub::serve("127.0.0.1:0").await?;
    let addr = server.url().trim_start_matches("http://").parse()?;
    Ok((server, addr))
}

/// The cookie negotiate sets, which `/echo` wants on the request that opens an SSE or long-polling connection (as
/// upstream's echo handler, which ends a connection without it at once).
const TEST_COOKIE: (&str, &str) = ("Cookie", "testCookie=testValue");

/// Retries `POST /echo?id=` until the connection is gone (404), bounded.
async fn echo_gone(addr: SocketAddr, path: &str) -> TestResult {
    let mut last = 0;
    for _ in 0..100 {
        last = request(addr, "POST", path, &[], b"x").await?.status;
        if last == 404 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("the echo connection outlived its end: POST got {last}").into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_echo_over_long_polling() -> TestResult {
    bounded(async {
        let (server, addr) = echo_server().await?;
        let (token, body) = negotiate(addr, "/echo").await?;
        let names: Vec<&str> = body["availableTransports"]
            .as_array()
            .ok_or("no availableTransports")?
            .iter()
            .filter_map(|transport| transport["transport"].as_str())
            .collect();
        assert_eq!(names, ["WebSockets", "ServerSentEvents", "LongPolling"]);
        assert_eq!(request(addr, "GET", "/echo?id=unknown", &[], b"").await?.status, 404);
        assert_eq!(request(addr, "GET", "/echo", &[], b"").await?.status, 400);
        let path = format!("/echo?id={token}");
        let first = request(addr, "GET", &path, &[TEST_COOKIE], b"").await?;
        assert_eq!(first.status, 200);
        assert!(first.body.is_empty(), "the first poll carried {:?}", first.text());
        // Each POST body comes back whole, text or binary.
        assert_eq!(request(addr, "POST", &path, &[], b"hello\nworld").await?.status, 200);
        let echoed = request(addr, "GET", &path, &[], b"").await?;
        assert_eq!((echoed.status, echoed.text().as_str()), (200, "hello\nworld"));
        let binary = [0u8, 1, 0x1e, 0x80, 0xff];
        assert_eq!(request(addr, "POST", &path, &[], &binary).await?.status, 200);
        let echoed = request(addr, "GET", &path, &[], b"").await?;
        assert_eq!((echoed.status, echoed.body.as_slice()), (200, binary.as_slice()));
        assert_eq!(echoed.header("content-type"), Some("application/octet-stream"));
        // An SSE stream for a long-polling connection is refused; DELETE ends it: the pending poll gets 204.
        let sse = [("Accept", "text/event-stream")];
        assert_eq!(request(addr, "GET", &path, &sse, b"").await?.status, 400);
        let pending = tokio::spawn({
            let path = path.clone();
            async move {
                request(addr, "GET", &path, &[], b"")
                    .await
                    .map(|response| response.status)
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(request(addr, "DELETE", &path, &[], b"").await?.status, 202);
        assert_eq!(pending.await??, 204);
        echo_gone(addr, &path).await?;
        assert_eq!(request(addr, "DELETE", &path, &[], b"").await?.status, 404);
        // Without the cookie on its first poll, the connection ends at once: the next poll gets 204, no echo.
        let (token, _) = negotiate(addr, "/echo").await?;
        let path = format!("/echo?id={token}");
        assert_eq!(request(addr, "GET", &path, &[], b"").await?.status, 200);
        let _ = request(addr, "POST", &path, &[], b"unheard").await?;
        assert_eq!(request(addr, "GET", &path, &[], b"").await?.status, 204);
        echo_gone(addr, &path).await?;
        server.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_prefix_routes_answer_before_any_route() -> TestResult {
    bounded(async {
        let (server, addr) = echo_server().await?;
        // /bad-negotiate…: 400 and upstream's text, for any method; a negotiate there still gets the cookies.
        let bad = request(addr, "POST", "/bad-negotiate/negotiate?negotiateVersion=1", &[], b"").await?;
        assert_eq!((bad.status, bad.text().as_str()), (400, "Some response from server"));
        assert!(
            bad.header("set-cookie").is_some(),
            "negotiate cookies on /bad-negotiate"
        );
        assert_eq!(request(addr, "GET", "/Bad-Negotiate/x", &[], b"").await?.status, 400);
        assert_eq!(request(addr, "GET", "/bad-negotiatex", &[], b"").await?.status, 404);
        // /echoredirect…: 307 to the /echo equivalent, query kept, no cookies.
        let moved = request(addr, "POST", "/echoredirect/negotiate?negotiateVersion=1", &[], b"").await?;
        assert_eq!(moved.status, 307);
        assert_eq!(moved.header("location"), Some("/echo/negotiate?negotiateVersion=1"));
        assert_eq!(moved.header("set-cookie"), None);
        let moved = request(addr, "GET", "/echoredirect?id=abc", &[], b"").await?;
        assert_eq!((moved.status, moved.header("location")), (307, Some("/echo?id=abc")));
        // /redirect…: the redirect negotiate for any method, no cookies.
        let redirect = request(addr, "POST", "/redirect/negotiate?baseUrl=http://h", &[], b"").await?;
        assert_eq!(redirect.status, 200);
        assert_eq!(redirect.header("set-cookie"), None);
        let url = serde_json::from_slice::<Value>(&redirect.body)?["url"]
            .as_str()
            .map(str::to_owned);
        assert_eq!(url.as_deref(), Some("http://h/testHub?numRedirects=1"));
        // Any other OPTIONS: 204, as upstream's CORS middleware answers.
        assert_eq!(request(addr, "OPTIONS", "/testhub", &[], b"").await?.status, 204);
        server.stop().await;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_echo_over_server_sent_events() -> TestResult {
    bounded(async {
        let (server, addr) = echo_server().await?;
        let (token, _) = negotiate(addr, "/echo").await?;
        let path = format!("/echo?id={token}");
        assert_eq!(request(addr, "POST", &path, &[], b"early").await?.status, 400);
        let (mut events, mut raw) = open_event_stream(addr, &path, &[TEST_COOKIE]).await?;
        let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no head")? + 4;
        let head = parse_response(&raw[..head_end])?;
        assert_eq!(
            (head.status, head.header("content-type")),
            (200, Some("text/event-stream"))
        );
        let sse = [("Accept", "text/event-stream")];
        assert_eq!(request(addr, "GET", &path, &sse, b"").await?.status, 409);
        assert_eq!(request(addr, "GET", &path, &[], b"").await?.status, 400);
        assert_eq!(request(addr, "DELETE", &path, &[], b"").await?.status, 400);
        assert_eq!(request(addr, "POST", &path, &[], b"one\r\ntwo").await?.status, 200);
        read_until(&mut events, &mut raw, b"data: one\ndata: two\n\n").await?;
        // Closing the event stream ends the connection (noticed at the next write): its id is gone.
        drop(events);
        echo_gone(addr, &path).await?;
        server.stop().await;
        Ok(())
    })
    .await
}
