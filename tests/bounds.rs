//! Hostile clients against the bounds on what one client's input can make a node hold (docs/semantics.md#bounds):
//! queued blocking invocations, open streams in each direction, client results the server stopped waiting for,
//! and negotiated tokens. Each test drives a raw [`TestClient`] past a bound (small limits), checks the policy
//! (backpressure, a clear Completion error, or forgetting the oldest), and checks that a well-behaved client on the same node is
//! unaffected. The last test checks the bounds' configuration keys.
//!
//! Every test is bounded by `tokio::time::timeout`, every read by a step timeout, and every loop by a count.

use std::error::Error;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hubmesh::testing::client::{negotiate, Outcome, Protocol, Record, TestClient};
use hubmesh::{BoundsHit, Caller, CancellationToken, ClientStream, Hub, HubError, Limits, Node, NodeHandle, Streamed};
use serde_json::{json, Value};
use tokio::time::timeout;

type BoxError = Box<dyn Error + Send + Sync>;
type TestResult<T = ()> = Result<T, BoxError>;

const TEST_TIMEOUT: Duration = Duration::from_secs(30);
const HUB_PATH: &str = "/boundsHub";
/// How long a hostile client's own client results are awaited by the hub.
const CLIENT_RESULT_TIMEOUT: Duration = Duration::from_millis(100);

async fn echo(text: String) -> String {
    text
}

/// Answers after a while: the invocations behind it queue.
async fn slow(millis: u64) -> u64 {
    tokio::time::sleep(Duration::from_millis(millis)).await;
    millis
}

/// Never answers.
async fn hang() {
    std::future::pending::<()>().await;
}

/// A stream that never yields until cancelled.
async fn watched(_cancel: CancellationToken) -> Streamed {
    Streamed::new(futures_util::stream::pending::<u64>())
}

async fn sum(mut items: ClientStream<i64>) -> Result<i64, HubError> {
    let mut total = 0;
    while let Some(item) = items.next().await {
        total += item?;
    }
    Ok(total)
}

async fn ask_client(caller: Caller, question: String) -> Result<String, HubError> {
    caller.clients().caller().invoke::<String, _>("Ask", (question,)).await
}

fn bounds_hub() -> Hub {
    Hub::new("bounds")
        .path(HUB_PATH)
        .method("Echo", echo)
        .method("Slow", slow)
        .method("Hang", hang)
        .method("Watched", watched)
        .method("Sum", sum)
        .method("AskClient", ask_client)
        .client_result_timeout(CLIENT_RESULT_TIMEOUT)
}

/// Starts a node with `limits`, runs `body` against it (with the node's counters of bounds hit) under
/// [`TEST_TIMEOUT`], stops the node.
async fn on_node<F, Fut>(limits: Limits, body: F) -> TestResult
where
    F: FnOnce(NodeHandle, Arc<BoundsHit>) -> Fut,
    Fut: Future<Output = TestResult<NodeHandle>>,
{
    let hit = limits.bounds_hit.clone();
    let node = Node::builder()
        .hub(bounds_hub())
        .listen("127.0.0.1:0")
        .limits(Limits {
            keep_alive: Duration::from_secs(60),
            client_timeout: Duration::from_secs(120),
            ..limits
        })
        .start()
        .await?;
    let node = timeout(TEST_TIMEOUT, body(node, hit))
        .await
        .map_err(|_| format!("the test did not finish within {TEST_TIMEOUT:?}"))??;
    let _ = timeout(Duration::from_secs(10), node.stop()).await;
    Ok(())
}

fn ws_url(node: &NodeHandle) -> String {
    format!("ws://{}{HUB_PATH}", node.local_addr())
}

async fn client(node: &NodeHandle, protocol: Protocol) -> TestResult<TestClient> {
    Ok(TestClient::to(&ws_url(node)).protocol(protocol).connect().await?)
}

/// The error of a Completion record of invocation `id`, which must be the next record.
async fn completion_error(client: &mut TestClient, id: &str) -> TestResult<String> {
    let record = client.completion(id).await?;
    Ok(error_of(&record).ok_or_else(|| format!("expected an error, got {}", record.value))?)
}

fn error_of(record: &Record) -> Option<String> {
    record.value["error"].as_str().map(str::to_owned)
}

/// Nothing but Pings arrives within `within`.
async fn quiet(client: &mut TestClient, within: Duration) -> TestResult {
    match client.record_within(within).await? {
        None => Ok(()),
        Some(record) => Err(format!("expected nothing, got {}", record.value).into()),
    }
}

