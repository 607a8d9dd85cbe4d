//! A connection's side of stateful reconnect: its [`Stateful`] state, detaching from a lost transport and
//! resuming on a reconnected one. The buffers and the hand-over of transports are in [`reconnect`](super::reconnect).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::protocol::{NoPayload, Outgoing};
use crate::transport::Transport;

use super::batch::{Batch, Piece};
use super::keeper::Keeper;
use super::link::Link;
use super::reconnect::{ReceiveState, RelayTransport, ReplayBuffer, ResumeSlot};
use super::task::Connection;

/// The stateful-reconnect state of a connection that negotiated it.
pub(super) struct Stateful {
    pub(super) sent: ReplayBuffer,
    pub(super) received: ReceiveState,
    pub(super) slot: ResumeSlot,
    /// Set while detached: when the reconnect window ends.
    pub(super) detached_until: Option<Instant>,
    /// When the pending Ack of received messages goes out.
    pub(super) ack_due: Option<Instant>,
    /// Set when the connection was asked to move while a call ran: it moves once none runs.
    pub(super) moving: Option<Box<super::moving::MoveOut>>,
    /// Where its resume state is copied; records are written once it holds them (`super::keeper`).
    pub(super) keeper: Option<Arc<dyn Keeper>>,
    /// With a keeper: the highest record id written (or, while detached, passed over: the replay covers it).
    pub(super) written: u64,
    /// What it got of its groups' sends where it ran before a move (`super::groups_got`).
    pub(super) groups_got: super::groups_got::GroupsGot,
}

/// How long received messages wait before they are acked, so that one Ack covers a burst (the client's interval).
pub(super) const ACK_DELAY: Duration = Duration::from_secs(1);

/// Waits until the keeper holds more records; pending forever for a connection without a keeper.
pub(super) async fn held_grown(keeper: Option<&dyn Keeper>) {
    match keeper {
        Some(keeper) => keeper.held().grown().await,
        None => std::future::pending().await,
    }
}

/// Waits for a reconnected transport; pending forever for a connection without stateful reconnect.
pub(super) async fn next_relay(stateful: &mut Option<Box<Stateful>>) -> RelayTransport {
    match stateful {
        Some(stateful) => stateful.slot.next().await,
        None => std::future::pending().await,
    }
}

impl<T: Transport> Connection<T> {
    /// Takes, as the link, a transport the client handed over while the task could not take it (it waited for its
    /// keeper's answer to a claim, `super::batch`), so that the Close that ends the connection reaches the client.
    /// Without it the client's resume was accepted and never answered, its socket dropped with the connection, and
    /// it kept trying to resume a connection that no node held (a chaos run, seed 1796653490782602304).
    pub(super) fn take_handed_over(&mut self) {
        let Some(stateful) = &mut self.stateful else {
            return;
        };
        // Whether or not the task saw its transport go: a client that resumed has let go of the one before.
        if let Some(relay) = stateful.slot.try_take() {
            stateful.detached_until = None;
            self.transport = Link::Relayed(relay);
        }
    }

    /// Lets go of a lost transport and waits for the client to reconnect, if stateful reconnect is on; `false`
    /// (nothing done) otherwise.
    pub(super) fn detach(&mut self) -> bool {
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
    pub(super) async fn attach(&mut self, relay: RelayTransport) {
        let Some(stateful) = &mut self.stateful else {
            return;
        };
        tracing::debug!(unacked_bytes = stateful.sent.len_bytes(), "stateful reconnect");
        self.limits.counters.resumed();
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
        // With a keeper, only what it holds may be written; the rest follows as it does (`write_kept`).
        let held = stateful.keeper.as_ref().map_or(u64::MAX, |keeper| keeper.held().through());
        let replay: Vec<Bytes> = stateful.sent.unacked_through(held).cloned().collect();
        if stateful.keeper.is_some() {
            stateful.written = held.min(stateful.sent.last_id());
        }
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
}

impl<T: Transport> Connection<T> {
    /// Writes the records its keeper holds now and that were not written yet (nothing while detached: the replay
    /// after the reconnect covers them).
    pub(super) async fn write_kept(&mut self) -> Result<(), crate::transport::TransportError> {
        let Some(stateful) = &mut self.stateful else {
            return Ok(());
        };
        let Some(keeper) = &stateful.keeper else {
            return Ok(());
        };
        let held = keeper.held().through().min(stateful.sent.last_id());
        if held <= stateful.written {
            return Ok(());
        }
        let after = stateful.written;
        stateful.written = held;
        if stateful.detached_until.is_some() {
            return Ok(());
        }
        let records: Vec<Bytes> = stateful.sent.unacked_between(after, held).cloned().collect();
        let mut batch = Batch::default();
        for record in records {
            if batch.len() + record.len() > self.limits.write_batch {
                self.flush(&mut batch).await?;
            }
            batch.push(Piece::Bytes(record));
        }
        self.flush(&mut batch).await
    }
}
