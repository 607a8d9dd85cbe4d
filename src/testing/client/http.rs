//! Plain HTTP/1.1 for tests, over a bare socket: one request (negotiate, the HTTP transports' polls and sends,
//! requests that must be refused, the test hub's token endpoint), and negotiate itself.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use super::{TestClientError, STEP};

/// How long a response that stays open (an SSE stream) may be quiet before what arrived is taken as all of it.
const STREAM_QUIET: Duration = Duration::from_millis(1500);

/// A response: status, headers as sent, the body (de-chunked).
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// The status code.
    pub status: u16,
    /// Header names and values, in the order sent.
    pub headers: Vec<(String, String)>,
    /// The body, chunks joined.
    pub body: Vec<u8>,
}

impl HttpReply {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One HTTP/1.1 request with an empty body and extra header lines, as [`http_request_with_body`] sends it.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<HttpReply, TestClientError> {
    http_request_with_body(addr, method, target, headers, b"").await
}

/// One HTTP/1.1 request on its own connection with extra header lines and `body`; reads until the server closes
/// (or, once something arrived, until it is quiet for 1.5 s: a stream such as SSE, whose head is all a test needs).
pub async fn http_request_with_body(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<HttpReply, TestClientError> {
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut request = request.into_bytes();
    request.extend_from_slice(body);
    let timed_out = |what: &str| TestClientError::Timeout(format!("{what} {method} {target}"));
    let mut stream = timeout(STEP, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out("connecting for"))??;
    timeout(STEP, stream.write_all(&request))
        .await
        .map_err(|_| timed_out("writing"))??;
    let mut raw = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let wait = if raw.is_empty() { STEP } else { STREAM_QUIET };
        match timeout(wait, stream.read(&mut buffer)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => raw.extend_from_slice(&buffer[..n]),
            Ok(Err(error)) if raw.is_empty() => return Err(error.into()),
            Err(_) if raw.is_empty() => return Err(timed_out("no response to")),
            // A stream that stays open, or ends without a clean close: what arrived is enough.
            Ok(Err(_)) | Err(_) => break,
        }
    }
    parse_http_response(&raw)
}

/// `POST <hub>/negotiate?negotiateVersion=1<extra_query>` with `headers`, for the hub at `hub_url`
/// (`http://` or `ws://`, with any query it has); the JSON body of a 200, any other status is an error.
pub async fn negotiate(hub_url: &str, extra_query: &str, headers: &[(&str, &str)]) -> Result<Value, TestClientError> {
    let rest = ["http://", "ws://"]
        .iter()
        .find_map(|scheme| hub_url.strip_prefix(scheme))
        .ok_or_else(|| TestClientError::Unexpected(format!("not a plain http:// or ws:// url: {hub_url}")))?;
    let (authority, path_and_query) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("&{query}")
    };
    let addr = tokio::net::lookup_host(authority)
        .await?
        .next()
        .ok_or_else(|| TestClientError::Unexpected(format!("{authority} has no address")))?;
    let target = format!("{path}/negotiate?negotiateVersion=1{query}{extra_query}");
    let reply = http_request(addr, "POST", &target, headers).await?;
    if reply.status != 200 {
        return Err(TestClientError::Unexpected(format!(
            "negotiate at {target} answered {}: {}",
            reply.status,
            reply.text()
        )));
    }
    Ok(serde_json::from_slice(&reply.body)?)
}

/// Splits an HTTP/1.1 response as read (a whole one, or a head up to its blank line) into status, headers and
/// the de-chunked body.
pub fn parse_http_response(raw: &[u8]) -> Result<HttpReply, TestClientError> {
    let bad = |what: String| TestClientError::Unexpected(what);
    let end = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| bad("an HTTP response without a header end".into()))?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| bad(format!("a bad status line: {status_line}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(key, value)| key.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked"));
    if chunked && !body.is_empty() {
        body = dechunk(&body)?;
    }
    Ok(HttpReply { status, headers, body })
}

fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, TestClientError> {
    let bad = |what: &str| TestClientError::Unexpected(what.to_owned());
    let mut out = Vec::new();
    for _ in 0..100_000 {
        let line_end = raw
            .windows(2)
            .position(|window| window == b"\r\n")
            .ok_or_else(|| bad("a chunk without a size line"))?;
        let size_text = String::from_utf8_lossy(&raw[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or_default().trim(), 16)
            .map_err(|_| bad("a chunk size that is not hexadecimal"))?;
        if size == 0 {
            return Ok(out);
        }
        let start = line_end + 2;
        let chunk = raw.get(start..start + size).ok_or_else(|| bad("a truncated chunk"))?;
        out.extend_from_slice(chunk);
        raw = raw
            .get(start + size + 2..)
            .ok_or_else(|| bad("a truncated chunk end"))?;
    }
    Err(bad("more than 100000 chunks"))
}

/// Reads from `stream` into `buffer` until it contains `needle`, within [`STEP`]; an early end is an error.
pub async fn read_until(stream: &mut TcpStream, buffer: &mut Vec<u8>, needle: &[u8]) -> Result<(), TestClientError> {
    let deadline = tokio::time::Instant::now() + STEP;
    while !buffer.windows(needle.len()).any(|window| window == needle) {
        let mut chunk = [0u8; 4096];
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .map_err(|_| {
                TestClientError::Timeout(format!(
                    "no {:?} within {STEP:?}: {:?}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(buffer)
                ))
            })??;
        if read == 0 {
            return Err(TestClientError::Unexpected(format!(
                "the stream ended before {:?}",
                String::from_utf8_lossy(needle)
            )));
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    Ok(())
}

/// Opens a Server-Sent Events stream (`GET path` with `Accept: text/event-stream` and `extra` headers) and reads up
/// to the end of the response head; returns the socket and everything read so far.
pub async fn open_event_stream(
    addr: SocketAddr,
    path: &str,
    extra: &[(&str, &str)],
) -> Result<(TcpStream, Vec<u8>), TestClientError> {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut events = timeout(STEP, TcpStream::connect(addr))
        .await
        .map_err(|_| TestClientError::Timeout(format!("connecting to {addr}")))??;
    events.write_all(head.as_bytes()).await?;
    let mut raw = Vec::new();
    read_until(&mut events, &mut raw, b"\r\n\r\n").await?;
    Ok((events, raw))
}

/// A JSON invocation record (with its 0x1E), as the HTTP transports' POSTs carry it.
pub fn json_invocation(id: &str, target: &str, arguments: Value) -> String {
    format!(
        "{}\u{1e}",
        serde_json::json!({ "type": 1, "invocationId": id, "target": target, "arguments": arguments })
    )
}
