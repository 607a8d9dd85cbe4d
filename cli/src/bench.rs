//! The load tool behind `hubmesh bench`: drives the demo hub contract ([`hubmesh::demo`]) at `/hub` of any hubmesh
//! cluster, as a client, with the JSON hub protocol: over direct WebSockets (`skipNegotiation`) by default, or
//! negotiated, over WebSockets, Server-Sent Events or long polling ([`Transport`]), with each request of a client
//! sent to the next URL in turn (`--spread`, as a round-robin load balancer without affinity would).
//!
//! It owns the scenarios ([`Scenario`]: `fanout`, `echo`, `idle`, `connect`, `rooms`, `churn`, `storm`, `quiet`, `detect`),
//! their options, the minimal SignalR client they use (`bench::client`, its URLs and their rotation in
//! `bench::route`, the HTTP/1.1 it speaks for negotiate, SSE and long polling in `bench::http`), the statistics
//! (`bench::stats`) and the readings of server CPU time and memory from `/proc` (`bench::procfs`). It may call only
//! the demo hub's wire contract (method names and the client method `msg`), `kill` (`storm` only), `tokio`,
//! `tokio-tungstenite` and `serde_json`: no hub, node or connection internals, so it measures any cluster that
//! serves the demo hub, local or not.
//!
//! Every run is bounded: in clients and seconds by option limits, in every network wait by a timeout. It connects
//! only to the URLs named by `--url` (by default the three nodes of `hubmesh dev`, on loopback). A server that
//! cannot be reached, refuses the handshake or closes a client ends the run with a [`BenchError`], never a panic.
//!
//! [`run`] returns a [`Report`]: one JSON line (scenario, parameters, results) and a short human summary.

mod client;
mod http;
mod procfs;
mod route;
mod scenarios;
mod stats;

use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

pub use procfs::{dev_node_pids, process_cpu_seconds, process_rss_bytes};

/// The most clients (connections) one run opens.
pub const MAX_CLIENTS: usize = 100_000;
/// The longest measured phase of one run.
pub const MAX_SECONDS: f64 = 3_600.0;
/// The most deliveries one fan-out run may expect (it keeps one bit per expected delivery).
pub const MAX_DELIVERIES: u64 = 500_000_000;

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An option is out of range or inconsistent.
    #[error("invalid options: {0}")]
    Options(String),
    /// A `--url` cannot be used.
    #[error("bad --url `{url}`: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The TCP connection or WebSocket upgrade failed (server unreachable, wrong path, refused).
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The hub URL the request went to (ws:// or http://).
        url: String,
        /// The underlying error.
        reason: String,
    },
    /// A network step took longer than its timeout.
    #[error("{url}: timed out after {after:?} while {doing}")]
    Timeout {
        /// The hub URL the request went to (ws:// or http://).
        url: String,
        /// What the client was waiting for.
        doing: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// The server answered the SignalR handshake with an error or something unexpected.
    #[error("{url}: handshake failed: {reason}")]
    Handshake {
        /// The hub URL the request went to (ws:// or http://).
        url: String,
        /// The server's error or the unexpected answer.
        reason: String,
    },
    /// The server closed a client's connection during the run.
    #[error("{url}: the server closed a client while {doing}: {reason}")]
    Closed {
        /// The hub URL the request went to (ws:// or http://).
        url: String,
        /// What the client was doing.
        doing: &'static str,
        /// The close reason, as far as known.
        reason: String,
    },
    /// Reading or writing the socket failed.
    #[error("{url}: socket error while {doing}: {reason}")]
    Socket {
        /// The hub URL the request went to (ws:// or http://).
        url: String,
        /// What the client was doing.
        doing: &'static str,
        /// The underlying error.
        reason: String,
    },
    /// The server sent a record the client cannot read, or a hub method failed.
    #[error("{url}: {reason}")]
    Protocol {
        /// The hub URL the request went to (ws:// or http://).
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// An HTTP request (negotiate, a poll, a POST, the SSE stream) got an unexpected status.
    #[error("{url}: HTTP {status} while {doing}: {body}")]
    Status {
        /// The hub's URL the request went to.
        url: String,
        /// What the client was doing.
        doing: &'static str,
        /// The response's status code.
        status: u16,
        /// The start of the response's body.
        body: String,
    },
    /// Reading `/proc` for a server process failed.
    #[error("cannot read /proc/{pid}: {reason}")]
    Proc {
        /// The process id.
        pid: u32,
        /// The underlying error.
        reason: String,
    },
    /// `--pids-from-dev` found no `hubmesh node` process serving a URL.
    #[error("--pids-from-dev: no `hubmesh node --http {0}` process found; give --pid instead")]
    NoPid(String),
    /// A client task ended abnormally.
    #[error("a client task failed: {0}")]
    Task(String),
}

/// The scenarios of `hubmesh bench`.
#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// C clients in one group (or reached by broadcast), one publisher at a target delivery rate: delivered
    /// messages per second, lost, duplicated, latency percentiles, deliveries per second of server CPU.
    Fanout(FanoutArgs),
    /// N clients doing Echo round trips at a target rate (or as fast as possible): round trips per second,
    /// latency percentiles, round trips per second of server CPU.
    Echo(EchoArgs),
    /// C idle connections (handshake done, one group joined) held for S seconds: server RSS per connection.
    Idle(IdleArgs),
    /// Connections opened, handshaken and closed: connections per second, and per second of server CPU.
    Connect(ConnectArgs),
    /// G groups of M members spread over the nodes, every member sending to its own group: deliveries per
    /// second, per second of server CPU, lost, duplicated, latency percentiles.
    Rooms(RoomsArgs),
    /// C connections joining and leaving groups at a target rate, each join and leave confirmed: joins per second
    /// of server CPU, confirmation latency, and at the end whether every node lists the same members per group.
    Churn(ChurnArgs),
    /// Members of small groups with automatic reconnect; one node is killed (SIGKILL): how long until its
    /// connections are back on the others and in their groups, and the survivors' delivery latency meanwhile.
    Storm(StormArgs),
    /// Nothing connected: each server process's CPU (gossip, failure detection, links) over a period, as a share
    /// of one core.
    Quiet(QuietArgs),
    /// One node is killed (SIGKILL): how long until every other node's status no longer lists it as live.
    Detect(DetectArgs),
}

