//! Keeping stateful WebSocket connections alive across the death of the node that runs them (docs/semantics.md,
//! "A node's death and its stateful connections").
//!
//! Each stateful WebSocket connection a node runs (its *server*) has a *keeper*: the live peer that rendezvous
//! on its id picks. The server copies to the keeper, over the cluster link, what a resume needs: its token and
//! request, its protocol, the records the client has not acknowledged (each before it is written to the client:
//! `src/connection/keeper.rs`), the client's records it acknowledged, and its groups (before a join is confirmed).
//! When the keeper's view loses the server's incarnation, the keeper starts the connection from its copy, as a
//! moved connection is started (`super::moving`), joins it to its groups, tells the token's home where it runs,
//! and waits for the client's reconnect, which any node passes on to it (`super::websocket`, `super::relay`).
//! A reconnect that reaches a keeper before the server is declared dead waits for that (at most [`ADOPT_WAIT`]).
//! A server that comes back (it was frozen or cut off) and learns that its keeper took a connection over drops it
//! and leaves the home a record of where it runs (`runs_at_keeper`).
//!
//! When the keeper leaves, the server picks another and sends it the whole copy. A connection that moved (a drain)
//! or that its keeper took over is kept anew where it runs now (`KeepSink::moved`), its copies numbered on from the
//! last ([`Copy::epoch`]).
//!
//! Bounds: a node keeps at most [`MAX_KEPT`] connections (an open beyond it is refused, and the server runs the
//! connection unkept); a copy holds at most [`MAX_KEPT_BYTES`] of records (beyond it, it is dropped and the server
//! told). Frames travel as tunnel frames (one-way, in link order, under the links' credit window); a frame that
//! cannot be queued makes the server send the whole copy to a keeper again.
//!
//! Files: this one (the node's registry, the keeper's side, the take-over), `keeping/wire.rs` (the copy, the
//! frames, the per-peer outboxes and their flusher), `keeping/sink.rs` (the server's side of one connection).

#[cfg(test)]
mod keep_tests;
mod sink;
mod wire;

pub(crate) use sink::KeepSink;
pub(crate) use wire::{flusher, OUTBOX_CAP};
use wire::{Batch, Copy, Frame, Outbox};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use actix_web::http::StatusCode;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::super::Node;
use super::endpoint::{Active, HubEndpoint};
use crate::transport::TransportKind;
use crate::cluster::NodeId;
use crate::connection::keeper::{Keeper, LastMarks};
use crate::connection::moving::MovedState;
use crate::connection::reconnect::ReceiveState;
use crate::connection::{ConnectionId, LastDirect, RequestInfo};
use crate::mesh::GroupKey;

/// The most connections one node keeps for others.
pub const MAX_KEPT: usize = 262_144;
/// The most bytes of unacknowledged records one kept copy holds (the server's own cap is
/// `Limits::reconnect_buffer_bytes`, 100,000 by default; one record beyond it is always taken).
pub const MAX_KEPT_BYTES: usize = 4 << 20;
/// How long a reconnect that reaches a connection's keeper waits for the keeper to take the connection over.
pub const ADOPT_WAIT: Duration = Duration::from_secs(10);
/// How long after a peer left its view a node waits before it takes the peer's kept connections over (and moves
/// the copies it kept): failure detection declares peers cut off together some hundred milliseconds apart, and a
/// node must see whether most of the cluster left with it (then it is the one cut off) before it acts.
pub const TAKE_OVER_SETTLE: Duration = Duration::from_secs(1);

/// How long after a stall of its own a node does not take connections over (`Router::stalled_within`): while it did
/// not run its failure detector declared its peers dead, and it has them back within a gossip round or two. Longer
/// (it was 30 s, the memory of a stall's notices) put off the take-over of a server killed a few seconds after its
/// keeper's short freeze for as long, past the group history its clients' resumes need.
pub const TAKE_OVER_STALL_MEMORY: Duration = Duration::from_secs(5);

/// How often, and how long at most, a node that put a take-over off looks again whether it may act: a stall is
/// remembered for [`TAKE_OVER_STALL_MEMORY`], and no peer may join meanwhile.
const PUT_OFF_RETRY: Duration = Duration::from_millis(500);
const PUT_OFF_RETRY_FOR: Duration = Duration::from_secs(45);

/// Why a connection whose keeper took it over ends on its old server.
const TAKEN_OVER: &str = "this connection's keeper took it over while this node was cut off";

/// Why a connection taken over from a stale copy ends here (another keeper held a fresher one).
const STALE_TAKE_OVER: &str = "this node took the connection over from a stale copy; reconnect to resume it";

/// How long a keeper remembers a take-over (its copy's number), to compare with another keeper's of the same
/// connection (`Frame::Took`): both act within a second of the server's departure from their views, or when a
/// cut-off one is back in view, which it announces again then.
const TOOK_MEMORY: Duration = Duration::from_secs(60);

/// When a node tells a peer back in view again what it may hold stale (`Keeping::tell_joined`), after the first.
const TELL_AGAIN: [Duration; 2] = [Duration::from_millis(500), Duration::from_secs(2)];

/// How long a keeper waits at most for its live peers' answers (`Frame::Known`) before it starts the connections
/// it takes over: a peer whose link is down does not answer. A round trip on the links, as a rule.
const TOOK_WAIT: Duration = Duration::from_millis(300);

/// The first byte of a tunnel frame that carries a keeping frame (`super::tunnel` frames start with 0).
pub(super) const KEEP_FRAME: u8 = 1;

/// A node's keeping: its connections kept elsewhere (by id), and the copies it keeps for others.
#[derive(Default)]
pub(crate) struct Keeping {
    sinks: Mutex<HashMap<ConnectionId, Weak<KeepSink>>>,
    kept: Mutex<Kept>,
    outboxes: Mutex<HashMap<NodeId, Outbox>>,
    /// Wakes the flusher.
    wake: Arc<tokio::sync::Notify>,
    /// Connections this node took over after their server's death.
    adopted: AtomicU64,
    /// Opens refused, copies dropped as too large, and copies whose take-over failed.
    refused: AtomicU64,
    /// Copies dropped, and take-overs given up or undone, because another keeper held a fresher copy
    /// (`Frame::Took`).
    stale: AtomicU64,
    /// Records whose origin a copy (here, or kept here) could not note, its group's list being full
    /// (`wire::ORIGINS_PER_GROUP`).
    origins_refused: AtomicU64,
    /// Take-overs started without comparing copies with the peers, [`MAX_KEPT`] others being remembered already.
    took_unchecked: AtomicU64,
    /// Wakes take-overs waiting for their peers' answers (`Frame::Known`).
    answered: Arc<tokio::sync::Notify>,
    /// A peer left while this node saw a minority of the cluster or had stalled: what it put off waits for a join
    /// (`Keeping::peer_joined`), which otherwise has nothing to look at, or for the retry that runs meanwhile.
    put_off: AtomicBool,
    /// The retry of what was put off runs ([`PUT_OFF_RETRY`]).
    retrying: AtomicBool,
    /// What was put off waits for the view to settle before it happens (`Keeping::retry_now`).
    settling: AtomicBool,
}

