//! The `hubmesh node` processes: their configuration files (in a temporary directory, advertising the relay's
//! addresses), starting, killing, freezing and stopping them, their cluster views, their memory and their logs.

use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hubmesh::testing::client::http_request;
use serde_json::Value;
use tokio::time::Instant;

use super::process::{kill_tree, own_process_group, wait_bounded};
use super::relay::{free_port, Ports};

pub const SECRET: &str = "chaos-cluster-secret";
pub const AUTH_SECRET: &str = "chaos-auth-secret";
pub const REST_KEY: &str = "chaos-rest-access-key";
/// A drain (the rolling restart's SIGTERM) spreads its closes over this, shorter than the default 10 s so that a
/// rolling restart of five nodes fits the bounded run; the stop waits for it plus the grace and the leave.
const DRAIN_WINDOW: &str = "2s";

/// One node slot: the same name, ports and configuration across restarts.
pub struct Node {
    pub name: String,
    pub index: usize,
    pub http: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    /// Processes this slot ran, in order, with their memory at exit when measured.
    pub starts: usize,
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = signal(child.id(), "CONT");
            kill_tree(child);
        }
    }
}

pub fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-s", name, "--"])
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "kill -s {name} {pid} failed");
    Ok(())
}

fn http_port() -> anyhow::Result<SocketAddr> {
    Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
}

impl Node {
    /// Writes the configuration of node `index` (named `name`), seeded with every relay gossip address in `seeds`.
    pub fn configure(
        dir: &Path,
        index: usize,
        name: &str,
        ports: &Ports,
        seeds: &[SocketAddr],
        secret: &str,
    ) -> anyhow::Result<Node> {
        let http = http_port()?;
        let seeds: Vec<String> = seeds.iter().map(|seed| format!("\"{seed}\"")).collect();
        let text = format!(
            "[node]\nname = \"{name}\"\ndrain_window = \"{DRAIN_WINDOW}\"\n\n[http]\nlisten = \"{http}\"\n\n[cluster]\nid = \"chaos\"\n\
             gossip = \"{}\"\ngossip_advertise = \"{}\"\nlink = \"{}\"\nlink_advertise = \"{}\"\nseeds = [{}]\n\
             secret = \"{secret}\"\n\n[limits]\nnegotiates_per_second = 0\n\n[auth]\nsecret = \"{AUTH_SECRET}\"\n\n\
             [rest]\naccess_key = \"{REST_KEY}\"\n",
            ports.gossip,
            ports.relay_gossip,
            ports.link,
            ports.relay_link,
            seeds.join(", ")
        );
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, text)?;
        Ok(Node {
            name: name.to_owned(),
            index,
            http,
            config,
            log: dir.join(format!("{name}.log")),
            child: None,
            starts: 0,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts the process and waits (at most 30 s) until it prints `Now listening on:`. Its output is appended to
    /// its log file, so a restarted node's log follows its earlier life's.
    pub async fn start(&mut self) -> anyhow::Result<u32> {
        anyhow::ensure!(self.child.is_none(), "{} is already running", self.name);
        let offset = std::fs::metadata(&self.log).map(|meta| meta.len()).unwrap_or(0);
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        writeln!(log, "=== chaos harness: start {} of {}", self.starts + 1, self.name)?;
        let mut command = Command::new(env!("CARGO_BIN_EXE_hubmesh"));
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(|name| name.starts_with("HUBMESH_")) {
                command.env_remove(name);
            }
        }
        command
            .args(["node", "--config"])
            .arg(&self.config)
            // `CHAOS_NODE_LOG` (a `RUST_LOG` filter) to trace a failing seed.
            .env(
                "RUST_LOG",
                std::env::var("CHAOS_NODE_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = own_process_group(&mut command).spawn()?;
        let pid = child.id();
        self.child = Some(child);
        self.starts += 1;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read(&self.log).unwrap_or_default();
            let fresh = String::from_utf8_lossy(text.get(offset as usize..).unwrap_or_default()).into_owned();
            if fresh.contains("Now listening on: ") {
                return Ok(pid);
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    anyhow::bail!("{} exited at start ({status}): {fresh}", self.name);
                }
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not start within 30 s: {fresh}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL (its process group) and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = signal(child.id(), "CONT");
            kill_tree(&mut child);
        }
    }

    pub fn freeze(&self) -> anyhow::Result<()> {
        signal(
            self.pid()
                .ok_or_else(|| anyhow::anyhow!("{} is not running", self.name))?,
            "STOP",
        )
    }

    pub fn thaw(&self) -> anyhow::Result<()> {
        signal(
            self.pid()
                .ok_or_else(|| anyhow::anyhow!("{} is not running", self.name))?,
            "CONT",
        )
    }

    /// A plain stop: SIGTERM, then at most 15 s for the process to exit (killed past that).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM")?;
            wait_bounded(&mut child, Duration::from_secs(20), &self.name)
                .map_err(|error| anyhow::anyhow!("{error}"))?;
        }
        Ok(())
    }

    /// Resident memory in KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next()?.parse().ok())
    }

    /// Lines of its log that tell of a panic.
    pub fn panics(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|line| line.contains("panicked at") || line.contains("panicked:"))
            .map(str::to_owned)
            .collect()
    }
}

/// One node's view: live names and incarnations (`GET /_hubmesh/cluster`); `None` if it did not answer in 2 s.
pub async fn view(http: SocketAddr) -> Option<(BTreeSet<String>, BTreeSet<String>)> {
    let reply = tokio::time::timeout(
        Duration::from_secs(2),
        http_request(http, "GET", "/_hubmesh/cluster", &[]),
    )
    .await
    .ok()?
    .ok()?;
    let body: Value = serde_json::from_slice(&reply.body).ok()?;
    let list = |key: &str| -> BTreeSet<String> {
        body[key]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|item| item.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    Some((list("live"), list("incarnations")))
}

/// Waits until every node of `nodes` lists exactly their names live, with the same incarnations; how long it took
/// on success, the views last seen on failure.
pub async fn converge(nodes: &[(String, SocketAddr)], limit: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let want: BTreeSet<String> = nodes.iter().map(|(name, _)| name.clone()).collect();
    loop {
        let mut views = Vec::new();
        for (name, http) in nodes {
            views.push((name.clone(), view(*http).await));
        }
        let agreed = views
            .iter()
            .all(|(_, view)| view.as_ref().is_some_and(|(live, _)| *live == want))
            && views
                .windows(2)
                .all(|pair| pair[0].1.as_ref().map(|view| &view.1) == pair[1].1.as_ref().map(|view| &view.1));
        if agreed {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            return Err(format!("views after {:?}: {views:?}", started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
