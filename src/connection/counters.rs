//! [`ConnectionCounters`]: what a node's connections count as they run (connections open and made, by transport
//! and protocol; disconnects by reason; client messages and bytes; invocations by outcome; deliveries by kind;
//! stateful resumes), for the node's metrics to read at scrape time.
//!
//! Every figure is a relaxed atomic in fixed arrays indexed by small enums: a count costs one `fetch_add` on a
//! struct the connection already holds (through [`Limits::counters`](super::Limits::counters)), never a lock, an
//! allocation or a map lookup. Clones of a node's limits share one set; a new `Limits` starts at zero.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use super::task::{Ending, CLIENT_TIMED_OUT, NOT_RECONNECTED};
use crate::protocol::Protocol;
use crate::transport::TransportKind;

/// Why a connection ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client closed (Close message or transport close), or the server closed it without an error.
    Normal,
    /// The client was silent for `Limits::client_timeout`, or did not come back within the reconnect window.
    Timeout,
    /// Its mailbox overflowed (see `outbound`).
    SlowConsumer,
    /// The node closed it while stopping or draining (a Close without error that allows reconnecting).
    NodeStopping,
    /// A protocol error, a refused connection, or a lost transport.
    Error,
    /// It moved to another node (a drain): the same connection goes on there.
    Moved,
}

impl DisconnectReason {
    /// Every reason, in label order.
    pub const ALL: [DisconnectReason; 6] = [
        DisconnectReason::Normal,
        DisconnectReason::Timeout,
        DisconnectReason::SlowConsumer,
        DisconnectReason::NodeStopping,
        DisconnectReason::Error,
        DisconnectReason::Moved,
    ];

    /// How a connection's ending counts (`slow` when its mailbox overflowed, whatever the ending says).
    pub(super) fn of(ending: &Ending, slow: bool) -> DisconnectReason {
        match ending {
            _ if slow => DisconnectReason::SlowConsumer,
            Ending::ClientClosed => DisconnectReason::Normal,
            Ending::Close {
                error: None,
                allow_reconnect: true,
            } => DisconnectReason::NodeStopping,
            Ending::Close {
                error: None,
                allow_reconnect: false,
            } => DisconnectReason::Normal,
            Ending::Close { error: Some(error), .. } if error == CLIENT_TIMED_OUT => DisconnectReason::Timeout,
            Ending::TransportLost(reason) if reason == NOT_RECONNECTED => DisconnectReason::Timeout,
            Ending::Close { .. } | Ending::TransportLost(_) => DisconnectReason::Error,
            Ending::Moved(_) | Ending::Dropped(_) => DisconnectReason::Moved,
        }
    }

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            DisconnectReason::Normal => "normal",
            DisconnectReason::Timeout => "timeout",
            DisconnectReason::SlowConsumer => "slow_consumer",
            DisconnectReason::NodeStopping => "node_stopping",
            DisconnectReason::Error => "error",
            DisconnectReason::Moved => "moved",
        }
    }
}

/// How an invocation from a client turned out, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvocationOutcome {
    /// The method returned (a value or nothing).
    Ok,
    /// The method failed; the client got a Completion with an error.
    Error,
    /// Refused before running: unknown method, wrong kind of invocation, or a stream bound.
    Refused,
    /// A streaming method started (it then streams on a task of its own).
    Stream,
}

impl InvocationOutcome {
    /// Every outcome, in label order.
    pub const ALL: [InvocationOutcome; 4] = [
        InvocationOutcome::Ok,
        InvocationOutcome::Error,
        InvocationOutcome::Refused,
        InvocationOutcome::Stream,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            InvocationOutcome::Ok => "ok",
            InvocationOutcome::Error => "error",
            InvocationOutcome::Refused => "refused",
            InvocationOutcome::Stream => "stream",
        }
    }
}

/// What a delivery to this node's connections was addressed to, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryKind {
    /// Chosen connections by id (caller, client, clients).
    Direct,
    /// A named group.
    Group,
    /// Every connection of a user.
    User,
    /// Every connection of the hub (all, others, all except).
    Broadcast,
}

