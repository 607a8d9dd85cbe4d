//! `hubmesh bench idle`: idle connections (handshake done, one group joined) held open; reads the server's
//! memory per connection.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

use super::readings::{extend, round, round3};
use super::setup::{check_clients, seconds, Setup};
use super::tasks::{join_all, Progress};
use crate::bench::client::{Client, PING_EVERY, RS};
use crate::bench::procfs::rss_bytes;
use crate::bench::{BenchError, IdleArgs, Report, MAX_SECONDS};

/// `hubmesh bench idle`.
pub(in crate::bench) async fn idle(args: &IdleArgs) -> Result<Report, BenchError> {
    let setup = Setup::new(&args.common)?;
    check_clients(args.clients)?;
    let hold_for = seconds("--seconds", args.seconds, MAX_SECONDS)?;
    let group_json = serde_json::to_string(&args.group).map_err(|error| BenchError::Options(error.to_string()))?;

    let rss_before = rss_bytes(&setup.pids)?;
    let setup_started = Instant::now();
    let clients = setup.open_clients(args.clients, |_| Some(group_json.clone())).await?;
    let setup_seconds = setup_started.elapsed().as_secs_f64();

    let progress = Arc::new(Progress::default());
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    for client in clients {
        let progress = progress.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let result = hold(client, stop).await;
            if result.is_err() {
                progress.failed.fetch_add(1, Ordering::Relaxed);
            }
            result
        });
    }
    let hold_until = Instant::now() + hold_for;
    while Instant::now() < hold_until && progress.failed.load(Ordering::Relaxed) == 0 {
        sleep(Duration::from_millis(100).min(hold_until.saturating_duration_since(Instant::now()))).await;
    }
    let rss_after = rss_bytes(&setup.pids)?;
    stop.cancel();
    join_all(tasks).await?;

    let per_connection =
        (!setup.pids.is_empty()).then(|| round((rss_after as f64 - rss_before as f64) / args.clients as f64));
    let mut parameters = setup.parameters();
    extend(
        &mut parameters,
        json!({ "clients": args.clients, "seconds": args.seconds, "group": args.group }),
    );
    let results = json!({
        "connections": args.clients,
        "setup_seconds": round3(setup_seconds),
        "connects_per_sec_during_setup": round(args.clients as f64 / setup_seconds),
        "server_rss_before_bytes": (!setup.pids.is_empty()).then_some(rss_before),
        "server_rss_after_bytes": (!setup.pids.is_empty()).then_some(rss_after),
        "server_rss_per_connection_bytes": per_connection,
    });
    let memory = match per_connection {
        Some(per_connection) => format!(
            "server RSS {:.1} MiB -> {:.1} MiB: {per_connection:.0} bytes per connection",
            rss_before as f64 / 1_048_576.0,
            rss_after as f64 / 1_048_576.0
        ),
        None => "server RSS not measured (give --pid or --pids-from-dev)".to_owned(),
    };
    let summary = format!(
        "idle: {} connections over {} URLs, each in group {:?}, held {} s (set up in {setup_seconds:.1} s)\n  {memory}",
        args.clients,
        setup.urls.len(),
        args.group,
        args.seconds,
    );
    Ok(Report {
        scenario: "idle",
        parameters,
        results,
        summary,
    })
}

/// How long after receiving a stateful client acknowledges (the official client's delay).
const ACK_AFTER: Duration = Duration::from_secs(1);

/// Holds an idle connection open (reading, pinging, acknowledging) until stopped.
async fn hold(mut client: Client, stop: CancellationToken) -> Result<(), BenchError> {
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    // A stateful client acknowledges what it got (its join's Completion) a second later, as the official one does.
    let mut ack = tokio::time::interval_at(Instant::now() + ACK_AFTER, ACK_AFTER);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            text = client.next_text("holding an idle connection") => {
                let text = text?;
                for part in text.split(RS).filter(|part| !part.is_empty()) {
                    let record = client.parse(part)?;
                    if record.kind == 7 {
                        return Err(client.close_record(&record, "holding an idle connection"));
                    }
                }
            }
            _ = ping.tick() => client.ping().await?,
            _ = ack.tick() => client.ack_received().await?,
        }
    }
    client.close().await;
    Ok(())
}
