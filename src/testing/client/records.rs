//! The bytes a raw client sends, written by hand (not with the crate's codecs, so that tests check the codecs as
//! much as the connection): JSON text plus the record separator, or a varint-prefixed MessagePack array in the
//! smallest forms, as the JS client writes them.

use serde_json::{json, Value};

/// The JSON record separator.
pub const RS: u8 = 0x1e;

/// The hub protocol a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// JSON text records ended by RS, in Text frames.
    Json,
    /// Varint-prefixed MessagePack arrays, in Binary frames.
    MessagePack,
}

/// How a Completion the client sends ends.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// No result (a void method, the end of an upload).
    Void,
    /// A result value.
    Result(Value),
    /// An error message.
    Error(&'static str),
}

impl Protocol {
    /// Both protocols, JSON first.
    pub const ALL: [Protocol; 2] = [Protocol::Json, Protocol::MessagePack];

    /// The name in the handshake: `json` or `messagepack`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Json => "json",
            Protocol::MessagePack => "messagepack",
        }
    }

    /// The handshake request for `version` (always JSON text plus RS).
    pub fn handshake(self, version: u32) -> Vec<u8> {
        format!("{{\"protocol\":\"{}\",\"version\":{version}}}\u{1e}", self.name()).into_bytes()
    }

    /// One record: `json_form` as text plus RS, or `msgpack_form` as a varint-prefixed MessagePack body.
    pub fn record(self, json_form: Value, msgpack_form: Value) -> Vec<u8> {
        match self {
            Protocol::Json => {
                let mut out = json_form.to_string().into_bytes();
                out.push(RS);
                out
            }
            Protocol::MessagePack => {
                let mut body = Vec::new();
                mp_write(&msgpack_form, &mut body);
                msgpack_frame(&body)
            }
        }
    }

    /// An Invocation (type 1); without an id nothing comes back. `stream_ids` name client-to-server streams.
    pub fn invocation(self, id: Option<&str>, target: &str, args: Value, stream_ids: &[&str]) -> Vec<u8> {
        self.call(1, id, target, args, stream_ids)
    }

    /// A StreamInvocation (type 4).
    pub fn stream_invocation(self, id: &str, target: &str, args: Value) -> Vec<u8> {
        self.call(4, Some(id), target, args, &[])
    }

    fn call(self, kind: u64, id: Option<&str>, target: &str, args: Value, stream_ids: &[&str]) -> Vec<u8> {
        let mut object = json!({ "type": kind, "target": target, "arguments": args.clone() });
        if let (Some(id), Some(map)) = (id, object.as_object_mut()) {
            map.insert("invocationId".into(), json!(id));
        }
        if let (false, Some(map)) = (stream_ids.is_empty(), object.as_object_mut()) {
            map.insert("streamIds".into(), json!(stream_ids));
        }
        // The JS client writes the 5-element form when there are no stream ids.
        let mut array = vec![
            json!(kind),
            json!({}),
            id.map_or(Value::Null, |id| json!(id)),
            json!(target),
            args,
        ];
        if !stream_ids.is_empty() {
            array.push(json!(stream_ids));
        }
        self.record(object, Value::Array(array))
    }

    /// A StreamItem (type 2) of a client-to-server stream.
    pub fn stream_item(self, id: &str, item: Value) -> Vec<u8> {
        self.record(
            json!({ "type": 2, "invocationId": id, "item": item.clone() }),
            json!([2, {}, id, item]),
        )
    }

    /// A Completion (type 3): of an upload, or the answer to a client-result Invocation.
    pub fn completion(self, id: &str, outcome: Outcome) -> Vec<u8> {
        match outcome {
            Outcome::Void => self.record(json!({ "type": 3, "invocationId": id }), json!([3, {}, id, 2])),
            Outcome::Result(value) => self.record(
                json!({ "type": 3, "invocationId": id, "result": value.clone() }),
                json!([3, {}, id, 3, value]),
            ),
            Outcome::Error(error) => self.record(
                json!({ "type": 3, "invocationId": id, "error": error }),
                json!([3, {}, id, 1, error]),
            ),
        }
    }

    /// A CancelInvocation (type 5).
    pub fn cancel(self, id: &str) -> Vec<u8> {
        self.record(json!({ "type": 5, "invocationId": id }), json!([5, {}, id]))
    }

    /// A Ping (type 6).
    pub fn ping(self) -> Vec<u8> {
        match self {
            Protocol::Json => b"{\"type\":6}\x1e".to_vec(),
            Protocol::MessagePack => vec![0x02, 0x91, 0x06],
        }
    }

    /// What the JS client sends on `stop()`: `{"type":7}` / `[7, nil]`.
    pub fn close(self) -> Vec<u8> {
        match self {
            Protocol::Json => b"{\"type\":7}\x1e".to_vec(),
            Protocol::MessagePack => vec![0x03, 0x92, 0x07, 0xc0],
        }
    }

    /// An Ack (type 8) of stateful reconnect: everything up to `sequence_id` arrived.
    pub fn ack(self, sequence_id: u64) -> Vec<u8> {
        self.record(json!({ "type": 8, "sequenceId": sequence_id }), json!([8, sequence_id]))
    }

    /// A Sequence (type 9) of stateful reconnect: the next message carries `sequence_id`.
    pub fn sequence(self, sequence_id: u64) -> Vec<u8> {
        self.record(json!({ "type": 9, "sequenceId": sequence_id }), json!([9, sequence_id]))
    }
}

