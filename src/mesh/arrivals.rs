//! A member node's record of the group sends that arrived for its members, per group and origin incarnation
//! ([`Arrivals`]): it drops a repeat (a send re-sent after its owner left, which arrived here already), and puts
//! back in order a send that overtook an earlier one of the same origin to the same group on the way, holding it
//! at most [`GAP_WAIT`] for the earlier one.
//!
//! Why sends can overtake each other: a send goes from its origin to the group's owner, which may pass it on when
//! ownership moved meanwhile (`mesh/owner.rs`); the origin's later sends go straight to the new owner, and can get
//! there first. A stamp names the origin's previous send to the same group ([`Stamp::prev`]), so a member node
//! sees the gap and waits for the missing send instead of dropping it as a repeat when it comes.
//!
//! Plain data: the router locks it and delivers what it hands back (`mesh/delivery.rs`).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::group::{GroupKey, Stamp};
use super::group_send::HELD_SENDS_CAP;

/// The most (group, origin node) pairs whose last delivered sequence number a node keeps (one per group with
/// members here and node that sends to it; dropped when the group has no member here any more). Past it, the
/// sends of a new pair are delivered without a record, counted: one of them re-sent after its owner died could
/// then arrive twice.
pub const DELIVERED_CAP: usize = 262_144;

/// How long a send that overtook an earlier one of its origin waits for it: longer than an owner settles after a
/// membership change (3 s) while it passes sends on. Past it, the earlier send counts as lost and the waiting ones
/// are delivered, in order, counted.
pub const GAP_WAIT: Duration = Duration::from_secs(5);

/// The most sends waiting for an earlier one, all groups together: past it, a send that overtook another is
/// delivered at once (out of order rather than held without bound), counted.
pub const WAITING_CAP: usize = HELD_SENDS_CAP;

/// Of one origin's sends to one group: the origin's generation, the last sequence number delivered here, and the
/// sends that wait for an earlier one, by sequence number.
struct Record<T> {
    generation: u64,
    last: u64,
    waiting: VecDeque<Waiting<T>>,
}

struct Waiting<T> {
    since: Instant,
    prev: u64,
    seq: u64,
    item: T,
}

/// What became of a send that arrived.
pub(super) struct Arrived<T> {
    /// To deliver now, in this order (the send, and those that waited for it), or nothing.
    pub(super) deliver: Vec<T>,
    /// Delivered without a record: the table holds [`DELIVERED_CAP`] pairs.
    pub(super) untracked: bool,
    /// Delivered out of order: [`WAITING_CAP`] sends wait already.
    pub(super) unordered: bool,
}

/// The records of the group sends delivered here (see the module documentation).
pub(super) struct Arrivals<T> {
    groups: HashMap<GroupKey, HashMap<Arc<str>, Record<T>>>,
    pairs: usize,
    waiting: usize,
}

impl<T> Default for Arrivals<T> {
    fn default() -> Self {
        Arrivals {
            groups: HashMap::new(),
            pairs: 0,
            waiting: 0,
        }
    }
}

impl<T> Arrivals<T> {
    /// A send to `key` stamped `stamp` arrived: what to deliver now.
    pub(super) fn arrive(&mut self, key: &GroupKey, stamp: &Stamp, item: T, now: Instant) -> Arrived<T> {
        let mut arrived = Arrived {
            deliver: Vec::new(),
            untracked: false,
            unordered: false,
        };
        let full = self.pairs >= DELIVERED_CAP;
        let origins = self.groups.entry(key.clone()).or_default();
        let record = match origins.get_mut(&stamp.origin.name) {
            Some(record) => record,
            None if full => {
                if origins.is_empty() {
                    self.groups.remove(key);
                }
                arrived.untracked = true;
                arrived.deliver.push(item);
                return arrived;
            }
            None => {
                self.pairs += 1;
                origins.entry(stamp.origin.name.clone()).or_insert(Record {
                    generation: stamp.origin.generation,
                    last: 0,
                    waiting: VecDeque::new(),
                })
            }
        };
        match stamp.origin.generation.cmp(&record.generation) {
            // A later incarnation of the origin (it restarted and counts from 1 again): the earlier one's record
            // and what waited for it are over.
            std::cmp::Ordering::Greater => {
                self.waiting -= record.waiting.len();
                *record = Record {
                    generation: stamp.origin.generation,
                    last: 0,
                    waiting: VecDeque::new(),
                };
            }
            // From an earlier incarnation, after its successor's sends: that life is over.
            std::cmp::Ordering::Less => return arrived,
            std::cmp::Ordering::Equal => {}
        }
        if stamp.seq <= record.last || record.waiting.iter().any(|waiting| waiting.seq == stamp.seq) {
            // A re-sent send that arrived here before.
            return arrived;
        }
        // A first record (last 0) waits for nothing: this node may have had no member when the earlier sends went.
        if record.last > 0 && stamp.prev > record.last {
            if self.waiting < WAITING_CAP {
                let at = record.waiting.partition_point(|waiting| waiting.seq < stamp.seq);
                record.waiting.insert(
                    at,
                    Waiting {
                        since: now,
                        prev: stamp.prev,
                        seq: stamp.seq,
                        item,
                    },
                );
                self.waiting += 1;
                return arrived;
            }
            arrived.unordered = true;
        }
        record.last = stamp.seq;
        arrived.deliver.push(item);
        self.waiting -= release(record, &mut arrived.deliver);
        arrived
    }

