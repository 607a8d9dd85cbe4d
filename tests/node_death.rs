//! A node dies and its stateful connections carry on (docs/semantics.md, "A node's death and its stateful
//! connections"; issue 15): three in-process nodes of the demo hub; two stateful WebSocket clients run on node 3,
//! one negotiated there and one on node 1 (so its home survives); group and direct sends go to them from node 1
//! all along; node 3 is killed as a crash would (cut off from gossip and links first). Each client's socket
//! drops; it reconnects with its token through a survivor and goes on as the same connection on the node that
//! kept its copy: the same id, its group, and:
//!
//! * every message sent well before the kill (200 ms), once and in order (what the client had not acknowledged is
//!   replayed);
//! * every message sent after its keeper took it over and rejoined its group (and the sender's node saw the
//!   death), once and in order;
//! * every group message sent between the kill and the take-over too: its keeper followed the group all along and
//!   gives it what its server never numbered (`src/mesh/kept.rs`). Every group message arrives, once, in order;
//! * the same for broadcasts (`Clients.All`, sent all along too): its keeper recorded them and gives it those its
//!   server never numbered (`src/mesh/kept_broadcasts.rs`);
//! * the same for direct messages: their senders (and homes) keep what they passed to the dead node and send it
//!   again when they see it leave, its home offers what it gets next to every peer, and the keeper holds all of it
//!   and gives the connection what its server never numbered (`src/mesh/kept_direct.rs`).
//!
//! And a dead node's stateful connection whose client never comes back stays in its groups for its reconnect
//! window, and leaves them when the window ends.
//!
//! Everything runs on 127.0.0.1; every wait has a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hubmesh::demo::demo_hub;
use hubmesh::testing::client::{negotiate, Protocol};
use hubmesh::testing::TestCluster;
use hubmesh::ConnectionId;
use serde_json::{json, Value};
use tokio::time::{timeout, Instant};

#[path = "common/node_reads.rs"]
mod node_reads;
#[path = "common/stateful_client.rs"]
mod stateful_client;

use node_reads::metric_total;

use stateful_client::{Numbered, StatefulClient};

type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

/// Messages of each kind sent in all; the kill comes after [`BEFORE_KILL`] of them arrived.
const COUNT: u64 = 400;
const BEFORE_KILL: u64 = 100;
/// Between two sends of the sender.
const SEND_EVERY: Duration = Duration::from_millis(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_connections_of_a_killed_node_resume_on_their_keeper() -> TestResult {
    for protocol in [Protocol::Json, Protocol::MessagePack] {
        node_death(protocol).await?;
    }
    Ok(())
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()))
        .with_test_writer()
        .try_init();
}

async fn taken_over(urls: &[String]) -> TestResult<u64> {
    metric_total(urls, "hubmesh_connections_taken_over_total").await
}

