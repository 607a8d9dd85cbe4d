//! Drain with connections that cannot move (docs/semantics.md, "Drain"): official `@microsoft/signalr` clients over
//! Server-Sent Events and over long polling, with automatic reconnect (the official client has stateful reconnect
//! only over WebSockets), three of them, all in one group, behind the round-robin proxy. They start while the proxy
//! sends everything to node 3, so all three run there; then node 3 leaves the proxy's rotation (what a load
//! balancer does when `/readyz` answers 503, as it does from the drain's start) and drains. Each client gets Close
//! with `allowReconnect`, comes back through the proxy as a new connection on another node and joins again, as an
//! app does in `onreconnected`; the old memberships are released (the group counts three members again, never
//! more), the drained node runs nothing, and group messages reach every client once and in order.
//!
//! A drain also lets the calls that run finish: a raw WebSocket client's call that takes 1.5 s gets its Completion
//! and then the Close; a call that does not end within the drain's window plus 3 s is cut off by the Close.
//!
//! Everything runs on 127.0.0.1; every wait has a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hubmesh::demo::demo_hub;
use hubmesh::testing::proxy::RoundRobinProxy;
use hubmesh::testing::{TestClient, TestCluster};
use hubmesh::Hub;
use serde_json::{json, Value};
use tokio::time::{timeout, Instant};

#[path = "common/node_reads.rs"]
mod node_reads;
#[path = "common/npm.rs"]
mod npm;
#[path = "common/official_clients.rs"]
mod official_clients;

use node_reads::{init_tracing, metric_total};
use official_clients::OfficialClients;

type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

/// The node that drains.
const DRAINED: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_clients_of_a_draining_node_come_back_as_new_connections() -> TestResult {
    drain_under("ServerSentEvents").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polling_clients_of_a_draining_node_come_back_as_new_connections() -> TestResult {
    drain_under("LongPolling").await
}

/// The demo hub and `Slow(ms)`, which answers `ms` after that many milliseconds; `running` counts the calls of it
/// that started.
fn hub_with_slow_calls(running: &Arc<AtomicUsize>) -> Vec<Hub> {
    let running = running.clone();
    vec![demo_hub().method("Slow", move |ms: u64| {
        running.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            ms
        }
    })]
}

