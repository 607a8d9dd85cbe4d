//! The relay every node's gossip (UDP) and link (TCP) traffic passes through, so the harness can cut, delay and heal
//! the path between any two nodes without root. Loopback only.
//!
//! Each participant `i` binds its gossip and link sockets on ports of its own and advertises the relay's ports
//! instead (`cluster.gossip_advertise`, `cluster.link_advertise`, seeds naming the relay).
//! * **UDP**: one relay socket per participant is both the address others send `i`'s gossip to and the source
//!   `i`'s gossip comes from. A datagram from `j`'s real gossip port to `i`'s relay socket is `j → i`: it is sent
//!   on from `j`'s relay socket to `i`'s real port, so `i` answers through the relay too.
//! * **TCP**: one listener per participant; the dialer of an accepted connection is found from its source port
//!   in `/proc/net/tcp` and the socket inodes of the participants' processes (`/proc/<pid>/fd`), so a pair can be
//!   cut, not only a destination. No library change is needed for that.
//!
//! A cut datagram is dropped. A cut TCP direction stalls (the relay stops reading and forwarding it, as a path
//! that drops packets would: the kernel's buffers fill, nothing is lost, it flows again on heal). Delay applies to
//! every datagram and TCP chunk from or to a delayed participant.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The addresses of one participant: where it binds, and the relay's addresses it advertises.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub gossip: SocketAddr,
    pub link: SocketAddr,
    pub relay_gossip: SocketAddr,
    pub relay_link: SocketAddr,
}

#[derive(Debug, Default)]
struct Rules {
    /// Directed pairs `(from, to)` whose datagrams are dropped.
    udp_cut: HashSet<(usize, usize)>,
    /// Directed pairs `(from, to)` whose TCP bytes stall.
    tcp_cut: HashSet<(usize, usize)>,
    /// Added latency of every packet from or to a participant.
    delay: HashMap<usize, Duration>,
}

/// What the harness controls: the rules, and the participants' process ids (to find who dialed).
#[derive(Debug)]
pub struct Faults {
    rules: Mutex<Rules>,
    pids: Mutex<Vec<Option<u32>>>,
    changed: watch::Sender<u64>,
    /// What the relay did, for the run's figures.
    pub counts: Counts,
}

/// What the relay did.
#[derive(Debug, Default)]
pub struct Counts {
    pub datagrams_relayed: AtomicU64,
    pub datagrams_dropped: AtomicU64,
    /// Link connections whose dialer was found, and those closed because it was not.
    pub connections_relayed: AtomicU64,
    pub connections_unknown: AtomicU64,
    /// TCP chunks that waited for a cut to heal.
    pub chunks_stalled: AtomicU64,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let get = |count: &AtomicU64| count.load(Ordering::Relaxed);
        write!(
            f,
            "{} datagrams relayed, {} dropped by cuts; {} link connections relayed, {} from no node closed; {} TCP chunks stalled by cuts",
            get(&self.datagrams_relayed),
            get(&self.datagrams_dropped),
            get(&self.connections_relayed),
            get(&self.connections_unknown),
            get(&self.chunks_stalled)
        )
    }
}

impl Faults {
    fn with_rules<R>(&self, apply: impl FnOnce(&mut Rules) -> R) -> R {
        let result = apply(&mut self.rules.lock().unwrap_or_else(|poison| poison.into_inner()));
        self.changed.send_modify(|version| *version += 1);
        result
    }

    /// Cuts every direction `from → to` for each pair of the two sets; `links_only` leaves gossip flowing.
    pub fn cut(&self, from: &[usize], to: &[usize], links_only: bool) {
        self.with_rules(|rules| {
            for &a in from {
                for &b in to {
                    if a != b {
                        rules.tcp_cut.insert((a, b));
                        if !links_only {
                            rules.udp_cut.insert((a, b));
                        }
                    }
                }
            }
        });
    }

