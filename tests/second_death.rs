//! A stateful connection its keeper took over is kept anew there, so that a second death is survived as the first
//! (chaos defect 21, `tests/cli/chaos/README.md`; docs/semantics.md, "A node's death and its stateful
//! connections"). Before, a taken-over connection was not kept again, and the death of the keeper that took it
//! over lost it.
//!
//! Four in-process nodes of the demo hub. A stateful client runs on node 4 in group `g`; node 1 sends group and
//! direct messages to it all along. Node 4 is killed: the client's reconnect through the others resumes it on its
//! keeper, which must have it kept by another peer, node 1 (the connection is chosen so): messages must reach it
//! there although its new keeper sends them. Then that first keeper is killed too: the client resumes on node 1. Every group and direct message arrives once and in order, those sent while either node was
//! dying too, and it is the same connection, still in its group. Run with its home on node 4 (dead with the first
//! kill: sends by id then reach every peer) and on the sender's node, in JSON and MessagePack. Everything runs on
//! 127.0.0.1; every wait has a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::error::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hubmesh::cluster::placement::ranked;
use hubmesh::demo::demo_hub;
use hubmesh::testing::client::{negotiate, Protocol};
use hubmesh::testing::TestCluster;
use hubmesh::ConnectionId;
use serde_json::json;
use tokio::time::{timeout, Instant};

#[path = "common/node_reads.rs"]
mod node_reads;
#[path = "common/stateful_client.rs"]
mod stateful_client;

use node_reads::{incarnations_seen_by, init_tracing, metric_total};
use stateful_client::{Numbered, StatefulClient};

type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

