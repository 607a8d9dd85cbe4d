//! The MessagePack hub protocol (`"messagepack"`): varint-length-prefixed frames, each one array whose first
//! element is the message type (docs/protocol.md#messagepack-hub-protocol).
//!
//! Decoding walks the frame with a bounds-checked, depth-limited reader of its own, so that arguments and items
//! are kept as byte slices of the frame ([`RawValue::MsgPack`]) without decoding them, and so that hostile input
//! can neither panic, overflow the stack, nor make it allocate by a declared length.

use bytes::{Buf, Bytes, BytesMut};
use serde::Serialize;

use super::values::MAX_DEPTH;
use super::{CompletionOutcome, DecodeError, EncodeError, HubMessage, Outgoing, RawValue};

const PROTOCOL: &str = "messagepack";

/// The largest frame length a prefix may declare.
const MAX_FRAME: u64 = 0x7FFF_FFFF;

fn invalid(reason: impl Into<String>) -> DecodeError {
    DecodeError::Invalid {
        protocol: PROTOCOL,
        reason: reason.into(),
    }
}

/// Reads a length prefix: `Ok(Some((length, prefix_bytes)))`, `Ok(None)` if incomplete.
fn read_prefix(buf: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut length: u64 = 0;
    for (index, &byte) in buf.iter().enumerate().take(5) {
        length |= u64::from(byte & 0x7f) << (7 * index);
        if byte & 0x80 == 0 {
            if length > MAX_FRAME {
                return Err(DecodeError::BadLengthPrefix);
            }
            // At most 0x7FFFFFFF, so it fits usize on every supported platform.
            let length = usize::try_from(length).map_err(|_| DecodeError::BadLengthPrefix)?;
            return Ok(Some((length, index + 1)));
        }
    }
    if buf.len() >= 5 {
        // A continuation bit on the fifth byte.
        return Err(DecodeError::BadLengthPrefix);
    }
    Ok(None)
}

/// Decodes the first whole frame in `buf` (removing it); `Ok(None)` while the prefix or body is incomplete.
pub(crate) fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<HubMessage>, DecodeError> {
    let Some((length, prefix)) = read_prefix(buf)? else {
        return Ok(None);
    };
    // Checked before waiting for the body, so that a huge declared length is refused at once.
    if length > max {
        return Err(DecodeError::TooLarge { max });
    }
    if buf.len() - prefix < length {
        return Ok(None);
    }
    buf.advance(prefix);
    let frame = buf.split_to(length).freeze();
    parse_frame(&frame).map(Some)
}

/// A bounds-checked cursor over one frame.
struct Reader<'a> {
    frame: &'a Bytes,
    at: usize,
}

