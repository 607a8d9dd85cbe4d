//! The local fan-out path: one group message built once as a `SharedFrame` and delivered to N live connections on
//! one node, through each connection's mailbox, its connection task (encode once per protocol, batch, write) and
//! its transport. The transport is in memory (it counts the bytes it is asked to send and drops them), so no
//! sockets or cluster are involved; everything from `ConnectionHandle::deliver` to `Transport::send` is the real
//! code a node runs.
//!
//! Each iteration builds one frame (64-byte payload, JSON hub protocol), delivers it `burst` times to every
//! connection, and waits until all the bytes reached the transports. Throughput is in deliveries (frames times
//! connections), so Criterion's "elem/s" is deliveries per second on one core.
//!
//! `cargo bench --bench fanout`

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_util::future::BoxFuture;
use hubmesh::connection::{
    self, Call, ConnectionHandle, ConnectionHost, ConnectionId, ConnectionSetup, Limits, Reply, RequestInfo, Session,
    SharedFrame,
};
use hubmesh::protocol::{Protocol, TransferFormat};
use hubmesh::transport::{CloseKind, Transport, TransportError, TransportKind};
use parking_lot::Mutex;
use tokio::sync::Notify;

const PAYLOAD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The bytes every connection has been asked to send, shared by the transports of one runtime thread.
#[derive(Default)]
struct Sink {
    bytes: Cell<u64>,
    target: Cell<u64>,
    reached: Notify,
}

impl Sink {
    fn add(&self, n: usize) {
        let total = self.bytes.get() + n as u64;
        self.bytes.set(total);
        if total >= self.target.get() {
            self.reached.notify_one();
        }
    }

    async fn wait_for(&self, target: u64) {
        self.target.set(target);
        while self.bytes.get() < target {
            self.reached.notified().await;
        }
    }
}

/// An in-memory WebSocket stand-in: yields the JSON handshake once, then nothing until dropped.
struct MemoryTransport {
    handshake: Option<Bytes>,
    sink: Rc<Sink>,
}

impl Transport for MemoryTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::WebSockets
    }

    async fn recv(&mut self) -> Option<Result<Bytes, TransportError>> {
        match self.handshake.take() {
            Some(handshake) => Some(Ok(handshake)),
            None => std::future::pending().await,
        }
    }

    async fn send(&mut self, bytes: Bytes, _format: TransferFormat) -> Result<(), TransportError> {
        self.sink.add(bytes.len());
        Ok(())
    }

    async fn close(self, _kind: CloseKind) {}
}

/// A hub with no methods that hands out the handles of connected clients.
#[derive(Default)]
struct CollectingHost {
    handles: Mutex<Vec<ConnectionHandle>>,
}

impl ConnectionHost for CollectingHost {
    fn method_kind(&self, _target: &str) -> Option<bool> {
        None
    }

    fn invoke(&self, _session: &Arc<Session>, _call: Call) -> BoxFuture<'static, Reply> {
        Box::pin(async { Reply::Error("no methods".into()) })
    }

    fn connected(&self, session: &Arc<Session>) -> BoxFuture<'static, Result<(), String>> {
        self.handles.lock().push(session.handle.clone());
        Box::pin(async { Ok(()) })
    }

    fn disconnected(&self, _session: &Arc<Session>, _error: Option<String>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// N connected connections on a current-thread runtime, as one node's HTTP worker holds them.
struct LocalNode {
    runtime: tokio::runtime::Runtime,
    local: tokio::task::LocalSet,
    sink: Rc<Sink>,
    handles: Vec<ConnectionHandle>,
}

impl LocalNode {
    fn start(connections: usize) -> Option<LocalNode> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok()?;
        let local = tokio::task::LocalSet::new();
        let sink = Rc::new(Sink::default());
        let host = Arc::new(CollectingHost::default());
        let limits = Arc::new(Limits {
            // No keep-alive Pings or client timeouts during a run: only deliveries reach the transports.
            keep_alive: Duration::from_secs(3600),
            client_timeout: Duration::from_secs(7200),
            ..Limits::default()
        });
        for index in 0..connections {
            let transport = MemoryTransport {
                handshake: Some(Bytes::from_static(b"{\"protocol\":\"json\",\"version\":1}\x1e")),
                sink: Rc::clone(&sink),
            };
            let setup = ConnectionSetup {
                id: ConnectionId::new(format!("c{index}")),
                request: RequestInfo::default(),
                limits: Arc::clone(&limits),
                host: Arc::clone(&host) as Arc<dyn ConnectionHost>,
                resume: None,
                wake_relay: None,
                keeper: None,
            };
            local.spawn_local(connection::run(transport, setup));
        }
        // Let every connection complete its handshake.
        let deadline = Instant::now() + Duration::from_secs(30);
        while host.handles.lock().len() < connections {
            if Instant::now() > deadline {
                eprintln!(
                    "only {} of {connections} connections connected",
                    host.handles.lock().len()
                );
                return None;
            }
            local.block_on(&runtime, async { tokio::time::sleep(Duration::from_millis(1)).await });
        }
        let handles = std::mem::take(&mut *host.handles.lock());
        Some(LocalNode {
            runtime,
            local,
            sink,
            handles,
        })
    }

    /// Runs `rounds` of: one frame, delivered `burst` times to every connection, until all of it was sent.
    fn fan_out(&self, rounds: u64, burst: usize) -> Duration {
        let frame_len = SharedFrame::invocation("msg", (PAYLOAD,))
            .bytes(Protocol::Json)
            .map_or(0, |bytes| bytes.len() as u64);
        let per_round = frame_len * self.handles.len() as u64 * burst as u64;
        let refused = RefCell::new(0u64);
        let start = Instant::now();
        self.local.block_on(&self.runtime, async {
            for _ in 0..rounds {
                let frame = SharedFrame::invocation("msg", (PAYLOAD,));
                for _ in 0..burst {
                    for handle in &self.handles {
                        if handle.deliver(Arc::clone(&frame)).is_err() {
                            *refused.borrow_mut() += 1;
                        }
                    }
                }
                let target = self.sink.bytes.get() + per_round;
                self.sink.wait_for(target).await;
            }
        });
        let elapsed = start.elapsed();
        if *refused.borrow() > 0 {
            eprintln!("{} deliveries were refused", refused.borrow());
        }
        elapsed
    }
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("local_fanout");
    group.measurement_time(Duration::from_secs(5));
    for (connections, burst) in [(100, 1), (1000, 1), (1000, 8)] {
        let Some(node) = LocalNode::start(connections) else {
            eprintln!("cannot start {connections} in-memory connections");
            continue;
        };
        group.throughput(Throughput::Elements((connections * burst) as u64));
        let id = BenchmarkId::new(format!("{connections}_connections"), format!("burst_{burst}"));
        group.bench_function(id, |b| b.iter_custom(|rounds| node.fan_out(rounds, burst)));
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
