//! Stateful reconnect (docs/protocol.md#stateful-reconnect): the numbered replay buffer of what a connection sends,
//! the receive-side bookkeeping of what it got, and the relay that hands a reconnected WebSocket to the
//! connection task that owns the logical connection.
//!
//! # What is buffered
//! Every record that goes through a connection's mailbox is trackable (Invocation, StreamItem, Completion: group
//! and broadcast sends, messages from other nodes, client-result invocations, completions and stream items alike),
//! so every one gets the next sequence id (from 1) and stays in the [`ReplayBuffer`] until the client acks it.
//! Pings, Close, Ack, Sequence and the handshake are written directly and are not counted
//! (docs/protocol.md#trackable-messages). Since a connection's mailbox is the only way to reach it, cross-node
//! sends go through the same buffer by construction (docs/protocol.md#cross-node-sends-in-the-replay-buffer).
//!
//! # When the buffer is full
//! `Limits::reconnect_buffer_bytes` (ASP.NET's `StatefulReconnectBufferSize`, 100 000 bytes) caps the unacked
//! bytes. Like ASP.NET, which makes the writer wait, the connection then stops taking messages from its mailbox
//! until an Ack frees room (one message is always accepted into an empty buffer, however large). What waits for
//! room in the mailbox (its own completions and stream items) is slowed down; fan-out that finds the mailbox full
//! closes the connection as a slow consumer (see [`super::outbound`]). While the client is away nobody acks, so a
//! connection that receives more than the cap plus its mailbox during the window is closed rather than growing.
//!
//! # Reconnecting
//! The WebSocket that reconnects may be accepted by another HTTP worker than the one running the connection task,
//! and a WebSocket cannot leave its worker. [`relay`] therefore splits it: a pump future that stays on the
//! accepting worker and owns the socket, and a [`RelayTransport`] (channels only, `Send`) that the connection
//! task uses as its transport from then on. This module calls only the [`Transport`] trait.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::protocol::TransferFormat;
use crate::transport::{CloseKind, Transport, TransportError, TransportKind};

/// The records a connection sent and the client has not acknowledged yet, by sequence id.
#[derive(Debug)]
pub struct ReplayBuffer {
    /// The id the next record gets.
    next_id: u64,
    entries: VecDeque<(u64, Bytes)>,
    bytes: usize,
    cap: usize,
}

impl ReplayBuffer {
    /// An empty buffer holding at most about `cap` bytes of unacked records.
    pub fn new(cap: usize) -> Self {
        ReplayBuffer {
            next_id: 1,
            entries: VecDeque::new(),
            bytes: 0,
            cap,
        }
    }

    /// Numbers and keeps one record; returns its sequence id.
    pub fn push(&mut self, record: Bytes) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.bytes += record.len();
        self.entries.push_back((id, record));
        id
    }

    /// The client received everything up to and including `id`.
    pub fn ack(&mut self, id: u64) {
        while let Some((first, record)) = self.entries.front() {
            if *first > id {
                break;
            }
            self.bytes -= record.len();
            self.entries.pop_front();
        }
        // An idle connection has every record acknowledged: it keeps no capacity (one allocation again at the next
        // record, once per burst, against about 160 bytes per idle connection).
        if self.entries.is_empty() {
            self.entries = VecDeque::new();
        }
    }

    /// Whether no more records may be taken until an ack (an empty buffer always takes one).
    pub fn is_full(&self) -> bool {
        !self.entries.is_empty() && self.bytes >= self.cap
    }

    /// The id a resumed connection announces in its Sequence message: the first unacked record, or the next id.
    pub fn resume_id(&self) -> u64 {
        self.entries.front().map_or(self.next_id, |(id, _)| *id)
    }


    /// The unacked records with ids up to `through`, oldest first.
    pub fn unacked_through(&self, through: u64) -> impl Iterator<Item = &Bytes> {
        self.unacked_between(0, through)
    }

    /// The unacked records with ids above `after` and up to `through`, oldest first.
    pub fn unacked_between(&self, after: u64, through: u64) -> impl Iterator<Item = &Bytes> {
        self.entries
            .iter()
            .filter(move |(id, _)| *id > after && *id <= through)
            .map(|(_, record)| record)
    }

    /// The id of the last record numbered (0 before the first).
    pub fn last_id(&self) -> u64 {
        self.next_id - 1
    }

    /// Bytes held.
    pub fn len_bytes(&self) -> usize {
        self.bytes
    }

    /// The unacked records with their ids, and the id the next record gets: what a moving connection hands over.
    pub fn export(&self) -> (Vec<(u64, Bytes)>, u64) {
        (self.entries.iter().cloned().collect(), self.next_id)
    }

    /// A buffer holding at most about `cap` bytes that goes on from an exported one.
    pub fn import(cap: usize, entries: Vec<(u64, Bytes)>, next_id: u64) -> Self {
        let bytes = entries.iter().map(|(_, record)| record.len()).sum();
        ReplayBuffer {
            next_id,
            entries: entries.into(),
            bytes,
            cap,
        }
    }
}

