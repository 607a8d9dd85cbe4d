//! The keeping wire: a kept connection's copy, the frames between a server and a keeper, and how they travel
//! (batched per peer by the node's flusher, as tunnel frames whose first byte is [`super::KEEP_FRAME`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Weak};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::node::{Node, NodeInner};
use super::KEEP_FRAME;
use crate::auth::Claims;
use crate::cluster::NodeId;
use crate::connection::{ConnectionId, RequestHeaders, RequestInfo, SendMark};
use crate::mesh::OriginLast;

/// The most origins whose last send a copy notes per group (one per node that sends to it; past it, a resume may
/// give the connection again sends of the origins not noted that its keeper's history holds).
pub const ORIGINS_PER_GROUP: usize = 64;

/// A kept connection's whole copy. Held twice for each stateful connection (by its server and its keeper) for
/// its whole life, so it is kept small: headers compact, claims shared with the session on the server, groups in
/// a sorted list, an emptied record queue without capacity (benches/README.md, "What keeping costs in memory").
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Copy {
    pub(super) id: ConnectionId,
    pub(super) path: String,
    pub(super) token: Arc<str>,
    /// The node that negotiated it (its token's home).
    pub(super) home: NodeId,
    pub(super) protocol: String,
    pub(super) user: Option<String>,
    pub(super) claims: Option<Arc<Claims>>,
    pub(super) query: String,
    /// On the wire, a sequence of (name, value) pairs.
    #[serde(with = "header_pairs")]
    pub(super) headers: RequestHeaders,
    pub(super) unacked: VecDeque<(u64, Bytes)>,
    /// The last record id numbered.
    pub(super) last: u64,
    /// How many of the client's records ran (or are about to: their receipt comes first).
    pub(super) received: u64,
    /// Groups: name, and whether it is the user's group.
    pub(super) groups: Groups,
    /// Per group (name, and whether it is the user's), the mark of the last of its sends numbered for the client:
    /// where a resuming node picks up the group's sends (`Router::resume_kept_member`).
    #[serde(default)]
    pub(super) marks: BTreeMap<(String, bool), SendMark>,
    /// Per group, each origin's last send numbered for the client: a resuming node gives it none of those again,
    /// whatever its history holds (`Router::resume_kept_member`). At most [`ORIGINS_PER_GROUP`] per group.
    #[serde(default)]
    pub(super) got: BTreeMap<(String, bool), Vec<OriginLast>>,
    /// Per origin node (name), the mark of the last of its broadcasts numbered for the client
    /// (`Router::resume_broadcasts`).
    #[serde(default)]
    pub(super) broadcasts: BTreeMap<String, SendMark>,
    /// Per origin node (name), the mark of the last of its sends by id numbered for the client
    /// (`Router::resume_direct`).
    #[serde(default)]
    pub(super) directs: BTreeMap<String, SendMark>,
    /// Which of its server's copies this is, from 1: the server counts up each time it sends the whole copy to a
    /// keeper (its keeper left its view, or a batch could not reach it), and a keeper it left may still hold an
    /// older one. Of two copies of a connection, the higher is the fresher (`Frame::Took`).
    #[serde(default)]
    pub(super) epoch: u64,
    /// When the keeper got its first copy of the connection (the keeper's, not sent).
    #[serde(skip)]
    pub(super) since: Option<tokio::time::Instant>,
    /// Bytes of `unacked` (counted by whoever holds the copy, not sent).
    #[serde(skip)]
    pub(super) bytes: usize,
}

impl Copy {
    /// The copy of a connection that has sent and received nothing yet, of the client that `request` describes.
    pub(super) fn empty(id: ConnectionId, path: &str, token: &str, home: NodeId, request: &RequestInfo) -> Copy {
        Copy {
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
            epoch: 0,
            bytes: 0,
        }
    }

