//! `hubmesh bench fanout`: receivers in one group (or reached by broadcast) and one publisher at a target
//! delivery rate; counts deliveries by sequence (lost, duplicated, unexpected) and their latency.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::readings::{cpu_summary, extend, micros_since, per_cpu_second, round, round3, CpuMeter};
use super::setup::{check_clients, seconds, Setup};
use super::tasks::{join_all, Progress};
use crate::bench::client::{Client, PING_EVERY, RS};
use crate::bench::route::{HubUrl, Route};
use crate::bench::stats::{parse_payload, payload, Histogram, Seen};
use crate::bench::{BenchError, FanoutArgs, Report, MAX_DELIVERIES, MAX_SECONDS};

/// How often the coordinator looks at the clients' progress.
const POLL: Duration = Duration::from_millis(5);

/// One fan-out receiver's counts.
struct Receiver {
    received: u64,
    unique: u64,
    duplicates: u64,
    unexpected: u64,
    latency: Histogram,
    /// Microseconds after the epoch of the last new delivery.
    last: u64,
}

/// `hubmesh bench fanout`.
pub(in crate::bench) async fn fanout(args: &FanoutArgs) -> Result<Report, BenchError> {
    let setup = Setup::new(&args.common)?;
    check_clients(args.clients)?;
    let publish_for = seconds("--seconds", args.seconds, MAX_SECONDS)?;
    let drain_for = seconds("--drain-seconds", args.drain_seconds, MAX_SECONDS)?;
    if !(args.rate.is_finite() && args.rate > 0.0 && args.rate <= 100_000_000.0) {
        return Err(BenchError::Options(
            "--rate must be more than 0 and at most 100000000".to_owned(),
        ));
    }
    let publish_rate = args.rate / args.clients as f64;
    let published_total = (publish_rate * args.seconds).round().max(1.0) as u64;
    let expected = published_total.saturating_mul(args.clients as u64);
    if expected > MAX_DELIVERIES {
        return Err(BenchError::Options(format!(
            "{expected} deliveries expected, more than {MAX_DELIVERIES}; lower --rate or --seconds"
        )));
    }
    let group_json = serde_json::to_string(&args.group).map_err(|error| BenchError::Options(error.to_string()))?;
    // The publisher is client 0 (own URL the first --url), or alone at --publisher-url.
    let publisher_route = match &args.publisher_url {
        Some(url) => {
            let alone: Arc<[HubUrl]> = Arc::new([HubUrl::parse(url, &args.common.hub_path)?]);
            Route::new(alone, 0, false, setup.requests.clone())
                .map(Arc::new)
                .ok_or_else(|| BenchError::Options("--publisher-url".to_owned()))?
        }
        None => setup.route(0)?,
    };
    let publisher_url = publisher_route.own().ws(None);

    let receivers = setup
        .open_clients(args.clients, |_| (!args.broadcast).then(|| group_json.clone()))
        .await?;
    let mut publisher = Client::connect(publisher_route, setup.transport, setup.step_timeout).await?;

    let epoch = Instant::now();
    let progress = Arc::new(Progress::default());
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    for client in receivers {
        tasks.spawn(receive(
            client,
            Seen::new(published_total),
            progress.clone(),
            stop.clone(),
            epoch,
        ));
    }

    let requests_before = setup.requests.load(Ordering::Relaxed);
    let cpu = CpuMeter::start(&setup.pids)?;
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / publish_rate);
    let mut seq = 0;
    while seq < published_total && progress.failed.load(Ordering::Relaxed) == 0 {
        let due = started + interval.saturating_mul(u32::try_from(seq).unwrap_or(u32::MAX));
        tokio::select! {
            biased;
            () = sleep_until(due) => {
                let text = payload(seq, micros_since(epoch), setup.payload_bytes);
                let record = if args.broadcast {
                    format!("{{\"type\":1,\"target\":\"Broadcast\",\"arguments\":[\"{text}\"]}}{RS}")
                } else {
                    format!("{{\"type\":1,\"target\":\"SendToGroup\",\"arguments\":[{group_json},\"{text}\"]}}{RS}")
                };
                publisher.send(record, "publishing").await?;
                seq += 1;
            }
            // With --broadcast the publisher receives every message too; also Pings.
            received = publisher.next_text("publishing") => {
                received?;
            }
        }
    }
    let published = seq;
    let publish_seconds = started.elapsed().as_secs_f64();
    // Keep reading the publisher's connection (broadcasts, Pings) while the receivers drain.
    let publisher_stop = stop.clone();
    let publisher_task = tokio::spawn(async move {
        loop {
            tokio::select! {
                () = publisher_stop.cancelled() => break,
                received = publisher.next_text("draining") => if received.is_err() { break },
            }
        }
        publisher.close().await;
    });

    let expected = published * args.clients as u64;
    let drain_deadline = Instant::now() + drain_for;
    while progress.delivered.load(Ordering::Relaxed) < expected
        && progress.failed.load(Ordering::Relaxed) == 0
        && Instant::now() < drain_deadline
    {
        sleep(POLL).await;
    }
    let (server_cpu, own_cpu) = cpu.stop()?;
    let requests = setup.requests.load(Ordering::Relaxed).saturating_sub(requests_before);
    let measured_seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    let receivers = join_all(tasks).await?;
    let _ = publisher_task.await;
    if publish_seconds > publish_for.as_secs_f64() * 1.5 + 1.0 {
        tracing::warn!(publish_seconds, "the publisher fell behind its schedule");
    }

    let mut latency = Histogram::new();
    let (mut received, mut unique, mut duplicates, mut unexpected, mut last) = (0, 0, 0, 0, 0);
    let mut complete = 0;
    for receiver in &receivers {
        latency.merge(&receiver.latency);
        received += receiver.received;
        unique += receiver.unique;
        duplicates += receiver.duplicates;
        unexpected += receiver.unexpected;
        last = last.max(receiver.last);
        if receiver.unique == published {
            complete += 1;
        }
    }
    let lost = expected.saturating_sub(unique);
    // From the first publish to the last new delivery (at least the publishing time).
    let delivery_seconds = (Duration::from_micros(last).saturating_sub(started - epoch))
        .as_secs_f64()
        .max(publish_seconds);
    let delivered_per_sec = round(unique as f64 / delivery_seconds);
    let per_cpu = per_cpu_second(unique, server_cpu);

    let mut parameters = setup.parameters();
    extend(
        &mut parameters,
        json!({
            "clients": args.clients,
            "rate": args.rate,
            "publish_rate": round(publish_rate),
            "seconds": args.seconds,
            "drain_seconds": args.drain_seconds,
            "broadcast": args.broadcast,
            "group": args.group,
            "publisher_url": publisher_url,
        }),
    );
    let results = json!({
        "published": published,
        "expected_deliveries": expected,
        "delivered": unique,
        "received": received,
        "lost": lost,
        "duplicated": duplicates,
        "unexpected": unexpected,
        "clients_complete": complete,
        "publish_seconds": round3(publish_seconds),
        "delivery_seconds": round3(delivery_seconds),
        "measured_seconds": round3(measured_seconds),
        "delivered_per_sec": delivered_per_sec,
        "latency": latency.json(),
        "server_cpu_seconds": server_cpu.map(round3),
        "deliveries_per_server_cpu_second": per_cpu,
        "bench_cpu_seconds": own_cpu.map(round3),
        "http_requests": requests,
    });
    let summary = format!(
        "fanout: {} clients over {} URLs ({}; {}), target {} deliveries/s ({:.1} publishes/s for {} s)\n  \
         published {published}, delivered {unique} of {expected} ({delivered_per_sec}/s), lost {lost}, \
         duplicated {duplicates}, {requests} HTTP requests\n  latency {}\n  {}",
        args.clients,
        setup.urls.len(),
        if args.broadcast { "broadcast" } else { "one group" },
        setup.transport_summary(),
        args.rate,
        publish_rate,
        args.seconds,
        latency.summary(),
        cpu_summary(server_cpu, per_cpu, "deliveries", own_cpu),
    );
    Ok(Report {
        scenario: "fanout",
        parameters,
        results,
        summary,
    })
}

