//! The JSON hub protocol (`"json"`): one JSON object per record, each record ending with 0x1E
//! (docs/protocol.md#json-hub-protocol).
//!
//! Decoding borrows every known property as raw JSON first and then reads each one on its own, so that a missing
//! or mistyped property is reported by name; arguments and items stay undecoded ([`RawValue::Json`]). Encoding
//! writes the envelope by hand in ASP.NET's property order and serializes only the payloads with serde_json.

use bytes::BytesMut;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue as JsonRaw;

use super::{CompletionOutcome, DecodeError, EncodeError, HubMessage, Outgoing, RawValue, RECORD_SEPARATOR};

const PROTOCOL: &str = "json";

fn invalid(reason: impl Into<String>) -> DecodeError {
    DecodeError::Invalid {
        protocol: PROTOCOL,
        reason: reason.into(),
    }
}

/// Decodes the first whole record in `buf` (removing it and its separator); `Ok(None)` while none is complete.
pub(crate) fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<HubMessage>, DecodeError> {
    let Some(end) = buf.iter().position(|&b| b == RECORD_SEPARATOR) else {
        // No separator within `max` bytes: this record can only end up too large.
        if buf.len() > max {
            return Err(DecodeError::TooLarge { max });
        }
        return Ok(None);
    };
    if end > max {
        return Err(DecodeError::TooLarge { max });
    }
    let record = buf.split_to(end + 1);
    let text = record
        .get(..end)
        .ok_or_else(|| invalid("the record ended early"))
        .and_then(|bytes| std::str::from_utf8(bytes).map_err(|_| invalid("the record is not valid UTF-8")))?;
    parse(text).map(Some)
}

/// Every property the server reads, still as raw JSON. `Some` means present, even when the value is `null`.
#[derive(Deserialize)]
struct Record<'a> {
    #[serde(rename = "type", default, borrow, deserialize_with = "present")]
    kind: Option<&'a JsonRaw>,
    #[serde(rename = "invocationId", default, borrow, deserialize_with = "present")]
    invocation_id: Option<&'a JsonRaw>,
    #[serde(default, borrow, deserialize_with = "present")]
    target: Option<&'a JsonRaw>,
    #[serde(default, borrow, deserialize_with = "present")]
    arguments: Option<&'a JsonRaw>,
    #[serde(rename = "streamIds", default, borrow, deserialize_with = "present")]
    stream_ids: Option<&'a JsonRaw>,
    #[serde(default, borrow, deserialize_with = "present")]
    item: Option<&'a JsonRaw>,
    #[serde(default, borrow, deserialize_with = "present")]
    result: Option<&'a JsonRaw>,
    #[serde(default, borrow, deserialize_with = "present")]
    error: Option<&'a JsonRaw>,
    #[serde(rename = "allowReconnect", default, borrow, deserialize_with = "present")]
    allow_reconnect: Option<&'a JsonRaw>,
    #[serde(rename = "sequenceId", default, borrow, deserialize_with = "present")]
    sequence_id: Option<&'a JsonRaw>,
}

/// A present property, `null` included (a plain `Option` would read `null` as absent).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<&'de JsonRaw>, D::Error> {
    <&'de JsonRaw>::deserialize(deserializer).map(Some)
}

/// Reads an optional property as `T`; `kind` names the expected JSON type in the error.
fn optional<T: DeserializeOwned>(raw: Option<&JsonRaw>, name: &str, kind: &str) -> Result<Option<T>, DecodeError> {
    raw.map(|raw| serde_json::from_str(raw.get()))
        .transpose()
        .map_err(|_| invalid(format!("Expected '{name}' to be of type {kind}.")))
}

fn required<T: DeserializeOwned>(raw: Option<&JsonRaw>, name: &str, kind: &str) -> Result<T, DecodeError> {
    optional(raw, name, kind)?.ok_or_else(|| invalid(format!("Missing required property '{name}'.")))
}

