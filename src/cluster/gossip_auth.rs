//! Gossip authenticated by the cluster secret: the packet format, its keys and its replay guard.
//!
//! # What this module owns
//!
//! * [`GossipKeys`]: the keys a node signs gossip with and accepts it under, derived from the cluster secret (and,
//!   during a rotation, from the previous secrets) by HKDF-SHA256 with a gossip-specific label, so the gossip key is
//!   never the link secret itself.
//! * The packet format, sealed by `Sealer` and checked by `Opener`:
//!
//!   ```text
//!   version (1) | key id (4) | sender (8) | counter (8) | timestamp ms (8) | chitchat envelope | HMAC-SHA256 tag (32)
//!   ```
//!
//!   The tag covers every byte before it. `sender` is a random number drawn per socket (one per process run),
//!   `counter` counts that socket's packets from 1, `timestamp` is the sender's wall clock in milliseconds.
//! * The receive checks, in order: size (at most [`MAX_PACKET`]), version, key id among the accepted keys, tag,
//!   timestamp within [`REPLAY_WINDOW`] of the receiver's clock, and `(sender, counter)` not seen before (a
//!   per-sender sliding window of [`COUNTER_WINDOW`] counters, for at most [`MAX_SENDERS`] senders). Anything that
//!   fails is dropped, counted by reason, and logged at most once per [`LOG_EVERY`].
//! * `socket`: the real UDP socket chitchat gossips over, sealing every datagram it sends and opening every one it
//!   receives.
//!
//! # What it promises, and what not
//!
//! * A packet is accepted only if it was sealed by a holder of an accepted secret, unaltered, recently (clocks of
//!   the nodes must agree within [`REPLAY_WINDOW`]), and not accepted before by this node. So a process without
//!   the secret is never listed, and nobody without it can forge or alter a node's state.
//! * No confidentiality: gossip (node names, addresses, key-values) travels in clear.
//! * A holder of the secret is trusted: it can publish any state, under any node name.
//! * The destination is not covered: a captured packet can be replayed once to another member within the window.
//!   It carries only authentic state, which chitchat applies by version, so it changes nothing that the original
//!   did not.
//!
//! # What it may call
//!
//! hmac, sha2, hkdf, rand, tokio and chitchat's transport traits; nothing above the cluster layer.

pub(crate) mod socket;

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hkdf::Hkdf;
use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The packet format version this build writes and reads.
const VERSION: u8 = 1;
/// Bytes before the chitchat envelope.
pub(crate) const HEADER_LEN: usize = 1 + 4 + 8 + 8 + 8;
/// Bytes of the tag after it.
pub(crate) const TAG_LEN: usize = 32;
/// The largest datagram sent or accepted: the largest UDP payload over IPv4. chitchat fills a datagram up to this
/// size when its state is large, so a node whose cluster state needs more than `MAX_PACKET - HEADER_LEN - TAG_LEN`
/// bytes in one delta fails to send that packet (logged): about 64 KiB of key-values, far above what hubmesh
/// publishes per node.
pub const MAX_PACKET: usize = 65_507;
/// How far a packet's timestamp may be from the receiver's clock, either way.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(60);
/// How many counters back from the highest seen a sender's packets may arrive out of order.
pub const COUNTER_WINDOW: u64 = 128;
/// How many senders the replay guard remembers at once.
pub const MAX_SENDERS: usize = 4096;
/// Drops are logged at most this often (with the counts since the last log line).
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The labels keys are derived with: the link secret and the gossip key always differ.
const KEY_LABEL: &[u8] = b"hubmesh gossip mac v1";
const KEY_ID_LABEL: &[u8] = b"hubmesh gossip key id v1";
const KEY_SALT: &[u8] = b"hubmesh cluster secret";

/// One gossip key: its id (sent in clear, so a receiver knows which key to try) and the keyed MAC.
#[derive(Clone)]
struct GossipKey {
    id: [u8; 4],
    mac: HmacSha256,
}