impl Reader<'_> {
    fn peek(&self) -> Result<u8, DecodeError> {
        self.frame
            .get(self.at)
            .copied()
            .ok_or_else(|| invalid("the message ended early"))
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.frame.len());
        let end = end.ok_or_else(|| invalid("the message ended early"))?;
        let bytes = self
            .frame
            .get(self.at..end)
            .ok_or_else(|| invalid("the message ended early"))?;
        self.at = end;
        Ok(bytes)
    }

    fn be(&mut self, n: usize) -> Result<u64, DecodeError> {
        Ok(self.take(n)?.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn array_len(&mut self, what: &str) -> Result<usize, DecodeError> {
        let marker = self.peek()?;
        let len = match marker {
            0x90..=0x9f => {
                self.at += 1;
                u64::from(marker & 0x0f)
            }
            0xdc => {
                self.at += 1;
                self.be(2)?
            }
            0xdd => {
                self.at += 1;
                self.be(4)?
            }
            _ => return Err(invalid(format!("{what} must be an array"))),
        };
        usize::try_from(len).map_err(|_| invalid(format!("{what} is too long")))
    }

    /// Any non-negative integer (every width), as the clients may pick any.
    fn uint(&mut self, what: &str) -> Result<u64, DecodeError> {
        let marker = self.peek()?;
        let value: i128 = match marker {
            0x00..=0x7f => {
                self.at += 1;
                i128::from(marker)
            }
            0xe0..=0xff => return Err(invalid(format!("{what} must not be negative"))),
            0xcc..=0xcf => {
                self.at += 1;
                i128::from(self.be(1 << (marker - 0xcc))?)
            }
            0xd0..=0xd3 => {
                self.at += 1;
                let size = 1usize << (marker - 0xd0);
                let raw = self.be(size)?;
                // Sign-extend from `size` bytes.
                let shift = 64 - 8 * size as u32;
                i128::from(((raw << shift) as i64) >> shift)
            }
            _ => return Err(invalid(format!("{what} must be an integer"))),
        };
        u64::try_from(value).map_err(|_| invalid(format!("{what} must not be negative")))
    }

    /// A string, or `None` for nil.
    fn str_or_nil(&mut self, what: &str) -> Result<Option<String>, DecodeError> {
        let marker = self.peek()?;
        let len = match marker {
            0xc0 => {
                self.at += 1;
                return Ok(None);
            }
            0xa0..=0xbf => {
                self.at += 1;
                u64::from(marker & 0x1f)
            }
            0xd9..=0xdb => {
                self.at += 1;
                self.be(1 << (marker - 0xd9))?
            }
            _ => return Err(invalid(format!("{what} must be a string"))),
        };
        let len = usize::try_from(len).map_err(|_| invalid(format!("{what} is too long")))?;
        let bytes = self.take(len)?;
        std::str::from_utf8(bytes)
            .map(|s| Some(s.to_owned()))
            .map_err(|_| invalid(format!("{what} is not valid UTF-8")))
    }

    fn string(&mut self, what: &str) -> Result<String, DecodeError> {
        self.str_or_nil(what)?
            .ok_or_else(|| invalid(format!("{what} must be a string")))
    }

    fn boolean(&mut self, what: &str) -> Result<bool, DecodeError> {
        let value = match self.peek()? {
            0xc2 => false,
            0xc3 => true,
            _ => return Err(invalid(format!("{what} must be a boolean"))),
        };
        self.at += 1;
        Ok(value)
    }

    /// The headers map (or nil): checked and skipped, as this server uses no headers.
    fn headers(&mut self) -> Result<(), DecodeError> {
        match self.peek()? {
            0xc0 | 0x80..=0x8f | 0xde | 0xdf => self.skip().map(|_| ()),
            _ => Err(invalid("headers must be a map")),
        }
    }

    /// Skips one value, returning it as a slice of the frame.
    fn skip(&mut self) -> Result<Bytes, DecodeError> {
        let start = self.at;
        let end = skip_value(self.frame, start, 0).map_err(invalid)?;
        self.at = end;
        Ok(self.frame.slice(start..end))
    }

    fn value(&mut self) -> Result<RawValue, DecodeError> {
        self.skip().map(RawValue::MsgPack)
    }
}

/// Returns the end offset of the MessagePack value at `at` in `data`, checking bounds, markers and nesting
/// (at most [`MAX_DEPTH`] levels). Never allocates.
pub(crate) fn skip_value(data: &[u8], at: usize, depth: usize) -> Result<usize, String> {
    fn ended() -> String {
        "the value ended early".into()
    }
    fn be(data: &[u8], at: usize, n: usize) -> Result<usize, String> {
        let bytes = data.get(at..at.checked_add(n).ok_or_else(ended)?).ok_or_else(ended)?;
        let value = bytes.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        usize::try_from(value).map_err(|_| "a length is too large".to_string())
    }
    fn after(data: &[u8], at: usize, n: usize) -> Result<usize, String> {
        at.checked_add(n).filter(|&end| end <= data.len()).ok_or_else(ended)
    }
    if depth > MAX_DEPTH {
        return Err(format!("values are nested more than {MAX_DEPTH} deep"));
    }
    let marker = *data.get(at).ok_or_else(ended)?;
    let next = at + 1;
    // (number of child values, offset after the header) for containers; the end offset for scalars.
    let (children, mut pos) = match marker {
        0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => return Ok(next),
        0x80..=0x8f => (usize::from(marker & 0x0f) * 2, next),
        0x90..=0x9f => (usize::from(marker & 0x0f), next),
        0xa0..=0xbf => return after(data, next, usize::from(marker & 0x1f)),
        0xc1 => return Err("the reserved marker 0xc1 is not valid".into()),
        // bin 8/16/32 and str 8/16/32: a length, then that many bytes.
        0xc4..=0xc6 | 0xd9..=0xdb => {
            let size = 1usize << (if marker <= 0xc6 { marker - 0xc4 } else { marker - 0xd9 });
            let len = be(data, next, size)?;
            return after(data, next + size, len);
        }
        // ext 8/16/32: a length, the type byte, then the data.
        0xc7..=0xc9 => {
            let size = 1usize << (marker - 0xc7);
            let len = be(data, next, size)?;
            return after(data, next + size, len.checked_add(1).ok_or_else(ended)?);
        }
        0xca => return after(data, next, 4),
        0xcb => return after(data, next, 8),
        0xcc..=0xcf => return after(data, next, 1 << (marker - 0xcc)),
        0xd0..=0xd3 => return after(data, next, 1 << (marker - 0xd0)),
        // fixext 1/2/4/8/16: the type byte, then the data.
        0xd4..=0xd8 => return after(data, next, 1 + (1 << (marker - 0xd4))),
        0xdc => (be(data, next, 2)?, next + 2),
        0xdd => (be(data, next, 4)?, next + 4),
        0xde => (be(data, next, 2)?.checked_mul(2).ok_or_else(ended)?, next + 2),
        0xdf => (be(data, next, 4)?.checked_mul(2).ok_or_else(ended)?, next + 4),
    };
    // Every value takes at least one byte: refuse impossible counts before looping over them.
    if children > data.len().saturating_sub(pos) {
        return Err(ended());
    }
    for _ in 0..children {
        pos = skip_value(data, pos, depth + 1)?;
    }
    Ok(pos)
}

fn parse_frame(frame: &Bytes) -> Result<HubMessage, DecodeError> {
    if frame.is_empty() {
        return Err(invalid("empty message"));
    }
    let mut r = Reader { frame, at: 0 };
    let len = r.array_len("a message")?;
    if len == 0 {
        return Err(invalid("a message must have a type"));
    }
    let message_type = r.uint("the message type")?;
    let need = |min: usize| -> Result<(), DecodeError> {
        if len < min {
            Err(invalid(format!(
                "a message of type {message_type} needs at least {min} elements, not {len}"
            )))
        } else {
            Ok(())
        }
    };
    let mut read = 1;
    let message = match message_type {
        1 | 4 => {
            need(5)?;
            r.headers()?;
            let invocation_id = r.str_or_nil("invocationId")?.filter(|id| !id.is_empty());
            if message_type == 4 && invocation_id.is_none() {
                return Err(invalid("a StreamInvocation needs an invocationId"));
            }
            let target = r.string("target")?;
            let count = r.array_len("arguments")?;
            // Bounded by the frame: each argument takes at least one byte.
            if count > frame.len() - r.at {
                return Err(invalid("the message ended early"));
            }
            let mut arguments = Vec::with_capacity(count);
            for _ in 0..count {
                arguments.push(r.value()?);
            }
            read = 5;
            let mut stream_ids = Vec::new();
            if len >= 6 {
                read = 6;
                if r.peek()? == 0xc0 {
                    r.at += 1;
                } else {
                    let count = r.array_len("streamIds")?;
                    if count > frame.len() - r.at {
                        return Err(invalid("the message ended early"));
                    }
                    for _ in 0..count {
                        stream_ids.push(r.string("a stream id")?);
                    }
                }
            }
            HubMessage::Invocation {
                invocation_id,
                target,
                arguments,
                stream_ids,
                streaming: message_type == 4,
            }
        }
        2 => {
            need(4)?;
            r.headers()?;
            let invocation_id = r.string("invocationId")?;
            let item = r.value()?;
            read = 4;
            HubMessage::StreamItem { invocation_id, item }
        }
        3 => {
            need(4)?;
            r.headers()?;
            let invocation_id = r.string("invocationId")?;
            let outcome = match r.uint("the result kind")? {
                1 => {
                    need(5)?;
                    read = 5;
                    CompletionOutcome::Error(r.string("error")?)
                }
                2 => {
                    read = 4;
                    CompletionOutcome::Void
                }
                3 => {
                    need(5)?;
                    read = 5;
                    CompletionOutcome::Value(r.value()?)
                }
                kind => return Err(invalid(format!("invalid result kind {kind}"))),
            };
            HubMessage::Completion { invocation_id, outcome }
        }
        5 => {
            need(3)?;
            r.headers()?;
            let invocation_id = r.string("invocationId")?;
            read = 3;
            HubMessage::CancelInvocation { invocation_id }
        }
        6 => HubMessage::Ping,
        7 => {
            let error = if len >= 2 {
                read = 2;
                r.str_or_nil("error")?
            } else {
                None
            };
            let allow_reconnect = if len >= 3 {
                read = 3;
                r.boolean("allowReconnect")?
            } else {
                false
            };
            HubMessage::Close { error, allow_reconnect }
        }
        8 | 9 => {
            need(2)?;
            let sequence_id = r.uint("sequenceId")?;
            read = 2;
            if message_type == 8 {
                HubMessage::Ack { sequence_id }
            } else {
                HubMessage::Sequence { sequence_id }
            }
        }
        _ => HubMessage::Unknown { message_type },
    };
    // Later protocol versions may append elements: check and skip them.
    for _ in read..len {
        r.skip()?;
    }
    if r.at != frame.len() {
        return Err(invalid("trailing bytes after the message"));
    }
    Ok(message)
}

// ---------------------------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------------------------

fn encode_error(reason: impl std::fmt::Display) -> EncodeError {
    EncodeError {
        protocol: PROTOCOL,
        reason: reason.to_string(),
    }
}

/// Appends `message` as one frame; on error `out` is restored.
pub(crate) fn encode<A, V>(message: &Outgoing<'_, A, V>, out: &mut Vec<u8>) -> Result<(), EncodeError>
where
    A: Serialize + ?Sized,
    V: Serialize + ?Sized,
{
    let start = out.len();
    match encode_body(message, out) {
        Ok(()) => {
            let length = out.len() - start;
            if length as u64 > MAX_FRAME {
                out.truncate(start);
                return Err(encode_error("the message is larger than 2GB"));
            }
            let mut prefix = [0u8; 5];
            let mut used = 0;
            let mut rest = length;
            loop {
                let low = (rest & 0x7f) as u8;
                rest >>= 7;
                if let Some(slot) = prefix.get_mut(used) {
                    *slot = if rest == 0 { low } else { low | 0x80 };
                }
                used += 1;
                if rest == 0 || used == prefix.len() {
                    break;
                }
            }
            out.splice(start..start, prefix.iter().take(used).copied());
            Ok(())
        }
        Err(error) => {
            out.truncate(start);
            Err(error)
        }
    }
}

fn encode_body<A, V>(message: &Outgoing<'_, A, V>, out: &mut Vec<u8>) -> Result<(), EncodeError>
where
    A: Serialize + ?Sized,
    V: Serialize + ?Sized,
{
    use rmp::encode as w;
    match message {
        Outgoing::Invocation {
            invocation_id,
            target,
            arguments,
        } => {
            // Six elements with an empty stream-id list, as ASP.NET writes them: five are allowed, but some
            // clients (Python's signalrcore) read the sixth unconditionally (docs/protocol.md#messagepack-layouts).
            w::write_array_len(out, 6).map_err(encode_error)?;
            w::write_uint(out, 1).map_err(encode_error)?;
            w::write_map_len(out, 0).map_err(encode_error)?;
            match invocation_id {
                Some(id) => w::write_str(out, id).map_err(encode_error)?,
                None => w::write_nil(out).map_err(encode_error)?,
            }
            w::write_str(out, target).map_err(encode_error)?;
            let at = out.len();
            serialize_value(*arguments, out)?;
            // `()` (nil) is the natural way to say "no arguments" in Rust: it is sent as an empty array.
            if out[at..] == [0xc0] {
                out.truncate(at);
                out.push(0x90);
            }
            if !matches!(out.get(at), Some(0x90..=0x9f | 0xdc | 0xdd)) {
                return Err(encode_error("the arguments must serialize as a sequence"));
            }
            w::write_array_len(out, 0).map_err(encode_error)?;
        }
        Outgoing::StreamItem { invocation_id, item } => {
            w::write_array_len(out, 4).map_err(encode_error)?;
            w::write_uint(out, 2).map_err(encode_error)?;
            w::write_map_len(out, 0).map_err(encode_error)?;
            w::write_str(out, invocation_id).map_err(encode_error)?;
            serialize_value(*item, out)?;
        }
        Outgoing::Completion { invocation_id, outcome } => {
            let len = if matches!(outcome, CompletionOutcome::Void) {
                4
            } else {
                5
            };
            w::write_array_len(out, len).map_err(encode_error)?;
            w::write_uint(out, 3).map_err(encode_error)?;
            w::write_map_len(out, 0).map_err(encode_error)?;
            w::write_str(out, invocation_id).map_err(encode_error)?;
            match outcome {
                CompletionOutcome::Error(error) => {
                    w::write_uint(out, 1).map_err(encode_error)?;
                    w::write_str(out, error).map_err(encode_error)?;
                }
                CompletionOutcome::Void => {
                    w::write_uint(out, 2).map_err(encode_error)?;
                }
                CompletionOutcome::Value(value) => {
                    w::write_uint(out, 3).map_err(encode_error)?;
                    serialize_value(*value, out)?;
                }
            }
        }
        Outgoing::CancelInvocation { invocation_id } => {
            w::write_array_len(out, 3).map_err(encode_error)?;
            w::write_uint(out, 5).map_err(encode_error)?;
            w::write_map_len(out, 0).map_err(encode_error)?;
            w::write_str(out, invocation_id).map_err(encode_error)?;
        }
        Outgoing::Ping => {
            w::write_array_len(out, 1).map_err(encode_error)?;
            w::write_uint(out, 6).map_err(encode_error)?;
        }
        Outgoing::Close { error, allow_reconnect } => {
            // `[7, error|nil]`, plus `allowReconnect` only when set: both forms are what the JS client reads.
            w::write_array_len(out, if *allow_reconnect { 3 } else { 2 }).map_err(encode_error)?;
            w::write_uint(out, 7).map_err(encode_error)?;
            match error {
                Some(error) => w::write_str(out, error).map_err(encode_error)?,
                None => w::write_nil(out).map_err(encode_error)?,
            }
            if *allow_reconnect {
                w::write_bool(out, true).map_err(encode_error)?;
            }
        }
        Outgoing::Ack { sequence_id } | Outgoing::Sequence { sequence_id } => {
            let kind = if matches!(message, Outgoing::Ack { .. }) { 8 } else { 9 };
            w::write_array_len(out, 2).map_err(encode_error)?;
            w::write_uint(out, kind).map_err(encode_error)?;
            w::write_uint(out, *sequence_id).map_err(encode_error)?;
        }
    }
    Ok(())
}

/// Serializes a user value with structs as maps (member names), as the .NET and JS clients expect.
fn serialize_value<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    value
        .serialize(&mut rmp_serde::Serializer::new(out).with_struct_map())
        .map_err(encode_error)
}
