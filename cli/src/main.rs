//! The `hubmesh` command: runs nodes, a local development cluster, and checks configuration files.
//!
//! * `hubmesh node [--config FILE] [flags]`: one node. With no arguments, a single node serving the demo hub on
//!   127.0.0.1:5000. Settings come from the file, `HUBMESH_*` environment variables and flags, in rising
//!   precedence (see `hubmesh_cli::config` and `cluster-config/README.md`). The first line on standard output is
//!   `Now listening on: http://ADDR` (`https://` with `http.tls_cert`), once the node serves; logs go to standard
//!   error.
//! * `hubmesh dev [--nodes N] [--base-port P]`: a local N-node cluster, each node a child process running
//!   `hubmesh node` on 127.0.0.1 (HTTP P+1.., gossip P+2001.., links P+2101..), its output prefixed with its name.
//!   Ctrl-C stops them all; so does one node dying.
//! * `hubmesh config check FILE...`: loads and checks configuration files as `hubmesh node --config` would.
//! * `hubmesh config example`: prints `cluster-config/example.toml`, every key with its default.
//! * `hubmesh bench fanout|echo|idle|connect --url URL... [options]`: the load tool (`hubmesh_cli::bench`); one JSON
//!   line per run on standard output, a short summary on standard error.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use hubmesh_cli::config::{env_name, NodeConfig, NodeSettings, Overrides};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tracing_subscriber::EnvFilter;

/// `cluster-config/example.toml`, printed by `hubmesh config example`.
const EXAMPLE: &str = include_str!("../../cluster-config/example.toml");

/// The first line a node prints on standard output, followed by its URL.
const LISTENING: &str = "Now listening on: ";

/// The most nodes `hubmesh dev` starts.
const MAX_DEV_NODES: u16 = 9;

/// How long `hubmesh dev` waits for every node to listen, and for a node to stop before it is killed.
const DEV_START_TIMEOUT: Duration = Duration::from_secs(30);
const DEV_STOP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Parser, Debug)]
#[command(
    name = "hubmesh",
    version,
    about = "A realtime hub runtime for the official SignalR clients"
)]
struct Cli {
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Subcommand, Debug)]
enum CliCommand {
    /// Runs one node. Without arguments: a single node serving the demo hub on 127.0.0.1:5000.
    Node(Box<NodeArgs>),
    /// Runs a local cluster of N nodes on 127.0.0.1, each a child process, for development.
    Dev(DevArgs),
    /// Configuration files.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Load tool: drives the demo hub at /hub of running nodes (fanout, echo, idle, connect).
    #[command(subcommand)]
    Bench(hubmesh_cli::bench::Scenario),
}

#[derive(Args, Debug, Default)]
struct NodeArgs {
    /// A configuration file (TOML); see cluster-config/README.md. Flags and HUBMESH_* variables override it.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// node.name: the node's name, unique in the cluster.
    #[arg(long)]
    name: Option<String>,
    /// http.listen: the HTTP address, ip:port (port 0 picks a free port).
    #[arg(long, visible_alias = "listen", value_name = "ADDR")]
    http: Option<String>,
    /// http.workers: HTTP worker threads.
    #[arg(long)]
    workers: Option<String>,
    /// cluster.id: the cluster to join.
    #[arg(long, value_name = "ID")]
    cluster_id: Option<String>,
    /// cluster.gossip: the UDP address to gossip on, ip:port.
    #[arg(long, value_name = "ADDR")]
    gossip: Option<String>,
    /// cluster.link: the TCP address to accept links from other nodes on, ip:port.
    #[arg(long, value_name = "ADDR")]
    link: Option<String>,
    /// cluster.seeds: a seed's gossip address; repeat for more. Replaces the seeds from other sources.
    #[arg(long = "seed", value_name = "ADDR")]
    seeds: Vec<String>,
    /// cluster.secret_file: a file holding the cluster secret.
    #[arg(long, value_name = "FILE")]
    secret_file: Option<String>,
    /// limits.max_message: the largest hub message a client may send (bytes, or "64KiB").
    #[arg(long, value_name = "SIZE")]
    max_message: Option<String>,
    /// hubs.demo = false: serve no demo hub.
    #[arg(long)]
    no_demo: bool,
    /// Stop when standard input is closed (`hubmesh dev` and tests use it, so a node never outlives its parent).
    #[arg(long)]
    stop_on_stdin_close: bool,
}

