//! A member node's record of the group sends that arrived for its members, per group and origin incarnation
//! ([`Arrivals`]): it drops a repeat (a send re-sent after its owner left, which arrived here already), and puts
//! back in order a send that overtook an earlier one of the same origin to the same group on the way, holding it
//! (and the group's sends behind it, so that the group keeps one order on every node) at most [`GAP_WAIT`] for the
//! earlier one.
//!
//! Why sends can overtake each other: a send goes from its origin to the group's owner, which may pass it on when
//! ownership moved meanwhile (`mesh/owner.rs`); the origin's later sends go straight to the new owner, and can get
//! there first. A stamp names the origin's previous send to the same group ([`Stamp::prev`]), so a member node
//! sees the gap and waits for the missing send instead of dropping it as a repeat when it comes.
//!
//! An owner's marker moving a member in or out of the group here (`mesh/moves.rs`) comes through the same link, in
//! the group's order: when sends are held here it waits behind them ([`Arrivals::after_held`]), so a connection
//! that moves gets each send at exactly one of its two nodes even when one of them waits at a gap.
//!
//! When a group's owner hands it over while it is live (it drains, or a node joined that now wins the group), the
//! old owner's last fan-outs and the new owner's first ones travel on different links, and a node could get a send
//! of the new owner before one the old owner ordered ahead of it. So each group's record names the owner whose
//! fan-outs it follows; a send of the new owner that says which live owner it took the group over from
//! ([`Via::handed_from`]) waits, with what follows it, until that owner's marker saying it released the group
//! arrives (it comes after its last fan-out on the same link, [`Arrivals::released`]), that owner is gone, or
//! [`GAP_WAIT`] passed.
//!
//! Plain data: the router locks it and delivers what it hands back (`mesh/delivery.rs`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::group::{GroupKey, Stamp};
use super::group_send::HELD_SENDS_CAP;
use crate::cluster::NodeId;

/// The most (group, origin node) pairs whose last delivered sequence number a node keeps (one per group with
/// members here and node that sends to it; dropped when the group has no member here any more). Past it, the
/// sends of a new pair are delivered without a record, counted: one of them re-sent after its owner died could
/// then arrive twice.
pub const DELIVERED_CAP: usize = 262_144;

/// How long a send that overtook an earlier one of its origin waits for it: longer than an owner settles after a
/// membership change (3 s) while it passes sends on. Past it, the earlier send counts as lost and the waiting ones
/// are delivered, in order, counted.
pub const GAP_WAIT: Duration = Duration::from_secs(5);

/// How long after it took a group over from a live owner a new owner's fan-outs name that owner
/// ([`Via::handed_from`]): as long as a member node waits for the old owner's release.
pub const HANDED_FROM_WINDOW: Duration = GAP_WAIT;

/// The most sends waiting for an earlier one, all groups together: past it, a send that overtook another is
/// delivered at once (out of order rather than held without bound), counted.
pub const WAITING_CAP: usize = HELD_SENDS_CAP;

/// Of one origin's sends to one group: the origin's generation and the last sequence number delivered here.
struct Record {
    generation: u64,
    last: u64,
}

impl Record {
    /// Whether send `seq` of this origin's incarnation `generation` was delivered here, or passed by (a later
    /// incarnation's were).
    fn covers(&self, generation: u64, seq: u64) -> bool {
        generation < self.generation || (generation == self.generation && seq <= self.last)
    }
}

/// Where a held send stands among its origin's sends.
struct Place {
    origin: Arc<str>,
    generation: u64,
    prev: u64,
    seq: u64,
}

impl Place {
    fn is(&self, origin: &str, generation: u64, seq: u64) -> bool {
        *self.origin == *origin && self.generation == generation && self.seq == seq
    }
}

/// A send held at this node, behind a gap, or a member's move that keeps its place behind held sends (no place).
struct Waiting<T> {
    since: Instant,
    place: Option<Place>,
    item: T,
}

/// Which owner fanned a send out to this node, and from which live owner it took the group over lately, if so.
#[derive(Clone, Debug)]
pub(super) struct Via {
    /// The node whose group actor sent it (the group's owner as that node saw it).
    pub(super) owner: NodeId,
    /// The owner that held the group before, when it was live as `owner` took the group over: `owner`'s sends wait
    /// here behind that owner's until it says it released the group.
    pub(super) handed_from: Option<NodeId>,
}

