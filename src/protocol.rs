//! The SignalR wire formats, with no I/O: the handshake, the JSON and MessagePack hub protocols, and the
//! negotiate bodies.
//!
//! This layer owns bytes-to-messages and messages-to-bytes and nothing else. It knows nothing of sockets,
//! transports, hubs or the cluster, and it may call only serde, serde_json, rmp/rmp-serde and bytes.
//! Decoding never panics: malformed, truncated or oversized input is a [`DecodeError`], which the connection
//! turns into a Close message for that connection alone.
//!
//! The shape follows docs/protocol.md#handshake, #json-hub-protocol and #messagepack-hub-protocol:
//! * [`HubMessage`] is what a client sent, with its arguments kept as undecoded [`RawValue`]s until a hub
//!   method asks for a type ([`RawValue::deserialize`]);
//! * [`Outgoing`] is what the server sends, generic over any `Serialize` payload, written by
//!   [`Protocol::encode`] as one whole record (0x1E-terminated JSON or a varint-prefixed MessagePack frame).

pub mod handshake;
pub mod json;
pub mod msgpack;
pub mod negotiate;
pub mod values;

use bytes::BytesMut;
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use values::{Binary, RawValue, Timestamp};

/// The JSON record separator (ASCII RS) that ends every JSON record and the handshake.
pub const RECORD_SEPARATOR: u8 = 0x1e;

/// A hub protocol, as named in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `"json"`: text records ending with 0x1E.
    Json,
    /// `"messagepack"`: binary frames with a varint length prefix.
    MessagePack,
}

/// Whether a protocol needs a text- or a binary-capable transport (negotiate's `transferFormats`, serialized as
/// `"Text"` / `"Binary"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TransferFormat {
    /// UTF-8 text: WebSocket text frames, SSE, text POST bodies.
    Text,
    /// Arbitrary bytes: WebSocket binary frames, binary POST and poll bodies.
    Binary,
}

/// How a completion ended, generic over the value type (a [`RawValue`] when decoded, any `Serialize` when sent).
#[derive(Debug, Clone, PartialEq)]
pub enum CompletionOutcome<V> {
    /// A void method finished (JSON: no `result` key; MessagePack: result kind 2).
    Void,
    /// A method returned a value, which may be null (MessagePack: result kind 3).
    Value(V),
    /// The invocation failed with this message (MessagePack: result kind 1).
    Error(String),
}

/// A message decoded from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum HubMessage {
    /// Type 1 (blocking when `invocation_id` is `Some`) and type 4 (`streaming`).
    Invocation {
        /// `None` (or an empty id in MessagePack) means the caller wants no reply.
        invocation_id: Option<String>,
        /// The hub method's name as the client wrote it.
        target: String,
        /// Positional arguments, not yet decoded.
        arguments: Vec<RawValue>,
        /// Ids of client-to-server streams bound to the method's stream parameters, in order.
        stream_ids: Vec<String>,
        /// `true` for a StreamInvocation (type 4).
        streaming: bool,
    },
    /// Type 2: one item of a stream, either a client-to-server upload or a reply to a client result.
    StreamItem {
        /// The stream id (uploads) or invocation id.
        invocation_id: String,
        /// The item, which may be null.
        item: RawValue,
    },
    /// Type 3: the end of an upload stream, or the answer to a server-to-client invocation (client results).
    Completion {
        /// The stream id or invocation id this completes.
        invocation_id: String,
        /// Void, a value, or an error message.
        outcome: CompletionOutcome<RawValue>,
    },
    /// Type 5: the client cancels a server-to-client stream.
    CancelInvocation {
        /// The id of the StreamInvocation to cancel.
        invocation_id: String,
    },
    /// Type 6.
    Ping,
    /// Type 7: the client stops (the JS client sends `{"type":7}` / `[7, nil]` on `stop()`).
    Close {
        /// An error the client reports, if any.
        error: Option<String>,
        /// Whether the sender allows a reconnect.
        allow_reconnect: bool,
    },
    /// Type 8: stateful reconnect acknowledgement.
    Ack {
        /// The highest sequence id received.
        sequence_id: u64,
    },
    /// Type 9: stateful reconnect resume point.
    Sequence {
        /// The sequence id of the next message to be sent.
        sequence_id: u64,
    },
    /// A well-formed record of a message type this server does not know. Per docs/protocol.md#unknown-message-types
    /// it is logged and ignored, not fatal.
    Unknown {
        /// The type number the client sent.
        message_type: u64,
    },
}

