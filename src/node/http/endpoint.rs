//! One hub as served over HTTP ([`HubEndpoint`]): its negotiated connection tokens, what each token addresses, and
//! starting the connection task of a token's SSE or long-polling transport.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use parking_lot::Mutex;
use tokio::time::Instant;
use tracing::Instrument;

use super::super::Node;
use crate::connection::reconnect::ResumeHandle;
use crate::cluster::NodeId;
use crate::connection::{BoundsHit, ConnectionId, ConnectionSetup, RequestInfo};
use crate::hub::HubContext;
use crate::transport::long_polling::LongPollingHandle;
use crate::transport::{PostSender, TransportKind};

/// How long a negotiated connection may wait for its transport (ASP.NET's disconnect timeout).
pub const NEGOTIATE_EXPIRY: Duration = Duration::from_secs(15);

/// The transports this build can serve.
pub(super) const IMPLEMENTED: &[TransportKind] = &[
    TransportKind::WebSockets,
    TransportKind::ServerSentEvents,
    TransportKind::LongPolling,
];

pub(super) struct Negotiated {
    pub(super) id: ConnectionId,
    pub(super) created: Instant,
    /// Whether negotiate turned stateful reconnect on for this token.
    pub(super) stateful: bool,
    /// The transport open for this token, once one is.
    pub(super) active: Option<Active>,
    /// For a connection this node adopted (negotiated by another node): that node, told when the connection ends.
    pub(super) home: Option<NodeId>,
}

/// The HTTP side of the transport a token's connection runs on.
pub(super) enum Active {
    /// A WebSocket, with the way to resume its connection when stateful reconnect is on.
    WebSocket(Option<ResumeHandle>),
    ServerSentEvents(PostSender),
    LongPolling(PostSender, LongPollingHandle),
    /// The connection runs on another node, which took its transport (docs/any-node-design.md#3-adopting-a-connection).
    Adopted { server: NodeId, transport: TransportKind },
}

impl Active {
    pub(super) fn kind(&self) -> TransportKind {
        match self {
            Active::WebSocket(_) => TransportKind::WebSockets,
            Active::ServerSentEvents(_) => TransportKind::ServerSentEvents,
            Active::LongPolling(..) => TransportKind::LongPolling,
            Active::Adopted { transport, .. } => *transport,
        }
    }
}

/// A hub's negotiated tokens: the map requests look tokens up in (which it derefs to), and the tokens in the order
/// they were negotiated, so that negotiate expires unused tokens from the oldest on, without scanning the map, and
/// keeps at most [`Limits::max_pending_negotiations`](crate::connection::Limits::max_pending_negotiations) of them.
#[derive(Default)]
pub(super) struct Tokens {
    map: HashMap<String, Negotiated>,
    /// Tokens negotiated in the last [`NEGOTIATE_EXPIRY`] (and a few more), oldest first, with when. A token that
    /// got a transport or was removed stays here until it ages out; only the map's entry counts.
    order: VecDeque<(Instant, String)>,
}

impl Deref for Tokens {
    type Target = HashMap<String, Negotiated>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl DerefMut for Tokens {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.map
    }
}