/// A new owner's send, or marker, that waits for the old owner's release (see the module documentation).
struct Fenced<T> {
    since: Instant,
    via: Via,
    /// The send's stamp; none for a member's move.
    stamp: Option<Stamp>,
    item: T,
}

/// One group's records here, and the sends held while the first of them waits for an earlier send of its origin.
/// Everything after a send that waits waits too, so the group's order here stays the owner's: every member node
/// that gets the same sends delivers them in the same order, gaps or not.
struct Group<T> {
    origins: HashMap<Arc<str>, Record>,
    held: VecDeque<Waiting<T>>,
    /// The owner whose fan-outs were delivered here last, until it said it released the group.
    owner: Option<NodeId>,
    /// A new owner's sends and markers waiting for `owner` to release the group, in arrival order.
    fenced: VecDeque<Fenced<T>>,
}

impl<T> Default for Group<T> {
    fn default() -> Self {
        Group {
            origins: HashMap::new(),
            held: VecDeque::new(),
            owner: None,
            fenced: VecDeque::new(),
        }
    }
}

impl<T> Group<T> {
    /// Whether `waiting` can go now: its predecessor was delivered here (or this node waits for none: a first
    /// record, or no previous send named).
    fn ready(&self, waiting: &Waiting<T>) -> bool {
        let Some(place) = &waiting.place else {
            return true;
        };
        self.origins.get(&place.origin).is_none_or(|record| {
            record.generation != place.generation || record.last == 0 || place.prev <= record.last
        })
    }

    /// Delivers `waiting` unless it is stale or a repeat by now; records it.
    fn take(&mut self, waiting: Waiting<T>, deliver: &mut Vec<T>) {
        if let Some(place) = &waiting.place {
            if let Some(record) = self.origins.get_mut(&place.origin) {
                if record.covers(place.generation, place.seq) {
                    return;
                }
                record.generation = place.generation;
                record.last = place.seq;
            }
        }
        deliver.push(waiting.item);
    }

    /// Whether send `seq` of `origin` (that `generation`) was delivered here, or passed by (a later incarnation's).
    fn delivered(&self, origin: &str, generation: u64, seq: u64) -> bool {
        self.origins
            .get(origin)
            .is_some_and(|record| record.covers(generation, seq))
    }

    /// Whether a member's move waits here: the group's records must stay until it is applied.
    fn holds_a_move(&self) -> bool {
        self.held.iter().any(|waiting| waiting.place.is_none()) || self.fenced.iter().any(|fenced| fenced.stamp.is_none())
    }

    /// Whether a send or marker that came `via` waits behind the old owner's: a new owner's sends wait when it took
    /// the group over from the owner this node follows, or when others of it wait already.
    fn fences(&self, via: &Via) -> bool {
        if self.owner.as_ref() == Some(&via.owner) {
            return false;
        }
        !self.fenced.is_empty() || (via.handed_from.is_some() && via.handed_from == self.owner)
    }

    /// Delivers held sends from the front as long as they are ready, and the front anyway once it waited `GAP_WAIT`
    /// (`expired_before`). Returns how many left `held`, and how many gaps were given up on.
    fn release(&mut self, expired_before: Option<Instant>, deliver: &mut Vec<T>) -> (usize, u64) {
        let (mut released, mut gaps) = (0, 0);
        while let Some(front) = self.held.front() {
            let expired = expired_before.is_some_and(|before| front.since <= before);
            if !self.ready(front) && !expired {
                break;
            }
            gaps += u64::from(!self.ready(front));
            let Some(front) = self.held.pop_front() else {
                break;
            };
            released += 1;
            self.take(front, deliver);
        }
        (released, gaps)
    }
}

/// What became of a send that arrived.
#[derive(Default)]
pub(super) struct Arrived<T> {
    /// To deliver now, in this order (the send, and those that waited for it), or nothing.
    pub(super) deliver: Vec<T>,
    /// Delivered without a record: the table holds [`DELIVERED_CAP`] pairs.
    pub(super) untracked: bool,
    /// Sends delivered without waiting for what they waited for: [`WAITING_CAP`] sends wait already.
    pub(super) unordered: u64,
}

