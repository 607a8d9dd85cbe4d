//! What a run reads and how the report writes it: server and own CPU time over the measured phase
//! ([`CpuMeter`]), the clock latencies are measured on ([`micros_since`]), and the rounding, JSON and summary
//! helpers the reports share.

use serde_json::Value;
use tokio::time::Instant;

use crate::bench::procfs::{cpu_seconds, own_cpu_seconds};
use crate::bench::BenchError;

/// Server CPU time (summed over the measured processes) and this process's, over a phase.
pub(super) struct CpuMeter {
    pids: Vec<u32>,
    server: f64,
    own: Option<f64>,
}

impl CpuMeter {
    pub(super) fn start(pids: &[u32]) -> Result<CpuMeter, BenchError> {
        Ok(CpuMeter {
            pids: pids.to_vec(),
            server: cpu_seconds(pids)?,
            own: own_cpu_seconds(),
        })
    }

    /// The server CPU seconds (None without pids) and this process's, since the start.
    pub(super) fn stop(&self) -> Result<(Option<f64>, Option<f64>), BenchError> {
        let server = if self.pids.is_empty() {
            None
        } else {
            Some(cpu_seconds(&self.pids)? - self.server)
        };
        let own = match (self.own, own_cpu_seconds()) {
            (Some(before), Some(after)) => Some(after - before),
            _ => None,
        };
        Ok((server, own))
    }
}

/// `count / cpu` if there was CPU time.
pub(super) fn per_cpu_second(count: u64, cpu: Option<f64>) -> Option<f64> {
    cpu.filter(|cpu| *cpu > 0.0).map(|cpu| round(count as f64 / cpu))
}

pub(super) fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

pub(super) fn micros_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

pub(super) fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

pub(super) fn extend(target: &mut Value, more: Value) {
    if let (Value::Object(target), Value::Object(more)) = (target, more) {
        target.extend(more);
    }
}

pub(super) fn cpu_summary(server: Option<f64>, per_cpu: Option<f64>, what: &str, own: Option<f64>) -> String {
    let own = own.map_or_else(String::new, |own| format!("; bench process {own:.2} CPU-s"));
    match (server, per_cpu) {
        (Some(server), Some(per_cpu)) => format!("server CPU {server:.2} s: {per_cpu:.0} {what} per CPU-second{own}"),
        (Some(server), None) => format!("server CPU {server:.2} s{own}"),
        _ => format!("server CPU not measured (give --pid or --pids-from-dev){own}"),
    }
}
