//! Sends to connections by id (`Clients.Client`) for stateful connections whose server dies: so that a
//! connection taken over by its keeper misses none of the sends made to it while its server was dying.
//!
//! * **Numbered.** Each node numbers its sends by id (one counter, locked while a send is numbered and sent, so
//!   that every receiver gets one origin's sends in the order of their numbers), and the frame carries a
//!   [`SendMark`] with the number, across links too ([`WireFrame`]). A stateful connection's server copies, per
//!   origin, the last one it numbered for the client to the keeper (`src/node/http/keeping.rs`).
//! * **Kept by the sender.** A node keeps each send by id it passes to another node for [`RETAIN_DIRECT`] (at most
//!   [`RETAINED_DIRECT_CAP`], the oldest forgotten first, counted as `direct_retained_evicted`). When that node
//!   leaves its view, it sends them again ([`Envelope::Resent`]) to every live peer and itself.
//! * **Held by the keeper.** A node that keeps a connection (`Router::keep_direct`) holds the sends by id that
//!   reach it for it until it takes the connection over (at most [`KEPT_DIRECT_CAP`] per connection and
//!   [`KEPT_DIRECT_TOTAL_CAP`] in all, the oldest dropped past them, counted as `kept_direct_dropped`): sends sent
//!   again, sends to a connection whose home is gone (every peer gets those), and sends its home offers it.
//! * **Orphans offered.** A home whose connection's server left offers the sends by id it gets for it to every
//!   peer for [`ORPHAN_WINDOW`] (`super::offers`), until the keeper that took it over says it serves it.
//! * **Resumed.** At the take-over ([`Router::resume_direct`]) the keeper delivers, in each origin's order, what it
//!   holds that the server had not numbered (after the copy's last mark of its origin), and for
//!   [`ORPHAN_WINDOW`] after drops the sends sent again that the connection already has.
//!
//! * **Delivered where they run.** A send sent again also reaches connections that run on the node it reaches
//!   (the node that left may have been their home, frozen with the send in its link stream): each connection
//!   drops a send by id at or before the last one it wrote of that origin (`src/connection/directs_written.rs`),
//!   so it gets the send once and in its origin's order, whether or not the node that left passed it on (chaos
//!   defect 31, `tests/cli/chaos/README.md`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::envelope::{Envelope, WireFrame};
use super::{LocalHub, Router};
use crate::cluster::NodeId;
use crate::connection::{ConnectionId, SendMark, SharedFrame};

/// How long a node keeps a send by id it passed to another node: past failure detection and a take-over.
pub const RETAIN_DIRECT: Duration = Duration::from_secs(10);
/// The most sends by id a node keeps for sending again.
pub const RETAINED_DIRECT_CAP: usize = 16_384;
/// The most sends a keeper holds for one connection it has not taken over.
pub const KEPT_DIRECT_CAP: usize = 1_024;
/// The most sends a keeper holds for all of them.
pub const KEPT_DIRECT_TOTAL_CAP: usize = 65_536;
/// How long a home offers the sends to a connection whose server left, and a keeper drops repeats after a
/// take-over.
pub const ORPHAN_WINDOW: Duration = Duration::from_secs(15);
/// The most connections a home offers for at once after their servers left.
pub const ORPHANS_CAP: usize = 65_536;

/// One send by id passed to another node.
struct Retained {
    at: Instant,
    to: NodeId,
    hub: Arc<str>,
    ids: Vec<ConnectionId>,
    frame: WireFrame,
}

/// The sends by id this node passed to other nodes lately.
#[derive(Default)]
pub(super) struct RetainedDirects {
    sends: VecDeque<Retained>,
}

/// Where a kept connection's sends by id stand here.
enum KeptDirect {
    /// Not taken over yet: the sends held for it, as they came.
    Pending(Vec<Arc<SharedFrame>>),
    /// Taken over here: per origin name, the (generation, number) of the last send delivered, until the instant.
    Resumed(Instant, HashMap<Arc<str>, (u64, u64)>),
}