impl<T> Arrived<T> {
    fn nothing() -> Self {
        Arrived {
            deliver: Vec::new(),
            untracked: false,
            unordered: 0,
        }
    }

    fn extend(&mut self, more: Arrived<T>) {
        self.deliver.extend(more.deliver);
        self.untracked |= more.untracked;
        self.unordered += more.unordered;
    }
}

/// The records of the group sends delivered here (see the module documentation).
pub(super) struct Arrivals<T> {
    groups: HashMap<GroupKey, Group<T>>,
    /// The groups with held sends.
    blocked: HashSet<GroupKey>,
    pairs: usize,
    waiting: usize,
}

impl<T> Default for Arrivals<T> {
    fn default() -> Self {
        Arrivals {
            groups: HashMap::new(),
            blocked: HashSet::new(),
            pairs: 0,
            waiting: 0,
        }
    }
}

impl<T> Arrivals<T> {
    /// A send to `key` stamped `stamp` arrived, fanned out by the owner `via` names (none: not a fan-out, such as
    /// a send kept for this node while it was declared dead): what to deliver now.
    pub(super) fn arrive(&mut self, key: &GroupKey, stamp: &Stamp, via: Option<&Via>, item: T, now: Instant) -> Arrived<T> {
        if let Some(via) = via {
            let group = self.groups.entry(key.clone()).or_default();
            if group.fences(via) {
                if self.waiting < WAITING_CAP {
                    group.fenced.push_back(Fenced {
                        since: now,
                        via: via.clone(),
                        stamp: Some(stamp.clone()),
                        item,
                    });
                    self.waiting += 1;
                    self.blocked.insert(key.clone());
                    return Arrived::nothing();
                }
                // Held without bound otherwise: the old owner is waited for no longer.
                let mut arrived = self.lift(key, now);
                arrived.unordered += 1;
                arrived.extend(self.arrive(key, stamp, Some(via), item, now));
                return arrived;
            }
            group.owner = Some(via.owner.clone());
        }
        let mut arrived = Arrived::nothing();
        let full = self.pairs >= DELIVERED_CAP;
        let group = self.groups.entry(key.clone()).or_default();
        let origin = &stamp.origin;
        match group.origins.get_mut(&origin.name) {
            Some(record) if origin.generation > record.generation => {
                // A later incarnation of the origin (it restarted and counts from 1 again).
                *record = Record {
                    generation: origin.generation,
                    last: 0,
                };
            }
            // From an earlier incarnation, after its successor's sends: that life is over.
            Some(record) if origin.generation < record.generation => return arrived,
            // A re-sent send that arrived here before.
            Some(record) if stamp.seq <= record.last => return arrived,
            Some(_) => {}
            None if full => {
                arrived.untracked = true;
                if group.held.is_empty() {
                    arrived.deliver.push(item);
                    if group.origins.is_empty() {
                        self.groups.remove(key);
                    }
                    return arrived;
                }
            }
            None => {
                self.pairs += 1;
                group.origins.insert(
                    origin.name.clone(),
                    Record {
                        generation: origin.generation,
                        last: 0,
                    },
                );
            }
        }
        let repeat = |waiting: &Waiting<T>| {
            waiting
                .place
                .as_ref()
                .is_some_and(|place| place.is(&origin.name, origin.generation, stamp.seq))
        };
        if group.held.iter().any(repeat) {
            return arrived;
        }
        let waiting = Waiting {
            since: now,
            place: Some(Place {
                origin: origin.name.clone(),
                generation: origin.generation,
                prev: stamp.prev,
                seq: stamp.seq,
            }),
            item,
        };
        if group.held.is_empty() && group.ready(&waiting) {
            group.take(waiting, &mut arrived.deliver);
            return arrived;
        }
        if self.waiting >= WAITING_CAP {
            // Held without bound otherwise: what waits here goes now, this one after it.
            let (released, gaps) = group.release(Some(now), &mut arrived.deliver);
            self.waiting -= released;
            arrived.unordered = gaps + u64::from(!group.ready(&waiting));
            group.take(waiting, &mut arrived.deliver);
            if group.fenced.is_empty() {
                self.blocked.remove(key);
            }
            return arrived;
        }
        // Before the held send of its origin that follows it (it may be the one that send waits for), else last.
        let at = group
            .held
            .iter()
            .position(|held| {
                held.place
                    .as_ref()
                    .is_some_and(|held| held.origin == origin.name && held.generation == origin.generation && held.seq > stamp.seq)
            })
            .unwrap_or(group.held.len());
        group.held.insert(at, waiting);
        self.waiting += 1;
        let (released, _) = group.release(None, &mut arrived.deliver);
        self.waiting -= released;
        if group.held.is_empty() && group.fenced.is_empty() {
            self.blocked.remove(key);
        } else {
            self.blocked.insert(key.clone());
        }
        arrived
    }

