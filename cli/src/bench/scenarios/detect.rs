//! `hubmesh bench detect`: how long the other nodes take to see a node's death. One node is killed with SIGKILL;
//! every other node's status report (`GET /_hubmesh/status`, the library's `StatusReport`) is polled until the
//! dead node's incarnation (name and generation) is no longer among its live members. Reports each survivor's
//! detection time, the median and the slowest: the figure the "detected by all" targets speak of.

use std::time::Duration;

use serde_json::json;
use tokio::task::JoinSet;
use tokio::time::{sleep, Instant};

use super::readings::{extend, round3};
use super::setup::{seconds, Setup};
use super::victim::{kill, victim_pid};
use crate::bench::http::HttpConn;
use crate::bench::route::HubUrl;
use crate::bench::{BenchError, DetectArgs, Report, MAX_SECONDS};
use hubmesh::status::{StatusReport, STATUS_PATH};

/// Each status request's own deadline: a survivor busy with the death still answers well within it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The largest status report read (a cluster of a few nodes sends a few KB).
const MAX_REPORT: usize = 4 * 1024 * 1024;

/// A node's incarnation as its own report gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Incarnation {
    name: String,
    generation: Option<u64>,
}

/// `hubmesh bench detect`.
pub(in crate::bench) async fn detect(args: &DetectArgs) -> Result<Report, BenchError> {
    let setup = Setup::new(&args.common)?;
    let urls = setup.urls.len();
    if urls < 2 || args.kill_url >= urls {
        return Err(BenchError::Options(
            "detect needs two --url or more, and --kill-url must name one of them (from 0)".to_owned(),
        ));
    }
    let deadline = seconds("--seconds", args.seconds, MAX_SECONDS)?;
    let poll = Duration::from_millis(args.poll_ms.clamp(1, 1_000));
    let nodes = args
        .common
        .urls
        .iter()
        .map(|url| HubUrl::parse(url, &args.common.hub_path))
        .collect::<Result<Vec<_>, _>>()?;
    let victim = incarnation(&nodes[args.kill_url]).await?;
    let survivors: Vec<HubUrl> = nodes
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != args.kill_url)
        .map(|(_, url)| url.clone())
        .collect();
    // Every survivor must see the victim live first, or a "detection" would only be a view that never held it.
    for url in &survivors {
        if !lists_live(url, &victim).await? {
            return Err(BenchError::Options(format!(
                "{} does not list {} (generation {:?}) as live yet: wait until the cluster has formed",
                node_url(url),
                victim.name,
                victim.generation
            )));
        }
    }
    let pid = victim_pid(&args.common, args.kill_url, args.kill_pid)?;

    let killed_at = Instant::now();
    kill(pid).await?;
    let mut watchers = JoinSet::new();
    for (index, url) in survivors.iter().enumerate() {
        let (url, victim) = (url.clone(), victim.clone());
        watchers.spawn(async move {
            let seen = watch(&url, &victim, killed_at, killed_at + deadline, poll).await;
            (index, seen)
        });
    }
    let mut detected: Vec<Option<f64>> = vec![None; survivors.len()];
    let mut unanswered = 0_u64;
    while let Some(joined) = watchers.join_next().await {
        let (index, watched) = joined.map_err(|error| BenchError::Task(error.to_string()))?;
        unanswered += watched.unanswered;
        if let Some(slot) = detected.get_mut(index) {
            *slot = watched.seconds;
        }
    }
    let mut times: Vec<f64> = detected.iter().flatten().copied().collect();
    times.sort_by(f64::total_cmp);
    let all = times.len() == survivors.len();
    let median = median(&times);
    let slowest = times.last().copied();

    let mut parameters = setup.parameters();
    extend(
        &mut parameters,
        json!({
            "seconds": args.seconds,
            "poll_ms": poll.as_millis() as u64,
            "kill_url": args.kill_url,
            "kill_pid": pid,
        }),
    );
    let results = json!({
        "killed": { "name": victim.name, "generation": victim.generation },
        "survivors": survivors.len(),
        "detected_by": times.len(),
        "detected_by_all": all,
        "seconds_per_survivor": survivors
            .iter()
            .zip(&detected)
            .map(|(url, seconds)| json!({ "url": node_url(url), "seconds": seconds.map(round3) }))
            .collect::<Vec<_>>(),
        "median_seconds": median.map(round3),
        "all_seconds": if all { slowest.map(round3) } else { None },
        "unanswered_requests": unanswered,
    });
    let outcome = match (all, median, slowest) {
        (true, Some(median), Some(slowest)) => format!(
            "all {} survivors saw it gone: median {median:.2} s, the last {slowest:.2} s after the kill",
            survivors.len()
        ),
        _ => format!(
            "only {} of {} survivors saw it gone within {} s",
            times.len(),
            survivors.len(),
            args.seconds
        ),
    };
    let summary = format!(
        "detect: SIGKILL of {} (pid {pid}, URL {}) in a cluster of {urls}, polled every {} ms\n  {outcome}",
        victim.name,
        args.kill_url,
        poll.as_millis(),
    );
    Ok(Report {
        scenario: "detect",
        parameters,
        results,
        summary,
    })
}

