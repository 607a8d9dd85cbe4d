//! Groups this node follows for stateful connections it keeps for other nodes (the node layer's keeping,
//! `src/node/http/keeping.rs`): so that a connection whose server dies misses none of its groups' sends.
//!
//! For each group of a kept connection this node is a member node of the group under a *kept member* id (the
//! connection's id behind [`KEPT_PREFIX`]), registered at the group's owner like any member: the owner fans the
//! group's sends out to this node too, in the group's one order, and keeps doing so after the server died (its
//! members leave with it; the kept member stays). Kept members count and list as no one (`super::directory`), and
//! travel in this node's snapshots like its own members (`super::rehome`), so a group that changes owner keeps
//! them.
//!
//! This node records each delivery of such a group in a short history ([`KeptGroups`]). When it takes the
//! connection over, [`Router::resume_kept_member`] delivers to it, from the history, every send after the last
//! one its server numbered for the client (the copy's [`SendMark`]), then makes it a member here, under the
//! records' lock that every delivery of the group on this node takes: nothing is missed or delivered twice
//! between the replay and the membership.
//!
//! Bounds: a group's history holds at most [`KEPT_HISTORY_CAP`] sends and none older than
//! [`KEPT_HISTORY_WINDOW`], all of them together at most [`KEPT_HISTORIES_CAP`] (past any, the oldest go; a resume
//! that needed one counts a gap); at most
//! [`KEPT_GROUPS_CAP`] groups are followed (a keep past it is refused, counted, and that group's sends are lost
//! for the connection if its server dies).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::group::{GroupKey, GroupKind, Stamp};
use super::router::InOrder;
use super::sends_got::OriginLast;
use super::{LocalHub, MeshError, Router};
use crate::connection::{ConnectionId, SendMark, SharedFrame};

/// What starts a kept member's id: no connection id starts with it (ids are `<random>.<node>`).
pub const KEPT_PREFIX: char = '~';

/// How long a group's history keeps a send: longer than failure detection (about 2 s) and a take-over, with room
/// for a server stopped (SIGSTOP) a while before it is declared dead.
pub const KEPT_HISTORY_WINDOW: Duration = Duration::from_secs(15);

/// The most sends one group's history holds (a group sending faster than this per window loses the oldest).
pub const KEPT_HISTORY_CAP: usize = 4_096;

/// The most groups a node follows for the connections it keeps.
pub const KEPT_GROUPS_CAP: usize = 65_536;

/// The most sends all of a node's histories hold together: past it, a send is recorded only in place of its
/// group's oldest (a group with none held records none).
pub const KEPT_HISTORIES_CAP: usize = 262_144;

/// The kept member id of connection `id`.
pub(crate) fn kept_member(id: &ConnectionId) -> ConnectionId {
    ConnectionId::new(format!("{KEPT_PREFIX}{id}"))
}

/// Whether `id` is a kept member id.
pub(crate) fn is_kept_member(id: &ConnectionId) -> bool {
    id.as_str().starts_with(KEPT_PREFIX)
}

/// One send of a followed group, as delivered here.
struct Entry {
    index: u64,
    at: Instant,
    stamp: Stamp,
    frame: Arc<SharedFrame>,
    except: Arc<[ConnectionId]>,
}

/// One followed group: its kept connections (with the index of the first send recorded for each), and its history.
#[derive(Default)]
struct KeptGroup {
    members: HashMap<ConnectionId, u64>,
    next: u64,
    /// The index of the last send evicted before its time (over the cap), if any (0 is a send's index).
    evicted: Option<u64>,
    history: VecDeque<Entry>,
}

/// What a resume found.
pub(super) struct Resume {
    /// The sends to deliver, in the group's order.
    pub(super) frames: Vec<Arc<SharedFrame>>,
    /// Sends the connection needed were evicted (over the cap) before the resume.
    pub(super) gap: bool,
    /// The history held the send the mark names: every send held here for a gap comes after it.
    pub(super) marked: bool,
    /// Sends after the starting point that `got` left out (its server had numbered them).
    pub(super) got_already: usize,
    /// The first sends delivered, as `origin.generation:seq` (at most [`LOGGED_STAMPS`]), for the debug log.
    pub(super) stamps: Vec<String>,
}

/// How many of a resume's sends its debug log names.
const LOGGED_STAMPS: usize = 32;

