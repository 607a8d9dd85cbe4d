//! Moving a stateful connection to another node (docs/any-node-design.md, section 5a), the connection's side of it:
//! what its task hands over when asked ([`ConnectionHandle::move_out`]: the replay buffer, the receive state, the
//! protocol, as a [`MovedState`]), and its task started again from that state on the node it moves to
//! ([`run_moved`]), detached, waiting for its client to reconnect there. Which node, when, and how the rest of the
//! cluster is switched over is the node layer's; this file knows nothing of nodes.
//!
//! The task hands over only when no call of the client's runs (a call's completion must be in the state), and it
//! stops reading the client meanwhile; it ends without a Close message and without `disconnected` (the
//! connection goes on elsewhere), dropping its transport so that the client reconnects.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::protocol::Protocol;
use crate::transport::{Transport, TransportKind};

use super::directs_written::DirectsWritten;
use super::link::Link;
use super::mailbox::Mailbox;
use super::reconnect::{ReceiveState, RelayTransport, ReplayBuffer, ResumeSlot};
use super::stateful::Stateful;
use super::task::{Connection, Ending};
use super::{ConnectionHandle, ConnectionHost, ConnectionId, DeliverError, Limits, Outbound, Session, WakeRelay};

/// What a moving connection hands over: everything the client may still be owed or may send again.
#[derive(Debug, Serialize, Deserialize)]
pub struct MovedState {
    /// The hub protocol's name.
    pub protocol: String,
    /// The records the client has not acknowledged, with their sequence ids.
    pub unacked: Vec<(u64, Bytes)>,
    /// The sequence id the next record gets.
    pub next_id: u64,
    /// What the connection received from the client (so records it sends again are dropped).
    pub received: ReceiveState,
    /// The number of its latest copy on a keeper where it ran ([`super::keeper::Keeper::epoch`]): the node it
    /// moves to numbers its own copies on from there.
    #[serde(default)]
    pub keep_epoch: u64,
    /// The last broadcast and send by id of each origin its copy knew were numbered for the client where it ran
    /// ([`super::keeper::Keeper::last_marks`]): its copy on the node it moves to starts from them, so that a
    /// take-over there gives it none of those again.
    #[serde(default)]
    pub last_marks: super::keeper::LastMarks,
    /// Per origin, the last send by id the connection wrote where it ran (for a take-over, the copy's
    /// `last_marks.directs`): it drops any of those sent again where it moves (`super::directs_written`).
    #[serde(default)]
    pub directs_written: Vec<super::LastDirect>,
    /// What it got of its groups' sends where it ran (set by the node it moves to, from the move's note, or from
    /// its copy at a take-over): it drops those sent again (`super::groups_got`).
    #[serde(default)]
    pub groups_got: Vec<super::GroupGot>,
}

/// Where a moving connection's task puts its state.
#[derive(Debug)]
pub struct MoveOut(oneshot::Sender<Handover>);

/// What a moving connection's task hands over: its state, its session here (who it is, the request it came
/// from), and the [`Release`] it waits for before it lets its client's transport go.
#[derive(Debug)]
pub struct Handover {
    /// The state to start it from elsewhere.
    pub state: MovedState,
    /// Its session on this node.
    pub session: Arc<Session>,
    /// Dropped (or used) once the node it moves to can take the client's reconnect.
    pub release: Release,
}

