//! Location hints: a node that sends to a connection that another node adopted learns where it runs, and sends
//! there directly from then on, so a direct send gains no hop in the common case
//! (docs/any-node-design.md#4-finding-a-connection-to-send-to-it).
//!
//! A send to a connection goes to its home (the node its id names). When the home passes a send on to the node
//! that adopted the connection, it tells the sender ([`Envelope::Hint`]). The sender must not simply switch: a
//! direct send could overtake its earlier sends still on their way through the home. So it *fences*: it sends a
//! [`Envelope::Fence`] along the old path (through the home, after everything it sent that way) and holds its
//! next sends to that connection (at most [`MAX_FENCED`], for at most [`FENCE_TIMEOUT`]) until the server answers
//! the fence ([`Envelope::FenceAck`]): every earlier send has then arrived, and the held ones and all later ones go
//! straight to the server. A fence that is not answered in time, or too many held sends, give up the switch: the
//! held sends go through the home, in order, as before: at the next send to that connection, or at the
//! membership queue's next tick ([`Router::expire_fences`], every 100 ms) for a sender that sent nothing more.
//!
//! Bounds: at most [`MAX_HINTS`] connections are remembered; past it, the settled hints are forgotten (each costs
//! the next send one hop, and a new fence). Hints of a node that left are forgotten with it.
//!
//! A hint can go stale while its server stays: the node gives the connection up but not by ending it (a take-over
//! of a stale copy undone, `src/node/http/keeping.rs`), and it runs on elsewhere. The sends a hint routes are
//! marked as such ([`Envelope::ToConnections`]'s `hinted`), and a node that gets one for a connection it neither
//! serves nor is the home of passes it on through the home ([`Router::pass_strays_home`]), as do the sender's
//! later ones: one hop more, in order, rather than lost.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::envelope::{Envelope, WireFrame};
use super::{LocalHub, Router};
use crate::cluster::NodeId;
use crate::connection::ConnectionId;

/// Connections whose server a node remembers.
pub const MAX_HINTS: usize = 65_536;
/// Sends held for one connection while its fence is out.
pub const MAX_FENCED: usize = 256;
/// How long a fence may stay unanswered.
pub const FENCE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a connection adopted by another node runs, as this node knows it.
pub(super) struct Hint {
    server: NodeId,
    state: HintState,
}

enum HintState {
    /// The fence is out: sends wait here, in order.
    Fencing {
        nonce: u64,
        since: Instant,
        held: Vec<(Arc<str>, WireFrame)>,
    },
    /// Sends go straight to the server.
    Direct,
}

/// The hints of a node, by connection.
pub(super) type Hints = HashMap<ConnectionId, Hint>;

/// What a send to one connection whose home is another node does, per its hint.
pub(super) enum Route {
    /// Through the home, as without a hint.
    Home,
    /// Straight to the server.
    Direct(NodeId),
    /// Held until the fence is answered.
    Held,
}

/// How often the home passed sends on and senders gave up switching, for tests.
#[cfg(feature = "internals")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayCounts {
    /// Sends from peers to connections this node negotiated, passed on to the node that runs them.
    pub passed_on: u64,
    /// Switches to a hinted server given up.
    pub fences_given_up: u64,
}

/// What the node's metrics read of connections that run elsewhere than their home.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RelayFigures {
    /// Connections negotiated here that run on other nodes now.
    pub(crate) adopted_out: usize,
    /// Adoptions refused because `MAX_ADOPTED_OUT` connections of this node ran elsewhere.
    pub(crate) adoptions_refused: u64,
    /// Location hints held.
    pub(crate) hints: usize,
    /// Sends passed on by this node as a home.
    pub(crate) passed_on: u64,
    /// Sends that reached this node by a stale location hint, passed on to the connection's home.
    pub(crate) passed_home: u64,
    /// Sends offered to every peer by this node while young, for connections of its name it did not know.
    pub(crate) offered: u64,
    /// Switches to a hinted server given up.
    pub(crate) fences_given_up: u64,
    /// Times this node closed its connections because most peers had declared it dead.
    pub(crate) cut_off_closes: u64,
}

impl<H: LocalHub> Router<H> {
    /// This node's [`RelayFigures`], for its metrics.
    pub(crate) fn relay_figures(&self) -> RelayFigures {
        // One lock at a time: a guard taken in a field of the struct below would live until its end, holding
        // `adopted_out` while taking `hints`, the reverse of a send by id's order (`hints`, then `adopted_out` in
        // `Router::for_keeper`), and the two deadlocked.
        let adopted_out = self.adopted_out.lock().len();
        let hints = self.hints.lock().len();
        RelayFigures {
            adopted_out,
            adoptions_refused: self.adoptions_refused.load(Ordering::Relaxed),
            hints,
            passed_on: self.passed_on.load(Ordering::Relaxed),
            passed_home: self.passed_home.load(Ordering::Relaxed),
            offered: self.offered.load(Ordering::Relaxed),
            fences_given_up: self.fence_gave_up.load(Ordering::Relaxed),
            cut_off_closes: self.cut_off_closes(),
        }
    }

