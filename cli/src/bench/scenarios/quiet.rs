//! `hubmesh bench quiet`: the servers' CPU with nothing connected (gossip, failure detection and links only),
//! per process, over a period.

use serde_json::json;
use tokio::time::{sleep, Instant};

use super::readings::{extend, round3};
use super::setup::{seconds, Setup};
use crate::bench::procfs::process_cpu_seconds;
use crate::bench::{BenchError, QuietArgs, Report, MAX_SECONDS};

/// `hubmesh bench quiet`.
pub(in crate::bench) async fn quiet(args: &QuietArgs) -> Result<Report, BenchError> {
    let setup = Setup::new(&args.common)?;
    let period = seconds("--seconds", args.seconds, MAX_SECONDS)?;
    if setup.pids.is_empty() {
        return Err(BenchError::Options(
            "quiet measures processes: give --pid or --pids-from-dev".to_owned(),
        ));
    }
    let before = setup
        .pids
        .iter()
        .map(|&pid| process_cpu_seconds(pid))
        .collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    sleep(period).await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut shares = Vec::with_capacity(setup.pids.len());
    for (&pid, before) in setup.pids.iter().zip(before) {
        shares.push((process_cpu_seconds(pid)? - before) / elapsed);
    }
    let max = shares.iter().copied().fold(0.0, f64::max);
    let mean = shares.iter().sum::<f64>() / shares.len() as f64;
    let percent = |share: f64| round3(share * 100.0);
    let mut parameters = setup.parameters();
    extend(&mut parameters, json!({ "seconds": args.seconds }));
    let results = json!({
        "processes": setup.pids.len(),
        "measured_seconds": round3(elapsed),
        "core_percent_per_process": shares.iter().map(|share| percent(*share)).collect::<Vec<_>>(),
        "core_percent_max": percent(max),
        "core_percent_mean": percent(mean),
    });
    let summary = format!(
        "quiet: {} server processes, nothing connected, {elapsed:.1} s\n  CPU per process: mean {:.3} % of a core, \
         max {:.3} % (the readings tick every 10 ms: {:.3} % over this period)",
        setup.pids.len(),
        percent(mean),
        percent(max),
        percent(0.01 / elapsed),
    );
    Ok(Report {
        scenario: "quiet",
        parameters,
        results,
        summary,
    })
}
