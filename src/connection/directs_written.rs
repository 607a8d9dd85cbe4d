//! Per origin node, the last send by id a connection wrote: a send by id at or before it is a repeat, and the
//! connection drops it.
//!
//! Why: a node sends again, to every live peer, the sends by id it passed to a node that left its view
//! (`src/mesh/kept_direct.rs`), and the node that serves each of their connections delivers them. That node may
//! have got one already through the node that left (it passed it on before it stopped), or may get it from there
//! later (a frozen node that thaws resumes its link streams, chaos defect 31 in `tests/cli/chaos/README.md`).
//! Each origin numbers its sends by id in the order it sends them (`SendMark`), so a connection keeps each origin's
//! order and gets each send once by writing only those past the last it wrote.
//!
//! Bounded: one entry per origin name (a restarted origin replaces its earlier incarnation's), at most
//! [`ORIGINS_CAP`]; past it a new origin's sends are written unchecked (counted as `direct_origins_untracked` in
//! [`super::BoundsHit`]).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::outbound::SendMark;

/// The most origins a connection tracks.
pub const ORIGINS_CAP: usize = 256;

/// One origin's last send by id written to the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastDirect {
    /// The origin node's name (shared with the sends' marks).
    pub origin: Arc<str>,
    /// Its generation.
    pub generation: u64,
    /// Its number of the send.
    pub seq: u64,
}

/// What a send by id is to a connection, against what it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Written {
    /// Past the last of its origin (or the first): to write.
    New,
    /// At or before the last of its origin: a repeat, dropped.
    Repeat,
    /// Its origin is not tracked ([`ORIGINS_CAP`]): written unchecked.
    Untracked,
}

/// A connection's last send by id written, per origin (see the module documentation). Empty until the first.
#[derive(Debug, Default)]
pub(super) struct DirectsWritten {
    last: Vec<LastDirect>,
}

impl DirectsWritten {
    /// Starts from what the connection wrote where it ran before (a move, or its copy at a take-over).
    pub(super) fn from_last(last: Vec<LastDirect>) -> Self {
        let mut written = DirectsWritten::default();
        for entry in last.into_iter().take(ORIGINS_CAP) {
            written.note(&entry.origin, entry.generation, entry.seq);
        }
        written
    }

    /// Whether the send marked `mark` is new to the connection; a new one is noted as its origin's last.
    pub(super) fn check(&mut self, mark: &SendMark) -> Written {
        if !mark.direct {
            return Written::New;
        }
        if self.note(&mark.origin, mark.generation, mark.seq) {
            return Written::New;
        }
        if self.last.iter().any(|last| *last.origin == *mark.origin) {
            Written::Repeat
        } else {
            Written::Untracked
        }
    }

    /// Notes `(generation, seq)` as `origin`'s last if it is past the one noted; false if it is not, or if the
    /// origin is new and there is no room for it.
    fn note(&mut self, origin: &Arc<str>, generation: u64, seq: u64) -> bool {
        if let Some(last) = self.last.iter_mut().find(|last| last.origin == *origin) {
            if (generation, seq) <= (last.generation, last.seq) {
                return false;
            }
            last.generation = generation;
            last.seq = seq;
            return true;
        }
        if self.last.len() >= ORIGINS_CAP {
            return false;
        }
        self.last.push(LastDirect {
            origin: origin.clone(),
            generation,
            seq,
        });
        true
    }

    /// What it wrote, to carry where it moves.
    pub(super) fn export(&self) -> Vec<LastDirect> {
        self.last.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(origin: &str, generation: u64, seq: u64) -> SendMark {
        SendMark {
            group: Arc::from(""),
            user: false,
            broadcast: false,
            direct: true,
            origin: Arc::from(origin),
            generation,
            seq,
        }
    }

    #[test]
    fn a_send_at_or_before_its_origins_last_is_a_repeat() {
        let mut written = DirectsWritten::default();
        assert_eq!(written.check(&direct("a", 1, 5)), Written::New);
        assert_eq!(written.check(&direct("a", 1, 5)), Written::Repeat);
        assert_eq!(written.check(&direct("a", 1, 3)), Written::Repeat);
        assert_eq!(written.check(&direct("b", 1, 1)), Written::New);
        assert_eq!(written.check(&direct("a", 1, 9)), Written::New);
        // A restarted origin numbers from 0 again, in a higher generation.
        assert_eq!(written.check(&direct("a", 2, 0)), Written::New);
        assert_eq!(written.check(&direct("a", 1, 10)), Written::Repeat);
    }

    #[test]
    fn group_sends_are_not_checked() {
        let mut written = DirectsWritten::default();
        let mut group = direct("a", 1, 5);
        group.direct = false;
        assert_eq!(written.check(&group), Written::New);
        assert_eq!(written.check(&group), Written::New);
        assert!(written.export().is_empty());
    }

    #[test]
    fn past_the_cap_new_origins_go_unchecked_and_the_tracked_ones_stay() {
        let mut written = DirectsWritten::default();
        for n in 0..ORIGINS_CAP {
            assert_eq!(written.check(&direct(&format!("n{n}"), 1, 1)), Written::New);
        }
        assert_eq!(written.check(&direct("late", 1, 1)), Written::Untracked);
        assert_eq!(written.check(&direct("late", 1, 1)), Written::Untracked);
        assert_eq!(written.check(&direct("n0", 1, 1)), Written::Repeat);
    }

    #[test]
    fn a_moved_connection_starts_from_what_it_wrote() {
        let mut before = DirectsWritten::default();
        before.check(&direct("a", 3, 7));
        let mut after = DirectsWritten::from_last(before.export());
        assert_eq!(after.check(&direct("a", 3, 7)), Written::Repeat);
        assert_eq!(after.check(&direct("a", 3, 8)), Written::New);
    }
}
