//! `hubmesh bench churn`: connections moving between groups at a target rate of joins, one confirmed call
//! outstanding each (leave the previous group, join the next); then every node is asked for every group's members
//! (`GroupMembers`) and must list exactly the connections the load tool left in it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};

use super::members::{duration_micros, Latencies};
use super::readings::{cpu_summary, extend, per_cpu_second, round, round3, CpuMeter};
use super::setup::{check_clients, seconds, Setup};
use super::tasks::{join_all, Progress};
use crate::bench::client::{Client, PING_EVERY};
use crate::bench::{BenchError, ChurnArgs, Report, MAX_SECONDS};

/// The most groups a run moves connections between (each is asked of every node at the end).
const MAX_GROUPS: usize = 100_000;
/// How many disagreeing groups the report names.
const SHOWN: usize = 5;

/// The schedule every connection follows.
struct Schedule {
    clients: usize,
    groups: usize,
    /// One connection's interval between joins.
    every: Duration,
    started: Instant,
    deadline: Instant,
}

impl Schedule {
    /// The group connection `index` joins the `k`th time: never the one it just left (with two groups or more).
    fn group(&self, index: usize, k: u64) -> usize {
        let step = 1 + index % (self.groups - 1).max(1);
        ((index as u64 + k * step as u64) % self.groups as u64) as usize
    }
}

/// What the connections share.
struct Shared {
    schedule: Schedule,
    prefix: String,
    joins: Latencies,
    leaves: Latencies,
    progress: Progress,
}

/// `hubmesh bench churn`.
pub(in crate::bench) async fn churn(args: &ChurnArgs) -> Result<Report, BenchError> {
    let setup = Setup::new(&args.common)?;
    check_clients(args.clients)?;
    if !(1..=MAX_GROUPS).contains(&args.groups) {
        return Err(BenchError::Options(format!(
            "--groups must be between 1 and {MAX_GROUPS}"
        )));
    }
    if !(args.rate.is_finite() && args.rate > 0.0 && args.rate / args.clients as f64 >= 0.01) {
        return Err(BenchError::Options(
            "--rate must be at least 0.01 joins per second per client".to_owned(),
        ));
    }
    let run_for = seconds("--seconds", args.seconds, MAX_SECONDS)?;
    let prefix_json = serde_json::to_string(&args.prefix).map_err(|error| BenchError::Options(error.to_string()))?;
    if prefix_json.len() != args.prefix.len() + 2 {
        return Err(BenchError::Options("--prefix must need no escaping in JSON".to_owned()));
    }

    let clients = setup.open_clients(args.clients, |_| None).await?;
    let clients: Vec<(Client, String)> = futures_util::stream::iter(clients)
        .map(|mut client| async move {
            let id = connection_id(&mut client).await?;
            Ok::<_, BenchError>((client, id))
        })
        .buffered(64)
        .try_collect()
        .await?;
    // One more connection per URL, to ask that node for the groups' members at the end.
    let mut checkers = Vec::new();
    for url_index in 0..setup.urls.len() {
        checkers.push(setup.open_client(url_index).await?);
    }

    let cpu = CpuMeter::start(&setup.pids)?;
    let started = Instant::now();
    let shared = Arc::new(Shared {
        schedule: Schedule {
            clients: args.clients,
            groups: args.groups,
            every: Duration::from_secs_f64(args.clients as f64 / args.rate),
            started,
            deadline: started + run_for,
        },
        prefix: args.prefix.clone(),
        joins: Latencies::new(),
        leaves: Latencies::new(),
        progress: Progress::default(),
    });
    let mut tasks = JoinSet::new();
    for (index, (client, id)) in clients.into_iter().enumerate() {
        let shared = shared.clone();
        tasks.spawn(async move {
            let result = move_around(index, client, &shared).await;
            if result.is_err() {
                shared.progress.failed.fetch_add(1, Ordering::Relaxed);
            }
            result.map(|(client, group)| (client, id, group))
        });
    }
    let finished = join_all(tasks).await?;
    let churn_seconds = started.elapsed().as_secs_f64();
    let (server_cpu, own_cpu) = cpu.stop()?;

    // Where the load tool left each connection, against what each node lists.
    let mut expected: HashMap<usize, Vec<String>> = HashMap::new();
    let mut open = Vec::with_capacity(finished.len());
    for (client, id, group) in finished {
        if let Some(group) = group {
            expected.entry(group).or_default().push(id);
        }
        open.push(client);
    }
    for members in expected.values_mut() {
        members.sort_unstable();
    }
    let check_started = Instant::now();
    let listed = futures_util::future::try_join_all(
        checkers
            .iter_mut()
            .map(|checker| list_all(checker, &args.prefix, args.groups)),
    )
    .await?;
    let check_seconds = check_started.elapsed().as_secs_f64();
    let mut disagreeing = Vec::new();
    for group in 0..args.groups {
        let want = expected.get(&group).map_or(&[][..], Vec::as_slice);
        if listed
            .iter()
            .any(|lists| lists.get(group).map(Vec::as_slice) != Some(want))
        {
            disagreeing.push(group);
        }
    }
    let mut closing = JoinSet::new();
    for client in open.into_iter().chain(checkers) {
        closing.spawn(client.close());
    }
    closing.join_all().await;

    let joins = shared.joins.merged();
    let leaves = shared.leaves.merged();
    let join_count = joins.count();
    let leave_count = leaves.count();
    let joins_per_sec = round(join_count as f64 / churn_seconds);
    let per_cpu = per_cpu_second(join_count, server_cpu);
    let calls_per_cpu = per_cpu_second(join_count + leave_count, server_cpu);
    let mut parameters = setup.parameters();
    extend(
        &mut parameters,
        json!({
            "clients": args.clients,
            "groups": args.groups,
            "rate": args.rate,
            "seconds": args.seconds,
            "prefix": args.prefix,
        }),
    );
    let listed_per_node: Vec<usize> = listed.iter().map(|lists| lists.iter().map(Vec::len).sum()).collect();
    let results = json!({
        "joins": join_count,
        "leaves": leave_count,
        "churn_seconds": round3(churn_seconds),
        "joins_per_sec": joins_per_sec,
        "join_latency": joins.json(),
        "leave_latency": leaves.json(),
        "server_cpu_seconds": server_cpu.map(round3),
        "joins_per_server_cpu_second": per_cpu,
        "joins_and_leaves_per_server_cpu_second": calls_per_cpu,
        "bench_cpu_seconds": own_cpu.map(round3),
        "members_expected": expected.values().map(Vec::len).sum::<usize>(),
        "members_listed_per_node": listed_per_node,
        "groups_checked": args.groups,
        "groups_disagreeing": disagreeing.len(),
        "all_nodes_agree": disagreeing.is_empty(),
        "check_seconds": round3(check_seconds),
    });
    let agreement = if disagreeing.is_empty() {
        format!(
            "all {} nodes list the expected members of all {} groups",
            listed.len(),
            args.groups
        )
    } else {
        let shown: Vec<String> = disagreeing
            .iter()
            .take(SHOWN)
            .map(|group| format!("{}-{group}", args.prefix))
            .collect();
        format!(
            "{} of {} groups listed differently by some node (e.g. {})",
            disagreeing.len(),
            args.groups,
            shown.join(", ")
        )
    };
    let summary = format!(
        "churn: {} connections over {} URLs moving between {} groups, target {} joins/s for {} s\n  {join_count} joins \
         ({joins_per_sec}/s), {leave_count} leaves; join confirmed in {}\n  leave confirmed in {}\n  {}\n  {agreement}",
        args.clients,
        setup.urls.len(),
        args.groups,
        args.rate,
        args.seconds,
        joins.summary(),
        leaves.summary(),
        cpu_summary(server_cpu, per_cpu, "joins", own_cpu),
    );
    Ok(Report {
        scenario: "churn",
        parameters,
        results,
        summary,
    })
}

