//! [`Limits`]: the limits and timers every connection runs under.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use super::ConnectionCounters;

/// The limits and timers of every connection. Defaults are ASP.NET Core's where it has one.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest hub message a client may send, in bytes (ASP.NET: 32 KB).
    pub max_message: usize,
    /// The largest transport frame (one WebSocket message, which may batch several records).
    pub max_frame: usize,
    /// Capacity of a connection's mailbox, in messages; a fan-out send that finds it full closes the connection as a
    /// slow consumer (see [`crate::semantics`], and `src/connection/outbound.rs` for the policy).
    pub outbound_queue: usize,
    /// Send a Ping when nothing was written for this long.
    pub keep_alive: Duration,
    /// Close a client that sent nothing for this long.
    pub client_timeout: Duration,
    /// Close a connection that sent no complete handshake within this long.
    pub handshake_timeout: Duration,
    /// Items buffered per client-to-server stream before the reader waits for the hub method.
    pub stream_buffer: usize,
    /// At most this many bytes are batched into one transport message.
    pub write_batch: usize,
    /// Coalescing of group and broadcast messages. For a connection that receives them more often than every
    /// half of this on average (over about four arrivals), one that arrives less than this long after the last
    /// write waits until this long after it, so that what arrives meanwhile goes out in the same write: one
    /// `write` per message is most of a fan-out's cost. A connection that receives them less often gets each at
    /// once. Replies, and messages sent to the connection by id (caller, client, user), are never held: they take
    /// held messages with them. Zero writes every message at once.
    pub write_coalesce: Duration,
    /// A long poll with nothing to deliver answers with an empty body after this long (ASP.NET: 90 s).
    pub poll_timeout: Duration,
    /// A long-polling client that has not polled for this long is gone (ASP.NET's disconnect timeout, 15 s).
    pub poll_disconnect_timeout: Duration,
    /// How long a stateful-reconnect connection whose WebSocket dropped waits for the client to come back (ASP.NET
    /// keeps such a connection for its disconnect timeout, 15 s). Zero turns stateful reconnect off: negotiate
    /// then never offers it.
    pub reconnect_window: Duration,
    /// The unacked bytes a stateful-reconnect connection buffers before it stops taking messages (ASP.NET's
    /// `StatefulReconnectBufferSize`, 100 000 bytes); see `src/connection/reconnect.rs` for the policy.
    pub reconnect_buffer_bytes: usize,
    /// Blocking invocations a connection may have waiting behind the one that runs before it stops reading its
    /// transport until they drain (backpressure; what one read held is still dispatched).
    pub max_queued_invocations: usize,
    /// Streams a connection may have open at once, in each direction: client-to-server streams (by the stream ids
    /// the client chooses) and server-to-client streams. An invocation that would open more is refused with a
    /// Completion error, as is one that reuses an id still open.
    pub max_streams: usize,
    /// Negotiated tokens of a hub not yet used by a transport, per node. Negotiating one more forgets the oldest
    /// (whose client is the likeliest to have gone); unused tokens expire after 15 s anyway.
    pub max_pending_negotiations: usize,
    /// Connections a node holds at once (every hub and transport). Above it, negotiates and new transports
    /// (WebSocket upgrades, SSE streams) get 503 with a body that says why; connections it holds are unaffected.
    pub max_connections: usize,
    /// Negotiates one client address may make per second (a fixed one-second window; a WebSocket that skips
    /// negotiation counts as one); more get 429. Behind a
    /// proxy every client has the proxy's address: raise it there, or set it to zero (off).
    pub negotiates_per_second: u32,
    /// Client addresses the negotiate rate is tracked for at once. When the table is full, addresses whose window
    /// has passed are dropped, then the one with the oldest window (its count starts again).
    pub rate_tracked_addresses: usize,
    /// How long a client may take to send a request's headers after it connects (slow clients that hold sockets
    /// open by trickling headers get 408 and are closed), and how long an idle keep-alive connection stays open.
    pub request_header_timeout: Duration,
    /// Not a limit: how often the node's connections hit the bounds above, reported in the node's metrics. Clones
    /// of these limits share it (a new `Limits` starts at zero): give each node of a process its own, or their
    /// figures add up.
    pub bounds_hit: Arc<BoundsHit>,
    /// Not a limit: what the node's connections count as they run, for its metrics. Shared like `bounds_hit`.
    pub counters: Arc<ConnectionCounters>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 32 * 1024,
            max_frame: 1024 * 1024,
            outbound_queue: 1024,
            keep_alive: Duration::from_secs(15),
            client_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(15),
            stream_buffer: 10,
            write_batch: 64 * 1024,
            write_coalesce: Duration::from_millis(30),
            poll_timeout: Duration::from_secs(90),
            poll_disconnect_timeout: Duration::from_secs(15),
            reconnect_window: Duration::from_secs(15),
            reconnect_buffer_bytes: 100_000,
            max_queued_invocations: 128,
            max_streams: 100,
            max_pending_negotiations: 100_000,
            max_connections: 100_000,
            negotiates_per_second: 100,
            rate_tracked_addresses: 10_000,
            request_header_timeout: Duration::from_secs(5),
            bounds_hit: Arc::default(),
            counters: Arc::default(),
        }
    }
}

/// How often each input bound was hit ([`Limits::bounds_hit`]). Counted only where a bound is hit, never per
/// message.
#[derive(Debug, Default)]
pub struct BoundsHit {
    /// Times a connection stopped reading because [`Limits::max_queued_invocations`] were waiting.
    pub queued_invocations: AtomicU64,
    /// Invocations refused for opening more than [`Limits::max_streams`] (or reusing an open id).
    pub streams: AtomicU64,
    /// Client-result entries forgotten because their caller stopped waiting (timed out).
    pub abandoned_results: AtomicU64,
    /// Sends by id written to a connection without checking for a repeat, their origin being past the
    /// `ORIGINS_CAP` origins it tracks (`src/connection/directs_written.rs`).
    pub direct_origins_untracked: AtomicU64,
    /// (group, origin) pairs of a moved connection's note left out of its filter, past `GOT_CAP`
    /// (`src/connection/groups_got.rs`).
    pub groups_got_untracked: AtomicU64,
    /// Unused negotiated tokens forgotten to stay within [`Limits::max_pending_negotiations`].
    pub negotiations: AtomicU64,
    /// Negotiates and new transports refused for [`Limits::max_connections`].
    pub connections: AtomicU64,
    /// Negotiates refused for [`Limits::negotiates_per_second`].
    pub negotiate_rate: AtomicU64,
    /// Addresses dropped from the negotiate-rate table while their window ran ([`Limits::rate_tracked_addresses`]).
    pub rate_addresses: AtomicU64,
    /// Long-polling and SSE POST bodies refused for exceeding [`Limits::max_frame`].
    pub bodies: AtomicU64,
}
