//! Child processes of tests (Node, Python, Chromium) that must never outlive their time limit: each runs in a
//! process group of its own, so a timeout kills the processes it started too.

// Each test binary includes this file and uses part of it.
#![allow(dead_code)]

use std::error::Error;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// Puts the child in its own process group (Unix), so that a timeout can kill what it started too.
pub fn own_process_group(command: &mut Command) -> &mut Command {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        command.process_group(0);
    }
    command
}

/// Kills `child` and, on Unix, the process group it leads.
pub fn kill_tree(child: &mut Child) {
    #[cfg(unix)]
    {
        // `--` first: without it procps' kill reads `-<pgid>` as options and signals every process (pid -1).
        let _ = Command::new("kill")
            .args(["-s", "KILL", "--"])
            .arg(format!("-{}", child.id()))
            .status();
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits for `child` for at most `timeout`; kills its process group beyond that.
pub fn wait_bounded(child: &mut Child, timeout: Duration, what: &str) -> Result<ExitStatus, Box<dyn Error>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            kill_tree(child);
            return Err(format!("{what} did not finish within {} s and was killed", timeout.as_secs()).into());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
