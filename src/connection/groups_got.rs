//! What a connection that moved here had got of its groups' sends where it ran: per group and origin, the last
//! send delivered there while it was a member. A group send at or before it is a repeat, and the connection drops
//! it.
//!
//! Why: a member node's records of delivered group sends are per node (`src/mesh/arrivals.rs`). The node a
//! connection moves to takes the carried records of the origins it has none of (`src/mesh/sends_got.rs`), but
//! where it has one already (it is the connection's keeper, which followed the group, the usual case of a drain)
//! its own record stands, and may be older: a send of that origin sent again after its group's owner left then
//! reached the connection a second time (14 user messages again in a rolling restart, `tests/drain_moves.rs`). The
//! node's record cannot simply be raised: its other members may not have those sends yet. So the connection keeps
//! its own floor.
//!
//! Bounded: the carried records (at most one per origin of each of its groups), kept [`FLOOR_WINDOW`] after the
//! move (sends are sent again within seconds of an owner leaving), then dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::outbound::SendMark;

/// How long a moved connection keeps the floors it came with.
pub const FLOOR_WINDOW: Duration = Duration::from_secs(60);

/// Of one origin's sends to one of the connection's groups: the last it got where it ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupFloor {
    /// The group's name (the user's name for a user's group).
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

impl GroupFloor {
    /// Whether the group send marked `mark` is one of those the connection got (or passed by: an earlier
    /// incarnation's).
    fn covers(&self, mark: &SendMark) -> bool {
        *self.group == *mark.group
            && self.user == mark.user
            && *self.origin == *mark.origin
            && (mark.generation < self.generation || (mark.generation == self.generation && mark.seq <= self.last))
    }
}

/// A moved connection's floors, until [`FLOOR_WINDOW`] after its move.
#[derive(Debug)]
pub(super) struct GroupsGot {
    until: Instant,
    floors: Vec<GroupFloor>,
}

impl GroupsGot {
    /// The floors a connection moved here with, if any.
    pub(super) fn new(floors: Vec<GroupFloor>) -> Option<Box<GroupsGot>> {
        (!floors.is_empty()).then(|| {
            Box::new(GroupsGot {
                until: Instant::now() + FLOOR_WINDOW,
                floors,
            })
        })
    }

    /// Whether the send marked `mark` is a group send the connection got where it ran.
    pub(super) fn covers(&self, mark: &SendMark) -> bool {
        !mark.direct && !mark.broadcast && self.floors.iter().any(|floor| floor.covers(mark))
    }

    /// Whether the floors are past their window (the caller drops them).
    pub(super) fn expired(&self) -> bool {
        Instant::now() >= self.until
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn mark(group: &str, user: bool, origin: &str, generation: u64, seq: u64) -> SendMark {
        SendMark {
            group: Arc::from(group),
            user,
            broadcast: false,
            direct: false,
            origin: Arc::from(origin),
            generation,
            seq,
        }
    }

    fn got() -> Box<GroupsGot> {
        GroupsGot::new(vec![GroupFloor {
            group: Arc::from("u"),
            user: true,
            origin: Arc::from("n1"),
            generation: 7,
            last: 6,
        }])
        .unwrap()
    }

    #[test]
    fn a_send_it_got_where_it_ran_is_a_repeat_and_later_ones_are_not() {
        let got = got();
        assert!(got.covers(&mark("u", true, "n1", 7, 2)));
        assert!(got.covers(&mark("u", true, "n1", 7, 6)));
        assert!(got.covers(&mark("u", true, "n1", 6, 90)), "an earlier incarnation's");
        assert!(!got.covers(&mark("u", true, "n1", 7, 7)));
        assert!(!got.covers(&mark("u", true, "n1", 8, 1)), "a later incarnation's");
    }

    #[test]
    fn only_its_group_and_origin_and_no_other_kind_of_send() {
        let got = got();
        assert!(!got.covers(&mark("u", false, "n1", 7, 2)), "a named group of the same name");
        assert!(!got.covers(&mark("v", true, "n1", 7, 2)));
        assert!(!got.covers(&mark("u", true, "n2", 7, 2)));
        let mut direct = mark("u", true, "n1", 7, 2);
        direct.direct = true;
        assert!(!got.covers(&direct));
    }

    #[test]
    fn nothing_carried_keeps_nothing() {
        assert!(GroupsGot::new(Vec::new()).is_none());
    }
}
