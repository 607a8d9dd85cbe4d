//! Installs the pinned npm packages of `tests/node/package-lock.json` (the official SignalR client, its
//! MessagePack protocol, and playwright-core for the browser tests) when any is missing, so a fresh clone needs
//! only Node and npm. Shared by every test binary that drives Node.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Upper bound on `npm ci`.
const NPM_TIMEOUT: Duration = Duration::from_secs(300);

/// `tests/node`, where the Node tests and their `package.json` live.
pub fn node_dir() -> PathBuf {
    // The root package's tests and the CLI package's (`cli/`) share this file: find the repository root from
    // whichever manifest compiled it.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = if manifest.join("tests").is_dir() {
        manifest
    } else {
        manifest.parent().unwrap_or(manifest)
    };
    root.join("tests").join("node")
}

/// Whether every package the tests use is installed in `dir`'s `node_modules`.
fn installed(dir: &Path) -> bool {
    let modules = dir.join("node_modules");
    [
        "@microsoft/signalr",
        "@microsoft/signalr-protocol-msgpack",
        "playwright-core",
    ]
    .iter()
    .all(|package| modules.join(package).join("package.json").is_file())
}

/// Runs `npm ci` in `tests/node` unless every package the tests use is installed.
pub fn ensure_installed() -> Result<PathBuf, String> {
    let dir = node_dir();
    // The tests of one binary run at once and may each find the packages missing; `npm ci` starts by deleting
    // `node_modules`, so one installs while the others wait on this lock and then find the packages there (the
    // check too waits, so that nobody reads a half-made `node_modules`).
    let lock_path = std::env::temp_dir().join("hubmesh-npm-install.lock");
    let lock =
        std::fs::File::create(&lock_path).map_err(|error| format!("cannot create {}: {error}", lock_path.display()))?;
    lock.lock()
        .map_err(|error| format!("cannot lock {}: {error}", lock_path.display()))?;
    if installed(&dir) {
        return Ok(dir);
    }
    println!("running `npm ci` in {}", dir.display());
    let mut child = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .spawn()
        .map_err(|error| format!("could not run npm (Node 20 and npm are needed for these tests): {error}"))?;
    let deadline = Instant::now() + NPM_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().map_err(|error| error.to_string())? {
            if status.success() {
                return Ok(dir);
            }
            return Err(format!("npm ci in {} failed with {status}", dir.display()));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "npm ci in {} did not finish within {NPM_TIMEOUT:?}",
                dir.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
