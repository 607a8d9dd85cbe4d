//! One task per client connection: it owns the transport, the codec, the bounded mailbox and the timers, and
//! dispatches what the client sends to its [`ConnectionHost`] (the hub layer).
//!
//! The connection is a light tokio task with a cloneable [`ConnectionHandle`], not a ractor actor: an idle
//! ractor actor measured about 10 KB, more than the whole per-connection memory budget.
//!
//! This layer knows the protocol and the [`Transport`] trait, never a concrete hub: hub methods are reached
//! through [`ConnectionHost`], which the hub layer implements. Its life:
//! 1. **Handshake** within `Limits::handshake_timeout`; the first record must be a JSON handshake naming a
//!    protocol the transport can carry.
//! 2. **Connected**: [`ConnectionHost::connected`] registers the connection (and may refuse it).
//! 3. **Loop**: client records are decoded and dispatched; the mailbox is drained in batches (several queued
//!    records written as one transport message); a Ping goes out when nothing was written for
//!    `Limits::keep_alive`; a client silent for `Limits::client_timeout` is closed.
//! 4. **End**: streams are cancelled, pending client results fail with `"Connection '<id>' disconnected."`,
//!    and [`ConnectionHost::disconnected`] unregisters the connection.
//!
//! With stateful reconnect (docs/protocol.md#stateful-reconnect: handshake version 2, WebSockets only), everything the
//! mailbox delivers is numbered and kept in a [`reconnect::ReplayBuffer`] until acked; a client that vanishes
//! leaves the connection *detached* for `Limits::reconnect_window`: it stays registered (groups, user), keeps
//! buffering, and resumes on the transport the HTTP layer hands it through its [`reconnect::ResumeSlot`], by
//! sending a Sequence message and replaying what was not acked. When the window elapses it ends as in step 4.
//!
//! Blocking invocations run one at a time, in arrival order, inside this task (ASP.NET's default of one
//! parallel invocation per client), so what one invocation sends reaches the client before what the next sends.
//! Streaming methods and methods that take client streams run as their own tasks, since they last.

mod mailbox;
pub mod outbound;
pub mod reconnect;
pub mod wake;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::future::{BoxFuture, Either};
use futures_util::stream::BoxStream;
use futures_util::task::AtomicWaker;
use futures_util::StreamExt;
use mailbox::Mailbox;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::protocol::handshake::{self, HandshakeRequest};
use crate::protocol::{CompletionOutcome, EncodeError, HubMessage, NoPayload, Outgoing, Protocol, RawValue};
use crate::transport::{CloseKind, SendMessage, Transport, TransportError, TransportKind};
pub use outbound::{ClientResult, ClientResultError, CloseRequest, EncodeArguments, Invoke, Outbound, SharedFrame};
use reconnect::{ReceiveState, RelayTransport, ReplayBuffer, ResumeSlot};
pub use wake::{deliver_each, WakeBatch, WakeRelay, WakeRelays};

/// The public id of a connection (`Context.ConnectionId`, the client's `connectionId`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct ConnectionId(Arc<str>);

impl ConnectionId {
    /// Wraps an id string.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        ConnectionId(id.into())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnectionId({})", self.0)
    }
}

impl From<&str> for ConnectionId {
    fn from(id: &str) -> Self {
        ConnectionId::new(id)
    }
}

/// The limits and timers of every connection. Defaults are ASP.NET Core's where it has one.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest hub message a client may send, in bytes (ASP.NET: 32 KB).
    pub max_message: usize,
    /// The largest transport frame (one WebSocket message, which may batch several records).
    pub max_frame: usize,
    /// Capacity of a connection's mailbox, in messages; see [`outbound`] for what happens when it is full.
    pub outbound_queue: usize,
    /// Send a Ping when nothing was written for this long.
    pub keep_alive: Duration,
    /// Close a client that sent nothing for this long.
    pub client_timeout: Duration,
    /// Close a connection that sent no complete handshake within this long.
    pub handshake_timeout: Duration,
    /// Items buffered per client-to-server stream before the reader waits for the hub method.
    pub stream_buffer: usize,
    /// At most this many bytes are batched into one transport message.
    pub write_batch: usize,
    /// Coalescing of group and broadcast messages. For a connection that receives them more often than every
    /// half of this on average (over about four arrivals), one that arrives less than this long after the last
    /// write waits until this long after it, so that what arrives meanwhile goes out in the same write: one
    /// `write` per message is most of a fan-out's cost. A connection that receives them less often gets each at
    /// once. Replies, and messages sent to the connection by id (caller, client, user), are never held: they take
    /// held messages with them. Zero writes every message at once.
    pub write_coalesce: Duration,
    /// A long poll with nothing to deliver answers with an empty body after this long (ASP.NET: 90 s).
    pub poll_timeout: Duration,
    /// A long-polling client that has not polled for this long is gone (ASP.NET's disconnect timeout, 15 s).
    pub poll_disconnect_timeout: Duration,
    /// How long a stateful-reconnect connection whose WebSocket dropped waits for the client to come back (ASP.NET
    /// keeps such a connection for its disconnect timeout, 15 s). Zero turns stateful reconnect off: negotiate
    /// then never offers it.
    pub reconnect_window: Duration,
    /// The unacked bytes a stateful-reconnect connection buffers before it stops taking messages (ASP.NET's
    /// `StatefulReconnectBufferSize`, 100 000 bytes); see [`reconnect`] for the policy.
    pub reconnect_buffer_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 32 * 1024,
            max_frame: 1024 * 1024,
            outbound_queue: 1024,
            keep_alive: Duration::from_secs(15),
            client_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(15),
            stream_buffer: 10,
            write_batch: 64 * 1024,
            write_coalesce: Duration::from_millis(30),
            poll_timeout: Duration::from_secs(90),
            poll_disconnect_timeout: Duration::from_secs(15),
            reconnect_window: Duration::from_secs(15),
            reconnect_buffer_bytes: 100_000,
        }
    }
}

/// Why a send to a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeliverError {
    /// The connection has ended.
    #[error("the connection is closed")]
    Closed,
    /// The mailbox was full; the connection is being closed as a slow consumer.
    #[error("the connection's outbound queue is full")]
    Full,
}

/// A cloneable handle to a live connection: its id and its mailbox.
#[derive(Clone)]
pub struct ConnectionHandle {
    id: ConnectionId,
    mailbox: Arc<Mailbox>,
    /// The wake relay of the worker the connection runs on, for batched fan-out wake-ups.
    relay: Option<Arc<WakeRelay>>,
}

impl fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionHandle").field("id", &self.id).finish()
    }
}

impl ConnectionHandle {
    /// The connection's id.
    pub fn id(&self) -> &ConnectionId {
        &self.id
    }

    /// Queues a shared frame without waiting. A full mailbox closes the connection as a slow consumer.
    pub fn deliver(&self, frame: Arc<SharedFrame>) -> Result<(), DeliverError> {
        self.try_send(Outbound::Frame(frame))
    }

    /// As [`ConnectionHandle::deliver`], with the wake-up of the connection's task collected in `batch` (one
    /// remote wake-up per worker per fan-out, see [`wake`]). A `fanout` frame (to a group, to all) may be
    /// coalesced with the next ones ([`Limits::write_coalesce`]); one sent to chosen connections is not.
    pub fn deliver_batched(
        &self,
        frame: Arc<SharedFrame>,
        fanout: bool,
        batch: &mut WakeBatch,
    ) -> Result<(), DeliverError> {
        let message = if fanout {
            Outbound::Fanout(frame)
        } else {
            Outbound::Frame(frame)
        };
        self.mailbox.try_send_batched(message, self.relay.as_ref(), batch)
    }