/// The connections this node keeps or took over lately, for their sends by id.
#[derive(Default)]
pub(super) struct KeptDirects {
    connections: HashMap<ConnectionId, KeptDirect>,
    /// Sends held in all `Pending` entries.
    held: usize,
}

/// The connections whose server left, that this node (their home) offers sends for: since when, and that server.
pub(super) type Orphans = HashMap<ConnectionId, (Instant, NodeId)>;

/// What becomes of the sends by id a node holds for connections it keeps, besides being held.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Held {
    /// Only held: the send is for keepers (sent again, or offered), or reached this node as one of every peer.
    Only,
    /// Passed on too, as if none were kept here: on the routes that reach a live server, since a connection kept
    /// here may run on a live node its home or this node has not heard of yet (taken over, or moved, after its
    /// server or home left), and a take-over here leaves out what that server numbered. Holding them only lost
    /// them (chaos defect 21, `tests/cli/chaos/README.md`).
    PassedOn,
}

fn position(mark: &SendMark) -> (u64, u64) {
    (mark.generation, mark.seq)
}

impl<H: LocalHub> Router<H> {
    /// The mark of this node's send by id numbered `seq`.
    pub(super) fn direct_mark(&self, seq: u64) -> SendMark {
        let me = self.id();
        SendMark {
            group: Arc::from(""),
            user: false,
            broadcast: false,
            direct: true,
            origin: me.name,
            generation: me.generation,
            seq,
        }
    }

    /// Sends `frame` to connections `ids` on `peer`, and keeps it to send again if `peer` leaves.
    pub(super) fn send_direct(&self, peer: &NodeId, hub: &Arc<str>, ids: Vec<ConnectionId>, frame: WireFrame) -> bool {
        self.send_direct_as(peer, hub, ids, frame, false)
    }

    /// As [`Router::send_direct`], to the server a location hint names (`super::hints`).
    pub(super) fn send_hinted(&self, peer: &NodeId, hub: &Arc<str>, ids: Vec<ConnectionId>, frame: WireFrame) -> bool {
        self.send_direct_as(peer, hub, ids, frame, true)
    }

    fn send_direct_as(&self, peer: &NodeId, hub: &Arc<str>, ids: Vec<ConnectionId>, frame: WireFrame, hinted: bool) -> bool {
        let envelope = Envelope::ToConnections {
            hub: hub.clone(),
            ids,
            frame,
            hinted,
        };
        let sent = self.send_to_peer(peer, &envelope);
        if let Envelope::ToConnections { hub, ids, frame, .. } = envelope {
            if frame.mark().is_some() {
                self.retain_direct(peer, hub, ids, frame);
            }
        }
        if let Err(error) = &sent {
            tracing::debug!(parent: &self.span, %error, %peer, "a send to connections failed");
        }
        sent.is_ok()
    }

    fn retain_direct(&self, to: &NodeId, hub: Arc<str>, ids: Vec<ConnectionId>, frame: WireFrame) {
        let now = Instant::now();
        let mut retained = self.retained_direct.lock();
        let mut evicted = 0;
        while retained
            .sends
            .front()
            .is_some_and(|oldest| retained.sends.len() >= RETAINED_DIRECT_CAP || now.duration_since(oldest.at) > RETAIN_DIRECT)
        {
            if let Some(oldest) = retained.sends.pop_front() {
                evicted += u64::from(now.duration_since(oldest.at) <= RETAIN_DIRECT);
            }
        }
        retained.sends.push_back(Retained {
            at: now,
            to: to.clone(),
            hub,
            ids,
            frame,
        });
        drop(retained);
        if evicted > 0 {
            let hit = &self.bounds_hit;
            hit.hit(&hit.direct_retained_evicted, evicted, &self.span, "forgot sends by id kept to send again before their time");
        }
    }

