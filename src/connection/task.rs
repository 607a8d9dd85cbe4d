//! The connection task: [`run`] and its state machine (handshake, the connected loop over mailbox, transport,
//! running invocation and timers, the ending), over the [`Connection`] state every other file of the layer works on.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::protocol::{NoPayload, Outgoing, Protocol};
use crate::transport::{CloseKind, Transport, TransportError};

use super::batch::{Batch, Piece};
use super::counters::DisconnectReason;
use super::directs_written::DirectsWritten;
use super::link::Link;
use super::mailbox::Mailbox;
use super::reconnect::ResumeSlot;
use super::recv_gate::RecvGate;
use super::stateful::{held_grown, next_relay, Stateful};
use super::outbound::CloseRequest;
use super::{
    ClientResult, ClientResultError, ConnectionHost, ConnectionId, Limits, RequestInfo, Session, UploadItem, WakeRelay,
};

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
    /// The wake relay of the worker the connection runs on ([`WakeRelays::current`](super::WakeRelays::current) there), if any.
    pub wake_relay: Option<Arc<WakeRelay>>,
    /// Where a copy of its resume state is kept on another node (see [`keeper`](super::keeper)), if stateful
    /// reconnect was negotiated and the node has one; used only if the handshake turns stateful reconnect on.
    pub keeper: Option<Arc<dyn super::keeper::Keeper>>,
}