#[derive(Default)]
struct Kept {
    /// Boxed: the table's spare slots then cost a pointer each, not a copy's size.
    copies: HashMap<ConnectionId, (NodeId, Box<Copy>)>,
    /// By token, shared with the copy's.
    tokens: HashMap<Arc<str>, ConnectionId>,
    /// Tokens of copies being taken over now (out of `copies`, not yet in their hub's table).
    taking_over: HashSet<String>,
    /// The take-overs of the last [`TOOK_MEMORY`], at most [`MAX_KEPT`] (`Kept::forget_old_took`).
    took: HashMap<ConnectionId, TookHere>,
}

/// A take-over here, remembered to compare with another keeper's of the same connection.
struct TookHere {
    server: NodeId,
    epoch: u64,
    path: String,
    at: Instant,
    /// A fresher copy's keeper took it over too, or a peer holds a fresher copy: not started, or undone once
    /// started.
    superseded: bool,
    /// The peers asked (`Frame::Took`) that have not answered yet.
    waiting: HashSet<NodeId>,
    /// Installed here (false while the take-over runs).
    installed: bool,
    /// The connection's home, when it was out of this node's view at the take-over (or did not answer): told
    /// when it is back ([`Keeping::tell_joined`]), else it keeps passing the connection's sends on to the server it
    /// knew.
    untold: Option<UntoldHome>,
}

/// A home not told yet that a connection it negotiated runs here, and the connection's token.
struct UntoldHome {
    home: NodeId,
    token: Arc<str>,
}

impl Kept {
    /// Forgets the take-overs older than [`TOOK_MEMORY`]; false if [`MAX_KEPT`] younger ones are still remembered
    /// (a take-over beyond them starts without comparing copies with the peers, counted in `took_unchecked`).
    fn forget_old_took(&mut self) -> bool {
        self.took.retain(|_, took| took.at.elapsed() < TOOK_MEMORY);
        self.took.len() < MAX_KEPT
    }

    fn remove(&mut self, id: &ConnectionId) -> Option<(NodeId, Box<Copy>)> {
        let removed = self.copies.remove(id)?;
        self.tokens.remove(&*removed.1.token);
        Some(removed)
    }
}

impl Keeping {
    /// Copies kept here for other nodes.
    pub(crate) fn kept_count(&self) -> usize {
        self.kept.lock().copies.len()
    }

    /// Connections of this node kept elsewhere.
    pub(crate) fn keeping_count(&self) -> usize {
        self.sinks.lock().len()
    }

    /// Connections taken over after their server's death.
    pub(crate) fn adopted(&self) -> u64 {
        self.adopted.load(Ordering::Relaxed)
    }

    /// Frames waiting in the outboxes for their peers.
    pub(crate) fn outbox_frames(&self) -> usize {
        self.outboxes.lock().values().map(|outbox| outbox.batch.frames.len()).sum()
    }

    /// Copies refused or dropped (bounds) and take-overs that failed.
    pub(crate) fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Stale copies dropped and take-overs of stale copies undone.
    pub(crate) fn stale(&self) -> u64 {
        self.stale.load(Ordering::Relaxed)
    }

    /// Take-overs remembered to compare with other keepers' (`Kept::took`), and those started unchecked past its
    /// bound.
    pub(crate) fn took_counts(&self) -> (usize, u64) {
        (self.kept.lock().took.len(), self.took_unchecked.load(Ordering::Relaxed))
    }

    /// Records whose origin a copy could not note (`wire::ORIGINS_PER_GROUP`).
    pub(crate) fn origins_refused(&self) -> u64 {
        self.origins_refused.load(Ordering::Relaxed)
    }

