//! A stateful connection whose server left its keeper for another (the first was cut off from it) has two copies
//! for a while: the first keeper's is stale. When the server dies, only the fresher copy may become the
//! connection (chaos defect 20, `tests/cli/chaos/README.md`; docs/semantics.md, "A node's death and its stateful
//! connections"): before, both keepers took it over, its group counted it twice until the stale one's reconnect
//! window ended, and a reconnect could resume the stale one.
//!
//! Four in-process nodes of the demo hub; a stateful client on node 4, in group `g`. Its keeper is cut off from
//! the others (gossip and links) until node 4 declared it dead and sent its copy to another keeper. Then either
//! the cut heals first, and node 4 tells the first keeper to drop its copy, or node 4 is killed first, and the
//! first keeper, back in view, learns from the second that its copy is stale (`Frame::Took` in
//! `src/node/http/keeping/wire.rs`). Either way the client resumes through a survivor, counted once in its group.
//! Everything runs on 127.0.0.1; every wait has a deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::error::Error;
use std::time::Duration;

use hubmesh::demo::demo_hub;
use hubmesh::testing::client::Protocol;
use hubmesh::testing::TestCluster;
use serde_json::json;
use tokio::time::{timeout, Instant};

#[path = "common/node_reads.rs"]
mod node_reads;
#[path = "common/stateful_client.rs"]
mod stateful_client;

use node_reads::{init_tracing, live_seen_by, metric_total};
use stateful_client::StatefulClient;

type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

const SERVER: usize = 3;

/// The cut heals before the server dies: the server tells its first keeper to drop the copy it left there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keeper_left_for_another_drops_its_copy_when_back_in_view() -> TestResult {
    left_keeper(false).await
}

/// The server dies while its first keeper is cut off: back in view, that keeper takes over its stale copy or
/// learns first that a fresher one was taken over, and in the end the connection runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_copy_is_not_taken_over_beside_the_fresh_one() -> TestResult {
    left_keeper(true).await
}