/// What the server received from the client, to ack it and to drop what a resumed client sends twice.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ReceiveState {
    /// The id the next trackable record from the client has.
    next_id: u64,
    /// The highest id processed.
    latest: u64,
    /// After a reconnect, everything is dropped until the client's Sequence message.
    awaiting_sequence: bool,
    /// The last id acked to the client.
    acked: u64,
    /// A keeper's copy (`super::keeper`): the client may have had acks the copy did not hear of, so its first
    /// Sequence message may start past `latest + 1` (what it skips, the dead node had processed).
    #[serde(default)]
    copy: bool,
}

/// Why a client's Sequence message is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("Sequence ID greater than amount of messages we've received.")]
pub struct SequenceGap;

impl ReceiveState {
    /// Nothing received yet.
    pub fn new() -> Self {
        ReceiveState {
            next_id: 1,
            latest: 0,
            awaiting_sequence: false,
            acked: 0,
            copy: false,
        }
    }

    /// The state of a copy that knows the client's records up to `latest` ran (a keeper's, `super::keeper`):
    /// none of them acknowledged to the client as far as it knows, so the first Ack after the resume covers them.
    pub fn processed_through(latest: u64) -> Self {
        ReceiveState {
            next_id: latest + 1,
            latest,
            awaiting_sequence: false,
            acked: 0,
            copy: true,
        }
    }

    /// The last of the client's records processed (run, or about to run).
    pub fn latest(&self) -> u64 {
        self.latest
    }

    /// Whether records were processed that no Ack covered yet.
    pub fn unacked(&self) -> bool {
        self.latest > self.acked
    }

    /// A new transport was attached: drop everything until the client says where it resumes.
    pub fn reconnected(&mut self) {
        self.awaiting_sequence = true;
    }

    /// Whether a message is to be processed. `trackable` records are numbered; a duplicate of one already
    /// processed, and anything before the Sequence message after a reconnect, is dropped.
    pub fn accept(&mut self, trackable: bool) -> bool {
        if self.awaiting_sequence {
            return false;
        }
        if !trackable {
            return true;
        }
        let id = self.next_id;
        self.next_id += 1;
        if id <= self.latest {
            return false;
        }
        self.latest = id;
        true
    }

    /// The client's Sequence message: its next record has id `id`.
    pub fn sequence(&mut self, id: u64) -> Result<(), SequenceGap> {
        if id > self.latest + 1 {
            if !self.copy {
                return Err(SequenceGap);
            }
            // The server that died acknowledged these; they ran there.
            self.latest = id - 1;
            self.acked = self.latest;
        }
        self.copy = false;
        self.awaiting_sequence = false;
        self.next_id = id;
        Ok(())
    }

    /// The id to ack, if something arrived since the last ack.
    pub fn take_ack(&mut self) -> Option<u64> {
        (self.latest > self.acked).then(|| {
            self.acked = self.latest;
            self.latest
        })
    }
}

/// The HTTP layer's handle on a stateful connection: where a reconnecting WebSocket goes.
///
/// Like ASP.NET, a new WebSocket for a stateful connection replaces the one it has, even if the server has not
/// noticed yet that the old one is dead (the client reconnects at once, often before the server reads the
/// drop): the unacked records are replayed on the new one and the client drops duplicates by sequence id. The
/// newest wins also over one handed over that the task has not taken yet: that one is dropped (its pump lets its
/// socket go). A resume passed on by a node that was stopping could reach the connection while its answer never
/// got back, so the client's next try came through another node, and was refused while the orphan waited in a
/// one-place channel (the 300-client rolling-restart test lost two clients that way).
#[derive(Debug, Clone)]
pub struct ResumeHandle {
    shared: Arc<Handover>,
}

/// The connection task's side of [`ResumeHandle`].
#[derive(Debug)]
pub struct ResumeSlot {
    shared: Arc<Handover>,
}

/// The transport handed over and not taken yet (at most one: the newest), and whether the task has ended.
#[derive(Debug, Default)]
struct Handover {
    pending: parking_lot::Mutex<Pending>,
    ready: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Pending {
    transport: Option<RelayTransport>,
    closed: bool,
}

/// A pair of resume ends for one stateful connection.
pub fn resume_channel() -> (ResumeHandle, ResumeSlot) {
    let shared = Arc::new(Handover::default());
    (ResumeHandle { shared: shared.clone() }, ResumeSlot { shared })
}

impl ResumeHandle {
    /// Hands the connection a new transport, in place of one handed over before and not taken yet; `false` if
    /// the connection has ended.
    pub fn resume(&self, transport: RelayTransport) -> bool {
        let replaced = {
            let mut pending = self.shared.pending.lock();
            if pending.closed {
                return false;
            }
            pending.transport.replace(transport)
        };
        // Dropped outside the lock: its pump lets its socket go.
        drop(replaced);
        self.shared.ready.notify_one();
        true
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.pending.lock().closed
    }
}

impl ResumeSlot {
    /// The transport handed over and not taken yet, if any, without waiting.
    pub fn try_take(&mut self) -> Option<RelayTransport> {
        self.shared.pending.lock().transport.take()
    }

