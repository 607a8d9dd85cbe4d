//! What the client sends: records decoded and dispatched (Acks and Sequences of stateful reconnect, invocations,
//! stream items, completions of client results, cancels), invocations started, and their replies and streams
//! encoded back.

use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::protocol::{CompletionOutcome, HubMessage, NoPayload, Outgoing, Protocol, RawValue};
use crate::transport::Transport;

use super::counters::InvocationOutcome;
use super::stateful::ACK_DELAY;
use super::task::{Connection, Ending};
use super::{Call, ClientResultError, ConnectionHandle, Outbound, Reply, UploadItem};

/// What [`Connection::dispatch`] leaves to do.
enum Dispatched {
    /// Nothing, or the connection ends.
    Done(Option<Ending>),
    /// An item for a client stream, to be sent into its channel (waiting for room); `stream_id` is forgotten if
    /// the method no longer reads it.
    Upload {
        upload: mpsc::Sender<UploadItem>,
        item: UploadItem,
        stream_id: Option<String>,
    },
}

impl<T: Transport> Connection<T> {
    /// Decodes and dispatches every whole record in the inbound buffer.
    pub(super) async fn process_inbound(&mut self) -> Option<Ending> {
        loop {
            let message = match self.protocol.decode(&mut self.inbound, self.limits.max_message) {
                Ok(Some(message)) => message,
                Ok(None) => return None,
                Err(error) => {
                    tracing::debug!(%error, "bad message from client");
                    return Some(Ending::Close {
                        error: Some(format!("Connection closed with an error. {error}")),
                        allow_reconnect: false,
                    });
                }
            };
            // A client's record runs once its keeper holds its receipt (`super::keeper`, "Run once kept").
            let mut receipt = None;
            if let Some(stateful) = &mut self.stateful {
                match &message {
                    HubMessage::Ack { sequence_id } => {
                        // With a keeper, through what was written on this transport only: after a resume whose
                        // Sequence named records its keeper did not hold yet (a take-over's or a move's, which the
                        // client had got from its previous server), the client numbers the next record it gets
                        // from that Sequence, so those must still come first (it drops them as repeats). Dropped
                        // on its Ack, the next record written came with an id the client gave an earlier one: it
                        // dropped that many new records and later took as many old ones as new (chaos defect 30).
                        let acked = match &stateful.keeper {
                            Some(_) => (*sequence_id).min(stateful.written),
                            None => *sequence_id,
                        };
                        stateful.sent.ack(acked);
                        if let Some(keeper) = &stateful.keeper {
                            keeper.acked(acked);
                        }
                        continue;
                    }
                    HubMessage::Sequence { sequence_id } => {
                        if let Err(error) = stateful.received.sequence(*sequence_id) {
                            return Some(Ending::Close {
                                error: Some(error.to_string()),
                                allow_reconnect: false,
                            });
                        }
                        // A keeper's take-over ran records the dead node had not acknowledged: acked soon, so
                        // that the client stops sending them again.
                        if stateful.received.unacked() && stateful.ack_due.is_none() {
                            stateful.ack_due = Some(Instant::now() + ACK_DELAY);
                        }
                        continue;
                    }
                    _ => {
                        let trackable = matches!(
                            message,
                            HubMessage::Invocation { .. }
                                | HubMessage::StreamItem { .. }
                                | HubMessage::Completion { .. }
                                | HubMessage::CancelInvocation { .. }
                        );
                        if !stateful.received.accept(trackable) {
                            continue;
                        }
                        if trackable && stateful.ack_due.is_none() {
                            stateful.ack_due = Some(Instant::now() + ACK_DELAY);
                        }
                        if let Some(keeper) = stateful.keeper.as_ref().filter(|_| trackable) {
                            let id = stateful.received.latest();
                            keeper.received(id);
                            receipt = Some((keeper.clone(), id));
                        }
                    }
                }
            }
            if let Some((keeper, id)) = receipt {
                // Boxed, as an upload's send below: only kept connections wait here.
                if !Box::pin(keeper.held().receipt(id)).await {
                    self.limits.counters.receipt_unheld();
                }
            }
            self.limits.counters.message_received();
            match self.dispatch(message) {
                Dispatched::Done(None) => {}
                Dispatched::Done(Some(ending)) => return Some(ending),
                Dispatched::Upload {
                    upload,
                    item,
                    stream_id,
                } => {
                    // Waiting here is the backpressure on an upload: the method runs on its own task. Boxed:
                    // client streams are rare, and an inline send future would enlarge every connection's state.
                    if Box::pin(upload.send(item)).await.is_err() {
                        if let Some(stream_id) = stream_id {
                            self.uploads.remove(&stream_id);
                        }
                    }
                }
            }
        }
    }

