//! `hubmesh status --url URL [--json]`: asks one node for its status report (`GET /_hubmesh/status`, the
//! library's [`StatusReport`]) and prints the cluster as that node sees it, as a table or as the raw JSON document.
//!
//! The request is one plain HTTP/1.1 GET over a tokio `TcpStream` with a deadline: enough for a node's small JSON
//! report, with no HTTP client crate. [`request`] is that request for any method and headers, and
//! [`fetch_report`] the report read into a [`StatusReport`]: `hubmesh drain` and `hubmesh rolling-restart` use them. A bad URL, an unreachable node, a slow one, an HTTP error or a document that
//! is not a status report are errors with a message (the command then exits with 1), never a panic.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use hubmesh::status::{StatusReport, STATUS_PATH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The largest report read (a cluster of thousands of nodes stays far below it).
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

/// Where to ask: the host and port to connect to, and the request target.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    authority: String,
    path: String,
}

impl Target {
    /// The report at the root of the same node, when `path` is under a base (such as a hub URL's `/hub`).
    fn at_root(&self) -> Option<Target> {
        (self.path != STATUS_PATH).then(|| Target {
            authority: self.authority.clone(),
            path: STATUS_PATH.to_owned(),
        })
    }
}

/// Reads `http://host[:port][/base]` into the address to dial and the path of the report under `base`.
fn parse_url(url: &str) -> anyhow::Result<Target> {
    let rest = if let Some(rest) = url.strip_prefix("http://") {
        rest
    } else if url.starts_with("https://") {
        bail!("`{url}`: hubmesh status speaks plain HTTP only; ask the node over http:// (for example from its host)")
    } else {
        bail!("`{url}` is not a URL: expected http://HOST:PORT, for example http://127.0.0.1:5000")
    };
    let (authority, base) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        bail!("`{url}` has no host: expected http://HOST:PORT");
    }
    let has_port = match authority.rfind(':') {
        Some(colon) => !authority[colon..].contains(']'),
        None => false,
    };
    let authority = if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let base = base.split(['?', '#']).next().unwrap_or_default().trim_end_matches('/');
    Ok(Target {
        authority,
        path: format!("{base}{STATUS_PATH}"),
    })
}

/// The status code and body of a `GET` of `target`.
async fn get(target: &Target) -> anyhow::Result<(u16, Vec<u8>)> {
    request(&target.authority, "GET", &target.path, &[]).await
}

/// The `host:port` a node URL (`http://HOST[:PORT][/base]`) is dialled at; `hubmesh drain` and `hubmesh
/// rolling-restart` ask nodes by it too.
pub(crate) fn authority(url: &str) -> anyhow::Result<String> {
    Ok(parse_url(url)?.authority)
}

/// The status code and body of one plain HTTP/1.1 request without a body (`Content-Length: 0`) to `authority`,
/// with `headers` added.
pub(crate) async fn request(
    authority: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, Vec<u8>)> {
    let target = Target {
        authority: authority.to_owned(),
        path: path.to_owned(),
    };
    let mut stream = TcpStream::connect(&target.authority)
        .await
        .with_context(|| format!("cannot connect to {}", target.authority))?;
    let host = &target.authority;
    let extra: String = headers
        .iter()
        .map(|(name, value)| format!("{name}: {value}\r\n"))
        .collect();
    let length = if method == "GET" { "" } else { "Content-Length: 0\r\n" };
    let request = format!(
        "{method} {} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n{extra}{length}Connection: close\r\n\r\n",
        target.path
    );
    stream
        .write_all(request.as_bytes())
        .await
        .context("cannot send the request")?;
    let mut response = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut response)
        .await
        .context("cannot read the answer")?;
    let head_end = response
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("{} did not answer with HTTP", target.authority))?;
    let head = String::from_utf8_lossy(&response[..head_end]);
    let body = &response[head_end + 4..];
    let mut lines = head.lines();
    let code: u16 = lines
        .next()
        .and_then(|status| status.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("{} did not answer with HTTP", target.authority))?;
    let chunked = lines.any(|line| {
        line.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding") && value.to_ascii_lowercase().contains("chunked")
        })
    });
    let body = if chunked { dechunk(body)? } else { body.to_vec() };
    Ok((code, body))
}

/// The report's body: from `target`, or (for a URL with a path, such as a hub's URL, that has no report) from the
/// root of the same node.
async fn fetch(target: &Target) -> anyhow::Result<Vec<u8>> {
    let (mut code, mut body) = get(target).await?;
    let mut path = &target.path;
    let root = target.at_root();
    if let (404, Some(root)) = (code, &root) {
        (code, body) = get(root).await?;
        path = &root.path;
    }
    match code {
        200 => Ok(body),
        404 => bail!("{} answered 404 for {path}: is it a hubmesh node?", target.authority),
        code => bail!(
            "{} answered HTTP {code}: {}",
            target.authority,
            String::from_utf8_lossy(&body).chars().take(200).collect::<String>()
        ),
    }
}

/// A chunked body, joined.
fn dechunk(mut body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut joined = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|window| window == b"\r\n")
            .ok_or_else(|| anyhow!("a chunked answer was cut short"))?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| anyhow!("a bad chunk size `{size_text}`"))?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(joined);
        }
        let chunk = body
            .get(..size)
            .ok_or_else(|| anyhow!("a chunked answer was cut short"))?;
        joined.extend_from_slice(chunk);
        body = body.get(size + 2..).unwrap_or_default();
    }
}

