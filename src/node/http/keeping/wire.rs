//! The keeping wire: a kept connection's copy, the frames between a server and a keeper, and how they travel
//! (batched per peer by the node's flusher, as tunnel frames whose first byte is [`super::KEEP_FRAME`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::node::{Node, NodeInner};
use super::KEEP_FRAME;
use crate::auth::Claims;
use crate::cluster::NodeId;
use crate::connection::{ConnectionId, SendMark};

/// A kept connection's whole copy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Copy {
    pub(super) id: ConnectionId,
    pub(super) path: String,
    pub(super) token: String,
    /// The node that negotiated it (its token's home).
    pub(super) home: NodeId,
    pub(super) protocol: String,
    pub(super) user: Option<String>,
    pub(super) claims: Option<Claims>,
    pub(super) query: String,
    pub(super) headers: Vec<(String, String)>,
    pub(super) unacked: VecDeque<(u64, Bytes)>,
    /// The last record id numbered.
    pub(super) last: u64,
    /// The client's records acknowledged.
    pub(super) received: u64,
    /// Groups: name, and whether it is the user's group.
    pub(super) groups: BTreeSet<(String, bool)>,
    /// Per group (name, and whether it is the user's), the mark of the last of its sends numbered for the client:
    /// where a resuming node picks up the group's sends (`Router::resume_kept_member`).
    #[serde(default)]
    pub(super) marks: BTreeMap<(String, bool), SendMark>,
    /// Per origin node (name), the mark of the last of its broadcasts numbered for the client
    /// (`Router::resume_broadcasts`).
    #[serde(default)]
    pub(super) broadcasts: BTreeMap<String, SendMark>,
    /// Per origin node (name), the mark of the last of its sends by id numbered for the client
    /// (`Router::resume_direct`).
    #[serde(default)]
    pub(super) directs: BTreeMap<String, SendMark>,
    /// When the keeper got its first copy of the connection (the keeper's, not sent).
    #[serde(skip)]
    pub(super) since: Option<tokio::time::Instant>,
    /// Bytes of `unacked` (counted by whoever holds the copy, not sent).
    #[serde(skip)]
    pub(super) bytes: usize,
}

impl Copy {
    /// Notes the mark of a record numbered for the client: its group's last send, or its origin's last broadcast
    /// or send by id (one entry per origin name: a restarted origin's replaces its earlier incarnation's).
    pub(super) fn note(&mut self, mark: &SendMark) {
        if mark.broadcast || mark.direct {
            let last_of = if mark.broadcast {
                &mut self.broadcasts
            } else {
                &mut self.directs
            };
            let newer = last_of
                .get(&*mark.origin)
                .is_none_or(|last| (mark.generation, mark.seq) > (last.generation, last.seq));
            if newer {
                last_of.insert(mark.origin.to_string(), mark.clone());
            }
        } else {
            self.marks.insert((mark.group.to_string(), mark.user), mark.clone());
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Frame {
    /// Server → keeper: keep this (replacing what was kept).
    Open(Box<Copy>),
    /// A record; its bytes are the batch's payload number `payload` (members of one group send share one).
    Record { id: ConnectionId, seq: u64, payload: u32, mark: Option<SendMark> },
    Acked { id: ConnectionId, seq: u64 },
    Received { id: ConnectionId, seq: u64 },
    Group { id: ConnectionId, group: String, user: bool, joined: bool },
    Ended { id: ConnectionId },
    /// Keeper → server: records up to `seq` are kept.
    Held { id: ConnectionId, seq: u64 },
    /// Keeper → server: not kept (full, or the copy grew too large).
    Refused { id: ConnectionId },
    /// Keeper → server: the keeper took the connection over, having declared the server dead. A server that was
    /// only frozen gets it when it comes back (its link's queue outlives the link) and drops the connection.
    TakenOver { id: ConnectionId },
}

/// What one tunnel frame carries: frames for one peer, in order, and the record bytes they name.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Batch {
    pub(super) payloads: Vec<Bytes>,
    pub(super) frames: Vec<Frame>,
}

pub(super) fn encode(batch: &Batch) -> Option<Bytes> {
    let mut out = vec![KEEP_FRAME];
    rmp_serde::encode::write(&mut out, batch).ok()?;
    Some(Bytes::from(out))
}

/// Frames waiting for one peer. Sent together by the node's flusher ([`flusher`]): one tunnel frame for whatever
/// queued meanwhile, and one copy of bytes that several connections' records share (a group send's frame).
#[derive(Default)]
pub(super) struct Outbox {
    pub(super) batch: Batch,
    /// Payload numbers by buffer address and length.
    pub(super) index: HashMap<(usize, usize), u32>,
}

/// The most frames waiting for one peer; past it a connection runs unkept (counted in `refused`).
pub const OUTBOX_CAP: usize = 65_536;

/// Sends every peer its waiting frames whenever some are queued, until the node is gone.
pub(crate) async fn flusher(node: Weak<NodeInner>, wake: Arc<tokio::sync::Notify>) {
    loop {
        wake.notified().await;
        let Some(node) = node.upgrade().map(Node::from_inner) else {
            return;
        };
        let outboxes = std::mem::take(&mut *node.keeping().outboxes.lock());
        for (peer, outbox) in outboxes {
            let sent = encode(&outbox.batch).is_some_and(|bytes| node.router().send_tunnel(&peer, bytes).is_ok());
            if !sent {
                // Its servers' connections send their whole copies to a keeper again (or run unkept).
                for frame in &outbox.batch.frames {
                    let id = match frame {
                        Frame::Record { id, .. }
                        | Frame::Acked { id, .. }
                        | Frame::Received { id, .. }
                        | Frame::Group { id, .. } => id,
                        Frame::Open(copy) => &copy.id,
                        _ => continue,
                    };
                    if let Some(sink) = node.keeping().sink(id) {
                        sink.lost_at(&node, &peer);
                    }
                }
            }
        }
    }
}
