//! A home's routes to connections that run elsewhere (`super::offers`, `super::hints`, `super::kept_direct`):
//! one router, fed link events by hand, with links that record what it sends.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;

use super::envelope::{Envelope, WireFrame};
use super::test_router::{frame, owner_node, RecordingLinks};
use crate::cluster::NodeId;
use crate::connection::{ConnectionId, SharedFrame};

/// A send numbered `n` to connection `id`, as a peer passes it to the connection's home.
fn send_to(id: &ConnectionId, n: u8) -> Envelope {
    Envelope::ToConnections {
        hub: "hub".into(),
        ids: vec![id.clone()],
        frame: WireFrame::of(&SharedFrame::pre_encoded(Some(Bytes::from(vec![b'0' + n, 0x1e])), None)),
        hinted: false,
    }
}

/// The number of the send `frame` carries.
fn number(frame: WireFrame) -> u8 {
    let frame = frame.into_frame();
    frame.text().and_then(|text| text.as_bytes().first().copied()).unwrap() - b'0'
}

/// The numbers of the sends for `id` that went to `peer`, in order, each with whether it was offered (else passed
/// on as to an adopted-out connection).
fn sends_to(links: &RecordingLinks, peer: &str, id: &ConnectionId) -> Vec<(u8, bool)> {
    links
        .envelopes()
        .into_iter()
        .filter(|(to, _)| to == peer)
        .filter_map(|(_, envelope)| match envelope {
            Envelope::Offered { ids, frame, .. } if ids.contains(id) => Some((number(frame), true)),
            Envelope::ToConnections { ids, frame, .. } if ids.contains(id) => Some((number(frame), false)),
            _ => None,
        })
        .collect()
}

/// A restarted home gets a send for a connection its earlier incarnation negotiated, which now runs on a node its
/// young view does not hold yet: the send is kept and offered to that node when it joins the view, before any
/// later send; once that node says it serves the connection, sends go to it as to any connection adopted out.
#[tokio::test]
async fn a_young_home_offers_what_it_cannot_place_to_each_peer_that_joins_later() {
    let home = NodeId::new("n2", 2);
    let sender = NodeId::new("n1", 1);
    let server = NodeId::new("n3", 1);
    let (router, links, _hub) = owner_node(&home);
    router.on_view(vec![home.clone(), sender.clone()]);
    let id = ConnectionId::new("moved.n2");

    router.on_link_event(frame(&sender, &send_to(&id, 1)));
    assert_eq!(sends_to(&links, "n1", &id), vec![(1, true)], "offered to the one peer it sees");
    router.on_view(vec![home.clone(), sender.clone(), server.clone()]);
    router.on_link_event(frame(&sender, &send_to(&id, 2)));
    assert_eq!(
        sends_to(&links, "n3", &id),
        vec![(1, true), (2, true)],
        "the peer that joined gets the kept offer first"
    );

    router.on_link_event(frame(
        &server,
        &Envelope::Serving {
            hub: "hub".into(),
            ids: vec![id.clone()],
        },
    ));
    router.on_link_event(frame(&sender, &send_to(&id, 3)));
    assert_eq!(
        sends_to(&links, "n3", &id),
        vec![(1, true), (2, true), (3, false)],
        "passed on once the server said so"
    );
    // The answered offers are settled: a node that joins later is offered nothing of them.
    let late = NodeId::new("n4", 1);
    router.on_view(vec![home, sender, server, late]);
    assert_eq!(sends_to(&links, "n4", &id), Vec::new());
}

/// The same send as [`send_to`], as a sender's location hint routes it (`super::hints`).
fn hinted_send_to(id: &ConnectionId, n: u8) -> Envelope {
    match send_to(id, n) {
        Envelope::ToConnections { hub, ids, frame, .. } => Envelope::ToConnections {
            hub,
            ids,
            frame,
            hinted: true,
        },
        other => other,
    }
}

