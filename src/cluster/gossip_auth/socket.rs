//! The real UDP gossip socket: every datagram sealed on the way out and opened (checked) on the way in.
//!
//! chitchat 0.13 keeps its envelope encoding crate-private: only its own `UdpSocket` turns an envelope into bytes
//! and back. So this socket keeps one of those as a codec, bound to a private loopback port, and a "tap" socket
//! connected to it: to send, the codec sends the envelope to the tap, whose bytes are sealed and sent from the
//! public socket; to receive, an opened datagram's envelope bytes go from the tap to the codec, which decodes them,
//! and the envelope is handed on with the real sender's address. The codec only accepts datagrams from the tap's
//! address (anything else on its loopback port is ignored), and the tap is connected, so it only hears the codec.
//! Gossip is a few datagrams per round, so the extra loopback hop costs nothing measurable.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, UdpSocket as CodecSocket};
use chitchat::ChitchatEnvelope;
use tracing::{debug, warn};

use super::{now_ms, DropCounts, GossipKeys, Opener, Rejection, Sealer, LOG_EVERY, MAX_PACKET, MAX_SENDERS};

/// How long a datagram may take over the loopback hop before it is given up (it never does in practice; this only
/// bounds a wait on a datagram the codec refused to decode).
const HOP_TIMEOUT: Duration = Duration::from_millis(200);

/// A gossip socket that authenticates every datagram (see the parent module for the format and the checks).
pub(crate) struct SealedUdpSocket {
    public: tokio::net::UdpSocket,
    codec: CodecSocket,
    tap: tokio::net::UdpSocket,
    tap_addr: SocketAddr,
    sealer: Sealer,
    opener: Opener,
    /// Peers whose latest accepted packet was sealed under a previous secret, with that key's index: they are
    /// answered under it, so a node not yet given the new secret keeps hearing this one during a rotation.
    answer_under: HashMap<SocketAddr, usize>,
    /// A received datagram handed to the codec and not yet read back (a cancelled `recv` leaves it there), with
    /// the address of the peer that sent it.
    handed_over: Option<(SocketAddr, usize)>,
    /// Receive buffer: one byte more than the largest datagram accepted, so a larger one shows as oversize.
    inbound: Box<[u8]>,
    plain: Box<[u8]>,
    sealed: Vec<u8>,
    log: DropLog,
    /// When a packet too large to seal was last logged.
    last_unsendable: Option<Instant>,
}

impl SealedUdpSocket {
    /// Binds the public socket on `listen` and the codec and tap on loopback.
    pub(crate) async fn open(listen: SocketAddr, keys: GossipKeys) -> anyhow::Result<Self> {
        let public = tokio::net::UdpSocket::bind(listen)
            .await
            .with_context(|| format!("failed to bind to {listen}/UDP for gossip"))?;
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let codec = CodecSocket::open(loopback).await?;
        let codec_addr = codec.local_addr()?;
        let tap = tokio::net::UdpSocket::bind(loopback)
            .await
            .context("failed to bind the gossip codec tap on loopback")?;
        tap.connect(codec_addr)
            .await
            .context("failed to connect the gossip codec tap")?;
        let tap_addr = tap.local_addr()?;
        Ok(SealedUdpSocket {
            public,
            codec,
            tap,
            tap_addr,
            sealer: Sealer::new(keys.clone()),
            opener: Opener::new(keys),
            answer_under: HashMap::new(),
            handed_over: None,
            inbound: vec![0u8; MAX_PACKET + 1].into_boxed_slice(),
            plain: vec![0u8; MAX_PACKET + 1].into_boxed_slice(),
            sealed: Vec::with_capacity(MAX_PACKET),
            log: DropLog::default(),
            last_unsendable: None,
        })
    }

    /// Reads back the envelope of the datagram handed to the codec, if any.
    async fn read_back(&mut self) -> anyhow::Result<Option<RecvOutcome>> {
        let Some((peer, num_bytes_received)) = self.handed_over else {
            return Ok(None);
        };
        // One deadline for the whole wait, so that datagrams from elsewhere on loopback cannot prolong it.
        let deadline = tokio::time::Instant::now() + HOP_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.codec.recv()).await {
                Ok(Ok(outcome)) if outcome.from_addr == self.tap_addr => {
                    self.handed_over = None;
                    return Ok(Some(RecvOutcome {
                        from_addr: peer,
                        envelope: outcome.envelope,
                        num_bytes_received,
                    }));
                }
                // Something else on the codec's loopback port: not ours, ignored.
                Ok(Ok(_)) => {}
                Ok(Err(err)) => return Err(err),
                // The codec refused to decode it (and logged why).
                Err(_) => {
                    self.handed_over = None;
                    return Ok(None);
                }
            }
        }
    }

    fn dropped(&mut self, rejection: Rejection, from: SocketAddr) {
        self.log.note(rejection, from, self.opener.drops());
    }
}

fn is_transient(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::OutOfMemory
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::Interrupted
    )
}