impl GossipKey {
    fn derive(secret: &str) -> Self {
        let hkdf = Hkdf::<Sha256>::new(Some(KEY_SALT), secret.as_bytes());
        // A key of HMAC-SHA256's block size, so the MAC takes it as is.
        let mut key = hmac::digest::Key::<HmacSha256>::default();
        let mut id = [0u8; 4];
        // Both lengths are far below HKDF-SHA256's limit (255 * 32 bytes): expanding cannot fail.
        let _ = hkdf.expand(KEY_LABEL, &mut key);
        let _ = hkdf.expand(KEY_ID_LABEL, &mut id);
        GossipKey {
            id,
            mac: <HmacSha256 as KeyInit>::new(&key),
        }
    }
}

/// The keys a node signs gossip with (the current secret's) and accepts gossip under (the current and previous
/// secrets'). Its `Debug` shows key ids only.
#[derive(Clone)]
pub struct GossipKeys {
    signing: GossipKey,
    accepted: Vec<GossipKey>,
}

impl fmt::Debug for GossipKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<String> = self.accepted.iter().map(|key| hex(&key.id)).collect();
        f.debug_struct("GossipKeys")
            .field("signing", &hex(&self.signing.id))
            .field("accepted", &ids)
            .finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

impl GossipKeys {
    /// Signs with `secret`; accepts `secret` and each of `previous` (the secrets being rotated away from).
    pub fn new<S: AsRef<str>>(secret: &str, previous: &[S]) -> Self {
        let signing = GossipKey::derive(secret);
        let mut accepted = vec![signing.clone()];
        for old in previous {
            let key = GossipKey::derive(old.as_ref());
            if accepted.iter().all(|known| known.id != key.id) {
                accepted.push(key);
            }
        }
        GossipKeys { signing, accepted }
    }

    /// The accepted key with `id`, with its index (0: the current secret's).
    fn accepted(&self, id: &[u8]) -> Option<(usize, &GossipKey)> {
        self.accepted.iter().enumerate().find(|(_, key)| key.id == id)
    }
}

/// Why a received packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// Larger than [`MAX_PACKET`].
    Oversize,
    /// Too short, or of another format version.
    Malformed,
    /// Signed with a key this node does not accept (another secret).
    UnknownKey,
    /// The tag does not verify: altered, or forged.
    BadTag,
    /// The timestamp is outside [`REPLAY_WINDOW`].
    Stale,
    /// This sender's counter was accepted before (or is too far behind to tell).
    Replay,
}

/// Why a packet could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SealError {
    /// The sealed packet would exceed [`MAX_PACKET`].
    #[error("gossip packet of {0} bytes exceeds the {MAX_PACKET}-byte limit once authenticated")]
    TooLarge(usize),
}

/// Seals outgoing packets: one per socket.
pub(crate) struct Sealer {
    keys: GossipKeys,
    sender: u64,
    counter: u64,
}

impl Sealer {
    pub(crate) fn new(keys: GossipKeys) -> Self {
        Sealer {
            keys,
            sender: rand::random(),
            counter: 0,
        }
    }

    /// Writes `payload` sealed at `now_ms` into `out` (cleared first), under accepted key `key` (0, the current
    /// secret's, unless the packet answers a peer that still signs with a previous one: see `Opener::open`).
    pub(crate) fn seal(&mut self, payload: &[u8], key: usize, now_ms: u64, out: &mut Vec<u8>) -> Result<(), SealError> {
        let len = HEADER_LEN + payload.len() + TAG_LEN;
        if len > MAX_PACKET {
            return Err(SealError::TooLarge(len));
        }
        let key = self.keys.accepted.get(key).unwrap_or(&self.keys.signing);
        self.counter += 1;
        out.clear();
        out.push(VERSION);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&self.sender.to_be_bytes());
        out.extend_from_slice(&self.counter.to_be_bytes());
        out.extend_from_slice(&now_ms.to_be_bytes());
        out.extend_from_slice(payload);
        let mut mac = key.mac.clone();
        mac.update(out);
        out.extend_from_slice(&mac.finalize().into_bytes());
        Ok(())
    }
}

