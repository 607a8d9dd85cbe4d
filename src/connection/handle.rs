//! [`ConnectionHandle`]: what the rest of the node holds to send to a connection, and [`DeliverError`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;

use super::mailbox::Mailbox;
use super::{
    ClientResult, ClientResultError, CloseRequest, ConnectionId, Invoke, KeptClose, Outbound, SharedFrame, WakeBatch,
    WakeRelay,
};

/// Why a send to a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeliverError {
    /// The connection has ended.
    #[error("the connection is closed")]
    Closed,
    /// The mailbox was full; the connection is being closed as a slow consumer.
    #[error("the connection's outbound queue is full")]
    Full,
}

/// A cloneable handle to a live connection: its id and its mailbox.
#[derive(Clone)]
pub struct ConnectionHandle {
    pub(super) id: ConnectionId,
    pub(super) mailbox: Arc<Mailbox>,
    /// The wake relay of the worker the connection runs on, for batched fan-out wake-ups.
    pub(super) relay: Option<Arc<WakeRelay>>,
}

impl fmt::Debug for ConnectionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionHandle").field("id", &self.id).finish()
    }
}

impl ConnectionHandle {
    /// Tells the connection's keeper, if it has one, that it joined or left a group (`super::keeper`).
    pub fn kept_group(&self, group: &str, user: bool, joined: bool) {
        if let Some(keeper) = self.mailbox.keeper() {
            keeper.group(group, user, joined);
        }
    }

    #[cfg(any(test, feature = "internals"))]
    /// The connection's id.
    pub fn id(&self) -> &ConnectionId {
        &self.id
    }

    #[cfg(any(test, feature = "internals"))]
    /// Queues a shared frame without waiting. A full mailbox closes the connection as a slow consumer.
    pub fn deliver(&self, frame: Arc<SharedFrame>) -> Result<(), DeliverError> {
        self.try_send(Outbound::Frame(frame))
    }

    /// As `ConnectionHandle::deliver`, with the wake-up of the connection's task collected in `batch` (one
    /// remote wake-up per worker per fan-out, see [`wake`](super::wake)). A `fanout` frame (to a group, to all) may be
    /// coalesced with the next ones ([`Limits::write_coalesce`](super::Limits::write_coalesce)); one sent to chosen connections is not.
    pub fn deliver_batched(
        &self,
        frame: Arc<SharedFrame>,
        fanout: bool,
        batch: &mut WakeBatch,
    ) -> Result<(), DeliverError> {
        let message = if fanout {
            Outbound::Fanout(frame)
        } else {
            Outbound::Frame(frame)
        };
        self.mailbox.try_send_batched(message, self.relay.as_ref(), batch)
    }

    /// Queues a message without waiting, with the same slow-consumer policy as `ConnectionHandle::deliver`.
    pub fn try_send(&self, message: Outbound) -> Result<(), DeliverError> {
        self.mailbox.try_send(message)
    }

    /// Queues a message, waiting for room (backpressure for the connection's own replies).
    pub async fn send(&self, message: Outbound) -> Result<(), DeliverError> {
        self.mailbox.send(message).await
    }

    /// Invokes client method `target` and waits for its result (client results). Fails with
    /// `"Connection '<id>' disconnected."` if the connection ends first, or after `timeout`.
    pub async fn invoke<A>(&self, target: &str, arguments: A, timeout: Duration) -> ClientResult
    where
        A: Serialize + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let message = Outbound::Invoke(Box::new(Invoke {
            target: target.to_owned(),
            arguments: Box::new(arguments),
            reply,
        }));
        if self.send(message).await.is_err() {
            return Err(ClientResultError::Disconnected(self.id.to_string()));
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientResultError::Disconnected(self.id.to_string())),
            Err(_) => Err(ClientResultError::Timeout(timeout)),
        }
    }

    /// Asks the connection to close with a Close message.
    pub fn close(&self, error: Option<String>, allow_reconnect: bool) {
        self.close_with(CloseRequest {
            error,
            allow_reconnect,
            kept: KeptClose::Close,
            after_calls: false,
        });
    }

    /// Asks the connection to close with a Close message that allows reconnecting once the calls of its client
    /// that run or wait have finished (a drain): it reads no further call meanwhile. A later [`Self::close`] ends
    /// it at once (the drain's bound).
    pub fn close_after_calls(&self) {
        self.close_with(CloseRequest {
            error: None,
            allow_reconnect: true,
            kept: KeptClose::Close,
            after_calls: true,
        });
    }

    /// Closes the connection as its node was declared dead by its peers: one with a keeper asks it and only drops
    /// its socket if the keeper took it over (its client resumes it there); any other gets a Close with `error`.
    pub fn close_cut_off(&self, error: &str) {
        self.close_with(CloseRequest {
            error: Some(error.to_owned()),
            allow_reconnect: true,
            kept: KeptClose::AskKeeper,
            after_calls: false,
        });
    }

    /// Its keeper took the connection over: one with a keeper drops its socket without a Close message (its
    /// client resumes it there); any other (it has no keeper any more) gets a Close with `error`.
    pub fn drop_taken_over(&self, error: &str) {
        self.close_with(CloseRequest {
            error: Some(error.to_owned()),
            allow_reconnect: true,
            kept: KeptClose::Drop,
            after_calls: false,
        });
    }

    fn close_with(&self, close: CloseRequest) {
        if self.try_send(Outbound::Close(Box::new(close))).is_err() {
            self.mailbox.end();
        }
    }

    #[cfg(any(test, feature = "internals"))]
    /// Whether the connection has ended (or is ending).
    pub fn is_closed(&self) -> bool {
        self.mailbox.is_closed()
    }
}
