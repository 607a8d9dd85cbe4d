//! Draining a real `hubmesh node` process: SIGTERM makes `/readyz` 503 at once while `/healthz` stays 200, closes
//! the raw test clients with `allowReconnect` spread over `node.drain_window`, and the process exits 0 (Ctrl-C
//! too); a second
//! SIGTERM stops it at once, still with 0; `POST /_hubmesh/drain` drains only with the REST access key's token
//! (401 without, 404 when the node has no key), and `hubmesh drain --wait` drives it; a drain whose clients never
//! answer still ends with the window and exits 0. Prints the close times and exit times it measured.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/binary.rs"]
mod binary;
#[path = "node_process.rs"]
mod node_process;
#[path = "../common/process.rs"]
mod process;

use std::time::{Duration, Instant};

use hubmesh::testing::client::TestClient;
use node_process::{drain_token, NodeProcess, TestResult};
use serde_json::Value;

use binary::LIMIT;

const KEY: &str = "drain-test-access-key";

/// A single node with the demo hub, drain window `window`, and the REST access key `KEY`.
fn node(window: &str) -> TestResult<NodeProcess> {
    NodeProcess::start(
        &["--http", "127.0.0.1:0", "--drain-window", window],
        &[("HUBMESH_REST__ACCESS_KEY", KEY)],
    )
}

/// `count` raw clients connected to the demo hub and joined to a group (so the drain has memberships to release).
async fn clients(node: &NodeProcess, count: usize) -> TestResult<Vec<TestClient>> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        let mut client = TestClient::to(&format!("{}/hub", node.url)).connect().await?;
        client.join_group("drained").await?;
        clients.push(client);
    }
    Ok(clients)
}

/// Reads each client until its Close message; returns, per client, when it came (from `since`) and the Close.
async fn closes(clients: Vec<TestClient>, since: Instant) -> Vec<(Duration, Value)> {
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                for _ in 0..1000 {
                    match client.record_within(LIMIT).await {
                        Ok(Some(record)) if record.kind() == 7 => return (since.elapsed(), record.value),
                        Ok(Some(_)) => continue,
                        other => panic!("no Close message: {other:?}"),
                    }
                }
                panic!("no Close message in 1000 records");
            })
        })
        .collect();
    let mut closes = Vec::new();
    for task in tasks {
        closes.push(task.await.unwrap());
    }
    closes.sort_by_key(|(at, _)| *at);
    closes
}

