//! The wire formats against the bytes docs/protocol.md gives (#negotiate, #handshake, #json-hub-protocol,
//! #messagepack-hub-protocol), plus property tests: no input makes a decoder panic, and every encoded message
//! decodes back to itself.

// In a test, a failed unwrap or a panic is the test failing with its reason.
#![allow(clippy::unwrap_used, clippy::panic)]

use bytes::{Bytes, BytesMut};
use hubmesh::protocol::handshake::{parse_request, write_response, HandshakeError, HandshakeRequest};
use hubmesh::protocol::negotiate::{AvailableTransport, NegotiateError, NegotiateRedirect, NegotiateResponse};
use hubmesh::protocol::*;
// A MessagePack frame: the varint length prefix and the body.
use hubmesh::testing::client::msgpack_frame as frame;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

const MAX: usize = 32 * 1024;

fn decode_one(protocol: Protocol, bytes: &[u8]) -> Result<Option<HubMessage>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    protocol.decode(&mut buf, MAX)
}

fn decoded(protocol: Protocol, bytes: &[u8]) -> HubMessage {
    let mut buf = BytesMut::from(bytes);
    let message = protocol.decode(&mut buf, MAX).unwrap().unwrap();
    assert!(buf.is_empty(), "bytes left over: {buf:?}");
    message
}

fn encoded<A: Serialize + ?Sized, V: Serialize + ?Sized>(protocol: Protocol, message: &Outgoing<'_, A, V>) -> Vec<u8> {
    let mut out = Vec::new();
    protocol.encode(message, &mut out).unwrap();
    out
}

fn json(text: &str) -> RawValue {
    RawValue::from_json_text(text).unwrap()
}

fn mp(bytes: &[u8]) -> RawValue {
    RawValue::MsgPack(Bytes::copy_from_slice(bytes))
}

fn is_invalid(result: Result<Option<HubMessage>, DecodeError>, needle: &str) -> bool {
    match result {
        Err(DecodeError::Invalid { reason, .. }) => reason.contains(needle),
        _ => false,
    }
}

// ------------------------------------------------------------------------------------------------------------
// JSON decoding (docs/protocol.md#json-hub-protocol)
// ------------------------------------------------------------------------------------------------------------

#[test]
fn json_decodes_invocations() {
    assert_eq!(
        decoded(
            Protocol::Json,
            b"{\"type\":1,\"target\":\"Send\",\"arguments\":[\"a\",1]}\x1e"
        ),
        HubMessage::Invocation {
            invocation_id: None,
            target: "Send".into(),
            arguments: vec![json("\"a\""), json("1")],
            stream_ids: vec![],
            streaming: false,
        }
    );
    assert_eq!(
        decoded(
            Protocol::Json,
            b"{\"type\":1,\"invocationId\":\"1\",\"target\":\"Upload\",\"arguments\":[],\"streamIds\":[\"0\"],\"headers\":{\"a\":\"b\"}}\x1e"
        ),
        HubMessage::Invocation {
            invocation_id: Some("1".into()),
            target: "Upload".into(),
            arguments: vec![],
            stream_ids: vec!["0".into()],
            streaming: false,
        }
    );
    assert_eq!(
        decoded(
            Protocol::Json,
            b"{\"type\":4,\"invocationId\":\"2\",\"target\":\"Stream\",\"arguments\":[null]}\x1e"
        ),
        HubMessage::Invocation {
            invocation_id: Some("2".into()),
            target: "Stream".into(),
            arguments: vec![RawValue::json_null()],
            stream_ids: vec![],
            streaming: true,
        }
    );
}

#[test]
fn json_keeps_arguments_verbatim() {
    let message = decoded(
        Protocol::Json,
        b"{\"type\":1,\"target\":\"x\",\"arguments\":[ {\"b\" : 1, \"a\":[1.50,\"\\u0041\"]} , 12345678901234567890 ]}\x1e",
    );
    let HubMessage::Invocation { arguments, .. } = message else {
        panic!("not an invocation")
    };
    assert_eq!(
        arguments,
        vec![
            json("{\"b\" : 1, \"a\":[1.50,\"\\u0041\"]}"),
            json("12345678901234567890")
        ]
    );
}

