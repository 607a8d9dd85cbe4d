//! `GET /metrics` on real nodes: the scrape is OpenMetrics text with every documented metric, its type and its
//! labels; the figures move with real traffic (connections, invocations by outcome, deliveries by kind, bytes,
//! disconnects by reason, link frames, a node declared dead); and several nodes in one process keep separate
//! figures (each node owns its registry).

use std::collections::BTreeMap;
use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use hubmesh::demo::demo_hub;
use hubmesh::testing::client::http_request;
use hubmesh::testing::{TestClient, TestCluster};
use hubmesh::{Limits, Node};
use serde_json::json;
use tokio::time::Instant;

type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

/// How long a figure may take to reach what a test waits for.
const LIMIT: Duration = Duration::from_secs(30);

/// Every metric a scrape describes, with its type (counters carry `_total` on their samples).
const METRICS: [(&str, &str); 58] = [
    ("hubmesh_connections", "gauge"),
    ("hubmesh_transport_connections", "gauge"),
    ("hubmesh_connects", "counter"),
    ("hubmesh_disconnects", "counter"),
    ("hubmesh_client_messages_received", "counter"),
    ("hubmesh_client_received_bytes", "counter"),
    ("hubmesh_client_written_bytes", "counter"),
    ("hubmesh_invocations", "counter"),
    ("hubmesh_deliveries", "counter"),
    ("hubmesh_stateful_resumes", "counter"),
    ("hubmesh_keeping_receipts_unheld", "counter"),
    ("hubmesh_groups_owned", "gauge"),
    ("hubmesh_group_memberships", "gauge"),
    ("hubmesh_bounds_hit", "counter"),
    ("hubmesh_mesh_bounds_hit", "counter"),
    ("hubmesh_adopted_out_connections", "gauge"),
    ("hubmesh_location_hints", "gauge"),
    ("hubmesh_tunnels", "gauge"),
    ("hubmesh_connections_moving_out", "gauge"),
    ("hubmesh_kept_connections", "gauge"),
    ("hubmesh_connections_kept_elsewhere", "gauge"),
    ("hubmesh_keeping_outbox_frames", "gauge"),
    ("hubmesh_kept_history_sends", "gauge"),
    ("hubmesh_connections_taken_over", "counter"),
    ("hubmesh_keeping_refused", "counter"),
    ("hubmesh_keeping_stale", "counter"),
    ("hubmesh_keeping_origins_refused", "counter"),
    ("hubmesh_kept_take_overs_remembered", "gauge"),
    ("hubmesh_keeping_take_overs_unchecked", "counter"),
    ("hubmesh_adoptions_refused", "counter"),
    ("hubmesh_tunnel_ends_fell_behind", "counter"),
    ("hubmesh_sends_passed_on", "counter"),
    ("hubmesh_sends_passed_home", "counter"),
    ("hubmesh_sends_offered", "counter"),
    ("hubmesh_hint_switches_given_up", "counter"),
    ("hubmesh_cut_off_closes", "counter"),
    ("hubmesh_ready", "gauge"),
    ("hubmesh_uptime_seconds", "gauge"),
    ("hubmesh_members", "gauge"),
    ("hubmesh_link_up", "gauge"),
    ("hubmesh_link_received_frames", "counter"),
    ("hubmesh_link_received_bytes", "counter"),
    ("hubmesh_link_peer_sent_frames", "counter"),
    ("hubmesh_link_peer_sent_bytes", "counter"),
    ("hubmesh_link_peer_received_frames", "counter"),
    ("hubmesh_link_peer_received_bytes", "counter"),
    ("hubmesh_link_queue_frames", "gauge"),
    ("hubmesh_link_queue_full", "counter"),
    ("hubmesh_link_stalls", "counter"),
    ("hubmesh_group_sends_waiting", "gauge"),
    ("hubmesh_group_sends_held", "counter"),
    ("hubmesh_group_sends_resent", "counter"),
    ("hubmesh_group_sends_missed_resent", "counter"),
    ("hubmesh_rehomes", "counter"),
    ("hubmesh_rehome_seconds", "counter"),
    ("hubmesh_rehome_last_seconds", "gauge"),
    ("hubmesh_membership_changes", "counter"),
    ("hubmesh_nodes_declared_dead", "counter"),
];