/// A home lets go of the server of a connection it negotiated (its view lost it a moment) and the very incarnation
/// comes back: sends go on to it as before, not offered to every peer, and past the orphan window not nowhere
/// (chaos defect 26). One a keeper took over meanwhile stays with the keeper.
#[tokio::test]
async fn a_home_sends_on_to_a_server_that_comes_back_unless_its_connection_was_taken_over() {
    let home = NodeId::new("n2", 2);
    let sender = NodeId::new("n1", 1);
    let server = NodeId::new("n3", 1);
    let keeper = NodeId::new("n4", 1);
    let (router, links, _hub) = owner_node(&home);
    router.on_view(vec![home.clone(), sender.clone(), server.clone(), keeper.clone()]);
    let stays = ConnectionId::new("stays.n2");
    let taken = ConnectionId::new("taken.n2");
    router.adopt_out(stays.clone(), server.clone()).unwrap();
    router.adopt_out(taken.clone(), server.clone()).unwrap();

    router.on_view(vec![home.clone(), sender.clone(), keeper.clone()]);
    router.on_link_event(frame(
        &keeper,
        &Envelope::Serving {
            hub: "hub".into(),
            ids: vec![taken.clone()],
        },
    ));
    router.on_view(vec![home.clone(), sender.clone(), server.clone(), keeper.clone()]);
    router.on_link_event(frame(&sender, &send_to(&stays, 1)));
    router.on_link_event(frame(&sender, &send_to(&taken, 2)));
    assert_eq!(sends_to(&links, "n3", &stays), vec![(1, false)], "passed on to the server that is back");
    assert_eq!(sends_to(&links, "n3", &taken), Vec::new(), "the server that is back no longer runs it");
    assert_eq!(sends_to(&links, "n4", &taken), vec![(2, false)], "passed on to the keeper that took it over");
}

/// A home past its youth whose connection's server died: sends for the connection go to every live peer as
/// offers (its keeper holds them for the take-over) until the keeper says where it runs. Before, past the youth
/// they went to no peer and were lost (the 300-client kill test, `tests/cli/killed_node.rs`, lost 21 to 85 sends by
/// id to casualties this way; its nodes were older than 10 s when the kill came).
#[tokio::test(start_paused = true)]
async fn a_home_past_its_youth_offers_sends_for_a_dead_servers_connection_to_every_peer() {
    let home = NodeId::new("n2", 2);
    let sender = NodeId::new("n1", 1);
    let server = NodeId::new("n3", 1);
    let keeper = NodeId::new("n4", 1);
    let (router, links, _hub) = owner_node(&home);
    router.on_view(vec![home.clone(), sender.clone(), server.clone(), keeper.clone()]);
    let id = ConnectionId::new("kept.n2");
    router.adopt_out(id.clone(), server.clone()).unwrap();
    tokio::time::advance(super::owner::YOUNG + std::time::Duration::from_secs(1)).await;

    router.on_view(vec![home.clone(), sender.clone(), keeper.clone()]);
    router.on_link_event(frame(&sender, &send_to(&id, 1)));
    assert_eq!(sends_to(&links, "n4", &id), vec![(1, true)], "offered to the keeper");
    assert_eq!(sends_to(&links, "n1", &id), vec![(1, true)], "and to every other live peer");
    assert_eq!(sends_to(&links, "n3", &id), Vec::new(), "not to the server that died");
}

/// A send that reaches a node by a stale location hint (it neither serves the connection nor is its home) goes on
/// through the home; one sent to every peer (the home gone, as the sender sees it) does not, or the home would
/// get it from each of them.
#[tokio::test]
async fn a_send_by_a_stale_hint_goes_on_through_the_home() {
    let node = NodeId::new("n3", 1);
    let sender = NodeId::new("n1", 1);
    let home = NodeId::new("n2", 1);
    let (router, links, _hub) = owner_node(&node);
    router.on_view(vec![node.clone(), sender.clone(), home.clone()]);
    let id = ConnectionId::new("elsewhere.n2");

    router.on_link_event(frame(&sender, &hinted_send_to(&id, 1)));
    router.on_link_event(frame(&sender, &send_to(&id, 2)));
    assert_eq!(sends_to(&links, "n2", &id), vec![(1, false)], "only the hinted one, through the home");
}

