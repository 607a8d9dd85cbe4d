//! One task per client connection: it owns the transport, the codec, the bounded mailbox and the timers, and
//! dispatches what the client sends to its [`ConnectionHost`] (the hub layer).
//!
//! The connection is a light tokio task with a cloneable [`ConnectionHandle`], not a ractor actor: an idle
//! ractor actor measured about 10 KB, more than the whole per-connection memory budget.
//!
//! This layer knows the protocol and the [`Transport`](crate::transport::Transport) trait, never a concrete hub: hub methods are reached
//! through [`ConnectionHost`], which the hub layer implements. Its life:
//! 1. **Handshake** within `Limits::handshake_timeout`; the first record must be a JSON handshake naming a
//!    protocol the transport can carry.
//! 2. **Connected**: [`ConnectionHost::connected`] registers the connection (and may refuse it).
//! 3. **Loop**: client records are decoded and dispatched; the mailbox is drained in batches (several queued
//!    records written as one transport message); a Ping goes out when nothing was written for
//!    `Limits::keep_alive`; a client silent for `Limits::client_timeout` is closed.
//! 4. **End**: streams are cancelled, pending client results fail with `"Connection '<id>' disconnected."`,
//!    and [`ConnectionHost::disconnected`] unregisters the connection.
//!
//! With stateful reconnect (docs/protocol.md#stateful-reconnect: handshake version 2, WebSockets only), everything the
//! mailbox delivers is numbered and kept in a [`reconnect::ReplayBuffer`] until acked; a client that vanishes
//! leaves the connection *detached* for `Limits::reconnect_window`: it stays registered (groups, user), keeps
//! buffering, and resumes on the transport the HTTP layer hands it through its [`reconnect::ResumeSlot`], by
//! sending a Sequence message and replaying what was not acked. When the window elapses it ends as in step 4.
//!
//! Blocking invocations run one at a time, in arrival order, inside this task (ASP.NET's default of one
//! parallel invocation per client), so what one invocation sends reaches the client before what the next sends.
//! Once `Limits::max_queued_invocations` wait, the transport is not read until they drain (backpressure, as
//! ASP.NET applies it; docs/semantics.md#bounds gives this and the other bounds on what a client's input makes a
//! connection hold).
//! Streaming methods and methods that take client streams run as their own tasks, since they last. A streaming
//! method is started inside this task, up to its first await, before the next record is dispatched (as ASP.NET
//! starts it): a CancelInvocation right behind its StreamInvocation cancels the token of a method that ran.
//!
//! # Files
//!
//! Public types, each in its own file, re-exported here:
//! * `id.rs`: [`ConnectionId`].
//! * `limits.rs`: [`Limits`], the limits and timers of every connection.
//! * [`counters`]: [`ConnectionCounters`], what the node's connections count for its metrics.
//! * `handle.rs`: [`ConnectionHandle`], what the rest of the node holds to send to a connection, and
//!   [`DeliverError`].
//! * `session.rs`: [`Session`], what hub code may know about a connection, and the [`RequestInfo`] (with its
//!   [`RequestHeaders`]) it started from.
//! * `host.rs`: the [`ConnectionHost`] trait the hub layer implements, the [`Call`]s it receives and the
//!   [`Reply`]s (of [`EncodeValue`]s, [`UploadItem`]s for client streams) it gives back.
//! * [`outbound`]: what a connection's mailbox carries ([`Outbound`], [`SharedFrame`], client results).
//! * [`wake`]: fan-out wake-ups batched per worker ([`WakeBatch`], [`WakeRelays`]).
//! * [`reconnect`]: stateful reconnect's replay buffer, receive state and the hand-over of reconnected transports.
//!
//! The task, private to this layer:
//! * `task.rs`: [`run`] and [`ConnectionSetup`], the `Connection` state and its state machine (the connected
//!   loop, deadlines, the ending).
//! * `handshake.rs`: reading and answering the handshake, and building the `Connection`.
//! * `dispatch.rs`: what the client sends, decoded and dispatched; invocations started, their replies and
//!   streams encoded back.
//! * `batch.rs`: writing: the mailbox drained into batches, group and broadcast records coalesced, the write.
//! * `directs_written.rs`: per origin, the last send by id written, so that one sent again is not written twice.
//! * `stateful.rs`: the connection's side of stateful reconnect: detaching from a lost transport, resuming.
//! * `link.rs`: the transport the connection uses now (direct, relayed after a reconnect, or none).
//! * `recv_gate.rs`: polls the transport only when it may have input.
//! * `mailbox.rs`: the bounded mailbox and its slow-consumer policy.
//!
//! # Dependencies
//!
//! This layer calls [`protocol`](crate::protocol) and [`transport`](crate::transport) only (and carries
//! [`auth::Claims`](crate::auth::Claims) in a [`Session`] without looking into them). Nothing here names the hub,
//! group, cluster or node layers: they call this one.

mod batch;
pub mod counters;
mod directs_written;
mod groups_got;
mod dispatch;
mod handle;
mod handshake;
mod host;
mod id;
pub mod keeper;
mod limits;
mod link;
mod mailbox;
pub mod moving;
pub mod outbound;
pub mod reconnect;
mod recv_gate;
mod session;
mod stateful;
mod task;
pub mod wake;

pub use counters::{ConnectionCounters, DeliveryKind};
pub use directs_written::LastDirect;
pub use groups_got::GroupGot;
pub use handle::{ConnectionHandle, DeliverError};
pub use host::{Call, ConnectionHost, EncodeValue, Reply, UploadItem};
pub use id::ConnectionId;
pub use limits::{BoundsHit, Limits};
#[cfg(feature = "internals")]
pub use outbound::EncodeArguments;
pub use outbound::{ClientResult, ClientResultError, CloseRequest, Invoke, KeptClose, Outbound, SendMark, SharedFrame};
pub use session::{RequestHeaders, RequestInfo, Session};
pub use task::{run, ConnectionSetup};
pub use wake::{deliver_each, WakeBatch, WakeRelay, WakeRelays};
