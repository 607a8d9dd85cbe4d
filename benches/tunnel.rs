//! What a stateful connection that resumed on another node costs per message (docs/semantics.md, "Any node"):
//! the client's socket is on one node and its connection stays on the node that ran it, so every message crosses a
//! link (a tunnel). Three in-process nodes (`TestCluster`: real HTTP and WebSockets for the client, in-memory links
//! that carry the same encoded frames real links do), the demo hub, one stateful JSON client in group `g`, and
//! `MESSAGES` group sends from the node that runs the connection, the client acking every 100 as the official
//! client does. Two cases, each run `RUNS` times:
//!
//! * `direct`: the client's socket is on the node that runs its connection;
//! * `tunneled`: its socket dropped and it came back to another node, which carries it to that node.
//!
//! Reported: the process's CPU time (user + system, from `/proc/self/stat`, 10 ms ticks) per message, median of the
//! runs, and the ratio tunneled / direct. The client runs in the same process, so its decoding is in both figures.
//!
//! `cargo bench --bench tunnel`

use std::time::{Duration, Instant};

use hubmesh::demo::demo_hub;
use hubmesh::testing::client::{negotiate, TestClient};
use hubmesh::testing::TestCluster;
use serde_json::{json, Value};

type BenchResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const MESSAGES: u64 = 20_000;
const RUNS: usize = 3;
const BATCH: u64 = 200;
const ACK_ALL: u64 = 1 << 40;

/// User + system CPU of this process, in seconds (Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses and may contain spaces.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Reads until `count` `msg` invocations arrived, acking every 100 trackable records, and at the end (bounded by
/// time).
async fn receive(client: &mut TestClient, count: u64) -> BenchResult<u64> {
    let mut received = 0;
    let mut trackable = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while received < count {
        if Instant::now() > deadline {
            return Err(format!("only {received} of {count} messages arrived").into());
        }
        let record: Value = client.record().await?.value;
        if matches!(record["type"].as_u64(), Some(1..=5)) {
            trackable += 1;
            if trackable.is_multiple_of(100) {
                // Everything received so far (the bench does not track sequence ids across the resume: an Ack
                // beyond the last id acks all).
                client.send_ack(ACK_ALL).await?;
            }
        }
        if record["type"] == json!(1) && record["target"] == json!("msg") {
            received += 1;
        }
    }
    client.send_ack(ACK_ALL).await?;
    Ok(received)
}

async fn run(tunneled: bool) -> BenchResult<f64> {
    let cluster = TestCluster::start(3, || vec![demo_hub()]).await?;
    cluster.wait_for_members(Duration::from_secs(10)).await?;
    let url = |index: usize| -> BenchResult<String> { Ok(format!("{}/hub", cluster.url(index).ok_or("no url")?)) };
    let body = negotiate(&url(0)?, "&useStatefulReconnect=true", &[]).await?;
    let token = body["connectionToken"].as_str().ok_or("no token")?.to_owned();
    let mut client = TestClient::to(&format!("{}?id={token}", url(0)?))
        .handshake_version(2)
        .connect()
        .await?;
    client.invoke_ok("JoinGroup", json!(["g"])).await?;
    if tunneled {
        // Drop the socket; come back to node 2, which carries it to node 1.
        client.reconnect(&format!("{}?id={token}", url(1)?)).await?;
        client.send_sequence(2).await?;
        // The server resumes with a Sequence message (then replays what was not acked).
        let mut resumed = false;
        for _ in 0..100 {
            if client.record().await?.value["type"] == json!(9) {
                resumed = true;
                break;
            }
        }
        if !resumed {
            return Err("no Sequence message after the reconnect".into());
        }
    }
    let context = cluster.context(0, "demo").ok_or("no hub context")?;
    let started = cpu_seconds();
    // In batches the client takes as they come, so that no queue fills (a slow consumer would be closed).
    let mut sent = 0;
    while sent < MESSAGES {
        let batch = BATCH.min(MESSAGES - sent);
        for n in sent..sent + batch {
            context.clients().group("g").send("msg", (n,))?;
        }
        receive(&mut client, batch).await?;
        sent += batch;
    }
    let spent = cpu_seconds() - started;
    cluster.stop().await;
    Ok(spent / MESSAGES as f64)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn main() -> BenchResult {
    // `cargo test --benches` runs bench targets with `--bench` absent: nothing to measure then.
    if !std::env::args().any(|arg| arg == "--bench") {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut direct = Vec::new();
    let mut tunneled = Vec::new();
    for _ in 0..RUNS {
        direct.push(runtime.block_on(run(false))?);
        tunneled.push(runtime.block_on(run(true))?);
    }
    let (direct, tunneled) = (median(direct), median(tunneled));
    println!(
        "tunnel: {MESSAGES} group messages to one stateful client, median of {RUNS} runs: direct {:.2} µs CPU per \
         message, tunneled {:.2} µs, ratio {:.2}",
        direct * 1e6,
        tunneled * 1e6,
        tunneled / direct
    );
    Ok(())
}
