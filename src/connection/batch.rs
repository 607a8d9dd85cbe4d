//! Writing: the mailbox drained into [`Batch`]es (several records in one transport message), group and broadcast
//! records held back to be coalesced with the next ones, and the write itself.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use bytestring::ByteString;
use futures_util::future::Either;
use tokio::time::Instant;

use crate::protocol::Protocol;
use crate::transport::Transport;

use super::directs_written::Written;
use super::keeper::CLAIM_WAIT;
use super::link::Link;
use super::task::{Connection, Ending};
use super::{ClientResultError, Invoke, KeptClose, Outbound};

/// One transport message's content: bytes, or text already known to be UTF-8 (a shared JSON frame), which a
/// WebSocket sends without checking it again.
pub(super) enum Piece {
    Bytes(Bytes),
    Text(ByteString),
}

impl Piece {
    pub(super) fn as_bytes(&self) -> &Bytes {
        match self {
            Piece::Bytes(bytes) => bytes,
            Piece::Text(text) => text.as_bytes(),
        }
    }

    pub(super) fn into_bytes(self) -> Bytes {
        match self {
            Piece::Bytes(bytes) => bytes,
            Piece::Text(text) => text.into_bytes(),
        }
    }
}

/// Records waiting to be written as one transport message. A lone record goes out as the shared bytes it came
/// in (a group message's encoding is shared by every recipient): only a second record makes a copy.
#[derive(Default)]
pub(super) struct Batch {
    first: Option<Piece>,
    joined: Vec<u8>,
}

impl Batch {
    pub(super) fn push(&mut self, record: Piece) {
        if record.as_bytes().is_empty() {
            return;
        }
        if !self.joined.is_empty() {
            self.joined.extend_from_slice(record.as_bytes());
            return;
        }
        match self.first.take() {
            None => self.first = Some(record),
            Some(first) => {
                self.joined.reserve(first.as_bytes().len() + record.as_bytes().len());
                self.joined.extend_from_slice(first.as_bytes());
                self.joined.extend_from_slice(record.as_bytes());
            }
        }
    }

    pub(super) fn len(&self) -> usize {
        self.first
            .as_ref()
            .map_or(self.joined.len(), |first| first.as_bytes().len())
    }

    pub(super) fn take(&mut self) -> Option<Piece> {
        if let Some(first) = self.first.take() {
            return Some(first);
        }
        (!self.joined.is_empty()).then(|| Piece::Bytes(Bytes::from(std::mem::take(&mut self.joined))))
    }
}

