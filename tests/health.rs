//! `GET /healthz`, `GET /readyz` and `GET /_hubmesh/status` on in-process clusters: a node alone is ready, a node
//! that joins makes both ready once their links are up, a killed peer leaves the view, and the survivor stays ready
//! throughout; the status report names every member with its generation, status, addresses and uptime, and the links;
//! peers see a draining node draining while it runs. The single-node and not-yet-joined cases are unit tests beside the routes (`src/node/http/health.rs`).

use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use hubmesh::status::StatusReport;
use hubmesh::testing::client::http_request;
use hubmesh::testing::TestCluster;
use hubmesh::Hub;
use serde_json::Value;
use tokio::time::Instant;

type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

/// How long a cluster may take to reach the state a test waits for.
const LIMIT: Duration = Duration::from_secs(30);

fn addr(cluster: &TestCluster, index: usize) -> TestResult<SocketAddr> {
    let url = cluster.url(index).ok_or("no such node")?;
    Ok(url.trim_start_matches("http://").parse()?)
}

async fn get(addr: SocketAddr, path: &str) -> TestResult<(u16, Value)> {
    let reply = http_request(addr, "GET", path, &[]).await?;
    Ok((reply.status, serde_json::from_slice(&reply.body)?))
}

async fn status(addr: SocketAddr) -> TestResult<StatusReport> {
    let reply = http_request(addr, "GET", "/_hubmesh/status", &[]).await?;
    assert_eq!(reply.status, 200, "{}", reply.text());
    Ok(serde_json::from_slice(&reply.body)?)
}

/// Polls `addr`'s status report until `done` holds, within [`LIMIT`].
async fn wait_for_status(
    addr: SocketAddr,
    what: &str,
    done: impl Fn(&StatusReport) -> bool,
) -> TestResult<StatusReport> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let report = status(addr).await?;
        if done(&report) {
            return Ok(report);
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {LIMIT:?}; last report: {report:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn hubs() -> Vec<Hub> {
    vec![Hub::new("chat")]
}

fn member_names(report: &StatusReport) -> Vec<&str> {
    report.members.iter().map(|member| member.name.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_joining_and_losing_a_peer() -> TestResult {
    let mut cluster = TestCluster::start(1, hubs).await?;
    let first = addr(&cluster, 0)?;
    assert_eq!(get(first, "/healthz").await?.0, 200);
    let (code, body) = get(first, "/readyz").await?;
    assert_eq!(code, 200, "a node alone in its cluster is ready: {body}");
    assert_eq!(body["ready"], true);

    let second = cluster.add_backend("chat").await?;
    let second_addr = addr(&cluster, second)?;
    let joined = |report: &StatusReport| {
        report.ready && report.members.len() == 2 && report.links.len() == 1 && report.links.iter().all(|link| link.up)
    };
    wait_for_status(first, "node-1 sees the new node with its link up", joined).await?;
    wait_for_status(second_addr, "the new node sees node-1 with its link up", joined).await?;
    for node in [first, second_addr] {
        let (code, body) = get(node, "/readyz").await?;
        assert_eq!(code, 200, "{body}");
    }

    cluster.kill(second).await;
    // A peer that dies does not take the survivor out of rotation: with the dead peer's link down (or the peer
    // already gone from the view), node-1 stays ready.
    let link_down = wait_for_status(first, "node-1 sees the link to the killed node down", |report| {
        report.links.iter().all(|link| !link.up)
    })
    .await?;
    assert!(
        link_down.ready,
        "a dead peer's link made the survivor unready: {link_down:?}"
    );
    let alone = wait_for_status(first, "node-1 is ready alone again", |report| {
        report.ready && report.members.len() == 1 && report.links.is_empty()
    })
    .await?;
    assert_eq!(member_names(&alone), ["node-1"]);
    assert_eq!(get(first, "/readyz").await?.0, 200);
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_report_names_every_member_with_its_links() -> TestResult {
    let cluster = TestCluster::start(3, hubs).await?;
    cluster.wait_for_members(LIMIT).await?;
    let report = wait_for_status(
        addr(&cluster, 0)?,
        "node-1 sees every node serving, links up",
        |report| {
            report.ready
                && report.members.len() == 3
                && report
                    .members
                    .iter()
                    .all(|member| member.status.as_deref() == Some("serving"))
                && report.links.len() == 2
                && report.links.iter().all(|link| link.up)
        },
    )
    .await?;
    assert_eq!(report.node, "node-1");
    assert!(report.clustered);
    assert_eq!(report.status, "serving");
    assert_eq!(member_names(&report), ["node-1", "node-2", "node-3"]);
    let local: Vec<bool> = report.members.iter().map(|member| member.local).collect();
    assert_eq!(local, [true, false, false]);
    for member in &report.members {
        assert!(member.generation.is_some(), "{member:?}");
        assert!(
            member.gossip_address.is_some() && member.link_address.is_some(),
            "{member:?}"
        );
        assert!(member.started_ms.is_some() && member.uptime_ms.is_some(), "{member:?}");
        assert_eq!(member.hubs, ["chat"], "{member:?}");
        assert_eq!(member.link_up, (!member.local).then_some(true), "{member:?}");
    }
    assert_eq!(report.generation, report.members[0].generation);
    assert_eq!(report.hubs.len(), 1);
    assert_eq!((report.hubs[0].name.as_str(), report.hubs[0].connections), ("chat", 0));
    assert!(report.dead.is_empty(), "{report:?}");
    cluster.stop().await;
    Ok(())
}

/// A drain is gossiped at once (docs/semantics.md, "Drain"): while the draining node still runs, every peer's view
/// names it draining, the peers stay ready, and the draining node answers `/readyz` with 503 and `/healthz` with
/// 200 until it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_see_a_draining_node_draining_while_it_runs() -> TestResult {
    let cluster = TestCluster::start(3, hubs).await?;
    cluster.wait_for_members(LIMIT).await?;
    for index in 0..2 {
        wait_for_status(addr(&cluster, index)?, "every node serving", |report| {
            report.members.len() == 3
                && report
                    .members
                    .iter()
                    .all(|member| member.status.as_deref() == Some("serving"))
        })
        .await?;
    }
    let draining = cluster.node(2).ok_or("no node 3")?.clone();
    tokio::time::timeout(LIMIT, draining.drain(Duration::from_millis(100))).await?;
    let drained = addr(&cluster, 2)?;
    assert_eq!(get(drained, "/readyz").await?.0, 503, "a draining node is not ready");
    assert_eq!(
        get(drained, "/healthz").await?.0,
        200,
        "a draining node is healthy until it stops"
    );
    for index in 0..2 {
        let report = wait_for_status(addr(&cluster, index)?, "node-3 seen draining", |report| {
            report
                .members
                .iter()
                .any(|member| member.name == "node-3" && member.status.as_deref() == Some("draining"))
        })
        .await?;
        assert!(report.ready, "a peer of a draining node stays ready: {report:?}");
        assert_eq!(report.status, "serving");
        assert_eq!(get(addr(&cluster, index)?, "/readyz").await?.0, 200);
    }
    cluster.stop().await;
    Ok(())
}