    /// A keeping frame from `from` (the tunnel frame after its first byte).
    pub(crate) fn on_frame(&self, node: &Node, from: &NodeId, payload: &[u8]) {
        let batch: Batch = match rmp_serde::from_slice(payload) {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(parent: node.span(), %error, %from, "dropped an undecodable keeping frame");
                return;
            }
        };
        let Batch { payloads, frames } = batch;
        // One Held per connection for the whole batch: its last record; and one ReceivedHeld.
        let mut held: HashMap<ConnectionId, u64> = HashMap::new();
        let mut receipts: HashMap<ConnectionId, u64> = HashMap::new();
        for frame in frames {
            match self.on_one(node, from, frame, &payloads) {
                Some(Frame::Held { id, seq }) => {
                    let last = held.entry(id).or_insert(seq);
                    *last = (*last).max(seq);
                }
                Some(Frame::ReceivedHeld { id, seq }) => {
                    let last = receipts.entry(id).or_insert(seq);
                    *last = (*last).max(seq);
                }
                // A full outbox: the server's records wait until it sends its whole copy again (or runs unkept,
                // when this keeper leaves its view).
                Some(answer) => {
                    self.queue(from, answer, None);
                }
                None => {}
            }
        }
        for (id, seq) in held {
            self.queue(from, Frame::Held { id, seq }, None);
        }
        // A full outbox: the client's records wait for their receipt until `RECEIPT_WAIT` (or the whole copy, whose
        // Held covers the receipts it carried).
        for (id, seq) in receipts {
            self.queue(from, Frame::ReceivedHeld { id, seq }, None);
        }
    }

    /// The flusher's wake-up.
    pub(crate) fn wake(&self) -> Arc<tokio::sync::Notify> {
        self.wake.clone()
    }

    /// Queues `frame` for `peer` (`payload`: a record's bytes); false if `peer`'s outbox is full.
    fn queue(&self, peer: &NodeId, frame: Frame, payload: Option<&Bytes>) -> bool {
        let mut outboxes = self.outboxes.lock();
        let outbox = outboxes.entry(peer.clone()).or_default();
        if outbox.batch.frames.len() >= OUTBOX_CAP {
            return false;
        }
        let frame = match (frame, payload) {
            (Frame::Record { id, seq, mark, .. }, Some(bytes)) => {
                let key = (bytes.as_ptr() as usize, bytes.len());
                let next = u32::try_from(outbox.batch.payloads.len()).unwrap_or(u32::MAX);
                let payload = *outbox.index.entry(key).or_insert_with(|| {
                    outbox.batch.payloads.push(bytes.clone());
                    next
                });
                Frame::Record { id, seq, payload, mark }
            }
            (frame, _) => frame,
        };
        outbox.batch.frames.push(frame);
        drop(outboxes);
        self.wake.notify_one();
        true
    }

    /// One frame from `from`; the keeper's answer to send back, if any.
    fn on_one(&self, node: &Node, from: &NodeId, frame: Frame, payloads: &[Bytes]) -> Option<Frame> {
        match frame {
            Frame::Held { id, seq } => {
                if let Some(sink) = self.sink(&id) {
                    sink.held_by(from, seq);
                }
            }
            Frame::ReceivedHeld { id, seq } => {
                if let Some(sink) = self.sink(&id) {
                    sink.receipts_held_by(from, seq);
                }
            }
            Frame::Refused { id, leaving } => {
                if let Some(sink) = self.sink(&id) {
                    sink.refused_by(node, from, leaving);
                }
            }
            // A draining node keeps no new copy: it leaves soon, and the copy would have to go again (gossip may
            // not have told the server yet that it drains).
            Frame::Open(copy)
                if matches!(
                    node.lifecycle_status(),
                    crate::cluster::NodeStatus::Draining | crate::cluster::NodeStatus::Left
                ) =>
            {
                return Some(Frame::Refused { id: copy.id.clone(), leaving: true });
            }
            // From any keeper it had: one that took it over runs it now, whichever keeps it since (a server
            // declared dead may have sent its copy to another meanwhile). A keeper of a stale copy asks the others
            // before it starts the connection (`Frame::Took`), so it does not take over one its server still runs.
            Frame::TakenOver { id } => {
                if let Some(sink) = self.sink(&id) {
                    tracing::info!(parent: node.span(), %id, keeper = %from, "a connection's keeper took it over: dropping it here");
                    sink.claim_answered(from, true);
                    if let Some(endpoint) = node.endpoint(&sink.path()).cloned() {
                        runs_at_keeper(node, &endpoint, &sink.token(), &id, from);
                        endpoint.context.drop_for_keeper(&id, TAKEN_OVER);
                    }
                }
            }
            Frame::Released { id } => {
                if let Some(sink) = self.sink(&id) {
                    tracing::debug!(parent: node.span(), %id, peer = %from, "a peer asked did not take the connection over");
                    sink.claim_answered(from, false);
                }
            }
            Frame::Claim { id, token } => return Some(self.claimed(node, from, &id, &token)),
            Frame::Took { id, server, epoch } => return Some(self.took_elsewhere(node, from, id, &server, epoch)),
            Frame::Known { id, epoch } => self.known(node, from, &id, epoch),
            frame => {
                let mut follows = Vec::new();
                let answer = self.keep(from, frame, payloads, &mut follows);
                for follow in follows {
                    follow.apply(node);
                }
                return answer;
            }
        }
        None
    }

    /// Server `from`, declared dead by most of the cluster and back, asks whether this node took connection `id`
    /// over: it did when it is taking it over or runs it; else it gives its copy up (and will not take it over),
    /// and the server closes it.
    fn claimed(&self, node: &Node, from: &NodeId, id: &ConnectionId, token: &str) -> Frame {
        let released = {
            let mut kept = self.kept.lock();
            if kept.taking_over.contains(token) {
                return Frame::TakenOver { id: id.clone() };
            }
            if kept.copies.get(id).is_some_and(|(server, _)| server == from) {
                kept.remove(id)
            } else {
                None
            }
        };
        match released {
            Some((_, copy)) => {
                Follow::all(&copy, false).apply(node);
                tracing::info!(parent: node.span(), %id, server = %from, "a server declared dead is back: gave its kept connection back");
                Frame::Released { id: id.clone() }
            }
            None if node.endpoints().any(|endpoint| runs_here(endpoint, token)) => Frame::TakenOver { id: id.clone() },
            None => Frame::Released { id: id.clone() },
        }
    }

    /// Keeper `from` takes over connection `id` of `server` from its copy number `epoch` (`Frame::Took`): an
    /// older copy here is dropped, or an older take-over here given up or undone. The answer: the number of the
    /// copy here (`Frame::Known`).
    fn took_elsewhere(&self, node: &Node, from: &NodeId, id: ConnectionId, server: &NodeId, epoch: u64) -> Frame {
        let own = self.own_epoch(&id);
        let mut kept = self.kept.lock();
        // Of any server: a connection's copies are numbered on across its moves and take-overs
        // (`MovedState::keep_epoch`), so a copy kept for the server it moved to outranks one of the server it left.
        let mine = match kept.copies.get(&id) {
            Some((_, copy)) => Some(copy.epoch),
            None => kept.took.get(&id).map(|took| took.epoch.max(own)),
        };
        let Some(mine) = mine.filter(|mine| *mine < epoch) else {
            return Frame::Known { epoch: mine.unwrap_or(0), id };
        };
        self.stale.fetch_add(1, Ordering::Relaxed);
        if kept.copies.contains_key(&id) {
            let removed = kept.remove(&id);
            drop(kept);
            if let Some((_, copy)) = removed {
                Follow::all(&copy, false).apply(node);
            }
            tracing::info!(parent: node.span(), %id, %server, keeper = %from, mine, theirs = epoch, "another keeper takes over from a fresher copy: dropped the stale one kept here");
            return Frame::Known { id, epoch: 0 };
        }
        let undo = kept.took.get_mut(&id).and_then(|took| {
            took.superseded = true;
            took.installed.then(|| took.path.clone())
        });
        drop(kept);
        self.answered.notify_waiters();
        tracing::info!(parent: node.span(), %id, %server, keeper = %from, mine, theirs = epoch, "another keeper takes over from a fresher copy: giving up the take-over of the stale one here");
        if let Some(endpoint) = undo.and_then(|path| node.endpoint(&path).cloned()) {
            endpoint.context.drop_for_keeper(&id, STALE_TAKE_OVER);
        }
        Frame::Known { id, epoch: mine }
    }

    /// Peer `from` answered a take-over's question (`Frame::Known`): it holds copy number `epoch` of `id`. A
    /// fresher one than the copy taken over here gives the take-over up (or undoes it).
    fn known(&self, node: &Node, from: &NodeId, id: &ConnectionId, epoch: u64) {
        let own = self.own_epoch(id);
        let undo = {
            let mut kept = self.kept.lock();
            let Some(took) = kept.took.get_mut(id) else {
                return;
            };
            took.waiting.remove(from);
            if epoch > took.epoch.max(own) && !took.superseded {
                took.superseded = true;
                self.stale.fetch_add(1, Ordering::Relaxed);
                tracing::info!(parent: node.span(), %id, peer = %from, mine = took.epoch, theirs = epoch, "a peer holds a fresher copy of a connection taken over here: giving the take-over up");
                took.installed.then(|| took.path.clone())
            } else {
                None
            }
        };
        self.answered.notify_waiters();
        if let Some(endpoint) = undo.and_then(|path| node.endpoint(&path).cloned()) {
            endpoint.context.drop_for_keeper(id, STALE_TAKE_OVER);
        }
    }

    fn sink(&self, id: &ConnectionId) -> Option<Arc<KeepSink>> {
        self.sinks.lock().get(id).and_then(Weak::upgrade)
    }

    /// The number of the latest copy this node sent of connection `id` as its server (0 if it sends none): a
    /// connection taken over here is kept anew, its copies numbered on from the one taken over, so a peer holding
    /// one of those holds this node's own copy, not a fresher one of another server's.
    fn own_epoch(&self, id: &ConnectionId) -> u64 {
        self.sink(id).map_or(0, |sink| sink.epoch())
    }

    /// The keeper's side of a frame from server `from`; the answer, if any.
    /// `follows`: the groups to follow or stop following for kept connections, once the registry is let go.
    fn keep(&self, from: &NodeId, frame: Frame, payloads: &[Bytes], follows: &mut Vec<Follow>) -> Option<Frame> {
        let mut kept = self.kept.lock();
        let refuse = |id: ConnectionId| {
            self.refused.fetch_add(1, Ordering::Relaxed);
            Some(Frame::Refused { id, leaving: false })
        };
        match frame {
            Frame::Open(copy) => {
                let id = copy.id.clone();
                // Another server's copy is replaced only by a fresher one (a move's, a take-over's kept anew). One
                // no fresher comes from a server cut off while its keeper took the connection over (held in its
                // frozen link until the thaw): replacing the live server's copy with it left the live server's
                // records never held here, so never written to its client.
                if kept
                    .copies
                    .get(&id)
                    .is_some_and(|(server, before)| server != from && before.epoch >= copy.epoch)
                {
                    self.stale.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%from, %id, epoch = copy.epoch, "a copy no fresher than another server's refused");
                    return Some(Frame::Refused { id, leaving: false });
                }
                if kept.copies.len() >= MAX_KEPT && !kept.copies.contains_key(&id) {
                    return refuse(id);
                }
                let last = copy.last;
                let mut copy = copy;
                copy.bytes = copy.unacked.iter().map(|(_, record)| record.len()).sum();
                let before = kept.remove(&id).map(|(_, before)| before);
                // A copy sent again (its server lost the keeping link a while) follows what changed.
                copy.since = Some(before.as_ref().and_then(|before| before.since).unwrap_or_else(Instant::now));
                let (new, before) = match before {
                    Some(before) => (false, before.groups),
                    None => (true, Default::default()),
                };
                follows.push(Follow::of(&copy, before.difference(&copy.groups).cloned().collect(), false));
                let mut joined = Follow::of(&copy, copy.groups.difference(&before).cloned().collect(), true);
                if new {
                    joined.broadcasts = Some(true);
                }
                follows.push(joined);
                kept.tokens.insert(copy.token.clone(), id.clone());
                kept.copies.insert(id.clone(), (from.clone(), copy));
                Some(Frame::Held { id, seq: last })
            }
            Frame::Record { id, seq, payload, mark } => {
                let (server, copy) = kept.copies.get_mut(&id)?;
                if server != from {
                    return None;
                }
                let record = payloads.get(payload as usize)?.clone();
                if seq > copy.last + 1 {
                    // Answered as held all the same (a whole copy that follows fills the gap); a lead for chaos
                    // defect 29 (`tests/cli/chaos/README.md`): its server writes what this copy lacks.
                    tracing::debug!(%from, %id, seq, last = copy.last, "a kept copy got a record past a gap");
                }
                if seq == copy.last + 1 {
                    copy.last = seq;
                    copy.bytes += record.len();
                    copy.unacked.push_back((seq, record));
                    if let Some(mark) = mark {
                        // Only for a group the copy lists: a mark of one it left would rejoin nothing.
                        let listed = copy.groups.contains(&(mark.group.to_string(), mark.user));
                        if !(mark.broadcast || mark.direct || listed) {
                            tracing::debug!(%from, %id, seq, group = %mark.group, "a kept copy got a record of a group it does not list: its mark not noted");
                        }
                        if (mark.broadcast || mark.direct || listed) && !copy.note(&mark) {
                            self.origins_refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if copy.bytes > MAX_KEPT_BYTES && copy.unacked.len() > 1 {
                    if let Some((_, copy)) = kept.remove(&id) {
                        follows.push(Follow::all(&copy, false));
                    }
                    return refuse(id);
                }
                Some(Frame::Held { id, seq })
            }
            Frame::Acked { id, seq } => {
                let (server, copy) = kept.copies.get_mut(&id)?;
                if server == from {
                    copy.drop_acked(seq, true);
                }
                None
            }
            Frame::Received { id, seq } => {
                let (server, copy) = kept.copies.get_mut(&id)?;
                if server != from {
                    return None;
                }
                copy.received = copy.received.max(seq);
                Some(Frame::ReceivedHeld { id, seq })
            }
            Frame::Group {
                id,
                group,
                user,
                joined,
            } => {
                let (server, copy) = kept.copies.get_mut(&id)?;
                if server == from {
                    let entry = (group, user);
                    let changed = if joined {
                        copy.groups.insert(entry.clone())
                    } else {
                        copy.left(&entry);
                        copy.groups.remove(&entry)
                    };
                    if changed {
                        follows.push(Follow::of(copy, vec![entry], joined));
                    }
                }
                None
            }
            Frame::Ended { id, below } => {
                let ended = |copy: &Copy| below.is_none_or(|below| copy.epoch < below);
                if kept.copies.get(&id).is_some_and(|(server, copy)| server == from && ended(copy)) {
                    if let Some((_, copy)) = kept.remove(&id) {
                        follows.push(Follow::all(&copy, false));
                    }
                }
                None
            }
            Frame::Held { .. }
            | Frame::ReceivedHeld { .. }
            | Frame::Refused { .. }
            | Frame::TakenOver { .. }
            | Frame::Claim { .. }
            | Frame::Released { .. }
            | Frame::Took { .. }
            | Frame::Known { .. } => None,
        }
    }

    /// Incarnation `peer` left this node's view: the connections it kept for this node go to another keeper, and
    /// those it ran that this node kept are taken over here, once the view settled ([`TAKE_OVER_SETTLE`]) and only
    /// while this node sees most of the cluster and was not stalled (else when it does again:
    /// [`Keeping::peer_joined`]).
    pub(crate) fn peer_left(&self, node: &Node, peer: &NodeId) {
        let (node, peer) = (node.clone(), peer.clone());
        tokio::spawn(async move {
            tokio::time::sleep(TAKE_OVER_SETTLE).await;
            let router = node.router();
            if !router.has_left(&peer) {
                // Back (the same incarnation): it was alive all along, its connections and copies too.
                return;
            }
            let put_off = || router.stalled_within(TAKE_OVER_STALL_MEMORY) || router.sees_minority();
            if put_off() {
                // This node was stopped or starved, or most of the cluster left its view (it is cut off, by an
                // inbound-only partition say): it declared its peers dead because it did not hear them, and they
                // may well run their connections still, or its own by now. Nothing is taken over and no copy moves
                // (its own connections' records wait: none may be written that a keeper lacks) until it sees most
                // of the cluster again, or learns it was declared dead and drops its connections
                // (`ConnectionHandle::close_cut_off`).
                node.keeping().put_off.store(true, Ordering::SeqCst);
                // Checked again after the mark: a join in between found nothing put off.
                if put_off() {
                    tracing::info!(parent: node.span(), %peer, "a peer left this node's view after it stalled, or with most of the cluster: no take-over yet");
                    node.keeping().retry_put_off(&node);
                    return;
                }
            }
            node.keeping().peer_gone(&node, |gone| gone == &peer);
        });
    }

    /// Its keepers that left go to others, and the connections of servers that left are taken over here.
    fn peer_gone(&self, node: &Node, left: impl Fn(&NodeId) -> bool) {
        let sinks: Vec<Arc<KeepSink>> = self.sinks.lock().values().filter_map(Weak::upgrade).collect();
        for sink in sinks {
            sink.keeper_left_if(&left);
        }
        self.take_over(node, left);
    }

    /// A peer joined this node's view: it is told what it may hold stale ([`Keeping::tell_joined`]), and what was
    /// put off while this node saw a minority of the cluster, or had stalled, happens once the view settled if it
    /// sees most of it then, for the servers and keepers still out of its view.
    pub(crate) fn peer_joined(&self, node: &Node, peer: &NodeId) {
        self.tell_joined(node, peer);
        self.tell_untold_home(node, peer);
        self.retry_now(node);
    }

    /// Tells a peer back in view (or restarted) which connections it negotiated run here: those taken over here
    /// while it was out of view ([`TookHere::untold`]). Tried at once and twice again ([`TELL_AGAIN`]): the link
    /// may come up after the view changed.
    fn tell_untold_home(&self, node: &Node, peer: &NodeId) {
        let untold: Vec<(ConnectionId, String, Arc<str>)> = {
            let kept = self.kept.lock();
            kept.took
                .iter()
                .filter(|(_, took)| took.installed && !took.superseded)
                .filter_map(|(id, took)| {
                    let untold = took.untold.as_ref()?;
                    (untold.home.name == peer.name && untold.home.generation <= peer.generation)
                        .then(|| (id.clone(), took.path.clone(), untold.token.clone()))
                })
                .collect()
        };
        for (id, path, token) in untold {
            let Some(endpoint) = node.endpoint(&path).cloned() else {
                continue;
            };
            let (node, peer) = (node.clone(), peer.clone());
            tokio::spawn(async move {
                for wait in [Duration::ZERO].into_iter().chain(TELL_AGAIN) {
                    tokio::time::sleep(wait).await;
                    if tell_home(&node, &endpoint, &peer, &token, &id).await {
                        if let Some(took) = node.keeping().kept.lock().took.get_mut(&id) {
                            took.untold = None;
                        }
                        return;
                    }
                }
            });
        }
    }

    /// What was put off, if this node may act now, [`TAKE_OVER_SETTLE`] later, if it still may then and only for
    /// peers still gone: its connections whose keeper left get another (their records wait meanwhile), and the
    /// kept connections of servers that left are taken over. Peers come back into a view one by one: a server not
    /// back in the first moments is not gone (taking its connections over would run stale copies beside it), and
    /// a keeper not back yet may have taken one of this node's connections over while this node was cut off. A
    /// copy moved to another keeper at once released the records that waited, and the connection wrote them to
    /// its client, which the keeper that took it over then gave again from its own copy (chaos defect 37,
    /// `tests/cli/chaos/README.md`). One wait at a time.
    fn retry_now(&self, node: &Node) {
        let may_act = |node: &Node| {
            let router = node.router();
            node.keeping().put_off.load(Ordering::SeqCst)
                && !router.stalled_within(TAKE_OVER_STALL_MEMORY)
                && !router.sees_minority()
        };
        if !may_act(node) {
            return;
        }
        if self.settling.swap(true, Ordering::SeqCst) {
            return;
        }
        let node = node.clone();
        tokio::spawn(async move {
            tokio::time::sleep(TAKE_OVER_SETTLE).await;
            node.keeping().settling.store(false, Ordering::SeqCst);
            if !may_act(&node) {
                return;
            }
            node.keeping().put_off.store(false, Ordering::SeqCst);
            let router = node.router();
            node.keeping().peer_gone(&node, |peer| router.has_left(peer));
        });
    }

    /// Tells a peer back in view what it may hold stale: each copy it kept of a connection here that has another
    /// keeper since is dropped there (`Frame::Ended`), and each take-over here of the last [`TOOK_MEMORY`] is
    /// announced to it (`Frame::Took`), in case it took the same connection over from another copy while cut off.
    /// Sent at once and twice again ([`TELL_AGAIN`]): the link to a peer back in view may come up after the view
    /// changed, and a batch that finds no link is lost. Both frames change nothing the second time.
    fn tell_joined(&self, node: &Node, peer: &NodeId) {
        let sinks: Vec<Arc<KeepSink>> = self.sinks.lock().values().filter_map(Weak::upgrade).collect();
        let mut frames: Vec<Frame> = sinks.iter().filter_map(|sink| sink.former_back(peer)).collect();
        let took: Vec<(ConnectionId, NodeId, u64)> = {
            let mut kept = self.kept.lock();
            kept.forget_old_took();
            kept.took
                .iter()
                .filter(|(_, took)| !took.superseded && &took.server != peer)
                .map(|(id, took)| (id.clone(), took.server.clone(), took.epoch))
                .collect()
        };
        // Numbered as the latest copy this node sent of it since (`Keeping::own_epoch`).
        frames.extend(took.into_iter().map(|(id, server, epoch)| {
            let epoch = epoch.max(self.own_epoch(&id));
            Frame::Took { id, server, epoch }
        }));
        if frames.is_empty() {
            return;
        }
        let (node, peer) = (node.clone(), peer.clone());
        tokio::spawn(async move {
            for wait in [Duration::ZERO].into_iter().chain(TELL_AGAIN) {
                tokio::time::sleep(wait).await;
                if !node.router().is_live_incarnation(&peer.name, peer.generation) {
                    return;
                }
                for frame in &frames {
                    node.keeping().queue(&peer, frame.clone(), None);
                }
            }
        });
    }

    /// Looks again, every [`PUT_OFF_RETRY`] for at most [`PUT_OFF_RETRY_FOR`], whether what was put off may happen
    /// now (the stall is old enough, the view holds most of the cluster), as a join would ([`Keeping::peer_joined`]):
    /// a keeper that stalled lately would otherwise wait for a join that may not come. One retry at a time.
    fn retry_put_off(&self, node: &Node) {
        if self.retrying.swap(true, Ordering::SeqCst) {
            return;
        }
        let node = node.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + PUT_OFF_RETRY_FOR;
            while node.keeping().put_off.load(Ordering::SeqCst) && Instant::now() < deadline {
                tokio::time::sleep(PUT_OFF_RETRY).await;
                node.keeping().retry_now(&node);
            }
            node.keeping().retrying.store(false, Ordering::SeqCst);
        });
    }

    /// Takes over here the kept connections whose server `left` says left.
    fn take_over(&self, node: &Node, left: impl Fn(&NodeId) -> bool) {
        let peers = node.router().peer_incarnations();
        let orphans: Vec<(NodeId, Box<Copy>)> = {
            let mut kept = self.kept.lock();
            let ids: Vec<ConnectionId> = kept
                .copies
                .iter()
                .filter(|(_, (server, _))| left(server))
                .map(|(id, _)| id.clone())
                .collect();
            let orphans: Vec<(NodeId, Box<Copy>)> = ids.iter().filter_map(|id| kept.remove(id)).collect();
            let mut room = orphans.is_empty() || kept.forget_old_took();
            for (server, copy) in &orphans {
                kept.taking_over.insert(copy.token.to_string());
                room = room && kept.took.len() < MAX_KEPT;
                if !room {
                    // Bounded: started without asking the peers, as before the comparison existed.
                    self.took_unchecked.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let took = TookHere {
                    server: server.clone(),
                    epoch: copy.epoch,
                    path: copy.path.clone(),
                    at: Instant::now(),
                    superseded: false,
                    waiting: peers.iter().filter(|peer| *peer != server).cloned().collect(),
                    installed: false,
                    untold: None,
                };
                kept.took.insert(copy.id.clone(), took);
            }
            orphans
        };
        if orphans.is_empty() {
            return;
        }
        let ids: Vec<String> = orphans.iter().map(|(_, copy)| copy.id.to_string()).collect();
        tracing::info!(parent: node.span(), connections = orphans.len(), ?ids, "taking over the stateful connections of nodes that left");
        // Every live peer is asked for its copy of each (`Frame::Took`): a fresher one than this node's means this
        // node's is stale (its server left it for another keeper while it was cut off), and it is not started.
        for (server, copy) in &orphans {
            for peer in peers.iter().filter(|peer| *peer != server) {
                let frame = Frame::Took {
                    id: copy.id.clone(),
                    server: server.clone(),
                    epoch: copy.epoch,
                };
                if !self.queue(peer, frame, None) {
                    if let Some(took) = self.kept.lock().took.get_mut(&copy.id) {
                        took.waiting.remove(peer);
                    }
                }
            }
        }
        let node = node.clone();
        tokio::spawn(async move {
            node.keeping().wait_answers(&orphans).await;
            for (server, copy) in orphans {
                let superseded = node.keeping().kept.lock().took.get(&copy.id).is_some_and(|took| took.superseded);
                if superseded {
                    node.keeping().kept.lock().taking_over.remove(&*copy.token);
                    Follow::all(&copy, false).apply(&node);
                    continue;
                }
                let node = node.clone();
                tokio::spawn(async move { node.keeping().start_taken_over(&node, copy, server).await });
            }
        });
    }

    /// Waits until every peer asked answered for every copy of `orphans` (`Frame::Known`), or [`TOOK_WAIT`].
    async fn wait_answers(&self, orphans: &[(NodeId, Box<Copy>)]) {
        let deadline = Instant::now() + TOOK_WAIT;
        loop {
            let answered = self.answered.notified();
            tokio::pin!(answered);
            // Registered before the check: an answer in between wakes it.
            answered.as_mut().enable();
            let waiting = {
                let kept = self.kept.lock();
                orphans.iter().any(|(_, copy)| {
                    kept.took
                        .get(&copy.id)
                        .is_some_and(|took| !took.superseded && !took.waiting.is_empty())
                })
            };
            if !waiting || tokio::time::timeout_at(deadline, answered).await.is_err() {
                return;
            }
        }
    }

    /// Starts a kept connection here whose server left (and whose copy no peer holds fresher).
    async fn start_taken_over(&self, node: &Node, copy: Box<Copy>, server: NodeId) {
        let id = copy.id.clone();
        let token = copy.token.clone();
        let unfollow = Follow::all(&copy, false);
        let path = copy.path.clone();
        let (taken, untold) = match take_over(node, copy, &server).await {
            Ok(untold) => (Ok(()), untold),
            Err(why) => (Err(why), None),
        };
        let superseded = {
            let mut kept = self.kept.lock();
            kept.taking_over.remove(&*token);
            kept.took.get_mut(&id).is_some_and(|took| {
                took.installed = taken.is_ok();
                took.untold = untold;
                took.superseded
            })
        };
        tracing::debug!(parent: node.span(), %id, ok = taken.is_ok(), superseded, "take-over done");
        match taken {
            Ok(()) if superseded => {
                // A fresher copy's keeper spoke up meanwhile (`Keeping::took_elsewhere`, `Keeping::known`).
                if let Some(endpoint) = node.endpoint(&path) {
                    endpoint.context.drop_for_keeper(&id, STALE_TAKE_OVER);
                }
            }
            Ok(()) => {
                self.adopted.fetch_add(1, Ordering::Relaxed);
            }
            Err(why) => {
                unfollow.apply(node);
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::info!(parent: node.span(), %id, %why, "a kept connection could not be taken over");
            }
        }
    }

    /// Whether this node keeps `token`'s connection for a server that has not been declared dead yet: then a
    /// reconnect that reaches it waits ([`Keeping::wait_taken_over`]).
    pub(crate) fn keeps(&self, token: &str) -> bool {
        let kept = self.kept.lock();
        kept.tokens.contains_key(token) || kept.taking_over.contains(token)
    }

    /// The server of the connection whose copy this node keeps for `token`, if that server is live in this node's
    /// view: a reconnect that reaches this keeper asks it first (the client's socket may have dropped with the
    /// server alive), and waits for a take-over only if that fails.
    pub(crate) fn live_server_of(&self, node: &Node, token: &str) -> Option<NodeId> {
        let server = {
            let kept = self.kept.lock();
            let id = kept.tokens.get(token)?;
            kept.copies.get(id)?.0.clone()
        };
        node.router()
            .is_live_incarnation(&server.name, server.generation)
            .then_some(server)
    }

    /// Waits (at most [`ADOPT_WAIT`]) until this node neither keeps `token`'s connection nor is taking it over (at
    /// once if it does neither): whether the connection runs here (taken over here, now or before).
    pub(crate) async fn wait_taken_over(&self, endpoint: &HubEndpoint, token: &str) -> bool {
        let deadline = Instant::now() + ADOPT_WAIT;
        // Bounded by the deadline; the take-over itself follows the failure detector (about 2 s).
        while self.keeps(token) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        !self.keeps(token) && runs_here(endpoint, token)
    }

    /// Runs `asked` (a request to the live server of a connection this node keeps) while waiting for its take-over
    /// here, since that server may have died and not be declared dead yet. One wait, one deadline (`ADOPT_WAIT`):
    /// an answer that `resumed` the connection ends it at once; any other answer (a 404 may come from a server that
    /// died, its link down before it was declared dead) waits for the take-over until the deadline. `None` if this
    /// node took the connection over first, else what `asked` gave.
    pub(crate) async fn unless_taken_over<T>(
        &self,
        endpoint: &HubEndpoint,
        token: &str,
        asked: impl std::future::Future<Output = T>,
        resumed: impl Fn(&T) -> bool,
    ) -> Option<T> {
        let taken_over = self.wait_taken_over(endpoint, token);
        tokio::pin!(taken_over, asked);
        let mut answer = None;
        let mut waiting = true;
        // At most two rounds: the answer comes once and the wait ends once.
        loop {
            tokio::select! {
                got = &mut asked, if answer.is_none() => {
                    if !waiting || resumed(&got) {
                        return Some(got);
                    }
                    answer = Some(got);
                }
                taken = &mut taken_over, if waiting => {
                    if taken {
                        return None;
                    }
                    if answer.is_some() {
                        return answer;
                    }
                    waiting = false;
                }
            }
        }
    }
}

