//! The load tool (`hubmesh bench`) against in-process clusters (`TestCluster`, demo hub): each scenario runs
//! briefly; its JSON line is well-formed and its counts are consistent. No timing targets here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::error::Error;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use hubmesh::demo::demo_hub;
use hubmesh::testing::proxy::RoundRobinProxy;
use hubmesh::testing::TestCluster;
use hubmesh_cli::bench::{run, BenchError, Report, Scenario};
use serde_json::Value;

type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

/// Parses `hubmesh bench` arguments (scenario first) into a scenario.
fn scenario(args: &[&str]) -> Scenario {
    Cli::try_parse_from(std::iter::once("bench").chain(args.iter().copied()))
        .unwrap_or_else(|error| panic!("bad arguments {args:?}: {error}"))
        .scenario
}

async fn cluster(nodes: usize) -> TestResult<TestCluster> {
    let cluster = TestCluster::start(nodes, || vec![demo_hub()]).await?;
    cluster.wait_for_members(Duration::from_secs(10)).await?;
    Ok(cluster)
}

/// `--url` arguments for every node, and `--pid` of this process (the nodes run in it).
fn targets(cluster: &TestCluster) -> Vec<String> {
    let mut args = Vec::new();
    for index in 0..cluster.len() {
        args.push("--url".to_owned());
        args.push(cluster.url(index).expect("node runs"));
    }
    args.push("--pid".to_owned());
    args.push(std::process::id().to_string());
    args
}

async fn run_with(cluster: &TestCluster, args: &[&str]) -> Result<Report, BenchError> {
    let targets = targets(cluster);
    let mut all: Vec<&str> = args.to_vec();
    all.extend(targets.iter().map(String::as_str));
    run(&scenario(&all)).await
}

/// The report's JSON line, parsed, with its shape checked.
fn parsed(report: &Report, name: &str) -> Value {
    let line = report.json_line();
    assert!(!line.contains('\n'), "one line: {line}");
    let value: Value = serde_json::from_str(&line).expect("the line is JSON");
    assert_eq!(value["scenario"], name);
    assert!(value["parameters"].is_object(), "{line}");
    assert!(value["results"].is_object(), "{line}");
    assert!(!report.summary.is_empty());
    println!("{line}\n{}", report.summary);
    value
}

fn number(value: &Value, path: &[&str]) -> f64 {
    let mut at = value;
    for key in path {
        at = &at[*key];
    }
    at.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {value}"))
}