impl NodeArgs {
    fn overrides(&self) -> Overrides {
        let mut overrides = Overrides::new();
        let single = [
            ("node.name", &self.name),
            ("http.listen", &self.http),
            ("http.workers", &self.workers),
            ("cluster.id", &self.cluster_id),
            ("cluster.gossip", &self.gossip),
            ("cluster.link", &self.link),
            ("cluster.secret_file", &self.secret_file),
            ("limits.max_message", &self.max_message),
        ];
        for (key, value) in single {
            if let Some(value) = value {
                overrides.set(key, value.clone());
            }
        }
        if !self.seeds.is_empty() {
            overrides.set_list("cluster.seeds", self.seeds.iter().cloned());
        }
        if self.no_demo {
            overrides.set("hubs.demo", "false");
        }
        overrides
    }
}

#[derive(Args, Debug)]
struct DevArgs {
    /// The number of nodes (1 to 9).
    #[arg(long, short = 'n', default_value_t = 3)]
    nodes: u16,
    /// Ports are counted from here: node i serves HTTP on BASE+i, gossip on BASE+2000+i, links on BASE+2100+i.
    #[arg(long, default_value_t = 5000)]
    base_port: u16,
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Checks configuration files; exits non-zero if any is invalid.
    Check(CheckArgs),
    /// Prints an example configuration with every key and its default.
    #[command(visible_alias = "default")]
    Example,
}

#[derive(Args, Debug)]
struct CheckArgs {
    /// The files to check.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Ignore HUBMESH_* environment variables (by default they apply, as they would for `hubmesh node`).
    #[arg(long)]
    no_env: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to standard error: standard output carries the `Now listening on:` line that tools parse.
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hubmesh: could not start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            CliCommand::Node(args) => run_node(*args).await,
            CliCommand::Dev(args) => run_dev(args).await,
            CliCommand::Config(ConfigCommand::Check(args)) => check_files(&args),
            CliCommand::Config(ConfigCommand::Example) => {
                print!("{EXAMPLE}");
                Ok(())
            }
            CliCommand::Bench(scenario) => run_bench(&scenario).await,
        }
    });
    // Do not wait for a blocked read of standard input, or any other straggler.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("hubmesh: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one load-tool scenario: the JSON line on standard output, the summary on standard error.
async fn run_bench(scenario: &hubmesh_cli::bench::Scenario) -> anyhow::Result<()> {
    let report = hubmesh_cli::bench::run(scenario).await?;
    eprintln!("{}", report.summary);
    println!("{}", report.json_line());
    Ok(())
}

/// Loads and checks the node's settings; the error names the bad setting and its source.
fn node_settings(config: Option<&Path>, overrides: &Overrides) -> anyhow::Result<NodeSettings> {
    let config = NodeConfig::load(config, overrides)?;
    Ok(config.node_settings()?)
}

async fn run_node(args: NodeArgs) -> anyhow::Result<()> {
    let settings = node_settings(args.config.as_deref(), &args.overrides())?;
    log_settings(&settings);
    let node = settings.builder().start().await?;
    println!("{LISTENING}{}", node.url());
    if settings.demo {
        tracing::info!(url = %format!("{}/hub", node.url()), "demo hub");
    }
    let reason = stop_signal(args.stop_on_stdin_close).await;
    tracing::info!(reason, "stopping");
    node.stop().await;
    Ok(())
}

fn log_settings(settings: &NodeSettings) {
    match &settings.cluster {
        Some(cluster) => tracing::info!(
            node = %settings.name,
            http = %settings.listen,
            cluster = %cluster.membership.cluster_id,
            gossip = %cluster.membership.gossip_listen,
            link = %cluster.link.listen,
            seeds = ?cluster.membership.seeds,
            demo = settings.demo,
            "starting a cluster node"
        ),
        None => {
            tracing::info!(node = %settings.name, http = %settings.listen, demo = settings.demo, "starting a single node")
        }
    }
}

/// Waits for Ctrl-C, SIGTERM, or (if asked) the end of standard input; returns which.
async fn stop_signal(stdin: bool) -> &'static str {
    let stdin_closed = async {
        if !stdin {
            return std::future::pending().await;
        }
        let (closed, wait) = tokio::sync::oneshot::channel::<()>();
        // A plain thread, not the runtime's blocking pool, so that shutdown never waits for this read.
        let spawned = std::thread::Builder::new().name("stdin-watch".into()).spawn(move || {
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = closed.send(());
        });
        match spawned {
            Ok(_) => {
                let _ = wait.await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot watch standard input");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        reason = shutdown_signal() => reason,
        () = stdin_closed => "standard input closed",
    }
}

/// Ctrl-C (SIGINT) or, on Unix, SIGTERM.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        result = tokio::signal::ctrl_c() => match result {
            Ok(()) => "interrupted",
            Err(_) => std::future::pending().await,
        },
        () = terminate => "terminated",
    }
}