    /// This node's [`RelayCounts`].
    #[cfg(feature = "internals")]
    pub(crate) fn relay_counts(&self) -> RelayCounts {
        RelayCounts {
            passed_on: self.passed_on.load(Ordering::Relaxed),
            fences_given_up: self.fence_gave_up.load(Ordering::Relaxed),
        }
    }

    /// Where a send to `id` (of hub `hub`, whose home is another node) goes, under the hints lock `hints`, which
    /// the caller holds until it has sent (so that a fence never overtakes a send decided before it). A held send
    /// is kept here (`frame` makes its wire form once). A switch given up hands back, in `via_home`, what it held:
    /// the caller sends those through the home before this send.
    pub(super) fn hinted_route(
        &self,
        hints: &mut Hints,
        hub: &Arc<str>,
        id: &ConnectionId,
        frame: &mut dyn FnMut() -> WireFrame,
        via_home: &mut Vec<(Arc<str>, WireFrame)>,
    ) -> Route {
        let Some(hint) = hints.get_mut(id) else {
            return Route::Home;
        };
        match &mut hint.state {
            HintState::Direct => Route::Direct(hint.server.clone()),
            HintState::Fencing { since, held, .. } => {
                if since.elapsed() < FENCE_TIMEOUT && held.len() < MAX_FENCED {
                    held.push((hub.clone(), frame()));
                    return Route::Held;
                }
                if let Some(Hint {
                    state: HintState::Fencing { held, .. },
                    ..
                }) = hints.remove(id)
                {
                    self.fence_gave_up.fetch_add(1, Ordering::Relaxed);
                    via_home.extend(held);
                }
                Route::Home
            }
        }
    }

    /// Node `from` (the home, or the server this node's hint named, which moved the connection on) passed one of
    /// this node's sends on to `server`, which runs `ids`: fence along the path the sends took so far, to switch
    /// to it.
    pub(super) fn on_hint(&self, from: &NodeId, hub: &Arc<str>, ids: Vec<ConnectionId>, server: NodeId) {
        for id in ids {
            let nonce = self.next_request.fetch_add(1, Ordering::Relaxed);
            // The fence goes out under the lock: a send decided before it went out before it.
            let mut hints = self.hints.lock();
            // A server that left this node's view never answers a fence, and its hints went with it
            // (`peer_left_hints`): sends held for it would wait for a later send that may never come (the home that
            // hinted had not seen it leave yet). Read under the hints lock, so a view change either came first
            // (the hint is ignored) or forgets this hint after it.
            if !self.live.read().contains(&server) {
                continue;
            }
            let via_old_server = match hints.get(&id) {
                None => false,
                Some(Hint {
                    server: old,
                    state: HintState::Direct,
                }) if old == from && *old != server => true,
                Some(_) => continue,
            };
            {
                if hints.len() >= MAX_HINTS {
                    // Forget the settled ones; a fence in progress holds sends and must finish.
                    hints.retain(|_, hint| matches!(hint.state, HintState::Fencing { .. }));
                    if hints.len() >= MAX_HINTS {
                        continue;
                    }
                }
                hints.insert(
                    id.clone(),
                    Hint {
                        server: server.clone(),
                        state: HintState::Fencing {
                            nonce,
                            since: Instant::now(),
                            held: Vec::new(),
                        },
                    },
                );
            }
            let fence = Envelope::Fence {
                hub: hub.clone(),
                id: id.clone(),
                nonce,
                origin: self.id(),
            };
            let sent = if via_old_server {
                self.send_to_peer(from, &fence).is_ok()
            } else {
                let home = self.home_of(&id).to_owned();
                self.send_to(&home, &fence).is_ok()
            };
            if !sent {
                hints.remove(&id);
            }
        }
    }

    /// A fence reached this node: as the home, pass it on to the server, which it reaches after every send this
    /// home passed on before; as the server, answer the sender.
    pub(super) fn on_fence(&self, hub: Arc<str>, id: ConnectionId, nonce: u64, origin: NodeId) {
        // As the home, or as a server that moved the connection on: pass it on to where the connection runs now.
        let here = self.hub(&hub).is_some_and(|runtime| runtime.handle_of(&id).is_some());
        let server = if here { None } else { self.adopted_out.lock().get(&id).cloned() };
        if server.is_some() || self.is_local(self.home_of(&id)) {
            match server {
                Some(server) => {
                    let fence = Envelope::Fence { hub, id, nonce, origin };
                    let _ = self.send_to_peer(&server, &fence);
                }
                // The connection ended (or runs here): the sender keeps going through the home.
                None => {
                    let _ = self.send_to_peer(&origin, &Envelope::FenceAck { id, nonce, server: None });
                }
            }
            return;
        }
        let server = self.id();
        let _ = self.send_to_peer(&origin, &Envelope::FenceAck {
            id,
            nonce,
            server: Some(server),
        });
    }

