//! The `chat` example as a user runs it: `cargo run --example chat` starts its three-node cluster, and two
//! headless Chromium pages on two different nodes chat through a room (`tests/browser/chat-example.mjs`): each page
//! loads the official client from its own node, a message typed in one appears in the other, a page that left the
//! room gets none of its messages, a refused room name shows the hub's error, and nothing is loaded from elsewhere.
//!
//! Needs Node.js and npm (`npm ci` runs in `tests/node` when playwright-core is missing) and Debian's Chromium at
//! `/usr/bin/chromium`; when it is missing, `tests/browser/install-chromium.sh` installs it (root needed).

#[path = "common/chromium.rs"]
mod chromium;
#[path = "common/example.rs"]
mod example;
#[path = "common/npm.rs"]
mod npm;
#[path = "common/process.rs"]
mod process;

use std::error::Error;
use std::time::Duration;

use example::{ensure_chromium, run_page_driver, RunningExample};

type TestResult<T = ()> = Result<T, Box<dyn Error>>;

/// Upper bound on the browser run; `chat-example.mjs` gives up by itself after 120 s.
const RUN_TIMEOUT: Duration = Duration::from_secs(150);

#[test]
fn two_browser_pages_on_different_nodes_chat_through_a_room() -> TestResult {
    npm::ensure_installed()?;
    ensure_chromium()?;
    let chat = RunningExample::start("chat")?;
    let urls = chat.urls("chat");
    assert_eq!(urls.len(), 3, "the example prints three nodes");
    let page_urls = urls.get(..2).ok_or("two nodes")?.join(",");
    let status = run_page_driver("chat-example.mjs", &[("HUBMESH_CHAT_URLS", &page_urls)], RUN_TIMEOUT)?;
    drop(chat);
    assert!(
        status.success(),
        "the chat page driver failed ({status}); see its PASS/FAIL lines above"
    );
    Ok(())
}