    /// Nodes `left` left the view: the sends by id passed to them lately go again to every live peer and to this
    /// node, for the keepers of their connections. The caller holds the numbering lock: before any later send.
    pub(super) fn resend_direct(&self, left: &[NodeId]) {
        if left.is_empty() {
            return;
        }
        let again: Vec<Retained> = {
            let mut retained = self.retained_direct.lock();
            let (again, keep): (VecDeque<Retained>, VecDeque<Retained>) =
                retained.sends.drain(..).partition(|send| left.contains(&send.to));
            retained.sends = keep;
            again.into_iter().collect()
        };
        if again.is_empty() {
            return;
        }
        tracing::info!(parent: &self.span, sends = again.len(), "sending again the sends by id passed to nodes that left");
        let peers = self.peers();
        for send in again {
            let envelope = Envelope::Resent {
                hub: send.hub.clone(),
                ids: send.ids.clone(),
                frame: send.frame.clone(),
            };
            for peer in &peers {
                let _ = self.send_to_peer(peer, &envelope);
            }
            self.on_resent(&send.hub, send.ids, send.frame);
        }
    }

    /// Connection `id` runs on `server` now, no longer on `old`, which may not have got what this node passed to
    /// it lately (a keeper took the connection over from a server this node does not know is dead yet): those
    /// sends go again to `server`, before any later send can take the new route (the caller holds the numbering
    /// lock). Its keeper drops those the connection has.
    pub(super) fn reroute_retained(&self, id: &ConnectionId, old: &NodeId, server: &NodeId) {
        let again: Vec<(Arc<str>, WireFrame)> = self
            .retained_direct
            .lock()
            .sends
            .iter()
            .filter(|send| &send.to == old && send.ids.contains(id))
            .map(|send| (send.hub.clone(), send.frame.clone()))
            .collect();
        for (hub, frame) in again {
            let envelope = Envelope::Resent {
                hub,
                ids: vec![id.clone()],
                frame,
            };
            let _ = self.send_to_peer(server, &envelope);
        }
    }

    /// A send by id sent again: held for the connections this node keeps, delivered unless repeated to those it
    /// took over lately, and delivered to those that run here, which drop it if they wrote it already
    /// (`src/connection/directs_written.rs`): it may not have reached them through the node that left (chaos
    /// defect 31, `tests/cli/chaos/README.md`).
    pub(super) fn on_resent(&self, hub: &Arc<str>, ids: Vec<ConnectionId>, frame: WireFrame) {
        let others = self.take_kept_direct(hub, ids, &frame, &|_| true, Held::Only);
        if others.is_empty() {
            return;
        }
        if let Some(runtime) = self.hub(hub) {
            let here: Vec<ConnectionId> = others
                .into_iter()
                .filter(|id| runtime.handle_of(id).is_some())
                .collect();
            if !here.is_empty() {
                runtime.deliver_to(&here, &frame.into_frame());
            }
        }
    }

    /// Whether a send by id that reached this node by the usual routes is for the keeper here of connection `id`,
    /// rather than for the node that runs it: this node knows of no such node, and either the connection is not
    /// of its name (the send reached it as one of every peer, its home being gone) or its server left lately.
    pub(super) fn for_keeper(&self, id: &ConnectionId) -> bool {
        !self.adopted_out.lock().contains_key(id) && (!self.is_local(self.home_of(id)) || self.is_orphan(id))
    }