/// The connection id the hub gave this client (`WhoAmI`).
async fn connection_id(client: &mut Client) -> Result<String, BenchError> {
    let answer = client.invoke("WhoAmI", "", "asking WhoAmI").await?;
    serde_json::from_str(&answer).map_err(|error| BenchError::Task(format!("WhoAmI answered {answer}: {error}")))
}

/// One connection on schedule until the deadline: leave the last group, join the next, each confirmed and timed.
/// Returns the client and the group it is in at the end.
async fn move_around(index: usize, mut client: Client, shared: &Shared) -> Result<(Client, Option<usize>), BenchError> {
    let schedule = &shared.schedule;
    let first = schedule.started + schedule.every.mul_f64(index as f64 / schedule.clients as f64);
    let mut current: Option<usize> = None;
    let mut k: u64 = 0;
    loop {
        let due = first + schedule.every.saturating_mul(u32::try_from(k).unwrap_or(u32::MAX));
        if due >= schedule.deadline {
            break;
        }
        // Long waits ping, well inside the server's client timeout.
        while Instant::now() + PING_EVERY < due {
            sleep_until(Instant::now() + PING_EVERY).await;
            client.ping().await?;
        }
        sleep_until(due).await;
        if let Some(group) = current.take() {
            let began = Instant::now();
            client
                .invoke("LeaveGroup", &group_json(&shared.prefix, group), "leaving a group")
                .await?;
            shared.leaves.record(index, duration_micros(began.elapsed()));
        }
        let group = schedule.group(index, k);
        let began = Instant::now();
        client.join(&group_json(&shared.prefix, group)).await?;
        shared.joins.record(index, duration_micros(began.elapsed()));
        shared.progress.delivered.fetch_add(1, Ordering::Relaxed);
        current = Some(group);
        k += 1;
    }
    Ok((client, current))
}

fn group_json(prefix: &str, group: usize) -> String {
    format!("\"{prefix}-{group}\"")
}

/// Every group's members as the checker's node lists them, in group order.
async fn list_all(checker: &mut Client, prefix: &str, groups: usize) -> Result<Vec<Vec<String>>, BenchError> {
    let mut lists = Vec::with_capacity(groups);
    for group in 0..groups {
        let answer = checker
            .invoke("GroupMembers", &group_json(prefix, group), "asking GroupMembers")
            .await?;
        let members: Vec<String> = serde_json::from_str(&answer)
            .map_err(|error| BenchError::Task(format!("GroupMembers answered {answer}: {error}")))?;
        lists.push(members);
    }
    Ok(lists)
}
