//! Where gossip datagrams travel, and the fault layer in front of them.
//!
//! # What this module owns
//!
//! [`GossipNetwork`]: the medium a [`Membership`](super::Membership) gossips over, either real UDP sockets (always
//! authenticated by the cluster secret: [`super::gossip_auth`]) or an
//! in-process network (chitchat's in-memory channel transport) shared by every node of a test, plus a fault layer
//! keyed by gossip address that both media share: `GossipNetwork::partition` cuts traffic between two sets of
//! nodes, `GossipNetwork::freeze` drops everything to and from one node (the in-process stand-in for `SIGSTOP`),
//! and `GossipNetwork::heal` undoes every fault. Faults act on datagrams only: a frozen node keeps running and
//! keeps its own view, exactly as a node behind a broken network would.
//!
//! # What it may call
//!
//! chitchat's transport traits, tokio and [`super::gossip_auth`]. It knows nothing of membership semantics, and nothing outside
//! `cluster/` sees the chitchat types it wraps.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
#[cfg(any(test, feature = "test-util"))]
use chitchat::transport::ChannelTransport;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport};
use chitchat::ChitchatEnvelope;
use parking_lot::Mutex;

use super::gossip_auth::socket::SealedUdpSocket;
use super::gossip_auth::GossipKeys;

/// The medium gossip travels over, with a fault layer for tests.
///
/// Cloning is cheap and every clone shares the same medium and the same faults, so a test keeps one clone to inject
/// faults while its nodes gossip over the others. Faults are keyed by the gossip addresses seen on the wire, which are
/// the nodes' advertised addresses when nodes listen on a specific IP (as tests on `127.0.0.1` do).
#[derive(Clone)]
pub struct GossipNetwork {
    medium: Medium,
    faults: Arc<Mutex<Faults>>,
}

#[derive(Clone)]
enum Medium {
    /// Real UDP, every datagram sealed and checked with these keys.
    Udp(Arc<GossipKeys>),
    #[cfg(any(test, feature = "test-util"))]
    InMemory(ChannelTransport),
}

impl fmt::Debug for GossipNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let medium = match self.medium {
            Medium::Udp(_) => "udp",
            #[cfg(any(test, feature = "test-util"))]
            Medium::InMemory(_) => "in-memory",
        };
        f.debug_struct("GossipNetwork")
            .field("medium", &medium)
            .field("faults", &*self.faults.lock())
            .finish()
    }
}

impl GossipNetwork {
    /// Real UDP sockets, authenticated with `keys`: what a production node uses.
    pub fn udp(keys: GossipKeys) -> Self {
        Self {
            medium: Medium::Udp(Arc::new(keys)),
            faults: Arc::default(),
        }
    }

    #[cfg(any(test, feature = "test-util"))]
    /// A fresh in-process network, not authenticated (only the test's own nodes are on it). Nodes started on clones of the same network reach each other by address (a
    /// listen port of 0 picks a free logical port); nothing touches the operating system's network stack.
    pub fn in_memory() -> Self {
        Self {
            medium: Medium::InMemory(ChannelTransport::default()),
            faults: Arc::default(),
        }
    }

    #[cfg(any(test, feature = "test-util"))]
    /// Drops every datagram between any node of `side_a` and any node of `side_b`, in both directions, until
    /// [`heal`](Self::heal). Traffic within each side is untouched.
    pub fn partition(&self, side_a: &[SocketAddr], side_b: &[SocketAddr]) {
        let mut faults = self.faults.lock();
        for a in side_a {
            for b in side_b {
                if a != b {
                    faults.cut.insert(pair(*a, *b));
                }
            }
        }
    }

    #[cfg(any(test, feature = "test-util"))]
    /// Drops every datagram to and from `addr` until [`thaw`](Self::thaw) or [`heal`](Self::heal): the node keeps
    /// running but nobody hears from it, as with a process stopped by `SIGSTOP`.
    pub fn freeze(&self, addr: SocketAddr) {
        self.faults.lock().frozen.insert(addr);
    }

    #[cfg(any(test, feature = "test-util"))]
    /// Lets `addr`'s datagrams through again after [`freeze`](Self::freeze).
    pub fn thaw(&self, addr: SocketAddr) {
        self.faults.lock().frozen.remove(&addr);
    }