/// Checks incoming packets: one per socket, with its replay guard and drop counts.
pub(crate) struct Opener {
    keys: GossipKeys,
    replay: ReplayGuard,
    drops: DropCounts,
}

/// Dropped packets by reason, since the socket opened.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DropCounts {
    pub(crate) oversize: u64,
    pub(crate) malformed: u64,
    pub(crate) unknown_key: u64,
    pub(crate) bad_tag: u64,
    pub(crate) stale: u64,
    pub(crate) replay: u64,
}

impl DropCounts {
    fn count(&mut self, rejection: Rejection) {
        let slot = match rejection {
            Rejection::Oversize => &mut self.oversize,
            Rejection::Malformed => &mut self.malformed,
            Rejection::UnknownKey => &mut self.unknown_key,
            Rejection::BadTag => &mut self.bad_tag,
            Rejection::Stale => &mut self.stale,
            Rejection::Replay => &mut self.replay,
        };
        *slot += 1;
    }

    #[cfg(test)]
    pub(crate) fn total(&self) -> u64 {
        self.oversize + self.malformed + self.unknown_key + self.bad_tag + self.stale + self.replay
    }
}

impl Opener {
    pub(crate) fn new(keys: GossipKeys) -> Self {
        Opener {
            keys,
            replay: ReplayGuard::default(),
            drops: DropCounts::default(),
        }
    }

    pub(crate) fn drops(&self) -> DropCounts {
        self.drops
    }

    /// The chitchat envelope inside `packet` if it passes every check at `now_ms`, with the index of the accepted
    /// key it was sealed under (0: the current secret's); otherwise counts the reason.
    pub(crate) fn open<'a>(&mut self, packet: &'a [u8], now_ms: u64) -> Result<(&'a [u8], usize), Rejection> {
        let opened = self.check(packet, now_ms);
        if let Err(rejection) = opened {
            self.drops.count(rejection);
        }
        opened
    }

    fn check<'a>(&mut self, packet: &'a [u8], now_ms: u64) -> Result<(&'a [u8], usize), Rejection> {
        if packet.len() > MAX_PACKET {
            return Err(Rejection::Oversize);
        }
        if packet.len() < HEADER_LEN + TAG_LEN || packet[0] != VERSION {
            return Err(Rejection::Malformed);
        }
        let (index, key) = self.keys.accepted(&packet[1..5]).ok_or(Rejection::UnknownKey)?;
        let (signed, tag) = packet.split_at(packet.len() - TAG_LEN);
        let mut mac = key.mac.clone();
        mac.update(signed);
        mac.verify_slice(tag).map_err(|_| Rejection::BadTag)?;
        let field = |at: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&packet[at..at + 8]);
            u64::from_be_bytes(bytes)
        };
        let (sender, counter, sent_ms) = (field(5), field(13), field(21));
        let window = u64::try_from(REPLAY_WINDOW.as_millis()).unwrap_or(u64::MAX);
        if sent_ms.abs_diff(now_ms) > window {
            return Err(Rejection::Stale);
        }
        if !self.replay.admit(sender, counter, sent_ms, now_ms.saturating_sub(window)) {
            return Err(Rejection::Replay);
        }
        Ok((&signed[HEADER_LEN..], index))
    }
}

/// Which `(sender, counter)` pairs were accepted within the window: per sender, the highest counter and a bitmap
/// of the [`COUNTER_WINDOW`] below it. At most [`MAX_SENDERS`] senders: senders silent for longer than the window
/// are forgotten (their packets are stale by then); if that is not enough, the one heard from least recently is,
/// and no packet of an unknown sender timestamped at or before that one's last packet is accepted any more.
#[derive(Debug, Default)]
struct ReplayGuard {
    senders: HashMap<u64, SenderWindow>,
    /// Packets of unknown senders must be newer than this (milliseconds; raised by eviction).
    horizon_ms: u64,
}

