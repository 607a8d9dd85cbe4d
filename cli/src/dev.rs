//! `hubmesh dev`: a local cluster of `hubmesh node` child processes on 127.0.0.1, their output prefixed with
//! their names, started together and stopped together (on Ctrl-C, or when one of them dies).
//!
//! A module of the binary (`main.rs`), not of the `hubmesh_cli` library. It runs this same executable as the
//! nodes, and may call the binary's [`DevArgs`], [`LISTENING`] and [`shutdown_signal`].

use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use hubmesh_cli::config::env_name;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::signals::shutdown_signal;
use crate::{DevArgs, LISTENING};

/// The most nodes `hubmesh dev` starts (their gossip ports, BASE+2001.., stay below their link ports, BASE+2101..).
const MAX_DEV_NODES: u16 = 32;

/// How long `hubmesh dev` waits for every node to listen, and for a node to stop before it is killed.
const DEV_START_TIMEOUT: Duration = Duration::from_secs(30);
const DEV_STOP_TIMEOUT: Duration = Duration::from_secs(5);

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

/// Runs the cluster; each node logs in `log_format` (`text` or `json`). JSON log lines are copied without the
/// name prefix, so each stays one JSON object (the node's name is in its `node` span).
pub(crate) async fn run_dev(args: DevArgs, log_format: &str) -> anyhow::Result<()> {
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
            // Pages under development are served from anywhere (a dev server on another port, a file).
            .args(["--cors-origin", "*"])
            .arg("--stop-on-stdin-close")
            .args(["--log-format", log_format])
            // The secret travels in the environment, not on the command line where `ps` shows it.
            .env(env_name("cluster.secret"), &secret)
            // Local load tools negotiate from one address far faster than a client on a public network may.
            .env(env_name("limits.negotiates_per_second"), "0")
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
                Output::Stdout,
                Some((nodes.len(), events.clone())),
            ));
        }
        if let Some(stderr) = child.stderr.take() {
            let prefix_stderr = log_format != "json";
            tokio::spawn(forward(
                name.clone(),
                stderr,
                Output::Stderr { prefix: prefix_stderr },
                None,
            ));
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

/// Where `forward` copies a child's lines.
#[derive(Clone, Copy)]
enum Output {
    Stdout,
    /// With `prefix: false` (JSON logs) lines are copied as they are.
    Stderr {
        prefix: bool,
    },
}

/// Copies a child's output line by line, prefixed with its name; reports the `Now listening on:` line.
async fn forward(
    name: String,
    output: impl tokio::io::AsyncRead + Unpin,
    to: Output,
    listening: Option<(usize, mpsc::UnboundedSender<DevEvent>)>,
) {
    let mut lines = BufReader::new(output).lines();
    let mut listening = listening;
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => {
                match to {
                    Output::Stdout => println!("[{name}] {line}"),
                    Output::Stderr { prefix: true } => eprintln!("[{name}] {line}"),
                    Output::Stderr { prefix: false } => eprintln!("{line}"),
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