    /// The owner `from` released group `key` (ownership moved while it was live): its last fan-out to this node
    /// came before this, so what a new owner sent meanwhile goes now, in order.
    pub(super) fn released(&mut self, key: &GroupKey, from: &NodeId, now: Instant) -> Arrived<T> {
        let follows = self
            .groups
            .get(key)
            .is_some_and(|group| group.owner.as_ref() == Some(from));
        if follows {
            self.lift(key, now)
        } else {
            Arrived::nothing()
        }
    }

    /// Stops waiting for the owner that `key`'s record follows (it released the group, it is gone, or it was
    /// waited for long enough): the sends and markers of the new owner that waited go through, in order.
    fn lift(&mut self, key: &GroupKey, now: Instant) -> Arrived<T> {
        let mut arrived = Arrived::nothing();
        let Some(group) = self.groups.get_mut(key) else {
            return arrived;
        };
        group.owner = None;
        let fenced = std::mem::take(&mut group.fenced);
        self.waiting -= fenced.len();
        if group.held.is_empty() {
            self.blocked.remove(key);
        }
        for waiting in fenced {
            let more = match waiting.stamp {
                Some(stamp) => self.arrive(key, &stamp, Some(&waiting.via), waiting.item, now),
                None => self.after_held(key, Some(&waiting.via.owner), waiting.item, now),
            };
            arrived.extend(more);
        }
        arrived
    }

    /// Sends held [`GAP_WAIT`] for an earlier one: the earlier one counts as lost, and they go, in order, with
    /// their group; and a new owner's sends that waited [`GAP_WAIT`] for the old owner's release, or whose old owner
    /// is `gone` from the view. Returns how many gaps were given up on.
    pub(super) fn expire(&mut self, now: Instant, gone: impl Fn(&NodeId) -> bool, deliver: &mut Vec<(GroupKey, T)>) -> u64 {
        if self.blocked.is_empty() {
            return 0;
        }
        let before = now.checked_sub(GAP_WAIT);
        let mut gaps = 0;
        let lifted: Vec<(GroupKey, bool)> = self
            .blocked
            .iter()
            .filter_map(|key| {
                let group = self.groups.get(key)?;
                let front = group.fenced.front()?;
                let waited = before.is_some_and(|before| front.since <= before);
                (waited || group.owner.as_ref().is_none_or(&gone)).then(|| (key.clone(), waited))
            })
            .collect();
        for (key, waited) in lifted {
            let arrived = self.lift(&key, now);
            gaps += u64::from(waited) + arrived.unordered;
            deliver.extend(arrived.deliver.into_iter().map(|item| (key.clone(), item)));
        }
        let Some(before) = before else {
            return gaps;
        };
        let mut unblocked = Vec::new();
        for key in &self.blocked {
            let Some(group) = self.groups.get_mut(key) else {
                unblocked.push(key.clone());
                continue;
            };
            let mut items = Vec::new();
            let (released, given_up) = group.release(Some(before), &mut items);
            self.waiting -= released;
            gaps += given_up;
            deliver.extend(items.into_iter().map(|item| (key.clone(), item)));
            if group.held.is_empty() && group.fenced.is_empty() {
                unblocked.push(key.clone());
            }
        }
        for key in unblocked {
            self.blocked.remove(&key);
        }
        gaps
    }