/// The groups this node follows, with their histories.
#[derive(Default)]
pub(super) struct KeptGroups {
    groups: HashMap<GroupKey, KeptGroup>,
    /// Sends held in every history.
    entries: usize,
}

impl KeptGroups {
    /// Follows `key` for connection `id`; false past [`KEPT_GROUPS_CAP`].
    pub(super) fn keep(&mut self, key: &GroupKey, id: &ConnectionId) -> bool {
        if !self.groups.contains_key(key) && self.groups.len() >= KEPT_GROUPS_CAP {
            return false;
        }
        let group = self.groups.entry(key.clone()).or_default();
        let next = group.next;
        group.members.entry(id.clone()).or_insert(next);
        true
    }

    /// Stops following `key` for `id`; the group goes with its last kept connection.
    pub(super) fn unkeep(&mut self, key: &GroupKey, id: &ConnectionId) {
        if let Some(group) = self.groups.get_mut(key) {
            group.members.remove(id);
            if group.members.is_empty() {
                if let Some(group) = self.groups.remove(key) {
                    self.entries -= group.history.len();
                }
            }
        }
    }

    /// Whether a kept connection follows `key`.
    pub(super) fn follows(&self, key: &GroupKey) -> bool {
        self.groups.contains_key(key)
    }

    /// Records a send of `key` delivered here; false if no kept connection follows the group.
    pub(super) fn record(
        &mut self,
        key: &GroupKey,
        stamp: &Stamp,
        frame: &Arc<SharedFrame>,
        except: &Arc<[ConnectionId]>,
        now: Instant,
    ) -> bool {
        let Some(group) = self.groups.get_mut(key) else {
            return false;
        };
        self.entries -= expire(group, now);
        if group.history.len() >= KEPT_HISTORY_CAP || self.entries >= KEPT_HISTORIES_CAP {
            match group.history.pop_front() {
                Some(evicted) => {
                    group.evicted = Some(evicted.index);
                    self.entries -= 1;
                }
                None => {
                    // Every history is full and this group holds none: this send is not recorded, and a resume that
                    // needed it knows.
                    group.evicted = Some(group.next);
                    group.next += 1;
                    return true;
                }
            }
        }
        group.history.push_back(Entry {
            index: group.next,
            at: now,
            stamp: stamp.clone(),
            frame: Arc::clone(frame),
            except: Arc::clone(except),
        });
        group.next += 1;
        self.entries += 1;
        true
    }

    /// Drops sends older than the window from every history.
    pub(super) fn sweep(&mut self, now: Instant) {
        for group in self.groups.values_mut() {
            self.entries -= expire(group, now);
        }
    }

    /// Stops following `key` for `id`, and gives the sends it missed: those after the one `last` marks (or, when
    /// the history does not hold that one, every send recorded since `id` was followed, unless that one has not
    /// arrived here yet, `ahead`: then everything recorded came before it), but none its server had numbered for
    /// it by `got`, each origin's last.
    pub(super) fn take(
        &mut self,
        key: &GroupKey,
        id: &ConnectionId,
        last: Option<&SendMark>,
        ahead: bool,
        got: &[OriginLast],
    ) -> Resume {
        let mut resume = Resume {
            frames: Vec::new(),
            gap: false,
            marked: false,
            got_already: 0,
            stamps: Vec::new(),
        };
        let Some(group) = self.groups.get_mut(key) else {
            return resume;
        };
        let Some(start) = group.members.remove(id) else {
            return resume;
        };
        let marked = last.and_then(|mark| {
            group
                .history
                .iter()
                .find(|entry| {
                    entry.stamp.seq == mark.seq
                        && entry.stamp.origin.generation == mark.generation
                        && *entry.stamp.origin.name == *mark.origin
                })
                .map(|entry| entry.index)
        });
        resume.marked = marked.is_some();
        let from = match marked {
            Some(index) => (index + 1).max(start),
            None if ahead => u64::MAX,
            None => {
                // The last send numbered is not held: it came before the history's first, or was evicted.
                resume.gap = group.evicted.is_some_and(|evicted| evicted >= start);
                start
            }
        };
        // Named only when they are logged.
        let named = if tracing::enabled!(tracing::Level::DEBUG) { LOGGED_STAMPS } else { 0 };
        for entry in group.history.iter().filter(|entry| entry.index >= from && !entry.except.contains(id)) {
            if got_already(got, &entry.stamp) {
                resume.got_already += 1;
                continue;
            }
            if resume.stamps.len() < named {
                let stamp = &entry.stamp;
                resume.stamps.push(format!("{}.{}:{}", stamp.origin.name, stamp.origin.generation, stamp.seq));
            }
            resume.frames.push(Arc::clone(&entry.frame));
        }
        if group.members.is_empty() {
            if let Some(group) = self.groups.remove(key) {
                self.entries -= group.history.len();
            }
        }
        resume
    }

