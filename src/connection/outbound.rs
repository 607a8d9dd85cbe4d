//! What travels to a connection: frames encoded at most once per protocol and shared by every recipient, and
//! the bounded mailbox that carries them.
//!
//! A [`SharedFrame`] is built once per send (a group send, a broadcast) and handed to every recipient as an
//! `Arc`; each connection asks for the bytes of its own protocol, which are encoded on first use and then
//! reused by every other connection of that protocol. Frames meant for one connection alone (completions,
//! stream items, client-result invocations) are encoded by that connection and travel as [`Outbound::Own`].
//!
//! # Slow consumers
//! The mailbox is bounded (`Limits::outbound_queue`). Fan-out (group, all, user sends) never waits on one
//! connection: when its mailbox is full the message is not queued and the connection is closed with the error
//! `"Slow consumer: the outbound queue is full."`, so one stalled reader costs nobody else memory or time.
//! Replies to the connection's own invocations (completions, stream items) wait for room instead: that is
//! backpressure on the caller's own stream, not on anybody else.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use bytestring::ByteString;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::protocol::{EncodeError, NoPayload, Outgoing, Protocol, RawValue};

/// Encodes one server message in a given protocol. Implemented for the sources a [`SharedFrame`] can hold.
pub trait EncodeSource: Send + Sync + 'static {
    /// Appends the whole record for `protocol` to `out`.
    fn encode(&self, protocol: Protocol, out: &mut Vec<u8>) -> Result<(), EncodeError>;
}

/// A server-to-client invocation without an id (`Clients.X.send`): a target and its arguments.
struct InvocationSource<A> {
    target: String,
    arguments: A,
}

impl<A: Serialize + Send + Sync + 'static> EncodeSource for InvocationSource<A> {
    fn encode(&self, protocol: Protocol, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        protocol.encode::<A, NoPayload>(
            &Outgoing::Invocation {
                invocation_id: None,
                target: &self.target,
                arguments: &self.arguments,
            },
            out,
        )
    }
}

/// Bytes that are already encoded for each protocol (a frame that came from another node).
struct PreEncoded {
    json: Option<Bytes>,
    msgpack: Option<Bytes>,
}

impl EncodeSource for PreEncoded {
    fn encode(&self, protocol: Protocol, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let bytes = match protocol {
            Protocol::Json => self.json.as_ref(),
            Protocol::MessagePack => self.msgpack.as_ref(),
        };
        match bytes {
            Some(bytes) => {
                out.extend_from_slice(bytes);
                Ok(())
            }
            None => Err(EncodeError {
                protocol: protocol.name(),
                reason: "the frame was not encoded for this protocol".into(),
            }),
        }
    }
}

/// Where a frame of a group send stands in its group's one order: the group (a named group, or a user's) and the
/// send's stamp (its origin incarnation and that incarnation's sequence number); or, for a broadcast or a send to
/// connections by id, where it stands among its origin's broadcasts, or its origin's sends by id. A stateful connection's keeper records the last mark of each group, and
/// of each origin's broadcasts, it was written (`super::keeper`), so that a node resuming the connection knows
/// where in those sends the client is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMark {
    /// The group's name (the user's name for a user's group); empty for a broadcast.
    pub group: Arc<str>,
    /// Whether it is a user's group.
    pub user: bool,
    /// Whether it is a broadcast (`Clients.All`) rather than a group send.
    #[serde(default)]
    pub broadcast: bool,
    /// Whether it is a send to connections by id (`Clients.Client`) rather than a group send.
    #[serde(default)]
    pub direct: bool,
    /// The name of the node incarnation where the send started.
    pub origin: Arc<str>,
    /// That incarnation's generation.
    pub generation: u64,
    /// That incarnation's sequence number of the send.
    pub seq: u64,
}

/// The bytes of another frame, with a mark of its own ([`SharedFrame::with_mark`]).
struct MarkedSource(Arc<SharedFrame>);

impl EncodeSource for MarkedSource {
    fn encode(&self, protocol: Protocol, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match self.0.bytes(protocol) {
            Some(bytes) => {
                out.extend_from_slice(bytes);
                Ok(())
            }
            None => Err(EncodeError {
                protocol: protocol.name(),
                reason: "the marked frame could not be encoded".into(),
            }),
        }
    }
}