    /// Of `ids`, holds (a kept connection, when `hold` says the send is for its keeper) or delivers unless
    /// repeated (one taken over lately) what is for this node's kept connections; hands back the others, and with
    /// [`Held::PassedOn`] the held ones too.
    pub(super) fn take_kept_direct(
        &self,
        hub: &Arc<str>,
        ids: Vec<ConnectionId>,
        frame: &WireFrame,
        hold: &dyn Fn(&ConnectionId) -> bool,
        held_ones: Held,
    ) -> Vec<ConnectionId> {
        if !self.has_kept_direct() {
            return ids;
        }
        let mut kept = self.kept_direct.lock();
        let (mine, mut others): (Vec<ConnectionId>, Vec<ConnectionId>) = ids.into_iter().partition(|id| match kept.connections.get(id) {
            Some(KeptDirect::Pending(_)) => hold(id),
            Some(KeptDirect::Resumed(..)) => true,
            None => false,
        });
        if mine.is_empty() {
            return others;
        }
        let marked = frame.clone().into_frame();
        let mut dropped = 0;
        let mut deliver = Vec::new();
        let mut passed = Vec::new();
        let KeptDirects { connections, held } = &mut *kept;
        for id in mine {
            match connections.get_mut(&id) {
                Some(KeptDirect::Pending(sends)) => {
                    if sends.len() >= KEPT_DIRECT_CAP || *held >= KEPT_DIRECT_TOTAL_CAP {
                        dropped += 1;
                    } else {
                        sends.push(marked.clone());
                        *held += 1;
                    }
                    if held_ones == Held::PassedOn {
                        passed.push(id);
                    }
                }
                Some(KeptDirect::Resumed(_, last)) => {
                    let Some(mark) = frame.mark() else {
                        deliver.push(id);
                        continue;
                    };
                    let seen = last.get(&mark.origin).copied();
                    if seen.is_none_or(|seen| position(mark) > seen) {
                        last.insert(mark.origin.clone(), position(mark));
                        deliver.push(id);
                    }
                }
                None => {}
            }
        }
        if !deliver.is_empty() {
            if let Some(runtime) = self.hub(hub) {
                runtime.deliver_to(&deliver, &marked);
            }
        }
        drop(kept);
        if dropped > 0 {
            let hit = &self.bounds_hit;
            hit.hit(&hit.kept_direct_dropped, dropped, &self.span, "dropped sends by id held for kept connections");
        }
        if !passed.is_empty() {
            // Not one this node is taking over (prepared here, not resumed yet): it gets them in order at its resume.
            let runtime = self.hub(hub);
            others.extend(
                passed
                    .into_iter()
                    .filter(|id| runtime.as_ref().is_none_or(|runtime| runtime.handle_of(id).is_none())),
            );
        }
        others
    }

    /// Whether this node keeps, or took over lately, any connection (read without a lock).
    pub(super) fn has_kept_direct(&self) -> bool {
        self.kept_direct_count.load(Ordering::Relaxed) > 0
    }

    /// This node keeps connection `id`: it holds the sends by id that reach it for it until the take-over.
    pub(crate) fn keep_direct(&self, id: ConnectionId) {
        let mut kept = self.kept_direct.lock();
        let now = Instant::now();
        // Those resumed long ago need no dedupe any more.
        kept.connections
            .retain(|_, kept| !matches!(kept, KeptDirect::Resumed(at, _) if now.duration_since(*at) > ORPHAN_WINDOW));
        kept.connections.entry(id).or_insert_with(|| KeptDirect::Pending(Vec::new()));
        self.kept_direct_count.store(kept.connections.len(), Ordering::Relaxed);
    }

    /// This node no longer keeps connection `id` (it ended, or went to another keeper, or its take-over failed).
    pub(crate) fn unkeep_direct(&self, id: &ConnectionId) {
        let mut kept = self.kept_direct.lock();
        if let Some(KeptDirect::Pending(sends)) = kept.connections.remove(id) {
            kept.held -= sends.len();
            if !sends.is_empty() {
                tracing::debug!(parent: &self.span, %id, sends = sends.len(), "sends by id held for a kept connection dropped");
            }
        }
        self.kept_direct_count.store(kept.connections.len(), Ordering::Relaxed);
    }

