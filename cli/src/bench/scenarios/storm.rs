//! `hubmesh bench storm`: members of small groups (as `rooms`) with automatic reconnect; after `--kill-after`
//! seconds one node is killed with SIGKILL. Measures how long until every dropped member is connected to another
//! node and back in its group, and the latency of the messages sent meanwhile, as members that never dropped got
//! them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::members::{member, Latencies, Reconnect, Shared, Tally};
use super::readings::{cpu_summary, extend, micros_since, per_cpu_second, round3, CpuMeter};
use super::rooms::{parameters_json, plan};
use super::setup::{seconds, Setup};
use super::tasks::{join_all, Progress};
use super::victim::{kill, victim_pid};
use crate::bench::{BenchError, Report, RoomsShape, StormArgs, Transport, MAX_SECONDS};

/// How often the coordinator looks at the members' progress.
const POLL: Duration = Duration::from_millis(5);

/// `hubmesh bench storm`.
pub(in crate::bench) async fn storm(args: &StormArgs) -> Result<Report, BenchError> {
    let setup = Arc::new(Setup::new(&args.common)?);
    if setup.transport != Transport::WebSockets || setup.spread {
        return Err(BenchError::Options(
            "storm runs over WebSockets without --spread".to_owned(),
        ));
    }
    let urls = setup.urls.len();
    if urls < 2 || args.kill_url >= urls {
        return Err(BenchError::Options(
            "storm needs two --url or more, and --kill-url must name one of them (from 0)".to_owned(),
        ));
    }
    let run_for = seconds("--seconds", args.seconds, MAX_SECONDS)?;
    let kill_after = seconds("--kill-after", args.kill_after, MAX_SECONDS)?;
    if kill_after >= run_for {
        return Err(BenchError::Options(
            "--kill-after must be less than --seconds".to_owned(),
        ));
    }
    let shape = RoomsShape {
        groups: args.groups,
        group_size: args.group_size,
        rate: args.rate,
        seconds: args.seconds,
        drain_seconds: 1.0,
        prefix: args.prefix.clone(),
    };
    let plan = plan(&shape, setup.payload_bytes)?;
    let victim = victim_pid(&args.common, args.kill_url, args.kill_pid)?;
    let survivor_pids: Vec<u32> = setup.pids.iter().copied().filter(|pid| *pid != victim).collect();
    let on_victim = (0..plan.members).filter(|index| index % urls == args.kill_url).count();

    let setup_started = Instant::now();
    let clients = setup
        .open_clients(plan.members, |index| Some(plan.group_json(index)))
        .await?;
    let setup_seconds = setup_started.elapsed().as_secs_f64();

    let cpu = CpuMeter::start(&survivor_pids)?;
    let shared = Arc::new(Shared {
        plan: super::members::Plan {
            started: Instant::now(),
            ..plan
        },
        tally: Tally::default(),
        latency: Latencies::new(),
        progress: Progress::default(),
        reconnect: Some(Reconnect {
            setup: setup.clone(),
            killed_url: args.kill_url,
            storm_from: AtomicU64::new(u64::MAX),
            storm_until: AtomicU64::new(u64::MAX),
            survivors: Latencies::new(),
            back_after: Latencies::new(),
        }),
    });
    let started = shared.plan.started;
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    for (index, client) in clients.into_iter().enumerate() {
        tasks.spawn(member(index, client, shared.clone(), stop.clone()));
    }
    let failed = || shared.progress.failed.load(Ordering::Relaxed) > 0;
    let policy = shared
        .reconnect
        .as_ref()
        .ok_or_else(|| BenchError::Task("no reconnect policy".to_owned()))?;

    sleep_until(started + kill_after).await;
    let killed_at = Instant::now();
    policy
        .storm_from
        .store(micros_since(shared.plan.epoch), Ordering::Relaxed);
    let killed = kill(victim).await;
    if let Err(error) = killed {
        stop.cancel();
        let _ = join_all(tasks).await;
        return Err(error);
    }
    let tally = &shared.tally;
    let deadline = started + run_for;
    let all_back = || {
        let dropped = tally.dropped.load(Ordering::Relaxed);
        dropped >= on_victim && tally.rejoined.load(Ordering::Relaxed) >= dropped
    };
    while !all_back() && !failed() && Instant::now() < deadline {
        sleep(POLL).await;
    }
    let back = all_back();
    let back_seconds = killed_at.elapsed().as_secs_f64();
    policy
        .storm_until
        .store(micros_since(shared.plan.epoch), Ordering::Relaxed);
    while !failed() && Instant::now() < deadline {
        sleep(Duration::from_millis(100).min(deadline.saturating_duration_since(Instant::now()))).await;
    }
    let (server_cpu, own_cpu) = cpu.stop()?;
    stop.cancel();
    join_all(tasks).await?;

    let latency = shared.latency.merged();
    let survivors = policy.survivors.merged();
    let back_after = policy.back_after.merged();
    let delivered = shared.progress.delivered.load(Ordering::Relaxed);
    let (dropped, rejoined) = (
        tally.dropped.load(Ordering::Relaxed),
        tally.rejoined.load(Ordering::Relaxed),
    );
    let (duplicated, unexpected) = (
        tally.duplicates.load(Ordering::Relaxed),
        tally.unexpected.load(Ordering::Relaxed),
    );
    let per_cpu = per_cpu_second(delivered, server_cpu);
    let mut parameters = setup.parameters();
    extend(&mut parameters, parameters_json(&shape, &shared.plan));
    extend(
        &mut parameters,
        json!({ "kill_after": args.kill_after, "kill_url": args.kill_url, "kill_pid": victim }),
    );
    let results = json!({
        "members": shared.plan.members,
        "setup_seconds": round3(setup_seconds),
        "on_killed_node": on_victim,
        "dropped": dropped,
        "dropped_elsewhere": tally.dropped_elsewhere.load(Ordering::Relaxed),
        "rejoined": rejoined,
        "all_back": back,
        "all_back_seconds": back.then_some(round3(back_seconds)),
        "back_after": back_after.json(),
        "rejoin_retries": tally.rejoin_retries.load(Ordering::Relaxed),
        "failed_reconnect_attempts": tally.failed_attempts.load(Ordering::Relaxed),
        "first_failed_attempt": *tally.first_failure.lock().unwrap_or_else(|poisoned| poisoned.into_inner()),
        "survivors_latency": survivors.json(),
        "sent": tally.sent.load(Ordering::Relaxed),
        "skipped_while_reconnecting": tally.skipped.load(Ordering::Relaxed),
        "delivered": delivered,
        "duplicated": duplicated,
        "again_after_reconnect": tally.again_after_reconnect.load(Ordering::Relaxed),
        "unexpected": unexpected,
        "latency": latency.json(),
        "survivors_cpu_seconds": server_cpu.map(round3),
        "deliveries_per_survivor_cpu_second": per_cpu,
        "bench_cpu_seconds": own_cpu.map(round3),
    });
    let outcome = if back {
        format!("all {dropped} dropped members back in their groups {back_seconds:.2} s after the kill")
    } else {
        format!("only {rejoined} of {dropped} dropped members back (of {on_victim} on the node) by the end")
    };
    let summary = format!(
        "storm: {} groups of {} members over {urls} URLs, {} deliveries/s; SIGKILL of pid {victim} (URL {}) after {} s \
         (set up in {setup_seconds:.1} s)\n  {outcome}; per member {}\n  survivors' latency of what was sent during the storm {}\n  \
         all latency {}\n  {}",
        args.groups,
        args.group_size,
        args.rate,
        args.kill_url,
        args.kill_after,
        back_after.summary(),
        survivors.summary(),
        latency.summary(),
        cpu_summary(server_cpu, per_cpu, "deliveries (survivors)", own_cpu),
    );
    Ok(Report {
        scenario: "storm",
        parameters,
        results,
        summary,
    })
}