impl<T: Transport> Connection<T> {
    /// Writes `first` and whatever else is queued, batched into transport messages of at most `write_batch`.
    pub(super) async fn drain_mailbox(&mut self, first: Outbound) -> Option<Ending> {
        // Held records go first: order is the mailbox's.
        let mut batch = self.held.take().map(|held| *held).unwrap_or_default();
        // Whether everything in the batch is a group or broadcast fan-out frame (which may be held back).
        let mut only_frames = true;
        let mut next = Some(first);
        while let Some(message) = next.take() {
            only_frames &= matches!(message, Outbound::Fanout(_));
            // Kept with the record for its keeper (a group send's place in its group's order).
            let mut mark = None;
            let record = match message {
                Outbound::Frame(frame) | Outbound::Fanout(frame) => {
                    // A send by id sent again that this connection wrote already is dropped
                    // (`super::directs_written`).
                    let repeat = match frame.mark().map(|mark| self.directs_written.check(mark)) {
                        Some(Written::Repeat) => true,
                        Some(Written::Untracked) => {
                            self.limits.bounds_hit.direct_origins_untracked.fetch_add(1, Ordering::Relaxed);
                            false
                        }
                        Some(Written::New) | None => false,
                    };
                    // A group send it got where it ran before a move, sent again (`super::groups_got`).
                    let repeat = repeat
                        || frame.mark().is_some_and(|mark| {
                            self.stateful.as_ref().is_some_and(|stateful| stateful.groups_got.repeats(mark))
                        });
                    let piece = match self.protocol {
                        _ if repeat => None,
                        Protocol::Json => frame.text().cloned().map(Piece::Text),
                        Protocol::MessagePack => frame.bytes(self.protocol).cloned().map(Piece::Bytes),
                    };
                    if self.stateful.as_ref().is_some_and(|stateful| stateful.keeper.is_some()) {
                        mark = frame.mark().cloned();
                    }
                    piece
                }
                Outbound::Own(bytes) => Some(Piece::Bytes(*bytes)),
                Outbound::Invoke(invoke) => {
                    let Invoke {
                        target,
                        arguments,
                        reply,
                    } = *invoke;
                    self.next_result_id += 1;
                    let id = format!("r{}", self.next_result_id);
                    let mut out = Vec::new();
                    match arguments.encode_invocation(self.protocol, &id, &target, &mut out) {
                        Ok(()) => {
                            // Entries whose caller stopped waiting (timed out) go before the map would grow:
                            // a client that never answers cannot make it grow without limit.
                            if self.results.len() >= self.results.capacity() {
                                let before = self.results.len();
                                self.results.retain(|_, reply| !reply.is_closed());
                                let abandoned = (before - self.results.len()) as u64;
                                self.limits.bounds_hit.abandoned_results.fetch_add(abandoned, Ordering::Relaxed);
                            }
                            self.results.insert(id, reply);
                            Some(Piece::Bytes(Bytes::from(out)))
                        }
                        Err(error) => {
                            let _ = reply.send(Err(ClientResultError::BadResult(error.to_string())));
                            None
                        }
                    }
                }
                Outbound::StreamEnded(id) => {
                    self.streams.remove(id.as_str());
                    None
                }
                Outbound::Move(out) => {
                    if let Err(error) = self.flush(&mut batch).await {
                        return Some(self.lost(error));
                    }
                    match self.start_move(out) {
                        Some(out) => return Some(Ending::Moved(out)),
                        None => None,
                    }
                }
                Outbound::Close(close) => {
                    if let Err(error) = self.flush(&mut batch).await {
                        return Some(self.lost(error));
                    }
                    let keeper = self.stateful.as_ref().and_then(|stateful| stateful.keeper.clone());
                    let dropped = match (close.kept, keeper) {
                        (KeptClose::Drop, Some(_)) => true,
                        // Bounded: an answer that does not come in time counts as not taken over.
                        (KeptClose::AskKeeper, Some(keeper)) => matches!(
                            tokio::time::timeout(CLAIM_WAIT, keeper.claim()).await,
                            Ok(Ok(true))
                        ),
                        _ => false,
                    };
                    if dropped {
                        return Some(Ending::Dropped(close.error.unwrap_or_default()));
                    }
                    if close.after_calls && !self.is_idle() {
                        // Ends once they are done (`Connection::close_if_idle`), or at a close without it; what
                        // came before it is written (the batch was flushed above).
                        self.closing = Some(close);
                        return None;
                    }
                    return Some(self.closed_by(*close));
                }
            };
            if let Some(record) = record {
                // Mailbox records are trackable (docs/protocol.md#trackable-messages): numbered, kept until acked.
                match &mut self.stateful {
                    Some(stateful) => {
                        let bytes = record.as_bytes().clone();
                        let id = stateful.sent.push(bytes.clone());
                        match &stateful.keeper {
                            // Written once its keeper holds it (`super::keeper`).
                            Some(keeper) => keeper.record(id, &bytes, mark.as_ref()),
                            None => batch.push(record),
                        }
                    }
                    None => batch.push(record),
                }
            }
            if batch.len() >= self.limits.write_batch {
                if let Err(error) = self.flush(&mut batch).await {
                    return Some(self.lost(error));
                }
            }
            let buffer_full = self.stateful.as_ref().is_some_and(|stateful| stateful.sent.is_full());
            // A slow consumer flagged meanwhile may have messages queued after the one it was refused: none of them
            // may be written.
            next = if buffer_full || self.mailbox.is_ending() {
                None
            } else {
                self.mailbox.try_recv()
            };
        }
        if only_frames && self.coalesces() && batch.len() > 0 {
            self.held = Some(Box::new(batch));
            return None;
        }
        match self.flush(&mut batch).await {
            Ok(()) => None,
            Err(error) => Some(self.lost(error)),
        }
    }

