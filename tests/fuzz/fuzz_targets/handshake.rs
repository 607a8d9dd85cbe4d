//! The handshake parser must never panic, whatever the bytes and the limit.
#![no_main]

use bytes::BytesMut;
use hubmesh::protocol::handshake::parse_request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&limit, input)) = data.split_first() else { return };
    let mut buf = BytesMut::from(input);
    if let Ok(Some(request)) = parse_request(&mut buf, usize::from(limit) * 4) {
        let _ = request.validate();
    }
});