    #[cfg(any(test, feature = "test-util"))]
    /// Removes every partition and every freeze.
    pub fn heal(&self) {
        let mut faults = self.faults.lock();
        faults.cut.clear();
        faults.frozen.clear();
    }

    /// Opens a gossip socket bound to `listen`. Returns it with the address it is bound to (a port of 0 is
    /// resolved).
    pub(crate) async fn open(&self, listen: SocketAddr) -> anyhow::Result<(Box<dyn Socket>, SocketAddr)> {
        let socket: Box<dyn Socket> = match &self.medium {
            Medium::Udp(keys) => Box::new(SealedUdpSocket::open(listen, GossipKeys::clone(keys)).await?),
            #[cfg(any(test, feature = "test-util"))]
            Medium::InMemory(channels) => channels.open(listen).await?,
        };
        let bound = socket.local_addr()?;
        Ok((socket, bound))
    }

    /// Puts the fault layer in front of `socket`, which belongs to the node advertised as `addr`.
    pub(crate) fn guard(&self, socket: Box<dyn Socket>, addr: SocketAddr) -> FaultySocket {
        FaultySocket {
            inner: socket,
            addr,
            faults: Arc::clone(&self.faults),
        }
    }
}

/// The faults in force on one network.
#[derive(Debug, Default)]
struct Faults {
    /// Cut address pairs, stored with the smaller address first.
    cut: HashSet<(SocketAddr, SocketAddr)>,
    frozen: HashSet<SocketAddr>,
}

impl Faults {
    fn blocks(&self, from: SocketAddr, to: SocketAddr) -> bool {
        self.frozen.contains(&from) || self.frozen.contains(&to) || self.cut.contains(&pair(from, to))
    }
}

fn pair(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

/// A gossip socket behind the fault layer: datagrams that a fault blocks are dropped silently, in both directions,
/// as a lossy network would.
pub(crate) struct FaultySocket {
    inner: Box<dyn Socket>,
    addr: SocketAddr,
    faults: Arc<Mutex<Faults>>,
}

#[async_trait]
impl Socket for FaultySocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        self.inner.local_addr()
    }

    async fn send(&mut self, to: SocketAddr, envelope: ChitchatEnvelope) -> anyhow::Result<SendOutcome> {
        if self.faults.lock().blocks(self.addr, to) {
            return Ok(SendOutcome { num_bytes_sent: 0 });
        }
        self.inner.send(to, envelope).await
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            let outcome = self.inner.recv().await?;
            if !self.faults.lock().blocks(outcome.from_addr, self.addr) {
                return Ok(outcome);
            }
        }
    }
}

/// A transport that hands out one socket opened beforehand, so that the node learns its bound address (and so its
/// advertised address) before chitchat starts, with no window in which another process could take the port.
pub(crate) struct OpenedSocket(Mutex<Option<FaultySocket>>);

impl OpenedSocket {
    pub(crate) fn new(socket: FaultySocket) -> Self {
        Self(Mutex::new(Some(socket)))
    }
}

#[async_trait]
impl Transport for OpenedSocket {
    async fn open(&self, _listen: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        match self.0.lock().take() {
            Some(socket) => Ok(Box::new(socket)),
            None => Err(anyhow::anyhow!("the gossip socket was already handed out")),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn partition_cuts_both_directions_only_across_sides() {
        let network = GossipNetwork::in_memory();
        network.partition(&[addr(1)], &[addr(2), addr(3)]);
        let faults = network.faults.lock();
        assert!(faults.blocks(addr(1), addr(2)));
        assert!(faults.blocks(addr(3), addr(1)));
        assert!(!faults.blocks(addr(2), addr(3)));
    }

    #[test]
    fn freeze_thaw_and_heal() {
        let network = GossipNetwork::udp(GossipKeys::new("s", &[] as &[&str]));
        network.freeze(addr(1));
        assert!(network.faults.lock().blocks(addr(2), addr(1)));
        network.thaw(addr(1));
        assert!(!network.faults.lock().blocks(addr(2), addr(1)));
        network.partition(&[addr(1)], &[addr(2)]);
        network.freeze(addr(3));
        network.heal();
        let faults = network.faults.lock();
        assert!(!faults.blocks(addr(1), addr(2)) && !faults.blocks(addr(3), addr(1)));
    }
}