fn check_files(args: &CheckArgs) -> anyhow::Result<()> {
    let mut failed = 0;
    for file in &args.files {
        let loaded = if args.no_env {
            NodeConfig::load_with_env(Some(file), std::iter::empty::<(String, String)>(), &Overrides::new())
        } else {
            NodeConfig::load(Some(file), &Overrides::new())
        };
        match loaded.and_then(|config| config.node_settings()) {
            Ok(settings) => println!("{}: ok ({})", file.display(), summary(&settings)),
            Err(error) => {
                failed += 1;
                eprintln!("{}: {:#}", file.display(), anyhow::Error::from(error));
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} configuration files are invalid", args.files.len());
    }
    Ok(())
}

fn summary(settings: &NodeSettings) -> String {
    let hubs = if settings.demo { "demo hub" } else { "no hubs" };
    match &settings.cluster {
        Some(cluster) => format!(
            "node `{}`, http {}, {hubs}, cluster `{}`, gossip {}, link {}, seeds: {}",
            settings.name,
            settings.listen,
            cluster.membership.cluster_id,
            cluster.membership.gossip_listen,
            cluster.link.listen,
            if cluster.membership.seeds.is_empty() {
                "none".to_owned()
            } else {
                cluster.membership.seeds.join(", ")
            }
        ),
        None => format!(
            "node `{}`, http {}, {hubs}, single node",
            settings.name, settings.listen
        ),
    }
}

/// One child of `hubmesh dev`.
struct DevNode {
    name: String,
    child: Child,
    /// Closing it asks the node to stop (`--stop-on-stdin-close`).
    stdin: Option<ChildStdin>,
    /// Its exit was already reported.
    reported: bool,
}

/// What the output readers of `hubmesh dev` report.
enum DevEvent {
    /// Node `index` printed its URL.
    Listening(usize, String),
}

async fn run_dev(args: DevArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > MAX_DEV_NODES {
        bail!("--nodes must be between 1 and {MAX_DEV_NODES}, not {}", args.nodes);
    }
    let port = |offset: u16, index: u16| -> anyhow::Result<u16> {
        args.base_port
            .checked_add(offset)
            .and_then(|port| port.checked_add(index))
            .context("--base-port is too high: the ports would pass 65535")
    };
    let exe = std::env::current_exe().context("cannot find the hubmesh executable")?;
    let secret = dev_secret();
    let mut seeds = Vec::new();
    for index in 1..=args.nodes {
        seeds.push(format!("127.0.0.1:{}", port(2000, index)?));
    }

    let (events, mut event_rx) = mpsc::unbounded_channel();
    let mut nodes: Vec<DevNode> = Vec::new();
    for index in 1..=args.nodes {
        let name = format!("node-{index}");
        let mut command = Command::new(&exe);
        command
            .arg("node")
            .args(["--name", &name])
            .args(["--http", &format!("127.0.0.1:{}", port(0, index)?)])
            .args(["--cluster-id", "dev"])
            .args(["--gossip", &format!("127.0.0.1:{}", port(2000, index)?)])
            .args(["--link", &format!("127.0.0.1:{}", port(2100, index)?)])
            .arg("--stop-on-stdin-close")
            // The secret travels in the environment, not on the command line where `ps` shows it.
            .env(env_name("cluster.secret"), &secret)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for seed in &seeds {
            command.args(["--seed", seed]);
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(error) => {
                stop_all(&mut nodes).await;
                return Err(error).with_context(|| format!("cannot start {name}"));
            }
        };
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(forward(
                name.clone(),
                stdout,
                false,
                Some((nodes.len(), events.clone())),
            ));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(forward(name.clone(), stderr, true, None));
        }
        let stdin = child.stdin.take();
        nodes.push(DevNode {
            name,
            child,
            stdin,
            reported: false,
        });
    }
    drop(events);

    let signal = shutdown_signal();
    tokio::pin!(signal);
    let mut urls: Vec<Option<String>> = vec![None; nodes.len()];
    let started = tokio::time::sleep(DEV_START_TIMEOUT);
    tokio::pin!(started);
    // Wait until every node listens, a node dies, the user stops, or the start timeout passes.
    let outcome: anyhow::Result<()> = loop {
        if urls.iter().all(Option::is_some) {
            println!(
                "hubmesh dev: {} nodes of cluster `dev` are up. The demo hub:",
                nodes.len()
            );
            for (node, url) in nodes.iter().zip(&urls) {
                println!("  {}  {}/hub", node.name, url.as_deref().unwrap_or_default());
            }
            println!("Press Ctrl-C to stop.");
            break Ok(());
        }
        tokio::select! {
            event = event_rx.recv() => match event {
                Some(DevEvent::Listening(index, url)) => {
                    if let Some(slot) = urls.get_mut(index) {
                        *slot = Some(url);
                    }
                }
                // Every node's output closed before all listened: a node died; the wait below says which.
                None => break Ok(()),
            },
            exited = any_exit(&mut nodes) => {
                break Err(dev_exit_error(exited, &mut signal).await);
            }
            reason = &mut signal => {
                eprintln!("hubmesh dev: {reason}; stopping the nodes");
                stop_all(&mut nodes).await;
                return Ok(());
            }
            () = &mut started => {
                let waiting: Vec<&str> = nodes.iter().zip(&urls).filter(|(_, url)| url.is_none()).map(|(node, _)| node.name.as_str()).collect();
                break Err(anyhow::anyhow!("{} did not start listening within {DEV_START_TIMEOUT:?}", waiting.join(", ")));
            }
        }
    };
    if let Err(error) = outcome {
        stop_all(&mut nodes).await;
        return Err(error);
    }

    tokio::select! {
        exited = any_exit(&mut nodes) => {
            let error = dev_exit_error(exited, &mut signal).await;
            stop_all(&mut nodes).await;
            Err(error)
        }
        reason = &mut signal => {
            eprintln!("hubmesh dev: {reason}; stopping the nodes");
            stop_all(&mut nodes).await;
            Ok(())
        }
    }
}

