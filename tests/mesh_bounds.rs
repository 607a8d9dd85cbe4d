//! The mesh's bounds under load, on in-process clusters (`TestCluster`): a node's snapshot of many memberships
//! crosses the link frame cap in parts, group sends at a high rate survive their owner's death, and the mesh's
//! queues refuse or push back past their bounds instead of growing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::error::Error;
use std::time::Duration;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use hubmesh::demo::demo_hub;
use hubmesh::testing::{TestClient, TestCluster};
use hubmesh::{ConnectionId, HubContext};
use serde_json::json;
use tokio::time::{timeout, Instant};

type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

/// How many hub calls a test keeps in flight at once.
const IN_FLIGHT: usize = 64;

async fn three_nodes() -> TestResult<TestCluster> {
    let cluster = TestCluster::start(3, || vec![demo_hub()]).await?;
    cluster.wait_for_members(Duration::from_secs(10)).await?;
    Ok(cluster)
}

/// `count` demo clients on node `index`, with their connection ids.
async fn clients_on(cluster: &TestCluster, index: usize, count: usize) -> TestResult<Vec<(TestClient, ConnectionId)>> {
    let url = format!("{}/hub", cluster.url(index).ok_or("node not running")?);
    let mut clients = Vec::new();
    for _ in 0..count {
        let mut client = TestClient::to(&url).connect().await?;
        let id = client.invoke_ok_keeping_others("WhoAmI", json!([])).await?;
        let id = ConnectionId::new(id.as_str().ok_or("no id")?);
        clients.push((client, id));
    }
    Ok(clients)
}

/// Every group whose count through `context` is not `expected`, with its count.
async fn miscounted(context: &HubContext, groups: &[String], expected: usize) -> TestResult<Vec<(String, usize)>> {
    let counts: Vec<(String, usize)> = stream::iter(groups.iter().cloned())
        .map(|group| async move {
            let count = context.groups().count(&group).await?;
            TestResult::Ok((group, count))
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect()
        .await?;
    Ok(counts.into_iter().filter(|(_, count)| *count != expected).collect())
}

/// A node whose snapshot is several times the link frame cap (1 MiB by default) loses none of its memberships
/// when the owner of some of its groups dies: their new owner gets the snapshot in parts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_membership_survives_re_homing_a_node_with_100_000_of_them() -> TestResult {
    const CONNECTIONS: usize = 50;
    const GROUPS: usize = 2_000;
    timeout(Duration::from_secs(240), async {
        let mut cluster = three_nodes().await?;
        let mut clients = clients_on(&cluster, 0, CONNECTIONS).await?;
        let groups: Vec<String> = (0..GROUPS).map(|n| format!("big-{n}")).collect();
        let context = cluster.context(0, "demo").ok_or("no hub context")?;

        // Joined on the members' own node, as a hub method would: 100,000 memberships.
        let started = Instant::now();
        let joins = clients
            .iter()
            .flat_map(|(_, id)| groups.iter().map(move |group| (id.clone(), group.clone())));
        stream::iter(joins)
            .map(|(id, group)| {
                let context = &context;
                async move { context.groups().add(&id, &group).await }
            })
            .buffer_unordered(IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await?;
        println!("{} memberships joined in {:?}", CONNECTIONS * GROUPS, started.elapsed());
        for (client, _) in &mut clients {
            client.send_ping().await?;
        }

        // The owner of about a third of the groups dies; they move to the two survivors.
        let killed_at = Instant::now();
        cluster.kill(1).await;
        cluster.wait_for_members(Duration::from_secs(10)).await?;
        let deadline = killed_at + Duration::from_secs(30);
        loop {
            let wrong = miscounted(&context, &groups, CONNECTIONS).await?;
            if wrong.is_empty() {
                println!("every membership re-homed {:?} after the kill", killed_at.elapsed());
                break;
            }
            if Instant::now() > deadline {
                let sample: Vec<_> = wrong.iter().take(5).collect();
                return Err(format!("{} of {GROUPS} groups lost members, e.g. {sample:?}", wrong.len()).into());
            }
            for (client, _) in &mut clients {
                client.send_ping().await?;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Counted from the other survivor too, and the members are the very connections.
        let other = cluster.context(2, "demo").ok_or("no hub context")?;
        assert!(miscounted(&other, &groups, CONNECTIONS).await?.is_empty());
        let mut expected: Vec<String> = clients.iter().map(|(_, id)| id.to_string()).collect();
        expected.sort();
        for group in groups.iter().step_by(97) {
            let mut members: Vec<String> = other
                .groups()
                .members(group)
                .await?
                .iter()
                .map(ToString::to_string)
                .collect();
            members.sort();
            assert_eq!(members, expected, "group {group}");
        }
        cluster.stop().await;
        TestResult::Ok(())
    })
    .await?
}
