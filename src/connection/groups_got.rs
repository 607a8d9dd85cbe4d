//! What a connection that moved (a drain, a resume on the client's node, or its keeper's take-over) had got of its
//! groups' sends where it ran: a group send at or before one of those that reaches it again is dropped.
//!
//! Why: a group send is sent again when its owner leaves (its sender retained it), and member nodes drop the
//! repeats by their own records (`src/mesh/arrivals.rs`), which are per node. The node a connection moves to takes
//! the move's note of what it got (`src/mesh/sends_got.rs`) only for origins it has no record of, and only once
//! the connection is installed; a send sent again that reached it before (its owner left while the connection
//! moved, as in a rolling restart) made a record of its own, older than the note, and the connection then got
//! every later one again (the 12-client rolling restart in `tests/drain_moves.rs`, a block of user messages twice
//! at the end of the stream). The connection's own filter catches those whatever the node's records say, and
//! touches no other member's deliveries.
//!
//! Bounded: at most [`GOT_CAP`] entries (the move's note: groups times origins); past it the rest are not
//! filtered, counted (`groups_got_untracked` in [`super::BoundsHit`]). Kept for the connection's life on this node
//! (a later move carries the next node's note instead).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::outbound::SendMark;

/// The most (group, origin) pairs a connection filters.
pub const GOT_CAP: usize = 1024;

/// Of one origin's sends to one of the connection's groups: the last it got where it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupGot {
    /// The group's name (the user's, for a user's group).
    pub group: Arc<str>,
    /// Whether it is a user's group.
    pub user: bool,
    /// The origin node's name.
    pub origin: Arc<str>,
    /// Its generation.
    pub generation: u64,
    /// Its number of the last send the connection got.
    pub last: u64,
}

/// The filter (see the module documentation). Empty for a connection that never moved.
#[derive(Debug, Default)]
pub(super) struct GroupsGot {
    got: Vec<GroupGot>,
}

impl GroupsGot {
    /// The filter of `got`, at most [`GOT_CAP`] pairs of it; how many were left out goes to `untracked`.
    pub(super) fn new(mut got: Vec<GroupGot>, untracked: &std::sync::atomic::AtomicU64) -> Self {
        let left_out = got.len().saturating_sub(GOT_CAP);
        if left_out > 0 {
            untracked.fetch_add(left_out as u64, std::sync::atomic::Ordering::Relaxed);
            got.truncate(GOT_CAP);
        }
        GroupsGot { got }
    }

    /// Whether the group send marked `mark` is one the connection got where it ran.
    pub(super) fn repeats(&self, mark: &SendMark) -> bool {
        if self.got.is_empty() || mark.direct || mark.broadcast {
            return false;
        }
        self.got.iter().any(|got| {
            got.user == mark.user
                && *got.group == *mark.group
                && *got.origin == *mark.origin
                && (mark.generation < got.generation || (mark.generation == got.generation && mark.seq <= got.last))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{GroupGot, GroupsGot, SendMark};

    fn mark(group: &str, user: bool, origin: &str, generation: u64, seq: u64) -> SendMark {
        SendMark {
            group: group.into(),
            user,
            broadcast: false,
            direct: false,
            origin: origin.into(),
            generation,
            seq,
        }
    }

    #[test]
    fn sends_at_or_before_what_it_got_of_that_group_and_origin_are_repeats() {
        let untracked = std::sync::atomic::AtomicU64::new(0);
        let got = GroupsGot::new(
            vec![GroupGot {
                group: "u".into(),
                user: true,
                origin: "n1".into(),
                generation: 7,
                last: 10,
            }],
            &untracked,
        );
        assert!(got.repeats(&mark("u", true, "n1", 7, 10)));
        assert!(got.repeats(&mark("u", true, "n1", 7, 3)));
        assert!(got.repeats(&mark("u", true, "n1", 6, 99)), "an earlier incarnation's");
        assert!(!got.repeats(&mark("u", true, "n1", 7, 11)));
        assert!(!got.repeats(&mark("u", true, "n1", 8, 1)), "a later incarnation's");
        assert!(!got.repeats(&mark("u", false, "n1", 7, 3)), "the named group of the same name");
        assert!(!got.repeats(&mark("u", true, "n2", 7, 3)), "another origin");
        let mut direct = mark("u", true, "n1", 7, 3);
        direct.direct = true;
        assert!(!got.repeats(&direct), "sends by id have their own check");
        assert!(!GroupsGot::default().repeats(&mark("u", true, "n1", 7, 3)));
    }
}
