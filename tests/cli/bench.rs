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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_deliver_each_group_to_its_members_once() -> TestResult {
    let cluster = cluster(3).await?;
    let report = run_with(
        &cluster,
        &[
            "rooms",
            "--groups",
            "10",
            "--group-size",
            "3",
            "--rate",
            "600",
            "--seconds",
            "1",
        ],
    )
    .await?;
    let value = parsed(&report, "rooms");
    let results = &value["results"];
    assert_eq!(number(results, &["members"]), 30.0);
    assert_eq!(number(&value, &["parameters", "sends_per_sec"]), 200.0);
    assert_eq!(number(results, &["sent"]), 200.0, "{results}");
    assert_eq!(number(results, &["expected_deliveries"]), 600.0, "{results}");
    assert_eq!(number(results, &["delivered"]), 600.0, "{results}");
    assert_eq!(number(results, &["received"]), 600.0, "{results}");
    assert_eq!(number(results, &["lost"]), 0.0, "{results}");
    assert_eq!(number(results, &["duplicated"]), 0.0, "{results}");
    assert_eq!(number(results, &["unexpected"]), 0.0, "{results}");
    assert!(number(results, &["delivered_per_sec"]) > 0.0);
    assert!(number(results, &["server_cpu_seconds"]) >= 0.0);
    assert_latency(results, "latency", 600.0);
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_confirms_every_join_and_every_node_lists_the_same_members() -> TestResult {
    let cluster = cluster(3).await?;
    let report = run_with(
        &cluster,
        &[
            "churn",
            "--clients",
            "20",
            "--groups",
            "5",
            "--rate",
            "100",
            "--seconds",
            "1",
        ],
    )
    .await?;
    let value = parsed(&report, "churn");
    let results = &value["results"];
    let joins = number(results, &["joins"]);
    // 5 joins per client on schedule (0, 0.2, … 0.8 s); every join but a client's first follows a leave.
    assert_eq!(joins, 100.0, "{results}");
    assert_eq!(number(results, &["leaves"]), joins - 20.0, "{results}");
    assert_latency(results, "join_latency", joins);
    assert_latency(results, "leave_latency", joins - 20.0);
    assert_eq!(number(results, &["members_expected"]), 20.0, "{results}");
    assert_eq!(
        results["members_listed_per_node"],
        serde_json::json!([20, 20, 20]),
        "{results}"
    );
    assert_eq!(number(results, &["groups_checked"]), 5.0);
    assert_eq!(number(results, &["groups_disagreeing"]), 0.0, "{results}");
    assert_eq!(results["all_nodes_agree"], true);
    assert!(number(results, &["joins_per_server_cpu_second"]) > 0.0);
    cluster.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_reads_each_process_cpu() -> TestResult {
    let cluster = cluster(1).await?;
    let report = run_with(&cluster, &["quiet", "--seconds", "0.3"]).await?;
    let value = parsed(&report, "quiet");
    let results = &value["results"];
    assert_eq!(number(results, &["processes"]), 1.0);
    assert_eq!(results["core_percent_per_process"].as_array().map(Vec::len), Some(1));
    assert!(number(results, &["core_percent_max"]) >= number(results, &["core_percent_mean"]));
    cluster.stop().await;
    Ok(())
}

/// The distinct local addresses of this process's TCP connections to `port` on 127.0.0.1 (from /proc/net/tcp).
fn sources_towards(port: u16) -> TestResult<HashSet<String>> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    let remote = format!("0100007F:{port:04X}");
    Ok(table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // fields: sl, local, remote, state (01: established)
            (fields.get(2) == Some(&remote.as_str()) && fields.get(3) == Some(&"01"))
                .then(|| {
                    fields
                        .get(1)
                        .and_then(|local| local.split(':').next())
                        .map(str::to_owned)
                })
                .flatten()
        })
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_connect_from_several_source_addresses() -> TestResult {
    let cluster = cluster(1).await?;
    let url = cluster.url(0).expect("node runs");
    let port: u16 = url
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("a port");
    let holding = scenario(&[
        "idle",
        "--url",
        &url,
        "--clients",
        "12",
        "--seconds",
        "3",
        "--source-addresses",
        "4",
    ]);
    let running = tokio::spawn(async move { run(&holding).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut sources = HashSet::new();
    while sources.len() < 4 && tokio::time::Instant::now() < deadline && !running.is_finished() {
        sources = sources_towards(port)?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 127.0.0.1 to 127.0.0.4, little-endian hex as /proc shows them.
    let want: HashSet<String> = ["0100007F", "0200007F", "0300007F", "0400007F"]
        .iter()
        .map(|address| (*address).to_owned())
        .collect();
    assert_eq!(sources, want);
    let report = tokio::time::timeout(Duration::from_secs(30), running).await???;
    let value = parsed(&report, "idle");
    assert_eq!(number(&value, &["results", "connections"]), 12.0);
    assert_eq!(number(&value, &["parameters", "source_addresses"]), 4.0);

    let report = run_with(
        &cluster,
        &[
            "connect",
            "--count",
            "40",
            "--concurrency",
            "4",
            "--source-addresses",
            "3",
        ],
    )
    .await?;
    assert_eq!(number(&parsed(&report, "connect"), &["results", "connections"]), 40.0);

    let error = run(&scenario(&[
        "idle",
        "--url",
        &url,
        "--transport",
        "sse",
        "--source-addresses",
        "2",
    ]))
    .await
    .expect_err("WebSockets only");
    assert!(matches!(error, BenchError::Options(_)), "{error}");
    cluster.stop().await;
    Ok(())
}

/// A `hubmesh node` process, killed when dropped.
struct NodeProcess {
    child: std::process::Child,
    url: String,
    /// Kept open: the node stops when its standard input closes, and must never write to a closed pipe.
    _io: (
        Option<std::process::ChildStdin>,
        std::io::BufReader<std::process::ChildStdout>,
    ),
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free for both TCP and UDP (a node's gossip and link addresses).
fn free_port() -> TestResult<u16> {
    for _ in 0..50 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err("no free port".into())
}

/// Three `hubmesh node` processes of one cluster, serving the demo hub (the storm kills one with SIGKILL, which
/// an in-process cluster cannot take).
fn three_node_processes() -> TestResult<Vec<NodeProcess>> {
    use std::io::BufRead;
    let ports: Vec<(u16, u16)> = (0..3)
        .map(|_| Ok((free_port()?, free_port()?)))
        .collect::<TestResult<_>>()?;
    let mut nodes = Vec::new();
    for (index, (gossip, link)) in ports.iter().enumerate() {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_hubmesh"));
        command
            .args(["node", "--name", &format!("node-{index}"), "--http", "127.0.0.1:0"])
            .args(["--cluster-id", "bench-storm", "--stop-on-stdin-close"])
            .args([
                "--gossip",
                &format!("127.0.0.1:{gossip}"),
                "--link",
                &format!("127.0.0.1:{link}"),
            ]);
        for (seed, _) in &ports {
            command.args(["--seed", &format!("127.0.0.1:{seed}")]);
        }
        let mut child = command
            .env("HUBMESH_CLUSTER__SECRET", "bench-storm-test-secret")
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let stdin = child.stdin.take();
        let mut reader = std::io::BufReader::new(stdout);
        let mut first = String::new();
        reader.read_line(&mut first)?;
        let url = first
            .trim()
            .strip_prefix("Now listening on: ")
            .ok_or_else(|| format!("unexpected first line {first:?}"))?
            .to_owned();
        nodes.push(NodeProcess {
            child,
            url,
            _io: (stdin, reader),
        });
    }
    Ok(nodes)
}

/// Waits until every node lists three live members and two links up in `hubmesh status --json`.
async fn wait_for_three(nodes: &[NodeProcess]) -> TestResult {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut all = true;
        for node in nodes {
            let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_hubmesh"))
                .args(["status", "--url", &node.url, "--json"])
                .output()
                .await?;
            let status: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
            let members = status["members"].as_array().map_or(0, Vec::len);
            let links_up = status["links"]
                .as_array()
                .map_or(0, |links| links.iter().filter(|link| link["up"] == true).count());
            all &= members == 3 && links_up == 2;
        }
        if all {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err("the three nodes did not see each other within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_brings_every_member_of_a_killed_node_back_into_its_group() -> TestResult {
    let nodes = three_node_processes()?;
    wait_for_three(&nodes).await?;
    let victim = nodes[0].child.id().to_string();
    let mut args = vec![
        "storm",
        "--groups",
        "6",
        "--group-size",
        "3",
        "--rate",
        "180",
        "--seconds",
        "15",
        "--kill-after",
        "2",
        "--kill-pid",
        &victim,
    ];
    let mut targets = Vec::new();
    for node in &nodes {
        targets.extend([
            "--url".to_owned(),
            node.url.clone(),
            "--pid".to_owned(),
            node.child.id().to_string(),
        ]);
    }
    args.extend(targets.iter().map(String::as_str));
    let report = run(&scenario(&args)).await?;
    let value = parsed(&report, "storm");
    let results = &value["results"];
    assert_eq!(number(results, &["members"]), 18.0);
    assert_eq!(number(results, &["on_killed_node"]), 6.0);
    assert_eq!(number(results, &["dropped"]), 6.0, "{results}");
    assert_eq!(number(results, &["rejoined"]), 6.0, "{results}");
    assert_eq!(results["all_back"], true, "{results}");
    assert!(number(results, &["all_back_seconds"]) > 0.0, "{results}");
    assert_latency(results, "back_after", 6.0);
    assert_eq!(number(results, &["duplicated"]), 0.0, "{results}");
    assert_eq!(number(results, &["unexpected"]), 0.0, "{results}");
    assert!(number(results, &["delivered"]) > 0.0, "{results}");
    let sent = number(results, &["sent"]) + number(results, &["skipped_while_reconnecting"]);
    assert_eq!(sent, 15.0 * 60.0, "{results}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn detect_times_each_survivor_seeing_a_killed_node_gone() -> TestResult {
    let nodes = three_node_processes()?;
    wait_for_three(&nodes).await?;
    let victim = nodes[1].child.id().to_string();
    let mut args = vec!["detect", "--seconds", "20", "--kill-url", "1", "--kill-pid", &victim];
    let urls: Vec<String> = nodes
        .iter()
        .flat_map(|node| ["--url".to_owned(), node.url.clone()])
        .collect();
    args.extend(urls.iter().map(String::as_str));
    let report = run(&scenario(&args)).await?;
    let value = parsed(&report, "detect");
    let results = &value["results"];
    assert_eq!(results["killed"]["name"], "node-1", "{results}");
    assert_eq!(number(results, &["survivors"]), 2.0);
    assert_eq!(results["detected_by_all"], true, "{results}");
    let per_survivor = results["seconds_per_survivor"].as_array().ok_or("no survivors")?;
    let survivor_urls: Vec<&str> = per_survivor.iter().filter_map(|entry| entry["url"].as_str()).collect();
    assert_eq!(
        survivor_urls,
        [nodes[0].url.as_str(), nodes[2].url.as_str()],
        "{results}"
    );
    let slowest = number(results, &["all_seconds"]);
    assert!(slowest > 0.0 && slowest < 20.0, "{results}");
    assert!(number(results, &["median_seconds"]) <= slowest, "{results}");
    // The killed process is gone: the survivors really saw a death, not a slow answer.
    let mut nodes = nodes;
    assert!(nodes[1].child.try_wait()?.is_some(), "the node still runs");
    Ok(())
}

#[tokio::test]
async fn detect_refuses_a_single_url() -> TestResult {
    let cluster = cluster(1).await?;
    let error = run_with(&cluster, &["detect"])
        .await
        .err()
        .ok_or("a run with one URL")?;
    assert!(error.to_string().contains("two --url"), "{error}");
    Ok(())
}