    /// Every kept member of this node, by group (for this node's snapshots).
    pub(super) fn snapshot(&self) -> Vec<(GroupKey, Vec<ConnectionId>)> {
        self.groups
            .iter()
            .map(|(key, group)| (key.clone(), group.members.keys().map(kept_member).collect()))
            .collect()
    }

    /// Sends held in every history.
    pub(super) fn entries(&self) -> usize {
        self.entries
    }
}

/// Whether `got` (each origin's last send numbered for a connection) covers the send `stamp`.
fn got_already(got: &[OriginLast], stamp: &Stamp) -> bool {
    got.iter()
        .find(|origin| *origin.origin == *stamp.origin.name)
        .is_some_and(|origin| (stamp.origin.generation, stamp.seq) <= (origin.generation, origin.last))
}

/// Drops `group`'s sends older than the window; how many.
fn expire(group: &mut KeptGroup, now: Instant) -> usize {
    let before = group.history.len();
    while group
        .history
        .front()
        .is_some_and(|entry| now.duration_since(entry.at) > KEPT_HISTORY_WINDOW)
    {
        group.history.pop_front();
    }
    before - group.history.len()
}

impl<H: LocalHub> Router<H> {
    /// Follows group `key` for connection `id`, which this node keeps for its server: records the group's sends
    /// from now on, and registers the kept member at the group's owner (in the background) so that they come here.
    /// The registry changes at once, in the caller's order; registrations at owners may overtake each other, and
    /// this node's next snapshot sets its kept members right at the owners.
    pub(crate) fn keep_member(self: &Arc<Self>, key: GroupKey, id: ConnectionId) {
        if !self.kept.lock().keep(&key, &id) {
            let hit = &self.bounds_hit;
            let what = "groups followed for kept connections over their bound: not followed";
            hit.hit(&hit.kept_groups_refused, 1, &self.span, what);
            return;
        }
        let router = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(error) = router.register(key, kept_member(&id)).await {
                tracing::debug!(parent: &router.span, %id, %error, "a kept member was not registered at its group's owner");
            }
        });
    }

    /// Stops following group `key` for connection `id`, and withdraws its kept member at the owner (in the
    /// background).
    pub(crate) fn unkeep_member(self: &Arc<Self>, key: GroupKey, id: ConnectionId) {
        self.kept.lock().unkeep(&key, &id);
        let router = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(error) = router.unregister(key, kept_member(&id)).await {
                tracing::debug!(parent: &router.span, %id, %error, "a kept member was not withdrawn at its group's owner");
            }
        });
    }

    /// Connection `id`, kept here and now started here (its server died), becomes a member of group `key` here:
    /// first it gets every send of the group it missed (after the one `last` marks), then every later one as a
    /// member, with nothing between the two (see the module documentation); none its server had numbered for it
    /// (`got`: each origin's last). Returns how many were delivered.
    /// The caller then joins it at the owner (`group_add`) and withdraws its kept member (`unkeep_member`).
    pub(crate) fn resume_kept_member(
        &self,
        key: &GroupKey,
        id: &ConnectionId,
        last: Option<&SendMark>,
        got: &[OriginLast],
    ) -> Result<usize, MeshError> {
        let runtime = self
            .hub(&key.hub)
            .ok_or_else(|| MeshError::UnknownConnection(id.to_string()))?;
        // The records' lock: every delivery of the group on this node waits for the replay and the join.
        let mut deliveries = self.delivered.lock();
        // The last send its server numbered may not have reached this node yet (links differ in speed).
        let ahead = last.is_some_and(|mark| !deliveries.delivered(key, &mark.origin, mark.generation, mark.seq));
        let resume = self.kept.lock().take(key, id, last, ahead, got);
        tracing::debug!(
            parent: &self.span,
            %id,
            ?key,
            mark = ?last.map(|mark| format!("{}.{}:{}", mark.origin, mark.generation, mark.seq)),
            marked = resume.marked,
            ahead,
            got_already = resume.got_already,
            filled = ?resume.stamps,
            "a resumed kept member's fill"
        );
        if let Some(mark) = last.filter(|_| !resume.marked) {
            // Sends held here for a gap that its server delivered before the mark: not again (chaos defect 15).
            let skipped = deliveries.before_send(key, &mark.origin, mark.generation, mark.seq, |item| {
                if let InOrder::Send((_, except, _)) = item {
                    *except = except.iter().chain(std::iter::once(id)).cloned().collect();
                }
            });
            if skipped > 0 {
                tracing::debug!(parent: &self.span, %id, ?key, skipped, "a resumed connection had held group sends already");
            }
        }
        if resume.gap {
            let hit = &self.bounds_hit;
            let what = "a kept connection resumed after sends it missed left its group's history";
            hit.hit(&hit.kept_history_gaps, 1, &self.span, what);
        }
        let ids = [id.clone()];
        for frame in &resume.frames {
            runtime.deliver_to(&ids, frame);
        }
        runtime.local_join(key, id)?;
        Ok(resume.frames.len())
    }

    /// Sends held in the histories of the groups followed for kept connections.
    pub(crate) fn kept_history_len(&self) -> usize {
        self.kept.lock().entries()
    }
}

