//! The `ticker` example's hub and price feed (`examples/ticker/prices.rs`, the same file the example runs) in an
//! in-process cluster: the feed runs on a backend node that serves no clients, and clients on the other nodes
//! receive the prices of the symbols they subscribed to, in the order the feed sent them, and only those; after
//! unsubscribing, none. The example itself also starts with one command, its front nodes serve the hub, and the
//! page they serve shows the prices in headless Chromium.

#[path = "common/chromium.rs"]
mod chromium;
#[path = "common/example.rs"]
mod example;
#[path = "common/npm.rs"]
mod npm;
#[path = "../examples/ticker/prices.rs"]
#[allow(dead_code)]
mod prices;
#[path = "common/process.rs"]
mod process;

use std::error::Error;
use std::time::Duration;

use hubmesh::testing::{TestClient, TestCluster};
use hubmesh::CancellationToken;
use serde_json::{json, Value};

type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

const FORM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a client waits for its next price.
const PRICE_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on the page driver; `ticker-example.mjs` gives up by itself after 90 s.
const PAGE_TIMEOUT: Duration = Duration::from_secs(120);
/// How many prices each client checks.
const PRICES: usize = 20;

/// The `(symbol, sequence, price)` of the next price `client` receives.
async fn next_price(client: &mut TestClient) -> TestResult<(String, u64, f64)> {
    let record = client
        .next_invocation_of(prices::PRICE, PRICE_TIMEOUT)
        .await?
        .ok_or("no price within 10 s")?;
    let arguments = &record.value["arguments"];
    let symbol = arguments[0].as_str().ok_or("no symbol")?.to_owned();
    let sequence = arguments[1].as_u64().ok_or("no sequence")?;
    let price = arguments[2].as_f64().ok_or("no price")?;
    Ok((symbol, sequence, price))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_other_nodes_receive_their_symbols_prices_in_order_from_a_backend() -> TestResult {
    let mut cluster = TestCluster::start(2, || vec![prices::ticker_hub()]).await?;
    let backend = cluster.add_backend("ticker").await?;
    cluster.wait_for_members(FORM_TIMEOUT).await?;
    let context = cluster
        .context(backend, "ticker")
        .ok_or("the backend has no ticker context")?;

    let mut acme = TestClient::to(&format!("{}/ticker", cluster.url(0).ok_or("no node-1")?))
        .connect()
        .await?;
    let mut globex = TestClient::to(&format!("{}/ticker", cluster.url(1).ok_or("no node-2")?))
        .connect()
        .await?;
    acme.invoke_ok("Subscribe", json!(["ACME"])).await?;
    globex.invoke_ok("Subscribe", json!(["GLOBEX"])).await?;
    let unknown = acme.invoke("Subscribe", json!(["NOPE"])).await?;
    assert!(unknown["error"].is_string(), "an unknown symbol is refused: {unknown}");

    let stop = CancellationToken::new();
    let feed = tokio::spawn(prices::push_prices(context, Duration::from_millis(20), stop.clone()));
    for (client, symbol) in [(&mut acme, "ACME"), (&mut globex, "GLOBEX")] {
        let mut last: Option<u64> = None;
        for _ in 0..PRICES {
            let (got, sequence, price) = next_price(client).await?;
            assert_eq!(got, symbol, "only the subscribed symbol's prices arrive");
            assert!(price > 0.0, "a price is positive: {price}");
            if let Some(last) = last {
                assert_eq!(sequence, last + 1, "{symbol}'s prices arrive in order, none missing");
            }
            last = Some(sequence);
        }
    }

    // After unsubscribing (and the prices already on their way), no more prices.
    acme.invoke_ok_keeping_others("Unsubscribe", json!(["ACME"])).await?;
    // Bounded: if Unsubscribe did nothing, prices keep coming every 20 ms and the check below fails.
    for _ in 0..50 {
        if acme
            .next_invocation_of(prices::PRICE, Duration::from_millis(300))
            .await?
            .is_none()
        {
            break;
        }
    }
    let after: Option<Value> = acme
        .next_invocation_of(prices::PRICE, Duration::from_millis(500))
        .await?
        .map(|record| record.value);
    assert_eq!(after, None, "no price after Unsubscribe");
    // GLOBEX's subscriber still gets prices.
    next_price(&mut globex).await?;

    stop.cancel();
    let rounds = feed.await?;
    assert!(rounds as usize >= PRICES, "the feed sent {rounds} rounds");
    drop((acme, globex));
    cluster.stop().await;
    Ok(())
}

/// `cargo run --example ticker` starts two front nodes and a backend, a client of a front node gets prices from the
/// backend's feed, and a front node's page shows them in headless Chromium.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ticker_example_runs_with_one_command() -> TestResult {
    let ticker =
        tokio::task::spawn_blocking(|| example::RunningExample::start("ticker").map_err(|error| error.to_string()))
            .await??;
    let fronts = ticker.urls("front");
    assert_eq!(fronts.len(), 2, "two front nodes");
    assert_eq!(ticker.urls("backend").len(), 1, "one backend");
    let mut client = TestClient::to(&format!("{}/ticker", fronts.first().ok_or("no front")?))
        .connect()
        .await?;
    client.invoke_ok("Subscribe", json!(["UMBRELLA"])).await?;
    let (symbol, first, _) = next_price(&mut client).await?;
    let (_, second, _) = next_price(&mut client).await?;
    assert_eq!(symbol, "UMBRELLA");
    assert_eq!(second, first + 1, "prices in order");
    drop(client);

    // The front node's page, in headless Chromium (`tests/browser/ticker-example.mjs`).
    let page_url = fronts.get(1).ok_or("no second front")?.clone();
    let status = tokio::task::spawn_blocking(move || -> Result<_, String> {
        npm::ensure_installed()?;
        example::ensure_chromium().map_err(|error| error.to_string())?;
        example::run_page_driver("ticker-example.mjs", &[("HUBMESH_TICKER_URL", &page_url)], PAGE_TIMEOUT)
            .map_err(|error| error.to_string())
    })
    .await??;
    assert!(
        status.success(),
        "the ticker page driver failed ({status}); see its PASS/FAIL lines above"
    );
    tokio::task::spawn_blocking(move || drop(ticker)).await?;
    Ok(())
}
