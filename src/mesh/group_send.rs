//! A group send on its way from its sender to the group's owner: stamped with the sender's sequence number,
//! held in order while the owner is unreachable, and retained a while after it was handed to a remote owner, so
//! that it goes again to the next owner if that one dies before its members got it (the members' nodes drop the
//! copy they already had, by its stamp: see `mesh/delivery.rs`).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::envelope::{Envelope, WireFrame};
use super::group::{GroupKey, Stamp};
use super::{LocalHub, Router};
use crate::cluster::NodeId;
use crate::connection::{ConnectionId, SharedFrame};
use crate::protocol::Protocol;

/// The rate of group sends per node (to remote owners) that the buffers below are sized for: above it, a send
/// retained for an owner may be forgotten before [`RETAIN`] is up, and counted (`MeshBoundsHit`).
pub const MAX_GROUP_SEND_RATE: usize = 6_250;

/// The most group sends a node holds while their owner is unreachable, and the most it retains for remote owners:
/// [`RETAIN`] at [`MAX_GROUP_SEND_RATE`] (50,000). Beyond it the oldest are dropped, counted and logged, so a long
/// outage cannot exhaust memory. The owner's queues of sends (while it settles, and for groups whose members are
/// on their way) have the same bound.
pub const HELD_SENDS_CAP: usize = MAX_GROUP_SEND_RATE * RETAIN.as_secs() as usize;

/// The most bytes of frames the retained sends may hold (the frames are shared with the sends in flight, so this
/// is what retaining them keeps alive): 8 KiB per send at [`MAX_GROUP_SEND_RATE`] for [`RETAIN`] would be more
/// than this, and evicts the oldest, counted.
pub const RETAINED_BYTES_CAP: usize = 256 * 1024 * 1024;

/// The most groups whose last send from this node it remembers, to name it in the next send's stamp
/// ([`Stamp::prev`]). Past it, all are forgotten at once (counted).
pub const LAST_SENT_CAP: usize = 262_144;

/// How long a node keeps a group send it handed to a remote owner, to send it again if that owner dies before
/// its members got it: longer than failure detection (3 s) plus settling.
pub(super) const RETAIN: Duration = Duration::from_secs(8);

/// A group send, as held, retained and queued at the owner.
#[derive(Clone)]
pub(super) struct HeldSend {
    pub(super) key: GroupKey,
    pub(super) except: Arc<[ConnectionId]>,
    pub(super) frame: Arc<SharedFrame>,
    pub(super) stamp: Stamp,
}

impl HeldSend {
    /// The bytes its frame holds, as encoded for the protocols it was encoded for (a send that crossed a link is
    /// encoded for both already, so this encodes nothing).
    pub(super) fn frame_bytes(&self) -> usize {
        [Protocol::Json, Protocol::MessagePack]
            .into_iter()
            .filter_map(|protocol| self.frame.bytes(protocol).map(Bytes::len))
            .sum()
    }
}

/// The group sends handed to remote owners in the last [`RETAIN`], oldest first, within [`HELD_SENDS_CAP`] and
/// [`RETAINED_BYTES_CAP`].
#[derive(Default)]
pub(super) struct RetainedSends {
    sends: VecDeque<Retained>,
    /// The bytes of their frames.
    bytes: usize,
}

/// A group send handed to a remote owner, kept a while in case the owner dies before its members got it.
struct Retained {
    at: tokio::time::Instant,
    bytes: usize,
    /// The owner's incarnation: a send retained for an owner that restarted goes again, one handed to its new
    /// generation does not.
    owner: NodeId,
    send: HeldSend,
}

impl<H: LocalHub> Router<H> {
    /// Sends `frame` to the members of `key` through its owner, holding it while the owner is unreachable.
    pub(crate) fn group_send(&self, key: &GroupKey, frame: Arc<SharedFrame>, except: Arc<[ConnectionId]>) {
        // Stamped under the `held` lock that orders the sends: a number taken before it could go out after a later
        // one (two HTTP workers sending at once), and members' nodes would drop it as a repeat.
        let held = self.held.lock();
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let prev = {
            let mut last_sent = self.last_sent.lock();
            if last_sent.len() >= LAST_SENT_CAP && !last_sent.contains_key(key) {
                // Forgotten, the next send of each group names no previous one: members' nodes then do not wait
                // for a send that overtook it (a rare reordering is not put right), rather than memory growing.
                last_sent.clear();
                let hit = &self.bounds_hit;
                hit.hit(&hit.last_sent_cleared, 1, &self.span, "forgot the last send of every group over their bound");
            }
            match last_sent.get_mut(key) {
                Some(last) => std::mem::replace(last, seq),
                None => {
                    last_sent.insert(key.clone(), seq);
                    0
                }
            }
        };
        let stamp = Stamp {
            origin: self.id(),
            seq,
            prev,
        };
        self.group_send_held(held, HeldSend { key: key.clone(), except, frame, stamp });
    }

