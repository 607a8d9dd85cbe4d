//! A stateful connection that moved (a drain) is kept anew where it runs, so that the death of its new node is
//! survived as the first would be (chaos defect 21, `tests/cli/chaos/README.md`; docs/semantics.md, "Kept wherever
//! it runs"). Before, a moved connection was not kept again: after a rolling restart every stateful connection had
//! moved, and the next death lost them all.
//!
//! Four in-process nodes of the demo hub. A stateful client on node 4 joins group `g`; node 4 drains (and restarts,
//! as in a rolling restart), and the client's reconnect through a survivor resumes it where it moved. Its new node
//! must have it kept by a peer. Then a survivor sends 200 group and 200 direct messages (by connection id, whose
//! home is the restarted node); after the first 50 of each arrive, its new node is killed, and the client's
//! reconnect through the others resumes it on its keeper: every message once and in order, the same connection,
//! still in its group. JSON and MessagePack. Everything runs on 127.0.0.1; every wait has a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::error::Error;
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

use node_reads::{init_tracing, live_seen_by, metric_total};
use stateful_client::{Numbered, StatefulClient};

type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

const DRAINED: usize = 3;
const COUNT: u64 = 200;

/// The numbers below `COUNT` that `got` lacks.
fn missing(got: &[u64]) -> Vec<u64> {
    (0..COUNT).filter(|n| !got.contains(n)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_json_connection_survives_the_death_of_its_new_node() -> TestResult {
    moved_then_killed(Protocol::Json).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_messagepack_connection_survives_the_death_of_its_new_node() -> TestResult {
    moved_then_killed(Protocol::MessagePack).await
}

/// A stateful client of node 4 in group `g`, moved by node 4's drain to another node, which has it kept by one of
/// the two others; node 4 restarted, and its new incarnation knows where its connection runs.
struct Moved {
    cluster: TestCluster,
    urls: Vec<String>,
    client: StatefulClient,
    token: String,
    id: String,
    /// The node that runs it now.
    server: usize,
    /// The two others of the first three.
    others: Vec<usize>,
}

async fn moved_and_kept_anew(protocol: Protocol) -> TestResult<Moved> {
    let mut cluster = TestCluster::start(4, || vec![demo_hub()]).await?;
    cluster.wait_for_members(Duration::from_secs(10)).await?;
    let urls: Vec<String> = (0..4).filter_map(|index| cluster.url(index)).collect();
    let hub = |index: usize| format!("{}/hub", urls[index]);
    let (mut client, token, id) = StatefulClient::joined(&hub(DRAINED), protocol, "g").await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric_total(&urls[..DRAINED], "hubmesh_kept_connections").await? != 1 {
        assert!(Instant::now() < deadline, "no survivor keeps the connection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The drain moves it; the client comes back through a survivor.
    let draining = cluster.node(DRAINED).ok_or("no node 4")?.clone();
    let drain = tokio::spawn(async move { draining.drain(Duration::from_millis(200)).await });
    let dropped = timeout(Duration::from_secs(15), async {
        loop {
            if client.read().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(dropped.is_ok(), "the drain did not move the connection");
    let mut attempt = 0;
    while let Err(error) = client
        .reconnect(&format!("{}?id={token}", hub(attempt % DRAINED)), 2)
        .await
    {
        assert!(Instant::now() < deadline, "not resumed after the drain: {error}");
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    timeout(Duration::from_secs(20), drain).await??;
    // Its node stops and starts again, as in a rolling restart (its new incarnation is the connection's home).
    cluster.restart_gracefully(DRAINED).await?;
    let server = loop {
        let running: Vec<usize> = (0..DRAINED)
            .filter(|index| {
                cluster
                    .context(*index, "demo")
                    .is_some_and(|hub| hub.local_connection_count() == 1)
            })
            .collect();
        if let [server] = running[..] {
            break server;
        }
        assert!(Instant::now() < deadline, "the moved connection runs on {running:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let others: Vec<usize> = (0..DRAINED).filter(|index| *index != server).collect();
    // Kept anew: its new node has it kept elsewhere, by one of the others.
    loop {
        let elsewhere = metric_total(&urls[server..=server], "hubmesh_connections_kept_elsewhere").await?;
        let kept = metric_total(
            &[urls[others[0]].clone(), urls[others[1]].clone()],
            "hubmesh_kept_connections",
        )
        .await?;
        if (elsewhere, kept) == (1, 1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the moved connection is not kept on node {}: kept elsewhere {elsewhere}, copies {kept}",
            server + 1
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("moved to node {}, kept again", server + 1);
    // The restarted home knows where it runs (as `tests/drain_moves.rs` waits for) before the sends.
    let home = [cluster.url(DRAINED).ok_or("node 4 did not start again")?];
    while metric_total(&home, "hubmesh_adopted_out_connections").await? != 1 {
        assert!(
            Instant::now() < deadline,
            "the restarted home does not know where its connection runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(Moved {
        cluster,
        urls,
        client,
        token,
        id,
        server,
        others,
    })
}

/// A chaos run lost a direct message so (seed 1796650794021415645): a keeper took over a connection whose home had
/// restarted since it was negotiated, and told the incarnation the copy named, which had left, instead of the live
/// one; the home, which had heard from the server only, passed the connection's sends by id on to the server once
/// it was back from a freeze, and the server had dropped it. Here the moved connection's server is frozen until its
/// keeper took it over, then thawed; a third node sends to it by id (through its home): every send arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_by_id_through_a_restarted_home_reach_the_keeper_that_took_its_connection_over() -> TestResult {
    init_tracing();
    timeout(Duration::from_secs(120), async {
        let Moved {
            cluster,
            urls,
            mut client,
            token,
            id,
            server,
            others,
        } = moved_and_kept_anew(Protocol::Json).await?;
        let hub = |index: usize| format!("{}/hub", urls[index]);
        let home = [cluster.url(DRAINED).ok_or("node 4 did not start again")?];
        cluster.freeze(server);
        let deadline = Instant::now() + Duration::from_secs(30);
        let keeper = loop {
            let mut taken = Vec::new();
            for &index in &others {
                if metric_total(&urls[index..=index], "hubmesh_connections_taken_over_total").await? == 1 {
                    taken.push(index);
                }
            }
            if let [keeper] = taken[..] {
                break keeper;
            }
            assert!(
                Instant::now() < deadline,
                "no keeper took the connection over: {taken:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        cluster.thaw(server);
        // The home has its server back, and a record of where the connection runs.
        while live_seen_by(&home[0]).await? != 4 || metric_total(&home, "hubmesh_adopted_out_connections").await? != 1 {
            assert!(Instant::now() < deadline, "the home does not see the thawed server");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        while let Err(error) = client.reconnect(&format!("{}?id={token}", hub(keeper)), 2).await {
            assert!(Instant::now() < deadline, "not resumed on its keeper: {error}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        println!("taken over by node {} from node {}", keeper + 1, server + 1);

        let sender = others
            .iter()
            .copied()
            .find(|index| *index != keeper)
            .ok_or("no third node")?;
        let context = cluster.context(sender, "demo").ok_or("no hub context")?;
        let to = hubmesh::ConnectionId::new(id.as_str());
        const SENT: u64 = 20;
        for n in 0..SENT {
            context.clients().client(&to).send("d", (n,))?;
        }
        let mut got = Numbered::default();
        while got.direct.len() < SENT as usize {
            match timeout(Duration::from_secs(5), client.read()).await {
                Ok(Ok(message)) => got.file(&message)?,
                _ => return Err(format!("of {SENT} direct messages, these arrived: {:?}", got.direct).into()),
            }
        }
        let expected: Vec<u64> = (0..SENT).collect();
        assert_eq!(got.direct, expected, "every direct message once, in order");
        cluster.stop().await;
        Ok::<_, Box<dyn Error + Send + Sync>>(())
    })
    .await?
}

async fn moved_then_killed(protocol: Protocol) -> TestResult {
    init_tracing();
    timeout(Duration::from_secs(120), async {
        let Moved {
            mut cluster,
            urls,
            mut client,
            token,
            id,
            server,
            others,
        } = moved_and_kept_anew(protocol).await?;
        let hub = |index: usize| format!("{}/hub", urls[index]);
        // Group and direct sends from a survivor that stays; its new node dies after the first 50 of each.
        let context = cluster.context(others[0], "demo").ok_or("no hub context")?;
        let to = hubmesh::ConnectionId::new(id.as_str());
        let sender = tokio::spawn(async move {
            for n in 0..COUNT {
                if context.clients().group("g").send("g", (n,)).is_err() {
                    return;
                }
                if context.clients().client(&to).send("d", (n,)).is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let mut got = Numbered::default();
        let mut killed_at = None;
        let mut resumed_after = None;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut attempt = 0;
        while got.group.len() < COUNT as usize || got.direct.len() < COUNT as usize {
            assert!(
                Instant::now() < deadline,
                "{} group and {} direct messages of {COUNT} arrived; missing: {:?} and {:?}",
                got.group.len(),
                got.direct.len(),
                missing(&got.group),
                missing(&got.direct)
            );
            if killed_at.is_none() && got.group.len() >= 50 && got.direct.len() >= 50 {
                cluster.kill(server).await;
                killed_at = Some(Instant::now());
            }
            match timeout(Duration::from_secs(5), client.read()).await {
                Ok(Ok(message)) => got.file(&message)?,
                Ok(Err(_)) | Err(_) => {
                    assert!(killed_at.is_some(), "the socket dropped before the kill");
                    // Through the other survivors, until its keeper took it over.
                    let through = hub(others[attempt % others.len()]);
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if client.reconnect(&format!("{through}?id={token}"), 2).await.is_ok() {
                        resumed_after = killed_at.map(|at| at.elapsed());
                    }
                }
            }
        }
        let _ = timeout(Duration::from_secs(5), sender).await;
        let expected: Vec<u64> = (0..COUNT).collect();
        assert_eq!(got.group, expected, "every group message once, in order");
        assert_eq!(got.direct, expected, "every direct message once, in order");
        let resumed_after = resumed_after.ok_or("never resumed after the kill")?;
        println!("resumed on its keeper {resumed_after:?} after the kill, after {attempt} attempts");

        // The same connection, still in its group.
        client.raw.send_invocation_with_id("who", "WhoAmI", json!([])).await?;
        client
            .raw
            .send_invocation_with_id("count", "GroupCount", json!(["g"]))
            .await?;
        let (mut who, mut count) = (None, None);
        while who.is_none() || count.is_none() {
            let message = timeout(Duration::from_secs(5), client.read()).await??;
            match message["invocationId"].as_str() {
                Some("who") => who = Some(message["result"].clone()),
                Some("count") => count = Some(message["result"].clone()),
                _ => {}
            }
        }
        assert_eq!(who, Some(json!(id)), "another connection");
        assert_eq!(count, Some(json!(1)), "its group does not count it once");
        Ok::<_, Box<dyn Error + Send + Sync>>(())
    })
    .await?
}
