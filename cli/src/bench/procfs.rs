//! Server CPU time and memory from Linux's `/proc`, and finding the nodes `hubmesh dev` started.

use std::path::Path;

use super::{url_authority, BenchError};

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on every Linux ABI).
const TICKS_PER_SECOND: f64 = 100.0;

/// The CPU time (user + system, all threads) a process used so far, in seconds, from `/proc/<pid>/stat`.
pub fn process_cpu_seconds(pid: u32) -> Result<f64, BenchError> {
    let stat = read(pid, "stat")?;
    // The command name (field 2) is in parentheses and may hold spaces; fields after it are plain.
    let after = stat
        .rfind(')')
        .map(|end| &stat[end + 1..])
        .ok_or_else(|| BenchError::Proc {
            pid,
            reason: "unexpected format of stat".to_owned(),
        })?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    let tick = |index: usize| -> Result<u64, BenchError> {
        fields
            .get(index)
            .and_then(|field| field.parse::<u64>().ok())
            .ok_or_else(|| BenchError::Proc {
                pid,
                reason: "unexpected format of stat".to_owned(),
            })
    };
    let ticks = tick(11)? + tick(12)?;
    Ok(ticks as f64 / TICKS_PER_SECOND)
}

/// A process's resident set size (`VmRSS` of `/proc/<pid>/status`), in bytes.
pub fn process_rss_bytes(pid: u32) -> Result<u64, BenchError> {
    let status = read(pid, "status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| BenchError::Proc {
            pid,
            reason: "no VmRSS in status".to_owned(),
        })
}

/// The summed CPU seconds of several processes.
pub(crate) fn cpu_seconds(pids: &[u32]) -> Result<f64, BenchError> {
    pids.iter().map(|&pid| process_cpu_seconds(pid)).sum()
}

/// The summed RSS of several processes.
pub(crate) fn rss_bytes(pids: &[u32]) -> Result<u64, BenchError> {
    pids.iter().map(|&pid| process_rss_bytes(pid)).sum()
}

/// This process's CPU seconds, if readable.
pub(crate) fn own_cpu_seconds() -> Option<f64> {
    process_cpu_seconds(std::process::id()).ok()
}

fn read(pid: u32, file: &str) -> Result<String, BenchError> {
    std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join(file)).map_err(|error| BenchError::Proc {
        pid,
        reason: format!("{file}: {error}"),
    })
}

/// The pids of the `hubmesh node` processes whose `--http` (or `--listen`) address is the `host:port` of one of
/// `urls`, as `hubmesh dev` starts them; one per URL, in order (duplicates removed).
pub fn dev_node_pids(urls: &[String]) -> Result<Vec<u32>, BenchError> {
    let mut nodes: Vec<(u32, String)> = Vec::new();
    let entries = std::fs::read_dir("/proc").map_err(|error| BenchError::Proc {
        pid: 0,
        reason: error.to_string(),
    })?;
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        // Processes come and go; an unreadable one is simply not a candidate.
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&str> = cmdline
            .split(|&byte| byte == 0)
            .filter_map(|arg| std::str::from_utf8(arg).ok())
            .collect();
        if !args.iter().skip(1).any(|arg| *arg == "node") {
            continue;
        }
        let exe_name = args
            .first()
            .and_then(|exe| Path::new(exe).file_name())
            .and_then(|name| name.to_str());
        if !exe_name.is_some_and(|name| name.contains("hubmesh")) {
            continue;
        }
        let mut http = None;
        for (index, arg) in args.iter().enumerate() {
            if *arg == "--http" || *arg == "--listen" {
                http = args.get(index + 1).map(|value| (*value).to_owned());
            } else if let Some(value) = arg.strip_prefix("--http=").or_else(|| arg.strip_prefix("--listen=")) {
                http = Some(value.to_owned());
            }
        }
        if let Some(http) = http {
            nodes.push((pid, http));
        }
    }
    let mut pids = Vec::new();
    for url in urls {
        let authority = url_authority(url).ok_or_else(|| BenchError::Url {
            url: url.clone(),
            reason: "expected http://HOST:PORT or ws://HOST:PORT".to_owned(),
        })?;
        let (pid, _) = nodes
            .iter()
            .find(|(_, http)| *http == authority)
            .ok_or_else(|| BenchError::NoPid(authority.clone()))?;
        if !pids.contains(pid) {
            pids.push(*pid);
        }
    }
    Ok(pids)
}
