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

use hubmesh::cluster::placement::{owner, ranked};
use hubmesh::cluster::NodeId;
use hubmesh::demo::demo_hub;
use hubmesh::mesh::GroupKey;
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

/// Chaos defect 29: a second take-over gave the client again group sends it had got before the first. The node that
/// took the connection over first kept it anew with a copy that did not say what the client got of its groups, so
/// when the group's owner died with that node, the sends its sender sent again to the new owner (the last seconds'
/// worth) went into the history of the next keeper (the sender's node, which followed the group only from the first
/// take-over and had no record of them), and from there to the client once more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_take_over_gives_nothing_again_when_the_groups_owner_died_with_the_first() -> TestResult {
    init_tracing();
    timeout(Duration::from_secs(120), async {
        let mut cluster = TestCluster::start(4, || vec![demo_hub()]).await?;
        cluster.wait_for_members(Duration::from_secs(10)).await?;
        let urls: Vec<String> = (0..4).filter_map(|index| cluster.url(index)).collect();
        let hub = |index: usize| format!("{}/hub", urls[index]);
        let peers = incarnations_seen_by(&urls[SERVER], "node-4").await?;
        assert_eq!(peers.len(), 3, "node 4 sees {peers:?}");
        let everyone = incarnations_seen_by(&urls[SERVER], "").await?;
        assert_eq!(everyone.len(), 4, "node 4 sees {everyone:?}");
        let sender = 0;
        let (token, _) = with_second_keeper(&hub(SERVER), &peers, "node-1").await?;
        let mut client = StatefulClient::connect_with(&format!("{}?id={token}", hub(SERVER)), Protocol::Json).await?;
        let first_keeper = kept_by_one_of(&urls, &[0, 1, 2]).await?;
        assert_ne!(first_keeper, sender, "the keeper rendezvous picked");
        // A group its first keeper owns, with node 4 and without it.
        let group = group_owned_by(first_keeper, &[&everyone, &peers])?;
        client.join(&group).await?;

        let context = cluster.context(sender, "demo").ok_or("no hub context")?;
        let mut got = Numbered::default();
        let reconnects = std::cell::Cell::new(0);
        // The sends it gets on its server, the last of them at most a few seconds before the second death.
        for n in 0..BURST {
            context.clients().group(&group).send("g", (n,))?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        read_until(&mut client, &mut got, BURST as usize, &token, &hub, &reconnects).await?;
        let burst_at = Instant::now();
        // Taken over by its first keeper, which keeps it anew on the sender's node: that node follows the group
        // from then on, and no send goes to the group meanwhile.
        cluster.kill(SERVER).await;
        let others: Vec<usize> = (0..3).filter(|index| *index != first_keeper).collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match client.read_within(Duration::from_millis(200)).await {
                Ok(Some(message)) => got.file(&message)?,
                Ok(None) => {}
                // Through its keeper, which takes it over once the death is detected.
                Err(_) => {
                    if client
                        .reconnect(&format!("{}?id={token}", hub(first_keeper)), 2)
                        .await
                        .is_err()
                    {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
            }
            if the_one_with(&urls, &others, "hubmesh_kept_connections").await? == Some(sender)
                && cluster
                    .context(first_keeper, "demo")
                    .ok_or("no keeper")?
                    .local_connection_count()
                    == 1
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not taken over and kept again on the sender's node"
            );
        }
        // The group's owner dies with the first keeper, while its sender still holds the burst for a new owner
        // (8 s): it sends it again.
        let held = burst_at.elapsed();
        cluster.kill(first_keeper).await;
        read_until(&mut client, &mut got, BURST as usize, &token, &hub, &reconnects).await?;
        for n in BURST..BURST + AFTER {
            context.clients().group(&group).send("g", (n,))?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        read_until(
            &mut client,
            &mut got,
            (BURST + AFTER) as usize,
            &token,
            &hub,
            &reconnects,
        )
        .await?;
        // Anything more (a send given again) would come now.
        while let Some(message) = client.read_within(Duration::from_millis(500)).await? {
            got.file(&message)?;
        }
        let expected: Vec<u64> = (0..BURST + AFTER).collect();
        assert_eq!(
            got.group,
            expected,
            "every group message once, in order ({} reconnects; the owner died {held:?} after the burst)",
            reconnects.get()
        );
        assert_eq!(
            cluster
                .context(sender, "demo")
                .ok_or("no node")?
                .local_connection_count(),
            1,
            "taken over twice"
        );
        cluster.stop().await;
        Ok(())
    })
    .await?
}

/// Chaos defect 30: a client that resumed on the node that took its connection over, and acknowledged what it had
/// got from its dead server before that node's own keeper held the connection's copy, lost as many later messages
/// as it had acknowledged (and, at its next resume, got as many again). The resume's Sequence named the first
/// unacknowledged record, which the client had already; the Ack dropped those records from the buffer before they
/// were written on the new socket, so the first record written was a later one, which the client took for the one
/// the Sequence named, and dropped as a repeat. Here the links between the first keeper and the next (which keeps
/// the taken-over connection) hold everything until after the client's Ack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_before_the_new_keeper_holds_the_copy_loses_nothing() -> TestResult {
    init_tracing();
    timeout(Duration::from_secs(120), async {
        // Its keeper takes it over; the next one keeps it then; the fourth node sends, and owns the group.
        let Setup {
            mut cluster,
            urls,
            token,
            keepers,
            group,
            mut client,
        } = four_nodes_and_a_joined_client().await?;
        let hub = |index: usize| format!("{}/hub", urls[index]);
        let (first, next, sender) = (keepers[0], keepers[1], keepers[2]);
        let context = cluster.context(sender, "demo").ok_or("no hub context")?;
        let mut got = Numbered::default();
        let reconnects = std::cell::Cell::new(0);
        for n in 0..BURST {
            context.clients().group(&group).send("g", (n,))?;
        }
        // Got, and not acknowledged: all of it is in the copy its keeper takes over.
        read_until(&mut client, &mut got, BURST as usize, &token, &hub, &reconnects).await?;
        cluster.partition_links(first, next);
        cluster.kill(SERVER).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        // Through its keeper, which takes it over once the death is detected.
        while client
            .reconnect(&format!("{}?id={token}", hub(first)), 2)
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "no resume at its keeper");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert_eq!(
            cluster
                .context(first, "demo")
                .ok_or("no keeper")?
                .local_connection_count(),
            1,
            "taken over by its keeper"
        );
        // The Sequence comes; no record can (the new keeper holds nothing yet). Then the Ack of what it has.
        if let Some(message) = client.read_within(Duration::from_millis(500)).await? {
            got.file(&message)?;
        }
        let acked = client.received;
        client.raw.send_ack(acked).await?;
        for n in BURST..BURST + AFTER {
            context.clients().group(&group).send("g", (n,))?;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        cluster.heal_links();
        // On the same socket: a reconnect would start the numbering over and hide a slip.
        let until = Instant::now() + Duration::from_secs(15);
        while got.group.len() < (BURST + AFTER) as usize && Instant::now() < until {
            if let Some(message) = client.read_within(Duration::from_millis(500)).await? {
                got.file(&message)?;
            }
        }
        while let Some(message) = client.read_within(Duration::from_millis(500)).await? {
            got.file(&message)?;
        }
        let expected: Vec<u64> = (0..BURST + AFTER).collect();
        assert_eq!(
            got.group, expected,
            "every group message once, in order (acknowledged {acked} at the resume)"
        );
        cluster.stop().await;
        Ok(())
    })
    .await?
}

