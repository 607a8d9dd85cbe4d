//! Fan-out wake-ups, batched per HTTP worker.
//!
//! A connection task lives on the HTTP worker (a single-threaded runtime) that accepted it, while group and
//! broadcast deliveries are made by the group actors and node links on the node's multi-threaded runtime. Waking a
//! task from another thread is a remote schedule: a lock on the worker's inject queue and a write to its event fd,
//! for every recipient (31,101 event-fd writes per 50,000 deliveries, measured with callgrind). So a fan-out
//! queues the message in each member's mailbox at once, as before, but collects the wakers of the members it
//! woke in a [`WakeBatch`], by worker; at the end it hands each worker's wakers to that worker's [`WakeRelay`] in
//! one message, and the relay's task wakes them there, where a wake-up is a push onto the local run queue.
//!
//! Only the wake-up moves: what each member receives, and in which order, is decided when the message is queued,
//! exactly as without the batch.
//!
//! Layers above name none of this but [`deliver_each`] (the hub runtime's local deliveries) and [`WakeRelays`]
//! (the node, which owns one per node and hands each new connection its worker's relay).

use std::sync::Arc;
use std::task::Waker;
use std::thread::ThreadId;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use super::{ConnectionHandle, SharedFrame};

/// Wakes, on one worker, the tasks of a batch.
pub struct WakeRelay {
    thread: ThreadId,
    wakers: mpsc::UnboundedSender<Vec<Waker>>,
}

/// The wake relays of a node, one per worker thread that runs connections, each started on first use. Owned by
/// the node: nothing here is process-global.
#[derive(Default)]
pub struct WakeRelays {
    by_thread: Mutex<Vec<Arc<WakeRelay>>>,
}

impl WakeRelays {
    /// The relay of the calling thread, started on its runtime if new; `None` outside a tokio runtime.
    pub fn current(&self) -> Option<Arc<WakeRelay>> {
        let thread = std::thread::current().id();
        let mut by_thread = self.by_thread.lock();
        // A worker whose runtime stopped has lost its relay task.
        by_thread.retain(|relay| !relay.wakers.is_closed());
        if let Some(relay) = by_thread.iter().find(|relay| relay.thread == thread) {
            return Some(relay.clone());
        }
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        let (wakers, mut batches) = mpsc::unbounded_channel::<Vec<Waker>>();
        runtime.spawn(async move {
            while let Some(batch) = batches.recv().await {
                for waker in batch {
                    waker.wake();
                }
            }
        });
        let relay = Arc::new(WakeRelay { thread, wakers });
        by_thread.push(relay.clone());
        Some(relay)
    }
}

/// Queues `frame` in the mailbox of each of `handles` and wakes their tasks in one batch per worker, once all are
/// queued. A `fanout` frame (to a group, to all) may be coalesced with the next ones; one sent to chosen
/// connections is not (see [`ConnectionHandle::deliver_batched`]). A full mailbox closes that connection (slow
/// consumer); the others still get the frame.
#[inline]
pub fn deliver_each<'a>(
    handles: impl IntoIterator<Item = &'a ConnectionHandle>,
    frame: &Arc<SharedFrame>,
    fanout: bool,
) {
    let mut wake = WakeBatch::default();
    for handle in handles {
        let _ = handle.deliver_batched(frame.clone(), fanout, &mut wake);
    }
}

/// The wakers a fan-out collected, by worker; handed over when flushed or dropped.
#[derive(Default)]
pub struct WakeBatch {
    pending: Vec<(Arc<WakeRelay>, Vec<Waker>)>,
}

impl WakeBatch {
    /// Defers `waker` to `relay`'s worker (or wakes it now when its task has no relay).
    pub(super) fn defer(&mut self, relay: Option<&Arc<WakeRelay>>, waker: Waker) {
        let Some(relay) = relay else {
            waker.wake();
            return;
        };
        match self.pending.iter_mut().find(|(pending, _)| Arc::ptr_eq(pending, relay)) {
            Some((_, wakers)) => wakers.push(waker),
            None => self.pending.push((relay.clone(), vec![waker])),
        }
    }

    /// Hands every worker its wakers: one message each, or direct wake-ups on the worker that flushes.
    pub fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let here = std::thread::current().id();
        for (relay, wakers) in self.pending.drain(..) {
            if relay.thread == here {
                wakers.into_iter().for_each(Waker::wake);
                continue;
            }
            if let Err(returned) = relay.wakers.send(wakers) {
                // The worker's runtime is gone; so are its tasks, but wake them as promised.
                returned.0.into_iter().for_each(Waker::wake);
            }
        }
    }
}

impl Drop for WakeBatch {
    fn drop(&mut self) {
        self.flush();
    }
}
