//! The live page (`GET /_hubmesh/`) in headless Chromium, on an in-process three-node cluster: it renders every
//! node as serving, updates as clients connect to node-2 and a broadcast reaches them (connections and deliveries
//! per node), and shows node-3 dead once the test kills it. The page is driven by `tests/browser/live-page.mjs`,
//! which asks this test for each step on its stdout and is answered on its stdin.
//!
//! Needs Node.js and npm (`npm ci` runs in `tests/node` when playwright-core is missing) and Debian's Chromium at
//! `/usr/bin/chromium`; when it is missing, `tests/browser/install-chromium.sh` installs it (root needed).

#[path = "common/chromium.rs"]
mod chromium;
#[path = "common/npm.rs"]
mod npm;
#[path = "common/process.rs"]
mod process;

use std::error::Error;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use chromium::{browser_dir, ensure_chromium, CHROMIUM};
use hubmesh::demo::demo_hub;
use hubmesh::testing::{TestClient, TestCluster};
use process::{kill_tree, own_process_group, wait_bounded};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

/// Upper bound on the whole browser run; `live-page.mjs` gives up by itself after 240 s.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the cluster may take to form.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_page_renders_updates_and_shows_a_killed_node_dead() -> TestResult {
    npm::ensure_installed()?;
    ensure_chromium()?;
    let mut cluster = TestCluster::start(3, || vec![demo_hub()]).await?;
    cluster.wait_for_members(FORM_TIMEOUT).await?;
    let page_node = cluster.url(0).ok_or("no node-1")?;
    let busy_node = cluster.url(1).ok_or("no node-2")?;

    let mut child = own_process_group(
        Command::new("node")
            .arg("live-page.mjs")
            .current_dir(browser_dir())
            .env("HUBMESH_LIVE_URL", &page_node)
            .env("HUBMESH_CHROMIUM", CHROMIUM)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped()),
    )
    .spawn()
    .map_err(|error| format!("cannot start `node live-page.mjs`: {error}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin")?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
    // The driver's output, line by line (a thread: the pipe is blocking).
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("live page: {line}");
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });

    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut clients = Vec::new();
    let mut passes = 0;
    let mut failures = Vec::new();
    let outcome: TestResult = async {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(line) = timeout(left, lines.recv())
                .await
                .map_err(|_| "the live page run timed out")?
            else {
                break;
            };
            match line.as_str() {
                "WAIT connect" => {
                    for _ in 0..2 {
                        clients.push(TestClient::to(&format!("{busy_node}/hub")).connect().await?);
                    }
                    let sender = clients.first_mut().ok_or("no client")?;
                    sender.invoke_ok_keeping_others("Broadcast", json!(["to all"])).await?;
                    writeln!(stdin, "connect")?;
                }
                "WAIT kill" => {
                    cluster.kill(2).await;
                    writeln!(stdin, "kill")?;
                }
                line if line.starts_with("PASS ") => passes += 1,
                line if line.starts_with("FAIL ") => failures.push(line.to_owned()),
                _ => {}
            }
        }
        Ok(())
    }
    .await;
    let status = wait_bounded(&mut child, Duration::from_secs(10), "the live page driver");
    if status.is_err() {
        kill_tree(&mut child);
    }
    drop(clients);
    cluster.stop().await;
    outcome?;
    let status = status.map_err(|error| error.to_string())?;
    assert!(failures.is_empty(), "live page checks failed: {failures:#?}");
    assert!(
        status.success(),
        "the live page driver failed ({status}); see its lines above"
    );
    assert_eq!(passes, 4, "every check of the live page ran");
    Ok(())
}
