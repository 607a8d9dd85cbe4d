//! `hubmesh rolling-restart FILE...`: restarts a cluster node by node, each node given by its configuration file
//! (its name, HTTP address and REST access key come from it, as `hubmesh node --config FILE` reads them), or by
//! its URL (`--url URL...` with `--key`, and `--start COMMAND` or `--no-start`; its name is what it reports).
//!
//! For each node in the order given: it waits until the whole cluster is healthy (every node ready, and every node
//! lists every other live); asks the node to drain (`POST /_hubmesh/drain`, [`super::drain`]) and waits until it
//! has exited (its HTTP port refuses connections and no other node lists it any more; the old process may still
//! hold its ports for a moment, so a start that exits at once is tried again, a few times); starts it again with the start command (`--start`, by default this binary's `node --config FILE`;
//! `--no-start` when a supervisor such as systemd or Kubernetes restarts it); and waits until the new incarnation
//! answers `/readyz` with 200 and every other node's status report lists it live with its new generation: it owns
//! its share again. One JSON line per node on standard output (`node`, `generation`: the new one, `closed_ms`:
//! the drain asked until its HTTP port closed, `drain_ms`: until it had left, `start_ms`: started until ready and owning, `total_ms`), and a summary line last.
//!
//! A started node runs in this command's process group, its output on this command's standard error, and outlives
//! the command. Everything waits with a deadline (`--exit-timeout`, `--ready-timeout`); the first failure stops the
//! restart with the node named, leaving the rest of the cluster as it is.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use hubmesh::status::StatusReport;
use hubmesh_cli::config::{NodeConfig, Overrides};
use serde_json::json;

use crate::drain::{access_key, ask_to_drain, wait_until_gone, POLL, REQUEST_TIMEOUT};
use crate::status::{fetch_report, request};

#[derive(Args, Debug)]
pub(crate) struct RollingArgs {
    /// The nodes' configuration files, in the order to restart them.
    #[arg(value_name = "FILE", required_unless_present = "urls", conflicts_with = "urls")]
    configs: Vec<PathBuf>,
    /// Instead of files: a node's URL, http://HOST:PORT (repeat, in order). Needs `--key` (or `--key-file`), and
    /// `--start` or `--no-start`.
    #[arg(long = "url", value_name = "URL", requires = "start_or_supervised")]
    urls: Vec<String>,
    /// With `--url`: the nodes' REST access key.
    #[arg(long, env = "HUBMESH_REST__ACCESS_KEY", hide_env_values = true, value_name = "KEY")]
    key: Option<String>,
    /// With `--url`: a file holding the nodes' REST access key.
    #[arg(long, value_name = "FILE", conflicts_with = "key")]
    key_file: Option<PathBuf>,
    /// The command that starts a node again, run with `sh -c`; `{config}`, `{name}` and `{url}` are replaced by
    /// the node's file (empty with `--url`), name and URL. Default: this binary's `node --config {config}`.
    #[arg(
        long,
        value_name = "COMMAND",
        conflicts_with = "no_start",
        group = "start_or_supervised"
    )]
    start: Option<String>,
    /// Start nothing: a supervisor restarts each node once it has exited; only wait for it to come back.
    #[arg(long, group = "start_or_supervised")]
    no_start: bool,
    /// How long a node may take to drain and exit (its `node.drain_window` plus a few seconds, at least).
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    exit_timeout: Duration,
    /// How long a node may take, once started, to be ready and owning again; also the wait for a healthy cluster
    /// before each node.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    ready_timeout: Duration,
}

/// One node to restart, as its configuration (or its URL and the key given) says.
struct Target {
    /// `None` for a node given by its URL.
    config: Option<PathBuf>,
    name: String,
    /// `host:port` to dial.
    address: String,
    key: String,
}