    /// The next transport handed over; pending forever once nobody can hand one over. Cancel-safe.
    pub async fn next(&mut self) -> RelayTransport {
        loop {
            if let Some(transport) = self.shared.pending.lock().transport.take() {
                return transport;
            }
            // A notification given before this wait is kept (one permit), so none is missed.
            self.shared.ready.notified().await;
        }
    }
}

impl Drop for ResumeSlot {
    fn drop(&mut self) {
        let left = {
            let mut pending = self.shared.pending.lock();
            pending.closed = true;
            pending.transport.take()
        };
        drop(left);
    }
}

/// A command from the connection task to the pump that owns the socket.
enum Command {
    Send(Bytes, TransferFormat),
    Close(CloseKind),
}

/// How many transport messages may wait between the connection task and the pump, each way.
const RELAY_QUEUE: usize = 16;

/// A transport that lives on another task (the [`relay`] pump): `Send`, so it can cross HTTP workers.
#[derive(Debug)]
pub struct RelayTransport {
    kind: TransportKind,
    inbound: mpsc::Receiver<Result<Bytes, TransportError>>,
    outbound: mpsc::Sender<Command>,
    graceful: Arc<AtomicBool>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Send(bytes, _) => write!(f, "Send({} bytes)", bytes.len()),
            Command::Close(kind) => write!(f, "Close({kind:?})"),
        }
    }
}

impl Transport for RelayTransport {
    fn kind(&self) -> TransportKind {
        self.kind
    }

    async fn recv(&mut self) -> Option<Result<Bytes, TransportError>> {
        self.inbound.recv().await
    }

    async fn send(&mut self, bytes: Bytes, format: TransferFormat) -> Result<(), TransportError> {
        self.outbound
            .send(Command::Send(bytes, format))
            .await
            .map_err(|_| TransportError::Closed)
    }

    async fn close(self, kind: CloseKind) {
        let _ = self.outbound.send(Command::Close(kind)).await;
    }

    fn closed_by_client(&self) -> bool {
        self.graceful.load(Ordering::Acquire)
    }
}

