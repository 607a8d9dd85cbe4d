//! Node-to-node links: the in-memory network (order, Up/Down, queue limits, faults) in this process, and
//! ractor_cluster links between real processes.
//!
//! The multi-process test re-executes this test binary as the peer: `ractor_peer_process` (ignored, so it only runs
//! when asked for by name) reads its settings from `HUBMESH_LINK_PEER_*` variables, prints `PEER-READY <address>`,
//! and answers frames: `E…` is echoed back, `C<seq>…` is counted (checking the order), `R` is answered with
//! `R<count><in order>`. A peer exits when its stdin closes, so no child outlives the test. A process holds at most
//! one `RactorLinks`, so all ractor scenarios run in one test against one local node.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use hubmesh::cluster::link::memory::{MemoryLinks, MemoryNetwork};
use hubmesh::cluster::link::ractor::{RactorLinks, WINDOW_BATCHES};
use hubmesh::cluster::{LinkConfig, LinkError, LinkEvent, Links, NodeId, PeerInfo};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(5);

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Tracing for a peer process: to stderr, which the test shows, since its stdout talks to the test.
fn init_peer_tracing(label: String) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    tracing::info!(peer = %label, "peer process started");
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn peer(id: &NodeId) -> PeerInfo {
    PeerInfo {
        id: id.clone(),
        link_address: String::new(),
    }
}

/// The next event, or a panic after `WAIT`.
async fn next(rx: &mut mpsc::Receiver<LinkEvent>) -> LinkEvent {
    match tokio::time::timeout(WAIT, rx.recv()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("the event channel closed"),
        Err(_) => panic!("no link event within {WAIT:?}"),
    }
}

/// The next two events, in a stable order (they come from two links, so their order is not defined).
async fn next_two(rx: &mut mpsc::Receiver<LinkEvent>) -> [LinkEvent; 2] {
    let mut events = [next(rx).await, next(rx).await];
    events.sort_by_key(|event| format!("{event:?}"));
    events
}

/// Asserts that no event arrives within `quiet`.
async fn silent(rx: &mut mpsc::Receiver<LinkEvent>, quiet: Duration) {
    // A closed channel (a killed node's) is silent too.
    if let Ok(Some(event)) = tokio::time::timeout(quiet, rx.recv()).await {
        panic!("unexpected link event {event:?}");
    }
}