fn parse(text: &str) -> Result<HubMessage, DecodeError> {
    let record: Record<'_> = serde_json::from_str(text).map_err(|error| invalid(error.to_string()))?;
    let message_type: u64 = required(record.kind, "type", "Number")?;
    Ok(match message_type {
        1 | 4 => {
            let invocation_id: Option<String> = if message_type == 4 {
                Some(required(record.invocation_id, "invocationId", "String")?)
            } else {
                // `null` counts as absent: a non-blocking invocation.
                optional::<Option<String>>(record.invocation_id, "invocationId", "String")?.flatten()
            };
            let target = required(record.target, "target", "String")?;
            let arguments: Vec<Box<JsonRaw>> = required(record.arguments, "arguments", "Array")?;
            let stream_ids: Option<Vec<String>> = optional(record.stream_ids, "streamIds", "Array of String")?;
            HubMessage::Invocation {
                invocation_id,
                target,
                arguments: arguments.into_iter().map(RawValue::Json).collect(),
                stream_ids: stream_ids.unwrap_or_default(),
                streaming: message_type == 4,
            }
        }
        2 => {
            let invocation_id = required(record.invocation_id, "invocationId", "String")?;
            let item = record
                .item
                .ok_or_else(|| invalid("Missing required property 'item'."))?;
            HubMessage::StreamItem {
                invocation_id,
                item: RawValue::Json(item.to_owned()),
            }
        }
        3 => {
            let invocation_id = required(record.invocation_id, "invocationId", "String")?;
            // As in ASP.NET, `"error": null` counts as no error.
            let error: Option<String> = optional::<Option<String>>(record.error, "error", "String")?.flatten();
            let outcome = match (error, record.result) {
                (Some(_), Some(_)) => {
                    return Err(invalid("The 'error' and 'result' properties are mutually exclusive."));
                }
                (Some(error), None) => CompletionOutcome::Error(error),
                (None, Some(result)) => CompletionOutcome::Value(RawValue::Json(result.to_owned())),
                (None, None) => CompletionOutcome::Void,
            };
            HubMessage::Completion { invocation_id, outcome }
        }
        5 => HubMessage::CancelInvocation {
            invocation_id: required(record.invocation_id, "invocationId", "String")?,
        },
        6 => HubMessage::Ping,
        7 => HubMessage::Close {
            error: optional::<Option<String>>(record.error, "error", "String")?.flatten(),
            allow_reconnect: optional::<Option<bool>>(record.allow_reconnect, "allowReconnect", "Boolean")?
                .flatten()
                .unwrap_or(false),
        },
        8 => HubMessage::Ack {
            sequence_id: required(record.sequence_id, "sequenceId", "Number")?,
        },
        9 => HubMessage::Sequence {
            sequence_id: required(record.sequence_id, "sequenceId", "Number")?,
        },
        _ => HubMessage::Unknown { message_type },
    })
}

fn encode_error(reason: impl std::fmt::Display) -> EncodeError {
    EncodeError {
        protocol: PROTOCOL,
        reason: reason.to_string(),
    }
}

/// Appends `message` as one record plus 0x1E; on error `out` is restored.
pub(crate) fn encode<A, V>(message: &Outgoing<'_, A, V>, out: &mut Vec<u8>) -> Result<(), EncodeError>
where
    A: Serialize + ?Sized,
    V: Serialize + ?Sized,
{
    let start = out.len();
    match encode_record(message, out) {
        Ok(()) => {
            out.push(RECORD_SEPARATOR);
            Ok(())
        }
        Err(error) => {
            out.truncate(start);
            Err(error)
        }
    }
}

fn write<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> Result<(), EncodeError> {
    serde_json::to_writer(&mut *out, value).map_err(encode_error)
}

/// Writes `,"name":` and the string `value`.
fn write_str_property(out: &mut Vec<u8>, name: &str, value: &str) -> Result<(), EncodeError> {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    write(out, value)
}

/// The envelope follows ASP.NET's property order: type, invocationId, then the message's own properties.
fn encode_record<A, V>(message: &Outgoing<'_, A, V>, out: &mut Vec<u8>) -> Result<(), EncodeError>
where
    A: Serialize + ?Sized,
    V: Serialize + ?Sized,
{
    match message {
        Outgoing::Invocation {
            invocation_id,
            target,
            arguments,
        } => {
            out.extend_from_slice(b"{\"type\":1");
            if let Some(id) = invocation_id {
                write_str_property(out, "invocationId", id)?;
            }
            write_str_property(out, "target", target)?;
            out.extend_from_slice(b",\"arguments\":");
            let at = out.len();
            write(out, *arguments)?;
            // `()` (null) is the natural way to say "no arguments" in Rust: it is sent as `[]`.
            if &out[at..] == b"null" {
                out.truncate(at);
                out.extend_from_slice(b"[]");
            }
            if out.get(at) != Some(&b'[') {
                return Err(encode_error("the arguments must serialize as a sequence"));
            }
        }
        Outgoing::StreamItem { invocation_id, item } => {
            out.extend_from_slice(b"{\"type\":2");
            write_str_property(out, "invocationId", invocation_id)?;
            out.extend_from_slice(b",\"item\":");
            write(out, *item)?;
        }
        Outgoing::Completion { invocation_id, outcome } => {
            out.extend_from_slice(b"{\"type\":3");
            write_str_property(out, "invocationId", invocation_id)?;
            match outcome {
                CompletionOutcome::Void => {}
                CompletionOutcome::Value(value) => {
                    out.extend_from_slice(b",\"result\":");
                    write(out, *value)?;
                }
                CompletionOutcome::Error(error) => write_str_property(out, "error", error)?,
            }
        }
        Outgoing::CancelInvocation { invocation_id } => {
            out.extend_from_slice(b"{\"type\":5");
            write_str_property(out, "invocationId", invocation_id)?;
        }
        Outgoing::Ping => out.extend_from_slice(b"{\"type\":6"),
        Outgoing::Close { error, allow_reconnect } => {
            out.extend_from_slice(b"{\"type\":7");
            if let Some(error) = error {
                write_str_property(out, "error", error)?;
            }
            if *allow_reconnect {
                out.extend_from_slice(b",\"allowReconnect\":true");
            }
        }
        Outgoing::Ack { sequence_id } => {
            out.extend_from_slice(b"{\"type\":8,\"sequenceId\":");
            write(out, sequence_id)?;
        }
        Outgoing::Sequence { sequence_id } => {
            out.extend_from_slice(b"{\"type\":9,\"sequenceId\":");
            write(out, sequence_id)?;
        }
    }
    out.push(b'}');
    Ok(())
}
