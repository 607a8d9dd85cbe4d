//! Runs a second, independent SignalR client against the in-process test hub server: the Python `signalrcore`
//! package (`tests/python`), over WebSockets with JSON and with MessagePack.
//!
//! Needs `python3` (3.9 or later, with the `venv` module) on `PATH`. When `tests/python/.venv` is missing, or was
//! installed from another `requirements.txt`, the test creates it with `python3 -m venv` and installs the pinned
//! packages with pip, so a fresh clone needs only Python and access to PyPI.
//!
//! Environment:
//! * `HUBMESH_PYTHON`: the interpreter that creates the virtual environment (default `python3`).
//! * `HUBMESH_PYTHON_PROTOCOLS`: space-separated protocols to run (`json`, `messagepack`); both by default.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "common/process.rs"]
mod process;

use std::error::Error;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use hubmesh::testing::proxy::RoundRobinProxy;
use hubmesh::testing::{TestHubCluster, TestHubServer};
use process::{kill_tree, own_process_group};

/// Upper bound on the client script (it has its own 90 s watchdog; a passing run takes a few seconds).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);
/// Upper bound on creating the virtual environment and on installing the packages into it, each.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);
/// Written into the virtual environment after a successful install: a copy of the `requirements.txt` it came from.
const STAMP: &str = "hubmesh-requirements.txt";

type TestResult = Result<(), Box<dyn Error>>;

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("python")
}

fn base_python() -> String {
    std::env::var("HUBMESH_PYTHON").unwrap_or_else(|_| if cfg!(windows) { "python" } else { "python3" }.to_owned())
}

/// The virtual environment's interpreter.
fn venv_python(venv: &Path) -> PathBuf {
    if cfg!(windows) {
        venv.join("Scripts").join("python.exe")
    } else {
        venv.join("bin").join("python")
    }
}

/// Reads a child's pipe to the end on a thread of its own.
fn drain(pipe: Option<impl Read + Send + 'static>) -> JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// What a finished (or killed) child printed.
struct Output {
    /// `None` when the child was killed at the timeout.
    status: Option<ExitStatus>,
    stdout: String,
    stderr: String,
}

impl Output {
    fn describe(&self, what: &str, timeout: Duration) -> String {
        let outcome = match self.status {
            Some(status) => format!("{what} exited with {status}"),
            None => format!("{what} did not finish within {} s and was killed", timeout.as_secs()),
        };
        format!(
            "{outcome}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    fn success(&self) -> bool {
        self.status.is_some_and(|status| status.success())
    }
}

/// Runs `command` with its output captured, killing it (and its process group) beyond `timeout`.
fn run_bounded(command: &mut Command, timeout: Duration, what: &str) -> Result<Output, Box<dyn Error>> {
    let mut child = own_process_group(
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .spawn()
    .map_err(|error| format!("cannot start {what}: {error}"))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            kill_tree(&mut child);
            break None;
        }
        thread::sleep(Duration::from_millis(100));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Creates `tests/python/.venv` and installs `requirements.txt` into it, unless that was done already for the
/// same requirements. Returns the virtual environment's interpreter.
fn ensure_venv(dir: &Path) -> Result<PathBuf, Box<dyn Error>> {
    let venv = dir.join(".venv");
    let python = venv_python(&venv);
    let requirements_path = dir.join("requirements.txt");
    let requirements = std::fs::read_to_string(&requirements_path)
        .map_err(|error| format!("cannot read {}: {error}", requirements_path.display()))?;
    let stamp = venv.join(STAMP);
    if python.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|installed| installed == requirements) {
        return Ok(python);
    }

    let base = base_python();
    println!("python_client: creating {} with `{base} -m venv`", venv.display());
    let created = run_bounded(
        Command::new(&base).arg("-m").arg("venv").arg("--clear").arg(&venv),
        INSTALL_TIMEOUT,
        &format!("`{base} -m venv`"),
    )
    .map_err(|error| format!("{error} (Python 3 with the venv module is needed for these tests)"))?;
    if !created.success() {
        return Err(created
            .describe(&format!("`{base} -m venv {}`", venv.display()), INSTALL_TIMEOUT)
            .into());
    }

    println!("python_client: installing {} with pip", requirements_path.display());
    let installed = run_bounded(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "-r",
            ])
            .arg(&requirements_path)
            .env("PIP_NO_INPUT", "1"),
        INSTALL_TIMEOUT,
        "`pip install -r requirements.txt`",
    )?;
    if !installed.success() {
        return Err(installed
            .describe("`pip install -r requirements.txt`", INSTALL_TIMEOUT)
            .into());
    }
    std::fs::write(&stamp, requirements).map_err(|error| format!("cannot write {}: {error}", stamp.display()))?;
    Ok(python)
}

/// One venv for the tests of this file, made by whichever runs first.
static VENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `tests/python/signalrcore_client.py` against the test server at `url`.
fn run_client(url: &str, what: &str) -> TestResult {
    let dir = python_dir();
    let python = {
        let _one_at_a_time = VENV.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        ensure_venv(&dir)?
    };
    let protocols: Vec<String> = std::env::var("HUBMESH_PYTHON_PROTOCOLS")
        .map(|value| value.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    println!("python_client: {what} at {url}");
    let started = Instant::now();
    let output = run_bounded(
        Command::new(&python)
            .arg("-u")
            .arg(dir.join("signalrcore_client.py"))
            .arg(url)
            .args(&protocols)
            .current_dir(&dir)
            .env("PYTHONDONTWRITEBYTECODE", "1"),
        CLIENT_TIMEOUT,
        "the signalrcore client script",
    )?;
    let report = output.describe("tests/python/signalrcore_client.py", CLIENT_TIMEOUT);
    assert!(
        output.success(),
        "the Python signalrcore client tests failed ({what}): {report}"
    );
    println!(
        "python_client: passed in {:.1} s\n{report}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[test]
fn python_signalrcore_client() -> TestResult {
    let server = TestHubServer::start().map_err(|error| format!("cannot start the test hub server: {error}"))?;
    run_client(server.url(), "one test hub")
}

/// The same script through the harness's round-robin proxy in front of three clustered test servers: each of its
/// requests (negotiate, then the WebSocket) lands on the next node.
#[test]
fn python_signalrcore_client_through_a_round_robin_proxy_over_three_nodes() -> TestResult {
    let cluster = TestHubCluster::start(3).map_err(|error| format!("cannot start the test hub cluster: {error}"))?;
    let nodes = cluster.addrs()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let proxy = runtime.block_on(RoundRobinProxy::start(nodes.clone()))?;
    run_client(&proxy.url(), "three clustered test hubs behind a round-robin proxy")?;
    let routes = proxy.take_routes();
    let per_node: Vec<usize> = nodes
        .iter()
        .map(|node| routes.iter().filter(|routed| routed.backend == *node).count())
        .collect();
    println!(
        "python_client: the proxy forwarded {} requests, {per_node:?} per node",
        routes.len()
    );
    assert!(
        per_node.iter().filter(|&&count| count > 0).count() >= 2,
        "the requests were not spread: {per_node:?}"
    );
    Ok(())
}