/// Asks the node at `url` for its report within `timeout`; prints it as a table, or as JSON with `json`.
pub(crate) async fn run_status(url: &str, json: bool, timeout: Duration) -> anyhow::Result<()> {
    let (report, body) = fetch_report(url, timeout).await?;
    if json {
        println!("{}", String::from_utf8_lossy(&body).trim_end());
    } else {
        print!("{}", table(&report));
    }
    Ok(())
}

/// The node's report at `url` (asked within `timeout`), and the document as it came.
pub(crate) async fn fetch_report(url: &str, timeout: Duration) -> anyhow::Result<(StatusReport, Vec<u8>)> {
    let target = parse_url(url)?;
    let body = tokio::time::timeout(timeout, fetch(&target)).await.map_err(|_| {
        anyhow!(
            "{} did not answer within {}",
            target.authority,
            humantime::format_duration(timeout)
        )
    })??;
    let report: StatusReport = serde_json::from_slice(&body).with_context(|| {
        format!(
            "{} answered with something other than a status report",
            target.authority
        )
    })?;
    Ok((report, body))
}

fn uptime(ms: Option<u64>) -> String {
    match ms {
        // Whole seconds: a status line has no use for milliseconds.
        Some(ms) => humantime::format_duration(Duration::from_secs(ms / 1000)).to_string(),
        None => "-".to_owned(),
    }
}

/// The report as text: the node's own line and hubs, then one row per member, then dead members and the reasons
/// the node is not ready.
fn table(report: &StatusReport) -> String {
    let mut out = String::new();
    let mut about = vec![if report.clustered {
        "cluster node"
    } else {
        "single node"
    }
    .to_owned()];
    if let Some(generation) = report.generation {
        about.push(format!("generation {generation}"));
    }
    about.push(report.status.clone());
    about.push(if report.ready { "ready" } else { "not ready" }.to_owned());
    about.push(format!("up {}", uptime(Some(report.uptime_ms))));
    let _ = writeln!(
        out,
        "{} ({}): {} connections, {} groups owned",
        report.node,
        about.join(", "),
        report.connections,
        report.groups_owned,
    );
    for hub in &report.hubs {
        let _ = writeln!(
            out,
            "  hub {}: {} connections, {} groups owned",
            hub.name, hub.connections, hub.groups_owned
        );
    }
    let header = [
        "MEMBER",
        "GENERATION",
        "STATUS",
        "GOSSIP",
        "LINK ADDRESS",
        "UPTIME",
        "LINK",
        "HUBS",
    ];
    let rows: Vec<[String; 8]> = report
        .members
        .iter()
        .map(|member| {
            [
                if member.local {
                    format!("{} (this node)", member.name)
                } else {
                    member.name.clone()
                },
                member
                    .generation
                    .map_or_else(|| "-".to_owned(), |generation| generation.to_string()),
                member.status.clone().unwrap_or_else(|| "-".to_owned()),
                member.gossip_address.clone().unwrap_or_else(|| "-".to_owned()),
                member.link_address.clone().unwrap_or_else(|| "-".to_owned()),
                uptime(member.uptime_ms),
                match member.link_up {
                    Some(true) => "up".to_owned(),
                    Some(false) => "DOWN".to_owned(),
                    None => "-".to_owned(),
                },
                if member.hubs.is_empty() {
                    "-".to_owned()
                } else {
                    member.hubs.join(",")
                },
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let _ = writeln!(out);
    let header_row = header.map(str::to_owned);
    for row in std::iter::once(&header_row).chain(&rows) {
        let line: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    if !report.dead.is_empty() {
        let dead: Vec<String> = report
            .dead
            .iter()
            .map(|id| format!("{}.{}", id.name, id.generation))
            .collect();
        let _ = writeln!(out, "\ndead: {}", dead.join(", "));
    }
    if !report.reasons.is_empty() {
        let _ = writeln!(out, "\nnot ready:");
        for reason in &report.reasons {
            let _ = writeln!(out, "  {reason}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{dechunk, parse_url, Target};

    #[test]
    fn urls_become_an_address_and_the_report_path() {
        let target = |authority: &str, path: &str| Target {
            authority: authority.to_owned(),
            path: path.to_owned(),
        };
        assert_eq!(
            parse_url("http://127.0.0.1:5001").ok(),
            Some(target("127.0.0.1:5001", "/_hubmesh/status"))
        );
        assert_eq!(
            parse_url("http://node-1/base/?x=1").ok(),
            Some(target("node-1:80", "/base/_hubmesh/status"))
        );
        assert_eq!(
            parse_url("http://[::1]:5000/").ok(),
            Some(target("[::1]:5000", "/_hubmesh/status"))
        );
        assert_eq!(
            parse_url("http://[::1]/").ok(),
            Some(target("[::1]:80", "/_hubmesh/status"))
        );
        for bad in [
            "127.0.0.1:5000",
            "ftp://x",
            "http://",
            "http:///path",
            "https://node:443",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").ok(),
            Some(b"abcde".to_vec())
        );
        assert!(dechunk(b"5\r\nab").is_err());
        assert!(dechunk(b"zz\r\n").is_err());
    }
}
