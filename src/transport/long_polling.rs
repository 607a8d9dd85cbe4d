//! The long-polling transport (docs/protocol.md#long-polling): server-to-client messages wait in a queue that each poll
//! drains, client-to-server bytes arrive as POST bodies through the shared POST half.
//!
//! Owns the outbound queue and its byte cap, poll supersession (a new poll ends the pending one with 204), the
//! poll timeout, the end of a connection as polls see it (the queue drained, then 204) and liveness: the client
//! sends no Pings on long polling, so a connection whose client has not polled for the disconnect timeout is
//! gone. Knows nothing of hubs; the HTTP layer drives the [`LongPollingHandle`], the connection task the
//! [`LongPollingTransport`]. The two sides may live on different HTTP workers, hence the shared, locked state.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::{sleep_until, Instant};

use super::{CloseKind, PostReceiver, Transport, TransportError, TransportKind};
use crate::protocol::TransferFormat;

/// The timers and caps of one long-polling connection.
#[derive(Debug, Clone)]
pub struct LongPollingOptions {
    /// A poll with nothing to deliver answers `200` with an empty body after this long.
    pub poll_timeout: Duration,
    /// The connection ends when no poll was pending for this long.
    pub disconnect_timeout: Duration,
    /// A poll response carries at most this many bytes, unless a single message is larger.
    pub max_response: usize,
    /// Sending waits while this many bytes wait for a poll.
    pub max_queued: usize,
}

/// What a poll answers.
#[derive(Debug, PartialEq, Eq)]
pub enum PollOutcome {
    /// `200` with whole messages, in the transfer format they were sent in.
    Data(Bytes, TransferFormat),
    /// `200` with an empty body: nothing arrived within the poll timeout, the client polls again.
    TimedOut,
    /// `204`: a newer poll took over; the connection lives on.
    Superseded,
    /// `204`: the connection has ended.
    Ended,
}

struct State {
    /// Transport messages (whole records each) waiting for a poll.
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    format: TransferFormat,
    /// The generation of the poll now waiting, if one is.
    pending_poll: Option<u64>,
    next_poll: u64,
    /// When the last poll ended (or the connection started); meaningful while no poll is pending.
    idle_since: Instant,
    /// The server ended the connection: polls drain the queue, then get 204.
    server_closed: bool,
    /// The client is gone (DELETE, or no poll for the disconnect timeout).
    client_gone: bool,
    /// A poll was answered with the final 204.
    terminated: bool,
}

impl State {
    /// When the client counts as gone if no poll comes; `None` while a poll is pending.
    fn liveness_deadline(&self, options: &LongPollingOptions) -> Option<Instant> {
        match self.pending_poll {
            Some(_) => None,
            None => Some(self.idle_since + options.disconnect_timeout),
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// Woken on every change of `state` that a waiter may care about.
    changed: Notify,
    options: LongPollingOptions,
}

impl Shared {
    fn notify(&self) {
        self.changed.notify_waiters();
    }

    /// Marks the client gone if its liveness deadline has passed; true if it is gone.
    fn lapse_if_due(&self) -> bool {
        let mut state = self.state.lock();
        if !state.client_gone
            && state
                .liveness_deadline(&self.options)
                .is_some_and(|deadline| deadline <= Instant::now())
        {
            state.client_gone = true;
            drop(state);
            self.notify();
            return true;
        }
        state.client_gone
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Creates a long-polling connection whose first poll has just arrived (it counts as the start of liveness).
pub fn long_polling(options: LongPollingOptions, inbound: PostReceiver) -> (LongPollingHandle, LongPollingTransport) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            queued_bytes: 0,
            format: TransferFormat::Text,
            pending_poll: None,
            next_poll: 0,
            idle_since: Instant::now(),
            server_closed: false,
            client_gone: false,
            terminated: false,
        }),
        changed: Notify::new(),
        options,
    });
    (
        LongPollingHandle { shared: shared.clone() },
        LongPollingTransport { shared, inbound },
    )
}

/// The HTTP side of a long-polling connection: polls and DELETE.
#[derive(Clone)]
pub struct LongPollingHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for LongPollingHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LongPollingHandle").finish_non_exhaustive()
    }
}

/// Ends a poll's claim when the poll ends, however it ends (an aborted request drops the handler's future): the
/// gap to the next poll starts then.
struct PendingPoll<'a> {
    shared: &'a Shared,
    generation: u64,
}

impl Drop for PendingPoll<'_> {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock();
        if state.pending_poll == Some(self.generation) {
            state.pending_poll = None;
            state.idle_since = Instant::now();
            drop(state);
            self.shared.notify();
        }
    }
}

