//! [`RecvGate`]: polls a connection's transport only when it may have input.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use futures_util::task::AtomicWaker;

use crate::transport::{Transport, TransportError};

use super::link::Link;

/// Lets the main loop poll the transport only when the transport woke the task (or may hold more input). The
/// task wakes for every mailbox message, and polling an idle WebSocket's stream each time (through actix-ws's
/// stream and the request payload) cost about 370 instructions per delivery.
pub(super) struct RecvGate {
    flag: Arc<GateFlag>,
    /// Wakes `flag`; what the transport registers instead of the task's own waker.
    waker: Waker,
}

struct GateFlag {
    ready: AtomicBool,
    task: AtomicWaker,
}

impl Wake for GateFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl RecvGate {
    pub(super) fn new() -> RecvGate {
        let flag = Arc::new(GateFlag {
            ready: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(flag.clone());
        RecvGate { flag, waker }
    }

    /// The transport changed: poll it at the next turn.
    pub(super) fn open(&self) {
        self.flag.ready.store(true, Ordering::Release);
    }

    /// [`Link::recv`], polled only when it may make progress (every time, for a transport whose dropped `recv`
    /// forgets its wake-ups). Cancel-safe, as `Link::recv` is.
    pub(super) async fn recv<T: Transport>(&self, link: &mut Link<T>) -> Option<Result<Bytes, TransportError>> {
        if !link.recv_wakes_after_drop() {
            return link.recv().await;
        }
        std::future::poll_fn(|cx| {
            self.flag.task.register(cx.waker());
            if !self.flag.ready.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
            let recv = link.recv();
            let mut recv = std::pin::pin!(recv);
            match recv.as_mut().poll(&mut Context::from_waker(&self.waker)) {
                Poll::Ready(chunk) => {
                    // More input may be buffered already, with no wake-up to come for it.
                    self.open();
                    Poll::Ready(chunk)
                }
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}
