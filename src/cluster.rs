//! The cluster layer: which nodes are in the cluster, which are alive, and which node owns a key.
//!
//! # What this module owns
//!
//! * [`membership`]: gossip membership and failure detection (chitchat underneath, never visible outside this
//!   module). Each node publishes string key-values (its addresses, served hubs, [`NodeStatus`]) and watches the
//!   live set through [`Membership::subscribe`]. `membership.rs` holds the handle and the task that keeps the view
//!   live; `membership/identity.rs` [`NodeId`] and [`NodeStatus`], `membership/view.rs` [`MembershipView`] and how
//!   it is read off chitchat, `membership/config.rs` [`MembershipConfig`].
//! * [`gossip_network`]: where gossip datagrams travel (real UDP, or an in-process network for tests) and the fault
//!   layer (partition, freeze) that in-process tests use in place of killing processes.
//! * [`gossip_auth`]: gossip authenticated by the cluster secret. Every datagram of the real UDP path carries an
//!   HMAC-SHA256 tag under a key derived from the secret, with replay protection; anything else is dropped, so a
//!   process without the secret is never listed and nobody without it can forge or alter a node's state. During a
//!   secret rotation a node signs with its current secret and accepts its previous ones too ([`GossipKeys`]).
//!   Gossip is not encrypted, and a holder of the secret is trusted.
//! * [`placement`]: rendezvous hashing of opaque keys over a set of [`NodeId`]s, stable across processes and
//!   versions.
//! * [`link`]: opaque frames between the routers of nodes, opened and closed as membership changes: the [`Links`]
//!   trait, in-memory links for in-process clusters (`link/memory.rs`) and ractor_cluster links between processes
//!   (`link/ractor.rs`, with its handle, endpoint actor, sender task and wire codec in `link/ractor/`).
//!
//! # What it may call
//!
//! Only the standard library, tokio, tracing and chitchat, hmac, sha2, hkdf and rand (for [`gossip_auth`]) (and, for [`link`], bytes, parking_lot, ractor and
//! ractor_cluster). The cluster layer moves opaque bytes and string
//! key-values: it knows nothing of hubs, connections, groups or SignalR, and no module above it should need to
//! import chitchat.

pub mod gossip_auth;
pub mod gossip_network;
pub mod link;
pub mod membership;
pub mod placement;

pub use gossip_auth::GossipKeys;
#[cfg(any(test, feature = "test-util"))]
pub use gossip_network::GossipNetwork;
pub use link::{LinkConfig, LinkError, LinkEvent, LinkTls, Links, PeerInfo, LINK_ADDRESS_KEY};
pub use membership::{Membership, MembershipConfig, MembershipView, NodeId, NodeStatus};
// Only this repository's tests name these through the layer's root.
#[cfg(feature = "internals")]
pub use membership::{Member, MembershipError, RESERVED_KEY_PREFIX, STATUS_KEY};
pub use placement::{owner, ranked};