/// Chaos (the memberships of seed 1796631002345905947, `tests/cli/chaos/README.md`): a connection its keeper took
/// over rejoins its groups there, each at the group's owner. When the owner did not answer (three owners left the
/// keeper's view in a row in the chaos run; here the links between the keeper and the owner hold everything for
/// longer than the mesh's request timeout), the keeper undid the join as for a client's own, though the client
/// was never told: the connection was in the group no more, its kept member was gone too, and the owner's sends
/// (once it had the late registration) reached its node and no member there. The membership now stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_over_connection_stays_in_its_group_when_its_owner_does_not_answer_the_rejoin() -> TestResult {
    init_tracing();
    timeout(Duration::from_secs(120), async {
        // Its keeper takes it over; the third in its ranking owns the group, and sends to it.
        let Setup {
            mut cluster,
            urls,
            token,
            keepers,
            group,
            mut client,
        } = four_nodes_and_a_joined_client().await?;
        let hub = |index: usize| format!("{}/hub", urls[index]);
        let (keeper, group_owner) = (keepers[0], keepers[2]);
        let context = cluster.context(group_owner, "demo").ok_or("no hub context")?;
        let mut got = Numbered::default();
        let reconnects = std::cell::Cell::new(0);
        context.clients().group(&group).send("g", (0,))?;
        read_until(&mut client, &mut got, 1, &token, &hub, &reconnects).await?;

        cluster.partition_links(keeper, group_owner);
        cluster.kill(SERVER).await;
        let deadline = Instant::now() + Duration::from_secs(40);
        while client
            .reconnect(&format!("{}?id={token}", hub(keeper)), 2)
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "no resume at its keeper");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // The take-over is done once its rejoin at the owner gave up (no answer within the request timeout, 10 s).
        while metric_total(&urls[keeper..=keeper], "hubmesh_connections_taken_over_total").await? == 0 {
            assert!(Instant::now() < deadline, "the take-over did not end");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cluster.heal_links();
        for n in 1..=AFTER {
            context.clients().group(&group).send("g", (n,))?;
        }
        read_until(&mut client, &mut got, (AFTER + 1) as usize, &token, &hub, &reconnects).await?;
        let expected: Vec<u64> = (0..=AFTER).collect();
        assert_eq!(got.group, expected, "every group message once, in order");
        cluster.stop().await;
        Ok(())
    })
    .await?
}

/// Group sends before the first death, and after the second.
const BURST: u64 = 50;
const AFTER: u64 = 20;

