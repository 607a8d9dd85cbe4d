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
//! * `hubmesh bench fanout|echo|idle|connect|rooms|churn|storm|quiet|detect --url URL... [options]`: the load tool
//!   (`hubmesh_cli::bench`); one JSON line per run on standard output, a short summary on standard error.
//! * `hubmesh status --url URL [--json]`: the cluster as the node at URL sees it (`GET /_hubmesh/status`).
//! * `hubmesh drain --url URL --key KEY [--wait]`: asks a node to drain and exit (`POST /_hubmesh/drain`, [`drain`]).
//! * `hubmesh rolling-restart FILE...`: restarts a cluster node by node: drain, wait for the exit, start again,
//!   wait until ready and owning ([`rolling`]).
//!
//! A node drains (`Node::drain` over `node.drain_window`, then exits 0) on its first Ctrl-C or SIGTERM and on an
//! authenticated `POST /_hubmesh/drain`; a second Ctrl-C or SIGTERM, or the end of standard input (with
//! `--stop-on-stdin-close`), stops it at once, its connections told to reconnect elsewhere, and it still exits 0.
//!
//! Logs (standard error) are text, or with `--log-format json` (or `HUBMESH_LOG_FORMAT=json`) one JSON object per
//! line carrying the fields of the spans it happened in (node, connection, link).
//!
//! This file is the command table (clap's types) and the commands that are a few lines each; the binary's own
//! modules, not part of the `hubmesh_cli` library, hold the rest: [`dev`] (the `hubmesh dev` runner),
//! [`status`] (`hubmesh status`, and the plain HTTP requests the other commands make), [`drain`] (`hubmesh
//! drain`), [`rolling`] (`hubmesh rolling-restart`) and [`signals`] (Ctrl-C, SIGTERM, the end of standard input).

mod dev;
mod drain;
mod rolling;
mod signals;
mod status;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use hubmesh_cli::config::{NodeConfig, NodeSettings, Overrides};
use tracing_subscriber::EnvFilter;

/// The binary's allocator (the library leaves the choice to whoever embeds it). With glibc's malloc a negotiated
/// idle connection cost 11.3 KB of a node's RSS against 5.2 KB for one that skipped negotiation, though a heap
/// profile found 0.6 KB more live bytes: negotiate's and the upgrade's short-lived buffers left holes between
/// connections' long-lived state that glibc could not give back. jemalloc's size classes keep them apart
/// (benches/README.md, "The allocator").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// `cluster-config/example.toml`, printed by `hubmesh config example`.
const EXAMPLE: &str = include_str!("../../cluster-config/example.toml");

/// The first line a node prints on standard output, followed by its URL.
const LISTENING: &str = "Now listening on: ";

#[derive(Parser, Debug)]
#[command(
    name = "hubmesh",
    version,
    about = "A realtime hub runtime for the official SignalR clients"
)]
struct Cli {
    #[command(subcommand)]
    command: CliCommand,
    /// How logs are written to standard error: `text`, or `json` (one object per line, with the span fields).
    #[arg(long, global = true, value_enum, env = "HUBMESH_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// The form of the log lines.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line: time, level, message, fields, and the spans (`spans`, `span`) with their fields.
    Json,
}

impl LogFormat {
    fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
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
    /// Load tool: drives the demo hub at /hub of running nodes (fanout, echo, idle, connect, rooms, churn, storm,
    /// quiet, detect).
    #[command(subcommand)]
    Bench(hubmesh_cli::bench::Scenario),
    /// Prints the cluster as one node sees it: members, generations, states, addresses, uptimes, links.
    Status(StatusArgs),
    /// Asks a node to drain and exit (`POST /_hubmesh/drain`, authenticated with the REST access key).
    Drain(drain::DrainArgs),
    /// Restarts a cluster node by node: drain, wait for the exit, start again, wait until ready and owning.
    RollingRestart(rolling::RollingArgs),
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// The node's URL, http://HOST:PORT (its HTTP address, as `Now listening on:` printed it).
    #[arg(long, value_name = "URL")]
    url: String,
    /// Print the node's report as JSON (`GET /_hubmesh/status`), for scripts.
    #[arg(long)]
    json: bool,
    /// How long to wait for the node's answer.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Args, Debug, Default)]
struct NodeArgs {
    /// A configuration file (TOML); see cluster-config/README.md. Flags and HUBMESH_* variables override it.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// node.name: the node's name, unique in the cluster.
    #[arg(long)]
    name: Option<String>,
    /// node.drain_window: over how long a drain (SIGTERM, Ctrl-C, POST /_hubmesh/drain) closes the connections.
    #[arg(long, value_name = "DURATION")]
    drain_window: Option<String>,
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
    /// http.cors_origins: an origin (scheme://host[:port], or * for any) whose pages may call the node
    /// cross-origin with credentials; repeat for more. Replaces the origins from other sources.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    cors_origins: Vec<String>,
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
            ("node.drain_window", &self.drain_window),
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
        if !self.cors_origins.is_empty() {
            overrides.set_list("http.cors_origins", self.cors_origins.iter().cloned());
        }
        if self.no_demo {
            overrides.set("hubs.demo", "false");
        }
        overrides
    }
}

#[derive(Args, Debug)]
struct DevArgs {
    /// The number of nodes (1 to 32).
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
    let log_format = cli.log_format;
    init_logs(log_format);
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
            CliCommand::Dev(args) => dev::run_dev(args, log_format.as_str()).await,
            CliCommand::Config(ConfigCommand::Check(args)) => check_files(&args),
            CliCommand::Config(ConfigCommand::Example) => {
                print!("{EXAMPLE}");
                Ok(())
            }
            CliCommand::Bench(scenario) => run_bench(&scenario).await,
            CliCommand::Status(args) => status::run_status(&args.url, args.json, args.timeout).await,
            CliCommand::Drain(args) => drain::run_drain(&args).await,
            CliCommand::RollingRestart(args) => rolling::run_rolling_restart(&args).await,
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

/// Logs go to standard error: standard output carries the `Now listening on:` line that tools parse.
fn init_logs(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
        // Every span the event happened in, with its fields: the node, connection and link of each line.
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .init(),
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
    // Listening from the start: a SIGTERM that comes while the node starts is kept for then, not fatal.
    let mut signals = signals::StopSignals::new(args.stop_on_stdin_close);
    let node = settings.builder().start().await?;
    println!("{LISTENING}{}", node.url());
    if settings.demo {
        tracing::info!(url = %format!("{}/hub", node.url()), "demo hub");
    }
    let first = tokio::select! {
        stop = signals.next() => stop,
        () = node.node().drain_requested() => signals::Stop::DrainAsked,
    };
    if first == signals::Stop::StdinClosed {
        tracing::info!(reason = first.reason(), "stopping");
        node.stop().await;
        return Ok(());
    }
    let window = settings.drain_window;
    tracing::info!(reason = first.reason(), window = %humantime::format_duration(window), "draining");
    let started = std::time::Instant::now();
    let own = node.node().clone();
    let drain = node.drain(window);
    tokio::pin!(drain);
    tokio::select! {
        () = &mut drain => {
            tracing::info!(took_ms = started.elapsed().as_millis() as u64, "drained; exiting");
        }
        second = signals.next() => {
            // Stop at once: connections get Close with allowReconnect (`Node::shutdown`) and the node leaves.
            tracing::info!(reason = second.reason(), "stopping at once, during the drain");
            own.shutdown().await;
        }
    }
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
