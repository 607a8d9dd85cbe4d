//! Running the built `hubmesh` binary from the CLI package's tests (`tests/cli/`): a command with no inherited
//! `HUBMESH_*` configuration, and a bounded wait for it to finish.

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long any one run of the binary may take.
pub const LIMIT: Duration = Duration::from_secs(30);

/// The binary with no configuration variables inherited from the test's environment, logging warnings only unless
/// `TEST_NODE_LOG` says otherwise.
pub fn hubmesh() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_hubmesh"));
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|name| name.starts_with("HUBMESH_")) {
            command.env_remove(name);
        }
    }
    // `TEST_NODE_LOG` (a `RUST_LOG` filter) traces the nodes of a failing test.
    let log = std::env::var("TEST_NODE_LOG").unwrap_or_else(|_| "warn".to_owned());
    command.env("RUST_LOG", log).stdin(Stdio::null());
    command
}

/// Waits for `child` within [`LIMIT`], killing it if it takes longer.
pub fn finish(mut child: Child) -> Output {
    let started = Instant::now();
    while started.elapsed() < LIMIT {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    panic!("hubmesh did not finish within {LIMIT:?}: {output:?}");
}
