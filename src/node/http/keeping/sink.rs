//! The server's side of keeping: what one stateful connection copies to its keeper ([`Keeper`], called by the
//! connection task), and what the server does with the keeper's answers.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::node::{Node, NodeInner};
use super::wire::{Copy, Frame};
use crate::cluster::NodeId;
use crate::connection::keeper::{Held, Keeper, LastMarks};
use crate::connection::{ConnectionId, RequestInfo, SendMark};
use crate::protocol::Protocol;

/// The most keepers a connection remembers having left (`SinkState::formers`); past it, the oldest is forgotten
/// (its copy stays until it takes it over and learns from a fresher keeper that it is stale, `Frame::Took`).
const FORMER_KEEPERS: usize = 4;

/// How soon a claim that found no link to a peer goes to it again ([`KeepSink::claim_unsent`]).
const CLAIM_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// The server's side: what one stateful connection copies to its keeper ([`Keeper`] for the connection task).
pub(crate) struct KeepSink {
    /// Itself, for the node's registry (which holds sinks weakly: the connection owns its sink).
    me: Weak<KeepSink>,
    node: Weak<NodeInner>,
    held: Held,
    state: Mutex<SinkState>,
}

struct SinkState {
    keeper: Option<NodeId>,
    /// Keepers it left for another while they may still hold an older copy (out of its view, or unreachable): each
    /// is told to drop it when it is back in view or when the connection ends. At most [`FORMER_KEEPERS`].
    formers: Vec<NodeId>,
    ended: bool,
    copy: Copy,
    /// The client's records whose receipt the last whole copy sent carried: the keeper's Held for it covers them.
    received_at_open: u64,
    /// Waits for the answers to a claim ([`Keeper::claim`]).
    claim: Option<PendingClaim>,
}

impl SinkState {
    /// What asks a peer whether it took this connection over.
    fn claim_frame(&self) -> Frame {
        Frame::Claim {
            id: self.copy.id.clone(),
            token: self.copy.token.to_string(),
        }
    }
}

/// A claim's answer, once one peer asked says it took the connection over or every one says it did not.
struct PendingClaim {
    answer: oneshot::Sender<bool>,
    /// The peers asked that have not answered yet.
    waiting: Vec<NodeId>,
}

impl KeepSink {
    /// A sink for connection `id` of the hub at `path`, negotiated by `home` with `token`; registered with the
    /// node's keeping once its handshake opens it.
    pub(crate) fn new(node: &Node, path: &str, token: &str, id: ConnectionId, home: NodeId, request: &RequestInfo) -> Arc<Self> {
        Arc::new_cyclic(|me| KeepSink {
            me: me.clone(),
            node: node.downgrade(),
            held: Held::default(),
            state: Mutex::new(SinkState {
                keeper: None,
                formers: Vec::new(),
                ended: false,
                copy: Copy::empty(id, path, token, home, request),
                received_at_open: 0,
                claim: None,
            }),
        })
    }

