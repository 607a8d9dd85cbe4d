//! The node-to-node envelope decoder (a link frame as the router reads it) must never panic, and what it decodes
//! must encode again.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (decoded, encodes) = hubmesh::mesh::decode_frame(data);
    assert!(!decoded || encodes, "a decoded envelope did not encode again");
});
