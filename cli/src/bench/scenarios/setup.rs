//! What every scenario does first: checks the options they share ([`Setup`], [`seconds`], [`check_clients`]) and
//! opens the clients, round-robin over the URLs.

use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use serde_json::{json, Value};

use crate::bench::client::Client;
use crate::bench::procfs::{cpu_seconds, dev_node_pids};
use crate::bench::stats::MIN_PAYLOAD;
use crate::bench::{hub_ws_url, BenchError, CommonArgs, MAX_CLIENTS};

/// The options every scenario shares, checked.
pub(super) struct Setup {
    /// The hubs' WebSocket URLs.
    pub(super) urls: Vec<String>,
    pub(super) pids: Vec<u32>,
    pub(super) step_timeout: Duration,
    pub(super) payload_bytes: usize,
    concurrency: usize,
}

impl Setup {
    pub(super) fn new(common: &CommonArgs) -> Result<Setup, BenchError> {
        if common.urls.is_empty() {
            return Err(BenchError::Options("give at least one --url".to_owned()));
        }
        let urls = common
            .urls
            .iter()
            .map(|url| hub_ws_url(url, &common.hub_path))
            .collect::<Result<Vec<_>, _>>()?;
        let mut pids = common.pids.clone();
        if common.pids_from_dev {
            for pid in dev_node_pids(&common.urls)? {
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
        // Fail now, not after the run, if a process cannot be read.
        cpu_seconds(&pids)?;
        if !(MIN_PAYLOAD..=65_536).contains(&common.payload_bytes) {
            return Err(BenchError::Options(format!(
                "--payload-bytes must be between {MIN_PAYLOAD} and 65536"
            )));
        }
        if !(1..=4096).contains(&common.connect_concurrency) {
            return Err(BenchError::Options(
                "--connect-concurrency must be between 1 and 4096".to_owned(),
            ));
        }
        Ok(Setup {
            urls,
            pids,
            step_timeout: seconds("--timeout", common.timeout, 300.0)?,
            payload_bytes: common.payload_bytes,
            concurrency: common.connect_concurrency,
        })
    }

    pub(super) fn url(&self, index: usize) -> &str {
        self.urls.get(index % self.urls.len()).map_or("", String::as_str)
    }

    /// The common parameters for the report.
    pub(super) fn parameters(&self) -> Value {
        json!({
            "urls": self.urls,
            "pids": self.pids,
            "payload_bytes": self.payload_bytes,
            "timeout_seconds": self.step_timeout.as_secs_f64(),
        })
    }

    /// Opens `count` clients round-robin over the URLs, `concurrency` at a time, each joining `group` if given.
    pub(super) async fn open_clients(&self, count: usize, group_json: Option<&str>) -> Result<Vec<Client>, BenchError> {
        futures_util::stream::iter(0..count)
            .map(|index| {
                let url = self.url(index).to_owned();
                let step_timeout = self.step_timeout;
                async move {
                    let mut client = Client::connect(&url, step_timeout).await?;
                    if let Some(group) = group_json {
                        client.join(group).await?;
                    }
                    Ok::<_, BenchError>(client)
                }
            })
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await
    }
}

/// Checks a duration option (positive, finite, at most `max` seconds).
pub(super) fn seconds(name: &str, value: f64, max: f64) -> Result<Duration, BenchError> {
    if !(value.is_finite() && value > 0.0 && value <= max) {
        return Err(BenchError::Options(format!(
            "{name} must be more than 0 and at most {max} seconds"
        )));
    }
    Ok(Duration::from_secs_f64(value))
}

pub(super) fn check_clients(clients: usize) -> Result<(), BenchError> {
    if !(1..=MAX_CLIENTS).contains(&clients) {
        return Err(BenchError::Options(format!(
            "--clients must be between 1 and {MAX_CLIENTS}"
        )));
    }
    Ok(())
}