fn assert_latency(results: &Value, key: &str, count: f64) {
    let latency = &results[key];
    assert_eq!(number(latency, &["count"]), count, "{latency}");
    let (p50, p90, p99, max) = (
        number(latency, &["p50_ms"]),
        number(latency, &["p90_ms"]),
        number(latency, &["p99_ms"]),
        number(latency, &["max_ms"]),
    );
    assert!(p50 <= p90 && p90 <= p99 && p99 <= max, "{latency}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_to_a_group_over_three_nodes_delivers_everything_once() -> TestResult {
    let cluster = cluster(3).await?;
    let report = run_with(
        &cluster,
        &["fanout", "--clients", "30", "--rate", "3000", "--seconds", "1"],
    )
    .await?;
    let value = parsed(&report, "fanout");
    let results = &value["results"];
    let published = number(results, &["published"]);
    assert_eq!(published, 100.0);
    assert_eq!(number(&value, &["parameters", "clients"]), 30.0);
    assert_eq!(number(results, &["expected_deliveries"]), published * 30.0);
    assert_eq!(number(results, &["delivered"]), published * 30.0);
    assert_eq!(number(results, &["received"]), published * 30.0);
    assert_eq!(number(results, &["lost"]), 0.0);
    assert_eq!(number(results, &["duplicated"]), 0.0);
    assert_eq!(number(results, &["unexpected"]), 0.0);
    assert_eq!(number(results, &["clients_complete"]), 30.0);
    assert!(number(results, &["delivered_per_sec"]) > 0.0);
    assert!(number(results, &["server_cpu_seconds"]) >= 0.0);
    assert_latency(results, "latency", published * 30.0);
    cluster.stop().await;
    Ok(())
}

/// The checks of a fan-out run that must deliver everything once: `published` messages to `clients` clients.
fn assert_complete_fanout(value: &Value, published: f64, clients: f64) {
    let results = &value["results"];
    assert_eq!(number(results, &["published"]), published, "{results}");
    assert_eq!(number(results, &["delivered"]), published * clients, "{results}");
    assert_eq!(number(results, &["received"]), published * clients, "{results}");
    assert_eq!(number(results, &["lost"]), 0.0, "{results}");
    assert_eq!(number(results, &["duplicated"]), 0.0, "{results}");
    assert_eq!(number(results, &["unexpected"]), 0.0, "{results}");
    assert_eq!(number(results, &["clients_complete"]), clients, "{results}");
    assert_latency(results, "latency", published * clients);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_over_long_polling_and_sse_with_every_request_spread_loses_nothing() -> TestResult {
    let cluster = cluster(3).await?;
    for transport in ["longpolling", "sse"] {
        let report = run_with(
            &cluster,
            &[
                "fanout",
                "--transport",
                transport,
                "--spread",
                "--clients",
                "9",
                "--rate",
                "450",
                "--seconds",
                "1",
            ],
        )
        .await?;
        let value = parsed(&report, "fanout");
        assert_eq!(value["parameters"]["transport"], transport);
        assert_eq!(value["parameters"]["spread"], true);
        assert_complete_fanout(&value, 50.0, 9.0);
    }
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_negotiated_on_one_node_and_upgraded_on_the_next_get_every_message() -> TestResult {
    let cluster = cluster(3).await?;
    let report = run_with(
        &cluster,
        &[
            "fanout",
            "--spread",
            "--clients",
            "9",
            "--rate",
            "900",
            "--seconds",
            "1",
        ],
    )
    .await?;
    let value = parsed(&report, "fanout");
    assert_eq!(value["parameters"]["transport"], "websockets");
    assert_complete_fanout(&value, 100.0, 9.0);
    cluster.stop().await;
    Ok(())
}

/// A one-backend proxy in front of each node, so that a test sees which `--url` each request went to.
async fn one_proxy_per_node(cluster: &TestCluster) -> TestResult<Vec<RoundRobinProxy>> {
    let mut proxies = Vec::new();
    for index in 0..cluster.len() {
        let url = cluster.url(index).expect("node runs");
        let node: SocketAddr = url.trim_start_matches("http://").parse()?;
        proxies.push(RoundRobinProxy::start([node]).await?);
    }
    Ok(proxies)
}

/// For each connection token seen, how many of the proxies it reached; the proxies' records are emptied.
fn proxies_per_token(proxies: &[RoundRobinProxy]) -> HashMap<String, usize> {
    let mut reached: HashMap<String, HashSet<usize>> = HashMap::new();
    for (index, proxy) in proxies.iter().enumerate() {
        for routed in proxy.take_routes() {
            let token = routed
                .target
                .split(['?', '&'])
                .find_map(|pair| pair.strip_prefix("id="));
            if let Some(token) = token {
                reached.entry(token.to_owned()).or_default().insert(index);
            }
        }
    }
    reached
        .into_iter()
        .map(|(token, proxies)| (token, proxies.len()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_sends_each_request_of_a_client_to_the_next_url() -> TestResult {
    let cluster = cluster(3).await?;
    let proxies = one_proxy_per_node(&cluster).await?;
    let mut urls = Vec::new();
    for proxy in &proxies {
        urls.push("--url".to_owned());
        urls.push(proxy.url());
    }
    for transport in ["longpolling", "sse"] {
        for spread in [false, true] {
            let mut args = vec![
                "echo",
                "--transport",
                transport,
                "--clients",
                "3",
                "--rate",
                "30",
                "--seconds",
                "1",
            ];
            if spread {
                args.push("--spread");
            }
            args.extend(urls.iter().map(String::as_str));
            let report = run(&scenario(&args)).await?;
            let value = parsed(&report, "echo");
            assert_eq!(value["parameters"]["spread"], spread);
            let results = &value["results"];
            let round_trips = number(results, &["round_trips"]);
            // On schedule: at most rate × seconds; the machine may be slow, so only a loose lower bound.
            assert!((3.0..=30.0).contains(&round_trips), "{results}");
            assert_latency(results, "latency", round_trips);
            let reached = proxies_per_token(&proxies);
            assert_eq!(reached.len(), 3, "one token per client: {reached:?}");
            let expected = if spread { 3 } else { 1 };
            assert!(
                reached.values().all(|count| *count == expected),
                "{transport}, spread {spread}: {reached:?}"
            );
        }
    }
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_by_broadcast_reaches_every_client() -> TestResult {
    let cluster = cluster(2).await?;
    let report = run_with(
        &cluster,
        &[
            "fanout",
            "--broadcast",
            "--clients",
            "10",
            "--rate",
            "500",
            "--seconds",
            "0.5",
        ],
    )
    .await?;
    let value = parsed(&report, "fanout");
    let results = &value["results"];
    let published = number(results, &["published"]);
    assert_eq!(published, 25.0);
    assert_eq!(value["parameters"]["broadcast"], true);
    assert_eq!(number(results, &["delivered"]), published * 10.0);
    assert_eq!(number(results, &["lost"]), 0.0);
    assert_eq!(number(results, &["duplicated"]), 0.0);
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_at_a_rate_and_as_fast_as_possible() -> TestResult {
    let cluster = cluster(3).await?;
    let report = run_with(&cluster, &["echo", "--clients", "4", "--rate", "200", "--seconds", "1"]).await?;
    let value = parsed(&report, "echo");
    let results = &value["results"];
    let round_trips = number(results, &["round_trips"]);
    // On schedule: at most rate × seconds; the machine may be slow, so only a loose lower bound.
    assert!((20.0..=200.0).contains(&round_trips), "{results}");
    assert_latency(results, "latency", round_trips);

    let report = run_with(&cluster, &["echo", "--clients", "2", "--seconds", "0.5"]).await?;
    let value = parsed(&report, "echo");
    let results = &value["results"];
    let round_trips = number(results, &["round_trips"]);
    assert!(round_trips > 0.0);
    assert_latency(results, "latency", round_trips);
    assert!(number(results, &["round_trips_per_sec"]) > 0.0);
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_report_memory() -> TestResult {
    let cluster = cluster(3).await?;
    let report = run_with(&cluster, &["idle", "--clients", "30", "--seconds", "0.5"]).await?;
    let value = parsed(&report, "idle");
    let results = &value["results"];
    assert_eq!(number(results, &["connections"]), 30.0);
    assert!(number(results, &["server_rss_before_bytes"]) > 0.0);
    assert!(number(results, &["server_rss_after_bytes"]) > 0.0);
    assert!(results["server_rss_per_connection_bytes"].is_number(), "{results}");
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_opens_handshakes_and_closes() -> TestResult {
    let cluster = cluster(3).await?;
    let report = run_with(&cluster, &["connect", "--count", "60", "--concurrency", "4"]).await?;
    let value = parsed(&report, "connect");
    let results = &value["results"];
    assert_eq!(number(results, &["connections"]), 60.0);
    assert_latency(results, "connect_latency", 60.0);
    assert!(number(results, &["connections_per_sec"]) > 0.0);
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_clear_error() -> TestResult {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("http://127.0.0.1:{port}");
    let error = run(&scenario(&["connect", "--url", &url, "--count", "1", "--timeout", "2"]))
        .await
        .expect_err("nothing listens");
    assert!(matches!(error, BenchError::Connect { .. }), "{error}");
    assert!(error.to_string().contains(&format!("127.0.0.1:{port}")), "{error}");

    let error = run(&scenario(&["echo", "--url", "https://127.0.0.1:1"]))
        .await
        .expect_err("no TLS");
    assert!(matches!(error, BenchError::Url { .. }), "{error}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_closed_by_a_dying_node_is_a_clear_error() -> TestResult {
    let mut cluster = cluster(3).await?;
    let targets = targets(&cluster);
    let mut args = vec!["fanout", "--clients", "9", "--rate", "90", "--seconds", "5"];
    args.extend(targets.iter().map(String::as_str));
    let fanout = scenario(&args);
    let running = tokio::spawn(async move { run(&fanout).await });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.kill(2).await;
    let result = tokio::time::timeout(Duration::from_secs(30), running).await??;
    let error = result.expect_err("a node died under its clients");
    assert!(
        matches!(error, BenchError::Closed { .. } | BenchError::Socket { .. }),
        "{error}"
    );
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_prints_one_json_line() -> TestResult {
    let cluster = cluster(1).await?;
    let url = cluster.url(0).expect("node runs");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_hubmesh"))
        .args(["bench", "connect", "--url", &url, "--count", "5"])
        .output()
        .await?;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout)?;
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let value: Value = serde_json::from_str(lines[0])?;
    assert_eq!(value["scenario"], "connect");
    assert_eq!(value["results"]["connections"], 5);
    assert!(String::from_utf8_lossy(&output.stderr).contains("connect:"));

    // An unreachable server: a failure exit and a message, not a panic.
    cluster.stop().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_hubmesh"))
        .args([
            "bench",
            "echo",
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "--timeout",
            "2",
        ])
        .output()
        .await?;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot connect to"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    Ok(())
}
