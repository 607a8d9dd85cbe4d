//! Tunnels: a stateful connection whose client reconnects through a load balancer to a node other than the one
//! running the connection continues there, over its new socket, with the connection where it was
//! (docs/any-node-design.md#5-stateful-reconnect-on-another-node). In a calm cluster the connection moves to the
//! client's node instead (`super::moving::move_to_client`); a tunnel is for a cluster whose members are changing.
//!
//! The node that took the reconnecting WebSocket (the *socket end*) asks the connection's server, through the
//! home, to resume the connection on a tunnel; the server gives the waiting connection task a [`LinkTransport`]
//! (a [`Transport`] whose bytes are link messages), and the connection replays what the client had not
//! acknowledged, exactly as after a reconnect to the same node. From then on each message crosses one link: the
//! connection pays a hop per message for the rest of its life, and its server keeps it (it does not move).
//!
//! Frames go over the cluster links as mesh tunnel frames, in link order, each at most the link frame cap; a
//! side whose queue towards the other is full, or whose link is gone, ends the tunnel, which the connection
//! takes as a dropped socket (it waits for the client to reconnect again, within its window). A frame that finds
//! its end gone is answered with the tunnel's end (`Close` to a socket end, `ClientGone` to a connection end), so
//! an end whose closing frame was lost on a broken link learns it with the next frame it sends. At most
//! [`MAX_TUNNELS`] tunnel ends are open on a node; beyond that a reconnect is refused with 503.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::super::Node;
use crate::cluster::NodeId;
use crate::protocol::TransferFormat;
use crate::transport::{CloseKind, Transport, TransportError, TransportKind};

/// Tunnel ends open on a node at once.
pub const MAX_TUNNELS: usize = 16_384;
/// Messages that may wait at a tunnel end before the tunnel is ended.
const TUNNEL_QUEUE: usize = 256;

#[derive(Debug, Serialize, Deserialize)]
struct Frame {
    tunnel: u64,
    message: Message,
}

#[derive(Debug, Serialize, Deserialize)]
enum Message {
    /// Socket end → connection end: a message from the client.
    FromClient(Bytes),
    /// Socket end → connection end: the socket ended (by a Close frame from the client, or not).
    ClientGone { graceful: bool },
    /// Connection end → socket end: write this message to the client.
    ToClient { bytes: Bytes, binary: bool },
    /// Connection end → socket end: close the socket.
    Close,
}

/// The tunnel ends open on a node: socket ends by the tunnel id this node gave them (their connection's server is
/// known only once it answers, through the home), connection ends by the socket's node and its id.
#[derive(Default)]
pub(crate) struct Tunnels {
    next: AtomicU64,
    /// Tunnel ends ended because they could not take a frame (their queue was full).
    fell_behind: AtomicU64,
    open: Mutex<Ends>,
}

#[derive(Default)]
struct Ends {
    sockets: HashMap<u64, (Option<NodeId>, mpsc::Sender<Message>)>,
    connections: HashMap<(NodeId, u64), mpsc::Sender<Message>>,
}

impl Ends {
    fn len(&self) -> usize {
        self.sockets.len() + self.connections.len()
    }
}

impl Tunnels {
    fn open_socket(&self) -> Option<(u64, mpsc::Receiver<Message>)> {
        let mut open = self.open.lock();
        if open.len() >= MAX_TUNNELS {
            return None;
        }
        let tunnel = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(TUNNEL_QUEUE);
        open.sockets.insert(tunnel, (None, tx));
        Some((tunnel, rx))
    }

    fn open_connection(&self, client: NodeId, tunnel: u64) -> Option<mpsc::Receiver<Message>> {
        let mut open = self.open.lock();
        if open.len() >= MAX_TUNNELS {
            return None;
        }
        let (tx, rx) = mpsc::channel(TUNNEL_QUEUE);
        open.connections.insert((client, tunnel), tx);
        Some(rx)
    }

