//! Runs the unmodified official SignalR JavaScript client (`@microsoft/signalr`, see `tests/node`) against the
//! in-process test hub server.
//!
//! Needs Node.js (>= 18) and npm on `PATH`. `npm ci` runs in `tests/node` when its `node_modules` is missing.
//! The test hub listens on plain HTTP and on HTTPS (a self-signed certificate), so the HTTPS-only rows run too.
//!
//! Environment:
//! * `HUBMESH_NODE_TEST_FILES`: space-separated test files (relative to `tests/node`) to run instead of every
//!   `*.test.mjs`, e.g. `HUBMESH_NODE_TEST_FILES=demo-hub.test.mjs`.
//! * `HUBMESH_TEST_TRANSPORTS`: the transports to cover in every selected file (see `common.mjs`). Unset, every
//!   file runs over WebSockets and the files whose endpoints serve Server-Sent Events and long polling
//!   ([`HTTP_TRANSPORT_FILES`]) run again over those two: the five transport × protocol combinations of the
//!   official suite (SSE is JSON only, which `common.mjs` knows).
//! * `HUBMESH_TEST_LOG_LEVEL`: passed through to the Node tests (see `common.mjs`).

#[path = "common/npm.rs"]
mod npm;
#[path = "common/process.rs"]
mod process;

use std::error::Error;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hubmesh::testing::TestHubServer;
use process::{own_process_group, wait_bounded};

/// Upper bound on the whole Node test run; the child (and its test-file subprocesses) is killed beyond it.
const NODE_TIMEOUT: Duration = Duration::from_secs(600);

type TestResult = Result<(), Box<dyn Error>>;

/// Every file's scenarios run over this by default.
const DEFAULT_TRANSPORTS: &str = "WebSockets";
/// The other transports, run by default for the files in [`HTTP_TRANSPORT_FILES`].
const HTTP_TRANSPORTS: &str = "ServerSentEvents,LongPolling";
/// Files whose endpoints serve SSE and long polling too (the demo hub at `/hub` offers WebSockets only).
const HTTP_TRANSPORT_FILES: &[&str] = &[
    "auth.test.mjs",
    "connection.test.mjs",
    "hub-connection.test.mjs",
    "negotiate.test.mjs",
    "test-app.test.mjs",
];

/// Checks that `program --version` runs, with a clear error otherwise.
fn require_tool(program: &str, purpose: &str) -> TestResult {
    match Command::new(program).arg("--version").output() {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(format!(
            "`{program} --version` failed ({}): {purpose}",
            String::from_utf8_lossy(&output.stderr).trim()
        )
        .into()),
        Err(error) => Err(format!("cannot run `{program}` ({error}): {purpose}").into()),
    }
}

/// The test files to run: `HUBMESH_NODE_TEST_FILES`, or every `*.test.mjs` in `dir`, sorted.
fn test_files(dir: &Path) -> Result<Vec<String>, Box<dyn Error>> {
    if let Ok(selection) = std::env::var("HUBMESH_NODE_TEST_FILES") {
        let files: Vec<String> = selection.split_whitespace().map(str::to_owned).collect();
        if !files.is_empty() {
            return Ok(files);
        }
    }
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|error| format!("cannot list {}: {error}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".test.mjs") {
            files.push(name);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(format!("no *.test.mjs files in {}", dir.display()).into());
    }
    Ok(files)
}

#[test]
fn official_javascript_client_conformance() -> TestResult {
    let dir = npm::node_dir();
    require_tool(
        "node",
        "Node.js >= 18 is needed to run the official SignalR client tests",
    )?;
    npm::ensure_installed()?;
    let files = test_files(&dir)?;

    let server = TestHubServer::start().map_err(|error| format!("cannot start the test hub server: {error}"))?;
    println!(
        "official_client: test hub at {} and {}; running {}",
        server.url(),
        server.https_url(),
        files.join(" ")
    );

    // One `node --test` run per transport selection: (transports, files).
    let runs: Vec<(String, Vec<String>)> = match std::env::var("HUBMESH_TEST_TRANSPORTS") {
        Ok(transports) if !transports.trim().is_empty() => vec![(transports, files)],
        _ => {
            let http_files: Vec<String> = files
                .iter()
                .filter(|file| HTTP_TRANSPORT_FILES.contains(&file.as_str()))
                .cloned()
                .collect();
            let mut runs = vec![(DEFAULT_TRANSPORTS.to_owned(), files)];
            if !http_files.is_empty() {
                runs.push((HTTP_TRANSPORTS.to_owned(), http_files));
            }
            runs
        }
    };
    let deadline = Instant::now() + NODE_TIMEOUT;
    let mut failures = Vec::new();
    for (transports, files) in runs {
        println!("official_client: over {transports}: {}", files.join(" "));
        let mut child = own_process_group(
            Command::new("node")
                .args(["--test", "--test-concurrency=1", "--test-reporter=spec"])
                .args(&files)
                .current_dir(&dir)
                .env("HUBMESH_TEST_URL", server.url())
                .env("HUBMESH_TEST_HTTPS_URL", server.https_url())
                // The HTTPS rows: the test server's certificate is self-signed, as upstream's runner does it.
                .env("NODE_TLS_REJECT_UNAUTHORIZED", "0")
                .env("HUBMESH_TEST_TRANSPORTS", &transports),
        )
        .spawn()
        .map_err(|error| format!("cannot start `node --test` in {}: {error}", dir.display()))?;
        let left = deadline.saturating_duration_since(Instant::now());
        let status = wait_bounded(&mut child, left, "`node --test`")?;
        if !status.success() {
            failures.push(format!("over {transports}: {status}"));
        }
    }
    drop(server);

    assert!(
        failures.is_empty(),
        "the official SignalR client tests failed ({}); see the node test output above",
        failures.join("; ")
    );
    Ok(())
}
