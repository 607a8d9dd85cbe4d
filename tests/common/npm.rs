//! Installs the pinned official SignalR client from `tests/node/package-lock.json` when it is missing, so a fresh
//! clone needs only Node and npm. Shared by the test binaries that drive Node.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `tests/node`, where the Node tests and their `package.json` live.
pub fn node_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("node")
}

/// Runs `npm ci` in `tests/node` unless `@microsoft/signalr` and its MessagePack protocol are installed.
pub fn ensure_installed() -> Result<PathBuf, String> {
    let dir = node_dir();
    let modules = dir.join("node_modules").join("@microsoft");
    if modules.join("signalr").is_dir() && modules.join("signalr-protocol-msgpack").is_dir() {
        return Ok(dir);
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .status()
        .map_err(|error| format!("could not run npm (Node 20 and npm are needed for these tests): {error}"))?;
    if !status.success() {
        return Err(format!("npm ci in {} failed with {status}", dir.display()));
    }
    Ok(dir)
}
