//! Request/reply between nodes: a request waits for the reply with its id (correlation), retries while the
//! link to a peer that just joined is not up yet, and fails at once when the peer leaves; and the serving side,
//! which answers a peer's requests. Client results on a connection of another node go this way.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;

use super::envelope::{unexpected, Answer, Envelope, Request, WireError};
use super::{LocalHub, MeshError, Router};
use crate::cluster::{LinkError, NodeId};
use crate::connection::{ClientResultError, ConnectionId};
use crate::protocol::{Protocol, RawValue};

/// How long a membership request (add, remove, count) waits for a peer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request retries while the link to a live peer is not up yet (just after it joined).
const LINK_WAIT: Duration = Duration::from_secs(3);

/// A request waiting for its reply.
pub(super) struct Pending {
    /// The incarnation asked: only its departure fails the request, not a later generation's.
    pub(super) node: NodeId,
    pub(super) reply: oneshot::Sender<Answer>,
}

impl<H: LocalHub> Router<H> {
    /// A client result from a connection of any node. `arguments` must serialize as a sequence.
    pub(crate) async fn invoke(
        &self,
        hub: &Arc<str>,
        connection: &ConnectionId,
        target: &str,
        arguments: RawValue,
        timeout: Duration,
    ) -> Result<Option<RawValue>, MeshError> {
        let Some(server) = self.server_of(hub, connection) else {
            return self.invoke_here(hub, connection, target, arguments, timeout).await;
        };
        let arguments = match arguments {
            RawValue::MsgPack(bytes) => bytes,
            other => match RawValue::encode(Protocol::MessagePack, &other) {
                Ok(RawValue::MsgPack(bytes)) => bytes,
                _ => {
                    return Err(MeshError::ClientResult(ClientResultError::BadResult(
                        "unencodable arguments".into(),
                    )))
                }
            },
        };
        let request = Request::Invoke {
            hub: hub.clone(),
            connection: connection.clone(),
            target: target.to_owned(),
            arguments,
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        };
        let answer = self
            .request_with_timeout(&server, request, timeout + Duration::from_secs(1))
            .await;
        match answer {
            Answer::Value(None) => Ok(None),
            Answer::Value(Some(bytes)) => RawValue::from_msgpack_bytes(bytes)
                .map(Some)
                .map_err(|error| MeshError::ClientResult(ClientResultError::BadResult(error.to_string()))),
            Answer::PeerLeft => Err(MeshError::ClientResult(ClientResultError::Disconnected(
                connection.to_string(),
            ))),
            answer => Err(unexpected(answer)),
        }
    }

    /// A client result from a connection served by this node.
    async fn invoke_here(
        &self,
        hub: &Arc<str>,
        connection: &ConnectionId,
        target: &str,
        arguments: RawValue,
        timeout: Duration,
    ) -> Result<Option<RawValue>, MeshError> {
        let runtime = self
            .hub(hub)
            .ok_or_else(|| MeshError::UnknownConnection(connection.to_string()))?;
        let handle = runtime
            .handle_of(connection)
            .ok_or_else(|| MeshError::UnknownConnection(connection.to_string()))?;
        Ok(handle.invoke(target, arguments, timeout).await?)
    }

    pub(super) async fn request(&self, node: &str, request: Request) -> Answer {
        self.request_with_timeout(node, request, REQUEST_TIMEOUT).await
    }