/// One scrape: samples by their name with labels as written (`name{label="value",…}`), and the described types.
#[derive(Debug)]
struct Scrape {
    samples: BTreeMap<String, f64>,
    types: BTreeMap<String, String>,
}

impl Scrape {
    /// The sample `key` (`name` or `name{…}`); 0 when the scrape has no such sample is never assumed.
    fn get(&self, key: &str) -> TestResult<f64> {
        self.samples
            .get(key)
            .copied()
            .ok_or_else(|| format!("no sample {key} in the scrape: {:?}", self.samples.keys()).into())
    }
}

fn addr(url: &str) -> TestResult<SocketAddr> {
    Ok(url.trim_start_matches("http://").parse()?)
}

fn node_addr(cluster: &TestCluster, index: usize) -> TestResult<SocketAddr> {
    addr(&cluster.url(index).ok_or("no such node")?)
}

async fn scrape(addr: SocketAddr) -> TestResult<Scrape> {
    let reply = http_request(addr, "GET", "/metrics", &[]).await?;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let content_type = reply.header("content-type").unwrap_or_default().to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "content type {content_type}"
    );
    let text = String::from_utf8(reply.body)?;
    assert!(
        text.ends_with("# EOF\n"),
        "an OpenMetrics scrape ends with # EOF: {text}"
    );
    let mut samples = BTreeMap::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(described) = line.strip_prefix("# TYPE ") {
            let (name, kind) = described.split_once(' ').ok_or(format!("bad TYPE line {line}"))?;
            types.insert(name.to_owned(), kind.to_owned());
        } else if !line.starts_with('#') && !line.is_empty() {
            let (key, value) = line.rsplit_once(' ').ok_or(format!("bad sample line {line}"))?;
            samples.insert(key.to_owned(), value.parse::<f64>()?);
        }
    }
    Ok(Scrape { samples, types })
}