#[tokio::test]
async fn a_client_that_queues_past_the_bound_is_not_read_until_it_drains() -> TestResult {
    let limits = Limits {
        max_queued_invocations: 4,
        ..Limits::default()
    };
    on_node(limits, |node, hit| async move {
        for protocol in Protocol::ALL {
            let mut good = client(&node, protocol).await?;
            // Far past the bound: a slow call, then twenty behind it, each in a frame of its own. The connection
            // stops reading while four wait, and reads on as they drain: every call is answered and nothing is closed.
            let mut busy = client(&node, protocol).await?;
            busy.send_frame(protocol.invocation(Some("0"), "Slow", json!([300]), &[]))
                .await?;
            for id in 1..=20 {
                busy.send_frame(protocol.invocation(Some(&id.to_string()), "Echo", json!([format!("e{id}")]), &[]))
                    .await?;
            }
            // Meanwhile another client on the node is served at once.
            good.assert_healthy().await?;
            for id in 0..=20 {
                let record = busy.completion(&id.to_string()).await?;
                if error_of(&record).is_some() {
                    return Err(format!("[{}] call {id} failed: {}", protocol.name(), record.value).into());
                }
            }
            busy.assert_healthy().await?;
        }
        if hit.queued_invocations.load(Ordering::Relaxed) < 2 {
            return Err("the backpressure was not counted".into());
        }
        Ok(node)
    })
    .await
}

#[tokio::test]
async fn streams_past_the_bound_or_with_an_id_in_use_are_refused() -> TestResult {
    let limits = Limits {
        max_streams: 3,
        ..Limits::default()
    };
    on_node(limits, |node, hit| async move {
        for protocol in Protocol::ALL {
            let name = protocol.name();
            let mut good = client(&node, protocol).await?;
            let mut hostile = client(&node, protocol).await?;

            // Server-to-client streams: three open, the fourth refused, a reused id refused.
            for id in ["s1", "s2", "s3"] {
                hostile.send_stream_invocation(id, "Watched", json!([])).await?;
            }
            quiet(&mut hostile, Duration::from_millis(200)).await?;
            hostile.send_stream_invocation("s4", "Watched", json!([])).await?;
            let error = completion_error(&mut hostile, "s4").await?;
            if !error.contains("Too many server-to-client streams") {
                return Err(format!("[{name}] a fourth stream: {error}").into());
            }
            hostile.send_stream_invocation("s1", "Watched", json!([])).await?;
            let error = completion_error(&mut hostile, "s1").await?;
            if !error.contains("already in use") {
                return Err(format!("[{name}] a reused stream id: {error}").into());
            }
            // A cancelled stream makes room again, and its id is free as soon as its Completion arrives.
            hostile.send_frame(protocol.cancel("s1")).await?;
            hostile.completion("s1").await?;
            hostile.send_stream_invocation("s1", "Watched", json!([])).await?;
            quiet(&mut hostile, Duration::from_millis(200)).await?;

            // Client-to-server streams: more ids than the bound in one invocation, then an id in use.
            let many = protocol.invocation(Some("u1"), "Sum", json!([]), &["a", "b", "c", "d"]);
            hostile.send_frame(many).await?;
            let error = completion_error(&mut hostile, "u1").await?;
            if !error.contains("Too many client-to-server streams") {
                return Err(format!("[{name}] four uploads: {error}").into());
            }
            hostile
                .send_frame(protocol.invocation(Some("u2"), "Sum", json!([]), &["a"]))
                .await?;
            hostile
                .send_frame(protocol.invocation(Some("u3"), "Sum", json!([]), &["a"]))
                .await?;
            let error = completion_error(&mut hostile, "u3").await?;
            if !error.contains("already in use") {
                return Err(format!("[{name}] a reused upload id: {error}").into());
            }
            let mut items = protocol.stream_item("a", json!(2));
            items.extend(protocol.stream_item("a", json!(3)));
            items.extend(protocol.completion("a", Outcome::Void));
            hostile.send_frame(items).await?;
            let record = hostile.completion("u2").await?;
            if record.value["result"] != json!(5) {
                return Err(format!("[{name}] the upload within the bound: {}", record.value).into());
            }
            hostile.assert_healthy().await?;
            good.assert_healthy().await?;
            let mut ticks = client(&node, protocol).await?;
            ticks.send_stream_invocation("t", "Watched", json!([])).await?;
            quiet(&mut ticks, Duration::from_millis(100)).await?;
        }
        if hit.streams.load(Ordering::Relaxed) < 8 {
            return Err("the refusals were not counted".into());
        }
        Ok(node)
    })
    .await
}

