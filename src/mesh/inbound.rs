//! What the router does with each event from the links: a message from a peer (deliveries, sends to groups this
//! node owns, membership changes and snapshots, requests and replies), and a link that opened or closed.

use std::sync::Arc;

use super::arrivals::Via;
use super::envelope::{Envelope, Request};
use super::group_send::HeldSend;
use super::owner::{Done, MembershipOp};
use super::{LocalHub, Router};
use crate::cluster::{LinkEvent, NodeId};
use crate::connection::SharedFrame;

impl<H: LocalHub> Router<H> {
    /// Handles one event from the links. Runs on the node's runtime, one event at a time, in link order.
    pub(crate) fn on_link_event(self: &Arc<Self>, event: LinkEvent) {
        match event {
            LinkEvent::Frame { from, frame } => match rmp_serde::from_slice::<Envelope>(&frame) {
                Ok(envelope) => self.on_envelope(&from, envelope),
                Err(error) => {
                    tracing::warn!(parent: &self.span, %error, from = %from, "dropped an undecodable frame from a peer");
                }
            },
            LinkEvent::Up(peer) => {
                // A link (re)opened. Frames to the same incarnation resume (the link layer sends again what the
                // last link did not deliver), but a peer that was declared dead meanwhile dropped what this node
                // had queued for it, so both sides exchange their snapshots again (a thawed node gets its
                // memberships back this way) and held sends go.
                tracing::debug!(parent: &self.span, peer = %peer, "link up");
                *self.links_changed.lock() = tokio::time::Instant::now();
                self.send_snapshot_to(&peer);
                let _ = self.send_to_peer(&peer, &Envelope::SnapshotRequest);
                let rejoined = self.rejoined.lock().remove(&peer);
                if rejoined {
                    let _ = self.send_to_peer(&peer, &self.declared_dead_notice());
                }
                self.flush_held();
            }
            LinkEvent::Down(peer) => {
                // Whatever was in flight on that link is lost: requests waiting on the peer fail now rather than
                // at their timeout (a crashed peer's link resets long before gossip declares it dead).
                tracing::debug!(parent: &self.span, peer = %peer, "link down");
                *self.links_changed.lock() = tokio::time::Instant::now();
                self.fail_pending(&peer);
            }
        }
    }

    fn on_envelope(self: &Arc<Self>, from: &NodeId, envelope: Envelope) {
        match envelope {
            Envelope::Broadcast {
                hub,
                except,
                frame,
                seq,
            } => {
                let frame = SharedFrame::with_mark(&frame.into_frame(), Self::broadcast_mark(from, seq));
                self.deliver_broadcast(&hub, frame, except.into());
            }
            Envelope::ToConnections { hub, ids, frame, hinted } => self.deliver_to_connections(from, &hub, ids, frame, hinted),
            Envelope::Offered { hub, ids, frame } => self.on_offered(from, &hub, ids, frame),
            Envelope::Resent { hub, ids, frame } => self.on_resent(&hub, ids, frame),
            Envelope::Serving { hub, ids } => self.on_serving(from, &hub, ids),
            Envelope::Hint { hub, ids, server } => self.on_hint(from, &hub, ids, server),
            Envelope::Fence {
                hub,
                id,
                nonce,
                origin,
            } => self.on_fence(hub, id, nonce, origin),
            Envelope::FenceAck { id, nonce, server } => self.on_fence_ack(id, nonce, server),
            Envelope::GroupSend {
                key,
                except,
                frame,
                stamp,
            } => {
                // Sent to this node as the owner; if ownership moved meanwhile, pass it on in order.
                self.group_send_stamped(HeldSend {
                    key,
                    except: except.into(),
                    frame: frame.into_frame(),
                    stamp,
                });
            }
            Envelope::GroupDeliver {
                key,
                except,
                frame,
                stamp,
                handed_from,
            } => {
                let via = Via {
                    owner: from.clone(),
                    handed_from,
                };
                self.deliver_group_locally(&key, &frame.into_frame(), &except.into(), &stamp, Some(&via));
            }
            Envelope::GroupReleased { key } => self.apply_released(&key, from),
            Envelope::GroupMissed {
                key,
                except,
                frame,
                stamp,
            } => {
                self.deliver_missed_locally(&key, &frame.into_frame(), &except.into(), &stamp);
            }
            Envelope::Snapshot { part, last, groups } => self.enqueue(MembershipOp::Snapshot {
                from: from.clone(),
                part,
                last,
                groups,
            }),
            Envelope::Request {
                id,
                request: Request::Register { key, connection },
            } => self.enqueue(MembershipOp::Register {
                from: from.clone(),
                key,
                connection,
                done: Done::Remote { from: from.clone(), id },
            }),
            Envelope::Request {
                id,
                request: Request::Unregister { key, connection },
            } => self.enqueue(MembershipOp::Unregister {
                from: from.clone(),
                key,
                connection,
                done: Done::Remote { from: from.clone(), id },
            }),
            Envelope::Request {
                id,
                request: Request::Move { key, connection, to },
            } => self.enqueue(MembershipOp::Move {
                from: from.clone(),
                to,
                key,
                connection,
                done: Done::Remote { from: from.clone(), id },
            }),
            Envelope::MemberMoved {
                key,
                connection,
                arriving,
            } => self.apply_move_in_order(&key, from, &connection, arriving),
            Envelope::SnapshotRequest => self.send_snapshot_to(from),
            Envelope::Request { id, request } => {
                let router = self.clone();
                let from = from.clone();
                tokio::spawn(async move {
                    let answer = router.serve(&from, request).await;
                    // To the incarnation that asked: request ids start again at 1 in a restarted node.
                    if let Err(error) = router.send_to_peer(&from, &Envelope::Reply { id, answer }) {
                        tracing::debug!(parent: &router.span, %error, "a reply could not be sent");
                    }
                });
            }
            Envelope::Tunnel { payload } => self.on_tunnel_frame(from, payload),
            Envelope::DeclaredDead { stalled } => self.on_declared_dead(from, stalled),
            Envelope::Reply { id, answer } => {
                if let Some(pending) = self.pending.lock().remove(&id) {
                    let _ = pending.reply.send(answer);
                }
            }
        }
    }
}
