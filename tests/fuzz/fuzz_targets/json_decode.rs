//! The JSON hub protocol decoder must never panic, hang or over-allocate, whatever the bytes and the limit.
#![no_main]

use bytes::BytesMut;
use hubmesh::protocol::{Protocol, RawValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the size limit, so both the TooLarge and the parsing paths are reached.
    let Some((&limit, input)) = data.split_first() else { return };
    let max = usize::from(limit) * 16;
    let mut buf = BytesMut::from(input);
    // Each successful decode consumes at least one byte, so this ends.
    while let Ok(Some(message)) = Protocol::Json.decode(&mut buf, max) {
        if let hubmesh::protocol::HubMessage::Invocation { arguments, .. } = message {
            for argument in &arguments {
                let _ = argument.deserialize::<serde_json::Value>();
                let _ = reencode(argument);
            }
        }
    }
});

/// Passing an argument on to a MessagePack client must not panic either.
fn reencode(argument: &RawValue) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let message: hubmesh::protocol::Outgoing<'_, (&RawValue,), ()> =
        hubmesh::protocol::Outgoing::Invocation { invocation_id: None, target: "x", arguments: &(argument,) };
    Protocol::MessagePack.encode(&message, &mut out).ok()?;
    Some(out)
}