/// A fan-out receiver: counts `msg` deliveries by sequence until stopped.
async fn receive(
    client: Client,
    seen: Seen,
    progress: Arc<Progress>,
    stop: CancellationToken,
    epoch: Instant,
) -> Result<Receiver, BenchError> {
    let result = receive_inner(client, seen, &progress, stop, epoch).await;
    if result.is_err() {
        progress.failed.fetch_add(1, Ordering::Relaxed);
    }
    result
}

async fn receive_inner(
    mut client: Client,
    mut seen: Seen,
    progress: &Progress,
    stop: CancellationToken,
    epoch: Instant,
) -> Result<Receiver, BenchError> {
    let mut stats = Receiver {
        received: 0,
        unique: 0,
        duplicates: 0,
        unexpected: 0,
        latency: Histogram::new(),
        last: 0,
    };
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            text = client.next_text("receiving") => {
                let text = text?;
                let now = micros_since(epoch);
                let mut new = 0;
                for part in text.split(RS).filter(|part| !part.is_empty()) {
                    let record = client.parse(part)?;
                    if let Some(body) = record.msg_payload() {
                        stats.received += 1;
                        match parse_payload(body) {
                            Some((seq, sent)) => {
                                stats.latency.record(now.saturating_sub(sent));
                                match seen.mark(seq) {
                                    Some(true) => new += 1,
                                    Some(false) => stats.duplicates += 1,
                                    None => stats.unexpected += 1,
                                }
                            }
                            None => stats.unexpected += 1,
                        }
                    } else if record.kind == 7 {
                        return Err(client.close_record(&record, "receiving"));
                    }
                }
                if new > 0 {
                    stats.unique += new;
                    stats.last = now;
                    progress.delivered.fetch_add(new, Ordering::Relaxed);
                }
            }
            _ = ping.tick() => client.ping().await?,
        }
    }
    client.close().await;
    Ok(stats)
}