/// How the clients reach the hub.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// WebSockets: direct (`skipNegotiation`), or negotiated on one node and upgraded on the next with `--spread`.
    #[value(name = "websockets")]
    WebSockets,
    /// Server-Sent Events: negotiate, the event stream (GET) and a POST per client message.
    #[value(name = "sse")]
    Sse,
    /// Long polling: negotiate, one poll (GET) pending at a time and a POST per client message.
    #[value(name = "longpolling")]
    LongPolling,
}

impl Transport {
    /// The name `--transport` takes.
    pub fn name(self) -> &'static str {
        match self {
            Transport::WebSockets => "websockets",
            Transport::Sse => "sse",
            Transport::LongPolling => "longpolling",
        }
    }
}

/// Options every scenario takes.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// A node's base URL (http:// or ws://); repeat for more. Clients are spread over them round-robin.
    #[arg(
        long = "url",
        value_name = "URL",
        default_values_t = ["http://127.0.0.1:5001".to_owned(), "http://127.0.0.1:5002".to_owned(), "http://127.0.0.1:5003".to_owned()]
    )]
    pub urls: Vec<String>,
    /// The hub's path, appended to a URL that has none.
    #[arg(long, default_value = "/hub")]
    pub hub_path: String,
    /// A server process to measure (CPU time, RSS) from /proc; repeat for more.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Measure the `hubmesh node` processes whose `--http` address is one of the URLs' (as `hubmesh dev` runs them).
    #[arg(long)]
    pub pids_from_dev: bool,
    /// The payload size in bytes (at least 40: it carries a sequence number and a send timestamp).
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// How many connections are opened at once while setting up.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// The timeout of each network step (connect, handshake, join, one round trip), in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub timeout: f64,
    /// How clients reach the hub: `websockets`, `sse` or `longpolling` (JSON hub protocol each).
    #[arg(long, value_enum, default_value_t = Transport::WebSockets)]
    pub transport: Transport,
    /// Send each HTTP request of a client (negotiate, the WebSocket upgrade, the SSE stream, each poll, POST and
    /// DELETE) to the next --url in turn, as a round-robin load balancer without affinity does; without it, every
    /// request of a client goes to its own URL.
    #[arg(long)]
    pub spread: bool,
    /// Connect WebSockets from this many loopback source addresses, 127.0.0.1 to 127.0.0.N in turn (each bound
    /// before connecting), so that more connections than one ephemeral port range fit (about 28,000 per source and
    /// node with Linux's default range); 1: the kernel chooses. WebSockets without --spread only.
    #[arg(long, default_value_t = 1)]
    pub source_addresses: u8,
    /// WebSocket clients negotiate stateful reconnect (`useStatefulReconnect=true`, handshake version 2) and
    /// acknowledge what they receive, as `withStatefulReconnect()` does: in a cluster, each connection is then kept
    /// by a peer (docs/semantics.md, "A node's death and its stateful connections"), which is what this measures.
    #[arg(long)]
    pub stateful: bool,
    /// WebSocket clients negotiate at their own URL and connect with the token, as the official clients do unless
    /// told to skip negotiation; without it (and without --stateful or --spread) they skip it. The baseline of
    /// --stateful's costs: both then negotiate.
    #[arg(long)]
    pub negotiate: bool,
}

