//! [`LinkCounters`]: what a node's links count per peer, for its metrics: frames and bytes sent and received,
//! sends refused because the peer's queue was full, and stalls (times frames for the peer could not move because
//! the peer had not caught up: a full credit window on a ractor link, a full receiver on a memory link).
//!
//! Keyed by the peer's name, not its incarnation, so a restarted peer keeps its series; the names are the live
//! peers of the last view ([`LinkCounters::keep_only`] forgets the others), so the label set is bounded by the
//! cluster's members. Relaxed atomics behind a read lock of the per-peer map (written only when a new peer is
//! first counted or a view drops one).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

/// One peer's link counts.
#[derive(Debug, Default)]
pub struct PeerCounters {
    frames_sent: AtomicU64,
    bytes_sent: AtomicU64,
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
    queue_full: AtomicU64,
    stalls: AtomicU64,
}

impl PeerCounters {
    /// A frame of `bytes` bytes was queued for the peer.
    pub fn sent(&self, bytes: usize) {
        self.frames_sent.fetch_add(1, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A frame of `bytes` bytes arrived from the peer.
    pub fn received(&self, bytes: usize) {
        self.frames_received.fetch_add(1, Ordering::Relaxed);
        self.bytes_received.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// A send to the peer was refused: its queue was full.
    pub fn queue_full(&self) {
        self.queue_full.fetch_add(1, Ordering::Relaxed);
    }

    /// Frames for the peer had to wait for it to catch up.
    pub fn stalled(&self) {
        self.stalls.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a node's link to one peer counted, and its queue now, as a scrape reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerLinkFigures {
    /// The peer's name.
    pub peer: String,
    /// Frames queued for the peer.
    pub frames_sent: u64,
    /// Bytes of those frames.
    pub bytes_sent: u64,
    /// Frames that arrived from the peer.
    pub frames_received: u64,
    /// Bytes of those frames.
    pub bytes_received: u64,
    /// Sends refused because the peer's queue was full.
    pub queue_full: u64,
    /// Times frames for the peer waited for it to catch up (credit window or receiver full).
    pub stalls: u64,
    /// Frames waiting in the peer's queue now (0 without a link).
    pub queue_depth: usize,
}

/// A node's link counters, per peer name (see the module documentation).
#[derive(Debug, Default)]
pub struct LinkCounters {
    peers: RwLock<HashMap<Arc<str>, Arc<PeerCounters>>>,
}

impl LinkCounters {
    /// The counters of peer `name`, made on first use.
    pub fn peer(&self, name: &Arc<str>) -> Arc<PeerCounters> {
        if let Some(counters) = self.peers.read().get(name) {
            return Arc::clone(counters);
        }
        Arc::clone(self.peers.write().entry(Arc::clone(name)).or_default())
    }

    /// Forgets the peers not named in `names` (the live peers of a new view).
    pub fn keep_only<'a>(&self, names: impl IntoIterator<Item = &'a Arc<str>>) {
        let names: Vec<&Arc<str>> = names.into_iter().collect();
        self.peers.write().retain(|name, _| names.contains(&name));
    }

    /// Every counted peer's figures, sorted by name; `queue_depth` gives a peer's queue now.
    pub fn figures(&self, queue_depth: impl Fn(&str) -> usize) -> Vec<PeerLinkFigures> {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        // Copied out first: `queue_depth` takes the links' own lock, which their owner holds while it calls
        // `keep_only` (a scrape and a view change deadlocked the other way round).
        let peers: Vec<(Arc<str>, Arc<PeerCounters>)> = self
            .peers
            .read()
            .iter()
            .map(|(name, counters)| (Arc::clone(name), Arc::clone(counters)))
            .collect();
        let mut figures: Vec<PeerLinkFigures> = peers
            .iter()
            .map(|(name, counters)| PeerLinkFigures {
                peer: name.to_string(),
                frames_sent: read(&counters.frames_sent),
                bytes_sent: read(&counters.bytes_sent),
                frames_received: read(&counters.frames_received),
                bytes_received: read(&counters.bytes_received),
                queue_full: read(&counters.queue_full),
                stalls: read(&counters.stalls),
                queue_depth: queue_depth(name),
            })
            .collect();
        figures.sort_by(|a, b| a.peer.cmp(&b.peer));
        figures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_kept_per_peer_name_and_forgotten_with_the_peer() {
        let counters = LinkCounters::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        counters.peer(&a).sent(10);
        counters.peer(&a).sent(5);
        counters.peer(&b).received(7);
        counters.peer(&b).queue_full();
        counters.peer(&b).stalled();
        let figures = counters.figures(|name| usize::from(name == "a") * 3);
        assert_eq!(figures.len(), 2);
        assert_eq!((figures[0].peer.as_str(), figures[0].frames_sent, figures[0].bytes_sent), ("a", 2, 15));
        assert_eq!(figures[0].queue_depth, 3);
        assert_eq!((figures[1].frames_received, figures[1].bytes_received), (1, 7));
        assert_eq!((figures[1].queue_full, figures[1].stalls, figures[1].queue_depth), (1, 1, 0));
        counters.keep_only([&b]);
        let figures = counters.figures(|_| 0);
        assert_eq!(figures.len(), 1);
        assert_eq!(figures[0].peer, "b");
    }
}