/// Four nodes, and a stateful client on node 4 (`SERVER`) in a group that the third of its keepers owns, kept by
/// the first.
struct Setup {
    cluster: TestCluster,
    urls: Vec<String>,
    token: String,
    /// The connection's keepers, in rank order, by index.
    keepers: Vec<usize>,
    group: String,
    client: StatefulClient,
}

/// Starts a [`Setup`].
async fn four_nodes_and_a_joined_client() -> TestResult<Setup> {
    let cluster = TestCluster::start(4, || vec![demo_hub()]).await?;
    cluster.wait_for_members(Duration::from_secs(10)).await?;
    let urls: Vec<String> = (0..4).filter_map(|index| cluster.url(index)).collect();
    let peers = incarnations_seen_by(&urls[SERVER], "node-4").await?;
    assert_eq!(peers.len(), 3, "node 4 sees {peers:?}");
    let everyone = incarnations_seen_by(&urls[SERVER], "").await?;
    assert_eq!(everyone.len(), 4, "node 4 sees {everyone:?}");
    let hub = format!("{}/hub", urls[SERVER]);
    let body = negotiate(&hub, "&useStatefulReconnect=true", &[]).await?;
    let id = body["connectionId"].as_str().ok_or("no id")?.to_owned();
    let token = body["connectionToken"].as_str().ok_or("no token")?.to_owned();
    let keepers = ranked(id.as_bytes(), &peers)
        .into_iter()
        .map(|node| Ok(node.name.trim_start_matches("node-").parse::<usize>()? - 1))
        .collect::<TestResult<Vec<usize>>>()?;
    let group = group_owned_by(keepers[2], &[&everyone, &peers])?;
    let mut client = StatefulClient::connect_with(&format!("{hub}?id={token}"), Protocol::Json).await?;
    client.join(&group).await?;
    assert_eq!(
        kept_by_one_of(&urls, &[0, 1, 2]).await?,
        keepers[0],
        "the keeper rendezvous picked"
    );
    Ok(Setup {
        cluster,
        urls,
        token,
        keepers,
        group,
        client,
    })
}

/// A group name that node `index` (0-based) owns among each of `views`.
fn group_owned_by(index: usize, views: &[&[NodeId]]) -> TestResult<String> {
    let name = format!("node-{}", index + 1);
    let owned = |group: &str, members: &[NodeId]| {
        owner(&GroupKey::named("demo", group).placement_bytes(), members).is_some_and(|node| *node.name == name)
    };
    (0..1_000)
        .map(|n| format!("g{n}"))
        .find(|group| views.iter().all(|members| owned(group, members)))
        .ok_or_else(|| format!("no group name of 1000 is owned by {name}").into())
}

/// A connection negotiated at `hub` whose second keeper (among `peers`) is node `second`: its token and id.
async fn with_second_keeper(hub: &str, peers: &[NodeId], second: &str) -> TestResult<(String, String)> {
    for _ in 0..64 {
        let body = negotiate(hub, "&useStatefulReconnect=true", &[]).await?;
        let id = body["connectionId"].as_str().ok_or("no id")?.to_owned();
        let keepers = ranked(id.as_bytes(), peers);
        if keepers.get(1).is_some_and(|keeper| &*keeper.name == second) {
            return Ok((body["connectionToken"].as_str().ok_or("no token")?.to_owned(), id));
        }
    }
    Err(format!("no connection of 64 has {second} as its second keeper").into())
}

/// The one node among `indexes` that keeps a connection, once one does (at most 10 s).
async fn kept_by_one_of(urls: &[String], indexes: &[usize]) -> TestResult<usize> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(keeper) = the_one_with(urls, indexes, "hubmesh_kept_connections").await? {
            return Ok(keeper);
        }
        if Instant::now() >= deadline {
            return Err("no one node keeps the connection".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads (filing what arrives) until `got` holds `count` group messages, reconnecting through nodes 1 to 3 in turn
/// when the socket drops or nothing comes for 2 s; at most 30 s.
async fn read_until(
    client: &mut StatefulClient,
    got: &mut Numbered,
    count: usize,
    token: &str,
    hub: &impl Fn(usize) -> String,
    reconnects: &std::cell::Cell<usize>,
) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.group.len() < count {
        if Instant::now() >= deadline {
            return Err(format!("{} of {count} group messages arrived: {:?}", got.group.len(), got.group).into());
        }
        match client.read_within(Duration::from_secs(2)).await {
            Ok(Some(message)) => got.file(&message)?,
            Ok(None) | Err(_) => {
                let through = reconnects.get() % 3;
                reconnects.set(reconnects.get() + 1);
                // The client sent one message (the join).
                if let Err(error) = client.reconnect(&format!("{}?id={token}", hub(through)), 2).await {
                    tracing::debug!(%error, "reconnect refused; again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }
    Ok(())
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
        let (token, id) = with_second_keeper(&hub(negotiated_on), &peers, "node-1").await?;
        let mut client = StatefulClient::connect_with(&format!("{}?id={token}", hub(SERVER)), protocol).await?;
        client.join("g").await?;
        let first_keeper = kept_by_one_of(&urls, &[0, 1, 2]).await?;
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
