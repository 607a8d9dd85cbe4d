//! Runs an example of `examples/` as a user does, `cargo run --example <name>`, and reads the node URLs it prints
//! (`examples/common/local_cluster.rs`: `  <node> (<role>): <url>` lines, then `ready`). Closing its standard
//! input stops the example and its nodes; a run that does not stop in time is killed with its process group.

// Each test binary includes this file and uses part of it.
#![allow(dead_code)]

use std::error::Error;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::process::{kill_tree, own_process_group, wait_bounded};

/// How long building and starting an example may take (`cargo run` may have to build it first).
const START_TIMEOUT: Duration = Duration::from_secs(600);
/// How long an example may take to stop once its standard input closes.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A node of a running example.
pub struct ExampleNode {
    pub name: String,
    pub role: String,
    pub url: String,
}

/// A running example; dropping it stops it.
pub struct RunningExample {
    child: Child,
    stdin: Option<ChildStdin>,
    pub nodes: Vec<ExampleNode>,
}

impl RunningExample {
    /// Starts `cargo run --example <name>` and waits until it prints `ready`.
    pub fn start(name: &str) -> Result<Self, Box<dyn Error>> {
        let mut command = Command::new(env!("CARGO"));
        command.args(["run", "--quiet", "--example", name]);
        if let Some(target_dir) = own_target_dir() {
            command.arg("--target-dir").arg(target_dir);
        }
        let mut child = own_process_group(
            command
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped()),
        )
        .spawn()
        .map_err(|error| format!("cannot run `cargo run --example {name}`: {error}"))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (lines_tx, lines) = mpsc::channel::<String>();
        let prefix = name.to_owned();
        // Its output, line by line, shown as it comes (a thread: the pipe is blocking).
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("{prefix}: {line}");
                if lines_tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut running = RunningExample {
            child,
            stdin,
            nodes: Vec::new(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines
                .recv_timeout(left)
                .map_err(|_| format!("`cargo run --example {name}` did not print `ready`"))?;
            if line.starts_with("ready") {
                break;
            }
            if let Some(node) = parse_node_line(&line) {
                running.nodes.push(node);
            }
        }
        Ok(running)
    }

    /// The URLs of the nodes with role `role`.
    pub fn urls(&self, role: &str) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|node| node.role == role)
            .map(|node| node.url.clone())
            .collect()
    }
}

/// The target directory this test binary was built in (`<target>/debug/deps/<test>`, `<target>` marked by the
/// `CACHEDIR.TAG` cargo writes), so that `cargo run` reuses that build even when `cargo test` was given
/// `--target-dir`; `None` (cargo's own choice) for another layout.
fn own_target_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let profile = exe.parent()?.parent()?;
    let target = profile.parent()?;
    (profile.file_name()? == "debug" && target.join("CACHEDIR.TAG").is_file()).then(|| target.to_owned())
}

/// `  <node> (<role>): <url>`.
fn parse_node_line(line: &str) -> Option<ExampleNode> {
    let (head, url) = line.trim().split_once("): ")?;
    let (name, role) = head.split_once(" (")?;
    url.starts_with("http").then(|| ExampleNode {
        name: name.to_owned(),
        role: role.to_owned(),
        url: url.to_owned(),
    })
}

impl Drop for RunningExample {
    fn drop(&mut self) {
        // Closing standard input stops the example, which stops its nodes.
        drop(self.stdin.take());
        if wait_bounded(&mut self.child, STOP_TIMEOUT, "the example").is_err() {
            kill_tree(&mut self.child);
        }
    }
}

pub use crate::chromium::{browser_dir, ensure_chromium, CHROMIUM};

/// Runs the page driver `tests/browser/<driver>` with `env`, within `timeout`; its lines show as they come.
pub fn run_page_driver(driver: &str, env: &[(&str, &str)], timeout: Duration) -> Result<ExitStatus, Box<dyn Error>> {
    let mut command = Command::new("node");
    command
        .arg(driver)
        .current_dir(browser_dir())
        .env("HUBMESH_CHROMIUM", CHROMIUM);
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = own_process_group(&mut command)
        .spawn()
        .map_err(|error| format!("cannot start `node {driver}`: {error}"))?;
    wait_bounded(&mut child, timeout, driver)
}
