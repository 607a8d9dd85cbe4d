//! A node is SIGKILLed under official clients with `withStatefulReconnect()` (issue 15; docs/semantics.md, "A
//! node's death and its stateful connections"): three `hubmesh node` processes behind the test's round-robin
//! proxy, six official JavaScript clients (JSON and MessagePack in turn) in one group and a seventh on node 1 that
//! sends to it all along; of the other two nodes, the one that holds the most of the six is killed. Each of its clients' sockets drops, its one
//! stateful reconnect goes through the proxy to a survivor, and the connection goes on, taken over by its keeper.
//!
//! Checked: no client is closed; each keeps its connection id; the group keeps its six members; every client,
//! the killed node's included, gets every message of the stream once and in order (those sent while the node was
//! dying and while its clients reconnected too); after the take-over a new series reaches every client, each
//! message once and in order. In the `user_and_direct` variants (the two in CI, SIGKILL and SIGSTOP) every client
//! also sends user messages (`SendToUser`, its user by an HS256 bearer token) to the next client's user and direct
//! messages (`SendToConnection`) to the one after, all across the kill, and each receiver must get each sender's
//! once and in order: the casualties' own calls that the killed node ran but had not acknowledged yet run once,
//! because their receipt reached the keeper before they ran (`src/connection/keeper.rs`, "Run once kept"; before,
//! they ran again on the keeper when the client sent them again after its resume, and their messages went twice).
//! Printed: the take-over time, and the time from the kill to each casualty's first message after its reconnect.
//!
//! Everything runs on 127.0.0.1; every wait has a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/binary.rs"]
#[allow(dead_code)]
mod binary;
#[path = "node_process.rs"]
mod node_process;
#[path = "../common/npm.rs"]
mod npm;
#[path = "../common/official_clients.rs"]
mod official_clients;
#[path = "../common/process.rs"]
mod process;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hubmesh::testing::client::http_request;
use hubmesh::testing::proxy::RoundRobinProxy;
use node_process::{free_port, NodeProcess, TestResult};
use official_clients::{peer_traffic, OfficialClients};
use serde_json::{json, Value};
use tokio::time::{timeout, Instant};

const SECRET: &str = "node-death-test-secret";
/// The HS256 secret of the clients' bearer tokens (`auth.secret` of the nodes): client `i` is user `user-i`.
const JWT_SECRET: &str = "node-death-test-jwt-secret";
/// User and direct messages each client sends across the kill, one of each per 30 ms.
const PEER_COUNT: u64 = 100;
/// Messages in the series sent across the kill.
const COUNT: u64 = 400;

fn start_nodes() -> TestResult<Vec<NodeProcess>> {
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<TestResult<_>>()?;
    // The nodes' log filter: warnings, unless KILLED_NODE_LOG says otherwise (to trace a failure).
    let log = std::env::var("KILLED_NODE_LOG").unwrap_or_else(|_| "warn".to_owned());
    let mut nodes = Vec::new();
    for (index, (gossip, link)) in ports.iter().enumerate() {
        let name = format!("node-{}", index + 1);
        let gossip = format!("127.0.0.1:{gossip}");
        let link = format!("127.0.0.1:{link}");
        let seeds: Vec<String> = ports
            .iter()
            .enumerate()
            .filter(|(other, _)| *other != index)
            .map(|(_, (gossip, _))| format!("127.0.0.1:{gossip}"))
            .collect();
        let mut args = vec![
            "--name",
            &name,
            "--http",
            "127.0.0.1:0",
            "--cluster-id",
            "node-death",
            "--gossip",
            &gossip,
            "--link",
            &link,
        ];
        for seed in &seeds {
            args.extend(["--seed", seed]);
        }
        nodes.push(NodeProcess::start(
            &args,
            // Behind the test's proxy every client has one address: no per-address negotiate limit.
            &[
                ("HUBMESH_CLUSTER__SECRET", SECRET),
                ("HUBMESH_AUTH__SECRET", JWT_SECRET),
                ("RUST_LOG", &log),
                ("HUBMESH_LIMITS__NEGOTIATES_PER_SECOND", "0"),
            ],
        )?);
    }
    Ok(nodes)
}

async fn get(addr: SocketAddr, path: &str) -> TestResult<String> {
    Ok(http_request(addr, "GET", path, &[]).await?.text())
}

