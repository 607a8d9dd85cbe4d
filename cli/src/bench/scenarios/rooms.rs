//! `hubmesh bench rooms`: many small groups spread over the nodes, every member sending to its own group at a
//! shared target rate; counts each group's deliveries to each member (lost, duplicated, unexpected) and their
//! latency.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio::time::{sleep, Instant};
use tokio_util::sync::CancellationToken;

use super::members::{member, missed, Latencies, Plan, Shared, Tally};
use super::readings::{cpu_summary, extend, per_cpu_second, round, round3, CpuMeter};
use super::setup::{check_clients, seconds, Setup};
use super::tasks::{join_all, Progress};
use crate::bench::{BenchError, Report, RoomsArgs, RoomsShape, MAX_DELIVERIES, MAX_SECONDS};

/// How often the coordinator looks at the members' progress.
const POLL: Duration = Duration::from_millis(5);
/// How many missed messages the report names.
const SHOWN: usize = 5;

/// `hubmesh bench rooms`.
pub(in crate::bench) async fn rooms(args: &RoomsArgs) -> Result<Report, BenchError> {
    let setup = Setup::new(&args.common)?;
    let plan = plan(&args.shape, setup.payload_bytes)?;
    let send_for = seconds("--seconds", args.shape.seconds, MAX_SECONDS)?;
    let drain_for = seconds("--drain-seconds", args.shape.drain_seconds, MAX_SECONDS)?;

    let setup_started = Instant::now();
    let clients = setup
        .open_clients(plan.members, |index| Some(plan.group_json(index)))
        .await?;
    let setup_seconds = setup_started.elapsed().as_secs_f64();

    let cpu = CpuMeter::start(&setup.pids)?;
    let plan = Plan {
        started: Instant::now(),
        ..plan
    };
    let shared = Arc::new(Shared {
        plan,
        tally: Tally::default(),
        latency: Latencies::new(),
        progress: Progress::default(),
        reconnect: None,
    });
    let started = shared.plan.started;
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    for (index, client) in clients.into_iter().enumerate() {
        tasks.spawn(member(index, client, shared.clone(), stop.clone()));
    }
    let failed = || shared.progress.failed.load(Ordering::Relaxed) > 0;
    // Sending ends on schedule, or later if the members fell behind (at most half again, plus a second).
    let send_deadline = started + send_for.mul_f64(1.5) + Duration::from_secs(1);
    while shared.tally.sent.load(Ordering::Relaxed) < shared.plan.total_sends
        && !failed()
        && Instant::now() < send_deadline
    {
        sleep(POLL).await;
    }
    let sent = shared.tally.sent.load(Ordering::Relaxed);
    let send_seconds = started.elapsed().as_secs_f64();
    let expected = sent * shared.plan.group_size as u64;
    let drain_deadline = Instant::now() + drain_for;
    while shared.progress.delivered.load(Ordering::Relaxed) < expected && !failed() && Instant::now() < drain_deadline {
        sleep(POLL).await;
    }
    let (server_cpu, own_cpu) = cpu.stop()?;
    let measured_seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    let got = join_all(tasks).await?;
    let missed = if sent == shared.plan.total_sends {
        missed(&shared.plan, &got)
    } else {
        Default::default()
    };
    let missed_by_all = missed
        .values()
        .filter(|count| **count == shared.plan.group_size)
        .count();
    let shown: Vec<String> = missed
        .iter()
        .take(SHOWN)
        .map(|((group, slot, k), count)| {
            format!(
                "{}-{group} from member {slot}, its message {k}: missed by {count}",
                shared.plan.prefix
            )
        })
        .collect();

    let tally = &shared.tally;
    let delivered = shared.progress.delivered.load(Ordering::Relaxed);
    let latency = shared.latency.merged();
    let (duplicated, unexpected) = (
        tally.duplicates.load(Ordering::Relaxed),
        tally.unexpected.load(Ordering::Relaxed),
    );
    let lost = expected.saturating_sub(delivered);
    let last = Duration::from_micros(tally.last.load(Ordering::Relaxed));
    let delivery_seconds = last
        .saturating_sub(started - shared.plan.epoch)
        .as_secs_f64()
        .max(send_seconds.min(args.shape.seconds));
    let delivered_per_sec = round(delivered as f64 / delivery_seconds);
    let per_cpu = per_cpu_second(delivered, server_cpu);

    let mut parameters = setup.parameters();
    extend(&mut parameters, parameters_json(&args.shape, &shared.plan));
    let results = json!({
        "members": shared.plan.members,
        "setup_seconds": round3(setup_seconds),
        "sent": sent,
        "expected_deliveries": expected,
        "delivered": delivered,
        "received": tally.received.load(Ordering::Relaxed),
        "lost": lost,
        "duplicated": duplicated,
        "unexpected": unexpected,
        "messages_missed": missed.len(),
        "messages_missed_by_every_member": missed_by_all,
        "missed_sample": shown,
        "send_seconds": round3(send_seconds),
        "delivery_seconds": round3(delivery_seconds),
        "measured_seconds": round3(measured_seconds),
        "delivered_per_sec": delivered_per_sec,
        "latency": latency.json(),
        "server_cpu_seconds": server_cpu.map(round3),
        "deliveries_per_server_cpu_second": per_cpu,
        "bench_cpu_seconds": own_cpu.map(round3),
    });
    let summary = format!(
        "rooms: {} groups of {} members over {} URLs ({}), target {} deliveries/s ({:.1} sends/s for {} s; set up \
         in {setup_seconds:.1} s)\n  sent {sent}, delivered {delivered} of {expected} ({delivered_per_sec}/s), lost \
         {lost}, duplicated {duplicated}, unexpected {unexpected}{}\n  latency {}\n  {}",
        args.shape.groups,
        args.shape.group_size,
        setup.urls.len(),
        setup.transport_summary(),
        args.shape.rate,
        shared.plan.sends_per_sec,
        args.shape.seconds,
        if missed.is_empty() {
            String::new()
        } else {
            format!(
                "\n  {} messages missed by some member ({missed_by_all} by every member of the group), e.g. {}",
                missed.len(),
                shown.join("; ")
            )
        },
        latency.summary(),
        cpu_summary(server_cpu, per_cpu, "deliveries", own_cpu),
    );
    Ok(Report {
        scenario: "rooms",
        parameters,
        results,
        summary,
    })
}