/// Scrapes `addr` until `done` holds, within [`LIMIT`].
async fn scrape_until(addr: SocketAddr, what: &str, done: impl Fn(&Scrape) -> bool) -> TestResult<Scrape> {
    let deadline = Instant::now() + LIMIT;
    loop {
        let scraped = scrape(addr).await?;
        if done(&scraped) {
            return Ok(scraped);
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {LIMIT:?}; last scrape: {:?}", scraped.samples).into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sample(scraped: &Scrape, key: &str) -> f64 {
    scraped.samples.get(key).copied().unwrap_or(f64::NAN)
}

async fn demo_client(url: &str) -> TestResult<TestClient> {
    Ok(TestClient::to(&format!("{url}/hub")).connect().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_describes_every_metric_with_its_type_and_labels() -> TestResult {
    let cluster = TestCluster::start(2, || vec![demo_hub()]).await?;
    cluster.wait_for_members(LIMIT).await?;
    let first = node_addr(&cluster, 0)?;
    let scraped = scrape_until(first, "node-1's link to node-2 is up", |scraped| {
        sample(scraped, r#"hubmesh_link_up{peer="node-2"}"#) == 1.0
    })
    .await?;
    for (name, kind) in METRICS {
        assert_eq!(scraped.types.get(name).map(String::as_str), Some(kind), "{name}");
    }
    assert_eq!(
        scraped.types.len(),
        METRICS.len(),
        "undocumented metrics: {:?}",
        scraped.types
    );
    // Every label value a labelled family has, with no traffic yet: the figures are there from the start.
    for key in [
        r#"hubmesh_connections{hub="demo"}"#,
        r#"hubmesh_transport_connections{transport="WebSockets",protocol="json"}"#,
        r#"hubmesh_transport_connections{transport="LongPolling",protocol="messagepack"}"#,
        r#"hubmesh_connects_total{transport="ServerSentEvents",protocol="json"}"#,
        r#"hubmesh_disconnects_total{reason="normal"}"#,
        r#"hubmesh_disconnects_total{reason="timeout"}"#,
        r#"hubmesh_disconnects_total{reason="slow_consumer"}"#,
        r#"hubmesh_disconnects_total{reason="node_stopping"}"#,
        r#"hubmesh_disconnects_total{reason="error"}"#,
        r#"hubmesh_invocations_total{outcome="ok"}"#,
        r#"hubmesh_invocations_total{outcome="error"}"#,
        r#"hubmesh_invocations_total{outcome="refused"}"#,
        r#"hubmesh_invocations_total{outcome="stream"}"#,
        r#"hubmesh_deliveries_total{kind="direct"}"#,
        r#"hubmesh_deliveries_total{kind="group"}"#,
        r#"hubmesh_deliveries_total{kind="user"}"#,
        r#"hubmesh_deliveries_total{kind="broadcast"}"#,
        r#"hubmesh_groups_owned{hub="demo"}"#,
        r#"hubmesh_group_memberships{hub="demo"}"#,
        r#"hubmesh_bounds_hit_total{bound="queued_invocations"}"#,
        r#"hubmesh_bounds_hit_total{bound="streams"}"#,
        r#"hubmesh_bounds_hit_total{bound="abandoned_results"}"#,
        r#"hubmesh_bounds_hit_total{bound="negotiations"}"#,
        r#"hubmesh_members{state="dead"}"#,
        "hubmesh_client_messages_received_total",
        "hubmesh_client_written_bytes_total",
        "hubmesh_stateful_resumes_total",
        "hubmesh_keeping_receipts_unheld_total",
        "hubmesh_nodes_declared_dead_total",
        r#"hubmesh_link_queue_full_total{peer="node-2"}"#,
        "hubmesh_group_sends_waiting",
        "hubmesh_group_sends_resent_total",
    ] {
        assert_eq!(scraped.get(key)?, 0.0, "{key}");
    }
    assert_eq!(scraped.get("hubmesh_ready")?, 1.0);
    assert_eq!(scraped.get(r#"hubmesh_members{state="live"}"#)?, 2.0);
    assert!(scraped.get("hubmesh_uptime_seconds")? >= 0.0);
    // Joining already took link traffic (the peers' memberships), and a view change or more.
    assert!(scraped.get("hubmesh_link_received_frames_total")? >= 0.0);
    for key in [
        r#"hubmesh_link_peer_sent_frames_total{peer="node-2"}"#,
        r#"hubmesh_link_peer_received_bytes_total{peer="node-2"}"#,
        r#"hubmesh_link_queue_frames{peer="node-2"}"#,
        r#"hubmesh_link_stalls_total{peer="node-2"}"#,
        "hubmesh_group_sends_held_total",
        "hubmesh_rehomes_total",
        "hubmesh_rehome_seconds_total",
        "hubmesh_rehome_last_seconds",
    ] {
        assert!(scraped.get(key)? >= 0.0, "{key}");
    }
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn figures_move_with_real_traffic() -> TestResult {
    let mut cluster = TestCluster::start(3, || vec![demo_hub()]).await?;
    cluster.wait_for_members(LIMIT).await?;
    let (first, second) = (node_addr(&cluster, 0)?, node_addr(&cluster, 1)?);
    let first_url = cluster.url(0).ok_or("no node-1")?;
    let second_url = cluster.url(1).ok_or("no node-2")?;

    let mut member_here = demo_client(&first_url).await?;
    let mut member_there = demo_client(&second_url).await?;
    let mut caller = demo_client(&first_url).await?;
    member_here.join_group("room").await?;
    member_there.join_group("room").await?;

    let scraped = scrape(first).await?;
    assert_eq!(scraped.get(r#"hubmesh_connections{hub="demo"}"#)?, 2.0);
    assert_eq!(
        scraped.get(r#"hubmesh_transport_connections{transport="WebSockets",protocol="json"}"#)?,
        2.0
    );
    assert_eq!(
        scraped.get(r#"hubmesh_connects_total{transport="WebSockets",protocol="json"}"#)?,
        2.0
    );
    assert_eq!(scraped.get(r#"hubmesh_group_memberships{hub="demo"}"#)?, 1.0);
    // Each node's figures are its own: node-2 has one connection, node-3 none.
    assert_eq!(scrape(second).await?.get(r#"hubmesh_connections{hub="demo"}"#)?, 1.0);
    let third = scrape(node_addr(&cluster, 2)?).await?;
    assert_eq!(third.get(r#"hubmesh_connections{hub="demo"}"#)?, 0.0);
    assert_eq!(
        third.get(r#"hubmesh_connects_total{transport="WebSockets",protocol="json"}"#)?,
        0.0
    );
    let mut groups_owned = 0.0;
    for index in 0..3 {
        groups_owned += scrape(node_addr(&cluster, index)?)
            .await?
            .get(r#"hubmesh_groups_owned{hub="demo"}"#)?;
    }
    assert_eq!(groups_owned, 1.0, "the one group is owned once, cluster-wide");
    let before = scrape(first).await?;
    let before_second = scrape(second).await?;

    // A method that returns, one that does not exist, a group send and a broadcast. Each reply comes after its
    // outcome is counted; deliveries are counted as they are handed over, so the scrapes wait for them.
    let refused = caller.invoke("NoSuchMethod", json!([])).await?;
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|error| error.contains("does not exist")),
        "{refused}"
    );
    caller.invoke_ok_keeping_others("Echo", json!(["hello"])).await?;
    caller
        .invoke_ok_keeping_others("SendToGroup", json!(["room", "to the room"]))
        .await?;
    for client in [&mut member_here, &mut member_there] {
        let call = client.next_invocation_of("msg", Duration::from_secs(5)).await?;
        assert!(call.is_some(), "the group send arrived");
    }
    caller.invoke_ok_keeping_others("Broadcast", json!(["to all"])).await?;
    for client in [&mut member_here, &mut member_there] {
        let call = client.next_invocation_of("msg", Duration::from_secs(5)).await?;
        assert!(call.is_some(), "the broadcast arrived");
    }

    let grown = |before: &Scrape, now: &Scrape, key: &str| sample(now, key) - sample(before, key);
    let after = scrape_until(first, "node-1 counts the deliveries", |now| {
        grown(&before, now, r#"hubmesh_deliveries_total{kind="group"}"#) >= 1.0
            && grown(&before, now, r#"hubmesh_deliveries_total{kind="broadcast"}"#) >= 2.0
            && grown(&before, now, r#"hubmesh_deliveries_total{kind="direct"}"#) >= 1.0
    })
    .await?;
    let moved = |key: &str| -> TestResult<f64> { Ok(after.get(key)? - before.get(key)?) };
    assert_eq!(
        moved(r#"hubmesh_invocations_total{outcome="ok"}"#)?,
        3.0,
        "Echo, SendToGroup, Broadcast"
    );
    assert_eq!(
        moved(r#"hubmesh_invocations_total{outcome="refused"}"#)?,
        1.0,
        "NoSuchMethod"
    );
    assert_eq!(moved(r#"hubmesh_invocations_total{outcome="error"}"#)?, 0.0);
    assert!(moved("hubmesh_client_messages_received_total")? >= 4.0);
    assert_eq!(
        moved(r#"hubmesh_deliveries_total{kind="direct"}"#)?,
        1.0,
        "Echo sends to its caller"
    );
    assert_eq!(
        moved(r#"hubmesh_deliveries_total{kind="group"}"#)?,
        1.0,
        "node-1 holds one member"
    );
    assert_eq!(
        moved(r#"hubmesh_deliveries_total{kind="broadcast"}"#)?,
        2.0,
        "node-1 has two connections"
    );
    assert_eq!(moved(r#"hubmesh_deliveries_total{kind="user"}"#)?, 0.0);
    assert!(moved("hubmesh_client_received_bytes_total")? > 0.0);
    assert!(moved("hubmesh_client_written_bytes_total")? > 0.0);
    let after_second = scrape_until(second, "node-2 counts the deliveries", |now| {
        grown(&before_second, now, r#"hubmesh_deliveries_total{kind="group"}"#) >= 1.0
            && grown(&before_second, now, r#"hubmesh_deliveries_total{kind="broadcast"}"#) >= 1.0
    })
    .await?;
    let moved_there = |key: &str| -> TestResult<f64> { Ok(after_second.get(key)? - before_second.get(key)?) };
    assert_eq!(moved_there(r#"hubmesh_deliveries_total{kind="group"}"#)?, 1.0);
    assert_eq!(moved_there(r#"hubmesh_deliveries_total{kind="broadcast"}"#)?, 1.0);
    assert!(
        moved_there("hubmesh_link_received_frames_total")? >= 1.0,
        "the sends came over a link"
    );
    assert!(moved_there("hubmesh_link_received_bytes_total")? > 0.0);
    assert_eq!(
        moved_there(r#"hubmesh_invocations_total{outcome="ok"}"#)?,
        0.0,
        "nobody invoked on node-2"
    );

    // A client that closes its socket ends normally; the gauges follow.
    member_here.close_socket().await;
    let closed = scrape_until(first, "node-1 counts the closed connection", |scraped| {
        sample(scraped, r#"hubmesh_connections{hub="demo"}"#) == 1.0
            && sample(scraped, r#"hubmesh_disconnects_total{reason="normal"}"#) == 1.0
    })
    .await?;
    assert_eq!(
        closed.get(r#"hubmesh_transport_connections{transport="WebSockets",protocol="json"}"#)?,
        1.0
    );
    assert_eq!(closed.get(r#"hubmesh_group_memberships{hub="demo"}"#)?, 0.0);

    // A node that dies is declared dead by the others' views.
    cluster.kill(2).await;
    let survivor = scrape_until(first, "node-1 declares node-3 dead", |scraped| {
        sample(scraped, "hubmesh_nodes_declared_dead_total") >= 1.0
            && sample(scraped, r#"hubmesh_members{state="live"}"#) == 2.0
    })
    .await?;
    assert!(survivor.get("hubmesh_membership_changes_total")? >= 1.0);
    assert!(
        !survivor.samples.contains_key(r#"hubmesh_link_up{peer="node-3"}"#),
        "no link to a dead node"
    );
    drop((caller, member_there));
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_in_one_process_keep_separate_figures() -> TestResult {
    let busy = Node::builder().name("busy").hub(demo_hub()).start().await?;
    let idle = Node::builder().name("idle").hub(demo_hub()).start().await?;
    let busy_url = format!("http://{}", busy.local_addr());
    let mut client = demo_client(&busy_url).await?;
    client.invoke_ok_keeping_others("Echo", json!(["hello"])).await?;

    let busy_figures = scrape(busy.local_addr()).await?;
    let idle_figures = scrape(idle.local_addr()).await?;
    for key in [
        r#"hubmesh_connections{hub="demo"}"#,
        r#"hubmesh_connects_total{transport="WebSockets",protocol="json"}"#,
        r#"hubmesh_invocations_total{outcome="ok"}"#,
        r#"hubmesh_deliveries_total{kind="direct"}"#,
    ] {
        assert_eq!(busy_figures.get(key)?, 1.0, "busy: {key}");
        assert_eq!(idle_figures.get(key)?, 0.0, "idle: {key}");
    }
    // A single node sees itself live, with no cluster figures to move.
    assert_eq!(idle_figures.get(r#"hubmesh_members{state="live"}"#)?, 1.0);
    assert!(idle_figures.types.contains_key("hubmesh_link_up"));
    drop(client);
    busy.stop().await;
    idle.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_counted_as_timed_out() -> TestResult {
    let limits = Limits {
        client_timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    let node = Node::builder()
        .name("strict")
        .hub(demo_hub())
        .limits(limits)
        .start()
        .await?;
    // Sends nothing after its handshake, not even Pings.
    let silent = demo_client(&format!("http://{}", node.local_addr())).await?;
    let scraped = scrape_until(
        node.local_addr(),
        "the silent client is closed for its timeout",
        |scraped| sample(scraped, r#"hubmesh_disconnects_total{reason="timeout"}"#) == 1.0,
    )
    .await?;
    assert_eq!(scraped.get(r#"hubmesh_connections{hub="demo"}"#)?, 0.0);
    assert_eq!(scraped.get(r#"hubmesh_disconnects_total{reason="error"}"#)?, 0.0);
    assert_eq!(scraped.get(r#"hubmesh_disconnects_total{reason="normal"}"#)?, 0.0);
    drop(silent);
    node.stop().await;
    Ok(())
}

/// The payloads of the `msg` invocations `client` gets until it has `count` or none comes for 10 s.
async fn payloads(client: &mut TestClient, count: usize) -> TestResult<Vec<String>> {
    let mut got = Vec::new();
    while got.len() < count {
        let Some(call) = client.next_invocation_of("msg", Duration::from_secs(10)).await? else {
            break;
        };
        got.push(call.value["arguments"][0].as_str().unwrap_or_default().to_owned());
    }
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_held_resent_and_rehome_figures_move_with_real_traffic() -> TestResult {
    let mut cluster = TestCluster::start(3, || vec![demo_hub()]).await?;
    cluster.wait_for_members(LIMIT).await?;
    let (first, second) = (node_addr(&cluster, 0)?, node_addr(&cluster, 1)?);
    let mut caller = demo_client(&cluster.url(0).ok_or("no node-1")?).await?;
    let mut member = demo_client(&cluster.url(1).ok_or("no node-2")?).await?;
    // Forty groups: each node owns some of them (all forty on two nodes has odds of 2 in 10 million).
    let groups: Vec<String> = (0..40).map(|index| format!("g{index}")).collect();
    for group in &groups {
        member.join_group(group).await?;
    }
    let mut sent = Vec::new();
    let mut send_round = async |caller: &mut TestClient, round: &str| -> TestResult {
        for group in &groups {
            let payload = format!("{round}:{group}");
            caller
                .invoke_ok_keeping_others("SendToGroup", json!([group, payload]))
                .await?;
            sent.push(payload);
        }
        Ok(())
    };
    let before = scrape(first).await?;
    let before_second = scrape(second).await?;
    send_round(&mut caller, "a").await?;
    let grown = |before: &Scrape, now: &Scrape, key: &str| sample(now, key) - sample(before, key);
    let after = scrape_until(first, "node-1 counts frames to both peers", |now| {
        grown(&before, now, r#"hubmesh_link_peer_sent_frames_total{peer="node-2"}"#) >= 1.0
            && grown(&before, now, r#"hubmesh_link_peer_sent_frames_total{peer="node-3"}"#) >= 1.0
    })
    .await?;
    assert!(grown(&before, &after, r#"hubmesh_link_peer_sent_bytes_total{peer="node-3"}"#) > 0.0);
    scrape_until(second, "node-2 counts frames from node-1", |now| {
        grown(
            &before_second,
            now,
            r#"hubmesh_link_peer_received_frames_total{peer="node-1"}"#,
        ) >= 1.0
            && grown(
                &before_second,
                now,
                r#"hubmesh_link_peer_received_bytes_total{peer="node-1"}"#,
            ) > 0.0
    })
    .await?;
    assert_eq!(payloads(&mut member, 40).await?.len(), 40, "round a arrived");

    // node-3 stops reading (SIGSTOP, for its peers): what node-1 hands it waits in the link's queue, and the link
    // stalls. node-1 keeps those sends, to send them again if node-3 dies before its members got them.
    cluster.freeze(2);
    let before = scrape(first).await?;
    send_round(&mut caller, "b").await?;
    scrape_until(first, "node-1's queue to the frozen node-3 fills and stalls", |now| {
        sample(now, r#"hubmesh_link_queue_frames{peer="node-3"}"#) >= 1.0
            && grown(&before, now, r#"hubmesh_link_stalls_total{peer="node-3"}"#) >= 1.0
    })
    .await?;
    // It dies: sends to the groups it owned are held until the view drops it, then go to the new owners, and
    // the sends it never passed on go again.
    cluster.kill(2).await;
    send_round(&mut caller, "c").await?;
    let after = scrape_until(first, "node-1 re-homes without node-3", |now| {
        sample(now, r#"hubmesh_members{state="live"}"#) == 2.0
            && grown(&before, now, "hubmesh_group_sends_resent_total") >= 1.0
            && grown(&before, now, "hubmesh_rehomes_total") >= 1.0
            && sample(now, "hubmesh_group_sends_waiting") == 0.0
    })
    .await?;
    assert!(
        grown(&before, &after, "hubmesh_group_sends_held_total") >= 1.0,
        "round c waited for node-3's groups"
    );
    assert!(grown(&before, &after, "hubmesh_rehome_seconds_total") > 0.0);
    assert!(after.get("hubmesh_rehome_last_seconds")? > 0.0);
    assert!(
        !after
            .samples
            .contains_key(r#"hubmesh_link_peer_sent_frames_total{peer="node-3"}"#),
        "a peer that left is no longer a label"
    );
    let mut got = payloads(&mut member, 80).await?;
    got.sort();
    let mut expected: Vec<String> = sent[40..].to_vec();
    expected.sort();
    assert_eq!(got, expected, "rounds b and c arrived, each once");
    drop(caller);
    cluster.stop().await;
    Ok(())
}
