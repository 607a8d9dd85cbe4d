//! `iot`: devices and dashboards on different node roles of one cluster, with telemetry aggregated per site.
//!
//! `cargo run --example iot` starts three nodes (child processes of this example, with gossip and links on
//! 127.0.0.1): two `devices` nodes serve the `devices` hub at `/devices`, where devices call
//! `Report(device, site, value)`, and one `dashboard` node serves the `dashboard` hub at `/dashboard`, where
//! dashboards call `Watch(site)`. Each devices node aggregates the readings it receives per site and, every
//! second, sends `summary(site, node, count, mean, min, max)` to the site's dashboard group through the dashboard
//! hub's `HubContext` (a hub it sends to without serving it): the two kinds of node scale independently. The
//! dashboard node's URL is a page that watches a site and shows its summaries and alerts.
//!
//! Any other application can push to the dashboards too, over the REST API every node serves:
//! `python3 examples/iot/push_alert.py <dashboard node URL> <access key> <site> <text>` sends
//! `alert(site, text)` to the site's dashboards (the access key is `IOT_REST_ACCESS_KEY`, printed at start).

#[path = "../common/client_bundle.rs"]
mod client_bundle;
#[path = "../common/local_cluster.rs"]
mod local_cluster;

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, HttpResponse};
use hubmesh::{Caller, Hub, HubContext, HubError, Node, NodeBuilder, State};
use local_cluster::{main_with, nothing_more, NodeSpec, Started};

/// The REST API's access key when `IOT_REST_ACCESS_KEY` is not set (a development key: set your own).
const DEFAULT_ACCESS_KEY: &str = "iot-example-access-key";
/// How often a devices node sends its summaries.
const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// The most sites a devices node aggregates within one interval; readings of further sites are refused.
const MAX_SITES: usize = 10_000;
/// The longest device or site name.
const MAX_NAME: usize = 64;

/// The dashboard group of a site.
fn site_group(site: &str) -> String {
    format!("site-{site}")
}

fn check_name(what: &str, name: &str) -> Result<(), HubError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(HubError::hub(format!("{what} must be 1 to {MAX_NAME} bytes")));
    }
    Ok(())
}

/// One site's readings within the current interval.
#[derive(Clone, Copy)]
struct Window {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

/// The readings a devices node received in the current interval, by site.
#[derive(Clone, Default)]
struct Aggregator {
    sites: Arc<Mutex<HashMap<String, Window>>>,
}

impl Aggregator {
    fn add(&self, site: &str, value: f64) -> Result<(), HubError> {
        let mut sites = self.sites.lock().map_err(|_| HubError::hub("aggregator unavailable"))?;
        if let Some(window) = sites.get_mut(site) {
            window.count += 1;
            window.sum += value;
            window.min = window.min.min(value);
            window.max = window.max.max(value);
            return Ok(());
        }
        if sites.len() >= MAX_SITES {
            return Err(HubError::hub("too many sites this second; try again"));
        }
        sites.insert(
            site.to_owned(),
            Window {
                count: 1,
                sum: value,
                min: value,
                max: value,
            },
        );
        Ok(())
    }

    /// The interval's windows, leaving the next interval empty.
    fn take(&self) -> HashMap<String, Window> {
        self.sites
            .lock()
            .map(|mut sites| std::mem::take(&mut *sites))
            .unwrap_or_default()
    }
}

/// `Report(device, site, value)`: a device's reading.
async fn report(
    State(aggregator): State<Aggregator>,
    device: String,
    site: String,
    value: f64,
) -> Result<(), HubError> {
    check_name("device", &device)?;
    check_name("site", &site)?;
    if !value.is_finite() {
        return Err(HubError::hub("value must be a finite number"));
    }
    aggregator.add(&site, value)
}

/// `Watch(site)`: the dashboard receives the site's summaries and alerts.
async fn watch(caller: Caller, site: String) -> Result<(), HubError> {
    check_name("site", &site)?;
    caller.groups().add(caller.connection_id(), &site_group(&site)).await
}

/// `Unwatch(site)`.
async fn unwatch(caller: Caller, site: String) -> Result<(), HubError> {
    check_name("site", &site)?;
    caller.groups().remove(caller.connection_id(), &site_group(&site)).await
}

/// Every interval, sends each site's summary to its dashboards, until the node stops.
async fn flush_summaries(node_name: String, aggregator: Aggregator, dashboards: HubContext) {
    let mut ticks = tokio::time::interval(FLUSH_INTERVAL);
    loop {
        ticks.tick().await;
        for (site, window) in aggregator.take() {
            let mean = window.sum / window.count as f64;
            let summary = (
                site.clone(),
                node_name.clone(),
                window.count,
                mean,
                window.min,
                window.max,
            );
            // A send fails only when the node is stopping.
            if dashboards
                .clients()
                .group(&site_group(&site))
                .send("summary", summary)
                .is_err()
            {
                return;
            }
        }
    }
}

fn access_key() -> String {
    std::env::var("IOT_REST_ACCESS_KEY").unwrap_or_else(|_| DEFAULT_ACCESS_KEY.to_owned())
}

fn role(builder: NodeBuilder, role: &str) -> (NodeBuilder, Started) {
    let builder = builder.rest_access_key(&access_key());
    match role {
        "devices" => {
            let aggregator = Aggregator::default();
            let hub = Hub::new("devices")
                .path("/devices")
                .with_state(aggregator.clone())
                .method("Report", report);
            let started: Started = Box::new(move |node: &Node| match node.hub_context("dashboard") {
                Some(dashboards) => {
                    tokio::spawn(flush_summaries(node.name().to_owned(), aggregator, dashboards));
                }
                None => eprintln!("iot: no dashboard context"),
            });
            (builder.hub(hub).send_only_hub("dashboard"), started)
        }
        _ => {
            let hub = Hub::new("dashboard")
                .path("/dashboard")
                .method("Watch", watch)
                .method("Unwatch", unwatch);
            (builder.hub(hub), nothing_more())
        }
    }
}

/// `GET /`: the dashboard page.
async fn dashboard_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(include_str!("dashboard.html"))
}

/// Dashboard nodes serve the dashboard page.
fn routes(config: &mut web::ServiceConfig, role: &str) {
    if role == "dashboard" {
        config.route("/", web::get().to(dashboard_page));
        client_bundle::mount(config);
    }
}

fn main() -> ExitCode {
    let nodes = [
        NodeSpec {
            name: "devices-1",
            role: "devices",
        },
        NodeSpec {
            name: "devices-2",
            role: "devices",
        },
        NodeSpec {
            name: "dashboard-1",
            role: "dashboard",
        },
    ];
    if std::env::args().nth(1).as_deref() != Some("node") && std::env::var_os("IOT_REST_ACCESS_KEY").is_none() {
        println!("iot: REST API access key {DEFAULT_ACCESS_KEY:?} (set IOT_REST_ACCESS_KEY for your own)");
    }
    main_with("iot", &nodes, role, routes)
}