/// How a connection ended, for the log and for `disconnected`.
pub(super) enum Ending {
    /// The client closed (Close message or transport close).
    ClientClosed,
    /// The server closes, with a Close message carrying this error.
    Close {
        error: Option<String>,
        allow_reconnect: bool,
    },
    /// The transport failed; nothing more can be written.
    TransportLost(String),
    /// The connection moves to another node: its state goes to `MoveOut`, and it ends here silently.
    Moved(Box<super::moving::MoveOut>),
    /// Its socket is dropped without a Close message (its keeper runs it now, `super::keeper`), for this reason.
    Dropped(String),
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

/// A connection whose handshake was answered, and the rest of the hub's `connected` for it.
pub(super) type Accepted<T> = (Box<Connection<T>>, BoxFuture<'static, Result<(), String>>);

pub(super) struct Connection<T: Transport> {
    pub(super) transport: Link<T>,
    /// Boxed: rare, and an idle connection without it should not pay for its size.
    pub(super) stateful: Option<Box<Stateful>>,
    pub(super) protocol: Protocol,
    pub(super) limits: Arc<Limits>,
    pub(super) host: Arc<dyn ConnectionHost>,
    pub(super) session: Arc<Session>,
    pub(super) mailbox: Arc<Mailbox>,
    /// The parent of the cancellation tokens of calls that run on tasks of their own (streams), made on the first
    /// such call.
    pub(super) calls: Option<CancellationToken>,
    pub(super) inbound: BytesMut,
    pub(super) recv_gate: RecvGate,
    pub(super) last_read: Instant,
    pub(super) last_write: Instant,
    /// Group and broadcast records held back until `last_write + write_coalesce` (see [`Limits::write_coalesce`]);
    /// boxed, as most connections never hold any.
    pub(super) held: Option<Box<Batch>>,
    /// When group or broadcast messages last arrived, and the moving average of the gaps between arrivals (in
    /// microseconds): coalescing starts only for a connection that receives them often.
    pub(super) last_arrival: Instant,
    pub(super) arrival_gap_micros: u32,
    /// Blocking invocations waiting for the one in `current` to finish.
    pub(super) queued: VecDeque<BoxFuture<'static, ()>>,
    pub(super) current: Option<BoxFuture<'static, ()>>,
    /// Client-to-server streams by stream id.
    pub(super) uploads: HashMap<String, mpsc::Sender<UploadItem>>,
    /// Server-to-client streams by invocation id, to cancel them.
    pub(super) streams: HashMap<String, CancellationToken>,
    /// Client results awaiting a Completion, by the invocation id this server assigned.
    pub(super) results: HashMap<String, oneshot::Sender<ClientResult>>,
    pub(super) next_result_id: u64,
    /// Per origin, the last send by id written: one sent again is dropped (`super::directs_written`).
    pub(super) directs_written: DirectsWritten,
    /// A drain's close that waits for the client's calls to finish (`CloseRequest::after_calls`); boxed, as it is
    /// rare.
    pub(super) closing: Option<Box<CloseRequest>>,
}

impl<T: Transport> Connection<T> {
    /// A connection in its connected phase, with nothing running or held yet: after its handshake, or moved here.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn connected(
        transport: Link<T>,
        stateful: Option<Box<Stateful>>,
        protocol: Protocol,
        limits: Arc<Limits>,
        host: Arc<dyn ConnectionHost>,
        session: Arc<Session>,
        mailbox: Arc<Mailbox>,
        inbound: BytesMut,
    ) -> Self {
        let now = Instant::now();
        // As if messages had come a window apart: a few quick ones start coalescing, one quick pair does not.
        let arrival_gap_micros = u32::try_from(limits.write_coalesce.as_micros()).unwrap_or(u32::MAX);
        Connection {
            transport,
            stateful,
            protocol,
            limits,
            host,
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
            directs_written: DirectsWritten::default(),
            closing: None,
        }
    }

    /// The connected phase: the rest of the hub's `connected`, the main loop, the ending. Boxed, since an async fn
    /// keeps its argument twice (as given and as moved into its body), and this one is the largest part of a
    /// connection.
    pub(super) async fn live(mut self: Box<Self>, connected: BoxFuture<'static, Result<(), String>>) {
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
            if let Some(ending) = self.close_if_idle().await {
                return ending;
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
            // Backpressure, as ASP.NET applies it: while `max_queued_invocations` wait behind the running one, the
            // transport is not read (what one read held is still dispatched), so a client's burst waits in its
            // socket, not in this task.
            let backlogged =
                self.queued.len() >= self.limits.max_queued_invocations || self.is_moving() || self.closing.is_some();
            // Cloned (kept connections only): the wait below must not borrow `stateful`, which the resume needs.
            let keeper = self.stateful.as_ref().and_then(|stateful| stateful.keeper.clone());
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
                    if let Some(out) = self.take_move_if_idle() {
                        return Ending::Moved(out);
                    }
                }
                chunk = self.recv_gate.recv(&mut self.transport), if !backlogged => {
                    match chunk {
                        None if !self.transport.closed_by_client() && self.detach() => {}
                        None => return Ending::ClientClosed,
                        Some(Err(TransportError::Closed)) if self.detach() => {}
                        Some(Err(error)) => return Ending::Close {
                            error: Some(format!("Connection closed with an error. {error}")),
                            allow_reconnect: false,
                        },
                        Some(Ok(bytes)) => {
                            self.limits.counters.bytes_received(bytes.len());
                            self.last_read = Instant::now();
                            self.inbound.extend_from_slice(&bytes);
                            if let Some(ending) = self.process_inbound().await {
                                return ending;
                            }
                        }
                    }
                }
                relay = next_relay(&mut self.stateful) => Box::pin(self.attach(relay)).await,
                () = held_grown(keeper.as_deref()) => {
                    if let Err(error) = Box::pin(self.write_kept()).await {
                        return self.lost(error);
                    }
                }
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
                return Some(Ending::TransportLost(NOT_RECONNECTED.into()));
            }
            if stateful.detached_until.is_none() && stateful.ack_due.is_some_and(|due| due <= now) {
                stateful.ack_due = None;
                if let Some(sequence_id) = stateful.received.take_ack() {
                    // Its keeper heard of these records before they ran (`super::keeper`, "Run once kept").
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
                error: Some(CLIENT_TIMED_OUT.into()),
                allow_reconnect: true,
            });
        }
        None
    }

    /// How the connection ends after a failed write: a slow consumer if that is why the write gave up.
    pub(super) fn lost(&self, error: crate::transport::TransportError) -> Ending {
        if self.mailbox.is_ending() {
            slow_consumer()
        } else {
            Ending::TransportLost(error.to_string())
        }
    }

    async fn finish(mut self, ending: Ending) {
        let ending = match ending {
            Ending::Moved(out) => {
                if let Some(keeper) = self.stateful.as_ref().and_then(|stateful| stateful.keeper.as_ref()) {
                    keeper.ended();
                }
                return self.hand_over(*out).await;
            }
            ending => ending,
        };
        if let Some(keeper) = self.stateful.as_ref().and_then(|stateful| stateful.keeper.as_ref()) {
            keeper.ended();
        }
        let reason = DisconnectReason::of(&ending, self.mailbox.is_ending());
        self.limits.counters.disconnected(self.session.transport, self.protocol, reason);
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
            Ending::Dropped(reason) => {
                tracing::debug!(%reason, "dropped for its keeper");
                (Some(reason), None)
            }
            // Handled above.
            Ending::Moved(_) => (None, None),
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

/// The Close error of a client silent for `Limits::client_timeout` (ASP.NET's words).
pub(super) const CLIENT_TIMED_OUT: &str = "Server timeout elapsed without receiving a message from the client.";
/// Why a detached stateful-reconnect connection ends when its window elapses.
pub(super) const NOT_RECONNECTED: &str = "the client did not reconnect within the reconnect window";

/// How long the end of a connection waits to hand its Close message and close frame to the transport.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The ending of a connection whose mailbox overflowed (see [`outbound`](super::outbound)).
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