    pub fn delay(&self, node: usize, delay: Duration) {
        self.with_rules(|rules| rules.delay.insert(node, delay));
    }

    /// Removes every cut and delay.
    pub fn heal(&self) {
        self.with_rules(|rules| *rules = Rules::default());
    }

    pub fn set_pid(&self, node: usize, pid: Option<u32>) {
        let mut pids = self.pids.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some(slot) = pids.get_mut(node) {
            *slot = pid;
        }
    }

    fn udp_allowed(&self, from: usize, to: usize) -> (bool, Duration) {
        let rules = self.rules.lock().unwrap_or_else(|poison| poison.into_inner());
        (!rules.udp_cut.contains(&(from, to)), Self::delay_of(&rules, from, to))
    }

    fn tcp_allowed(&self, from: usize, to: usize) -> (bool, Duration) {
        let rules = self.rules.lock().unwrap_or_else(|poison| poison.into_inner());
        (!rules.tcp_cut.contains(&(from, to)), Self::delay_of(&rules, from, to))
    }

    fn delay_of(rules: &Rules, from: usize, to: usize) -> Duration {
        let of = |node| rules.delay.get(&node).copied().unwrap_or_default();
        of(from).max(of(to))
    }

    fn pids(&self) -> Vec<Option<u32>> {
        self.pids.lock().unwrap_or_else(|poison| poison.into_inner()).clone()
    }
}

/// The running relay: its sockets' tasks end when it is dropped.
pub struct Relay {
    pub ports: Vec<Ports>,
    pub faults: Arc<Faults>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A loopback port free for both TCP and UDP now, below the kernel's ephemeral range: the nodes bind these again
/// at every restart, and a port of the ephemeral range can meanwhile become the local port of some connection
/// (a long run opens many), which would make the restart fail with "address in use".
pub fn free_port() -> anyhow::Result<u16> {
    use rand::Rng;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    // Handed out once per run: two picks of the same free port (each probe binds and lets go) would make two
    // processes fight over it later.
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let low = ephemeral_low.saturating_sub(12_000).max(1_024);
    let mut random = rand::rng();
    for _ in 0..1_000 {
        let port = random.random_range(low..ephemeral_low);
        let mut given = GIVEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if given.contains(&port) {
            continue;
        }
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        if tcp.is_ok() && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return Ok(port);
        }
    }
    anyhow::bail!("no free loopback port below {ephemeral_low}")
}

impl Relay {
    /// A relay for `participants` processes, with their own ports chosen free.
    pub async fn start(participants: usize) -> anyhow::Result<Relay> {
        let (changed, _) = watch::channel(0);
        let faults = Arc::new(Faults {
            rules: Mutex::new(Rules::default()),
            pids: Mutex::new(vec![None; participants]),
            changed,
            counts: Counts::default(),
        });
        let mut udp = Vec::new();
        let mut listeners = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..participants {
            let socket = UdpSocket::bind("127.0.0.1:0").await?;
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
            ports.push(Ports {
                gossip: loopback(free_port()?),
                link: loopback(free_port()?),
                relay_gossip: socket.local_addr()?,
                relay_link: listener.local_addr()?,
            });
            udp.push(Arc::new(socket));
            listeners.push(listener);
        }
        let ports_shared: Arc<Vec<Ports>> = Arc::new(ports.clone());
        let udp = Arc::new(udp);
        let mut tasks = Vec::new();
        for to in 0..participants {
            tasks.push(tokio::spawn(udp_loop(
                to,
                udp.clone(),
                ports_shared.clone(),
                faults.clone(),
            )));
        }
        for (to, listener) in listeners.into_iter().enumerate() {
            tasks.push(tokio::spawn(tcp_accept_loop(
                to,
                listener,
                ports_shared.clone(),
                faults.clone(),
            )));
        }
        Ok(Relay { ports, faults, tasks })
    }
}

