//! A young home's offers (`super::offers`): one router, fed link events by hand, with links that record what it
//! sends.

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
