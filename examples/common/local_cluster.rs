//! A local cluster for the examples: the example runs itself once per node, as child processes (one node per
//! process, as real gossip and links need), on free 127.0.0.1 ports, and prints each node's URL.
//!
//! `cargo run --example <name>` is the parent: it starts the nodes, prints `<node> (<role>): <url>` per node and a
//! line `ready`, and stops them on Ctrl-C or when its standard input closes. A child is the same program started
//! as `<exe> node --name N --role R --http A --gossip G --link L --seed S…`, with the cluster secret in
//! `EXAMPLE_CLUSTER_SECRET`; it prints `listening <url>` once it serves and stops when its standard input closes.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use actix_web::{web, App, HttpServer};
use hubmesh::{ClusterSettings, LinkConfig, MembershipConfig, Node, NodeBuilder};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Where the cluster secret travels to the nodes (not the command line, where `ps` shows it).
const SECRET_ENV: &str = "EXAMPLE_CLUSTER_SECRET";
/// How long the parent waits for every node to serve.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopping node may take before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// One node of the local cluster: its name and its role (what the example serves on it).
pub struct NodeSpec {
    pub name: &'static str,
    pub role: &'static str,
}

/// What a child node is: its name, role and addresses.
pub struct NodeArgs {
    pub name: String,
    pub role: String,
    http: String,
    gossip: SocketAddr,
    link: SocketAddr,
    seeds: Vec<String>,
}

/// What runs once a node has joined and serves (a background task of a backend, say).
pub type Started = Box<dyn FnOnce(&Node) + Send>;

/// Adds a role's hubs and settings to a node, and says what to run once it serves.
pub type Role = fn(NodeBuilder, &str) -> (NodeBuilder, Started);

/// Mounts the example's own routes of a role (pages, say) beside the node's.
pub type Routes = fn(&mut web::ServiceConfig, &str);

/// Nothing to run once the node serves.
pub fn nothing_more() -> Started {
    Box::new(|_| {})
}

/// The example's entry point: a child node when started as `<exe> node …`, else the parent of `nodes`.
/// `role` builds a node of a role; `routes` mounts the example's own routes for a role beside the node's.
pub fn main_with(example: &str, nodes: &[NodeSpec], role: Role, routes: Routes) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{example}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = if args.first().map(String::as_str) == Some("node") {
        match parse_node_args(&args[1..]) {
            Ok(node) => runtime.block_on(run_node(node, role, routes)),
            Err(error) => Err(error),
        }
    } else {
        runtime.block_on(run_parent(example, nodes))
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{example}: {error}");
            ExitCode::FAILURE
        }
    }
}

