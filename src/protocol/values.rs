//! Values that cross the protocol boundary with protocol-specific encodings.
//!
//! * [`RawValue`]: one argument or item exactly as a client sent it, decoded on demand and re-sendable to
//!   clients of either protocol.
//! * [`Binary`]: a byte array (base64 string in JSON, `bin` in MessagePack), like .NET `byte[]`.
//! * [`Timestamp`]: a UTC instant (ISO-8601 string in JSON, timestamp extension −1 in MessagePack), like .NET
//!   `DateTime`.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use serde::ser::{self, SerializeMap, SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};

use super::{ArgError, Protocol};

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

// ---------------------------------------------------------------------------------------------------------------
// Binary
// ---------------------------------------------------------------------------------------------------------------

/// A byte array: a base64 string in JSON, `bin` in MessagePack (.NET `byte[]`, JS `Uint8Array`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Binary(pub Vec<u8>);

impl From<Vec<u8>> for Binary {
    fn from(bytes: Vec<u8>) -> Binary {
        Binary(bytes)
    }
}

impl Serialize for Binary {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&base64::engine::general_purpose::STANDARD.encode(&self.0))
        } else {
            serializer.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for Binary {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Binary, D::Error> {
        struct BinaryVisitor;
        impl<'de> Visitor<'de> for BinaryVisitor {
            type Value = Binary;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte array (base64 string, bin or array of bytes)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Binary, E> {
                base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map(Binary)
                    .map_err(|_| E::custom("a byte array must be a valid base64 string"))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Binary, E> {
                Ok(Binary(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Binary, E> {
                Ok(Binary(v))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Binary, A::Error> {
                // The size hint comes from the input; cap the preallocation.
                let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(byte) = seq.next_element::<u8>()? {
                    bytes.push(byte);
                }
                Ok(Binary(bytes))
            }
        }
        deserializer.deserialize_any(BinaryVisitor)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Timestamp
// ---------------------------------------------------------------------------------------------------------------

/// A UTC instant with nanosecond precision (.NET `DateTime` in UTC, JS `Date`).
///
/// JSON: an ISO-8601 string such as `"2000-01-01T00:00:00Z"`, with fractional seconds only when nonzero.
/// MessagePack: the timestamp extension (type −1), in its smallest form (timestamp 32, 64 or 96).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    secs: i64,
    nanos: u32,
}

impl Timestamp {
    /// The instant `secs` seconds plus `nanos` nanoseconds after 1970-01-01T00:00:00Z (`nanos` may exceed one
    /// second; it carries into the seconds, saturating at the ends of the range).
    pub fn from_unix(secs: i64, nanos: u32) -> Timestamp {
        Timestamp {
            secs: secs.saturating_add(i64::from(nanos / NANOS_PER_SEC)),
            nanos: nanos % NANOS_PER_SEC,
        }
    }

    /// The current time.
    pub fn now() -> Timestamp {
        Timestamp::from(SystemTime::now())
    }

    /// Whole seconds since the Unix epoch (negative before 1970).
    pub fn unix_secs(&self) -> i64 {
        self.secs
    }

    /// The nanoseconds past [`Timestamp::unix_secs`], below 1,000,000,000.
    pub fn subsec_nanos(&self) -> u32 {
        self.nanos
    }

    /// The MessagePack timestamp extension body (without the type byte), in its smallest form.
    pub(crate) fn to_ext_data(self) -> Vec<u8> {
        let secs = self.secs;
        if (0..1 << 34).contains(&secs) {
            let packed = (u64::from(self.nanos) << 34) | secs.unsigned_abs();
            match u32::try_from(packed) {
                Ok(small) => small.to_be_bytes().to_vec(),
                Err(_) => packed.to_be_bytes().to_vec(),
            }
        } else {
            let mut data = Vec::with_capacity(12);
            data.extend_from_slice(&self.nanos.to_be_bytes());
            data.extend_from_slice(&secs.to_be_bytes());
            data
        }
    }

    /// Reads a timestamp extension body (4, 8 or 12 bytes); `None` if malformed.
    pub(crate) fn from_ext_data(data: &[u8]) -> Option<Timestamp> {
        match data.len() {
            4 => {
                let secs = u32::from_be_bytes(data.try_into().ok()?);
                Some(Timestamp::from_unix(i64::from(secs), 0))
            }
            8 => {
                let packed = u64::from_be_bytes(data.try_into().ok()?);
                let nanos = u32::try_from(packed >> 34).ok()?;
                let secs = i64::try_from(packed & ((1 << 34) - 1)).ok()?;
                (nanos < NANOS_PER_SEC).then_some(Timestamp { secs, nanos })
            }
            12 => {
                let nanos = u32::from_be_bytes(data.get(..4)?.try_into().ok()?);
                let secs = i64::from_be_bytes(data.get(4..)?.try_into().ok()?);
                (nanos < NANOS_PER_SEC).then_some(Timestamp { secs, nanos })
            }
            _ => None,
        }
    }
}

impl From<SystemTime> for Timestamp {
    fn from(time: SystemTime) -> Timestamp {
        match time.duration_since(UNIX_EPOCH) {
            Ok(after) => Timestamp::from_unix(i64::try_from(after.as_secs()).unwrap_or(i64::MAX), after.subsec_nanos()),
            Err(before) => {
                let before = before.duration();
                let secs = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
                match before.subsec_nanos() {
                    0 => Timestamp::from_unix(secs.saturating_neg(), 0),
                    nanos => Timestamp::from_unix(secs.saturating_neg().saturating_sub(1), NANOS_PER_SEC - nanos),
                }
            }
        }
    }
}

impl From<Timestamp> for SystemTime {
    /// Saturates at the limits of `SystemTime` on this platform.
    fn from(time: Timestamp) -> SystemTime {
        let nanos = Duration::from_nanos(u64::from(time.nanos));
        if time.secs >= 0 {
            UNIX_EPOCH
                .checked_add(Duration::from_secs(time.secs.unsigned_abs()) + nanos)
                .unwrap_or(UNIX_EPOCH)
        } else {
            UNIX_EPOCH
                .checked_sub(Duration::from_secs(time.secs.unsigned_abs()))
                .and_then(|t| t.checked_add(nanos))
                .unwrap_or(UNIX_EPOCH)
        }
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // day is in 1..=31 and month in 1..=12, so the casts cannot truncate.
    (year, month as u32, day as u32)
}

/// (year, month, day) to days since 1970-01-01; the inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let month = i64::from(month);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl fmt::Display for Timestamp {
    /// ISO-8601 in UTC: `2000-01-01T00:00:00Z`, or `2000-01-01T00:00:00.5Z` with a fraction.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.secs.div_euclid(86_400);
        let in_day = self.secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
            in_day / 3600,
            in_day % 3600 / 60,
            in_day % 60
        )?;
        if self.nanos != 0 {
            let fraction = format!("{:09}", self.nanos);
            write!(f, ".{}", fraction.trim_end_matches('0'))?;
        }
        f.write_str("Z")
    }
}

/// Why a string is not an ISO-8601 timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an ISO-8601 date and time: {0}")]
pub struct TimestampParseError(&'static str);

impl FromStr for Timestamp {
    type Err = TimestampParseError;

    /// Parses `YYYY-MM-DDTHH:MM:SS[.fraction][Z|±HH:MM]`; without an offset the time is taken as UTC.
    fn from_str(text: &str) -> Result<Timestamp, TimestampParseError> {
        let bytes = text.as_bytes();
        let digits = |from: usize, len: usize| -> Result<u32, TimestampParseError> {
            let part = bytes.get(from..from + len).ok_or(TimestampParseError("too short"))?;
            part.iter().try_fold(0u32, |acc, &b| {
                if b.is_ascii_digit() {
                    Ok(acc * 10 + u32::from(b - b'0'))
                } else {
                    Err(TimestampParseError("expected a digit"))
                }
            })
        };
        let expect = |at: usize, allowed: &[u8]| -> Result<(), TimestampParseError> {
            match bytes.get(at) {
                Some(b) if allowed.contains(b) => Ok(()),
                _ => Err(TimestampParseError("unexpected separator")),
            }
        };
        let year = digits(0, 4)?;
        expect(4, b"-")?;
        let month = digits(5, 2)?;
        expect(7, b"-")?;
        let day = digits(8, 2)?;
        expect(10, b"Tt ")?;
        let hour = digits(11, 2)?;
        expect(13, b":")?;
        let minute = digits(14, 2)?;
        expect(16, b":")?;
        let second = digits(17, 2)?;
        if !(1..=12).contains(&month) || day < 1 || day > days_in_month(i64::from(year), month) {
            return Err(TimestampParseError("date out of range"));
        }
        if hour > 23 || minute > 59 || second > 59 {
            return Err(TimestampParseError("time out of range"));
        }
        let mut at = 19;
        let mut nanos = 0u32;
        if bytes.get(at) == Some(&b'.') {
            at += 1;
            let start = at;
            while let Some(b) = bytes.get(at).filter(|b| b.is_ascii_digit()) {
                // Digits past nanoseconds are dropped (truncation, as .NET does past ticks).
                if at - start < 9 {
                    nanos = nanos * 10 + u32::from(b - b'0');
                }
                at += 1;
            }
            if at == start {
                return Err(TimestampParseError("empty fraction"));
            }
            for _ in (at - start)..9 {
                nanos *= 10;
            }
        }
        let offset_secs: i64 = match bytes.get(at) {
            None => 0,
            Some(b'Z' | b'z') if at + 1 == bytes.len() => 0,
            Some(sign @ (b'+' | b'-')) => {
                let hours = digits(at + 1, 2)?;
                expect(at + 3, b":")?;
                let minutes = digits(at + 4, 2)?;
                if at + 6 != bytes.len() || hours > 23 || minutes > 59 {
                    return Err(TimestampParseError("bad offset"));
                }
                let offset = i64::from(hours * 3600 + minutes * 60);
                if *sign == b'-' {
                    -offset
                } else {
                    offset
                }
            }
            Some(_) => return Err(TimestampParseError("unexpected trailing characters")),
        };
        let days = days_from_civil(i64::from(year), month, day);
        let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
        Ok(Timestamp { secs, nanos })
    }
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(self)
        } else {
            let data = self.to_ext_data();
            serializer.serialize_newtype_struct(EXT_STRUCT, &(TIMESTAMP_EXT, serde_bytes::Bytes::new(&data)))
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        struct TimestampVisitor;
        impl<'de> Visitor<'de> for TimestampVisitor {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a date and time (ISO-8601 string or MessagePack timestamp)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timestamp, E> {
                v.parse().map_err(E::custom)
            }
            // rmp-serde and rmpv hand an extension to `visit_newtype_struct` as a `(i8, bytes)` sequence.
            fn visit_newtype_struct<D: Deserializer<'de>>(self, deserializer: D) -> Result<Timestamp, D::Error> {
                let (kind, data): (i8, serde_bytes::ByteBuf) = Deserialize::deserialize(deserializer)?;
                if kind != TIMESTAMP_EXT {
                    return Err(de::Error::custom(format_args!(
                        "extension type {kind} is not a timestamp"
                    )));
                }
                Timestamp::from_ext_data(&data).ok_or_else(|| de::Error::custom("a malformed MessagePack timestamp"))
            }
        }
        if deserializer.is_human_readable() {
            deserializer.deserialize_str(TimestampVisitor)
        } else {
            // `deserialize_any` so that an ISO string is accepted from MessagePack too.
            deserializer.deserialize_any(TimestampVisitor)
        }
    }
}
