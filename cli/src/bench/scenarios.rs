//! The four scenarios: set-up, the measured phase, and the report.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use serde_json::{json, Value};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::client::{Client, PING, PING_EVERY, RS};
use super::procfs::{cpu_seconds, dev_node_pids, own_cpu_seconds, rss_bytes};
use super::stats::{parse_payload, payload, Histogram, Seen, MIN_PAYLOAD};
use super::{
    hub_ws_url, BenchError, CommonArgs, ConnectArgs, EchoArgs, FanoutArgs, IdleArgs, Report, MAX_CLIENTS,
    MAX_DELIVERIES, MAX_SECONDS,
};

/// How often the coordinator looks at the clients' progress.
const POLL: Duration = Duration::from_millis(5);

/// The options every scenario shares, checked.
struct Setup {
    /// The hubs' WebSocket URLs.
    urls: Vec<String>,
    pids: Vec<u32>,
    step_timeout: Duration,
    payload_bytes: usize,
    concurrency: usize,
}

impl Setup {
    fn new(common: &CommonArgs) -> Result<Setup, BenchError> {
        if common.urls.is_empty() {
            return Err(BenchError::Options("give at least one --url".to_owned()));
        }
        let urls = common
            .urls
            .iter()
            .map(|url| hub_ws_url(url, &common.hub_path))
            .collect::<Result<Vec<_>, _>>()?;
        let mut pids = common.pids.clone();
        if common.pids_from_dev {
            for pid in dev_node_pids(&common.urls)? {
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
        // Fail now, not after the run, if a process cannot be read.
        cpu_seconds(&pids)?;
        if !(MIN_PAYLOAD..=65_536).contains(&common.payload_bytes) {
            return Err(BenchError::Options(format!(
                "--payload-bytes must be between {MIN_PAYLOAD} and 65536"
            )));
        }
        if !(1..=4096).contains(&common.connect_concurrency) {
            return Err(BenchError::Options(
                "--connect-concurrency must be between 1 and 4096".to_owned(),
            ));
        }
        Ok(Setup {
            urls,
            pids,
            step_timeout: seconds("--timeout", common.timeout, 300.0)?,
            payload_bytes: common.payload_bytes,
            concurrency: common.connect_concurrency,
        })
    }

    fn url(&self, index: usize) -> &str {
        self.urls.get(index % self.urls.len()).map_or("", String::as_str)
    }

    /// The common parameters for the report.
    fn parameters(&self) -> Value {
        json!({
            "urls": self.urls,
            "pids": self.pids,
            "payload_bytes": self.payload_bytes,
            "timeout_seconds": self.step_timeout.as_secs_f64(),
        })
    }

    /// Opens `count` clients round-robin over the URLs, `concurrency` at a time, each joining `group` if given.
    async fn open_clients(&self, count: usize, group_json: Option<&str>) -> Result<Vec<Client>, BenchError> {
        futures_util::stream::iter(0..count)
            .map(|index| {
                let url = self.url(index).to_owned();
                let step_timeout = self.step_timeout;
                async move {
                    let mut client = Client::connect(&url, step_timeout).await?;
                    if let Some(group) = group_json {
                        client.join(group).await?;
                    }
                    Ok::<_, BenchError>(client)
                }
            })
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await
    }
}

/// Checks a duration option (positive, finite, at most `max` seconds).
fn seconds(name: &str, value: f64, max: f64) -> Result<Duration, BenchError> {
    if !(value.is_finite() && value > 0.0 && value <= max) {
        return Err(BenchError::Options(format!(
            "{name} must be more than 0 and at most {max} seconds"
        )));
    }
    Ok(Duration::from_secs_f64(value))
}

fn check_clients(clients: usize) -> Result<(), BenchError> {
    if !(1..=MAX_CLIENTS).contains(&clients) {
        return Err(BenchError::Options(format!(
            "--clients must be between 1 and {MAX_CLIENTS}"
        )));
    }
    Ok(())
}

/// Server CPU time (summed over the measured processes) and this process's, over a phase.
struct CpuMeter {
    pids: Vec<u32>,
    server: f64,
    own: Option<f64>,
}

impl CpuMeter {
    fn start(pids: &[u32]) -> Result<CpuMeter, BenchError> {
        Ok(CpuMeter {
            pids: pids.to_vec(),
            server: cpu_seconds(pids)?,
            own: own_cpu_seconds(),
        })
    }

    /// The server CPU seconds (None without pids) and this process's, since the start.
    fn stop(&self) -> Result<(Option<f64>, Option<f64>), BenchError> {
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
fn per_cpu_second(count: u64, cpu: Option<f64>) -> Option<f64> {
    cpu.filter(|cpu| *cpu > 0.0).map(|cpu| round(count as f64 / cpu))
}

fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

fn micros_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Waits for every task; the first error (or panic) wins.
async fn join_all<T: 'static>(mut tasks: JoinSet<Result<T, BenchError>>) -> Result<Vec<T>, BenchError> {
    let mut results = Vec::with_capacity(tasks.len());
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(value)) => results.push(value),
            Ok(Err(error)) => {
                first_error.get_or_insert(error);
            }
            Err(error) => {
                first_error.get_or_insert(BenchError::Task(error.to_string()));
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(results),
    }
}

/// What the coordinator sees of the clients while they run.
#[derive(Default)]
struct Progress {
    /// New (not duplicate) deliveries so far.
    delivered: AtomicU64,
    /// Clients that failed.
    failed: AtomicUsize,
}

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
pub(super) async fn fanout(args: &FanoutArgs) -> Result<Report, BenchError> {
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
    let publisher_url = match &args.publisher_url {
        Some(url) => hub_ws_url(url, &args.common.hub_path)?,
        None => setup.url(0).to_owned(),
    };

    let receivers = setup
        .open_clients(args.clients, (!args.broadcast).then_some(group_json.as_str()))
        .await?;
    let mut publisher = Client::connect(&publisher_url, setup.step_timeout).await?;

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
    });
    let summary = format!(
        "fanout: {} clients over {} URLs ({}), target {} deliveries/s ({:.1} publishes/s for {} s)\n  \
         published {published}, delivered {unique} of {expected} ({delivered_per_sec}/s), lost {lost}, \
         duplicated {duplicates}\n  latency {}\n  {}",
        args.clients,
        setup.urls.len(),
        if args.broadcast { "broadcast" } else { "one group" },
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

fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

fn extend(target: &mut Value, more: Value) {
    if let (Value::Object(target), Value::Object(more)) = (target, more) {
        target.extend(more);
    }
}

fn cpu_summary(server: Option<f64>, per_cpu: Option<f64>, what: &str, own: Option<f64>) -> String {
    let own = own.map_or_else(String::new, |own| format!("; bench process {own:.2} CPU-s"));
    match (server, per_cpu) {
        (Some(server), Some(per_cpu)) => format!("server CPU {server:.2} s: {per_cpu:.0} {what} per CPU-second{own}"),
        (Some(server), None) => format!("server CPU {server:.2} s{own}"),
        _ => format!("server CPU not measured (give --pid or --pids-from-dev){own}"),
    }
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
            _ = ping.tick() => client.send(PING.to_owned(), "pinging").await?,
        }
    }
    client.close().await;
    Ok(stats)
}