    /// Queues a message without waiting, with the same slow-consumer policy as [`ConnectionHandle::deliver`].
    pub fn try_send(&self, message: Outbound) -> Result<(), DeliverError> {
        self.mailbox.try_send(message)
    }

    /// Queues a message, waiting for room (backpressure for the connection's own replies).
    pub async fn send(&self, message: Outbound) -> Result<(), DeliverError> {
        self.mailbox.send(message).await
    }

    /// Invokes client method `target` and waits for its result (client results). Fails with
    /// `"Connection '<id>' disconnected."` if the connection ends first, or after `timeout`.
    pub async fn invoke<A>(&self, target: &str, arguments: A, timeout: Duration) -> ClientResult
    where
        A: Serialize + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let message = Outbound::Invoke(Box::new(Invoke {
            target: target.to_owned(),
            arguments: Box::new(arguments),
            reply,
        }));
        if self.send(message).await.is_err() {
            return Err(ClientResultError::Disconnected(self.id.to_string()));
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientResultError::Disconnected(self.id.to_string())),
            Err(_) => Err(ClientResultError::Timeout(timeout)),
        }
    }

    /// Asks the connection to close with a Close message.
    pub fn close(&self, error: Option<String>, allow_reconnect: bool) {
        if self
            .try_send(Outbound::Close(Box::new(CloseRequest { error, allow_reconnect })))
            .is_err()
        {
            self.mailbox.end();
        }
    }

    /// Whether the connection has ended (or is ending).
    pub fn is_closed(&self) -> bool {
        self.mailbox.is_closed()
    }
}

/// What hub code may know about a connection: SignalR's `HubCallerContext` and the request it came from.
#[derive(Debug)]
pub struct Session {
    /// The connection's public id.
    pub id: ConnectionId,
    /// The authenticated user's id, if any.
    pub user: Option<String>,
    /// The claims of the bearer token the connection authenticated with; `None` for an anonymous connection.
    pub claims: Option<Arc<crate::auth::Claims>>,
    /// The transport in use.
    pub transport: TransportKind,
    /// The hub protocol chosen in the handshake.
    pub protocol: Protocol,
    /// The query string of the request that opened the connection (without `?`).
    pub query: String,
    /// Its headers, names in lower case, in order.
    pub headers: RequestHeaders,
    /// The handle to this connection.
    pub handle: ConnectionHandle,
}

impl Session {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)
    }
}

/// The headers of the request a connection came from, names in lower case, in order.
///
/// Kept for the connection's whole life, so they are stored compactly: all names and values in one string, with
/// their ends in a second allocation (owned `(String, String)` pairs would cost two allocations per header, a few
/// hundred bytes per idle connection).
#[derive(Debug, Clone, Default)]
pub struct RequestHeaders {
    text: Box<str>,
    /// For each header, where its name ends and where its value ends in `text`.
    ends: Box<[(u32, u32)]>,
}

impl RequestHeaders {
    /// Every header as (name, value), in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(name_end, value_end)| {
            let (name_end, value_end) = (name_end as usize, value_end as usize);
            let name = self.text.get(start..name_end).unwrap_or_default();
            let value = self.text.get(name_end..value_end).unwrap_or_default();
            start = value_end;
            (name, value)
        })
    }

    /// The first value of header `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    }

    /// How many headers there are.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

impl<N: AsRef<str>, V: AsRef<str>> FromIterator<(N, V)> for RequestHeaders {
    /// Names are stored in lower case. Headers beyond 4 GiB in all (which no HTTP server accepts) are left out.
    fn from_iter<I: IntoIterator<Item = (N, V)>>(headers: I) -> Self {
        let mut text = String::new();
        let mut ends = Vec::new();
        for (name, value) in headers {
            let (name, value) = (name.as_ref(), value.as_ref());
            let Ok(value_end) = u32::try_from(text.len() + name.len() + value.len()) else {
                break;
            };
            text.extend(name.chars().map(|c| c.to_ascii_lowercase()));
            let name_end = text.len() as u32;
            text.push_str(value);
            ends.push((name_end, value_end));
        }
        RequestHeaders {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }
    }
}

/// The request a connection starts from, captured by the HTTP layer before the transport opens.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    /// The authenticated user's id, if any.
    pub user: Option<String>,
    /// The claims of a valid bearer token, if the request carried one.
    pub claims: Option<Arc<crate::auth::Claims>>,
    /// The query string (without `?`).
    pub query: String,
    /// Its headers, names in lower case, in order.
    pub headers: RequestHeaders,
}

/// A value a hub method produced, encodable as a completion result or a stream item in either protocol.
pub trait EncodeValue: Send + 'static {
    /// Appends a StreamItem record.
    fn encode_item(&self, protocol: Protocol, invocation_id: &str, out: &mut Vec<u8>) -> Result<(), EncodeError>;
    /// Appends a Completion record with this value as its result.
    fn encode_result(&self, protocol: Protocol, invocation_id: &str, out: &mut Vec<u8>) -> Result<(), EncodeError>;
}

impl<T: Serialize + Send + 'static> EncodeValue for T {
    fn encode_item(&self, protocol: Protocol, invocation_id: &str, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        protocol.encode::<NoPayload, T>(
            &Outgoing::StreamItem {
                invocation_id,
                item: self,
            },
            out,
        )
    }

    fn encode_result(&self, protocol: Protocol, invocation_id: &str, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        protocol.encode::<NoPayload, T>(
            &Outgoing::Completion {
                invocation_id,
                outcome: CompletionOutcome::Value(self),
            },
            out,
        )
    }
}

/// Items of a client-to-server stream: a value, or the client's error that ended the stream.
pub type UploadItem = Result<RawValue, String>;

/// A hub method call, as the connection hands it to its host.
pub struct Call {
    /// The method name as the client wrote it.
    pub target: String,
    /// Positional arguments, undecoded.
    pub arguments: Vec<RawValue>,
    /// One receiver per client-to-server stream, in the order of the invocation's stream ids.
    pub uploads: Vec<mpsc::Receiver<UploadItem>>,
    /// Cancelled when the client cancels the stream or the connection ends.
    pub cancel: CancellationToken,
}

/// What a hub method produced.
pub enum Reply {
    /// Done, with no value.
    Void,
    /// Done, with a value.
    Value(Box<dyn EncodeValue>),
    /// Failed; the text is what the client sees.
    Error(String),
    /// A stream of items; an `Err` item ends it with that error.
    Stream(BoxStream<'static, Result<Box<dyn EncodeValue>, String>>),
}

/// What a connection needs from the hub that serves it.
pub trait ConnectionHost: Send + Sync + 'static {
    /// Whether a method exists and is a streaming one: `None` if unknown, `Some(true)` if streaming.
    fn method_kind(&self, target: &str) -> Option<bool>;

    /// Runs a method. The future runs inside the connection task or on its own task (streams, uploads).
    fn invoke(&self, session: &Arc<Session>, call: Call) -> BoxFuture<'static, Reply>;

    /// The connection's handshake is accepted. Called before the handshake response is sent, and anything that
    /// makes the connection addressable must be done in the call itself (not in the future), so that a client
    /// that has its response can be reached at once; the future runs after the response is sent, and an `Err`
    /// closes the connection with that error.
    fn connected(&self, session: &Arc<Session>) -> BoxFuture<'static, Result<(), String>>;

    /// The connection ended.
    fn disconnected(&self, session: &Arc<Session>, error: Option<String>) -> BoxFuture<'static, ()>;

    /// The user id of a new connection (SignalR's `IUserIdProvider`): the authenticated user by default.
    fn user_id(&self, request: &RequestInfo) -> Option<String> {
        request.user.clone()
    }
}