/// Whether `token`'s stateful WebSocket connection runs on this node (taken over here, for one).
fn runs_here(endpoint: &HubEndpoint, token: &str) -> bool {
    matches!(
        super::endpoint::lookup(endpoint, token),
        super::endpoint::Lookup::Open(crate::transport::TransportKind::WebSockets, ..)
    )
}

/// Starts a kept connection here whose server died: as a connection that moved here (`super::moving`), then in
/// its groups, then known to its token's home.
async fn take_over(node: &Node, copy: Box<Copy>, server: &NodeId) -> Result<Option<UntoldHome>, String> {
    let endpoint = node
        .endpoint(&copy.path)
        .cloned()
        .ok_or_else(|| format!("no hub at {}", copy.path))?;
    let reply = super::moving::prepare(node, &endpoint, &copy.token, copy.id.clone(), super::moving::HeldSends::KeepHolding);
    if reply.status() != StatusCode::OK {
        return Err(format!("not prepared: {}", reply.status()));
    }
    let Copy {
        id,
        token,
        home,
        protocol,
        user,
        claims,
        query,
        headers,
        unacked,
        last,
        received,
        groups,
        marks,
        got,
        broadcasts,
        directs,
        since,
        epoch,
        ..
    } = *copy;
    tracing::debug!(parent: node.span(), %id, last, received, unacked = unacked.len(), epoch, "a take-over starts from its copy");
    let home = super::moving::live_home(node, home);
    let state = MovedState {
        protocol,
        unacked: unacked.into_iter().collect(),
        next_id: last + 1,
        received: ReceiveState::processed_through(received),
        keep_epoch: epoch,
        // Its connection drops what the copy says was numbered for it, sent again (`src/connection/directs_written.rs`).
        directs_written: directs
            .values()
            .map(|mark| LastDirect {
                origin: mark.origin.clone(),
                generation: mark.generation,
                seq: mark.seq,
            })
            .collect(),
        // Its next keeper's copy starts from what this one knew was numbered (a second take-over gives none again).
        last_marks: LastMarks {
            broadcasts: broadcasts.clone(),
            directs: directs.clone(),
        },
        // Set at the install, from `got` (`super::moving::install`).
        groups_got: Vec::new(),
    };
    let request = RequestInfo {
        user,
        claims,
        query,
        headers,
    };
    let router = endpoint.context.router().clone();
    let hub = endpoint.context.name().clone();
    // And from what its copy said the client got of each group's sends (chaos defect 29: without it, a second
    // take-over gave again what the first server or this one had delivered and its history still held).
    let sends_got = crate::mesh::SendsGot {
        groups: got
            .iter()
            .map(|((group, user), origins)| (group_key(&hub, group, *user), origins.clone()))
            .collect(),
    };
    let moved = super::moving::MovedConnection::new(state, request, home.clone(), sends_got);
    // Started here, then given the broadcasts its server never numbered, under the lock of every broadcast
    // delivery here: none is missed or delivered twice in between.
    let mut status = StatusCode::OK;
    let since = since.unwrap_or_else(Instant::now);
    let (installed, missed) = router.resume_broadcasts(&hub, &id, &broadcasts, since, || {
        status = super::moving::install(node, &endpoint, &token, moved, true).status();
        status == StatusCode::OK
    });
    if !installed {
        return Err(format!("not installed: {status}"));
    }
    router.unkeep_broadcasts(&hub);
    // The sends by id held for it here that its server never numbered (`Router::resume_direct`).
    let missed_direct = router.resume_direct(&hub, &id, &directs);
    tracing::debug!(parent: node.span(), %id, missed, missed_direct, "a taken-over connection got the broadcasts and sends by id it missed");
    for (group, user) in groups {
        let key = group_key(&hub, &group, user);
        // What the group sent it since its server numbered the last of its sends, then membership here.
        let last = marks.get(&(group.clone(), user));
        let got_of_group = got.get(&(group.clone(), user)).map_or(&[][..], Vec::as_slice);
        match router.resume_kept_member(&key, &id, last, got_of_group) {
            Ok(missed) => tracing::debug!(parent: node.span(), %id, %group, missed, "a taken-over connection got its group's sends"),
            Err(error) => tracing::info!(parent: node.span(), %id, %group, %error, "a taken-over connection did not resume a group"),
        }
        // Still a member here if its owner did not answer (`Router::rejoin_taken_over`).
        if let Err(error) = router.rejoin_taken_over(key.clone(), id.clone()).await {
            tracing::info!(parent: node.span(), %id, %group, %error, "a taken-over connection's rejoin was not confirmed by the group's owner");
        }
        // A member here now: its kept member goes.
        router.unkeep_member(key, id.clone());
    }
    // A server that was only frozen drops it when it comes back.
    node.keeping().queue(server, Frame::TakenOver { id: id.clone() }, None);
    let here = node.router().incarnation();
    if home == here || tell_home(node, &endpoint, &home, &token, &id).await {
        return Ok(None);
    }
    Ok(Some(UntoldHome { home, token }))
}

