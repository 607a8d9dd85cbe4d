//! Stateful reconnect (docs/protocol.md#stateful-reconnect) on the wire: the raw test client speaking handshake version 2,
//! behind a TCP proxy in the test that cuts the socket mid-stream.
//!
//! Covered: negotiate offers `useStatefulReconnect` only when asked; group messages sent before, during and after
//! a drop arrive exactly once and in order after the client resumes with the same token (the client drops
//! duplicates by sequence id, as the official client does); the server acks what the client sends; a client that
//! does not come back within the window loses its connection (on_disconnected runs, groups left) and its token
//! gets 404.
//!
//! Every test is bounded by `tokio::time::timeout`, every read by a step timeout, and every loop by a count.

use std::error::Error;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hubmesh::testing::client::{self, TestClient, STEP};
use hubmesh::{Caller, CancellationToken, Hub, HubError, Limits, Node, NodeHandle, State};
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};

#[path = "common/stateful_client.rs"]
mod stateful_client;

use stateful_client::StatefulClient;

type BoxError = Box<dyn Error + Send + Sync>;
type TestResult<T = ()> = Result<T, BoxError>;

const TEST_TIMEOUT: Duration = Duration::from_secs(30);
const HUB: &str = "resume";

#[derive(Clone, Default)]
struct Disconnects(Arc<AtomicUsize>);

async fn join(caller: Caller, group: String) -> Result<(), HubError> {
    caller.groups().add(caller.connection_id(), &group).await
}

fn hub(disconnects: Disconnects) -> Hub {
    let counter = disconnects.0.clone();
    Hub::new(HUB)
        .path("/resume")
        .method("Join", join)
        .method("Disconnects", |State(d): State<Disconnects>| async move {
            d.0.load(Ordering::SeqCst)
        })
        .with_state(disconnects)
        .on_disconnected(move |_caller| {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
}

async fn start(window: Duration) -> TestResult<(NodeHandle, Disconnects)> {
    let disconnects = Disconnects::default();
    let node = Node::builder()
        .hub(hub(disconnects.clone()))
        .listen("127.0.0.1:0")
        .limits(Limits {
            keep_alive: Duration::from_secs(60),
            client_timeout: Duration::from_secs(120),
            reconnect_window: window,
            ..Limits::default()
        })
        .start()
        .await?;
    Ok((node, disconnects))
}

/// Stops the node, bounded: how `stop` treats open connections is not what these tests check.
async fn stop(node: NodeHandle) {
    let _ = timeout(Duration::from_secs(10), node.stop()).await;
}

/// A TCP proxy whose connections can all be cut at once (both sockets dropped, no WebSocket close).
struct Proxy {
    addr: SocketAddr,
    cut: Arc<Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl Proxy {
    async fn start(target: SocketAddr) -> TestResult<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (cuts, stopped) = (cut.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = stopped.cancelled() => return,
                };
                let Ok((mut client, _)) = accepted else { return };
                let token = cuts.lock().clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        () = token.cancelled() => {}
                    }
                });
            }
        });
        Ok(Proxy { addr, cut, stop })
    }

    /// Drops every open proxied connection; later ones are not affected.
    fn cut(&self) {
        let mut token = self.cut.lock();
        token.cancel();
        *token = CancellationToken::new();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut.lock().cancel();
    }
}

/// `POST /resume/negotiate?negotiateVersion=1<extra>`, the JSON body.
async fn negotiate(addr: SocketAddr, extra: &str) -> TestResult<Value> {
    Ok(client::negotiate(&format!("http://{addr}/resume"), extra, &[]).await?)
}

/// Negotiates stateful reconnect at the node, connects through the proxy and joins group `g` with invocation 1;
/// also returns the URL to reconnect with.
async fn join_through(node: &NodeHandle, proxy: &Proxy) -> TestResult<(StatefulClient, String)> {
    let negotiated = negotiate(node.local_addr(), "&useStatefulReconnect=true").await?;
    let token = negotiated["connectionToken"].as_str().ok_or("no token")?.to_owned();
    let url = format!("ws://{}/resume?id={token}", proxy.addr);
    let mut client = StatefulClient::connect(&url).await?;
    client.raw.send_invocation_with_id("1", "Join", json!(["g"])).await?;
    let joined = client.read().await?;
    assert_eq!(joined["type"], 3, "{joined}");
    Ok((client, url))
}

async fn group_count(node: &NodeHandle, group: &str) -> TestResult<usize> {
    let context = node.hub_context(HUB).ok_or("no hub context")?;
    Ok(context.groups().count(group).await?)
}

