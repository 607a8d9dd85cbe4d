//! HTTPS on a node: `http.tls_cert` and `http.tls_key` make the built binary serve HTTPS and WSS, which the
//! unmodified official client (Node, `examples/demo-client.mjs`) uses with the certificate as its only extra trust
//! anchor (`NODE_EXTRA_CA_CERTS`, so the certificate is really verified); bad TLS settings are errors that name
//! the key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/npm.rs"]
mod npm;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hubmesh_cli::config::{ConfigError, NodeConfig, Overrides};

const NO_ENV: [(&str, &str); 0] = [];

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory with a fresh self-signed certificate for 127.0.0.1 (`cert.pem`, `key.pem`) and `node.toml` holding
/// `[http]` plus `extra`.
fn tls_dir(http_keys: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), certified.signing_key.serialize_pem()).unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, format!("[http]\nlisten = \"127.0.0.1:0\"\n{http_keys}\n")).unwrap();
    (dir, config)
}

fn settings_error(config: &Path) -> String {
    let loaded = NodeConfig::load_with_env(Some(config), NO_ENV.iter().copied(), &Overrides::new()).unwrap();
    match loaded.node_settings() {
        Ok(_) => panic!("the TLS settings in {} should be refused", config.display()),
        Err(error @ ConfigError::Invalid(_)) => error.to_string(),
        Err(other) => panic!("unexpected error: {other}"),
    }
}

#[test]
fn bad_tls_settings_name_the_key() {
    let (_dir, config) = tls_dir("tls_cert = \"cert.pem\"");
    let error = settings_error(&config);
    assert!(error.contains("http.tls_key") && error.contains("missing"), "{error}");

    let (_dir, config) = tls_dir("tls_key = \"key.pem\"");
    let error = settings_error(&config);
    assert!(error.contains("http.tls_cert") && error.contains("missing"), "{error}");

    let (_dir, config) = tls_dir("tls_cert = \"cert.pem\"\ntls_key = \"no-such-key.pem\"");
    let error = settings_error(&config);
    assert!(
        error.contains("http.tls_key") && error.contains("cannot read"),
        "{error}"
    );

    // The key where the certificate belongs, and the other way round.
    let (_dir, config) = tls_dir("tls_cert = \"key.pem\"\ntls_key = \"key.pem\"");
    let error = settings_error(&config);
    assert!(
        error.contains("http.tls_cert") && error.contains("no certificate"),
        "{error}"
    );
    let (_dir, config) = tls_dir("tls_cert = \"cert.pem\"\ntls_key = \"cert.pem\"");
    let error = settings_error(&config);
    assert!(
        error.contains("http.tls_key") && error.contains("no private key"),
        "{error}"
    );

    // Both set and readable: accepted.
    let (_dir, config) = tls_dir("tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"");
    let loaded = NodeConfig::load_with_env(Some(&config), NO_ENV.iter().copied(), &Overrides::new()).unwrap();
    assert!(loaded.node_settings().unwrap().tls.is_some());
}

#[test]
fn official_client_uses_a_node_over_https() {
    npm::ensure_installed().unwrap();
    let (dir, config) = tls_dir("tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"");
    let mut node = Command::new(env!("CARGO_BIN_EXE_hubmesh"))
        .args(["node", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = node.stdout.take().unwrap();
    let node = KillOnDrop(node);
    // Kept open until the end so the node never writes to a closed pipe; EOF if the node dies first.
    let mut output = BufReader::new(stdout);
    let mut first = String::new();
    output.read_line(&mut first).unwrap();
    let url = first
        .trim()
        .strip_prefix("Now listening on: ")
        .unwrap_or_else(|| panic!("unexpected first line from hubmesh: {first:?}"))
        .to_owned();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("examples")
        .join("demo-client.mjs");
    let run_client = |trust_certificate: bool| {
        let mut command = Command::new("node");
        command
            .arg(&script)
            .arg(&url)
            .env_remove("NODE_TLS_REJECT_UNAUTHORIZED");
        if trust_certificate {
            command.env("NODE_EXTRA_CA_CERTS", dir.path().join("cert.pem"));
        } else {
            command
                .env_remove("NODE_EXTRA_CA_CERTS")
                .stdout(Stdio::null())
                .stderr(Stdio::null());
        }
        let mut client = KillOnDrop(command.spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = client.0.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the demo client did not finish within 120 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Without the certificate as a trust anchor the client must refuse the node: the TLS is real.
    let untrusted = run_client(false);
    assert!(!untrusted.success(), "the client accepted an untrusted certificate");
    let status = run_client(true);
    drop(node);
    drop(output);
    assert!(
        status.success(),
        "examples/demo-client.mjs failed against {url}: {status}"
    );
}
