//! A group send on its way from its sender to the group's owner: stamped with the sender's sequence number,
//! held in order while the owner is unreachable, and retained a while after it was handed to a remote owner, so
//! that it goes again to the next owner if that one dies before its members got it (the members' nodes drop the
//! copy they already had, by its stamp: see `mesh/delivery.rs`).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::envelope::{Envelope, WireFrame};
use super::group::{GroupKey, Stamp};
use super::owner::MembershipOp;
use super::{LocalHub, Router};
use crate::cluster::NodeId;
use crate::connection::{ConnectionId, SharedFrame};

/// The most group sends a node holds while their owner is unreachable; beyond it the oldest are dropped (and
/// logged), so a long outage cannot exhaust memory.
pub const HELD_SENDS_CAP: usize = 10_000;

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

/// A group send handed to a remote owner, kept a while in case the owner dies before its members got it.
pub(super) struct Retained {
    at: tokio::time::Instant,
    /// The owner's incarnation: a send retained for an owner that restarted goes again, one handed to its new
    /// generation does not.
    owner: NodeId,
    send: HeldSend,
}

impl<H: LocalHub> Router<H> {
    /// Sends `frame` to the members of `key` through its owner, holding it while the owner is unreachable.
    pub(crate) fn group_send(&self, key: &GroupKey, frame: Arc<SharedFrame>, except: Arc<[ConnectionId]>) {
        let stamp = Stamp {
            origin: self.id(),
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
        };
        self.group_send_stamped(HeldSend {
            key: key.clone(),
            except,
            frame,
            stamp,
        });
    }

    pub(super) fn group_send_stamped(&self, send: HeldSend) {
        // Keep the order of sends: while earlier sends are held, later ones queue behind them. The decision and the
        // send happen under the `held` lock, which a view change also takes while it moves the new owners in and
        // the re-sends to the front of `held` (`Router::on_view`): otherwise a send could read the new owner
        // before the re-sends were queued, overtake them, and make members' nodes drop them as repeats.
        let mut held = self.held.lock();
        if !held.is_empty() {
            push_held(&mut held, send, &self.span);
            drop(held);
            self.flush_held();
            return;
        }
        if let Err(send) = self.try_group_send(send) {
            push_held(&mut held, send, &self.span);
        }
    }

    fn try_group_send(&self, send: HeldSend) -> Result<(), HeldSend> {
        let owner = self.owner_of(&send.key);
        if self.is_local(&owner.name) {
            self.enqueue(MembershipOp::Send { send });
            return Ok(());
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
        let now = tokio::time::Instant::now();
        let mut retained = self.retained.lock();
        while retained
            .front()
            .is_some_and(|oldest| now.duration_since(oldest.at) > RETAIN || retained.len() >= HELD_SENDS_CAP)
        {
            retained.pop_front();
        }
        retained.push_back(Retained { at: now, owner, send });
    }

    /// Sends handed to owners that have now left go again, to the new owners, ahead of anything held since. The
    /// caller holds `held` (see [`Router::group_send_stamped`]).
    pub(super) fn resend_retained(&self, left: &[NodeId], held: &mut VecDeque<HeldSend>) {
        let resend: Vec<HeldSend> = {
            let mut retained = self.retained.lock();
            let (gone, kept): (VecDeque<Retained>, VecDeque<Retained>) =
                retained.drain(..).partition(|entry| left.contains(&entry.owner));
            *retained = kept;
            gone.into_iter().map(|entry| entry.send).collect()
        };
        if resend.is_empty() {
            return;
        }
        tracing::info!(parent: &self.span, count = resend.len(), "re-sending group sends whose owner left");
        for send in resend.into_iter().rev() {
            held.push_front(send);
        }
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

/// Queues a send behind those held; over [`HELD_SENDS_CAP`] the oldest is dropped (and logged).
fn push_held(held: &mut VecDeque<HeldSend>, send: HeldSend, span: &tracing::Span) {
    if held.len() >= HELD_SENDS_CAP {
        held.pop_front();
        tracing::warn!(parent: span, cap = HELD_SENDS_CAP, "held group sends over the cap: dropped the oldest");
    }
    held.push_back(send);
}
