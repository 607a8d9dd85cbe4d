//! hubmesh: a realtime hub runtime that the official SignalR clients (JavaScript, .NET, Java, Python) connect to
//! unchanged.
//!
//! # Layout
//!
//! Each top-level module is one layer; dependencies point one way, up this list (a layer uses the ones above it,
//! never one below). The layers are private to the crate; what an embedder uses is re-exported at the root and in
//! the public modules [`auth`], [`handler`] and [`demo`], and names no type of a private layer. `tests/layers.rs`
//! reads every file's `crate::` paths and fails on an import that points the wrong way, so the map stays true.
//!
//! * `protocol`: the SignalR wire formats (handshake, JSON and MessagePack hub protocols, negotiate bodies).
//!   Bytes in, messages out; no I/O.
//! * [`auth`]: JWT bearer tokens checked into user ids and claims, and the requirements hubs put on them; no I/O.
//! * `transport`: how a connection's bytes move: WebSockets, Server-Sent Events and long polling. Knows nothing of
//!   hubs.
//! * `connection`: one light task per client connection: handshake, codec, bounded mailbox, keep-alive and
//!   timeouts, dispatch to its host. Knows hubs only through its `ConnectionHost` trait.
//! * `cluster`: membership and failure detection (chitchat), placement, links between nodes. Moves opaque
//!   bytes; knows nothing of hubs.
//! * `mesh`: the cluster as the hubs' backplane: group and user actors (ractor), which own memberships and fan
//!   sends out in one order; ownership and re-homing; the routing of sends between nodes, resend and dedupe,
//!   request/reply. Reaches the hubs of its node through a trait; names no hub type.
//! * `hub`: the user's hub methods ([`Hub`], [`handler`]), [`Caller`], [`Clients`], [`Groups`] and [`HubContext`].
//! * `node`: a node: its hubs, its HTTP server (actix-web), start and stop.
//! * [`demo`]: the demo hub every node serves at `/hub`, the contract load tools use.
//! * `testing` (feature `test-util`, for this repository's tests): the official test hub, an in-process server
//!   and cluster, and the raw test client.
//!
//! The `hubmesh` command (nodes from configuration files, `hubmesh dev`, the load tool) is the separate crate in
//! `cli/`, built on this crate's public API.
//!
//! # Quick start
//!
//! ```no_run
//! use hubmesh::{Caller, Hub, HubError, Node};
//!
//! async fn send(caller: Caller, text: String) -> Result<(), HubError> {
//!     caller.clients().all().send("message", (text,))
//! }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let chat = Hub::new("chat").method("Send", send);
//! let node = Node::builder().hub(chat).listen("127.0.0.1:5000").start().await?;
//! println!("serving on {}", node.url());
//! node.wait().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Delivery, ordering and failure semantics are described in [`semantics`].

#![warn(missing_docs)]

// Each layer is private to the crate. The `internals` feature (this repository's tests, benches and fuzz targets
// only; never an embedder's) makes them public, hidden from the docs, so those can reach codecs and links directly.
macro_rules! layers {
    ($($(#[$attr:meta])* $name:ident;)*) => {$(
        $(#[$attr])*
        #[cfg(feature = "internals")]
        #[doc(hidden)]
        pub mod $name;
        $(#[$attr])*
        #[cfg(not(feature = "internals"))]
        mod $name;
    )*};
}

layers! {
    cluster;
    connection;
    hub;
    mesh;
    node;
    protocol;
    transport;
}

pub mod auth;
pub mod demo;
#[cfg(feature = "test-util")]
#[doc(hidden)]
pub mod testing;

#[doc = include_str!("../docs/semantics.md")]
pub mod semantics {}

pub use cluster::{LinkConfig, LinkError, LinkTls, MembershipConfig};
pub use connection::{BoundsHit, ClientResultError, ConnectionId, Limits, RequestHeaders, RequestInfo};
pub use hub::handler;
pub use hub::{Caller, ClientProxy, ClientStream, Clients, Groups, Hub, HubContext, HubError, State, Streamed};
pub use mesh::GroupError;
pub use node::cors::{cors, CorsOrigins};
/// The status report a node serves at `GET /_hubmesh/status`, which `hubmesh status` prints.
pub use node::status;
pub use node::tls::{TlsConfig, TlsError};
pub use node::{ClusterSettings, Node, NodeBuilder, NodeError, NodeHandle};
pub use protocol::values::TimestampParseError;
pub use protocol::{ArgError, Binary, Protocol, RawValue, Timestamp};
pub use tokio_util::sync::CancellationToken;
pub use transport::TransportKind;