    /// A frame from `from`: handed to its tunnel end, or dropped if that end is gone. An end that cannot take it
    /// now is ended (its receiver then sees the tunnel close).
    pub(crate) fn on_frame(&self, node: &Node, from: &NodeId, payload: &[u8]) {
        let frame: Frame = match rmp_serde::from_slice(payload) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::warn!(parent: node.span(), %error, %from, "dropped an undecodable tunnel frame");
                return;
            }
        };
        let tunnel = frame.tunnel;
        // A frame for an end that is gone (the connection let go of the tunnel, or took another) is answered with
        // the end of the tunnel, so the other side lets go too: otherwise a client whose connection took a newer
        // socket would hold on to a silent one, and a connection would write to a socket nobody reads, whenever
        // the frame that ended the tunnel did not cross (its link was down).
        let mut answer = None;
        let mut open = self.open.lock();
        let fell_behind = match frame.message {
            message @ (Message::FromClient(_) | Message::ClientGone { .. }) => {
                let key = (from.clone(), tunnel);
                let gone = matches!(message, Message::ClientGone { .. });
                let full = match open.connections.get(&key) {
                    Some(sender) => sender.try_send(message).is_err(),
                    None if !gone => {
                        answer = Some(Message::Close);
                        false
                    }
                    None => false,
                };
                if full {
                    open.connections.remove(&key);
                }
                full
            }
            message @ (Message::ToClient { .. } | Message::Close) => {
                let closing = matches!(message, Message::Close);
                let full = match open.sockets.get_mut(&tunnel) {
                    // Only the node that serves the connection writes to its socket.
                    Some((server, sender)) if server.as_ref().is_none_or(|server| server == from) => {
                        *server = Some(from.clone());
                        sender.try_send(message).is_err()
                    }
                    _ if !closing => {
                        answer = Some(Message::ClientGone { graceful: false });
                        false
                    }
                    _ => false,
                };
                if full {
                    open.sockets.remove(&tunnel);
                }
                full
            }
        };
        drop(open);
        if let Some(message) = answer {
            tracing::debug!(parent: node.span(), %from, tunnel, "a frame for a tunnel end that is gone; told the other end");
            let _ = send(node, from, tunnel, message);
        }
        if fell_behind {
            self.fell_behind.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(parent: node.span(), %from, tunnel, "a tunnel end fell behind; ending it");
        }
    }

    /// Tunnel ends ended because their queue was full.
    pub(crate) fn fell_behind(&self) -> u64 {
        self.fell_behind.load(Ordering::Relaxed)
    }

    /// Tunnel ends open now, socket and connection ends together.
    pub(crate) fn open_count(&self) -> usize {
        self.open.lock().len()
    }

    /// Ends every tunnel with `peer` (it left the cluster).
    pub(crate) fn peer_left(&self, peer: &NodeId) {
        let mut open = self.open.lock();
        open.connections.retain(|(client, _), _| client != peer);
        open.sockets.retain(|_, (server, _)| server.as_ref() != Some(peer));
    }
}

fn send(node: &Node, peer: &NodeId, tunnel: u64, message: Message) -> Result<(), TransportError> {
    // The first byte tells tunnel frames from keeping frames (`super::keeping`).
    let mut frame = vec![0u8];
    rmp_serde::encode::write(&mut frame, &Frame { tunnel, message }).map_err(|_| TransportError::Closed)?;
    node.router()
        .send_tunnel(peer, Bytes::from(frame))
        .map_err(|_| TransportError::Closed)
}

/// The socket end of a tunnel, on the node that took the client's reconnecting WebSocket.
pub(crate) struct SocketEnd {
    node: Node,
    /// The node that runs the connection, once it answered.
    server: Option<NodeId>,
    tunnel: u64,
    inbound: mpsc::Receiver<Message>,
    /// Whether the connection end was told that the socket ended.
    told: bool,
}

impl SocketEnd {
    /// Opens a socket end; `None` when this node has [`MAX_TUNNELS`] open.
    pub(super) fn open(node: &Node) -> Option<SocketEnd> {
        let (tunnel, inbound) = node.tunnels().open_socket()?;
        Some(SocketEnd {
            node: node.clone(),
            server: None,
            tunnel,
            inbound,
            told: false,
        })
    }

    pub(super) fn tunnel(&self) -> u64 {
        self.tunnel
    }

    /// The connection resumed on `server`: the client's messages go there.
    pub(super) fn resumed_on(&mut self, server: NodeId) {
        if let Some((known, _)) = self.node.tunnels().open.lock().sockets.get_mut(&self.tunnel) {
            *known = Some(server.clone());
        }
        self.server = Some(server);
    }

