//! What every scenario does first: checks the options they share ([`Setup`], [`seconds`], [`check_clients`]) and
//! opens the clients, round-robin over the URLs (each client's own URL; with `--spread` the first of its turn).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use serde_json::{json, Value};

use crate::bench::client::Client;
use crate::bench::procfs::{cpu_seconds, dev_node_pids};
use crate::bench::route::{HubUrl, Route};
use crate::bench::stats::MIN_PAYLOAD;
use crate::bench::{BenchError, CommonArgs, Transport, MAX_CLIENTS};

/// The options every scenario shares, checked.
pub(super) struct Setup {
    /// The hubs' WebSocket URLs.
    pub(super) urls: Vec<String>,
    hubs: Arc<[HubUrl]>,
    pub(super) transport: Transport,
    pub(super) spread: bool,
    /// `--stateful`: WebSocket clients negotiate stateful reconnect and acknowledge what they receive.
    pub(super) stateful: bool,
    /// `--negotiate`: WebSocket clients negotiate at their own URL.
    negotiate: bool,
    /// HTTP requests (and WebSocket upgrades) the clients sent so far.
    pub(super) requests: Arc<AtomicU64>,
    pub(super) pids: Vec<u32>,
    pub(super) step_timeout: Duration,
    pub(super) payload_bytes: usize,
    concurrency: usize,
    /// `--source-addresses`: 1 leaves the source to the kernel.
    source_addresses: u8,
}

impl Setup {
    pub(super) fn new(common: &CommonArgs) -> Result<Setup, BenchError> {
        if common.urls.is_empty() {
            return Err(BenchError::Options("give at least one --url".to_owned()));
        }
        let hubs = common
            .urls
            .iter()
            .map(|url| HubUrl::parse(url, &common.hub_path))
            .collect::<Result<Arc<[_]>, _>>()?;
        let urls = hubs.iter().map(|hub| hub.ws(None)).collect();
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
        if common.source_addresses == 0 {
            return Err(BenchError::Options(
                "--source-addresses must be between 1 and 255".to_owned(),
            ));
        }
        if common.source_addresses > 1 && (common.transport != Transport::WebSockets || common.spread) {
            return Err(BenchError::Options(
                "--source-addresses applies to WebSockets without --spread only".to_owned(),
            ));
        }
        if common.stateful && common.transport != Transport::WebSockets {
            return Err(BenchError::Options("--stateful applies to WebSockets only".to_owned()));
        }
        if common.negotiate && common.transport != Transport::WebSockets {
            return Err(BenchError::Options(
                "--negotiate applies to WebSockets only (the other transports always negotiate)".to_owned(),
            ));
        }
        Ok(Setup {
            stateful: common.stateful,
            negotiate: common.negotiate,
            source_addresses: common.source_addresses,
            urls,
            hubs,
            transport: common.transport,
            spread: common.spread,
            requests: Arc::new(AtomicU64::new(0)),
            pids,
            step_timeout: seconds("--timeout", common.timeout, 300.0)?,
            payload_bytes: common.payload_bytes,
            concurrency: common.connect_concurrency,
        })
    }

    /// The way of client `index`: its own URL is the `index`th round-robin.
    pub(super) fn route(&self, index: usize) -> Result<Arc<Route>, BenchError> {
        Route::new(self.hubs.clone(), index, self.spread, self.requests.clone())
            .map(|route| {
                Arc::new(
                    route
                        .with_source(self.source_of(index))
                        .with_stateful(self.stateful)
                        .with_negotiate(self.negotiate),
                )
            })
            .ok_or_else(|| BenchError::Options("give at least one --url".to_owned()))
    }

    /// Opens client `index` (see [`Setup::route`]).
    pub(super) async fn open_client(&self, index: usize) -> Result<Client, BenchError> {
        Client::connect(self.route(index)?, self.transport, self.step_timeout).await
    }

    /// How the clients connect, for summaries: `websockets`, `sse, spread`, ….
    pub(super) fn transport_summary(&self) -> String {
        let stateful = if self.stateful {
            ", stateful reconnect"
        } else if self.negotiate && self.transport == Transport::WebSockets {
            ", negotiated"
        } else {
            ""
        };
        if self.spread {
            format!("{}{stateful}, requests spread over the URLs", self.transport.name())
        } else {
            format!("{}{stateful}", self.transport.name())
        }
    }

    /// The common parameters for the report.
    pub(super) fn parameters(&self) -> Value {
        json!({
            "urls": self.urls,
            "transport": self.transport.name(),
            "spread": self.spread,
            "stateful": self.stateful,
            "negotiate": self.negotiate,
            "pids": self.pids,
            "payload_bytes": self.payload_bytes,
            "source_addresses": self.source_addresses,
            "timeout_seconds": self.step_timeout.as_secs_f64(),
        })
    }

    /// Opens `count` clients round-robin over the URLs, `concurrency` at a time; client `index` joins the group
    /// `group_of(index)` (a JSON string) if that is `Some`. The clients come back in index order (client `index`
    /// at `index`), whatever order their connections completed in.
    pub(super) async fn open_clients<F>(&self, count: usize, group_of: F) -> Result<Vec<Client>, BenchError>
    where
        F: Fn(usize) -> Option<String>,
    {
        let group_of = &group_of;
        let mut opened: Vec<(usize, Client)> = futures_util::stream::iter(0..count)
            .map(|index| async move {
                let mut client = self.open_client(index).await?;
                if let Some(group) = group_of(index) {
                    client.join(&group).await?;
                }
                Ok::<_, BenchError>((index, client))
            })
            .buffer_unordered(self.concurrency)
            .try_collect()
            .await?;
        opened.sort_unstable_by_key(|(index, _)| *index);
        Ok(opened.into_iter().map(|(_, client)| client).collect())
    }

    /// The way of client `index` when it connects to `--url` number `url_index` instead of its own (a reconnect).
    pub(super) fn route_to(&self, url_index: usize, index: usize) -> Result<Arc<Route>, BenchError> {
        Route::new(self.hubs.clone(), url_index, false, self.requests.clone())
            .map(|route| Arc::new(route.with_source(self.source_of(index)).with_stateful(self.stateful)))
            .ok_or_else(|| BenchError::Options("give at least one --url".to_owned()))
    }

    /// The address client `index` connects from: 127.0.0.1 to 127.0.0.N in turn with `--source-addresses N`.
    fn source_of(&self, index: usize) -> Option<IpAddr> {
        (self.source_addresses > 1).then(|| {
            let host = u8::try_from(index % usize::from(self.source_addresses)).unwrap_or(0) + 1;
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, host))
        })
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