/// Options of `hubmesh bench fanout`.
#[derive(Args, Debug, Clone)]
pub struct FanoutArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
    /// The number of receiving clients.
    #[arg(long, short = 'c', default_value_t = 1000)]
    pub clients: usize,
    /// The target deliveries per second (summed over clients); the publisher sends rate / clients messages/s.
    #[arg(long, default_value_t = 50_000.0)]
    pub rate: f64,
    /// How long the publisher sends, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// After publishing, how long to wait at most for outstanding deliveries, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub drain_seconds: f64,
    /// Use Broadcast (every connection) instead of SendToGroup.
    #[arg(long)]
    pub broadcast: bool,
    /// The group the clients join.
    #[arg(long, default_value = "bench")]
    pub group: String,
    /// The URL the publisher connects to, alone (not spread); default: client 0, whose own URL is the first --url.
    #[arg(long)]
    pub publisher_url: Option<String>,
}

/// Options of `hubmesh bench echo`.
#[derive(Args, Debug, Clone)]
pub struct EchoArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
    /// The number of clients, each with one round trip outstanding at a time.
    #[arg(long, short = 'c', default_value_t = 10)]
    pub clients: usize,
    /// The target round trips per second (summed over clients); 0: as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
}

/// Options of `hubmesh bench idle`.
#[derive(Args, Debug, Clone)]
pub struct IdleArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
    /// The number of idle connections.
    #[arg(long, short = 'c', default_value_t = 1000)]
    pub clients: usize,
    /// How long to hold them after all joined, in seconds (RSS is read at the end).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// The group every connection joins.
    #[arg(long, default_value = "idle")]
    pub group: String,
}

/// Options of `hubmesh bench connect`.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
    /// The number of connections to open, handshake and close (the run also stops after --seconds).
    #[arg(long, default_value_t = 5000)]
    pub count: u64,
    /// The longest the run lasts, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
    /// Connections in progress at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
}

/// The groups and traffic of `rooms` and `storm`: member `i` is in group `i / group-size`, its connection on
/// `--url` number `i % urls`, so each group is spread over the nodes.
#[derive(Args, Debug, Clone)]
pub struct RoomsShape {
    /// The number of groups.
    #[arg(long, default_value_t = 10_000)]
    pub groups: usize,
    /// The members of each group (each a connection of its own).
    #[arg(long, default_value_t = 10)]
    pub group_size: usize,
    /// The target deliveries per second, summed over members; the members send rate / group-size messages per
    /// second in all, on one shared schedule.
    #[arg(long, default_value_t = 100_000.0)]
    pub rate: f64,
    /// How long the members send, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// After sending, how long to wait at most for outstanding deliveries, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub drain_seconds: f64,
    /// Groups are named PREFIX-0, PREFIX-1, ….
    #[arg(long, default_value = "room")]
    pub prefix: String,
}

/// Options of `hubmesh bench rooms`.
#[derive(Args, Debug, Clone)]
pub struct RoomsArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub shape: RoomsShape,
}

/// Options of `hubmesh bench churn`.
#[derive(Args, Debug, Clone)]
pub struct ChurnArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
    /// The number of connections; each has one join or leave outstanding at a time.
    #[arg(long, short = 'c', default_value_t = 1000)]
    pub clients: usize,
    /// The number of groups the connections move between.
    #[arg(long, default_value_t = 200)]
    pub groups: usize,
    /// The target joins per second, summed over connections; each join after a connection's first is preceded
    /// by a leave of its previous group (also confirmed).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// How long to churn, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Groups are named PREFIX-0, PREFIX-1, ….
    #[arg(long, default_value = "churn")]
    pub prefix: String,
}

