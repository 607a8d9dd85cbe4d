//! The SSE half that the server writes: the event stream (`GET [base]?id=<token>`, `Accept: text/event-stream`),
//! read by a task that parses its events (docs/protocol.md#sse-framing) into the client's inbox.

use std::time::Duration;

use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;

use super::http_link::{expect_status, within, Inbox, READER_LIFETIME};
use crate::bench::http::{Head, HttpConn, HttpError, Response, MAX_CHUNK};
use crate::bench::route::{HubUrl, Route};
use crate::bench::BenchError;

/// The longest silence on the stream: the server pings every 15 s, and the official client gives up after 30 s.
const SILENCE: Duration = Duration::from_secs(30);

/// An open event stream.
pub(super) struct EventStream {
    conn: HttpConn,
    head: Head,
    url: HubUrl,
}

/// Opens the event stream of `token` at the route's next URL: `200` and its head within `step_timeout`.
pub(super) async fn open(route: &Route, token: &str, step_timeout: Duration) -> Result<EventStream, BenchError> {
    let url = route.next().1.clone();
    let doing = "opening the event stream";
    let target = url.target(Some(token));
    let opening = async {
        let mut conn = HttpConn::open(&url).await?;
        conn.send_request(
            "GET",
            &target,
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n",
            b"",
        )
        .await?;
        let head = conn.read_head().await?;
        if head.status == 200 {
            return Ok((conn, head, None));
        }
        let body = conn.read_body(&head, 4096).await?;
        Ok::<_, HttpError>((
            conn,
            head,
            Some(Response {
                status: head.status,
                body,
            }),
        ))
    };
    let (conn, head, refused) = within(step_timeout, &url, doing, opening).await?;
    if let Some(response) = refused {
        expect_status(&response, 200, &url, doing)?;
    }
    Ok(EventStream { conn, head, url })
}

/// Reads events into `inbox` until the stream ends or fails (then the error goes to the inbox), `stop` fires, the
/// inbox is dropped, or [`READER_LIFETIME`] passes; each read waits at most [`SILENCE`].
pub(super) async fn read_events(mut stream: EventStream, inbox: Inbox, stop: CancellationToken) {
    let lifetime = Instant::now() + READER_LIFETIME;
    let mut parser = EventParser::default();
    let doing = "reading the event stream";
    loop {
        let read = tokio::select! {
            () = stop.cancelled() => return,
            () = sleep_until(lifetime) => return,
            read = timeout(SILENCE, stream.conn.read_stream(&stream.head)) => read,
        };
        let failure = match read {
            Ok(Ok(Some(bytes))) => match parser.feed(&bytes) {
                Ok(events) => {
                    for event in events {
                        if inbox.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                    continue;
                }
                Err(reason) => BenchError::Protocol {
                    url: stream.url.http(),
                    reason: format!("{doing}: {reason}"),
                },
            },
            Ok(Ok(None)) => BenchError::Closed {
                url: stream.url.http(),
                doing,
                reason: "the server ended the event stream".to_owned(),
            },
            Ok(Err(error)) => error.at(&stream.url, doing),
            Err(_) => BenchError::Timeout {
                url: stream.url.http(),
                doing,
                after: SILENCE,
            },
        };
        let _ = inbox.send(Err(failure)).await;
        return;
    }
}

/// Turns the stream's bytes into the events' data: `data:` lines joined with `\n`, an event per blank line;
/// comments and other fields are skipped. Lines and events are bounded by [`MAX_CHUNK`].
#[derive(Default)]
struct EventParser {
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
}

impl EventParser {
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<String>, &'static str> {
        let mut events = Vec::new();
        for &byte in bytes {
            if byte != b'\n' {
                if self.line.len() >= MAX_CHUNK {
                    return Err("an event stream line is too long");
                }
                self.line.push(byte);
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.is_empty() {
                if self.has_data {
                    self.has_data = false;
                    let data = std::mem::take(&mut self.data);
                    events.push(String::from_utf8(data).map_err(|_| "an event is not UTF-8")?);
                }
            } else if let Some(value) = line.strip_prefix(b"data:") {
                let value = value.strip_prefix(b" ").unwrap_or(value);
                if self.data.len() + value.len() >= MAX_CHUNK {
                    return Err("an event is too large");
                }
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            self.line = line;
            self.line.clear();
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn events_are_split_joined_and_kept_across_reads() {
        let mut parser = EventParser::default();
        assert_eq!(parser.feed(b":\r\ndata: {}\x1e\n\nda").unwrap(), ["{}\u{1e}"]);
        assert!(parser.feed(b"ta: a\ndata:b\r\n").unwrap().is_empty());
        assert_eq!(parser.feed(b"\nevent: x\n\n").unwrap(), ["a\nb"]);
    }
}
