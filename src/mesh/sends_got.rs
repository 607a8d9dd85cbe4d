//! What a member that moves to another node had got of its groups' sends (chaos defect 15,
//! `tests/cli/chaos/README.md`). A member node's records of the sends it delivered are per node
//! (`super::arrivals`): the node a connection moves to may have no record of an origin whose sends the connection
//! got on the node it left (no member of the group was there), and a send of that origin sent again later (its
//! group's owner left, `super::group_send`) would reach it a second time. So the node it leaves notes its records
//! of each group at the moment the owner's marker takes the connection out of it, in the group's order
//! ([`Router::note_left`]); the move carries them ([`SendsGot`], `src/node/http/moving.rs`); and the node it moves
//! to takes the records of the origins it has none of ([`Router::seed_arrivals`]): the sends the connection got
//! are then repeats there too.
//!
//! Bounds: notes are kept for at most [`LEFT_NOTES_CAP`] connections and [`LEFT_NOTE_WINDOW`] (a move takes its
//! notes within seconds); past the cap a leaving member is not noted, counted (`left_notes_refused`).

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::arrivals::Arrivals;
use super::group::GroupKey;
use super::router::InOrder;
use super::{LocalHub, Router};
use crate::connection::ConnectionId;

/// The most connections whose leaving records a node notes at once (as many as move to one hub at once, at most).
pub const LEFT_NOTES_CAP: usize = 16_384;

/// How long a note waits for its move to take it.
pub const LEFT_NOTE_WINDOW: Duration = Duration::from_secs(60);

/// Of one origin's sends to one group: the last delivered where the connection was.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct OriginLast {
    pub(crate) origin: String,
    pub(crate) generation: u64,
    pub(crate) last: u64,
}

/// What a moving connection had got of its groups' sends on the node it left: per group, each origin's last.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct SendsGot {
    pub(crate) groups: Vec<(GroupKey, Vec<OriginLast>)>,
}

/// The notes of the connections that left groups here for another node, by connection.
#[derive(Default)]
pub(super) struct LeftNotes {
    notes: HashMap<ConnectionId, (Instant, SendsGot)>,
}

impl<H: LocalHub> Router<H> {
    /// The owner's marker takes `connection` out of group `key` here (it moves to another node): notes what this
    /// node's records say it got of the group, for its move to carry. Called under the records' lock.
    pub(super) fn note_left(&self, delivered: &Arrivals<InOrder>, key: &GroupKey, connection: &ConnectionId) {
        let origins: Vec<OriginLast> = delivered
            .records(key)
            .into_iter()
            .map(|(origin, generation, last)| OriginLast {
                origin: origin.to_string(),
                generation,
                last,
            })
            .collect();
        let mut notes = self.left_notes.lock();
        let full = notes.notes.len() >= LEFT_NOTES_CAP;
        match notes.notes.get_mut(connection) {
            Some((at, got)) => {
                *at = Instant::now();
                got.groups.retain(|(group, _)| group != key);
                got.groups.push((key.clone(), origins));
            }
            None if full => {
                drop(notes);
                let hit = &self.bounds_hit;
                let what = "too many moving connections' records noted: one moves without them";
                hit.hit(&hit.left_notes_refused, 1, &self.span, what);
            }
            None => {
                let got = SendsGot {
                    groups: vec![(key.clone(), origins)],
                };
                notes.notes.insert(connection.clone(), (Instant::now(), got));
            }
        }
    }

    /// What connection `id` got of the groups it left here for another node (for its move to carry); empty if
    /// nothing was noted.
    pub(crate) fn take_sends_got(&self, id: &ConnectionId) -> SendsGot {
        self.left_notes
            .lock()
            .notes
            .remove(id)
            .map(|(_, got)| got)
            .unwrap_or_default()
    }

    /// A connection moved here with what it got of its groups' sends on the node it left: this node takes each
    /// origin's record it has none of, so those sends, if they come again, are repeats here too.
    pub(crate) fn seed_arrivals(&self, got: &SendsGot) {
        let mut delivered = self.delivered.lock();
        for (key, origins) in &got.groups {
            for origin in origins {
                delivered.seed(key, &origin.origin, origin.generation, origin.last);
            }
        }
    }

    /// Notes older than [`LEFT_NOTE_WINDOW`] go (their move failed, or never asked).
    pub(super) fn expire_left_notes(&self) {
        let now = Instant::now();
        self.left_notes
            .lock()
            .notes
            .retain(|_, (at, _)| now.duration_since(*at) < LEFT_NOTE_WINDOW);
    }
}