    /// An owner's marker moving a member in or out of `key` here (`item`) arrived: it comes after every send this
    /// node holds for the group, so it waits behind them and is handed back when they go (by [`Arrivals::arrive`]
    /// or [`Arrivals::expire`]). What to apply now, in this order: the marker alone when nothing is held; when
    /// [`WAITING_CAP`] sends wait already, what is held (counted as unordered where it skips a gap) and the marker.
    /// A marker of a new owner (`from`) waits behind the sends of that owner that wait for the old one's release.
    pub(super) fn after_held(&mut self, key: &GroupKey, from: Option<&NodeId>, item: T, now: Instant) -> Arrived<T> {
        if let (Some(from), Some(group)) = (from, self.groups.get_mut(key)) {
            let via = Via {
                owner: from.clone(),
                handed_from: None,
            };
            if group.fences(&via) {
                if self.waiting < WAITING_CAP {
                    group.fenced.push_back(Fenced {
                        since: now,
                        via,
                        stamp: None,
                        item,
                    });
                    self.waiting += 1;
                    return Arrived::nothing();
                }
                let mut arrived = self.lift(key, now);
                arrived.unordered += 1;
                arrived.extend(self.after_held(key, Some(from), item, now));
                return arrived;
            }
        }
        let mut arrived = Arrived::nothing();
        let Some(group) = self.groups.get_mut(key).filter(|group| !group.held.is_empty()) else {
            arrived.deliver.push(item);
            return arrived;
        };
        if self.waiting >= WAITING_CAP {
            let (released, gaps) = group.release(Some(now), &mut arrived.deliver);
            self.waiting -= released;
            arrived.unordered = gaps;
            arrived.deliver.push(item);
            if group.fenced.is_empty() {
                self.blocked.remove(key);
            }
            return arrived;
        }
        group.held.push_back(Waiting {
            since: now,
            place: None,
            item,
        });
        self.waiting += 1;
        arrived
    }

    /// The owners' markers that wait here (behind held sends, or for an old owner's release), with their groups.
    pub(super) fn waiting_markers(&self) -> impl Iterator<Item = (&GroupKey, &T)> {
        self.groups.iter().flat_map(|(key, group)| {
            let held = group.held.iter().filter(|waiting| waiting.place.is_none()).map(|waiting| &waiting.item);
            let fenced = group.fenced.iter().filter(|fenced| fenced.stamp.is_none()).map(|fenced| &fenced.item);
            held.chain(fenced).map(move |item| (key, item))
        })
    }

    /// Each origin's last send to `key` delivered here: (origin, generation, sequence number).
    pub(super) fn records(&self, key: &GroupKey) -> Vec<(Arc<str>, u64, u64)> {
        self.groups.get(key).map_or_else(Vec::new, |group| {
            group
                .origins
                .iter()
                .filter(|(_, record)| record.last > 0)
                .map(|(origin, record)| (origin.clone(), record.generation, record.last))
                .collect()
        })
    }

    /// Takes a record of `origin`'s sends to `key` delivered elsewhere to a member that moved here, when this node
    /// has none of that incarnation (or only of an earlier one) and the table has room.
    pub(super) fn seed(&mut self, key: &GroupKey, origin: &str, generation: u64, last: u64) {
        let full = self.pairs >= DELIVERED_CAP;
        let group = self.groups.entry(key.clone()).or_default();
        match group.origins.get_mut(origin) {
            Some(record) if record.generation < generation => {
                *record = Record { generation, last };
            }
            Some(_) => {}
            None if full => {}
            None => {
                self.pairs += 1;
                group.origins.insert(Arc::from(origin), Record { generation, last });
            }
        }
        if group.origins.is_empty() && group.held.is_empty() {
            self.groups.remove(key);
        }
    }

    /// Whether send `seq` of `origin` (that `generation`) to `key` was delivered here, or passed by.
    pub(super) fn delivered(&self, key: &GroupKey, origin: &str, generation: u64, seq: u64) -> bool {
        self.groups
            .get(key)
            .is_some_and(|group| group.delivered(origin, generation, seq))
    }