    /// Acts on one message from the client. Not async, so that its state is no part of the connection's: the one
    /// step that may wait (an item for a client stream) is handed back to the caller.
    fn dispatch(&mut self, message: HubMessage) -> Dispatched {
        match message {
            HubMessage::Invocation {
                invocation_id,
                target,
                arguments,
                stream_ids,
                streaming,
            } => {
                return Dispatched::Done(self.start_invocation(invocation_id, target, arguments, stream_ids, streaming))
            }
            HubMessage::StreamItem { invocation_id, item } => {
                if let Some(upload) = self.uploads.get(&invocation_id) {
                    return Dispatched::Upload {
                        upload: upload.clone(),
                        item: Ok(item),
                        stream_id: Some(invocation_id),
                    };
                }
                tracing::debug!(%invocation_id, "stream item for an unknown stream");
            }
            HubMessage::Completion { invocation_id, outcome } => {
                if let Some(upload) = self.uploads.remove(&invocation_id) {
                    if let CompletionOutcome::Error(error) = outcome {
                        return Dispatched::Upload {
                            upload,
                            item: Err(error),
                            stream_id: None,
                        };
                    }
                } else if let Some(reply) = self.results.remove(&invocation_id) {
                    let result = match outcome {
                        CompletionOutcome::Void => Ok(None),
                        CompletionOutcome::Value(value) => Ok(Some(value)),
                        CompletionOutcome::Error(error) => Err(ClientResultError::Client(error)),
                    };
                    let _ = reply.send(result);
                } else {
                    tracing::debug!(%invocation_id, "completion for an unknown invocation");
                }
            }
            HubMessage::CancelInvocation { invocation_id } => {
                if let Some(cancel) = self.streams.remove(&invocation_id) {
                    cancel.cancel();
                }
            }
            HubMessage::Ping => {}
            HubMessage::Close { error, .. } => {
                if let Some(error) = error {
                    tracing::debug!(%error, "client closed with an error");
                }
                return Dispatched::Done(Some(Ending::ClientClosed));
            }
            // Handled before dispatch when stateful reconnect is on; meaningless otherwise.
            HubMessage::Ack { .. } | HubMessage::Sequence { .. } => {}
            HubMessage::Unknown { message_type } => {
                tracing::debug!(message_type, "ignored a message of unknown type");
            }
        }
        Dispatched::Done(None)
    }