    /// Connection `id`, taken over here, gets the sends by id held for it that its server had not numbered (after
    /// `last`'s mark of their origin), in each origin's order; for [`ORPHAN_WINDOW`] after, repeats are dropped.
    /// Returns how many it got.
    pub(crate) fn resume_direct(&self, hub: &str, id: &ConnectionId, last: &BTreeMap<String, SendMark>) -> usize {
        let mut kept = self.kept_direct.lock();
        let now = Instant::now();
        let mut delivered: HashMap<Arc<str>, (u64, u64)> = last
            .iter()
            .map(|(origin, mark)| (Arc::from(origin.as_str()), position(mark)))
            .collect();
        let held = match kept.connections.remove(id) {
            Some(KeptDirect::Pending(sends)) => sends,
            _ => Vec::new(),
        };
        kept.held -= held.len();
        let mut missed: Vec<Arc<SharedFrame>> = held
            .into_iter()
            .filter(|frame| {
                frame.mark().is_none_or(|mark| {
                    delivered
                        .get(&*mark.origin)
                        .is_none_or(|seen| position(mark) > *seen)
                })
            })
            .collect();
        // In each origin's order (a send sent again may come after a later one that went another way).
        missed.sort_by(|a, b| {
            let key = |frame: &Arc<SharedFrame>| frame.mark().map(|mark| (mark.origin.clone(), position(mark)));
            key(a).cmp(&key(b))
        });
        missed.dedup_by(|a, b| a.mark().is_some() && a.mark() == b.mark());
        if let Some(runtime) = self.hub(hub) {
            for frame in &missed {
                runtime.deliver_to(std::slice::from_ref(id), frame);
            }
        }
        for mark in missed.iter().filter_map(|frame| frame.mark()) {
            let entry = delivered.entry(mark.origin.clone()).or_insert((0, 0));
            *entry = (*entry).max(position(mark));
        }
        kept.connections.insert(id.clone(), KeptDirect::Resumed(now, delivered));
        self.kept_direct_count.store(kept.connections.len(), Ordering::Relaxed);
        missed.len()
    }

    /// The servers of these connections of this node's name left: their sends are offered to every peer for a
    /// while (`super::offers`), for the keepers that take them over.
    pub(super) fn orphan(&self, ids: Vec<(ConnectionId, NodeId)>) {
        if ids.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut orphans = self.orphans.lock();
        orphans.retain(|_, (at, _)| now.duration_since(*at) <= ORPHAN_WINDOW);
        for (id, server) in ids {
            if orphans.len() >= ORPHANS_CAP {
                break;
            }
            orphans.insert(id, (now, server));
        }
    }

    /// Servers this node had let go of are back, the very incarnations (they were declared dead, not restarted):
    /// the connections of this node's name they served within [`ORPHAN_WINDOW`] before run there still, unless one
    /// was taken over meanwhile (its keeper's record is here then, and stays). Without this, sends to them through
    /// this node went nowhere once the window ended (chaos defect 26, `tests/cli/chaos/README.md`).
    pub(super) fn servers_back(&self, servers: &[NodeId]) {
        if servers.is_empty() {
            return;
        }
        let mut adopted_out = self.adopted_out.lock();
        let mut orphans = self.orphans.lock();
        let now = Instant::now();
        let back: Vec<ConnectionId> = orphans
            .iter()
            .filter(|(_, (at, server))| servers.contains(server) && now.duration_since(*at) <= ORPHAN_WINDOW)
            .map(|(id, _)| id.clone())
            .collect();
        for id in back {
            if let Some((_, server)) = orphans.remove(&id) {
                if !adopted_out.contains_key(&id) && adopted_out.len() < super::relay::MAX_ADOPTED_OUT {
                    adopted_out.insert(id, server);
                }
            }
        }
    }

    /// Whether this node offers the sends to `id` (its server left lately).
    pub(super) fn is_orphan(&self, id: &ConnectionId) -> bool {
        self.orphans
            .lock()
            .get(id)
            .is_some_and(|(at, _)| at.elapsed() <= ORPHAN_WINDOW)
    }
}
