//! The `iot` example as a user runs it, `cargo run --example iot`: devices on the two `devices` nodes report
//! readings, and a dashboard on the `dashboard` node that watches a site receives each devices node's summary of
//! that site (count, mean, min, max), and nothing of another site; then `examples/iot/push_alert.py` (Python's
//! standard library, the REST API with a signed token) pushes an alert that reaches the same dashboard. The
//! dashboard node's page shows the summaries and a pushed alert in headless Chromium.

#[path = "common/chromium.rs"]
mod chromium;
#[path = "common/example.rs"]
mod example;
#[path = "common/npm.rs"]
mod npm;
#[path = "common/process.rs"]
mod process;

use std::collections::HashMap;
use std::error::Error;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::time::Duration;

use example::RunningExample;
use hubmesh::testing::TestClient;
use hubmesh::CancellationToken;
use process::{own_process_group, wait_bounded};
use serde_json::json;
use tokio::time::Instant;

type TestResult<T = ()> = Result<T, Box<dyn Error + Send + Sync>>;

/// The example's default REST access key (`examples/iot/main.rs`).
const ACCESS_KEY: &str = "iot-example-access-key";
/// Upper bound on the page driver; `iot-example.mjs` gives up by itself after 90 s.
const PAGE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the summaries may take (the nodes flush every second).
const SUMMARY_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs `examples/iot/push_alert.py <url> <key> plant-a <text>`.
async fn push_alert(url: &str, key: &str, text: &str) -> TestResult<ExitStatus> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/iot/push_alert.py");
    let args = [url.to_owned(), key.to_owned(), "plant-a".to_owned(), text.to_owned()];
    let status = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let mut child = own_process_group(Command::new("python3").arg(script).args(args))
            .spawn()
            .map_err(|error| format!("cannot run python3: {error}"))?;
        wait_bounded(&mut child, Duration::from_secs(30), "push_alert.py").map_err(|error| error.to_string())
    })
    .await??;
    Ok(status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_on_two_nodes_are_summarized_to_a_dashboard_and_python_pushes_an_alert() -> TestResult {
    let iot = tokio::task::spawn_blocking(|| RunningExample::start("iot").map_err(|error| error.to_string())).await??;
    let devices = iot.urls("devices");
    let dashboards = iot.urls("dashboard");
    assert_eq!(
        (devices.len(), dashboards.len()),
        (2, 1),
        "two devices nodes and a dashboard node"
    );
    let dashboard_url = dashboards.first().ok_or("no dashboard node")?.clone();

    let mut dashboard = TestClient::to(&format!("{dashboard_url}/dashboard")).connect().await?;
    dashboard.invoke_ok("Watch", json!(["plant-a"])).await?;
    let mut device_1 = TestClient::to(&format!("{}/devices", devices[0])).connect().await?;
    let mut device_2 = TestClient::to(&format!("{}/devices", devices[1])).connect().await?;
    device_1
        .invoke_ok("Report", json!(["sensor-1", "plant-a", 20.0]))
        .await?;
    device_1
        .invoke_ok("Report", json!(["sensor-2", "plant-a", 22.0]))
        .await?;
    device_1
        .invoke_ok("Report", json!(["sensor-3", "plant-b", 99.0]))
        .await?;
    device_2
        .invoke_ok("Report", json!(["sensor-4", "plant-a", 30.0]))
        .await?;
    let refused = device_2.invoke("Report", json!(["sensor-4", "", 1.0])).await?;
    assert!(refused["error"].is_string(), "an empty site is refused: {refused}");

    // Each devices node's summary of plant-a, by node (a node may split its readings over two intervals).
    let mut by_node: HashMap<String, (u64, f64, f64, f64)> = HashMap::new();
    let deadline = Instant::now() + SUMMARY_TIMEOUT;
    while by_node.values().map(|summary| summary.0).sum::<u64>() < 3 {
        let left = deadline.saturating_duration_since(Instant::now());
        let record = dashboard
            .next_invocation_of("summary", left)
            .await?
            .ok_or_else(|| format!("not every reading was summarized within 20 s: {by_node:?}"))?;
        let arguments = &record.value["arguments"];
        assert_eq!(
            arguments[0], "plant-a",
            "only the watched site's summaries arrive: {arguments}"
        );
        let node = arguments[1].as_str().ok_or("no node")?.to_owned();
        let count = arguments[2].as_u64().ok_or("no count")?;
        let mean = arguments[3].as_f64().ok_or("no mean")?;
        let (min, max) = (
            arguments[4].as_f64().ok_or("no min")?,
            arguments[5].as_f64().ok_or("no max")?,
        );
        let entry = by_node.entry(node).or_insert((0, 0.0, f64::MAX, f64::MIN));
        entry.1 = (entry.1 * entry.0 as f64 + mean * count as f64) / (entry.0 + count) as f64;
        entry.0 += count;
        entry.2 = entry.2.min(min);
        entry.3 = entry.3.max(max);
    }
    assert_eq!(
        by_node.get("devices-1"),
        Some(&(2, 21.0, 20.0, 22.0)),
        "devices-1's summary: {by_node:?}"
    );
    assert_eq!(
        by_node.get("devices-2"),
        Some(&(1, 30.0, 30.0, 30.0)),
        "devices-2's summary: {by_node:?}"
    );

    let status = push_alert(&dashboard_url, ACCESS_KEY, "boiler over temperature").await?;
    assert!(status.success(), "push_alert.py failed ({status})");
    let alert = dashboard
        .next_invocation_of("alert", SUMMARY_TIMEOUT)
        .await?
        .ok_or("the alert did not reach the dashboard")?;
    assert_eq!(alert.value["arguments"], json!(["plant-a", "boiler over temperature"]));

    // A token signed with another key is refused.
    let status = push_alert(&dashboard_url, "another key", "forged").await?;
    assert!(!status.success(), "a push signed with another key fails");

    // The dashboard page in headless Chromium (`tests/browser/iot-example.mjs`), while devices on both devices
    // nodes keep reporting (every 200 ms, for at most the driver's own time limit).
    let stop = CancellationToken::new();
    let reporting = tokio::spawn({
        let stop = stop.clone();
        async move {
            for round in 0..600u32 {
                for device in [&mut device_1, &mut device_2] {
                    device
                        .invoke_ok("Report", json!(["sensor-9", "plant-a", f64::from(round)]))
                        .await?;
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
            TestResult::Ok((device_1, device_2))
        }
    });
    let dashboard_page = dashboard_url.clone();
    let status = tokio::task::spawn_blocking(move || -> Result<_, String> {
        npm::ensure_installed()?;
        example::ensure_chromium().map_err(|error| error.to_string())?;
        let env = [
            ("HUBMESH_IOT_URL", dashboard_page.as_str()),
            ("HUBMESH_IOT_ACCESS_KEY", ACCESS_KEY),
        ];
        example::run_page_driver("iot-example.mjs", &env, PAGE_TIMEOUT).map_err(|error| error.to_string())
    })
    .await??;
    stop.cancel();
    let (device_1, device_2) = reporting.await??;
    assert!(
        status.success(),
        "the dashboard page driver failed ({status}); see its PASS/FAIL lines above"
    );

    drop((dashboard, device_1, device_2));
    tokio::task::spawn_blocking(move || drop(iot)).await?;
    Ok(())
}