    /// Calls `skip` on each send held for `key` that comes before the send `seq` of `origin` (that `generation`)
    /// in the group's order: those up to it when it is held here; all of them when it has not arrived here yet
    /// (what is held here arrived before it); none when it was delivered here (what is held came after it). For a
    /// connection that got that send on another node and now becomes a member here. How many were skipped.
    pub(super) fn before_send(
        &mut self,
        key: &GroupKey,
        origin: &str,
        generation: u64,
        seq: u64,
        mut skip: impl FnMut(&mut T),
    ) -> usize {
        let Some(group) = self.groups.get_mut(key) else {
            return 0;
        };
        let held_at = group
            .held
            .iter()
            .position(|waiting| waiting.place.as_ref().is_some_and(|place| place.is(origin, generation, seq)));
        let upto = match held_at {
            Some(at) => at + 1,
            None if group.delivered(origin, generation, seq) => return 0,
            None => group.held.len(),
        };
        let mut skipped = 0;
        for waiting in group.held.iter_mut().take(upto).filter(|waiting| waiting.place.is_some()) {
            skip(&mut waiting.item);
            skipped += 1;
        }
        skipped
    }

    /// For a trace: the owner `key`'s record follows, how many of a new owner's sends wait for its release, how
    /// many wait at a gap, and the last send of `origin` delivered here.
    pub(super) fn describe(&self, key: &GroupKey, origin: &str) -> String {
        match self.groups.get(key) {
            None => "no record".to_owned(),
            Some(group) => format!(
                "follows {:?}, {} fenced, {} held, last of origin {:?}",
                group.owner.as_ref().map(ToString::to_string),
                group.fenced.len(),
                group.held.len(),
                group.origins.get(origin).map(|record| (record.generation, record.last)),
            ),
        }
    }

    /// Whether this node delivered sends of `origin` (that incarnation) to `key` and keeps their record: its
    /// members still follow that origin's sends to the group.
    pub(super) fn follows(&self, key: &GroupKey, origin: &NodeId) -> bool {
        self.groups
            .get(key)
            .and_then(|group| group.origins.get(&origin.name))
            .is_some_and(|record| record.generation == origin.generation && record.last > 0)
    }

    /// The group has no member here any more: its records go, and so do the sends held (nobody here to get them).
    /// A member that joins later starts with no record, so it waits for no send it could not have got. Kept while a
    /// member's move waits behind held sends: that member is about to be here.
    pub(super) fn forget_group(&mut self, key: &GroupKey) {
        if self.groups.get(key).is_some_and(Group::holds_a_move) {
            return;
        }
        if let Some(group) = self.groups.remove(key) {
            self.pairs -= group.origins.len();
            self.waiting -= group.held.len() + group.fenced.len();
            self.blocked.remove(key);
        }
    }

    /// How many sends wait for an earlier one now.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::NodeId;

    fn stamp(generation: u64, prev: u64, seq: u64) -> Stamp {
        Stamp {
            origin: NodeId::new("origin", generation),
            seq,
            prev,
        }
    }

    fn key() -> GroupKey {
        GroupKey::named("hub", "group")
    }

    #[test]
    fn in_order_sends_go_at_once_and_repeats_are_dropped() {
        let mut arrivals = Arrivals::default();
        let now = Instant::now();
        assert_eq!(arrivals.arrive(&key(), &stamp(1, 0, 3), None, 3, now).deliver, vec![3]);
        assert_eq!(arrivals.arrive(&key(), &stamp(1, 3, 7), None, 7, now).deliver, vec![7]);
        assert!(arrivals.arrive(&key(), &stamp(1, 0, 3), None, 3, now).deliver.is_empty());
        assert!(arrivals.arrive(&key(), &stamp(1, 3, 7), None, 7, now).deliver.is_empty());
    }

    #[test]
    fn a_send_that_overtook_an_earlier_one_waits_for_it() {
        let mut arrivals = Arrivals::default();
        let now = Instant::now();
        assert_eq!(arrivals.arrive(&key(), &stamp(1, 0, 1), None, 1, now).deliver, vec![1]);
        // 5 and 9 overtook 4 (and 4 follows 1): they wait.
        assert!(arrivals.arrive(&key(), &stamp(1, 5, 9), None, 9, now).deliver.is_empty());
        assert!(arrivals.arrive(&key(), &stamp(1, 4, 5), None, 5, now).deliver.is_empty());
        assert_eq!(arrivals.waiting(), 2);
        assert_eq!(arrivals.arrive(&key(), &stamp(1, 1, 4), None, 4, now).deliver, vec![4, 5, 9]);
        assert_eq!(arrivals.waiting(), 0);
    }