/// Lets a connection that handed its state over drop its client's transport (so the client reconnects); it does
/// when this is dropped, or after [`RELEASE_WAIT`] at the latest.
#[derive(Debug)]
pub struct Release(#[allow(dead_code)] oneshot::Sender<()>);

/// How long a connection that handed its state over keeps its client's transport at most, waiting for the
/// node it moves to.
pub const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl ConnectionHandle {
    /// Asks the connection to hand its state over and end here. Everything queued before this is in the state;
    /// the answer comes once no call of the client's runs. `Err` when the connection has ended (or is not
    /// stateful: then it never answers and the receiver fails when it ends).
    pub async fn move_out(&self) -> Result<oneshot::Receiver<Handover>, DeliverError> {
        let (tx, rx) = oneshot::channel();
        self.send(Outbound::Move(Box::new(MoveOut(tx)))).await?;
        Ok(rx)
    }

    /// A handle for a connection that is on its way here: its mailbox takes what is sent to it before its task
    /// starts ([`run_moved`]), which reads it afterwards.
    pub fn arriving(id: ConnectionId, limits: &Limits, relay: Option<Arc<WakeRelay>>) -> ConnectionHandle {
        ConnectionHandle {
            id,
            mailbox: Arc::new(Mailbox::new(limits.outbound_queue)),
            relay,
        }
    }
}

impl<T: Transport> Connection<T> {
    /// Whether the connection was asked to move and waits for its running call.
    pub(super) fn is_moving(&self) -> bool {
        self.stateful.as_ref().is_some_and(|stateful| stateful.moving.is_some())
    }

    /// A drain's close that waited for the client's calls, once none runs or waits
    /// (`super::outbound::CloseRequest::after_calls`), after what they sent (their Completions are in the mailbox).
    pub(super) async fn close_if_idle(&mut self) -> Option<Ending> {
        if self.closing.is_none() || !self.is_idle() {
            return None;
        }
        if let Some(message) = self.mailbox.try_recv() {
            if let Some(ending) = self.drain_mailbox(message).await {
                return Some(ending);
            }
        }
        let close = self.closing.take()?;
        Some(self.closed_by(*close))
    }

    /// The ending a Close request asks for (its transport taken first if the client resumed meanwhile).
    pub(super) fn closed_by(&mut self, close: super::outbound::CloseRequest) -> Ending {
        self.take_handed_over();
        Ending::Close {
            error: close.error,
            allow_reconnect: close.allow_reconnect,
        }
    }

    pub(super) fn is_idle(&self) -> bool {
        self.current.is_none()
            && self.queued.is_empty()
            && self.streams.is_empty()
            && self.uploads.is_empty()
            && self.results.is_empty()
    }

    /// The connection was asked to move: it moves now if no call runs (`Some`), or once none does. A connection
    /// without stateful reconnect cannot move: the request is dropped (its sender sees the channel close).
    pub(super) fn start_move(&mut self, out: Box<MoveOut>) -> Option<Box<MoveOut>> {
        let idle = self.is_idle();
        let stateful = self.stateful.as_mut()?;
        if idle {
            return Some(out);
        }
        stateful.moving = Some(out);
        None
    }

    /// The move that waited for the running call, once no call runs.
    pub(super) fn take_move_if_idle(&mut self) -> Option<Box<MoveOut>> {
        if !self.is_idle() {
            return None;
        }
        self.stateful.as_mut()?.moving.take()
    }

    /// Hands the state over and ends here, silently: the transport is dropped, not closed, so the client
    /// reconnects (to the node the connection moved to).
    pub(super) async fn hand_over(mut self, out: MoveOut) {
        self.limits
            .counters
            .disconnected(self.session.transport, self.protocol, super::counters::DisconnectReason::Moved);
        let Some(stateful) = self.stateful.take() else {
            return;
        };
        let Stateful {
            sent, received, keeper, ..
        } = *stateful;
        // Held records are in the replay buffer already.
        self.held = None;
        let (unacked, next_id) = sent.export();
        let state = MovedState {
            protocol: self.protocol.name().to_owned(),
            unacked,
            next_id,
            received,
            keep_epoch: keeper.as_ref().map_or(0, |keeper| keeper.epoch()),
            last_marks: keeper.as_ref().map(|keeper| keeper.last_marks()).unwrap_or_default(),
            directs_written: self.directs_written.export(),
            // The node it moves to sets it from the move's note of what it got of its groups there.
            groups_got: Vec::new(),
        };
        tracing::debug!(unacked = state.unacked.len(), "moving to another node");
        let (release, released) = oneshot::channel();
        let handover = Handover {
            state,
            session: self.session.clone(),
            release: Release(release),
        };
        if out.0.send(handover).is_ok() {
            let _ = tokio::time::timeout(RELEASE_WAIT, released).await;
        }
        // Dropping the transport ends the socket without a close frame: to the client, a lost connection.
        self.transport = Link::Detached;
        self.mailbox.close();
    }
}

/// What a connection that moved here starts with, besides its state.
pub struct MovedSetup {
    /// Its session here: the same id, user and request; its handle is the one made by
    /// [`ConnectionHandle::arriving`].
    pub session: Arc<Session>,
    /// Its limits here.
    pub limits: Arc<Limits>,
    /// The hub that serves it here.
    pub host: Arc<dyn ConnectionHost>,
    /// Where its client's reconnected transport arrives.
    pub resume: ResumeSlot,
    /// Where its resume state is copied here (`super::keeper`), set as the connection's keeper before it starts;
    /// the caller opens it ([`super::keeper::Keeper::opened`]) before it runs the connection.
    pub keeper: Option<Arc<dyn super::keeper::Keeper>>,
}

/// Why a moved connection could not start.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// The state names a protocol this build does not speak.
    #[error("unknown hub protocol {0:?} in a moved connection's state")]
    UnknownProtocol(String),
}

/// Runs a connection that moved here to its end: detached (its client reconnects within the reconnect window),
/// with the replay buffer and receive state it had, reading the mailbox of its arriving handle. Its hub's
/// `connected` is not run again: it is the same connection.
pub fn run_moved(
    state: MovedState,
    setup: MovedSetup,
) -> Result<impl std::future::Future<Output = ()>, MoveError> {
    let protocol =
        Protocol::from_name(&state.protocol).ok_or_else(|| MoveError::UnknownProtocol(state.protocol.clone()))?;
    let limits = setup.limits;
    let now = Instant::now();
    let directs_written = state.directs_written;
    let stateful = Stateful {
        sent: ReplayBuffer::import(limits.reconnect_buffer_bytes, state.unacked, state.next_id),
        received: state.received,
        slot: setup.resume,
        detached_until: Some(now + limits.reconnect_window),
        ack_due: None,
        moving: None,
        keeper: setup.keeper.clone(),
        written: 0,
        groups_got: super::groups_got::GroupsGot::new(state.groups_got, &limits.bounds_hit.groups_got_untracked),
    };
    if let Some(keeper) = setup.keeper {
        setup.session.handle.mailbox.set_keeper(keeper);
    }
    limits.counters.connected(TransportKind::WebSockets, protocol);
    let span = tracing::debug_span!(
        "conn",
        conn_id = %setup.session.id,
        transport = "moved",
        user = setup.session.user.as_deref().unwrap_or("")
    );
    let mailbox = setup.session.handle.mailbox.clone();
    let mut connection: Connection<RelayTransport> = Connection::connected(
        Link::Detached,
        Some(Box::new(stateful)),
        protocol,
        limits,
        setup.host,
        setup.session,
        mailbox,
        BytesMut::new(),
    );
    connection.directs_written = DirectsWritten::from_last(directs_written);
    let future = Box::new(connection).live(Box::pin(async { Ok(()) }));
    Ok(tracing::Instrument::instrument(future, span))
}