impl Target {
    fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

/// Reads a node's configuration file as `hubmesh node --config FILE` would.
fn target(config: &Path) -> anyhow::Result<Target> {
    let settings = NodeConfig::load(Some(config), &Overrides::new())
        .and_then(|loaded| loaded.node_settings())
        .with_context(|| format!("{}", config.display()))?;
    if settings.tls.is_some() {
        bail!(
            "{}: the node serves HTTPS; rolling-restart speaks plain HTTP only",
            config.display()
        );
    }
    let key = settings.rest_access_key.as_ref().ok_or_else(|| {
        anyhow!(
            "{}: the node has no REST access key (rest.access_key), so it cannot be asked to drain",
            config.display()
        )
    })?;
    let mut listen = settings.listen;
    if listen.port() == 0 {
        bail!(
            "{}: http.listen has port 0; a restarted node must come back at the same address",
            config.display()
        );
    }
    if listen.ip().is_unspecified() {
        listen.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(Target {
        config: Some(config.to_path_buf()),
        name: settings.name.clone(),
        address: listen.to_string(),
        key: key.expose().to_owned(),
    })
}

/// A node given by its URL: its name is what it reports.
async fn target_at(url: &str, key: &str) -> anyhow::Result<Target> {
    let address = crate::status::authority(url)?;
    let (report, _) = fetch_report(url, REQUEST_TIMEOUT).await?;
    Ok(Target {
        config: None,
        name: report.node,
        address,
        key: key.to_owned(),
    })
}

/// The nodes to restart, from the files or the URLs given.
async fn targets(args: &RollingArgs) -> anyhow::Result<Vec<Target>> {
    if args.urls.is_empty() {
        return args.configs.iter().map(|config| target(config)).collect();
    }
    let Some(key) = access_key(args.key.as_deref(), args.key_file.as_deref())? else {
        bail!("--url needs the nodes' REST access key: --key, --key-file or HUBMESH_REST__ACCESS_KEY");
    };
    let mut targets = Vec::new();
    for url in &args.urls {
        targets.push(target_at(url, &key).await?);
    }
    Ok(targets)
}

/// Runs `hubmesh rolling-restart`.
pub(crate) async fn run_rolling_restart(args: &RollingArgs) -> anyhow::Result<()> {
    let targets = targets(args).await?;
    let started = Instant::now();
    for (index, node) in targets.iter().enumerate() {
        wait_healthy(&targets, args.ready_timeout)
            .await
            .with_context(|| format!("before restarting {}", node.name))?;
        let old_generation = report_of(node).await?.generation;
        let step = Instant::now();
        ask_to_drain(&node.address, node.key.as_bytes()).await?;
        eprintln!(
            "rolling-restart: {} is draining ({} of {})",
            node.name,
            index + 1,
            targets.len()
        );
        wait_until_gone(&node.address, args.exit_timeout).await?;
        let closed_ms = step.elapsed().as_millis() as u64;
        wait_until_left(node, old_generation, &targets, args.exit_timeout).await?;
        let drain_ms = step.elapsed().as_millis() as u64;
        let start = Instant::now();
        let generation = start_until_owning(node, &targets, args).await?;
        let start_ms = start.elapsed().as_millis() as u64;
        eprintln!("rolling-restart: {} is back (generation {generation:?})", node.name);
        println!(
            "{}",
            json!({
                "node": node.name,
                "generation": generation,
                "closed_ms": closed_ms,
                "drain_ms": drain_ms,
                "start_ms": start_ms,
                "total_ms": step.elapsed().as_millis() as u64,
            })
        );
    }
    wait_healthy(&targets, args.ready_timeout)
        .await
        .context("after the restart")?;
    println!(
        "{}",
        json!({ "restarted": targets.len(), "total_ms": started.elapsed().as_millis() as u64 })
    );
    Ok(())
}

/// Starts `node` again (unless `--no-start`); the child is left running.
fn start_node(node: &Target, args: &RollingArgs) -> anyhow::Result<Option<tokio::process::Child>> {
    if args.no_start {
        return Ok(None);
    }
    let mut command = match &args.start {
        Some(template) => {
            let config = node.config.as_ref().map(|config| config.display().to_string());
            let line = template
                .replace("{config}", config.as_deref().unwrap_or_default())
                .replace("{name}", &node.name)
                .replace("{url}", &node.url());
            let mut command = tokio::process::Command::new("sh");
            command.arg("-c").arg(line);
            command
        }
        None => {
            let Some(config) = &node.config else {
                bail!(
                    "{} was given by its URL: say how to start it (--start) or --no-start",
                    node.name
                );
            };
            let exe = std::env::current_exe().context("cannot find this binary to start the node with")?;
            let mut command = tokio::process::Command::new(exe);
            command.arg("node").arg("--config").arg(config);
            command
        }
    };
    // The node's output goes to this command's standard error: standard output carries the JSON lines.
    let child = command
        .stdin(Stdio::null())
        .stdout(to_stderr())
        .stderr(to_stderr())
        .spawn()
        .with_context(|| format!("cannot start {}", node.name))?;
    Ok(Some(child))
}

/// This process's standard error, for a child to write to.
fn to_stderr() -> Stdio {
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        if let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() {
            return Stdio::from(fd);
        }
    }
    Stdio::inherit()
}

/// How often a node that exits while starting is started again (its old process may still hold its ports for a
/// moment after its HTTP port closed).
const START_ATTEMPTS: u32 = 5;

/// Starts `node` (unless `--no-start`) and waits until it is ready and owning ([`wait_owning`]); starts it again,
/// at most [`START_ATTEMPTS`] times in all, if it exits while starting. Returns its new generation.
async fn start_until_owning(node: &Target, all: &[Target], args: &RollingArgs) -> anyhow::Result<Option<u64>> {
    let deadline = Instant::now() + args.ready_timeout;
    for attempt in 1..=START_ATTEMPTS {
        let mut child = start_node(node, args)?;
        match wait_owning(node, all, &mut child, deadline).await? {
            Ok(generation) => return Ok(generation),
            Err(status) if attempt < START_ATTEMPTS && Instant::now() < deadline => {
                eprintln!(
                    "rolling-restart: {} exited while starting ({status}); starting it again",
                    node.name
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(status) => bail!("{} exited while starting ({status}), {attempt} times", node.name),
        }
    }
    bail!("{} did not start", node.name)
}

/// Waits until `node`'s new incarnation is ready and every other node lists it live with its generation; returns
/// the generation, or the started process's exit status if it exits first.
async fn wait_owning(
    node: &Target,
    all: &[Target],
    child: &mut Option<tokio::process::Child>,
    deadline: Instant,
) -> anyhow::Result<Result<Option<u64>, std::process::ExitStatus>> {
    loop {
        if let Some(process) = child.as_mut() {
            if let Some(status) = process.try_wait()? {
                return Ok(Err(status));
            }
        }
        if let Ok(report) = report_of(node).await {
            if report.ready && report.status == "serving" && seen_by_all(&report, node, all).await {
                return Ok(Ok(report.generation));
            }
        }
        if Instant::now() >= deadline {
            bail!("{} was not ready and owning in time", node.name);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until no other node lists `node`'s incarnation `generation` live any more: it has left the cluster.
async fn wait_until_left(
    node: &Target,
    generation: Option<u64>,
    all: &[Target],
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    for other in all.iter().filter(|other| other.address != node.address) {
        loop {
            let listed = match report_of(other).await {
                Ok(theirs) => theirs
                    .members
                    .iter()
                    .any(|member| member.name == node.name && member.generation == generation),
                Err(_) => false,
            };
            if !listed {
                break;
            }
            if Instant::now() >= deadline {
                bail!("{} still lists {} live after it exited", other.name, node.name);
            }
            tokio::time::sleep(POLL).await;
        }
    }
    Ok(())
}

/// Whether every node of `all` but `node` is up and lists `node` live with the generation `report` gives.
async fn seen_by_all(report: &StatusReport, node: &Target, all: &[Target]) -> bool {
    for other in all.iter().filter(|other| other.address != node.address) {
        let Ok(theirs) = report_of(other).await else {
            return false;
        };
        let listed = theirs
            .members
            .iter()
            .any(|member| member.name == report.node && member.generation == report.generation);
        if !listed {
            return false;
        }
    }
    true
}

/// Waits until every node answers `/readyz` with 200 and lists all the others live.
async fn wait_healthy(all: &[Target], limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let mut unhealthy = None;
        for node in all {
            let readyz = tokio::time::timeout(REQUEST_TIMEOUT, request(&node.address, "GET", "/readyz", &[])).await;
            let ready = matches!(readyz, Ok(Ok((200, _))));
            let complete = match report_of(node).await {
                Ok(report) => all
                    .iter()
                    .all(|other| report.members.iter().any(|member| member.name == other.name)),
                Err(_) => false,
            };
            if !(ready && complete) {
                unhealthy = Some(&node.name);
                break;
            }
        }
        match unhealthy {
            None => return Ok(()),
            Some(name) if Instant::now() >= deadline => {
                bail!(
                    "the cluster was not healthy within {}: {name} is not ready or does not list every node",
                    humantime::format_duration(limit)
                )
            }
            Some(_) => tokio::time::sleep(POLL).await,
        }
    }
}

async fn report_of(node: &Target) -> anyhow::Result<StatusReport> {
    Ok(fetch_report(&node.url(), REQUEST_TIMEOUT).await?.0)
}