/// The members' plan from the options, checked (its `started` is set again when sending starts).
pub(super) fn plan(args: &RoomsShape, payload_bytes: usize) -> Result<Plan, BenchError> {
    if !(1..=1000).contains(&args.group_size) {
        return Err(BenchError::Options(
            "--group-size must be between 1 and 1000".to_owned(),
        ));
    }
    let members = args
        .groups
        .checked_mul(args.group_size)
        .ok_or_else(|| BenchError::Options("--groups times --group-size is too large".to_owned()))?;
    check_clients(members)?;
    if !(args.rate.is_finite() && args.rate > 0.0 && args.rate <= 100_000_000.0) {
        return Err(BenchError::Options(
            "--rate must be more than 0 and at most 100000000".to_owned(),
        ));
    }
    seconds("--seconds", args.seconds, MAX_SECONDS)?;
    if args.prefix.contains(['"', '\\']) || args.prefix.chars().any(char::is_control) {
        return Err(BenchError::Options(
            "--prefix must not hold quotes, backslashes or control characters".to_owned(),
        ));
    }
    let sends_per_sec = args.rate / args.group_size as f64;
    let total_sends = (sends_per_sec * args.seconds).round().max(1.0) as u64;
    if total_sends.saturating_mul(args.group_size as u64) > MAX_DELIVERIES {
        return Err(BenchError::Options(format!(
            "more than {MAX_DELIVERIES} deliveries expected; lower --rate or --seconds"
        )));
    }
    let now = Instant::now();
    Ok(Plan {
        members,
        group_size: args.group_size,
        total_sends,
        sends_per_sec,
        prefix: args.prefix.clone(),
        payload_bytes,
        epoch: now,
        started: now,
    })
}

/// The scenario's own parameters.
pub(super) fn parameters_json(args: &RoomsShape, plan: &Plan) -> Value {
    json!({
        "groups": args.groups,
        "group_size": args.group_size,
        "rate": args.rate,
        "sends_per_sec": round(plan.sends_per_sec),
        "seconds": args.seconds,
        "drain_seconds": args.drain_seconds,
        "prefix": args.prefix,
    })
}
