//! Debian's Chromium for the browser tests: where they expect it, where the page drivers live, and installing it
//! with `tests/browser/install-chromium.sh` when it is missing (the script lets one test install while the others
//! of its binary wait).

// Each test binary includes this file and uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::{own_process_group, wait_bounded};

/// Where the tests expect Debian's Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Upper bound on installing Chromium with apt-get.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);

/// `tests/browser`, where the pages and their drivers live.
pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("browser")
}

/// Installs Debian's Chromium with `install-chromium.sh` unless it is there.
pub fn ensure_chromium() -> Result<(), String> {
    if Path::new(CHROMIUM).is_file() {
        return Ok(());
    }
    let script = browser_dir().join("install-chromium.sh");
    println!("browser: {CHROMIUM} is missing; running {}", script.display());
    let started = Instant::now();
    let mut child = own_process_group(Command::new("sh").arg(&script))
        .spawn()
        .map_err(|error| format!("cannot run {}: {error}", script.display()))?;
    let status = wait_bounded(&mut child, INSTALL_TIMEOUT, "installing Chromium").map_err(|error| error.to_string())?;
    if !status.success() || !Path::new(CHROMIUM).is_file() {
        return Err(format!(
            "could not install Chromium ({status}; see the messages above): the browser tests need Debian's \
             `chromium` package at {CHROMIUM}"
        ));
    }
    println!(
        "browser: installed Chromium in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