#[async_trait]
impl Socket for SealedUdpSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.public.local_addr().context("failed to get the gossip socket address")
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        // Leftovers of a send cancelled halfway must not go out in place of this one.
        while self.tap.try_recv(&mut self.plain).is_ok() {}
        let encoded = self.codec.send(self.tap_addr, envelope).await?.num_bytes_sent;
        let len = loop {
            let len = tokio::time::timeout(HOP_TIMEOUT, self.tap.recv(&mut self.plain))
                .await
                .context("the gossip codec hop timed out")?
                .context("the gossip codec hop failed")?;
            if len == encoded {
                break len;
            }
        };
        let key = self.answer_under.get(&to).copied().unwrap_or(0);
        if let Err(err) = self.sealer.seal(&self.plain[..len], key, now_ms(), &mut self.sealed) {
            let now = Instant::now();
            if self.last_unsendable.is_none_or(|last| now.duration_since(last) >= LOG_EVERY) {
                self.last_unsendable = Some(now);
                warn!(%to, error = %err, "gossip packet not sent (the cluster state is too large for one datagram)");
            }
            return Err(err.into());
        }
        let num_bytes_sent = self
            .public
            .send_to(&self.sealed, to)
            .await
            .context("failed to send gossip to peer")?;
        Ok(SendOutcome { num_bytes_sent })
    }

    /// Cancel-safe: a datagram already handed to the codec is read back by the next call.
    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            if let Some(outcome) = self.read_back().await? {
                return Ok(outcome);
            }
            let (len, from) = match self.public.recv_from(&mut self.inbound).await {
                Ok(received) => received,
                Err(err) if is_transient(&err) => {
                    debug!(error = %err, "transient gossip receive error");
                    continue;
                }
                Err(err) => return Err(err).context("fatal gossip receive error"),
            };
            let envelope = match self.opener.open(&self.inbound[..len], now_ms()) {
                Ok((envelope, 0)) => {
                    self.answer_under.remove(&from);
                    envelope
                }
                Ok((envelope, previous)) => {
                    // Bounded: only authenticated peers get here; past the bound, start over.
                    if self.answer_under.len() >= MAX_SENDERS {
                        self.answer_under.clear();
                    }
                    self.answer_under.insert(from, previous);
                    envelope
                }
                Err(rejection) => {
                    self.dropped(rejection, from);
                    continue;
                }
            };
            // A failed hop loses this datagram only, as a lossy network would; gossip goes on.
            if let Err(err) = self.tap.send(envelope).await {
                debug!(error = %err, "gossip codec hop failed; datagram dropped");
                continue;
            }
            self.handed_over = Some((from, len));
        }
    }
}

/// Logs dropped datagrams: the first at once, then at most one line per [`LOG_EVERY`] with the counts so far.
#[derive(Default)]
struct DropLog {
    last: Option<Instant>,
}

impl DropLog {
    fn note(&mut self, rejection: Rejection, from: SocketAddr, counts: DropCounts) {
        let now = Instant::now();
        if self.last.is_some_and(|last| now.duration_since(last) < LOG_EVERY) {
            debug!(%from, ?rejection, "gossip datagram dropped");
            return;
        }
        self.last = Some(now);
        warn!(
            %from,
            ?rejection,
            oversize = counts.oversize,
            malformed = counts.malformed,
            unknown_key = counts.unknown_key,
            bad_tag = counts.bad_tag,
            stale = counts.stale,
            replay = counts.replay,
            "gossip datagrams dropped: not authenticated by the cluster secret (another secret, forged, altered, \
             replayed or stale); counts since start"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]
mod tests {
    use super::*;
    use chitchat::ChitchatMessage;

    fn envelope() -> ChitchatEnvelope {
        ChitchatEnvelope {
            version: chitchat::ProtocolVersion::V0,
            message: ChitchatMessage::BadCluster,
        }
    }

    fn localhost() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[tokio::test]
    async fn sealed_sockets_talk_and_strangers_and_plain_chitchat_are_dropped() {
        let keys = GossipKeys::new("s1", &[] as &[&str]);
        let mut a = SealedUdpSocket::open(localhost(), keys.clone()).await.unwrap();
        let mut b = SealedUdpSocket::open(localhost(), keys).await.unwrap();
        let mut stranger = SealedUdpSocket::open(localhost(), GossipKeys::new("s2", &[] as &[&str]))
            .await
            .unwrap();
        let mut plain = CodecSocket::open(localhost()).await.unwrap();
        let b_addr = b.local_addr().unwrap();

        stranger.send(b_addr, envelope()).await.unwrap();
        plain.send(b_addr, envelope()).await.unwrap();
        let sent = a.send(b_addr, envelope()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), b.recv()).await.unwrap().unwrap();
        assert_eq!(got.from_addr, a.local_addr().unwrap());
        assert_eq!(got.envelope, envelope());
        assert_eq!(got.num_bytes_received, sent.num_bytes_sent);
        let drops = b.opener.drops();
        assert_eq!((drops.unknown_key, drops.malformed), (1, 1), "{drops:?}");

        // The same datagram again, verbatim: dropped as a replay.
        let raw = tokio::net::UdpSocket::bind(localhost()).await.unwrap();
        a.send(b_addr, envelope()).await.unwrap();
        raw.send_to(&a.sealed, b_addr).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_secs(5), b.recv()).await.unwrap().is_ok());
        let nothing = tokio::time::timeout(Duration::from_millis(300), b.recv()).await;
        assert!(nothing.is_err(), "the replay was accepted");
        assert_eq!(b.opener.drops().replay, 1);
    }
}
