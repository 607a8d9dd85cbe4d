//! What a node sends to one peer incarnation: its [`Stream`], which outlives the links it travels on, and one link's
//! sender task, which batches the stream's queue and casts the batches to the peer's endpoint, never more than
//! [`WINDOW_BATCHES`] unacknowledged.
//!
//! Why a stream outlives its link: a link can drop while both nodes live (a reset, a partition that heals, a peer
//! that declared this node dead for a moment). Frames already accepted by [`crate::cluster::Links::send`] were
//! promised to arrive, in order, at most once; so the stream keeps the frames not yet batched (its queue) and the
//! batches not yet acknowledged (its window), and the next link to the same incarnation sends the window again
//! first, then the queue. The receiver drops a batch it already had by its sequence number (`super::endpoint`).
//! A stream ends when its peer incarnation is superseded by a newer generation, or has not been live for
//! [`super::STREAM_GRACE`]: then what it held is dropped, as the peer is gone. Until then a peer declared dead by
//! mistake (a one-way partition, a freeze) that is live again gets what was queued for it, in order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use ::ractor::ActorRef;
use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::codec::{Batch, EndpointMsg};
use super::WINDOW_BATCHES;
use crate::cluster::link::PeerCounters;
use crate::cluster::membership::NodeId;

/// The sending side of a peer's queue, as [`crate::cluster::Links::send`] sees it.
pub(super) struct PeerQueue {
    pub(super) frames: mpsc::Sender<Bytes>,
    /// A link to the peer is up now (the stream's frames wait otherwise, within the queue's bound).
    pub(super) up: bool,
}

/// Batches sent on a stream and not yet acknowledged (at most [`WINDOW_BATCHES`] plus the one being sent), and the
/// frame that did not fit the last batch.
#[derive(Default)]
struct Window {
    /// The sequence number of the last batch made (batches count from 1).
    last_seq: u64,
    unacked: VecDeque<(u64, Arc<[Bytes]>)>,
    carry: Option<Bytes>,
}

/// This node's frames to one peer incarnation, across the links that carry them (see the module documentation).
pub(super) struct Stream {
    /// Tells this stream from an earlier one to the same peer incarnation (unique within this incarnation).
    pub(super) id: u64,
    /// Since when the peer is not live (declared dead, maybe by mistake): the stream waits a while for it to be live
    /// again ([`super::STREAM_GRACE`]), still queueing frames within its bound.
    pub(super) departed: Option<Instant>,
    frames: mpsc::Sender<Bytes>,
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Bytes>>>,
    window: Arc<Mutex<Window>>,
    acked: watch::Sender<u64>,
}

/// How a link's sender task batches.
pub(super) struct Batching {
    pub(super) batch_frames: usize,
    pub(super) batch_bytes: usize,
    pub(super) linger: Duration,
}

impl Stream {
    /// A new stream with a queue of `capacity` frames, and the queue's sending side.
    pub(super) fn new(id: u64, capacity: usize) -> (Stream, mpsc::Sender<Bytes>) {
        let (frames, queue) = mpsc::channel(capacity);
        let stream = Stream {
            id,
            departed: None,
            frames: frames.clone(),
            queue: Arc::new(tokio::sync::Mutex::new(queue)),
            window: Arc::default(),
            acked: watch::channel(0).0,
        };
        (stream, frames)
    }

    /// The sending side of the stream's queue.
    pub(super) fn queue(&self) -> PeerQueue {
        PeerQueue {
            frames: self.frames.clone(),
            up: false,
        }
    }

    /// The peer delivered every batch up to `received`: they need not be sent again.
    pub(super) fn on_ack(&self, received: u64) {
        self.window.lock().unacked.retain(|(seq, _)| *seq > received);
        self.acked.send_if_modified(|acked| {
            let advanced = received > *acked;
            if advanced {
                *acked = received;
            }
            advanced
        });
    }

    /// The sender task of a new link of this stream: it sends what the last link left unacknowledged, then the
    /// queue, until `stop` (the link closed) or the peer's endpoint is gone.
    pub(super) fn sender(
        &self,
        remote: ActorRef<EndpointMsg>,
        from: NodeId,
        batching: Batching,
        counters: Arc<PeerCounters>,
        stop: CancellationToken,
    ) -> SenderTask {
        SenderTask {
            queue: Arc::clone(&self.queue),
            window: Arc::clone(&self.window),
            acked: self.acked.subscribe(),
            stream: self.id,
            remote,
            from,
            batching,
            counters,
            stop,
        }
    }
}

