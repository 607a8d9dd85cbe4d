//! The server's side of keeping: what one stateful connection copies to its keeper ([`Keeper`], called by the
//! connection task), and what the server does with the keeper's answers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use crate::node::{Node, NodeInner};
use super::wire::{Copy, Frame, Groups};
use crate::cluster::NodeId;
use crate::connection::keeper::{Held, Keeper};
use crate::connection::{ConnectionId, RequestInfo, SendMark};
use crate::protocol::Protocol;

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
    ended: bool,
    copy: Copy,
    /// Waits for the keeper's answer to a claim ([`Keeper::claim`]).
    claim: Option<oneshot::Sender<bool>>,
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
                ended: false,
                copy: Copy {
                    id,
                    path: path.to_owned(),
                    token: token.into(),
                    home,
                    protocol: String::new(),
                    user: request.user.clone(),
                    claims: request.claims.clone(),
                    query: request.query.clone(),
                    headers: request.headers.clone(),
                    unacked: VecDeque::new(),
                    last: 0,
                    received: 0,
                    groups: Groups::default(),
                    marks: BTreeMap::new(),
                    got: BTreeMap::new(),
                    broadcasts: BTreeMap::new(),
                    directs: BTreeMap::new(),
                    since: None,
                    bytes: 0,
                },
                claim: None,
            }),
        })
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

    /// Picks a keeper (not `not`) and sends it the whole copy; with nobody to keep it, every record is held.
    fn open(&self, node: &Node, state: &mut SinkState, not: Option<&NodeId>) {
        let peers: Vec<NodeId> = node
            .router()
            .peer_incarnations()
            .into_iter()
            .filter(|peer| Some(peer) != not)
            .collect();
        state.keeper = crate::cluster::owner(state.copy.id.as_str().as_bytes(), &peers).cloned();
        let Some(keeper) = state.keeper.clone() else {
            self.run_unkept(state);
            return;
        };
        if !node.keeping().queue(&keeper, Frame::Open(Box::new(state.copy.clone())), None) {
            node.keeping().refused.fetch_add(1, Ordering::Relaxed);
            self.run_unkept(state);
        }
    }

    /// Nobody keeps the connection: unkept rather than stalled, its records are written as if alone.
    fn run_unkept(&self, state: &mut SinkState) {
        state.keeper = None;
        self.held.advance(state.copy.last);
    }

    pub(super) fn held_by(&self, from: &NodeId, seq: u64) {
        let state = self.state.lock();
        if state.keeper.as_ref() == Some(from) {
            self.held.advance(seq);
        }
    }

    /// The hub path of the connection.
    pub(super) fn path(&self) -> String {
        self.state.lock().copy.path.clone()
    }

    pub(super) fn refused_by(&self, from: &NodeId) {
        let mut state = self.state.lock();
        if state.keeper.as_ref() == Some(from) {
            self.run_unkept(&mut state);
        }
    }

    /// A keeper answered a claim: it took the connection over (`taken`), or not.
    pub(super) fn claim_answered(&self, taken: bool) {
        if let Some(answer) = self.state.lock().claim.take() {
            let _ = answer.send(taken);
        }
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
            state.copy.note(mark);
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
        state.copy.received = seq;
        if let Some(node) = self.node() {
            let frame = Frame::Received {
                id: state.copy.id.clone(),
                seq,
            };
            self.send(&node, &mut state, frame, None);
        }
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
        if let Some(node) = self.node() {
            node.keeping().sinks.lock().remove(&id);
            if let Some(keeper) = state.keeper.take() {
                node.keeping().queue(&keeper, Frame::Ended { id }, None);
            }
        }
    }

    fn held(&self) -> &Held {
        &self.held
    }

    fn claim(&self) -> oneshot::Receiver<bool> {
        let (answer, answered) = oneshot::channel();
        let mut state = self.state.lock();
        let (Some(node), Some(keeper)) = (self.node(), state.keeper.clone()) else {
            let _ = answer.send(false);
            return answered;
        };
        let frame = Frame::Claim {
            id: state.copy.id.clone(),
            token: state.copy.token.to_string(),
        };
        if node.keeping().queue(&keeper, frame, None) {
            state.claim = Some(answer);
        } else {
            let _ = answer.send(false);
        }
        answered
    }
}
