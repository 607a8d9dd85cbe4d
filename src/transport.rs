//! Transports: how bytes of a connection move between the client and its connection task.
//!
//! A transport owns framing on the wire (WebSocket messages, SSE events, long-poll responses) and
//! transport-level keep-alive (WebSocket pings, the gap between polls), and knows nothing of hubs or of the hub
//! protocol beyond the transfer format. The connection task ([`crate::connection`]) drives it through the
//! [`Transport`] trait; the HTTP layer ([`crate::node::http`]) feeds the HTTP transports through their handles
//! and the shared POST half ([`post_channel`]). Transports call nothing above them.

pub mod long_polling;
pub mod sse;
pub mod upgraded;
pub mod websocket;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use bytestring::ByteString;
use tokio::sync::mpsc;

use crate::protocol::TransferFormat;

/// The transports of the SignalR negotiate response, with their exact names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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
}

/// A message for [`Transport::try_send_now`].
pub enum SendMessage {
    /// Whole records known to be UTF-8, as one Text message.
    Text(ByteString),
    /// Whole records as one message in a transfer format (Text ones are checked).
    Bytes(Bytes, TransferFormat),
}

/// A duplex of protocol bytes for one connection. Its futures need not be `Send`: a transport lives on the HTTP
/// worker that accepted it.
#[allow(async_fn_in_trait)]
pub trait Transport {
    /// Which transport this is.
    fn kind(&self) -> TransportKind;

    /// Whether the transport measures the client's liveness itself, so that the connection must neither send
    /// keep-alive Pings nor expect any from the client: long polling, where the client sends no Pings and the
    /// gap between polls is the liveness signal (docs/protocol.md#long-polling-liveness).
    fn inherent_keep_alive(&self) -> bool {
        false
    }

    /// After [`Transport::recv`] returned `None`: whether the client ended the transport on purpose (a WebSocket
    /// Close frame) rather than vanishing (a dropped socket). Only a vanished client may come back with stateful
    /// reconnect.
    fn closed_by_client(&self) -> bool {
        true
    }

    /// Whether a pending [`Transport::recv`] future that is dropped leaves its wake-up registered, so that the
    /// transport wakes the connection when input arrives even though nobody polls it meanwhile. The connection
    /// then skips polling it on wake-ups that were not the transport's. False unless the transport knows it.
    fn recv_wakes_after_drop(&self) -> bool {
        false
    }

    /// The next chunk of bytes from the client (one WebSocket message, one POST body). `None` when the client
    /// has gone or closed. Must be cancel-safe: the connection task polls it in a `select!`.
    async fn recv(&mut self) -> Option<Result<Bytes, TransportError>>;

    /// Sends whole records as one transport message in `format`.
    async fn send(&mut self, bytes: Bytes, format: TransferFormat) -> Result<(), TransportError>;

    /// Sends whole records already known to be UTF-8 as one Text message. A transport that frames text as text
    /// (WebSockets) overrides it to skip checking the bytes again, once per recipient.
    async fn send_text(&mut self, text: ByteString) -> Result<(), TransportError> {
        self.send(text.into_bytes(), TransferFormat::Text).await
    }

    /// Takes `message` without waiting, writing what the peer takes now and keeping the rest for
    /// [`Transport::poll_flush`], which the caller then polls to completion; or gives it back, for
    /// [`Transport::send`], if this transport cannot. With it, a connection's write needs no future of its own,
    /// so that every idle connection's state is smaller. It must keep the message (or its rest) even if the
    /// flush is never polled: dropping the flush loses nothing, as with `send`.
    fn try_send_now(&mut self, message: SendMessage) -> Result<Option<SendMessage>, TransportError> {
        Ok(Some(message))
    }

    /// Writes what [`Transport::try_send_now`] kept; ready at once if nothing is kept.
    fn poll_flush(&mut self, _cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), TransportError>> {
        std::task::Poll::Ready(Ok(()))
    }

    /// Ends the transport.
    async fn close(self, kind: CloseKind);
}

/// How many POST bodies may wait for the connection task before a POST waits for room (backpressure on sends).
const POST_QUEUE: usize = 4;

/// Creates the client-to-server half of the HTTP transports (SSE and long polling): the HTTP layer hands each POST
/// body to the [`PostSender`], the transport reads them, in order, from the [`PostReceiver`].
pub fn post_channel() -> (PostSender, PostReceiver) {
    let (tx, rx) = mpsc::channel(POST_QUEUE);
    (
        PostSender {
            tx,
            busy: Arc::new(AtomicBool::new(false)),
        },
        PostReceiver { rx },
    )
}

/// The HTTP side of the POST half: at most one POST in flight per connection (a second gets 409,
/// docs/protocol.md#post-send-half).
#[derive(Clone, Debug)]
pub struct PostSender {
    tx: mpsc::Sender<Bytes>,
    busy: Arc<AtomicBool>,
}

impl PostSender {
    /// Claims the connection for one POST; `None` while another POST is still in flight.
    pub fn begin(&self) -> Option<PostInFlight> {
        self.busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| PostInFlight { sender: self.clone() })
    }
}

/// One POST being handed to the connection; releases the claim when dropped (also when the request is aborted).
#[derive(Debug)]
pub struct PostInFlight {
    sender: PostSender,
}

impl PostInFlight {
    /// Hands a whole POST body to the connection task, waiting for room. Fails once the connection has ended.
    pub async fn deliver(&self, body: Bytes) -> Result<(), TransportError> {
        self.sender.tx.send(body).await.map_err(|_| TransportError::Closed)
    }
}

impl Drop for PostInFlight {
    fn drop(&mut self) {
        self.sender.busy.store(false, Ordering::Release);
    }
}

/// The transport side of the POST half.
#[derive(Debug)]
pub struct PostReceiver {
    rx: mpsc::Receiver<Bytes>,
}

impl PostReceiver {
    /// The next POST body; `None` when every sender is gone. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }
}