/// What one survivor's watcher saw.
struct Watched {
    /// Seconds from the kill to the first report without the victim among the live members.
    seconds: Option<f64>,
    /// Requests that failed or timed out (a survivor busy past the request deadline).
    unanswered: u64,
}

/// Polls `url` until its live members no longer hold `victim`, or until `until`.
async fn watch(url: &HubUrl, victim: &Incarnation, killed_at: Instant, until: Instant, poll: Duration) -> Watched {
    let mut unanswered = 0;
    while Instant::now() < until {
        match lists_live(url, victim).await {
            Ok(false) => {
                return Watched {
                    seconds: Some(killed_at.elapsed().as_secs_f64()),
                    unanswered,
                }
            }
            Ok(true) => {}
            Err(_) => unanswered += 1,
        }
        sleep(poll.min(until.saturating_duration_since(Instant::now()))).await;
    }
    Watched {
        seconds: None,
        unanswered,
    }
}

/// The status report of the node at `url`, asked on a connection of its own within [`REQUEST_TIMEOUT`].
async fn status(url: &HubUrl) -> Result<StatusReport, BenchError> {
    let doing = "asking for the status report";
    let exchange = async {
        let mut conn = HttpConn::open(url).await?;
        conn.exchange("GET", STATUS_PATH, "Connection: close\r\n", &[], MAX_REPORT)
            .await
    };
    let response = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| BenchError::Timeout {
            url: node_url(url),
            doing,
            after: REQUEST_TIMEOUT,
        })?
        .map_err(|error| error.at(url, doing))?;
    if response.status != 200 {
        return Err(BenchError::Status {
            url: node_url(url),
            doing,
            status: response.status,
            body: String::from_utf8_lossy(&response.body).chars().take(200).collect(),
        });
    }
    serde_json::from_slice(&response.body).map_err(|error| BenchError::Protocol {
        url: node_url(url),
        reason: format!("not a status report: {error}"),
    })
}

/// The node's base URL (`http://host:port`), as the report names it.
fn node_url(url: &HubUrl) -> String {
    format!("http://{}", url.address())
}

/// The node at `url` as it reports itself.
async fn incarnation(url: &HubUrl) -> Result<Incarnation, BenchError> {
    let report = status(url).await?;
    Ok(Incarnation {
        name: report.node,
        generation: report.generation,
    })
}

/// Whether the node at `url` lists `victim` among its live members.
async fn lists_live(url: &HubUrl, victim: &Incarnation) -> Result<bool, BenchError> {
    let report = status(url).await?;
    Ok(report
        .members
        .iter()
        .any(|member| member.name == victim.name && member.generation == victim.generation))
}

/// The median of sorted values.
fn median(sorted: &[f64]) -> Option<f64> {
    match sorted.len() {
        0 => None,
        len if len % 2 == 1 => Some(sorted[len / 2]),
        len => Some((sorted[len / 2 - 1] + sorted[len / 2]) / 2.0),
    }
}