/// The node that runs the connection first.
const SERVER: usize = 3;
/// Messages of each kind sent in all, one of each every 10 ms; the first kill comes after `FIRST_KILL` arrived; the
/// second once `SECOND_KILL` arrived, the connection is kept again, and 20 direct messages sent after that arrived.
const COUNT: u64 = 800;
const FIRST_KILL: usize = 60;
const SECOND_KILL: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_over_json_connection_whose_home_died_survives_a_second_death() -> TestResult {
    twice_killed(Protocol::Json, Home::Server).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_over_messagepack_connection_survives_a_second_death() -> TestResult {
    twice_killed(Protocol::MessagePack, Home::Sender).await
}

/// Where the connection is negotiated.
#[derive(Clone, Copy, Debug)]
enum Home {
    /// On the node that runs it first: its home dies with the first kill.
    Server,
    /// On the node that sends to it, which lives.
    Sender,
}

/// The index of the one node among `urls` whose gauge `name` reads 1 while the others read 0, if there is one.
async fn the_one_with(urls: &[String], indexes: &[usize], name: &str) -> TestResult<Option<usize>> {
    let mut found = None;
    for &index in indexes {
        match metric_total(&urls[index..=index], name).await? {
            0 => {}
            1 if found.is_none() => found = Some(index),
            _ => return Ok(None),
        }
    }
    Ok(found)
}

/// The numbers below `COUNT` that `got` lacks.
fn missing(got: &[u64]) -> Vec<u64> {
    (0..COUNT).filter(|n| !got.contains(n)).collect()
}

async fn twice_killed(protocol: Protocol, home: Home) -> TestResult {
    init_tracing();
    timeout(Duration::from_secs(150), async {
        let mut cluster = TestCluster::start(4, || vec![demo_hub()]).await?;
        cluster.wait_for_members(Duration::from_secs(10)).await?;
        let urls: Vec<String> = (0..4).filter_map(|index| cluster.url(index)).collect();
        let hub = |index: usize| format!("{}/hub", urls[index]);
        // The server's peers as it sees them: its keeper is the one that rendezvous on the connection id picks.
        let peers = incarnations_seen_by(&urls[SERVER], "node-4").await?;
        assert_eq!(peers.len(), 3, "node 4 sees {peers:?}");
        // Node 1 sends, and is the connection's second keeper (its first must not be node 1: it must outlive both
        // kills). So the sender holds for its take-over the direct messages it sends while the connection runs on
        // its first keeper: they must reach it there all the same.
        let sender = 0;
        let negotiated_on = match home {
            Home::Server => SERVER,
            Home::Sender => sender,
        };
        let mut chosen = None;
        for _ in 0..64 {
            let body = negotiate(&hub(negotiated_on), "&useStatefulReconnect=true", &[]).await?;
            let id = body["connectionId"].as_str().ok_or("no id")?.to_owned();
            let keepers = ranked(id.as_bytes(), &peers);
            if keepers.get(1).is_some_and(|second| &*second.name == "node-1") {
                chosen = Some((body["connectionToken"].as_str().ok_or("no token")?.to_owned(), id));
                break;
            }
        }
        let (token, id) = chosen.ok_or("no connection of 64 has node 1 as its second keeper")?;
        let mut client = StatefulClient::connect_with(&format!("{}?id={token}", hub(SERVER)), protocol).await?;
        client.join("g").await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let first_keeper = loop {
            if let Some(keeper) = the_one_with(&urls, &[0, 1, 2], "hubmesh_kept_connections").await? {
                break keeper;
            }
            assert!(Instant::now() < deadline, "no one node keeps the connection");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_ne!(first_keeper, sender, "the keeper rendezvous picked");

        let context = cluster.context(sender, "demo").ok_or("no hub context")?;
        let to = ConnectionId::new(id.as_str());
        // How many of each kind went so far.
        let sent = Arc::new(AtomicU64::new(0));
        let sends = {
            let sent = sent.clone();
            tokio::spawn(async move {
                for n in 0..COUNT {
                    let _ = context.clients().group("g").send("g", (n,));
                    let _ = context.clients().client(&to).send("d", (n,));
                    sent.store(n + 1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };

        let mut got = Numbered::default();
        let mut reconnects = 0;
        let mut killed = 0;
        let mut second_keeper = None;
        // How many had been sent when the connection was seen kept again.
        let mut kept_again_at = None;
        let deadline = Instant::now() + Duration::from_secs(90);
        while got.group.len() < COUNT as usize || got.direct.len() < COUNT as usize {
            assert!(
                Instant::now() < deadline,
                "{home:?} {protocol:?}: {} group and {} direct of {COUNT} arrived after {killed} kills; missing {:?} and {:?}",
                got.group.len(),
                got.direct.len(),
                missing(&got.group),
                missing(&got.direct)
            );
            if killed == 0 && got.group.len() >= FIRST_KILL {
                cluster.kill(SERVER).await;
                killed = 1;
            }
            if killed == 1 && second_keeper.is_none() && got.group.len() >= SECOND_KILL {
                // Taken over on its first keeper, which has it kept by another.
                assert_eq!(
                    cluster.context(first_keeper, "demo").ok_or("no keeper")?.local_connection_count(),
                    1,
                    "its first keeper took it over"
                );
                let others: Vec<usize> = (0..3).filter(|index| *index != first_keeper).collect();
                let until = Instant::now() + Duration::from_secs(10);
                let keeper = loop {
                    if let Some(keeper) = the_one_with(&urls, &others, "hubmesh_kept_connections").await? {
                        break keeper;
                    }
                    assert!(Instant::now() < until, "the taken-over connection is not kept again");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                assert_eq!(keeper, sender, "the second keeper rendezvous picked");
                second_keeper = Some(keeper);
                kept_again_at = Some(sent.load(Ordering::SeqCst));
            }
            // Once direct messages its new keeper sent after it kept it again arrived: they reached it without a
            // take-over.
            if killed == 1 && kept_again_at.is_some_and(|at| got.direct.last().is_some_and(|last| *last >= at + 20)) {
                cluster.kill(first_keeper).await;
                killed = 2;
            }
            match timeout(Duration::from_secs(5), client.read()).await {
                Ok(Ok(message)) => got.file(&message)?,
                Ok(Err(_)) | Err(_) => {
                    // Through the nodes that may live, in turn; the keeper takes it over once the death is detected.
                    let mut attempt = 0;
                    loop {
                        let through = [0, 1, 2][(reconnects + attempt) % 3];
                        // The client sent one message (the join).
                        match client.reconnect(&format!("{}?id={token}", hub(through)), 2).await {
                            Ok(()) => break,
                            Err(error) if attempt < 60 && Instant::now() < deadline => {
                                tracing::debug!(%error, "reconnect refused; again");
                                attempt += 1;
                                tokio::time::sleep(Duration::from_millis(250)).await;
                            }
                            Err(error) => return Err(format!("{home:?} {protocol:?}: no resume: {error}").into()),
                        }
                    }
                    reconnects += 1;
                }
            }
        }
        let _ = timeout(Duration::from_secs(5), sends).await;
        assert_eq!(killed, 2, "both kills happened");
        let expected: Vec<u64> = (0..COUNT).collect();
        assert_eq!(got.group, expected, "{home:?} {protocol:?}: every group message once, in order");
        assert_eq!(got.direct, expected, "{home:?} {protocol:?}: every direct message once, in order");
        // It runs on the second keeper, as the same connection, still in its group.
        let second_keeper = second_keeper.ok_or("no second keeper")?;
        assert_eq!(
            cluster.context(second_keeper, "demo").ok_or("no keeper")?.local_connection_count(),
            1,
            "its second keeper took it over"
        );
        client.raw.send_invocation_with_id("who", "WhoAmI", json!([])).await?;
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            assert!(Instant::now() < until, "WhoAmI was not answered");
            let message = timeout(Duration::from_secs(5), client.read()).await??;
            if message["invocationId"] == json!("who") {
                assert_eq!(message["result"], json!(id), "another connection");
                break;
            }
        }
        let count = cluster.context(second_keeper, "demo").ok_or("no keeper")?.groups().count("g").await?;
        assert_eq!(count, 1, "still in its group");
        cluster.stop().await;
        Ok(())
    })
    .await?
}