fn frame_from(event: LinkEvent, expected: &NodeId) -> Bytes {
    match event {
        LinkEvent::Frame { from, frame } if &from == expected => frame,
        other => panic!("expected a frame from {expected}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Memory links
// ---------------------------------------------------------------------------------------------------------------

struct MemNode {
    id: NodeId,
    links: Arc<MemoryLinks>,
    events: mpsc::Receiver<LinkEvent>,
}

fn mem_join(net: &MemoryNetwork, name: &str, generation: u64, config: &LinkConfig, capacity: usize) -> MemNode {
    let id = NodeId::new(name, generation);
    let (tx, events) = mpsc::channel(capacity);
    let links = net.join(id.clone(), config, tx).unwrap();
    MemNode { id, links, events }
}

fn mem_config() -> LinkConfig {
    LinkConfig::new(loopback(), "secret")
}

/// Links `a` and `b` (as membership would, on `a`'s side) and consumes both Up events.
async fn mem_link(a: &mut MemNode, b: &mut MemNode, a_peers: &[NodeId]) {
    let live: Vec<PeerInfo> = a_peers.iter().map(peer).collect();
    a.links.update_peers(&live);
    assert_eq!(next(&mut a.events).await, LinkEvent::Up(b.id.clone()));
    assert_eq!(next(&mut b.events).await, LinkEvent::Up(a.id.clone()));
}

#[tokio::test]
async fn memory_links_deliver_in_order_and_report_up_and_down() {
    let net = MemoryNetwork::new();
    let config = mem_config();
    let mut a = mem_join(&net, "a", 1, &config, 1024);
    let mut b = mem_join(&net, "b", 1, &config, 1024);
    assert_eq!(
        a.links.send(&b.id, Bytes::from_static(b"early")),
        Err(LinkError::NoLink(b.id.clone()))
    );

    let live = [b.id.clone()];
    mem_link(&mut a, &mut b, &live).await;
    // The accepting side learns of the dialer later: a view without it yet must not close the link.
    b.links.update_peers(&[]);
    assert_eq!(a.links.connected(), vec![b.id.clone()]);
    assert_eq!(b.links.connected(), vec![a.id.clone()]);
    b.links.update_peers(&[peer(&a.id)]);

    for seq in 0u32..5000 {
        a.links.send(&b.id, Bytes::copy_from_slice(&seq.to_be_bytes())).unwrap();
    }
    for seq in 0u32..5000 {
        let frame = frame_from(next(&mut b.events).await, &a.id);
        assert_eq!(frame.as_ref(), seq.to_be_bytes());
    }
    b.links.send(&a.id, Bytes::from_static(b"back")).unwrap();
    assert_eq!(frame_from(next(&mut a.events).await, &b.id).as_ref(), b"back");

    // `a` no longer sees `b` live: the link closes, both sides get Down once.
    a.links.update_peers(&[]);
    assert_eq!(next(&mut a.events).await, LinkEvent::Down(b.id.clone()));
    assert_eq!(next(&mut b.events).await, LinkEvent::Down(a.id.clone()));
    assert!(a.links.connected().is_empty());
    assert_eq!(
        a.links.send(&b.id, Bytes::from_static(b"late")),
        Err(LinkError::NoLink(b.id.clone()))
    );
    silent(&mut a.events, Duration::from_millis(100)).await;
    silent(&mut b.events, Duration::from_millis(100)).await;

    // `b` saw `a` live and still does, but `a` refuses `b` until it sees it live again.
    assert!(b.links.connected().is_empty());
    a.links.update_peers(&[peer(&b.id)]);
    assert_eq!(next(&mut a.events).await, LinkEvent::Up(b.id.clone()));
    assert_eq!(next(&mut b.events).await, LinkEvent::Up(a.id.clone()));

    // Dropping a node's links is a stop without goodbye: its peer gets Down.
    drop(b.links);
    assert_eq!(next(&mut a.events).await, LinkEvent::Down(b.id.clone()));
}

#[tokio::test]
async fn memory_links_refuse_when_full_or_too_large() {
    let net = MemoryNetwork::new();
    let mut config = mem_config();
    config.queue_frames = 16;
    config.max_frame = 100;
    let mut a = mem_join(&net, "a", 1, &config, 1024);
    let mut b = mem_join(&net, "b", 1, &config, 4);
    let live = [b.id.clone()];
    mem_link(&mut a, &mut b, &live).await;

    assert_eq!(
        a.links.send(&b.id, Bytes::from(vec![0u8; 101])),
        Err(LinkError::TooLarge { size: 101, max: 100 })
    );
    a.links.send(&b.id, Bytes::from(vec![7u8; 100])).unwrap();
    assert_eq!(frame_from(next(&mut b.events).await, &a.id).len(), 100);

    // A frozen receiver: frames are held in the sender's queue, which holds exactly `queue_frames`.
    net.freeze("b");
    for seq in 0u8..16 {
        a.links.send(&b.id, Bytes::from(vec![seq])).unwrap();
    }
    assert_eq!(
        a.links.send(&b.id, Bytes::from_static(b"x")),
        Err(LinkError::QueueFull(b.id.clone()))
    );
    silent(&mut b.events, Duration::from_millis(100)).await;
    net.thaw("b");
    for seq in 0u8..16 {
        assert_eq!(frame_from(next(&mut b.events).await, &a.id).as_ref(), [seq]);
    }

    // A receiver that does not read: its event channel (4) and then the sender's queue (16) fill up.
    let mut accepted = 0usize;
    let mut full_in_a_row = 0;
    while full_in_a_row < 3 && accepted < 100 {
        match a.links.send(&b.id, Bytes::from(vec![accepted as u8])) {
            Ok(()) => {
                accepted += 1;
                full_in_a_row = 0;
            }
            Err(LinkError::QueueFull(full)) => {
                assert_eq!(full, b.id);
                full_in_a_row += 1;
                // Let the delivery task move what it can into the receiver's channel.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    assert_eq!(
        accepted,
        16 + 4,
        "the queue and the receiver's channel bound what a sender can put in flight"
    );
    for seq in 0..accepted {
        assert_eq!(frame_from(next(&mut b.events).await, &a.id).as_ref(), [seq as u8]);
    }
}

#[tokio::test]
async fn memory_links_hold_across_a_partition_and_close_on_a_dead_verdict() {
    let net = MemoryNetwork::new();
    let config = mem_config();
    let mut a = mem_join(&net, "a", 1, &config, 1024);
    let mut b = mem_join(&net, "b", 1, &config, 1024);
    let mut c = mem_join(&net, "c", 1, &config, 1024);
    let live = [b.id.clone()];
    mem_link(&mut a, &mut b, &live).await;
    let live = [a.id.clone(), c.id.clone()];
    mem_link(&mut b, &mut c, &live).await;
    let live = [b.id.clone(), c.id.clone()];
    mem_link(&mut a, &mut c, &live).await;

    net.partition(&["a"], &["b", "c"]);
    a.links.send(&b.id, Bytes::from_static(b"held")).unwrap();
    b.links.send(&c.id, Bytes::from_static(b"same side")).unwrap();
    assert_eq!(frame_from(next(&mut c.events).await, &b.id).as_ref(), b"same side");
    silent(&mut b.events, Duration::from_millis(150)).await;
    net.heal();
    assert_eq!(frame_from(next(&mut b.events).await, &a.id).as_ref(), b"held");

    // Partitioned again, and this time membership declares the far side dead: links close and held frames go.
    net.partition(&["a"], &["b", "c"]);
    a.links.send(&b.id, Bytes::from_static(b"dropped")).unwrap();
    a.links.update_peers(&[]);
    b.links.update_peers(&[peer(&c.id)]);
    c.links.update_peers(&[peer(&b.id)]);
    let mut downs = vec![next(&mut a.events).await, next(&mut a.events).await];
    downs.sort_by_key(|event| format!("{event:?}"));
    assert_eq!(
        downs,
        vec![LinkEvent::Down(b.id.clone()), LinkEvent::Down(c.id.clone())]
    );
    assert_eq!(next(&mut b.events).await, LinkEvent::Down(a.id.clone()));
    assert_eq!(next(&mut c.events).await, LinkEvent::Down(a.id.clone()));

    // Live again on every side, but no link opens across the partition until it heals.
    a.links.update_peers(&[peer(&b.id), peer(&c.id)]);
    b.links.update_peers(&[peer(&a.id), peer(&c.id)]);
    c.links.update_peers(&[peer(&a.id), peer(&b.id)]);
    assert!(a.links.connected().is_empty());
    net.heal();
    assert_eq!(
        next_two(&mut a.events).await,
        [LinkEvent::Up(b.id.clone()), LinkEvent::Up(c.id.clone())]
    );
    assert_eq!(next(&mut b.events).await, LinkEvent::Up(a.id.clone()));
    a.links.send(&b.id, Bytes::from_static(b"after")).unwrap();
    assert_eq!(frame_from(next(&mut b.events).await, &a.id).as_ref(), b"after");
}

#[tokio::test]
async fn memory_links_kill_freeze_and_restart() {
    let net = MemoryNetwork::new();
    let config = mem_config();
    let mut a = mem_join(&net, "a", 1, &config, 1024);
    let mut b = mem_join(&net, "b", 1, &config, 1024);
    let mut c = mem_join(&net, "c", 1, &config, 1024);
    a.links.update_peers(&[peer(&b.id), peer(&c.id)]);
    assert_eq!(
        next_two(&mut a.events).await,
        [LinkEvent::Up(b.id.clone()), LinkEvent::Up(c.id.clone())]
    );
    assert_eq!(next(&mut b.events).await, LinkEvent::Up(a.id.clone()));
    assert_eq!(next(&mut c.events).await, LinkEvent::Up(a.id.clone()));

    // Frozen `c` is declared dead by `a`: Down on both sides (even the frozen one), held frames dropped.
    net.freeze("c");
    a.links.send(&c.id, Bytes::from_static(b"never")).unwrap();
    a.links.update_peers(&[peer(&b.id)]);
    assert_eq!(next(&mut a.events).await, LinkEvent::Down(c.id.clone()));
    assert_eq!(next(&mut c.events).await, LinkEvent::Down(a.id.clone()));
    net.thaw("c");
    silent(&mut c.events, Duration::from_millis(100)).await;

    // Killed `b`: its peer gets Down, the killed node gets nothing more and its handle is inert.
    net.kill("b");
    assert_eq!(next(&mut a.events).await, LinkEvent::Down(b.id.clone()));
    assert_eq!(
        b.links.send(&a.id, Bytes::from_static(b"ghost")),
        Err(LinkError::NoLink(a.id.clone()))
    );
    silent(&mut b.events, Duration::from_millis(100)).await;

    // The same name may only come back as a newer generation.
    let (tx, _rx) = mpsc::channel(8);
    assert!(matches!(
        net.join(NodeId::new("a", 1), &config, tx),
        Err(LinkError::Start(_))
    ));
    let mut b2 = mem_join(&net, "b", 2, &config, 1024);
    a.links.update_peers(&[peer(&b2.id)]);
    assert_eq!(next(&mut a.events).await, LinkEvent::Up(b2.id.clone()));
    assert_eq!(next(&mut b2.events).await, LinkEvent::Up(a.id.clone()));
    b2.links.send(&a.id, Bytes::from_static(b"again")).unwrap();
    assert_eq!(frame_from(next(&mut a.events).await, &b2.id).as_ref(), b"again");

    // A newer generation joining supersedes the older one's links.
    let mut b3 = mem_join(&net, "b", 3, &config, 1024);
    assert_eq!(next(&mut a.events).await, LinkEvent::Down(b2.id.clone()));
    b3.links.update_peers(&[peer(&a.id)]);
    assert_eq!(next(&mut b3.events).await, LinkEvent::Up(a.id.clone()));
    assert_eq!(next(&mut a.events).await, LinkEvent::Up(b3.id.clone()));
}

// ---------------------------------------------------------------------------------------------------------------
// ractor_cluster links between processes
// ---------------------------------------------------------------------------------------------------------------

const PEER_ENV: &str = "HUBMESH_LINK_PEER_NAME";
const SECRET: &str = "links-test-secret";
/// How long a peer process may live at most.
const PEER_LIFETIME: Duration = Duration::from_secs(90);

fn counted(seq: u64, size: usize) -> Bytes {
    let mut frame = BytesMut::with_capacity(size.max(9));
    frame.put_u8(b'C');
    frame.put_u64(seq);
    frame.resize(size.max(9), 0xab);
    frame.freeze()
}

/// Sends `frame`, waiting while the queue is full (bounded).
async fn send_patiently(links: &dyn Links, peer: &NodeId, frame: Bytes) -> Result<(), LinkError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match links.send(peer, frame.clone()) {
            Err(LinkError::QueueFull(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            other => return other,
        }
    }
}

/// The peer side, run in a child process (see the module documentation).
#[test]
#[ignore = "the peer process of ractor_links_between_processes; runs only when that test starts it"]
fn ractor_peer_process() {
    let Ok(name) = std::env::var(PEER_ENV) else {
        return;
    };
    let env = |key: &str| std::env::var(key).unwrap();
    let generation: u64 = env("HUBMESH_LINK_PEER_GENERATION").parse().unwrap();
    let secret = env("HUBMESH_LINK_PEER_SECRET");
    let parent = NodeId::new(
        env("HUBMESH_LINK_PEER_PARENT"),
        env("HUBMESH_LINK_PEER_PARENT_GENERATION").parse().unwrap(),
    );
    let parent_address = env("HUBMESH_LINK_PEER_PARENT_ADDRESS");
    // Exit with the parent: its end of stdin closes when it dies.
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(0);
    });
    std::thread::spawn(|| {
        std::thread::sleep(PEER_LIFETIME);
        std::process::exit(3);
    });
    init_peer_tracing(format!("{name}.{generation}"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let (tx, mut events) = mpsc::channel(16 * 1024);
        let id = NodeId::new(name.as_str(), generation);
        let links = RactorLinks::start(id, LinkConfig::new(loopback(), secret), tx)
            .await
            .unwrap();
        println!("PEER-READY {}", links.advertised_address());
        std::io::stdout().flush().unwrap();
        links.update_peers(&[PeerInfo {
            id: parent.clone(),
            link_address: parent_address,
        }]);
        let (mut count, mut expected, mut in_order) = (0u64, 0u64, true);
        while let Some(event) = events.recv().await {
            match event {
                LinkEvent::Frame { from, frame } => match frame.first() {
                    Some(b'E') => {
                        let _ = send_patiently(links.as_ref(), &from, frame).await;
                    }
                    Some(b'C') if frame.len() >= 9 => {
                        let seq = u64::from_be_bytes(frame[1..9].try_into().unwrap());
                        in_order &= seq == expected;
                        expected = seq + 1;
                        count += 1;
                    }
                    Some(b'R') => {
                        let mut reply = BytesMut::new();
                        reply.put_u8(b'R');
                        reply.put_u64(count);
                        reply.put_u8(u8::from(in_order));
                        let _ = send_patiently(links.as_ref(), &from, reply.freeze()).await;
                        (count, expected, in_order) = (0, 0, true);
                    }
                    _ => {}
                },
                LinkEvent::Up(peer) => println!("PEER-EVENT up {peer}"),
                LinkEvent::Down(peer) => println!("PEER-EVENT down {peer}"),
            }
        }
    });
}

/// A peer process; killed (SIGKILL) when dropped.
struct PeerProcess {
    id: NodeId,
    address: String,
    child: Child,
}

impl PeerProcess {
    fn spawn(name: &str, generation: u64, secret: &str, parent: &NodeId, parent_address: &str) -> PeerProcess {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "ractor_peer_process",
                "--exact",
                "--nocapture",
                "--ignored",
                "--test-threads=1",
            ])
            .env(PEER_ENV, name)
            .env("HUBMESH_LINK_PEER_GENERATION", generation.to_string())
            .env("HUBMESH_LINK_PEER_SECRET", secret)
            .env("HUBMESH_LINK_PEER_PARENT", parent.name.as_ref())
            .env("HUBMESH_LINK_PEER_PARENT_GENERATION", parent.generation.to_string())
            .env("HUBMESH_LINK_PEER_PARENT_ADDRESS", parent_address)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let label = format!("{name}.{generation}");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // libtest may have written "test ractor_peer_process ... " on the same line.
                if let Some((_, address)) = line.split_once("PEER-READY ") {
                    let _ = ready_tx.send(address.trim().to_owned());
                }
                if let Some(at) = line.find("PEER-") {
                    eprintln!("[peer {label}] {}", &line[at..]);
                }
            }
        });
        let mut process = PeerProcess {
            id: NodeId::new(name, generation),
            address: String::new(),
            child,
        };
        process.address = ready_rx
            .recv_timeout(Duration::from_secs(15))
            .expect("the peer process did not start its links");
        process
    }

    fn info(&self) -> PeerInfo {
        PeerInfo {
            id: self.id.clone(),
            link_address: self.address.clone(),
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The local node's side of the ractor test.
struct Local {
    id: NodeId,
    links: Arc<RactorLinks>,
    events: mpsc::Receiver<LinkEvent>,
}

impl Local {
    /// Waits for an event matching `wanted`, skipping others (each skipped Down is a failure).
    async fn wait_for(&mut self, what: &str, limit: Duration, wanted: impl Fn(&LinkEvent) -> bool) -> LinkEvent {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) if wanted(&event) => return event,
                Ok(Some(LinkEvent::Down(peer))) => panic!("unexpected Down({peer}) while waiting for {what}"),
                Ok(Some(_)) => {}
                Ok(None) => panic!("the event channel closed"),
                Err(_) => panic!("no {what} within {limit:?}"),
            }
        }
    }

    /// Sends one echo frame to `peer` and waits for it to come back.
    async fn echo(&mut self, peer: &NodeId, text: &str) {
        let frame = Bytes::from(format!("E{text}"));
        send_patiently(self.links.as_ref(), peer, frame.clone()).await.unwrap();
        let from = peer.clone();
        self.wait_for(
            "an echo",
            WAIT,
            |event| matches!(event, LinkEvent::Frame { from: f, frame: got } if f == &from && got == &frame),
        )
        .await;
    }

    /// Sends `count` counted frames of `size` bytes and a report request; returns the elapsed time once the peer
    /// reports having received them all, in order.
    async fn stream(&mut self, peer: &NodeId, count: u64, size: usize) -> Duration {
        let started = Instant::now();
        for seq in 0..count {
            send_patiently(self.links.as_ref(), peer, counted(seq, size))
                .await
                .unwrap();
        }
        let (received, in_order) = self.report(peer, Duration::from_secs(30)).await;
        let elapsed = started.elapsed();
        assert_eq!(received, count, "the peer received every frame");
        assert!(in_order, "the peer received the frames in order");
        elapsed
    }

    /// Asks the peer for its report (a request behind every frame sent so far) and waits up to `limit` for it:
    /// how many counted frames it got since its last report, and whether in order.
    async fn report(&mut self, peer: &NodeId, limit: Duration) -> (u64, bool) {
        send_patiently(self.links.as_ref(), peer, Bytes::from_static(b"R"))
            .await
            .unwrap();
        let from = peer.clone();
        let report = self
            .wait_for("the peer's report", limit, |event| {
                matches!(event, LinkEvent::Frame { from: f, frame } if f == &from && frame.first() == Some(&b'R'))
            })
            .await;
        let LinkEvent::Frame { frame, .. } = report else {
            unreachable!()
        };
        (u64::from_be_bytes(frame[1..9].try_into().unwrap()), frame[9] == 1)
    }
}