/// Everything a new connection starts with.
pub struct ConnectionSetup {
    /// Its public id.
    pub id: ConnectionId,
    /// The request it came from.
    pub request: RequestInfo,
    /// Its limits (shared by the connections of a node: each would otherwise hold its own 160 bytes).
    pub limits: Arc<Limits>,
    /// The hub that serves it.
    pub host: Arc<dyn ConnectionHost>,
    /// Set when stateful reconnect was negotiated: where reconnected transports arrive. It takes effect only if
    /// the handshake asks for protocol version 2.
    pub resume: Option<ResumeSlot>,
    /// The wake relay of the worker the connection runs on ([`WakeRelays::current`] there), if any.
    pub wake_relay: Option<Arc<WakeRelay>>,
}

/// What [`Connection::dispatch`] leaves to do.
enum Dispatched {
    /// Nothing, or the connection ends.
    Done(Option<Ending>),
    /// An item for a client stream, to be sent into its channel (waiting for room); `stream_id` is forgotten if
    /// the method no longer reads it.
    Upload {
        upload: mpsc::Sender<UploadItem>,
        item: UploadItem,
        stream_id: Option<String>,
    },
}

/// How a connection ended, for the log and for `disconnected`.
enum Ending {
    /// The client closed (Close message or transport close).
    ClientClosed,
    /// The server closes, with a Close message carrying this error.
    Close {
        error: Option<String>,
        allow_reconnect: bool,
    },
    /// The transport failed; nothing more can be written.
    TransportLost(String),
}

/// Runs a connection to its end. Spawn it on the worker that accepted the transport.
///
/// An idle connection's memory is mostly this future, so its phases are laid out to keep it small: the handshake
/// runs boxed (its state and the setup it consumes are freed once the connection is up), and the rare, large steps
/// of the connected phase (the ending, a stateful resume, the timers' work) are boxed where they happen. The
/// frequent steps are kept shallow instead: a write to a transport that takes it at once
/// ([`Transport::try_send_now`]) waits on a small poll, and dispatching a client's message is not async, since
/// every level of nested futures adds its state to every idle connection. Spawn the returned future itself (or
/// chain it), rather than awaiting it in an `async` block, which would hold it twice.
pub fn run<T: Transport>(transport: T, mut setup: ConnectionSetup) -> impl std::future::Future<Output = ()> {
    setup.request.user = setup.host.user_id(&setup.request);
    let span = tracing::debug_span!(
        "conn",
        conn_id = %setup.id,
        transport = transport.kind().name(),
        user = setup.request.user.as_deref().unwrap_or("")
    );
    let handshake = Box::pin(Connection::handshake(transport, setup));
    async move {
        if let Some((connection, connected)) = handshake.await {
            connection.live(connected).await;
        }
    }
    .instrument(span)
}

/// The transport a connection writes to: the one it started on, a reconnected one, or none while it waits for
/// the client to reconnect.
enum Link<T> {
    Direct(T),
    Relayed(RelayTransport),
    Detached,
}

impl<T: Transport> Link<T> {
    fn inherent_keep_alive(&self) -> bool {
        match self {
            Link::Direct(transport) => transport.inherent_keep_alive(),
            Link::Relayed(transport) => transport.inherent_keep_alive(),
            Link::Detached => false,
        }
    }

    /// See [`Transport::recv_wakes_after_drop`]; a relay is polled every time, to be safe.
    fn recv_wakes_after_drop(&self) -> bool {
        match self {
            Link::Direct(transport) => transport.recv_wakes_after_drop(),
            Link::Relayed(_) | Link::Detached => false,
        }
    }

    fn closed_by_client(&self) -> bool {
        match self {
            Link::Direct(transport) => transport.closed_by_client(),
            Link::Relayed(transport) => transport.closed_by_client(),
            Link::Detached => true,
        }
    }

    /// Cancel-safe; pending forever while detached.
    async fn recv(&mut self) -> Option<Result<Bytes, TransportError>> {
        match self {
            Link::Direct(transport) => transport.recv().await,
            Link::Relayed(transport) => transport.recv().await,
            Link::Detached => std::future::pending().await,
        }
    }

    async fn send(&mut self, bytes: Bytes, format: crate::protocol::TransferFormat) -> Result<(), TransportError> {
        match self {
            Link::Direct(transport) => transport.send(bytes, format).await,
            // Boxed: a relay's send future is three times a WebSocket's, and every connection's state would pay
            // for it; only a connection that resumed after a stateful reconnect allocates it, per write.
            Link::Relayed(transport) => Box::pin(transport.send(bytes, format)).await,
            Link::Detached => Err(TransportError::Closed),
        }
    }

    /// Hands `piece` to a direct transport that takes it without waiting ([`Link::poll_flush`] then completes
    /// the write); gives it back otherwise, for [`Link::send_piece`].
    fn try_send_now(
        &mut self,
        piece: Piece,
        format: crate::protocol::TransferFormat,
    ) -> Result<Option<Piece>, TransportError> {
        let Link::Direct(transport) = self else {
            return Ok(Some(piece));
        };
        let message = match (piece, format) {
            (Piece::Text(text), crate::protocol::TransferFormat::Text) => SendMessage::Text(text),
            (piece, format) => SendMessage::Bytes(piece.into_bytes(), format),
        };
        Ok(transport.try_send_now(message)?.map(|message| match message {
            SendMessage::Text(text) => Piece::Text(text),
            SendMessage::Bytes(bytes, _) => Piece::Bytes(bytes),
        }))
    }

    fn poll_flush(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), TransportError>> {
        match self {
            Link::Direct(transport) => transport.poll_flush(cx),
            Link::Relayed(_) | Link::Detached => std::task::Poll::Ready(Ok(())),
        }
    }

    async fn send_piece(
        &mut self,
        piece: Piece,
        format: crate::protocol::TransferFormat,
    ) -> Result<(), TransportError> {
        match (piece, format) {
            (Piece::Text(text), crate::protocol::TransferFormat::Text) => match self {
                Link::Direct(transport) => transport.send_text(text).await,
                Link::Relayed(transport) => Box::pin(transport.send_text(text)).await,
                Link::Detached => Err(TransportError::Closed),
            },
            (piece, format) => self.send(piece.into_bytes(), format).await,
        }
    }

    async fn close(self, kind: CloseKind) {
        match self {
            Link::Direct(transport) => transport.close(kind).await,
            Link::Relayed(transport) => transport.close(kind).await,
            Link::Detached => {}
        }
    }
}

/// The stateful-reconnect state of a connection that negotiated it.
struct Stateful {
    sent: ReplayBuffer,
    received: ReceiveState,
    slot: ResumeSlot,
    /// Set while detached: when the reconnect window ends.
    detached_until: Option<Instant>,
    /// When the pending Ack of received messages goes out.
    ack_due: Option<Instant>,
}

/// How long received messages wait before they are acked, so that one Ack covers a burst (the client's interval).
const ACK_DELAY: Duration = Duration::from_secs(1);

/// Waits for a reconnected transport; pending forever for a connection without stateful reconnect.
async fn next_relay(stateful: &mut Option<Box<Stateful>>) -> RelayTransport {
    match stateful {
        Some(stateful) => stateful.slot.next().await,
        None => std::future::pending().await,
    }
}