    /// Drops acknowledged records (ids up to `seq`), counting their bytes out of `bytes` if `count`.
    pub(super) fn drop_acked(&mut self, seq: u64, count: bool) {
        while self.unacked.front().is_some_and(|(first, _)| *first <= seq) {
            if let Some((_, record)) = self.unacked.pop_front() {
                if count {
                    self.bytes = self.bytes.saturating_sub(record.len());
                }
            }
        }
        // Most connections sit idle with every record acknowledged: no capacity kept for them.
        if self.unacked.is_empty() {
            self.unacked = VecDeque::new();
        }
    }

    /// Notes the mark of a record numbered for the client: its group's last send, or its origin's last broadcast
    /// or send by id (one entry per origin name: a restarted origin's replaces its earlier incarnation's).
    /// Notes a record's mark; false if its origin could not be noted (its group's list is full:
    /// [`ORIGINS_PER_GROUP`]).
    pub(super) fn note(&mut self, mark: &SendMark) -> bool {
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
            true
        } else {
            // Once per record of a stateful connection, on its server and its keeper: the group's key is made
            // once, and cloned only for a group's first record.
            let group = (mark.group.to_string(), mark.user);
            let noted = match self.got.get_mut(&group) {
                Some(got) => note_origin(got, mark),
                None => {
                    let mut got = Vec::new();
                    note_origin(&mut got, mark);
                    self.got.insert(group.clone(), got);
                    true
                }
            };
            self.marks.insert(group, mark.clone());
            noted
        }
    }

    /// The connection left group `group`: its marks go.
    pub(super) fn left(&mut self, group: &(String, bool)) {
        self.marks.remove(group);
        self.got.remove(group);
    }
}

/// Notes in `got` (a group's origins) that `mark`'s origin numbered up to `mark` for the client.
fn note_origin(got: &mut Vec<OriginLast>, mark: &SendMark) -> bool {
    let full = got.len() >= ORIGINS_PER_GROUP;
    match got.iter_mut().find(|origin| *origin.origin == *mark.origin) {
        Some(origin) => {
            if (mark.generation, mark.seq) > (origin.generation, origin.last) {
                origin.generation = mark.generation;
                origin.last = mark.seq;
            }
            true
        }
        None if full => false,
        None => {
            got.push(OriginLast {
                origin: mark.origin.to_string(),
                generation: mark.generation,
                last: mark.seq,
            });
            true
        }
    }
}

/// A kept connection's groups (name, and whether it is the user's), sorted, each once. Most connections are in a
/// few groups, where a `BTreeSet`'s first node alone takes about 370 bytes. On the wire, a sequence (as a
/// `BTreeSet` was); one that arrives unsorted or with repeats is put in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "Vec<(String, bool)>")]
pub(super) struct Groups(Vec<(String, bool)>);

impl From<Vec<(String, bool)>> for Groups {
    fn from(mut entries: Vec<(String, bool)>) -> Self {
        entries.sort();
        entries.dedup();
        entries.shrink_to_fit();
        Groups(entries)
    }
}

impl Groups {
    /// Adds `entry`; false if it was there.
    pub(super) fn insert(&mut self, entry: (String, bool)) -> bool {
        match self.0.binary_search(&entry) {
            Ok(_) => false,
            Err(at) => {
                // Grow by one while small, not to four at once.
                if self.0.len() == self.0.capacity() && self.0.len() < 8 {
                    self.0.reserve_exact(1);
                }
                self.0.insert(at, entry);
                true
            }
        }
    }

    /// Removes `entry`; false if it was not there.
    pub(super) fn remove(&mut self, entry: &(String, bool)) -> bool {
        match self.0.binary_search(entry) {
            Ok(at) => {
                self.0.remove(at);
                if self.0.is_empty() {
                    self.0 = Vec::new();
                }
                true
            }
            Err(_) => false,
        }
    }

    pub(super) fn contains(&self, entry: &(String, bool)) -> bool {
        self.0.binary_search(entry).is_ok()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &(String, bool)> + '_ {
        self.0.iter()
    }

