//! The chaos harness (issue 13): five real `hubmesh node` processes whose gossip and link traffic passes through a
//! relay the test controls, clients on every node sending group, user and direct messages all the time, and a
//! seeded random schedule of faults: SIGKILL and restart, SIGSTOP and SIGCONT, symmetric and one-way partitions, a
//! pair cut, links cut while gossip flows, added delay, a node with another secret, and a rolling restart. What
//! must hold is checked after each heal and over the whole record at the end (`chaos/invariants.rs`); every
//! violation is printed with its message, group and time, and the test fails naming the seed.
//!
//! Replay a seed: `CHAOS_SEED=<n> cargo test --test chaos -- --nocapture`. The soak:
//! `cargo test --release --test chaos -- --ignored --nocapture` (30 minutes and at least 200 faults;
//! `CHAOS_SECS` and `CHAOS_EVENTS` change both). See `chaos/README.md`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../common/process.rs"]
mod process;

#[path = "chaos/clients.rs"]
mod clients;
#[path = "chaos/harness.rs"]
mod harness;
#[path = "chaos/invariants.rs"]
mod invariants;
#[path = "chaos/nodes.rs"]
mod nodes;
#[path = "../common/npm.rs"]
mod npm;
#[path = "chaos/official.rs"]
mod official;
#[path = "chaos/relay.rs"]
mod relay;
#[path = "chaos/schedule.rs"]
mod schedule;
#[path = "../common/stateful_client.rs"]
mod stateful_client;

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use harness::{Harness, Violation, NODES};
use schedule::{Ranges, Schedule};

struct Settings {
    seed: u64,
    /// At least this many faults …
    events: usize,
    /// … and at least this long.
    lasting: Duration,
    ranges: Ranges,
    /// A rolling restart every this many faults (after the first of each kind).
    rolling_every: usize,
    /// Stateful-reconnect receivers per node (`CHAOS_STATEFUL`, one unless set; 0 turns them off): they are
    /// required to lose nothing across a kill or a rolling restart of their node. On by default since the defects
    /// they found were fixed (`chaos/README.md`, defects 29 to 32; 7 runs with no violation of theirs on
    /// 2026-12-07).
    stateful_per_node: usize,
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|value| value.trim().parse().ok())
}

impl Settings {
    fn from_env(events: usize, lasting: Duration, ranges: Ranges, rolling_every: usize) -> Settings {
        let seed = env_number("CHAOS_SEED").unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|since| since.as_nanos() as u64)
                .unwrap_or(1)
        });
        Settings {
            seed,
            events: env_number("CHAOS_EVENTS").map_or(events, |events| events as usize),
            lasting: env_number("CHAOS_SECS").map_or(lasting, Duration::from_secs),
            ranges,
            rolling_every,
            stateful_per_node: env_number("CHAOS_STATEFUL").map_or(1, |count| count as usize),
        }
    }
}

