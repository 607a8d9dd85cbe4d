//! hubmesh: a realtime hub runtime that the official SignalR clients (JavaScript, .NET, Java, Python) connect to
//! unchanged.
//!
//! # Layout
//!
//! Each top-level module is one layer; dependencies point one way, down this list:
//!
//! * [`protocol`]: the SignalR wire formats (handshake, JSON and MessagePack hub protocols, negotiate bodies).
//!   Bytes in, messages out; no I/O.
//! * [`auth`]: JWT bearer tokens checked into user ids and claims, and the requirements hubs put on them; no I/O.
//! * [`transport`]: how a connection's bytes move (WebSockets, SSE, long polling). Knows nothing of hubs.
//! * [`connection`]: one light task per client connection: handshake, codec, bounded mailbox, keep-alive and
//!   timeouts, dispatch to its host. Knows hubs only through the [`connection::ConnectionHost`] trait.
//! * [`group`]: group and user actors (ractor), which own memberships and fan sends out in one order.
//! * [`hub`]: the user's hub methods, [`Caller`], [`Clients`], [`Groups`] and [`HubContext`].
//! * [`cluster`]: membership and failure detection (chitchat), placement, links between nodes. Moves opaque
//!   bytes; knows nothing of hubs.
//! * [`node`]: a node: its hubs, its HTTP server (actix-web), start and stop.
//! * [`demo`]: the demo hub every node serves at `/hub`, the contract load tools use.
//! * [`bench`]: the load tool (`hubmesh bench`): a WebSocket client of the demo hub contract; no hub internals.
//! * [`config`]: node configuration (TOML files, `HUBMESH_*` variables, flags), checked into a ready [`NodeBuilder`].
//! * `testing` (feature `test-util`): the official test hub and an in-process server for tests.
//!
//! # Quick start
//!
//! ```no_run
//! use hubmesh::{Caller, Hub, HubError, Node};
//!
//! async fn send(caller: Caller, text: String) -> Result<(), HubError> {
//!     caller.clients().all().send("message", (text,)).await
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

pub mod auth;
pub mod bench;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod demo;
pub mod group;
pub mod hub;
pub mod node;
pub mod protocol;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod transport;

#[doc = include_str!("../docs/semantics.md")]
pub mod semantics {}

pub use connection::{ConnectionId, Limits};
pub use hub::{Caller, ClientProxy, ClientStream, Clients, Groups, Hub, HubContext, HubError, State, Streamed};
pub use node::{Node, NodeBuilder, NodeError, NodeHandle};
pub use protocol::{Binary, RawValue, Timestamp};
pub use tokio_util::sync::CancellationToken;