impl DeliveryKind {
    /// Every kind, in label order.
    pub const ALL: [DeliveryKind; 4] = [
        DeliveryKind::Direct,
        DeliveryKind::Group,
        DeliveryKind::User,
        DeliveryKind::Broadcast,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            DeliveryKind::Direct => "direct",
            DeliveryKind::Group => "group",
            DeliveryKind::User => "user",
            DeliveryKind::Broadcast => "broadcast",
        }
    }
}

/// Every transport, in label order.
pub const TRANSPORTS: [TransportKind; 3] = [
    TransportKind::WebSockets,
    TransportKind::ServerSentEvents,
    TransportKind::LongPolling,
];

/// Every protocol, in label order.
pub const PROTOCOLS: [Protocol; 2] = [Protocol::Json, Protocol::MessagePack];

fn transport_index(transport: TransportKind) -> usize {
    match transport {
        TransportKind::WebSockets => 0,
        TransportKind::ServerSentEvents => 1,
        TransportKind::LongPolling => 2,
    }
}

fn protocol_index(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Json => 0,
        Protocol::MessagePack => 1,
    }
}

/// A counter on a cache line of its own: the ones every message adds to are written from every worker, and should
/// not also slow down each other.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

/// The counts of a node's connections ([`Limits::counters`](super::Limits::counters)).
#[derive(Debug, Default)]
pub struct ConnectionCounters {
    open: [[AtomicI64; 2]; 3],
    connects: [[AtomicU64; 2]; 3],
    disconnects: [AtomicU64; DisconnectReason::ALL.len()],
    invocations: [AtomicU64; 4],
    deliveries: [AtomicU64; 4],
    messages_received: Padded,
    bytes_received: Padded,
    bytes_written: Padded,
    resumes: AtomicU64,
    receipts_unheld: AtomicU64,
}