    /// Sends that waited [`GAP_WAIT`] for an earlier one: the earlier one counts as lost, and they go, in order,
    /// with their group. Returns how many gaps were given up on.
    pub(super) fn expire(&mut self, now: Instant, deliver: &mut Vec<(GroupKey, T)>) -> u64 {
        if self.waiting == 0 {
            return 0;
        }
        let mut gaps = 0;
        for (key, origins) in &mut self.groups {
            for record in origins.values_mut() {
                while record
                    .waiting
                    .front()
                    .is_some_and(|waiting| now.duration_since(waiting.since) >= GAP_WAIT)
                {
                    let Some(first) = record.waiting.pop_front() else {
                        break;
                    };
                    self.waiting -= 1;
                    gaps += 1;
                    record.last = first.seq;
                    let mut items = vec![first.item];
                    self.waiting -= release(record, &mut items);
                    deliver.extend(items.into_iter().map(|item| (key.clone(), item)));
                }
            }
        }
        gaps
    }

    /// The group has no member here any more: its records go, and so do the sends that waited (nobody here to get
    /// them). A member that joins later starts with no record, so it waits for no send it could not have got.
    pub(super) fn forget_group(&mut self, key: &GroupKey) {
        if let Some(origins) = self.groups.remove(key) {
            self.pairs -= origins.len();
            self.waiting -= origins.values().map(|record| record.waiting.len()).sum::<usize>();
        }
    }

    /// How many sends wait for an earlier one now.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.waiting
    }
}

/// Moves the sends that waited for what was just delivered to `deliver`, in order; returns how many left `waiting`.
fn release<T>(record: &mut Record<T>, deliver: &mut Vec<T>) -> usize {
    let mut released = 0;
    while record.waiting.front().is_some_and(|waiting| waiting.prev <= record.last) {
        let Some(next) = record.waiting.pop_front() else {
            break;
        };
        released += 1;
        // One that an unordered delivery overtook is a repeat now; the others follow in order.
        if next.seq > record.last {
            record.last = next.seq;
            deliver.push(next.item);
        }
    }
    released
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
        assert_eq!(arrivals.arrive(&key(), &stamp(1, 0, 3), 3, now).deliver, vec![3]);
        assert_eq!(arrivals.arrive(&key(), &stamp(1, 3, 7), 7, now).deliver, vec![7]);
        assert!(arrivals.arrive(&key(), &stamp(1, 0, 3), 3, now).deliver.is_empty());
        assert!(arrivals.arrive(&key(), &stamp(1, 3, 7), 7, now).deliver.is_empty());
    }

    #[test]
    fn a_send_that_overtook_an_earlier_one_waits_for_it() {
        let mut arrivals = Arrivals::default();
        let now = Instant::now();
        assert_eq!(arrivals.arrive(&key(), &stamp(1, 0, 1), 1, now).deliver, vec![1]);
        // 5 and 9 overtook 4 (and 4 follows 1): they wait.
        assert!(arrivals.arrive(&key(), &stamp(1, 5, 9), 9, now).deliver.is_empty());
        assert!(arrivals.arrive(&key(), &stamp(1, 4, 5), 5, now).deliver.is_empty());
        assert_eq!(arrivals.waiting(), 2);
        assert_eq!(arrivals.arrive(&key(), &stamp(1, 1, 4), 4, now).deliver, vec![4, 5, 9]);
        assert_eq!(arrivals.waiting(), 0);
    }

    #[test]
    fn a_gap_that_never_fills_is_given_up_after_the_wait() {
        let mut arrivals = Arrivals::default();
        let now = Instant::now();
        arrivals.arrive(&key(), &stamp(1, 0, 1), 1, now);
        assert!(arrivals.arrive(&key(), &stamp(1, 4, 5), 5, now).deliver.is_empty());
        assert!(arrivals.arrive(&key(), &stamp(1, 5, 6), 6, now).deliver.is_empty());
        let mut deliver = Vec::new();
        assert_eq!(arrivals.expire(now + GAP_WAIT / 2, &mut deliver), 0);
        assert!(deliver.is_empty());
        assert_eq!(arrivals.expire(now + GAP_WAIT, &mut deliver), 1);
        assert_eq!(deliver, vec![(key(), 5), (key(), 6)]);
        // The lost one, late, is a repeat by now.
        assert!(arrivals.arrive(&key(), &stamp(1, 1, 4), 4, now).deliver.is_empty());
    }

    #[test]
    fn a_restarted_origin_starts_over_and_a_forgotten_group_waits_for_nothing() {
        let mut arrivals = Arrivals::default();
        let now = Instant::now();
        arrivals.arrive(&key(), &stamp(1, 0, 10), 10, now);
        assert!(arrivals.arrive(&key(), &stamp(1, 11, 12), 12, now).deliver.is_empty());
        // The new generation counts from 1; what waited for the old one is dropped.
        assert_eq!(arrivals.arrive(&key(), &stamp(2, 0, 1), 1, now).deliver, vec![1]);
        assert_eq!(arrivals.waiting(), 0);
        // The earlier generation is over.
        assert!(arrivals.arrive(&key(), &stamp(1, 10, 11), 11, now).deliver.is_empty());
        arrivals.forget_group(&key());
        assert_eq!(arrivals.arrive(&key(), &stamp(2, 1, 5), 5, now).deliver, vec![5]);
    }
}