async fn live_count(addr: SocketAddr) -> usize {
    let Ok(body) = get(addr, "/_hubmesh/cluster").await else {
        return 0;
    };
    serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|view| view["live"].as_array().map(Vec::len))
        .unwrap_or(0)
}

/// The sum of a metric's samples (every label set) on a node.
async fn metric(addr: SocketAddr, name: &str) -> TestResult<f64> {
    let text = get(addr, "/metrics").await?;
    Ok(text
        .lines()
        .filter(|line| line.starts_with(&format!("{name} ")) || line.starts_with(&format!("{name}{{")))
        .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
        .sum())
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis())
}

/// Every client also sends user and direct messages across the kill: a casualty's own calls that ran on the dead
/// node and were not acknowledged yet run once (their receipt was kept first: `src/connection/keeper.rs`, "Run
/// once kept"). Before, they ran again on its keeper and their messages arrived twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_stateful_clients_ride_through_a_sigkill() -> TestResult {
    ride_through("KILL", 6, true).await
}

/// The same with 60 clients through the proxy (about 20 casualties). Longer: `-- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "longer: 60 official clients"]
async fn sixty_official_stateful_clients_ride_through_a_sigkill() -> TestResult {
    ride_through("KILL", 60, true).await
}

/// The size: 300 official clients through the proxy (about 100 casualties). Longer: `-- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "longer: 300 official clients"]
async fn three_hundred_official_stateful_clients_ride_through_a_sigkill() -> TestResult {
    ride_through("KILL", 300, true).await
}

/// The same with SIGSTOP for longer than the failure detection, then SIGCONT: the frozen node finds it was
/// declared dead and drops its clients' sockets without a Close message, so they resume on their keepers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_stateful_clients_ride_through_a_sigstop() -> TestResult {
    ride_through("STOP", 6, true).await
}

