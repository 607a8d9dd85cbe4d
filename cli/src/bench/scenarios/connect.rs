//! `hubmesh bench connect`: connections opened, handshaken and closed, some at a time; counts them per second
//! and per second of server CPU.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::readings::{cpu_summary, extend, per_cpu_second, round, round3, CpuMeter};
use super::setup::{seconds, Setup};
use super::tasks::{join_all, Progress};
use crate::bench::stats::Histogram;
use crate::bench::{BenchError, ConnectArgs, Report, MAX_SECONDS};

/// `hubmesh bench connect`.
pub(in crate::bench) async fn connect(args: &ConnectArgs) -> Result<Report, BenchError> {
    let setup = Arc::new(Setup::new(&args.common)?);
    let run_for = seconds("--seconds", args.seconds, MAX_SECONDS)?;
    if args.count == 0 || args.count > 10_000_000 {
        return Err(BenchError::Options("--count must be between 1 and 10000000".to_owned()));
    }
    if !(1..=4096).contains(&args.concurrency) {
        return Err(BenchError::Options(
            "--concurrency must be between 1 and 4096".to_owned(),
        ));
    }
    let next = Arc::new(AtomicU64::new(0));
    let progress = Arc::new(Progress::default());
    let cpu = CpuMeter::start(&setup.pids)?;
    let started = Instant::now();
    let deadline = started + run_for;
    let mut tasks = JoinSet::new();
    for _ in 0..args.concurrency {
        let (setup, next, progress, count) = (setup.clone(), next.clone(), progress.clone(), args.count);
        tasks.spawn(async move {
            let mut latency = Histogram::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count || Instant::now() >= deadline || progress.failed.load(Ordering::Relaxed) > 0 {
                    break;
                }
                let began = Instant::now();
                match setup.open_client(usize::try_from(index).unwrap_or(0)).await {
                    Ok(client) => {
                        latency.record(u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX));
                        client.close().await;
                        progress.delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(error) => {
                        progress.failed.fetch_add(1, Ordering::Relaxed);
                        return Err(error);
                    }
                }
            }
            Ok(latency)
        });
    }
    let histograms = join_all(tasks).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let (server_cpu, own_cpu) = cpu.stop()?;
    let mut latency = Histogram::new();
    for histogram in &histograms {
        latency.merge(histogram);
    }
    let connections = progress.delivered.load(Ordering::Relaxed);
    let per_second = round(connections as f64 / elapsed);
    let per_cpu = per_cpu_second(connections, server_cpu);
    let mut parameters = setup.parameters();
    extend(
        &mut parameters,
        json!({ "count": args.count, "seconds": args.seconds, "concurrency": args.concurrency }),
    );
    let results = json!({
        "connections": connections,
        "measured_seconds": round3(elapsed),
        "connections_per_sec": per_second,
        "connect_latency": latency.json(),
        "server_cpu_seconds": server_cpu.map(round3),
        "connections_per_server_cpu_second": per_cpu,
        "bench_cpu_seconds": own_cpu.map(round3),
    });
    let summary = format!(
        "connect: {connections} connections (open, handshake, close) over {} URLs, {} at a time\n  \
         {per_second}/s; open + handshake {}\n  {}",
        setup.urls.len(),
        args.concurrency,
        latency.summary(),
        cpu_summary(server_cpu, per_cpu, "connections", own_cpu),
    );
    Ok(Report {
        scenario: "connect",
        parameters,
        results,
        summary,
    })
}