#[test]
fn json_decodes_the_other_types() {
    let cases: Vec<(&[u8], HubMessage)> = vec![
        (
            b"{\"type\":2,\"invocationId\":\"0\",\"item\":null}\x1e",
            HubMessage::StreamItem {
                invocation_id: "0".into(),
                item: RawValue::json_null(),
            },
        ),
        (
            b"{\"type\":3,\"invocationId\":\"0\"}\x1e",
            HubMessage::Completion {
                invocation_id: "0".into(),
                outcome: CompletionOutcome::Void,
            },
        ),
        (
            b"{\"type\":3,\"invocationId\":\"0\",\"result\":null}\x1e",
            HubMessage::Completion {
                invocation_id: "0".into(),
                outcome: CompletionOutcome::Value(RawValue::json_null()),
            },
        ),
        (
            b"{\"type\":3,\"invocationId\":\"0\",\"result\":{\"A\":1}}\x1e",
            HubMessage::Completion {
                invocation_id: "0".into(),
                outcome: CompletionOutcome::Value(json("{\"A\":1}")),
            },
        ),
        (
            b"{\"type\":3,\"invocationId\":\"0\",\"error\":\"Error: from callback\"}\x1e",
            HubMessage::Completion {
                invocation_id: "0".into(),
                outcome: CompletionOutcome::Error("Error: from callback".into()),
            },
        ),
        (
            b"{\"type\":5,\"invocationId\":\"3\"}\x1e",
            HubMessage::CancelInvocation {
                invocation_id: "3".into(),
            },
        ),
        (b"{\"type\":6}\x1e", HubMessage::Ping),
        (
            b"{\"type\":7}\x1e",
            HubMessage::Close {
                error: None,
                allow_reconnect: false,
            },
        ),
        (
            b"{\"type\":7,\"error\":\"boom\",\"allowReconnect\":true}\x1e",
            HubMessage::Close {
                error: Some("boom".into()),
                allow_reconnect: true,
            },
        ),
        (b"{\"type\":8,\"sequenceId\":7}\x1e", HubMessage::Ack { sequence_id: 7 }),
        (
            b"{\"type\":9,\"sequenceId\":1}\x1e",
            HubMessage::Sequence { sequence_id: 1 },
        ),
        (
            b"{\"type\":42,\"whatever\":[1]}\x1e",
            HubMessage::Unknown { message_type: 42 },
        ),
        (b" {\"type\":6} \x1e", HubMessage::Ping),
    ];
    for (bytes, expected) in cases {
        assert_eq!(
            decoded(Protocol::Json, bytes),
            expected,
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn json_rejects_missing_and_mistyped_fields_by_name() {
    let cases: [(&[u8], &str); 10] = [
        (b"{\"target\":\"x\",\"arguments\":[]}\x1e", "'type'"),
        (b"{\"type\":\"1\",\"target\":\"x\",\"arguments\":[]}\x1e", "'type'"),
        (b"{\"type\":1,\"arguments\":[]}\x1e", "'target'"),
        (b"{\"type\":1,\"target\":5,\"arguments\":[]}\x1e", "'target'"),
        (b"{\"type\":1,\"target\":\"x\"}\x1e", "'arguments'"),
        (b"{\"type\":1,\"target\":\"x\",\"arguments\":{}}\x1e", "'arguments'"),
        (b"{\"type\":2,\"invocationId\":\"0\"}\x1e", "'item'"),
        (
            b"{\"type\":3,\"invocationId\":\"0\",\"error\":\"e\",\"result\":1}\x1e",
            "mutually exclusive",
        ),
        (b"{\"type\":5}\x1e", "'invocationId'"),
        (b"{\"type\":8,\"sequenceId\":-1}\x1e", "'sequenceId'"),
    ];
    for (bytes, field) in cases {
        let result = decode_one(Protocol::Json, bytes);
        assert!(
            is_invalid(result.clone(), field),
            "{}: {result:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    for bytes in [
        &b"\x1e"[..],
        b"[1]\x1e",
        b"{\"type\":6\x1e",
        b"{\"type\":6}x\x1e",
        b"\xff\xfe\x1e",
        b"null\x1e",
    ] {
        assert!(
            matches!(
                decode_one(Protocol::Json, bytes),
                Err(DecodeError::Invalid { protocol: "json", .. })
            ),
            "{bytes:?}"
        );
    }
}

#[test]
fn json_framing() {
    // Several records in one buffer, then a partial one completed by a later read.
    let mut buf = BytesMut::from(&b"{\"type\":6}\x1e{\"type\":7}\x1e{\"type\":"[..]);
    assert_eq!(Protocol::Json.decode(&mut buf, MAX).unwrap(), Some(HubMessage::Ping));
    assert!(matches!(
        Protocol::Json.decode(&mut buf, MAX).unwrap(),
        Some(HubMessage::Close { .. })
    ));
    assert_eq!(Protocol::Json.decode(&mut buf, MAX).unwrap(), None);
    assert_eq!(&buf[..], b"{\"type\":");
    buf.extend_from_slice(b"6}\x1e");
    assert_eq!(Protocol::Json.decode(&mut buf, MAX).unwrap(), Some(HubMessage::Ping));
    assert!(buf.is_empty());
    assert_eq!(Protocol::Json.decode(&mut buf, MAX).unwrap(), None);

    // Too large: a complete record over the maximum, or a pending one that can only end up over it.
    let record = b"{\"type\":6,\"x\":\"0123456789\"}\x1e";
    let len = record.len() - 1;
    assert!(Protocol::Json
        .decode(&mut BytesMut::from(&record[..]), len)
        .unwrap()
        .is_some());
    assert_eq!(
        Protocol::Json.decode(&mut BytesMut::from(&record[..]), len - 1),
        Err(DecodeError::TooLarge { max: len - 1 })
    );
    assert_eq!(
        Protocol::Json.decode(&mut BytesMut::from(&record[..len]), len).unwrap(),
        None
    );
    assert_eq!(
        Protocol::Json.decode(&mut BytesMut::from(&record[..len]), len - 1),
        Err(DecodeError::TooLarge { max: len - 1 })
    );
}

// ------------------------------------------------------------------------------------------------------------
// JSON encoding
// ------------------------------------------------------------------------------------------------------------

#[test]
fn json_encodes_like_aspnet() {
    let p = Protocol::Json;
    let args = ("hi", 1);
    let cases: Vec<(Vec<u8>, &[u8])> = vec![
        (
            encoded::<_, ()>(
                p,
                &Outgoing::Invocation {
                    invocation_id: None,
                    target: "msg",
                    arguments: &args,
                },
            ),
            b"{\"type\":1,\"target\":\"msg\",\"arguments\":[\"hi\",1]}\x1e",
        ),
        (
            encoded::<_, ()>(
                p,
                &Outgoing::Invocation {
                    invocation_id: Some("7"),
                    target: "Result",
                    arguments: &Vec::<u8>::new(),
                },
            ),
            b"{\"type\":1,\"invocationId\":\"7\",\"target\":\"Result\",\"arguments\":[]}\x1e",
        ),
        (
            encoded::<(), _>(
                p,
                &Outgoing::StreamItem {
                    invocation_id: "1",
                    item: "a",
                },
            ),
            b"{\"type\":2,\"invocationId\":\"1\",\"item\":\"a\"}\x1e",
        ),
        (
            encoded::<(), Option<u8>>(
                p,
                &Outgoing::StreamItem {
                    invocation_id: "1",
                    item: &None,
                },
            ),
            b"{\"type\":2,\"invocationId\":\"1\",\"item\":null}\x1e",
        ),
        (
            encoded::<(), ()>(
                p,
                &Outgoing::Completion {
                    invocation_id: "1",
                    outcome: CompletionOutcome::Void,
                },
            ),
            b"{\"type\":3,\"invocationId\":\"1\"}\x1e",
        ),
        (
            encoded::<(), Option<u8>>(
                p,
                &Outgoing::Completion {
                    invocation_id: "1",
                    outcome: CompletionOutcome::Value(&None),
                },
            ),
            b"{\"type\":3,\"invocationId\":\"1\",\"result\":null}\x1e",
        ),
        (
            encoded::<(), u32>(
                p,
                &Outgoing::Completion {
                    invocation_id: "1",
                    outcome: CompletionOutcome::Value(&42),
                },
            ),
            b"{\"type\":3,\"invocationId\":\"1\",\"result\":42}\x1e",
        ),
        (
            encoded::<(), ()>(
                p,
                &Outgoing::Completion {
                    invocation_id: "1",
                    outcome: CompletionOutcome::Error("An \"unexpected\" error".into()),
                },
            ),
            b"{\"type\":3,\"invocationId\":\"1\",\"error\":\"An \\\"unexpected\\\" error\"}\x1e",
        ),
        (
            encoded::<(), ()>(p, &Outgoing::CancelInvocation { invocation_id: "4" }),
            b"{\"type\":5,\"invocationId\":\"4\"}\x1e",
        ),
        (encoded::<NoPayload, NoPayload>(p, &Outgoing::Ping), b"{\"type\":6}\x1e"),
        (
            encoded::<(), ()>(
                p,
                &Outgoing::Close {
                    error: None,
                    allow_reconnect: false,
                },
            ),
            b"{\"type\":7}\x1e",
        ),
        (
            encoded::<(), ()>(
                p,
                &Outgoing::Close {
                    error: Some("bye"),
                    allow_reconnect: true,
                },
            ),
            b"{\"type\":7,\"error\":\"bye\",\"allowReconnect\":true}\x1e",
        ),
        (
            encoded::<(), ()>(p, &Outgoing::Ack { sequence_id: 3 }),
            b"{\"type\":8,\"sequenceId\":3}\x1e",
        ),
        (
            encoded::<(), ()>(p, &Outgoing::Sequence { sequence_id: 4 }),
            b"{\"type\":9,\"sequenceId\":4}\x1e",
        ),
    ];
    for (actual, expected) in cases {
        assert_eq!(String::from_utf8_lossy(&actual), String::from_utf8_lossy(expected));
    }
}

#[test]
fn encode_errors_leave_out_unchanged() {
    struct Fails;
    impl Serialize for Fails {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("nope"))
        }
    }
    for protocol in [Protocol::Json, Protocol::MessagePack] {
        let mut out = b"previous".to_vec();
        let not_a_sequence: Outgoing<'_, i32, ()> = Outgoing::Invocation {
            invocation_id: None,
            target: "x",
            arguments: &5,
        };
        assert!(protocol.encode(&not_a_sequence, &mut out).is_err());
        assert_eq!(out, b"previous");
        let failing: Outgoing<'_, (), Fails> = Outgoing::StreamItem {
            invocation_id: "1",
            item: &Fails,
        };
        let error = protocol.encode(&failing, &mut out).unwrap_err();
        assert!(error.reason.contains("nope"), "{error}");
        assert_eq!(out, b"previous");
        // Appends after what is there.
        protocol.encode::<(), ()>(&Outgoing::Ping, &mut out).unwrap();
        assert!(out.starts_with(b"previous") && out.len() > 8);
    }
}