    /// A sink for a connection that moved here (a drain, or its keeper's take-over): its copy starts from what the
    /// move carried, its records the client has not acknowledged and the client's it acknowledged, `groups` (its
    /// memberships here so far; the rest follow as the owners' markers apply them), what it got of each group's
    /// sends where it was (`got`: a resume gives none of those again), and the number of its last copy
    /// (`MovedState::keep_epoch`). The caller sets it as the connection's keeper, then opens it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn moved(
        node: &Node,
        path: &str,
        token: &str,
        id: ConnectionId,
        home: NodeId,
        request: &RequestInfo,
        state: &crate::connection::moving::MovedState,
        got: &crate::mesh::SendsGot,
    ) -> Arc<Self> {
        let sink = KeepSink::new(node, path, token, id, home, request);
        {
            let mut sink_state = sink.state.lock();
            let copy = &mut sink_state.copy;
            copy.unacked = state.unacked.iter().cloned().collect();
            copy.last = state.next_id.saturating_sub(1);
            copy.received = state.received.latest();
            copy.epoch = state.keep_epoch;
            copy.broadcasts = state.last_marks.broadcasts.clone();
            copy.directs = state.last_marks.directs.clone();
            for (key, origins) in &got.groups {
                let group = (key.name.to_string(), key.kind == crate::mesh::GroupKind::User);
                copy.got.insert(group, origins.clone());
            }
        }
        sink
    }

    fn node(&self) -> Option<Node> {
        self.node.upgrade().map(Node::from_inner)
    }

    /// Sends `frame` to the keeper; on failure, the whole copy to a keeper again.
    fn send(&self, node: &Node, state: &mut SinkState, frame: Frame, payload: Option<&Bytes>) {
        let Some(keeper) = state.keeper.clone() else {
            return;
        };
        if !node.keeping().queue(&keeper, frame, payload) {
            node.keeping().refused.fetch_add(1, Ordering::Relaxed);
            self.run_unkept(state);
        }
    }

    /// A batch with this connection's frames could not go to `peer`: if that is its keeper, it sends the whole
    /// copy to a keeper again.
    pub(super) fn lost_at(&self, node: &Node, peer: &NodeId) {
        let mut state = self.state.lock();
        if !state.ended && state.keeper.as_ref() == Some(peer) {
            self.open(node, &mut state, Some(peer));
        }
    }

    /// Picks a keeper (not `not`, a keeper it leaves) and sends it the whole copy, numbered one higher than the
    /// last ([`Copy::epoch`]); with nobody to keep it, every record is held.
    fn open(&self, node: &Node, state: &mut SinkState, not: Option<&NodeId>) {
        if let Some(former) = not {
            if !state.formers.contains(former) {
                if state.formers.len() >= FORMER_KEEPERS {
                    state.formers.remove(0);
                }
                state.formers.push(former.clone());
            }
        }
        let mut peers: Vec<NodeId> = node
            .router()
            .peer_incarnations()
            .into_iter()
            .filter(|peer| Some(peer) != not)
            .collect();
        // Not a draining or joining peer when a serving one is there: a draining one leaves soon, and the copy
        // would have to go again (its records waiting meanwhile). Nor one it left, when it has others.
        if let Some(serving) = node.serving_peers_now() {
            let ready: Vec<NodeId> = peers.iter().filter(|peer| serving.contains(peer)).cloned().collect();
            if !ready.is_empty() {
                peers = ready;
            }
        }
        let fresh: Vec<NodeId> = peers.iter().filter(|peer| !state.formers.contains(peer)).cloned().collect();
        if !fresh.is_empty() {
            peers = fresh;
        }
        state.keeper = crate::cluster::owner(state.copy.id.as_str().as_bytes(), &peers).cloned();
        let Some(keeper) = state.keeper.clone() else {
            self.run_unkept(state);
            return;
        };
        // Chosen again: its copy is replaced by this one.
        state.formers.retain(|former| former != &keeper);
        state.copy.epoch += 1;
        state.received_at_open = state.copy.received;
        tracing::debug!(parent: node.span(), id = %state.copy.id, %keeper, epoch = state.copy.epoch, "the whole copy goes to a keeper");
        if !node.keeping().queue(&keeper, Frame::Open(Box::new(state.copy.clone())), None) {
            node.keeping().refused.fetch_add(1, Ordering::Relaxed);
            self.run_unkept(state);
        }
    }

    /// Nobody keeps the connection: unkept rather than stalled, its records are written as if alone.
    fn run_unkept(&self, state: &mut SinkState) {
        state.keeper = None;
        self.held.advance(state.copy.last);
        self.held.advance_receipts(state.copy.received);
    }

    pub(super) fn held_by(&self, from: &NodeId, seq: u64) {
        let state = self.state.lock();
        if state.keeper.as_ref() == Some(from) {
            self.held.advance(seq);
            self.held.advance_receipts(state.received_at_open);
        }
    }

    /// Keeper `from` holds the receipt of the client's records up to `seq`.
    pub(super) fn receipts_held_by(&self, from: &NodeId, seq: u64) {
        let state = self.state.lock();
        if state.keeper.as_ref() == Some(from) {
            self.held.advance_receipts(seq);
        }
    }

    /// The hub path of the connection.
    pub(super) fn path(&self) -> String {
        self.state.lock().copy.path.clone()
    }

    /// The connection's token.
    pub(super) fn token(&self) -> String {
        self.state.lock().copy.token.to_string()
    }

    /// Keeper `from` refused the copy: at its bounds (the connection runs unkept), or because it is `leaving`
    /// (the copy goes to another keeper).
    pub(super) fn refused_by(&self, node: &Node, from: &NodeId, leaving: bool) {
        let mut state = self.state.lock();
        if state.keeper.as_ref() == Some(from) && !state.ended {
            if leaving {
                self.open(node, &mut state, Some(from));
            } else {
                self.run_unkept(&mut state);
            }
        }
    }

    /// Peer `peer` is in this node's view again: if it is a keeper this connection left, the frame that tells it
    /// to drop its older copy.
    pub(super) fn former_back(&self, peer: &NodeId) -> Option<Frame> {
        let mut state = self.state.lock();
        let at = state.formers.iter().position(|former| former == peer)?;
        state.formers.remove(at);
        Some(Frame::Ended {
            id: state.copy.id.clone(),
            below: Some(state.copy.epoch),
        })
    }

    /// Peer `from` answered a claim: it took the connection over (`taken`; it runs there, whoever was asked), or
    /// not (the claim's answer is no once every peer asked said so).
    pub(super) fn claim_answered(&self, from: &NodeId, taken: bool) {
        let mut state = self.state.lock();
        let Some(pending) = state.claim.as_mut() else {
            return;
        };
        pending.waiting.retain(|peer| peer != from);
        if taken || pending.waiting.is_empty() {
            if let Some(pending) = state.claim.take() {
                let _ = pending.answer.send(taken);
            }
        }
    }

    /// The claim to `peer` could not go (no link to it yet): it goes again after [`CLAIM_RETRY`], while the claim
    /// waits for that peer's answer.
    pub(super) fn claim_unsent(&self, peer: &NodeId) {
        let (Some(node), Some(me)) = (self.node(), self.me.upgrade()) else {
            return;
        };
        let peer = peer.clone();
        tokio::spawn(async move {
            tokio::time::sleep(CLAIM_RETRY).await;
            let state = me.state.lock();
            let waiting = state
                .claim
                .as_ref()
                .is_some_and(|pending| !pending.answer.is_closed() && pending.waiting.contains(&peer));
            if waiting {
                node.keeping().queue(&peer, state.claim_frame(), None);
            }
        });
    }

    /// Its keeper left (`left` says which peers did): the whole copy goes to another.
    pub(super) fn keeper_left_if(&self, left: &dyn Fn(&NodeId) -> bool) {
        let Some(node) = self.node() else {
            return;
        };
        let mut state = self.state.lock();
        if let Some(keeper) = state.keeper.clone().filter(|keeper| !state.ended && left(keeper)) {
            self.open(&node, &mut state, Some(&keeper));
        }
    }
}

