//! The `hubmesh` binary's `status` command and `--log-format json`: `status` against an in-process three-node
//! cluster (the table names every node, `--json` parses as the node's report), against a single `hubmesh node`
//! process, and against a bad or unreachable URL (exit code 1 with a message); a node started with
//! `--log-format json` writes JSON lines that carry its `node` span, and `hubmesh dev --log-format json` passes its
//! node's JSON lines through without the name prefix.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/binary.rs"]
mod binary;

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use binary::{finish, hubmesh, LIMIT};

use hubmesh::status::StatusReport;
use hubmesh::testing::TestCluster;
use hubmesh::Hub;
use serde_json::Value;

fn run(args: &[&str]) -> Output {
    finish(
        hubmesh()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// `run` off the async runtime, for tests that serve nodes on it.
async fn run_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || run(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_every_node_of_a_cluster_and_its_json_report() {
    let cluster = TestCluster::start(3, || vec![Hub::new("chat")]).await.unwrap();
    cluster.wait_for_members(LIMIT).await.unwrap();
    let url = cluster.url(1).unwrap();

    // The table: every member by name, the asked node marked, its links up once they are.
    let started = Instant::now();
    let table = loop {
        let output = run_async(vec!["status".into(), "--url".into(), url.clone()]).await;
        assert!(output.status.success(), "{output:?}");
        let table = text(&output.stdout);
        if !table.contains("DOWN") && table.contains(", ready,") {
            break table;
        }
        assert!(started.elapsed() < LIMIT, "node-2 never reported itself ready: {table}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(table.starts_with("node-2 (cluster node, generation"), "{table}");
    for name in ["node-1", "node-2 (this node)", "node-3"] {
        assert!(table.contains(name), "{name} missing: {table}");
    }
    assert!(
        table.contains("MEMBER") && table.contains("GENERATION") && table.contains("serving"),
        "{table}"
    );
    assert!(table.contains("hub chat: 0 connections"), "{table}");

    // `--json`: the node's report, as the library reads it.
    let output = run_async(vec!["status".into(), "--url".into(), url.clone(), "--json".into()]).await;
    assert!(output.status.success(), "{output:?}");
    let report: StatusReport = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report.node, "node-2");
    let names: Vec<&str> = report.members.iter().map(|member| member.name.as_str()).collect();
    assert_eq!(names, ["node-1", "node-2", "node-3"]);
    assert_eq!(report.links.len(), 2);
    cluster.stop().await;
}

#[test]
fn status_of_an_unreachable_node_or_a_bad_url_exits_1_with_a_message() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let free = listener.local_addr().unwrap();
    drop(listener);
    let unreachable = format!("http://{free}");
    let output = run(&["status", "--url", &unreachable]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let message = text(&output.stderr);
    assert!(
        message.contains("cannot connect") && message.contains(&free.to_string()),
        "{message}"
    );
    assert!(!message.contains("panicked"), "{message}");

    for (url, expected) in [("127.0.0.1:5000", "not a URL"), ("https://127.0.0.1:1", "plain HTTP")] {
        let output = run(&["status", "--url", url]);
        assert_eq!(output.status.code(), Some(1), "{output:?}");
        assert!(text(&output.stderr).contains(expected), "{url}: {output:?}");
    }
    assert!(output.stdout.is_empty(), "{output:?}");
}

#[test]
fn a_node_logs_json_lines_with_its_span_and_status_reads_it() {
    let mut child = hubmesh()
        .args([
            "node",
            "--name",
            "json-node",
            "--listen",
            "127.0.0.1:0",
            "--stop-on-stdin-close",
        ])
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let url = first.trim().strip_prefix("Now listening on: ").unwrap().to_owned();

    let output = run(&["status", "--url", &url]);
    assert!(output.status.success(), "{output:?}");
    let table = text(&output.stdout);
    assert!(table.starts_with("json-node (single node, serving, ready"), "{table}");

    drop(stdin);
    let output = finish(child);
    assert!(output.status.success(), "{output:?}");
    let logs = text(&output.stderr);
    let lines: Vec<Value> = logs
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}")))
        .collect();
    assert!(!lines.is_empty(), "no log lines");
    for line in &lines {
        assert!(line["timestamp"].is_string() && line["level"].is_string(), "{line}");
    }
    let in_node_span = lines.iter().find(|line| {
        line["spans"]
            .as_array()
            .is_some_and(|spans| spans.iter().any(|span| span["node"] == "json-node"))
    });
    let serving = in_node_span.unwrap_or_else(|| panic!("no line carries the node span: {logs}"));
    assert_eq!(serving["span"]["node"], "json-node", "{serving}");
}

/// A base port for `hubmesh dev --nodes 1`: its node serves HTTP on BASE+1, gossips on BASE+2001 (UDP) and links
/// on BASE+2101, all free now.
fn free_dev_base() -> u16 {
    for _ in 0..50 {
        let http = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = http.local_addr().unwrap().port() - 1;
        let (Some(gossip), Some(link)) = (base.checked_add(2001), base.checked_add(2101)) else {
            continue;
        };
        if std::net::UdpSocket::bind(("127.0.0.1", gossip)).is_ok()
            && std::net::TcpListener::bind(("127.0.0.1", link)).is_ok()
        {
            return base;
        }
    }
    panic!("no free ports for hubmesh dev");
}

/// Copies `output`'s lines into a channel from a thread (so the child never blocks on a full pipe).
fn lines_of(output: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { return };
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    received
}

#[test]
fn dev_passes_json_logs_through_unprefixed_and_status_reads_its_node() {
    let base = free_dev_base();
    let mut child = hubmesh()
        .args([
            "dev",
            "--nodes",
            "1",
            "--base-port",
            &base.to_string(),
            "--log-format",
            "json",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = lines_of(child.stdout.take().unwrap());
    let stderr = lines_of(child.stderr.take().unwrap());
    let deadline = Instant::now() + LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match stdout.recv_timeout(left) {
            Ok(line) if line.contains("are up") => break,
            Ok(_) => {}
            Err(error) => {
                let _ = child.kill();
                let logs: Vec<String> = stderr.try_iter().collect();
                panic!("hubmesh dev did not come up ({error}): {logs:?}");
            }
        }
    }

    // The URL `hubmesh dev` prints is the hub's: status finds the report at the node's root.
    let output = run(&["status", "--url", &format!("http://127.0.0.1:{}/hub", base + 1)]);
    let table = text(&output.stdout);
    let stopped = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    let exit = finish(child);
    assert!(output.status.success(), "{output:?}");
    assert!(table.contains("node-1 (this node)"), "{table}");
    assert!(stopped.as_ref().is_ok_and(|status| status.success()), "{stopped:?}");
    assert!(exit.status.success(), "{exit:?}");

    let logs: Vec<String> = stderr.iter().collect();
    let node_lines: Vec<Value> = logs
        .iter()
        .filter(|line| !line.starts_with("hubmesh dev:"))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}")))
        .collect();
    assert!(
        node_lines.iter().any(|line| line["spans"]
            .as_array()
            .is_some_and(|spans| spans.iter().any(|span| span["node"] == "node-1"))),
        "no line carries node-1's span: {logs:?}"
    );
}