/// Tells `home`, if it is live, that this node runs connection `id` (of `token`) now that it took it over: whether
/// it recorded that.
async fn tell_home(node: &Node, endpoint: &HubEndpoint, home: &NodeId, token: &str, id: &ConnectionId) -> bool {
    if !node.router().is_live_incarnation(&home.name, home.generation) {
        return false;
    }
    let op = super::relay::Op::TakenOver { id: id.clone() };
    match super::relay::ask_op(node, endpoint, home, token, op).await {
        Ok(reply) if reply.status() == StatusCode::OK => true,
        Ok(reply) => {
            tracing::info!(parent: node.span(), %id, status = %reply.status(), "its home did not record the take-over");
            false
        }
        Err(error) => {
            tracing::info!(parent: node.span(), %id, %error, "its home did not record the take-over");
            false
        }
    }
}

/// This node ran connection `id` and is told that its keeper took it over (this node was frozen or cut off): before
/// the connection ends here, its home's record says where it runs now, as after a drain's move. When this node is
/// its home, it passes the connection's sends and requests on to the keeper from now on; another home is told, as
/// by a move's server, in case the keeper could not tell it (the home was out of the keeper's view at the
/// take-over). Without this, the home passed sends by id on to this node, which had dropped the connection (chaos
/// defect 35, `tests/cli/chaos/README.md`).
fn runs_at_keeper(node: &Node, endpoint: &Arc<HubEndpoint>, token: &str, id: &ConnectionId, keeper: &NodeId) {
    let home = {
        let mut tokens = endpoint.tokens.lock();
        let Some(negotiated) = tokens.get_mut(token).filter(|negotiated| negotiated.id == *id) else {
            return;
        };
        match (&negotiated.active, &negotiated.home) {
            // It moved on already.
            (Some(Active::Adopted { .. }), _) => return,
            (_, None) => {
                negotiated.active = Some(Active::Adopted {
                    server: keeper.clone(),
                    transport: TransportKind::WebSockets,
                });
                None
            }
            // Forgotten here without a release, which would have the home forget it.
            (_, Some(home)) => {
                let home = home.clone();
                tokens.remove(token);
                Some(home)
            }
        }
    };
    let Some(home) = home else {
        if let Err(error) = node.router().adopt_out(id.clone(), keeper.clone()) {
            tracing::info!(parent: node.span(), %id, %error, "a connection taken over by its keeper could not be recorded as running there");
        }
        return;
    };
    let home = super::moving::live_home(node, home);
    let op = super::relay::Op::Moved { server: keeper.clone() };
    let (node, endpoint, token, id) = (node.clone(), endpoint.clone(), token.to_owned(), id.clone());
    tokio::spawn(async move {
        // Not found when the keeper told the home first: nothing to do then.
        match super::relay::ask_op(&node, &endpoint, &home, &token, op).await {
            Ok(reply) => tracing::debug!(parent: node.span(), %id, %home, status = %reply.status(), "told the home that the keeper runs the connection"),
            Err(error) => tracing::debug!(parent: node.span(), %id, %home, %error, "could not tell the home that the keeper runs the connection"),
        }
    });
}

