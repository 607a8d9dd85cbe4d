//! Values that cross the protocol boundary with protocol-specific encodings.
//!
//! * [`RawValue`]: one argument or item exactly as a client sent it, decoded on demand and re-sendable to
//!   clients of either protocol.
//! * [`Binary`]: a byte array (base64 string in JSON, `bin` in MessagePack), like .NET `byte[]`.
//! * [`Timestamp`]: a UTC instant (ISO-8601 string in JSON, timestamp extension −1 in MessagePack), like .NET
//!   `DateTime`.
//!
//! `RawValue` lives here; `Binary` and `Timestamp` in `values/binary.rs` and `values/timestamp.rs`.

use std::fmt;

use base64::Engine as _;
use bytes::Bytes;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::ser::{self, SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use super::{ArgError, Protocol};

mod binary;
mod timestamp;

pub use binary::Binary;
pub use timestamp::{Timestamp, TimestampParseError};

/// How deep MessagePack values may nest. The decoder rejects deeper input, so transcoding never recurses further.
pub(crate) const MAX_DEPTH: usize = 64;

/// The MessagePack extension type of timestamps.
const TIMESTAMP_EXT: i8 = -1;

/// The serde newtype-struct name that rmp-serde and rmpv map to a MessagePack extension `(i8, bytes)`.
const EXT_STRUCT: &str = "_ExtStruct";

const NANOS_PER_SEC: u32 = 1_000_000_000;

// ---------------------------------------------------------------------------------------------------------------
// RawValue
// ---------------------------------------------------------------------------------------------------------------

/// One argument, stream item or result as it arrived, not yet decoded.
///
/// Decode it with [`RawValue::deserialize`]; or send it on as it is: its `Serialize` writes the JSON text verbatim
/// to JSON clients and transcodes MessagePack to JSON (bin as base64, timestamps as ISO-8601) and back.
///
/// It deliberately has no `Deserialize` impl: hub methods take it as an undecoded argument, which the binder
/// tells apart from decoded (`DeserializeOwned`) arguments.
#[derive(Debug, Clone)]
pub enum RawValue {
    /// The JSON text of the value.
    Json(Box<serde_json::value::RawValue>),
    /// The bytes of exactly one MessagePack value.
    MsgPack(Bytes),
}

impl RawValue {
    /// A JSON `null`.
    pub fn json_null() -> RawValue {
        match serde_json::value::RawValue::from_string("null".to_owned()) {
            Ok(raw) => RawValue::Json(raw),
            // "null" is always valid JSON; fall back to an equivalent value rather than panic.
            Err(_) => RawValue::msgpack_nil(),
        }
    }

    /// A MessagePack `nil`.
    pub fn msgpack_nil() -> RawValue {
        RawValue::MsgPack(Bytes::from_static(&[0xc0]))
    }

    /// The null of `protocol`.
    pub fn null(protocol: Protocol) -> RawValue {
        match protocol {
            Protocol::Json => RawValue::json_null(),
            Protocol::MessagePack => RawValue::msgpack_nil(),
        }
    }

    /// Takes JSON text that must hold exactly one value.
    pub fn from_json_text(text: &str) -> Result<RawValue, ArgError> {
        serde_json::from_str::<Box<serde_json::value::RawValue>>(text)
            .map(RawValue::Json)
            .map_err(|error| ArgError(json_error_text(&error)))
    }

    /// Takes bytes that must hold exactly one MessagePack value (nested at most 64 deep).
    pub fn from_msgpack_bytes(bytes: Bytes) -> Result<RawValue, ArgError> {
        match super::msgpack::skip_value(&bytes, 0, 0) {
            Ok(end) if end == bytes.len() => Ok(RawValue::MsgPack(bytes)),
            Ok(_) => Err(ArgError("trailing bytes after the MessagePack value".into())),
            Err(reason) => Err(ArgError(reason)),
        }
    }

    /// Encodes `value` in `protocol` (structs as maps in MessagePack, as the official clients expect).
    pub fn encode<T: Serialize + ?Sized>(protocol: Protocol, value: &T) -> Result<RawValue, ArgError> {
        match protocol {
            Protocol::Json => serde_json::value::to_raw_value(value)
                .map(RawValue::Json)
                .map_err(|error| ArgError(json_error_text(&error))),
            Protocol::MessagePack => {
                let mut out = Vec::new();
                value
                    .serialize(&mut rmp_serde::Serializer::new(&mut out).with_struct_map())
                    .map_err(|error| ArgError(error.to_string()))?;
                Ok(RawValue::MsgPack(Bytes::from(out)))
            }
        }
    }

    /// The protocol this value arrived in.
    pub fn protocol(&self) -> Protocol {
        match self {
            RawValue::Json(_) => Protocol::Json,
            RawValue::MsgPack(_) => Protocol::MessagePack,
        }
    }

    /// Whether the value is JSON `null` or MessagePack `nil`.
    pub fn is_null(&self) -> bool {
        match self {
            RawValue::Json(raw) => raw.get().trim() == "null",
            RawValue::MsgPack(bytes) => bytes.as_ref() == [0xc0],
        }
    }
}

impl PartialEq for RawValue {
    fn eq(&self, other: &RawValue) -> bool {
        match (self, other) {
            (RawValue::Json(a), RawValue::Json(b)) => a.get() == b.get(),
            (RawValue::MsgPack(a), RawValue::MsgPack(b)) => a == b,
            _ => false,
        }
    }
}

impl Serialize for RawValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            // serde_json writes a RawValue verbatim.
            RawValue::Json(raw) if serializer.is_human_readable() => raw.serialize(serializer),
            RawValue::Json(raw) => {
                let node: JsonNode = serde_json::from_str(raw.get()).map_err(ser::Error::custom)?;
                node.serialize(serializer)
            }
            RawValue::MsgPack(bytes) => {
                // rmpv counts a container and its leaves each as a level, so allow twice the decoder's limit.
                let value = rmpv::decode::read_value_with_max_depth(&mut bytes.as_ref(), 2 * MAX_DEPTH + 4)
                    .map_err(ser::Error::custom)?;
                if serializer.is_human_readable() {
                    HumanMsgPack(&value).serialize(serializer)
                } else {
                    // rmpv keeps bin as bin and ext as ext (via `_ExtStruct`), so nothing is normalised.
                    value.serialize(serializer)
                }
            }
        }
    }
}