// ------------------------------------------------------------------------------------------------------------
// MessagePack decoding (docs/protocol.md#messagepack-hub-protocol)
// ------------------------------------------------------------------------------------------------------------

#[test]
fn msgpack_decodes_invocations() {
    // What the JS client writes for `send("Send", "a")`: 5 elements, nil id.
    let bytes = [
        0x0c, 0x95, 0x01, 0x80, 0xc0, 0xa4, b'S', b'e', b'n', b'd', 0x91, 0xa1, b'a',
    ];
    assert_eq!(
        decoded(Protocol::MessagePack, &bytes),
        HubMessage::Invocation {
            invocation_id: None,
            target: "Send".into(),
            arguments: vec![mp(&[0xa1, b'a'])],
            stream_ids: vec![],
            streaming: false,
        }
    );
    // An empty id is non-blocking too.
    assert!(matches!(
        decoded(
            Protocol::MessagePack,
            &frame(&[0x95, 0x01, 0x80, 0xa0, 0xa1, b'x', 0x90])
        ),
        HubMessage::Invocation {
            invocation_id: None,
            ..
        }
    ));
    // `invoke("Upload", subject)` with headers and the 6-element form.
    let body = [
        0x96, 0x01, 0x81, 0xa1, b'k', 0xa1, b'v', 0xa1, b'1', 0xa6, b'U', b'p', b'l', b'o', b'a', b'd', 0x92, 0xcc,
        0xff, 0xc0, 0x91, 0xa1, b'0',
    ];
    assert_eq!(
        decoded(Protocol::MessagePack, &frame(&body)),
        HubMessage::Invocation {
            invocation_id: Some("1".into()),
            target: "Upload".into(),
            arguments: vec![mp(&[0xcc, 0xff]), RawValue::msgpack_nil()],
            stream_ids: vec!["0".into()],
            streaming: false,
        }
    );
    assert_eq!(
        decoded(
            Protocol::MessagePack,
            &frame(&[0x95, 0x04, 0x80, 0xa1, b'2', 0xa6, b'S', b't', b'r', b'e', b'a', b'm', 0x90])
        ),
        HubMessage::Invocation {
            invocation_id: Some("2".into()),
            target: "Stream".into(),
            arguments: vec![],
            stream_ids: vec![],
            streaming: true,
        }
    );
}

#[test]
fn msgpack_decodes_the_other_types() {
    let cases: Vec<(Vec<u8>, HubMessage)> = vec![
        (
            frame(&[0x94, 0x02, 0x80, 0xa1, b'0', 0xa1, b'a']),
            HubMessage::StreamItem {
                invocation_id: "0".into(),
                item: mp(&[0xa1, b'a']),
            },
        ),
        (
            frame(&[0x94, 0x03, 0x80, 0xa1, b'0', 0x02]),
            HubMessage::Completion {
                invocation_id: "0".into(),
                outcome: CompletionOutcome::Void,
            },
        ),
        (
            frame(&[0x95, 0x03, 0x80, 0xa1, b'0', 0x03, 0xc0]),
            HubMessage::Completion {
                invocation_id: "0".into(),
                outcome: CompletionOutcome::Value(RawValue::msgpack_nil()),
            },
        ),
        (
            frame(&[0x95, 0x03, 0x80, 0xa1, b'0', 0x01, 0xa3, b'e', b'r', b'r']),
            HubMessage::Completion {
                invocation_id: "0".into(),
                outcome: CompletionOutcome::Error("err".into()),
            },
        ),
        (
            frame(&[0x93, 0x05, 0x80, 0xa1, b'3']),
            HubMessage::CancelInvocation {
                invocation_id: "3".into(),
            },
        ),
        (vec![0x02, 0x91, 0x06], HubMessage::Ping),
        (
            vec![0x03, 0x92, 0x07, 0xc0],
            HubMessage::Close {
                error: None,
                allow_reconnect: false,
            },
        ),
        (
            frame(&[0x93, 0x07, 0xa3, b'e', b'r', b'r', 0xc3]),
            HubMessage::Close {
                error: Some("err".into()),
                allow_reconnect: true,
            },
        ),
        (frame(&[0x92, 0x08, 0x01]), HubMessage::Ack { sequence_id: 1 }),
        (
            frame(&[0x92, 0x09, 0xcd, 0x01, 0x00]),
            HubMessage::Sequence { sequence_id: 256 },
        ),
        (
            frame(&[0x92, 0x08, 0xcf, 0, 0, 0, 1, 0, 0, 0, 0]),
            HubMessage::Ack { sequence_id: 1 << 32 },
        ),
        (frame(&[0x92, 0x2a, 0xc0]), HubMessage::Unknown { message_type: 42 }),
        // Extra trailing elements (a later protocol version) are skipped.
        (frame(&[0x92, 0x06, 0xc0]), HubMessage::Ping),
    ];
    for (bytes, expected) in cases {
        assert_eq!(decoded(Protocol::MessagePack, &bytes), expected, "{bytes:02x?}");
    }
}

#[test]
fn msgpack_rejects_malformed_frames() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (frame(&[]), "empty"),
        (frame(&[0x06]), "array"),
        (frame(&[0x90]), "type"),
        (frame(&[0x91, 0xa1, b'x']), "type"),
        (frame(&[0x91, 0xff]), "negative"),
        (frame(&[0x93, 0x01, 0x80, 0xc0]), "at least 5"),
        (frame(&[0x95, 0x01, 0x80, 0xc0, 0x05, 0x90]), "target"),
        (frame(&[0x95, 0x01, 0x80, 0xc0, 0xa1, b'x', 0xc0]), "arguments"),
        (frame(&[0x95, 0x01, 0x05, 0xc0, 0xa1, b'x', 0x90]), "headers"),
        (frame(&[0x95, 0x04, 0x80, 0xc0, 0xa1, b'x', 0x90]), "invocationId"),
        (frame(&[0x95, 0x03, 0x80, 0xa1, b'0', 0x04, 0xc0]), "result kind"),
        (frame(&[0x94, 0x03, 0x80, 0xa1, b'0', 0x03]), "at least 5"),
        (frame(&[0x93, 0x07, 0xc0, 0x01]), "allowReconnect"),
        (frame(&[0x91, 0x06, 0x00]), "trailing"),
        (frame(&[0x92, 0x06]), "ended early"),
        // An argument array claiming 2^32-1 elements in a tiny frame.
        (
            frame(&[0x95, 0x01, 0x80, 0xc0, 0xa1, b'x', 0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0]),
            "ended early",
        ),
        // A string claiming more bytes than the frame has.
        (
            frame(&[0x94, 0x02, 0x80, 0xa1, b'0', 0xdb, 0xff, 0xff, 0xff, 0xff]),
            "ended early",
        ),
        (frame(&[0x94, 0x02, 0x80, 0xa1, b'0', 0xc1]), "0xc1"),
        (frame(&[0x94, 0x02, 0x80, 0xa2, 0xff, 0xfe, 0xc0]), "UTF-8"),
    ];
    for (bytes, needle) in cases {
        let result = decode_one(Protocol::MessagePack, &bytes);
        assert!(is_invalid(result.clone(), needle), "{bytes:02x?}: {result:?}");
    }
}