/// A group's key in hub `hub`: a named group, or a user's.
fn group_key(hub: &str, group: &str, user: bool) -> GroupKey {
    if user {
        GroupKey::user(hub, group)
    } else {
        GroupKey::named(hub, group)
    }
}

/// Groups of a kept connection to follow or stop following here (`Router::keep_member`), so that a take-over
/// gets the sends its server never numbered.
pub(super) struct Follow {
    path: String,
    id: ConnectionId,
    groups: Vec<(String, bool)>,
    keep: bool,
    /// Whether to start (a new copy) or stop (a copy gone) recording the hub's broadcasts for it
    /// (`Router::keep_broadcasts`) and holding its sends by id (`Router::keep_direct`).
    broadcasts: Option<bool>,
}

impl Follow {
    fn of(copy: &Copy, groups: Vec<(String, bool)>, keep: bool) -> Follow {
        Follow {
            path: copy.path.clone(),
            id: copy.id.clone(),
            groups,
            keep,
            broadcasts: None,
        }
    }

    /// Every group of a copy that is gone, and its hub's broadcasts.
    fn all(copy: &Copy, keep: bool) -> Follow {
        Follow {
            broadcasts: Some(keep),
            ..Follow::of(copy, copy.groups.iter().cloned().collect(), keep)
        }
    }

    fn apply(self, node: &Node) {
        if self.groups.is_empty() && self.broadcasts.is_none() {
            return;
        }
        let Some(endpoint) = node.endpoint(&self.path) else {
            return;
        };
        let router = endpoint.context.router();
        let hub = endpoint.context.name();
        match self.broadcasts {
            Some(true) => {
                router.keep_broadcasts(hub);
                router.keep_direct(self.id.clone());
            }
            Some(false) => {
                router.unkeep_broadcasts(hub);
                router.unkeep_direct(&self.id);
            }
            None => {}
        }
        for (group, user) in self.groups {
            let key = group_key(hub, &group, user);
            if self.keep {
                router.keep_member(key, self.id.clone());
            } else {
                router.unkeep_member(key, self.id.clone());
            }
        }
    }
}