/// A connection whose handshake was answered, and the rest of the hub's `connected` for it.
type Accepted<T> = (Box<Connection<T>>, BoxFuture<'static, Result<(), String>>);

struct Connection<T: Transport> {
    transport: Link<T>,
    /// Boxed: rare, and an idle connection without it should not pay for its size.
    stateful: Option<Box<Stateful>>,
    protocol: Protocol,
    limits: Arc<Limits>,
    host: Arc<dyn ConnectionHost>,
    session: Arc<Session>,
    mailbox: Arc<Mailbox>,
    /// The parent of the cancellation tokens of calls that run on tasks of their own (streams), made on the first
    /// such call.
    calls: Option<CancellationToken>,
    inbound: BytesMut,
    recv_gate: RecvGate,
    last_read: Instant,
    last_write: Instant,
    /// Group and broadcast records held back until `last_write + write_coalesce` (see [`Limits::write_coalesce`]);
    /// boxed, as most connections never hold any.
    held: Option<Box<Batch>>,
    /// When group or broadcast messages last arrived, and the moving average of the gaps between arrivals (in
    /// microseconds): coalescing starts only for a connection that receives them often.
    last_arrival: Instant,
    arrival_gap_micros: u32,
    /// Blocking invocations waiting for the one in `current` to finish.
    queued: VecDeque<BoxFuture<'static, ()>>,
    current: Option<BoxFuture<'static, ()>>,
    /// Client-to-server streams by stream id.
    uploads: HashMap<String, mpsc::Sender<UploadItem>>,
    /// Server-to-client streams by invocation id, to cancel them.
    streams: HashMap<String, CancellationToken>,
    /// Client results awaiting a Completion, by the invocation id this server assigned.
    results: HashMap<String, oneshot::Sender<ClientResult>>,
    next_result_id: u64,
}

impl<T: Transport> Connection<T> {
    /// Reads the handshake and answers it; `None` if the connection ended there.
    async fn handshake(mut transport: T, setup: ConnectionSetup) -> Option<Accepted<T>> {
        let limits = setup.limits;
        let mut inbound = BytesMut::new();
        let request = match read_handshake(&mut transport, &mut inbound, &limits).await {
            Ok(request) => request,
            Err(HandshakeFailure::Reply(error)) => {
                tracing::debug!(%error, "handshake refused");
                let mut out = Vec::new();
                handshake::write_response(Some(&error), &mut out);
                let _ = transport
                    .send(Bytes::from(out), crate::protocol::TransferFormat::Text)
                    .await;
                transport.close(CloseKind::Normal).await;
                return None;
            }
            Err(HandshakeFailure::Gone(reason)) => {
                tracing::debug!(%reason, "no handshake");
                transport.close(CloseKind::Normal).await;
                return None;
            }
        };
        let Some(protocol) = Protocol::from_name(&request.protocol) else {
            // read_handshake only returns known protocols.
            return None;
        };
        let mailbox = Arc::new(Mailbox::new(limits.outbound_queue));
        let handle = ConnectionHandle {
            id: setup.id.clone(),
            mailbox: mailbox.clone(),
            relay: setup.wake_relay,
        };
        let session = Arc::new(Session {
            id: setup.id,
            user: setup.request.user,
            claims: setup.request.claims,
            transport: transport.kind(),
            protocol,
            query: setup.request.query,
            headers: setup.request.headers,
            handle,
        });
        let now = Instant::now();
        let stateful = match setup.resume {
            Some(slot) if request.version >= 2 && !limits.reconnect_window.is_zero() => Some(Box::new(Stateful {
                sent: ReplayBuffer::new(limits.reconnect_buffer_bytes),
                received: ReceiveState::new(),
                slot,
                detached_until: None,
                ack_due: None,
            })),
            _ => None,
        };
        // As if messages had come a window apart: a few quick ones start coalescing, one quick pair does not.
        let arrival_gap_micros = u32::try_from(limits.write_coalesce.as_micros()).unwrap_or(u32::MAX);
        let mut connection = Connection {
            transport: Link::Direct(transport),
            stateful,
            protocol,
            limits,
            host: setup.host,
            session,
            mailbox,
            calls: None,
            inbound,
            recv_gate: RecvGate::new(),
            last_read: now,
            last_write: now,
            held: None,
            last_arrival: now,
            arrival_gap_micros,
            queued: VecDeque::new(),
            current: None,
            uploads: HashMap::new(),
            streams: HashMap::new(),
            results: HashMap::new(),
            next_result_id: 0,
        };
        // Registered before the response goes out: a client that has it may at once have the server address this
        // connection (a hub method another client calls, an HTTP request of its own), and must not find it missing.
        // What the hub sends meanwhile waits in the mailbox, which is read after the response is written.
        let connected = connection.host.connected(&connection.session);
        let mut response = Vec::new();
        handshake::write_response(None, &mut response);
        match connection.write(Bytes::from(response)).await {
            // The main loop finds the transport gone and ends the connection the usual way (so `disconnected`
            // follows `connected`, as for any connection).
            Err(error) => tracing::debug!(%error, "handshake response not delivered"),
            Ok(()) => tracing::debug!(protocol = protocol.name(), "connected"),
        }
        Some((Box::new(connection), connected))
    }

    /// The connected phase: the rest of the hub's `connected`, the main loop, the ending. Boxed, since an async fn
    /// keeps its argument twice (as given and as moved into its body), and this one is the largest part of a
    /// connection.
    async fn live(mut self: Box<Self>, connected: BoxFuture<'static, Result<(), String>>) {
        let connection = &mut self;
        let ending = match connected.await {
            Ok(()) => connection.serve().await,
            Err(error) => Ending::Close {
                error: Some(error),
                allow_reconnect: false,
            },
        };
        // Boxed: the ending (Close message, close frame, each under a timeout) is the largest state of the task,
        // and an inline one would be paid for by every idle connection.
        Box::pin(self.finish(ending)).await;
    }

    /// The main loop, until the connection ends.
    async fn serve(&mut self) -> Ending {
        // Records that arrived in the same frame as the handshake.
        if let Some(ending) = self.process_inbound().await {
            return ending;
        }
        // One timer serves every deadline (keep-alive, client timeout, pending Ack, reconnect window). Deadlines
        // that move later (every write and read moves two of them) leave it armed early: it then fires, finds
        // nothing due and is re-armed. So a busy connection neither registers nor cancels a timer per wake-up.
        let mut timer = std::pin::pin!(sleep_until(self.next_deadline().unwrap_or_else(Instant::now)));
        let mut timer_armed = true;
        loop {
            if self.mailbox.is_ending() {
                return slow_consumer();
            }
            match self.next_deadline() {
                Some(at) if !timer_armed || at < timer.deadline() => {
                    timer.as_mut().reset(at);
                    timer_armed = true;
                }
                Some(_) => {}
                None => timer_armed = false,
            }
            let has_current = self.current.is_some();
            // A full replay buffer takes nothing more until the client acks (see `reconnect`).
            let buffer_full = self.stateful.as_ref().is_some_and(|stateful| stateful.sent.is_full());
            tokio::select! {
                biased;
                // Otherwise the ending flag wakes the mailbox's receive.
                () = self.mailbox.ended(), if buffer_full => return slow_consumer(),
                message = self.mailbox.recv(), if !buffer_full => {
                    if let Some(ending) = self.drain_mailbox(message).await {
                        return ending;
                    }
                }
                () = poll_current(&mut self.current), if has_current => {
                    self.current = self.queued.pop_front();
                }
                chunk = self.recv_gate.recv(&mut self.transport) => {
                    match chunk {
                        None if !self.transport.closed_by_client() && self.detach() => {}
                        None => return Ending::ClientClosed,
                        Some(Err(TransportError::Closed)) if self.detach() => {}
                        Some(Err(error)) => return Ending::Close {
                            error: Some(format!("Connection closed with an error. {error}")),
                            allow_reconnect: false,
                        },
                        Some(Ok(bytes)) => {
                            self.last_read = Instant::now();
                            self.inbound.extend_from_slice(&bytes);
                            if let Some(ending) = self.process_inbound().await {
                                return ending;
                            }
                        }
                    }
                }
                relay = next_relay(&mut self.stateful) => Box::pin(self.attach(relay)).await,
                () = timer.as_mut(), if timer_armed => {
                    timer_armed = false;
                    // Boxed: at most a few times a minute, and large (it writes).
                    if let Some(ending) = Box::pin(self.on_deadline()).await {
                        return ending;
                    }
                }
            }
        }
    }

    /// Whether this connection sends keep-alive Pings and times out a silent client: not while detached (nobody
    /// to ping), nor on a transport that measures liveness itself (long polling, whose client sends no Pings).
    fn keeps_alive(&self) -> bool {
        let attached = self
            .stateful
            .as_ref()
            .is_none_or(|stateful| stateful.detached_until.is_none());
        attached && !self.transport.inherent_keep_alive()
    }

    /// The earliest deadline the connection waits for, if any.
    fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |at: Instant| next = Some(next.map_or(at, |next| next.min(at)));
        if self.held.is_some() {
            consider(self.last_write + self.limits.write_coalesce);
        }
        if self.keeps_alive() {
            consider(self.last_write + self.limits.keep_alive);
            consider(self.last_read + self.limits.client_timeout);
        }
        if let Some(stateful) = &self.stateful {
            match stateful.detached_until {
                Some(until) => consider(until),
                None => {
                    if let Some(due) = stateful.ack_due {
                        consider(due);
                    }
                }
            }
        }
        next
    }

    /// Does whatever deadline has passed: end a reconnect window, send a pending Ack, time out a silent client,
    /// or send a keep-alive Ping.
    async fn on_deadline(&mut self) -> Option<Ending> {
        let now = Instant::now();
        if self.held.is_some() && self.last_write + self.limits.write_coalesce <= now {
            if let Err(error) = self.write_held().await {
                return Some(self.lost(error));
            }
        }
        if let Some(stateful) = &mut self.stateful {
            if stateful.detached_until.is_some_and(|until| until <= now) {
                return Some(Ending::TransportLost(
                    "the client did not reconnect within the reconnect window".into(),
                ));
            }
            if stateful.detached_until.is_none() && stateful.ack_due.is_some_and(|due| due <= now) {
                stateful.ack_due = None;
                if let Some(sequence_id) = stateful.received.take_ack() {
                    let mut out = Vec::new();
                    let message: Outgoing<'_, NoPayload, NoPayload> = Outgoing::Ack { sequence_id };
                    if self.protocol.encode(&message, &mut out).is_ok() {
                        if let Err(error) = self.write(Bytes::from(out)).await {
                            return Some(self.lost(error));
                        }
                    }
                }
            }
        }
        if !self.keeps_alive() {
            return None;
        }
        if self.last_write + self.limits.keep_alive <= now {
            let mut ping = Vec::new();
            if self
                .protocol
                .encode::<NoPayload, NoPayload>(&Outgoing::Ping, &mut ping)
                .is_ok()
            {
                if let Err(error) = self.write(Bytes::from(ping)).await {
                    return Some(self.lost(error));
                }
            }
        }
        if self.last_read + self.limits.client_timeout <= now {
            return Some(Ending::Close {
                error: Some("Server timeout elapsed without receiving a message from the client.".into()),
                allow_reconnect: true,
            });
        }
        None
    }

    /// Writes `first` and whatever else is queued, batched into transport messages of at most `write_batch`.
    async fn drain_mailbox(&mut self, first: Outbound) -> Option<Ending> {
        // Held records go first: order is the mailbox's.
        let mut batch = self.held.take().map(|held| *held).unwrap_or_default();
        // Whether everything in the batch is a group or broadcast fan-out frame (which may be held back).
        let mut only_frames = true;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            only_frames &= matches!(message, Outbound::Fanout(_));
            let record = match message {
                Outbound::Frame(frame) | Outbound::Fanout(frame) => match self.protocol {
                    Protocol::Json => frame.text().cloned().map(Piece::Text),
                    Protocol::MessagePack => frame.bytes(self.protocol).cloned().map(Piece::Bytes),
                },
                Outbound::Own(bytes) => Some(Piece::Bytes(*bytes)),
                Outbound::Invoke(invoke) => {
                    let Invoke {
                        target,
                        arguments,
                        reply,
                    } = *invoke;
                    self.next_result_id += 1;
                    let id = format!("r{}", self.next_result_id);
                    let mut out = Vec::new();
                    match arguments.encode_invocation(self.protocol, &id, &target, &mut out) {
                        Ok(()) => {
                            self.results.insert(id, reply);
                            Some(Piece::Bytes(Bytes::from(out)))
                        }
                        Err(error) => {
                            let _ = reply.send(Err(ClientResultError::BadResult(error.to_string())));
                            None
                        }
                    }
                }
                Outbound::StreamEnded(id) => {
                    self.streams.remove(id.as_str());
                    None
                }
                Outbound::Close(close) => {
                    if let Err(error) = self.flush(&mut batch).await {
                        return Some(self.lost(error));
                    }
                    return Some(Ending::Close {
                        error: close.error,
                        allow_reconnect: close.allow_reconnect,
                    });
                }
            };
            if let Some(record) = record {
                // Mailbox records are trackable (docs/protocol.md#trackable-messages): numbered, kept until acked.
                if let Some(stateful) = &mut self.stateful {
                    stateful.sent.push(record.as_bytes().clone());
                }
                batch.push(record);
            }
            if batch.len() >= self.limits.write_batch {
                if let Err(error) = self.flush(&mut batch).await {
                    return Some(self.lost(error));
                }
            }
            let buffer_full = self.stateful.as_ref().is_some_and(|stateful| stateful.sent.is_full());
            // A slow consumer flagged meanwhile may have messages queued after the one it was refused: none of them
            // may be written.
            next = if buffer_full || self.mailbox.is_ending() {
                None
            } else {
                self.mailbox.try_recv()
            };
        }
        if only_frames && self.coalesces() && batch.len() > 0 {
            self.held = Some(Box::new(batch));
            return None;
        }
        match self.flush(&mut batch).await {
            Ok(()) => None,
            Err(error) => Some(self.lost(error)),
        }
    }

    /// Whether group and broadcast records that just arrived wait for company (see [`Limits::write_coalesce`]):
    /// when they arrive more often than every half window on average, and the last write is less than a window
    /// old. Updates the arrival average.
    fn coalesces(&mut self) -> bool {
        let coalesce = self.limits.write_coalesce;
        if coalesce.is_zero() {
            return false;
        }
        let now = Instant::now();
        let gap = u32::try_from(now.duration_since(self.last_arrival).as_micros()).unwrap_or(u32::MAX);
        self.last_arrival = now;
        // A moving average over about four arrivals: one quick pair does not start coalescing.
        self.arrival_gap_micros = ((u64::from(self.arrival_gap_micros) * 3 + u64::from(gap)) / 4)
            .try_into()
            .unwrap_or(u32::MAX);
        let often = u128::from(self.arrival_gap_micros) * 2 < coalesce.as_micros();
        often && now.duration_since(self.last_write) < coalesce
    }

    /// Writes the records held back for coalescing, if any.
    async fn write_held(&mut self) -> Result<(), crate::transport::TransportError> {
        match self.held.take() {
            Some(mut held) => self.flush(&mut held).await,
            None => Ok(()),
        }
    }

    async fn flush(&mut self, batch: &mut Batch) -> Result<(), crate::transport::TransportError> {
        match batch.take() {
            Some(piece) => self.write_piece(piece).await,
            None => Ok(()),
        }
    }

    /// Writes one transport message. A write that waits on a client that stopped reading gives up as soon as the
    /// connection is flagged a slow consumer (its mailbox overflowed meanwhile): otherwise the task would wait on
    /// the socket forever and never close it.
    ///
    /// With stateful reconnect a failed write detaches the connection instead of failing (its records are in the
    /// replay buffer), and a write while detached is skipped.
    async fn write(&mut self, bytes: Bytes) -> Result<(), crate::transport::TransportError> {
        self.write_piece(Piece::Bytes(bytes)).await
    }

    async fn write_piece(&mut self, piece: Piece) -> Result<(), crate::transport::TransportError> {
        if matches!(self.transport, Link::Detached) && self.stateful.is_some() {
            return Ok(());
        }
        // Records held back for coalescing were queued before this one: they go first, in the same write.
        let piece = match self.held.take() {
            Some(mut held) => {
                held.push(piece);
                match held.take() {
                    Some(joined) => joined,
                    None => return Ok(()),
                }
            }
            None => piece,
        };
        self.last_write = Instant::now();
        let format = self.protocol.transfer_format();
        let transport = &mut self.transport;
        let mailbox = &self.mailbox;
        let write = match transport.try_send_now(piece, format) {
            // Taken (a direct WebSocket): what the socket did not take at once is written as it drains.
            Ok(None) => Either::Left(std::future::poll_fn(|cx| transport.poll_flush(cx))),
            // Boxed: only the other transports (SSE, long polling, a relayed socket, actix-ws) come here, and
            // inline, their send would be part of every connection's state (one allocation per write for them).
            Ok(Some(piece)) => Either::Right(Box::pin(transport.send_piece(piece, format))),
            Err(error) => return self.written(Err(error)),
        };
        let sent = tokio::select! {
            biased;
            sent = write => sent,
            () = mailbox.ended() => Err(crate::transport::TransportError::Closed),
        };
        self.written(sent)
    }

    /// The outcome of a write: with stateful reconnect, a failed one detaches the connection instead.
    fn written(
        &mut self,
        sent: Result<(), crate::transport::TransportError>,
    ) -> Result<(), crate::transport::TransportError> {
        match sent {
            Err(_) if !self.mailbox.is_ending() && self.detach() => Ok(()),
            sent => sent,
        }
    }

    /// Lets go of a lost transport and waits for the client to reconnect, if stateful reconnect is on; `false`
    /// (nothing done) otherwise.
    fn detach(&mut self) -> bool {
        let Some(stateful) = &mut self.stateful else {
            return false;
        };
        if stateful.detached_until.is_none() {
            tracing::debug!("transport lost; waiting for a stateful reconnect");
            stateful.detached_until = Some(Instant::now() + self.limits.reconnect_window);
            stateful.ack_due = None;
            self.transport = Link::Detached;
            // Held records are in the replay buffer, which the client gets after it reconnects.
            self.held = None;
            // A record cut short by the drop is sent again, whole, by the client after it reconnects.
            self.inbound.clear();
        }
        true
    }

    /// Resumes on a reconnected transport (replacing the current one, if the drop was not noticed yet): Sequence with the first unacked id, then the unacked records in order
    /// (docs/protocol.md#resuming). The client's records are dropped until its own Sequence message arrives.
    async fn attach(&mut self, relay: RelayTransport) {
        let Some(stateful) = &mut self.stateful else {
            return;
        };
        tracing::debug!(unacked_bytes = stateful.sent.len_bytes(), "stateful reconnect");
        stateful.detached_until = None;
        stateful.ack_due = None;
        stateful.received.reconnected();
        // A record cut short on the old transport is sent again, whole, after the client's Sequence message.
        self.inbound.clear();
        let mut out = Vec::new();
        let sequence: Outgoing<'_, NoPayload, NoPayload> = Outgoing::Sequence {
            sequence_id: stateful.sent.resume_id(),
        };
        if self.protocol.encode(&sequence, &mut out).is_err() {
            return;
        }
        let replay: Vec<Bytes> = stateful.sent.unacked().cloned().collect();
        // Held records are among the unacked ones replayed here.
        self.held = None;
        self.transport = Link::Relayed(relay);
        self.recv_gate.open();
        let now = Instant::now();
        self.last_read = now;
        let mut batch = Batch::default();
        batch.push(Piece::Bytes(Bytes::from(out)));
        for record in replay {
            if batch.len() + record.len() > self.limits.write_batch && self.flush(&mut batch).await.is_err() {
                return;
            }
            batch.push(Piece::Bytes(record));
        }
        let _ = self.flush(&mut batch).await;
    }

    /// How the connection ends after a failed write: a slow consumer if that is why the write gave up.
    fn lost(&self, error: crate::transport::TransportError) -> Ending {
        if self.mailbox.is_ending() {
            slow_consumer()
        } else {
            Ending::TransportLost(error.to_string())
        }
    }

    /// Decodes and dispatches every whole record in the inbound buffer.
    async fn process_inbound(&mut self) -> Option<Ending> {
        loop {
            let message = match self.protocol.decode(&mut self.inbound, self.limits.max_message) {
                Ok(Some(message)) => message,
                Ok(None) => return None,
                Err(error) => {
                    tracing::debug!(%error, "bad message from client");
                    return Some(Ending::Close {
                        error: Some(format!("Connection closed with an error. {error}")),
                        allow_reconnect: false,
                    });
                }
            };
            if let Some(stateful) = &mut self.stateful {
                match &message {
                    HubMessage::Ack { sequence_id } => {
                        stateful.sent.ack(*sequence_id);
                        continue;
                    }
                    HubMessage::Sequence { sequence_id } => {
                        if let Err(error) = stateful.received.sequence(*sequence_id) {
                            return Some(Ending::Close {
                                error: Some(error.to_string()),
                                allow_reconnect: false,
                            });
                        }
                        continue;
                    }
                    _ => {
                        let trackable = matches!(
                            message,
                            HubMessage::Invocation { .. }
                                | HubMessage::StreamItem { .. }
                                | HubMessage::Completion { .. }
                                | HubMessage::CancelInvocation { .. }
                        );
                        if !stateful.received.accept(trackable) {
                            continue;
                        }
                        if trackable && stateful.ack_due.is_none() {
                            stateful.ack_due = Some(Instant::now() + ACK_DELAY);
                        }
                    }
                }
            }
            match self.dispatch(message) {
                Dispatched::Done(None) => {}
                Dispatched::Done(Some(ending)) => return Some(ending),
                Dispatched::Upload {
                    upload,
                    item,
                    stream_id,
                } => {
                    // Waiting here is the backpressure on an upload: the method runs on its own task. Boxed:
                    // client streams are rare, and an inline send future would enlarge every connection's state.
                    if Box::pin(upload.send(item)).await.is_err() {
                        if let Some(stream_id) = stream_id {
                            self.uploads.remove(&stream_id);
                        }
                    }
                }
            }
        }
    }

    /// Acts on one message from the client. Not async, so that its state is no part of the connection's: the one
    /// step that may wait (an item for a client stream) is handed back to the caller.
    fn dispatch(&mut self, message: HubMessage) -> Dispatched {
        match message {
            HubMessage::Invocation {
                invocation_id,
                target,
                arguments,
                stream_ids,
                streaming,
            } => {
                return Dispatched::Done(self.start_invocation(invocation_id, target, arguments, stream_ids, streaming))
            }
            HubMessage::StreamItem { invocation_id, item } => {
                if let Some(upload) = self.uploads.get(&invocation_id) {
                    return Dispatched::Upload {
                        upload: upload.clone(),
                        item: Ok(item),
                        stream_id: Some(invocation_id),
                    };
                }
                tracing::debug!(%invocation_id, "stream item for an unknown stream");
            }
            HubMessage::Completion { invocation_id, outcome } => {
                if let Some(upload) = self.uploads.remove(&invocation_id) {
                    if let CompletionOutcome::Error(error) = outcome {
                        return Dispatched::Upload {
                            upload,
                            item: Err(error),
                            stream_id: None,
                        };
                    }
                } else if let Some(reply) = self.results.remove(&invocation_id) {
                    let result = match outcome {
                        CompletionOutcome::Void => Ok(None),
                        CompletionOutcome::Value(value) => Ok(Some(value)),
                        CompletionOutcome::Error(error) => Err(ClientResultError::Client(error)),
                    };
                    let _ = reply.send(result);
                } else {
                    tracing::debug!(%invocation_id, "completion for an unknown invocation");
                }
            }
            HubMessage::CancelInvocation { invocation_id } => {
                if let Some(cancel) = self.streams.remove(&invocation_id) {
                    cancel.cancel();
                }
            }
            HubMessage::Ping => {}
            HubMessage::Close { error, .. } => {
                if let Some(error) = error {
                    tracing::debug!(%error, "client closed with an error");
                }
                return Dispatched::Done(Some(Ending::ClientClosed));
            }
            // Handled before dispatch when stateful reconnect is on; meaningless otherwise.
            HubMessage::Ack { .. } | HubMessage::Sequence { .. } => {}
            HubMessage::Unknown { message_type } => {
                tracing::debug!(message_type, "ignored a message of unknown type");
            }
        }
        Dispatched::Done(None)
    }

    fn start_invocation(
        &mut self,
        invocation_id: Option<String>,
        target: String,
        arguments: Vec<RawValue>,
        stream_ids: Vec<String>,
        streaming: bool,
    ) -> Option<Ending> {
        let handle = self.session.handle.clone();
        let protocol = self.protocol;
        let reply_to = |id: &Option<String>, error: String| {
            if let Some(id) = id {
                let bytes = encode_error(protocol, id, &error);
                if let Some(bytes) = bytes {
                    let _ = handle.try_send(Outbound::own(bytes));
                }
            }
        };
        let Some(method_streams) = self.host.method_kind(&target) else {
            reply_to(
                &invocation_id,
                format!(
                    "Failed to invoke '{target}' due to an error on the server. HubException: Method does not exist."
                ),
            );
            return None;
        };
        if method_streams && !streaming {
            reply_to(
                &invocation_id,
                format!(
                    "The client attempted to invoke the streaming '{target}' method with a non-streaming invocation."
                ),
            );
            return None;
        }
        if !method_streams && streaming {
            reply_to(
                &invocation_id,
                format!(
                    "The client attempted to invoke the non-streaming '{target}' method with a streaming invocation."
                ),
            );
            return None;
        }
        let mut uploads = Vec::with_capacity(stream_ids.len());
        for stream_id in &stream_ids {
            let (tx, rx) = mpsc::channel(self.limits.stream_buffer.max(1));
            self.uploads.insert(stream_id.clone(), tx);
            uploads.push(rx);
        }
        // A call that runs inside this task (no streams) is cancelled by dropping it, which its guard turns into
        // cancelling its token; only calls on tasks of their own hang off `calls`. So an idle connection that made
        // calls keeps no token tree.
        let inline = !streaming && stream_ids.is_empty();
        let cancel = if inline {
            CancellationToken::new()
        } else {
            self.calls.get_or_insert_with(CancellationToken::new).child_token()
        };
        let guard = inline.then(|| cancel.clone().drop_guard());
        let call = Call {
            target,
            arguments,
            uploads,
            cancel: cancel.clone(),
        };
        let reply = self.host.invoke(&self.session, call);
        let handle = self.session.handle.clone();
        if streaming {
            // A stream invocation without an id has no one to stream to.
            let id = invocation_id?;
            self.streams.insert(id.clone(), cancel.clone());
            tokio::spawn(stream_reply(reply, handle, protocol, id, cancel).instrument(tracing::Span::current()));
            return None;
        }
        let run = async move {
            let reply = reply.await;
            // Done: nothing left to cancel.
            if let Some(guard) = guard {
                guard.disarm();
            }
            let Some(id) = invocation_id else { return };
            let bytes = match reply {
                Reply::Void => encode_void(protocol, &id),
                Reply::Value(value) => {
                    let mut out = Vec::new();
                    match value.encode_result(protocol, &id, &mut out) {
                        Ok(()) => Some(Bytes::from(out)),
                        Err(error) => encode_error(protocol, &id, &format!("The result could not be sent: {error}")),
                    }
                }
                Reply::Error(error) => encode_error(protocol, &id, &error),
                Reply::Stream(_) => encode_error(protocol, &id, "A non-streaming method returned a stream."),
            };
            if let Some(bytes) = bytes {
                let _ = handle.send(Outbound::own(bytes)).await;
            }
        };
        if stream_ids.is_empty() {
            let run = Box::pin(run.instrument(tracing::Span::current()));
            if self.current.is_none() {
                self.current = Some(run);
            } else {
                self.queued.push_back(run);
            }
        } else {
            tokio::spawn(run.instrument(tracing::Span::current()));
        }
        None
    }

    async fn finish(mut self, ending: Ending) {
        self.mailbox.end();
        if let Some(calls) = &self.calls {
            calls.cancel();
        }
        let id = self.session.id.to_string();
        for (_, reply) in self.results.drain() {
            let _ = reply.send(Err(ClientResultError::Disconnected(id.clone())));
        }
        self.uploads.clear();
        self.queued.clear();
        self.current = None;
        let (error, kind) = match ending {
            Ending::ClientClosed => {
                tracing::debug!("client closed");
                (None, Some(CloseKind::Normal))
            }
            Ending::Close { error, allow_reconnect } => {
                tracing::debug!(error = error.as_deref().unwrap_or(""), "server closes");
                let mut out = Vec::new();
                let close: Outgoing<'_, NoPayload, NoPayload> = Outgoing::Close {
                    error: error.as_deref(),
                    allow_reconnect,
                };
                if self.protocol.encode(&close, &mut out).is_ok() {
                    // Records held back for coalescing go out first, in the same message.
                    let mut batch = self.held.take().map(|held| *held).unwrap_or_default();
                    batch.push(Piece::Bytes(Bytes::from(out)));
                    if let Some(piece) = batch.take() {
                        // Bounded: a client that stopped reading cannot take the Close, and must not keep the task.
                        let format = self.protocol.transfer_format();
                        let _ =
                            tokio::time::timeout(CLOSE_GRACE, self.transport.send(piece.into_bytes(), format)).await;
                    }
                }
                (error, Some(CloseKind::Normal))
            }
            Ending::TransportLost(reason) => {
                tracing::debug!(%reason, "transport lost");
                (Some(reason), None)
            }
        };
        self.host.disconnected(&self.session, error).await;
        if let Some(kind) = kind {
            let _ = tokio::time::timeout(CLOSE_GRACE, self.transport.close(kind)).await;
        }
        // Anything still queued after the end is dropped with the mailbox; client results in it fail as their
        // reply senders drop, which `invoke` reports as a disconnect.
        self.mailbox.close();
    }
}

