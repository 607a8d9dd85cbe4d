//! The REST API's payloads: a send's JSON body (`{"target": "...", "arguments": [...]}`), read up to
//! [`MAX_BODY`], and the Close message a closed connection is sent.

use actix_web::web;
use bytes::BytesMut;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::Value;

use crate::connection::outbound::EncodeSource;
use crate::connection::SharedFrame;
use crate::protocol::{EncodeError, NoPayload, Outgoing, Protocol};

/// The largest body a send may carry (1 MiB, Azure SignalR Service's limit for a REST message); a larger one gets
/// 413 before it is read further.
pub(super) const MAX_BODY: usize = 1024 * 1024;

/// A send's message: the client method and its arguments.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub(super) struct Message {
    pub(super) target: String,
    #[serde(default)]
    pub(super) arguments: Vec<Value>,
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum BodyError {
    /// Over [`MAX_BODY`] (413).
    #[error("the request body exceeds the maximum of {MAX_BODY} bytes")]
    TooLarge,
    /// The body could not be read from the socket (400).
    #[error("the request body could not be read")]
    Unreadable,
    /// Not a message (400).
    #[error("the body is not a message {{\"target\": string, \"arguments\": array}}: {0}")]
    Invalid(String),
}

/// Reads the whole body, refusing it as soon as it passes [`MAX_BODY`] (a declared `Content-Length` over it is
/// refused before reading).
pub(super) async fn read(declared: Option<usize>, mut body: web::Payload) -> Result<BytesMut, BodyError> {
    if declared.is_some_and(|length| length > MAX_BODY) {
        return Err(BodyError::TooLarge);
    }
    let mut bytes = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|_| BodyError::Unreadable)?;
        if bytes.len() + chunk.len() > MAX_BODY {
            return Err(BodyError::TooLarge);
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Parses a send's message; the target must not be empty.
pub(super) fn message(bytes: &[u8]) -> Result<Message, BodyError> {
    let message: Message = serde_json::from_slice(bytes).map_err(|error| BodyError::Invalid(error.to_string()))?;
    if message.target.is_empty() {
        return Err(BodyError::Invalid("the target is empty".into()));
    }
    Ok(message)
}

/// The Close message a connection closed through the REST API gets, with the reason as its error.
pub(super) fn close_frame(reason: Option<String>) -> std::sync::Arc<SharedFrame> {
    SharedFrame::from_source(Box::new(CloseSource { reason }))
}

struct CloseSource {
    reason: Option<String>,
}

impl EncodeSource for CloseSource {
    fn encode(&self, protocol: Protocol, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        protocol.encode::<NoPayload, NoPayload>(
            &Outgoing::Close {
                error: self.reason.as_deref(),
                allow_reconnect: false,
            },
            out,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_need_a_target_and_an_array() {
        assert_eq!(
            message(br#"{"target":"t","arguments":[1,"a"]}"#),
            Ok(Message {
                target: "t".into(),
                arguments: vec![Value::from(1), Value::from("a")],
            })
        );
        assert!(message(br#"{"target":"t"}"#).is_ok());
        for bad in [&br#"{"target":""}"#[..], br#"{"arguments":[]}"#, br#"{"target":"t","arguments":3}"#, b"nope", b""] {
            assert!(message(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_close_frame_carries_the_reason() {
        let frame = close_frame(Some("bye".into()));
        let json = frame.bytes(Protocol::Json).map(|bytes| bytes.to_vec());
        assert_eq!(json.as_deref(), Some(&b"{\"type\":7,\"error\":\"bye\"}\x1e"[..]));
        assert!(frame.bytes(Protocol::MessagePack).is_some());
    }
}
