//! The node a scenario kills: which process it is (`--kill-pid`, or the `hubmesh node` serving `--kill-url`'s
//! address) and the SIGKILL itself. `storm` and `detect` share it.

use crate::bench::procfs::dev_node_pids;
use crate::bench::{BenchError, CommonArgs};

/// The process to kill: `kill_pid` if given, else the `hubmesh node` whose `--http` is the address of URL
/// `kill_url` (as `--pids-from-dev` finds them).
pub(super) fn victim_pid(common: &CommonArgs, kill_url: usize, kill_pid: Option<u32>) -> Result<u32, BenchError> {
    if let Some(pid) = kill_pid {
        return Ok(pid);
    }
    let url = common.urls.get(kill_url).cloned().unwrap_or_default();
    dev_node_pids(std::slice::from_ref(&url))?
        .first()
        .copied()
        .ok_or(BenchError::NoPid(url))
}

/// Sends SIGKILL to `pid` (with `kill`: the load tool has no unsafe code).
pub(super) async fn kill(pid: u32) -> Result<(), BenchError> {
    let status = tokio::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .await
        .map_err(|error| BenchError::Task(format!("cannot run kill: {error}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(BenchError::Task(format!("kill -KILL {pid} failed ({status})")))
    }
}