#[test]
fn msgpack_limits_nesting() {
    let mut item = vec![0x91; 200];
    item.push(0xc0);
    let mut body = vec![0x94, 0x02, 0x80, 0xa1, b'0'];
    body.extend_from_slice(&item);
    assert!(is_invalid(decode_one(Protocol::MessagePack, &frame(&body)), "nested"));

    let mut item = vec![0x91; 60];
    item.push(0xc0);
    let mut body = vec![0x94, 0x02, 0x80, 0xa1, b'0'];
    body.extend_from_slice(&item);
    let HubMessage::StreamItem { item: value, .. } = decoded(Protocol::MessagePack, &frame(&body)) else {
        panic!("not a stream item")
    };
    assert_eq!(value, mp(&item));
}

#[test]
fn msgpack_framing() {
    // Several frames in one buffer, then a partial prefix and a partial body completed by later reads.
    let mut all = vec![0x02, 0x91, 0x06];
    all.extend_from_slice(&frame(&[0x92, 0x08, 0x05]));
    let big = {
        let mut body = vec![0x94, 0x02, 0x80, 0xa1, b'0', 0xda, 0x01, 0x00];
        body.extend(std::iter::repeat_n(b'x', 256));
        frame(&body)
    };
    assert_eq!(&big[..2], &[0x88, 0x02]); // a two-byte prefix: 264
    all.extend_from_slice(&big[..1]);
    let mut buf = BytesMut::from(&all[..]);
    let p = Protocol::MessagePack;
    assert_eq!(p.decode(&mut buf, MAX).unwrap(), Some(HubMessage::Ping));
    assert_eq!(
        p.decode(&mut buf, MAX).unwrap(),
        Some(HubMessage::Ack { sequence_id: 5 })
    );
    assert_eq!(p.decode(&mut buf, MAX).unwrap(), None);
    buf.extend_from_slice(&big[1..100]);
    assert_eq!(p.decode(&mut buf, MAX).unwrap(), None);
    assert_eq!(buf.len(), 100);
    buf.extend_from_slice(&big[100..]);
    assert!(matches!(
        p.decode(&mut buf, MAX).unwrap(),
        Some(HubMessage::StreamItem { .. })
    ));
    assert!(buf.is_empty());

    // Too large as soon as the prefix declares it, before the body arrives.
    assert_eq!(
        p.decode(&mut BytesMut::from(&big[..2]), 263),
        Err(DecodeError::TooLarge { max: 263 })
    );
    assert!(p.decode(&mut BytesMut::from(&big[..]), 264).unwrap().is_some());

    // Bad prefixes: a continuation bit on the fifth byte, or a value above 0x7FFFFFFF.
    assert_eq!(
        p.decode(&mut BytesMut::from(&[0x80; 5][..]), MAX),
        Err(DecodeError::BadLengthPrefix)
    );
    assert_eq!(
        p.decode(&mut BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0x08][..]), MAX),
        Err(DecodeError::BadLengthPrefix)
    );
    assert_eq!(p.decode(&mut BytesMut::from(&[0x80; 4][..]), MAX), Ok(None));
    assert_eq!(
        p.decode(&mut BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 0x07][..]), usize::MAX),
        Ok(None),
        "0x7FFFFFFF itself is a valid length"
    );
}

// ------------------------------------------------------------------------------------------------------------
// MessagePack encoding
// ------------------------------------------------------------------------------------------------------------

#[test]
fn msgpack_encodes_golden_bytes() {
    let p = Protocol::MessagePack;
    assert_eq!(encoded::<NoPayload, NoPayload>(p, &Outgoing::Ping), [0x02, 0x91, 0x06]);
    assert_eq!(
        encoded::<_, ()>(
            p,
            &Outgoing::Invocation {
                invocation_id: None,
                target: "msg",
                arguments: &("hi",),
            }
        ),
        frame(&[0x96, 0x01, 0x80, 0xc0, 0xa3, b'm', b's', b'g', 0x91, 0xa2, b'h', b'i', 0x90])
    );
    assert_eq!(
        encoded::<_, ()>(
            p,
            &Outgoing::Invocation {
                invocation_id: Some("1"),
                target: "Result",
                arguments: &[255u32, 65536],
            }
        ),
        frame(&[
            0x96, 0x01, 0x80, 0xa1, b'1', 0xa6, b'R', b'e', b's', b'u', b'l', b't', 0x92, 0xcc, 0xff, 0xce, 0x00, 0x01,
            0x00, 0x00, 0x90
        ])
    );
    assert_eq!(
        encoded::<(), _>(
            p,
            &Outgoing::StreamItem {
                invocation_id: "0",
                item: "a",
            }
        ),
        frame(&[0x94, 0x02, 0x80, 0xa1, b'0', 0xa1, b'a'])
    );
    assert_eq!(
        encoded::<(), ()>(
            p,
            &Outgoing::Completion {
                invocation_id: "0",
                outcome: CompletionOutcome::Void,
            }
        ),
        frame(&[0x94, 0x03, 0x80, 0xa1, b'0', 0x02])
    );
    assert_eq!(
        encoded::<(), i32>(
            p,
            &Outgoing::Completion {
                invocation_id: "0",
                outcome: CompletionOutcome::Value(&-1),
            }
        ),
        frame(&[0x95, 0x03, 0x80, 0xa1, b'0', 0x03, 0xff])
    );
    assert_eq!(
        encoded::<(), ()>(
            p,
            &Outgoing::Completion {
                invocation_id: "0",
                outcome: CompletionOutcome::Value(&()),
            }
        ),
        frame(&[0x95, 0x03, 0x80, 0xa1, b'0', 0x03, 0xc0])
    );
    assert_eq!(
        encoded::<(), ()>(
            p,
            &Outgoing::Completion {
                invocation_id: "0",
                outcome: CompletionOutcome::Error("err".into()),
            }
        ),
        frame(&[0x95, 0x03, 0x80, 0xa1, b'0', 0x01, 0xa3, b'e', b'r', b'r'])
    );
    assert_eq!(
        encoded::<(), ()>(p, &Outgoing::CancelInvocation { invocation_id: "0" }),
        frame(&[0x93, 0x05, 0x80, 0xa1, b'0'])
    );
    assert_eq!(
        encoded::<(), ()>(
            p,
            &Outgoing::Close {
                error: None,
                allow_reconnect: false,
            }
        ),
        [0x03, 0x92, 0x07, 0xc0]
    );
    assert_eq!(
        encoded::<(), ()>(
            p,
            &Outgoing::Close {
                error: Some("err"),
                allow_reconnect: true,
            }
        ),
        frame(&[0x93, 0x07, 0xa3, b'e', b'r', b'r', 0xc3])
    );
    assert_eq!(
        encoded::<(), ()>(p, &Outgoing::Ack { sequence_id: 300 }),
        frame(&[0x92, 0x08, 0xcd, 0x01, 0x2c])
    );
    assert_eq!(
        encoded::<(), ()>(p, &Outgoing::Sequence { sequence_id: 1 }),
        frame(&[0x92, 0x09, 0x01])
    );
}

