//! A draining node hands its groups over *before* it leaves (docs/semantics.md, "Drain"; issue: "Drain and rolling
//! restart"): once its connections are gone it owns nothing, its groups' next owners order their sends while it is
//! still live, and members on every other node see each group's sends once, in one order (the same on every node),
//! with each sender's order kept, while two nodes send to the groups all along. Before, the groups moved only when
//! the node left, as at a death, and the sends the leaving owner had fanned out to some nodes only went again
//! through the new owner in another order (chaos defect 25, `tests/cli/chaos/README.md`).
//!
//! Four in-process nodes of the demo hub; the groups are those node 4 owns while it serves. Everything runs on
//! 127.0.0.1; every wait has a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::error::Error;
use std::time::Duration;

use hubmesh::cluster::placement::owner;
use hubmesh::cluster::NodeId;
use hubmesh::demo::demo_hub;
use hubmesh::testing::{TestClient, TestCluster};
use hubmesh::Limits;
use serde_json::{json, Value};
use tokio::time::{timeout, Instant};

type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

/// The node that drains.
const DRAINING: usize = 3;
/// Each sender's sends to each group; one to every group every 3 ms.
const COUNT: u64 = 500;

/// The bytes placement hashes for a named group of the demo hub (`GroupKey::placement_bytes`).
fn placement_key(group: &str) -> Vec<u8> {
    let mut bytes = b"demo\0g\0".to_vec();
    bytes.extend_from_slice(group.as_bytes());
    bytes
}

