//! Reading what the server sends: whole records out of the received bytes, MessagePack brought to the JSON
//! protocol's shape (so tests compare both protocols alike), and the checks every record of a kind must pass.

use std::collections::VecDeque;

use serde_json::{json, Value};

use super::records::{Protocol, RS};
use super::TestClientError;

/// One hub record from the server: its JSON shape (MessagePack normalized to it) and its raw bytes (the JSON
/// text without RS, or the MessagePack body without its length prefix).
#[derive(Debug, Clone)]
pub struct Record {
    /// The record as JSON (MessagePack brought to the JSON protocol's shape).
    pub value: Value,
    /// The bytes as received: JSON text without RS, or a MessagePack body without its length prefix.
    pub raw: Vec<u8>,
}

impl Record {
    /// The message type (1 Invocation … 9 Sequence); 0 if there is none.
    pub fn kind(&self) -> u64 {
        self.value["type"].as_u64().unwrap_or(0)
    }

    /// The invocation id, if the record has one.
    pub fn id(&self) -> Option<&str> {
        self.value["invocationId"].as_str()
    }
}

pub(super) fn ensure(condition: bool, what: impl FnOnce() -> String) -> Result<(), TestClientError> {
    if condition {
        Ok(())
    } else {
        Err(TestClientError::Unexpected(what()))
    }
}

/// Moves every whole record at the front of `buf` to `inbox`, checking each.
pub(super) fn take_records(
    protocol: Protocol,
    buf: &mut Vec<u8>,
    inbox: &mut VecDeque<Record>,
) -> Result<(), TestClientError> {
    loop {
        let (value, raw, used) = match protocol {
            Protocol::Json => {
                let Some(end) = buf.iter().position(|byte| *byte == RS) else {
                    return Ok(());
                };
                let raw = buf[..end].to_vec();
                let value: Value = serde_json::from_slice(&raw).map_err(|error| {
                    TestClientError::Unexpected(format!(
                        "bad JSON from the server ({error}): {:?}",
                        String::from_utf8_lossy(&raw)
                    ))
                })?;
                (value, raw, end + 1)
            }
            Protocol::MessagePack => {
                let mut length = 0usize;
                let mut prefix = None;
                for (index, byte) in buf.iter().take(5).enumerate() {
                    length |= usize::from(byte & 0x7f) << (7 * index);
                    if byte & 0x80 == 0 {
                        prefix = Some(index + 1);
                        break;
                    }
                }
                let Some(prefix) = prefix else {
                    ensure(buf.len() < 5, || "a bad varint prefix from the server".into())?;
                    return Ok(());
                };
                if buf.len() < prefix + length {
                    return Ok(());
                }
                let raw = buf[prefix..prefix + length].to_vec();
                let mut reader = raw.as_slice();
                let decoded = rmpv::decode::read_value(&mut reader).map_err(|error| {
                    TestClientError::Unexpected(format!("bad MessagePack from the server ({error}): {raw:02x?}"))
                })?;
                ensure(reader.is_empty(), || {
                    format!("trailing bytes in a MessagePack record: {raw:02x?}")
                })?;
                let array = decoded
                    .as_array()
                    .ok_or_else(|| TestClientError::Unexpected("a MessagePack record that is not an array".into()))?;
                (normalize_msgpack(array)?, raw, prefix + length)
            }
        };
        validate(protocol, &value, &raw)?;
        buf.drain(..used);
        inbox.push_back(Record { value, raw });
    }
}

/// A decoded MessagePack value as JSON, for comparisons (the tests send no bin or ext).
fn mp_to_json(value: &rmpv::Value) -> Value {
    match value {
        rmpv::Value::Nil => Value::Null,
        rmpv::Value::Boolean(flag) => json!(flag),
        rmpv::Value::Integer(number) => match (number.as_u64(), number.as_i64()) {
            (Some(unsigned), _) => json!(unsigned),
            (None, Some(signed)) => json!(signed),
            (None, None) => Value::Null,
        },
        rmpv::Value::F32(number) => json!(number),
        rmpv::Value::F64(number) => json!(number),
        rmpv::Value::String(text) => json!(text.as_str().unwrap_or("<invalid utf-8>")),
        rmpv::Value::Binary(bytes) => json!(bytes),
        rmpv::Value::Array(items) => Value::Array(items.iter().map(mp_to_json).collect()),
        rmpv::Value::Map(entries) => Value::Object(
            entries
                .iter()
                .map(|(key, item)| (key.as_str().unwrap_or("<non-string key>").to_owned(), mp_to_json(item)))
                .collect(),
        ),
        rmpv::Value::Ext(..) => Value::Null,
    }
}