impl ConnectionCounters {
    /// A connection completed its handshake.
    pub(super) fn connected(&self, transport: TransportKind, protocol: Protocol) {
        let (t, p) = (transport_index(transport), protocol_index(protocol));
        self.connects[t][p].fetch_add(1, Ordering::Relaxed);
        self.open[t][p].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection that completed its handshake ended.
    pub(super) fn disconnected(&self, transport: TransportKind, protocol: Protocol, reason: DisconnectReason) {
        let (t, p) = (transport_index(transport), protocol_index(protocol));
        self.open[t][p].fetch_sub(1, Ordering::Relaxed);
        self.disconnects[reason as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A client's hub message was decoded.
    pub(super) fn message_received(&self) {
        self.messages_received.0.fetch_add(1, Ordering::Relaxed);
    }

    /// A transport read brought `bytes` bytes.
    pub(super) fn bytes_received(&self, bytes: usize) {
        self.bytes_received.0.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A transport write took `bytes` bytes.
    pub(super) fn bytes_written(&self, bytes: usize) {
        self.bytes_written.0.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// An invocation turned out so.
    pub(super) fn invocation(&self, outcome: InvocationOutcome) {
        self.invocations[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A stateful-reconnect connection resumed on a new transport.
    pub(super) fn resumed(&self) {
        self.resumes.fetch_add(1, Ordering::Relaxed);
    }

    /// A client's record ran without its keeper holding its receipt (`super::keeper::RECEIPT_WAIT` passed).
    pub(super) fn receipt_unheld(&self) {
        self.receipts_unheld.fetch_add(1, Ordering::Relaxed);
    }

    /// `count` connections of this node were handed a message of this kind (one add per fan-out).
    pub fn delivered(&self, kind: DeliveryKind, count: usize) {
        if count > 0 {
            self.deliveries[kind as usize].fetch_add(count as u64, Ordering::Relaxed);
        }
    }

    /// Connections open now over `transport` with `protocol`.
    pub fn open(&self, transport: TransportKind, protocol: Protocol) -> i64 {
        self.open[transport_index(transport)][protocol_index(protocol)].load(Ordering::Relaxed)
    }

    /// Connections open now, over every transport and protocol.
    pub fn open_total(&self) -> i64 {
        self.open.iter().flatten().map(|open| open.load(Ordering::Relaxed)).sum()
    }

    /// Connections made so far over `transport` with `protocol`.
    pub fn connects(&self, transport: TransportKind, protocol: Protocol) -> u64 {
        self.connects[transport_index(transport)][protocol_index(protocol)].load(Ordering::Relaxed)
    }

    /// Connections ended so far for `reason`.
    pub fn disconnects(&self, reason: DisconnectReason) -> u64 {
        self.disconnects[reason as usize].load(Ordering::Relaxed)
    }

    /// Invocations so far with `outcome`.
    pub fn invocations(&self, outcome: InvocationOutcome) -> u64 {
        self.invocations[outcome as usize].load(Ordering::Relaxed)
    }

    /// Connections handed a message of `kind` so far (one per recipient).
    pub fn deliveries(&self, kind: DeliveryKind) -> u64 {
        self.deliveries[kind as usize].load(Ordering::Relaxed)
    }

    /// Hub messages decoded from clients so far.
    pub fn messages_received(&self) -> u64 {
        self.messages_received.0.load(Ordering::Relaxed)
    }

    /// Bytes read from client transports so far.
    pub fn bytes_received_total(&self) -> u64 {
        self.bytes_received.0.load(Ordering::Relaxed)
    }

    /// Bytes written to client transports so far.
    pub fn bytes_written_total(&self) -> u64 {
        self.bytes_written.0.load(Ordering::Relaxed)
    }

    /// Client records that ran without their keeper holding their receipt, so far: a node that takes their
    /// connections over may run them again.
    pub fn receipts_unheld(&self) -> u64 {
        self.receipts_unheld.load(Ordering::Relaxed)
    }

    /// Stateful-reconnect resumes so far.
    pub fn resumes(&self) -> u64 {
        self.resumes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_connections_follow_connects_and_disconnects_per_transport_and_protocol() {
        let counters = ConnectionCounters::default();
        counters.connected(TransportKind::WebSockets, Protocol::MessagePack);
        counters.connected(TransportKind::WebSockets, Protocol::MessagePack);
        counters.connected(TransportKind::LongPolling, Protocol::Json);
        counters.disconnected(TransportKind::WebSockets, Protocol::MessagePack, DisconnectReason::Timeout);
        assert_eq!(counters.open(TransportKind::WebSockets, Protocol::MessagePack), 1);
        assert_eq!(counters.connects(TransportKind::WebSockets, Protocol::MessagePack), 2);
        assert_eq!(counters.open(TransportKind::LongPolling, Protocol::Json), 1);
        assert_eq!(counters.open(TransportKind::WebSockets, Protocol::Json), 0);
        assert_eq!(counters.disconnects(DisconnectReason::Timeout), 1);
        assert_eq!(counters.disconnects(DisconnectReason::Normal), 0);
    }

    #[test]
    fn labels_follow_the_order_of_all() {
        for (index, reason) in DisconnectReason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index, "{}", reason.label());
        }
        for (index, outcome) in InvocationOutcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, index, "{}", outcome.label());
        }
        for (index, kind) in DeliveryKind::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, index, "{}", kind.label());
        }
    }

    #[test]
    fn endings_count_by_reason() {
        let close = |error: Option<&str>, allow_reconnect| Ending::Close {
            error: error.map(str::to_owned),
            allow_reconnect,
        };
        let cases = [
            (Ending::ClientClosed, false, DisconnectReason::Normal),
            (close(None, false), false, DisconnectReason::Normal),
            (close(None, true), false, DisconnectReason::NodeStopping),
            (close(Some(CLIENT_TIMED_OUT), true), false, DisconnectReason::Timeout),
            (Ending::TransportLost(NOT_RECONNECTED.into()), false, DisconnectReason::Timeout),
            (close(Some("Slow consumer"), true), true, DisconnectReason::SlowConsumer),
            (Ending::TransportLost("reset".into()), true, DisconnectReason::SlowConsumer),
            (close(Some("Connection closed with an error."), false), false, DisconnectReason::Error),
            (Ending::TransportLost("reset".into()), false, DisconnectReason::Error),
        ];
        for (ending, slow, reason) in cases {
            assert_eq!(DisconnectReason::of(&ending, slow), reason, "{}", reason.label());
        }
    }

    #[test]
    fn an_empty_fanout_counts_nothing() {
        let counters = ConnectionCounters::default();
        counters.delivered(DeliveryKind::Group, 0);
        counters.delivered(DeliveryKind::Group, 3);
        assert_eq!(counters.deliveries(DeliveryKind::Group), 3);
        assert_eq!(counters.deliveries(DeliveryKind::Broadcast), 0);
    }
}