#[derive(Debug, Clone, Copy)]
struct SenderWindow {
    highest: u64,
    /// Bit `i` set: counter `highest - i` was accepted.
    seen: u128,
    /// The latest timestamp accepted from this sender.
    last_ms: u64,
}

impl ReplayGuard {
    /// Records `(sender, counter)` and says whether it is new. `oldest_ms` is the oldest timestamp still in the
    /// window.
    fn admit(&mut self, sender: u64, counter: u64, sent_ms: u64, oldest_ms: u64) -> bool {
        if let Some(window) = self.senders.get_mut(&sender) {
            let admitted = window.admit(counter);
            if admitted {
                window.last_ms = window.last_ms.max(sent_ms);
            }
            return admitted;
        }
        if sent_ms <= self.horizon_ms {
            return false;
        }
        if self.senders.len() >= MAX_SENDERS {
            self.senders.retain(|_, window| window.last_ms >= oldest_ms);
        }
        if self.senders.len() >= MAX_SENDERS {
            let evicted = self
                .senders
                .iter()
                .min_by_key(|(_, window)| window.last_ms)
                .map(|(sender, window)| (*sender, window.last_ms));
            if let Some((evicted, last_ms)) = evicted {
                self.senders.remove(&evicted);
                self.horizon_ms = self.horizon_ms.max(last_ms);
            }
            if sent_ms <= self.horizon_ms {
                return false;
            }
        }
        self.senders.insert(
            sender,
            SenderWindow {
                highest: counter,
                seen: 1,
                last_ms: sent_ms,
            },
        );
        true
    }
}

impl SenderWindow {
    fn admit(&mut self, counter: u64) -> bool {
        if counter > self.highest {
            let shift = counter - self.highest;
            self.seen = if shift >= 128 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.highest = counter;
            return true;
        }
        let back = self.highest - counter;
        if back >= COUNTER_WINDOW.min(128) {
            return false;
        }
        let bit = 1u128 << back;
        if self.seen & bit != 0 {
            return false;
        }
        self.seen |= bit;
        true
    }
}

/// Milliseconds since the Unix epoch by the wall clock (0 if the clock is before it).
/// What [`fuzz_open`] found.
#[cfg(feature = "internals")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FuzzOpened {
    /// The bytes opened as a packet.
    pub opened: bool,
    /// The bytes, sealed as a payload under `keys`, opened (false when too large to seal).
    pub sealed_opened: bool,
    /// That sealed packet, opened again, was refused as a replay.
    pub replay_refused: bool,
}

