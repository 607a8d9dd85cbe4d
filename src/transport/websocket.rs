//! The WebSocket transport over actix-ws (the maintained successor of the deprecated actix-web-actors).
//!
//! JSON goes out as Text frames and MessagePack as Binary frames (docs/protocol.md#websocket-frame-types);
//! WebSocket pings are answered here; continuation frames are aggregated up to the frame cap; a clean end is
//! close code 1000.

use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason, Message, Session};
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::{SinkExt, StreamExt};

use super::{CloseKind, Transport, TransportError, TransportKind};
use crate::protocol::TransferFormat;

/// One accepted WebSocket: the session to write to and the stream of client messages. Boxed (240 bytes): the HTTP
/// layer's task keeps the moved-from value for the connection's life, so an inline one costs every connection twice.
pub struct WebSocketTransport(Box<Inner>);

struct Inner {
    session: Session,
    stream: AggregatedMessageStream,
    max_frame: usize,
    /// Whether the client sent a Close frame (rather than dropping the socket).
    close_received: bool,
}

impl WebSocketTransport {
    /// Wraps an upgraded socket; frames (after aggregation) over `max_frame` bytes end the connection.
    pub fn new(session: Session, stream: actix_ws::MessageStream, max_frame: usize) -> Self {
        let stream = stream
            .max_frame_size(max_frame)
            .aggregate_continuations()
            .max_continuation_size(max_frame);
        WebSocketTransport(Box::new(Inner {
            session,
            stream,
            max_frame,
            close_received: false,
        }))
    }
}

impl Transport for WebSocketTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::WebSockets
    }

    fn closed_by_client(&self) -> bool {
        self.0.close_received
    }

    fn recv_wakes_after_drop(&self) -> bool {
        // The request payload and the close signal that actix-ws's stream polls keep the last waker they were
        // given until they wake it.
        true
    }

    async fn recv(&mut self) -> Option<Result<Bytes, TransportError>> {
        loop {
            let message = match self.0.stream.next().await? {
                Ok(message) => message,
                Err(actix_ws::ProtocolError::Overflow) => {
                    return Some(Err(TransportError::FrameTooLarge(self.0.max_frame)))
                }
                // A socket that broke (rather than a client that broke the protocol): the client may come back.
                Err(actix_ws::ProtocolError::Io(_)) => return Some(Err(TransportError::Closed)),
                Err(error) => return Some(Err(TransportError::Protocol(error.to_string()))),
            };
            match message {
                AggregatedMessage::Text(text) => return Some(Ok(text.into_bytes())),
                AggregatedMessage::Binary(bytes) => return Some(Ok(bytes)),
                AggregatedMessage::Ping(mut payload) => {
                    // A control frame carries at most 125 bytes (what `Session::pong` would cut it to).
                    payload.truncate(125);
                    if self.0.session.send(Message::Pong(payload)).await.is_err() {
                        return None;
                    }
                }
                AggregatedMessage::Pong(_) => {}
                AggregatedMessage::Close(_) => {
                    self.0.close_received = true;
                    return None;
                }
            }
        }
    }

    async fn send(&mut self, bytes: Bytes, format: TransferFormat) -> Result<(), TransportError> {
        let message = match format {
            TransferFormat::Text => match ByteString::try_from(bytes) {
                Ok(text) => Message::Text(text),
                Err(_) => return Err(TransportError::Protocol("a text frame was not UTF-8".into())),
            },
            TransferFormat::Binary => Message::Binary(bytes),
        };
        // The session's `Sink` does what `Session::text` does (ready, send, flush) with a future a fraction of the
        // size, and this future is part of every connection task's state.
        self.0.session.send(message).await.map_err(|_| TransportError::Closed)
    }

    async fn send_text(&mut self, text: ByteString) -> Result<(), TransportError> {
        self.0
            .session
            .send(Message::Text(text))
            .await
            .map_err(|_| TransportError::Closed)
    }

    async fn close(self, kind: CloseKind) {
        let code = match kind {
            CloseKind::Normal => CloseCode::Normal,
        };
        // The client may already be gone; there is nobody to tell then.
        let _ = self
            .0
            .session
            .close(Some(CloseReason {
                code,
                description: None,
            }))
            .await;
    }
}
