//! The README's run command, end to end: the built `hubmesh` binary serves the demo hub, and
//! `examples/demo-client.mjs` uses it with the official client over JSON and MessagePack (invoke, send, streams
//! both ways, group sends, a client result).

#[path = "../common/npm.rs"]
mod npm;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the node when the test ends, however it ends.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_with_timeout(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus, String> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|error| error.to_string())? {
            return Ok(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            return Err(format!("the demo client did not finish within {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn official_client_uses_the_demo_node() -> Result<(), String> {
    npm::ensure_installed()?;
    let mut node = Command::new(env!("CARGO_BIN_EXE_hubmesh"))
        .args(["node", "--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|error| format!("could not start hubmesh: {error}"))?;
    let stdout = node.stdout.take().ok_or("no stdout from hubmesh")?;
    let node = KillOnDrop(node);
    // The first line names the address; a node that never prints it ends the read with EOF when killed.
    // Kept open until the end so the node never writes to a closed pipe.
    let mut output = BufReader::new(stdout);
    let mut first = String::new();
    output
        .read_line(&mut first)
        .map_err(|error| format!("reading hubmesh's output: {error}"))?;
    let url = first
        .trim()
        .strip_prefix("Now listening on: ")
        .ok_or_else(|| format!("unexpected first line from hubmesh: {first:?}"))?
        .to_owned();

    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("examples")
        .join("demo-client.mjs");
    let mut client = Command::new("node")
        .arg(script)
        .arg(&url)
        .spawn()
        .map_err(|error| format!("could not run node: {error}"))?;
    let status = wait_with_timeout(&mut client, Duration::from_secs(120))?;
    drop(node);
    drop(output);
    if status.success() {
        Ok(())
    } else {
        Err(format!("examples/demo-client.mjs failed against {url}: {status}"))
    }
}