    pub(super) async fn request_with_timeout(&self, node: &str, request: Request, timeout: Duration) -> Answer {
        let Some(peer) = self.live_peer(node) else {
            return Answer::PeerLeft;
        };
        let id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        self.pending.lock().insert(
            id,
            Pending {
                node: peer.clone(),
                reply,
            },
        );
        // A change of this node's memberships at their owner is sent in order with this node's snapshots (see
        // `send_snapshot_to`): the caller changed its table before asking, so a snapshot read before that change
        // must reach the owner first.
        let membership_change = matches!(
            request,
            Request::Register { .. } | Request::Unregister { .. } | Request::Move { .. }
        );
        let envelope = Envelope::Request { id, request };
        // A peer that just joined may not have its link up yet: retry for a short while.
        let started = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(20);
        loop {
            let sent = if membership_change {
                let _in_order = self.membership_sends.lock();
                self.send_to_peer(&peer, &envelope)
            } else {
                self.send_to_peer(&peer, &envelope)
            };
            match sent {
                Ok(()) => break,
                Err(LinkError::NoLink(_))
                    if started.elapsed() < LINK_WAIT && self.live_peer(node).as_ref() == Some(&peer) =>
                {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_millis(250));
                }
                Err(LinkError::QueueFull(_)) => {
                    self.pending.lock().remove(&id);
                    return Answer::Failed(WireError::Busy(node.to_owned()));
                }
                Err(LinkError::TooLarge { size, max }) => {
                    self.pending.lock().remove(&id);
                    return Answer::Failed(WireError::TooLarge { size, max });
                }
                Err(error) => {
                    self.pending.lock().remove(&id);
                    tracing::debug!(parent: &self.span, %error, node, "a request could not be sent");
                    return Answer::PeerLeft;
                }
            }
        }
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Answer::PeerLeft,
            Err(_) => {
                self.pending.lock().remove(&id);
                Answer::Failed(WireError::Group(format!(
                    "node '{node}' did not answer within {timeout:?}"
                )))
            }
        }
    }

    pub(super) async fn serve(&self, from: &NodeId, request: Request) -> Answer {
        let result: Result<Answer, MeshError> = async {
            Ok(match request {
                // Sent to the connection's home, which passes it on to the node serving it if that is another
                // (once: a node that is not the home only looks here, so a request never goes round in circles).
                Request::Join { key, connection } if self.is_local(self.home_of(&connection)) => {
                    self.group_add(key, connection).await?;
                    Answer::Done
                }
                Request::Join { key, connection } => {
                    self.join_local(key, connection).await?;
                    Answer::Done
                }
                Request::Leave { key, connection } if self.is_local(self.home_of(&connection)) => {
                    self.group_remove(key, connection).await?;
                    Answer::Done
                }
                Request::Leave { key, connection } => {
                    self.leave_local(key, connection).await?;
                    Answer::Done
                }
                Request::LeaveAll { hub, connection } if self.is_local(self.home_of(&connection)) => {
                    self.group_leave_all(hub, connection).await?;
                    Answer::Done
                }
                Request::LeaveAll { hub, connection } => {
                    self.leave_all_local(hub, connection).await?;
                    Answer::Done
                }
                // Ordered with snapshots instead; see `on_envelope`.
                Request::Register { .. } | Request::Unregister { .. } | Request::Move { .. } => {
                    tracing::warn!(parent: &self.span, from = %from, "a membership request bypassed the queue");
                    Answer::Failed(WireError::Group("misrouted membership request".into()))
                }
                Request::Count { key } => Answer::Count(self.groups.count(&key)),
                Request::Members { key } => Answer::Members(self.groups.members(&key)),
                Request::Invoke {
                    hub,
                    connection,
                    target,
                    arguments,
                    timeout_ms,
                } => {
                    let arguments = RawValue::from_msgpack_bytes(arguments)
                        .map_err(|error| MeshError::ClientResult(ClientResultError::BadResult(error.to_string())))?;
                    let timeout = Duration::from_millis(timeout_ms);
                    let value = if self.is_local(self.home_of(&connection)) {
                        self.invoke(&hub, &connection, &target, arguments, timeout).await?
                    } else {
                        self.invoke_here(&hub, &connection, &target, arguments, timeout).await?
                    };
                    let value = match value {
                        None => None,
                        Some(RawValue::MsgPack(bytes)) => Some(bytes),
                        Some(other) => match RawValue::encode(Protocol::MessagePack, &other) {
                            Ok(RawValue::MsgPack(bytes)) => Some(bytes),
                            _ => None,
                        },
                    };
                    Answer::Value(value)
                }
                Request::Relay { payload } => self.serve_relay(from, payload).await,
            })
        }
        .await;
        result.unwrap_or_else(|error| Answer::Failed(error.into()))
    }

    /// Fails every request waiting on this incarnation with [`Answer::PeerLeft`].
    pub(super) fn fail_pending(&self, node: &NodeId) {
        let failed: Vec<Pending> = {
            let mut pending = self.pending.lock();
            let ids: Vec<u64> = pending
                .iter()
                .filter(|(_, request)| request.node == *node)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter().filter_map(|id| pending.remove(&id)).collect()
        };
        for request in failed {
            let _ = request.reply.send(Answer::PeerLeft);
        }
    }
}