/// `hubmesh bench echo`.
pub(super) async fn echo(args: &EchoArgs) -> Result<Report, BenchError> {
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
    let clients = setup.open_clients(args.clients, None).await?;

    let epoch = Instant::now();
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
    });
    let target = if args.rate == 0.0 {
        "as fast as possible".to_owned()
    } else {
        format!("target {}/s", args.rate)
    };
    let summary = format!(
        "echo: {} clients over {} URLs, {target}, {} s\n  {round_trips} round trips ({per_second}/s)\n  \
         latency {}\n  {}",
        args.clients,
        setup.urls.len(),
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

/// `hubmesh bench idle`.
pub(super) async fn idle(args: &IdleArgs) -> Result<Report, BenchError> {
    let setup = Setup::new(&args.common)?;
    check_clients(args.clients)?;
    let hold_for = seconds("--seconds", args.seconds, MAX_SECONDS)?;
    let group_json = serde_json::to_string(&args.group).map_err(|error| BenchError::Options(error.to_string()))?;

    let rss_before = rss_bytes(&setup.pids)?;
    let setup_started = Instant::now();
    let clients = setup.open_clients(args.clients, Some(&group_json)).await?;
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

/// Holds an idle connection open (reading, pinging) until stopped.
async fn hold(mut client: Client, stop: CancellationToken) -> Result<(), BenchError> {
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
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
            _ = ping.tick() => client.send(PING.to_owned(), "pinging").await?,
        }
    }
    client.close().await;
    Ok(())
}

/// `hubmesh bench connect`.
pub(super) async fn connect(args: &ConnectArgs) -> Result<Report, BenchError> {
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
                let url = setup.url(usize::try_from(index).unwrap_or(0));
                match Client::connect(url, setup.step_timeout).await {
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