    pub(super) fn group_send_stamped(&self, send: HeldSend) {
        self.group_send_held(self.held.lock(), send);
    }

    fn group_send_held(&self, mut held: parking_lot::MutexGuard<'_, VecDeque<HeldSend>>, send: HeldSend) {
        // Keep the order of sends: while earlier sends are held, later ones queue behind them. The decision and the
        // send happen under the `held` lock, which a view change also takes while it moves the new owners in and
        // the re-sends to the front of `held` (`Router::on_view`): otherwise a send could read the new owner
        // before the re-sends were queued, overtake them, and make members' nodes drop them as repeats.
        if !held.is_empty() {
            self.counters.sends_held.fetch_add(1, Ordering::Relaxed);
            held.push_back(send);
            self.trim_held(&mut held);
            drop(held);
            self.flush_held();
            return;
        }
        if let Err(send) = self.try_group_send(send) {
            self.counters.sends_held.fetch_add(1, Ordering::Relaxed);
            held.push_back(send);
        }
    }

    /// Over [`HELD_SENDS_CAP`] held sends, drops the oldest (counted and logged).
    fn trim_held(&self, held: &mut VecDeque<HeldSend>) {
        let over = held.len().saturating_sub(HELD_SENDS_CAP);
        if over > 0 {
            held.drain(..over);
            let hit = &self.bounds_hit;
            hit.hit(
                &hit.held_dropped,
                over as u64,
                &self.span,
                "group sends held for unreachable owners over their bound: dropped the oldest",
            );
        }
    }

    fn try_group_send(&self, send: HeldSend) -> Result<(), HeldSend> {
        let owner = self.owner_of(&send.key);
        if self.is_local(&owner.name) {
            return self.try_enqueue_send(send);
        }
        let envelope = Envelope::GroupSend {
            key: send.key.clone(),
            except: send.except.to_vec(),
            frame: WireFrame::of(&send.frame),
            stamp: send.stamp.clone(),
        };
        match self.send_to_peer(&owner, &envelope) {
            Ok(()) => {
                self.retain(owner, send);
                Ok(())
            }
            Err(error) => {
                tracing::debug!(parent: &self.span, %error, %owner, "group owner unreachable; holding the send");
                Err(send)
            }
        }
    }

    fn retain(&self, owner: NodeId, send: HeldSend) {
        let bytes = send.frame_bytes();
        let now = tokio::time::Instant::now();
        let mut evicted = 0;
        {
            let mut retained = self.retained.lock();
            while let Some(oldest) = retained.sends.front() {
                let expired = now.duration_since(oldest.at) > RETAIN;
                let over = retained.sends.len() >= HELD_SENDS_CAP || retained.bytes + bytes > RETAINED_BYTES_CAP;
                if !expired && !over {
                    break;
                }
                evicted += u64::from(!expired);
                retained.bytes -= oldest.bytes;
                retained.sends.pop_front();
            }
            retained.bytes += bytes;
            retained.sends.push_back(Retained {
                at: now,
                bytes,
                owner,
                send,
            });
        }
        if evicted > 0 {
            let hit = &self.bounds_hit;
            hit.hit(
                &hit.retained_evicted,
                evicted,
                &self.span,
                "retained group sends over their bound: forgot the oldest before their time",
            );
        }
    }

    /// Sends handed to owners that have now left go again, to the new owners, ahead of anything held since. The
    /// caller holds `held` (see [`Router::group_send_stamped`]).
    pub(super) fn resend_retained(&self, left: &[NodeId], held: &mut VecDeque<HeldSend>) {
        let resend: Vec<HeldSend> = {
            let mut retained = self.retained.lock();
            let (gone, kept): (VecDeque<Retained>, VecDeque<Retained>) =
                retained.sends.drain(..).partition(|entry| left.contains(&entry.owner));
            retained.bytes = kept.iter().map(|entry| entry.bytes).sum();
            retained.sends = kept;
            gone.into_iter().map(|entry| entry.send).collect()
        };
        if resend.is_empty() {
            return;
        }
        tracing::info!(parent: &self.span, count = resend.len(), "re-sending group sends whose owner left");
        self.counters.sends_resent.fetch_add(resend.len() as u64, Ordering::Relaxed);
        for send in resend.into_iter().rev() {
            held.push_front(send);
        }
        // Held sends are bounded as any others.
        self.trim_held(held);
    }

    /// Retries held group sends in order; stops at the first that still cannot go.
    pub(super) fn flush_held(&self) {
        let mut held = self.held.lock();
        while let Some(send) = held.pop_front() {
            if let Err(send) = self.try_group_send(send) {
                held.push_front(send);
                return;
            }
        }
    }
}