impl Tokens {
    /// Adds a newly negotiated token. Unused tokens that expired are forgotten first, then, while more than `max`
    /// tokens are in the order, the oldest (an unused one among them is dropped and counted in
    /// `hit`): so a flood of negotiations costs a bounded amount of memory, and amortised constant time.
    pub(super) fn insert_fresh(&mut self, token: String, negotiated: Negotiated, max: usize, hit: &BoundsHit) {
        let now = negotiated.created;
        while let Some((created, _)) = self.order.front() {
            let expired = now.saturating_duration_since(*created) >= NEGOTIATE_EXPIRY;
            if !expired && self.order.len() < max.max(1) {
                break;
            }
            let Some((created, old)) = self.order.pop_front() else {
                break;
            };
            let unused = self
                .map
                .get(&old)
                .is_some_and(|entry| entry.active.is_none() && entry.created == created);
            if unused {
                self.map.remove(&old);
                if !expired {
                    hit.negotiations.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        self.order.push_back((now, token.clone()));
        self.map.insert(token, negotiated);
    }
}

/// One hub as served over HTTP: its context and its negotiated connection tokens.
pub(crate) struct HubEndpoint {
    pub(crate) context: HubContext,
    /// The hub's path, normalized: what connection tokens are issued for.
    path: String,
    pub(super) tokens: Mutex<Tokens>,
    /// Connections moving here from other nodes, by token (`super::moving`).
    pub(super) arrivals: Mutex<super::moving::Arrivals>,
    /// Tokens of connections moving away from this node now (a drain's move, or a resume that reached another
    /// node): one move at a time per connection. At most one entry per connection running here.
    pub(super) leaving: Mutex<HashSet<String>>,
}

impl HubEndpoint {
    pub(crate) fn new(context: HubContext, path: String) -> Self {
        HubEndpoint {
            context,
            path,
            tokens: Mutex::new(Tokens::default()),
            arrivals: Mutex::new(super::moving::Arrivals::new()),
            leaving: Mutex::new(HashSet::new()),
        }
    }

    /// How many connections are moving away from this node now (a metric: `hubmesh_connections_moving_out`).
    pub(crate) fn moving_out_count(&self) -> usize {
        self.leaving.lock().len()
    }

    /// The hub's normalized path.
    pub(super) fn path(&self) -> &str {
        &self.path
    }

    pub(super) fn offers(&self, transport: TransportKind) -> bool {
        IMPLEMENTED.contains(&transport) && self.context.hub().offered_transports().contains(&transport)
    }

    /// Forgets a token whose connection ended here; if the connection was adopted, tells its home.
    pub(super) fn forget(&self, node: &Node, token: &str) {
        let removed = {
            let mut tokens = self.tokens.lock();
            // A connection that moved to another node ended here, not there: its token now says where it runs.
            if matches!(tokens.get(token), Some(Negotiated { active: Some(Active::Adopted { .. }), .. })) {
                return;
            }
            tokens.remove(token)
        };
        if let Some(Negotiated { home: Some(home), .. }) = removed {
            super::relay::release(node, self, home, token.to_owned());
        }
    }

    /// Forgets the connections of this node that `server` had adopted (it left the cluster).
    pub(super) fn forget_adopted_by(&self, server: &NodeId) {
        self.tokens.lock().retain(|_, negotiated| {
            !matches!(&negotiated.active, Some(Active::Adopted { server: adopter, .. }) if adopter == server)
        });
    }
}

/// What a token addresses, for the HTTP transports.
pub(super) enum Lookup {
    /// Unknown, finished or expired: 404.
    Missing,
    /// Negotiated, no transport open yet.
    Fresh(ConnectionId),
    /// A transport is open; clones of its HTTP side.
    Open(TransportKind, Option<PostSender>, Option<LongPollingHandle>),
    /// Negotiated here, served by another node over this transport.
    Adopted(NodeId, TransportKind),
}

pub(super) fn lookup(endpoint: &HubEndpoint, token: &str) -> Lookup {
    let mut tokens = endpoint.tokens.lock();
    match tokens.get(token) {
        None => Lookup::Missing,
        Some(negotiated) => match &negotiated.active {
            Some(Active::Adopted { server, transport }) => Lookup::Adopted(server.clone(), *transport),
            Some(active) => {
                let (post, poll) = match active {
                    Active::WebSocket(_) | Active::Adopted { .. } => (None, None),
                    Active::ServerSentEvents(post) => (Some(post.clone()), None),
                    Active::LongPolling(post, poll) => (Some(post.clone()), Some(poll.clone())),
                };
                Lookup::Open(active.kind(), post, poll)
            }
            None if negotiated.created.elapsed() >= NEGOTIATE_EXPIRY => {
                tokens.remove(token);
                Lookup::Missing
            }
            None => Lookup::Fresh(negotiated.id.clone()),
        },
    }
}

/// Claims a fresh token for `active`; `false` if another request claimed it first.
pub(super) fn claim(endpoint: &HubEndpoint, token: &str, active: Active) -> bool {
    claim_with(endpoint, token, active).is_some()
}

/// Claims a fresh token for `active`: whether negotiate turned stateful reconnect on for it, or `None` if another
/// request claimed it first.
pub(super) fn claim_with(endpoint: &HubEndpoint, token: &str, active: Active) -> Option<bool> {
    match endpoint.tokens.lock().get_mut(token) {
        Some(negotiated) if negotiated.active.is_none() => {
            negotiated.active = Some(active);
            Some(negotiated.stateful)
        }
        _ => None,
    }
}

/// Records a connection negotiated by `home` that this node runs from now on, under its token (a token table
/// entry that is active from the start, so it never counts against the negotiation bound).
pub(super) fn insert_adopted(endpoint: &HubEndpoint, token: String, id: ConnectionId, home: NodeId, active: Active, stateful: bool) {
    endpoint.tokens.lock().insert(
        token,
        Negotiated {
            id,
            created: Instant::now(),
            stateful,
            active: Some(active),
            home: Some(home),
        },
    );
}

/// Spawns the connection task of a newly opened SSE or long-polling connection on this worker; the token is
/// forgotten when `run` ends.
pub(super) fn spawn_connection<F>(
    node: &Node,
    endpoint: Arc<HubEndpoint>,
    token: String,
    id: ConnectionId,
    request: RequestInfo,
    run: impl FnOnce(ConnectionSetup) -> F,
) where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let setup = ConnectionSetup {
        id,
        request,
        limits: node.shared_limits(),
        host: Arc::new(endpoint.context.clone()),
        resume: None,
        wake_relay: node.wake_relay(),
        keeper: None,
    };
    let node = node.clone();
    let span = node.span().clone();
    // Chained with `map`, not awaited in an async block, which would hold the connection's future twice.
    let task = run(setup).map(move |()| endpoint.forget(&node, &token));
    tokio::spawn(task.instrument(span));
}
