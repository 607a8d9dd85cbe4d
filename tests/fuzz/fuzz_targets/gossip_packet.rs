//! The gossip packet check (MAC, framing, clock window, replay guard) must never panic on any bytes; any bytes
//! sealed under the key (when small enough) must open to themselves, once.
#![no_main]

use hubmesh::cluster::gossip_auth::{fuzz_open, MAX_PACKET};
use hubmesh::cluster::GossipKeys;
use libfuzzer_sys::fuzz_target;

/// A fixed clock, so that runs replay.
const NOW_MS: u64 = 1_800_000_000_000;

fuzz_target!(|data: &[u8]| {
    let keys = GossipKeys::new("fuzz-secret", &["previous-fuzz-secret"]);
    let found = fuzz_open(&keys, data, NOW_MS);
    // 61 bytes of header and tag: a larger payload cannot be sealed, and is not tried.
    assert!(found.sealed_opened || data.len() + 61 > MAX_PACKET, "a sealed packet did not open: {found:?}");
    assert!(found.replay_refused, "a replayed packet was accepted: {found:?}");
});