#[test]
fn msgpack_encodes_structs_as_maps_and_long_frames() {
    #[derive(Serialize)]
    #[allow(non_snake_case)]
    struct Complex {
        String: &'static str,
        IntArray: Vec<i32>,
    }
    let item = Complex {
        String: "s",
        IntArray: vec![1],
    };
    let out = encoded::<(), _>(
        Protocol::MessagePack,
        &Outgoing::StreamItem {
            invocation_id: "0",
            item: &item,
        },
    );
    let mut expected = vec![0x94, 0x02, 0x80, 0xa1, b'0', 0x82, 0xa6];
    expected.extend_from_slice(b"String");
    expected.extend_from_slice(&[0xa1, b's', 0xa8]);
    expected.extend_from_slice(b"IntArray");
    expected.extend_from_slice(&[0x91, 0x01]);
    assert_eq!(out, frame(&expected));

    let long = "x".repeat(20_000);
    let out = encoded::<(), _>(
        Protocol::MessagePack,
        &Outgoing::StreamItem {
            invocation_id: "0",
            item: &long,
        },
    );
    assert_eq!(out.len(), 3 + 5 + 3 + 20_000);
    assert_eq!(&out[..3], &[0xa8, 0x9c, 0x01]); // 20008
    let HubMessage::StreamItem { item, .. } = decoded(Protocol::MessagePack, &out) else {
        panic!()
    };
    assert_eq!(item.deserialize::<String>().unwrap(), long);
}

// ------------------------------------------------------------------------------------------------------------
// RawValue, Binary, Timestamp
// ------------------------------------------------------------------------------------------------------------

#[test]
fn raw_value_deserializes_in_both_protocols() {
    assert_eq!(json("\"héllo\"").deserialize::<String>().unwrap(), "héllo");
    assert_eq!(mp(&[0xa2, b'h', b'i']).deserialize::<String>().unwrap(), "hi");
    // str 8, as @msgpack/msgpack writes strings of 32 bytes or more.
    let mut str8 = vec![0xd9, 40];
    str8.extend(std::iter::repeat_n(b'a', 40));
    assert_eq!(mp(&str8).deserialize::<String>().unwrap(), "a".repeat(40));
    assert_eq!(json("null").deserialize::<Option<String>>().unwrap(), None);
    assert_eq!(RawValue::msgpack_nil().deserialize::<Option<String>>().unwrap(), None);
    assert_eq!(
        mp(&[0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]).deserialize::<f64>().unwrap(),
        1.5
    );
    assert_eq!(mp(&[0xcc, 0xff]).deserialize::<i32>().unwrap(), 255);

    #[derive(Deserialize, Debug, PartialEq)]
    #[allow(non_snake_case)]
    struct Point {
        X: i32,
        Y: i32,
    }
    assert_eq!(
        json("{\"X\":1,\"Y\":2,\"Z\":3}").deserialize::<Point>().unwrap(),
        Point { X: 1, Y: 2 }
    );
    let map = [0x82, 0xa1, b'X', 0x01, 0xa1, b'Y', 0x02];
    assert_eq!(mp(&map).deserialize::<Point>().unwrap(), Point { X: 1, Y: 2 });

    let error = json("5").deserialize::<String>().unwrap_err();
    assert!(
        error.0.contains("expected a string") && !error.0.contains("line"),
        "{error}"
    );
    assert!(mp(&[0x05]).deserialize::<String>().is_err());
    assert!(json("\"x\"").deserialize::<Point>().is_err());

    assert!(json("null").is_null() && RawValue::msgpack_nil().is_null() && !json("0").is_null());
    assert!(RawValue::from_json_text("[1,").is_err());
    assert!(RawValue::from_msgpack_bytes(Bytes::from_static(&[0x92, 0x01])).is_err());
    assert!(RawValue::from_msgpack_bytes(Bytes::from_static(&[0x01, 0x02])).is_err());
    assert_eq!(
        RawValue::from_msgpack_bytes(Bytes::from_static(&[0x91, 0x01])).unwrap(),
        mp(&[0x91, 0x01])
    );
    assert_eq!(RawValue::encode(Protocol::Json, &(1, "a")).unwrap(), json("[1,\"a\"]"));
    assert_eq!(
        RawValue::encode(Protocol::MessagePack, &(1, "a")).unwrap(),
        mp(&[0x92, 0x01, 0xa1, b'a'])
    );
    assert_eq!(RawValue::null(Protocol::Json).protocol(), Protocol::Json);
}

/// What the demo hub does: an argument from a client of one protocol, re-sent to clients of both.
fn resend(payload: &RawValue, to: Protocol) -> Vec<u8> {
    encoded::<_, ()>(
        to,
        &Outgoing::Invocation {
            invocation_id: None,
            target: "msg",
            arguments: &(payload,),
        },
    )
}

#[test]
fn raw_value_passes_through_both_protocols() {
    // JSON in, JSON out: verbatim, whitespace and escapes included.
    let text = "{\"b\" : [1, 2.5, \"\\u00e9\", null, true], \"a\":{}}";
    let payload = json(text);
    assert_eq!(
        String::from_utf8(resend(&payload, Protocol::Json)).unwrap(),
        format!("{{\"type\":1,\"target\":\"msg\",\"arguments\":[{text}]}}\x1e")
    );

    // JSON in, MessagePack out: the same value, keys in their original order.
    let out = resend(&payload, Protocol::MessagePack);
    let HubMessage::Invocation { arguments, .. } = decoded(Protocol::MessagePack, &out) else {
        panic!()
    };
    let RawValue::MsgPack(bytes) = &arguments[0] else {
        panic!()
    };
    let mut expected = vec![0x82, 0xa1, b'b', 0x95, 0x01, 0xcb];
    expected.extend_from_slice(&2.5f64.to_be_bytes());
    expected.extend_from_slice(&[0xa2, 0xc3, 0xa9, 0xc0, 0xc3, 0xa1, b'a', 0x80]);
    assert_eq!(&bytes[..], &expected[..]);

    // MessagePack in, MessagePack out: bin and the timestamp extension are kept, not normalised.
    let mut value = vec![
        0x84, 0xa1, b'b', 0xc4, 0x03, 0x01, 0x02, 0x03, 0xa1, b'd', 0xd6, 0xff, 0x38, 0x6d, 0x43, 0x80,
    ];
    value.extend_from_slice(&[0xa1, b'f', 0xca, 0x3f, 0xc0, 0x00, 0x00, 0xa1, b'n', 0xd0, 0x85]);
    let payload = mp(&value);
    let out = resend(&payload, Protocol::MessagePack);
    let HubMessage::Invocation { arguments, .. } = decoded(Protocol::MessagePack, &out) else {
        panic!()
    };
    assert_eq!(arguments, vec![payload.clone()]);

    // MessagePack in, JSON out: bin as base64 and the timestamp as ISO-8601, as .NET would write them.
    assert_eq!(
        String::from_utf8(resend(&payload, Protocol::Json)).unwrap(),
        "{\"type\":1,\"target\":\"msg\",\"arguments\":[{\"b\":\"AQID\",\"d\":\"2000-01-01T00:00:00Z\",\"f\":1.5,\"n\":-123}]}\x1e"
    );
    // Round trip through serde_json::Value too (a human-readable serializer other than the writer).
    assert_eq!(serde_json::to_value(json("[1]")).unwrap(), serde_json::json!([1]));
}