    /// Whether group and broadcast records that just arrived wait for company (see [`Limits::write_coalesce`](super::Limits::write_coalesce)):
    /// when they arrive more often than every half window on average, and the last write is less than a window
    /// old. Updates the arrival average.
    fn coalesces(&mut self) -> bool {
        let coalesce = self.limits.write_coalesce;
        if coalesce.is_zero() {
            return false;
        }
        let now = Instant::now();
        let gap = u32::try_from(now.duration_since(self.last_arrival).as_micros()).unwrap_or(u32::MAX);
        self.last_arrival = now;
        // A moving average over about four arrivals: one quick pair does not start coalescing.
        self.arrival_gap_micros = ((u64::from(self.arrival_gap_micros) * 3 + u64::from(gap)) / 4)
            .try_into()
            .unwrap_or(u32::MAX);
        let often = u128::from(self.arrival_gap_micros) * 2 < coalesce.as_micros();
        often && now.duration_since(self.last_write) < coalesce
    }

    /// Writes the records held back for coalescing, if any.
    pub(super) async fn write_held(&mut self) -> Result<(), crate::transport::TransportError> {
        match self.held.take() {
            Some(mut held) => self.flush(&mut held).await,
            None => Ok(()),
        }
    }

    pub(super) async fn flush(&mut self, batch: &mut Batch) -> Result<(), crate::transport::TransportError> {
        match batch.take() {
            Some(piece) => self.write_piece(piece).await,
            None => Ok(()),
        }
    }

    /// Writes one transport message. A write that waits on a client that stopped reading gives up as soon as the
    /// connection is flagged a slow consumer (its mailbox overflowed meanwhile): otherwise the task would wait on
    /// the socket forever and never close it.
    ///
    /// With stateful reconnect a failed write detaches the connection instead of failing (its records are in the
    /// replay buffer), and a write while detached is skipped.
    pub(super) async fn write(&mut self, bytes: Bytes) -> Result<(), crate::transport::TransportError> {
        self.write_piece(Piece::Bytes(bytes)).await
    }

    async fn write_piece(&mut self, piece: Piece) -> Result<(), crate::transport::TransportError> {
        if matches!(self.transport, Link::Detached) && self.stateful.is_some() {
            return Ok(());
        }
        // Records held back for coalescing were queued before this one: they go first, in the same write.
        let piece = match self.held.take() {
            Some(mut held) => {
                held.push(piece);
                match held.take() {
                    Some(joined) => joined,
                    None => return Ok(()),
                }
            }
            None => piece,
        };
        self.last_write = Instant::now();
        self.limits.counters.bytes_written(piece.as_bytes().len());
        let format = self.protocol.transfer_format();
        let transport = &mut self.transport;
        let mailbox = &self.mailbox;
        let write = match transport.try_send_now(piece, format) {
            // Taken (a direct WebSocket): what the socket did not take at once is written as it drains.
            Ok(None) => Either::Left(std::future::poll_fn(|cx| transport.poll_flush(cx))),
            // Boxed: only the other transports (SSE, long polling, a relayed socket, actix-ws) come here, and
            // inline, their send would be part of every connection's state (one allocation per write for them).
            Ok(Some(piece)) => Either::Right(Box::pin(transport.send_piece(piece, format))),
            Err(error) => return self.written(Err(error)),
        };
        let sent = tokio::select! {
            biased;
            sent = write => sent,
            () = mailbox.ended() => Err(crate::transport::TransportError::Closed),
        };
        self.written(sent)
    }

    /// The outcome of a write: with stateful reconnect, a failed one detaches the connection instead.
    fn written(
        &mut self,
        sent: Result<(), crate::transport::TransportError>,
    ) -> Result<(), crate::transport::TransportError> {
        match sent {
            Err(_) if !self.mailbox.is_ending() && self.detach() => Ok(()),
            sent => sent,
        }
    }
}
