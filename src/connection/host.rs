//! What a connection and the hub that serves it exchange: the [`ConnectionHost`] trait the hub layer
//! implements, the [`Call`]s it receives and the [`Reply`]s (of [`EncodeValue`]s) it gives back.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::protocol::{CompletionOutcome, EncodeError, NoPayload, Outgoing, Protocol, RawValue};

use super::{RequestInfo, Session};

/// A value a hub method produced, encodable as a completion result or a stream item in either protocol.
pub trait EncodeValue: Send + 'static {
    /// Appends a StreamItem record.
    fn encode_item(&self, protocol: Protocol, invocation_id: &str, out: &mut Vec<u8>) -> Result<(), EncodeError>;
    /// Appends a Completion record with this value as its result.
    fn encode_result(&self, protocol: Protocol, invocation_id: &str, out: &mut Vec<u8>) -> Result<(), EncodeError>;
}

impl<T: Serialize + Send + 'static> EncodeValue for T {
    fn encode_item(&self, protocol: Protocol, invocation_id: &str, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        protocol.encode::<NoPayload, T>(
            &Outgoing::StreamItem {
                invocation_id,
                item: self,
            },
            out,
        )
    }

    fn encode_result(&self, protocol: Protocol, invocation_id: &str, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        protocol.encode::<NoPayload, T>(
            &Outgoing::Completion {
                invocation_id,
                outcome: CompletionOutcome::Value(self),
            },
            out,
        )
    }
}

/// Items of a client-to-server stream: a value, or the client's error that ended the stream.
pub type UploadItem = Result<RawValue, String>;

/// A hub method call, as the connection hands it to its host.
pub struct Call {
    /// The method name as the client wrote it.
    pub target: String,
    /// Positional arguments, undecoded.
    pub arguments: Vec<RawValue>,
    /// One receiver per client-to-server stream, in the order of the invocation's stream ids.
    pub uploads: Vec<mpsc::Receiver<UploadItem>>,
    /// Cancelled when the client cancels the stream or the connection ends.
    pub cancel: CancellationToken,
}

/// What a hub method produced.
pub enum Reply {
    /// Done, with no value.
    Void,
    /// Done, with a value.
    Value(Box<dyn EncodeValue>),
    /// Failed; the text is what the client sees.
    Error(String),
    /// A stream of items; an `Err` item ends it with that error.
    Stream(BoxStream<'static, Result<Box<dyn EncodeValue>, String>>),
}

/// What a connection needs from the hub that serves it.
pub trait ConnectionHost: Send + Sync + 'static {
    /// Whether a method exists and is a streaming one: `None` if unknown, `Some(true)` if streaming.
    fn method_kind(&self, target: &str) -> Option<bool>;

    /// Runs a method. The future runs inside the connection task or on its own task (streams, uploads).
    fn invoke(&self, session: &Arc<Session>, call: Call) -> BoxFuture<'static, Reply>;

    /// The connection's handshake is accepted. Called before the handshake response is sent, and anything that
    /// makes the connection addressable must be done in the call itself (not in the future), so that a client
    /// that has its response can be reached at once; the future runs after the response is sent, and an `Err`
    /// closes the connection with that error.
    fn connected(&self, session: &Arc<Session>) -> BoxFuture<'static, Result<(), String>>;

    /// Work that must be complete before the handshake response is sent, called right after `connected`:
    /// what makes the connection addressable but cannot be done in a call (its user's group, whose owner may be
    /// another node). `None` when there is none, which costs nothing. An `Err` does not refuse the handshake: the
    /// response is sent, then the connection closes with that error and `allowReconnect` (the client may retry at
    /// once), without running the future of `connected`.
    fn admit(&self, _session: &Arc<Session>) -> Option<BoxFuture<'static, Result<(), String>>> {
        None
    }

    /// The connection ended.
    fn disconnected(&self, session: &Arc<Session>, error: Option<String>) -> BoxFuture<'static, ()>;

    /// The user id of a new connection (SignalR's `IUserIdProvider`): the authenticated user by default.
    fn user_id(&self, request: &RequestInfo) -> Option<String> {
        request.user.clone()
    }
}
