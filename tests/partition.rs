//! A network partition, and exactly what docs/semantics.md ("During a partition") promises each side's
//! connections: five in-process nodes of the demo hub, one member of a group on each; nodes 4 and 5 are cut from
//! nodes 1 to 3 (gossip and links, both ways) past failure detection, while a client on each side sends to the
//! group; then the cut heals.
//!
//! * During the cut each side serves its own connections: a group send reaches the members on its side, once and
//!   in order, and nothing of the other side's sends; each side counts only its side's members.
//! * At the heal the minority's connections, which missed the majority's sends, are told: the next thing each gets
//!   is a Close message that allows reconnecting, never a late or partial copy of what it missed.
//! * The majority's connections are not closed and get the group's sends again, none of the minority's (which
//!   reached only the minority, whose senders were closed); every node then counts the majority's members.
//!
//! Everything runs on 127.0.0.1; every wait has a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::error::Error;
use std::time::Duration;

use hubmesh::demo::demo_hub;
use hubmesh::testing::{TestClient, TestCluster};
use serde_json::{json, Value};
use tokio::time::{timeout, Instant};

#[path = "common/msg_or_close.rs"]
mod msg_or_close;

use msg_or_close::next_msg_or_close;

type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

const MAJORITY: [usize; 3] = [0, 1, 2];
const MINORITY: [usize; 2] = [3, 4];
const GROUP: &str = "p";
const SENDS: u64 = 20;

/// Waits until `client` counts `expected` members of the group.
async fn until_count(client: &mut TestClient, expected: u64, what: &str) -> TestResult {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let count = client.invoke_ok_keeping_others("GroupCount", json!([GROUP])).await?;
        if count == json!(expected) {
            return Ok(());
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the group has {count} members, not {expected}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The next `SENDS` messages `client` gets are `side`'s sends, numbered in order.
async fn gets_its_sides_sends(client: &mut TestClient, index: usize, side: &str) -> TestResult {
    for n in 0..SENDS {
        let got = next_msg_or_close(client, Duration::from_secs(5))
            .await?
            .ok_or_else(|| format!("node {}'s member: the {side}'s send {n} did not arrive", index + 1))?;
        assert_eq!(got["arguments"][0], json!({ side: n }), "node {}'s member", index + 1);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_minority_serves_its_side_and_its_connections_are_told_at_the_heal() -> TestResult {
    timeout(Duration::from_secs(150), async {
        let cluster = TestCluster::start(5, || vec![demo_hub()]).await?;
        cluster.wait_for_members(Duration::from_secs(15)).await?;
        let mut clients = Vec::new();
        for index in 0..5 {
            let url = cluster.url(index).ok_or("node not running")?;
            let mut client = TestClient::to(&format!("{url}/hub")).connect().await?;
            client.join_group(GROUP).await?;
            clients.push(client);
        }
        until_count(&mut clients[0], 5, "before the cut").await?;

        let cut_at = Instant::now();
        cluster.partition(&MAJORITY, &MINORITY);
        // Each side declares the other dead and drops its members.
        until_count(&mut clients[0], 3, "the majority during the cut").await?;
        until_count(&mut clients[3], 2, "the minority during the cut").await?;
        println!(
            "each side counted only its own members {:?} after the cut",
            cut_at.elapsed()
        );

        for n in 0..SENDS {
            clients[0]
                .send_invocation("SendToGroup", json!([GROUP, { "majority": n }]))
                .await?;
            clients[3]
                .send_invocation("SendToGroup", json!([GROUP, { "minority": n }]))
                .await?;
        }
        for index in MAJORITY {
            gets_its_sides_sends(&mut clients[index], index, "majority").await?;
        }
        for index in MINORITY {
            gets_its_sides_sends(&mut clients[index], index, "minority").await?;
        }
        // Nothing of the other side comes later in the cut.
        for (index, client) in clients.iter_mut().enumerate() {
            let more = next_msg_or_close(client, Duration::from_millis(300)).await?;
            assert_eq!(more, None, "node {}'s member got more during the cut", index + 1);
        }

        let healed_at = Instant::now();
        cluster.heal();
        cluster.wait_for_members(Duration::from_secs(15)).await?;
        println!(
            "the cut healed; every node saw all five again {:?} after",
            healed_at.elapsed()
        );
        // The minority's connections missed the majority's sends: each is told, before anything else.
        for index in MINORITY {
            let told = next_msg_or_close(&mut clients[index], Duration::from_secs(10))
                .await?
                .ok_or_else(|| format!("node {}'s member was never told", index + 1))?;
            assert_eq!(
                told["type"],
                json!(7),
                "node {}'s member got a message, not a Close: {told}",
                index + 1
            );
            assert_eq!(told["allowReconnect"], json!(true), "{told}");
        }
        // The majority's go on: the next group send reaches each, none of the minority's sends ever does. Under
        // load a majority node may itself have been declared dead by most of its peers meanwhile: its member is
        // then told so with a Close (never a silent gap), and the send is not required of it.
        clients[1]
            .send_invocation("SendToGroup", json!([GROUP, "after the heal"]))
            .await?;
        let mut closed = Vec::new();
        for index in MAJORITY {
            let got: Value = next_msg_or_close(&mut clients[index], Duration::from_secs(10))
                .await?
                .ok_or_else(|| format!("node {}'s member got nothing after the heal", index + 1))?;
            if got["type"] == json!(7) {
                assert_eq!(got["allowReconnect"], json!(true), "{got}");
                closed.push(index);
            } else {
                assert_eq!(
                    got["arguments"][0],
                    json!("after the heal"),
                    "node {}'s member",
                    index + 1
                );
            }
        }
        // Every node counts the members still connected.
        if closed.is_empty() {
            for index in 0..5 {
                let url = cluster.url(index).ok_or("node not running")?;
                let mut asker = TestClient::to(&format!("{url}/hub")).connect().await?;
                until_count(&mut asker, 3, &format!("node {} after the heal", index + 1)).await?;
            }
        } else {
            println!("majority members closed under load: {closed:?}");
        }
        cluster.stop().await;
        TestResult::Ok(())
    })
    .await?
}
