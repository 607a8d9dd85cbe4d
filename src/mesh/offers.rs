//! A young node's offers: sends to connections of its name that it does not know, offered to every peer.
//!
//! A node restarted under its name has forgotten which of the connections its earlier incarnation negotiated run
//! on other nodes (they moved there in that incarnation's drain). The peers that serve them tell it
//! (`src/node/http/home_report.rs`), but a send can reach it first. So, while it is young
//! ([`super::owner::YOUNG`]), a send that reaches it for a connection of its name that neither runs here nor is
//! recorded as elsewhere is offered to every peer ([`Envelope::Offered`]): the one that serves it delivers it and
//! answers [`Envelope::Serving`], and from then on this node passes that connection's sends on as for any
//! connection adopted out, in link order after the offered ones.
//!
//! A young node's view is still growing, so the peer that serves a connection may not be in it yet: offers that
//! no peer has answered are kept ([`MAX_UNANSWERED_OFFERS`], the oldest dropped past it and counted as
//! `offers_dropped`), and offered again, in order, to each peer that joins the view, before any later offer
//! reaches that peer (offers go to the peers this state has seen, which it updates only after offering them the
//! kept ones). Past its youth an unknown id is a connection that ended: sends to it are dropped, and the kept
//! offers with them, so offers cannot multiply sends to dead ids for long.
//!
//! At any age, a send for a connection whose server left lately (an orphan, `super::kept_direct`) is offered to
//! every live peer: its keeper holds it for the take-over, until the keeper tells this home where the connection
//! runs now.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::envelope::{Envelope, WireFrame};
use super::kept_direct::Held;
use super::{LocalHub, Router};
use crate::cluster::NodeId;
use crate::connection::ConnectionId;

/// How many offers a young node keeps for peers that have not joined its view yet.
pub const MAX_UNANSWERED_OFFERS: usize = 4_096;

/// What a young node offered and to whom.
#[derive(Default)]
pub(super) struct Offers {
    /// The peers offers go to: the live ones as of the last view change applied here.
    peers: Vec<NodeId>,
    /// Offers no peer has answered for, oldest first.
    unanswered: VecDeque<Offer>,
}

/// One send offered for connections nobody said they serve yet.
struct Offer {
    hub: Arc<str>,
    ids: Vec<ConnectionId>,
    frame: WireFrame,
}

impl<H: LocalHub> Router<H> {
    /// Of `ids` (all of this node's name), offers those this node does not know to run here or elsewhere to every
    /// peer, while it is young, and those whose server left lately (their keeper takes them over:
    /// `super::kept_direct`); hands back the rest, to deliver here or pass on.
    pub(super) fn offer_unknown(
        &self,
        runtime: &H,
        hub: &Arc<str>,
        ids: Vec<ConnectionId>,
        frame: &mut dyn FnMut() -> WireFrame,
    ) -> Vec<ConnectionId> {
        let young = self.born.elapsed() < super::owner::YOUNG;
        let (known, unknown): (Vec<ConnectionId>, Vec<ConnectionId>) = {
            let adopted_out = self.adopted_out.lock();
            ids.into_iter().partition(|id| {
                runtime.handle_of(id).is_some() || adopted_out.contains_key(id) || !(young || self.is_orphan(id))
            })
        };
        if unknown.is_empty() {
            return known;
        }
        self.offered.fetch_add(1, Ordering::Relaxed);
        let frame = frame();
        let envelope = Envelope::Offered {
            hub: hub.clone(),
            ids: unknown.clone(),
            frame: frame.clone(),
        };
        if !young {
            // Only orphans: every live peer, one of which keeps them. `offers.peers` is empty past the youth, and
            // offering to it dropped every send to an orphan until its keeper told this home where it runs (the
            // 300-client kill test lost sends by id to casualties so, its nodes being older than 10 s).
            for peer in self.peers() {
                let _ = self.send_to_peer(&peer, &envelope);
            }
            return known;
        }
        // Under the lock: an offer kept here reaches a peer that joins before any later one does.
        let mut offers = self.offers.lock();
        for peer in &offers.peers {
            let _ = self.send_to_peer(peer, &envelope);
        }
        if offers.unanswered.len() >= MAX_UNANSWERED_OFFERS {
            offers.unanswered.pop_front();
            let hit = &self.bounds_hit;
            hit.hit(&hit.offers_dropped, 1, &self.span, "dropped the oldest unanswered offer over its bound");
        }
        offers.unanswered.push_back(Offer {
            hub: hub.clone(),
            ids: unknown,
            frame,
        });
        known
    }

    /// The view changed to `peers`: offers no one answered go to the peers that joined, in order; from now on new
    /// offers go to `peers`. Past its youth the node keeps none.
    pub(super) fn offers_on_view(&self, peers: &[NodeId]) {
        let mut offers = self.offers.lock();
        if self.born.elapsed() >= super::owner::YOUNG {
            offers.unanswered = VecDeque::new();
            offers.peers = Vec::new();
            return;
        }
        let joined: Vec<&NodeId> = peers.iter().filter(|peer| !offers.peers.contains(peer)).collect();
        if !joined.is_empty() {
            for offer in &offers.unanswered {
                let envelope = Envelope::Offered {
                    hub: offer.hub.clone(),
                    ids: offer.ids.clone(),
                    frame: offer.frame.clone(),
                };
                for peer in &joined {
                    let _ = self.send_to_peer(peer, &envelope);
                }
            }
        }
        offers.peers = peers.to_vec();
    }

    /// A home offered a send to connections it lost track of: deliver to those served here, and tell it. Those
    /// this node keeps for a server that died are held for their take-over (`super::kept_direct`).
    pub(super) fn on_offered(&self, from: &NodeId, hub: &Arc<str>, ids: Vec<ConnectionId>, frame: WireFrame) {
        let Some(runtime) = self.hub(hub) else { return };
        let all = ids.clone();
        let untaken = self.take_kept_direct(hub, ids, &frame, &|_| true, Held::Only);
        let taken: Vec<ConnectionId> = all.into_iter().filter(|id| !untaken.contains(id)).collect();
        let mut served: Vec<ConnectionId> = untaken.into_iter().filter(|id| runtime.handle_of(id).is_some()).collect();
        if !served.is_empty() {
            runtime.deliver_to(&served, &frame.into_frame());
        }
        // A connection taken over here is served here: its home passes its sends on from now on.
        served.extend(taken.into_iter().filter(|id| runtime.handle_of(id).is_some()));
        if served.is_empty() {
            return;
        }
        let _ = self.send_to_peer(from, &Envelope::Serving { hub: hub.clone(), ids: served });
    }

    /// A peer serves these connections of this node's name: sends to them go on to it from now on, and what was
    /// offered for them is settled.
    pub(super) fn on_serving(&self, from: &NodeId, hub: &str, ids: Vec<ConnectionId>) {
        let runtime = self.hub(hub);
        for id in &ids {
            let here = runtime.as_ref().is_some_and(|runtime| runtime.handle_of(id).is_some());
            if self.is_local(self.home_of(id)) && !here {
                let _ = self.adopt_out(id.clone(), from.clone());
            }
        }
        let mut offers = self.offers.lock();
        for offer in offers.unanswered.iter_mut().filter(|offer| &*offer.hub == hub) {
            offer.ids.retain(|id| !ids.contains(id));
        }
        offers.unanswered.retain(|offer| !offer.ids.is_empty());
    }
}