/// A message the server sends, generic over the payload type so that it is encoded straight from user values.
///
/// `A` is the arguments of an invocation and must serialize as a sequence (a tuple or a `Vec`); `V` is a single
/// value (a stream item or a completion result).
#[derive(Debug, Clone)]
pub enum Outgoing<'a, A: ?Sized, V: ?Sized> {
    /// Type 1: a server-to-client call. `invocation_id` is set only for client results.
    Invocation {
        /// Set when the server awaits a Completion (client results).
        invocation_id: Option<&'a str>,
        /// The client method name.
        target: &'a str,
        /// The positional arguments; must serialize as a sequence.
        arguments: &'a A,
    },
    /// Type 2: one item of a server-to-client stream.
    StreamItem {
        /// The StreamInvocation's id.
        invocation_id: &'a str,
        /// The item.
        item: &'a V,
    },
    /// Type 3: the reply to a blocking invocation or the end of a stream.
    Completion {
        /// The invocation's id.
        invocation_id: &'a str,
        /// Void, a value or an error.
        outcome: CompletionOutcome<&'a V>,
    },
    /// Type 5: the server cancels a client-to-server stream (rarely used).
    CancelInvocation {
        /// The stream id.
        invocation_id: &'a str,
    },
    /// Type 6: keep-alive.
    Ping,
    /// Type 7: the server closes the connection.
    Close {
        /// Why, if it is an error.
        error: Option<&'a str>,
        /// Whether a client with automatic reconnect should reconnect.
        allow_reconnect: bool,
    },
    /// Type 8 (stateful reconnect).
    Ack {
        /// The highest sequence id received.
        sequence_id: u64,
    },
    /// Type 9 (stateful reconnect).
    Sequence {
        /// The sequence id of the next message to be sent.
        sequence_id: u64,
    },
}

/// The payload type for [`Outgoing`] variants that carry no value, so callers can write
/// `protocol.encode::<NoPayload, NoPayload>(&Outgoing::Ping, out)`.
pub type NoPayload = ();

/// Why bytes from a client could not be decoded. Every variant closes only the offending connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A record or frame longer than the configured maximum.
    #[error("The maximum message size of {max}B was exceeded.")]
    TooLarge {
        /// The configured maximum, in bytes.
        max: usize,
    },
    /// The bytes are not valid JSON / MessagePack, or not a valid message of the protocol.
    #[error("Invalid {protocol} message: {reason}")]
    Invalid {
        /// `"json"` or `"messagepack"`.
        protocol: &'static str,
        /// What was wrong, for the Close message and the log.
        reason: String,
    },
    /// A MessagePack varint length prefix longer than 5 bytes or above `0x7FFFFFFF`.
    #[error("Messages over 2GB in size are not supported.")]
    BadLengthPrefix,
}

/// Why a value could not be encoded (a user type whose `Serialize` fails, or a non-sequence argument list).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not encode a {protocol} message: {reason}")]
pub struct EncodeError {
    /// `"json"` or `"messagepack"`.
    pub protocol: &'static str,
    /// The serializer's message.
    pub reason: String,
}

/// Why a positional argument could not be converted to the type a hub method asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArgError(pub String);

impl Protocol {
    /// The name used in the handshake: `"json"` or `"messagepack"`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Json => "json",
            Protocol::MessagePack => "messagepack",
        }
    }

    /// The protocol of a handshake name (exact, as ASP.NET matches it).
    pub fn from_name(name: &str) -> Option<Protocol> {
        match name {
            "json" => Some(Protocol::Json),
            "messagepack" => Some(Protocol::MessagePack),
            _ => None,
        }
    }

    // The codec below is for the crate's layers and this repository's tests (feature `internals`); it names the
    // protocol layer's own types, so it stays out of the public face's docs.
    /// The transfer format this protocol needs.
    #[doc(hidden)]
    pub fn transfer_format(self) -> TransferFormat {
        match self {
            Protocol::Json => TransferFormat::Text,
            Protocol::MessagePack => TransferFormat::Binary,
        }
    }

    /// Decodes the first whole message in `buf`, removing its bytes; `Ok(None)` when `buf` holds no whole message
    /// yet (the rest stays in `buf`). A message, or a pending partial message, longer than `max_message` bytes is
    /// [`DecodeError::TooLarge`].
    #[doc(hidden)]
    pub fn decode(self, buf: &mut BytesMut, max_message: usize) -> Result<Option<HubMessage>, DecodeError> {
        match self {
            Protocol::Json => json::decode(buf, max_message),
            Protocol::MessagePack => msgpack::decode(buf, max_message),
        }
    }

    /// Appends `message` to `out` as one whole record (JSON plus 0x1E, or a varint-prefixed MessagePack frame).
    /// On error `out` is left as it was.
    #[doc(hidden)]
    pub fn encode<A, V>(self, message: &Outgoing<'_, A, V>, out: &mut Vec<u8>) -> Result<(), EncodeError>
    where
        A: Serialize + ?Sized,
        V: Serialize + ?Sized,
    {
        match self {
            Protocol::Json => json::encode(message, out),
            Protocol::MessagePack => msgpack::encode(message, out),
        }
    }
}

impl RawValue {
    /// Decodes this argument as `T`, with the error text ASP.NET clients see for a mismatched argument.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, ArgError> {
        values::deserialize_raw(self)
    }
}