/// Decodes `value` as `T`; the error says briefly what did not match.
pub(crate) fn deserialize_raw<T: DeserializeOwned>(value: &RawValue) -> Result<T, ArgError> {
    match value {
        RawValue::Json(raw) => serde_json::from_str(raw.get()).map_err(|error| ArgError(json_error_text(&error))),
        RawValue::MsgPack(bytes) => rmp_serde::from_slice(bytes).map_err(|error| ArgError(error.to_string())),
    }
}

/// serde_json's message without the " at line 1 column 7" suffix, which means nothing to the client.
fn json_error_text(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

/// A JSON value that keeps object keys in their original order, for transcoding JSON to MessagePack.
enum JsonNode {
    Null,
    Bool(bool),
    Number(serde_json::Number),
    String(String),
    Array(Vec<JsonNode>),
    Object(Vec<(String, JsonNode)>),
}

impl<'de> Deserialize<'de> for JsonNode {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<JsonNode, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = JsonNode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<JsonNode, E> {
                Ok(JsonNode::Null)
            }
            fn visit_none<E>(self) -> Result<JsonNode, E> {
                Ok(JsonNode::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<JsonNode, E> {
                Ok(JsonNode::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<JsonNode, E> {
                Ok(JsonNode::Number(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<JsonNode, E> {
                Ok(JsonNode::Number(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<JsonNode, E> {
                serde_json::Number::from_f64(v)
                    .map(JsonNode::Number)
                    .ok_or_else(|| E::custom("a non-finite number"))
            }
            fn visit_str<E>(self, v: &str) -> Result<JsonNode, E> {
                Ok(JsonNode::String(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<JsonNode, E> {
                Ok(JsonNode::String(v))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<JsonNode, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(JsonNode::Array(items))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<JsonNode, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(JsonNode::Object(entries))
            }
        }
        deserializer.deserialize_any(NodeVisitor)
    }
}

impl Serialize for JsonNode {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            JsonNode::Null => serializer.serialize_unit(),
            JsonNode::Bool(v) => serializer.serialize_bool(*v),
            JsonNode::Number(n) => n.serialize(serializer),
            JsonNode::String(s) => serializer.serialize_str(s),
            JsonNode::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            JsonNode::Object(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
        }
    }
}

/// A MessagePack value written to a human-readable format the way .NET would: bin as base64, timestamps as ISO-8601.
struct HumanMsgPack<'a>(&'a rmpv::Value);

impl Serialize for HumanMsgPack<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use rmpv::Value;
        match self.0 {
            Value::Nil => serializer.serialize_unit(),
            Value::Boolean(v) => serializer.serialize_bool(*v),
            Value::Integer(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) => serializer.serialize_u64(u),
                (None, Some(i)) => serializer.serialize_i64(i),
                (None, None) => Err(ser::Error::custom("an integer out of range")),
            },
            Value::F32(v) => serializer.serialize_f32(*v),
            Value::F64(v) => serializer.serialize_f64(*v),
            Value::String(s) => match s.as_str() {
                Some(text) => serializer.serialize_str(text),
                None => serializer.serialize_str(&String::from_utf8_lossy(s.as_bytes())),
            },
            Value::Binary(bytes) => serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes)),
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&HumanMsgPack(item))?;
                }
                seq.end()
            }
            Value::Map(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    map.serialize_entry(&HumanMsgPack(key), &HumanMsgPack(value))?;
                }
                map.end()
            }
            Value::Ext(TIMESTAMP_EXT, data) => match Timestamp::from_ext_data(data) {
                Some(timestamp) => timestamp.serialize(serializer),
                None => Err(ser::Error::custom("a malformed MessagePack timestamp")),
            },
            Value::Ext(kind, data) => {
                // No JSON equivalent; keep both parts so nothing is lost.
                let mut seq = serializer.serialize_seq(Some(2))?;
                seq.serialize_element(kind)?;
                seq.serialize_element(&base64::engine::general_purpose::STANDARD.encode(data))?;
                seq.end()
            }
        }
    }
}
