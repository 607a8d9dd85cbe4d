//! Broadcasts (`Clients.All`) for stateful connections this node keeps for other nodes: so that a connection whose
//! server dies misses none of the broadcasts sent while it was dying.
//!
//! Every node gets every broadcast, so a keeper needs no extra traffic: each broadcast carries its origin
//! incarnation's sequence number, and its frame a [`SendMark`] with it, which a stateful connection's server copies
//! to the keeper with each record (per origin, the last broadcast the client may have). While this node keeps
//! connections of a hub, it records each broadcast it delivers for that hub in a short history
//! ([`KeptBroadcasts`]). When it takes a connection over, [`Router::resume_broadcasts`] makes it a connection here
//! and delivers to it, from the history, each broadcast it was not excepted from and its server had not numbered
//! (after its origin's last mark in the copy; of an origin the copy has no mark of, those recorded since this node
//! got the copy), both under the lock that every broadcast delivery on this node takes: nothing is missed or
//! delivered twice between the replay and the delivery to it as a connection here.
//!
//! Bounds: a hub's history holds at most [`KEPT_BROADCASTS_CAP`] broadcasts (past it the oldest go, counted as
//! `kept_broadcasts_evicted`: a connection taken over in the window misses them) and none older than
//! [`super::kept::KEPT_HISTORY_WINDOW`]. Hubs are the node's own, a fixed few.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use tokio::time::Instant;

use super::kept::KEPT_HISTORY_WINDOW;
use super::{LocalHub, Router};
use crate::cluster::NodeId;
use crate::connection::{ConnectionId, SendMark, SharedFrame};

/// The most broadcasts one hub's history holds.
pub const KEPT_BROADCASTS_CAP: usize = 4_096;

/// Per hub: how many of its connections this node keeps, and the broadcasts it delivered while it kept any.
#[derive(Default)]
pub(super) struct KeptBroadcasts {
    hubs: HashMap<Arc<str>, HubBroadcasts>,
}

#[derive(Default)]
struct HubBroadcasts {
    /// Connections of the hub this node keeps now.
    keeping: usize,
    /// The broadcasts delivered here since, oldest first.
    history: VecDeque<Broadcast>,
}

/// One broadcast, as delivered here.
struct Broadcast {
    at: Instant,
    mark: SendMark,
    frame: Arc<SharedFrame>,
    except: Arc<[ConnectionId]>,
}

impl HubBroadcasts {
    /// Drops what is past the bounds: the oldest beyond [`KEPT_BROADCASTS_CAP`] (counted, as they may still be
    /// needed), and what is older than the window. Returns how many went over the count.
    fn trim(&mut self, now: Instant) -> u64 {
        let mut over = 0;
        while self.history.len() > KEPT_BROADCASTS_CAP {
            self.history.pop_front();
            over += 1;
        }
        while self.history.front().is_some_and(|oldest| now.duration_since(oldest.at) > KEPT_HISTORY_WINDOW) {
            self.history.pop_front();
        }
        over
    }
}

/// Whether the broadcast marked `mark` is after `last`, the last one of its origin a connection's server numbered.
fn after(mark: &SendMark, last: &SendMark) -> bool {
    (mark.generation, mark.seq) > (last.generation, last.seq)
}

impl<H: LocalHub> Router<H> {
    /// The mark of a broadcast that incarnation `origin` numbered `seq`.
    pub(super) fn broadcast_mark(origin: &NodeId, seq: u64) -> SendMark {
        SendMark {
            group: Arc::from(""),
            user: false,
            broadcast: true,
            direct: false,
            origin: origin.name.clone(),
            generation: origin.generation,
            seq,
        }
    }

    /// Delivers a broadcast to every connection of `hub` here but `except`, recording it while this node keeps
    /// connections of the hub.
    pub(super) fn deliver_broadcast(&self, hub: &Arc<str>, frame: Arc<SharedFrame>, except: Arc<[ConnectionId]>) {
        let Some(runtime) = self.hub(hub) else { return };
        let mut kept = self.kept_broadcasts.lock();
        runtime.deliver_all(&frame, &except);
        let Some(hub_broadcasts) = kept.hubs.get_mut(hub).filter(|kept| kept.keeping > 0) else {
            return;
        };
        let Some(mark) = frame.mark().cloned() else { return };
        let now = Instant::now();
        hub_broadcasts.history.push_back(Broadcast {
            at: now,
            mark,
            frame,
            except,
        });
        let over = hub_broadcasts.trim(now);
        drop(kept);
        if over > 0 {
            let hit = &self.bounds_hit;
            hit.hit(&hit.kept_broadcasts_evicted, over, &self.span, "dropped the oldest kept broadcasts over their bound");
        }
    }

    /// This node keeps one more connection of `hub` (it records the hub's broadcasts while it keeps any).
    pub(crate) fn keep_broadcasts(&self, hub: &str) {
        let mut kept = self.kept_broadcasts.lock();
        match kept.hubs.get_mut(hub) {
            Some(hub_broadcasts) => hub_broadcasts.keeping += 1,
            None => {
                kept.hubs.insert(
                    Arc::from(hub),
                    HubBroadcasts {
                        keeping: 1,
                        ..HubBroadcasts::default()
                    },
                );
            }
        }
    }

    /// This node keeps one connection of `hub` fewer; with none left, its history goes.
    pub(crate) fn unkeep_broadcasts(&self, hub: &str) {
        let mut kept = self.kept_broadcasts.lock();
        if let Some(hub_broadcasts) = kept.hubs.get_mut(hub) {
            hub_broadcasts.keeping = hub_broadcasts.keeping.saturating_sub(1);
            if hub_broadcasts.keeping == 0 {
                kept.hubs.remove(hub);
            }
        }
    }

    /// Takes over connection `id` of `hub`: runs `install` (which makes it a connection here, or fails with
    /// `false`), then delivers to it each recorded broadcast its server had not numbered: after `marks`' mark of
    /// its origin (the copy's last broadcast per origin), or, of an origin without one, recorded since `since`
    /// (when this node got the copy). Both under the lock of every broadcast delivery here. Returns whether it was
    /// installed, and how many broadcasts it was given.
    pub(crate) fn resume_broadcasts(
        &self,
        hub: &str,
        id: &ConnectionId,
        marks: &BTreeMap<String, SendMark>,
        since: Instant,
        install: impl FnOnce() -> bool,
    ) -> (bool, usize) {
        let kept = self.kept_broadcasts.lock();
        if !install() {
            return (false, 0);
        }
        let (Some(runtime), Some(hub_broadcasts)) = (self.hub(hub), kept.hubs.get(hub)) else {
            return (true, 0);
        };
        let missed: Vec<&Broadcast> = hub_broadcasts
            .history
            .iter()
            .filter(|broadcast| !broadcast.except.contains(id))
            .filter(|broadcast| match marks.get(&*broadcast.mark.origin) {
                Some(last) => after(&broadcast.mark, last),
                None => broadcast.at >= since,
            })
            .collect();
        for broadcast in &missed {
            runtime.deliver_to(std::slice::from_ref(id), &broadcast.frame);
        }
        (true, missed.len())
    }
}
