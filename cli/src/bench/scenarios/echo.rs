//! `hubmesh bench echo`: clients doing Echo round trips, one outstanding each, on schedule or as fast as
//! possible; counts round trips and their latency.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use super::readings::{cpu_summary, extend, micros_since, per_cpu_second, round, round3, CpuMeter};
use super::setup::{check_clients, seconds, Setup};
use super::tasks::{join_all, Progress};
use crate::bench::client::{Client, RS};
use crate::bench::stats::{parse_payload, payload, Histogram};
use crate::bench::{BenchError, EchoArgs, Report, MAX_SECONDS};

/// `hubmesh bench echo`.
pub(in crate::bench) async fn echo(args: &EchoArgs) -> Result<Report, BenchError> {
    let setup = Setup::new(&args.common)?;
    check_clients(args.clients)?;
    let run_for = seconds("--seconds", args.seconds, MAX_SECONDS)?;
    let per_client = if args.rate == 0.0 {
        None
    } else if args.rate.is_finite() && args.rate > 0.0 && args.rate / args.clients as f64 >= 0.2 {
        Some(Duration::from_secs_f64(args.clients as f64 / args.rate))
    } else {
        return Err(BenchError::Options(
            "--rate must be 0 (as fast as possible) or at least 0.2 per client".to_owned(),
        ));
    };
    let clients = setup.open_clients(args.clients, |_| None).await?;

    let epoch = Instant::now();
    let requests_before = setup.requests.load(Ordering::Relaxed);
    let cpu = CpuMeter::start(&setup.pids)?;
    let started = Instant::now();
    let deadline = started + run_for;
    let progress = Arc::new(Progress::default());
    let mut tasks = JoinSet::new();
    for (index, client) in clients.into_iter().enumerate() {
        // Spread the clients' schedules over one interval.
        let offset = per_client.map_or(Duration::ZERO, |every| {
            every.mul_f64(index as f64 / args.clients as f64)
        });
        tasks.spawn(echo_client(
            client,
            per_client,
            started + offset,
            deadline,
            epoch,
            setup.payload_bytes,
            progress.clone(),
        ));
    }
    let finished = join_all(tasks).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let (server_cpu, own_cpu) = cpu.stop()?;
    let requests = setup.requests.load(Ordering::Relaxed).saturating_sub(requests_before);
    let mut latency = Histogram::new();
    let mut closing = JoinSet::new();
    for (histogram, client) in finished {
        latency.merge(&histogram);
        closing.spawn(client.close());
    }
    closing.join_all().await;
    let round_trips = progress.delivered.load(Ordering::Relaxed);
    let per_second = round(round_trips as f64 / elapsed);
    let per_cpu = per_cpu_second(round_trips, server_cpu);

    let mut parameters = setup.parameters();
    extend(
        &mut parameters,
        json!({ "clients": args.clients, "rate": args.rate, "seconds": args.seconds }),
    );
    let results = json!({
        "round_trips": round_trips,
        "measured_seconds": round3(elapsed),
        "round_trips_per_sec": per_second,
        "latency": latency.json(),
        "server_cpu_seconds": server_cpu.map(round3),
        "round_trips_per_server_cpu_second": per_cpu,
        "bench_cpu_seconds": own_cpu.map(round3),
        "http_requests": requests,
    });
    let target = if args.rate == 0.0 {
        "as fast as possible".to_owned()
    } else {
        format!("target {}/s", args.rate)
    };
    let summary = format!(
        "echo: {} clients over {} URLs ({}), {target}, {} s\n  {round_trips} round trips ({per_second}/s), {requests} HTTP requests\n  \
         latency {}\n  {}",
        args.clients,
        setup.urls.len(),
        setup.transport_summary(),
        args.seconds,
        latency.summary(),
        cpu_summary(server_cpu, per_cpu, "round trips", own_cpu),
    );
    Ok(Report {
        scenario: "echo",
        parameters,
        results,
        summary,
    })
}

/// One echo client: a round trip at a time, on schedule if `every` is given, until `deadline`; returns the
/// latencies and the client, still open (closing is not measured).
async fn echo_client(
    mut client: Client,
    every: Option<Duration>,
    first: Instant,
    deadline: Instant,
    epoch: Instant,
    payload_bytes: usize,
    progress: Arc<Progress>,
) -> Result<(Histogram, Client), BenchError> {
    let mut latency = Histogram::new();
    let mut seq: u64 = 0;
    loop {
        if let Some(every) = every {
            let due = first + every.saturating_mul(u32::try_from(seq).unwrap_or(u32::MAX));
            if due >= deadline {
                break;
            }
            sleep_until(due).await;
        } else if Instant::now() >= deadline {
            break;
        }
        let sent = micros_since(epoch);
        let text = payload(seq, sent, payload_bytes);
        client
            .send(
                format!("{{\"type\":1,\"target\":\"Echo\",\"arguments\":[\"{text}\"]}}{RS}"),
                "sending Echo",
            )
            .await?;
        let answer_by = Instant::now() + client.step_timeout();
        'answer: loop {
            let wait = answer_by.saturating_duration_since(Instant::now());
            let text = client.next_text_within(wait, "waiting for the echo").await?;
            for part in text.split(RS).filter(|part| !part.is_empty()) {
                let record = client.parse(part)?;
                if let Some((echoed, _)) = record.msg_payload().and_then(parse_payload) {
                    if echoed == seq {
                        latency.record(micros_since(epoch).saturating_sub(sent));
                        progress.delivered.fetch_add(1, Ordering::Relaxed);
                        break 'answer;
                    }
                } else if record.kind == 7 {
                    return Err(client.close_record(&record, "waiting for the echo"));
                }
            }
        }
        seq += 1;
    }
    Ok((latency, client))
}
