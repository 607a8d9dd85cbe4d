//! A connection that moves is the same connection (docs/semantics.md, "Drain" and "Stateful reconnect on another
//! node"): the hub's `on_connected` ran once, when its client connected, and `on_disconnected` runs once, when it
//! ends, on the node it ends on; neither runs at a drain's move nor at the move of a resume that reached another
//! node. Three in-process nodes of the demo hub with counting hooks; raw stateful clients (handshake version 2).
//!
//! Everything runs on 127.0.0.1; every wait has a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::error::Error;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hubmesh::demo::demo_hub;
use hubmesh::testing::client::Protocol;
use hubmesh::testing::TestCluster;
use serde_json::json;
use tokio::time::{timeout, Instant};

#[path = "common/node_reads.rs"]
mod node_reads;
#[path = "common/stateful_client.rs"]
mod stateful_client;

use node_reads::{init_tracing, metric_total};
use stateful_client::StatefulClient;

type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

/// How often the hub's hooks ran, over every node of the cluster.
#[derive(Clone, Default)]
struct Hooks {
    connected: Arc<AtomicUsize>,
    disconnected: Arc<AtomicUsize>,
}

impl Hooks {
    fn counts(&self) -> (usize, usize) {
        (
            self.connected.load(Ordering::SeqCst),
            self.disconnected.load(Ordering::SeqCst),
        )
    }

    /// Waits until the hooks ran `expected` times (connected, disconnected), then holds them there a moment: a
    /// hook run late by a move would show in that moment.
    async fn settle_at(&self, expected: (usize, usize)) -> TestResult {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.counts() != expected {
            if Instant::now() > deadline {
                return Err(format!(
                    "hooks (connected, disconnected) ran {:?} times, not {expected:?}",
                    self.counts()
                )
                .into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(self.counts(), expected, "a hook ran late");
        Ok(())
    }
}

/// Three nodes whose demo hub counts its hooks in `hooks`.
async fn cluster(hooks: &Hooks) -> TestResult<(TestCluster, Vec<String>)> {
    let hooks = hooks.clone();
    let cluster = TestCluster::start(3, move || {
        let (connected, disconnected) = (hooks.connected.clone(), hooks.disconnected.clone());
        vec![demo_hub()
            .on_connected(move |_caller| {
                connected.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            })
            .on_disconnected(move |_caller| {
                disconnected.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            })]
    })
    .await?;
    cluster.wait_for_members(Duration::from_secs(10)).await?;
    let urls: Vec<String> = (0..3).filter_map(|index| cluster.url(index)).collect();
    Ok((cluster, urls))
}

/// How many connections of the demo hub run on each node.
async fn running(urls: &[String]) -> TestResult<Vec<u64>> {
    let mut counts = Vec::new();
    for url in urls {
        counts.push(metric_total(std::slice::from_ref(url), "hubmesh_connections{hub=\"demo\"}").await?);
    }
    Ok(counts)
}

/// The same connection, still in group `g`, after its move: its id, and a group message from node 1.
async fn still_the_same(client: &mut StatefulClient, cluster: &TestCluster, id: &str) -> TestResult {
    client.raw.send_invocation_with_id("who", "WhoAmI", json!([])).await?;
    loop {
        let message = timeout(Duration::from_secs(5), client.read()).await??;
        if message["invocationId"] == "who" {
            assert_eq!(message["result"], json!(id), "the same connection id");
            break;
        }
    }
    let context = cluster.context(0, "demo").ok_or("no hub context")?;
    context.clients().group("g").send("g", (7,))?;
    loop {
        let message = timeout(Duration::from_secs(5), client.read()).await??;
        if message["target"] == "g" {
            assert_eq!(message["arguments"], json!([7]), "{message}");
            return Ok(());
        }
    }
}

/// Three nodes, and a stateful client of node `on` in group `g`: its token and id; `on_connected` ran once.
struct Started {
    cluster: TestCluster,
    urls: Vec<String>,
    client: StatefulClient,
    token: String,
    id: String,
}

async fn started(hooks: &Hooks, on: usize) -> TestResult<Started> {
    let (cluster, urls) = cluster(hooks).await?;
    let (client, token, id) = StatefulClient::joined(&format!("{}/hub", urls[on]), Protocol::Json, "g").await?;
    hooks.settle_at((1, 0)).await?;
    Ok(Started {
        cluster,
        urls,
        client,
        token,
        id,
    })
}

/// After its move: the same connection, and no hook ran; then it ends with a Close message, and `on_disconnected`
/// runs once.
async fn ends_after_the_move(started: Started, hooks: &Hooks) -> TestResult {
    let Started {
        cluster,
        mut client,
        id,
        ..
    } = started;
    still_the_same(&mut client, &cluster, &id).await?;
    hooks.settle_at((1, 0)).await?;
    client.raw.send_close_message().await?;
    hooks.settle_at((1, 1)).await?;
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drains_move_runs_neither_hook() -> TestResult {
    init_tracing();
    let hooks = Hooks::default();
    timeout(Duration::from_secs(90), async {
        let mut started = started(&hooks, 2).await?;
        let (urls, token, client) = (started.urls.clone(), started.token.clone(), &mut started.client);
        let hub = |index: usize| format!("{}/hub", urls[index]);

        let draining = started.cluster.node(2).ok_or("no node 3")?.clone();
        let drain = tokio::spawn(async move { draining.drain(Duration::from_millis(200)).await });
        // The drain moves the connection and drops the socket; the client comes back through node 1.
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.read_within(Duration::from_millis(200)).await.is_ok() {
            assert!(Instant::now() < deadline, "the drain did not drop the socket");
        }
        while let Err(error) = client.reconnect(&format!("{}?id={token}", hub(0)), 2).await {
            assert!(Instant::now() < deadline, "not resumed after the drain: {error}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        timeout(Duration::from_secs(20), drain).await??;
        let on = running(&urls).await?;
        assert_eq!(
            on.iter().sum::<u64>(),
            1,
            "one connection, on a node that stays: {on:?}"
        );
        assert_eq!(on[2], 0, "nothing left on the drained node");
        ends_after_the_move(started, &hooks).await
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumes_move_runs_neither_hook() -> TestResult {
    init_tracing();
    let hooks = Hooks::default();
    timeout(Duration::from_secs(90), async {
        let mut started = started(&hooks, 0).await?;
        let (urls, token, client) = (started.urls.clone(), started.token.clone(), &mut started.client);
        let hub = |index: usize| format!("{}/hub", urls[index]);

        // The client comes back to node 2. Node 1 moves the connection there once the cluster has been calm for
        // 2 s (`RESUME_CALM`); before, it resumes it on a tunnel, and the client drops that socket and comes back
        // to node 2 again.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            client.reconnect(&format!("{}?id={token}", hub(1)), 2).await?;
            let moved = Instant::now() + Duration::from_secs(1);
            let mut on = running(&urls).await?;
            while on != [0, 1, 0] && Instant::now() < moved {
                tokio::time::sleep(Duration::from_millis(50)).await;
                on = running(&urls).await?;
            }
            if on == [0, 1, 0] {
                break;
            }
            assert!(Instant::now() < deadline, "never moved to node 2: {on:?}");
        }
        ends_after_the_move(started, &hooks).await
    })
    .await?
}