fn parse_node_args(args: &[String]) -> Result<NodeArgs, String> {
    let mut node = NodeArgs {
        name: String::new(),
        role: String::new(),
        http: String::new(),
        gossip: SocketAddr::from(([127, 0, 0, 1], 0)),
        link: SocketAddr::from(([127, 0, 0, 1], 0)),
        seeds: Vec::new(),
    };
    let mut pairs = args.chunks(2);
    for pair in &mut pairs {
        let [key, value] = pair else {
            return Err(format!("missing value after {}", pair.join(" ")));
        };
        let address = || {
            value
                .parse::<SocketAddr>()
                .map_err(|error| format!("{key} {value}: {error}"))
        };
        match key.as_str() {
            "--name" => node.name = value.clone(),
            "--role" => node.role = value.clone(),
            "--http" => node.http = value.clone(),
            "--gossip" => node.gossip = address()?,
            "--link" => node.link = address()?,
            "--seed" => node.seeds.push(value.clone()),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(node)
}

/// A child: joins the cluster, serves the node and the example's routes, stops when standard input closes.
async fn run_node(args: NodeArgs, role: Role, routes: Routes) -> Result<(), String> {
    let secret = std::env::var(SECRET_ENV).map_err(|_| format!("{SECRET_ENV} is not set"))?;
    let membership = MembershipConfig::new(args.name.as_str(), "example", args.gossip).with_seeds(args.seeds);
    let settings = ClusterSettings::real(membership, LinkConfig::new(args.link, secret));
    let (builder, started) = role(Node::builder().name(&args.name), &args.role);
    let node = builder
        .cluster(settings)
        .build_and_join()
        .await
        .map_err(|error| error.to_string())?;
    let listener = TcpListener::bind(&args.http).map_err(|error| format!("{}: {error}", args.http))?;
    let url = format!("http://{}", listener.local_addr().map_err(|error| error.to_string())?);
    let app_node = node.clone();
    let app_role = args.role.clone();
    let server = HttpServer::new(move || {
        let node = app_node.clone();
        let node_role = app_role.clone();
        App::new()
            .configure(|config| routes(config, &node_role))
            .configure(move |config| node.configure(config))
    })
    .workers(2)
    .disable_signals()
    .listen(listener)
    .map_err(|error| error.to_string())?
    .run();
    let handle = server.handle();
    let serving = tokio::spawn(server);
    started(&node);
    println!("listening {url}");
    // Standard input closing (the parent stopping) or Ctrl-C stops the node.
    tokio::select! {
        _ = stdin_closed() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    node.shutdown().await;
    handle.stop(true).await;
    let _ = serving.await;
    Ok(())
}

/// Resolves when standard input reaches its end (read on a thread of its own: it blocks).
async fn stdin_closed() {
    let (closed, on_close) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = [0u8; 256];
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        let _ = closed.send(());
    });
    let _ = on_close.await;
}

/// A free 127.0.0.1 UDP port, for a node's gossip.
fn free_udp_port() -> Result<u16, String> {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .map(|addr| addr.port())
        .map_err(|error| error.to_string())
}

/// A secret for this run's cluster.
fn cluster_secret() -> String {
    (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect()
}

/// The parent: starts every node, prints their URLs, and stops them on Ctrl-C or when standard input closes.
async fn run_parent(example: &str, nodes: &[NodeSpec]) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|error| error.to_string())?;
    let secret = cluster_secret();
    // Only the gossip ports are chosen ahead: every node must know them as seeds. HTTP and link ports are bound
    // by each node itself (port 0), since a port picked ahead can be taken meanwhile (by a node's own ephemeral
    // ractor_cluster listener, or another process) before the node binds it.
    let mut gossip_ports = Vec::new();
    for _ in nodes {
        gossip_ports.push(free_udp_port()?);
    }
    let seeds: Vec<String> = gossip_ports
        .iter()
        .map(|gossip| format!("127.0.0.1:{gossip}"))
        .collect();
    let mut children: Vec<Child> = Vec::new();
    // Held apart from the children: tokio's `Child::wait` closes a child's stdin, which would stop the node.
    let mut stdins = Vec::new();
    let mut urls = Vec::new();
    let outcome: Result<(), String> = async {
        for (spec, gossip) in nodes.iter().zip(&gossip_ports) {
            let mut command = Command::new(&exe);
            command
                .arg("node")
                .args(["--name", spec.name, "--role", spec.role])
                .args(["--http", "127.0.0.1:0"])
                .args(["--gossip", &format!("127.0.0.1:{gossip}")])
                .args(["--link", "127.0.0.1:0"])
                .env(SECRET_ENV, &secret)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true);
            for seed in &seeds {
                command.args(["--seed", seed]);
            }
            let mut child = command
                .spawn()
                .map_err(|error| format!("cannot start {}: {error}", spec.name))?;
            let stdout = child.stdout.take().ok_or("no stdout")?;
            stdins.push(child.stdin.take());
            children.push(child);
            let mut lines = BufReader::new(stdout).lines();
            let url = tokio::time::timeout(START_TIMEOUT, async {
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(url) = line.strip_prefix("listening ") {
                        return Some(url.to_owned());
                    }
                }
                None
            })
            .await
            .ok()
            .flatten()
            .ok_or_else(|| format!("{} did not start", spec.name))?;
            // Keep reading (and showing) what the node prints.
            let name = spec.name;
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    println!("[{name}] {line}");
                }
            });
            urls.push(url);
        }
        Ok(())
    }
    .await;
    let mut outcome = outcome;
    if outcome.is_ok() {
        println!("{example}: {} nodes of one cluster:", nodes.len());
        for (spec, url) in nodes.iter().zip(&urls) {
            println!("  {} ({}): {url}", spec.name, spec.role);
        }
        println!("ready (Ctrl-C stops)");
        let names: Vec<&str> = nodes.iter().map(|spec| spec.name).collect();
        tokio::select! {
            _ = stdin_closed() => {}
            _ = tokio::signal::ctrl_c() => {}
            // A node that dies takes the example down with it, rather than leaving a cluster short of a node.
            (exit, index, _) = futures_util::future::select_all(children.iter_mut().map(|child| Box::pin(child.wait()))) => {
                let name = names.get(index).copied().unwrap_or("a node");
                outcome = Err(format!("{name} stopped ({exit:?}); the others were stopped too"));
            }
        }
    }
    // Closing their standard input asks the nodes to stop.
    drop(stdins);
    for child in &mut children {
        if tokio::time::timeout(STOP_TIMEOUT, child.wait()).await.is_err() {
            let _ = child.kill().await;
        }
    }
    outcome
}
