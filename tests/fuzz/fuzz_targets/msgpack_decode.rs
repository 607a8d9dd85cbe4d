//! The MessagePack hub protocol decoder must never panic, hang, overflow the stack or over-allocate.
#![no_main]

use bytes::BytesMut;
use hubmesh::protocol::{HubMessage, Outgoing, Protocol, RawValue};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the size limit, so both the TooLarge and the parsing paths are reached.
    let Some((&limit, input)) = data.split_first() else { return };
    let max = usize::from(limit) * 16;
    let mut buf = BytesMut::from(input);
    // Each successful decode consumes at least one byte, so this ends.
    while let Ok(Some(message)) = Protocol::MessagePack.decode(&mut buf, max) {
        let values: Vec<RawValue> = match message {
            HubMessage::Invocation { arguments, .. } => arguments,
            HubMessage::StreamItem { item, .. } => vec![item],
            _ => vec![],
        };
        for value in &values {
            let _ = value.deserialize::<String>();
            // Passing a value on to clients of either protocol must not panic either.
            for protocol in [Protocol::Json, Protocol::MessagePack] {
                let mut out = Vec::new();
                let message: Outgoing<'_, (), RawValue> = Outgoing::StreamItem { invocation_id: "1", item: value };
                let _ = protocol.encode(&message, &mut out);
            }
        }
    }
});
