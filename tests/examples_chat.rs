//! The `chat` example as a user runs it: `cargo run --example chat` starts its three-node cluster, and two
//! headless Chromium pages on two different nodes chat through a room (`tests/browser/chat-example.mjs`): each page
//! loads the official client from its own node, a message typed in one appears in the other, a page that left the
//! room gets none of its messages, and nothing is loaded from elsewhere.
//!
//! Needs Node.js and npm (`npm ci` runs in `tests/node` when playwright-core is missing) and Debian's Chromium at
//! `/usr/bin/chromium`; when it is missing, `tests/browser/install-chromium.sh` installs it (root needed).

#[path = "common/example.rs"]
mod example;
#[path = "common/npm.rs"]
mod npm;
#[path = "common/process.rs"]
mod process;

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use example::RunningExample;
use process::{own_process_group, wait_bounded};

type TestResult<T = ()> = Result<T, Box<dyn Error>>;

/// Where the test expects Debian's Chromium.
const CHROMIUM: &str = "/usr/bin/chromium";
/// Upper bound on installing Chromium with apt-get.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(600);
/// Upper bound on the browser run; `chat-example.mjs` gives up by itself after 120 s.
const RUN_TIMEOUT: Duration = Duration::from_secs(150);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("browser")
}

/// Installs Debian's Chromium with `install-chromium.sh` unless it is there.
fn ensure_chromium() -> TestResult {
    if Path::new(CHROMIUM).is_file() {
        return Ok(());
    }
    let script = browser_dir().join("install-chromium.sh");
    let mut child = own_process_group(Command::new("sh").arg(&script)).spawn()?;
    let status = wait_bounded(&mut child, INSTALL_TIMEOUT, "installing Chromium")?;
    if !status.success() || !Path::new(CHROMIUM).is_file() {
        return Err(format!("could not install Chromium ({status}): the chat test needs {CHROMIUM}").into());
    }
    Ok(())
}

#[test]
fn two_browser_pages_on_different_nodes_chat_through_a_room() -> TestResult {
    npm::ensure_installed()?;
    ensure_chromium()?;
    let chat = RunningExample::start("chat")?;
    let urls = chat.urls("chat");
    assert_eq!(urls.len(), 3, "the example prints three nodes");
    let page_urls = urls.get(..2).ok_or("two nodes")?.join(",");
    let mut driver = own_process_group(
        Command::new("node")
            .arg("chat-example.mjs")
            .current_dir(browser_dir())
            .env("HUBMESH_CHAT_URLS", &page_urls)
            .env("HUBMESH_CHROMIUM", CHROMIUM),
    )
    .spawn()
    .map_err(|error| format!("cannot start `node chat-example.mjs`: {error}"))?;
    let status = wait_bounded(&mut driver, RUN_TIMEOUT, "the chat page driver")?;
    drop(chat);
    assert!(
        status.success(),
        "the chat page driver failed ({status}); see its PASS/FAIL lines above"
    );
    Ok(())
}