    /// The server answered a fence: every send made before it has arrived; the held ones go straight to it.
    pub(super) fn on_fence_ack(&self, id: ConnectionId, nonce: u64, server: Option<NodeId>) {
        let mut hints = self.hints.lock();
        let matches = matches!(
            hints.get(&id),
            Some(Hint { state: HintState::Fencing { nonce: sent, .. }, .. }) if *sent == nonce
        );
        if !matches {
            return;
        }
        let Some(mut hint) = hints.remove(&id) else {
            return;
        };
        let HintState::Fencing { held, .. } = std::mem::replace(&mut hint.state, HintState::Direct) else {
            return;
        };
        match server {
            Some(server) if server == hint.server => {
                // Under the lock, so that no later send overtakes the held ones.
                for (hub, frame) in held {
                    self.send_hinted(&server, &hub, vec![id.clone()], frame);
                }
                hints.insert(id, hint);
            }
            // Under the lock too: a send of this node to `id` decided after the answer (it takes the hints lock)
            // goes through the home after the held ones, not before.
            _ => self.send_via_home(&id, held),
        }
    }

    /// Sends held for `id` through its home, in order.
    fn send_via_home(&self, id: &ConnectionId, held: Vec<(Arc<str>, WireFrame)>) {
        let home = self.home_of(id).to_owned();
        for (hub, frame) in held {
            self.send_direct_via_home(&home, &hub, vec![id.clone()], frame);
        }
    }

    /// Gives up the switches whose fence went unanswered for [`FENCE_TIMEOUT`]: what they hold goes through the
    /// home now, in order, rather than at the sender's next send to that connection, which may never come. Under
    /// the numbering lock, then the hints lock, as a send takes them: no send overtakes what was held. Visits every
    /// hint (at most [`MAX_HINTS`]), on the membership queue's tick.
    pub(super) fn expire_fences(&self) {
        let _numbering = self.next_direct.lock();
        let mut hints = self.hints.lock();
        let expired: Vec<ConnectionId> = hints
            .iter()
            .filter(|(_, hint)| matches!(&hint.state, HintState::Fencing { since, .. } if since.elapsed() >= FENCE_TIMEOUT))
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(Hint {
                state: HintState::Fencing { held, .. },
                ..
            }) = hints.remove(&id)
            {
                self.fence_gave_up.fetch_add(1, Ordering::Relaxed);
                self.send_via_home(&id, held);
            }
        }
    }

    /// Forgets the hints that point at `peer` (it left); sends held for it go through the homes.
    pub(super) fn peer_left_hints(&self, peer: &NodeId) {
        let gone: Vec<(ConnectionId, Hint)> = {
            let mut hints = self.hints.lock();
            let ids: Vec<ConnectionId> = hints
                .iter()
                .filter(|(_, hint)| hint.server == *peer)
                .map(|(id, _)| id.clone())
                .collect();
            ids.into_iter()
                .filter_map(|id| hints.remove(&id).map(|hint| (id, hint)))
                .collect()
        };
        for (id, hint) in gone {
            if let HintState::Fencing { held, .. } = hint.state {
                self.send_via_home(&id, held);
            }
        }
    }
}

impl<H: LocalHub> Router<H> {
    /// Of `ids` (sent here by a location hint, of other nodes' names), passes those neither served nor handed off
    /// here on to their home when it is live, counted as `hubmesh_sends_passed_home_total`; hands back the rest
    /// (the home never sends by a hint, so nothing goes back to it this way).
    pub(super) fn pass_strays_home(
        &self,
        runtime: &H,
        hub: &Arc<str>,
        ids: Vec<ConnectionId>,
        frame: &WireFrame,
    ) -> Vec<ConnectionId> {
        // The common case, a fresh hint: every connection is served here, so nothing is looked up or allocated.
        if ids.iter().all(|id| runtime.handle_of(id).is_some()) {
            return ids;
        }
        let mut strays: HashMap<NodeId, Vec<ConnectionId>> = HashMap::new();
        let mut rest = Vec::new();
        for id in ids {
            // Not those this node handed off (a drain's move): they go on to where they moved, as ever.
            let home = (runtime.handle_of(&id).is_none() && !self.adopted_out.lock().contains_key(&id))
                .then(|| self.live_peer(self.home_of(&id)))
                .flatten();
            match home {
                Some(home) => strays.entry(home).or_default().push(id),
                None => rest.push(id),
            }
        }
        for (home, ids) in strays {
            self.passed_home.fetch_add(ids.len() as u64, Ordering::Relaxed);
            self.send_direct(&home, hub, ids, frame.clone());
        }
        rest
    }
}