/// The records a raw client gets until its Close (at most 100, each within `within`): `(type, invocation id,
/// result)`, and the Close's `allowReconnect`.
async fn until_close(client: &mut TestClient, within: Duration) -> TestResult<(Vec<(u64, Value, Value)>, Value)> {
    let mut records = Vec::new();
    for _ in 0..100 {
        let record = timeout(within, client.record()).await??.value;
        if record["type"] == 7 {
            return Ok((records, record["allowReconnect"].clone()));
        }
        records.push((
            record["type"].as_u64().unwrap_or(0),
            record["invocationId"].clone(),
            record["result"].clone(),
        ));
    }
    Err(format!("no Close after {records:?}").into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_lets_the_calls_that_run_finish_before_its_close() -> TestResult {
    init_tracing();
    timeout(Duration::from_secs(60), async {
        let running = Arc::new(AtomicUsize::new(0));
        let hubs = running.clone();
        let cluster = TestCluster::start(3, move || hub_with_slow_calls(&hubs)).await?;
        cluster.wait_for_members(Duration::from_secs(10)).await?;
        let url = cluster.url(DRAINED).ok_or("no node 3")?;
        let mut finishes = TestClient::to(&format!("{url}/hub")).connect().await?;
        let mut cut_off = TestClient::to(&format!("{url}/hub")).connect().await?;
        finishes.send_invocation_with_id("slow", "Slow", json!([1500])).await?;
        cut_off
            .send_invocation_with_id("endless", "Slow", json!([600_000]))
            .await?;
        // Both calls run before the drain starts.
        let deadline = Instant::now() + Duration::from_secs(5);
        while running.load(Ordering::SeqCst) != 2 {
            assert!(Instant::now() < deadline, "the two calls did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let started = Instant::now();
        let draining = cluster.node(DRAINED).ok_or("no node 3")?.clone();
        let drain = tokio::spawn(async move { draining.drain(Duration::from_millis(200)).await });

        let (records, allow_reconnect) = until_close(&mut finishes, Duration::from_secs(5)).await?;
        assert_eq!(
            records,
            [(3, json!("slow"), json!(1500))],
            "the call's Completion, then the Close"
        );
        assert_eq!(allow_reconnect, json!(true));
        let (records, allow_reconnect) = until_close(&mut cut_off, Duration::from_secs(10)).await?;
        assert_eq!(records, [], "a call that does not end is cut off by the Close");
        assert_eq!(allow_reconnect, json!(true));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(3),
            "the endless call was cut off after {took:?}, before the drain's window plus 3 s"
        );
        timeout(Duration::from_secs(10), drain).await??;
        cluster.stop().await;
        Ok::<_, Box<dyn Error + Send + Sync>>(())
    })
    .await?
}

/// The group's member count through client 0.
async fn count(clients: &mut OfficialClients) -> TestResult<u64> {
    let answer = clients.ask(json!({"cmd": "count", "via": 0})).await?;
    answer["count"]
        .as_u64()
        .ok_or_else(|| format!("no count: {answer}").into())
}

/// How many connections of the demo hub run on each node.
async fn running(urls: &[String]) -> TestResult<Vec<u64>> {
    let mut counts = Vec::new();
    for url in urls {
        counts.push(metric_total(std::slice::from_ref(url), "hubmesh_connections{hub=\"demo\"}").await?);
    }
    Ok(counts)
}

async fn drain_under(transport: &str) -> TestResult {
    init_tracing();
    timeout(Duration::from_secs(120), async {
        let cluster = TestCluster::start(3, || vec![demo_hub()]).await?;
        cluster.wait_for_members(Duration::from_secs(10)).await?;
        let urls: Vec<String> = (0..3).filter_map(|index| cluster.url(index)).collect();
        let addrs = urls
            .iter()
            .map(|url| url.trim_start_matches("http://").parse())
            .collect::<Result<Vec<std::net::SocketAddr>, _>>()?;
        let proxy = RoundRobinProxy::start([addrs[DRAINED]]).await?;
        let (mut clients, ready) = OfficialClients::start_over(&vec![proxy.url(); 3], transport).await?;
        let before: Vec<Value> = ready["ids"].as_array().ok_or("no ids")?.clone();
        assert_eq!(count(&mut clients).await?, 3, "{transport}: every client in the group");
        assert_eq!(running(&urls).await?, [0, 0, 3], "{transport}: every client on node 3");

        proxy.set_backends([addrs[0], addrs[1]])?;
        let draining = cluster.node(DRAINED).ok_or("no node 3")?.clone();
        timeout(Duration::from_secs(30), draining.drain(Duration::from_millis(300))).await?;
        // Back as new connections, in the group again.
        let deadline = Instant::now() + Duration::from_secs(30);
        let ids = loop {
            let ids = clients.ask(json!({"cmd": "ids"})).await?;
            if ids["ok"] == true && ids["rejoined"] == json!([1, 1, 1]) {
                break ids;
            }
            assert!(
                Instant::now() < deadline,
                "{transport}: not all back in the group: {ids}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        for (index, id) in before.iter().enumerate() {
            assert_ne!(
                &ids["ids"][index], id,
                "{transport}: client {index} is not a new connection"
            );
            let closed = clients.ask(json!({"cmd": "closed", "index": index, "ms": 0})).await?;
            assert_eq!(
                closed["ok"], false,
                "{transport}: client {index}'s automatic reconnect gave up: {closed}"
            );
        }
        // The old memberships went with the old connections.
        assert_eq!(
            count(&mut clients).await?,
            3,
            "{transport}: an old membership was not released"
        );
        let on = running(&urls).await?;
        assert_eq!(
            (on[2], on[0] + on[1]),
            (0, 3),
            "{transport}: connections per node {on:?}"
        );
        // Group messages reach every client once, in order (the script checks).
        let sent = clients
            .ask(json!({"cmd": "send", "from": 0, "count": 50, "tag": "after"}))
            .await?;
        assert_eq!(sent["ok"], true, "{transport}: {sent}");
        clients.quit().await;
        cluster.stop().await;
        Ok::<_, Box<dyn Error + Send + Sync>>(())
    })
    .await?
}
