//! [`Limits`]: the limits and timers every connection runs under.

use std::time::Duration;

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
        }
    }
}