#[tokio::test]
async fn client_results_the_server_stopped_waiting_for_are_forgotten() -> TestResult {
    on_node(Limits::default(), |node, hit| async move {
        let mut good = client(&node, Protocol::Json).await?;
        good.answer_client_results("Ask", json!("yes"));
        // Never answers: each call times out on the server, and its entry must not stay.
        let mut hostile = client(&node, Protocol::Json).await?;
        for round in 0..20 {
            let id = format!("q{round}");
            hostile.send_invocation_with_id(&id, "AskClient", json!(["?"])).await?;
            let Some(ask) = hostile.next_invocation_of("Ask", Duration::from_secs(5)).await? else {
                return Err("the server did not ask".into());
            };
            if ask.id().is_none() {
                return Err(format!("a client-result Invocation without an id: {}", ask.value).into());
            }
            let error = completion_error(&mut hostile, &id).await?;
            if error.is_empty() {
                return Err("a timed-out client result without an error".into());
            }
        }
        if hit.abandoned_results.load(Ordering::Relaxed) < 10 {
            return Err(format!(
                "only {} timed-out client results were forgotten",
                hit.abandoned_results.load(Ordering::Relaxed)
            )
            .into());
        }
        hostile.assert_healthy().await?;
        let answer = good.invoke_ok("AskClient", json!(["?"])).await?;
        if answer != json!("yes") {
            return Err(format!("the good client's client result: {answer}").into());
        }
        Ok(node)
    })
    .await
}

#[tokio::test]
async fn a_flood_of_negotiations_forgets_the_oldest_unused_tokens() -> TestResult {
    let limits = Limits {
        max_pending_negotiations: 10,
        ..Limits::default()
    };
    on_node(limits, |node, hit| async move {
        let url = ws_url(&node);
        let mut good = TestClient::to(&url).negotiate().await?.connect().await?;
        let token_of = |body: Value| -> TestResult<String> {
            Ok(body["connectionToken"]
                .as_str()
                .ok_or_else(|| format!("negotiate gave no token: {body}"))?
                .to_owned())
        };
        let first = token_of(negotiate(&url, "", &[]).await?)?;
        let mut last = String::new();
        for _ in 0..30 {
            last = token_of(negotiate(&url, "", &[]).await?)?;
        }
        let status = TestClient::to(&format!("{url}?id={first}")).refused_status().await?;
        if status != 404 {
            return Err(format!("the oldest unused token got {status}, expected 404").into());
        }
        let mut newest = TestClient::to(&format!("{url}?id={last}")).connect().await?;
        newest.assert_healthy().await?;
        good.assert_healthy().await?;
        // A client that negotiates and connects right away is unaffected by the flood.
        let mut fresh = TestClient::to(&url).negotiate().await?.connect().await?;
        fresh.assert_healthy().await?;
        if hit.negotiations.load(Ordering::Relaxed) < 20 {
            return Err("the forgotten tokens were not counted".into());
        }
        Ok(node)
    })
    .await
}

#[test]
fn the_bounds_are_configured_by_file_and_environment() -> TestResult {
    use hubmesh_cli::config::{NodeConfig, Overrides};
    let env = [
        ("HUBMESH_LIMITS__MAX_QUEUED_INVOCATIONS", "7"),
        ("HUBMESH_LIMITS__MAX_STREAMS", "9"),
        ("HUBMESH_LIMITS__MAX_PENDING_NEGOTIATIONS", "11"),
    ];
    let settings = NodeConfig::load_with_env(None, env.iter().copied(), &Overrides::new())?.node_settings()?;
    let limits = &settings.limits;
    if (
        limits.max_queued_invocations,
        limits.max_streams,
        limits.max_pending_negotiations,
    ) != (7, 9, 11)
    {
        return Err(format!("the environment was not applied: {limits:?}").into());
    }
    let zero = [
        ("HUBMESH_LIMITS__MAX_STREAMS", "0"),
        ("HUBMESH_LIMITS__MAX_PENDING_NEGOTIATIONS", "0"),
    ];
    let Err(error) = NodeConfig::load_with_env(None, zero.iter().copied(), &Overrides::new())?.node_settings() else {
        return Err("zero bounds were accepted".into());
    };
    let keys: Vec<&str> = error.settings().iter().map(|error| error.key.as_str()).collect();
    if keys != ["limits.max_streams", "limits.max_pending_negotiations"] {
        return Err(format!("unexpected errors: {error}").into());
    }
    Ok(())
}
