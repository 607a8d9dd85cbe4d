//! A member's move keeps its place in the group's order at a node that holds sends for a gap (chaos defect 15,
//! `tests/cli/chaos/README.md`): the owner's marker waits behind the held sends, so a connection that moves gets
//! each send at exactly one of its two nodes; and a kept connection taken over here is not given again the held
//! sends its server delivered before it died.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use bytes::Bytes;

use super::arrivals::GAP_WAIT;
use super::envelope::{Envelope, WireFrame};
use super::group::{GroupKey, Stamp};
use super::kept::mark_of;
use super::test_router::{frame, RecordingLinks, TestHub};
use super::Router;
use crate::cluster::NodeId;
use crate::connection::{ConnectionId, SharedFrame};

fn delivery(key: &GroupKey, origin: &NodeId, prev: u64, seq: u64) -> Envelope {
    Envelope::GroupDeliver {
        key: key.clone(),
        except: Vec::new(),
        frame: WireFrame::of(&SharedFrame::pre_encoded(Some(Bytes::from(format!("s{seq}\x1e"))), None)),
        stamp: stamp(origin, prev, seq),
        handed_from: None,
    }
}

fn stamp(origin: &NodeId, prev: u64, seq: u64) -> Stamp {
    Stamp {
        origin: origin.clone(),
        seq,
        prev,
    }
}

fn moved(key: &GroupKey, connection: &str, arriving: bool) -> Envelope {
    Envelope::MemberMoved {
        key: key.clone(),
        connection: ConnectionId::new(connection.to_string()),
        arriving,
    }
}

/// Member node n3 of a cluster n1, n3, n5 (n5 the owner, n1 the origin of the sends), with members in every group
/// that record what they got.
fn member_node() -> (Arc<Router<TestHub>>, Arc<TestHub>, NodeId, NodeId) {
    let (one, three, five) = (NodeId::new("n1", 7), NodeId::new("n3", 7), NodeId::new("n5", 9));
    let router: Arc<Router<TestHub>> =
        Router::new(&three.name, tokio::runtime::Handle::current(), tracing::Span::none());
    let hub = Arc::new(TestHub::with_members());
    router.register_hub("hub", &hub);
    router.attach_links(Arc::new(RecordingLinks::default()), &three);
    router.on_view(vec![one.clone(), three, five.clone()]);
    (router, hub, one, five)
}

fn events(hub: &TestHub) -> Vec<String> {
    hub.events.lock().clone()
}

/// The marker moving a connection here waits behind the sends held for a gap: they went to it on the node it left.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_member_arriving_joins_after_the_held_sends_before_its_marker() {
    let (router, hub, one, five) = member_node();
    let key = GroupKey::named("hub", "a");
    router.on_link_event(frame(&five, &delivery(&key, &one, 0, 1)));
    router.on_link_event(frame(&five, &delivery(&key, &one, 2, 3)));
    router.on_link_event(frame(&five, &moved(&key, "c.n2", true)));
    assert_eq!(events(&hub), ["a s1"], "joined before the held send 3");
    router.on_link_event(frame(&five, &delivery(&key, &one, 1, 2)));
    router.on_link_event(frame(&five, &delivery(&key, &one, 3, 4)));
    assert_eq!(events(&hub), ["a s1", "a s2", "a s3", "+a c.n2", "a s4"]);
}

/// A gap that never fills: the held sends go after the wait, and the move right behind them.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_member_leaving_after_a_gap_given_up_leaves_behind_the_held_sends() {
    let (router, hub, one, five) = member_node();
    let key = GroupKey::named("hub", "a");
    router.on_link_event(frame(&five, &delivery(&key, &one, 0, 1)));
    router.on_link_event(frame(&five, &delivery(&key, &one, 2, 3)));
    router.on_link_event(frame(&five, &moved(&key, "c.n3", false)));
    router.on_link_event(frame(&five, &delivery(&key, &one, 3, 4)));
    router.expire_gaps();
    assert_eq!(events(&hub), ["a s1"]);
    tokio::time::advance(GAP_WAIT).await;
    router.expire_gaps();
    assert_eq!(events(&hub), ["a s1", "a s3", "-a c.n3", "a s4"]);
    // With nothing held, a marker applies at once.
    router.on_link_event(frame(&five, &moved(&key, "c.n3", true)));
    assert_eq!(events(&hub).last().map(String::as_str), Some("+a c.n3"));
}