impl LongPollingHandle {
    /// Answers one poll (after the first, which the HTTP layer answers at once): whatever is queued, else waits
    /// for data, for the poll timeout, for a newer poll or for the end of the connection.
    pub async fn poll(&self) -> PollOutcome {
        let shared = &*self.shared;
        let generation = {
            let mut state = shared.state.lock();
            if state.client_gone || state.terminated {
                state.terminated = true;
                return PollOutcome::Ended;
            }
            let generation = state.next_poll;
            state.next_poll += 1;
            state.pending_poll = Some(generation);
            generation
        };
        // Wakes the poll this one supersedes.
        shared.notify();
        let _pending = PendingPoll { shared, generation };
        let deadline = Instant::now() + shared.options.poll_timeout;
        loop {
            let changed = shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut state = shared.state.lock();
                if state.pending_poll != Some(generation) {
                    return PollOutcome::Superseded;
                }
                if !state.queue.is_empty() {
                    let data = take_response(&mut state, shared.options.max_response);
                    let format = state.format;
                    drop(state);
                    // Senders waiting for room may go on.
                    shared.notify();
                    return PollOutcome::Data(data, format);
                }
                if state.client_gone || state.server_closed {
                    state.terminated = true;
                    drop(state);
                    shared.notify();
                    return PollOutcome::Ended;
                }
            }
            tokio::select! {
                () = &mut changed => {}
                () = sleep_until(deadline) => return PollOutcome::TimedOut,
            }
        }
    }

    /// The client ended the connection (DELETE): the pending poll gets 204, the connection task sees the end.
    pub fn delete(&self) {
        self.shared.state.lock().client_gone = true;
        self.shared.notify();
    }

    /// Resolves once no client will poll this connection again: the final 204 was answered, the client left, or
    /// it stopped polling for the disconnect timeout. The HTTP layer forgets the connection's token then.
    pub async fn terminated(&self) {
        let shared = &*self.shared;
        loop {
            let changed = shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let deadline = {
                let state = shared.state.lock();
                if state.terminated || state.client_gone {
                    return;
                }
                state.liveness_deadline(&shared.options)
            };
            tokio::select! {
                () = &mut changed => {}
                () = sleep_until_some(deadline) => {
                    if shared.lapse_if_due() {
                        return;
                    }
                }
            }
        }
    }
}

/// Takes whole queued messages for one response: at least one, then more while they fit in `max_response`.
fn take_response(state: &mut State, max_response: usize) -> Bytes {
    let mut out = BytesMut::new();
    while let Some(next) = state.queue.front() {
        if !out.is_empty() && out.len() + next.len() > max_response {
            break;
        }
        if let Some(next) = state.queue.pop_front() {
            state.queued_bytes -= next.len();
            if out.is_empty() && state.queue.is_empty() {
                // The common case of a single message: no copy.
                return next;
            }
            out.extend_from_slice(&next);
        }
    }
    out.freeze()
}

/// The connection side of a long-polling connection.
pub struct LongPollingTransport {
    shared: Arc<Shared>,
    inbound: PostReceiver,
}

impl Transport for LongPollingTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::LongPolling
    }

    fn inherent_keep_alive(&self) -> bool {
        true
    }

    async fn recv(&mut self) -> Option<Result<Bytes, TransportError>> {
        let shared = self.shared.clone();
        loop {
            let changed = shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let deadline = {
                let state = shared.state.lock();
                if state.client_gone {
                    return None;
                }
                state.liveness_deadline(&shared.options)
            };
            // Every branch is cancel-safe: a notification or a timer lost to cancellation is re-armed by the next
            // call, which reads the state afresh.
            tokio::select! {
                biased;
                body = self.inbound.recv() => return body.map(Ok),
                () = &mut changed => {}
                () = sleep_until_some(deadline) => {
                    if shared.lapse_if_due() {
                        return None;
                    }
                }
            }
        }
    }

    async fn send(&mut self, bytes: Bytes, format: TransferFormat) -> Result<(), TransportError> {
        let shared = &*self.shared;
        loop {
            let changed = shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let deadline = {
                let mut state = shared.state.lock();
                if state.client_gone || state.server_closed {
                    return Err(TransportError::Closed);
                }
                if state.queue.is_empty() || state.queued_bytes + bytes.len() <= shared.options.max_queued {
                    state.queued_bytes += bytes.len();
                    state.queue.push_back(bytes);
                    state.format = format;
                    drop(state);
                    shared.notify();
                    return Ok(());
                }
                state.liveness_deadline(&shared.options)
            };
            tokio::select! {
                () = &mut changed => {}
                () = sleep_until_some(deadline) => {
                    if shared.lapse_if_due() {
                        return Err(TransportError::Closed);
                    }
                }
            }
        }
    }

    async fn close(self, _kind: CloseKind) {
        // What is queued (the Close message last) is still delivered; the poll after that gets 204.
        self.shared.state.lock().server_closed = true;
        self.shared.notify();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::post_channel;

    fn options() -> LongPollingOptions {
        LongPollingOptions {
            poll_timeout: Duration::from_millis(200),
            disconnect_timeout: Duration::from_millis(300),
            max_response: 8,
            max_queued: 16,
        }
    }

    #[tokio::test]
    async fn polls_take_whole_messages_and_end_with_204() -> Result<(), TransportError> {
        let (_post, inbound) = post_channel();
        let (handle, mut transport) = long_polling(options(), inbound);
        transport
            .send(Bytes::from_static(b"12345"), TransferFormat::Text)
            .await?;
        transport.send(Bytes::from_static(b"678"), TransferFormat::Text).await?;
        transport.send(Bytes::from_static(b"9"), TransferFormat::Text).await?;
        assert_eq!(
            handle.poll().await,
            PollOutcome::Data(Bytes::from_static(b"12345678"), TransferFormat::Text)
        );
        assert_eq!(
            handle.poll().await,
            PollOutcome::Data(Bytes::from_static(b"9"), TransferFormat::Text)
        );
        assert_eq!(handle.poll().await, PollOutcome::TimedOut);
        transport.close(CloseKind::Normal).await;
        assert_eq!(handle.poll().await, PollOutcome::Ended);
        handle.terminated().await;
        Ok(())
    }

    #[tokio::test]
    async fn no_poll_for_the_disconnect_timeout_ends_the_connection() {
        let (_post, inbound) = post_channel();
        let (handle, mut transport) = long_polling(options(), inbound);
        let started = Instant::now();
        assert!(transport.recv().await.is_none());
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(handle.poll().await, PollOutcome::Ended);
    }
}