/// For the fuzz targets (`tests/fuzz`): opens `packet` at `now_ms` with a fresh opener for `keys`; then seals
/// `packet` as a payload and opens that twice (the second time is a replay).
#[cfg(feature = "internals")]
pub fn fuzz_open(keys: &GossipKeys, packet: &[u8], now_ms: u64) -> FuzzOpened {
    let mut opener = Opener::new(keys.clone());
    let opened = opener.open(packet, now_ms).is_ok();
    let mut sealed = Vec::new();
    if Sealer::new(keys.clone()).seal(packet, 0, now_ms, &mut sealed).is_err() {
        return FuzzOpened {
            opened,
            sealed_opened: false,
            replay_refused: true,
        };
    }
    let sealed_opened = opener.open(&sealed, now_ms).is_ok_and(|(payload, _)| payload == packet);
    let replay_refused = opener.open(&sealed, now_ms) == Err(Rejection::Replay);
    FuzzOpened {
        opened,
        sealed_opened,
        replay_refused,
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;
    const NONE: &[&str] = &[];

    fn sealed(sealer: &mut Sealer, payload: &[u8], at: u64) -> Vec<u8> {
        let mut out = Vec::new();
        sealer.seal(payload, 0, at, &mut out).unwrap();
        out
    }

    #[test]
    fn a_good_packet_is_accepted_once() {
        let keys = GossipKeys::new("s1", NONE);
        let mut sealer = Sealer::new(keys.clone());
        let mut opener = Opener::new(keys);
        let packet = sealed(&mut sealer, b"envelope", NOW);
        assert_eq!(packet.len(), HEADER_LEN + 8 + TAG_LEN);
        assert_eq!(opener.open(&packet, NOW), Ok((&b"envelope"[..], 0)));
        assert_eq!(opener.open(&packet, NOW + 5), Err(Rejection::Replay));
        assert_eq!(opener.drops().replay, 1);
    }

    #[test]
    fn every_altered_byte_is_rejected() {
        let keys = GossipKeys::new("s1", NONE);
        let mut sealer = Sealer::new(keys.clone());
        let packet = sealed(&mut sealer, b"some gossip", NOW);
        for at in 0..packet.len() {
            let mut opener = Opener::new(keys.clone());
            let mut altered = packet.clone();
            altered[at] ^= 0x01;
            let result = opener.open(&altered, NOW);
            assert!(result.is_err(), "byte {at} altered and accepted");
            assert_eq!(opener.drops().total(), 1);
        }
        let mut opener = Opener::new(keys);
        assert_eq!(opener.open(&packet[..packet.len() - 1], NOW), Err(Rejection::BadTag));
        assert_eq!(opener.open(&packet[..HEADER_LEN], NOW), Err(Rejection::Malformed));
    }

    #[test]
    fn another_secret_is_rejected_and_a_copied_key_id_does_not_help() {
        let mut stranger = Sealer::new(GossipKeys::new("wrong", NONE));
        let mut opener = Opener::new(GossipKeys::new("s1", NONE));
        let packet = sealed(&mut stranger, b"hello", NOW);
        assert_eq!(opener.open(&packet, NOW), Err(Rejection::UnknownKey));
        // A forger that copies the right key id still needs the key.
        let mut forged = packet.clone();
        forged[1..5].copy_from_slice(&GossipKeys::new("s1", NONE).signing.id);
        assert_eq!(opener.open(&forged, NOW), Err(Rejection::BadTag));
        assert_eq!(opener.drops().unknown_key, 1);
        assert_eq!(opener.drops().bad_tag, 1);
    }

    #[test]
    fn stale_and_future_packets_are_rejected() {
        let keys = GossipKeys::new("s1", NONE);
        let mut sealer = Sealer::new(keys.clone());
        let mut opener = Opener::new(keys);
        let window = REPLAY_WINDOW.as_millis() as u64;
        let old = sealed(&mut sealer, b"x", NOW - window - 1);
        let future = sealed(&mut sealer, b"x", NOW + window + 1);
        let edge = sealed(&mut sealer, b"x", NOW - window);
        assert_eq!(opener.open(&old, NOW), Err(Rejection::Stale));
        assert_eq!(opener.open(&future, NOW), Err(Rejection::Stale));
        assert!(opener.open(&edge, NOW).is_ok());
    }

    #[test]
    fn reordering_within_the_counter_window_is_accepted_and_replays_are_not() {
        let keys = GossipKeys::new("s1", NONE);
        let mut sealer = Sealer::new(keys.clone());
        let mut opener = Opener::new(keys);
        let packets: Vec<Vec<u8>> = (0..200).map(|i| sealed(&mut sealer, b"p", NOW + i)).collect();
        assert!(opener.open(&packets[150], NOW).is_ok());
        assert!(opener.open(&packets[100], NOW).is_ok(), "late by 50 counters");
        assert_eq!(opener.open(&packets[100], NOW), Err(Rejection::Replay));
        assert_eq!(opener.open(&packets[10], NOW), Err(Rejection::Replay), "beyond the counter window");
        assert!(opener.open(&packets[199], NOW).is_ok());
        assert!(opener.open(&packets[151], NOW).is_ok());
    }

    #[test]
    fn a_new_sender_is_a_new_window() {
        let keys = GossipKeys::new("s1", NONE);
        let mut opener = Opener::new(keys.clone());
        let first = sealed(&mut Sealer::new(keys.clone()), b"a", NOW);
        let second = sealed(&mut Sealer::new(keys), b"a", NOW);
        assert!(opener.open(&first, NOW).is_ok());
        assert!(opener.open(&second, NOW).is_ok(), "another process run, counter 1 again");
    }

    #[test]
    fn old_key_is_accepted_during_a_rotation() {
        let rotated = GossipKeys::new("s2", &["s1"]);
        let mut old_node = Sealer::new(GossipKeys::new("s1", NONE));
        let mut new_node = Sealer::new(rotated.clone());
        let mut opener = Opener::new(rotated);
        assert_eq!(opener.open(&sealed(&mut old_node, b"old", NOW), NOW), Ok((&b"old"[..], 1)));
        assert_eq!(opener.open(&sealed(&mut new_node, b"new", NOW), NOW), Ok((&b"new"[..], 0)));
        // The rotated node answers an old one under the old key, which the old one accepts.
        let mut answer = Vec::new();
        new_node.seal(b"answer", 1, NOW, &mut answer).unwrap();
        let mut old_opener = Opener::new(GossipKeys::new("s1", NONE));
        assert_eq!(old_opener.open(&answer, NOW), Ok((&b"answer"[..], 0)));
        // A node still on s1 alone does not accept s2: it must be given s2 as its secret or a previous one.
        let new_packet = sealed(&mut new_node, b"new", NOW);
        assert_eq!(
            Opener::new(GossipKeys::new("s1", NONE)).open(&new_packet, NOW),
            Err(Rejection::UnknownKey)
        );
        let keys = GossipKeys::new("s1", &["s2"]);
        assert!(Opener::new(keys).open(&new_packet, NOW).is_ok());
    }

    #[test]
    fn oversize_is_refused_both_ways() {
        let keys = GossipKeys::new("s1", NONE);
        let mut sealer = Sealer::new(keys.clone());
        let mut out = Vec::new();
        let too_big = vec![0u8; MAX_PACKET];
        assert!(matches!(sealer.seal(&too_big, 0, NOW, &mut out), Err(SealError::TooLarge(_))));
        let fits = vec![0u8; MAX_PACKET - HEADER_LEN - TAG_LEN];
        assert!(sealer.seal(&fits, 0, NOW, &mut out).is_ok());
        let mut opener = Opener::new(keys);
        out.push(0);
        assert_eq!(opener.open(&out, NOW), Err(Rejection::Oversize));
    }

    #[test]
    fn the_replay_guard_stays_bounded_and_safe() {
        let keys = GossipKeys::new("s1", NONE);
        let mut opener = Opener::new(keys.clone());
        let mut first = Sealer::new(keys.clone());
        let replayable = sealed(&mut first, b"a", NOW);
        assert!(opener.open(&replayable, NOW).is_ok());
        for i in 0..MAX_SENDERS as u64 {
            let packet = sealed(&mut Sealer::new(keys.clone()), b"b", NOW + 1 + i);
            assert!(opener.open(&packet, NOW).is_ok());
        }
        assert!(opener.replay.senders.len() <= MAX_SENDERS);
        assert_eq!(opener.open(&replayable, NOW), Err(Rejection::Replay), "evicted, still refused");
    }

    #[test]
    fn keys_debug_shows_no_secret() {
        let shown = format!("{:?}", GossipKeys::new("topsecret", &["older"]));
        assert!(!shown.contains("topsecret") && !shown.contains("older"), "{shown}");
    }
}