#[test]
fn binary_in_both_formats() {
    let bytes = Binary(vec![1, 2, 3]);
    assert_eq!(serde_json::to_string(&bytes).unwrap(), "\"AQID\"");
    assert_eq!(rmp_serde::to_vec(&bytes).unwrap(), [0xc4, 0x03, 0x01, 0x02, 0x03]);
    assert_eq!(json("\"AQID\"").deserialize::<Binary>().unwrap(), bytes);
    assert_eq!(
        mp(&[0xc4, 0x03, 0x01, 0x02, 0x03]).deserialize::<Binary>().unwrap(),
        bytes
    );
    assert_eq!(mp(&[0x93, 0x01, 0x02, 0x03]).deserialize::<Binary>().unwrap(), bytes);
    assert!(json("\"not base64!\"").deserialize::<Binary>().is_err());
    assert!(mp(&[0x91, 0xcd, 0x01, 0x00]).deserialize::<Binary>().is_err());
}

#[test]
fn timestamp_in_both_formats() {
    let y2k = Timestamp::from_unix(946_684_800, 0);
    assert_eq!(serde_json::to_string(&y2k).unwrap(), "\"2000-01-01T00:00:00Z\"");
    assert_eq!(rmp_serde::to_vec(&y2k).unwrap(), [0xd6, 0xff, 0x38, 0x6d, 0x43, 0x80]);

    let half = Timestamp::from_unix(946_684_800, 500_000_000);
    assert_eq!(half.to_string(), "2000-01-01T00:00:00.5Z");
    let packed = (500_000_000u64 << 34) | 946_684_800;
    let mut ts64 = vec![0xd7, 0xff];
    ts64.extend_from_slice(&packed.to_be_bytes());
    assert_eq!(rmp_serde::to_vec(&half).unwrap(), ts64);

    let before = Timestamp::from_unix(-1, 1);
    assert_eq!(before.to_string(), "1969-12-31T23:59:59.000000001Z");
    let mut ts96 = vec![0xc7, 0x0c, 0xff, 0, 0, 0, 1];
    ts96.extend_from_slice(&(-1i64).to_be_bytes());
    assert_eq!(rmp_serde::to_vec(&before).unwrap(), ts96);

    for (value, bytes) in [
        (y2k, &[0xd6, 0xff, 0x38, 0x6d, 0x43, 0x80][..]),
        (half, &ts64[..]),
        (before, &ts96[..]),
    ] {
        assert_eq!(mp(bytes).deserialize::<Timestamp>().unwrap(), value);
        assert_eq!(json(&format!("\"{value}\"")).deserialize::<Timestamp>().unwrap(), value);
    }
    for text in [
        "2000-01-01T00:00:00Z",
        "2000-01-01T00:00:00+00:00",
        "2000-01-01T01:30:00+01:30",
        "1999-12-31T19:00:00-05:00",
        "2000-01-01T00:00:00.0000000Z",
        "2000-01-01T00:00:00",
    ] {
        assert_eq!(text.parse::<Timestamp>().unwrap(), y2k, "{text}");
    }
    assert_eq!(
        "2000-01-01T00:00:00.1234567Z"
            .parse::<Timestamp>()
            .unwrap()
            .subsec_nanos(),
        123_456_700
    );
    assert_eq!(
        "2024-02-29T12:00:00Z".parse::<Timestamp>().unwrap().to_string(),
        "2024-02-29T12:00:00Z"
    );
    for bad in [
        "2000-01-01",
        "2000-13-01T00:00:00Z",
        "2001-02-29T00:00:00Z",
        "2000-01-01T24:00:00Z",
        "2000-01-01T00:00:00.Z",
        "2000-01-01T00:00:00Zx",
        "2000-01-01T00:00:00+1",
        "２000-01-01T00:00:00Z",
    ] {
        assert!(bad.parse::<Timestamp>().is_err(), "{bad}");
    }
    // An ext of another type is not a timestamp.
    assert!(mp(&[0xd6, 0x01, 0, 0, 0, 0]).deserialize::<Timestamp>().is_err());
    let now = Timestamp::now();
    assert!(now.unix_secs() > 1_700_000_000);
    assert_eq!(Timestamp::from(std::time::SystemTime::from(now)), now);
}

#[test]
fn extreme_values_do_not_panic() {
    // Any i64 seconds can arrive in a timestamp 96; writing it as text must not overflow.
    for secs in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX] {
        let value = Timestamp::from_unix(secs, 999_999_999);
        let _ = value.to_string();
        let _ = std::time::SystemTime::from(value);
        let mut ts96 = vec![0xc7, 0x0c, 0xff];
        ts96.extend_from_slice(&999_999_999u32.to_be_bytes());
        ts96.extend_from_slice(&secs.to_be_bytes());
        assert_eq!(mp(&ts96).deserialize::<Timestamp>().unwrap(), value);
        let _ = resend(&mp(&ts96), Protocol::Json);
    }
    assert_eq!(Timestamp::from_unix(i64::MAX, 2_500_000_000).unix_secs(), i64::MAX);
    // Nanoseconds out of range in a timestamp 96 are malformed.
    let mut bad = vec![0xc7, 0x0c, 0xff];
    bad.extend_from_slice(&1_000_000_000u32.to_be_bytes());
    bad.extend_from_slice(&0i64.to_be_bytes());
    assert!(mp(&bad).deserialize::<Timestamp>().is_err());
    let mut out = Vec::new();
    assert!(Protocol::Json
        .encode::<_, ()>(
            &Outgoing::Invocation {
                invocation_id: None,
                target: "x",
                arguments: &(mp(&bad),),
            },
            &mut out
        )
        .is_err());
    assert!(out.is_empty());

    // The deepest value the decoder accepts (64 levels under the argument list) passes on to both protocols.
    let mut deep = vec![0x91; 64];
    deep.extend_from_slice(&[0xa1, b'x']);
    let mut body = vec![0x95, 0x01, 0x80, 0xc0, 0xa1, b'x', 0x91];
    body.extend_from_slice(&deep);
    let HubMessage::Invocation { arguments, .. } = decoded(Protocol::MessagePack, &frame(&body)) else {
        panic!()
    };
    for to in [Protocol::Json, Protocol::MessagePack] {
        let out = resend(&arguments[0], to);
        assert!(!out.is_empty());
    }
    let mut too_deep = vec![0x91; 65];
    too_deep.push(0xc0);
    let mut body = vec![0x95, 0x01, 0x80, 0xc0, 0xa1, b'x', 0x91];
    body.extend_from_slice(&too_deep);
    assert!(is_invalid(decode_one(Protocol::MessagePack, &frame(&body)), "nested"));
}

#[test]
fn timestamp_calendar_round_trips() {
    // Every day boundary over ±1000 years around the epoch, in steps, through the string form.
    let mut secs = -40_000_000_000i64;
    while secs < 40_000_000_000 {
        let value = Timestamp::from_unix(secs, 0);
        assert_eq!(value.to_string().parse::<Timestamp>().unwrap(), value, "{value}");
        secs += 86_400 * 7 + 3_601;
    }
}

// ------------------------------------------------------------------------------------------------------------
// Handshake and negotiate (docs/protocol.md#handshake, #negotiate)
// ------------------------------------------------------------------------------------------------------------

