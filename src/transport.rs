//! Transports: how bytes of a connection move between the client and its connection task.
//!
//! A transport owns framing on the wire (WebSocket messages; later SSE events and long-poll responses) and
//! transport-level keep-alive (WebSocket pings), and knows nothing of hubs or of the hub protocol beyond the
//! transfer format. The connection task ([`crate::connection`]) drives it through the [`Transport`] trait.

pub mod websocket;

use bytes::Bytes;

use crate::protocol::TransferFormat;

/// The transports of the SignalR negotiate response, with their exact names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// `WebSockets`.
    WebSockets,
    /// `ServerSentEvents`.
    ServerSentEvents,
    /// `LongPolling`.
    LongPolling,
}

impl TransportKind {
    /// The name as it appears in negotiate and in `GetActiveTransportName`.
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::WebSockets => "WebSockets",
            TransportKind::ServerSentEvents => "ServerSentEvents",
            TransportKind::LongPolling => "LongPolling",
        }
    }
}

/// Why a transport stopped.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The client sent a transport frame over the frame cap.
    #[error("a transport frame exceeded the maximum of {0} bytes")]
    FrameTooLarge(usize),
    /// The client broke the transport protocol (for example a bad WebSocket frame).
    #[error("transport protocol error: {0}")]
    Protocol(String),
    /// The peer is gone.
    #[error("the transport is closed")]
    Closed,
}

/// How a transport ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseKind {
    /// A clean close (WebSocket 1000), after a Close message when there is one.
    Normal,
    /// The server failed (WebSocket 1011).
    InternalError,
}

/// A duplex of protocol bytes for one connection. Its futures need not be `Send`: a transport lives on the HTTP
/// worker that accepted it.
#[allow(async_fn_in_trait)]
pub trait Transport {
    /// Which transport this is.
    fn kind(&self) -> TransportKind;

    /// The next chunk of bytes from the client (one WebSocket message, one POST body). `None` when the client
    /// has gone or closed. Must be cancel-safe: the connection task polls it in a `select!`.
    async fn recv(&mut self) -> Option<Result<Bytes, TransportError>>;

    /// Sends whole records as one transport message in `format`.
    async fn send(&mut self, bytes: Bytes, format: TransferFormat) -> Result<(), TransportError>;

    /// Ends the transport.
    async fn close(self, kind: CloseKind);
}