    fn stamp_of(origin: &str, prev: u64, seq: u64) -> Stamp {
        Stamp {
            origin: NodeId::new(origin, 1),
            seq,
            prev,
        }
    }

    #[test]
    fn the_group_keeps_one_order_on_every_node_whether_a_node_waits_or_not() {
        // The owner's order: y20, x5, y30, then x4 (it overtook x5 on the way and came late).
        let sends = [("y", 10, 20), ("x", 4, 5), ("y", 20, 30), ("x", 3, 4)];
        let now = Instant::now();
        // Node A had every earlier send: it holds x5 (and y30 behind it) until x4 comes.
        let mut a = Arrivals::default();
        a.arrive(&key(), &stamp_of("x", 0, 3), None, "x3", now);
        a.arrive(&key(), &stamp_of("y", 0, 10), None, "y10", now);
        // Node B never got y10 (its only member had left for a moment, say): it holds y20 and all behind it.
        let mut b = Arrivals::default();
        b.arrive(&key(), &stamp_of("x", 0, 3), None, "x3", now);
        b.arrive(&key(), &stamp_of("y", 0, 5), None, "y5", now);
        let names = ["y20", "x5", "y30", "x4"];
        let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
        for ((origin, prev, seq), name) in sends.iter().zip(names) {
            got_a.extend(a.arrive(&key(), &stamp_of(origin, *prev, *seq), None, name, now).deliver);
            got_b.extend(b.arrive(&key(), &stamp_of(origin, *prev, *seq), None, name, now).deliver);
        }
        assert_eq!(got_a, vec!["y20", "x4", "x5", "y30"]);
        assert!(got_b.is_empty(), "{got_b:?}");
        let mut late = Vec::new();
        assert_eq!(b.expire(now + GAP_WAIT, |_| false, &mut late), 1);
        let got_b: Vec<&str> = late.into_iter().map(|(_, name)| name).collect();
        assert_eq!(got_b, got_a, "one order on both nodes");
    }

    #[test]
    fn a_gap_that_never_fills_is_given_up_after_the_wait() {
        let mut arrivals = Arrivals::default();
        let now = Instant::now();
        arrivals.arrive(&key(), &stamp(1, 0, 1), None, 1, now);
        assert!(arrivals.arrive(&key(), &stamp(1, 4, 5), None, 5, now).deliver.is_empty());
        assert!(arrivals.arrive(&key(), &stamp(1, 5, 6), None, 6, now).deliver.is_empty());
        let mut deliver = Vec::new();
        assert_eq!(arrivals.expire(now + GAP_WAIT / 2, |_| false, &mut deliver), 0);
        assert!(deliver.is_empty());
        assert_eq!(arrivals.expire(now + GAP_WAIT, |_| false, &mut deliver), 1);
        assert_eq!(deliver, vec![(key(), 5), (key(), 6)]);
        // The lost one, late, is a repeat by now.
        assert!(arrivals.arrive(&key(), &stamp(1, 1, 4), None, 4, now).deliver.is_empty());
    }

    #[test]
    fn a_restarted_origin_starts_over_and_a_forgotten_group_waits_for_nothing() {
        let mut arrivals = Arrivals::default();
        let now = Instant::now();
        arrivals.arrive(&key(), &stamp(1, 0, 10), None, 10, now);
        assert!(arrivals.arrive(&key(), &stamp(1, 11, 12), None, 12, now).deliver.is_empty());
        // The new generation counts from 1; what waited for the old one is dropped.
        assert_eq!(arrivals.arrive(&key(), &stamp(2, 0, 1), None, 1, now).deliver, vec![1]);
        assert_eq!(arrivals.waiting(), 0);
        // The earlier generation is over.
        assert!(arrivals.arrive(&key(), &stamp(1, 10, 11), None, 11, now).deliver.is_empty());
        arrivals.forget_group(&key());
        assert_eq!(arrivals.arrive(&key(), &stamp(2, 1, 5), None, 5, now).deliver, vec![5]);
    }

    fn via(owner: &str, handed_from: Option<&str>) -> Via {
        Via {
            owner: NodeId::new(owner, 1),
            handed_from: handed_from.map(|from| NodeId::new(from, 1)),
        }
    }