/// The error for a node that exited, unless the exit came with the user's Ctrl-C (a terminal sends SIGINT to the
/// children too, which may stop before this process notices the signal).
async fn dev_exit_error(
    exited: (String, std::io::Result<std::process::ExitStatus>),
    signal: &mut std::pin::Pin<&mut impl std::future::Future<Output = &'static str>>,
) -> anyhow::Error {
    let (name, status) = exited;
    tokio::select! {
        reason = signal => anyhow::anyhow!("{reason}; {name} stopped first"),
        () = tokio::time::sleep(Duration::from_millis(300)) => match status {
            Ok(status) => anyhow::anyhow!("{name} exited unexpectedly ({status}); stopped the other nodes"),
            Err(error) => anyhow::anyhow!("cannot wait for {name}: {error}; stopped the other nodes"),
        },
    }
}

/// Waits until any node exits; returns its name and status.
async fn any_exit(nodes: &mut [DevNode]) -> (String, std::io::Result<std::process::ExitStatus>) {
    if nodes.is_empty() {
        return std::future::pending().await;
    }
    let waits = nodes.iter_mut().map(|node| {
        Box::pin(async move {
            let status = node.child.wait().await;
            node.reported = true;
            (node.name.clone(), status)
        })
    });
    futures_util::future::select_all(waits).await.0
}

/// Asks every node to stop (by closing its standard input), waits for them, and kills those that do not stop.
async fn stop_all(nodes: &mut [DevNode]) {
    for node in nodes.iter_mut() {
        node.stdin.take();
    }
    let stops = nodes.iter_mut().map(|node| async move {
        match tokio::time::timeout(DEV_STOP_TIMEOUT, node.child.wait()).await {
            Ok(Ok(status)) if !status.success() && !node.reported => {
                eprintln!("hubmesh dev: {} stopped ({status})", node.name)
            }
            Ok(_) => {}
            Err(_) => {
                eprintln!(
                    "hubmesh dev: {} did not stop within {DEV_STOP_TIMEOUT:?}; killing it",
                    node.name
                );
                let _ = node.child.kill().await;
            }
        }
    });
    futures_util::future::join_all(stops).await;
}

/// Copies a child's output line by line, prefixed with its name; reports the `Now listening on:` line.
async fn forward(
    name: String,
    output: impl tokio::io::AsyncRead + Unpin,
    to_stderr: bool,
    listening: Option<(usize, mpsc::UnboundedSender<DevEvent>)>,
) {
    let mut lines = BufReader::new(output).lines();
    let mut listening = listening;
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => {
                if to_stderr {
                    eprintln!("[{name}] {line}");
                } else {
                    println!("[{name}] {line}");
                }
                if let Some(url) = line.strip_prefix(LISTENING) {
                    if let Some((index, events)) = listening.take() {
                        let _ = events.send(DevEvent::Listening(index, url.trim().to_owned()));
                    }
                }
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// A fresh random secret for one `hubmesh dev` run.
fn dev_secret() -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::rng().random();
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