/// A sender `n1` of a three-node cluster (`n2`, the home of connection `adopted.n2`; `n3`, its server), and how it
/// sends send `n` to that connection.
struct HintedSender {
    router: std::sync::Arc<super::Router<super::test_router::TestHub>>,
    links: std::sync::Arc<RecordingLinks>,
    id: ConnectionId,
    hub: std::sync::Arc<str>,
    home: NodeId,
    server: NodeId,
}

impl HintedSender {
    fn new() -> Self {
        let sender = NodeId::new("n1", 1);
        let home = NodeId::new("n2", 1);
        let server = NodeId::new("n3", 1);
        let (router, links, _hub) = owner_node(&sender);
        router.on_view(vec![sender, home.clone(), server.clone()]);
        HintedSender {
            router,
            links,
            id: ConnectionId::new("adopted.n2"),
            hub: "hub".into(),
            home,
            server,
        }
    }

    fn send(&self, n: u8) {
        self.router.to_connections(
            &self.hub,
            std::slice::from_ref(&self.id),
            SharedFrame::pre_encoded(Some(Bytes::from(vec![b'0' + n, 0x1e])), None),
        );
    }

    /// The home's hint that the connection runs on `n3`.
    fn hinted(&self) {
        let hint = Envelope::Hint {
            hub: self.hub.clone(),
            ids: vec![self.id.clone()],
            server: self.server.clone(),
        };
        self.router.on_link_event(frame(&self.home, &hint));
    }
}

/// A home that has not seen a connection's server leave hints it to a sender that has: the sender ignores the hint
/// and its sends go on through the home, which keeps them for the connection's keeper. Before, the sender fenced
/// towards the gone server and held every later send until a next send after the fence's timeout, which never came
/// when the sender stopped (the last sends of `tests/kept_after_move.rs`' kill test were lost that way).
#[tokio::test]
async fn a_sender_ignores_a_hint_that_names_a_server_gone_from_its_view() {
    let sender = HintedSender::new();
    sender.send(1);
    sender.router.on_view(vec![NodeId::new("n1", 1), sender.home.clone()]);
    sender.hinted();
    sender.send(2);
    sender.send(3);
    assert_eq!(
        sends_to(&sender.links, "n2", &sender.id),
        vec![(1, false), (2, false), (3, false)],
        "every send through the home, none held for the gone server"
    );
    assert_eq!(sends_to(&sender.links, "n3", &sender.id), Vec::new());
}

/// A fence that is never answered (its server stays in view) gives its switch up after `FENCE_TIMEOUT` even if the
/// sender sends nothing more: what it held goes through the home, in order. Before, only the sender's next send to
/// that connection gave it up, and the last sends of a sender that stopped were held for ever.
#[tokio::test(start_paused = true)]
async fn an_unanswered_fence_gives_its_held_sends_to_the_home_without_a_next_send() {
    let sender = HintedSender::new();
    sender.send(1);
    sender.hinted();
    sender.send(2);
    sender.send(3);
    let (links, id) = (&sender.links, &sender.id);
    assert_eq!(sends_to(links, "n2", id), vec![(1, false)], "2 and 3 held while the fence is out");
    sender.router.expire_fences();
    assert_eq!(sends_to(links, "n2", id), vec![(1, false)], "held until the fence's time is up");
    tokio::time::advance(super::hints::FENCE_TIMEOUT).await;
    sender.router.expire_fences();
    assert_eq!(
        sends_to(links, "n2", id),
        vec![(1, false), (2, false), (3, false)],
        "through the home, in order, with no next send"
    );
    assert_eq!(sends_to(links, "n3", id), Vec::new());
}
