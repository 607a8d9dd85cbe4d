//! A `hubmesh node` child process for the drain and rolling-restart tests: started with flags or a configuration
//! file, its URL read from its first line, signalled by name, its exit waited for with a deadline, and killed
//! (with its process group) when dropped. Also: plain HTTP requests to it, and the operator's drain token.

// Each test binary includes this file and uses part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hubmesh::testing::client::{http_request, HttpReply};

use crate::binary::hubmesh;
use crate::process::{kill_tree, own_process_group};

pub type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The drain route.
pub const DRAIN_PATH: &str = "/_hubmesh/drain";

/// A running `hubmesh node`.
pub struct NodeProcess {
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    /// `127.0.0.1:PORT`.
    pub addr: SocketAddr,
    /// Kept open: with `--stop-on-stdin-close` the node stops if the test process dies.
    _stdin: Option<ChildStdin>,
    /// Kept open so the node never writes to a closed pipe.
    _stdout: BufReader<ChildStdout>,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // A node that exited (drained) has left nothing behind in its group.
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            kill_tree(&mut self.child);
        }
    }
}

impl NodeProcess {
    /// `hubmesh node ARGS --stop-on-stdin-close` with `env` added, in its own process group; returns once it
    /// printed its URL.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> TestResult<NodeProcess> {
        let mut command = hubmesh();
        command.arg("node").args(args).arg("--stop-on-stdin-close");
        for (name, value) in env {
            command.env(name, value);
        }
        own_process_group(&mut command);
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut first = String::new();
        stdout.read_line(&mut first)?;
        let Some(url) = first.trim().strip_prefix("Now listening on: ").map(str::to_owned) else {
            kill_tree(&mut child);
            return Err(format!("unexpected first line {first:?}").into());
        };
        let addr = url.strip_prefix("http://").ok_or("not an http URL")?.parse()?;
        Ok(NodeProcess {
            child,
            url,
            addr,
            _stdin: stdin,
            _stdout: stdout,
        })
    }

    /// Sends signal `name` (`TERM`, `INT`, …) to the node.
    pub fn signal(&self, name: &str) -> TestResult {
        signal_pid(self.child.id(), name)
    }

    /// Waits at most `limit` for the node to exit; returns its status and how long the wait took.
    pub async fn wait_exit(&mut self, limit: Duration) -> TestResult<(ExitStatus, Duration)> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok((status, started.elapsed()));
            }
            if started.elapsed() > limit {
                return Err(format!("the node did not exit within {limit:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `GET path`, its status code (a refused connection is an error).
    pub async fn status_of(&self, path: &str) -> TestResult<u16> {
        Ok(http_request(self.addr, "GET", path, &[]).await?.status)
    }

    /// `POST /_hubmesh/drain` with `headers`.
    pub async fn post_drain(&self, headers: &[(&str, &str)]) -> TestResult<HttpReply> {
        Ok(http_request(self.addr, "POST", DRAIN_PATH, headers).await?)
    }

    /// Waits until `GET path` answers `status`, at most `limit`; returns how long it took.
    pub async fn wait_for_status(&self, path: &str, status: u16, limit: Duration) -> TestResult<Duration> {
        let started = Instant::now();
        loop {
            let got = self.status_of(path).await.ok();
            if got == Some(status) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > limit {
                return Err(format!("{path} answered {got:?}, not {status}, for {limit:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Sends signal `name` to process `pid`.
pub fn signal_pid(pid: u32, name: &str) -> TestResult {
    let status = Command::new("kill")
        .args(["-s", name, "--"])
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill -s {name} {pid} failed").into())
    }
}

/// The operator's token for `POST {url}/_hubmesh/drain`, signed with `key` (the REST API's rule).
pub fn drain_token(addr: SocketAddr, key: &str) -> TestResult<String> {
    let claims = serde_json::json!({
        "aud": format!("http://{addr}{DRAIN_PATH}"),
        "exp": jsonwebtoken::get_current_timestamp() + 300,
    });
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
    )?)
}

/// A free loopback port for both TCP and UDP (a node's HTTP, gossip or link address).
pub fn free_port() -> TestResult<u16> {
    // Below the kernel's ephemeral range (32768 and up by default): a port picked there could be taken by some
    // outgoing connection between this check and the node's bind, and the node would not start.
    for _ in 0..200 {
        let port: u16 = rand::random_range(20_000..32_000);
        let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)) else {
            continue;
        };
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            drop(tcp);
            return Ok(port);
        }
    }
    Err("no free port".into())
}
