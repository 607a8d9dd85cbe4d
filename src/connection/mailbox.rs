//! A connection's bounded mailbox, and the flag that says the connection is ending.
//!
//! Not a `tokio::sync::mpsc` channel: a bounded tokio channel allocates a block of 32 slots and a cache-padded
//! channel state up front (about 1 KB per connection, idle or not), and each receive releases a semaphore permit
//! under a lock. Here the queue grows only when messages wait, a receive is one uncontended lock, and the same
//! allocation carries the ending flag that every fan-out delivery checks.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::sync::Notify;

use super::wake::{WakeBatch, WakeRelay};
use super::{DeliverError, Outbound};

/// Queue capacity kept after a burst has drained; more is given back (a burst must not pin memory).
const KEEP_CAPACITY: usize = 16;

pub(super) struct Mailbox {
    queue: Mutex<Queue>,
    capacity: usize,
    /// The connection task, woken by a new message or by the ending flag.
    task: AtomicWaker,
    /// Senders waiting for room, and waiters for the end.
    changed: Notify,
    ending: AtomicBool,
    /// The connection's keeper, once its handshake turned stateful reconnect on (`super::keeper`): told of its
    /// group changes, which happen outside its task.
    keeper: std::sync::OnceLock<Arc<dyn super::keeper::Keeper>>,
}

struct Queue {
    items: VecDeque<Outbound>,
    closed: bool,
    /// Senders waiting in [`Mailbox::send`]; a receive notifies them only when there are any.
    waiting: usize,
}

impl Mailbox {
    pub(super) fn new(capacity: usize) -> Mailbox {
        Mailbox {
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                closed: false,
                waiting: 0,
            }),
            capacity: capacity.max(1),
            task: AtomicWaker::new(),
            changed: Notify::new(),
            ending: AtomicBool::new(false),
            keeper: std::sync::OnceLock::new(),
        }
    }

    /// Sets the connection's keeper (once).
    pub(super) fn set_keeper(&self, keeper: Arc<dyn super::keeper::Keeper>) {
        let _ = self.keeper.set(keeper);
    }

    /// The connection's keeper, if it has one.
    pub(super) fn keeper(&self) -> Option<&Arc<dyn super::keeper::Keeper>> {
        self.keeper.get()
    }

    /// Flags the connection as ending (a refused message, a close request, the end) and wakes whoever waits.
    pub(super) fn end(&self) {
        if !self.ending.swap(true, Ordering::AcqRel) {
            self.task.wake();
            self.changed.notify_waiters();
        }
    }

    pub(super) fn is_ending(&self) -> bool {
        self.ending.load(Ordering::Acquire)
    }

    /// Waits until the connection is flagged as ending.
    pub(super) async fn ended(&self) {
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            if self.is_ending() {
                return;
            }
            changed.await;
        }
    }

    /// Queues without waiting. A full mailbox flags the connection as ending (a slow consumer).
    pub(super) fn try_send(&self, message: Outbound) -> Result<(), DeliverError> {
        self.push(message)?;
        self.task.wake();
        Ok(())
    }

    /// As [`Mailbox::try_send`], with the task's wake-up left to `batch` (see [`super::wake`]).
    pub(super) fn try_send_batched(
        &self,
        message: Outbound,
        relay: Option<&Arc<WakeRelay>>,
        batch: &mut WakeBatch,
    ) -> Result<(), DeliverError> {
        self.push(message)?;
        if let Some(waker) = self.task.take() {
            batch.defer(relay, waker);
        }
        Ok(())
    }

    /// Queues without waking the task.
    fn push(&self, message: Outbound) -> Result<(), DeliverError> {
        // Once a message was refused (or the connection is ending), nothing later may be queued: the client must
        // never receive messages from after a gap.
        if self.is_ending() {
            return Err(DeliverError::Closed);
        }
        let mut queue = self.queue.lock();
        if queue.closed {
            return Err(DeliverError::Closed);
        }
        if queue.items.len() >= self.capacity {
            drop(queue);
            self.end();
            return Err(DeliverError::Full);
        }
        queue.items.push_back(message);
        Ok(())
    }

    /// Queues, waiting for room.
    pub(super) async fn send(&self, message: Outbound) -> Result<(), DeliverError> {
        // Without waiting first: registering for a wake-up takes the notifier's lock, twice.
        let mut message = match self.push_if_room(message) {
            Ok(result) => return result,
            Err(message) => Some(message),
        };
        loop {
            let changed = self.changed.notified();
            let mut changed = std::pin::pin!(changed);
            changed.as_mut().enable();
            if self.is_ending() {
                return Err(DeliverError::Closed);
            }
            {
                let mut queue = self.queue.lock();
                if queue.closed {
                    return Err(DeliverError::Closed);
                }
                if queue.items.len() < self.capacity {
                    if let Some(message) = message.take() {
                        queue.items.push_back(message);
                    }
                    drop(queue);
                    self.task.wake();
                    return Ok(());
                }
                queue.waiting += 1;
            }
            // Counted out again even if this future is dropped while it waits.
            let _waiting = Waiting(self);
            changed.await;
        }
    }

    /// Queues if there is room; gives the message back if the mailbox is full.
    fn push_if_room(&self, message: Outbound) -> Result<Result<(), DeliverError>, Outbound> {
        if self.is_ending() {
            return Ok(Err(DeliverError::Closed));
        }
        let mut queue = self.queue.lock();
        if queue.closed {
            return Ok(Err(DeliverError::Closed));
        }
        if queue.items.len() >= self.capacity {
            return Err(message);
        }
        queue.items.push_back(message);
        drop(queue);
        self.task.wake();
        Ok(Ok(()))
    }

    /// The next message, without waiting.
    pub(super) fn try_recv(&self) -> Option<Outbound> {
        let mut queue = self.queue.lock();
        let message = queue.items.pop_front();
        if queue.items.is_empty() && queue.items.capacity() > KEEP_CAPACITY {
            queue.items.shrink_to(KEEP_CAPACITY);
        }
        let notify = message.is_some() && queue.waiting > 0;
        drop(queue);
        if notify {
            self.changed.notify_waiters();
        }
        message
    }

    /// The next message. Cancel-safe. Only the connection task receives.
    pub(super) async fn recv(&self) -> Outbound {
        poll_fn(|cx| {
            if let Some(message) = self.try_recv() {
                return Poll::Ready(message);
            }
            self.task.register(cx.waker());
            match self.try_recv() {
                Some(message) => Poll::Ready(message),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// Refuses every later message and drops the queued ones (client results in them fail as their reply senders
    /// drop).
    pub(super) fn close(&self) {
        let dropped = {
            let mut queue = self.queue.lock();
            queue.closed = true;
            std::mem::take(&mut queue.items)
        };
        drop(dropped);
        self.end();
    }

    #[cfg(any(test, feature = "internals"))]
    pub(super) fn is_closed(&self) -> bool {
        self.is_ending() || self.queue.lock().closed
    }
}

/// One sender waiting for room, counted in [`Queue::waiting`] while it lives.
struct Waiting<'a>(&'a Mailbox);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.queue.lock().waiting -= 1;
    }
}
