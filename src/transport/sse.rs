//! The SSE transport (docs/protocol.md#server-sent-events): server-to-client records as `data:` events on one
//! streaming response, client-to-server bytes as POST bodies through the shared POST half.
//!
//! Owns the event framing (one event per transport message, one `data: ` line per line of it) and noticing that
//! the client dropped the event stream. Knows nothing of hubs; the HTTP layer builds the response from
//! [`SseTransport::new`]'s [`SseStream`], the connection task drives the [`SseTransport`].

use std::convert::Infallible;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use tokio::sync::mpsc;

use super::{CloseKind, PostReceiver, Transport, TransportError, TransportKind};
use crate::protocol::TransferFormat;

/// Events waiting to be written to the response; beyond this, sending waits (the connection's slow-consumer
/// policy then decides).
const EVENT_QUEUE: usize = 16;

/// The body that opens every event stream: a comment line, so that the headers and a first byte go out at once
/// and the client's EventSource fires `open` (ASP.NET writes the same for Firefox's sake).
const PREAMBLE: &[u8] = b":\r\n";

/// The connection side of one SSE connection.
pub struct SseTransport {
    events: mpsc::Sender<Bytes>,
    inbound: PostReceiver,
}

/// The response body of an SSE connection: the events, in order; it ends when the transport is closed or dropped.
pub struct SseStream {
    preamble: Option<Bytes>,
    events: mpsc::Receiver<Bytes>,
}

impl SseTransport {
    /// A transport reading POST bodies from `inbound`, and the response body that carries its events.
    pub fn new(inbound: PostReceiver) -> (SseTransport, SseStream) {
        let (events, receiver) = mpsc::channel(EVENT_QUEUE);
        (
            SseTransport { events, inbound },
            SseStream {
                preamble: Some(Bytes::from_static(PREAMBLE)),
                events: receiver,
            },
        )
    }
}

/// Frames one transport message as an SSE event: a `data: ` line per line (`\r\n`, `\n` or `\r` endings), then a
/// blank line. EventSource joins the lines with `\n`, which is all the SignalR text protocols need
/// (docs/protocol.md#sse-framing).
pub fn frame_event(payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 16);
    // SSE ends a line at CR, LF or CRLF; a lone CR left inside a `data:` line would cut the event.
    let mut rest = payload;
    loop {
        let end = rest.iter().position(|byte| *byte == b'\n' || *byte == b'\r');
        out.put_slice(b"data: ");
        out.put_slice(&rest[..end.unwrap_or(rest.len())]);
        out.put_u8(b'\n');
        let Some(end) = end else { break };
        let skip = if rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
    }
    out.put_u8(b'\n');
    out.freeze()
}

impl Transport for SseTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::ServerSentEvents
    }

    async fn recv(&mut self) -> Option<Result<Bytes, TransportError>> {
        // Both branches are cancel-safe. The client ends an SSE connection by closing its EventSource (no
        // DELETE), which drops the response body and with it the event receiver.
        tokio::select! {
            biased;
            body = self.inbound.recv() => body.map(Ok),
            () = self.events.closed() => None,
        }
    }

    async fn send(&mut self, bytes: Bytes, format: TransferFormat) -> Result<(), TransportError> {
        if format == TransferFormat::Binary {
            return Err(TransportError::Protocol(
                "Server-Sent Events carry text only, not binary messages".into(),
            ));
        }
        self.events
            .send(frame_event(&bytes))
            .await
            .map_err(|_| TransportError::Closed)
    }

    async fn close(self, _kind: CloseKind) {
        // Dropping the sender ends the response body once the events already queued are written: the Close
        // message the connection sent last still reaches the client.
        drop(self.events);
    }
}

impl Stream for SseStream {
    type Item = Result<Bytes, Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if let Some(preamble) = self.preamble.take() {
            return std::task::Poll::Ready(Some(Ok(preamble)));
        }
        self.events.poll_recv(cx).map(|event| event.map(Ok))
    }
}

#[cfg(test)]
mod tests {
    use super::frame_event;

    #[test]
    fn one_data_line_per_line() {
        assert_eq!(&frame_event(b"{}\x1e")[..], b"data: {}\x1e\n\n");
        assert_eq!(&frame_event(b"a\r\nb\nc")[..], b"data: a\ndata: b\ndata: c\n\n");
        assert_eq!(&frame_event(b"a\n")[..], b"data: a\ndata: \n\n");
        assert_eq!(&frame_event(b"a\rb")[..], b"data: a\ndata: b\n\n");
    }
}