/// One server message, encoded lazily and at most once per protocol, shared by all its recipients.
pub struct SharedFrame {
    /// Checked as UTF-8 once, here, so that no recipient's WebSocket text frame checks it again.
    json: OnceLock<Option<ByteString>>,
    msgpack: OnceLock<Option<Bytes>>,
    source: Box<dyn EncodeSource>,
    /// For a group send's frame, where it stands in the group's order.
    mark: Option<Box<SendMark>>,
}

impl std::fmt::Debug for SharedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedFrame")
            .field("json", &self.json.get())
            .field("msgpack", &self.msgpack.get())
            .finish_non_exhaustive()
    }
}

impl SharedFrame {
    /// A frame produced by `source` on demand.
    pub fn from_source(source: Box<dyn EncodeSource>) -> Arc<SharedFrame> {
        Arc::new(SharedFrame {
            json: OnceLock::new(),
            msgpack: OnceLock::new(),
            source,
            mark: None,
        })
    }

    /// The same message, marked with where it stands in its group's order. Shares `frame`'s encodings (made
    /// once, by whichever of the two is asked first).
    pub fn with_mark(frame: &Arc<SharedFrame>, mark: SendMark) -> Arc<SharedFrame> {
        let json = OnceLock::new();
        if let Some(Some(text)) = frame.json.get() {
            let _ = json.set(Some(text.clone()));
        }
        let msgpack = OnceLock::new();
        if let Some(Some(bytes)) = frame.msgpack.get() {
            let _ = msgpack.set(Some(bytes.clone()));
        }
        Arc::new(SharedFrame {
            json,
            msgpack,
            source: Box::new(MarkedSource(Arc::clone(frame))),
            mark: Some(Box::new(mark)),
        })
    }

    /// Where this frame stands in its group's order, for a group send's.
    pub fn mark(&self) -> Option<&SendMark> {
        self.mark.as_deref()
    }

    /// An Invocation with no id of client method `target` with `arguments` (a tuple or a `Vec`).
    pub fn invocation<A>(target: impl Into<String>, arguments: A) -> Arc<SharedFrame>
    where
        A: Serialize + Send + Sync + 'static,
    {
        Self::from_source(Box::new(InvocationSource {
            target: target.into(),
            arguments,
        }))
    }

    /// A frame whose bytes were encoded elsewhere, for the protocols given.
    pub fn pre_encoded(json: Option<Bytes>, msgpack: Option<Bytes>) -> Arc<SharedFrame> {
        Self::from_source(Box::new(PreEncoded { json, msgpack }))
    }

    /// The whole record for `protocol`, encoded on first use. `None` if the payload cannot be encoded in that
    /// protocol (logged once, where it is first encoded).
    pub fn bytes(&self, protocol: Protocol) -> Option<&Bytes> {
        match protocol {
            Protocol::Json => self.text().map(ByteString::as_bytes),
            Protocol::MessagePack => self
                .msgpack
                .get_or_init(|| self.encode(protocol).map(Bytes::from))
                .as_ref(),
        }
    }

    /// The whole JSON record, encoded on first use, as text.
    pub fn text(&self) -> Option<&ByteString> {
        self.json
            .get_or_init(|| {
                let out = self.encode(Protocol::Json)?;
                match String::from_utf8(out) {
                    Ok(text) => Some(ByteString::from(text)),
                    Err(error) => {
                        tracing::warn!(%error, "a JSON message was not UTF-8 and was not sent");
                        None
                    }
                }
            })
            .as_ref()
    }

    fn encode(&self, protocol: Protocol) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        match self.source.encode(protocol, &mut out) {
            Ok(()) => Some(out),
            Err(error) => {
                tracing::warn!(%error, "a message could not be encoded and was not sent");
                None
            }
        }
    }
}