/// Waits (until `deadline`) for `what` to hold, polling every 20 ms.
async fn wait_for<F, Fut>(deadline: Instant, about: &str, mut what: F) -> TestResult
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = TestResult<bool>>,
{
    while !what().await? {
        if Instant::now() >= deadline {
            return Err(format!("timed out waiting: {about}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// The nodes among `indexes` that keep one copy.
async fn keepers(urls: &[String], indexes: impl Iterator<Item = usize>) -> TestResult<Vec<usize>> {
    let mut keepers = Vec::new();
    for index in indexes {
        if metric_total(&urls[index..=index], "hubmesh_kept_connections").await? == 1 {
            keepers.push(index);
        }
    }
    Ok(keepers)
}

async fn left_keeper(kill_during_cut: bool) -> TestResult {
    init_tracing();
    timeout(Duration::from_secs(120), async {
        let mut cluster = TestCluster::start(4, || vec![demo_hub()]).await?;
        cluster.wait_for_members(Duration::from_secs(10)).await?;
        let urls: Vec<String> = (0..4).filter_map(|index| cluster.url(index)).collect();
        let hub = |index: usize| format!("{}/hub", urls[index]);
        let (mut client, token, _) = StatefulClient::joined(&hub(SERVER), Protocol::Json, "g").await?;

        let deadline = Instant::now() + Duration::from_secs(20);
        let kept_by = |index: usize| {
            let url = urls[index].clone();
            async move { metric_total(&[url], "hubmesh_kept_connections").await }
        };
        // Its first keeper.
        let first = loop {
            let keepers = keepers(&urls, 0..SERVER).await?;
            if let [keeper] = keepers[..] {
                break keeper;
            }
            assert!(
                Instant::now() < deadline,
                "no single keeper holds the connection: {keepers:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let others: Vec<usize> = (0..4).filter(|index| *index != first).collect();
        let survivors: Vec<usize> = (0..SERVER).collect();
        let second_candidates: Vec<usize> = survivors.iter().copied().filter(|index| *index != first).collect();
        println!("node {} keeps it first", first + 1);

        cluster.partition(&[first], &others);
        wait_for(deadline, "the server declares its first keeper dead", || {
            let url = urls[SERVER].clone();
            async move { Ok(live_seen_by(&url).await? == 3) }
        })
        .await?;
        // The whole copy goes to a second keeper; the first still holds its own, now stale.
        let second = loop {
            if let [keeper] = keepers(&urls, second_candidates.iter().copied()).await?[..] {
                break keeper;
            }
            assert!(Instant::now() < deadline, "no second keeper holds the copy");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(kept_by(first).await?, 1, "the first keeper's copy went before the heal");
        println!("node {} keeps it second", second + 1);

        let taken_over = |indexes: Vec<usize>| {
            let urls: Vec<String> = indexes.iter().map(|index| urls[*index].clone()).collect();
            async move { metric_total(&urls, "hubmesh_connections_taken_over_total").await }
        };
        if kill_during_cut {
            cluster.kill(SERVER).await;
            wait_for(deadline, "the second keeper takes the connection over", || {
                let taken_over = taken_over(vec![second]);
                async move { Ok(taken_over.await? == 1) }
            })
            .await?;
            cluster.heal();
            wait_for(deadline, "the first keeper is back in every survivor's view", || {
                let urls: Vec<String> = survivors.iter().map(|index| urls[*index].clone()).collect();
                async move {
                    for url in &urls {
                        if live_seen_by(url).await? != 3 {
                            return Ok(false);
                        }
                    }
                    Ok(true)
                }
            })
            .await?;
            wait_for(deadline, "the first keeper learns its copy is stale", || {
                let url = urls[first].clone();
                async move { Ok(metric_total(&[url], "hubmesh_keeping_stale_total").await? >= 1) }
            })
            .await?;
            assert_eq!(kept_by(first).await?, 0, "the stale copy is still kept");
        } else {
            cluster.heal();
            wait_for(deadline, "the server tells the first keeper to drop its copy", || {
                let kept_by = &kept_by;
                async move { Ok(kept_by(first).await? == 0) }
            })
            .await?;
            assert_eq!(kept_by(second).await?, 1, "the second keeper's copy went too");
            cluster.kill(SERVER).await;
            wait_for(deadline, "the second keeper takes the connection over", || {
                let taken_over = taken_over(vec![second]);
                async move { Ok(taken_over.await? == 1) }
            })
            .await?;
        }

        // It resumes through the survivors, and its group counts it once.
        let mut attempt = 0;
        loop {
            let through = hub(survivors[attempt % survivors.len()]);
            match client.reconnect(&format!("{through}?id={token}"), 2).await {
                Ok(()) => break,
                Err(error) => {
                    assert!(Instant::now() < deadline, "not resumable: {error}");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
        let mut counts = Vec::new();
        let count_deadline = Instant::now() + Duration::from_secs(5);
        for ask in 2..50 {
            let id = ask.to_string();
            client
                .raw
                .send_invocation_with_id(&id, "GroupCount", json!(["g"]))
                .await?;
            let count = loop {
                let message = client.read().await?;
                if message["invocationId"] == json!(id) {
                    break message["result"].clone();
                }
            };
            counts.push(count.clone());
            if count == json!(1) || Instant::now() >= count_deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(counts.last(), Some(&json!(1)), "its group counts it {counts:?}");
        let taken = taken_over(survivors.clone()).await?;
        let stale = metric_total(&urls[..SERVER], "hubmesh_keeping_stale_total").await?;
        println!("taken over: {taken}; stale copies dropped or take-overs undone: {stale}; counts asked: {counts:?}");
        assert_eq!(taken_over(vec![second]).await?, 1);
        Ok::<_, Box<dyn Error + Send + Sync>>(())
    })
    .await?
}