/// The mark a group send's frame carries at a member node: where it stands in the group's order.
pub(super) fn mark_of(key: &GroupKey, stamp: &Stamp) -> SendMark {
    SendMark {
        group: key.name.clone(),
        user: key.kind == GroupKind::User,
        broadcast: false,
        direct: false,
        origin: stamp.origin.name.clone(),
        generation: stamp.origin.generation,
        seq: stamp.seq,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::cluster::NodeId;
    use bytes::Bytes;

    fn stamp(seq: u64) -> Stamp {
        Stamp {
            origin: NodeId::new("n1", 3),
            seq,
            prev: seq.saturating_sub(1),
        }
    }

    fn frame(seq: u64) -> Arc<SharedFrame> {
        SharedFrame::pre_encoded(Some(Bytes::from(format!("{seq}\u{1e}"))), None)
    }

    fn texts(frames: &[Arc<SharedFrame>]) -> Vec<String> {
        frames
            .iter()
            .map(|frame| String::from_utf8(frame.bytes(crate::protocol::Protocol::Json).unwrap().to_vec()).unwrap())
            .collect()
    }

    fn mark(key: &GroupKey, seq: u64) -> SendMark {
        mark_of(key, &stamp(seq))
    }

    #[test]
    fn a_resume_gets_the_sends_after_the_last_one_numbered_and_only_those() {
        let (key, id) = (GroupKey::named("hub", "g"), ConnectionId::new("c.n2".to_string()));
        let mut kept = KeptGroups::default();
        let now = Instant::now();
        let none: Arc<[ConnectionId]> = Arc::from(Vec::new());
        record(&mut kept, &key, 1, &none, now);
        assert!(kept.keep(&key, &id));
        for seq in 2..=5 {
            record(&mut kept, &key, seq, &none, now);
        }
        let resume = kept.take(&key, &id, Some(&mark(&key, 3)), false, &[]);
        assert_eq!(texts(&resume.frames), ["4\u{1e}", "5\u{1e}"]);
        assert!(!resume.gap);
        // Its last follower gone, the group and its history go.
        assert_eq!(kept.entries(), 0);
        assert!(!kept.record(&key, &stamp(6), &frame(6), &none, now));
    }

    /// The mark's send is not in the history (it left it, or came in another order after a cut): what the server
    /// numbered of each origin still does not come again (chaos defect 19, `tests/cli/chaos/README.md`).
    #[test]
    fn a_resume_without_its_mark_gets_none_of_what_each_origin_had_numbered() {
        let (key, id) = (GroupKey::named("hub", "g"), ConnectionId::new("c.n2".to_string()));
        let mut kept = KeptGroups::default();
        let now = Instant::now();
        let none: Arc<[ConnectionId]> = Arc::from(Vec::new());
        assert!(kept.keep(&key, &id));
        for seq in [2, 3, 5, 6] {
            record(&mut kept, &key, seq, &none, now);
        }
        let got = [OriginLast {
            origin: "n1".to_owned(),
            generation: 3,
            last: 4,
        }];
        let resume = kept.take(&key, &id, Some(&mark(&key, 4)), false, &got);
        assert_eq!(texts(&resume.frames), ["5\u{1e}", "6\u{1e}"]);
    }

    #[test]
    fn without_a_mark_held_a_resume_gets_what_was_recorded_since_it_was_followed() {
        let (key, id) = (GroupKey::named("hub", "g"), ConnectionId::new("c.n2".to_string()));
        let other = ConnectionId::new("d.n2".to_string());
        let mut kept = KeptGroups::default();
        let now = Instant::now();
        let none: Arc<[ConnectionId]> = Arc::from(Vec::new());
        assert!(kept.keep(&key, &other));
        record(&mut kept, &key, 1, &none, now);
        assert!(kept.keep(&key, &id));
        record(&mut kept, &key, 2, &none, now);
        let except: Arc<[ConnectionId]> = Arc::from(vec![id.clone()]);
        record(&mut kept, &key, 3, &except, now);
        record(&mut kept, &key, 4, &none, now);
        // Its server numbered nothing of the group (or one the history never held): all since it was followed,
        // but the send that excepted it.
        let resume = kept.take(&key, &id, Some(&mark(&key, 99)), false, &[]);
        assert_eq!(texts(&resume.frames), ["2\u{1e}", "4\u{1e}"]);
        // The other follower keeps the group's history.
        assert_eq!(kept.entries(), 4);
        assert_eq!(kept.snapshot(), vec![(key.clone(), vec![kept_member(&other)])]);
        // A send its server numbered that has not reached this node: all recorded here came before it.
        assert!(kept.take(&key, &other, Some(&mark(&key, 99)), true, &[]).frames.is_empty());
    }

    #[test]
    fn histories_are_bounded_in_length_and_age_and_an_evicted_need_is_a_gap() {
        let (key, id) = (GroupKey::named("hub", "g"), ConnectionId::new("c.n2".to_string()));
        let mut kept = KeptGroups::default();
        let start = Instant::now();
        let none: Arc<[ConnectionId]> = Arc::from(Vec::new());
        assert!(kept.keep(&key, &id));
        for seq in 1..=(KEPT_HISTORY_CAP as u64 + 10) {
            record(&mut kept, &key, seq, &none, start);
        }
        assert_eq!(kept.entries(), KEPT_HISTORY_CAP);
        let later = start + KEPT_HISTORY_WINDOW + Duration::from_secs(1);
        kept.sweep(later);
        assert_eq!(kept.entries(), 0);
        let resume = kept.take(&key, &id, Some(&mark(&key, 3)), false, &[]);
        assert!(resume.gap);
        assert!(resume.frames.is_empty());
    }

    #[test]
    fn all_histories_together_are_bounded_and_a_group_past_it_records_nothing() {
        let id = ConnectionId::new("c.n2".to_string());
        let mut kept = KeptGroups::default();
        let now = Instant::now();
        let none: Arc<[ConnectionId]> = Arc::from(Vec::new());
        let frame = frame(1);
        let groups = KEPT_HISTORIES_CAP / KEPT_HISTORY_CAP;
        for group in 0..groups {
            let key = GroupKey::named("hub", &format!("g{group}"));
            assert!(kept.keep(&key, &id));
            for seq in 1..=KEPT_HISTORY_CAP as u64 {
                kept.record(&key, &stamp(seq), &frame, &none, now);
            }
        }
        assert_eq!(kept.entries(), KEPT_HISTORIES_CAP);
        let late = GroupKey::named("hub", "late");
        assert!(kept.keep(&late, &id));
        assert!(kept.record(&late, &stamp(1), &frame, &none, now), "followed, though not recorded");
        assert_eq!(kept.entries(), KEPT_HISTORIES_CAP);
        let resume = kept.take(&late, &id, None, false, &[]);
        assert!(resume.gap && resume.frames.is_empty());
    }

    fn record(kept: &mut KeptGroups, key: &GroupKey, seq: u64, except: &Arc<[ConnectionId]>, now: Instant) {
        kept.record(key, &stamp(seq), &frame(seq), except, now);
    }
}