/// Sends a signal (`-STOP`, `-CONT`) to a peer process.
fn signal(child: &Child, which: &str) {
    let status = Command::new("kill")
        .args([which, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {which} failed");
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Writes `bytes` to `address` from a raw TCP connection and keeps it open for a moment.
fn garbage(address: &str, bytes: &[u8]) -> std::net::TcpStream {
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    let _ = stream.write_all(bytes);
    stream
}

/// Waits (at most 15 s) for `expected`, skipping any other event (a Down included, unlike `Local::wait_for`).
async fn wait_for_event(events: &mut mpsc::Receiver<LinkEvent>, what: &str, expected: LinkEvent) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(event)) if event == expected => return,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the event channel closed"),
            Err(_) => panic!("no {what} within 15 s"),
        }
    }
}

/// A TCP relay in front of an address whose connections the test can cut (both sockets closed at once) while it
/// goes on accepting new ones.
struct CutRelay {
    address: SocketAddr,
    cuts: tokio::sync::watch::Sender<u64>,
    accepting: tokio::task::JoinHandle<()>,
}

impl CutRelay {
    async fn start(target: &str) -> CutRelay {
        let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
        let address = listener.local_addr().unwrap();
        let (cuts, _) = tokio::sync::watch::channel(0u64);
        let cut_signal = cuts.clone();
        let target = target.to_owned();
        let accepting = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let mut cut = cut_signal.subscribe();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        CutRelay {
            address,
            cuts,
            accepting,
        }
    }