    fn start_invocation(
        &mut self,
        invocation_id: Option<String>,
        target: String,
        arguments: Vec<RawValue>,
        stream_ids: Vec<String>,
        streaming: bool,
    ) -> Option<Ending> {
        let handle = self.session.handle.clone();
        let protocol = self.protocol;
        // One reference count per invocation: the reply (below) counts its outcome when the method returns.
        let limits = self.limits.clone();
        let reply_to = |id: &Option<String>, error: String| {
            limits.counters.invocation(InvocationOutcome::Refused);
            if let Some(id) = id {
                let bytes = encode_error(protocol, id, &error);
                if let Some(bytes) = bytes {
                    let _ = handle.try_send(Outbound::own(bytes));
                }
            }
        };
        let Some(method_streams) = self.host.method_kind(&target) else {
            reply_to(
                &invocation_id,
                format!(
                    "Failed to invoke '{target}' due to an error on the server. HubException: Method does not exist."
                ),
            );
            return None;
        };
        if method_streams && !streaming {
            reply_to(
                &invocation_id,
                format!(
                    "The client attempted to invoke the streaming '{target}' method with a non-streaming invocation."
                ),
            );
            return None;
        }
        if !method_streams && streaming {
            reply_to(
                &invocation_id,
                format!(
                    "The client attempted to invoke the non-streaming '{target}' method with a streaming invocation."
                ),
            );
            return None;
        }
        // Bounds on what the client's input can make this connection hold (docs/semantics.md#bounds).
        if let Err(error) = self.room_for_streams(&stream_ids, streaming.then_some(invocation_id.as_deref()).flatten())
        {
            self.limits.bounds_hit.streams.fetch_add(1, Ordering::Relaxed);
            reply_to(&invocation_id, format!("Failed to invoke '{target}'. {error}"));
            return None;
        }
        let mut uploads = Vec::with_capacity(stream_ids.len());
        for stream_id in &stream_ids {
            let (tx, rx) = mpsc::channel(self.limits.stream_buffer.max(1));
            self.uploads.insert(stream_id.clone(), tx);
            uploads.push(rx);
        }
        // A call that runs inside this task (no streams) is cancelled by dropping it, which its guard turns into
        // cancelling its token; only calls on tasks of their own hang off `calls`. So an idle connection that made
        // calls keeps no token tree.
        let inline = !streaming && stream_ids.is_empty();
        let cancel = if inline {
            CancellationToken::new()
        } else {
            self.calls.get_or_insert_with(CancellationToken::new).child_token()
        };
        let guard = inline.then(|| cancel.clone().drop_guard());
        let call = Call {
            target,
            arguments,
            uploads,
            cancel: cancel.clone(),
        };
        let reply = self.host.invoke(&self.session, call);
        let handle = self.session.handle.clone();
        if streaming {
            // A stream invocation without an id has no one to stream to.
            let id = invocation_id?;
            self.streams.insert(id.clone(), cancel.clone());
            // Started here, before the next record is dispatched, as ASP.NET starts it: a CancelInvocation right
            // behind it (in the same frame, say) then cancels the token of a method that ran, instead of finding
            // a task that has not been polled yet and dropping the method unrun.
            self.limits.counters.invocation(InvocationOutcome::Stream);
            let started = StreamCall::start(reply);
            tokio::spawn(stream_reply(started, handle, protocol, id, cancel).instrument(tracing::Span::current()));
            return None;
        }
        let run = async move {
            let reply = reply.await;
            let outcome = match &reply {
                Reply::Void | Reply::Value(_) => InvocationOutcome::Ok,
                Reply::Error(_) | Reply::Stream(_) => InvocationOutcome::Error,
            };
            limits.counters.invocation(outcome);
            // Done: nothing left to cancel.
            if let Some(guard) = guard {
                guard.disarm();
            }
            let Some(id) = invocation_id else { return };
            let bytes = match reply {
                Reply::Void => encode_void(protocol, &id),
                Reply::Value(value) => {
                    let mut out = Vec::new();
                    match value.encode_result(protocol, &id, &mut out) {
                        Ok(()) => Some(Bytes::from(out)),
                        Err(error) => encode_error(protocol, &id, &format!("The result could not be sent: {error}")),
                    }
                }
                Reply::Error(error) => encode_error(protocol, &id, &error),
                Reply::Stream(_) => encode_error(protocol, &id, "A non-streaming method returned a stream."),
            };
            if let Some(bytes) = bytes {
                let _ = handle.send(Outbound::own(bytes)).await;
            }
        };
        if stream_ids.is_empty() {
            let run = Box::pin(run.instrument(tracing::Span::current()));
            if self.current.is_none() {
                self.current = Some(run);
            } else {
                self.queued.push_back(run);
                if self.queued.len() == self.limits.max_queued_invocations {
                    // The connection stops reading its transport until the queue drains (`task.rs`).
                    self.limits.bounds_hit.queued_invocations.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else {
            tokio::spawn(run.instrument(tracing::Span::current()));
        }
        None
    }
}

impl<T: Transport> Connection<T> {
    /// Whether an invocation that opens client-to-server streams `stream_ids` and, if `stream_id` is set, a
    /// server-to-client stream of that id fits [`Limits::max_streams`](super::Limits::max_streams) with ids not in
    /// use. Only invocations that stream reach the maps; entries of methods that ended without the client
    /// completing their streams are dropped when the bound is reached.
    fn room_for_streams(&mut self, stream_ids: &[String], stream_id: Option<&str>) -> Result<(), String> {
        if stream_ids.is_empty() && stream_id.is_none() {
            return Ok(());
        }
        let max = self.limits.max_streams;
        if self.uploads.len() + stream_ids.len() > max {
            self.uploads.retain(|_, upload| !upload.is_closed());
        }
        if let Some(id) = stream_ids.iter().find(|id| self.uploads.contains_key(id.as_str())) {
            return Err(format!("The stream id '{id}' is already in use."));
        }
        if self.uploads.len() + stream_ids.len() > max {
            return Err(format!(
                "Too many client-to-server streams open on this connection (at most {max})."
            ));
        }
        if let Some(id) = stream_id {
            if self.streams.contains_key(id) {
                return Err(format!("The invocation id '{id}' is already in use by a stream."));
            }
            if self.streams.len() >= max {
                return Err(format!(
                    "Too many server-to-client streams open on this connection (at most {max})."
                ));
            }
        }
        Ok(())
    }
}

/// A streaming method's call once it was started: still running (awaiting something before it returns its
/// stream), or returned.
enum StreamCall {
    Running(BoxFuture<'static, Reply>),
    Returned(Reply),
}

impl StreamCall {
    /// Runs the method up to its first await, in the caller's task. The waker is a no-op: a call still running
    /// moves to its own task, whose first poll registers the real one.
    fn start(mut reply: BoxFuture<'static, Reply>) -> StreamCall {
        let mut context = Context::from_waker(Waker::noop());
        match reply.as_mut().poll(&mut context) {
            Poll::Ready(reply) => StreamCall::Returned(reply),
            Poll::Pending => StreamCall::Running(reply),
        }
    }
}

/// Runs a streaming method's reply: items as StreamItems, then a Completion (with the error, if it failed). A
/// stream the client cancelled ends with a Completion without an error, as ASP.NET ends it (the clients ignore it).
async fn stream_reply(
    call: StreamCall,
    handle: ConnectionHandle,
    protocol: Protocol,
    id: String,
    cancel: CancellationToken,
) {
    let reply = match call {
        StreamCall::Returned(reply) => Some(reply),
        StreamCall::Running(reply) => tokio::select! {
            reply = reply => Some(reply),
            () = cancel.cancelled() => None,
        },
    };
    let ending = match reply {
        None => encode_void(protocol, &id),
        Some(Reply::Stream(mut items)) => loop {
            let item = tokio::select! {
                item = items.next() => item,
                () = cancel.cancelled() => break encode_void(protocol, &id),
            };
            match item {
                None => break encode_void(protocol, &id),
                Some(Err(error)) => break encode_error(protocol, &id, &error),
                Some(Ok(value)) => {
                    let mut out = Vec::new();
                    if let Err(error) = value.encode_item(protocol, &id, &mut out) {
                        break encode_error(protocol, &id, &format!("A stream item could not be sent: {error}"));
                    }
                    if handle.send(Outbound::own(Bytes::from(out))).await.is_err() {
                        return;
                    }
                }
            }
        },
        Some(Reply::Error(error)) => encode_error(protocol, &id, &error),
        Some(Reply::Void | Reply::Value(_)) => {
            encode_error(protocol, &id, "A streaming method did not return a stream.")
        }
    };
    // The id is forgotten before the client can see the Completion, so that it may use the id again at once
    // (an id still in use is refused, see `room_for_streams`).
    let _ = handle.send(Outbound::StreamEnded(Box::new(id))).await;
    if let Some(bytes) = ending {
        let _ = handle.send(Outbound::own(bytes)).await;
    }
}

fn encode_void(protocol: Protocol, id: &str) -> Option<Bytes> {
    let mut out = Vec::new();
    let message: Outgoing<'_, NoPayload, NoPayload> = Outgoing::Completion {
        invocation_id: id,
        outcome: CompletionOutcome::Void,
    };
    protocol.encode(&message, &mut out).ok().map(|()| Bytes::from(out))
}

fn encode_error(protocol: Protocol, id: &str, error: &str) -> Option<Bytes> {
    let mut out = Vec::new();
    let message: Outgoing<'_, NoPayload, NoPayload> = Outgoing::Completion {
        invocation_id: id,
        outcome: CompletionOutcome::Error(error.to_owned()),
    };
    protocol.encode(&message, &mut out).ok().map(|()| Bytes::from(out))
}
