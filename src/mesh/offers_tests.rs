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