    /// Closes every connection relayed now.
    fn cut(&self) {
        self.cuts.send_modify(|cuts| *cuts += 1);
    }
}

impl Drop for CutRelay {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ractor_links_between_processes() {
    init_tracing();
    let id = NodeId::new("parent", 1);
    let (tx, events) = mpsc::channel(16 * 1024);
    let links = RactorLinks::start(id.clone(), LinkConfig::new(loopback(), SECRET), tx)
        .await
        .unwrap();
    let address = links.advertised_address();
    let mut local = Local { id, links, events };

    // One process, one RactorLinks.
    let (other_tx, _other_rx) = mpsc::channel(8);
    let second = RactorLinks::start(NodeId::new("second", 1), LinkConfig::new(loopback(), SECRET), other_tx).await;
    assert!(
        matches!(second, Err(LinkError::Start(_))),
        "a second RactorLinks in one process must be refused"
    );

    // "alpha" < "parent": alpha dials.
    let started = Instant::now();
    let mut alpha = PeerProcess::spawn("alpha", 1, SECRET, &local.id, &address);
    local.links.update_peers(&[alpha.info()]);
    let alpha_id = alpha.id.clone();
    local
        .wait_for("Up(alpha.1)", Duration::from_secs(10), |event| {
            event == &LinkEvent::Up(alpha_id.clone())
        })
        .await;
    println!(
        "link to a new peer process up in {:?} (process start included)",
        started.elapsed()
    );
    local.echo(&alpha_id, "hello").await;

