//! Runs the official SignalR client's browser builds in headless Chromium against the in-process test hub server
//! (issue 3, item 5): `@microsoft/signalr/dist/browser/signalr.js` with the MessagePack protocol's browser build,
//! over WebSockets, Server-Sent Events (JSON only) and long polling, with both HTTP clients the browser build picks
//! from (fetch and XMLHttpRequest), from a page on another origin (cross-origin, with credentials and cookies), plus
//! the web-worker build in a dedicated worker. Then the whole conformance suite of `tests/node` (the official
//! suite's HubConnectionTests, ConnectionTests and WebSocketTests scenarios, ours about negotiate and transport
//! selection) runs unchanged in the page, with each HTTP client, including the HTTPS rows against the test server's
//! HTTPS listener. The pages, their static server and the driver live in `tests/browser` (see `run.mjs`).
//!
//! Needs Node.js and npm (`npm ci` runs in `tests/node` when `@microsoft/signalr` or `playwright-core` is missing)
//! and Debian's Chromium at `/usr/bin/chromium`: when it is missing, `tests/browser/install-chromium.sh` installs
//! the `chromium` package with apt-get (root needed) or fails with a clear message.
//!
//! Environment:
//! * `HUBMESH_BROWSER_ONLY`: run only the scenarios and suite tests whose name contains this, e.g.
//!   `xhr/LongPolling` or `using https`.
//! * `HUBMESH_BROWSER_SUITE`: the comma-separated `tests/node` files to run in the page (see `run.mjs`).

#[path = "common/chromium.rs"]
mod chromium;
#[path = "common/npm.rs"]
mod npm;
#[path = "common/process.rs"]
mod process;

use std::error::Error;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use chromium::{browser_dir, ensure_chromium, CHROMIUM};
use hubmesh::testing::proxy::RoundRobinProxy;
use hubmesh::testing::{TestHubCluster, TestHubServer};
use process::own_process_group;

type TestResult = Result<(), Box<dyn Error>>;

/// Upper bound on the browser run; `run.mjs` gives up by itself after 120 s.
const RUN_TIMEOUT: Duration = Duration::from_secs(960);

/// Signals the process group `child` leads (Unix).
fn signal_group(child: &Child, signal: &str) {
    #[cfg(unix)]
    {
        // `--` first: without it procps' kill reads `-<pgid>` as options and signals every process (pid -1).
        let _ = Command::new("kill")
            .args(["-s", signal, "--"])
            .arg(format!("-{}", child.id()))
            .status();
    }
    #[cfg(not(unix))]
    let _ = (child, signal);
}

/// Waits for `child` for at most `timeout`. Beyond it, asks the group to stop (SIGTERM: Playwright then closes
/// Chromium, which runs in a process group of its own), and kills it two seconds later.
fn wait_bounded(child: &mut Child, timeout: Duration, what: &str) -> Result<ExitStatus, Box<dyn Error>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            signal_group(child, "TERM");
            let grace = Instant::now() + Duration::from_secs(2);
            while Instant::now() < grace && child.try_wait()?.is_none() {
                thread::sleep(Duration::from_millis(100));
            }
            signal_group(child, "KILL");
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} did not finish within {} s and was killed", timeout.as_secs()).into());
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The official client and `playwright-core`, via `tests/common/npm.rs`.
fn ensure_node_modules() -> Result<PathBuf, Box<dyn Error>> {
    Ok(npm::ensure_installed()?)
}

#[test]
fn official_browser_client_in_headless_chromium() -> TestResult {
    ensure_node_modules()?;
    ensure_chromium()?;
    let server = TestHubServer::start().map_err(|error| format!("cannot start the test hub server: {error}"))?;
    println!("browser: test hub at {} and {}", server.url(), server.https_url());
    let dir = browser_dir();
    let mut child = own_process_group(
        Command::new("node")
            .arg("run.mjs")
            .current_dir(&dir)
            .env("HUBMESH_TEST_URL", server.url())
            .env("HUBMESH_TEST_HTTPS_URL", server.https_url())
            .env("HUBMESH_CHROMIUM", CHROMIUM),
    )
    .spawn()
    .map_err(|error| format!("cannot start `node run.mjs` in {}: {error}", dir.display()))?;
    let status = wait_bounded(
        &mut child,
        RUN_TIMEOUT,
        "the browser run (`node tests/browser/run.mjs`)",
    )?;
    drop(server);
    assert!(
        status.success(),
        "the browser scenarios failed ({status}); see the PASS/FAIL lines above"
    );
    Ok(())
}

/// The same browser run against three test servers forming one cluster, behind the harness's round-robin proxy
/// (each request to the next node, WebSocket upgrades included; the raw `/echo` endpoint, not a hub, pinned to
/// one node): any node serves any connection, so the page sees what it sees with one server. Plain HTTP only (the
/// proxy does not speak TLS).
#[test]
fn official_browser_client_through_a_round_robin_proxy_over_three_nodes() -> TestResult {
    ensure_node_modules()?;
    ensure_chromium()?;
    let cluster = TestHubCluster::start(3).map_err(|error| format!("cannot start the test hub cluster: {error}"))?;
    let nodes = cluster.addrs()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let proxy = runtime.block_on(RoundRobinProxy::start(nodes.clone()))?;
    proxy.pin("/echo", nodes[0]);
    println!(
        "browser: three clustered test hubs {} behind {}",
        cluster.urls().join(" "),
        proxy.url()
    );
    let dir = browser_dir();
    let mut child = own_process_group(
        Command::new("node")
            .arg("run.mjs")
            .current_dir(&dir)
            .env("HUBMESH_TEST_URL", proxy.url())
            .env_remove("HUBMESH_TEST_HTTPS_URL")
            .env("HUBMESH_CHROMIUM", CHROMIUM),
    )
    .spawn()
    .map_err(|error| format!("cannot start `node run.mjs` in {}: {error}", dir.display()))?;
    let status = wait_bounded(
        &mut child,
        RUN_TIMEOUT,
        "the browser run through the proxy (`node tests/browser/run.mjs`)",
    )?;
    let routes = proxy.take_routes();
    drop(proxy);
    drop(runtime);
    drop(cluster);
    assert!(
        status.success(),
        "the browser scenarios failed through the proxy ({status}); see the PASS/FAIL lines above"
    );
    let per_node: Vec<usize> = nodes
        .iter()
        .map(|node| routes.iter().filter(|routed| routed.backend == *node).count())
        .collect();
    println!(
        "browser: the proxy forwarded {} requests, {per_node:?} per node",
        routes.len()
    );
    assert!(
        per_node.iter().all(|&count| count > 0),
        "a node got no request: {per_node:?}"
    );
    Ok(())
}
