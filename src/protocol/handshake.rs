//! The handshake (docs/protocol.md#handshake): the client's first record, always JSON plus 0x1E whatever
//! the hub protocol, and the server's answer, `{}` or `{"error":"..."}` plus 0x1E.
//!
//! This module only parses and writes; choosing whether a protocol and version are acceptable is the
//! connection's job ([`HandshakeRequest::validate`] offers ASP.NET's checks and texts).

use bytes::BytesMut;
use serde::Deserialize;

use super::{Protocol, RECORD_SEPARATOR};

/// What the client asked for in its handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeRequest {
    /// The hub protocol name, as sent (`"json"` or `"messagepack"` for the official clients).
    pub protocol: String,
    /// The protocol version: 1, or 2 with stateful reconnect.
    pub version: u32,
}

/// Why a handshake is refused. The `Display` text is what goes in the handshake error response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// No complete handshake within the maximum message size.
    #[error("The maximum message size of {max}B was exceeded.")]
    TooLarge {
        /// The configured maximum, in bytes.
        max: usize,
    },
    /// The handshake record is not a JSON object with a string `protocol` and an integer `version`.
    #[error("{0}")]
    Malformed(String),
    /// A protocol this server does not speak.
    #[error("The protocol '{protocol}' is not supported.")]
    UnsupportedProtocol {
        /// The name the client sent.
        protocol: String,
    },
    /// A version of a known protocol this server does not speak.
    #[error("The server does not support version {version} of the '{protocol}' protocol.")]
    UnsupportedVersion {
        /// The protocol name.
        protocol: String,
        /// The version the client asked for.
        version: u32,
    },
}

/// The supported versions of both hub protocols: 1, and 2 for stateful reconnect.
const VERSIONS: std::ops::RangeInclusive<u32> = 1..=2;

impl HandshakeRequest {
    /// The requested protocol, if it and its version are supported (versions 1 and 2 of `json` and
    /// `messagepack`), else the error to answer with.
    pub fn validate(&self) -> Result<Protocol, HandshakeError> {
        let protocol = Protocol::from_name(&self.protocol).ok_or_else(|| HandshakeError::UnsupportedProtocol {
            protocol: self.protocol.clone(),
        })?;
        if !VERSIONS.contains(&self.version) {
            return Err(HandshakeError::UnsupportedVersion {
                protocol: self.protocol.clone(),
                version: self.version,
            });
        }
        Ok(protocol)
    }
}

/// The handshake's properties, kept raw so that each is checked by name.
#[derive(Deserialize)]
struct RawRequest {
    protocol: Option<serde_json::Value>,
    version: Option<serde_json::Value>,
}

/// Takes the handshake from the front of `buf`: `Ok(None)` until its 0x1E has arrived. The bytes after the
/// separator stay in `buf`; they are the first hub messages.
pub fn parse_request(buf: &mut BytesMut, max: usize) -> Result<Option<HandshakeRequest>, HandshakeError> {
    let Some(end) = buf.iter().position(|&b| b == RECORD_SEPARATOR) else {
        if buf.len() > max {
            return Err(HandshakeError::TooLarge { max });
        }
        return Ok(None);
    };
    if end > max {
        return Err(HandshakeError::TooLarge { max });
    }
    let record = buf.split_to(end + 1);
    let text = record.get(..end).unwrap_or_default();
    let raw: RawRequest = serde_json::from_slice(text)
        .map_err(|_| HandshakeError::Malformed("The handshake request is not a valid JSON object.".into()))?;
    let protocol = match raw.protocol {
        None | Some(serde_json::Value::Null) => {
            return Err(HandshakeError::Malformed(
                "Missing required property 'protocol'.".into(),
            ))
        }
        Some(serde_json::Value::String(protocol)) => protocol,
        Some(_) => {
            return Err(HandshakeError::Malformed(
                "Expected 'protocol' to be of type String.".into(),
            ))
        }
    };
    let version = match raw.version {
        None | Some(serde_json::Value::Null) => {
            return Err(HandshakeError::Malformed("Missing required property 'version'.".into()))
        }
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| HandshakeError::Malformed("Expected 'version' to be a non-negative integer.".into()))?,
        Some(_) => {
            return Err(HandshakeError::Malformed(
                "Expected 'version' to be of type Number.".into(),
            ))
        }
    };
    Ok(Some(HandshakeRequest { protocol, version }))
}

/// Appends the handshake response: `{}` plus 0x1E on success, or `{"error":"..."}` plus 0x1E.
///
/// The text is pure ASCII (non-ASCII characters are `\u` escaped) because the MessagePack client decodes the
/// handshake as Latin-1.
pub fn write_response(error: Option<&str>, out: &mut Vec<u8>) {
    match error {
        None => out.extend_from_slice(b"{}"),
        Some(error) => {
            out.extend_from_slice(b"{\"error\":\"");
            for c in error.chars() {
                match c {
                    '"' => out.extend_from_slice(b"\\\""),
                    '\\' => out.extend_from_slice(b"\\\\"),
                    '\n' => out.extend_from_slice(b"\\n"),
                    '\r' => out.extend_from_slice(b"\\r"),
                    '\t' => out.extend_from_slice(b"\\t"),
                    ' '..='~' => out.push(c as u8),
                    _ => {
                        let mut units = [0u16; 2];
                        for unit in c.encode_utf16(&mut units) {
                            out.extend_from_slice(format!("\\u{unit:04x}").as_bytes());
                        }
                    }
                }
            }
            out.extend_from_slice(b"\"}");
        }
    }
    out.push(RECORD_SEPARATOR);
}