#[test]
fn handshake_parsing() {
    // The messagepack handshake with the first hub message in the same buffer.
    let mut buf = BytesMut::from(&b"{\"protocol\":\"messagepack\",\"version\":1}\x1e\x02\x91\x06"[..]);
    let request = parse_request(&mut buf, MAX).unwrap().unwrap();
    assert_eq!(
        request,
        HandshakeRequest {
            protocol: "messagepack".into(),
            version: 1
        }
    );
    assert_eq!(request.validate(), Ok(Protocol::MessagePack));
    assert_eq!(&buf[..], &[0x02, 0x91, 0x06]);
    assert_eq!(
        Protocol::MessagePack.decode(&mut buf, MAX).unwrap(),
        Some(HubMessage::Ping)
    );

    let mut buf = BytesMut::from(&b"{\"protocol\":\"json\",\"ver"[..]);
    assert_eq!(parse_request(&mut buf, MAX), Ok(None));
    buf.extend_from_slice(b"sion\":2,\"extra\":[1]}\x1e");
    let request = parse_request(&mut buf, MAX).unwrap().unwrap();
    assert_eq!(request.version, 2);
    assert!(buf.is_empty());

    let refused = |text: &str| {
        parse_request(&mut BytesMut::from(text.as_bytes()), MAX)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(refused("{\"version\":1}\x1e"), "Missing required property 'protocol'.");
    assert_eq!(
        refused("{\"protocol\":\"json\"}\x1e"),
        "Missing required property 'version'."
    );
    assert_eq!(
        refused("{\"protocol\":1,\"version\":1}\x1e"),
        "Expected 'protocol' to be of type String."
    );
    assert_eq!(
        refused("{\"protocol\":\"json\",\"version\":\"1\"}\x1e"),
        "Expected 'version' to be of type Number."
    );
    assert!(refused("not json\x1e").contains("not a valid JSON object"));
    assert!(refused("[]\x1e").contains("not a valid JSON object"));

    let too_long = "{\"protocol\":\"json\",\"version\":1,\"padding\":\"xxxxxxxxxx\"}";
    assert_eq!(
        parse_request(&mut BytesMut::from(too_long), 20),
        Err(HandshakeError::TooLarge { max: 20 })
    );
    assert_eq!(parse_request(&mut BytesMut::from(&too_long[..15]), 20), Ok(None));

    let unsupported = HandshakeRequest {
        protocol: "xml".into(),
        version: 1,
    };
    assert_eq!(
        unsupported.validate().unwrap_err().to_string(),
        "The protocol 'xml' is not supported."
    );
    let too_new = HandshakeRequest {
        protocol: "json".into(),
        version: 3,
    };
    assert_eq!(
        too_new.validate().unwrap_err().to_string(),
        "The server does not support version 3 of the 'json' protocol."
    );
}

#[test]
fn handshake_responses() {
    let mut out = Vec::new();
    write_response(None, &mut out);
    assert_eq!(out, b"{}\x1e");
    let mut out = Vec::new();
    write_response(Some("The protocol 'x\"y' is not supported."), &mut out);
    assert_eq!(out, b"{\"error\":\"The protocol 'x\\\"y' is not supported.\"}\x1e");
    // ASCII only (the msgpack client reads the handshake as Latin-1), still valid JSON with the same text.
    let mut out = Vec::new();
    write_response(Some("é😀\n"), &mut out);
    assert!(out.is_ascii());
    let value: serde_json::Value = serde_json::from_slice(&out[..out.len() - 1]).unwrap();
    assert_eq!(value["error"], "é😀\n");
}

#[test]
fn negotiate_bodies() {
    let transports = vec![
        AvailableTransport::new("WebSockets", vec![TransferFormat::Text, TransferFormat::Binary]),
        AvailableTransport::new("ServerSentEvents", vec![TransferFormat::Text]),
    ];
    let v1 = NegotiateResponse::new(1, "id".into(), "token".into(), transports.clone());
    assert_eq!(
        serde_json::to_string(&v1).unwrap(),
        "{\"negotiateVersion\":1,\"connectionId\":\"id\",\"connectionToken\":\"token\",\"availableTransports\":[{\"transport\":\"WebSockets\",\"transferFormats\":[\"Text\",\"Binary\"]},{\"transport\":\"ServerSentEvents\",\"transferFormats\":[\"Text\"]}]}"
    );
    let v0 = NegotiateResponse::new(0, "id".into(), "id".into(), vec![]);
    assert_eq!(
        serde_json::to_string(&v0).unwrap(),
        "{\"negotiateVersion\":0,\"connectionId\":\"id\",\"availableTransports\":[]}"
    );
    let stateful = NegotiateResponse::new(1, "i".into(), "t".into(), vec![]).with_stateful_reconnect(true);
    assert!(serde_json::to_string(&stateful)
        .unwrap()
        .contains("\"useStatefulReconnect\":true"));
    let redirect = NegotiateRedirect {
        url: "http://h/hub".into(),
        access_token: Some("abc".into()),
    };
    assert_eq!(
        serde_json::to_string(&redirect).unwrap(),
        "{\"url\":\"http://h/hub\",\"accessToken\":\"abc\"}"
    );
    let error = NegotiateError { error: "nope".into() };
    assert_eq!(serde_json::to_string(&error).unwrap(), "{\"error\":\"nope\"}");
}

// ------------------------------------------------------------------------------------------------------------
// Property tests
// ------------------------------------------------------------------------------------------------------------

/// Decodes until the buffer yields nothing more or fails; must never panic or loop.
fn drain(protocol: Protocol, bytes: &[u8], max: usize) {
    let mut buf = BytesMut::from(bytes);
    for _ in 0..=bytes.len() {
        match protocol.decode(&mut buf, max) {
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return,
        }
    }
    panic!("decode did not make progress");
}

/// Bytes that look like MessagePack frames: a valid prefix, an array of markers and random tails.
fn msgpack_like() -> impl Strategy<Value = Vec<u8>> {
    (0u8..10, prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(kind, mut tail)| {
        let mut body = vec![0x95, kind, 0x80];
        body.append(&mut tail);
        frame(&body)
    })
}

#[derive(Debug, Clone)]
enum Sent {
    Invocation(Option<String>, String, Vec<i64>, Vec<String>),
    StreamItem(String, Option<String>),
    Completion(String, CompletionOutcome<i64>),
    Cancel(String),
    Ping,
    Close(Option<String>, bool),
    Ack(u64),
    Sequence(u64),
}

fn sent() -> impl Strategy<Value = Sent> {
    let id = "[a-z0-9]{1,8}";
    let text = "\\PC{0,12}";
    prop_oneof![
        (
            prop::option::of(id),
            text,
            prop::collection::vec(any::<i64>(), 0..4),
            prop::collection::vec(text, 0..3)
        )
            .prop_map(|(i, t, a, s)| Sent::Invocation(i, t, a, s)),
        (id, prop::option::of(text)).prop_map(|(i, v)| Sent::StreamItem(i, v)),
        (
            id,
            prop_oneof![
                Just(CompletionOutcome::Void),
                any::<i64>().prop_map(CompletionOutcome::Value),
                text.prop_map(CompletionOutcome::Error)
            ]
        )
            .prop_map(|(i, o)| Sent::Completion(i, o)),
        id.prop_map(Sent::Cancel),
        Just(Sent::Ping),
        (prop::option::of(text), any::<bool>()).prop_map(|(e, r)| Sent::Close(e, r)),
        any::<u64>().prop_map(Sent::Ack),
        any::<u64>().prop_map(Sent::Sequence),
    ]
}

/// Encodes what a client would send (the server's encoder has no StreamIds), then checks the decoded message.
fn round_trip(protocol: Protocol, message: &Sent) {
    let mut out = Vec::new();
    match message {
        Sent::Invocation(id, target, args, streams) if streams.is_empty() => protocol
            .encode::<_, ()>(
                &Outgoing::Invocation {
                    invocation_id: id.as_deref(),
                    target,
                    arguments: args,
                },
                &mut out,
            )
            .unwrap(),
        Sent::Invocation(id, target, args, streams) => {
            // Written by hand: only clients send streamIds.
            match protocol {
                Protocol::Json => {
                    let value = serde_json::json!({"type":1,"invocationId":id,"target":target,"arguments":args,"streamIds":streams});
                    out = serde_json::to_vec(&value).unwrap();
                    out.push(0x1e);
                }
                Protocol::MessagePack => {
                    let headers = std::collections::BTreeMap::<String, String>::new();
                    let body = rmp_serde::to_vec(&(1, headers, id, target, args, streams)).unwrap();
                    out = frame(&body);
                }
            }
        }
        Sent::StreamItem(id, item) => protocol
            .encode::<(), _>(
                &Outgoing::StreamItem {
                    invocation_id: id,
                    item,
                },
                &mut out,
            )
            .unwrap(),
        Sent::Completion(id, outcome) => {
            let outcome = match outcome {
                CompletionOutcome::Void => CompletionOutcome::Void,
                CompletionOutcome::Value(v) => CompletionOutcome::Value(v),
                CompletionOutcome::Error(e) => CompletionOutcome::Error(e.clone()),
            };
            protocol
                .encode::<(), i64>(
                    &Outgoing::Completion {
                        invocation_id: id,
                        outcome,
                    },
                    &mut out,
                )
                .unwrap()
        }
        Sent::Cancel(id) => protocol
            .encode::<(), ()>(&Outgoing::CancelInvocation { invocation_id: id }, &mut out)
            .unwrap(),
        Sent::Ping => protocol.encode::<(), ()>(&Outgoing::Ping, &mut out).unwrap(),
        Sent::Close(error, allow_reconnect) => protocol
            .encode::<(), ()>(
                &Outgoing::Close {
                    error: error.as_deref(),
                    allow_reconnect: *allow_reconnect,
                },
                &mut out,
            )
            .unwrap(),
        Sent::Ack(sequence_id) => protocol
            .encode::<(), ()>(
                &Outgoing::Ack {
                    sequence_id: *sequence_id,
                },
                &mut out,
            )
            .unwrap(),
        Sent::Sequence(sequence_id) => protocol
            .encode::<(), ()>(
                &Outgoing::Sequence {
                    sequence_id: *sequence_id,
                },
                &mut out,
            )
            .unwrap(),
    }
    // Split anywhere: the first part alone is incomplete.
    let mut buf = BytesMut::new();
    let half = out.len() / 2;
    buf.extend_from_slice(&out[..half]);
    assert_eq!(protocol.decode(&mut buf, MAX).unwrap(), None);
    buf.extend_from_slice(&out[half..]);
    let decoded = protocol.decode(&mut buf, MAX).unwrap().unwrap();
    assert!(buf.is_empty());
    match (message, decoded) {
        (
            Sent::Invocation(id, target, args, streams),
            HubMessage::Invocation {
                invocation_id,
                target: t,
                arguments,
                stream_ids,
                streaming: false,
            },
        ) => {
            assert_eq!(&invocation_id, id);
            assert_eq!(&t, target);
            let decoded: Vec<i64> = arguments.iter().map(|a| a.deserialize().unwrap()).collect();
            assert_eq!(&decoded, args);
            assert_eq!(&stream_ids, streams);
        }
        (Sent::StreamItem(id, item), HubMessage::StreamItem { invocation_id, item: i }) => {
            assert_eq!(&invocation_id, id);
            assert_eq!(&i.deserialize::<Option<String>>().unwrap(), item);
        }
        (
            Sent::Completion(id, outcome),
            HubMessage::Completion {
                invocation_id,
                outcome: o,
            },
        ) => {
            assert_eq!(&invocation_id, id);
            let o = match o {
                CompletionOutcome::Void => CompletionOutcome::Void,
                CompletionOutcome::Value(v) => CompletionOutcome::Value(v.deserialize::<i64>().unwrap()),
                CompletionOutcome::Error(e) => CompletionOutcome::Error(e),
            };
            assert_eq!(&o, outcome);
        }
        (Sent::Cancel(id), HubMessage::CancelInvocation { invocation_id }) => assert_eq!(&invocation_id, id),
        (Sent::Ping, HubMessage::Ping) => {}
        (Sent::Close(e, r), HubMessage::Close { error, allow_reconnect }) => {
            assert_eq!(&error, e);
            assert_eq!(allow_reconnect, *r);
        }
        (Sent::Ack(s), HubMessage::Ack { sequence_id }) | (Sent::Sequence(s), HubMessage::Sequence { sequence_id }) => {
            assert_eq!(sequence_id, *s)
        }
        (sent, decoded) => panic!("{sent:?} decoded as {decoded:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256), max in 0usize..300) {
        drain(Protocol::Json, &bytes, max);
        drain(Protocol::MessagePack, &bytes, max);
        let _ = parse_request(&mut BytesMut::from(&bytes[..]), max);
    }

    #[test]
    fn msgpack_decoder_never_panics_on_plausible_frames(bytes in msgpack_like()) {
        drain(Protocol::MessagePack, &bytes, MAX);
    }

    #[test]
    fn json_decoder_never_panics_on_plausible_records(
        kind in 0u8..12,
        fields in prop::collection::vec(("(invocationId|target|arguments|item|result|error|streamIds|sequenceId|allowReconnect)", "(null|1|-1|\"x\"|\\[\\]|\\[1,\"a\"\\]|\\{\\}|true)"), 0..5),
    ) {
        let mut text = format!("{{\"type\":{kind}");
        for (name, value) in fields {
            text.push_str(&format!(",\"{name}\":{value}"));
        }
        text.push_str("}\x1e");
        drain(Protocol::Json, text.as_bytes(), MAX);
        let _ = parse_request(&mut BytesMut::from(text.as_bytes()), MAX);
    }

    #[test]
    fn messages_round_trip(message in sent()) {
        round_trip(Protocol::Json, &message);
        round_trip(Protocol::MessagePack, &message);
    }

    #[test]
    fn raw_values_cross_protocols(value in prop::collection::vec((any::<i64>(), "\\PC{0,8}", any::<bool>()), 0..4)) {
        let from_json = RawValue::encode(Protocol::Json, &value).unwrap();
        let from_msgpack = RawValue::encode(Protocol::MessagePack, &value).unwrap();
        for raw in [&from_json, &from_msgpack] {
            for to in [Protocol::Json, Protocol::MessagePack] {
                let out = resend(raw, to);
                let HubMessage::Invocation { arguments, .. } = decoded(to, &out) else { panic!() };
                prop_assert_eq!(arguments[0].deserialize::<Vec<(i64, String, bool)>>().unwrap(), value.clone());
            }
        }
    }

    #[test]
    fn timestamps_round_trip(secs in -62_135_596_800i64..253_402_300_799, nanos in 0u32..1_000_000_000) {
        let value = Timestamp::from_unix(secs, nanos);
        prop_assert_eq!(value.to_string().parse::<Timestamp>().unwrap(), value);
        prop_assert_eq!(RawValue::encode(Protocol::MessagePack, &value).unwrap().deserialize::<Timestamp>().unwrap(), value);
        prop_assert_eq!(RawValue::encode(Protocol::Json, &value).unwrap().deserialize::<Timestamp>().unwrap(), value);
        // MessagePack timestamps reach JSON clients as the same ISO string.
        let json_text = serde_json::to_string(&RawValue::encode(Protocol::MessagePack, &value).unwrap()).unwrap();
        prop_assert_eq!(json_text, format!("\"{value}\""));
    }
}