/// Why a client result failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientResultError {
    /// The connection closed before it answered.
    #[error("Connection '{0}' disconnected.")]
    Disconnected(String),
    /// The client answered with an error (for example `"Error: from callback"`).
    #[error("{0}")]
    Client(String),
    /// No answer within the timeout.
    #[error("The client did not answer within {0:?}.")]
    Timeout(std::time::Duration),
    /// The answer could not be converted to the expected type.
    #[error("The client's result could not be read: {0}")]
    BadResult(String),
}

/// The answer to a client-result invocation: the value the client returned (which may be null).
pub type ClientResult = Result<Option<RawValue>, ClientResultError>;

/// A message in a connection's mailbox. Every variant is one pointer wide, so that the mailbox's slots (allocated
/// 32 at a time, eagerly, by the channel) cost 16 bytes each: rare messages are boxed.
pub enum Outbound {
    /// A frame shared with other recipients, sent to this connection by id (the caller, a client, a user).
    Frame(Arc<SharedFrame>),
    /// A frame of a group or broadcast fan-out: the one kind a connection may hold back to write it together with
    /// the next ones ([`super::Limits::write_coalesce`]).
    Fanout(Arc<SharedFrame>),
    /// Bytes already encoded in this connection's protocol (a completion or a stream item of its own).
    Own(Box<Bytes>),
    /// Invoke a client method and route its Completion to its reply channel (client results).
    Invoke(Box<Invoke>),
    /// A server-to-client stream of this connection ended; forget its cancellation token (by invocation id).
    // Boxed like the other rare variants, so that every queued message stays two words.
    #[allow(clippy::box_collection)]
    StreamEnded(Box<String>),
    /// Close the connection with a Close message.
    Close(Box<CloseRequest>),
    /// Hand the connection's state over and end here, without Close and without `disconnected`: it moves to
    /// another node (see [`moving`](super::moving)). Everything queued before it is in the state handed over.
    Move(Box<super::moving::MoveOut>),
}

impl Outbound {
    /// Bytes of this connection's own, already encoded.
    pub fn own(bytes: Bytes) -> Outbound {
        Outbound::Own(Box::new(bytes))
    }
}

/// A client-result invocation waiting in a mailbox.
pub struct Invoke {
    /// The client method.
    pub target: String,
    /// The arguments, encoded by the connection once it has assigned an invocation id.
    pub arguments: Box<dyn EncodeArguments>,
    /// Where the answer goes.
    pub reply: oneshot::Sender<ClientResult>,
}

/// A request to close a connection with a Close message.
#[derive(Debug, Clone)]
pub struct CloseRequest {
    /// The error to report, if any.
    pub error: Option<String>,
    /// Whether the client may reconnect.
    pub allow_reconnect: bool,
    /// What it does when the connection has a keeper (`super::keeper`).
    pub kept: KeptClose,
    /// A drain's close: the calls of the client that run or wait finish first (no further one is read
    /// meanwhile); a close without it, asked later, ends the connection at once.
    pub after_calls: bool,
}

/// What a close does to a connection that has a keeper (`super::keeper`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeptClose {
    /// A Close message, as for any connection.
    Close,
    /// Its keeper took it over: its socket is dropped without a Close message, so that its client's stateful
    /// reconnect resumes it there.
    Drop,
    /// Its node was declared dead by most of the cluster and is back: it asks its keeper
    /// ([`super::keeper::Keeper::claim`], at most [`super::keeper::CLAIM_WAIT`]) and drops its socket if the keeper
    /// took it over; else a Close message (it may have missed messages, and nobody else runs it).
    AskKeeper,
}

/// Arguments of a client-result invocation, encoded once the invocation id is known.
pub trait EncodeArguments: Send + 'static {
    /// Appends the Invocation record with `invocation_id` and `target` to `out`.
    fn encode_invocation(
        &self,
        protocol: Protocol,
        invocation_id: &str,
        target: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError>;
}

impl<A: Serialize + Send + 'static> EncodeArguments for A {
    fn encode_invocation(
        &self,
        protocol: Protocol,
        invocation_id: &str,
        target: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        protocol.encode::<A, NoPayload>(
            &Outgoing::Invocation {
                invocation_id: Some(invocation_id),
                target,
                arguments: self,
            },
            out,
        )
    }
}
