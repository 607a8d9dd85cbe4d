//! Links between nodes: opaque frames from this node's router to a peer's router.
//!
//! # What this module owns
//!
//! The [`Links`] trait, which the router above uses without knowing how frames travel, and its implementations:
//! an in-memory network for in-process test clusters (`memory`), and ractor_cluster between processes
//! ([`ractor`]), authenticated by the cluster secret. `ractor` is a folder: `ractor/handle.rs` ([`RactorLinks`]
//! itself: start-up, sending, shutdown), `ractor/endpoint.rs` (the one link endpoint actor per process: sessions,
//! dials, opening and closing links, receiving), `ractor/sender.rs` (one link's batching sender and its credit
//! window) and `ractor/codec.rs` (the endpoint's messages and their wire encoding). Links are opened and closed by membership
//! ([`Links::update_peers`] is called with every new live view), never by hand.
//!
//! Every implementation keeps the same promises:
//! * frames from one node to one peer arrive in the order sent, each at most once;
//! * a link that drops while both incarnations stay live loses nothing accepted: frames sent meanwhile wait
//!   (within the queue's bound), and the next link delivers what the last one did not, before them (in [`ractor`];
//!   the in-memory network of tests keeps this only for a link that stays open: a fault that closes one drops its
//!   queue, a harsher network than the real one);
//! * [`Links::send`] never blocks: each peer has a bounded queue ([`LinkConfig::queue_frames`]); when it is full
//!   the send fails with [`LinkError::QueueFull`] and the caller decides (the router holds or drops, and says so);
//! * a frame over [`LinkConfig::max_frame`] is refused at the sender, so no message can tear a link down;
//! * a peer whose link goes down is reported with [`LinkEvent::Down`] once, whatever the cause (reset, a dead
//!   verdict from membership, a newer generation of the peer);
//! * each counts, per peer name, the frames and bytes it sent, refused sends and stalls in its [`LinkCounters`]
//!   (`counters.rs`), and tells its queue depth; frames received are counted by whoever reads the events.
//!
//! # What it may call
//!
//! tokio, bytes, tracing, ractor / ractor_cluster, and [`super::membership`] types. No hub types.

mod counters;
#[cfg(any(test, feature = "test-util"))]
pub mod memory;
pub mod ractor;
mod tls;

pub use counters::{LinkCounters, PeerCounters, PeerLinkFigures};
pub use tls::LinkTls;

#[cfg(doc)]
use ractor::RactorLinks;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;

use super::membership::NodeId;

/// The membership key under which a node publishes its link address.
pub const LINK_ADDRESS_KEY: &str = "link";

/// Settings of a node's links.
#[derive(Clone)]
pub struct LinkConfig {
    /// Where this node accepts links from peers (port 0 picks a free one).
    pub listen: SocketAddr,
    /// The address peers dial; port 0 means the port actually bound.
    pub advertise: SocketAddr,
    /// The shared cluster secret; a peer with another secret gets no link, and its gossip is dropped.
    pub secret: String,
    /// Earlier cluster secrets, still accepted during a rotation: gossip signed with one of them is accepted (gossip
    /// is always signed with `secret`). Links do not accept them: ractor_cluster checks one cookie, so a peer whose
    /// current secret differs gets no link until both run the same one (see `cluster-config/README.md`).
    pub previous_secrets: Vec<String>,
    /// Frames queued per peer before a send to that peer fails with `LinkError::QueueFull`.
    pub queue_frames: usize,
    /// The largest frame a node sends or accepts, well under ractor_cluster's own limit.
    pub max_frame: usize,
    /// Frames batched into one link message at most.
    pub batch_frames: usize,
    /// How long a partial batch may wait for more frames.
    pub batch_linger: Duration,
    /// Mutual TLS on links (`tls.rs`); none: links are plain TCP, authenticated by the secret but not encrypted.
    pub tls: Option<LinkTls>,
}

// By hand, so the cluster secret never reaches a log line.
impl std::fmt::Debug for LinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkConfig")
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("secret", &"<redacted>")
            .field("previous_secrets", &format_args!("<{} redacted>", self.previous_secrets.len()))
            .field("queue_frames", &self.queue_frames)
            .field("max_frame", &self.max_frame)
            .field("batch_frames", &self.batch_frames)
            .field("batch_linger", &self.batch_linger)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl LinkConfig {
    /// Defaults for a node accepting links on `listen` with `secret`.
    pub fn new(listen: SocketAddr, secret: impl Into<String>) -> Self {
        LinkConfig {
            listen,
            advertise: listen,
            secret: secret.into(),
            previous_secrets: Vec::new(),
            queue_frames: 8192,
            max_frame: 1 << 20,
            batch_frames: 64,
            batch_linger: Duration::from_micros(500),
            tls: None,
        }
    }
}

/// A live peer a node should have a link to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's incarnation.
    pub id: NodeId,
    /// The address it published under [`LINK_ADDRESS_KEY`].
    pub link_address: String,
}

/// A frame from a peer, or a change of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    /// A frame from `from`, in send order.
    Frame {
        /// The sender.
        from: NodeId,
        /// The frame as sent.
        frame: Bytes,
    },
    /// A link to this peer is up: frames can flow both ways.
    Up(NodeId),
    /// The link to this peer is down. Frames queued for it wait for the next link while the peer stays live (with
    /// the ractor links), and are dropped when it leaves.
    Down(NodeId),
}

/// Why a frame could not be queued for a peer, or links could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// There is no link to this peer: none was up yet, or the peer is gone (with the ractor links, a link that is down
    /// still queues while the peer is live, or left less than `STREAM_GRACE` ago).
    #[error("no link to node {0}")]
    NoLink(NodeId),
    /// The peer's queue is full: it is slow or stalled.
    #[error("the link queue to node {0} is full")]
    QueueFull(NodeId),
    /// The frame is larger than the frame cap.
    #[error("a frame of {size} bytes exceeds the link frame cap of {max} bytes")]
    TooLarge {
        /// The frame's size.
        size: usize,
        /// The cap.
        max: usize,
    },
    /// The links could not start (for example the address is taken).
    #[error("links could not start: {0}")]
    Start(String),
}

/// A node's links to its peers. Implementations are cheap to share (`Arc`) and never block the caller.
pub trait Links: Send + Sync + 'static {
    /// The address peers should dial, to publish under [`LINK_ADDRESS_KEY`].
    fn advertised_address(&self) -> String;

    /// Queues `frame` for `peer`.
    fn send(&self, peer: &NodeId, frame: Bytes) -> Result<(), LinkError>;

    /// Opens links to live peers that have none and closes links to peers no longer live (or superseded by a
    /// newer generation). Called with every new membership view; `live` excludes this node.
    fn update_peers(&self, live: &[PeerInfo]);

    /// The peers with a link up now.
    #[cfg(any(test, feature = "internals"))]
    fn connected(&self) -> Vec<NodeId>;

    /// What the links counted per peer name (frames received are for the reader of the events to count here).
    fn counters(&self) -> &LinkCounters;

    /// Frames waiting in the queue to the current incarnation of peer `name` now (0 without a link).
    fn queue_depth(&self, name: &str) -> usize;

    /// Per counted peer, its counts and its queue depth now, sorted by name.
    fn figures(&self) -> Vec<PeerLinkFigures> {
        self.counters().figures(|name| self.queue_depth(name))
    }
}