    /// The entries of `self` that `other` lacks.
    pub(super) fn difference<'a>(&'a self, other: &'a Groups) -> impl Iterator<Item = &'a (String, bool)> + 'a {
        self.0.iter().filter(move |entry| !other.contains(entry))
    }
}

impl IntoIterator for Groups {
    type Item = (String, bool);
    type IntoIter = std::vec::IntoIter<(String, bool)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// [`RequestHeaders`] on the wire: a sequence of (name, value) pairs.
mod header_pairs {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::connection::RequestHeaders;

    pub(super) fn serialize<S: Serializer>(headers: &RequestHeaders, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(headers.iter())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<RequestHeaders, D::Error> {
        Ok(Vec::<(String, String)>::deserialize(deserializer)?.into_iter().collect())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum Frame {
    /// Server → keeper: keep this (replacing what was kept).
    Open(Box<Copy>),
    /// A record; its bytes are the batch's payload number `payload` (members of one group send share one).
    Record { id: ConnectionId, seq: u64, payload: u32, mark: Option<SendMark> },
    Acked { id: ConnectionId, seq: u64 },
    Received { id: ConnectionId, seq: u64 },
    Group { id: ConnectionId, group: String, user: bool, joined: bool },
    Ended {
        id: ConnectionId,
        /// Only a copy numbered below this ([`Copy::epoch`]): a keeper the connection left for another drops its
        /// older copy, and a late frame never drops a newer one. `None`: the connection ended, whatever the copy.
        #[serde(default)]
        below: Option<u64>,
    },
    /// Keeper → server: records up to `seq` are kept.
    Held { id: ConnectionId, seq: u64 },
    /// Keeper → server: the receipt of the client's records up to `seq` is kept (its `Received`): they may run.
    ReceivedHeld { id: ConnectionId, seq: u64 },
    /// Keeper → server: not kept (full, or the copy grew too large).
    Refused {
        id: ConnectionId,
        /// The keeper is leaving (draining): the server sends its copy to another instead of running unkept.
        #[serde(default)]
        leaving: bool,
    },
    /// Keeper → server: the keeper took the connection over, having declared the server dead. A server that was
    /// only frozen gets it when it comes back (its link's queue outlives the link) and drops the connection.
    TakenOver { id: ConnectionId },
    /// Server → keeper: the server's node was declared dead by most of the cluster and is back; did the keeper
    /// take the connection over? Answered with `TakenOver`, or `Released`.
    Claim { id: ConnectionId, token: String },
    /// Keeper → server: it did not take the connection over and keeps it no more (the server closes it).
    Released { id: ConnectionId },
    /// Keeper → every live peer: it takes over connection `id` of `server`, which left its view, from its copy
    /// number `epoch`. A peer that holds an older copy of it drops that (and the connection, if it took it over
    /// from that copy); every peer answers with `Known`. Without it, two keepers of one connection (one its server
    /// left for another while it was cut off) would both take it over, and its groups would count it twice (chaos
    /// defect 20, `tests/cli/chaos/README.md`).
    Took { id: ConnectionId, server: NodeId, epoch: u64 },
    /// The answer to `Took`: the number of the copy of `id` this peer holds or took over (0: none). The asker waits
    /// for every live peer's answer (at most `TOOK_WAIT`) before it starts the connection, and does not if one is
    /// fresher.
    Known { id: ConnectionId, epoch: u64 },
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
                    if let Frame::Claim { id, .. } = frame {
                        // Asked again once a link may be up (a peer that declared this node dead takes its links
                        // again only once it sees it live), until the claim is answered or gives up.
                        if let Some(sink) = node.keeping().sink(id) {
                            sink.claim_unsent(&peer);
                        }
                        continue;
                    }
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

#[cfg(test)]
mod tests {
    use super::{Copy, Groups};

    fn entry(name: &str, user: bool) -> (String, bool) {
        (name.to_owned(), user)
    }

    #[test]
    fn groups_stay_sorted_and_each_once() {
        let mut groups = Groups::default();
        assert!(groups.insert(entry("b", false)));
        assert!(groups.insert(entry("a", true)));
        assert!(groups.insert(entry("a", false)));
        assert!(!groups.insert(entry("b", false)));
        let listed: Vec<_> = groups.iter().cloned().collect();
        assert_eq!(listed, [entry("a", false), entry("a", true), entry("b", false)]);
        assert!(groups.contains(&entry("a", true)));
        assert!(groups.remove(&entry("a", true)));
        assert!(!groups.remove(&entry("a", true)));
        assert!(!groups.contains(&entry("a", true)));

        let mut other = Groups::default();
        other.insert(entry("b", false));
        other.insert(entry("c", false));
        let only_here: Vec<_> = groups.difference(&other).cloned().collect();
        assert_eq!(only_here, [entry("a", false)]);
    }

    type Outcome = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn groups_from_the_wire_are_put_in_order_without_repeats() -> Outcome {
        // What a BTreeSet sent (sorted), and what a rogue peer might send (neither).
        let sent = vec![entry("z", false), entry("a", false), entry("z", false), entry("a", true)];
        let bytes = rmp_serde::to_vec(&sent)?;
        let groups: Groups = rmp_serde::from_slice(&bytes)?;
        let listed: Vec<_> = groups.into_iter().collect();
        assert_eq!(listed, [entry("a", false), entry("a", true), entry("z", false)]);
        Ok(())
    }

    #[test]
    fn a_copy_crosses_the_wire_with_its_headers_claims_and_groups() -> Outcome {
        use std::collections::{BTreeMap, VecDeque};

        use bytes::Bytes;

        use crate::cluster::NodeId;
        use crate::connection::{ConnectionId, RequestHeaders};

        let headers: RequestHeaders = [("Host", "example.test"), ("Cookie", "a=1")].into_iter().collect();
        let mut groups = Groups::default();
        groups.insert(entry("room", false));
        groups.insert(entry("alice", true));
        let mut copy = Copy {
            id: ConnectionId::from("c1"),
            path: "/hub".to_owned(),
            token: "token".into(),
            home: NodeId::new("node-1", 7),
            protocol: "json".to_owned(),
            user: Some("alice".to_owned()),
            claims: Some(std::sync::Arc::new(crate::auth::Claims::new(
                [("sub".to_owned(), serde_json::Value::from("alice"))].into_iter().collect(),
            ))),
            query: "x=1".to_owned(),
            headers,
            unacked: VecDeque::from([(1, Bytes::from_static(b"one")), (2, Bytes::from_static(b"two"))]),
            last: 2,
            received: 0,
            groups,
            marks: BTreeMap::new(),
            got: BTreeMap::new(),
            broadcasts: BTreeMap::new(),
            directs: BTreeMap::new(),
            since: None,
            epoch: 3,
            bytes: 6,
        };
        let bytes = rmp_serde::to_vec(&copy)?;
        let back: Copy = rmp_serde::from_slice(&bytes)?;
        let pairs: Vec<(&str, &str)> = back.headers.iter().collect();
        assert_eq!(pairs, [("host", "example.test"), ("cookie", "a=1")]);
        assert_eq!(&*back.token, "token");
        assert_eq!(back.claims.as_deref().and_then(|claims| claims.get("sub")), Some(&serde_json::Value::from("alice")));
        assert_eq!(back.groups, copy.groups);
        assert_eq!(back.unacked, copy.unacked);
        assert_eq!(back.epoch, 3, "a copy's number crosses the wire");

        copy.drop_acked(1, true);
        assert_eq!(copy.unacked.len(), 1);
        assert_eq!(copy.bytes, 3);
        copy.drop_acked(2, true);
        assert!(copy.unacked.is_empty());
        assert_eq!(copy.unacked.capacity(), 0, "an emptied queue keeps no capacity");
        assert_eq!(copy.bytes, 0);
        Ok(())
    }
}