    // 10 000 frames, in order, none lost.
    let elapsed = local.stream(&alpha_id, 10_000, 100).await;
    println!("10000 frames of 100 bytes delivered in order in {elapsed:?}");

    // Throughput, and the sender's memory.
    let rss_before = rss_kib();
    let frames = 200_000u64;
    let elapsed = local.stream(&alpha_id, frames, 100).await;
    let rss_after = rss_kib();
    println!(
        "ractor link throughput: {frames} frames of 100 bytes in {elapsed:?} = {:.0} frames/s (sender RSS {:?} KiB -> {:?} KiB)",
        frames as f64 / elapsed.as_secs_f64(),
        rss_before,
        rss_after
    );

    // A stopped peer (SIGSTOP): the credit window stops the sender, the queue fills, sends fail with QueueFull;
    // after SIGCONT every accepted frame arrives, in order.
    signal(&alpha.child, "-STOP");
    // Start counting only once the peer is really stopped and the acknowledgements it sent before stopping have
    // arrived; otherwise a loaded machine lets it take a few more batches and the bound below does not hold.
    let stat = format!("/proc/{}/stat", alpha.child.id());
    for _ in 0..200 {
        let state = std::fs::read_to_string(&stat).unwrap_or_default();
        if state
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('T'))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut accepted = 0u64;
    let mut full_in_a_row = 0;
    while full_in_a_row < 2 && accepted < 100_000 {
        match local.links.send(&alpha_id, counted(accepted, 100)) {
            Ok(()) => {
                accepted += 1;
                full_in_a_row = 0;
            }
            Err(LinkError::QueueFull(_)) => {
                full_in_a_row += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(other) => panic!("unexpected {other}"),
        }
    }
    let config = LinkConfig::new(loopback(), SECRET);
    let bound = (config.queue_frames + (WINDOW_BATCHES as usize + 1) * config.batch_frames) as u64;
    println!(
        "a stopped peer: QueueFull after {accepted} frames (queue {}, bound {bound})",
        config.queue_frames
    );
    assert!(
        accepted >= config.queue_frames as u64 && accepted <= bound,
        "accepted {accepted}"
    );
    signal(&alpha.child, "-CONT");
    let (received, in_order) = local.report(&alpha_id, Duration::from_secs(10)).await;
    assert_eq!(received, accepted);
    assert!(in_order, "in order");

    // A frame over the cap is refused at the sender.
    let too_large = local.links.send(&alpha_id, Bytes::from(vec![b'E'; (1 << 20) + 1]));
    assert!(matches!(too_large, Err(LinkError::TooLarge { .. })), "{too_large:?}");

    // Garbage and an oversized length prefix on both link ports harm no link.
    let mut junk = Vec::new();
    for port in [&address, &alpha.address] {
        junk.push(garbage(port, b"GET / HTTP/1.1\r\nHost: hubmesh\r\n\r\n"));
        junk.push(garbage(port, &(1u64 << 40).to_be_bytes()));
        let mut bogus = 64u64.to_be_bytes().to_vec();
        bogus.extend(std::iter::repeat_n(0xff, 64));
        junk.push(garbage(port, &bogus));
        let noise: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        junk.push(garbage(port, &noise));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    local.echo(&alpha_id, "after garbage").await;
    drop(junk);

    // A node with the wrong secret gets no link; the good link keeps working. "zulu" > "parent": we dial it.
    let zulu = PeerProcess::spawn("zulu", 1, "not-the-secret", &local.id, &address);
    local.links.update_peers(&[alpha.info(), zulu.info()]);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(2500);
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, local.events.recv()).await {
        assert!(
            !matches!(event, LinkEvent::Up(_) | LinkEvent::Down(_)),
            "unexpected {event:?}"
        );
    }
    assert_eq!(local.links.connected(), vec![alpha_id.clone()]);
    local.echo(&alpha_id, "with a stranger around").await;
    drop(zulu);
    local.links.update_peers(&[alpha.info()]);

    // A link that drops while both peers live resumes (`sender.rs` in src/cluster/link/ractor): "beta" dials through
    // a relay that the test cuts while beta is stopped, with batches unacknowledged and frames queued. Every frame
    // accepted before and during the cut arrives once, in order, on the next link.
    let relay = CutRelay::start(&address).await;
    let beta = PeerProcess::spawn("beta", 1, SECRET, &local.id, &relay.address.to_string());
    local.links.update_peers(&[alpha.info(), beta.info()]);
    let beta_id = beta.id.clone();
    local
        .wait_for("Up(beta.1)", Duration::from_secs(10), |event| {
            event == &LinkEvent::Up(beta_id.clone())
        })
        .await;
    local.echo(&beta_id, "before the cut").await;
    signal(&beta.child, "-STOP");
    let mut accepted = 0u64;
    while accepted < 5_000 {
        send_patiently(local.links.as_ref(), &beta_id, counted(accepted, 100))
            .await
            .unwrap();
        accepted += 1;
    }
    // Cut once the window is full of batches beta never acknowledged (its link stalls), so that the next link
    // must send them again; waited for with a deadline.
    let stalled = || {
        local
            .links
            .figures()
            .iter()
            .any(|figures| figures.peer == "beta" && figures.stalls > 0)
    };
    let deadline = Instant::now() + WAIT;
    while !stalled() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    relay.cut();
    wait_for_event(&mut local.events, "Down(beta.1)", LinkEvent::Down(beta_id.clone())).await;
    // Frames accepted while the link is down wait for the next one.
    for seq in accepted..accepted + 1_000 {
        send_patiently(local.links.as_ref(), &beta_id, counted(seq, 100))
            .await
            .unwrap();
    }
    accepted += 1_000;
    signal(&beta.child, "-CONT");
    wait_for_event(&mut local.events, "Up(beta.1) again", LinkEvent::Up(beta_id.clone())).await;
    let (received, in_order) = local.report(&beta_id, Duration::from_secs(20)).await;
    assert_eq!(
        received, accepted,
        "every frame accepted before and during the cut arrives, once"
    );
    assert!(in_order, "in order across the cut");
    println!("a link cut with {accepted} frames unacknowledged or queued resumed with every frame once, in order");

    // A peer declared dead by mistake (membership drops it, then lists it again, same incarnation) gets what was
    // queued for it before and meanwhile: its stream waits `STREAM_GRACE`.
    signal(&beta.child, "-STOP");
    for seq in 0..1_000 {
        send_patiently(local.links.as_ref(), &beta_id, counted(seq, 100))
            .await
            .unwrap();
    }
    local.links.update_peers(&[alpha.info()]);
    wait_for_event(
        &mut local.events,
        "Down(beta.1) when not live",
        LinkEvent::Down(beta_id.clone()),
    )
    .await;
    send_patiently(local.links.as_ref(), &beta_id, counted(1_000, 100))
        .await
        .unwrap();
    local.links.update_peers(&[alpha.info(), beta.info()]);
    signal(&beta.child, "-CONT");
    wait_for_event(
        &mut local.events,
        "Up(beta.1) when live again",
        LinkEvent::Up(beta_id.clone()),
    )
    .await;
    let (received, in_order) = local.report(&beta_id, Duration::from_secs(20)).await;
    assert_eq!(
        received, 1_001,
        "what was queued before and while the peer was out of the view arrives once it is live again"
    );
    assert!(in_order, "in order");
    drop(beta);
    wait_for_event(
        &mut local.events,
        "Down(beta.1) at its end",
        LinkEvent::Down(beta_id.clone()),
    )
    .await;
    local.links.update_peers(&[alpha.info()]);

    // A killed peer's link goes down (the TCP reset, before any membership verdict).
    let killed = Instant::now();
    alpha.kill();
    local
        .wait_for("Down(alpha.1)", Duration::from_secs(5), |event| {
            event == &LinkEvent::Down(alpha_id.clone())
        })
        .await;
    println!("link to a SIGKILLed peer down in {:?}", killed.elapsed());
    assert!(local.links.connected().is_empty());

    // The restarted peer (a new generation) gets a new link.
    let restarted = Instant::now();
    let alpha2 = PeerProcess::spawn("alpha", 2, SECRET, &local.id, &address);
    local.links.update_peers(&[alpha2.info()]);
    let alpha2_id = alpha2.id.clone();
    local
        .wait_for("Up(alpha.2)", Duration::from_secs(10), |event| {
            event == &LinkEvent::Up(alpha2_id.clone())
        })
        .await;
    println!(
        "link to the restarted peer up in {:?} (process start included)",
        restarted.elapsed()
    );
    local.echo(&alpha2_id, "second life").await;
    let elapsed = local.stream(&alpha2_id, 1000, 100).await;
    println!("1000 frames to the new generation in {elapsed:?}");

    // The old generation's frames are refused: no link to it.
    assert_eq!(
        local.links.send(&alpha_id, Bytes::from_static(b"E")),
        Err(LinkError::NoLink(alpha_id.clone()))
    );
    drop(alpha2);
    local.links.shutdown().await;
}
