//! Links between processes over ractor_cluster, authenticated by the cluster secret.
//!
//! # What this module owns
//!
//! [`RactorLinks`]: this process's ractor_cluster `NodeServer`, the TCP listener in front of it, and one link
//! endpoint actor (remotable, in the process group `endpoint_group` of this incarnation) that sends and receives
//! every link message. Each link has a bounded frame queue, a sender task that batches, and a credit window.
//!
//! * `handle`: [`RactorLinks`], the public handle: start-up (the process slot, the listener, the `NodeServer`, the
//!   endpoint), [`Links`] for the layer above, and shutdown.
//! * `endpoint`: the `LinkEndpoint` actor: sessions, dials, opening and closing links, receiving batches and
//!   acknowledging them.
//! * `sender`: a peer incarnation's stream (queue and unacknowledged batches, across links) and one link's sender
//!   task: batching, the credit window, sending again what the last link left unacknowledged.
//! * `codec`: the endpoint's messages and the wire encoding of batches and acknowledgements.
//!
//! # How it works
//!
//! * **Identity.** The ractor node name is the incarnation, `"{name}.{generation}"`, so two generations of a node are
//!   two ractor nodes. The cookie is the cluster secret: a peer with another secret fails ractor_cluster's challenge,
//!   gets no link, and the failed connection is logged with `tracing::warn`. A connection that has not authenticated
//!   within [`AUTH_DEADLINE`] (garbage bytes, a silent client) is closed.
//! * **TLS.** With [`LinkConfig::tls`], the accepted socket goes through the TLS handshake (on a task of its own,
//!   within [`AUTH_DEADLINE`]) before the `NodeServer` gets it as a `TlsServer` stream, and a dial uses
//!   ractor_cluster's `client_connect_enc` with the peer's node name as the server name; a handshake that fails is
//!   logged with `tracing::warn` on both sides and the connection dropped (see `super::tls`).
//! * **Driven by membership.** For each live peer without a link, only the lower [`NodeId`] dials, at most once per
//!   backoff (500 ms doubling to 2 s). A link is torn down (its session actor stopped: ractor_cluster has no disconnect
//!   call) only when a peer seen live leaves the live set or a newer generation of it is live, never for a peer not
//!   yet seen live: the accepting side learns of the dialer a little later. A link whose TCP session ends (a killed
//!   peer's reset) goes down at once; both paths emit one [`LinkEvent::Down`].
//! * **Finding the peer's endpoint.** Once a session is ready, the peer's endpoint is the member of the process group
//!   `endpoint_group(peer)` whose remote node id is that session's (unambiguous across processes).
//! * **Batching and credit.** [`Links::send`] puts the frame in the peer's bounded queue ([`LinkConfig::queue_frames`]
//!   frames) or fails with [`LinkError::QueueFull`]. The link's sender task takes up to [`LinkConfig::batch_frames`]
//!   frames (and at most [`LinkConfig::max_frame`] bytes), waiting up to [`LinkConfig::batch_linger`] for a partial
//!   batch, and casts them as one message to the peer's endpoint. The receiving endpoint delivers the frames to its
//!   event channel (waiting when that channel is full) and, every [`ACK_EVERY`] batches, casts a cumulative
//!   acknowledgement back. A sender never has more than [`WINDOW_BATCHES`] batches unacknowledged, so a slow or
//!   stalled peer stops the sender task, the queue fills, and sends fail with `QueueFull`: the sender's memory stays
//!   flat (queue + window), and the receiver's endpoint mailbox holds at most one window per peer.
//! * **Resuming.** The queue and the unacknowledged batches belong to the peer incarnation's stream, not to the link
//!   (`sender`): when a link drops while both incarnations stay live (a reset, a partition that heals, a peer that
//!   declared this node dead for a moment and sees it live again), frames accepted meanwhile wait in the queue (sends
//!   fail with `QueueFull` once it is full), and the next link first sends the unacknowledged batches again. Batches
//!   carry their stream and sequence number, and the receiver drops one it delivered already, so every frame accepted
//!   by [`Links::send`] arrives once, in order, as long as both incarnations live. A stream ends (what it held is
//!   dropped) when its peer is superseded by a newer generation, or has not been live for [`STREAM_GRACE`]; until
//!   then a peer declared dead by mistake that is live again gets what was queued for it.
//! * **Frame cap.** `max_frame` may not exceed [`MAX_LINK_FRAME`] (8 MiB); a batch is at most `max_frame` bytes of
//!   frames plus a few bytes per frame, so every link message stays under ractor_cluster's 16 MiB inbound limit, which
//!   is what closes a connection. Oversized frames are refused at [`Links::send`]; a peer's oversized frame is dropped
//!   on arrival, and a message that does not decode is dropped by ractor without harm to the link.
//!
//! # One per process
//!
//! ractor_cluster keeps process-global state (the `pg` groups and the actor registry, which every `NodeServer`
//! announces to its peers), so several nodes in one process interfere. A process therefore holds at most one
//! [`RactorLinks`]: a second [`RactorLinks::start`] while one runs returns [`LinkError::Start`]. In-process clusters
//! use `super::memory` instead.
//!
//! ractor_cluster's `NodeServer` always runs a listener of its own; it is bound to `127.0.0.1` on an ephemeral port
//! and never advertised: peers dial the listener this module binds on [`LinkConfig::listen`], whose accepted sockets
//! are handed to the `NodeServer`.
//!
//! # What it may call
//!
//! ractor, ractor_cluster, tokio, bytes, parking_lot, tracing, and the link types of [`super`]. No hub types.

mod codec;
mod endpoint;
mod handle;
mod sender;

use std::time::Duration;

#[cfg(doc)]
use super::{LinkConfig, LinkError, LinkEvent, Links};
#[cfg(doc)]
use crate::cluster::membership::NodeId;

#[cfg(feature = "internals")]
pub use endpoint::endpoint_group;
pub use handle::RactorLinks;

/// The largest [`LinkConfig::max_frame`] accepted: half of ractor_cluster's inbound frame limit (16 MiB), leaving
/// room for a batch's framing.
pub const MAX_LINK_FRAME: usize = 8 << 20;

/// Batches a sender may have unacknowledged on one link.
pub const WINDOW_BATCHES: u64 = 32;

/// A receiver acknowledges every this many batches (cumulatively); must divide into [`WINDOW_BATCHES`].
pub const ACK_EVERY: u64 = 8;

/// A connection that has not authenticated within this time is closed.
pub const AUTH_DEADLINE: Duration = Duration::from_secs(5);

/// How long a stream to a peer that left the live set waits for it to be live again (declared dead by mistake: a
/// one-way partition, a freeze) before what it holds is dropped. Each holds at most a queue and a window.
pub const STREAM_GRACE: Duration = Duration::from_secs(30);

/// The first wait between two dials of the same peer; it doubles up to [`DIAL_BACKOFF_MAX`].
pub const DIAL_BACKOFF: Duration = Duration::from_millis(500);

/// The longest wait between two dials of the same peer.
///
/// Short: once a partition heals, the link must be back before an owner that waits for this node's snapshot stops
/// waiting (3 s after its view change, `mesh/owner.rs`), or its groups miss this node's members (a chaos run lost
/// sends that way with 8 s). A dial is one TCP connect to a live peer.
pub const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(2);