/// Appends `n` as a MessagePack record's length prefix (7 bits a byte, low first).
pub fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let low = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

/// A MessagePack record as it travels: the varint length prefix, then `body`.
pub fn msgpack_frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    varint(body.len(), &mut out);
    out.extend_from_slice(body);
    out
}

/// A minimal MessagePack writer, by the spec, for the values tests send (smallest forms, as the JS client).
fn mp_write(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.push(0xc0),
        Value::Bool(false) => out.push(0xc2),
        Value::Bool(true) => out.push(0xc3),
        Value::Number(number) => {
            if let Some(unsigned) = number.as_u64() {
                mp_uint(unsigned, out);
            } else if let Some(signed) = number.as_i64() {
                mp_int(signed, out);
            } else {
                out.push(0xcb);
                out.extend_from_slice(&number.as_f64().unwrap_or(f64::NAN).to_be_bytes());
            }
        }
        Value::String(text) => mp_str(text, out),
        Value::Array(items) => {
            mp_len(items.len(), 0x90, 0xdc, 0xdd, out);
            for item in items {
                mp_write(item, out);
            }
        }
        Value::Object(map) => {
            mp_len(map.len(), 0x80, 0xde, 0xdf, out);
            for (key, item) in map {
                mp_str(key, out);
                mp_write(item, out);
            }
        }
    }
}

fn mp_uint(value: u64, out: &mut Vec<u8>) {
    if value < 0x80 {
        out.push(value as u8);
    } else if let Ok(small) = u8::try_from(value) {
        out.extend_from_slice(&[0xcc, small]);
    } else if let Ok(small) = u16::try_from(value) {
        out.push(0xcd);
        out.extend_from_slice(&small.to_be_bytes());
    } else if let Ok(small) = u32::try_from(value) {
        out.push(0xce);
        out.extend_from_slice(&small.to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&value.to_be_bytes());
    }
}

fn mp_int(value: i64, out: &mut Vec<u8>) {
    if value >= 0 {
        mp_uint(value.unsigned_abs(), out);
    } else if value >= -32 {
        out.push(value as i8 as u8);
    } else if let Ok(small) = i8::try_from(value) {
        out.extend_from_slice(&[0xd0, small as u8]);
    } else if let Ok(small) = i16::try_from(value) {
        out.push(0xd1);
        out.extend_from_slice(&small.to_be_bytes());
    } else if let Ok(small) = i32::try_from(value) {
        out.push(0xd2);
        out.extend_from_slice(&small.to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&value.to_be_bytes());
    }
}

fn mp_str(text: &str, out: &mut Vec<u8>) {
    let len = text.len();
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else if let Ok(small) = u8::try_from(len) {
        out.extend_from_slice(&[0xd9, small]);
    } else if let Ok(small) = u16::try_from(len) {
        out.push(0xda);
        out.extend_from_slice(&small.to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
    out.extend_from_slice(text.as_bytes());
}

fn mp_len(len: usize, fix: u8, marker16: u8, marker32: u8, out: &mut Vec<u8>) {
    if len < 16 {
        out.push(fix | len as u8);
    } else if let Ok(small) = u16::try_from(len) {
        out.push(marker16);
        out.extend_from_slice(&small.to_be_bytes());
    } else {
        out.push(marker32);
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
}
