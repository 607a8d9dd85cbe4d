//! `GET /metrics`: the node's figures in the Prometheus text format (OpenMetrics 1.0 text, which Prometheus
//! scrapes as it is), from a `prometheus-client` registry that the node owns. There is no process-global
//! recorder: several nodes in one process each keep their own figures.
//!
//! Figures are collected at scrape time. Most are read from state the node already keeps (connections and
//! memberships per hub, groups owned, readiness, the membership view, the health of its links); the rest are
//! relaxed atomic counters that the code which sees an event adds to, on structs it already holds:
//! [`ConnectionCounters`] and [`BoundsHit`] in the node's [`Limits`] (connections, disconnects by reason,
//! client messages and bytes, invocations by outcome, deliveries by kind, stateful resumes, bounds hit), and
//! [`ClusterCounters`] in the cluster tasks' health (link frames and bytes received, membership changes, members
//! declared dead). Nothing here takes a lock or allocates on a message's path. The metrics are listed in
//! README.md#metrics.
//!
//! # Files
//! * `collector.rs`: the registry's collector: what a scrape gathers and how each metric is encoded.
//! * `cluster_counters.rs`: [`ClusterCounters`].
//! * `load.rs`: the load figures (connections, deliveries, client messages) each node publishes in gossip every
//!   second, so that one node's status report (and the live page that polls it) shows every node's.
//!
//! This module reads the node, its hubs, its limits and its cluster runtime; it changes nothing but its counters
//! and the load key it publishes.

mod cluster_counters;
mod collector;
mod load;

use std::sync::Arc;

use actix_web::HttpResponse;
use prometheus_client::registry::Registry;

use super::Node;
use crate::connection::Limits;
#[cfg(doc)]
use crate::connection::{BoundsHit, ConnectionCounters};
pub(crate) use cluster_counters::ClusterCounters;
use collector::{NodeCollector, Scrape};
pub(crate) use load::{publish_load, Load, LOAD_KEY};

/// The path of a node's metrics.
pub const METRICS_PATH: &str = "/metrics";

/// The content type of the OpenMetrics text format, which `prometheus-client` writes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A node's metrics registry, and what its last scrape gathered for the collector to encode.
pub(crate) struct NodeMetrics {
    registry: Registry,
    scrape: Arc<parking_lot::Mutex<Scrape>>,
    /// One scrape at a time: a scrape gathers, then encodes what it gathered.
    scraping: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics").finish_non_exhaustive()
    }
}

impl NodeMetrics {
    /// The registry of a node running under `limits` (whose counters it reads).
    pub(crate) fn new(limits: &Limits) -> Self {
        let scrape = Arc::new(parking_lot::Mutex::new(Scrape::default()));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(NodeCollector::new(limits, scrape.clone())));
        NodeMetrics {
            registry,
            scrape,
            scraping: tokio::sync::Mutex::new(()),
        }
    }
}

/// The metrics of `node` now, in the OpenMetrics text format.
pub(crate) async fn render(node: &Node) -> Result<String, std::fmt::Error> {
    let metrics = &node.inner.metrics;
    let _one_at_a_time = metrics.scraping.lock().await;
    let gathered = Scrape::gather(node).await;
    *metrics.scrape.lock() = gathered;
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &metrics.registry)?;
    Ok(out)
}

/// The answer to `GET /metrics`.
pub(crate) async fn answer(node: &Node) -> HttpResponse {
    match render(node).await {
        Ok(text) => HttpResponse::Ok().content_type(CONTENT_TYPE).body(text),
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}
