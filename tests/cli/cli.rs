//! The `hubmesh` binary's command line: `config check`, `config example`, and `node` refusing bad settings with a
//! message that names them. Starting clusters is left to the multi-process tests; here at most one single node
//! starts, on a free port.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/binary.rs"]
mod binary;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use binary::{finish, hubmesh};

fn cluster_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("cluster-config")
}

fn run(command: &mut Command) -> Output {
    finish(command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn config_check_accepts_the_shipped_files() {
    let local = cluster_config().join("local");
    let output = run(hubmesh()
        .args(["config", "check"])
        .arg(cluster_config().join("example.toml"))
        .arg(local.join("node-1.toml"))
        .arg(local.join("node-2.toml"))
        .arg(local.join("node-3.toml")));
    let stdout = text(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        stdout.lines().filter(|line| line.contains(": ok (")).count(),
        4,
        "{stdout}"
    );
    assert!(stdout.contains("cluster `local`"), "{stdout}");
    assert!(
        !stdout.contains("local-development-only"),
        "the secret must not be printed: {stdout}"
    );
}

#[test]
fn config_check_rejects_a_bad_file_naming_the_key() {
    let (_dir, bad) = write_config("[http]\nlisten = \"nonsense\"\n");
    let good = cluster_config().join("local").join("node-1.toml");
    let output = run(hubmesh().args(["config", "check"]).arg(&good).arg(&bad));
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("http.listen") && stderr.contains("nonsense"),
        "{stderr}"
    );
    assert!(stderr.contains("1 of 2"), "{stderr}");
    assert!(
        text(&output.stdout).contains(": ok ("),
        "the good file is still reported"
    );
}

#[test]
fn config_check_reports_a_missing_file() {
    let output = run(hubmesh()
        .args(["config", "check"])
        .arg(cluster_config().join("missing.toml")));
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(text(&output.stderr).contains("missing.toml"), "{output:?}");
}

#[test]
fn config_check_applies_the_environment_unless_told_not_to() {
    let file = cluster_config().join("local").join("node-2.toml");
    let output = run(hubmesh()
        .args(["config", "check"])
        .arg(&file)
        .env("HUBMESH_CLUSTER__LINK", "nonsense"));
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("cluster.link") && stderr.contains("HUBMESH_CLUSTER__LINK"),
        "{stderr}"
    );

    let output = run(hubmesh()
        .args(["config", "check", "--no-env"])
        .arg(&file)
        .env("HUBMESH_CLUSTER__LINK", "nonsense"));
    assert!(output.status.success(), "{output:?}");
}

#[test]
fn config_example_prints_the_shipped_example() {
    let output = run(hubmesh().args(["config", "example"]));
    assert!(output.status.success(), "{output:?}");
    let shipped = std::fs::read_to_string(cluster_config().join("example.toml")).unwrap();
    assert_eq!(text(&output.stdout), shipped);
}

#[test]
fn node_with_a_bad_setting_exits_naming_it() {
    let (_dir, bad) = write_config("[limits]\nkeep_alive = \"sometimes\"\n");
    let output = run(hubmesh().arg("node").arg("--config").arg(&bad));
    assert!(!output.status.success(), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("limits.keep_alive") && stderr.contains("sometimes"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "a node that does not start prints no address");

    let output = run(hubmesh().args(["node", "--listen", "nonsense"]));
    assert!(!output.status.success(), "{output:?}");
    assert!(text(&output.stderr).contains("http.listen"), "{output:?}");

    let output = run(hubmesh().arg("node").env("HUBMESH_HTTP__WORKERS", "0"));
    assert!(!output.status.success(), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("http.workers") && stderr.contains("HUBMESH_HTTP__WORKERS"),
        "{stderr}"
    );
}

#[test]
fn node_without_a_secret_exits_naming_it() {
    let output = run(hubmesh().args([
        "node",
        "--name",
        "a",
        "--http",
        "127.0.0.1:0",
        "--cluster-id",
        "test",
        "--gossip",
        "127.0.0.1:0",
        "--link",
        "127.0.0.1:0",
        "--seed",
        "127.0.0.1:9",
    ]));
    assert!(!output.status.success(), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(stderr.contains("cluster.secret"), "{stderr}");
}

#[test]
fn node_with_a_missing_config_file_exits_naming_it() {
    let output = run(hubmesh()
        .args(["node", "--config"])
        .arg(cluster_config().join("nope.toml")));
    assert!(!output.status.success(), "{output:?}");
    assert!(text(&output.stderr).contains("nope.toml"), "{output:?}");
}

#[test]
fn dev_refuses_a_bad_node_count() {
    for nodes in ["0", "33"] {
        let output = run(hubmesh().args(["dev", "--nodes", nodes]));
        assert!(!output.status.success(), "{output:?}");
        assert!(text(&output.stderr).contains("--nodes"), "{output:?}");
    }
    let output = run(hubmesh().args(["dev", "--base-port", "65000"]));
    assert!(!output.status.success(), "{output:?}");
    assert!(text(&output.stderr).contains("--base-port"), "{output:?}");
}

#[test]
fn a_single_node_prints_its_address_first_and_stops_when_stdin_closes() {
    let mut child = hubmesh()
        .args(["node", "--listen", "127.0.0.1:0", "--stop-on-stdin-close"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let url = first.trim().strip_prefix("Now listening on: http://");
    assert!(
        url.is_some_and(|addr| addr.starts_with("127.0.0.1:")),
        "first line: {first:?}"
    );
    drop(stdin);
    let output = finish(child);
    assert!(output.status.success(), "{output:?}");
}

/// A preflight for negotiate from `origin` to the node at `addr`, on its own connection; the raw answer.
fn preflight(addr: &str, origin: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "OPTIONS /hub/negotiate HTTP/1.1\r\nHost: {addr}\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.to_ascii_lowercase()
}

#[test]
fn node_answers_cors_only_for_the_origins_of_its_flag() {
    let mut child = hubmesh()
        .args(["node", "--listen", "127.0.0.1:0", "--stop-on-stdin-close"])
        .args(["--cors-origin", "https://app.example"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let addr = first
        .trim()
        .strip_prefix("Now listening on: http://")
        .unwrap()
        .to_owned();
    let allowed = preflight(&addr, "https://app.example");
    assert!(
        allowed.starts_with("http/1.1 200") && allowed.contains("access-control-allow-origin: https://app.example"),
        "{allowed}"
    );
    let other = preflight(&addr, "https://evil.example");
    assert!(!other.contains("access-control-allow-origin"), "{other}");
    drop(stdin);
    let output = finish(child);
    assert!(output.status.success(), "{output:?}");
}