/// Splits `transport` into a [`RelayTransport`] and the pump future that must run on the task (worker) that
/// owns the socket. The pump ends when the socket ends or the relay is closed or dropped.
pub fn relay<T: Transport + 'static>(mut transport: T) -> (RelayTransport, impl Future<Output = ()>) {
    let (in_tx, inbound) = mpsc::channel(RELAY_QUEUE);
    let (outbound, mut commands) = mpsc::channel(RELAY_QUEUE);
    let graceful = Arc::new(AtomicBool::new(false));
    let relay = RelayTransport {
        kind: transport.kind(),
        inbound,
        outbound,
        graceful: graceful.clone(),
    };
    let pump = async move {
        // One chunk from the client waiting for room towards the connection; commands are still served meanwhile,
        // so neither direction can block the other.
        let mut pending: Option<Result<Bytes, TransportError>> = None;
        loop {
            let waiting = pending.is_some();
            tokio::select! {
                permit = in_tx.reserve(), if waiting => {
                    let Ok(permit) = permit else { return };
                    if let Some(chunk) = pending.take() {
                        permit.send(chunk);
                    }
                }
                chunk = transport.recv(), if !waiting => match chunk {
                    Some(chunk) => pending = Some(chunk),
                    None => {
                        graceful.store(transport.closed_by_client(), Ordering::Release);
                        // Dropping the sender tells the connection that the client is gone.
                        return;
                    }
                },
                command = commands.recv() => match command {
                    Some(Command::Send(bytes, format)) => {
                        if transport.send(bytes, format).await.is_err() {
                            return;
                        }
                    }
                    Some(Command::Close(kind)) => {
                        transport.close(kind).await;
                        return;
                    }
                    // The connection let go of this transport (it ended or detached).
                    None => return,
                },
            }
        }
    };
    (relay, pump)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::time::Duration;

    use super::*;

    #[test]
    fn a_keepers_copy_takes_a_sequence_past_what_it_heard_acknowledged_once() {
        // The copy heard of acks up to 2; the client had an ack up to 4 and resumes at 5.
        let mut copy = ReceiveState::processed_through(2);
        copy.reconnected();
        assert_eq!(copy.sequence(5), Ok(()));
        assert!(copy.accept(true), "record 5 is new");
        assert!(copy.accept(true), "record 6 is new");
        assert_eq!(copy.latest, 6, "it counts on from 5");
        // After that first Sequence, a gap is an error again, as for any connection.
        copy.reconnected();
        assert_eq!(copy.sequence(9), Err(SequenceGap));
        // An ordinary connection refuses the same gap from the start.
        let mut plain = ReceiveState::processed_through(2);
        plain.copy = false;
        assert_eq!(plain.sequence(5), Err(SequenceGap));
    }

    /// Records 1 to 3 ran on a node that died having acknowledged only 1; its keeper's copy counted all three
    /// before they ran. The client resumes at 2: 2 and 3 are dropped (they ran), 4 runs, and an Ack is due at once
    /// for what ran, so that the client stops sending 2 and 3 again.
    #[test]
    fn a_keepers_copy_drops_what_ran_on_the_dead_node_and_acknowledges_it() {
        let mut copy = ReceiveState::processed_through(3);
        copy.reconnected();
        assert_eq!(copy.sequence(2), Ok(()));
        assert!(copy.unacked(), "what ran is acknowledged after the resume");
        assert!(!copy.accept(true), "record 2 ran");
        assert!(!copy.accept(true), "record 3 ran");
        assert!(copy.accept(true), "record 4 is new");
        assert_eq!(copy.take_ack(), Some(4));
        assert!(!copy.unacked());
    }

    /// A relay transport whose commands the test reads: they end (`None`) once the transport is dropped.
    fn transport() -> (RelayTransport, mpsc::Receiver<Command>) {
        let (_client, inbound) = mpsc::channel(1);
        let (outbound, commands) = mpsc::channel(1);
        let transport = RelayTransport {
            kind: TransportKind::WebSockets,
            inbound,
            outbound,
            graceful: Arc::new(AtomicBool::new(false)),
        };
        (transport, commands)
    }

    async fn next<T>(future: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(5), future).await.expect("in time")
    }

    #[tokio::test]
    async fn the_newest_transport_handed_over_wins_and_none_after_the_end() {
        let (handle, mut slot) = resume_channel();
        let (first, mut first_commands) = transport();
        let (second, mut second_commands) = transport();
        // Two reconnects before the task takes one: the second is not refused, the first is dropped.
        assert!(handle.resume(first));
        assert!(handle.resume(second));
        assert!(next(first_commands.recv()).await.is_none(), "the replaced transport was let go");
        let mut taken = next(slot.next()).await;
        taken.send(Bytes::from_static(b"x"), TransferFormat::Text).await.unwrap();
        assert!(matches!(next(second_commands.recv()).await, Some(Command::Send(..))));
        // One after the task took it waits for the next call.
        let (third, _third_commands) = transport();
        assert!(handle.resume(third));
        next(slot.next()).await;
        // None once the connection has ended.
        drop(slot);
        assert!(handle.is_closed());
        let (fourth, mut fourth_commands) = transport();
        assert!(!handle.resume(fourth));
        assert!(next(fourth_commands.recv()).await.is_none());
    }

    #[test]
    fn buffer_numbers_acks_and_resumes() {
        let mut buffer = ReplayBuffer::new(10);
        assert_eq!(buffer.resume_id(), 1);
        assert_eq!(buffer.push(Bytes::from_static(b"abcd")), 1);
        assert_eq!(buffer.push(Bytes::from_static(b"efgh")), 2);
        assert!(!buffer.is_full());
        assert_eq!(buffer.push(Bytes::from_static(b"ijkl")), 3);
        assert!(buffer.is_full());
        buffer.ack(2);
        assert_eq!(buffer.resume_id(), 3);
        assert_eq!(buffer.len_bytes(), 4);
        buffer.ack(3);
        assert_eq!(buffer.resume_id(), 4);
        assert_eq!(buffer.unacked_through(u64::MAX).count(), 0);
    }

    #[test]
    fn empty_buffer_takes_one_large_record() {
        let mut buffer = ReplayBuffer::new(2);
        assert!(!buffer.is_full());
        buffer.push(Bytes::from_static(b"large record"));
        assert!(buffer.is_full());
    }

    #[test]
    fn receive_state_drops_duplicates_after_resume() {
        let mut state = ReceiveState::new();
        assert!(state.accept(true));
        assert!(state.accept(true));
        assert!(state.accept(false));
        assert_eq!(state.take_ack(), Some(2));
        assert_eq!(state.take_ack(), None);
        state.reconnected();
        assert!(!state.accept(true));
        assert_eq!(state.sequence(4), Err(SequenceGap));
        assert!(state.sequence(2).is_ok());
        assert!(!state.accept(true));
        assert!(state.accept(true));
        assert_eq!(state.take_ack(), Some(3));
    }
}
