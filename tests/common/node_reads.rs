//! What tests read from running nodes over HTTP: a metric summed over nodes, and how many live members a node
//! sees; and their logs, as `RUST_LOG` says.

// Each test binary that includes this file uses part of it.
#![allow(dead_code)]

use hubmesh::testing::client::http_request_with_body;
use serde_json::Value;

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn addr_of(url: &str) -> TestResult<std::net::SocketAddr> {
    Ok(url.trim_start_matches("http://").parse()?)
}

/// Logs as `RUST_LOG` says (off by default), once per test binary.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "off".into()))
        .with_test_writer()
        .try_init();
}

/// The metric `name` (a line without labels) summed over the nodes at `urls`; a node without it counts 0.
pub async fn metric_total(urls: &[String], name: &str) -> TestResult<u64> {
    let mut total = 0;
    for url in urls {
        let metrics = http_request_with_body(addr_of(url)?, "GET", "/metrics", &[], b"").await?;
        total += metrics
            .text()
            .lines()
            .find(|line| line.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ')))
            .and_then(|line| line.split_whitespace().last())
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or(0.0) as u64;
    }
    Ok(total)
}

/// The cluster view of the node at `url` (`/_hubmesh/cluster`: its live members' names and incarnations).
pub async fn cluster_view(url: &str) -> TestResult<Value> {
    let view = http_request_with_body(addr_of(url)?, "GET", "/_hubmesh/cluster", &[], b"").await?;
    Ok(serde_json::from_slice(&view.body)?)
}

/// The incarnations of the live members the node at `url` sees, but those named `except`.
pub async fn incarnations_seen_by(url: &str, except: &str) -> TestResult<Vec<hubmesh::cluster::NodeId>> {
    let view = cluster_view(url).await?;
    Ok(view["incarnations"]
        .as_array()
        .ok_or("no incarnations")?
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|incarnation| {
            let (name, generation) = incarnation.rsplit_once('.')?;
            Some(hubmesh::cluster::NodeId::new(name, generation.parse().ok()?))
        })
        .filter(|member| &*member.name != except)
        .collect())
}

/// How many live members the node at `url` sees.
pub async fn live_seen_by(url: &str) -> TestResult<usize> {
    Ok(cluster_view(url).await?["live"].as_array().map_or(0, Vec::len))
}
