//! A member moving between nodes, the mesh's side (docs/any-node-design.md, section 5a): the node a connection
//! leaves asks each of its groups' owners to move it ([`Router::move_member`]); the owner moves it in its
//! directory, and the group's actor, in its one order, sends a marker to each of the two nodes, through the same
//! links as its deliveries (`super::group_actor`, `GroupMessage::Move`). A node applies its marker to its hub's
//! table of local members ([`Router::on_member_moved`]) in the group's order, after the sends it holds for a gap
//! (`Router::apply_move_in_order`, `super::arrivals`): so every send of the group reaches the connection through
//! exactly one of the two nodes, and the group's order holds across the move.

use super::envelope::Request;
use super::group::GroupKey;
use super::owner::MembershipOp;
use super::{LocalHub, MeshError, Router};
use crate::cluster::NodeId;
use crate::connection::ConnectionId;

impl<H: LocalHub> Router<H> {
    /// Moves connection `connection` of this node to node `to` in group `key`, at the group's owner; returns once
    /// the owner has sent both nodes their markers (this node's may still be on its way).
    pub(crate) async fn move_member(&self, key: GroupKey, connection: ConnectionId, to: NodeId) -> Result<(), MeshError> {
        let (op_key, op_connection, op_to) = (key.clone(), connection.clone(), to.clone());
        self.at_owner(
            &key,
            |from, done| MembershipOp::Move {
                from,
                to: op_to,
                key: op_key,
                connection: op_connection,
                done,
            },
            || Request::Move {
                key: key.clone(),
                connection: connection.clone(),
                to: to.clone(),
            },
        )
        .await
    }

    /// A group's owner says that `connection` is in this node's copy of the group's sends from now on
    /// (`arriving`), or no longer; the sends before the marker were delivered here. Whether it left a group it was
    /// in here.
    pub(super) fn on_member_moved(&self, key: &GroupKey, connection: &ConnectionId, arriving: bool) -> bool {
        let Some(runtime) = self.hub(&key.hub) else {
            return false;
        };
        if arriving {
            if let Err(error) = runtime.local_join(key, connection) {
                tracing::debug!(parent: &self.span, %error, %connection, "a moving member is not here");
            }
            false
        } else {
            runtime.local_leave(key, connection)
        }
    }
}