/// Datagrams arriving at participant `to`'s relay socket.
async fn udp_loop(to: usize, sockets: Arc<Vec<Arc<UdpSocket>>>, ports: Arc<Vec<Ports>>, faults: Arc<Faults>) {
    let mut buffer = vec![0u8; 65_536];
    loop {
        let Ok((length, source)) = sockets[to].recv_from(&mut buffer).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // Only datagrams from a participant's real gossip socket are relayed; anything else is dropped.
        let Some(from) = ports.iter().position(|port| port.gossip == source) else {
            continue;
        };
        let (allowed, delay) = faults.udp_allowed(from, to);
        if !allowed {
            faults.counts.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        faults.counts.datagrams_relayed.fetch_add(1, Ordering::Relaxed);
        let datagram = buffer[..length].to_vec();
        let out = sockets[from].clone();
        let target = ports[to].gossip;
        if delay.is_zero() {
            let _ = out.send_to(&datagram, target).await;
        } else {
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = out.send_to(&datagram, target).await;
            });
        }
    }
}

async fn tcp_accept_loop(to: usize, listener: TcpListener, ports: Arc<Vec<Ports>>, faults: Arc<Faults>) {
    loop {
        let Ok((inbound, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let relay_port = ports[to].relay_link.port();
        let faults = faults.clone();
        let target = ports[to].link;
        tokio::spawn(async move {
            let mut from = None;
            for _ in 0..20 {
                let pids = faults.pids();
                let (port, pids) = (peer.port(), pids.clone());
                from = tokio::task::spawn_blocking(move || dialer_of(port, relay_port, &pids))
                    .await
                    .ok()
                    .flatten();
                if from.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            // A connection from no participant (a process that already died, say) is closed.
            let Some(from) = from else {
                faults.counts.connections_unknown.fetch_add(1, Ordering::Relaxed);
                return;
            };
            faults.counts.connections_relayed.fetch_add(1, Ordering::Relaxed);
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::spawn(pump(in_read, out_write, from, to, faults.clone()));
            tokio::spawn(pump(out_read, in_write, to, from, faults));
        });
    }
}

/// Copies one direction of a relayed connection, stalling while it is cut and delaying each chunk.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, source: usize, target: usize, faults: Arc<Faults>) {
    let (chunks, mut queue) = mpsc::channel::<(Instant, Vec<u8>)>(64);
    let reader = async move {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if chunks.send((Instant::now(), buffer[..n].to_vec())).await.is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        let mut changes = faults.changed.subscribe();
        while let Some((read_at, chunk)) = queue.recv().await {
            let mut stalled = false;
            loop {
                let (allowed, delay) = faults.tcp_allowed(source, target);
                if allowed {
                    tokio::time::sleep_until(read_at + delay).await;
                    break;
                }
                if !stalled {
                    stalled = true;
                    faults.counts.chunks_stalled.fetch_add(1, Ordering::Relaxed);
                }
                if changes.changed().await.is_err() {
                    return;
                }
            }
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

/// Which participant (by its process id) holds the TCP socket whose local port is `port`, connected to
/// `relay_port`: found in `/proc/net/tcp` (the socket's inode) and `/proc/<pid>/fd` (who holds that inode).
fn dialer_of(port: u16, relay_port: u16, pids: &[Option<u32>]) -> Option<usize> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = u16::from_str_radix(fields.get(1)?.rsplit(':').next()?, 16).ok()?;
        let remote_port = u16::from_str_radix(fields.get(2)?.rsplit(':').next()?, 16).ok()?;
        (local_port == port && remote_port == relay_port).then(|| fields.get(9).map(|inode| (*inode).to_owned()))?
    })?;
    let wanted = format!("socket:[{inode}]");
    pids.iter().position(|pid| {
        pid.is_some_and(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|entries| {
                entries
                    .flatten()
                    .any(|entry| std::fs::read_link(entry.path()).is_ok_and(|link| link.to_string_lossy() == wanted))
            })
        })
    })
}