/// Options of `hubmesh bench storm`. The nodes must not stop together when one dies: start them one by one
/// (`hubmesh node`), not with `hubmesh dev`. Scaled down by default (3,000 connections, 1,000 on the killed
/// node); the size is `--groups 3000` (30,000 connections over three nodes, 10,000 on the killed one).
#[derive(Args, Debug, Clone)]
pub struct StormArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
    /// The number of groups.
    #[arg(long, default_value_t = 300)]
    pub groups: usize,
    /// The members of each group.
    #[arg(long, default_value_t = 10)]
    pub group_size: usize,
    /// The target deliveries per second, summed over members, before, during and after the storm.
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// The whole run, in seconds (the storm must be over by then).
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
    /// When to kill the node, in seconds after sending starts.
    #[arg(long, default_value_t = 5.0)]
    pub kill_after: f64,
    /// Which --url's node to kill (0: the first); its connections are the third that reconnect.
    #[arg(long, default_value_t = 0)]
    pub kill_url: usize,
    /// The process to kill; by default the `hubmesh node` whose --http is the --kill-url's address.
    #[arg(long)]
    pub kill_pid: Option<u32>,
    /// Groups are named PREFIX-0, PREFIX-1, ….
    #[arg(long, default_value = "storm")]
    pub prefix: String,
}

/// Options of `hubmesh bench quiet`.
#[derive(Args, Debug, Clone)]
pub struct QuietArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
    /// How long to measure, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
}

/// Options of `hubmesh bench detect`.
#[derive(Args, Debug, Clone)]
pub struct DetectArgs {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: CommonArgs,
    /// How long to wait for every survivor to see the death, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// How often each survivor's status is asked, in milliseconds (the figures' resolution).
    #[arg(long, default_value_t = 20)]
    pub poll_ms: u64,
    /// Which --url's node to kill (0: the first).
    #[arg(long, default_value_t = 0)]
    pub kill_url: usize,
    /// The process to kill; by default the `hubmesh node` whose --http is the --kill-url's address.
    #[arg(long)]
    pub kill_pid: Option<u32>,
}

/// The outcome of one run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The scenario's name (`fanout`, `echo`, `idle`, `connect`, `rooms`, `churn`, `storm`, `quiet`, `detect`).
    pub scenario: &'static str,
    /// The run's parameters.
    pub parameters: Value,
    /// The measured results.
    pub results: Value,
    /// A few human-readable lines.
    pub summary: String,
}

impl Report {
    /// The report as one JSON line (no trailing newline): `{"scenario":…,"parameters":{…},"results":{…}}`.
    pub fn json_line(&self) -> String {
        serde_json::json!({
            "scenario": self.scenario,
            "parameters": self.parameters,
            "results": self.results,
        })
        .to_string()
    }
}

/// Runs one scenario to its end (bounded by its options) and reports.
pub async fn run(scenario: &Scenario) -> Result<Report, BenchError> {
    match scenario {
        Scenario::Fanout(args) => scenarios::fanout(args).await,
        Scenario::Echo(args) => scenarios::echo(args).await,
        Scenario::Idle(args) => scenarios::idle(args).await,
        Scenario::Connect(args) => scenarios::connect(args).await,
        Scenario::Rooms(args) => scenarios::rooms(args).await,
        Scenario::Churn(args) => scenarios::churn(args).await,
        Scenario::Storm(args) => scenarios::storm(args).await,
        Scenario::Quiet(args) => scenarios::quiet(args).await,
        Scenario::Detect(args) => scenarios::detect(args).await,
    }
}

/// Turns a `--url` (http://, ws://, with or without a path) into the hub's WebSocket URL.
pub fn hub_ws_url(url: &str, hub_path: &str) -> Result<String, BenchError> {
    let bad = |reason: &str| BenchError::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = if let Some(rest) = url.strip_prefix("http://") {
        rest
    } else if let Some(rest) = url.strip_prefix("ws://") {
        rest
    } else if url.starts_with("https://") || url.starts_with("wss://") {
        return Err(bad("TLS is not supported; use http:// or ws://"));
    } else {
        return Err(bad("expected http://HOST:PORT or ws://HOST:PORT"));
    };
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(bad("expected a host (and port), without user info"));
    }
    let path = if path.is_empty() || path == "/" {
        if hub_path.starts_with('/') {
            hub_path.to_owned()
        } else {
            format!("/{hub_path}")
        }
    } else {
        path.to_owned()
    };
    Ok(format!("ws://{authority}{path}"))
}

/// The `host:port` of a `--url` (the port defaults to 80).
pub fn url_authority(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("ws://"))?;
    let authority = rest.split('/').next()?;
    if authority.is_empty() {
        return None;
    }
    let has_port = match authority.rfind(']') {
        Some(bracket) => authority[bracket..].contains(':'),
        None => authority.contains(':'),
    };
    Some(if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    })
}