#[tokio::test]
async fn negotiate_offers_stateful_reconnect_only_when_asked() -> TestResult {
    timeout(TEST_TIMEOUT, async {
        let (node, _) = start(Duration::from_secs(5)).await?;
        let asked = negotiate(node.local_addr(), "&useStatefulReconnect=true").await?;
        assert_eq!(asked["useStatefulReconnect"], json!(true));
        let plain = negotiate(node.local_addr(), "").await?;
        assert!(plain.get("useStatefulReconnect").is_none(), "{plain}");
        stop(node).await;
        let (node, _) = start(Duration::ZERO).await?;
        let off = negotiate(node.local_addr(), "&useStatefulReconnect=true").await?;
        assert!(off.get("useStatefulReconnect").is_none(), "{off}");
        stop(node).await;
        Ok(())
    })
    .await?
}

#[tokio::test]
async fn group_messages_survive_a_dropped_socket_exactly_once_in_order() -> TestResult {
    timeout(TEST_TIMEOUT, async {
        let (node, disconnects) = start(Duration::from_secs(10)).await?;
        let proxy = Proxy::start(node.local_addr()).await?;
        let (mut client, url) = join_through(&node, &proxy).await?;

        // Group sends run throughout, before, during and after the drop.
        const COUNT: u64 = 300;
        let context = node.hub_context(HUB).ok_or("no hub context")?;
        let sender = tokio::spawn(async move {
            for i in 0..COUNT {
                if context.clients().group("g").send("Msg", (i,)).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        });

        let mut seen = Vec::new();
        let mut acked = 0;
        let mut server_ack = 0;
        let mut cut = false;
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.len() < COUNT as usize && Instant::now() < deadline {
            let message = client.read().await?;
            match message["type"].as_u64() {
                Some(1) => {
                    assert_eq!(message["target"], "Msg");
                    seen.push(message["arguments"][0].as_u64().ok_or("no number")?);
                }
                Some(8) => server_ack = message["sequenceId"].as_u64().unwrap_or(0),
                Some(3) => assert_eq!(message["invocationId"], "2", "{message}"),
                _ => {}
            }
            if seen.len() == 40 && !cut {
                // Ack part of what arrived, so that the replay starts in the middle of the buffer.
                acked = client.received - 10;
                client.raw.send_ack(acked).await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
                proxy.cut();
                cut = true;
                tokio::time::sleep(Duration::from_millis(200)).await;
                // Still a member while away.
                assert_eq!(group_count(&node, "g").await?, 1);
                // The server processed our invocation 1, so we resume at 2.
                client.reconnect(&url, 2).await?;
                client.raw.send_invocation_with_id("2", "Join", json!(["h"])).await?;
            }
        }
        assert!(cut && acked > 0);
        let expected: Vec<u64> = (0..COUNT).collect();
        assert_eq!(seen, expected, "every message exactly once, in order");
        let _ = timeout(STEP, sender).await;
        // The server acks what the client sent (the second Join is the client's message 2) within about 1 s.
        for _ in 0..50 {
            if server_ack >= 2 {
                break;
            }
            if let Ok(Ok(message)) = timeout(Duration::from_millis(100), client.read()).await {
                if message["type"] == 8 {
                    server_ack = message["sequenceId"].as_u64().unwrap_or(0);
                }
            }
        }
        assert_eq!(server_ack, 2, "the server acks the client's messages");
        assert_eq!(
            disconnects.0.load(Ordering::SeqCst),
            0,
            "a resumed connection never disconnected"
        );
        assert_eq!(group_count(&node, "h").await?, 1);
        drop((client, proxy));
        stop(node).await;
        Ok(())
    })
    .await?
}

#[tokio::test]
async fn after_the_window_the_token_is_gone() -> TestResult {
    timeout(TEST_TIMEOUT, async {
        let window = Duration::from_millis(500);
        let (node, disconnects) = start(window).await?;
        let proxy = Proxy::start(node.local_addr()).await?;
        let (client, url) = join_through(&node, &proxy).await?;
        proxy.cut();
        tokio::time::sleep(window / 5).await;
        assert_eq!(group_count(&node, "g").await?, 1, "still a member within the window");
        assert_eq!(disconnects.0.load(Ordering::SeqCst), 0);
        // Bounded wait for the window to elapse and the connection to end.
        let deadline = Instant::now() + Duration::from_secs(5);
        while disconnects.0.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(disconnects.0.load(Ordering::SeqCst), 1, "on_disconnected ran once");
        assert_eq!(group_count(&node, "g").await?, 0, "groups left");
        assert_eq!(TestClient::to(&url).refused_status().await?, 404);
        drop((client, proxy));
        stop(node).await;
        Ok(())
    })
    .await?
}