/// A server MessagePack record in the JSON protocol's shape.
fn normalize_msgpack(array: &[rmpv::Value]) -> Result<Value, TestClientError> {
    let kind = array
        .first()
        .and_then(rmpv::Value::as_u64)
        .ok_or_else(|| TestClientError::Unexpected("a MessagePack record does not start with its type".into()))?;
    let at = |index: usize| array.get(index).map(mp_to_json);
    let mut out = serde_json::Map::new();
    out.insert("type".into(), json!(kind));
    let put_id = |out: &mut serde_json::Map<String, Value>, index: usize| match at(index) {
        Some(Value::Null) | None => {}
        Some(id) => {
            out.insert("invocationId".into(), id);
        }
    };
    match kind {
        1 | 4 => {
            ensure(array.len() == 5 || array.len() == 6, || {
                format!("invocation of {} elements", array.len())
            })?;
            put_id(&mut out, 2);
            out.insert("target".into(), at(3).unwrap_or(Value::Null));
            out.insert("arguments".into(), at(4).unwrap_or(Value::Null));
            if let Some(ids) = at(5) {
                out.insert("streamIds".into(), ids);
            }
        }
        2 => {
            ensure(array.len() == 4, || format!("stream item of {} elements", array.len()))?;
            put_id(&mut out, 2);
            out.insert("item".into(), at(3).unwrap_or(Value::Null));
        }
        3 => {
            put_id(&mut out, 2);
            match array.get(3).and_then(rmpv::Value::as_u64) {
                Some(1) => {
                    ensure(array.len() == 5, || "error completion must have 5 elements".into())?;
                    out.insert("error".into(), at(4).unwrap_or(Value::Null));
                }
                Some(2) => ensure(array.len() == 4, || {
                    "void completion must have exactly 4 elements".into()
                })?,
                Some(3) => {
                    ensure(array.len() == 5, || "result completion must have 5 elements".into())?;
                    out.insert("result".into(), at(4).unwrap_or(Value::Null));
                }
                other => {
                    return Err(TestClientError::Unexpected(format!(
                        "completion with result kind {other:?}"
                    )))
                }
            }
        }
        5 => put_id(&mut out, 2),
        7 => {
            if let Some(Value::String(error)) = at(1) {
                out.insert("error".into(), json!(error));
            }
            if let Some(Value::Bool(allow)) = at(2) {
                out.insert("allowReconnect".into(), json!(allow));
            }
        }
        8 | 9 => {
            if let Some(sequence_id) = at(1) {
                out.insert("sequenceId".into(), sequence_id);
            }
        }
        _ => {}
    }
    Ok(Value::Object(out))
}

/// Checks that every record of a kind looks as docs/protocol.md#json-message-types and #messagepack-layouts say.
fn validate(protocol: Protocol, value: &Value, raw: &[u8]) -> Result<(), TestClientError> {
    let kind = value["type"]
        .as_u64()
        .ok_or_else(|| TestClientError::Unexpected(format!("a record without a numeric type: {value}")))?;
    match kind {
        2 => ensure(value.get("item").is_some(), || {
            format!("a StreamItem without `item`: {value}")
        })?,
        3 => {
            ensure(value.get("result").is_none() || value.get("error").is_none(), || {
                format!("a Completion with both result and error: {value}")
            })?;
            if let Some(error) = value.get("error") {
                ensure(error.as_str().is_some_and(|error| !error.is_empty()), || {
                    format!("a Completion error that is not a non-empty string: {value}")
                })?;
            }
        }
        6 => match protocol {
            Protocol::Json => ensure(*value == json!({ "type": 6 }), || {
                format!("a Ping with extra keys: {value}")
            })?,
            Protocol::MessagePack => ensure(raw == [0x91, 0x06], || {
                format!("a Ping that is not exactly 91 06: {raw:02x?}")
            })?,
        },
        _ => {}
    }
    Ok(())
}