/// Runs the schedule, checks everything, prints the figures; an error names the seed and every violation.
async fn run(settings: Settings) -> anyhow::Result<()> {
    let seed = settings.seed;
    println!(
        "chaos seed {seed} (replay: CHAOS_SEED={seed}); at least {} faults over at least {:?}",
        settings.events, settings.lasting
    );
    let mut harness = Harness::start(seed, settings.stateful_per_node).await?;
    anyhow::ensure!(
        harness.all_clients_joined(Duration::from_secs(30)).await,
        "not every client connected and joined its groups within 30 s"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    harness.check_memberships("the start", Duration::from_secs(5)).await;
    let rss_before = harness.rss();
    let connections_before = harness.load.open_members().len();

    let mut schedule = Schedule::new(seed, settings.ranges, NODES, settings.rolling_every);
    let started = Instant::now();
    let mut events = 0;
    while events < settings.events || started.elapsed() < settings.lasting {
        let (gap, fault) = schedule.next_fault();
        tokio::time::sleep(gap).await;
        harness.apply(fault).await?;
        events += 1;
    }
    let schedule_took = started.elapsed();

    // The end: no fault for a while, every client connected and joined, sends stop, late ones arrive.
    let mut end_violations = Vec::new();
    if !harness.all_clients_joined(Duration::from_secs(30)).await {
        end_violations.push("not every client was connected and joined 30 s after the last heal".to_owned());
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    harness.load.sending.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(5)).await;
    harness.check_memberships("the end", Duration::from_secs(5)).await;
    let rss_after = harness.rss();
    let connections_after = harness.load.open_members().len();
    let record = harness.load.with(std::mem::take);
    harness.load.stop.store(true, Ordering::Relaxed);

    let verdict = invariants::check(&record, &harness.applied, NODES);
    for (node, line) in harness.panics() {
        end_violations.push(format!("{node} panicked: {line}"));
    }
    println!("\n=== chaos run, seed {seed}");
    println!("faults applied: {events} in {:.1} s", schedule_took.as_secs_f64());
    for applied in &harness.applied {
        println!(
            "  [{:7.3} s .. {:7.3} s] {} (views converged {})",
            applied.start.as_secs_f64(),
            applied.healed.as_secs_f64(),
            applied.fault,
            applied
                .converged_after
                .map_or("NOT within 5 s".to_owned(), |took| format!("after {took:?}"))
        );
    }
    println!(
        "sent: {} group, {} user, {} direct ({} accepted); received {}; required deliveries {}, of which arrived {}",
        verdict.sent.get(&'g').unwrap_or(&0),
        verdict.sent.get(&'u').unwrap_or(&0),
        verdict.sent.get(&'d').unwrap_or(&0),
        verdict.accepted,
        verdict.receipts,
        verdict.required,
        verdict.delivered
    );
    println!("relay: {}", harness.relay.faults.counts);
    println!(
        "connections: {} over the run; open and joined: {connections_before} before, {connections_after} after",
        record.connections.len()
    );
    for (index, (before, after)) in rss_before.iter().zip(&rss_after).enumerate() {
        let name = &harness.nodes[index].name;
        println!(
            "RSS {name}: before {before:?} KiB, after {after:?} KiB ({} processes over the run)",
            harness.nodes[index].starts
        );
        match (before, after) {
            (Some(before), Some(after)) if *after * 100 > *before * 120 => {
                end_violations.push(format!(
                    "{name}'s RSS grew more than 20 %: {before} KiB before, {after} KiB after"
                ));
            }
            (Some(_), Some(_)) => {}
            _ => end_violations.push(format!(
                "{name}'s RSS could not be read (before {before:?}, after {after:?})"
            )),
        }
    }
    if connections_before != connections_after {
        end_violations.push(format!(
            "connections before {connections_before} and after {connections_after} differ"
        ));
    }
    // What the stateful receivers went through: the invariant for them needs it read with their violations.
    for connection in record.connections.iter().filter(|connection| connection.stateful) {
        let resumes: Vec<String> = connection
            .resumes
            .iter()
            .map(|(at, node)| format!("{:.3} s via node-{}", at.as_secs_f64(), node + 1))
            .collect();
        println!(
            "stateful {} ({}): opened {:.3} s, resumed [{}], closed {:?}: {}",
            connection.label,
            connection.id,
            connection.opened.as_secs_f64(),
            resumes.join(", "),
            connection.closed.map(|at| format!("{:.3} s", at.as_secs_f64())),
            connection.close_reason.as_deref().unwrap_or("open at the end")
        );
    }
    let mut violations: Vec<Violation> = harness.violations.clone();
    violations.extend(verdict.violations);
    let end = harness.load.now();
    violations.extend(end_violations.into_iter().map(|what| Violation { at: end, what }));
    println!("violations: {}", violations.len());
    for violation in violations.iter().take(100) {
        println!("  [{:7.3} s] {}", violation.at.as_secs_f64(), violation.what);
    }
    if violations.len() > 100 {
        println!("  … and {} more", violations.len() - 100);
    }
    if !violations.is_empty() {
        match harness.keep_logs(seed) {
            Ok(kept) => println!("the nodes' logs are kept in {}", kept.display()),
            Err(error) => println!("the nodes' logs could not be kept: {error}"),
        }
    }
    anyhow::ensure!(
        violations.is_empty(),
        "seed {seed}: {} violations (replay: CHAOS_SEED={seed}); the first: {}",
        violations.len(),
        violations
            .first()
            .map(|violation| violation.what.as_str())
            .unwrap_or_default()
    );
    Ok(())
}

/// The bounded run: at least 20 faults, every kind among them, with the shorter ranges (about two minutes), in CI.
/// The defects it found, and the seeds that found them, are in `tests/cli/chaos/README.md`, "Defects it found".
/// A failure prints its seed: `CHAOS_SEED=<seed> cargo test -p hubmesh-cli --test chaos chaos_bounded` replays it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_bounded() -> anyhow::Result<()> {
    run(Settings::from_env(20, Duration::ZERO, Ranges::SHORT, 1_000)).await
}

/// The soak: 30 minutes and at least 200 faults, with the full ranges and a rolling restart every 40 faults.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "30 minutes: cargo test --release --test chaos -- --ignored"]
async fn chaos_soak() -> anyhow::Result<()> {
    run(Settings::from_env(200, Duration::from_secs(30 * 60), Ranges::FULL, 40)).await
}