fn ms(duration: Duration) -> u128 {
    duration.as_millis()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_over_the_window_and_exits_0() -> TestResult {
    let window = Duration::from_secs(2);
    let mut node = node("2s")?;
    node.wait_for_status("/readyz", 200, LIMIT).await?;
    let clients = clients(&node, 20).await?;

    let signalled = Instant::now();
    node.signal("TERM")?;
    let unready = node.wait_for_status("/readyz", 503, Duration::from_secs(2)).await?;
    assert_eq!(
        node.status_of("/healthz").await?,
        200,
        "healthz stays 200 while draining"
    );
    let closes = tokio::spawn(closes(clients, signalled));
    // Half-way through the window the node still answers its liveness probe.
    tokio::time::sleep(window / 2).await;
    assert_eq!(
        node.status_of("/healthz").await?,
        200,
        "healthz stays 200 while draining"
    );
    assert_eq!(node.status_of("/readyz").await?, 503);

    let closes = closes.await?;
    let (status, _) = node.wait_exit(window + LIMIT).await?;
    let exited = signalled.elapsed();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(status.code(), Some(0));
    for (_, close) in &closes {
        assert_eq!(close["allowReconnect"], true, "{close}");
    }
    let first = closes.first().unwrap().0;
    let last = closes.last().unwrap().0;
    println!(
        "SIGTERM drain of 20 clients over {} ms: readyz 503 after {} ms; Closes from {} ms to {} ms; exit 0 after {} ms",
        ms(window),
        ms(unready),
        ms(first),
        ms(last),
        ms(exited)
    );
    // Spread over the window (20 slices): not all at once, and none after the window and the stop grace.
    assert!(last - first >= window / 2, "Closes came within {} ms", ms(last - first));
    assert!(
        last <= window + Duration::from_secs(4),
        "the last Close came after {} ms",
        ms(last)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_stops_at_once_and_still_exits_0() -> TestResult {
    let mut node = node("60s")?;
    node.wait_for_status("/readyz", 200, LIMIT).await?;
    let clients = clients(&node, 4).await?;

    let signalled = Instant::now();
    node.signal("TERM")?;
    node.wait_for_status("/readyz", 503, Duration::from_secs(2)).await?;
    let closes = tokio::spawn(closes(clients, signalled));
    // The first SIGTERM drains: a second later the node still runs (the next slice of the 60 s window is 3 s away).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        node.child.try_wait()?.is_none(),
        "the first SIGTERM must drain, not stop"
    );
    assert_eq!(node.status_of("/healthz").await?, 200);
    let second = signalled.elapsed();
    node.signal("TERM")?;
    let closes = closes.await?;
    let (status, _) = node.wait_exit(LIMIT).await?;
    let exited = signalled.elapsed();
    println!(
        "second SIGTERM {} ms into a 60 s drain: Closes at {:?} ms; exit {:?} after {} ms",
        ms(second),
        closes.iter().map(|(at, _)| ms(*at)).collect::<Vec<_>>(),
        status.code(),
        ms(exited)
    );
    assert_eq!(status.code(), Some(0));
    for (_, close) in &closes {
        assert_eq!(close["allowReconnect"], true, "{close}");
    }
    // The first slice closed one client; the second SIGTERM closed the other three at once.
    let after_second = closes.iter().filter(|(at, _)| *at >= second).count();
    assert_eq!(
        after_second,
        3,
        "{:?}",
        closes.iter().map(|(at, _)| ms(*at)).collect::<Vec<_>>()
    );
    // Far sooner than the 60 s window: the stop grace (3 s) at most, with room for a slow machine.
    assert!(
        exited < second + Duration::from_secs(10),
        "exited after {} ms",
        ms(exited)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_over_http_needs_the_access_key() -> TestResult {
    let mut node = node("1s")?;
    node.wait_for_status("/readyz", 200, LIMIT).await?;
    let mut client = TestClient::to(&format!("{}/hub", node.url)).connect().await?;

    // No token, a token signed with another key, a token for another URL, the wrong method: never a drain.
    let refused = node.post_drain(&[]).await?;
    assert_eq!(refused.status, 401, "{}", refused.text());
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    let other_key = format!("Bearer {}", drain_token(node.addr, "not-the-key")?);
    assert_eq!(node.post_drain(&[("Authorization", &other_key)]).await?.status, 401);
    let good = format!("Bearer {}", drain_token(node.addr, KEY)?);
    let other_path = hubmesh::testing::client::http_request(
        node.addr,
        "POST",
        "/_hubmesh/drain/",
        &[("Authorization", "Bearer not.a.token")],
    )
    .await?;
    assert_eq!(
        other_path.status, 401,
        "the path is matched with its trailing slash too"
    );
    let get = hubmesh::testing::client::http_request(node.addr, "GET", "/_hubmesh/drain", &[("Authorization", &good)])
        .await?;
    assert_eq!(get.status, 405);
    assert_eq!(
        node.status_of("/readyz").await?,
        200,
        "a refused request must not drain"
    );
    client.join_group("still-served").await?;

    // The key's token: 202, and the node drains and exits 0.
    let asked = Instant::now();
    let accepted = node.post_drain(&[("Authorization", &good)]).await?;
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    let answer: Value = serde_json::from_slice(&accepted.body)?;
    assert_eq!(answer["status"], "draining");
    node.wait_for_status("/readyz", 503, Duration::from_secs(2)).await?;
    let close = client.expect_close_message().await?;
    assert_eq!(close["allowReconnect"], true, "{close}");
    let (status, _) = node.wait_exit(LIMIT).await?;
    assert_eq!(status.code(), Some(0));
    println!("drain over HTTP: exit 0 after {} ms", ms(asked.elapsed()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_an_access_key_has_no_drain_route() -> TestResult {
    let node = NodeProcess::start(&["--http", "127.0.0.1:0"], &[])?;
    node.wait_for_status("/readyz", 200, LIMIT).await?;
    let token = format!("Bearer {}", drain_token(node.addr, KEY)?);
    let answer = node.post_drain(&[("Authorization", &token)]).await?;
    assert_eq!(answer.status, 404, "{}", answer.text());
    assert_eq!(node.status_of("/readyz").await?, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hubmesh_drain_waits_until_the_node_is_gone() -> TestResult {
    let mut node = node("1s")?;
    node.wait_for_status("/readyz", 200, LIMIT).await?;
    let _clients = clients(&node, 3).await?;
    let url = node.url.clone();
    let run = |key: &'static str| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            binary::finish(
                binary::hubmesh()
                    .args(["drain", "--url", &url, "--key", key, "--wait", "--timeout", "20s"])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap(),
            )
        })
    };
    let refused = run("wrong-key").await?;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"), "{refused:?}");
    assert_eq!(node.status_of("/readyz").await?, 200);

    let output = run(KEY).await?;
    assert!(output.status.success(), "{output:?}");
    let line: Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(line["node"], "node-1");
    assert_eq!(line["exited"], true);
    let (status, _) = node.wait_exit(Duration::from_secs(5)).await?;
    assert_eq!(status.code(), Some(0));
    println!("hubmesh drain --wait: {line}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_whose_clients_never_answer_ends_with_its_window_and_exits_0() -> TestResult {
    let window = Duration::from_secs(2);
    let mut node = node("2s")?;
    node.wait_for_status("/readyz", 200, LIMIT).await?;
    // Clients that are never read again: they neither take their Close nor close their sockets.
    let silent = clients(&node, 5).await?;
    // And one socket that upgraded but never sent its handshake.
    let half_open = TestClient::to(&format!("{}/hub", node.url)).open().await?;
    // The silent clients' sockets filled: group messages they never read, until the node's writes to them block
    // (or it gives up on them as slow consumers), so their Close cannot get through.
    let mut sender = TestClient::to(&format!("{}/hub", node.url)).connect().await?;
    let payload = "x".repeat(30_000);
    for _ in 0..400 {
        sender
            .send_invocation("SendToGroup", serde_json::json!(["drained", payload]))
            .await?;
    }
    let filled = Instant::now();
    sender.close_socket().await;

    let signalled = Instant::now();
    node.signal("TERM")?;
    let (status, _) = node.wait_exit(window + LIMIT).await?;
    let exited = signalled.elapsed();
    println!(
        "a drain over {} ms with 6 clients that never answer (5 of them sent 400 x 30 kB unread, {} ms before): \
         exit {:?} after {} ms",
        ms(window),
        ms(signalled - filled),
        status.code(),
        ms(exited)
    );
    assert_eq!(status.code(), Some(0));
    assert!(
        exited >= window / 2,
        "the drain did not take its window: {} ms",
        ms(exited)
    );
    // Bounded: the window, then at most 3 s for the connections to go, then at most 3 s more as the node stops.
    assert!(
        exited < window + Duration::from_secs(6 + 4),
        "a drain held by its clients took {} ms",
        ms(exited)
    );
    drop((silent, half_open));
    Ok(())
}

#[test]
fn the_drain_window_is_checked_with_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let check = |window: &str| {
        let file = dir.path().join("node.toml");
        std::fs::write(&file, format!("[node]\ndrain_window = \"{window}\"\n")).unwrap();
        binary::finish(
            binary::hubmesh()
                .args(["config", "check", "--no-env"])
                .arg(&file)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap(),
        )
    };
    for fine in ["0s", "10s", "10m"] {
        let output = check(fine);
        assert!(output.status.success(), "{fine}: {output:?}");
    }
    for (bad, says) in [("11m", "at most 10m"), ("soon", "not a duration")] {
        let output = check(bad);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{bad}: {output:?}");
        assert!(
            stderr.contains("node.drain_window") && stderr.contains(says),
            "{bad}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_drains_like_sigterm() -> TestResult {
    let mut node = node("2s")?;
    node.wait_for_status("/readyz", 200, LIMIT).await?;
    let clients = clients(&node, 10).await?;
    let signalled = Instant::now();
    node.signal("INT")?;
    node.wait_for_status("/readyz", 503, Duration::from_secs(2)).await?;
    let closes = closes(clients, signalled).await;
    let (status, _) = node.wait_exit(LIMIT).await?;
    let last = closes.last().unwrap().0;
    println!(
        "SIGINT drain of 10 clients over 2 s: Closes from {} to {} ms; exit {:?} after {} ms",
        ms(closes.first().unwrap().0),
        ms(last),
        status.code(),
        ms(signalled.elapsed())
    );
    assert_eq!(status.code(), Some(0));
    assert!(closes.iter().all(|(_, close)| close["allowReconnect"] == true));
    // Ten clients take the first ten of the twenty slices: the last goes about 0.9 s in, not at once.
    assert!(last >= Duration::from_millis(500), "Closes within {} ms", ms(last));
    Ok(())
}