impl Keeper for KeepSink {
    fn opened(&self, protocol: Protocol) {
        let Some(node) = self.node() else {
            return;
        };
        let mut state = self.state.lock();
        state.copy.protocol = protocol.name().to_owned();
        let id = state.copy.id.clone();
        node.keeping().sinks.lock().insert(id, self.me.clone());
        self.open(&node, &mut state, None);
    }

    fn record(&self, id: u64, record: &Bytes, mark: Option<&SendMark>) {
        let mut state = self.state.lock();
        state.copy.last = id;
        state.copy.unacked.push_back((id, record.clone()));
        if let Some(mark) = mark {
            if !state.copy.note(mark) {
                if let Some(node) = self.node() {
                    node.keeping().origins_refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if state.keeper.is_none() {
            self.held.advance(id);
            return;
        }
        let Some(node) = self.node() else {
            self.held.advance(id);
            return;
        };
        let frame = Frame::Record {
            id: state.copy.id.clone(),
            seq: id,
            payload: 0,
            mark: mark.cloned(),
        };
        self.send(&node, &mut state, frame, Some(record));
    }

    fn acked(&self, seq: u64) {
        let mut state = self.state.lock();
        state.copy.drop_acked(seq, false);
        if let Some(node) = self.node() {
            let frame = Frame::Acked {
                id: state.copy.id.clone(),
                seq,
            };
            self.send(&node, &mut state, frame, None);
        }
    }

    fn received(&self, seq: u64) {
        let mut state = self.state.lock();
        state.copy.received = state.copy.received.max(seq);
        let node = match self.node() {
            Some(node) if state.keeper.is_some() => node,
            _ => {
                self.held.advance_receipts(seq);
                return;
            }
        };
        let frame = Frame::Received {
            id: state.copy.id.clone(),
            seq,
        };
        self.send(&node, &mut state, frame, None);
    }

    fn group(&self, group: &str, user: bool, joined: bool) {
        let mut state = self.state.lock();
        if state.ended {
            return;
        }
        if joined {
            state.copy.groups.insert((group.to_owned(), user));
        } else {
            state.copy.groups.remove(&(group.to_owned(), user));
            state.copy.left(&(group.to_owned(), user));
        }
        if let Some(node) = self.node() {
            let frame = Frame::Group {
                id: state.copy.id.clone(),
                group: group.to_owned(),
                user,
                joined,
            };
            self.send(&node, &mut state, frame, None);
        }
    }

    fn ended(&self) {
        let mut state = self.state.lock();
        if state.ended {
            return;
        }
        state.ended = true;
        let id = state.copy.id.clone();
        tracing::debug!(%id, keeper = ?state.keeper, "a kept connection ended here, or moved");
        if let Some(node) = self.node() {
            node.keeping().sinks.lock().remove(&id);
            if let Some(keeper) = state.keeper.take() {
                node.keeping().queue(&keeper, Frame::Ended { id: id.clone(), below: None }, None);
            }
            for former in std::mem::take(&mut state.formers) {
                node.keeping().queue(&former, Frame::Ended { id: id.clone(), below: None }, None);
            }
        }
    }

    fn held(&self) -> &Held {
        &self.held
    }

    fn epoch(&self) -> u64 {
        self.state.lock().copy.epoch
    }

    fn last_marks(&self) -> LastMarks {
        let state = self.state.lock();
        LastMarks {
            broadcasts: state.copy.broadcasts.clone(),
            directs: state.copy.directs.clone(),
        }
    }

    /// Asks its keeper, the keepers it left and every live peer: the one that took it over need not be its keeper
    /// now (while its server was cut off, the copy may have gone to another keeper, a peer may have come back
    /// into its view before the keeper that took it over did, and the keeper it left may be back).
    fn claim(&self) -> oneshot::Receiver<bool> {
        let (answer, answered) = oneshot::channel();
        let mut state = self.state.lock();
        let node = match self.node() {
            Some(node) if state.keeper.is_some() || !state.formers.is_empty() => node,
            _ => {
                let _ = answer.send(false);
                return answered;
            }
        };
        // Not incarnations restarted since: they hold nothing and never answer, and the claim would wait for them
        // until `CLAIM_WAIT` passed (a keeper left during its drain, say).
        let router = node.router();
        let restarted = |peer: &NodeId| {
            router
                .live_incarnation(&peer.name)
                .is_some_and(|live| live.generation > peer.generation)
        };
        let mut asked: Vec<NodeId> = state
            .keeper
            .iter()
            .chain(&state.formers)
            .filter(|peer| !restarted(peer))
            .cloned()
            .collect();
        for peer in router.peer_incarnations() {
            if !asked.contains(&peer) {
                asked.push(peer);
            }
        }
        asked.retain(|peer| node.keeping().queue(peer, state.claim_frame(), None));
        if asked.is_empty() {
            let _ = answer.send(false);
        } else {
            state.claim = Some(PendingClaim { answer, waiting: asked });
        }
        answered
    }
}