/// A kept connection taken over here whose server had delivered a send this node still holds for a gap: that send
/// (and those before it) do not reach it again; the later ones do.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_kept_connection_taken_over_skips_the_held_sends_its_server_delivered() {
    let (router, hub, one, five) = member_node();
    let key = GroupKey::named("hub", "a");
    let id = ConnectionId::new("c.n2".to_string());
    router.keep_member(key.clone(), id.clone());
    router.on_link_event(frame(&five, &delivery(&key, &one, 0, 1)));
    router.on_link_event(frame(&five, &delivery(&key, &one, 1, 2)));
    // 3 went without this node for now: 4 and 5 wait for it.
    router.on_link_event(frame(&five, &delivery(&key, &one, 3, 4)));
    router.on_link_event(frame(&five, &delivery(&key, &one, 4, 5)));
    // Its server had delivered up to 4.
    let last = mark_of(&key, &stamp(&one, 3, 4));
    router.resume_kept_member(&key, &id, Some(&last), &[]).unwrap();
    router.on_link_event(frame(&five, &delivery(&key, &one, 2, 3)));
    assert_eq!(
        events(&hub),
        ["a s1", "a s2", "+a c.n2", "a s3", "a s4 except c.n2", "a s5"],
        "the held sends up to its mark excepted it; nothing replayed from the history before them"
    );
}

/// Its server's last send was delivered here: what the history holds after it is replayed, the held sends (later
/// in the order) reach it as a member.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_kept_connection_whose_mark_was_delivered_here_gets_what_followed() {
    let (router, hub, one, five) = member_node();
    let key = GroupKey::named("hub", "a");
    let id = ConnectionId::new("c.n2".to_string());
    router.keep_member(key.clone(), id.clone());
    for seq in [1, 2] {
        router.on_link_event(frame(&five, &delivery(&key, &one, seq - 1, seq)));
    }
    router.on_link_event(frame(&five, &delivery(&key, &one, 3, 4)));
    let last = mark_of(&key, &stamp(&one, 0, 1));
    router.resume_kept_member(&key, &id, Some(&last), &[]).unwrap();
    router.on_link_event(frame(&five, &delivery(&key, &one, 2, 3)));
    assert_eq!(events(&hub), ["a s1", "a s2", "to c.n2 s2", "+a c.n2", "a s3", "a s4"]);
}

/// The node a connection leaves notes what it got of the group when the owner's marker takes it out; the node it
/// moves to, which had no record of that origin, takes the note: a send the connection got, sent again after its
/// owner left, is a repeat there too.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_moved_member_carries_what_it_got_and_a_resent_send_is_a_repeat_where_it_arrives() {
    let (left, left_hub, one, five) = member_node();
    let key = GroupKey::named("hub", "a");
    for seq in [1, 2, 3] {
        left.on_link_event(frame(&five, &delivery(&key, &one, seq - 1, seq)));
    }
    left.on_link_event(frame(&five, &moved(&key, "c.n3", false)));
    // After it left: not in what it got.
    left.on_link_event(frame(&five, &delivery(&key, &one, 3, 4)));
    assert_eq!(events(&left_hub), ["a s1", "a s2", "a s3", "-a c.n3", "a s4"]);
    let got = left.take_sends_got(&ConnectionId::new("c.n3".to_string()));
    assert_eq!(got.groups.len(), 1);
    assert_eq!(got.groups[0].1.len(), 1);
    assert_eq!((got.groups[0].1[0].generation, got.groups[0].1[0].last), (7, 3));
    assert!(left.take_sends_got(&ConnectionId::new("c.n3".to_string())).groups.is_empty(), "taken once");

    let (arrived, arrived_hub, _, _) = member_node();
    arrived.on_link_event(frame(&five, &moved(&key, "c.n3", true)));
    arrived.seed_arrivals(&got);
    // Send 3 again (its owner left), then 4 as the new owner fans it out.
    arrived.on_link_event(frame(&five, &delivery(&key, &one, 2, 3)));
    arrived.on_link_event(frame(&five, &delivery(&key, &one, 3, 4)));
    assert_eq!(events(&arrived_hub), ["+a c.n3", "a s4"]);
}

/// The members a node lists in its snapshot (`Router::local_snapshot`) for group `key`.
fn listed(router: &Router<TestHub>, key: &GroupKey) -> Vec<String> {
    router
        .local_snapshot()
        .into_iter()
        .filter(|(listed, _)| listed == key)
        .flat_map(|(_, members)| members)
        .map(|id| id.to_string())
        .collect()
}

/// A member moving here whose marker waits behind held sends is in this node's snapshot: its owner moved it here,
/// and an owner that learns the group from the snapshots after a view change must still fan out to it (a rolling
/// restart lost every later user send of a connection that moved while its marker waited).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_member_whose_arrival_waits_behind_held_sends_is_in_the_snapshot() {
    let (router, hub, one, five) = member_node();
    let key = GroupKey::user("hub", "u");
    router.on_link_event(frame(&five, &delivery(&key, &one, 0, 1)));
    router.on_link_event(frame(&five, &delivery(&key, &one, 2, 3)));
    router.on_link_event(frame(&five, &moved(&key, "c.n2", true)));
    assert_eq!(listed(&router, &key), ["c.n2"], "listed while its marker waits");
    router.on_link_event(frame(&five, &delivery(&key, &one, 1, 2)));
    assert_eq!(events(&hub), ["u s1", "u s2", "u s3", "+u c.n2"]);
    // Joined here now: the hub lists it (this test hub lists none), not the records.
    assert!(listed(&router, &key).is_empty(), "no marker waits any more");
}
