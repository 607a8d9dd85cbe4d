//! Telling a restarted home which of its connections run here.
//!
//! A node's drain moves its connections to its peers, and the connections keep their ids, which name the node as
//! their home. The home's record of where each one runs ([`Active::Adopted`] here, the router's adopted-out map)
//! lives in memory, so the node that comes back under the same name knows none of them: sends and relayed
//! requests that reach it for them would be dropped or refused. So when a peer sees a new incarnation of a node
//! whose connections it serves, it tells that incarnation, one [`Op::Serves`] per connection (at most
//! [`REPORTS_AT_ONCE`] in flight), and addresses that incarnation as the connection's home from then on. Until the
//! reports are in, the young home offers the sends it cannot place to every peer (`crate::mesh`,
//! `Router::offer_unknown`).
//!
//! Calls: the relay requests (`super::relay`) and the hub endpoints' tokens (`super::endpoint`).

use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tracing::Instrument;

use super::super::Node;
use super::endpoint::{Active, HubEndpoint, Negotiated};
use super::relay::{ask_op, Op};
use crate::cluster::NodeId;
use crate::connection::ConnectionId;
use crate::transport::TransportKind;
use actix_web::http::StatusCode;

/// How many reports to one restarted home may be in flight at once.
pub(super) const REPORTS_AT_ONCE: usize = 64;
/// The waits before a report that failed is tried again.
const REPORT_AGAIN: [Duration; 3] = [Duration::from_millis(500), Duration::from_secs(2), Duration::from_secs(5)];

/// A connection served here whose home is an earlier incarnation of a node that just joined.
struct Served {
    token: String,
    id: ConnectionId,
    transport: TransportKind,
}

/// `peer` joined the view: tells it which connections of its name run here, if it is a new incarnation of their
/// home.
pub(super) fn peer_joined(node: &Node, peer: &NodeId) {
    for endpoint in node.endpoints() {
        let served = served_for(endpoint, peer);
        if served.is_empty() {
            continue;
        }
        tracing::info!(parent: node.span(), %peer, connections = served.len(), "telling a restarted home which of its connections run here");
        let (node, endpoint, peer) = (node.clone(), endpoint.clone(), peer.clone());
        let span = node.span().clone();
        tokio::spawn(
            async move {
                stream::iter(served)
                    .for_each_concurrent(REPORTS_AT_ONCE, |served| report(&node, &endpoint, &peer, served))
                    .await;
            }
            .instrument(span),
        );
    }
}

/// The connections of `endpoint` running here whose home has `peer`'s name and another generation.
fn served_for(endpoint: &HubEndpoint, peer: &NodeId) -> Vec<Served> {
    endpoint
        .tokens
        .lock()
        .iter()
        .filter_map(|(token, negotiated)| match negotiated {
            Negotiated {
                id,
                active: Some(active),
                home: Some(home),
                ..
            } if home.name == peer.name && home.generation != peer.generation && !matches!(active, Active::Adopted { .. }) => {
                Some(Served {
                    token: token.clone(),
                    id: id.clone(),
                    transport: active.kind(),
                })
            }
            _ => None,
        })
        .collect()
}

/// Tells `peer` that one of its connections runs here; once it has recorded it, it is the connection's home. Tried
/// again after each of [`REPORT_AGAIN`] while the peer is live: right after it joined the view its link may not be
/// up, or its hub not served yet, and a home never told drops the connection's sends by id once it is past its
/// first seconds.
async fn report(node: &Node, endpoint: &HubEndpoint, peer: &NodeId, served: Served) {
    let Served { token, id, transport } = served;
    let mut failure = String::new();
    for wait in [Duration::ZERO].into_iter().chain(REPORT_AGAIN) {
        tokio::time::sleep(wait).await;
        if !node.router().is_live_incarnation(&peer.name, peer.generation) {
            failure = "it left the view".to_owned();
            break;
        }
        // Not once it moved on (a drain) or ended: its new server tells the home.
        let served_here = matches!(
            endpoint.tokens.lock().get(&token),
            Some(Negotiated { active: Some(active), .. }) if !matches!(active, Active::Adopted { .. })
        );
        if !served_here {
            return;
        }
        let op = Op::Serves {
            id: id.clone(),
            transport,
        };
        match ask_op(node, endpoint, peer, &token, op).await {
            Ok(reply) if reply.status() == StatusCode::OK => {
                if let Some(negotiated) = endpoint.tokens.lock().get_mut(&token) {
                    negotiated.home = Some(peer.clone());
                }
                return;
            }
            // It runs the connection itself, or a move told it where it runs since: nothing to tell.
            Ok(reply) if reply.status() == StatusCode::CONFLICT => {
                failure = "it runs the connection".to_owned();
                break;
            }
            Ok(reply) => failure = reply.status().to_string(),
            Err(error) => failure = error,
        }
    }
    tracing::info!(parent: node.span(), %id, %failure, "a restarted home did not record where its connection runs");
}