/// One link's sender: batches the stream's queue and keeps at most [`WINDOW_BATCHES`] unacknowledged.
pub(super) struct SenderTask {
    queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Bytes>>>,
    window: Arc<Mutex<Window>>,
    acked: watch::Receiver<u64>,
    stream: u64,
    remote: ActorRef<EndpointMsg>,
    from: NodeId,
    batching: Batching,
    /// The link's peer's counters: a full window is a stall.
    counters: Arc<PeerCounters>,
    stop: CancellationToken,
}

impl SenderTask {
    pub(super) async fn run(mut self) {
        // The previous link's task lets go of the queue when it stops; frames stay in order either way.
        let queue = Arc::clone(&self.queue);
        let mut queue = tokio::select! {
            biased;
            () = self.stop.cancelled() => return,
            queue = queue.lock_owned() => queue,
        };
        let resend: Vec<(u64, Arc<[Bytes]>)> = self.window.lock().unacked.iter().cloned().collect();
        if !resend.is_empty() {
            tracing::debug!(batches = resend.len(), "sending again what the last link left unacknowledged");
        }
        for (seq, frames) in resend {
            if !self.cast(seq, &frames) {
                return;
            }
        }
        loop {
            let carry = self.window.lock().carry.take();
            let first = match carry {
                Some(frame) => frame,
                None => tokio::select! {
                    biased;
                    () = self.stop.cancelled() => return,
                    frame = queue.recv() => match frame {
                        Some(frame) => frame,
                        None => return,
                    },
                },
            };
            let frames: Arc<[Bytes]> = self.fill(&mut queue, first).await.into();
            // In the window before it is cast: if the link stops now, the next one sends it.
            let seq = {
                let mut window = self.window.lock();
                window.last_seq += 1;
                let seq = window.last_seq;
                window.unacked.push_back((seq, Arc::clone(&frames)));
                seq
            };
            if seq.saturating_sub(*self.acked.borrow()) > WINDOW_BATCHES {
                self.counters.stalled();
            }
            while seq.saturating_sub(*self.acked.borrow_and_update()) > WINDOW_BATCHES {
                tokio::select! {
                    biased;
                    () = self.stop.cancelled() => return,
                    changed = self.acked.changed() => if changed.is_err() { return },
                }
            }
            if self.stop.is_cancelled() || !self.cast(seq, &frames) {
                return;
            }
        }
    }

    /// Casts batch `seq`; false when the peer's endpoint is gone (the link is going down).
    fn cast(&self, seq: u64, frames: &[Bytes]) -> bool {
        let batch = Batch {
            from: self.from.clone(),
            stream: self.stream,
            seq,
            frames: frames.to_vec(),
        };
        if self.remote.cast(EndpointMsg::Batch(batch)).is_err() {
            tracing::debug!("the peer's endpoint is gone; the sender stops");
            return false;
        }
        true
    }

    /// Completes a batch that starts with `first`: up to `batch_frames` frames and `batch_bytes` bytes, waiting up to
    /// `linger` for more (less if the link stops). A frame that does not fit waits in the window for the next batch.
    async fn fill(&self, queue: &mut mpsc::Receiver<Bytes>, first: Bytes) -> Vec<Bytes> {
        let mut bytes = first.len();
        let mut frames = vec![first];
        let deadline = Instant::now() + self.batching.linger;
        while frames.len() < self.batching.batch_frames {
            let next = match queue.try_recv() {
                Ok(frame) => frame,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if self.batching.linger.is_zero() {
                        break;
                    }
                    tokio::select! {
                        biased;
                        () = self.stop.cancelled() => break,
                        next = tokio::time::timeout_at(deadline, queue.recv()) => match next {
                            Ok(Some(frame)) => frame,
                            Ok(None) | Err(_) => break,
                        },
                    }
                }
            };
            if bytes + next.len() > self.batching.batch_bytes {
                self.window.lock().carry = Some(next);
                break;
            }
            bytes += next.len();
            frames.push(next);
        }
        frames
    }
}