    #[test]
    fn a_new_owners_sends_wait_for_the_old_owners_last_ones_and_its_release() {
        let mut arrivals = Arrivals::default();
        let now = Instant::now();
        let (old, new) = (via("old", None), via("new", Some("old")));
        assert_eq!(arrivals.arrive(&key(), &stamp_of("x", 0, 1), Some(&old), "x1", now).deliver, vec!["x1"]);
        // The new owner's first sends overtook the old owner's last one: they wait.
        assert!(arrivals.arrive(&key(), &stamp_of("y", 0, 1), Some(&new), "y1", now).deliver.is_empty());
        assert!(arrivals.arrive(&key(), &stamp_of("x", 2, 3), Some(&new), "x3", now).deliver.is_empty());
        // The old owner's last send goes at once, ahead of them.
        assert_eq!(arrivals.arrive(&key(), &stamp_of("x", 1, 2), Some(&old), "x2", now).deliver, vec!["x2"]);
        // A release of another node changes nothing; the old owner's lets them go, in order.
        assert!(arrivals.released(&key(), &NodeId::new("new", 1), now).deliver.is_empty());
        assert_eq!(arrivals.released(&key(), &NodeId::new("old", 1), now).deliver, vec!["y1", "x3"]);
        assert_eq!(arrivals.waiting(), 0);
        // From now on the group follows the new owner.
        assert_eq!(arrivals.arrive(&key(), &stamp_of("y", 1, 2), Some(&new), "y2", now).deliver, vec!["y2"]);
    }

    #[test]
    fn a_new_owner_waits_for_no_owner_it_did_not_take_over_from_a_live_one() {
        let mut arrivals = Arrivals::default();
        let now = Instant::now();
        arrivals.arrive(&key(), &stamp_of("x", 0, 1), Some(&via("old", None)), "x1", now);
        // The old owner died: the new one names no one.
        let after_death = via("new", None);
        assert_eq!(arrivals.arrive(&key(), &stamp_of("x", 1, 2), Some(&after_death), "x2", now).deliver, vec!["x2"]);
        // A group this node never got a send of follows nobody yet.
        let other = GroupKey::named("hub", "other");
        let handed = via("new", Some("old"));
        assert_eq!(arrivals.arrive(&other, &stamp_of("x", 0, 5), Some(&handed), "x5", now).deliver, vec!["x5"]);
    }

    #[test]
    fn the_wait_for_a_release_ends_when_the_old_owner_is_gone_or_after_the_gap_wait() {
        let now = Instant::now();
        for gone in [true, false] {
            let mut arrivals = Arrivals::default();
            arrivals.arrive(&key(), &stamp_of("x", 0, 1), Some(&via("old", None)), "x1", now);
            let handed = via("new", Some("old"));
            assert!(arrivals.arrive(&key(), &stamp_of("x", 1, 2), Some(&handed), "x2", now).deliver.is_empty());
            let mut deliver = Vec::new();
            let later = now + GAP_WAIT / 2;
            assert_eq!(arrivals.expire(later, |_| false, &mut deliver), 0);
            assert!(deliver.is_empty());
            let (at, given_up) = if gone { (later, 0) } else { (now + GAP_WAIT, 1) };
            assert_eq!(arrivals.expire(at, |owner| gone && &*owner.name == "old", &mut deliver), given_up);
            assert_eq!(deliver, vec![(key(), "x2")]);
            assert_eq!(arrivals.waiting(), 0);
        }
    }

    #[test]
    fn a_new_owners_move_marker_waits_behind_its_sends() {
        let mut arrivals = Arrivals::default();
        let now = Instant::now();
        arrivals.arrive(&key(), &stamp_of("x", 0, 1), Some(&via("old", None)), "x1", now);
        assert!(arrivals.arrive(&key(), &stamp_of("x", 1, 2), Some(&via("new", Some("old"))), "x2", now).deliver.is_empty());
        let new = NodeId::new("new", 1);
        assert!(arrivals.after_held(&key(), Some(&new), "moved", now).deliver.is_empty());
        assert_eq!(arrivals.released(&key(), &NodeId::new("old", 1), now).deliver, vec!["x2", "moved"]);
    }
}
