//! One link's sender task: takes frames from the link's queue in batches and casts them to the peer's endpoint,
//! never more than [`WINDOW_BATCHES`] unacknowledged.

use std::sync::Arc;
use std::time::Duration;

use ::ractor::ActorRef;
use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::codec::{Batch, EndpointMsg};
use super::WINDOW_BATCHES;
use crate::cluster::link::PeerCounters;
use crate::cluster::membership::NodeId;

/// One link's sender: batches the queue and keeps at most [`WINDOW_BATCHES`] unacknowledged.
pub(super) struct SenderTask {
    pub(super) queue: mpsc::Receiver<Bytes>,
    pub(super) remote: ActorRef<EndpointMsg>,
    pub(super) acked: watch::Receiver<u64>,
    pub(super) from: NodeId,
    pub(super) epoch: u64,
    pub(super) batch_frames: usize,
    pub(super) batch_bytes: usize,
    pub(super) linger: Duration,
    /// The link's peer's counters: a full window is a stall.
    pub(super) counters: Arc<PeerCounters>,
}

impl SenderTask {
    pub(super) async fn run(mut self) {
        let mut sent: u64 = 0;
        let mut carry: Option<Bytes> = None;
        loop {
            let first = match carry.take() {
                Some(frame) => frame,
                None => match self.queue.recv().await {
                    Some(frame) => frame,
                    None => return,
                },
            };
            let (frames, next) = self.fill(first).await;
            carry = next;
            if sent.saturating_sub(*self.acked.borrow()) >= WINDOW_BATCHES {
                self.counters.stalled();
            }
            while sent.saturating_sub(*self.acked.borrow_and_update()) >= WINDOW_BATCHES {
                if self.acked.changed().await.is_err() {
                    return;
                }
            }
            let batch = Batch {
                from: self.from.clone(),
                epoch: self.epoch,
                frames,
            };
            if self.remote.cast(EndpointMsg::Batch(batch)).is_err() {
                tracing::debug!("the peer's endpoint is gone; the sender stops");
                return;
            }
            sent += 1;
        }
    }

    /// Completes a batch that starts with `first`: up to `batch_frames` frames and `batch_bytes` bytes, waiting up to
    /// `linger` for more. Returns the batch and the frame that did not fit, if any.
    async fn fill(&mut self, first: Bytes) -> (Vec<Bytes>, Option<Bytes>) {
        let mut bytes = first.len();
        let mut frames = vec![first];
        let deadline = Instant::now() + self.linger;
        while frames.len() < self.batch_frames {
            let next = match self.queue.try_recv() {
                Ok(frame) => frame,
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    if self.linger.is_zero() {
                        break;
                    }
                    match tokio::time::timeout_at(deadline, self.queue.recv()).await {
                        Ok(Some(frame)) => frame,
                        Ok(None) | Err(_) => break,
                    }
                }
            };
            if bytes + next.len() > self.batch_bytes {
                return (frames, Some(next));
            }
            bytes += next.len();
            frames.push(next);
        }
        (frames, None)
    }
}