    /// Carries the client's socket until either side ends.
    pub(crate) async fn pump<T: Transport>(mut self, mut socket: T) {
        let Some(server) = self.server.clone() else {
            socket.close(CloseKind::Normal).await;
            return;
        };
        let span = tracing::debug_span!(parent: self.node.span(), "tunnel", tunnel = self.tunnel, %server);
        let (ended, close) = self.carry(&mut socket, &server).instrument(span.clone()).await;
        tracing::debug!(parent: &span, ended, "a tunnel's socket end ended");
        if close {
            socket.close(CloseKind::Normal).await;
        }
    }

    /// [`SocketEnd::pump`]'s loop: what ended it, and whether the client's socket is to be closed.
    async fn carry<T: Transport>(&mut self, socket: &mut T, server: &NodeId) -> (&'static str, bool) {
        loop {
            tokio::select! {
                chunk = socket.recv() => match chunk {
                    Some(Ok(bytes)) => {
                        if send(&self.node, server, self.tunnel, Message::FromClient(bytes)).is_err() {
                            return ("no link to the server", true);
                        }
                    }
                    Some(Err(_)) | None => {
                        let graceful = chunk.is_none() && socket.closed_by_client();
                        self.told = true;
                        let _ = send(&self.node, server, self.tunnel, Message::ClientGone { graceful });
                        return ("the client's socket ended", false);
                    }
                },
                message = self.inbound.recv() => match message {
                    Some(Message::ToClient { bytes, binary }) => {
                        let format = if binary { TransferFormat::Binary } else { TransferFormat::Text };
                        if socket.send(bytes, format).await.is_err() {
                            return ("a write to the client failed", false);
                        }
                    }
                    Some(Message::Close) | None => {
                        // The connection let go of this socket, or the tunnel broke: the client reconnects again.
                        self.told = true;
                        return ("the connection let go of it", true);
                    }
                    Some(Message::FromClient(_) | Message::ClientGone { .. }) => {}
                },
            }
        }
    }
}

impl Drop for SocketEnd {
    fn drop(&mut self) {
        self.node.tunnels().open.lock().sockets.remove(&self.tunnel);
        if let (false, Some(server)) = (self.told, &self.server) {
            let _ = send(&self.node, server, self.tunnel, Message::ClientGone { graceful: false });
        }
    }
}

/// The connection end of a tunnel: the transport of a connection whose client's socket is on node `client`.
pub(crate) struct LinkTransport {
    node: Node,
    client: NodeId,
    tunnel: u64,
    inbound: mpsc::Receiver<Message>,
    graceful: bool,
    /// Whether the socket end was told to close.
    closed: bool,
}

impl LinkTransport {
    /// Opens the connection end of tunnel `tunnel` from `client`; `None` when this node has [`MAX_TUNNELS`] open.
    pub(super) fn open(node: &Node, client: NodeId, tunnel: u64) -> Option<LinkTransport> {
        let inbound = node.tunnels().open_connection(client.clone(), tunnel)?;
        Some(LinkTransport {
            node: node.clone(),
            client,
            tunnel,
            inbound,
            graceful: false,
            closed: false,
        })
    }
}

impl Transport for LinkTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::WebSockets
    }

    fn closed_by_client(&self) -> bool {
        self.graceful
    }

    async fn recv(&mut self) -> Option<Result<Bytes, TransportError>> {
        loop {
            match self.inbound.recv().await? {
                Message::FromClient(bytes) => return Some(Ok(bytes)),
                Message::ClientGone { graceful } => {
                    self.graceful = graceful;
                    self.closed = true;
                    return None;
                }
                Message::ToClient { .. } | Message::Close => {}
            }
        }
    }

    async fn send(&mut self, bytes: Bytes, format: TransferFormat) -> Result<(), TransportError> {
        let binary = format == TransferFormat::Binary;
        send(&self.node, &self.client, self.tunnel, Message::ToClient { bytes, binary })
    }

    async fn close(mut self, _kind: CloseKind) {
        self.closed = true;
        let _ = send(&self.node, &self.client, self.tunnel, Message::Close);
    }
}

impl Drop for LinkTransport {
    fn drop(&mut self) {
        self.node
            .tunnels()
            .open
            .lock()
            .connections
            .remove(&(self.client.clone(), self.tunnel));
        if !self.closed {
            let sent = send(&self.node, &self.client, self.tunnel, Message::Close).is_ok();
            tracing::debug!(parent: self.node.span(), client = %self.client, tunnel = self.tunnel, sent, "a tunnel's connection end let go");
        }
    }
}