/// Lets the main loop poll the transport only when the transport woke the task (or may hold more input). The
/// task wakes for every mailbox message, and polling an idle WebSocket's stream each time (through actix-ws's
/// stream and the request payload) cost about 370 instructions per delivery.
struct RecvGate {
    flag: Arc<GateFlag>,
    /// Wakes `flag`; what the transport registers instead of the task's own waker.
    waker: Waker,
}

struct GateFlag {
    ready: AtomicBool,
    task: AtomicWaker,
}

impl Wake for GateFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl RecvGate {
    fn new() -> RecvGate {
        let flag = Arc::new(GateFlag {
            ready: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(flag.clone());
        RecvGate { flag, waker }
    }

    /// The transport changed: poll it at the next turn.
    fn open(&self) {
        self.flag.ready.store(true, Ordering::Release);
    }

    /// [`Link::recv`], polled only when it may make progress (every time, for a transport whose dropped `recv`
    /// forgets its wake-ups). Cancel-safe, as `Link::recv` is.
    async fn recv<T: Transport>(&self, link: &mut Link<T>) -> Option<Result<Bytes, TransportError>> {
        if !link.recv_wakes_after_drop() {
            return link.recv().await;
        }
        std::future::poll_fn(|cx| {
            self.flag.task.register(cx.waker());
            if !self.flag.ready.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
            let recv = link.recv();
            let mut recv = std::pin::pin!(recv);
            match recv.as_mut().poll(&mut Context::from_waker(&self.waker)) {
                Poll::Ready(chunk) => {
                    // More input may be buffered already, with no wake-up to come for it.
                    self.open();
                    Poll::Ready(chunk)
                }
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

/// One transport message's content: bytes, or text already known to be UTF-8 (a shared JSON frame), which a
/// WebSocket sends without checking it again.
enum Piece {
    Bytes(Bytes),
    Text(ByteString),
}

impl Piece {
    fn as_bytes(&self) -> &Bytes {
        match self {
            Piece::Bytes(bytes) => bytes,
            Piece::Text(text) => text.as_bytes(),
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Piece::Bytes(bytes) => bytes,
            Piece::Text(text) => text.into_bytes(),
        }
    }
}

/// Records waiting to be written as one transport message. A lone record goes out as the shared bytes it came
/// in (a group message's encoding is shared by every recipient): only a second record makes a copy.
#[derive(Default)]
struct Batch {
    first: Option<Piece>,
    joined: Vec<u8>,
}

impl Batch {
    fn push(&mut self, record: Piece) {
        if record.as_bytes().is_empty() {
            return;
        }
        if !self.joined.is_empty() {
            self.joined.extend_from_slice(record.as_bytes());
            return;
        }
        match self.first.take() {
            None => self.first = Some(record),
            Some(first) => {
                self.joined.reserve(first.as_bytes().len() + record.as_bytes().len());
                self.joined.extend_from_slice(first.as_bytes());
                self.joined.extend_from_slice(record.as_bytes());
            }
        }
    }

    fn len(&self) -> usize {
        self.first
            .as_ref()
            .map_or(self.joined.len(), |first| first.as_bytes().len())
    }

    fn take(&mut self) -> Option<Piece> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        (!self.joined.is_empty()).then(|| Piece::Bytes(Bytes::from(std::mem::take(&mut self.joined))))
    }
}

/// How long the end of a connection waits to hand its Close message and close frame to the transport.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The ending of a connection whose mailbox overflowed (see [`outbound`]).
fn slow_consumer() -> Ending {
    Ending::Close {
        error: Some("Slow consumer: the outbound queue is full.".into()),
        allow_reconnect: true,
    }
}

/// Polls the running invocation; pending forever when there is none (the select guard prevents that case).
async fn poll_current(current: &mut Option<BoxFuture<'static, ()>>) {
    match current.as_mut() {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

enum HandshakeFailure {
    /// Answer with a handshake error, then close.
    Reply(String),
    /// Close without an answer.
    Gone(String),
}

async fn read_handshake<T: Transport>(
    transport: &mut T,
    inbound: &mut BytesMut,
    limits: &Limits,
) -> Result<HandshakeRequest, HandshakeFailure> {
    let deadline = Instant::now() + limits.handshake_timeout;
    loop {
        match handshake::parse_request(inbound, limits.max_message) {
            Ok(Some(request)) => {
                let Some(protocol) = Protocol::from_name(&request.protocol) else {
                    return Err(HandshakeFailure::Reply(format!(
                        "The protocol '{}' is not supported.",
                        request.protocol
                    )));
                };
                if !(1..=2).contains(&request.version) {
                    return Err(HandshakeFailure::Reply(format!(
                        "The server does not support version {} of the '{}' protocol.",
                        request.version, request.protocol
                    )));
                }
                if protocol.transfer_format() == crate::protocol::TransferFormat::Binary
                    && transport.kind() == TransportKind::ServerSentEvents
                {
                    return Err(HandshakeFailure::Reply(format!(
                        "Cannot use the '{}' protocol on the current transport. The transport does not support 'Binary' transfer format.",
                        request.protocol
                    )));
                }
                return Ok(request);
            }
            Ok(None) => {}
            Err(error) => return Err(HandshakeFailure::Reply(error.to_string())),
        }
        let chunk = tokio::select! {
            chunk = transport.recv() => chunk,
            () = sleep_until(deadline) => return Err(HandshakeFailure::Gone("handshake timed out".into())),
        };
        match chunk {
            Some(Ok(bytes)) => inbound.extend_from_slice(&bytes),
            Some(Err(error)) => return Err(HandshakeFailure::Gone(error.to_string())),
            None => return Err(HandshakeFailure::Gone("the client left before the handshake".into())),
        }
    }
}

/// Runs a streaming method's reply: items as StreamItems, then a Completion (with the error, if it failed).
async fn stream_reply(
    reply: BoxFuture<'static, Reply>,
    handle: ConnectionHandle,
    protocol: Protocol,
    id: String,
    cancel: CancellationToken,
) {
    let reply = tokio::select! {
        reply = reply => reply,
        () = cancel.cancelled() => {
            let _ = handle.try_send(Outbound::StreamEnded(Box::new(id)));
            return;
        }
    };
    let ending = match reply {
        Reply::Stream(mut items) => loop {
            let item = tokio::select! {
                item = items.next() => item,
                () = cancel.cancelled() => break None,
            };
            match item {
                None => break encode_void(protocol, &id),
                Some(Err(error)) => break encode_error(protocol, &id, &error),
                Some(Ok(value)) => {
                    let mut out = Vec::new();
                    if let Err(error) = value.encode_item(protocol, &id, &mut out) {
                        break encode_error(protocol, &id, &format!("A stream item could not be sent: {error}"));
                    }
                    if handle.send(Outbound::own(Bytes::from(out))).await.is_err() {
                        return;
                    }
                }
            }
        },
        Reply::Error(error) => encode_error(protocol, &id, &error),
        Reply::Void | Reply::Value(_) => encode_error(protocol, &id, "A streaming method did not return a stream."),
    };
    if let Some(bytes) = ending {
        let _ = handle.send(Outbound::own(bytes)).await;
    }
    let _ = handle.try_send(Outbound::StreamEnded(Box::new(id)));
}

fn encode_void(protocol: Protocol, id: &str) -> Option<Bytes> {
    let mut out = Vec::new();
    let message: Outgoing<'_, NoPayload, NoPayload> = Outgoing::Completion {
        invocation_id: id,
        outcome: CompletionOutcome::Void,
    };
    protocol.encode(&message, &mut out).ok().map(|()| Bytes::from(out))
}

fn encode_error(protocol: Protocol, id: &str, error: &str) -> Option<Bytes> {
    let mut out = Vec::new();
    let message: Outgoing<'_, NoPayload, NoPayload> = Outgoing::Completion {
        invocation_id: id,
        outcome: CompletionOutcome::Error(error.to_owned()),
    };
    protocol.encode(&message, &mut out).ok().map(|()| Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::RequestHeaders;

    #[test]
    fn request_headers_keep_order_lower_case_names_and_values() {
        let headers: RequestHeaders = [
            ("Host", "example.test"),
            ("cookie", "a=1; b=2"),
            ("X-Empty", ""),
            ("Cookie", "c=3"),
        ]
        .into_iter()
        .collect();
        let all: Vec<(&str, &str)> = headers.iter().collect();
        assert_eq!(
            all,
            [
                ("host", "example.test"),
                ("cookie", "a=1; b=2"),
                ("x-empty", ""),
                ("cookie", "c=3")
            ]
        );
        assert_eq!(headers.len(), 4);
        assert_eq!(headers.get("HOST"), Some("example.test"));
        assert_eq!(headers.get("cookie"), Some("a=1; b=2"), "the first of repeated headers");
        assert_eq!(headers.get("x-empty"), Some(""));
        assert_eq!(headers.get("missing"), None);
        let none = RequestHeaders::default();
        assert!(none.is_empty());
        assert_eq!(none.iter().count(), 0);
    }
}