/// `proxied` official clients through the proxy and one more, the sender, on node 1; the node with the most of the
/// proxied ones gets `signal`. With `user_and_direct`, every client sends user and direct messages across it too.
async fn ride_through(signal: &str, proxied: usize, user_and_direct: bool) -> TestResult {
    let all = proxied + 1;
    let sender = proxied;
    timeout(Duration::from_secs(150), async {
        let mut nodes = start_nodes()?;
        let addrs: Vec<SocketAddr> = nodes.iter().map(|node| node.addr).collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        for addr in &addrs {
            while live_count(*addr).await < 3 {
                assert!(Instant::now() < deadline, "the three nodes did not see each other");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let proxy = RoundRobinProxy::start(addrs.clone()).await?;
        // Six through the proxy, and the sender (the seventh) on node 1 itself, which is never the one killed: so
        // the series goes on while the killed node's clients reconnect.
        let mut urls = vec![proxy.url(); proxied];
        urls.push(nodes[0].url.clone());
        let (mut clients, ready) = OfficialClients::start_with_tokens(&urls, false, JWT_SECRET).await?;
        let mut counts = Vec::new();
        for addr in &addrs {
            counts.push(metric(*addr, "hubmesh_connections").await? as usize);
        }
        let mut owned = Vec::new();
        for addr in &addrs {
            owned.push(metric(*addr, "hubmesh_groups_owned").await? as usize);
        }
        // The harder case first: a victim that does not own the group (when the owner dies too, the senders' sends
        // go again to the new owner, which the keepers' rejoins usually reach first).
        let victim = (1..3)
            .max_by_key(|index| (owned[*index] == 0 && counts[*index] > 0, counts[*index]))
            .ok_or("no node")?;
        let casualties = counts[victim];
        println!(
            "connections per node {counts:?}, groups owned {owned:?}; node {} gets SIG{signal}",
            victim + 1
        );
        assert!(casualties > 0);
        // Every client is kept by a peer before the kill.
        let mut kept = 0.0;
        for addr in &addrs {
            kept += metric(*addr, "hubmesh_kept_connections").await?;
        }
        assert_eq!(kept, all as f64, "each stateful connection has a keeper");

        if user_and_direct {
            let answer = clients.ask(peer_traffic("kill-peers", PEER_COUNT, 30, true)).await?;
            assert_eq!(answer["ok"], json!(true), "{answer}");
        }
        let answer = clients
            .ask(json!({"cmd": "stream", "from": sender, "count": COUNT, "tag": "kill", "interval": 10}))
            .await?;
        assert_eq!(answer["ok"], json!(true), "{answer}");
        // The series is under way: every client has its first messages.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = clients.ask(json!({"cmd": "received", "tag": "kill"})).await?;
            let started = got["received"]
                .as_array()
                .is_some_and(|lists| lists.iter().all(|list| list.as_array().is_some_and(|list| list.len() >= 50)));
            if started {
                break;
            }
            assert!(Instant::now() < deadline, "the series did not start: {got}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let killed_at = now_ms();
        let kill_time = Instant::now();
        nodes[victim].signal(signal)?;
        if signal == "KILL" {
            let _ = nodes[victim].wait_exit(Duration::from_secs(10)).await?;
        }
        let survivors: Vec<SocketAddr> = (0..3)
            .filter(|index| *index != victim)
            .map(|index| addrs[index])
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut taken = 0.0;
            for addr in &survivors {
                taken += metric(*addr, "hubmesh_connections_taken_over_total").await?;
            }
            if taken as usize >= casualties {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{taken} of {casualties} connections were taken over"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let take_over = kill_time.elapsed();
        if signal == "STOP" {
            nodes[victim].signal("CONT")?;
        }

        // Until every client has the series' last message.
        let deadline = Instant::now() + Duration::from_secs(30);
        let got = loop {
            let got = clients.ask(json!({"cmd": "received", "tag": "kill"})).await?;
            let ended = got["received"].as_array().is_some_and(|lists| {
                lists
                    .iter()
                    .all(|list| list.as_array().and_then(|list| list.last()) == Some(&json!(COUNT - 1)))
            });
            if ended || Instant::now() >= deadline {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let lists = got["received"].as_array().ok_or("no lists")?;
        let times = got["arrived"].as_array().ok_or("no times")?;
        // Per client, its longest silence after the kill: the casualties' is their reconnect to the keeper.
        let mut silences = Vec::new();
        for (index, list) in lists.iter().enumerate() {
            let numbers: Vec<u64> = list
                .as_array()
                .ok_or("no list")?
                .iter()
                .filter_map(Value::as_u64)
                .collect();
            // Every message of the series, once, in order: those sent while the node was dying and while its
            // clients reconnected too (their keepers followed the group: src/mesh/kept.rs).
            assert_eq!(
                numbers,
                (0..COUNT).collect::<Vec<u64>>(),
                "client {index}: not every message once and in order"
            );
            let at: Vec<u128> = times[index]
                .as_array()
                .ok_or("no times")?
                .iter()
                .filter_map(|time| time.as_u64().map(u128::from))
                .filter(|time| *time >= killed_at)
                .collect();
            let resumed = at
                .windows(2)
                .max_by_key(|pair| pair[1] - pair[0])
                .map(|pair| (pair[1] - pair[0], pair[1].saturating_sub(killed_at)));
            if let Some(silence) = resumed {
                silences.push(silence);
            }
        }
        silences.sort_unstable_by(|a, b| b.cmp(a));
        let mut first_after: Vec<u128> = silences.iter().take(casualties).map(|(_, after)| *after).collect();
        first_after.sort_unstable();
        println!(
            "SIG{signal}: {all} clients, casualties {casualties}: {} messages each, 0 lost, 0 twice; take-over {take_over:?}; \
             kill to each casualty's first message after its reconnect, ms: {first_after:?} (median {:?}, max {:?})",
            COUNT,
            first_after.get(first_after.len() / 2),
            first_after.last()
        );

        // The user and direct messages sent across the kill: each receiver, each sender's, once and in order.
        if user_and_direct {
            let peers = clients.ask(json!({"cmd": "collect-peers", "tag": "kill-peers"})).await?;
            println!("user and direct messages across the SIG{signal}: {peers}");
            assert_eq!(peers["ok"], json!(true), "user and direct messages across the kill: {peers}");
        }

        // After the take-over: everything, to everyone, once and in order.
        let verdict = clients
            .ask(json!({"cmd": "send", "from": sender, "count": 100, "tag": "after"}))
            .await?;
        assert_eq!(
            verdict["ok"],
            json!(true),
            "after the take-over, every client, every message once in order: {verdict}"
        );
        clients.assert_carried_on(all, &ready, "the kill").await?;
        let count = clients.ask(json!({"cmd": "count", "via": 0})).await?;
        assert_eq!(count["count"], json!(all), "the group kept its members: {count}");
        clients.quit().await;
        Ok(())
    })
    .await?
}