async fn node_death(protocol: Protocol) -> TestResult {
    init_tracing();
    timeout(Duration::from_secs(120), async {
        let mut cluster = TestCluster::start(3, || vec![demo_hub()]).await?;
        cluster.wait_for_members(Duration::from_secs(10)).await?;
        let urls: Vec<String> = (0..3).filter_map(|index| cluster.url(index)).collect();
        let hub = |index: usize| -> TestResult<String> { Ok(format!("{}/hub", urls.get(index).ok_or("no url")?)) };
        let mut clients = Vec::new();
        for negotiated_on in [2, 0] {
            let body = negotiate(&hub(negotiated_on)?, "&useStatefulReconnect=true", &[]).await?;
            let token = body["connectionToken"].as_str().ok_or("no token")?.to_owned();
            let id = ConnectionId::new(body["connectionId"].as_str().ok_or("no id")?);
            let mut client = StatefulClient::connect_with(&format!("{}?id={token}", hub(2)?), protocol).await?;
            client.raw.send_invocation_with_id("1", "JoinGroup", json!(["g"])).await?;
            let joined = client.read().await?;
            assert_eq!(joined["invocationId"], json!("1"), "{joined}");
            clients.push((client, token, id));
        }
        assert_eq!(cluster.context(2, "demo").ok_or("no node 3")?.local_connection_count(), 2);

        // Group and direct sends from node 1, all along; `sent` is how many of each went so far.
        let context = cluster.context(0, "demo").ok_or("no hub context")?;
        let ids: Vec<ConnectionId> = clients.iter().map(|(_, _, id)| id.clone()).collect();
        let sent = Arc::new(AtomicU64::new(0));
        let sender = {
            let sent = sent.clone();
            tokio::spawn(async move {
                for n in 0..COUNT {
                    let _ = context.clients().group("g").send("g", (n,));
                    let _ = context.clients().all().send("b", (n,));
                    for id in &ids {
                        let _ = context.clients().client(id).send("d", (n,));
                    }
                    sent.store(n + 1, Ordering::SeqCst);
                    tokio::time::sleep(SEND_EVERY).await;
                }
            })
        };

        // Each client reads until it has the last message of both kinds, reconnecting through a survivor (node 1
        // or 2, in turn) whenever its socket drops.
        let expected_ids: Vec<ConnectionId> = clients.iter().map(|(_, _, id)| id.clone()).collect();
        let mut readers = Vec::new();
        for (index, (mut client, token, _)) in clients.into_iter().enumerate() {
            let survivors = [hub(0)?, hub(1)?];
            readers.push(tokio::spawn(async move {
                let mut got = Numbered::default();
                let mut reconnects = 0;
                let deadline = Instant::now() + Duration::from_secs(60);
                let done = |got: &Numbered| {
                    [&got.group, &got.direct, &got.broadcast]
                        .iter()
                        .all(|numbers| numbers.last() == Some(&(COUNT - 1)))
                };
                while !done(&got) {
                    if Instant::now() >= deadline {
                        return Err(format!("client {index}: the last messages did not arrive").into());
                    }
                    match timeout(Duration::from_secs(5), client.read()).await {
                        Ok(Ok(message)) => got.file(&message)?,
                        Ok(Err(_)) | Err(_) => {
                            // Through a survivor; the keeper takes it over once the death is detected.
                            let mut attempt = 0;
                            loop {
                                let through = &survivors[(index + reconnects + attempt) % 2];
                                // The client sent one message (the join).
                                match client.reconnect(&format!("{through}?id={token}"), 2).await {
                                    Ok(()) => break,
                                    Err(error) if attempt < 20 && Instant::now() < deadline => {
                                        tracing::debug!(%error, "reconnect refused; again");
                                        attempt += 1;
                                        tokio::time::sleep(Duration::from_millis(250)).await;
                                    }
                                    Err(error) => return Err(format!("client {index}: no resume: {error}").into()),
                                }
                            }
                            reconnects += 1;
                        }
                    }
                }
                Ok::<_, Box<dyn Error + Send + Sync>>((client, got, reconnects))
            }));
        }

        // Kill node 3 once the first messages went, while the sends go on.
        let deadline = Instant::now() + Duration::from_secs(20);
        while sent.load(Ordering::SeqCst) < BEFORE_KILL {
            assert!(Instant::now() < deadline, "the sender is stuck");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // What was sent by now reached node 3 before the kill (sends are 10 ms apart; 20 more go first); what was
        // sent after may have been on its way to node 3 when it died.
        let killed_at = sent.load(Ordering::SeqCst);
        while sent.load(Ordering::SeqCst) < killed_at + 20 {
            assert!(Instant::now() < deadline, "the sender is stuck");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let kill_time = Instant::now();
        cluster.kill(2).await;
        // The take-over: both connections started on their keepers, in their groups, known to their homes.
        let deadline = Instant::now() + Duration::from_secs(20);
        let survivors_urls = [urls[0].clone(), urls[1].clone()];
        while taken_over(&survivors_urls).await? < 2 {
            assert!(Instant::now() < deadline, "the keepers did not take the connections over");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // And the sender's node saw the death too: a direct send goes to the dead node until its sender's view
        // lost it.
        for url in &survivors_urls {
            let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse()?;
            loop {
                let view = hubmesh::testing::client::http_request_with_body(addr, "GET", "/_hubmesh/cluster", &[], b"")
                    .await?;
                let view: Value = serde_json::from_slice(&view.body)?;
                if view["live"].as_array().is_some_and(|live| live.len() == 2) {
                    break;
                }
                assert!(Instant::now() < deadline, "the survivors did not see node 3 leave");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let taken_over_at = sent.load(Ordering::SeqCst);
        let take_over_time = kill_time.elapsed();
        assert!(taken_over_at < COUNT, "the sender finished before the take-over: nothing tells after from before");

        let mut finished = Vec::new();
        for reader in readers {
            finished.push(timeout(Duration::from_secs(70), reader).await???);
        }
        let _ = timeout(Duration::from_secs(5), sender).await;
        for (index, (client, got, reconnects)) in finished.iter_mut().enumerate() {
            assert!(*reconnects >= 1, "client {index} never lost its socket");
            for (kind, numbers) in [("group", &got.group), ("direct", &got.direct), ("broadcast", &got.broadcast)] {
                assert!(
                    numbers.windows(2).all(|pair| pair[0] < pair[1]),
                    "client {index}: {kind} messages twice or out of order: {numbers:?}"
                );
                let before: Vec<u64> = numbers.iter().copied().filter(|n| *n < killed_at).collect();
                assert_eq!(
                    before,
                    (0..killed_at).collect::<Vec<u64>>(),
                    "client {index}: every {kind} message sent well before the kill, once, in order"
                );
                let after: Vec<u64> = numbers.iter().copied().filter(|n| *n > taken_over_at).collect();
                assert_eq!(
                    after,
                    (taken_over_at + 1..COUNT).collect::<Vec<u64>>(),
                    "client {index}: every {kind} message sent after the take-over, once, in order"
                );
                let gap = (killed_at..=taken_over_at).filter(|n| !numbers.contains(n)).count();
                println!(
                    "{protocol:?} client {index} {kind}: {} of {COUNT} arrived; killed after {killed_at}, taken over after \
                     {taken_over_at} ({take_over_time:?}); {gap} sent in between lost",
                    numbers.len()
                );
                assert_eq!(
                    numbers.as_slice(),
                    (0..COUNT).collect::<Vec<u64>>().as_slice(),
                    "client {index}: every {kind} message, once, in order, those sent while its node was dying too"
                );
            }
            // The same connection: its id, and it still answers.
            client.raw.send_invocation_with_id("who", "WhoAmI", json!([])).await?;
            let until = Instant::now() + Duration::from_secs(5);
            loop {
                assert!(Instant::now() < until, "client {index}: WhoAmI was not answered");
                let message = timeout(Duration::from_secs(5), client.read()).await??;
                if message["invocationId"] == json!("who") {
                    assert_eq!(
                        message["result"],
                        json!(expected_ids[index].as_str()),
                        "client {index} is another connection"
                    );
                    break;
                }
            }
        }
        // Both are in the group, on the survivors.
        let context = cluster.context(0, "demo").ok_or("no node 1")?;
        assert_eq!(context.groups().count("g").await?, 2, "the group kept both members");
        let survivors = cluster.context(0, "demo").ok_or("no node 1")?.local_connection_count()
            + cluster.context(1, "demo").ok_or("no node 2")?.local_connection_count();
        assert_eq!(survivors, 2, "the connections run on the survivors");
        cluster.stop().await;
        Ok(())
    })
    .await?
}

/// The group count of `g`, asked through a raw client of the node at `url`.
async fn group_count(url: &str) -> TestResult<u64> {
    let mut asker = hubmesh::testing::TestClient::to(&format!("{url}/hub"))
        .connect()
        .await?;
    let count = asker.invoke_ok("GroupCount", json!(["g"])).await?;
    count.as_u64().ok_or_else(|| format!("no count: {count}").into())
}

/// Issue 15, item 2: a dead node's stateful connection keeps its group membership while its client may still come
/// back (its keeper took it over and waits, detached, for the reconnect window), and loses it when the window
/// ends without a reconnect: the group counts it until then, and no node runs it after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_stateful_connection_keeps_its_groups_until_its_reconnect_window_ends() -> TestResult {
    init_tracing();
    const WINDOW: Duration = Duration::from_secs(4);
    timeout(Duration::from_secs(60), async {
        let limits = hubmesh::Limits {
            reconnect_window: WINDOW,
            ..hubmesh::Limits::default()
        };
        let mut cluster = TestCluster::start_with_limits(3, limits, || vec![demo_hub()]).await?;
        cluster.wait_for_members(Duration::from_secs(10)).await?;
        let urls: Vec<String> = (0..3).filter_map(|index| cluster.url(index)).collect();
        let survivors = &urls[..2];
        let (client, _token, _id) = StatefulClient::joined(&format!("{}/hub", urls[2]), Protocol::Json, "g").await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while metric_total(survivors, "hubmesh_kept_connections").await? != 1 {
            assert!(Instant::now() < deadline, "no survivor keeps the connection");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(group_count(&urls[0]).await?, 1);

        // Its node dies; its client never comes back.
        cluster.kill(2).await;
        drop(client);
        while taken_over(survivors).await? != 1 {
            assert!(Instant::now() < deadline, "its keeper did not take it over");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let taken_at = Instant::now();
        assert_eq!(
            group_count(&urls[0]).await?,
            1,
            "a member while its client may come back"
        );
        assert_eq!(
            group_count(&urls[1]).await?,
            1,
            "a member while its client may come back"
        );
        let connections = metric_total(survivors, "hubmesh_connections{hub=\"demo\"}").await?;
        assert_eq!(connections, 1, "its keeper runs it, waiting for its client");

        // Released once the window has passed.
        while group_count(&urls[0]).await? != 0 {
            assert!(
                Instant::now() < deadline,
                "its membership outlived its reconnect window"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let released_after = taken_at.elapsed();
        assert!(
            released_after >= WINDOW / 2,
            "released {released_after:?} after the take-over, well before the {WINDOW:?} window"
        );
        assert_eq!(group_count(&urls[1]).await?, 0);
        assert_eq!(metric_total(survivors, "hubmesh_connections{hub=\"demo\"}").await?, 0);
        println!("released {released_after:?} after the take-over (window {WINDOW:?})");
        cluster.stop().await;
        Ok::<_, Box<dyn Error + Send + Sync>>(())
    })
    .await?
}