async fn groups_owned(cluster: &TestCluster, index: usize) -> TestResult<u64> {
    let url = cluster.url(index).ok_or("node not running")?;
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse()?;
    let status = hubmesh::testing::client::http_request_with_body(addr, "GET", "/_hubmesh/status", &[], b"").await?;
    let status: Value = serde_json::from_slice(&status.body)?;
    Ok(status["groups_owned"]
        .as_u64()
        .ok_or_else(|| format!("no groups_owned in {status}"))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_owner_hands_its_groups_over_before_it_leaves_and_every_node_sees_one_order() -> TestResult {
    handover(Links::AsTheyAre).await
}

/// The old owner's last fan-outs to node 3 are held on their link (gossip flows) while the new owners' first ones
/// reach it: node 3 must wait for them (the old owner's release comes after them), or it would see those groups'
/// sends in another order than nodes 1 and 2 do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_gets_the_new_owners_sends_first_waits_for_the_old_owners_last_ones() -> TestResult {
    handover(Links::SlowToNodeThree).await
}

#[derive(Clone, Copy, PartialEq)]
enum Links {
    AsTheyAre,
    /// The links between node 4 and node 3 hold every frame from the drain's start for `SLOW_FOR`.
    SlowToNodeThree,
}

const SLOW_FOR: Duration = Duration::from_millis(1500);

async fn handover(links: Links) -> TestResult {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()))
        .with_test_writer()
        .try_init();
    timeout(Duration::from_secs(120), async {
        // The members read as fast as a debug build lets them, behind bursts: room for every send, so that none is
        // closed as a slow consumer (this test is about order).
        let limits = Limits {
            outbound_queue: 100_000,
            ..Limits::default()
        };
        let mut cluster = TestCluster::start_with_limits(4, limits, || vec![demo_hub()]).await?;
        cluster.wait_for_members(Duration::from_secs(20)).await?;
        let names: Vec<NodeId> = (1..=4).map(|n| NodeId::new(format!("node-{n}"), 1)).collect();
        let groups: Vec<String> = (0..400)
            .map(|n| format!("h{n}"))
            .filter(|group| owner(&placement_key(group), &names).is_some_and(|owner| &*owner.name == "node-4"))
            .take(8)
            .collect();
        assert_eq!(groups.len(), 8, "too few groups owned by node 4");
        // Members on the three nodes that stay, and one on the draining node (it is closed by the drain).
        let mut members = Vec::new();
        for index in 0..4 {
            let url = cluster.url(index).ok_or("node not running")?;
            let mut client = TestClient::to(&format!("{url}/hub")).connect().await?;
            for group in &groups {
                client.join_group(group).await?;
            }
            members.push(client);
        }
        let _drained_member = members.pop();
        // Each member reads all along, as a client does (one that does not is closed as a slow consumer).
        let total = 2 * COUNT * groups.len() as u64;
        let readers: Vec<_> = members
            .into_iter()
            .enumerate()
            .map(|(index, member)| tokio::spawn(read_all(index, member, total)))
            .collect();
        // Two senders on two other nodes interleave.
        let mut senders = Vec::new();
        for (index, name) in [(0, "a"), (1, "b")] {
            let context = cluster.context(index, "demo").ok_or("no hub context")?;
            let groups = groups.clone();
            senders.push(tokio::spawn(async move {
                for n in 0..COUNT {
                    for group in &groups {
                        let payload = json!({"s": name, "g": group, "n": n});
                        if context.clients().group(group).send("msg", (payload,)).is_err() {
                            return;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while groups_owned(&cluster, DRAINING).await? == 0 {
            assert!(Instant::now() < deadline, "node 4 never owned its groups");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        if links == Links::SlowToNodeThree {
            cluster.partition_links(DRAINING, 2);
        }
        let draining = cluster.node(DRAINING).ok_or("no node 4")?.clone();
        let drain = tokio::spawn(async move { draining.drain(Duration::from_millis(400)).await });
        if links == Links::SlowToNodeThree {
            tokio::time::sleep(SLOW_FOR).await;
            cluster.heal_links();
        }
        // It owns nothing well before it leaves: its groups were handed over while it is live (its one member is
        // closed by the drain's 400 ms window, then it hands over).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let owned = groups_owned(&cluster, DRAINING).await?;
            if owned == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "a draining node still owns {owned} groups after 5 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        timeout(Duration::from_secs(30), drain).await??;
        // It leaves (gracefully: it says so) while the sends go on.
        cluster.leave(DRAINING).await;
        for sender in senders {
            timeout(Duration::from_secs(30), sender).await??;
        }
        // Every member got every send once, each sender's in order, and each group's sends in one order.
        let mut orders = Vec::new();
        for reader in readers {
            orders.push(timeout(Duration::from_secs(60), reader).await???);
        }
        for group in &groups {
            for (index, order) in orders.iter().enumerate().skip(1) {
                if order[group] != orders[0][group] {
                    let at = order[group].iter().zip(&orders[0][group]).position(|(a, b)| a != b);
                    return Err(format!(
                        "group {group}: node {} and node 1 saw different orders (first difference at {at:?}: {:?} against {:?})",
                        index + 1,
                        at.map(|at| &order[group][at]),
                        at.map(|at| &orders[0][group][at]),
                    )
                    .into());
                }
            }
        }
        cluster.stop().await;
        Ok(())
    })
    .await?
}

/// Per group, the (sender, number) pairs member `index` got, in order, once it got `total` sends; checks each
/// sender's order and that nothing came twice.
async fn read_all(index: usize, mut member: TestClient, total: u64) -> TestResult<HashMap<String, Vec<(String, u64)>>> {
    let mut order: HashMap<String, Vec<(String, u64)>> = HashMap::new();
    let mut next: HashMap<(String, String), u64> = HashMap::new();
    for _ in 0..total {
        let call = member
            .next_invocation_of("msg", Duration::from_secs(10))
            .await
            .map_err(|error| format!("member on node {}: {error:?}; got so far {next:?}", index + 1))?;
        let Some(call) = call else {
            return Err(format!(
                "member on node {}: a group send was lost; got so far {next:?}",
                index + 1
            )
            .into());
        };
        let got = &call.value["arguments"][0];
        let (sender, group) = (got["s"].as_str().ok_or("no s")?, got["g"].as_str().ok_or("no g")?);
        let n = got["n"].as_u64().ok_or("no n")?;
        let expected = next.entry((sender.to_owned(), group.to_owned())).or_insert(0);
        if n != *expected {
            return Err(format!(
                "member on node {}: {sender}'s sends to {group} out of order, lost or repeated: {n} where {expected} was due",
                index + 1
            )
            .into());
        }
        *expected += 1;
        order.entry(group.to_owned()).or_default().push((sender.to_owned(), n));
    }
    let extra = member.next_invocation_of("msg", Duration::from_millis(300)).await?;
    if extra.is_some() {
        return Err(format!("member on node {}: a send came twice: {extra:?}", index + 1).into());
    }
    Ok(order)
}
